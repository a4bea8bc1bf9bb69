//! `/api/v1/steps`: reusable action definitions that plans are made of.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination::{self, SortByName};
use crate::auth::{Admin, Viewer};
use crate::db::audit::Actor;
use crate::db::models::StepRow;
use crate::db::steps::{self as store, StepFilter, StepWrite};
use crate::db::Db;
use crate::domain::duration::HumanDuration;
use crate::domain::steps::{
    default_idempotent, default_timeout, validate_step, RetryPolicy, StepDefinition, StepKind,
    StepOptions,
};
use crate::domain::templates::TemplateEngine;
use crate::domain::validation::{check_name, check_text, Violations};
use crate::error::{Error, Problem, Result};
use crate::http::{etag, parse_json, IfMatch, JsonBody, Query};

/// What a client sends to create or replace a step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "nginx_upstream_switch",
    "kind": "remote_script",
    "description": "Point nginx at the recovered WordPress host and reload",
    "params": {
        "target": "nginx",
        "via": "jump01",
        "script": "cp /etc/nginx/conf.d/wp.conf /etc/nginx/conf.d/wp.conf.bak\nsed -i \"s/{{ resources.wordpress.private_ip | bare }}/{{ steps.recover.outputs.hosts.wordpress.private_ip | bare }}/\" /etc/nginx/conf.d/wp.conf\nnginx -t && nginx -s reload"
    },
    "timeout": "5m",
    "retry": {"max_attempts": 2, "delay": "10s", "backoff": "fixed"}
}))]
pub struct StepInput {
    /// Unique slug; plans refer to the step by it.
    #[schema(example = "nginx_upstream_switch")]
    pub name: String,
    pub kind: StepKind,
    #[serde(default)]
    pub description: String,
    /// Typed per kind: HostRecoveryParams, PowerOnParams, RemoteScriptParams, LocalScriptParams,
    /// HttpRequestParams, CheckParams, ManualApprovalParams, WaitParams. String values may be
    /// templates (see README, "Templates").
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub params: Value,
    /// Default depends on the kind (e.g. a check's `until` plus 30s).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Safe to run again after a crash; default depends on the kind (scripts: false).
    #[serde(default)]
    pub idempotent: Option<bool>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A step as the API returns it, with every default filled in.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    pub id: Uuid,
    #[schema(example = "nginx_upstream_switch")]
    pub name: String,
    pub kind: StepKind,
    pub description: String,
    #[schema(value_type = Object)]
    pub params: Value,
    pub timeout: HumanDuration,
    pub retry: RetryPolicy,
    pub idempotent: bool,
    #[schema(example = 1)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl TryFrom<StepRow> for StepView {
    type Error = Error;

    fn try_from(r: StepRow) -> Result<Self> {
        let def: StepDefinition = serde_json::from_value(r.definition)
            .map_err(|e| Error::internal(format!("step {}: {e}", r.id)))?;
        Ok(Self {
            id: r.id,
            name: r.name,
            kind: def.kind,
            description: r.description,
            params: def.params,
            timeout: def.timeout,
            retry: def.retry,
            idempotent: def.idempotent,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by,
            updated_by: r.updated_by,
        })
    }
}

/// A page of steps, sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepList {
    pub items: Vec<StepView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StepListQuery {
    /// Only steps of this kind.
    pub kind: Option<StepKind>,
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn validated(engine: &TemplateEngine, input: StepInput) -> Result<StepWrite> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &input.name);
    check_text(&mut v, "description", &input.description, 2000);
    let mut errors = v.into_errors();
    let options = StepOptions {
        timeout: input.timeout,
        retry: input.retry,
        idempotent: input.idempotent,
    };
    match validate_step(engine, input.kind, &input.params, options, "params") {
        Ok(definition) if errors.is_empty() => Ok(StepWrite {
            name: input.name,
            description: input.description,
            definition,
        }),
        Ok(_) => Err(Error::Validation(errors)),
        Err(step_errors) => {
            errors.extend(step_errors);
            Err(Error::Validation(errors))
        }
    }
}

fn respond(mut builder: actix_web::HttpResponseBuilder, row: StepRow) -> Result<HttpResponse> {
    let version = row.version;
    let view = StepView::try_from(row)?;
    Ok(builder
        .insert_header((header::ETAG, etag(version)))
        .json(view))
}

/// List steps, filtered by kind, sorted by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/steps", tag = "steps",
    params(StepListQuery),
    responses(
        (status = 200, description = "A page of steps", body = StepList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<StepListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let filter = StepFilter {
        kind: q.kind.map(|k| k.as_str().to_owned()),
        page: pagination::name_page(q.sort, q.cursor.as_deref(), limit)?,
    };
    let (rows, total) = db.run(move |conn| store::list(conn, &filter)).await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|r| r.name.as_str()));
    let items = rows
        .into_iter()
        .map(StepView::try_from)
        .collect::<Result<_>>()?;
    Ok(HttpResponse::Ok().json(StepList {
        items,
        total,
        next_cursor,
    }))
}

/// Create a step. Its params are validated for its kind, templates for syntax and names.
#[utoipa::path(post, path = "/api/v1/steps", tag = "steps",
    request_body = StepInput,
    responses(
        (status = 201, description = "Created, with defaults filled in", body = StepView),
        (status = 400, description = "Invalid body; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    Admin(user): Admin,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    JsonBody(input): JsonBody<StepInput>,
) -> Result<HttpResponse> {
    let write = validated(&engine, input)?;
    let actor = Actor::from_user(&user);
    let row = db
        .transaction(move |conn| store::create(conn, write, &actor))
        .await?;
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, format!("/api/v1/steps/{}", row.id)));
    respond(builder, row)
}

/// Read a step by id or name.
#[utoipa::path(get, path = "/api/v1/steps/{key}", tag = "steps",
    params(("key" = String, Path, description = "The step's id or name", example = "nginx_upstream_switch")),
    responses(
        (status = 200, description = "The step; `ETag` header set", body = StepView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such step", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, key: web::Path<String>) -> Result<HttpResponse> {
    let key = key.into_inner();
    let row = db.run(move |conn| store::find(conn, &key)).await?;
    respond(HttpResponse::Ok(), row)
}

/// Replace a step. Plan versions already saved keep the definition they pinned; the next save
/// of a plan picks up the change.
#[utoipa::path(put, path = "/api/v1/steps/{key}", tag = "steps",
    params(
        ("key" = String, Path, description = "The step's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body = StepInput,
    responses(
        (status = 200, description = "Replaced", body = StepView),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such step", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The step changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(input): JsonBody<StepInput>,
) -> Result<HttpResponse> {
    let write = validated(&engine, input)?;
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let row = db
        .transaction(move |conn| store::update(conn, &key, &if_match, &actor, |_| Ok(write)))
        .await?;
    respond(HttpResponse::Ok(), row)
}

/// Change some fields of a step with a JSON merge patch (RFC 7396); the result is validated
/// as a whole.
#[utoipa::path(patch, path = "/api/v1/steps/{key}", tag = "steps",
    params(
        ("key" = String, Path, description = "The step's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body(content = Object, description = "JSON merge patch of StepInput",
        content_type = "application/merge-patch+json",
        example = json!({"timeout": "10m", "params": {"expected_exit_codes": [0, 3]}})),
    responses(
        (status = 200, description = "Patched", body = StepView),
        (status = 400, description = "The patched step is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such step", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The step changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn patch(
    Admin(user): Admin,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<Value>,
) -> Result<HttpResponse> {
    if !patch.is_object() {
        return Err(Error::field("body", "a merge patch must be a JSON object"));
    }
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let engine = engine.into_inner();
    let row = db
        .transaction(move |conn| {
            store::update(conn, &key, &if_match, &actor, |current| {
                let view = StepView::try_from(current.clone())?;
                let mut merged = serde_json::json!({
                    "name": view.name,
                    "kind": view.kind,
                    "description": view.description,
                    "params": view.params,
                    "retry": view.retry,
                });
                // A timeout or idempotency equal to the kind's default was (as far as anyone
                // can tell) not chosen: leave it out so it follows the patched params.
                if view.timeout != default_timeout(view.kind, &view.params) {
                    merged["timeout"] = serde_json::json!(view.timeout);
                }
                if view.idempotent != default_idempotent(view.kind, &view.params) {
                    merged["idempotent"] = serde_json::json!(view.idempotent);
                }
                super::merge_patch(&mut merged, &patch);
                validated(&engine, parse_json(merged.to_string().as_bytes())?)
            })
        })
        .await?;
    respond(HttpResponse::Ok(), row)
}

/// Delete a step. A step used by a plan's latest version is a 409 naming the plans.
#[utoipa::path(delete, path = "/api/v1/steps/{key}", tag = "steps",
    params(
        ("key" = String, Path, description = "The step's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such step", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Plans use it; `referrers` lists them", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The step changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    db.transaction(move |conn| store::delete(conn, &key, &if_match, &actor))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
