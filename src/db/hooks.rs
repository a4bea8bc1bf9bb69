//! Inbound hook rows (audited CRUD under optimistic concurrency; the secret sealed with the
//! master key, the row id as associated data, opened only to authenticate a call) and the
//! deliveries callers made.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::audit::{self, Actor, AuditEntry};
use super::models::{HookRow, HookWrite};
use super::schema::{hook_deliveries, hooks, plans};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::http::IfMatch;

pub fn list(conn: &mut PgConnection, page: &super::NamePage) -> Result<(Vec<HookRow>, i64)> {
    let build = || hooks::table.into_boxed();
    super::page_by_name!(conn, build, hooks, HookRow, page)
}

super::lookup_by_key!(hooks, HookRow, "hook");

/// A hook by id, as a caller names it.
pub fn by_id(conn: &mut PgConnection, id: Uuid) -> Result<HookRow> {
    hooks::table
        .find(id)
        .select(HookRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("hook", id))
}

/// The name of a hook's plan.
pub fn plan_name(conn: &mut PgConnection, plan_id: Option<Uuid>) -> Result<Option<String>> {
    let Some(id) = plan_id else { return Ok(None) };
    Ok(plans::table
        .find(id)
        .select(plans::name)
        .first(conn)
        .optional()?)
}

/// What the audit trail says about a hook: never its secret.
fn audit_details(row: &HookRow) -> Value {
    json!({"action": row.action, "plan_id": row.plan_id, "mode": row.mode,
           "auth": row.auth, "enabled": row.enabled})
}

fn seal(
    conn: &mut PgConnection,
    id: Uuid,
    secret: &str,
    key: &MasterKey,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let sealed = key.seal(secret.as_bytes(), id.as_bytes());
    Ok(diesel::update(hooks::table.find(id))
        .set((
            hooks::secret_ciphertext.eq(&sealed.ciphertext),
            hooks::secret_nonce.eq(&sealed.nonce),
            hooks::key_id.eq(&sealed.key_id),
            hooks::secret_updated_at.eq(diesel::dsl::now),
        ))
        .returning(hooks::secret_updated_at)
        .get_result(conn)?)
}

pub fn create(
    conn: &mut PgConnection,
    write: HookWrite,
    secret: &str,
    key: &MasterKey,
    actor: &Actor,
) -> Result<HookRow> {
    let id = Uuid::new_v4();
    let sealed = key.seal(secret.as_bytes(), id.as_bytes());
    let row: HookRow = diesel::insert_into(hooks::table)
        .values((
            hooks::id.eq(id),
            &write,
            hooks::secret_ciphertext.eq(&sealed.ciphertext),
            hooks::secret_nonce.eq(&sealed.nonce),
            hooks::key_id.eq(&sealed.key_id),
            hooks::created_by.eq(&actor.subject),
            hooks::updated_by.eq(&actor.subject),
        ))
        .returning(HookRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new("create", "hook", row.id, &row.name, audit_details(&row)),
    )?;
    Ok(row)
}

/// Replaces a hook's definition with what `next` makes of the current row (its secret stays).
pub fn update(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    actor: &Actor,
    next: impl FnOnce(&mut PgConnection, &HookRow) -> Result<HookWrite>,
) -> Result<HookRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let write = next(conn, &current)?;
    let row: HookRow = diesel::update(hooks::table.find(current.id))
        .set((
            &write,
            hooks::version.eq(hooks::version + 1),
            hooks::updated_at.eq(diesel::dsl::now),
            hooks::updated_by.eq(&actor.subject),
        ))
        .returning(HookRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new("update", "hook", row.id, &row.name, audit_details(&row)),
    )?;
    Ok(row)
}

/// Replaces a hook's secret with `secret` (the old one stops working at once).
pub fn rotate_secret(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    master_key: &MasterKey,
    actor: &Actor,
    secret: &str,
) -> Result<HookRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    seal(conn, current.id, secret, master_key)?;
    let row: HookRow = diesel::update(hooks::table.find(current.id))
        .set((
            hooks::version.eq(hooks::version + 1),
            hooks::updated_at.eq(diesel::dsl::now),
            hooks::updated_by.eq(&actor.subject),
        ))
        .returning(HookRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "rotate_secret",
            "hook",
            row.id,
            &row.name,
            audit_details(&row),
        ),
    )?;
    Ok(row)
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    diesel::delete(hooks::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "hook",
            current.id,
            &current.name,
            audit_details(&current),
        ),
    )
}

/// A hook's secret in plaintext, to authenticate a call.
pub fn open_secret(
    conn: &mut PgConnection,
    id: Uuid,
    key: &MasterKey,
) -> Result<Zeroizing<String>> {
    let sealed: super::Sealed = hooks::table
        .find(id)
        .select((hooks::secret_ciphertext, hooks::secret_nonce, hooks::key_id))
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("hook", id))?;
    let plain = super::open_sealed(key, "hook", id, sealed)?;
    let text = std::str::from_utf8(&plain)
        .map_err(|_| Error::internal(format!("hook {id}: the secret is not text")))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The hooks that start a plan (they keep it from being deleted).
pub fn referring_to_plan(conn: &mut PgConnection, plan_id: Uuid) -> Result<Vec<(Uuid, String)>> {
    Ok(hooks::table
        .filter(hooks::plan_id.eq(plan_id))
        .order(hooks::name)
        .select((hooks::id, hooks::name))
        .load(conn)?)
}

/// Serializes the handling of one delivery id until the transaction ends, so two copies of a
/// delivery arriving together act once.
pub fn lock_delivery(conn: &mut PgConnection, hook_id: Uuid, delivery_id: &str) -> Result<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(format!("hook:{hook_id}:{delivery_id}"))
        .execute(conn)?;
    Ok(())
}

/// A delivery already acted on: the hash of its body and what was answered.
pub fn delivery(
    conn: &mut PgConnection,
    hook_id: Uuid,
    delivery_id: &str,
) -> Result<Option<(Vec<u8>, Value)>> {
    Ok(hook_deliveries::table
        .find((hook_id, delivery_id))
        .select((hook_deliveries::body_sha256, hook_deliveries::response))
        .first(conn)
        .optional()?)
}

/// Records a delivery acted on, in the transaction that acted.
pub fn record_delivery(
    conn: &mut PgConnection,
    hook_id: Uuid,
    delivery_id: &str,
    body_sha256: &[u8],
    execution_id: Uuid,
    response: &Value,
) -> Result<()> {
    diesel::insert_into(hook_deliveries::table)
        .values((
            hook_deliveries::hook_id.eq(hook_id),
            hook_deliveries::delivery_id.eq(delivery_id),
            hook_deliveries::body_sha256.eq(body_sha256),
            hook_deliveries::execution_id.eq(execution_id),
            hook_deliveries::response.eq(response),
        ))
        .execute(conn)?;
    Ok(())
}
