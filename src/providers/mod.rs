//! Recovery providers: the DR products that hold protected hosts and recover them in the cloud.
//!
//! One trait, [`RecoveryProvider`], and one client that speaks HyperBDR's REST API v2
//! ([`hyperbdr`]). The built-in [`simulator`] is a real HTTP service with the same API shape, so
//! a provider of kind `simulator` is the same client pointed at it: drills on a laptop, the
//! examples and the tests all go over HTTP.
//!
//! The engine never calls a provider without recording first what it is about to do (see
//! `db::recoveries`), so a step re-run after a crash looks up the provider's state before it
//! acts and never recovers a host twice.

pub mod cleanup;
pub mod hyperbdr;
pub mod registry;
pub mod simulator;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::duration::{Duration, HumanDuration};

/// Why a provider call failed; the text is shown to operators as is (never a token or password).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider did not answer (connect error, timeout, 5xx without an envelope).
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    /// Login refused.
    #[error("provider login failed: {0}")]
    Auth(String),
    /// No such host (or instance) at the provider.
    #[error("not found at the provider: {0}")]
    NotFound(String),
    /// The provider answered with an error envelope (its title, error and trace id are quoted).
    #[error("{0}")]
    Api(String),
}

pub type ProviderResult<T> = Result<T, ProviderError>;

/// What a recovery is for: a drill's instances are deleted afterwards, a failover's are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Drill,
    Failover,
}

/// A point-in-time copy of a protected host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub taken_at: DateTime<Utc>,
}

/// A host the provider protects (replicates), as listed by the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProtectedHost {
    /// The provider's id: what an inventory host's `provider_host_id` holds.
    pub id: String,
    pub name: String,
    /// The production address the provider knows the host by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Whether replication is healthy enough to recover from (the provider's sync state mapped).
    pub protected: bool,
    /// The provider's own sync state, for display.
    pub sync_state: String,
    /// The newest usable snapshot, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<Snapshot>,
}

/// The state of a host's recovered instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// The provider is creating the instance.
    Recovering,
    /// Created, not running.
    PoweredOff,
    /// Booting.
    Starting,
    Running,
    /// The recovery or the boot failed (see `Instance::error`).
    Failed,
    Deleting,
}

/// A host's recovered instance and its facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub host_id: String,
    /// Empty until the provider has assigned one.
    pub instance_id: String,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Why the recovery or boot failed, in the provider's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One DR product. Every call is bounded by the provider's configured timeouts.
#[async_trait]
pub trait RecoveryProvider: Send + Sync {
    /// Logs in and reads something cheap; returns a one-line description for the operator
    /// (e.g. "HyperBDR at https://..., 12 protected hosts").
    async fn test(&self) -> ProviderResult<String>;
    /// Every protected host (all pages).
    async fn hosts(&self) -> ProviderResult<Vec<ProtectedHost>>;
    /// One protected host.
    async fn host(&self, host_id: &str) -> ProviderResult<ProtectedHost>;
    /// Starts recovering `host_id` powered off, from `snapshot` (`None`: the latest). Returns at
    /// once; poll [`RecoveryProvider::instance`] for progress.
    async fn recover(
        &self,
        host_id: &str,
        snapshot: Option<&str>,
        purpose: Purpose,
    ) -> ProviderResult<()>;
    /// The host's current recovered instance for `purpose`, if there is one.
    async fn instance(&self, host_id: &str, purpose: Purpose) -> ProviderResult<Option<Instance>>;
    /// Starts booting the host's recovered instance. Returns at once; poll `instance`.
    async fn power_on(&self, host_id: &str, purpose: Purpose) -> ProviderResult<()>;
    /// Deletes a recovered instance (drill clean-up). Deleting one that is already gone is Ok.
    async fn delete_instance(&self, host_id: &str, instance_id: &str) -> ProviderResult<()>;
}

/// How the service talks to one provider (stored with it; every field has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// Verify the provider's TLS certificate (turn off only for a lab's self-signed one).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// PEM certificate(s) of a private CA to trust for this provider (besides the usual roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// Bound on each API call.
    #[serde(default = "thirty_seconds")]
    #[schema(value_type = String, example = "30s")]
    pub request_timeout: HumanDuration,
    /// The longest pause between two looks at a recovery's or boot's progress (the first
    /// looks come sooner).
    #[serde(default = "five_seconds")]
    #[schema(value_type = String, example = "5s")]
    pub poll_interval: HumanDuration,
    /// The longest a host's recovery may take, whatever a step asks for.
    #[serde(default = "one_hour")]
    #[schema(value_type = String, example = "1h")]
    pub recovery_timeout: HumanDuration,
    /// The longest a host's boot may take, whatever a step asks for.
    #[serde(default = "thirty_minutes")]
    #[schema(value_type = String, example = "30m")]
    pub power_on_timeout: HumanDuration,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            tls_verify: true,
            ca_certificate: None,
            request_timeout: thirty_seconds(),
            poll_interval: five_seconds(),
            recovery_timeout: one_hour(),
            power_on_timeout: thirty_minutes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn thirty_minutes() -> Duration {
    Duration::from_secs(1800)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}
