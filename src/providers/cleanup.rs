//! Drill clean-up: delete every instance a drill recovered, exactly those, once.
//!
//! The recoveries table says what the drill created; each row is marked deleted when its
//! provider accepted the deletion (or never created the instance), so running clean-up again
//! touches nothing. A failover's instances are production: they are never cleaned up.
//! Clean-up writes its own log (step `@cleanup`) and shows in the report.

use std::sync::Arc;

use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::registry::Registry;
use super::{InstanceState, Purpose};
use crate::crypto::MasterKey;
use crate::db::models::RecoveryRow;
use crate::db::providers as store;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::runners::LogSink;

/// The log "step" clean-up writes under (not a valid step key, so it never clashes).
pub const CLEANUP_LOG: &str = "@cleanup";

/// An instance a drill or failover recovered, and what became of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecoveredInstance {
    /// The inventory host.
    #[schema(example = "wordpress")]
    pub host: String,
    /// The step that recovered it.
    pub step: String,
    pub provider: String,
    pub provider_host_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// `requested`, `recovered`, `running`, `failed` or `deleted`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub recovered_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the last clean-up could not delete it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_error: Option<String>,
}

impl From<RecoveryRow> for RecoveredInstance {
    fn from(r: RecoveryRow) -> Self {
        let ip = |k: &str| r.facts.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            private_ip: ip("private_ip"),
            public_ip: ip("public_ip"),
            host: r.resource_name,
            step: r.step_key,
            provider: r.provider_name,
            provider_host_id: r.provider_host_id,
            instance_id: r.instance_id,
            state: r.state,
            error: r.error,
            recovered_at: r.requested_at,
            deleted_at: r.deleted_at,
            cleanup_error: r.cleanup_error,
        }
    }
}

/// The result of a clean-up.
#[derive(Debug, Serialize, ToSchema)]
pub struct CleanupReport {
    pub execution: Uuid,
    /// True when every instance the drill recovered is deleted.
    pub complete: bool,
    pub instances: Vec<RecoveredInstance>,
}

/// Deletes what drill `execution` recovered and is not yet deleted. `actor` is audited.
pub async fn cleanup(
    db: &Db,
    key: Arc<MasterKey>,
    registry: Arc<Registry>,
    execution: Uuid,
    actor: crate::db::audit::Actor,
) -> Result<CleanupReport> {
    let (rows, round) = db
        .run(move |conn| {
            let e = crate::engine::store::execution(conn, execution)?;
            match e.mode.as_str() {
                "failover" => return Err(Error::conflict(
                    "a failover's recovered instances are production: they are never cleaned up",
                )),
                "dry_run" => return Err(Error::conflict("a dry run recovers nothing")),
                _ => {}
            }
            if !matches!(e.status.as_str(), "succeeded" | "failed" | "cancelled") {
                return Err(Error::conflict(format!(
                    "the drill is {}; cancel it or let it end before cleaning up",
                    e.status
                )));
            }
            let rows = store::recoveries_of(conn, execution)?;
            // Each clean-up run logs as its own attempt of `@cleanup`.
            use crate::db::schema::step_logs;
            let round: Option<i32> = step_logs::table
                .filter(step_logs::execution_id.eq(execution))
                .filter(step_logs::step_key.eq(CLEANUP_LOG))
                .select(diesel::dsl::max(step_logs::attempt))
                .first(conn)?;
            Ok((rows, round.unwrap_or(0) + 1))
        })
        .await?;
    let pending: Vec<RecoveryRow> = rows
        .iter()
        .filter(|r| r.deleted_at.is_none())
        .cloned()
        .collect();
    if !pending.is_empty() {
        let (log, writer) =
            LogSink::start(db.clone(), execution, CLEANUP_LOG.into(), round, Vec::new());
        log.system(&format!(
            "cleaning up {} recovered instance(s) (requested by {})",
            pending.len(),
            actor.subject
        ))
        .await;
        for row in &pending {
            let outcome = delete_one(db, &key, &registry, row).await;
            let (id, error) = (row.id, outcome.as_ref().err().cloned());
            match &outcome {
                Ok(Some(instance)) => {
                    log.system(&format!(
                        "{}: deleted instance {instance}",
                        row.resource_name
                    ))
                    .await
                }
                Ok(None) => {
                    log.system(&format!(
                        "{}: the provider holds no instance of it; nothing to delete",
                        row.resource_name
                    ))
                    .await
                }
                Err(e) => {
                    log.system(&format!("{}: could not delete: {e}", row.resource_name))
                        .await
                }
            }
            db.run(move |conn| store::record_cleanup(conn, id, error.as_deref()))
                .await?;
        }
        drop(log);
        let _ = writer.await;
    }
    let deleted = pending.len();
    let rows = db
        .transaction(move |conn| {
            let rows = store::recoveries_of(conn, execution)?;
            let failed = rows.iter().filter(|r| r.deleted_at.is_none()).count();
            if deleted > 0 {
                crate::engine::store::event(
                    conn,
                    execution,
                    "execution.cleaned_up",
                    None,
                    json!({"instances": deleted, "failed": failed}),
                )?;
                crate::db::audit::record(
                    conn,
                    &actor,
                    crate::db::audit::AuditEntry::new(
                        "cleanup",
                        "execution",
                        execution,
                        "",
                        json!({"instances": deleted, "failed": failed}),
                    ),
                )?;
            }
            Ok(rows)
        })
        .await?;
    Ok(CleanupReport {
        execution,
        complete: rows.iter().all(|r| r.deleted_at.is_some()),
        instances: rows.into_iter().map(RecoveredInstance::from).collect(),
    })
}

/// Deletes one recovery's instance; `Ok(None)` when the provider holds none.
async fn delete_one(
    db: &Db,
    key: &Arc<MasterKey>,
    registry: &Arc<Registry>,
    row: &RecoveryRow,
) -> std::result::Result<Option<String>, String> {
    let (key, registry, name) = (key.clone(), registry.clone(), row.provider_name.clone());
    let provider = db
        .run(move |conn| registry.get(conn, &key, &name))
        .await
        .map_err(|e| e.to_string())?;
    let purpose = if row.purpose == "failover" {
        Purpose::Failover
    } else {
        Purpose::Drill
    };
    let instance = match &row.instance_id {
        Some(id) if !id.is_empty() => Some(id.clone()),
        // Asked for but never seen done: the provider may still have made one.
        _ => provider
            .client
            .instance(&row.provider_host_id, purpose)
            .await
            .map_err(|e| e.to_string())?
            .filter(|i| i.state != InstanceState::Deleting && !i.instance_id.is_empty())
            .map(|i| i.instance_id),
    };
    let Some(instance) = instance else {
        return Ok(None);
    };
    provider
        .client
        .delete_instance(&row.provider_host_id, &instance)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(instance))
}

/// Cleans up the drills whose plan's `auto_cleanup_after` has passed since they ended.
pub async fn sweep(db: &Db, key: Arc<MasterKey>, registry: Arc<Registry>) -> Result<usize> {
    use diesel::sql_types::Uuid as SqlUuid;
    #[derive(QueryableByName)]
    struct Due {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let due: Vec<Due> = db
        .run(|conn| {
            Ok(diesel::sql_query(
                "SELECT e.id FROM executions e \
                 WHERE e.auto_cleanup_secs IS NOT NULL AND e.mode = 'drill' \
                   AND e.status IN ('succeeded', 'failed', 'cancelled') \
                   AND e.finished_at + make_interval(secs => e.auto_cleanup_secs) <= now() \
                   AND EXISTS (SELECT 1 FROM recoveries r WHERE r.execution_id = e.id \
                               AND r.deleted_at IS NULL AND r.cleanup_error IS NULL) \
                 LIMIT 20",
            )
            .load(conn)?)
        })
        .await?;
    let mut done = 0;
    for d in due {
        let actor = crate::db::audit::Actor {
            subject: "engine".into(),
            role: "system".into(),
            request_id: None,
        };
        match cleanup(db, key.clone(), registry.clone(), d.id, actor).await {
            Ok(_) => done += 1,
            Err(e) => tracing::warn!(execution = %d.id, error = %e, "automatic clean-up failed"),
        }
    }
    Ok(done)
}
