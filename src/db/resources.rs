//! Resource rows: create, find by id or name, list with filters and keyset pagination,
//! replace and delete under optimistic concurrency, keeping credential references and the
//! audit trail in the same transaction.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

use super::audit::{self, Actor, AuditEntry};
use super::models::{CredentialRefRow, ResourceRow, ResourceWrite};
use super::schema::{credentials, resource_credential_refs, resources};
use crate::domain::resources::{CredentialRef, LabelSelector};
use crate::error::{Error, FieldError, Result};
use crate::http::IfMatch;

#[derive(Debug, Default)]
pub struct ResourceFilter {
    pub kind: Option<String>,
    pub labels: LabelSelector,
    pub page: super::NamePage,
}

pub fn list(conn: &mut PgConnection, f: &ResourceFilter) -> Result<(Vec<ResourceRow>, i64)> {
    let build = || {
        let mut q = resources::table.into_boxed();
        if let Some(kind) = &f.kind {
            q = q.filter(resources::kind.eq(kind.clone()));
        }
        if !f.labels.equals.is_empty() {
            q = q.filter(resources::labels.contains(json!(f.labels.equals)));
        }
        for key in &f.labels.exists {
            q = q.filter(resources::labels.has_key(key.clone()));
        }
        q
    };
    super::page_by_name!(conn, build, resources, ResourceRow, &f.page)
}

super::lookup_by_key!(resources, ResourceRow, "resource");

pub fn create(
    conn: &mut PgConnection,
    write: ResourceWrite,
    refs: &[CredentialRef],
    actor: &Actor,
) -> Result<ResourceRow> {
    let resolved = resolve_credentials(conn, refs)?;
    let id = Uuid::new_v4();
    let row: ResourceRow = diesel::insert_into(resources::table)
        .values((
            resources::id.eq(id),
            &write,
            resources::created_by.eq(&actor.subject),
            resources::updated_by.eq(&actor.subject),
        ))
        .returning(ResourceRow::as_returning())
        .get_result(conn)?;
    store_refs(conn, row.id, resolved)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "create",
            "resource",
            row.id,
            &row.name,
            json!({"kind": row.kind}),
        ),
    )?;
    Ok(row)
}

/// Replaces a resource with what `next` makes of its current row (PUT passes the new body,
/// PATCH merges onto the current one), after checking `If-Match` against the locked row.
pub fn update(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    actor: &Actor,
    next: impl FnOnce(&ResourceRow) -> Result<(ResourceWrite, Vec<CredentialRef>)>,
) -> Result<ResourceRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let (write, refs) = next(&current)?;
    let resolved = resolve_credentials(conn, &refs)?;
    let changed = changed_fields(&current, &write);
    let row: ResourceRow = diesel::update(resources::table.find(current.id))
        .set((
            &write,
            resources::version.eq(resources::version + 1),
            resources::updated_at.eq(diesel::dsl::now),
            resources::updated_by.eq(&actor.subject),
        ))
        .returning(ResourceRow::as_returning())
        .get_result(conn)?;
    diesel::delete(
        resource_credential_refs::table.filter(resource_credential_refs::resource_id.eq(row.id)),
    )
    .execute(conn)?;
    store_refs(conn, row.id, resolved)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "update",
            "resource",
            row.id,
            &row.name,
            json!({"changed": changed}),
        ),
    )?;
    Ok(row)
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    diesel::delete(resources::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "resource",
            current.id,
            &current.name,
            json!({"kind": current.kind}),
        ),
    )
}

/// Pins a host key trusted on first use, unless a key is pinned already (by a concurrent
/// step); returns the key pinned now. Audited as the engine's act.
pub fn pin_host_key(
    conn: &mut PgConnection,
    target: &crate::runners::ssh::PinTarget,
    seen: &str,
) -> Result<String> {
    use diesel::sql_types::{Array, Jsonb, Text, Uuid as SqlUuid};
    let path: Vec<String> = target.path.iter().map(|p| (*p).to_owned()).collect();
    let current: Option<ResourceRow> = resources::table
        .find(target.resource_id)
        .for_update()
        .select(ResourceRow::as_select())
        .first(conn)
        .optional()?;
    let Some(current) = current else {
        return Err(Error::conflict(format!(
            "resource `{}` no longer exists",
            target.name
        )));
    };
    let mut pinned = &current.attributes;
    for key in target.path {
        pinned = pinned.get(*key).unwrap_or(&Value::Null);
    }
    if let Some(existing) = pinned.as_str() {
        return Ok(existing.to_owned());
    }
    diesel::sql_query(
        "UPDATE resources SET attributes = jsonb_set(attributes, $1, $2), \
         version = version + 1, updated_at = now(), updated_by = 'engine' WHERE id = $3",
    )
    .bind::<Array<Text>, _>(&path)
    .bind::<Jsonb, _>(json!(seen))
    .bind::<SqlUuid, _>(target.resource_id)
    .execute(conn)?;
    audit::record(
        conn,
        &Actor {
            subject: "engine".into(),
            role: "system".into(),
            request_id: None,
        },
        AuditEntry::new(
            "pin_host_key",
            "resource",
            current.id,
            &current.name,
            json!({"field": path.join("."), "fingerprint": seen, "trust_on_first_use": true}),
        ),
    )?;
    Ok(seen.to_owned())
}

fn changed_fields(current: &ResourceRow, next: &ResourceWrite) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if current.name != next.name {
        changed.push("name");
    }
    if current.kind != next.kind {
        changed.push("kind");
    }
    if current.description != next.description {
        changed.push("description");
    }
    if current.attributes != next.attributes {
        changed.push("attributes");
    }
    if current.labels != next.labels {
        changed.push("labels");
    }
    changed
}

/// Looks up every named credential (locking it against deletion until commit); a missing one
/// or one of the wrong kind is a validation error on the attribute that names it.
fn resolve_credentials(
    conn: &mut PgConnection,
    refs: &[CredentialRef],
) -> Result<Vec<(Uuid, String)>> {
    let mut resolved = Vec::with_capacity(refs.len());
    let mut errors = Vec::new();
    for r in refs {
        let found: Option<(Uuid, String)> = credentials::table
            .filter(credentials::name.eq(&r.credential))
            .select((credentials::id, credentials::kind))
            .for_share()
            .first(conn)
            .optional()?;
        match found {
            None => errors.push(FieldError::new(
                &r.attribute,
                format!("no credential named `{}` exists", r.credential),
            )),
            Some((_, kind)) if r.ssh_login && kind != "ssh_password" && kind != "ssh_private_key" => {
                errors.push(FieldError::new(
                    &r.attribute,
                    format!(
                        "credential `{}` is a {kind}; an SSH login needs an ssh_password or ssh_private_key",
                        r.credential
                    ),
                ))
            }
            Some((id, _)) => resolved.push((id, r.attribute.clone())),
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(Error::Validation(errors))
    }
}

fn store_refs(conn: &mut PgConnection, resource_id: Uuid, refs: Vec<(Uuid, String)>) -> Result<()> {
    if refs.is_empty() {
        return Ok(());
    }
    let rows: Vec<CredentialRefRow> = refs
        .into_iter()
        .map(|(credential_id, attribute)| CredentialRefRow {
            resource_id,
            credential_id,
            attribute,
        })
        .collect();
    diesel::insert_into(resource_credential_refs::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(())
}

/// The resources that refer to a credential, for 409s that name them.
pub fn referring_to_credential(
    conn: &mut PgConnection,
    credential_id: Uuid,
) -> Result<Vec<(Uuid, String)>> {
    Ok(resource_credential_refs::table
        .inner_join(resources::table)
        .filter(resource_credential_refs::credential_id.eq(credential_id))
        .select((resources::id, resources::name))
        .distinct()
        .order(resources::name)
        .load(conn)?)
}

/// Labels as stored: a JSON object of strings.
pub fn labels_value(labels: &std::collections::BTreeMap<String, String>) -> Value {
    json!(labels)
}
