//! Step rows: the validated definition is stored whole; plans pin a copy of it per version.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Actor, AuditEntry};
use super::models::StepRow;
use super::schema::{plan_step_refs, plans, steps};
use crate::domain::plans::CatalogStep;
use crate::domain::steps::StepDefinition;
use crate::error::{Error, Referrer, Result};
use crate::http::IfMatch;

#[derive(Debug, Default)]
pub struct StepFilter {
    pub kind: Option<String>,
    pub page: super::NamePage,
}

/// What a step write sets.
pub struct StepWrite {
    pub name: String,
    pub description: String,
    pub definition: StepDefinition,
}

pub fn list(conn: &mut PgConnection, f: &StepFilter) -> Result<(Vec<StepRow>, i64)> {
    let build = || {
        let mut q = steps::table.into_boxed();
        if let Some(kind) = &f.kind {
            q = q.filter(steps::kind.eq(kind.clone()));
        }
        q
    };
    super::page_by_name!(conn, build, steps, StepRow, &f.page)
}

super::lookup_by_key!(steps, StepRow, "step");

fn definition_json(def: &StepDefinition) -> serde_json::Value {
    serde_json::to_value(def).expect("a step definition serializes to JSON")
}

pub fn create(conn: &mut PgConnection, write: StepWrite, actor: &Actor) -> Result<StepRow> {
    let row: StepRow = diesel::insert_into(steps::table)
        .values((
            steps::id.eq(Uuid::new_v4()),
            steps::name.eq(&write.name),
            steps::kind.eq(write.definition.kind.as_str()),
            steps::description.eq(&write.description),
            steps::definition.eq(definition_json(&write.definition)),
            steps::created_by.eq(&actor.subject),
            steps::updated_by.eq(&actor.subject),
        ))
        .returning(StepRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "create",
            "step",
            row.id,
            &row.name,
            json!({"kind": row.kind}),
        ),
    )?;
    Ok(row)
}

/// Replaces a step with what `next` makes of it. Plan versions keep the definition they pinned.
pub fn update(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    actor: &Actor,
    next: impl FnOnce(&StepRow) -> Result<StepWrite>,
) -> Result<StepRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let write = next(&current)?;
    let row: StepRow = diesel::update(steps::table.find(current.id))
        .set((
            steps::name.eq(&write.name),
            steps::kind.eq(write.definition.kind.as_str()),
            steps::description.eq(&write.description),
            steps::definition.eq(definition_json(&write.definition)),
            steps::version.eq(steps::version + 1),
            steps::updated_at.eq(diesel::dsl::now),
            steps::updated_by.eq(&actor.subject),
        ))
        .returning(StepRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "update",
            "step",
            row.id,
            &row.name,
            json!({"kind": row.kind, "version": row.version}),
        ),
    )?;
    Ok(row)
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let referrers: Vec<Referrer> = plan_step_refs::table
        .inner_join(plans::table)
        .filter(plan_step_refs::step_id.eq(current.id))
        .select((plans::id, plans::name))
        .order(plans::name)
        .load::<(Uuid, String)>(conn)?
        .into_iter()
        .map(|(id, name)| Referrer {
            kind: "plan".into(),
            id,
            name,
        })
        .collect();
    if !referrers.is_empty() {
        return Err(Error::Conflict {
            detail: format!(
                "step `{}` is used by the latest version of {} plan(s); change them first",
                current.name,
                referrers.len()
            ),
            referrers,
        });
    }
    diesel::delete(steps::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "step",
            current.id,
            &current.name,
            json!({"kind": current.kind}),
        ),
    )
}

/// The step definition as a catalog entry for plan resolution.
pub fn catalog_entry(row: &StepRow) -> Result<CatalogStep> {
    let definition: StepDefinition =
        serde_json::from_value(row.definition.clone()).map_err(|e| {
            Error::internal(format!("step {} has an unreadable definition: {e}", row.id))
        })?;
    Ok(CatalogStep {
        id: row.id,
        name: row.name.clone(),
        version: row.version,
        definition,
    })
}

/// Loads the steps named (by name or id) in `keys`, keyed by the key used.
pub fn catalog(
    conn: &mut PgConnection,
    keys: &[String],
) -> Result<std::collections::HashMap<String, CatalogStep>> {
    let mut out = std::collections::HashMap::new();
    for key in keys {
        if out.contains_key(key) {
            continue;
        }
        match find(conn, key) {
            Ok(row) => {
                out.insert(key.clone(), catalog_entry(&row)?);
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
