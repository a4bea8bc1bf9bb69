//! Plan rows and their immutable versions. A save writes a new version row (never updates
//! one), moves `latest_version`, and records which steps the latest version uses.

use std::collections::BTreeMap;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Actor, AuditEntry};
use super::models::{PlanRow, PlanVersionRow};
use super::schema::{credentials, plan_step_refs, plan_versions, plans, resources};
use crate::domain::credentials::CredentialKind;
use crate::domain::plans::{Inventory, InventoryResource, PlanSpec, ResolvedStep};
use crate::domain::resources::ResourceKind;
use crate::error::{Error, Result};
use crate::http::IfMatch;

#[derive(Debug, Default)]
pub struct PlanFilter {
    pub page: super::NamePage,
}

pub fn list(conn: &mut PgConnection, f: &PlanFilter) -> Result<(Vec<PlanRow>, i64)> {
    let build = || plans::table.into_boxed();
    super::page_by_name!(conn, build, plans, PlanRow, &f.page)
}

super::lookup_by_key!(plans, PlanRow, "plan");

/// The inventory a plan is validated and rendered against.
pub fn inventory(conn: &mut PgConnection) -> Result<Inventory> {
    let rows: Vec<(Uuid, String, String, serde_json::Value, serde_json::Value)> = resources::table
        .select((
            resources::id,
            resources::name,
            resources::kind,
            resources::attributes,
            resources::labels,
        ))
        .load(conn)?;
    let mut inventory = Inventory::default();
    for (id, name, kind, attributes, labels) in rows {
        let kind: ResourceKind = kind.parse().map_err(Error::internal)?;
        let labels: BTreeMap<String, String> = serde_json::from_value(labels).unwrap_or_default();
        inventory.resources.insert(
            name,
            InventoryResource {
                id,
                kind,
                attributes,
                labels,
            },
        );
    }
    let creds: Vec<(String, String)> = credentials::table
        .select((credentials::name, credentials::kind))
        .load(conn)?;
    for (name, kind) in creds {
        let kind: CredentialKind = kind.parse().map_err(Error::internal)?;
        inventory.credentials.insert(name, kind);
    }
    Ok(inventory)
}

fn spec_json(spec: &PlanSpec) -> serde_json::Value {
    serde_json::to_value(spec).expect("a plan spec serializes to JSON")
}

fn resolved_json(resolved: &[ResolvedStep]) -> serde_json::Value {
    serde_json::to_value(resolved).expect("resolved steps serialize to JSON")
}

fn insert_version(
    conn: &mut PgConnection,
    plan_id: Uuid,
    version: i32,
    spec: &PlanSpec,
    resolved: &[ResolvedStep],
    actor: &Actor,
) -> Result<PlanVersionRow> {
    let row = diesel::insert_into(plan_versions::table)
        .values((
            plan_versions::plan_id.eq(plan_id),
            plan_versions::version.eq(version),
            plan_versions::spec.eq(spec_json(spec)),
            plan_versions::resolved.eq(resolved_json(resolved)),
            plan_versions::created_by.eq(&actor.subject),
        ))
        .returning(PlanVersionRow::as_returning())
        .get_result(conn)?;
    diesel::delete(plan_step_refs::table.filter(plan_step_refs::plan_id.eq(plan_id)))
        .execute(conn)?;
    let mut step_ids: Vec<Uuid> = resolved.iter().map(|r| r.step_id).collect();
    step_ids.sort();
    step_ids.dedup();
    let refs: Vec<_> = step_ids
        .into_iter()
        .map(|step_id| {
            (
                plan_step_refs::plan_id.eq(plan_id),
                plan_step_refs::step_id.eq(step_id),
            )
        })
        .collect();
    diesel::insert_into(plan_step_refs::table)
        .values(&refs)
        .execute(conn)?;
    Ok(row)
}

pub fn create(
    conn: &mut PgConnection,
    spec: &PlanSpec,
    resolved: &[ResolvedStep],
    actor: &Actor,
) -> Result<(PlanRow, PlanVersionRow)> {
    let row: PlanRow = diesel::insert_into(plans::table)
        .values((
            plans::id.eq(Uuid::new_v4()),
            plans::name.eq(&spec.name),
            plans::description.eq(&spec.description),
            plans::created_by.eq(&actor.subject),
            plans::updated_by.eq(&actor.subject),
        ))
        .returning(PlanRow::as_returning())
        .get_result(conn)?;
    let version = insert_version(conn, row.id, 1, spec, resolved, actor)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "create",
            "plan",
            row.id,
            &row.name,
            json!({"version": 1, "steps": resolved.len()}),
        ),
    )?;
    Ok((row, version))
}

/// Saves a new version of a locked plan.
pub fn add_version(
    conn: &mut PgConnection,
    current: &PlanRow,
    spec: &PlanSpec,
    resolved: &[ResolvedStep],
    actor: &Actor,
) -> Result<(PlanRow, PlanVersionRow)> {
    let next = current
        .latest_version
        .checked_add(1)
        .ok_or_else(|| Error::conflict("this plan has reached the highest version number"))?;
    let row: PlanRow = diesel::update(plans::table.find(current.id))
        .set((
            plans::name.eq(&spec.name),
            plans::description.eq(&spec.description),
            plans::latest_version.eq(next),
            plans::updated_at.eq(diesel::dsl::now),
            plans::updated_by.eq(&actor.subject),
        ))
        .returning(PlanRow::as_returning())
        .get_result(conn)?;
    let version = insert_version(conn, row.id, next, spec, resolved, actor)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "update",
            "plan",
            row.id,
            &row.name,
            json!({"version": next, "steps": resolved.len()}),
        ),
    )?;
    Ok((row, version))
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.latest_version)?;
    let runs: Vec<(Uuid, String)> = super::schema::executions::table
        .filter(super::schema::executions::plan_id.eq(current.id))
        .order(super::schema::executions::created_at.desc())
        .select((
            super::schema::executions::id,
            super::schema::executions::mode,
        ))
        .limit(20)
        .load(conn)?;
    if !runs.is_empty() {
        return Err(Error::Conflict {
            detail: format!(
                "plan `{}` has executions; their records keep the plan (delete is refused so the history stays true)",
                current.name
            ),
            referrers: runs
                .into_iter()
                .map(|(id, mode)| crate::error::Referrer { kind: "execution".into(), id, name: mode })
                .collect(),
        });
    }
    let hooks = super::hooks::referring_to_plan(conn, current.id)?;
    if !hooks.is_empty() {
        return Err(Error::Conflict {
            detail: format!(
                "plan `{}` is started by {} inbound hook(s); delete them or point them at another plan first",
                current.name,
                hooks.len()
            ),
            referrers: hooks
                .into_iter()
                .map(|(id, name)| crate::error::Referrer { kind: "hook".into(), id, name })
                .collect(),
        });
    }
    diesel::delete(plans::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "plan",
            current.id,
            &current.name,
            json!({"versions": current.latest_version}),
        ),
    )
}

/// Every version of a plan, newest first (without the documents).
pub fn versions(conn: &mut PgConnection, plan_id: Uuid) -> Result<Vec<PlanVersionRow>> {
    Ok(plan_versions::table
        .filter(plan_versions::plan_id.eq(plan_id))
        .order(plan_versions::version.desc())
        .select(PlanVersionRow::as_select())
        .load(conn)?)
}

pub fn version(conn: &mut PgConnection, plan: &PlanRow, version: i32) -> Result<PlanVersionRow> {
    plan_versions::table
        .find((plan.id, version))
        .select(PlanVersionRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("plan version", format!("{} v{version}", plan.name)))
}

/// The median duration (seconds, rounded up) of each step key's successful runs in this plan's
/// drills and failovers: what the RTO estimate uses once a plan has run.
pub fn observed_durations(
    conn: &mut PgConnection,
    plan_id: Uuid,
) -> Result<crate::domain::plans::Observed> {
    #[derive(QueryableByName)]
    struct Median {
        #[diesel(sql_type = diesel::sql_types::Text)]
        key: String,
        #[diesel(sql_type = diesel::sql_types::Double)]
        secs: f64,
    }
    let rows: Vec<Median> = diesel::sql_query(
        "SELECT sr.key, percentile_cont(0.5) WITHIN GROUP
                (ORDER BY extract(epoch FROM sr.finished_at - sr.started_at))::float8 AS secs
         FROM step_runs sr JOIN executions e ON e.id = sr.execution_id
         WHERE e.plan_id = $1 AND e.mode <> 'dry_run' AND sr.status = 'succeeded'
           AND sr.started_at IS NOT NULL AND sr.finished_at IS NOT NULL
         GROUP BY sr.key",
    )
    .bind::<diesel::sql_types::Uuid, _>(plan_id)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|m| (m.key, m.secs.max(0.0).ceil() as u64))
        .collect())
}
