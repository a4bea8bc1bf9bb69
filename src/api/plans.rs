//! `/api/v1/plans`: recovery plans as DAGs of steps, written in JSON or YAML, saved as
//! immutable versions; validate (graph, references, critical path vs RTO) and render (what a
//! dry run would do, secrets masked).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::PgConnection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination::{self, SortByName};
use crate::auth::{Admin, Viewer};
use crate::db::audit::Actor;
use crate::db::models::{PlanRow, PlanVersionRow};
use crate::db::plans::{self as store, PlanFilter};
use crate::db::Db;
use crate::domain::duration::HumanDuration;
use crate::domain::plans::{
    self as domain, Mode, ParamSpec, PlanSpec, PlanStepSpec, RenderedStep, ResolvedStep,
    ValidationReport,
};
use crate::domain::templates::TemplateEngine;
use crate::error::{Error, Problem, Result};
use crate::http::{
    check_declared_length, etag, from_value, is_json_content_type, read_body, IfMatch, JsonBody,
    OptionalJson, Query,
};

pub const YAML: &str = "application/yaml";

/// A plan document from a JSON or YAML body (`Content-Type: application/yaml`).
pub struct PlanBody(pub PlanSpec);

const YAML_TYPES: [&str; 4] = [
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

fn is_yaml(mime: &str) -> bool {
    YAML_TYPES.contains(&mime)
}

impl FromRequest for PlanBody {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json_content_type(req);
        let yaml = req
            .mime_type()
            .ok()
            .flatten()
            .is_some_and(|m| is_yaml(m.essence_str()));
        let length_ok = check_declared_length(req);
        let payload = payload.take();
        Box::pin(async move {
            if !json && !yaml {
                return Err(Error::UnsupportedMediaType(
                    "send the plan as `application/json` or `application/yaml`".into(),
                ));
            }
            length_ok?;
            let body = read_body(payload).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(Error::BadRequest("the request body is empty".into()));
            }
            let value: Value = if yaml {
                serde_norway::from_slice(&body)
                    .map_err(|e| Error::BadRequest(format!("the body is not valid YAML: {e}")))?
            } else {
                serde_json::from_slice(&body)
                    .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?
            };
            from_value(value).map(PlanBody)
        })
    }
}

/// True when the caller asked for YAML.
fn wants_yaml(req: &HttpRequest) -> bool {
    crate::http::accepts(req, &YAML_TYPES)
}

fn yaml_response(
    status: actix_web::http::StatusCode,
    etag_version: i32,
    spec: &PlanSpec,
) -> Result<HttpResponse> {
    let text = serde_norway::to_string(spec).map_err(Error::internal)?;
    Ok(HttpResponse::build(status)
        .content_type(YAML)
        .insert_header((header::ETAG, etag(etag_version)))
        .body(text))
}

/// A plan as the API returns it: its latest version's document and bookkeeping.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    pub id: Uuid,
    #[schema(example = "wordpress_failover")]
    pub name: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rto: Option<HumanDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rpo: Option<HumanDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_cleanup_after: Option<HumanDuration>,
    pub parameters: std::collections::BTreeMap<String, ParamSpec>,
    pub steps: Vec<PlanStepSpec>,
    /// The latest version; the ETag is this number in quotes.
    #[schema(example = 3)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
    /// Things worth knowing that do not make the plan invalid (e.g. RTO at risk).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn spec_of(version: &PlanVersionRow) -> Result<PlanSpec> {
    serde_json::from_value(version.spec.clone()).map_err(|e| {
        Error::internal(format!(
            "plan {} v{}: {e}",
            version.plan_id, version.version
        ))
    })
}

fn resolved_of(version: &PlanVersionRow) -> Result<Vec<ResolvedStep>> {
    serde_json::from_value(version.resolved.clone()).map_err(|e| {
        Error::internal(format!(
            "plan {} v{}: {e}",
            version.plan_id, version.version
        ))
    })
}

fn view(plan: PlanRow, spec: PlanSpec, warnings: Vec<String>) -> PlanView {
    PlanView {
        id: plan.id,
        name: plan.name,
        description: spec.description,
        target_rto: spec.target_rto,
        target_rpo: spec.target_rpo,
        auto_cleanup_after: spec.auto_cleanup_after,
        parameters: spec.parameters,
        steps: spec.steps,
        version: plan.latest_version,
        created_at: plan.created_at,
        updated_at: plan.updated_at,
        created_by: plan.created_by,
        updated_by: plan.updated_by,
        warnings,
    }
}

/// A page of plans (latest versions), sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    pub items: Vec<PlanSummary>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A plan in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanSummary {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub version: i32,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PlanListQuery {
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Validates a plan for saving against the current catalog and inventory: its errors are a
/// 400 naming each path; its warnings come back with the saved plan.
fn checked(
    conn: &mut PgConnection,
    engine: &TemplateEngine,
    spec: &PlanSpec,
    plan: Option<Uuid>,
) -> Result<(Vec<ResolvedStep>, Vec<String>)> {
    let keys: Vec<String> = spec.steps.iter().map(|s| s.step.clone()).collect();
    let catalog = crate::db::steps::catalog(conn, &keys)?;
    let inventory = store::inventory(conn)?;
    let observed = match plan {
        Some(id) => store::observed_durations(conn, id)?,
        None => domain::Observed::new(),
    };
    let (resolved, report) = domain::validate(
        engine,
        spec,
        &|key| catalog.get(key).cloned(),
        &inventory,
        &observed,
    );
    match resolved {
        Some(resolved) if report.valid => Ok((resolved, report.warnings)),
        _ => Err(Error::Validation(report.errors)),
    }
}

/// List plans, sorted by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/plans", tag = "plans",
    params(PlanListQuery),
    responses(
        (status = 200, description = "A page of plans", body = PlanList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<PlanListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let filter = PlanFilter {
        page: pagination::name_page(q.sort, q.cursor.as_deref(), limit)?,
    };
    let (rows, total) = db.run(move |conn| store::list(conn, &filter)).await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|r| r.name.as_str()));
    Ok(HttpResponse::Ok().json(PlanList {
        items: rows
            .into_iter()
            .map(|p| PlanSummary {
                id: p.id,
                name: p.name,
                description: p.description,
                version: p.latest_version,
                updated_at: p.updated_at,
                updated_by: p.updated_by,
            })
            .collect(),
        total,
        next_cursor,
    }))
}

/// Create a plan (version 1) from JSON or YAML. It is validated against the current steps and
/// inventory; every problem is returned with its path in the plan (`steps[2].depends_on[0]`).
#[utoipa::path(post, path = "/api/v1/plans", tag = "plans",
    request_body(content(
        (PlanSpec = "application/json", example = json!({
            "name": "wordpress_failover", "target_rto": "15m",
            "parameters": {"site_domain": {"type": "hostname", "required": true}},
            "steps": [
                {"key": "recover", "step": "recover_web_hosts"},
                {"key": "boot", "step": "boot_web_hosts", "depends_on": ["recover"]},
                {"key": "site_up", "step": "site_answers", "depends_on": ["boot"]}
            ]})),
        (PlanSpec = "application/yaml"),
    )),
    responses(
        (status = 201, description = "Created as version 1", body = PlanView),
        (status = 400, description = "Invalid plan; `errors` names each problem by its path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is neither JSON nor YAML", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    Admin(user): Admin,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    PlanBody(spec): PlanBody,
) -> Result<HttpResponse> {
    let actor = Actor::from_user(&user);
    let engine: Arc<TemplateEngine> = engine.into_inner();
    let (row, warnings, spec) = db
        .transaction(move |conn| {
            let (resolved, warnings) = checked(conn, &engine, &spec, None)?;
            let (row, _) = store::create(conn, &spec, &resolved, &actor)?;
            Ok((row, warnings, spec))
        })
        .await?;
    let version = row.latest_version;
    let location = format!("/api/v1/plans/{}", row.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .insert_header((header::ETAG, etag(version)))
        .json(view(row, spec, warnings)))
}

/// Read a plan's latest version by id or name; `Accept: application/yaml` returns the plan
/// document as YAML, ready to edit and PUT back.
#[utoipa::path(get, path = "/api/v1/plans/{key}", tag = "plans",
    params(("key" = String, Path, description = "The plan's id or name", example = "wordpress_failover")),
    responses(
        (status = 200, description = "The plan; `ETag` header set", content(
            (PlanView = "application/json"),
            (PlanSpec = "application/yaml"),
        )),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    _: Viewer,
    req: HttpRequest,
    db: web::Data<Db>,
    key: web::Path<String>,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let (row, version) = db
        .run(move |conn| {
            let row = store::find(conn, &key)?;
            let version = store::version(conn, &row, row.latest_version)?;
            Ok((row, version))
        })
        .await?;
    let spec = spec_of(&version)?;
    if wants_yaml(&req) {
        return yaml_response(actix_web::http::StatusCode::OK, row.latest_version, &spec);
    }
    let version = row.latest_version;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(version)))
        .json(view(row, spec, Vec::new())))
}

/// Save a new version of a plan (JSON or YAML). Earlier versions stay as they were.
#[utoipa::path(put, path = "/api/v1/plans/{key}", tag = "plans",
    params(
        ("key" = String, Path, description = "The plan's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag (latest version) from a previous read; 412 when a newer version exists"),
    ),
    request_body(content((PlanSpec = "application/json"), (PlanSpec = "application/yaml"))),
    responses(
        (status = 200, description = "Saved as a new version", body = PlanView),
        (status = 400, description = "Invalid plan; `errors` names each problem by its path", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "A newer version exists than the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is neither JSON nor YAML", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    key: web::Path<String>,
    if_match: IfMatch,
    PlanBody(spec): PlanBody,
) -> Result<HttpResponse> {
    // A malformed document is refused whatever the plan's state: before If-Match is checked.
    let errors = crate::domain::plans::check_spec(&spec);
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let engine: Arc<TemplateEngine> = engine.into_inner();
    let (row, warnings, spec) = db
        .transaction(move |conn| {
            let current = store::find_for_update(conn, &key)?;
            if_match.check(current.latest_version)?;
            let (resolved, warnings) = checked(conn, &engine, &spec, Some(current.id))?;
            let (row, _) = store::add_version(conn, &current, &spec, &resolved, &actor)?;
            Ok((row, warnings, spec))
        })
        .await?;
    let version = row.latest_version;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(version)))
        .json(view(row, spec, warnings)))
}

/// Delete a plan and all its versions.
#[utoipa::path(delete, path = "/api/v1/plans/{key}", tag = "plans",
    params(
        ("key" = String, Path, description = "The plan's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when a newer version exists"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The plan has executions (their records keep it); `referrers` names them", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "A newer version exists than the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
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

/// One saved version of a plan in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanVersionSummary {
    #[schema(example = 2)]
    pub version: i32,
    pub name: String,
    pub steps: usize,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// Every version of a plan, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanVersionList {
    pub items: Vec<PlanVersionSummary>,
}

/// One saved version: the document as written and each step pinned as it will run.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanVersionView {
    pub plan_id: Uuid,
    pub version: i32,
    pub spec: PlanSpec,
    pub resolved: Vec<ResolvedStep>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// List a plan's versions, newest first.
#[utoipa::path(get, path = "/api/v1/plans/{key}/versions", tag = "plans",
    params(("key" = String, Path, description = "The plan's id or name")),
    responses(
        (status = 200, description = "The versions", body = PlanVersionList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn versions(
    _: Viewer,
    db: web::Data<Db>,
    key: web::Path<String>,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let rows = db
        .run(move |conn| {
            let plan = store::find(conn, &key)?;
            store::versions(conn, plan.id)
        })
        .await?;
    let items = rows
        .iter()
        .map(|v| {
            let spec = spec_of(v)?;
            Ok(PlanVersionSummary {
                version: v.version,
                name: spec.name,
                steps: spec.steps.len(),
                created_at: v.created_at,
                created_by: v.created_by.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(HttpResponse::Ok().json(PlanVersionList { items }))
}

/// Read one version; `Accept: application/yaml` returns its document as YAML.
#[utoipa::path(get, path = "/api/v1/plans/{key}/versions/{version}", tag = "plans",
    params(
        ("key" = String, Path, description = "The plan's id or name"),
        ("version" = i32, Path, description = "Version number, from 1", minimum = 1),
    ),
    responses(
        (status = 200, description = "The version", content(
            (PlanVersionView = "application/json"),
            (PlanSpec = "application/yaml"),
        )),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan or version", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn version(
    _: Viewer,
    req: HttpRequest,
    db: web::Data<Db>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (key, raw) = path.into_inner();
    let n: i32 = raw
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Error::not_found("plan version", &raw))?;
    let row = db
        .run(move |conn| {
            let plan = store::find(conn, &key)?;
            store::version(conn, &plan, n)
        })
        .await?;
    let spec = spec_of(&row)?;
    if wants_yaml(&req) {
        return yaml_response(actix_web::http::StatusCode::OK, row.version, &spec);
    }
    let resolved = resolved_of(&row)?;
    Ok(HttpResponse::Ok().json(PlanVersionView {
        plan_id: row.plan_id,
        version: row.version,
        spec,
        resolved,
        created_at: row.created_at,
        created_by: row.created_by,
    }))
}

/// Which version to validate or render (default: the latest).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": 2}))]
pub struct ValidateRequest {
    #[serde(default)]
    pub version: Option<i32>,
}

fn load_version(
    conn: &mut PgConnection,
    key: &str,
    version: Option<i32>,
) -> Result<(PlanRow, PlanVersionRow)> {
    let plan = store::find(conn, key)?;
    let n = version.unwrap_or(plan.latest_version);
    let row = store::version(conn, &plan, n)?;
    Ok((plan, row))
}

/// Check a saved version against today's inventory: graph, template references, credentials,
/// plus each mode's start order, critical path and estimated duration against the target RTO
/// (steps that have run before count the median of their past runs; others their worst case).
/// An invalid plan is still a 200: the report says what is wrong.
#[utoipa::path(post, path = "/api/v1/plans/{key}/validate", tag = "plans",
    params(("key" = String, Path, description = "The plan's id or name")),
    request_body(content = Option<ValidateRequest>, content_type = "application/json",
        description = "Optional: an empty body validates the latest version",
        example = json!({"version": 1})),
    responses(
        (status = 200, description = "The report", body = ValidationReport),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan or version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn validate(
    _: Viewer,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    key: web::Path<String>,
    OptionalJson(body): OptionalJson<ValidateRequest>,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let request = body.unwrap_or_default();
    let engine: Arc<TemplateEngine> = engine.into_inner();
    let report = db
        .run(move |conn| {
            let (plan, row) = load_version(conn, &key, request.version)?;
            let spec = spec_of(&row)?;
            let resolved = resolved_of(&row)?;
            let inventory = store::inventory(conn)?;
            let observed = store::observed_durations(conn, plan.id)?;
            Ok(domain::validate_resolved(
                &engine, &spec, &resolved, &inventory, &observed,
            ))
        })
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// What to render.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mode": "drill", "params": {"site_domain": "www.example.com"}}))]
pub struct RenderRequest {
    pub mode: Mode,
    /// Execution parameters, checked against the plan's declared types.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Default: the latest version.
    #[serde(default)]
    pub version: Option<i32>,
}

/// Every step of a version as it would run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RenderResponse {
    pub plan: String,
    pub version: i32,
    pub mode: Mode,
    /// The parameters after type checks and defaults.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// In start order; steps that do not run in this mode come last with `runs: false`.
    pub steps: Vec<RenderedStep>,
}

/// Render every step for a mode and parameters, as a dry run would: templates filled from the
/// inventory and parameters, outputs of earlier steps shown as `<steps.key.outputs...>`,
/// secrets masked. Touches nothing.
#[utoipa::path(post, path = "/api/v1/plans/{key}/render", tag = "plans",
    params(("key" = String, Path, description = "The plan's id or name")),
    request_body = RenderRequest,
    responses(
        (status = 200, description = "The rendered steps", body = RenderResponse),
        (status = 400, description = "Invalid parameters or a template that cannot render; `errors` names each", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan or version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn render(
    _: Viewer,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    key: web::Path<String>,
    JsonBody(request): JsonBody<RenderRequest>,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let engine: Arc<TemplateEngine> = engine.into_inner();
    let response = db
        .run(move |conn| {
            let (plan, row) = load_version(conn, &key, request.version)?;
            let spec = spec_of(&row)?;
            let resolved = resolved_of(&row)?;
            let params = domain::check_params(&spec.parameters, &request.params)
                .map_err(Error::Validation)?;
            let inventory = store::inventory(conn)?;
            let steps = domain::render(
                &engine,
                &plan.name,
                row.version,
                &resolved,
                &inventory,
                request.mode,
                &params,
            )
            .map_err(Error::Validation)?;
            Ok(RenderResponse {
                plan: plan.name,
                version: row.version,
                mode: request.mode,
                params,
                steps,
            })
        })
        .await?;
    Ok(HttpResponse::Ok().json(response))
}
