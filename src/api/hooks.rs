//! Inbound hooks. `/api/v1/hooks`: admins define what an ITSM or ChatOps tool may do (start a
//! plan, approve or reject a waiting manual step), viewers read; the secret is shown once.
//! `POST /hooks/{hook_id}`: the tool's call, authenticated on the raw body before it is parsed,
//! idempotent on the delivery id, acting in one transaction with the delivery's record.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::executions::{start_in, FailoverGate, StartRequest};
use super::pagination::{self, SortByName};
use crate::auth::{Admin, Role, Viewer};
use crate::crypto::MasterKey;
use crate::db::audit::Actor;
use crate::db::hooks as store;
use crate::db::models::{HookRow, HookWrite};
use crate::db::Db;
use crate::domain::plans::PlanSpec;
use crate::domain::templates::TemplateEngine;
use crate::domain::validation::{check_name, check_text, Violations};
use crate::engine::state::StepStatus;
use crate::engine::store::ExecutionMode;
use crate::error::{Error, Problem, Result};
use crate::http::{etag, IfMatch, JsonBody, Query};
use crate::webhooks::inbound::{
    self, FailoverConfirmation, HookAction, HookAuth, DEFAULT_CONFIRM_POINTER,
    DEFAULT_EXECUTION_POINTER,
};

/// What an admin sends to create or replace a hook.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "servicenow_drill",
    "description": "A ServiceNow change starts the WordPress drill",
    "action": "start",
    "plan": "wordpress_failover",
    "mode": "drill",
    "auth": "signature",
    "params": {"site_domain": "/change/site"}
}))]
pub struct HookInput {
    /// Unique slug.
    #[schema(example = "servicenow_drill")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub action: HookAction,
    /// `start`: the plan (name or id); each call runs its latest version.
    #[serde(default)]
    pub plan: Option<String>,
    /// `start`: the mode to run in.
    #[serde(default)]
    pub mode: Option<ExecutionMode>,
    /// Default `signature`; `bearer` must be chosen explicitly. Cannot change once created.
    #[serde(default)]
    pub auth: HookAuth,
    /// `start`: `{"<plan parameter>": "<JSON pointer into the payload>"}`; the parameters must
    /// be declared by the plan, the values are checked against their types at each call.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// `start` in `failover` mode: `operator` (default: created paused until an operator
    /// resumes it) or `payload` (the payload carries the plan's name at `confirm_pointer`).
    #[serde(default)]
    pub failover_confirmation: Option<FailoverConfirmation>,
    /// With `failover_confirmation: payload`; default `/confirm`.
    #[serde(default)]
    pub confirm_pointer: Option<String>,
    /// `approve`/`reject`: where the payload holds the execution id; default `/execution_id`.
    #[serde(default)]
    pub execution_pointer: Option<String>,
    /// `approve`/`reject`: where the payload holds a comment recorded with the decision.
    #[serde(default)]
    pub comment_pointer: Option<String>,
    /// Default true; a disabled hook answers 403.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// A hook as the API returns it (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct HookView {
    pub id: Uuid,
    #[schema(example = "servicenow_drill")]
    pub name: String,
    pub description: String,
    pub action: HookAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ExecutionMode>,
    pub auth: HookAuth,
    #[schema(value_type = BTreeMap<String, String>)]
    pub params: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_confirmation: Option<FailoverConfirmation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment_pointer: Option<String>,
    pub enabled: bool,
    /// Where callers POST: `/hooks/{id}`.
    #[schema(example = "/hooks/0b6f3c4e-2f0b-4a43-9d0e-6a2d3d1f1c11")]
    pub url: String,
    pub secret_updated_at: DateTime<Utc>,
    #[schema(example = 1)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

/// A hook with its new secret: answered once, on create and on rotate-secret; store it in the
/// calling tool now.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookWithSecret {
    #[serde(flatten)]
    pub hook: HookView,
    /// `whsec_...` (signature mode: the Standard Webhooks signing secret) or the bearer token.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// A page of hooks, sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookList {
    pub items: Vec<HookView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HookListQuery {
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// What a hook call did: the execution it started or decided on.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"execution_id": "5d1c8f3a-7a8e-4c0e-9a53-3f4b7e0c2b10",
    "url": "/api/v1/executions/5d1c8f3a-7a8e-4c0e-9a53-3f4b7e0c2b10", "status": "running"}))]
pub struct HookAccepted {
    pub execution_id: Uuid,
    /// The execution in the API.
    pub url: String,
    /// The execution's state when the call was accepted (`paused`: a failover waits for an
    /// operator).
    pub status: String,
    /// `approve`/`reject`: the step decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `approve`/`reject`: `approved` or `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
}

fn parse<T: DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_value(json!(raw)).map_err(Error::internal)
}

fn view(row: HookRow, plan: Option<String>) -> Result<HookView> {
    let action: HookAction = parse(&row.action)?;
    Ok(HookView {
        id: row.id,
        url: format!("/hooks/{}", row.id),
        action,
        plan,
        plan_id: row.plan_id,
        mode: row.mode.as_deref().map(parse).transpose()?,
        auth: parse(&row.auth)?,
        params: row.params,
        failover_confirmation: (action == HookAction::Start)
            .then(|| parse(&row.failover_confirmation))
            .transpose()?,
        confirm_pointer: row.confirm_pointer,
        execution_pointer: row.execution_pointer,
        comment_pointer: row.comment_pointer,
        enabled: row.enabled,
        name: row.name,
        description: row.description,
        secret_updated_at: row.secret_updated_at,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
        created_by: row.created_by,
        updated_by: row.updated_by,
    })
}

/// Checks a hook body by itself (the plan is checked against the database after).
fn checked(input: &HookInput) -> Result<()> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &input.name);
    check_text(&mut v, "description", &input.description, 2000);
    let start = input.action == HookAction::Start;
    if start {
        if input.plan.is_none() {
            v.add("plan", "a `start` hook names the plan it starts");
        }
        if input.mode.is_none() {
            v.add(
                "mode",
                "a `start` hook says the mode: drill, failover or dry_run",
            );
        }
        for (name, pointer) in &input.params {
            inbound::check_pointer(&mut v, &format!("params.{name}"), pointer);
        }
        let by_payload = input.failover_confirmation == Some(FailoverConfirmation::Payload);
        match &input.confirm_pointer {
            Some(_) if !by_payload => v.add(
                "confirm_pointer",
                "only with `failover_confirmation: payload`",
            ),
            Some(p) => inbound::check_pointer(&mut v, "confirm_pointer", p),
            None => {}
        }
        for (field, given) in [
            ("execution_pointer", &input.execution_pointer),
            ("comment_pointer", &input.comment_pointer),
        ] {
            if given.is_some() {
                v.add(field, "only for `approve` and `reject` hooks");
            }
        }
    } else {
        for (field, given) in [
            ("plan", input.plan.is_some()),
            ("mode", input.mode.is_some()),
            ("params", !input.params.is_empty()),
            (
                "failover_confirmation",
                input.failover_confirmation.is_some(),
            ),
            ("confirm_pointer", input.confirm_pointer.is_some()),
        ] {
            if given {
                v.add(field, "only for `start` hooks");
            }
        }
        for (field, given) in [
            ("execution_pointer", &input.execution_pointer),
            ("comment_pointer", &input.comment_pointer),
        ] {
            if let Some(p) = given {
                inbound::check_pointer(&mut v, field, p);
            }
        }
    }
    v.into_result(())
}

/// What to store: the plan resolved (its latest version declares every mapped parameter), the
/// defaults written out. Returns the plan's name for the view.
fn write_for(conn: &mut PgConnection, input: &HookInput) -> Result<(HookWrite, Option<String>)> {
    let mut plan_id = None;
    let mut plan_name = None;
    if let Some(key) = &input.plan {
        let plan = crate::db::plans::find(conn, key).map_err(|e| match e {
            Error::NotFound { .. } => Error::field("plan", format!("no plan `{key}` exists")),
            other => other,
        })?;
        let version = crate::db::plans::version(conn, &plan, plan.latest_version)?;
        let spec: PlanSpec = serde_json::from_value(version.spec).map_err(Error::internal)?;
        let mut v = Violations::default();
        for name in input.params.keys() {
            if !spec.parameters.contains_key(name) {
                v.add(
                    format!("params.{name}"),
                    format!("plan `{}` declares no parameter `{name}`", plan.name),
                );
            }
        }
        v.into_result(())?;
        plan_id = Some(plan.id);
        plan_name = Some(plan.name);
    }
    let start = input.action == HookAction::Start;
    let confirmation = input.failover_confirmation.unwrap_or_default();
    let write = HookWrite {
        name: input.name.clone(),
        description: input.description.clone(),
        action: input.action.as_str().to_owned(),
        plan_id,
        mode: input.mode.map(|m| m.as_str().to_owned()),
        auth: input.auth.as_str().to_owned(),
        params: json!(input.params),
        failover_confirmation: confirmation.as_str().to_owned(),
        confirm_pointer: (start && confirmation == FailoverConfirmation::Payload).then(|| {
            input
                .confirm_pointer
                .clone()
                .unwrap_or_else(|| DEFAULT_CONFIRM_POINTER.to_owned())
        }),
        execution_pointer: (!start).then(|| {
            input
                .execution_pointer
                .clone()
                .unwrap_or_else(|| DEFAULT_EXECUTION_POINTER.to_owned())
        }),
        comment_pointer: input.comment_pointer.clone().filter(|_| !start),
        enabled: input.enabled,
    };
    Ok((write, plan_name))
}

fn with_etag(
    mut builder: actix_web::HttpResponseBuilder,
    version: i32,
) -> actix_web::HttpResponseBuilder {
    builder.insert_header((header::ETAG, etag(version)));
    builder
}

/// List hooks, sorted by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/hooks", tag = "hooks",
    params(HookListQuery),
    responses(
        (status = 200, description = "A page of hooks (without secrets)", body = HookList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<HookListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let page = pagination::name_page(q.sort, q.cursor.as_deref(), limit)?;
    let (rows, total) = db
        .run(move |conn| {
            let (rows, total) = store::list(conn, &page)?;
            let mut named = Vec::with_capacity(rows.len());
            for row in rows {
                let plan = store::plan_name(conn, row.plan_id)?;
                named.push((row, plan));
            }
            Ok((named, total))
        })
        .await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|(r, _)| r.name.as_str()));
    let items = rows
        .into_iter()
        .map(|(row, plan)| view(row, plan))
        .collect::<Result<_>>()?;
    Ok(HttpResponse::Ok().json(HookList {
        items,
        total,
        next_cursor,
    }))
}

/// Create a hook. The answer holds its secret (`whsec_...`, or a bearer token with
/// `auth: bearer`) — the only time it is shown; callers POST to its `url`.
#[utoipa::path(post, path = "/api/v1/hooks", tag = "hooks",
    request_body = HookInput,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` set; `secret` shown this once", body = HookWithSecret),
        (status = 400, description = "Invalid body, unknown plan, or a parameter the plan does not declare", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    Admin(user): Admin,
    db: web::Data<Db>,
    master_key: web::Data<MasterKey>,
    JsonBody(input): JsonBody<HookInput>,
) -> Result<HttpResponse> {
    checked(&input)?;
    let secret = inbound::generate_secret(input.auth);
    let sealing = secret.clone();
    let key = master_key.into_inner();
    let actor = Actor::from_user(&user);
    let (row, plan) = db
        .transaction(move |conn| {
            let (write, plan) = write_for(conn, &input)?;
            Ok((store::create(conn, write, &sealing, &key, &actor)?, plan))
        })
        .await?;
    let (id, version) = (row.id, row.version);
    Ok(with_etag(HttpResponse::Created(), version)
        .insert_header((header::LOCATION, format!("/api/v1/hooks/{id}")))
        .json(HookWithSecret {
            hook: view(row, plan)?,
            secret: secret.to_string(),
        }))
}

/// Read a hook by id or name (never its secret).
#[utoipa::path(get, path = "/api/v1/hooks/{key}", tag = "hooks",
    params(("key" = String, Path, description = "The hook's id or name", example = "servicenow_drill")),
    responses(
        (status = 200, description = "The hook; `ETag` set", body = HookView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hook", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, key: web::Path<String>) -> Result<HttpResponse> {
    let key = key.into_inner();
    let (row, plan) = db
        .run(move |conn| {
            let row = store::find(conn, &key)?;
            let plan = store::plan_name(conn, row.plan_id)?;
            Ok((row, plan))
        })
        .await?;
    Ok(with_etag(HttpResponse::Ok(), row.version).json(view(row, plan)?))
}

/// Replace a hook's definition; its secret stays (see rotate-secret) and its `auth` cannot
/// change. Send `If-Match` with the ETag you read.
#[utoipa::path(put, path = "/api/v1/hooks/{key}", tag = "hooks",
    params(
        ("key" = String, Path, description = "The hook's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body = HookInput,
    responses(
        (status = 200, description = "Replaced", body = HookView),
        (status = 400, description = "Invalid body, or `auth` changed", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hook", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The hook changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(input): JsonBody<HookInput>,
) -> Result<HttpResponse> {
    checked(&input)?;
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let (row, plan) = db
        .transaction(move |conn| {
            let mut plan = None;
            let row = store::update(conn, &key, &if_match, &actor, |conn, current| {
                if current.auth != input.auth.as_str() {
                    return Err(Error::field(
                        "auth",
                        format!(
                            "is `{}` and cannot change (the secret is of that kind); create another hook",
                            current.auth
                        ),
                    ));
                }
                let (write, name) = write_for(conn, &input)?;
                plan = name;
                Ok(write)
            })?;
            Ok((row, plan))
        })
        .await?;
    Ok(with_etag(HttpResponse::Ok(), row.version).json(view(row, plan)?))
}

/// Delete a hook; calls to it answer 404 from then on.
#[utoipa::path(delete, path = "/api/v1/hooks/{key}", tag = "hooks",
    params(
        ("key" = String, Path, description = "The hook's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hook", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The hook changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
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

/// Give a hook a new secret; the old one stops working at once. The answer holds the new
/// secret, the only time it is shown.
#[utoipa::path(post, path = "/api/v1/hooks/{key}/rotate-secret", tag = "hooks",
    params(
        ("key" = String, Path, description = "The hook's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 200, description = "The hook with its new `secret`, shown this once", body = HookWithSecret),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hook", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The hook changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    Admin(user): Admin,
    db: web::Data<Db>,
    master_key: web::Data<MasterKey>,
    key: web::Path<String>,
    if_match: IfMatch,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let master_key = master_key.into_inner();
    let actor = Actor::from_user(&user);
    let (row, plan, secret) = db
        .transaction(move |conn| {
            let current = store::find(conn, &key)?;
            let secret = inbound::generate_secret(parse(&current.auth)?);
            let row = store::rotate_secret(conn, &key, &if_match, &master_key, &actor, &secret)?;
            let plan = store::plan_name(conn, row.plan_id)?;
            Ok((row, plan, secret))
        })
        .await?;
    Ok(
        with_etag(HttpResponse::Ok(), row.version).json(HookWithSecret {
            hook: view(row, plan)?,
            secret: secret.to_string(),
        }),
    )
}

/// Reads a request header as text by its lower-case name.
fn headers_of<'r>(req: &'r HttpRequest) -> impl Fn(&str) -> Option<&'r str> + 'r {
    move |name| req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Call a hook (an ITSM or ChatOps tool). Authenticated on the raw body first: in `signature`
/// mode by the Standard Webhooks headers (HMAC-SHA256 of `webhook-id.webhook-timestamp.body`
/// with the hook's `whsec_` secret, timestamp within 5 minutes); in `bearer` mode by
/// `Authorization: Bearer <token>` and an `Idempotency-Key`. A retried delivery (same id, same
/// body) answers the same 202 and the same execution; the same id with another body is a
/// replay (409). Nothing is started when the call is refused.
#[utoipa::path(post, path = "/hooks/{hook_id}", tag = "hooks",
    params(
        ("hook_id" = Uuid, Path, description = "The hook's id (its `url`)"),
        ("webhook-id" = Option<String>, Header, description = "The delivery's id (signature mode; in bearer mode accepted instead of Idempotency-Key)"),
        ("webhook-timestamp" = Option<String>, Header, description = "Seconds since the epoch when signed (signature mode)"),
        ("webhook-signature" = Option<String>, Header, description = "`v1,<base64 HMAC-SHA256>`, several space-separated allowed (signature mode)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The delivery's id (bearer mode)"),
    ),
    request_body(content = Object, content_type = "application/json",
        description = "The caller's payload, up to 256 KiB; the hook reads it with JSON pointers",
        example = json!({"change": {"number": "CHG0031337", "site": "www.example.com"}})),
    responses(
        (status = 202, description = "Accepted: the execution started (or decided on); the same answer to a retried delivery", body = HookAccepted),
        (status = 400, description = "No delivery id, a body that is not JSON, parameters failing the plan's types, a wrong failover confirmation, no execution id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad signature, stale timestamp, wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The hook is disabled, or the approval needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such hook, or no such execution", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery id was used with another body (replay), or no single step waits for an approval", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 256 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No database connection is free; try again shortly", body = Problem, content_type = "application/problem+json"),
    ),
    security(("webhook_signature" = []), ("hook_token" = [])))]
pub async fn receive(
    req: HttpRequest,
    db: web::Data<Db>,
    master_key: web::Data<MasterKey>,
    templates: web::Data<TemplateEngine>,
    hook_id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let id = Uuid::parse_str(&hook_id).map_err(|_| Error::not_found("hook", &*hook_id))?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > inbound::MAX_BODY as u64) {
        return Err(Error::PayloadTooLarge(format!(
            "the body is larger than {} bytes",
            inbound::MAX_BODY
        )));
    }
    let body = crate::http::read_body_up_to(payload, inbound::MAX_BODY).await?;
    let key = master_key.into_inner();
    let (hook, secret) = db
        .run(move |conn| {
            let hook = store::by_id(conn, id)?;
            let secret = store::open_secret(conn, id, &key)?;
            Ok((hook, secret))
        })
        .await?;
    let auth: HookAuth = parse(&hook.auth)?;
    let header = headers_of(&req);
    inbound::authenticate(auth, &secret, &header, &body, Utc::now().timestamp())?;
    drop(secret);
    if !hook.enabled {
        return Err(Error::Forbidden(format!(
            "hook `{}` is disabled; an admin can enable it",
            hook.name
        )));
    }
    let delivery = inbound::delivery_id(auth, &header)?;
    let hash = Sha256::digest(&body).to_vec();
    let actor = Actor {
        subject: format!("hook:{}", hook.name),
        role: "hook".into(),
        request_id: crate::http::current_request_id(),
    };
    let templates = templates.into_inner();
    let response = db
        .transaction(move |conn| {
            store::lock_delivery(conn, hook.id, &delivery)?;
            if let Some((seen, response)) = store::delivery(conn, hook.id, &delivery)? {
                if seen == hash {
                    return Ok(response);
                }
                return Err(Error::conflict(format!(
                    "delivery `{delivery}` was received before with another body; a replayed id is refused (send a new id for a new call)"
                )));
            }
            let payload: Value = serde_json::from_slice(&body)
                .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?;
            let accepted = match parse::<HookAction>(&hook.action)? {
                HookAction::Start => start(conn, &templates, &hook, &payload, &actor)?,
                HookAction::Approve => decide(conn, &hook, &payload, true, &actor)?,
                HookAction::Reject => decide(conn, &hook, &payload, false, &actor)?,
            };
            let response = serde_json::to_value(&accepted).map_err(Error::internal)?;
            store::record_delivery(
                conn,
                hook.id,
                &delivery,
                &hash,
                accepted.execution_id,
                &response,
            )?;
            Ok(response)
        })
        .await?;
    let mut builder = HttpResponse::Accepted();
    if let Some(url) = response["url"].as_str() {
        builder.insert_header((header::LOCATION, url.to_owned()));
    }
    Ok(builder.json(response))
}

/// A `start` hook's call: the plan's parameters read from the payload, the failover's
/// confirmation by the hook's rule, then the same start as `POST /plans/{key}/executions`.
fn start(
    conn: &mut PgConnection,
    templates: &TemplateEngine,
    hook: &HookRow,
    payload: &Value,
    actor: &Actor,
) -> Result<HookAccepted> {
    let plan = hook
        .plan_id
        .ok_or_else(|| Error::internal(format!("start hook {} has no plan", hook.id)))?
        .to_string();
    let mode: ExecutionMode = parse(hook.mode.as_deref().unwrap_or("drill"))?;
    let mapping: Map<String, Value> = hook.params.as_object().cloned().unwrap_or_default();
    let params = inbound::map_params(&mapping, payload);
    let confirm_pointer = hook
        .confirm_pointer
        .as_deref()
        .unwrap_or(DEFAULT_CONFIRM_POINTER);
    let failover = match parse(&hook.failover_confirmation)? {
        FailoverConfirmation::Operator => FailoverGate::AwaitOperator(format!(
            "started by hook `{}`: a failover waits for an operator to resume it",
            hook.name
        )),
        FailoverConfirmation::Payload => {
            FailoverGate::Confirm(inbound::text_at(payload, confirm_pointer))
        }
    };
    let (row, _) = start_in(
        conn,
        templates,
        StartRequest {
            plan: &plan,
            mode,
            params: &params,
            version: None,
            failover,
            idempotency_key: None,
            actor,
        },
    )
    .map_err(|e| match e {
        Error::Validation(errors) => {
            let mut errors = inbound::name_sources(errors, &mapping);
            for e in errors.iter_mut().filter(|e| e.field == "confirm") {
                e.message = format!(
                    "{} (read from the payload at `{confirm_pointer}`)",
                    e.message
                );
            }
            Error::Validation(errors)
        }
        other => other,
    })?;
    Ok(HookAccepted {
        execution_id: row.id,
        url: format!("/api/v1/executions/{}", row.id),
        status: row.status,
        step: None,
        decision: None,
    })
}

/// An `approve`/`reject` hook's call: decides the one manual approval step waiting in the
/// execution the payload names, as an operator would (an approval that demands the admin role
/// cannot be decided by a hook).
fn decide(
    conn: &mut PgConnection,
    hook: &HookRow,
    payload: &Value,
    approve: bool,
    actor: &Actor,
) -> Result<HookAccepted> {
    use crate::engine::store as engine;
    let pointer = hook
        .execution_pointer
        .as_deref()
        .unwrap_or(DEFAULT_EXECUTION_POINTER);
    let raw = inbound::text_at(payload, pointer).ok_or_else(|| {
        Error::field(
            "execution_id",
            format!("the payload holds no execution id (a string) at `{pointer}`"),
        )
    })?;
    let execution_id = Uuid::parse_str(raw).map_err(|_| {
        Error::field(
            "execution_id",
            format!("the value at `{pointer}` is not an execution id (a UUID)"),
        )
    })?;
    let comment = hook
        .comment_pointer
        .as_deref()
        .and_then(|p| inbound::text_at(payload, p))
        .unwrap_or_default()
        .to_owned();
    if comment.chars().count() > 2000 || comment.contains('\0') {
        return Err(Error::field(
            "comment",
            "must be at most 2000 characters, without NUL",
        ));
    }
    let execution = engine::execution(conn, execution_id)?;
    let waiting: Vec<String> = engine::step_runs_of(conn, execution_id)?
        .into_iter()
        .filter(|s| s.status == StepStatus::WaitingApproval.as_str())
        .map(|s| s.key)
        .collect();
    let key = match waiting.as_slice() {
        [key] => key.clone(),
        [] => {
            return Err(Error::conflict(format!(
                "no step of execution {execution_id} waits for an approval"
            )))
        }
        several => {
            return Err(Error::conflict(format!(
                "{} steps wait for an approval ({}); decide them through the API",
                several.len(),
                several.join(", ")
            )))
        }
    };
    engine::approve(
        conn,
        execution_id,
        &key,
        approve,
        &actor.subject,
        Role::Operator,
        &comment,
    )?;
    let action = if approve { "approve" } else { "reject" };
    super::executions::record(
        conn,
        actor,
        action,
        &execution,
        json!({"step": key, "comment": comment, "hook": hook.name}),
    )?;
    let after = engine::execution(conn, execution_id)?;
    Ok(HookAccepted {
        execution_id,
        url: format!("/api/v1/executions/{execution_id}"),
        status: after.status,
        step: Some(key),
        decision: Some(if approve { "approved" } else { "rejected" }.to_owned()),
    })
}
