//! Credential rows: the secret is sealed with the master key before it reaches the database
//! and is never selected except by `open_secret`, which the runners use at execution time.

use base64::Engine;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::audit::{self, Actor, AuditEntry};
use super::models::{CredentialRow, CredentialWrite};
use super::schema::{credentials, service_settings};
use crate::crypto::MasterKey;
use crate::domain::credentials::ValidSecret;
use crate::error::{Error, Referrer, Result};
use crate::http::IfMatch;

#[derive(Debug, Default)]
pub struct CredentialFilter {
    pub kind: Option<String>,
    pub page: super::NamePage,
}

pub fn list(conn: &mut PgConnection, f: &CredentialFilter) -> Result<(Vec<CredentialRow>, i64)> {
    let build = || {
        let mut q = credentials::table.into_boxed();
        if let Some(kind) = &f.kind {
            q = q.filter(credentials::kind.eq(kind.clone()));
        }
        q
    };
    super::page_by_name!(conn, build, credentials, CredentialRow, &f.page)
}

super::lookup_by_key!(credentials, CredentialRow, "credential");

pub fn create(
    conn: &mut PgConnection,
    write: CredentialWrite,
    secret: &ValidSecret,
    key: &MasterKey,
    actor: &Actor,
) -> Result<CredentialRow> {
    let id = Uuid::new_v4();
    let sealed = key.seal(&secret.plaintext, id.as_bytes());
    let row: CredentialRow = diesel::insert_into(credentials::table)
        .values((
            credentials::id.eq(id),
            &write,
            credentials::secret_ciphertext.eq(&sealed.ciphertext),
            credentials::secret_nonce.eq(&sealed.nonce),
            credentials::key_id.eq(&sealed.key_id),
            credentials::created_by.eq(&actor.subject),
            credentials::updated_by.eq(&actor.subject),
        ))
        .returning(CredentialRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "create",
            "credential",
            row.id,
            &row.name,
            json!({"kind": row.kind}),
        ),
    )?;
    Ok(row)
}

/// Replaces a credential's fields with what `next` makes of the current row, and its secret
/// when `next` returns one. A credential that resources refer to keeps its name and kind.
pub fn update(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    master_key: &MasterKey,
    actor: &Actor,
    next: impl FnOnce(&CredentialRow) -> Result<(CredentialWrite, Option<ValidSecret>)>,
) -> Result<CredentialRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let (write, secret) = next(&current)?;
    if write.kind != current.kind && secret.is_none() {
        return Err(Error::field(
            "secret",
            "changing the kind needs a new secret of that kind",
        ));
    }
    if write.name != current.name || write.kind != current.kind {
        let referrers = referrers(conn, current.id)?;
        if !referrers.is_empty() {
            return Err(Error::Conflict {
                detail: format!(
                    "credential `{}` is referred to by {} resource(s) or provider(s) by name; it cannot be renamed or change kind until they stop referring to it",
                    current.name,
                    referrers.len()
                ),
                referrers,
            });
        }
    }
    let row: CredentialRow = diesel::update(credentials::table.find(current.id))
        .set((
            &write,
            credentials::version.eq(credentials::version + 1),
            credentials::updated_at.eq(diesel::dsl::now),
            credentials::updated_by.eq(&actor.subject),
        ))
        .returning(CredentialRow::as_returning())
        .get_result(conn)?;
    let rotated = secret.is_some();
    if let Some(secret) = secret {
        let sealed = master_key.seal(&secret.plaintext, current.id.as_bytes());
        diesel::update(credentials::table.find(current.id))
            .set((
                credentials::secret_ciphertext.eq(&sealed.ciphertext),
                credentials::secret_nonce.eq(&sealed.nonce),
                credentials::key_id.eq(&sealed.key_id),
                credentials::secret_updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)?;
    }
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "update",
            "credential",
            row.id,
            &row.name,
            json!({"kind": row.kind, "secret_replaced": rotated}),
        ),
    )?;
    Ok(row)
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let referrers = referrers(conn, current.id)?;
    if !referrers.is_empty() {
        return Err(Error::Conflict {
            detail: format!(
                "credential `{}` is still referred to by {} resource(s) or provider(s); change them first",
                current.name,
                referrers.len()
            ),
            referrers,
        });
    }
    diesel::delete(credentials::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "credential",
            current.id,
            &current.name,
            json!({"kind": current.kind}),
        ),
    )
}

fn referrers(conn: &mut PgConnection, credential_id: Uuid) -> Result<Vec<Referrer>> {
    let named = |kind: &str, rows: Vec<(Uuid, String)>| {
        rows.into_iter()
            .map(|(id, name)| Referrer {
                kind: kind.into(),
                id,
                name,
            })
            .collect::<Vec<_>>()
    };
    let mut all = named(
        "resource",
        super::resources::referring_to_credential(conn, credential_id)?,
    );
    all.extend(named(
        "provider",
        super::providers::referring_to_credential(conn, credential_id)?,
    ));
    Ok(all)
}

/// The plaintext secret of a credential, for the runners that inject it.
pub fn open_secret(
    conn: &mut PgConnection,
    id: Uuid,
    key: &MasterKey,
) -> Result<Zeroizing<Vec<u8>>> {
    let sealed: super::Sealed = credentials::table
        .find(id)
        .select((
            credentials::secret_ciphertext,
            credentials::secret_nonce,
            credentials::key_id,
        ))
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("credential", id))?;
    super::open_sealed(key, "credential", id, sealed)
}

const MASTER_KEY_CHECK: &str = "master_key_check";
const CHECK_PLAINTEXT: &[u8] = b"dr-orchestrator master key check";

/// Refuses to start with a master key other than the one the database's secrets were sealed
/// with: it would otherwise fail only when a failover first needs a credential.
pub fn check_master_key(conn: &mut PgConnection, key: &MasterKey) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    // The first instance to start records a check value; every later start must open it.
    let sealed = key.seal(CHECK_PLAINTEXT, MASTER_KEY_CHECK.as_bytes());
    diesel::insert_into(service_settings::table)
        .values((
            service_settings::key.eq(MASTER_KEY_CHECK),
            service_settings::value.eq(b64.encode([sealed.nonce, sealed.ciphertext].concat())),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .map_err(|e| e.to_string())?;
    let stored: String = service_settings::table
        .find(MASTER_KEY_CHECK)
        .select(service_settings::value)
        .first(conn)
        .map_err(|e| e.to_string())?;
    let bytes = b64.decode(stored).map_err(|e| e.to_string())?;
    let opens = bytes.len() > 12
        && key
            .open(&bytes[..12], &bytes[12..], MASTER_KEY_CHECK.as_bytes())
            .is_ok();
    if opens {
        Ok(())
    } else {
        Err(
            "DRO_MASTER_KEY is not the key this database's credentials were sealed with; \
             start with the original key (see README, \"Keys\")"
                .into(),
        )
    }
}

/// A credential's (non-secret) username.
pub fn username(conn: &mut PgConnection, id: Uuid) -> Result<Option<String>> {
    Ok(credentials::table
        .find(id)
        .select(credentials::username)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// A credential's fields by name (its secret's string fields, plus `username` when it has
/// one), opened with the master key: what runners inject and provider logins use.
pub fn open_fields(
    conn: &mut PgConnection,
    name: &str,
    key: &MasterKey,
) -> Result<std::collections::BTreeMap<String, String>> {
    let found: Option<(Uuid, Option<String>)> = credentials::table
        .filter(credentials::name.eq(name))
        .select((credentials::id, credentials::username))
        .first(conn)
        .optional()?;
    let Some((id, username)) = found else {
        return Err(Error::conflict(format!(
            "credential `{name}` no longer exists"
        )));
    };
    let plain = open_secret(conn, id, key)?;
    let secret: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&plain).map_err(Error::internal)?;
    let mut fields: std::collections::BTreeMap<String, String> = secret
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
        .collect();
    if let Some(user) = username {
        fields.insert("username".into(), user);
    }
    Ok(fields)
}

/// A credential's version (it changes when its secret is rotated).
pub fn version(conn: &mut PgConnection, id: Uuid) -> Result<i32> {
    Ok(credentials::table
        .find(id)
        .select(credentials::version)
        .first(conn)
        .optional()?
        .unwrap_or(0))
}
