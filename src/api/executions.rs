//! `/api/v1/executions` and `POST /api/v1/plans/{key}/executions`: run a plan version as a
//! drill, a failover or a dry run; follow it (logs, events, live SSE); steer it (cancel, pause,
//! resume, retry, skip, approve, reject); read its report.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration as StdDuration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Operator, Viewer};
use crate::db::models::{EventRow, ExecutionRow, LogRow, StepRunRow};
use crate::db::schema::{execution_events, executions, step_logs};
use crate::db::Db;
use crate::domain::duration::{Duration, HumanDuration};
use crate::domain::plans::{self as domain, PlanSpec, ResolvedStep};
use crate::domain::templates::TemplateEngine;
use crate::engine::state::{ExecutionStatus, StepStatus};
use crate::engine::store::{self, Control, ExecutionMode, NewExecution};
use crate::error::{Error, Problem, Result};
use crate::http::{JsonBody, OptionalJson, Query};
use crate::providers::cleanup::{CleanupReport, RecoveredInstance};

/// What to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mode": "drill", "params": {"site_domain": "www.example.com"}}))]
pub struct StartExecution {
    pub mode: ExecutionMode,
    /// Execution parameters, checked against the plan's declared types.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Default: the latest version.
    #[serde(default)]
    pub version: Option<i32>,
    /// A failover runs only when this equals the plan's name.
    #[serde(default)]
    pub confirm: Option<String>,
}

/// One step of an execution.
#[derive(Debug, Serialize, ToSchema)]
pub struct StepRunView {
    pub key: String,
    pub kind: String,
    pub status: StepStatus,
    pub attempt: i32,
    pub depends_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[schema(value_type = Object)]
    pub outputs: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub approval: Option<Value>,
}

/// An execution and its steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    pub id: Uuid,
    pub plan_id: Uuid,
    pub plan: String,
    pub version: i32,
    pub mode: ExecutionMode,
    pub status: ExecutionStatus,
    #[schema(value_type = Object)]
    pub params: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepRunView>,
}

fn parse_mode(raw: &str) -> ExecutionMode {
    match raw {
        "failover" => ExecutionMode::Failover,
        "dry_run" => ExecutionMode::DryRun,
        _ => ExecutionMode::Drill,
    }
}

fn step_view(r: StepRunRow) -> StepRunView {
    let depends_on = serde_json::from_value::<ResolvedStep>(r.step.clone())
        .map(|s| s.depends_on)
        .unwrap_or_default();
    StepRunView {
        status: r.status.parse().unwrap_or(StepStatus::Pending),
        key: r.key,
        kind: r.kind,
        attempt: r.attempt,
        depends_on,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        outputs: r.outputs,
        error: r.error,
        approval: r.approval,
    }
}

fn view(e: ExecutionRow, steps: Vec<StepRunRow>) -> ExecutionView {
    ExecutionView {
        id: e.id,
        plan_id: e.plan_id,
        plan: e.plan_name,
        version: e.plan_version,
        mode: parse_mode(&e.mode),
        status: e.status.parse().unwrap_or(ExecutionStatus::Running),
        params: e.params,
        pause_reason: e.pause_reason,
        error: e.error,
        created_by: e.created_by,
        created_at: e.created_at,
        started_at: e.started_at,
        finished_at: e.finished_at,
        steps: steps.into_iter().map(step_view).collect(),
    }
}

fn parse_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| Error::not_found("execution", raw))
}

async fn load_view(db: &Db, id: Uuid) -> Result<ExecutionView> {
    let (e, steps) = db
        .run(move |conn| Ok((store::execution(conn, id)?, store::step_runs_of(conn, id)?)))
        .await?;
    Ok(view(e, steps))
}

/// Start an execution of a plan version. `Idempotency-Key` makes a retried request return the
/// execution the first one created. A failover needs the operator role and `confirm` equal to
/// the plan's name; a dry run renders and validates every step and touches nothing.
#[utoipa::path(post, path = "/api/v1/plans/{key}/executions", tag = "executions",
    params(
        ("key" = String, Path, description = "The plan's id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key (from the same caller, for the same plan): same execution"),
    ),
    request_body = StartExecution,
    responses(
        (status = 201, description = "Started; `Location` names it", body = ExecutionView),
        (status = 200, description = "The execution an earlier request with this Idempotency-Key started", body = ExecutionView),
        (status = 400, description = "Invalid mode, parameters, confirmation, or the plan no longer validates", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan or version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn start(
    Operator(user): Operator,
    req: HttpRequest,
    db: web::Data<Db>,
    engine: web::Data<TemplateEngine>,
    key: web::Path<String>,
    JsonBody(body): JsonBody<StartExecution>,
) -> Result<HttpResponse> {
    let idempotency = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| Error::BadRequest("Idempotency-Key is not a valid header value".into()))?;
    if let Some(k) = &idempotency {
        if k.is_empty() || k.len() > 200 || k.contains('\0') {
            return Err(Error::field("Idempotency-Key", "must be 1-200 characters"));
        }
    }
    let key = key.into_inner();
    let templates = engine.into_inner();
    // Captured here: the request id lives on this task, not on the database thread.
    let actor = crate::db::audit::Actor::from_user(&user);
    let (row, created) = db
        .transaction(move |conn| {
            start_in(
                conn,
                &templates,
                StartRequest {
                    plan: &key,
                    mode: body.mode,
                    params: &body.params,
                    version: body.version,
                    failover: FailoverGate::Confirm(body.confirm.as_deref()),
                    idempotency_key: idempotency.as_deref(),
                    actor: &actor,
                },
            )
        })
        .await?;
    let id = row.id;
    let view = load_view(&db, id).await?;
    if created {
        Ok(HttpResponse::Created()
            .insert_header((header::LOCATION, format!("/api/v1/executions/{id}")))
            .json(view))
    } else {
        Ok(HttpResponse::Ok().json(view))
    }
}

/// How a failover gets its go.
pub enum FailoverGate<'a> {
    /// The caller's `confirm` must be the plan's name (a validation error on `confirm` otherwise).
    Confirm(Option<&'a str>),
    /// The execution is created paused with this reason, waiting for an operator to resume it.
    AwaitOperator(String),
}

/// What to start, and who starts it.
pub struct StartRequest<'a> {
    /// The plan's id or name.
    pub plan: &'a str,
    pub mode: ExecutionMode,
    pub params: &'a Map<String, Value>,
    /// Default: the latest version.
    pub version: Option<i32>,
    pub failover: FailoverGate<'a>,
    pub idempotency_key: Option<&'a str>,
    /// `created_by` and the audit row's actor.
    pub actor: &'a crate::db::audit::Actor,
}

/// Starts an execution of a plan version inside the caller's transaction, audited: checks the
/// failover's confirmation, the parameters and the plan against today's inventory, then creates
/// it (a dry run is rendered and finished at once). With an idempotency key already used by the
/// same actor for the plan, returns that execution and `false`. Shared by the API's `start` and
/// by inbound hooks.
pub fn start_in(
    conn: &mut PgConnection,
    templates: &TemplateEngine,
    req: StartRequest<'_>,
) -> Result<(ExecutionRow, bool)> {
    let plan = crate::db::plans::find(conn, req.plan)?;
    let actor = req.actor;
    if let Some(k) = req.idempotency_key {
        if let Some(existing) = store::find_idempotent(conn, plan.id, &actor.subject, k)? {
            return Ok((existing, false));
        }
    }
    let version =
        crate::db::plans::version(conn, &plan, req.version.unwrap_or(plan.latest_version))?;
    let spec: PlanSpec = serde_json::from_value(version.spec.clone()).map_err(Error::internal)?;
    let resolved: Vec<ResolvedStep> =
        serde_json::from_value(version.resolved.clone()).map_err(Error::internal)?;
    let mut paused = None;
    if req.mode == ExecutionMode::Failover {
        match req.failover {
            FailoverGate::Confirm(confirm) if confirm != Some(plan.name.as_str()) => {
                return Err(Error::field(
                    "confirm",
                    format!(
                        "a failover runs only when `confirm` is the plan's name, `{}`",
                        plan.name
                    ),
                ));
            }
            FailoverGate::Confirm(_) => {}
            FailoverGate::AwaitOperator(reason) => paused = Some(reason),
        }
    }
    let params = domain::check_params(&spec.parameters, req.params).map_err(Error::Validation)?;
    let inventory = crate::db::plans::inventory(conn)?;
    let report = domain::validate_resolved(
        templates,
        &spec,
        &resolved,
        &inventory,
        &domain::Observed::new(),
    );
    if !report.valid {
        return Err(Error::Validation(report.errors));
    }
    let new = NewExecution {
        plan_id: plan.id,
        plan_name: &plan.name,
        version: version.version,
        resolved: &resolved,
        mode: req.mode,
        params: &params,
        idempotency_key: req.idempotency_key,
        created_by: &actor.subject,
        paused: paused.as_deref(),
        auto_cleanup_secs: spec
            .auto_cleanup_after
            .filter(|_| req.mode == ExecutionMode::Drill)
            .map(|d| d.as_secs().min(i32::MAX as u64) as i32),
    };
    let row = if req.mode == ExecutionMode::DryRun {
        let rendered = domain::render(
            templates,
            &plan.name,
            version.version,
            &resolved,
            &inventory,
            req.mode.plan_mode(),
            &params,
        )
        .map_err(Error::Validation)?;
        store::create_dry_run(conn, new, &rendered)?
    } else {
        store::create(conn, new)?
    };
    record(
        conn,
        actor,
        "start",
        &row,
        json!({"mode": req.mode, "version": row.plan_version}),
    )?;
    Ok((row, true))
}

/// A page of executions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionList {
    pub items: Vec<ExecutionSummary>,
    pub total: i64,
}

/// An execution in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionSummary {
    pub id: Uuid,
    pub plan: String,
    pub version: i32,
    pub mode: ExecutionMode,
    pub status: ExecutionStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionListQuery {
    /// Only executions of this plan (id).
    pub plan_id: Option<Uuid>,
    /// Only executions in this state.
    pub status: Option<ExecutionStatus>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// How many to skip.
    #[param(minimum = 0, maximum = 2147483647)]
    pub offset: Option<u32>,
}

/// List executions, newest first.
#[utoipa::path(get, path = "/api/v1/executions", tag = "executions",
    params(ExecutionListQuery),
    responses(
        (status = 200, description = "A page of executions", body = ExecutionList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<ExecutionListQuery>,
) -> Result<HttpResponse> {
    let limit = super::pagination::limit(q.limit)?;
    let offset = super::pagination::offset(q.offset)?;
    let (rows, total) = db
        .run(move |conn| {
            let build = || {
                let mut query = executions::table.into_boxed();
                if let Some(plan) = q.plan_id {
                    query = query.filter(executions::plan_id.eq(plan));
                }
                if let Some(status) = q.status {
                    query = query.filter(executions::status.eq(status.as_str()));
                }
                query
            };
            let total: i64 = build().count().get_result(conn)?;
            let rows = build()
                .order((executions::created_at.desc(), executions::id))
                .limit(limit)
                .offset(offset)
                .select(ExecutionRow::as_select())
                .load(conn)?;
            Ok((rows, total))
        })
        .await?;
    let items = rows
        .into_iter()
        .map(|e| ExecutionSummary {
            id: e.id,
            plan: e.plan_name,
            version: e.plan_version,
            mode: parse_mode(&e.mode),
            status: e.status.parse().unwrap_or(ExecutionStatus::Running),
            created_by: e.created_by,
            created_at: e.created_at,
            finished_at: e.finished_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ExecutionList { items, total }))
}

/// Read an execution with the state of each step.
#[utoipa::path(get, path = "/api/v1/executions/{id}", tag = "executions",
    params(("id" = Uuid, Path, description = "The execution's id")),
    responses(
        (status = 200, description = "The execution", body = ExecutionView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such execution", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse> {
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(load_view(&db, id).await?))
}

/// Writes the audit row of an action on an execution.
pub(crate) fn record(
    conn: &mut PgConnection,
    actor: &crate::db::audit::Actor,
    action: &str,
    e: &ExecutionRow,
    details: Value,
) -> Result<()> {
    crate::db::audit::record(
        conn,
        actor,
        crate::db::audit::AuditEntry::new(action, "execution", e.id, &e.plan_name, details),
    )
}

async fn steer(
    db: &Db,
    id: &str,
    action: Control,
    user: crate::auth::AuthUser,
) -> Result<HttpResponse> {
    let id = parse_id(id)?;
    let actor = crate::db::audit::Actor::from_user(&user);
    db.transaction(move |conn| {
        let row = store::control(conn, id, action, &user.subject)?;
        let name = match action {
            Control::Cancel => "cancel",
            Control::Pause => "pause",
            Control::Resume => "resume",
        };
        record(conn, &actor, name, &row, json!({}))
    })
    .await?;
    Ok(HttpResponse::Ok().json(load_view(db, id).await?))
}

macro_rules! control_endpoint {
    ($name:ident, $path:literal, $action:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "executions",
            params(("id" = Uuid, Path, description = "The execution's id")),
            responses(
                (status = 200, description = "The execution after the change", body = ExecutionView),
                (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "No such execution", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "Not possible in the execution's state", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])))]
        pub async fn $name(Operator(user): Operator, db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse> {
            steer(&db, &id, $action, user).await
        }
    };
}

control_endpoint!(cancel, "/api/v1/executions/{id}/cancel", Control::Cancel,
    "Cancel an execution: steps not started are cancelled, running ones are stopped (their processes killed).");
control_endpoint!(
    pause,
    "/api/v1/executions/{id}/pause",
    Control::Pause,
    "Pause an execution: running steps finish, no new step starts until it is resumed."
);
control_endpoint!(
    resume,
    "/api/v1/executions/{id}/resume",
    Control::Resume,
    "Resume a paused execution."
);

/// A person's word on a step.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"comment": "Business owner agreed on the bridge call"}))]
pub struct Decision {
    #[serde(default)]
    pub comment: String,
}

async fn step_action(
    db: &Db,
    id: &str,
    key: String,
    action: &'static str,
    user: crate::auth::AuthUser,
    comment: String,
) -> Result<HttpResponse> {
    let id = parse_id(id)?;
    if comment.chars().count() > 2000 {
        return Err(Error::field("comment", "must be at most 2000 characters"));
    }
    let actor = crate::db::audit::Actor::from_user(&user);
    db.transaction(move |conn| {
        let row = store::execution(conn, id)?;
        match action {
            "retry" => store::retry_or_skip(conn, id, &key, true, &user.subject),
            "skip" => store::retry_or_skip(conn, id, &key, false, &user.subject),
            "approve" => store::approve(conn, id, &key, true, &user.subject, user.role, &comment),
            _ => store::approve(conn, id, &key, false, &user.subject, user.role, &comment),
        }?;
        record(
            conn,
            &actor,
            action,
            &row,
            json!({"step": key, "comment": comment}),
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(load_view(db, id).await?))
}

macro_rules! step_endpoint {
    ($name:ident, $path:literal, $action:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "executions",
            params(
                ("id" = Uuid, Path, description = "The execution's id"),
                ("key" = String, Path, description = "The step's key in the plan"),
            ),
            request_body(content = Option<Decision>, content_type = "application/json",
                description = "Optional: a comment, recorded with who decided",
                example = json!({"comment": "checked by hand"})),
            responses(
                (status = 200, description = "The execution after the change", body = ExecutionView),
                (status = 400, description = "Malformed body (an unknown field, a comment that is not a string)", body = Problem, content_type = "application/problem+json"),
                (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
                (status = 403, description = "Needs the operator role (or the approval's role)", body = Problem, content_type = "application/problem+json"),
                (status = 404, description = "No such execution or step", body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "Not possible in the step's state", body = Problem, content_type = "application/problem+json"),
                (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
            ),
            security(("bearer" = [])))]
        pub async fn $name(
            Operator(user): Operator,
            db: web::Data<Db>,
            path: web::Path<(String, String)>,
            OptionalJson(body): OptionalJson<Decision>,
        ) -> Result<HttpResponse> {
            let (id, key) = path.into_inner();
            step_action(&db, &id, key, $action, user, body.unwrap_or_default().comment).await
        }
    };
}

step_endpoint!(
    retry_step,
    "/api/v1/executions/{id}/steps/{key}/retry",
    "retry",
    "Run a failed or interrupted step again."
);
step_endpoint!(
    skip_step,
    "/api/v1/executions/{id}/steps/{key}/skip",
    "skip",
    "Skip a step that has not succeeded; its dependents may then start."
);
step_endpoint!(
    approve_step,
    "/api/v1/executions/{id}/steps/{key}/approve",
    "approve",
    "Approve a manual approval step."
);
step_endpoint!(
    reject_step,
    "/api/v1/executions/{id}/steps/{key}/reject",
    "reject",
    "Reject a manual approval step (it fails; its on_failure applies)."
);

/// Stored output lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub items: Vec<LogLine>,
    /// Pass as `after` for the lines that follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// One line of a step's output (secrets already masked).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLine {
    pub id: i64,
    pub step: String,
    pub attempt: i32,
    /// `stdout`, `stderr` or `system` (the orchestrator's own notes).
    pub stream: String,
    pub at: DateTime<Utc>,
    pub data: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only this step's lines.
    pub step: Option<String>,
    /// Only lines after this id (the previous page's `next_after`).
    pub after: Option<i64>,
    /// Page size, 1-5000 (default 1000).
    #[param(minimum = 1, maximum = 5000)]
    pub limit: Option<u32>,
}

fn load_logs(
    conn: &mut PgConnection,
    id: Uuid,
    step: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<LogRow>> {
    let mut q = step_logs::table
        .filter(step_logs::execution_id.eq(id))
        .filter(step_logs::id.gt(after))
        .into_boxed();
    if let Some(step) = step {
        q = q.filter(step_logs::step_key.eq(step.to_owned()));
    }
    Ok(q.order(step_logs::id)
        .limit(limit)
        .select(LogRow::as_select())
        .load(conn)?)
}

fn log_line(r: LogRow) -> LogLine {
    LogLine {
        id: r.id,
        step: r.step_key,
        attempt: r.attempt,
        stream: r.stream,
        at: r.at,
        data: r.data,
    }
}

/// Read an execution's stored output, in order, a page at a time.
#[utoipa::path(get, path = "/api/v1/executions/{id}/logs", tag = "executions",
    params(("id" = Uuid, Path, description = "The execution's id"), LogQuery),
    responses(
        (status = 200, description = "Lines in order", body = LogPage),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such execution", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn logs(
    _: Viewer,
    db: web::Data<Db>,
    id: web::Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<HttpResponse> {
    let id = parse_id(&id)?;
    let limit = match q.limit.unwrap_or(1000) {
        n @ 1..=5000 => i64::from(n),
        _ => return Err(Error::field("limit", "must be between 1 and 5000")),
    };
    let rows = db
        .run(move |conn| {
            store::execution(conn, id)?;
            load_logs(conn, id, q.step.as_deref(), q.after.unwrap_or(0), limit)
        })
        .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(HttpResponse::Ok().json(LogPage {
        items: rows.into_iter().map(log_line).collect(),
        next_after,
    }))
}

/// One event of an execution's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// e.g. `execution.started`, `step.succeeded`, `approval.required`.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
}

fn event_view(r: EventRow) -> EventView {
    EventView {
        id: r.id,
        at: r.at,
        type_: r.type_,
        step: r.step_key,
        data: r.data,
    }
}

fn load_events(conn: &mut PgConnection, id: Uuid, after: i64, limit: i64) -> Result<Vec<EventRow>> {
    Ok(execution_events::table
        .filter(execution_events::execution_id.eq(id))
        .filter(execution_events::id.gt(after))
        .order(execution_events::id)
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)?)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events after this id.
    pub after: Option<i64>,
    /// Stream events and log lines as Server-Sent Events until the execution ends.
    pub follow: Option<bool>,
}

/// The execution's timeline. With `follow=true` (or `Accept: text/event-stream`) a live
/// Server-Sent Events stream of `event` and `log` messages that ends when the execution does.
#[utoipa::path(get, path = "/api/v1/executions/{id}/events", tag = "executions",
    params(("id" = Uuid, Path, description = "The execution's id"), EventQuery),
    responses(
        (status = 200, description = "The events (JSON), or an SSE stream", content(
            (Vec<EventView> = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such execution", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn events(
    _: Viewer,
    req: HttpRequest,
    db: web::Data<Db>,
    id: web::Path<String>,
    Query(q): Query<EventQuery>,
) -> Result<HttpResponse> {
    let id = parse_id(&id)?;
    let after = q.after.unwrap_or(0);
    let wants_sse = q.follow == Some(true) || crate::http::accepts(&req, &["text/event-stream"]);
    db.run(move |conn| store::execution(conn, id)).await?;
    if !wants_sse {
        let rows = db
            .run(move |conn| load_events(conn, id, after, 10_000))
            .await?;
        return Ok(HttpResponse::Ok().json(rows.into_iter().map(event_view).collect::<Vec<_>>()));
    }
    let stream = sse_stream(db.get_ref().clone(), id, after);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

struct Follow {
    db: Db,
    id: Uuid,
    after_event: i64,
    after_log: i64,
    done: bool,
    idle_since_final: u32,
}

/// Polls the timeline and the logs every 300 ms, at most 500 rows each per poll (bounded
/// memory), until the execution has ended and everything was sent.
fn sse_stream(
    db: Db,
    id: Uuid,
    after: i64,
) -> impl futures_util::Stream<Item = std::result::Result<web::Bytes, actix_web::Error>> {
    let state = Follow {
        db,
        id,
        after_event: after,
        after_log: 0,
        done: false,
        idle_since_final: 0,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let (ae, al, id) = (s.after_event, s.after_log, s.id);
            let polled =
                s.db.run(move |conn| {
                    let events = load_events(conn, id, ae, 500)?;
                    let logs = load_logs(conn, id, None, al, 500)?;
                    let status = store::execution(conn, id)?.status;
                    Ok((events, logs, status))
                })
                .await;
            let (events, logs, status) = match polled {
                Ok(p) => p,
                Err(_) => {
                    s.done = true;
                    return Some((
                        Ok(web::Bytes::from_static(
                            b"event: error\ndata: {\"error\":\"the stream stopped\"}\n\n",
                        )),
                        s,
                    ));
                }
            };
            let mut out = String::new();
            for e in events {
                s.after_event = e.id;
                let event_id = e.id;
                out.push_str(&format!(
                    "id: e{event_id}\nevent: event\ndata: {}\n\n",
                    json!(event_view(e))
                ));
            }
            for l in logs {
                s.after_log = l.id;
                out.push_str(&format!("event: log\ndata: {}\n\n", json!(log_line(l))));
            }
            let finished = status
                .parse::<ExecutionStatus>()
                .map(ExecutionStatus::is_final)
                .unwrap_or(true);
            if out.is_empty() && finished {
                s.idle_since_final += 1;
                if s.idle_since_final >= 2 {
                    s.done = true;
                    return Some((Ok(web::Bytes::from_static(b"event: end\ndata: {}\n\n")), s));
                }
            }
            if !out.is_empty() {
                return Some((Ok(web::Bytes::from(out)), s));
            }
            tokio::time::sleep(StdDuration::from_millis(300)).await;
        }
    })
}

/// One step in a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportStep {
    pub key: String,
    pub kind: String,
    pub status: StepStatus,
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For checks and approvals: what proved the result (outputs, decision).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub evidence: Option<Value>,
    /// What weakened this step's guarantees, e.g. TLS verification turned off.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What happened in an execution, against the plan's target.
#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    pub execution: Uuid,
    pub plan: String,
    pub version: i32,
    pub mode: ExecutionMode,
    pub status: ExecutionStatus,
    pub started_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// From the start to the end of the last step (so far, while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_rto_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rto: Option<HumanDuration>,
    /// Whether the measured RTO is within the target (absent without a target or an end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_met: Option<bool>,
    /// The chain of dependencies that took longest, as measured.
    pub critical_path: Vec<String>,
    pub timeline: Vec<ReportStep>,
    /// The instances recovery providers created for this execution, and their clean-up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<RecoveredInstance>,
}

fn secs(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<f64> {
    Some((b? - a?).num_milliseconds() as f64 / 1000.0)
}

fn build_report(
    e: ExecutionRow,
    runs: Vec<StepRunRow>,
    target_rto: Option<Duration>,
    recovered: Vec<RecoveredInstance>,
) -> Report {
    let resolved: HashMap<String, ResolvedStep> = runs
        .iter()
        .filter_map(|r| {
            serde_json::from_value::<ResolvedStep>(r.step.clone())
                .ok()
                .map(|s| (r.key.clone(), s))
        })
        .collect();
    // Measured critical path: the finished step that ended last, walked back through the
    // dependency that ended last each time.
    let ended: BTreeMap<&str, DateTime<Utc>> = runs
        .iter()
        .filter_map(|r| r.finished_at.map(|f| (r.key.as_str(), f)))
        .collect();
    let mut path = Vec::new();
    let mut cursor = runs
        .iter()
        .filter(|r| {
            r.status == StepStatus::Succeeded.as_str() || r.status == StepStatus::Failed.as_str()
        })
        .filter_map(|r| r.finished_at.map(|f| (f, r.key.as_str())))
        .max()
        .map(|(_, k)| k);
    while let Some(key) = cursor {
        path.push(key.to_owned());
        cursor = resolved
            .get(key)
            .and_then(|s| {
                s.depends_on
                    .iter()
                    .filter_map(|d| ended.get(d.as_str()).map(|t| (*t, d.as_str())))
                    .max()
            })
            .map(|(_, k)| k);
    }
    path.reverse();
    let last_end = runs.iter().filter_map(|r| r.finished_at).max();
    let measured = secs(e.started_at, e.finished_at.or(last_end));
    let rto_met = match (measured, target_rto, e.finished_at) {
        (Some(m), Some(t), Some(_)) => Some(m <= t.as_secs() as f64),
        _ => None,
    };
    let timeline = runs
        .into_iter()
        .map(|r| {
            let evidence = match r.kind.as_str() {
                "check" | "manual_approval" => {
                    Some(json!({"outputs": r.outputs, "approval": r.approval}))
                }
                "host_recovery" | "power_on" => Some(json!({"outputs": r.outputs})),
                _ => None,
            };
            let mut warnings = Vec::new();
            if r.outputs.get("tls_verify") == Some(&Value::Bool(false)) {
                warnings.push(
                    "TLS certificate verification was off for this step (tls_verify: false)"
                        .to_owned(),
                );
            }
            ReportStep {
                warnings,
                duration_secs: secs(r.started_at, r.finished_at),
                status: r.status.parse().unwrap_or(StepStatus::Pending),
                key: r.key,
                kind: r.kind,
                attempts: r.attempt,
                started_at: r.started_at,
                finished_at: r.finished_at,
                exit_code: r.exit_code,
                error: r.error,
                evidence,
            }
        })
        .collect();
    Report {
        execution: e.id,
        plan: e.plan_name,
        version: e.plan_version,
        mode: parse_mode(&e.mode),
        status: e.status.parse().unwrap_or(ExecutionStatus::Running),
        started_by: e.created_by,
        started_at: e.started_at,
        finished_at: e.finished_at,
        measured_rto_secs: measured,
        target_rto,
        rto_met,
        critical_path: path,
        timeline,
        recovered,
    }
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "# {} of `{}` (version {})\n\n- Execution: `{}`\n- Status: **{}**\n- Started by: {}\n",
        match r.mode {
            ExecutionMode::Drill => "Drill",
            ExecutionMode::Failover => "Failover",
            ExecutionMode::DryRun => "Dry run",
        },
        r.plan,
        r.version,
        r.execution,
        r.status,
        r.started_by
    );
    if let Some(t) = r.started_at {
        md.push_str(&format!("- Started: {}\n", t.to_rfc3339()));
    }
    if let Some(t) = r.finished_at {
        md.push_str(&format!("- Finished: {}\n", t.to_rfc3339()));
    }
    match (r.measured_rto_secs, r.target_rto) {
        (Some(m), Some(t)) => md.push_str(&format!(
            "- Measured RTO: {m:.1} s against a target of {t} ({})\n",
            match r.rto_met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "still running",
            }
        )),
        (Some(m), None) => md.push_str(&format!("- Measured RTO: {m:.1} s (no target set)\n")),
        _ => {}
    }
    md.push_str(&format!(
        "- Critical path: {}\n\n",
        if r.critical_path.is_empty() {
            "-".to_owned()
        } else {
            r.critical_path.join(" → ")
        }
    ));
    md.push_str("| step | kind | status | attempts | duration (s) | exit | note |\n|---|---|---|---|---|---|---|\n");
    for s in &r.timeline {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            s.key,
            s.kind,
            s.status,
            s.attempts,
            s.duration_secs
                .map(|d| format!("{d:.1}"))
                .unwrap_or_default(),
            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            s.error
                .iter()
                .chain(s.warnings.iter().map(|w| w as &String))
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("; ")
                .replace('|', "\\|")
                .replace('\n', " "),
        ));
    }
    if !r.recovered.is_empty() {
        md.push_str("\n## Recovered instances\n\n| host | provider host | instance | private IP | public IP | state | deleted |\n|---|---|---|---|---|---|---|\n");
        for i in &r.recovered {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                i.host,
                i.provider_host_id,
                i.instance_id.as_deref().unwrap_or("-"),
                i.private_ip.as_deref().unwrap_or("-"),
                i.public_ip.as_deref().unwrap_or("-"),
                i.state,
                match (&i.deleted_at, &i.cleanup_error) {
                    (Some(t), _) => t.to_rfc3339(),
                    (None, Some(e)) => format!("failed: {}", e.replace('|', "\\|")),
                    (None, None) => "-".to_owned(),
                }
            ));
        }
    }
    md
}

/// The execution's report: timeline per step, evidence of checks and approvals, the measured
/// critical path, and the measured RTO against the plan's target. `Accept: text/markdown` for
/// a document to paste into a ticket.
#[utoipa::path(get, path = "/api/v1/executions/{id}/report", tag = "executions",
    params(("id" = Uuid, Path, description = "The execution's id")),
    responses(
        (status = 200, description = "The report", content(
            (Report = "application/json"),
            (String = "text/markdown"),
        )),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such execution", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn report(
    _: Viewer,
    req: HttpRequest,
    db: web::Data<Db>,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id = parse_id(&id)?;
    let (e, runs, target, recovered) = db
        .run(move |conn| {
            let e = store::execution(conn, id)?;
            let runs = store::step_runs_of(conn, id)?;
            let plan = crate::db::plans::find(conn, &e.plan_id.to_string())?;
            let version = crate::db::plans::version(conn, &plan, e.plan_version)?;
            let spec: PlanSpec = serde_json::from_value(version.spec).map_err(Error::internal)?;
            let recovered = crate::db::providers::recoveries_of(conn, id)?;
            Ok((e, runs, spec.target_rto, recovered))
        })
        .await?;
    let report = build_report(
        e,
        runs,
        target,
        recovered.into_iter().map(RecoveredInstance::from).collect(),
    );
    if crate::http::accepts(&req, &["text/markdown"]) {
        return Ok(HttpResponse::Ok()
            .content_type("text/markdown; charset=utf-8")
            .body(markdown(&report)));
    }
    Ok(HttpResponse::Ok().json(report))
}

/// Delete every instance this drill recovered (and only those). Idempotent: what is deleted
/// stays deleted and is not asked for again; what failed to delete is retried. Refused for a
/// failover (its instances are production) and while the drill still runs.
#[utoipa::path(post, path = "/api/v1/executions/{id}/cleanup", tag = "executions",
    params(("id" = Uuid, Path, description = "The drill's id")),
    responses(
        (status = 200, description = "What the drill recovered and what is deleted now", body = CleanupReport),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such execution", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A failover, a dry run, or a drill still running", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn cleanup(
    Operator(user): Operator,
    db: web::Data<Db>,
    key: web::Data<crate::crypto::MasterKey>,
    registry: web::Data<crate::providers::registry::Registry>,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let id = parse_id(&id)?;
    let actor = crate::db::audit::Actor::from_user(&user);
    let report =
        crate::providers::cleanup::cleanup(&db, key.into_inner(), registry.into_inner(), id, actor)
            .await?;
    Ok(HttpResponse::Ok().json(report))
}
