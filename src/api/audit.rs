//! `/api/v1/audit`: who changed what, when, under which request id; newest first.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination;
use crate::auth::Viewer;
use crate::db::audit::{self as store, AuditFilter};
use crate::db::models::AuditRow;
use crate::db::Db;
use crate::error::{Error, Problem, Result};
use crate::http::Query;

/// One mutation: who did what to which object, when, under which request id.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    #[schema(example = 42)]
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The token's subject.
    #[schema(example = "alice")]
    pub actor: String,
    #[schema(example = "admin")]
    pub actor_role: String,
    /// `create`, `update` or `delete`; on executions also `start`, `cancel`, `pause`, `resume`,
    /// `retry`, `skip`, `approve`, `reject`.
    #[schema(example = "update")]
    pub action: String,
    #[schema(example = "resource")]
    pub target_type: String,
    pub target_id: Option<Uuid>,
    #[schema(example = "wordpress")]
    pub target_name: Option<String>,
    pub request_id: Option<String>,
    /// What changed, by field name; never a secret value.
    #[schema(value_type = Object, example = json!({"changed": ["attributes"]}))]
    pub details: Value,
}

impl From<AuditRow> for AuditEntryView {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            at: r.at,
            actor: r.actor,
            actor_role: r.actor_role,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            target_name: r.target_name,
            request_id: r.request_id,
            details: r.details,
        }
    }
}

/// A page of the audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntryView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries by this subject.
    pub actor: Option<String>,
    /// Only entries about this kind of object (`resource`, `credential`, ...).
    pub target_type: Option<String>,
    /// Only entries about this object.
    pub target_id: Option<Uuid>,
    /// Only this action (`create`, `update`, `delete`, `start`, `approve`, ...).
    pub action: Option<String>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List the audit trail, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<AuditQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let before_id = pagination::decode_cursor(q.cursor.as_deref())?
        .map(|raw| raw.parse::<i64>())
        .transpose()
        .map_err(|_| Error::field("cursor", "is not a cursor this service returned"))?;
    let filter = AuditFilter {
        actor: q.actor,
        target_type: q.target_type,
        target_id: q.target_id,
        action: q.action,
        before_id,
        limit,
    };
    let (rows, total) = db.run(move |conn| store::list(conn, &filter)).await?;
    let last_id = rows.last().map(|r| r.id.to_string());
    let next_cursor = pagination::next_cursor(rows.len(), limit, last_id.as_deref());
    Ok(HttpResponse::Ok().json(AuditList {
        items: rows.into_iter().map(AuditEntryView::from).collect(),
        total,
        next_cursor,
    }))
}
