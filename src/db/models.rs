//! Rows as diesel reads and writes them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use super::schema::{audit_log, credentials, resource_credential_refs, resources};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = resources, check_for_backend(diesel::pg::Pg))]
pub struct ResourceRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub attributes: Value,
    pub labels: Value,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = resources)]
pub struct ResourceWrite {
    pub name: String,
    pub kind: String,
    pub description: String,
    pub attributes: Value,
    pub labels: Value,
}

/// A credential's row without the sealed secret: what listing and reading need.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credentials, check_for_backend(diesel::pg::Pg))]
pub struct CredentialRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub username: Option<String>,
    pub secret_updated_at: DateTime<Utc>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

/// The non-secret fields a credential write sets.
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = credentials)]
pub struct CredentialWrite {
    pub name: String,
    pub kind: String,
    pub description: String,
    #[diesel(treat_none_as_null = true)]
    pub username: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = resource_credential_refs)]
pub struct CredentialRefRow {
    pub resource_id: Uuid,
    pub credential_id: Uuid,
    pub attribute: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_log, check_for_backend(diesel::pg::Pg))]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_role: String,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<Uuid>,
    pub target_name: Option<String>,
    pub request_id: Option<String>,
    pub details: Value,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::steps, check_for_backend(diesel::pg::Pg))]
pub struct StepRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub definition: Value,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::plans, check_for_backend(diesel::pg::Pg))]
pub struct PlanRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub latest_version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::plan_versions, check_for_backend(diesel::pg::Pg))]
pub struct PlanVersionRow {
    pub plan_id: Uuid,
    pub version: i32,
    pub spec: Value,
    pub resolved: Value,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = super::schema::executions, check_for_backend(diesel::pg::Pg))]
pub struct ExecutionRow {
    pub id: Uuid,
    pub plan_id: Uuid,
    pub plan_version: i32,
    pub plan_name: String,
    pub mode: String,
    pub status: String,
    pub params: Value,
    pub idempotency_key: Option<String>,
    pub pause_reason: Option<String>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = super::schema::step_runs, check_for_backend(diesel::pg::Pg))]
pub struct StepRunRow {
    pub execution_id: Uuid,
    pub key: String,
    pub position: i32,
    pub kind: String,
    pub step: Value,
    pub dependents: Vec<String>,
    pub status: String,
    pub pending_deps: i32,
    pub attempt: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub outputs: Value,
    pub error: Option<String>,
    pub approval: Option<Value>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::execution_events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub id: i64,
    pub execution_id: Uuid,
    pub at: DateTime<Utc>,
    pub type_: String,
    pub step_key: Option<String>,
    pub data: Value,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::step_logs, check_for_backend(diesel::pg::Pg))]
pub struct LogRow {
    pub id: i64,
    pub execution_id: Uuid,
    pub step_key: String,
    pub attempt: i32,
    pub stream: String,
    pub at: DateTime<Utc>,
    pub data: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::providers, check_for_backend(diesel::pg::Pg))]
pub struct ProviderRow {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub base_url: String,
    pub credential_id: Option<Uuid>,
    pub settings: Value,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = super::schema::providers)]
pub struct ProviderWrite {
    pub name: String,
    pub kind: String,
    pub description: String,
    pub base_url: String,
    #[diesel(treat_none_as_null = true)]
    pub credential_id: Option<Uuid>,
    pub settings: Value,
}

/// One host recovery an execution asked for (see migrations/*_providers).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::recoveries, check_for_backend(diesel::pg::Pg))]
pub struct RecoveryRow {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub step_key: String,
    pub resource_name: String,
    pub provider_name: String,
    pub provider_host_id: String,
    pub purpose: String,
    pub state: String,
    pub instance_id: Option<String>,
    pub facts: Value,
    pub error: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub cleanup_error: Option<String>,
}

/// An inbound hook (see migrations/*_hooks). The sealed secret is not selected here: only
/// `db::hooks::open_secret` reads it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = super::schema::hooks, check_for_backend(diesel::pg::Pg))]
pub struct HookRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub action: String,
    pub plan_id: Option<Uuid>,
    pub mode: Option<String>,
    pub auth: String,
    pub params: Value,
    pub failover_confirmation: String,
    pub confirm_pointer: Option<String>,
    pub execution_pointer: Option<String>,
    pub comment_pointer: Option<String>,
    pub enabled: bool,
    pub secret_updated_at: DateTime<Utc>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

#[derive(Debug, Clone, Insertable, AsChangeset)]
#[diesel(table_name = super::schema::hooks)]
pub struct HookWrite {
    pub name: String,
    pub description: String,
    pub action: String,
    #[diesel(treat_none_as_null = true)]
    pub plan_id: Option<Uuid>,
    #[diesel(treat_none_as_null = true)]
    pub mode: Option<String>,
    pub auth: String,
    pub params: Value,
    pub failover_confirmation: String,
    #[diesel(treat_none_as_null = true)]
    pub confirm_pointer: Option<String>,
    #[diesel(treat_none_as_null = true)]
    pub execution_pointer: Option<String>,
    #[diesel(treat_none_as_null = true)]
    pub comment_pointer: Option<String>,
    pub enabled: bool,
}
