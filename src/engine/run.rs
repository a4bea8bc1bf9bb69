//! One claimed step, start to finish: load what its templates read, render it, run it with a
//! heartbeat that keeps the lease (and notices a cancel or a lost lease), store the outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::store::{self, Claimed, Outcome};
use super::Engine;
use crate::db::models::ExecutionRow;
use crate::domain::plans::{render_for_run, Inventory, Mode, ResolvedStep, RuntimeContext};
use crate::domain::steps::{reads_credentials, string_leaves, StepKind};
use crate::domain::templates::{is_template, TemplateEngine};
use crate::error::{Error, Result};
use crate::runners::{self, Attempt, LogSink};

/// What an attempt needs from the database.
struct Prepared {
    execution: Arc<ExecutionRow>,
    step: ResolvedStep,
    outputs: BTreeMap<String, Value>,
    inventory: Inventory,
    /// Credential name -> field -> plaintext, for the credentials this step reads.
    credentials: BTreeMap<String, BTreeMap<String, String>>,
}

/// The inventory resource a check acts on (see `runners::check::resource_name`).
fn check_resource(step: &ResolvedStep) -> Option<String> {
    runners::check::resource_name(step.definition.kind, &step.definition.params).map(str::to_owned)
}

/// Every name the step's templates read.
fn template_refs(templates: &TemplateEngine, step: &ResolvedStep) -> BTreeSet<String> {
    string_leaves(&step.definition.params)
        .into_iter()
        .filter(|(_, text)| is_template(text))
        .flat_map(|(_, text)| templates.references(&text).unwrap_or_default())
        .collect()
}

/// The credentials a step reads: `credentials.<name>` in env templates and the `credentials` map.
fn credential_names(templates: &TemplateEngine, step: &ResolvedStep) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let params = &step.definition.params;
    for (path, text) in string_leaves(params) {
        if !is_template(&text) || !reads_credentials(step.definition.kind, &path) {
            continue;
        }
        for r in templates.references(&text).unwrap_or_default() {
            if let Some(name) = r
                .strip_prefix("credentials.")
                .and_then(|rest| rest.split('.').next())
            {
                names.insert(name.to_owned());
            }
        }
    }
    if let Some(Value::Object(map)) = params.get("credentials") {
        for reference in map.values().filter_map(Value::as_str) {
            names.insert(reference.split('.').next().unwrap_or_default().to_owned());
        }
    }
    // An HTTP request's `auth: {bearer|basic: credential}`.
    if let Some(Value::Object(auth)) = params.get("auth") {
        names.extend(auth.values().filter_map(Value::as_str).map(str::to_owned));
    }
    names
}

/// What a step reads besides its own definition.
struct Needs {
    outputs: bool,
    inventory: bool,
    credentials: BTreeSet<String>,
}

impl Needs {
    fn of(templates: &TemplateEngine, step: &ResolvedStep) -> Self {
        let refs = template_refs(templates, step);
        let database = check_resource(step);
        Self {
            outputs: refs.iter().any(|r| r.starts_with("steps.")),
            inventory: database.is_some()
                || matches!(
                    step.definition.kind,
                    StepKind::RemoteScript | StepKind::HostRecovery | StepKind::PowerOn
                )
                || step.definition.params.get("via").is_some()
                || refs.iter().any(|r| r.starts_with("resources.")),
            credentials: credential_names(templates, step),
        }
    }

    fn nothing(&self) -> bool {
        !self.outputs && !self.inventory && self.credentials.is_empty()
    }
}

/// Loads what the step reads (only that: a wide plan would otherwise reload every output for
/// every step), decrypting the credentials it injects.
fn prepare(
    conn: &mut PgConnection,
    engine: &Engine,
    c: &Claimed,
    step: ResolvedStep,
    needs: &Needs,
    cached: Option<Arc<ExecutionRow>>,
) -> Result<Prepared> {
    let execution = match cached {
        Some(row) => row,
        None => {
            let row = Arc::new(store::execution(conn, c.execution_id)?);
            engine.remember(row.clone());
            row
        }
    };
    let outputs = if needs.outputs {
        store::outputs_of(conn, c.execution_id)?
    } else {
        BTreeMap::new()
    };
    let inventory = if needs.inventory {
        crate::db::plans::inventory(conn)?
    } else {
        Inventory::default()
    };
    let mut names = needs.credentials.clone();
    // A sql check logs in with its database resource's credential.
    if let Some(db) = check_resource(&step).and_then(|name| inventory.resources.get(&name)) {
        if let Some(cred) = db.attributes.get("credential").and_then(Value::as_str) {
            names.insert(cred.to_owned());
        }
    }
    // A remote script logs in with its jump server's, its host's or its own `login` credential.
    if step.definition.kind == StepKind::RemoteScript || step.definition.params.get("via").is_some()
    {
        names.extend(runners::ssh::credential_names(
            &step.definition.params,
            &inventory,
        ));
    }
    let mut creds = BTreeMap::new();
    for name in names {
        let fields = crate::db::credentials::open_fields(conn, &name, &engine.master_key)?;
        creds.insert(name, fields);
    }
    Ok(Prepared {
        execution,
        step,
        outputs,
        inventory,
        credentials: creds,
    })
}

/// Runs a claimed step to its outcome and records it; then runs the step its finish handed
/// over (a dependent it made ready), and so on, on the same worker.
pub async fn run_claimed(engine: &Arc<Engine>, c: Claimed) {
    let mut next = run_one(engine, c).await;
    while let Some(c) = next.take() {
        engine.metrics.observe_claim(c.waited_secs);
        if engine.is_stopped() {
            // Shutting down: give the handed-over step back rather than leave it to lapse.
            let owner = engine.owner.clone();
            let _ = engine
                .db
                .transaction(move |conn| store::release(conn, &c, &owner))
                .await;
            return;
        }
        next = run_one(engine, c).await;
    }
}

async fn run_one(engine: &Arc<Engine>, c: Claimed) -> Option<Claimed> {
    let started = Instant::now();
    let prepared = match serde_json::from_value::<ResolvedStep>(c.step.clone()) {
        Err(e) => Err(Error::internal(e)),
        Ok(step) => {
            let needs = Needs::of(&engine.templates, &step);
            let cached = engine.facts(c.execution_id);
            match cached {
                // The common case: nothing to read, no database round trip.
                Some(execution) if needs.nothing() => Ok(Prepared {
                    execution,
                    step,
                    outputs: BTreeMap::new(),
                    inventory: Inventory::default(),
                    credentials: BTreeMap::new(),
                }),
                cached => {
                    let engine2 = engine.clone();
                    let claim = c.clone();
                    engine
                        .db
                        .run(move |conn| prepare(conn, &engine2, &claim, step, &needs, cached))
                        .await
                }
            }
        }
    };
    let outcome = match prepared {
        Ok(p) => attempt(engine, &c, p).await,
        Err(e) => Outcome::Failed {
            error: format!("preparing the step failed: {e}"),
            exit_code: None,
            outputs: Map::new(),
        },
    };
    let kind = match &outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed { .. } => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::AwaitApproval { .. } => "waiting_approval",
    };
    let next = engine.record(c, outcome).await;
    engine.metrics.observe_step(kind, started.elapsed());
    next
}

async fn attempt(engine: &Arc<Engine>, c: &Claimed, p: Prepared) -> Outcome {
    let mode = match p.execution.mode.as_str() {
        "failover" => Mode::Failover,
        _ => Mode::Drill,
    };
    let params: Map<String, Value> = p.execution.params.as_object().cloned().unwrap_or_default();
    let ctx = RuntimeContext {
        plan: &p.execution.plan_name,
        version: p.execution.plan_version,
        mode,
        execution_id: p.execution.id,
        params: &params,
        inventory: &p.inventory,
        outputs: &p.outputs,
        credentials: &p.credentials,
    };
    let secrets: Vec<String> = p
        .credentials
        .values()
        .flat_map(|fields| {
            fields
                .iter()
                .filter(|(k, _)| k.as_str() != "username")
                .map(|(_, v)| v.clone())
        })
        .collect();
    let (log, writer) = LogSink::start(
        engine.db.clone(),
        c.execution_id,
        c.key.clone(),
        c.attempt,
        secrets,
    );
    let rendered = match render_for_run(&engine.templates, &p.step, &ctx) {
        Ok(params) => params,
        Err(e) => {
            log.system(&format!("cannot render the step: {e}")).await;
            drop(log);
            let _ = writer.await;
            return Outcome::Failed {
                error: format!("cannot render the step: {e}"),
                exit_code: None,
                outputs: Map::new(),
            };
        }
    };
    let mut secret_env = BTreeMap::new();
    if let Some(Value::Object(map)) = rendered.get("credentials") {
        for (var, reference) in map {
            let reference = reference.as_str().unwrap_or_default();
            let (name, field) = reference.split_once('.').unwrap_or((reference, "password"));
            if let Some(value) = p.credentials.get(name).and_then(|f| f.get(field)) {
                secret_env.insert(var.clone(), value.clone());
            }
        }
    }
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(keep_lease(engine.clone(), c.clone(), cancel_tx));
    let deadline = Instant::now() + p.step.definition.timeout.std();
    let outcome = runners::run(Attempt {
        kind: p.step.definition.kind,
        params: rendered,
        secret_env,
        credentials: p.credentials.clone(),
        inventory: Arc::new(p.inventory),
        execution: c.execution_id,
        ssh: engine.ssh.clone(),
        log: log.clone(),
        cancel: cancel_rx,
        deadline,
        step_key: c.key.clone(),
        mode,
        db: engine.db.clone(),
        master_key: engine.master_key.clone(),
        providers: engine.providers.clone(),
    })
    .await;
    heartbeat.abort();
    if let Outcome::Failed { error, .. } = &outcome {
        log.system(&format!("attempt {} failed: {error}", c.attempt))
            .await;
    }
    if p.step.definition.kind == StepKind::ManualApproval {
        log.system("waiting for an approval").await;
    }
    drop(log);
    let _ = writer.await;
    outcome
}

/// Renews the lease every third of it; when the step is no longer ours to run (cancelled,
/// its execution stopped, the lease reclaimed), tells the runner to stop.
async fn keep_lease(engine: Arc<Engine>, c: Claimed, cancel: watch::Sender<bool>) {
    let every =
        (engine.config.lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let every = every.min(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        if engine.is_stopped() {
            return;
        }
        let owner = engine.owner.clone();
        let lease = engine.config.lease.as_secs().max(1) as i32;
        let claim = c.clone();
        match engine
            .db
            .run(move |conn| store::heartbeat(conn, &claim, &owner, lease))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = cancel.send(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, step = %c.key, "renewing a lease failed"),
        }
    }
}
