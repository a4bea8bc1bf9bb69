//! The audit trail: one row per mutation, written in the mutation's own transaction.

use diesel::prelude::*;
use serde_json::Value;
use uuid::Uuid;

use super::models::AuditRow;
use super::schema::audit_log;
use crate::auth::AuthUser;
use crate::error::Result;

/// Who is acting, captured on the request's task (the request id lives there) so it can be
/// moved into a blocking database call.
#[derive(Debug, Clone)]
pub struct Actor {
    pub subject: String,
    pub role: String,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn from_user(user: &AuthUser) -> Self {
        Self {
            subject: user.subject.clone(),
            role: user.role.as_str().to_owned(),
            request_id: crate::http::current_request_id(),
        }
    }
}

/// What was done to which object.
pub struct AuditEntry<'a> {
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<Uuid>,
    pub target_name: Option<&'a str>,
    /// Never values of secrets: field names, kinds, counts.
    pub details: Value,
}

impl<'a> AuditEntry<'a> {
    pub fn new(
        action: &'a str,
        target_type: &'a str,
        target_id: Uuid,
        target_name: &'a str,
        details: Value,
    ) -> Self {
        Self {
            action,
            target_type,
            target_id: Some(target_id),
            target_name: Some(target_name),
            details,
        }
    }
}

pub fn record(conn: &mut PgConnection, actor: &Actor, entry: AuditEntry<'_>) -> Result<()> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor.eq(&actor.subject),
            audit_log::actor_role.eq(&actor.role),
            audit_log::action.eq(entry.action),
            audit_log::target_type.eq(entry.target_type),
            audit_log::target_id.eq(entry.target_id),
            audit_log::target_name.eq(entry.target_name),
            audit_log::request_id.eq(&actor.request_id),
            audit_log::details.eq(entry.details),
        ))
        .execute(conn)?;
    Ok(())
}

/// Filters for listing the trail, newest first.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<Uuid>,
    pub action: Option<String>,
    /// Only rows older than this id (the cursor).
    pub before_id: Option<i64>,
    pub limit: i64,
}

pub fn list(conn: &mut PgConnection, filter: &AuditFilter) -> Result<(Vec<AuditRow>, i64)> {
    let build = || {
        let mut q = audit_log::table.into_boxed();
        if let Some(actor) = &filter.actor {
            q = q.filter(audit_log::actor.eq(actor.clone()));
        }
        if let Some(t) = &filter.target_type {
            q = q.filter(audit_log::target_type.eq(t.clone()));
        }
        if let Some(id) = filter.target_id {
            q = q.filter(audit_log::target_id.eq(id));
        }
        if let Some(action) = &filter.action {
            q = q.filter(audit_log::action.eq(action.clone()));
        }
        q
    };
    let total = build().count().get_result(conn)?;
    let mut page = build();
    if let Some(before) = filter.before_id {
        page = page.filter(audit_log::id.lt(before));
    }
    let rows = page
        .order(audit_log::id.desc())
        .limit(filter.limit)
        .select(AuditRow::as_select())
        .load(conn)?;
    Ok((rows, total))
}
