//! Plans: a DAG of plan steps over reusable steps. Resolving a plan pins each step's definition
//! (so editing a step never changes a saved plan version); validating it checks the graph
//! (unknown keys, cycles, run_in mismatches), every template reference against the inventory
//! and the graph (a step's outputs are readable only by its descendants), and estimates the
//! critical path against the target RTO; rendering fills every template for a mode and
//! parameters, with secrets masked and future step outputs shown as `<steps.x.outputs...>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use minijinja::value::{Serde, Value as TValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::credentials::CredentialKind;
use super::duration::{Duration, HumanDuration};
use super::resources::ResourceKind;
use super::steps::{
    declared_outputs, field_use, merged_params, reads_credentials, string_leaves, validate_step,
    RetryPolicy, StepDefinition, StepKind, StepOptions, HOST_FACTS,
};
use super::templates::{is_template, Pending, TemplateEngine};
use super::validation::{check_name, check_text, is_hostname, is_name, Violations};
use crate::error::FieldError;

/// Where a plan step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunIn {
    Drill,
    Failover,
    #[default]
    Both,
}

impl RunIn {
    pub fn includes(self, mode: Mode) -> bool {
        matches!(
            (self, mode),
            (RunIn::Both, _) | (RunIn::Drill, Mode::Drill) | (RunIn::Failover, Mode::Failover)
        )
    }
}

/// What happens to the execution when a step fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Cancel what is left; the execution fails.
    #[default]
    Abort,
    /// Carry on with the steps that do not depend on this one.
    Continue,
    /// Stop scheduling and wait for an operator.
    Pause,
}

/// How a plan is run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Drill,
    Failover,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Drill, Mode::Failover];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Drill => "drill",
            Mode::Failover => "failover",
        }
    }
}

/// The type of an execution parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Ip,
    Hostname,
    Port,
    Duration,
    Enum,
}

/// A declared execution parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "hostname", "required": true, "description": "The public site name"}))]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub param_type: ParamType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The allowed values of an `enum` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One node of a plan: a step, its overrides and its place in the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "reconfigure_nginx", "step": "nginx_upstream_switch",
    "params": {"via": "jump01"}, "depends_on": ["power_on_web"], "on_failure": "abort", "run_in": "both"}))]
pub struct PlanStepSpec {
    /// Unique within the plan; templates read its outputs as `steps.<key>.outputs`.
    pub key: String,
    /// The step used, by name or id.
    pub step: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Merged onto the step's params (JSON merge patch).
    #[serde(default, skip_serializing_if = "is_empty_object")]
    #[schema(value_type = Object)]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub run_in: RunIn,
    /// Sugar: a step in stage N depends on every step of the closest lower stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub stage: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

fn is_empty_object(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(Map::is_empty)
}

/// A plan as written (JSON or YAML): what `POST`/`PUT` take and a version keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "wordpress_failover",
    "description": "Recover WordPress and Nginx in the cloud, promote the MySQL replica, switch the site",
    "target_rto": "15m",
    "parameters": {"site_domain": {"type": "hostname", "required": true}},
    "steps": [
        {"key": "recover", "step": "recover_web_hosts"},
        {"key": "check_replica", "step": "replica_ping", "run_in": "both"},
        {"key": "boot", "step": "boot_web_hosts", "depends_on": ["recover"]},
        {"key": "reconfigure_nginx", "step": "nginx_upstream_switch", "depends_on": ["boot", "check_replica"], "on_failure": "pause"},
        {"key": "site_up", "step": "site_answers", "depends_on": ["reconfigure_nginx"]}
    ]
}))]
pub struct PlanSpec {
    #[schema(example = "wordpress_failover")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The recovery time objective the plan must meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rto: Option<HumanDuration>,
    /// The recovery point objective: readiness fails a bound host whose newest snapshot is
    /// older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rpo: Option<HumanDuration>,
    /// Delete a drill's recovered instances this long after the drill ends (never a
    /// failover's). Without it, clean-up is `POST /executions/{id}/cleanup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_cleanup_after: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParamSpec>,
    pub steps: Vec<PlanStepSpec>,
}

/// A step as a plan version pins it: the definition with the plan's overrides applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResolvedStep {
    pub key: String,
    pub step_id: Uuid,
    pub step_name: String,
    pub step_version: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[schema(value_type = Object)]
    pub definition: StepDefinition,
    /// Explicit dependencies plus those from stages, sorted.
    pub depends_on: Vec<String>,
    pub on_failure: OnFailure,
    pub run_in: RunIn,
}

/// A step definition as the catalog holds it.
#[derive(Debug, Clone)]
pub struct CatalogStep {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    pub definition: StepDefinition,
}

/// What a plan is checked against: the inventory and the credentials that exist.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub resources: BTreeMap<String, InventoryResource>,
    pub credentials: BTreeMap<String, CredentialKind>,
}

#[derive(Debug, Clone)]
pub struct InventoryResource {
    pub id: Uuid,
    pub kind: ResourceKind,
    pub attributes: Value,
    pub labels: BTreeMap<String, String>,
}

/// The highest stage number a plan step may have (stages only order; any gaps will do).
pub const MAX_STAGE: u32 = 1_000_000;

/// Checks the plan document itself: names, keys, parameters.
pub fn check_spec(spec: &PlanSpec) -> Vec<FieldError> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &spec.name);
    check_text(&mut v, "description", &spec.description, 4000);
    if spec.target_rto.is_some_and(|d| d.as_secs() == 0) {
        v.add("target_rto", "must be more than 0s");
    }
    if spec.target_rpo.is_some_and(|d| d.as_secs() == 0) {
        v.add("target_rpo", "must be more than 0s");
    }
    for (name, p) in &spec.parameters {
        let field = format!("parameters.{name}");
        if !is_name(name) {
            v.add(
                &field,
                "parameter names are lowercase letters, digits and `_`, starting with a letter",
            );
        }
        if p.param_type == ParamType::Enum && p.values.is_empty() {
            v.add(
                format!("{field}.values"),
                "an enum parameter lists its values",
            );
        }
        if p.param_type != ParamType::Enum && !p.values.is_empty() {
            v.add(
                format!("{field}.values"),
                "only enum parameters list values",
            );
        }
        if let Some(default) = &p.default {
            if let Err(message) = coerce_param(p, default) {
                v.add(format!("{field}.default"), message);
            }
        }
    }
    if spec.steps.is_empty() {
        v.add("steps", "a plan has at least one step");
    }
    if spec.steps.len() > 2000 {
        v.add("steps", "a plan has at most 2000 steps");
    }
    let mut seen = HashMap::new();
    for (i, s) in spec.steps.iter().enumerate() {
        if !is_name(&s.key) {
            v.add(format!("steps[{i}].key"), "keys are lowercase letters, digits and `_`, starting with a letter (templates read steps.<key>)");
        }
        if let Some(first) = seen.insert(s.key.as_str(), i) {
            v.add(
                format!("steps[{i}].key"),
                format!("`{}` is already the key of steps[{first}]", s.key),
            );
        }
        check_text(
            &mut v,
            &format!("steps[{i}].description"),
            &s.description,
            2000,
        );
        if s.stage.is_some_and(|n| n > MAX_STAGE) {
            v.add(
                format!("steps[{i}].stage"),
                format!("stages are numbered 0 to {MAX_STAGE}"),
            );
        }
    }
    v.into_errors()
}

/// Pins each plan step to its step definition with the plan's overrides applied.
pub fn resolve(
    engine: &TemplateEngine,
    spec: &PlanSpec,
    catalog: &dyn Fn(&str) -> Option<CatalogStep>,
) -> Result<Vec<ResolvedStep>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut resolved = Vec::with_capacity(spec.steps.len());
    for (i, s) in spec.steps.iter().enumerate() {
        let Some(step) = catalog(&s.step) else {
            errors.push(FieldError::new(
                format!("steps[{i}].step"),
                format!("no step named `{}` exists", s.step),
            ));
            continue;
        };
        if !(s.params.is_null() || s.params.is_object()) {
            errors.push(FieldError::new(
                format!("steps[{i}].params"),
                "must be a JSON object of overrides",
            ));
            continue;
        }
        let params = merged_params(&step.definition.params, &s.params);
        let options = StepOptions {
            timeout: s.timeout.or(Some(step.definition.timeout)),
            retry: s.retry.clone().or(Some(step.definition.retry.clone())),
            idempotent: Some(step.definition.idempotent),
        };
        match validate_step(
            engine,
            step.definition.kind,
            &params,
            options,
            &format!("steps[{i}].params"),
        ) {
            Ok(definition) => resolved.push(ResolvedStep {
                key: s.key.clone(),
                step_id: step.id,
                step_name: step.name,
                step_version: step.version,
                description: s.description.clone(),
                definition,
                depends_on: Vec::new(),
                on_failure: s.on_failure,
                run_in: s.run_in,
            }),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let stage_deps = stage_dependencies(spec);
    for (r, s) in resolved.iter_mut().zip(&spec.steps) {
        let mut deps: BTreeSet<String> = s.depends_on.iter().cloned().collect();
        deps.extend(stage_deps.get(&s.key).cloned().unwrap_or_default());
        r.depends_on = deps.into_iter().collect();
    }
    Ok(resolved)
}

/// Stage N depends on every step of the closest lower stage present.
fn stage_dependencies(spec: &PlanSpec) -> HashMap<String, Vec<String>> {
    let mut by_stage: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for s in &spec.steps {
        if let Some(stage) = s.stage {
            by_stage.entry(stage).or_default().push(s.key.clone());
        }
    }
    let mut deps = HashMap::new();
    for s in &spec.steps {
        let Some(stage) = s.stage else { continue };
        if let Some((_, previous)) = by_stage.range(..stage).next_back() {
            deps.insert(s.key.clone(), previous.clone());
        }
    }
    deps
}

/// The graph: unknown or self dependencies, cycles (naming the keys on the cycle), and steps
/// that would wait forever because a dependency does not run in one of their modes.
pub fn check_graph(spec: &PlanSpec, resolved: &[ResolvedStep]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let index: HashMap<&str, usize> = resolved
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    for (i, s) in spec.steps.iter().enumerate() {
        for (j, dep) in s.depends_on.iter().enumerate() {
            let field = format!("steps[{i}].depends_on[{j}]");
            if dep == &s.key {
                errors.push(FieldError::new(field, "a step cannot depend on itself"));
            } else if !index.contains_key(dep.as_str()) {
                errors.push(FieldError::new(
                    field,
                    format!("no step of this plan has the key `{dep}`"),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    if let Some(cycle) = find_cycle(resolved) {
        let first = index[cycle[0].as_str()];
        errors.push(FieldError::new(
            format!("steps[{first}].depends_on"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
        return errors;
    }
    for (i, r) in resolved.iter().enumerate() {
        for dep in &r.depends_on {
            let d = &resolved[index[dep.as_str()]];
            for mode in Mode::ALL {
                if r.run_in.includes(mode) && !d.run_in.includes(mode) {
                    let j = spec.steps[i].depends_on.iter().position(|x| x == dep);
                    let field = match j {
                        Some(j) => format!("steps[{i}].depends_on[{j}]"),
                        None => format!("steps[{i}].stage"),
                    };
                    errors.push(FieldError::new(
                        field,
                        format!(
                            "`{dep}` does not run in a {} but `{}` does and depends on it: it could never start",
                            mode.as_str(),
                            r.key
                        ),
                    ));
                }
            }
        }
    }
    errors
}

fn find_cycle(resolved: &[ResolvedStep]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let index: HashMap<&str, usize> = resolved
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; resolved.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        n: usize,
        resolved: &[ResolvedStep],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        marks[n] = Mark::Active;
        stack.push(n);
        for dep in &resolved[n].depends_on {
            let d = *index.get(dep.as_str())?;
            match marks[d] {
                Mark::Active => {
                    let start = stack.iter().position(|&x| x == d).unwrap_or(0);
                    let mut keys: Vec<String> = stack[start..]
                        .iter()
                        .map(|&x| resolved[x].key.clone())
                        .collect();
                    keys.push(resolved[d].key.clone());
                    keys.reverse();
                    return Some(keys);
                }
                Mark::New => {
                    if let Some(c) = visit(d, resolved, index, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
        None
    }
    (0..resolved.len()).find_map(|n| {
        if marks[n] == Mark::New {
            visit(n, resolved, &index, &mut marks, &mut stack)
        } else {
            None
        }
    })
}

/// Every key from which `key` is reachable by dependencies.
pub fn ancestors(resolved: &[ResolvedStep], key: &str) -> BTreeSet<String> {
    let by_key: HashMap<&str, &ResolvedStep> =
        resolved.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = by_key
        .get(key)
        .map(|r| r.depends_on.iter().map(String::as_str).collect())
        .unwrap_or_default();
    while let Some(k) = todo.pop() {
        if seen.insert(k.to_owned()) {
            if let Some(r) = by_key.get(k) {
                todo.extend(r.depends_on.iter().map(String::as_str));
            }
        }
    }
    seen
}

/// The hosts a host step acts on, resolved against the inventory.
pub fn step_hosts(def: &StepDefinition, inventory: &Inventory) -> Vec<String> {
    hosts_in(&def.params, inventory)
}

/// The hosts named by a host step's `hosts` param (names, groups of names, or a selector).
pub fn hosts_in(params: &Value, inventory: &Inventory) -> Vec<String> {
    match params.get("hosts") {
        // Names, or (power_on) groups of names.
        Some(Value::Array(items)) => items
            .iter()
            .flat_map(|item| match item {
                Value::Array(group) => group.iter().filter_map(Value::as_str).collect(),
                other => other.as_str().into_iter().collect::<Vec<_>>(),
            })
            .map(str::to_owned)
            .collect(),
        Some(Value::Object(sel)) => {
            let selector: super::resources::LabelSelector = sel
                .get("selector")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .parse()
                .unwrap_or_default();
            inventory
                .resources
                .iter()
                .filter(|(_, r)| r.kind == ResourceKind::Host)
                .filter(|(_, r)| {
                    selector
                        .equals
                        .iter()
                        .all(|(k, v)| r.labels.get(k) == Some(v))
                        && selector.exists.iter().all(|k| r.labels.contains_key(k))
                })
                .map(|(name, _)| name.clone())
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Checks every reference of every step against the inventory, the parameters and the graph.
pub fn check_references(
    engine: &TemplateEngine,
    spec: &PlanSpec,
    resolved: &[ResolvedStep],
    inventory: &Inventory,
) -> Vec<FieldError> {
    let mut v = Violations::default();
    let by_key: HashMap<&str, &ResolvedStep> =
        resolved.iter().map(|r| (r.key.as_str(), r)).collect();
    for (i, r) in resolved.iter().enumerate() {
        let prefix = format!("steps[{i}].params");
        let ancestors = ancestors(resolved, &r.key);
        check_named_resources(&mut v, &prefix, r, resolved, &ancestors, inventory);
        for (path, text) in string_leaves(&r.definition.params) {
            if !is_template(&text) {
                continue;
            }
            let field = format!("{prefix}.{path}");
            let Ok(refs) = engine.references(&text) else {
                continue;
            };
            for reference in refs {
                if let Err(message) = check_reference(
                    &reference,
                    r.definition.kind,
                    &path,
                    spec,
                    &by_key,
                    &ancestors,
                    inventory,
                ) {
                    v.add(&field, message);
                }
            }
        }
    }
    v.into_errors()
}

const EXECUTION_FIELDS: [&str; 4] = ["mode", "id", "plan", "version"];
const RESOURCE_FIELDS: [&str; 4] = ["id", "name", "kind", "labels"];

fn check_reference(
    reference: &str,
    kind: StepKind,
    path: &str,
    spec: &PlanSpec,
    by_key: &HashMap<&str, &ResolvedStep>,
    ancestors: &BTreeSet<String>,
    inventory: &Inventory,
) -> Result<(), String> {
    let parts: Vec<&str> = reference.split('.').collect();
    let at = |i: usize| parts.get(i).copied();
    match parts[0] {
        "params" => match at(1) {
            None => Err("read a parameter as `params.<name>`".into()),
            Some(p) if spec.parameters.contains_key(p) => Ok(()),
            Some(p) => Err(format!(
                "`params.{p}` is not a declared parameter of this plan"
            )),
        },
        "execution" => match at(1) {
            Some(f) if EXECUTION_FIELDS.contains(&f) => Ok(()),
            _ => Err(format!(
                "`{reference}`: execution has {}",
                EXECUTION_FIELDS.join(", ")
            )),
        },
        "resources" => {
            let Some(name) = at(1) else {
                return Err("read a resource as `resources.<name>.<attribute>`".into());
            };
            let Some(resource) = inventory.resources.get(name) else {
                return Err(format!("no resource named `{name}` exists"));
            };
            match at(2) {
                Some(attr)
                    if !RESOURCE_FIELDS.contains(&attr)
                        && resource.attributes.get(attr).is_none() =>
                {
                    Err(format!("resource `{name}` has no attribute `{attr}`"))
                }
                _ => Ok(()),
            }
        }
        "credentials" => {
            if !reads_credentials(kind, path) {
                return Err(format!(
                    "`{reference}`: credentials may only be read in `env` values"
                ));
            }
            let Some(name) = at(1) else {
                return Err("read a credential as `credentials.<name>.<field>`".into());
            };
            let Some(ckind) = inventory.credentials.get(name) else {
                return Err(format!("no credential named `{name}` exists"));
            };
            match at(2) {
                Some(f) if credential_fields(*ckind).contains(&f) => Ok(()),
                _ => Err(format!(
                    "credential `{name}` ({ckind}) has the fields {}",
                    credential_fields(*ckind).join(", ")
                )),
            }
        }
        "steps" => {
            let Some(key) = at(1) else {
                return Err("read a step's outputs as `steps.<key>.outputs.<name>`".into());
            };
            let Some(step) = by_key.get(key) else {
                return Err(format!("no step of this plan has the key `{key}`"));
            };
            if !ancestors.contains(key) {
                return Err(format!(
                    "`steps.{key}` is not an ancestor of this step: add it (or a step after it) to depends_on"
                ));
            }
            if at(2) != Some("outputs") {
                return Err(format!("read `steps.{key}.outputs.<name>`"));
            }
            let declared = declared_outputs(&step.definition);
            let Some(output) = at(3) else { return Ok(()) };
            if !declared.contains(output) {
                let list: Vec<&str> = declared.iter().map(String::as_str).collect();
                return Err(format!(
                    "step `{key}` has no output `{output}` (it has: {})",
                    if list.is_empty() {
                        "none".to_owned()
                    } else {
                        list.join(", ")
                    }
                ));
            }
            if output == "hosts" {
                check_host_output(step, &parts, key, inventory)?;
            }
            Ok(())
        }
        other => Err(format!("unknown name `{other}`")),
    }
}

fn check_host_output(
    step: &ResolvedStep,
    parts: &[&str],
    key: &str,
    inventory: &Inventory,
) -> Result<(), String> {
    let hosts = step_hosts(&step.definition, inventory);
    if let Some(host) = parts.get(4) {
        if !hosts.iter().any(|h| h == host) {
            return Err(format!(
                "step `{key}` does not act on host `{host}` (it acts on: {})",
                hosts.join(", ")
            ));
        }
    }
    if let Some(fact) = parts.get(5) {
        if !HOST_FACTS.contains(fact) {
            return Err(format!("hosts have the facts {}", HOST_FACTS.join(", ")));
        }
    }
    Ok(())
}

pub fn credential_fields(kind: CredentialKind) -> &'static [&'static str] {
    match kind {
        CredentialKind::SshPassword | CredentialKind::Password => &["username", "password"],
        CredentialKind::SshPrivateKey => &["username", "private_key", "passphrase"],
        CredentialKind::Token => &["token"],
        CredentialKind::AccessKeyPair => &["access_key_id", "secret_access_key"],
    }
}

/// Literal names in params: hosts, jump servers, logins, credentials, databases.
fn check_named_resources(
    v: &mut Violations,
    prefix: &str,
    r: &ResolvedStep,
    all: &[ResolvedStep],
    ancestors: &BTreeSet<String>,
    inventory: &Inventory,
) {
    let p = &r.definition.params;
    let str_at = |key: &str| p.get(key).and_then(Value::as_str);
    match r.definition.kind {
        StepKind::HostRecovery => {
            let hosts = step_hosts(&r.definition, inventory);
            if p.get("hosts").is_some_and(Value::is_object) && hosts.is_empty() {
                v.add(
                    format!("{prefix}.hosts.selector"),
                    "matches no host resource",
                );
            }
            if let Some(Value::Array(_)) = p.get("hosts") {
                for (j, name) in hosts.iter().enumerate() {
                    let field = format!("{prefix}.hosts[{j}]");
                    match inventory.resources.get(name) {
                        None => v.add(field, format!("no resource named `{name}` exists")),
                        Some(res) if res.kind != ResourceKind::Host => {
                            v.add(field, format!("`{name}` is a {}, not a host", res.kind))
                        }
                        Some(res) if res.attributes.get("provider_host_id").is_none() => v.add(
                            field,
                            format!(
                                "host `{name}` has no provider_host_id: it cannot be recovered"
                            ),
                        ),
                        Some(res) if res.attributes.get("provider").is_none() => v.add(
                            field,
                            format!("host `{name}` names no provider: it cannot be recovered"),
                        ),
                        _ => {}
                    }
                }
            }
        }
        StepKind::PowerOn => {
            let recovered: BTreeSet<String> = all
                .iter()
                .filter(|a| {
                    ancestors.contains(&a.key) && a.definition.kind == StepKind::HostRecovery
                })
                .flat_map(|a| step_hosts(&a.definition, inventory))
                .collect();
            for (j, name) in step_hosts(&r.definition, inventory).iter().enumerate() {
                let field = format!("{prefix}.hosts[{j}]");
                match inventory.resources.get(name) {
                    None => v.add(field, format!("no resource named `{name}` exists")),
                    Some(res) if res.kind != ResourceKind::Host => v.add(field, format!("`{name}` is a {}, not a host", res.kind)),
                    Some(_) if !recovered.contains(name) => v.add(
                        field,
                        format!("`{name}` is not recovered by a host_recovery step this step depends on"),
                    ),
                    _ => {}
                }
            }
        }
        StepKind::RemoteScript => check_remote_target(v, prefix, p, inventory),
        StepKind::Check => {
            if let Some(db) = str_at("database") {
                match inventory.resources.get(db) {
                    None => v.add(
                        format!("{prefix}.database"),
                        format!("no resource named `{db}` exists"),
                    ),
                    Some(res) if res.kind != ResourceKind::Database => v.add(
                        format!("{prefix}.database"),
                        format!("`{db}` is a {}, not a database", res.kind),
                    ),
                    _ => {}
                }
            }
            if let Some(host) = str_at("host").filter(|h| !is_template(h)) {
                check_address_or_resource(v, &format!("{prefix}.host"), host, inventory);
            }
            check_via(v, prefix, p, inventory);
        }
        StepKind::HttpRequest => {
            if let Some(Value::Object(auth)) = p.get("auth") {
                for (scheme, name) in auth {
                    let name = name.as_str().unwrap_or_default();
                    let field = format!("{prefix}.auth.{scheme}");
                    let wanted: &[CredentialKind] = if scheme == "bearer" {
                        &[CredentialKind::Token]
                    } else {
                        &[CredentialKind::Password, CredentialKind::SshPassword]
                    };
                    check_credential(v, &field, name, wanted, inventory);
                }
            }
        }
        StepKind::LocalScript | StepKind::ManualApproval | StepKind::Wait => {}
    }
    if let Some(Value::Object(creds)) = p.get("credentials") {
        for (var, reference) in creds {
            let reference = reference.as_str().unwrap_or_default();
            let (name, field) = reference.split_once('.').unwrap_or((reference, ""));
            let path = format!("{prefix}.credentials.{var}");
            match inventory.credentials.get(name) {
                None => v.add(path, format!("no credential named `{name}` exists")),
                Some(kind) if !field.is_empty() && !credential_fields(*kind).contains(&field) => v
                    .add(
                        path,
                        format!(
                            "credential `{name}` ({kind}) has the fields {}",
                            credential_fields(*kind).join(", ")
                        ),
                    ),
                _ => {}
            }
        }
    }
}

/// A step's `via` must name a jump_server whose credential can log in.
fn check_via(v: &mut Violations, prefix: &str, p: &Value, inventory: &Inventory) {
    if let Some(via) = p.get("via").and_then(Value::as_str) {
        let field = format!("{prefix}.via");
        match inventory.resources.get(via) {
            None => v.add(field, format!("no resource named `{via}` exists")),
            Some(res) if res.kind != ResourceKind::JumpServer => v.add(
                field,
                format!("`{via}` is a {}, not a jump_server", res.kind),
            ),
            Some(res) => {
                let credential = res
                    .attributes
                    .get("credential")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                check_credential(
                    v,
                    &field,
                    credential,
                    &[CredentialKind::SshPassword, CredentialKind::SshPrivateKey],
                    inventory,
                );
            }
        }
    }
}

fn check_remote_target(v: &mut Violations, prefix: &str, p: &Value, inventory: &Inventory) {
    let target = p.get("target").and_then(Value::as_str).unwrap_or_default();
    check_via(v, prefix, p, inventory);
    let login = p.get("login");
    if let Some(cred) = login
        .and_then(|l| l.get("credential"))
        .and_then(Value::as_str)
    {
        check_credential(
            v,
            &format!("{prefix}.login.credential"),
            cred,
            &[CredentialKind::SshPassword, CredentialKind::SshPrivateKey],
            inventory,
        );
    }
    let field = format!("{prefix}.target");
    if p.get("address").is_some() && !inventory.resources.contains_key(target) {
        v.add(
            format!("{prefix}.address"),
            "applies only when `target` names a host or jump server resource",
        );
    }
    if let Some(res) = inventory.resources.get(target) {
        let has_ssh = res.attributes.get("ssh").is_some() || res.kind == ResourceKind::JumpServer;
        if !matches!(res.kind, ResourceKind::Host | ResourceKind::JumpServer) {
            v.add(
                field,
                format!(
                    "`{target}` is a {}; scripts run on hosts and jump servers",
                    res.kind
                ),
            );
        } else if !has_ssh && login.is_none() {
            v.add(
                field,
                format!("host `{target}` has no ssh block; give the step a `login`"),
            );
        }
        return;
    }
    if !is_template(target)
        && target.parse::<std::net::IpAddr>().is_err()
        && !(is_hostname(target) && target.contains('.'))
    {
        v.add(
            field,
            format!("`{target}` is neither a resource name nor an address"),
        );
    } else if login.is_none() {
        v.add(
            format!("{prefix}.login"),
            "a target given by address needs a `login` (user and credential)",
        );
    }
}

fn check_address_or_resource(v: &mut Violations, field: &str, value: &str, inventory: &Inventory) {
    if inventory.resources.contains_key(value)
        || value.parse::<std::net::IpAddr>().is_ok()
        || is_hostname(value)
    {
        return;
    }
    v.add(
        field,
        format!("`{value}` is neither a resource name nor an address"),
    );
}

fn check_credential(
    v: &mut Violations,
    field: &str,
    name: &str,
    wanted: &[CredentialKind],
    inventory: &Inventory,
) {
    match inventory.credentials.get(name) {
        None => v.add(field, format!("credential `{name}` does not exist")),
        Some(kind) if !wanted.contains(kind) => {
            let names: Vec<&str> = wanted.iter().map(|k| k.as_str()).collect();
            v.add(
                field,
                format!(
                    "credential `{name}` is a {kind}; this needs {}",
                    names.join(" or ")
                ),
            )
        }
        _ => {}
    }
}

/// The steps that run in `mode`, in the order the engine would start them (dependencies
/// first, ties broken by their order in the plan).
pub fn execution_order(resolved: &[ResolvedStep], mode: Mode) -> Vec<usize> {
    let index: HashMap<&str, usize> = resolved
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    let included: Vec<bool> = resolved.iter().map(|r| r.run_in.includes(mode)).collect();
    let mut pending: Vec<usize> = resolved
        .iter()
        .map(|r| {
            r.depends_on
                .iter()
                .filter(|d| index.get(d.as_str()).is_some_and(|&j| included[j]))
                .count()
        })
        .collect();
    let mut order = Vec::new();
    let mut done = vec![false; resolved.len()];
    loop {
        let next = (0..resolved.len()).find(|&i| included[i] && !done[i] && pending[i] == 0);
        let Some(i) = next else { break };
        done[i] = true;
        order.push(i);
        for (j, r) in resolved.iter().enumerate() {
            if r.depends_on.iter().any(|d| d == &resolved[i].key) {
                pending[j] = pending[j].saturating_sub(1);
            }
        }
    }
    order
}

/// Worst-case seconds a step takes: every attempt to its timeout, plus the retry delays.
pub fn step_estimate(r: &ResolvedStep) -> u64 {
    let d = &r.definition;
    d.timeout.as_secs() * u64::from(d.retry.max_attempts) + d.retry.total_delay()
}

/// Seconds a step took, by key: the median of its past successful runs.
pub type Observed = HashMap<String, u64>;

/// The longest chain of dependencies in `mode` by estimated duration, and that duration. A step
/// with past runs counts its median duration; one without, its worst case.
pub fn critical_path(
    resolved: &[ResolvedStep],
    mode: Mode,
    observed: &Observed,
) -> (Vec<String>, u64) {
    let order = execution_order(resolved, mode);
    let index: HashMap<&str, usize> = resolved
        .iter()
        .enumerate()
        .map(|(i, r)| (r.key.as_str(), i))
        .collect();
    let mut finish: HashMap<usize, (u64, Option<usize>)> = HashMap::new();
    for &i in &order {
        let best = resolved[i]
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()))
            .filter_map(|&j| finish.get(&j).map(|(t, _)| (*t, j)))
            .max_by_key(|(t, _)| *t);
        let start = best.map_or(0, |(t, _)| t);
        finish.insert(
            i,
            (
                start
                    + observed
                        .get(&resolved[i].key)
                        .copied()
                        .unwrap_or_else(|| step_estimate(&resolved[i])),
                best.map(|(_, j)| j),
            ),
        );
    }
    let Some((&end, &(total, _))) = finish
        .iter()
        .max_by_key(|(i, (t, _))| (*t, std::cmp::Reverse(**i)))
    else {
        return (Vec::new(), 0);
    };
    let mut path = vec![resolved[end].key.clone()];
    let mut cursor = finish[&end].1;
    while let Some(j) = cursor {
        path.push(resolved[j].key.clone());
        cursor = finish[&j].1;
    }
    path.reverse();
    (path, total)
}

/// Checks execution parameter values against their declared types, filling defaults.
pub fn check_params(
    declared: &BTreeMap<String, ParamSpec>,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<FieldError>> {
    let mut v = Violations::default();
    let mut out = Map::new();
    for name in given.keys().filter(|k| !declared.contains_key(*k)) {
        v.add(
            format!("params.{name}"),
            "is not a declared parameter of this plan",
        );
    }
    for (name, spec) in declared {
        let field = format!("params.{name}");
        match given.get(name).or(spec.default.as_ref()) {
            Some(value) => match coerce_param(spec, value) {
                Ok(value) => {
                    out.insert(name.clone(), value);
                }
                Err(message) => v.add(field, message),
            },
            None if spec.required => v.add(field, "is required"),
            None => {}
        }
    }
    v.into_result(out).map_err(|e| match e {
        crate::error::Error::Validation(errors) => errors,
        other => vec![FieldError::new("params", other.to_string())],
    })
}

/// A parameter value as its type demands; free text only for `string`.
pub fn coerce_param(spec: &ParamSpec, value: &Value) -> Result<Value, String> {
    let text = value.as_str();
    match spec.param_type {
        ParamType::String => match text {
            Some(s) if s.contains('\0') => Err("must not contain NUL characters".into()),
            Some(s) if s.len() > 4096 => Err("must be at most 4096 characters".into()),
            Some(s) => Ok(json!(s)),
            None => Err("must be a string".into()),
        },
        ParamType::Integer => value
            .as_i64()
            .map(|n| json!(n))
            .ok_or_else(|| "must be an integer".into()),
        ParamType::Number => value
            .as_f64()
            .map(|n| json!(n))
            .ok_or_else(|| "must be a number".into()),
        ParamType::Boolean => value
            .as_bool()
            .map(|b| json!(b))
            .ok_or_else(|| "must be true or false".into()),
        ParamType::Ip => text
            .and_then(|s| s.parse::<std::net::IpAddr>().ok())
            .map(|ip| json!(ip.to_string()))
            .ok_or_else(|| "must be an IPv4 or IPv6 address".into()),
        ParamType::Hostname => text
            .filter(|s| is_hostname(s))
            .map(|s| json!(s.to_ascii_lowercase()))
            .ok_or_else(|| "must be a host name".into()),
        ParamType::Port => value
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .map(|p| json!(p))
            .ok_or_else(|| "must be a port between 1 and 65535".into()),
        ParamType::Duration => serde_json::from_value::<Duration>(value.clone())
            .map(|d| json!(d.to_string()))
            .map_err(|e| e.to_string()),
        ParamType::Enum => text
            .filter(|s| spec.values.iter().any(|v| v == s))
            .map(|s| json!(s))
            .ok_or_else(|| format!("must be one of: {}", spec.values.join(", "))),
    }
}

/// What validating a plan reports; errors make it invalid, warnings do not.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ValidationReport {
    pub valid: bool,
    pub errors: Vec<FieldError>,
    pub warnings: Vec<String>,
    /// Per mode: the order steps start in, the critical path and its estimated duration.
    pub modes: Vec<ModeEstimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rto: Option<HumanDuration>,
}

/// How a plan runs in one mode: start order, critical path, estimated duration.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModeEstimate {
    pub mode: Mode,
    /// Step keys in the order they would start.
    pub order: Vec<String>,
    /// The longest chain of dependencies by estimated duration.
    pub critical_path: Vec<String>,
    /// Estimated duration of the critical path: the median of past runs for steps that have
    /// run before, the worst case (timeouts and retries) for the others.
    pub estimated_duration: HumanDuration,
    /// How many steps of the critical path are estimated from past runs.
    pub measured_steps: usize,
}

/// Everything wrong with a plan against the current catalog and inventory, plus estimates;
/// the resolved steps when it is valid.
pub fn validate(
    engine: &TemplateEngine,
    spec: &PlanSpec,
    catalog: &dyn Fn(&str) -> Option<CatalogStep>,
    inventory: &Inventory,
    observed: &Observed,
) -> (Option<Vec<ResolvedStep>>, ValidationReport) {
    let spec_errors = check_spec(spec);
    match resolve(engine, spec, catalog) {
        Ok(resolved) => {
            let mut report = validate_resolved(engine, spec, &resolved, inventory, observed);
            let mut errors = spec_errors;
            errors.append(&mut report.errors);
            report.valid = errors.is_empty();
            report.errors = errors;
            let valid = report.valid;
            (valid.then_some(resolved), report)
        }
        Err(mut errors) => {
            let mut all = spec_errors;
            all.append(&mut errors);
            (
                None,
                ValidationReport {
                    valid: false,
                    errors: all,
                    warnings: Vec::new(),
                    modes: Vec::new(),
                    target_rto: spec.target_rto,
                },
            )
        }
    }
}

/// Checks already resolved (pinned) steps: the graph, every reference against `inventory`,
/// and each mode's order, critical path and estimate against the target RTO.
pub fn validate_resolved(
    engine: &TemplateEngine,
    spec: &PlanSpec,
    resolved: &[ResolvedStep],
    inventory: &Inventory,
    observed: &Observed,
) -> ValidationReport {
    let mut report = ValidationReport {
        valid: false,
        errors: check_graph(spec, resolved),
        warnings: Vec::new(),
        modes: Vec::new(),
        target_rto: spec.target_rto,
    };
    if report.errors.is_empty() {
        report.errors = check_references(engine, spec, resolved, inventory);
        for mode in Mode::ALL {
            let order = execution_order(resolved, mode);
            let (path, secs) = critical_path(resolved, mode, observed);
            let measured_steps = path.iter().filter(|k| observed.contains_key(*k)).count();
            if let Some(rto) = spec.target_rto {
                if secs > rto.as_secs() {
                    report.warnings.push(format!(
                        "in a {}, the critical path ({}) may take up to {}, more than the target RTO of {rto}",
                        mode.as_str(),
                        path.join(" -> "),
                        Duration::from_secs(secs)
                    ));
                }
            }
            report.modes.push(ModeEstimate {
                mode,
                order: order.iter().map(|&i| resolved[i].key.clone()).collect(),
                critical_path: path,
                estimated_duration: Duration::from_secs(secs),
                measured_steps,
            });
        }
    }
    report.valid = report.errors.is_empty();
    report
}

/// One step as it would run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RenderedStep {
    pub key: String,
    pub step: String,
    #[schema(value_type = String)]
    pub kind: StepKind,
    /// False when the step does not run in this mode.
    pub runs: bool,
    pub depends_on: Vec<String>,
    /// Every template filled; secrets masked; outputs of earlier steps shown as `<steps...>`.
    #[schema(value_type = Object)]
    pub params: Value,
    pub timeout: HumanDuration,
    pub idempotent: bool,
}

pub const MASK: &str = "******";

/// The template context of a render: inventory, parameters, execution facts, pending outputs,
/// and (for env values only) masked credentials.
pub fn render_context(
    plan: &str,
    version: i32,
    mode: Mode,
    params: &Map<String, Value>,
    inventory: &Inventory,
) -> Map<String, Value> {
    let resources: Map<String, Value> = inventory
        .resources
        .iter()
        .map(|(name, r)| {
            let mut fields = r.attributes.as_object().cloned().unwrap_or_default();
            fields.insert("id".into(), json!(r.id));
            fields.insert("name".into(), json!(name));
            fields.insert("kind".into(), json!(r.kind));
            fields.insert("labels".into(), json!(r.labels));
            (name.clone(), Value::Object(fields))
        })
        .collect();
    let mut ctx = Map::new();
    ctx.insert("resources".into(), Value::Object(resources));
    ctx.insert("params".into(), Value::Object(params.clone()));
    ctx.insert(
        "execution".into(),
        json!({"mode": mode, "id": "dry-run", "plan": plan, "version": version}),
    );
    ctx
}

/// Renders every step for `mode` with checked `params`, in execution order (steps that do not
/// run in the mode follow, marked `runs: false`).
pub fn render(
    engine: &TemplateEngine,
    plan: &str,
    version: i32,
    resolved: &[ResolvedStep],
    inventory: &Inventory,
    mode: Mode,
    params: &Map<String, Value>,
) -> Result<Vec<RenderedStep>, Vec<FieldError>> {
    let base = render_context(plan, version, mode, params, inventory);
    let mut steps_ctx = BTreeMap::new();
    for r in resolved {
        let outputs = TValue::from_object(Pending(format!("steps.{}.outputs", r.key)));
        steps_ctx.insert(
            r.key.clone(),
            BTreeMap::from([("outputs".to_owned(), outputs)]),
        );
    }
    let credentials: BTreeMap<String, BTreeMap<&str, &str>> = inventory
        .credentials
        .iter()
        .map(|(name, kind)| {
            (
                name.clone(),
                credential_fields(*kind)
                    .iter()
                    .map(|f| (*f, MASK))
                    .collect(),
            )
        })
        .collect();
    let plain_ctx = context_value(&base, &steps_ctx, None);
    let env_ctx = context_value(&base, &steps_ctx, Some(&credentials));

    let mut order = execution_order(resolved, mode);
    order.extend((0..resolved.len()).filter(|i| !resolved[*i].run_in.includes(mode)));
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for i in order {
        let r = &resolved[i];
        let mut params = match render_params(engine, r, &plain_ctx, &env_ctx) {
            Ok(params) => params,
            Err(step_errors) => {
                errors.extend(
                    step_errors
                        .into_iter()
                        .map(|(path, e)| FieldError::new(format!("steps[{i}].params.{path}"), e)),
                );
                continue;
            }
        };
        mask_injected_credentials(&mut params);
        out.push(RenderedStep {
            key: r.key.clone(),
            step: r.step_name.clone(),
            kind: r.definition.kind,
            runs: r.run_in.includes(mode),
            depends_on: r.depends_on.clone(),
            params,
            timeout: r.definition.timeout,
            idempotent: r.definition.idempotent,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Fills every template of one step's params: `env_ctx` (which may hold credentials) for the
/// fields that become environment variables, `plain_ctx` for the others. Errors are
/// `(param path, message)`.
fn render_params(
    engine: &TemplateEngine,
    r: &ResolvedStep,
    plain_ctx: &TValue,
    env_ctx: &TValue,
) -> Result<Value, Vec<(String, String)>> {
    let mut params = r.definition.params.clone();
    let mut errors = Vec::new();
    for (path, text) in string_leaves(&r.definition.params) {
        if !is_template(&text) {
            continue;
        }
        let ctx = if reads_credentials(r.definition.kind, &path) {
            env_ctx
        } else {
            plain_ctx
        };
        match engine.render(&text, field_use(r.definition.kind, &path), ctx) {
            Ok(rendered) => set_path(&mut params, &path, Value::String(rendered)),
            Err(e) => errors.push((path, e)),
        }
    }
    if errors.is_empty() {
        Ok(params)
    } else {
        Err(errors)
    }
}

/// What a running step's templates read: the execution's facts, its ancestors' real outputs and
/// the plaintext of the credentials its `env` may read.
pub struct RuntimeContext<'a> {
    pub plan: &'a str,
    pub version: i32,
    pub mode: Mode,
    pub execution_id: Uuid,
    pub params: &'a Map<String, Value>,
    pub inventory: &'a Inventory,
    /// Step key -> its outputs, for the steps that have finished.
    pub outputs: &'a BTreeMap<String, Value>,
    /// Credential name -> field -> plaintext.
    pub credentials: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// Renders one step's params for a real run; an error names the param and why.
pub fn render_for_run(
    engine: &TemplateEngine,
    r: &ResolvedStep,
    ctx: &RuntimeContext<'_>,
) -> Result<Value, String> {
    let mut base = render_context(ctx.plan, ctx.version, ctx.mode, ctx.params, ctx.inventory);
    base.insert(
        "execution".into(),
        json!({"mode": ctx.mode, "id": ctx.execution_id, "plan": ctx.plan, "version": ctx.version}),
    );
    let steps: BTreeMap<String, BTreeMap<String, TValue>> = ctx
        .outputs
        .iter()
        .map(|(key, outputs)| {
            (
                key.clone(),
                BTreeMap::from([("outputs".to_owned(), TValue::from(Serde(outputs)))]),
            )
        })
        .collect();
    let plain_ctx = context_value(&base, &steps, None);
    let credentials: BTreeMap<String, BTreeMap<&str, &str>> = ctx
        .credentials
        .iter()
        .map(|(name, fields)| {
            (
                name.clone(),
                fields
                    .iter()
                    .map(|(f, v)| (f.as_str(), v.as_str()))
                    .collect(),
            )
        })
        .collect();
    let env_ctx = context_value(&base, &steps, Some(&credentials));
    render_params(engine, r, &plain_ctx, &env_ctx).map_err(|errors| {
        errors
            .into_iter()
            .map(|(path, e)| format!("params.{path}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `credentials: {VAR: name}` shows which credential is injected; the value itself is masked.
fn mask_injected_credentials(params: &mut Value) {
    if let Some(Value::Object(creds)) = params.get_mut("credentials") {
        for value in creds.values_mut() {
            *value = json!(format!("{} ({MASK})", value.as_str().unwrap_or_default()));
        }
    }
}

fn context_value(
    base: &Map<String, Value>,
    steps: &BTreeMap<String, BTreeMap<String, TValue>>,
    credentials: Option<&BTreeMap<String, BTreeMap<&str, &str>>>,
) -> TValue {
    let mut map: BTreeMap<String, TValue> = base
        .iter()
        .map(|(k, v)| (k.clone(), TValue::from(Serde(v))))
        .collect();
    map.insert("steps".into(), TValue::from(Serde(steps)));
    if let Some(credentials) = credentials {
        map.insert("credentials".into(), TValue::from(Serde(credentials)));
    }
    TValue::from(Serde(map))
}

fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut cursor = root;
    for part in path.split('.') {
        cursor = match cursor {
            Value::Object(map) => map.entry(part.to_owned()).or_insert(Value::Null),
            Value::Array(items) => {
                match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return,
                }
            }
            _ => return,
        };
    }
    *cursor = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog(name: &str) -> Option<CatalogStep> {
        let engine = TemplateEngine::new();
        let (kind, params) = match name {
            "wait" => (StepKind::Wait, json!({"duration": "1m"})),
            "recover" => (StepKind::HostRecovery, json!({"hosts": ["web"]})),
            "echo" => (
                StepKind::RemoteScript,
                json!({"target": "web", "script": "echo {{ params.msg }}", "outputs": ["said"]}),
            ),
            _ => return None,
        };
        let definition =
            validate_step(&engine, kind, &params, StepOptions::default(), "params").unwrap();
        Some(CatalogStep {
            id: Uuid::nil(),
            name: name.into(),
            version: 1,
            definition,
        })
    }

    fn plan(steps: Value) -> PlanSpec {
        serde_json::from_value(json!({"name": "p", "target_rto": "2m", "parameters": {"msg": {"type": "string", "default": "hi"}}, "steps": steps})).unwrap()
    }

    fn inventory() -> Inventory {
        let mut inv = Inventory::default();
        inv.resources.insert(
            "web".into(),
            InventoryResource {
                id: Uuid::nil(),
                kind: ResourceKind::Host,
                attributes: json!({"private_ip": "10.0.0.1", "provider_host_id": "h1", "ssh": {"user": "root", "credential": "k", "port": 22}}),
                labels: BTreeMap::new(),
            },
        );
        inv.credentials
            .insert("k".into(), CredentialKind::SshPassword);
        inv
    }

    fn errors(spec: &PlanSpec) -> Vec<(String, String)> {
        validate(
            &TemplateEngine::new(),
            spec,
            &catalog,
            &inventory(),
            &Observed::new(),
        )
        .1
        .errors
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
    }

    #[test]
    fn an_address_override_needs_a_target_resource_and_via_a_jump_server() {
        let spec = plan(json!([
            {"key": "a", "step": "echo", "params": {"address": "10.9.9.9"}},
            {"key": "b", "step": "echo", "params": {"target": "10.0.0.7", "address": "10.9.9.9",
                                                    "login": {"user": "root", "credential": "k"}}},
            {"key": "c", "step": "echo", "params": {"via": "web"}},
        ]));
        let e = errors(&spec);
        assert!(
            !e.iter().any(|(f, _)| f == "steps[0].params.address"),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|(f, m)| f == "steps[1].params.address" && m.contains("names a host")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|(f, m)| f == "steps[2].params.via" && m.contains("not a jump_server")),
            "{e:?}"
        );
    }

    #[test]
    fn a_cycle_is_reported_with_its_keys() {
        let spec = plan(json!([
            {"key": "a", "step": "wait", "depends_on": ["c"]},
            {"key": "b", "step": "wait", "depends_on": ["a"]},
            {"key": "c", "step": "wait", "depends_on": ["b"]},
        ]));
        let e = errors(&spec);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].1.contains("a -> b -> c -> a")
                || e[0].1.contains("c -> a -> b -> c")
                || e[0].1.contains("b -> c -> a -> b"),
            "{e:?}"
        );
    }

    #[test]
    fn stages_become_dependencies_on_the_previous_stage() {
        let spec = plan(json!([
            {"key": "a", "step": "wait", "stage": 1},
            {"key": "b", "step": "wait", "stage": 1},
            {"key": "c", "step": "wait", "stage": 3},
            {"key": "d", "step": "wait"},
        ]));
        let resolved = resolve(&TemplateEngine::new(), &spec, &catalog).unwrap();
        assert_eq!(resolved[2].depends_on, vec!["a", "b"]);
        assert!(resolved[0].depends_on.is_empty() && resolved[3].depends_on.is_empty());
    }

    #[test]
    fn a_stage_beyond_the_documented_maximum_is_refused() {
        let spec = plan(json!([
            {"key": "a", "step": "wait", "stage": MAX_STAGE},
            {"key": "b", "step": "wait", "stage": MAX_STAGE + 1},
        ]));
        let e = check_spec(&spec);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "steps[1].stage");
    }

    #[test]
    fn a_failover_step_cannot_wait_on_a_drill_only_step() {
        let spec = plan(json!([
            {"key": "a", "step": "wait", "run_in": "drill"},
            {"key": "b", "step": "wait", "depends_on": ["a"], "run_in": "failover"},
        ]));
        let e = errors(&spec);
        assert_eq!(e[0].0, "steps[1].depends_on[0]");
        assert!(e[0].1.contains("failover"), "{e:?}");
    }

    #[test]
    fn reading_a_non_ancestor_output_is_rejected() {
        let spec = plan(json!([
            {"key": "first", "step": "echo"},
            {"key": "second", "step": "echo", "params": {"script": "echo {{ steps.first.outputs.said }}"}},
        ]));
        let e = errors(&spec);
        assert_eq!(e[0].0, "steps[1].params.script");
        assert!(e[0].1.contains("not an ancestor"), "{e:?}");
        let mut fixed = spec.clone();
        fixed.steps[1].depends_on = vec!["first".into()];
        assert!(errors(&fixed).is_empty(), "{:?}", errors(&fixed));
    }

    #[test]
    fn critical_path_and_rto_warning() {
        let spec = plan(json!([
            {"key": "a", "step": "wait"},
            {"key": "b", "step": "wait", "depends_on": ["a"]},
            {"key": "c", "step": "wait"},
        ]));
        let (_, report) = validate(
            &TemplateEngine::new(),
            &spec,
            &catalog,
            &inventory(),
            &Observed::new(),
        );
        assert!(report.valid);
        let drill = &report.modes[0];
        assert_eq!(drill.critical_path, vec!["a", "b"]);
        assert_eq!(drill.estimated_duration.as_secs(), 140);
        assert_eq!(drill.order, vec!["a", "b", "c"]);
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    }

    #[test]
    fn params_are_checked_against_their_types() {
        let mut declared = BTreeMap::new();
        declared.insert(
            "ip".to_owned(),
            ParamSpec {
                param_type: ParamType::Ip,
                required: true,
                default: None,
                description: String::new(),
                values: vec![],
            },
        );
        declared.insert(
            "n".to_owned(),
            ParamSpec {
                param_type: ParamType::Port,
                required: false,
                default: Some(json!(22)),
                description: String::new(),
                values: vec![],
            },
        );
        let given = json!({"ip": "10.0.0.1; rm -rf /"})
            .as_object()
            .unwrap()
            .clone();
        let e = check_params(&declared, &given).unwrap_err();
        assert_eq!(e[0].field, "params.ip");
        let ok = check_params(&declared, json!({"ip": "10.0.0.9"}).as_object().unwrap()).unwrap();
        assert_eq!(ok["n"], 22);
        assert!(check_params(
            &declared,
            json!({"ip": "10.0.0.9", "zzz": 1}).as_object().unwrap()
        )
        .is_err());
    }
}
