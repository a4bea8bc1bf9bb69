//! The engine's state in PostgreSQL. Every transition is one transaction that writes the new
//! state and the event it emits (the timeline, and the webhook outbox); steps whose inputs are
//! met become ready in the same transaction that finished their last dependency.

use std::collections::{BTreeMap, HashMap};

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text, Uuid as SqlUuid};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::state::{ExecutionStatus, StepStatus};
use crate::db::models::{ExecutionRow, StepRunRow};
use crate::db::schema::{execution_events, executions, step_runs};
use crate::domain::plans::{Mode, OnFailure, ResolvedStep};
use crate::error::{Error, Result};

/// The channel that wakes workers in every instance.
pub const WAKE_CHANNEL: &str = "dro_steps_ready";

/// How an execution is run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    Drill,
    Failover,
    /// Renders and validates every step; touches nothing.
    DryRun,
}

impl ExecutionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drill => "drill",
            Self::Failover => "failover",
            Self::DryRun => "dry_run",
        }
    }

    /// The plan mode whose steps run (a dry run renders what a drill would do).
    pub fn plan_mode(self) -> Mode {
        match self {
            Self::Failover => Mode::Failover,
            Self::Drill | Self::DryRun => Mode::Drill,
        }
    }
}

/// Appends one event to an execution's timeline.
pub fn event(
    conn: &mut PgConnection,
    execution: Uuid,
    kind: &str,
    step: Option<&str>,
    data: Value,
) -> Result<()> {
    diesel::insert_into(execution_events::table)
        .values((
            execution_events::execution_id.eq(execution),
            execution_events::type_.eq(kind),
            execution_events::step_key.eq(step),
            execution_events::data.eq(data),
        ))
        .execute(conn)?;
    Ok(())
}

/// Wakes the workers of every instance once the transaction commits.
pub fn wake(conn: &mut PgConnection) -> Result<()> {
    diesel::sql_query(format!("NOTIFY {WAKE_CHANNEL}")).execute(conn)?;
    Ok(())
}

/// What to create.
pub struct NewExecution<'a> {
    pub plan_id: Uuid,
    pub plan_name: &'a str,
    pub version: i32,
    pub resolved: &'a [ResolvedStep],
    pub mode: ExecutionMode,
    pub params: &'a Map<String, Value>,
    pub idempotency_key: Option<&'a str>,
    pub created_by: &'a str,
    /// Start paused (a failover that still waits for an operator's go).
    pub paused: Option<&'a str>,
    /// A drill's instances are deleted this long after it ends.
    pub auto_cleanup_secs: Option<i32>,
}

/// The execution a caller already created with this idempotency key, if any.
pub fn find_idempotent(
    conn: &mut PgConnection,
    plan_id: Uuid,
    created_by: &str,
    key: &str,
) -> Result<Option<ExecutionRow>> {
    Ok(executions::table
        .filter(executions::plan_id.eq(plan_id))
        .filter(executions::created_by.eq(created_by))
        .filter(executions::idempotency_key.eq(key))
        .select(ExecutionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Records a dry run: every step rendered (secrets masked) and marked as it would go, nothing
/// touched. The execution is finished at once.
pub fn create_dry_run(
    conn: &mut PgConnection,
    new: NewExecution<'_>,
    rendered: &[crate::domain::plans::RenderedStep],
) -> Result<ExecutionRow> {
    let row = create(
        conn,
        NewExecution {
            paused: Some("dry run"),
            ..new
        },
    )?;
    let by_key: HashMap<&str, &crate::domain::plans::RenderedStep> =
        rendered.iter().map(|r| (r.key.as_str(), r)).collect();
    for run in step_runs_of(conn, row.id)? {
        let Some(r) = by_key.get(run.key.as_str()) else {
            continue;
        };
        let status = if r.runs {
            StepStatus::Succeeded
        } else {
            StepStatus::Skipped
        };
        diesel::update(step_runs::table.find((row.id, &run.key)))
            .set((
                step_runs::status.eq(status.as_str()),
                step_runs::outputs.eq(json!({"rendered": r.params})),
                step_runs::pending_deps.eq(0),
                step_runs::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
        event(
            conn,
            row.id,
            &format!("step.{status}"),
            Some(&run.key),
            json!({"dry_run": true}),
        )?;
    }
    diesel::update(executions::table.find(row.id))
        .set((
            executions::status.eq(ExecutionStatus::Succeeded.as_str()),
            executions::pause_reason.eq(None::<String>),
            executions::finished_at.eq(diesel::dsl::now),
        ))
        .execute(conn)?;
    event(
        conn,
        row.id,
        "execution.succeeded",
        None,
        json!({"dry_run": true}),
    )?;
    execution(conn, row.id)
}

/// Creates an execution and its step runs: roots are ready at once, steps outside the mode are
/// skipped.
pub fn create(conn: &mut PgConnection, new: NewExecution<'_>) -> Result<ExecutionRow> {
    let id = Uuid::new_v4();
    let mode = new.mode.plan_mode();
    let status = if new.paused.is_some() {
        ExecutionStatus::Paused
    } else {
        ExecutionStatus::Running
    };
    let row: ExecutionRow = diesel::insert_into(executions::table)
        .values((
            executions::id.eq(id),
            executions::plan_id.eq(new.plan_id),
            executions::plan_version.eq(new.version),
            executions::plan_name.eq(new.plan_name),
            executions::mode.eq(new.mode.as_str()),
            executions::status.eq(status.as_str()),
            executions::params.eq(Value::Object(new.params.clone())),
            executions::idempotency_key.eq(new.idempotency_key),
            executions::pause_reason.eq(new.paused),
            executions::created_by.eq(new.created_by),
            executions::started_at.eq(diesel::dsl::now),
            executions::auto_cleanup_secs.eq(new.auto_cleanup_secs),
        ))
        .returning(ExecutionRow::as_returning())
        .get_result(conn)?;
    let runs_in: HashMap<&str, bool> = new
        .resolved
        .iter()
        .map(|r| (r.key.as_str(), r.run_in.includes(mode)))
        .collect();
    let mut dependents: HashMap<&str, Vec<String>> = HashMap::new();
    for r in new.resolved {
        for d in &r.depends_on {
            dependents
                .entry(d.as_str())
                .or_default()
                .push(r.key.clone());
        }
    }
    let rows: Vec<_> = new
        .resolved
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let runs = runs_in[r.key.as_str()];
            let pending = r
                .depends_on
                .iter()
                .filter(|d| runs_in.get(d.as_str()).copied().unwrap_or(false))
                .count() as i32;
            let status = match (runs, pending) {
                (false, _) => StepStatus::Skipped,
                (true, 0) => StepStatus::Ready,
                (true, _) => StepStatus::Pending,
            };
            (
                step_runs::execution_id.eq(id),
                step_runs::key.eq(r.key.clone()),
                step_runs::position.eq(i as i32),
                step_runs::kind.eq(r.definition.kind.as_str()),
                step_runs::step.eq(serde_json::to_value(r).expect("a resolved step serializes")),
                step_runs::dependents.eq(dependents.remove(r.key.as_str()).unwrap_or_default()),
                step_runs::status.eq(status.as_str()),
                step_runs::pending_deps.eq(pending),
                step_runs::error
                    .eq((!runs).then(|| format!("does not run in a {}", mode.as_str()))),
            )
        })
        .collect();
    diesel::insert_into(step_runs::table)
        .values(&rows)
        .execute(conn)?;
    event(
        conn,
        id,
        "execution.created",
        None,
        json!({"mode": new.mode, "plan": new.plan_name, "version": new.version, "by": new.created_by}),
    )?;
    match new.paused {
        Some(reason) => event(
            conn,
            id,
            "execution.paused",
            None,
            json!({"reason": reason}),
        )?,
        None => {
            event(conn, id, "execution.started", None, json!({}))?;
            wake(conn)?;
        }
    }
    Ok(row)
}

pub fn execution(conn: &mut PgConnection, id: Uuid) -> Result<ExecutionRow> {
    executions::table
        .find(id)
        .select(ExecutionRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("execution", id))
}

/// Locks an execution row. Every transaction that changes an execution takes this lock before
/// any step row, so the lock order is always execution, then steps (no deadlock); `NO KEY
/// UPDATE` does not conflict with the key-share locks that inserting events takes.
fn execution_for_update(conn: &mut PgConnection, id: Uuid) -> Result<ExecutionRow> {
    executions::table
        .find(id)
        .select(ExecutionRow::as_select())
        .for_no_key_update()
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("execution", id))
}

pub fn step_runs_of(conn: &mut PgConnection, id: Uuid) -> Result<Vec<StepRunRow>> {
    Ok(step_runs::table
        .filter(step_runs::execution_id.eq(id))
        .order(step_runs::position)
        .select(StepRunRow::as_select())
        .load(conn)?)
}

fn step_for_update(conn: &mut PgConnection, id: Uuid, key: &str) -> Result<StepRunRow> {
    step_runs::table
        .find((id, key))
        .select(StepRunRow::as_select())
        .for_update()
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("step", key))
}

fn status_of(row: &StepRunRow) -> Result<StepStatus> {
    row.status.parse().map_err(Error::internal)
}

fn exec_status(row: &ExecutionRow) -> Result<ExecutionStatus> {
    row.status.parse().map_err(Error::internal)
}

/// Moves an execution to `to` (checked against the state machine), with its event.
fn set_execution(
    conn: &mut PgConnection,
    row: &ExecutionRow,
    to: ExecutionStatus,
    reason: Option<&str>,
) -> Result<()> {
    let from = exec_status(row)?;
    if from == to {
        return Ok(());
    }
    if !from.can_transition(to) {
        return Err(Error::conflict(format!(
            "the execution is {from}; it cannot become {to}"
        )));
    }
    let finished = to.is_final();
    diesel::update(executions::table.find(row.id))
        .set((
            executions::status.eq(to.as_str()),
            executions::pause_reason.eq(if to == ExecutionStatus::Paused {
                reason
            } else {
                None
            }),
            executions::error.eq(if to == ExecutionStatus::Failed {
                reason
            } else {
                row.error.as_deref()
            }),
        ))
        .execute(conn)?;
    if finished {
        diesel::update(executions::table.find(row.id))
            .set(executions::finished_at.eq(diesel::dsl::now))
            .execute(conn)?;
    }
    let kind = match to {
        ExecutionStatus::Queued | ExecutionStatus::Running => "execution.resumed",
        ExecutionStatus::Paused => "execution.paused",
        ExecutionStatus::Succeeded => "execution.succeeded",
        ExecutionStatus::Failed => "execution.failed",
        ExecutionStatus::Cancelled => "execution.cancelled",
    };
    event(conn, row.id, kind, None, json!({"reason": reason}))
}

/// Moves a step run to `to` (checked), with its event.
fn set_step(
    conn: &mut PgConnection,
    row: &StepRunRow,
    to: StepStatus,
    error: Option<&str>,
    data: Value,
) -> Result<()> {
    let from = status_of(row)?;
    if !from.can_transition(to) {
        return Err(Error::conflict(format!(
            "step `{}` is {from}; it cannot become {to}",
            row.key
        )));
    }
    let finished = to.is_final() || to == StepStatus::Interrupted;
    diesel::update(step_runs::table.find((row.execution_id, &row.key)))
        .set((
            step_runs::status.eq(to.as_str()),
            step_runs::error.eq(error),
            step_runs::lease_owner.eq(None::<String>),
            step_runs::lease_expires_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            // The database's clock, as for every other timestamp of the engine.
            step_runs::finished_at.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >(if finished {
                "now()"
            } else {
                "finished_at"
            })),
        ))
        .execute(conn)?;
    let kind = format!("step.{to}");
    let mut data = data;
    if let (Some(e), Value::Object(map)) = (error, &mut data) {
        map.insert("error".into(), json!(e));
    }
    event(conn, row.execution_id, &kind, Some(&row.key), data)
}

/// Lets the dependents of a step that succeeded (or was skipped) go when it was their last
/// dependency.
fn release_dependents(
    conn: &mut PgConnection,
    execution: Uuid,
    dependents: &[String],
) -> Result<Vec<String>> {
    if dependents.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(QueryableByName)]
    struct Released {
        #[diesel(sql_type = Text)]
        key: String,
        #[diesel(sql_type = Text)]
        status: String,
    }
    let released: Vec<Released> = diesel::sql_query(
        "UPDATE step_runs SET pending_deps = pending_deps - 1,
             status = CASE WHEN pending_deps <= 1 THEN 'ready' ELSE status END,
             next_attempt_at = CASE WHEN pending_deps <= 1 THEN now() ELSE next_attempt_at END
         WHERE execution_id = $1 AND key = ANY($2) AND status = 'pending'
         RETURNING key, status",
    )
    .bind::<SqlUuid, _>(execution)
    .bind::<diesel::sql_types::Array<Text>, _>(dependents)
    .load(conn)?;
    let ready: Vec<&str> = released
        .iter()
        .filter(|r| r.status == StepStatus::Ready.as_str())
        .map(|r| r.key.as_str())
        .collect();
    if ready.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = ready
        .iter()
        .map(|key| {
            (
                execution_events::execution_id.eq(execution),
                execution_events::type_.eq("step.ready"),
                execution_events::step_key.eq(Some(*key)),
                execution_events::data.eq(json!({})),
            )
        })
        .collect();
    diesel::insert_into(execution_events::table)
        .values(&rows)
        .execute(conn)?;
    wake(conn)?;
    Ok(ready.into_iter().map(str::to_owned).collect())
}

/// Ends a running execution when nothing can move any more: steps still pending then wait on
/// a failed dependency and are skipped as blocked.
/// Callers hold the execution's lock.
fn maybe_finish(conn: &mut PgConnection, execution: Uuid) -> Result<()> {
    let active: bool = diesel::select(diesel::dsl::exists(
        step_runs::table
            .filter(step_runs::execution_id.eq(execution))
            .filter(step_runs::status.eq_any([
                StepStatus::Ready.as_str(),
                StepStatus::Running.as_str(),
                StepStatus::WaitingApproval.as_str(),
                StepStatus::Interrupted.as_str(),
            ])),
    ))
    .get_result(conn)?;
    if active {
        return Ok(());
    }
    let exec = execution_for_update(conn, execution)?;
    if exec_status(&exec)? != ExecutionStatus::Running {
        return Ok(());
    }
    let runs = step_runs_of(conn, execution)?;
    let statuses: Vec<StepStatus> = runs.iter().map(status_of).collect::<Result<_>>()?;
    let active = statuses.iter().any(|s| {
        matches!(
            s,
            StepStatus::Ready
                | StepStatus::Running
                | StepStatus::WaitingApproval
                | StepStatus::Interrupted
        )
    });
    if active {
        return Ok(());
    }
    for (row, status) in runs.iter().zip(&statuses) {
        if *status == StepStatus::Pending {
            set_step(
                conn,
                row,
                StepStatus::Skipped,
                Some("blocked: a step it depends on failed"),
                json!({}),
            )?;
        }
    }
    let failed = statuses.contains(&StepStatus::Failed) || statuses.contains(&StepStatus::Pending);
    if failed {
        set_execution(
            conn,
            &exec,
            ExecutionStatus::Failed,
            Some("one or more steps failed"),
        )
    } else {
        set_execution(conn, &exec, ExecutionStatus::Succeeded, None)
    }
}

/// A step a worker has claimed.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    pub execution_id: Uuid,
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    /// How long the step was ready before a worker took it.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub waited_secs: f64,
    /// The resolved (pinned) step.
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub step: Value,
}

/// Claims up to `limit` ready steps of running executions for `owner`, holding a lease of
/// `lease_secs` from the database's clock.
pub fn claim(
    conn: &mut PgConnection,
    owner: &str,
    lease_secs: i32,
    limit: i32,
) -> Result<Vec<Claimed>> {
    claim_among(conn, owner, lease_secs, limit, None)
}

/// Claims like `claim`, optionally only among some steps of one execution (a worker that just
/// made them ready takes one of them over at once).
fn claim_among(
    conn: &mut PgConnection,
    owner: &str,
    lease_secs: i32,
    limit: i32,
    among: Option<(Uuid, &[String])>,
) -> Result<Vec<Claimed>> {
    let (execution, keys) = match among {
        Some((execution, keys)) => (Some(execution), keys.to_vec()),
        None => (None, Vec::new()),
    };
    let claimed: Vec<Claimed> = diesel::sql_query(
        "WITH picked AS (
             SELECT sr.execution_id, sr.key FROM step_runs sr
             JOIN executions e ON e.id = sr.execution_id
             WHERE sr.status = 'ready' AND sr.next_attempt_at <= now() AND e.status = 'running'
               AND ($4::uuid IS NULL OR (sr.execution_id = $4 AND sr.key = ANY($5)))
             ORDER BY sr.next_attempt_at, sr.position
             LIMIT $3
             FOR UPDATE OF sr SKIP LOCKED)
         UPDATE step_runs sr SET status = 'running', attempt = sr.attempt + 1, lease_owner = $1,
             lease_expires_at = now() + make_interval(secs => $2),
             started_at = coalesce(sr.started_at, now()), error = NULL
         FROM picked WHERE sr.execution_id = picked.execution_id AND sr.key = picked.key
         RETURNING sr.execution_id, sr.key, sr.attempt, sr.step,
             extract(epoch FROM now() - sr.next_attempt_at)::float8 AS waited_secs",
    )
    .bind::<Text, _>(owner)
    .bind::<Integer, _>(lease_secs)
    .bind::<Integer, _>(limit)
    .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(execution)
    .bind::<diesel::sql_types::Array<Text>, _>(keys)
    .load(conn)?;
    let rows: Vec<_> = claimed
        .iter()
        .map(|c| {
            (
                execution_events::execution_id.eq(c.execution_id),
                execution_events::type_.eq("step.started"),
                execution_events::step_key.eq(Some(c.key.as_str())),
                execution_events::data.eq(json!({"attempt": c.attempt, "worker": owner})),
            )
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(execution_events::table)
            .values(&rows)
            .execute(conn)?;
    }
    Ok(claimed)
}

/// Gives back a claimed step that never started: ready again, the attempt not counted.
pub fn release(conn: &mut PgConnection, c: &Claimed, owner: &str) -> Result<()> {
    diesel::update(
        step_runs::table
            .find((c.execution_id, &c.key))
            .filter(step_runs::lease_owner.eq(owner))
            .filter(step_runs::status.eq(StepStatus::Running.as_str())),
    )
    .set((
        step_runs::status.eq(StepStatus::Ready.as_str()),
        step_runs::attempt.eq(step_runs::attempt - 1),
        step_runs::lease_owner.eq(None::<String>),
        step_runs::lease_expires_at.eq(None::<chrono::DateTime<chrono::Utc>>),
    ))
    .execute(conn)?;
    event(
        conn,
        c.execution_id,
        "step.released",
        Some(&c.key),
        json!({"worker": owner}),
    )?;
    wake(conn)
}

/// Renews a lease; false when the step is no longer this worker's to run (cancelled,
/// reclaimed, or its execution stopped).
pub fn heartbeat(
    conn: &mut PgConnection,
    c: &Claimed,
    owner: &str,
    lease_secs: i32,
) -> Result<bool> {
    let renewed = diesel::sql_query(
        "UPDATE step_runs sr SET lease_expires_at = now() + make_interval(secs => $4)
         FROM executions e
         WHERE sr.execution_id = $1 AND sr.key = $2 AND sr.lease_owner = $3 AND sr.attempt = $5
           AND sr.status = 'running' AND e.id = sr.execution_id AND e.status IN ('running', 'paused')",
    )
    .bind::<SqlUuid, _>(c.execution_id)
    .bind::<Text, _>(&c.key)
    .bind::<Text, _>(owner)
    .bind::<Integer, _>(lease_secs)
    .bind::<Integer, _>(c.attempt)
    .execute(conn)?;
    Ok(renewed == 1)
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        outputs: Map<String, Value>,
        exit_code: Option<i32>,
    },
    Failed {
        error: String,
        exit_code: Option<i32>,
        outputs: Map<String, Value>,
    },
    /// The worker stopped the run because the step or its execution was cancelled.
    Cancelled,
    /// A manual approval now waits for a person until `deadline_secs` from now.
    AwaitApproval { deadline_secs: i64 },
}

/// Records the end of an attempt, if the worker still holds the step, and moves the graph on.
/// Returns the step this worker should run next, when finishing made one ready and it took it.
pub fn finish(
    conn: &mut PgConnection,
    c: &Claimed,
    owner: &str,
    lease_secs: i32,
    outcome: Outcome,
) -> Result<Option<Claimed>> {
    execution_for_update(conn, c.execution_id)?;
    let row = step_for_update(conn, c.execution_id, &c.key)?;
    if row.status != StepStatus::Running.as_str()
        || row.lease_owner.as_deref() != Some(owner)
        || row.attempt != c.attempt
    {
        // Lost the lease meanwhile (cancelled or reclaimed): whoever holds it decides.
        return Ok(None);
    }
    let step: ResolvedStep = serde_json::from_value(row.step.clone()).map_err(Error::internal)?;
    match outcome {
        Outcome::Succeeded { outputs, exit_code } => {
            // One statement for the result and the state (running -> succeeded is allowed).
            debug_assert!(StepStatus::Running.can_transition(StepStatus::Succeeded));
            diesel::update(step_runs::table.find((row.execution_id, &row.key)))
                .set((
                    step_runs::outputs.eq(Value::Object(outputs)),
                    step_runs::exit_code.eq(exit_code),
                    step_runs::status.eq(StepStatus::Succeeded.as_str()),
                    step_runs::error.eq(None::<String>),
                    step_runs::lease_owner.eq(None::<String>),
                    step_runs::lease_expires_at.eq(None::<chrono::DateTime<chrono::Utc>>),
                    step_runs::finished_at.eq(diesel::dsl::sql::<
                        diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
                    >("now()")),
                ))
                .execute(conn)?;
            event(
                conn,
                row.execution_id,
                "step.succeeded",
                Some(&row.key),
                json!({"attempt": row.attempt, "exit_code": exit_code}),
            )?;
            let ready = release_dependents(conn, row.execution_id, &row.dependents)?;
            maybe_finish(conn, row.execution_id)?;
            if ready.is_empty() {
                return Ok(None);
            }
            // Hand over: take one of the steps this one just made ready, in this same
            // transaction (a chain then runs without a trip through the dispatcher).
            Ok(claim_among(conn, owner, lease_secs, 1, Some((row.execution_id, &ready)))?.pop())
        }
        Outcome::Cancelled => {
            set_step(
                conn,
                &row,
                StepStatus::Cancelled,
                Some("cancelled"),
                json!({"attempt": row.attempt}),
            )?;
            maybe_finish(conn, row.execution_id)?;
            Ok(None)
        }
        Outcome::AwaitApproval { deadline_secs } => {
            diesel::sql_query(
                "UPDATE step_runs SET deadline_at = now() + make_interval(secs => $3) WHERE execution_id = $1 AND key = $2",
            )
            .bind::<SqlUuid, _>(row.execution_id)
            .bind::<Text, _>(&row.key)
            .bind::<diesel::sql_types::Double, _>(deadline_secs as f64)
            .execute(conn)?;
            set_step(
                conn,
                &row,
                StepStatus::WaitingApproval,
                None,
                step.definition.params.clone(),
            )?;
            event(
                conn,
                row.execution_id,
                "approval.required",
                Some(&row.key),
                step.definition.params,
            )?;
            Ok(None)
        }
        Outcome::Failed {
            error,
            exit_code,
            outputs,
        } => {
            diesel::update(step_runs::table.find((row.execution_id, &row.key)))
                .set((
                    step_runs::outputs.eq(Value::Object(outputs)),
                    step_runs::exit_code.eq(exit_code),
                ))
                .execute(conn)?;
            let retry = &step.definition.retry;
            if (row.attempt as u32) < retry.max_attempts {
                let delay = retry.delay_before(row.attempt as u32 + 1).as_secs() as f64;
                diesel::sql_query(
                    "UPDATE step_runs SET next_attempt_at = now() + make_interval(secs => $3) WHERE execution_id = $1 AND key = $2",
                )
                .bind::<SqlUuid, _>(row.execution_id)
                .bind::<Text, _>(&row.key)
                .bind::<diesel::sql_types::Double, _>(delay)
                .execute(conn)?;
                set_step(
                    conn,
                    &row,
                    StepStatus::Ready,
                    Some(&error),
                    json!({"attempt": row.attempt, "retry_in_secs": delay}),
                )?;
                wake(conn)?;
                return Ok(None);
            }
            set_step(
                conn,
                &row,
                StepStatus::Failed,
                Some(&error),
                json!({"attempt": row.attempt, "exit_code": exit_code}),
            )?;
            apply_on_failure(conn, &row, step.on_failure)?;
            Ok(None)
        }
    }
}

/// What a step that failed for good does to its execution.
fn apply_on_failure(
    conn: &mut PgConnection,
    row: &StepRunRow,
    on_failure: OnFailure,
) -> Result<()> {
    let exec = execution_for_update(conn, row.execution_id)?;
    if exec_status(&exec)?.is_final() {
        return Ok(());
    }
    match on_failure {
        OnFailure::Abort => {
            cancel_open_steps(
                conn,
                row.execution_id,
                "the execution was aborted by a failed step",
            )?;
            set_execution(
                conn,
                &exec,
                ExecutionStatus::Failed,
                Some(&format!("step `{}` failed (on_failure: abort)", row.key)),
            )
        }
        OnFailure::Pause => set_execution(
            conn,
            &exec,
            ExecutionStatus::Paused,
            Some(&format!(
                "step `{}` failed (on_failure: pause): retry or skip it, then resume",
                row.key
            )),
        ),
        OnFailure::Continue => maybe_finish(conn, row.execution_id),
    }
}

/// Cancels every step that has not started (running ones notice at their next heartbeat).
fn cancel_open_steps(conn: &mut PgConnection, execution: Uuid, why: &str) -> Result<()> {
    for row in step_runs_of(conn, execution)? {
        let status = status_of(&row)?;
        if matches!(
            status,
            StepStatus::Pending
                | StepStatus::Ready
                | StepStatus::WaitingApproval
                | StepStatus::Interrupted
        ) {
            set_step(conn, &row, StepStatus::Cancelled, Some(why), json!({}))?;
        }
    }
    Ok(())
}

/// The outputs of an execution's finished steps, for later steps' templates.
pub fn outputs_of(conn: &mut PgConnection, execution: Uuid) -> Result<BTreeMap<String, Value>> {
    let rows: Vec<(String, Value)> = step_runs::table
        .filter(step_runs::execution_id.eq(execution))
        .filter(step_runs::status.eq(StepStatus::Succeeded.as_str()))
        .select((step_runs::key, step_runs::outputs))
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

/// Reclaims what dead workers left: an expired lease on an idempotent step makes it ready
/// again; on any other step it becomes `interrupted` and its execution pauses for a person.
/// Also settles manual approvals past their deadline. Returns how many rows it touched.
pub fn reap(conn: &mut PgConnection) -> Result<usize> {
    let candidates: Vec<(Uuid, String)> = step_runs::table
        .filter(step_runs::status.eq(StepStatus::Running.as_str()))
        .filter(step_runs::lease_expires_at.lt(diesel::dsl::now))
        .select((step_runs::execution_id, step_runs::key))
        .limit(100)
        .load(conn)?;
    let mut touched = 0;
    for (execution, key) in candidates {
        // Execution first, then the step (the engine's lock order); re-check under the lock.
        let exec = execution_for_update(conn, execution)?;
        let row = step_for_update(conn, execution, &key)?;
        let still_expired = row.status == StepStatus::Running.as_str()
            && row.lease_expires_at.is_some_and(|t| t < chrono::Utc::now());
        if !still_expired {
            continue;
        }
        touched += 1;
        let step: ResolvedStep =
            serde_json::from_value(row.step.clone()).map_err(Error::internal)?;
        let worker = row.lease_owner.clone().unwrap_or_default();
        if exec_status(&exec)?.is_final() {
            set_step(
                conn,
                &row,
                StepStatus::Cancelled,
                Some("its execution ended while its worker was gone"),
                json!({}),
            )?;
        } else if step.definition.idempotent {
            set_step(
                conn,
                &row,
                StepStatus::Ready,
                Some("its worker stopped answering; running it again (idempotent)"),
                json!({"worker": worker}),
            )?;
            wake(conn)?;
        } else {
            set_step(
                conn,
                &row,
                StepStatus::Interrupted,
                Some("its worker stopped answering mid-run; it may have half-run"),
                json!({"worker": worker}),
            )?;
            if exec_status(&exec)? == ExecutionStatus::Running {
                set_execution(
                    conn,
                    &exec,
                    ExecutionStatus::Paused,
                    Some(&format!("step `{}` was interrupted: check what it did, then retry or skip it and resume", row.key)),
                )?;
            }
        }
    }
    let overdue: Vec<(Uuid, String)> = step_runs::table
        .filter(step_runs::status.eq(StepStatus::WaitingApproval.as_str()))
        .filter(step_runs::deadline_at.lt(diesel::dsl::now))
        .select((step_runs::execution_id, step_runs::key))
        .limit(100)
        .load(conn)?;
    for (execution, key) in overdue {
        execution_for_update(conn, execution)?;
        let row = step_for_update(conn, execution, &key)?;
        if row.status != StepStatus::WaitingApproval.as_str() {
            continue;
        }
        touched += 1;
        let step: ResolvedStep =
            serde_json::from_value(row.step.clone()).map_err(Error::internal)?;
        let approve = step
            .definition
            .params
            .get("on_timeout")
            .and_then(Value::as_str)
            == Some("approve");
        decide(
            conn,
            &row,
            approve,
            "timeout",
            "no answer before the approval's timeout",
        )?;
    }
    Ok(touched)
}

/// Approves or rejects a waiting manual approval.
fn decide(
    conn: &mut PgConnection,
    row: &StepRunRow,
    approve: bool,
    by: &str,
    comment: &str,
) -> Result<()> {
    let approval = json!({"approved": approve, "by": by, "comment": comment});
    diesel::update(step_runs::table.find((row.execution_id, &row.key)))
        .set((
            step_runs::approval.eq(&approval),
            step_runs::outputs.eq(json!({"approved_by": by, "comment": comment})),
        ))
        .execute(conn)?;
    if approve {
        set_step(conn, row, StepStatus::Succeeded, None, approval)?;
        release_dependents(conn, row.execution_id, &row.dependents)?;
        maybe_finish(conn, row.execution_id)
    } else {
        set_step(
            conn,
            row,
            StepStatus::Failed,
            Some(&format!("rejected by {by}: {comment}")),
            approval,
        )?;
        let step: ResolvedStep =
            serde_json::from_value(row.step.clone()).map_err(Error::internal)?;
        apply_on_failure(conn, row, step.on_failure)
    }
}

/// An operator's decision on a manual approval step.
pub fn approve(
    conn: &mut PgConnection,
    execution: Uuid,
    key: &str,
    approve: bool,
    by: &str,
    role: crate::auth::Role,
    comment: &str,
) -> Result<()> {
    execution_for_update(conn, execution)?;
    let row = step_for_update(conn, execution, key)?;
    if row.status != StepStatus::WaitingApproval.as_str() {
        return Err(Error::conflict(format!(
            "step `{key}` is {}, not waiting for an approval",
            row.status
        )));
    }
    let step: ResolvedStep = serde_json::from_value(row.step.clone()).map_err(Error::internal)?;
    let needed: crate::auth::Role = step
        .definition
        .params
        .get("approvers_role")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or(crate::auth::Role::Operator);
    if role < needed {
        return Err(Error::Forbidden(format!(
            "this approval needs the {} role",
            needed.as_str()
        )));
    }
    decide(conn, &row, approve, by, comment)
}

/// What an operator can do to an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Cancel,
    Pause,
    Resume,
}

pub fn control(
    conn: &mut PgConnection,
    execution: Uuid,
    action: Control,
    by: &str,
) -> Result<ExecutionRow> {
    let exec = execution_for_update(conn, execution)?;
    let reason = format!("by {by}");
    match action {
        Control::Cancel => {
            cancel_open_steps(
                conn,
                execution,
                &format!("the execution was cancelled {reason}"),
            )?;
            set_execution(conn, &exec, ExecutionStatus::Cancelled, Some(&reason))?;
        }
        Control::Pause => set_execution(
            conn,
            &exec,
            ExecutionStatus::Paused,
            Some(&format!("paused {reason}")),
        )?,
        Control::Resume => {
            set_execution(conn, &exec, ExecutionStatus::Running, Some(&reason))?;
            wake(conn)?;
            maybe_finish(conn, execution)?;
        }
    }
    self::execution(conn, execution)
}

/// Retries a failed or interrupted step, or skips a step that has not succeeded.
pub fn retry_or_skip(
    conn: &mut PgConnection,
    execution: Uuid,
    key: &str,
    retry: bool,
    by: &str,
) -> Result<()> {
    let exec = execution_for_update(conn, execution)?;
    if exec_status(&exec)?.is_final() {
        return Err(Error::conflict(format!(
            "the execution is {}: nothing more can run",
            exec.status
        )));
    }
    let row = step_for_update(conn, execution, key)?;
    if retry {
        diesel::update(step_runs::table.find((execution, key)))
            .set(step_runs::next_attempt_at.eq(diesel::dsl::now))
            .execute(conn)?;
        set_step(
            conn,
            &row,
            StepStatus::Ready,
            None,
            json!({"by": by, "action": "retry"}),
        )?;
        wake(conn)
    } else {
        set_step(
            conn,
            &row,
            StepStatus::Skipped,
            Some(&format!("skipped by {by}")),
            json!({"by": by, "action": "skip"}),
        )?;
        release_dependents(conn, execution, &row.dependents)?;
        maybe_finish(conn, execution)
    }
}

/// How many rows are in each state.
pub type StateCounts = Vec<(String, i64)>;

/// Counts for the metrics endpoint: executions and step runs by state.
pub fn state_counts(conn: &mut PgConnection) -> Result<(StateCounts, StateCounts)> {
    use diesel::dsl::count_star;
    let executions_by_state = executions::table
        .group_by(executions::status)
        .select((executions::status, count_star()))
        .load(conn)?;
    let steps_by_state = step_runs::table
        .group_by(step_runs::status)
        .select((step_runs::status, count_star()))
        .load(conn)?;
    Ok((executions_by_state, steps_by_state))
}
