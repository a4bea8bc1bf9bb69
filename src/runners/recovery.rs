//! `host_recovery` and `power_on`: the steps that drive a recovery provider.
//!
//! Before asking a provider to recover a host, the step records the request
//! (`db::providers::record_request`, committed on its own); a re-run (after a crash and a
//! lease reclaim, or a retry) finds that record, looks at the provider's state and only polls
//! what is already under way: a host is never recovered twice by one execution. A host the
//! provider already holds an instance of that this execution did not ask for (an earlier
//! drill not cleaned up, a manual boot) is refused by name rather than adopted.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::{cancelled, Attempt};
use crate::db::models::RecoveryRow;
use crate::db::providers as store;
use crate::domain::plans::{hosts_in, Mode};
use crate::domain::steps::{HostGroup, PowerOnParams, StepKind};
use crate::engine::store::Outcome;
use crate::providers::registry::Provider;
use crate::providers::{Instance, InstanceState, ProviderError, Purpose};

/// The first look at a provider's progress comes this soon; later ones back off to the
/// provider's `poll_interval`.
const FIRST_POLL: Duration = Duration::from_millis(200);

pub async fn run(a: Attempt) -> Outcome {
    match a.kind {
        StepKind::HostRecovery => recover(a).await,
        _ => power_on(a).await,
    }
}

/// An inventory host and where its provider knows it.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    provider: String,
    host_id: String,
}

/// Why one host did not make it (`Stop` when the step was cancelled).
enum HostError {
    Failed(String),
    Stop,
}

impl From<String> for HostError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

type HostResult<T> = Result<T, HostError>;

fn purpose(mode: Mode) -> Purpose {
    match mode {
        Mode::Failover => Purpose::Failover,
        Mode::Drill => Purpose::Drill,
    }
}

fn purpose_str(p: Purpose) -> &'static str {
    match p {
        Purpose::Drill => "drill",
        Purpose::Failover => "failover",
    }
}

fn target(a: &Attempt, name: &str) -> Result<Target, String> {
    let r = a
        .inventory
        .resources
        .get(name)
        .ok_or_else(|| format!("no host named `{name}` in the inventory"))?;
    let field = |key: &str| r.attributes.get(key).and_then(Value::as_str);
    Ok(Target {
        name: name.to_owned(),
        provider: field("provider")
            .ok_or_else(|| format!("host `{name}` names no provider"))?
            .to_owned(),
        host_id: field("provider_host_id")
            .ok_or_else(|| format!("host `{name}` has no provider_host_id"))?
            .to_owned(),
    })
}

/// The facts later steps read as `outputs.hosts.<name>.<fact>`.
fn facts(t: &Target, i: &Instance) -> Value {
    let mut f = json!({
        "provider_host_id": t.host_id,
        "instance_id": i.instance_id,
        "state": i.state,
        "private_ip": i.private_ip,
        "public_ip": i.public_ip,
        "snapshot_time": i.snapshot_time.map(|t| t.to_rfc3339()),
    });
    if let Some(map) = f.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    f
}

/// What one host step needs besides the attempt itself.
struct Ctx<'a> {
    a: &'a Attempt,
    purpose: Purpose,
    deadline: Instant,
}

impl Ctx<'_> {
    async fn provider(&self, name: &str) -> HostResult<Provider> {
        let (db, key, registry, name) = (
            self.a.db.clone(),
            self.a.master_key.clone(),
            self.a.providers.clone(),
            name.to_owned(),
        );
        db.run(move |conn| registry.get(conn, &key, &name))
            .await
            .map_err(|e| HostError::Failed(e.to_string()))
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut diesel::PgConnection) -> crate::error::Result<T> + Send + 'static,
    ) -> HostResult<T> {
        self.a
            .db
            .run(f)
            .await
            .map_err(|e| HostError::Failed(format!("recording the recovery failed: {e}")))
    }

    async fn log(&self, t: &Target, text: &str) {
        self.a.log.system(&format!("{}: {text}", t.name)).await;
    }

    /// Runs a provider call, stopping when the step is cancelled or its time is up.
    async fn call<T>(
        &self,
        until: Instant,
        f: impl Future<Output = Result<T, ProviderError>>,
    ) -> HostResult<Result<T, ProviderError>> {
        let mut cancel = self.a.cancel.clone();
        tokio::select! {
            r = f => Ok(r),
            _ = cancelled(&mut cancel) => Err(HostError::Stop),
            _ = tokio::time::sleep_until(until.into()) => Err(HostError::Failed("timed out waiting for the provider".into())),
        }
    }

    /// The host's instance, retrying while the provider is unreachable (a blip must not fail a
    /// failover) until `until`.
    async fn instance(
        &self,
        p: &Provider,
        t: &Target,
        until: Instant,
    ) -> HostResult<Option<Instance>> {
        let mut delay = FIRST_POLL;
        let mut said = false;
        loop {
            match self
                .call(until, p.client.instance(&t.host_id, self.purpose))
                .await?
            {
                Ok(found) => return Ok(found),
                Err(ProviderError::Unreachable(e)) => {
                    if !said {
                        self.log(
                            t,
                            &format!("provider `{}` unreachable ({e}); retrying", p.name),
                        )
                        .await;
                        said = true;
                    }
                }
                Err(e) => return Err(HostError::Failed(format!("provider `{}`: {e}", p.name))),
            }
            self.pause(&mut delay, p, until).await?;
        }
    }

    /// Sleeps `delay` (doubling it up to the provider's poll interval) unless cancelled or out
    /// of time.
    async fn pause(&self, delay: &mut Duration, p: &Provider, until: Instant) -> HostResult<()> {
        let mut cancel = self.a.cancel.clone();
        let wake = (Instant::now() + *delay).min(until);
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = cancelled(&mut cancel) => return Err(HostError::Stop),
        }
        *delay = (*delay * 2).min(p.settings.poll_interval.std().max(FIRST_POLL));
        if Instant::now() >= until {
            return Err(HostError::Failed("timed out".into()));
        }
        Ok(())
    }

    /// Polls until the instance reaches one of `done` (Ok) or fails (Err).
    async fn wait_for(
        &self,
        p: &Provider,
        t: &Target,
        until: Instant,
        done: &[InstanceState],
        what: &str,
    ) -> HostResult<Instance> {
        let mut delay = FIRST_POLL;
        let mut last = None;
        loop {
            let found = self.instance(p, t, until).await.map_err(|e| match e {
                HostError::Failed(m) if m == "timed out" => {
                    HostError::Failed(format!("{what} did not finish in time"))
                }
                other => other,
            })?;
            match found {
                None => {}
                Some(i) if done.contains(&i.state) => return Ok(i),
                Some(i) if i.state == InstanceState::Failed => {
                    return Err(HostError::Failed(format!(
                        "{what} failed at the provider: {}",
                        i.error.as_deref().unwrap_or("no reason given")
                    )))
                }
                Some(i) if last != Some(i.state) => {
                    self.log(t, &format!("{what}: {}", state_word(i.state)))
                        .await;
                    last = Some(i.state);
                }
                Some(_) => {}
            }
            self.pause(&mut delay, p, until)
                .await
                .map_err(|e| match e {
                    HostError::Failed(_) => HostError::Failed(format!(
                        "{what} did not finish within {}s",
                        until
                            .saturating_duration_since(Instant::now())
                            .as_secs()
                            .max(1)
                    )),
                    other => other,
                })?;
        }
    }
}

fn state_word(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Recovering => "recovering",
        InstanceState::PoweredOff => "powered off",
        InstanceState::Starting => "starting",
        InstanceState::Running => "running",
        InstanceState::Failed => "failed",
        InstanceState::Deleting => "being deleted",
    }
}

/// Turns per-host results into the step's outcome: every success's facts as outputs, failures
/// named in the error.
fn conclude(
    results: Vec<(String, HostResult<Value>)>,
    total: usize,
    mut hosts: Map<String, Value>,
) -> Outcome {
    let mut failed = Vec::new();
    let mut stopped = false;
    for (name, r) in results {
        match r {
            Ok(f) => {
                hosts.insert(name, f);
            }
            Err(HostError::Failed(e)) => failed.push(format!("{name} ({e})")),
            Err(HostError::Stop) => stopped = true,
        }
    }
    let mut outputs = Map::new();
    outputs.insert("hosts".into(), Value::Object(hosts));
    if stopped && failed.is_empty() {
        return Outcome::Cancelled;
    }
    if failed.is_empty() {
        return Outcome::Succeeded {
            outputs,
            exit_code: None,
        };
    }
    Outcome::Failed {
        error: format!(
            "{} of {total} host(s) failed: {}",
            failed.len(),
            failed.join("; ")
        ),
        exit_code: None,
        outputs,
    }
}

// ---------------------------------------------------------------------------------------------
// host_recovery

async fn recover(a: Attempt) -> Outcome {
    let names = hosts_in(&a.params, &a.inventory);
    let snapshot = a
        .params
        .get("snapshot")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && *s != "latest")
        .map(str::to_owned);
    let wait = a
        .params
        .get("wait")
        .and_then(|v| serde_json::from_value::<crate::domain::duration::Duration>(v.clone()).ok())
        .map_or(Duration::from_secs(1800), |d| d.std());
    let ctx = Ctx {
        a: &a,
        purpose: purpose(a.mode),
        deadline: a.deadline.min(Instant::now() + wait),
    };
    if names.is_empty() {
        return Outcome::Failed {
            error: "the host selector matches no host".into(),
            exit_code: None,
            outputs: Map::new(),
        };
    }
    a.log
        .system(&format!(
            "recovering {} host(s) powered off for a {}: {}",
            names.len(),
            purpose_str(ctx.purpose),
            names.join(", ")
        ))
        .await;
    let results = join_all(names.iter().map(|name| async {
        let r = match target(&a, name) {
            Ok(t) => recover_one(&ctx, &t, snapshot.as_deref()).await,
            Err(e) => Err(HostError::Failed(e)),
        };
        (name.clone(), r)
    }))
    .await;
    conclude(results, names.len(), Map::new())
}

async fn recover_one(ctx: &Ctx<'_>, t: &Target, snapshot: Option<&str>) -> HostResult<Value> {
    let p = ctx.provider(&t.provider).await?;
    let until = ctx
        .deadline
        .min(Instant::now() + p.settings.recovery_timeout.std());
    let execution = ctx.a.execution;
    let name = t.name.clone();
    let existing = ctx
        .db(move |conn| store::recovery(conn, execution, &name))
        .await?;
    let current = ctx.instance(&p, t, until).await?;
    let usable = |i: &Option<Instance>| {
        i.as_ref()
            .is_some_and(|i| !matches!(i.state, InstanceState::Failed | InstanceState::Deleting))
    };
    let row = match existing {
        // Asked before (a re-run): never ask again while the provider has it under way.
        Some(row) if usable(&current) => {
            ctx.log(
                t,
                "already asked for by this execution; following the provider's progress",
            )
            .await;
            row
        }
        Some(row) if row.state == "recovered" || row.state == "running" => {
            return Err(HostError::Failed(format!(
                "its recovered instance {} is gone from the provider",
                row.instance_id.as_deref().unwrap_or("?")
            )))
        }
        existing => {
            if existing.is_none() {
                refuse_foreign(ctx, &p, t, &current).await?;
            }
            let (execution, step, name, provider, host, purpose) = (
                ctx.a.execution,
                ctx.a.step_key.clone(),
                t.name.clone(),
                t.provider.clone(),
                t.host_id.clone(),
                purpose_str(ctx.purpose),
            );
            let row = ctx
                .db(move |conn| {
                    store::record_request(conn, execution, &step, &name, &provider, &host, purpose)
                })
                .await?;
            ctx.log(
                t,
                &format!(
                    "asking provider `{}` to recover host {} from {} snapshot",
                    p.name,
                    t.host_id,
                    snapshot.unwrap_or("the latest")
                ),
            )
            .await;
            match ctx
                .call(until, p.client.recover(&t.host_id, snapshot, ctx.purpose))
                .await?
            {
                Ok(()) => {}
                Err(e) => {
                    let message = format!("provider `{}` refused the recovery: {e}", p.name);
                    record(ctx, &row, "failed", None, &json!({}), Some(&message)).await?;
                    return Err(HostError::Failed(message));
                }
            }
            row
        }
    };
    let started = Instant::now();
    let done = [
        InstanceState::PoweredOff,
        InstanceState::Starting,
        InstanceState::Running,
    ];
    match ctx.wait_for(&p, t, until, &done, "recovery").await {
        Ok(i) => {
            let f = facts(t, &i);
            record(ctx, &row, "recovered", Some(&i.instance_id), &f, None).await?;
            ctx.log(
                t,
                &format!(
                    "recovered as instance {} (private IP {}, public IP {}) in {}s",
                    i.instance_id,
                    i.private_ip.as_deref().unwrap_or("none"),
                    i.public_ip.as_deref().unwrap_or("none"),
                    started.elapsed().as_secs()
                ),
            )
            .await;
            Ok(f)
        }
        Err(HostError::Failed(e)) => {
            record(ctx, &row, "failed", None, &json!({}), Some(&e)).await?;
            Err(HostError::Failed(e))
        }
        Err(stop) => Err(stop),
    }
}

/// Refuses a host that already has an instance this execution did not ask for.
async fn refuse_foreign(
    ctx: &Ctx<'_>,
    p: &Provider,
    t: &Target,
    current: &Option<Instance>,
) -> HostResult<()> {
    let (execution, provider, host) = (ctx.a.execution, t.provider.clone(), t.host_id.clone());
    let other = ctx
        .db(move |conn| store::live_elsewhere(conn, execution, &provider, &host))
        .await?;
    let Some(i) = current
        .as_ref()
        .filter(|i| !matches!(i.state, InstanceState::Failed | InstanceState::Deleting))
    else {
        return Ok(());
    };
    let by = match other {
        Some(o) => format!(
            "recovered by execution {} and not cleaned up; clean it up (POST /api/v1/executions/{}/cleanup) first",
            o.execution_id, o.execution_id
        ),
        None => format!(
            "not created by this service; delete it at provider `{}` first",
            p.name
        ),
    };
    Err(HostError::Failed(format!(
        "host {} already has a {} instance {} ({}), {by}",
        t.host_id,
        purpose_str(ctx.purpose),
        i.instance_id,
        state_word(i.state)
    )))
}

async fn record(
    ctx: &Ctx<'_>,
    row: &RecoveryRow,
    state: &'static str,
    instance: Option<&str>,
    facts: &Value,
    error: Option<&str>,
) -> HostResult<()> {
    let (id, instance, facts, error) = (
        row.id,
        instance.map(str::to_owned),
        facts.clone(),
        error.map(str::to_owned),
    );
    ctx.db(move |conn| {
        store::record_state(
            conn,
            id,
            state,
            instance.as_deref(),
            &facts,
            error.as_deref(),
        )
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// power_on

async fn power_on(a: Attempt) -> Outcome {
    let params: PowerOnParams = match serde_json::from_value(a.params.clone()) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Failed {
                error: format!("invalid params: {e}"),
                exit_code: None,
                outputs: Map::new(),
            }
        }
    };
    let ctx = Ctx {
        a: &a,
        purpose: purpose(a.mode),
        deadline: a.deadline,
    };
    let total: usize = params.hosts.iter().map(|g| g.names().len()).sum();
    let mut booted = Map::new();
    for (i, group) in params.hosts.iter().enumerate() {
        if i > 0 && params.delay_between.as_secs() > 0 {
            a.log
                .system(&format!(
                    "waiting {}s before the next group",
                    params.delay_between.as_secs()
                ))
                .await;
            let mut cancel = a.cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep(params.delay_between.std()) => {}
                _ = cancelled(&mut cancel) => return Outcome::Cancelled,
            }
        }
        a.log
            .system(&format!(
                "group {} of {}: booting {}",
                i + 1,
                params.hosts.len(),
                group.names().join(", ")
            ))
            .await;
        let until = ctx
            .deadline
            .min(Instant::now() + params.wait_until_running.std());
        let results = join_all(group.names().iter().map(|name| async {
            let r = match target(&a, name) {
                Ok(t) => boot_one(&ctx, &t, until, params.port).await,
                Err(e) => Err(HostError::Failed(e)),
            };
            (name.clone(), r)
        }))
        .await;
        if results.iter().any(|(_, r)| r.is_err()) {
            let later: Vec<&str> = params.hosts[i + 1..]
                .iter()
                .flat_map(HostGroup::names)
                .map(String::as_str)
                .collect();
            if !later.is_empty() {
                a.log
                    .system(&format!(
                        "not booting the later groups: {}",
                        later.join(", ")
                    ))
                    .await;
            }
            return conclude(results, total, booted);
        }
        for (name, r) in results {
            if let Ok(f) = r {
                booted.insert(name, f);
            }
        }
    }
    conclude(Vec::new(), total, booted)
}

async fn boot_one(
    ctx: &Ctx<'_>,
    t: &Target,
    until: Instant,
    port: Option<u16>,
) -> HostResult<Value> {
    let p = ctx.provider(&t.provider).await?;
    let until = until.min(Instant::now() + p.settings.power_on_timeout.std());
    let (execution, name) = (ctx.a.execution, t.name.clone());
    let row = ctx
        .db(move |conn| store::recovery(conn, execution, &name))
        .await?
        .filter(|r| r.state == "recovered" || r.state == "running")
        .ok_or_else(|| {
            HostError::Failed(
                "not recovered by this execution (a host_recovery step recovers it first)".into(),
            )
        })?;
    let current = ctx.instance(&p, t, until).await?;
    match current.as_ref().map(|i| i.state) {
        None => {
            return Err(HostError::Failed(format!(
                "its recovered instance {} is gone from the provider",
                row.instance_id.as_deref().unwrap_or("?")
            )))
        }
        Some(InstanceState::Running) => ctx.log(t, "already running").await,
        Some(InstanceState::Starting) => ctx.log(t, "already starting").await,
        Some(_) => {
            ctx.log(t, "powering on").await;
            if let Err(e) = ctx
                .call(until, p.client.power_on(&t.host_id, ctx.purpose))
                .await?
            {
                return Err(HostError::Failed(format!(
                    "provider `{}` refused to power it on: {e}",
                    p.name
                )));
            }
        }
    }
    let started = Instant::now();
    let i = ctx
        .wait_for(&p, t, until, &[InstanceState::Running], "boot")
        .await?;
    if let Some(port) = port {
        wait_for_port(ctx, t, &i, port, until).await?;
    }
    let mut f = facts(t, &i);
    f["running_at"] = json!(chrono::Utc::now().to_rfc3339());
    record(ctx, &row, "running", Some(&i.instance_id), &f, None).await?;
    ctx.log(
        t,
        &format!(
            "running{} after {}s",
            port.map(|p| format!(", port {p} answers"))
                .unwrap_or_default(),
            started.elapsed().as_secs()
        ),
    )
    .await;
    Ok(f)
}

async fn wait_for_port(
    ctx: &Ctx<'_>,
    t: &Target,
    i: &Instance,
    port: u16,
    until: Instant,
) -> HostResult<()> {
    let ip = i
        .private_ip
        .clone()
        .or_else(|| i.public_ip.clone())
        .ok_or_else(|| HostError::Failed("the provider gave it no IP address to probe".into()))?;
    let addr = format!("{ip}:{port}");
    ctx.log(t, &format!("waiting for {addr} to answer")).await;
    let mut delay = FIRST_POLL;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(addr.as_str()),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        let mut cancel = ctx.a.cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancelled(&mut cancel) => return Err(HostError::Stop),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
        if Instant::now() >= until {
            return Err(HostError::Failed(format!(
                "running, but {addr} did not answer in time"
            )));
        }
    }
}
