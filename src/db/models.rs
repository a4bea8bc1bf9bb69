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
