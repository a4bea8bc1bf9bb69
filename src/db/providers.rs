//! Provider rows (create, find, list, replace, delete under optimistic concurrency, audited) and
//! the recoveries executions ask providers for.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

use super::audit::{self, Actor, AuditEntry};
use super::models::{ProviderRow, ProviderWrite, RecoveryRow};
use super::schema::{credentials, providers, recoveries, resources};
use crate::error::{Error, Referrer, Result};
use crate::http::IfMatch;

pub fn list(conn: &mut PgConnection, page: &super::NamePage) -> Result<(Vec<ProviderRow>, i64)> {
    let build = || providers::table.into_boxed();
    super::page_by_name!(conn, build, providers, ProviderRow, page)
}

super::lookup_by_key!(providers, ProviderRow, "provider");

/// The id of the `password` credential named `name`; a validation error on `credential` when
/// there is none or it is of another kind.
pub fn resolve_credential(conn: &mut PgConnection, name: &str) -> Result<Uuid> {
    let found: Option<(Uuid, String)> = credentials::table
        .filter(credentials::name.eq(name))
        .select((credentials::id, credentials::kind))
        .for_share()
        .first(conn)
        .optional()?;
    match found {
        None => Err(Error::field(
            "credential",
            format!("no credential named `{name}` exists"),
        )),
        Some((id, kind)) if kind == "password" => Ok(id),
        Some((_, kind)) => Err(Error::field(
            "credential",
            format!("credential `{name}` is a {kind}; a provider logs in with a `password` credential (username and password)"),
        )),
    }
}

/// A credential's name by id.
pub fn credential_name(conn: &mut PgConnection, id: Option<Uuid>) -> Result<Option<String>> {
    let Some(id) = id else { return Ok(None) };
    Ok(credentials::table
        .find(id)
        .select(credentials::name)
        .first(conn)
        .optional()?)
}

pub fn create(conn: &mut PgConnection, write: ProviderWrite, actor: &Actor) -> Result<ProviderRow> {
    let row: ProviderRow = diesel::insert_into(providers::table)
        .values((
            providers::id.eq(Uuid::new_v4()),
            &write,
            providers::created_by.eq(&actor.subject),
            providers::updated_by.eq(&actor.subject),
        ))
        .returning(ProviderRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "create",
            "provider",
            row.id,
            &row.name,
            json!({"kind": row.kind, "base_url": row.base_url}),
        ),
    )?;
    Ok(row)
}

/// Replaces a provider; a rename is refused while inventory hosts name it.
pub fn update(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    actor: &Actor,
    write: ProviderWrite,
) -> Result<ProviderRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    if write.name != current.name {
        refuse_while_bound(conn, &current, "renamed")?;
    }
    let row: ProviderRow = diesel::update(providers::table.find(current.id))
        .set((
            &write,
            providers::version.eq(providers::version + 1),
            providers::updated_at.eq(diesel::dsl::now),
            providers::updated_by.eq(&actor.subject),
        ))
        .returning(ProviderRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "update",
            "provider",
            row.id,
            &row.name,
            json!({"kind": row.kind, "base_url": row.base_url}),
        ),
    )?;
    Ok(row)
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    refuse_while_bound(conn, &current, "deleted")?;
    diesel::delete(providers::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "provider",
            current.id,
            &current.name,
            json!({"kind": current.kind}),
        ),
    )
}

/// The inventory hosts bound to a provider (by its name in their `provider` attribute).
pub fn bound_hosts(conn: &mut PgConnection, provider: &str) -> Result<Vec<(Uuid, String, Value)>> {
    use diesel::dsl::sql;
    use diesel::sql_types::Bool;
    Ok(resources::table
        .filter(resources::kind.eq("host"))
        .filter(
            sql::<Bool>("attributes->>'provider' = ")
                .bind::<diesel::sql_types::Text, _>(provider.to_owned()),
        )
        .select((resources::id, resources::name, resources::attributes))
        .order(resources::name)
        .load(conn)?)
}

fn refuse_while_bound(conn: &mut PgConnection, current: &ProviderRow, what: &str) -> Result<()> {
    let referrers: Vec<Referrer> = bound_hosts(conn, &current.name)?
        .into_iter()
        .map(|(id, name, _)| Referrer {
            kind: "resource".into(),
            id,
            name,
        })
        .collect();
    if referrers.is_empty() {
        return Ok(());
    }
    Err(Error::Conflict {
        detail: format!(
            "provider `{}` is named by {} inventory host(s); it cannot be {what} until they are bound elsewhere",
            current.name,
            referrers.len()
        ),
        referrers,
    })
}

/// The providers that log in with a credential, for 409s that name them.
pub fn referring_to_credential(
    conn: &mut PgConnection,
    credential_id: Uuid,
) -> Result<Vec<(Uuid, String)>> {
    Ok(providers::table
        .filter(providers::credential_id.eq(credential_id))
        .select((providers::id, providers::name))
        .order(providers::name)
        .load(conn)?)
}

/// What an execution recorded for one host, if anything.
pub fn recovery(
    conn: &mut PgConnection,
    execution: Uuid,
    resource: &str,
) -> Result<Option<RecoveryRow>> {
    Ok(recoveries::table
        .filter(recoveries::execution_id.eq(execution))
        .filter(recoveries::resource_name.eq(resource))
        .select(RecoveryRow::as_select())
        .first(conn)
        .optional()?)
}

/// Every recovery an execution asked for, in the order asked.
pub fn recoveries_of(conn: &mut PgConnection, execution: Uuid) -> Result<Vec<RecoveryRow>> {
    Ok(recoveries::table
        .filter(recoveries::execution_id.eq(execution))
        .order((recoveries::requested_at, recoveries::resource_name))
        .select(RecoveryRow::as_select())
        .load(conn)?)
}

/// The live (not cleaned up) recovery of a provider host by another execution, if any.
pub fn live_elsewhere(
    conn: &mut PgConnection,
    execution: Uuid,
    provider: &str,
    host_id: &str,
) -> Result<Option<RecoveryRow>> {
    Ok(recoveries::table
        .filter(recoveries::provider_name.eq(provider))
        .filter(recoveries::provider_host_id.eq(host_id))
        .filter(recoveries::deleted_at.is_null())
        .filter(recoveries::execution_id.ne(execution))
        .filter(recoveries::state.ne("failed"))
        .order(recoveries::requested_at.desc())
        .select(RecoveryRow::as_select())
        .first(conn)
        .optional()?)
}

/// Records, before the provider is asked, that this execution recovers a host (committed on
/// its own, so a crash after the call still finds it).
pub fn record_request(
    conn: &mut PgConnection,
    execution: Uuid,
    step_key: &str,
    resource: &str,
    provider: &str,
    host_id: &str,
    purpose: &str,
) -> Result<RecoveryRow> {
    diesel::insert_into(recoveries::table)
        .values((
            recoveries::id.eq(Uuid::new_v4()),
            recoveries::execution_id.eq(execution),
            recoveries::step_key.eq(step_key),
            recoveries::resource_name.eq(resource),
            recoveries::provider_name.eq(provider),
            recoveries::provider_host_id.eq(host_id),
            recoveries::purpose.eq(purpose),
            recoveries::state.eq("requested"),
        ))
        .on_conflict((recoveries::execution_id, recoveries::resource_name))
        .do_update()
        .set((
            recoveries::state.eq("requested"),
            recoveries::error.eq(None::<String>),
            recoveries::updated_at.eq(diesel::dsl::now),
        ))
        .returning(RecoveryRow::as_returning())
        .get_result(conn)
        .map_err(Into::into)
}

/// Stores what the provider said about a recovery.
pub fn record_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: &str,
    instance_id: Option<&str>,
    facts: &Value,
    error: Option<&str>,
) -> Result<()> {
    diesel::update(recoveries::table.find(id))
        .set((
            recoveries::state.eq(state),
            recoveries::instance_id.eq(instance_id),
            recoveries::facts.eq(facts),
            recoveries::error.eq(error),
            recoveries::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Marks a recovery cleaned up (or records why its clean-up failed).
pub fn record_cleanup(conn: &mut PgConnection, id: Uuid, error: Option<&str>) -> Result<()> {
    match error {
        None => diesel::update(recoveries::table.find(id))
            .set((
                recoveries::state.eq("deleted"),
                recoveries::deleted_at.eq(diesel::dsl::now),
                recoveries::cleanup_error.eq(None::<String>),
                recoveries::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?,
        Some(e) => diesel::update(recoveries::table.find(id))
            .set((
                recoveries::cleanup_error.eq(e),
                recoveries::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?,
    };
    Ok(())
}
