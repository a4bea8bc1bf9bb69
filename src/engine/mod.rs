//! The execution engine: a pool of workers per instance that claim ready step runs from
//! PostgreSQL (`FOR UPDATE SKIP LOCKED`), hold a lease renewed by heartbeat while they run them,
//! and record each outcome in one transaction. A reaper reclaims the leases of dead workers and
//! settles overdue approvals. Workers wake on NOTIFY (any instance) or an in-process signal, and
//! poll as a fallback. State lives in the database; nothing here is needed to recover.

pub mod run;
pub mod state;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::crypto::MasterKey;
use crate::db::Db;
use crate::domain::templates::TemplateEngine;
use crate::metrics::Metrics;

/// How an engine instance works.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Concurrent step runs in this instance.
    pub workers: usize,
    /// Lease length; a worker renews it every third of it.
    pub lease: Duration,
    /// Fallback poll when no wake arrives.
    pub poll: Duration,
    /// How often the reaper looks for expired leases and overdue approvals.
    pub reap_every: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 8,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            reap_every: Duration::from_secs(2),
        }
    }
}

/// Everything a worker needs.
pub struct Engine {
    pub db: Db,
    pub templates: Arc<TemplateEngine>,
    pub master_key: Arc<MasterKey>,
    pub metrics: Arc<Metrics>,
    pub config: EngineConfig,
    /// Identifies this instance's leases.
    pub owner: String,
    pub wake: Notify,
    /// SSH connections kept per execution, and the bounds per jump server.
    pub ssh: Arc<crate::runners::ssh::SshPool>,
    /// Recovery provider clients (they keep their login).
    pub providers: Arc<crate::providers::registry::Registry>,
    stopped: AtomicBool,
    /// What never changes about an execution (plan, version, mode, params), by id: most steps
    /// then need no database read before they run.
    facts: std::sync::Mutex<
        std::collections::HashMap<uuid::Uuid, Arc<crate::db::models::ExecutionRow>>,
    >,
    /// Outcomes waiting to be recorded; the recorder commits them in batches.
    outcomes: mpsc::Sender<Recording>,
    outcomes_rx: std::sync::Mutex<Option<mpsc::Receiver<Recording>>>,
}

/// One outcome to record, and where to send what the worker runs next.
type Recording = (
    store::Claimed,
    store::Outcome,
    oneshot::Sender<crate::error::Result<Option<store::Claimed>>>,
);

/// Every how many reaps the reaper looks for drills whose automatic clean-up is due (every
/// 30 s by default).
const CLEANUP_SWEEP_EVERY: u32 = 15;

/// A kept SSH connection unused for this long is closed.
const SSH_IDLE: Duration = Duration::from_secs(60);

/// Most outcomes one transaction records.
const RECORD_BATCH: usize = 32;

impl Engine {
    pub fn new(
        db: Db,
        templates: Arc<TemplateEngine>,
        master_key: Arc<MasterKey>,
        metrics: Arc<Metrics>,
        config: EngineConfig,
    ) -> Arc<Self> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into());
        let (tx, rx) = mpsc::channel(1024);
        let ssh = Arc::new(crate::runners::ssh::SshPool::new(
            Some(db.clone()),
            SSH_IDLE,
        ));
        Arc::new(Self {
            ssh,
            providers: Arc::default(),
            db,
            templates,
            master_key,
            metrics,
            config,
            owner: format!(
                "{host}:{}:{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            facts: Default::default(),
            outcomes: tx,
            outcomes_rx: std::sync::Mutex::new(Some(rx)),
        })
    }

    /// Starts the workers, the reaper and the NOTIFY listener on the current tokio runtime;
    /// they stop when the returned handles are aborted (or the runtime ends).
    pub fn start(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let engine = self.clone();
        tasks.push(tokio::spawn(async move { engine.dispatch().await }));
        let engine = self.clone();
        tasks.push(tokio::spawn(async move { engine.reap_loop().await }));
        let ssh = self.ssh.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(SSH_IDLE / 4).await;
                ssh.sweep();
            }
        }));
        if let Some(rx) = self.outcomes_rx.lock().ok().and_then(|mut r| r.take()) {
            let engine = self.clone();
            tasks.push(tokio::spawn(async move { engine.recorder(rx).await }));
        }
        // A plain thread, not a tokio blocking task, so that it never holds a runtime's
        // shutdown; it ends when the engine is stopped or dropped.
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("dro-listen".into())
            .spawn(move || listen(weak))
            .expect("spawning a thread succeeds");
        tasks
    }

    /// Stops the listener thread and the heartbeats of steps in flight, so their leases lapse
    /// and another instance takes over (workers stop with their runtime or when aborted).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Records a step's outcome (batched with others' into one transaction, each in its own
    /// savepoint); returns the step handed over to this worker, if any.
    pub async fn record(
        &self,
        c: store::Claimed,
        outcome: store::Outcome,
    ) -> Option<store::Claimed> {
        let (reply, answer) = oneshot::channel();
        let key = c.key.clone();
        if self.outcomes.send((c, outcome, reply)).await.is_err() {
            return None;
        }
        match answer.await {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::error!(error = %e, step = %key, "recording a step's outcome failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn recorder(self: Arc<Self>, mut rx: mpsc::Receiver<Recording>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < RECORD_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let owner = self.owner.clone();
            let lease = self.lease_secs();
            let work: Vec<_> = batch
                .iter()
                .map(|(c, o, _)| (c.clone(), o.clone()))
                .collect();
            let results = self
                .db
                .transaction(move |conn| {
                    Ok(work
                        .into_iter()
                        .map(|(c, outcome)| {
                            conn.transaction(|conn| store::finish(conn, &c, &owner, lease, outcome))
                        })
                        .collect::<Vec<_>>())
                })
                .await;
            match results {
                Ok(results) => {
                    for ((_, _, reply), result) in batch.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (_, _, reply) in batch {
                        let _ = reply.send(Err(crate::error::Error::internal(&message)));
                    }
                }
            }
        }
    }

    /// The cached facts of an execution, if seen before.
    pub(crate) fn facts(&self, id: uuid::Uuid) -> Option<Arc<crate::db::models::ExecutionRow>> {
        self.facts.lock().ok()?.get(&id).cloned()
    }

    pub(crate) fn remember(&self, row: Arc<crate::db::models::ExecutionRow>) {
        if let Ok(mut facts) = self.facts.lock() {
            // A bound on memory: executions are few; start over when many were seen.
            if facts.len() >= 1024 {
                facts.clear();
            }
            facts.insert(row.id, row);
        }
    }

    fn lease_secs(&self) -> i32 {
        self.config.lease.as_secs().max(1) as i32
    }

    /// Claims as many ready steps as there are free workers, in one transaction, and runs
    /// each on its own task; a finished step frees its worker and wakes the dispatcher at once.
    async fn dispatch(self: Arc<Self>) {
        let workers = Arc::new(Semaphore::new(self.config.workers.max(1)));
        loop {
            let Ok(first) = workers.clone().acquire_owned().await else {
                return;
            };
            let mut free = vec![first];
            while let Ok(permit) = workers.clone().try_acquire_owned() {
                free.push(permit);
            }
            let owner = self.owner.clone();
            let lease = self.lease_secs();
            let limit = free.len() as i32;
            let claimed = self
                .db
                .transaction(move |conn| store::claim(conn, &owner, lease, limit))
                .await;
            match claimed {
                Ok(steps) if !steps.is_empty() => {
                    for c in steps {
                        let permit = free.pop().expect("claimed no more steps than free workers");
                        self.metrics.observe_claim(c.waited_secs);
                        let engine = self.clone();
                        tokio::spawn(async move {
                            run::run_claimed(&engine, c).await;
                            drop(permit);
                            engine.wake.notify_one();
                        });
                    }
                    drop(free);
                }
                Ok(_) => {
                    drop(free);
                    let _ = tokio::time::timeout(self.config.poll, self.wake.notified()).await;
                }
                Err(e) => {
                    drop(free);
                    tracing::warn!(error = %e, "claiming steps failed");
                    tokio::time::sleep(self.config.poll).await;
                }
            }
        }
    }

    async fn reap_loop(self: Arc<Self>) {
        let mut last_sweep = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.reap_every).await;
            if last_sweep.elapsed() >= self.config.reap_every * CLEANUP_SWEEP_EVERY {
                last_sweep = std::time::Instant::now();
                let engine = self.clone();
                // Provider calls may take a while: never hold up the reaper.
                tokio::spawn(async move {
                    let swept = crate::providers::cleanup::sweep(
                        &engine.db,
                        engine.master_key.clone(),
                        engine.providers.clone(),
                    )
                    .await;
                    if let Err(e) = swept {
                        tracing::warn!(error = %e, "looking for drills to clean up failed");
                    }
                });
            }
            match self.db.transaction(store::reap).await {
                Ok(n) if n > 0 => self.wake.notify_waiters(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reaping leases failed"),
            }
        }
    }
}

/// Turns NOTIFYs from any instance into wakes of this instance's workers, until the engine is
/// stopped or gone.
fn listen(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        if e.stopped.load(Ordering::SeqCst) {
            return;
        }
        let conn = e.db.pool().get();
        drop(e);
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, "the NOTIFY listener has no connection; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(err) =
            diesel::sql_query(format!("LISTEN {}", store::WAKE_CHANNEL)).execute(&mut conn)
        {
            tracing::warn!(error = %err, "LISTEN failed; retrying");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        loop {
            let mut woke = false;
            let mut failed = false;
            for note in conn.notifications_iter() {
                match note {
                    Ok(_) => woke = true,
                    Err(_) => failed = true,
                }
            }
            let Some(e) = engine.upgrade() else { return };
            if e.stopped.load(Ordering::SeqCst) {
                return;
            }
            if woke {
                e.wake.notify_waiters();
                e.wake.notify_one();
            }
            if failed {
                break;
            }
            drop(e);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
