//! Step runners: what each kind of step does once the engine has claimed it and rendered its
//! params. A runner streams its output into a `LogSink`, stops when `cancel` fires or the
//! deadline passes, and returns an `Outcome`. Kinds that need outside systems (SSH, HTTP,
//! checks, recovery providers) plug in here in their own modules.

pub mod check;
pub mod http;
pub mod local;
pub mod logs;
pub mod recovery;
pub mod script;
pub mod ssh;

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::domain::duration::Duration;
use crate::domain::steps::StepKind;
use crate::engine::store::Outcome;
pub use logs::LogSink;

/// Everything a runner gets for one attempt.
pub struct Attempt {
    pub kind: StepKind,
    /// Params with every template filled.
    pub params: Value,
    /// Secret environment variables (name -> plaintext), masked in logs.
    pub secret_env: BTreeMap<String, String>,
    /// The credentials the step reads (name -> field -> plaintext), e.g. an HTTP auth token.
    pub credentials: BTreeMap<String, BTreeMap<String, String>>,
    /// The inventory, for the steps that reach servers by name (remote_script).
    pub inventory: std::sync::Arc<crate::domain::plans::Inventory>,
    /// The execution this attempt belongs to (SSH connections are kept per execution).
    pub execution: uuid::Uuid,
    /// Kept SSH connections and the bounds per jump server.
    pub ssh: std::sync::Arc<ssh::SshPool>,
    pub log: LogSink,
    /// Becomes true when the step must stop (cancelled, lease lost).
    pub cancel: watch::Receiver<bool>,
    /// When the step's timeout runs out.
    pub deadline: Instant,
    /// The step's key in its plan.
    pub step_key: String,
    /// Drill or failover (what a provider recovers hosts for).
    pub mode: crate::domain::plans::Mode,
    /// For the steps that record what they do (host steps) and open provider logins.
    pub db: crate::db::Db,
    pub master_key: std::sync::Arc<crate::crypto::MasterKey>,
    pub providers: std::sync::Arc<crate::providers::registry::Registry>,
}

impl Attempt {
    /// For a check: the attributes of the inventory resource it acts on (a `sql` check's
    /// database, a tcp or ping check's host given by name).
    pub fn resource(&self) -> Option<&Value> {
        let name = check::resource_name(self.kind, &self.params)?;
        self.inventory.resources.get(name).map(|r| &r.attributes)
    }
}

/// Runs one attempt of a step.
pub async fn run(attempt: Attempt) -> Outcome {
    match attempt.kind {
        StepKind::Wait => wait(attempt).await,
        StepKind::LocalScript => local::run(attempt).await,
        StepKind::RemoteScript => ssh::run(attempt).await,
        StepKind::HttpRequest => http::run(attempt).await,
        StepKind::Check => check::run(attempt).await,
        StepKind::HostRecovery | StepKind::PowerOn => recovery::run(attempt).await,
        StepKind::ManualApproval => {
            let timeout: Duration = attempt
                .params
                .get("timeout")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or(Duration::from_secs(3600));
            Outcome::AwaitApproval {
                deadline_secs: timeout.as_secs() as i64,
            }
        }
    }
}

/// Resolves when `cancel` becomes true.
pub async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    while !*cancel.borrow() {
        if cancel.changed().await.is_err() {
            // The sender is gone: nobody can cancel any more.
            std::future::pending::<()>().await;
        }
    }
}

async fn wait(mut attempt: Attempt) -> Outcome {
    let duration: Duration = attempt
        .params
        .get("duration")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    if duration.as_secs() == 0 {
        return Outcome::Succeeded {
            outputs: Map::new(),
            exit_code: None,
        };
    }
    tokio::select! {
        _ = tokio::time::sleep(duration.std()) => Outcome::Succeeded { outputs: Map::new(), exit_code: None },
        _ = cancelled(&mut attempt.cancel) => Outcome::Cancelled,
        _ = tokio::time::sleep_until(attempt.deadline.into()) => Outcome::Failed {
            error: "timed out".into(), exit_code: None, outputs: Map::new(),
        },
    }
}
