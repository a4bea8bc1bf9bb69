//! `POST /api/v1/plans/{key}/readiness`: could this plan run now? Changes nothing anywhere.
//!
//! What a DR manager looks at before a drill: the providers answer; every host the plan
//! recovers exists at its provider, is protected, and has a snapshot younger than the plan's
//! RPO; every jump server the plan goes through answers with its pinned host key; every
//! credential the plan reads opens with the master key; the plan's references resolve
//! against today's inventory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::Viewer;
use crate::crypto::MasterKey;
use crate::db::Db;
use crate::domain::plans::{step_hosts, Inventory, PlanSpec, ResolvedStep};
use crate::domain::resources::ResourceKind;
use crate::domain::steps::{string_leaves, StepKind};
use crate::domain::templates::TemplateEngine;
use crate::error::{Error, Problem, Result};
use crate::http::OptionalJson;
use crate::providers::registry::{self, Provider};
use crate::runners::ssh::{on_jump, SshPool};
use crate::runners::LogSink;

/// How long one jump server may take to answer.
const JUMP_TIMEOUT: Duration = Duration::from_secs(15);

/// Which version to check.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadinessRequest {
    /// Default: the latest version.
    #[serde(default)]
    pub version: Option<i32>,
}

/// One thing checked.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessCheck {
    /// `plan`, `provider`, `host`, `jump_server` or `credential`.
    #[schema(example = "host")]
    pub check: String,
    /// What was checked: a provider, host, jump server or credential name.
    #[schema(example = "wordpress")]
    pub subject: String,
    pub ok: bool,
    #[schema(example = "protected; newest snapshot 4 min old (RPO 15m)")]
    pub detail: String,
}

/// The verdict: ready only when every check passes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub plan: String,
    pub version: i32,
    pub ready: bool,
    pub checked_at: DateTime<Utc>,
    pub checks: Vec<ReadinessCheck>,
}

fn check(kind: &str, subject: &str, result: std::result::Result<String, String>) -> ReadinessCheck {
    let ok = result.is_ok();
    ReadinessCheck {
        check: kind.into(),
        subject: subject.into(),
        ok,
        detail: result.unwrap_or_else(|e| e),
    }
}

/// What the database side of readiness gathered.
struct Gathered {
    plan: String,
    version: i32,
    spec: PlanSpec,
    inventory: Inventory,
    checks: Vec<ReadinessCheck>,
    /// Host resource name -> (provider name, provider host id).
    hosts: BTreeMap<String, (String, String)>,
    providers: BTreeMap<String, std::result::Result<Provider, String>>,
    jumps: BTreeSet<String>,
    credentials: BTreeMap<String, BTreeMap<String, String>>,
}

/// Every inventory name the plan's steps mention, and the credentials those resources log in
/// with or the steps name.
fn named_in_plan(
    resolved: &[ResolvedStep],
    inventory: &Inventory,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut resources = BTreeSet::new();
    let mut credentials = BTreeSet::new();
    for r in resolved {
        for (_, text) in string_leaves(&r.definition.params) {
            for name in inventory.resources.keys() {
                if text == *name || text.contains(&format!("resources.{name}.")) {
                    resources.insert(name.clone());
                }
            }
            for name in inventory.credentials.keys() {
                if text == *name
                    || text.contains(&format!("credentials.{name}"))
                    || text.starts_with(&format!("{name}."))
                {
                    credentials.insert(name.clone());
                }
            }
        }
        resources.extend(step_hosts(&r.definition, inventory));
    }
    for name in &resources {
        let Some(res) = inventory.resources.get(name) else {
            continue;
        };
        for path in [&["credential"][..], &["ssh", "credential"][..]] {
            let mut v = &res.attributes;
            for k in path {
                v = v.get(*k).unwrap_or(&Value::Null);
            }
            if let Some(c) = v.as_str() {
                credentials.insert(c.to_owned());
            }
        }
    }
    (resources, credentials)
}

fn gather(
    conn: &mut diesel::PgConnection,
    templates: &TemplateEngine,
    key: &MasterKey,
    plan_key: &str,
    version: Option<i32>,
) -> Result<Gathered> {
    let plan = crate::db::plans::find(conn, plan_key)?;
    let row = crate::db::plans::version(conn, &plan, version.unwrap_or(plan.latest_version))?;
    let spec: PlanSpec = serde_json::from_value(row.spec.clone()).map_err(Error::internal)?;
    let resolved: Vec<ResolvedStep> =
        serde_json::from_value(row.resolved.clone()).map_err(Error::internal)?;
    let inventory = crate::db::plans::inventory(conn)?;
    let mut checks = Vec::new();
    let report = crate::domain::plans::validate_resolved(
        templates,
        &spec,
        &resolved,
        &inventory,
        &crate::domain::plans::Observed::new(),
    );
    checks.push(check(
        "plan",
        &plan.name,
        if report.valid {
            Ok("every reference resolves against today's inventory".into())
        } else {
            Err(report
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "))
        },
    ));
    let mut hosts = BTreeMap::new();
    for r in resolved
        .iter()
        .filter(|r| r.definition.kind == StepKind::HostRecovery)
    {
        for name in step_hosts(&r.definition, &inventory) {
            let Some(res) = inventory.resources.get(&name) else {
                continue;
            };
            let field = |k: &str| {
                res.attributes
                    .get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            match (field("provider"), field("provider_host_id")) {
                (Some(p), Some(id)) => {
                    hosts.insert(name, (p, id));
                }
                _ => checks.push(check(
                    "host",
                    &name,
                    Err("not bound to a provider host (provider and provider_host_id)".into()),
                )),
            }
        }
    }
    let mut providers = BTreeMap::new();
    for (provider, _) in hosts.values() {
        if providers.contains_key(provider) {
            continue;
        }
        let built = match crate::db::providers::find(conn, provider) {
            Ok(row) => registry::build(conn, key, &row).map_err(|e| e.to_string()),
            Err(Error::NotFound { .. }) => {
                Err(format!("no provider named `{provider}` is defined"))
            }
            Err(e) => return Err(e),
        };
        providers.insert(provider.clone(), built);
    }
    let (resources, credential_names) = named_in_plan(&resolved, &inventory);
    let jumps: BTreeSet<String> = resources
        .iter()
        .filter(|n| {
            inventory
                .resources
                .get(*n)
                .is_some_and(|r| r.kind == ResourceKind::JumpServer)
        })
        .cloned()
        .collect();
    let mut credentials = BTreeMap::new();
    for name in credential_names {
        match crate::db::credentials::open_fields(conn, &name, key) {
            Ok(fields) => {
                checks.push(check(
                    "credential",
                    &name,
                    Ok("opens with the master key".into()),
                ));
                credentials.insert(name, fields);
            }
            Err(e) => checks.push(check(
                "credential",
                &name,
                Err(format!("cannot be opened: {e}")),
            )),
        }
    }
    Ok(Gathered {
        plan: plan.name,
        version: row.version,
        spec,
        inventory,
        checks,
        hosts,
        providers,
        jumps,
        credentials,
    })
}

fn age(since: DateTime<Utc>) -> String {
    let secs = (Utc::now() - since).num_seconds().max(0);
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// Check whether a plan could run now, without changing anything: providers answer, bound
/// hosts are protected with a snapshot younger than the plan's `target_rpo`, jump servers
/// answer with their pinned host keys, credentials open, references resolve.
#[utoipa::path(post, path = "/api/v1/plans/{key}/readiness", tag = "plans",
    params(("key" = String, Path, description = "The plan's id or name")),
    request_body(content = Option<ReadinessRequest>, content_type = "application/json",
        description = "Optional: an empty body checks the latest version",
        example = json!({"version": 2})),
    responses(
        (status = 200, description = "Each check with its result (`ready` false when any failed)", body = Readiness),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan or version", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn readiness(
    _: Viewer,
    db: web::Data<Db>,
    templates: web::Data<TemplateEngine>,
    key: web::Data<MasterKey>,
    plan: web::Path<String>,
    OptionalJson(body): OptionalJson<ReadinessRequest>,
) -> Result<HttpResponse> {
    let plan = plan.into_inner();
    let version = body.unwrap_or_default().version;
    let templates: Arc<TemplateEngine> = templates.into_inner();
    let master: Arc<MasterKey> = key.into_inner();
    let g = db
        .run(move |conn| gather(conn, &templates, &master, &plan, version))
        .await?;
    let mut checks = g.checks;
    // Providers and their hosts.
    let mut listed: BTreeMap<
        String,
        std::result::Result<Vec<crate::providers::ProtectedHost>, String>,
    > = BTreeMap::new();
    for (name, built) in &g.providers {
        let result = match built {
            Ok(p) => p.client.hosts().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        checks.push(check(
            "provider",
            name,
            result
                .as_ref()
                .map(|hosts| format!("answers; {} protected host(s)", hosts.len()))
                .map_err(Clone::clone),
        ));
        listed.insert(name.clone(), result);
    }
    for (host, (provider, id)) in &g.hosts {
        let result = match listed.get(provider) {
            Some(Ok(hosts)) => match hosts.iter().find(|h| &h.id == id) {
                None => Err(format!("provider `{provider}` has no host {id}")),
                Some(h) if !h.protected => {
                    Err(format!("not protected (sync state `{}`)", h.sync_state))
                }
                Some(h) => match (&h.latest_snapshot, g.spec.target_rpo) {
                    (None, _) => Err("no snapshot to recover from".into()),
                    (Some(s), Some(rpo))
                        if (Utc::now() - s.taken_at).num_seconds() > rpo.as_secs() as i64 =>
                    {
                        Err(format!(
                            "newest snapshot is {} old, older than the plan's RPO of {rpo}",
                            age(s.taken_at)
                        ))
                    }
                    (Some(s), Some(rpo)) => Ok(format!(
                        "protected; newest snapshot {} old (RPO {rpo})",
                        age(s.taken_at)
                    )),
                    (Some(s), None) => Ok(format!(
                        "protected; newest snapshot {} old (the plan sets no RPO)",
                        age(s.taken_at)
                    )),
                },
            },
            _ => Err(format!("provider `{provider}` could not be asked")),
        };
        checks.push(check("host", host, result));
    }
    // Jump servers: a real login, host key pinned, nothing pinned by this check.
    let pool = SshPool::new(None, Duration::from_secs(1));
    let probe = uuid::Uuid::new_v4();
    for jump in &g.jumps {
        let pinned = g
            .inventory
            .resources
            .get(jump)
            .and_then(|r| r.attributes.get("host_key_fingerprint"))
            .and_then(Value::as_str)
            .is_some();
        let result = if !pinned {
            Err("no pinned host key (host_key_fingerprint); a drill would trust it on first use or refuse it".into())
        } else {
            match on_jump(probe, jump, &g.inventory, &g.credentials) {
                Err(e) => Err(e),
                Ok(route) => pool
                    .capture(&route, "true", &LogSink::discard(), JUMP_TIMEOUT)
                    .await
                    .map(|_| "answers with its pinned host key; login accepted".to_owned()),
            }
        };
        checks.push(check("jump_server", jump, result));
    }
    drop(pool);
    let ready = checks.iter().all(|c| c.ok);
    Ok(HttpResponse::Ok().json(Readiness {
        plan: g.plan,
        version: g.version,
        ready,
        checked_at: Utc::now(),
        checks,
    }))
}
