//! Steps: reusable action definitions. Each kind has typed parameters, validated with per-field
//! errors; string parameters may be templates (see `templates`), except the few that name
//! things and must be literal. Defaults (timeout, retry, idempotency) are filled in per kind.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::duration::{Duration, HumanDuration};
use super::resources::DnsRecordType;
use super::templates::{is_template, FieldUse, TemplateEngine};
use super::validation::{check_http_url, Violations};
use crate::auth::Role;
use crate::error::FieldError;

/// What a step does; it decides the shape of `params`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    HostRecovery,
    PowerOn,
    RemoteScript,
    LocalScript,
    HttpRequest,
    Check,
    ManualApproval,
    Wait,
}

impl StepKind {
    pub const ALL: [StepKind; 8] = [
        Self::HostRecovery,
        Self::PowerOn,
        Self::RemoteScript,
        Self::LocalScript,
        Self::HttpRequest,
        Self::Check,
        Self::ManualApproval,
        Self::Wait,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostRecovery => "host_recovery",
            Self::PowerOn => "power_on",
            Self::RemoteScript => "remote_script",
            Self::LocalScript => "local_script",
            Self::HttpRequest => "http_request",
            Self::Check => "check",
            Self::ManualApproval => "manual_approval",
            Self::Wait => "wait",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a step kind"))
    }
}

fn default_exit_codes() -> Vec<i32> {
    vec![0]
}

fn default_true() -> bool {
    true
}

/// Hosts named in inventory, or picked by a label selector.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum HostSet {
    /// Resource names of hosts.
    Names(Vec<String>),
    /// `{"selector": "tier=web"}`: every host resource whose labels match.
    Selector { selector: String },
}

/// `host_recovery`: recover hosts through their provider, powered off.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"hosts": ["wordpress", "nginx"], "snapshot": "latest"}))]
pub struct HostRecoveryParams {
    pub hosts: HostSet,
    /// `latest` (default) or a provider snapshot id; may be a template.
    #[serde(default = "latest")]
    pub snapshot: String,
    /// How long to wait for the provider to finish the recovery.
    #[serde(default = "thirty_minutes")]
    pub wait: HumanDuration,
}

fn latest() -> String {
    "latest".into()
}

fn thirty_minutes() -> Duration {
    Duration::from_secs(1800)
}

/// `power_on`: boot recovered hosts in order: the hosts of a group start together, groups one
/// after another, each group running (and answering on `port`, when given) before the next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"hosts": ["mysql", ["wordpress", "wordpress2"], "nginx"], "port": 22, "wait_until_running": "10m"}))]
pub struct PowerOnParams {
    /// Boot order: each item is a host's resource name or a group of them started together.
    pub hosts: Vec<HostGroup>,
    /// How long each group may take to run (and answer on `port`).
    #[serde(default = "ten_minutes")]
    pub wait_until_running: HumanDuration,
    /// Pause between one group running and booting the next.
    #[serde(default)]
    pub delay_between: HumanDuration,
    /// After a host runs, wait until this TCP port answers on its private IP (e.g. 22 for
    /// sshd, 3306 for MySQL) before it counts as up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One place in a boot order: a host, or hosts that start together.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum HostGroup {
    One(String),
    Together(Vec<String>),
}

impl HostGroup {
    pub fn names(&self) -> &[String] {
        match self {
            Self::One(name) => std::slice::from_ref(name),
            Self::Together(names) => names,
        }
    }
}

fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

/// Who to log in as on a target given by address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshLogin {
    pub user: String,
    /// Name of an ssh_password or ssh_private_key credential.
    pub credential: String,
    #[serde(default = "ssh_port")]
    pub port: u16,
    /// The target's pinned host key (for a target given by address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")]
    pub host_key_fingerprint: Option<String>,
    /// Accept the first key seen for an address target, for the rest of the execution
    /// (explicit opt-in; there is no resource to pin it to).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_on_first_use: bool,
}

fn ssh_port() -> u16 {
    22
}

/// `remote_script`: run a script over SSH on a host, optionally through a jump server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "target": "{{ steps.recover.outputs.hosts.nginx.private_ip }}",
    "via": "jump01",
    "login": {"user": "root", "credential": "web_root_key"},
    "script": "sed -i \"s/{{ resources.wordpress.private_ip | bare }}/{{ steps.recover.outputs.hosts.wordpress.private_ip | bare }}/\" /etc/nginx/conf.d/wp.conf && nginx -t && nginx -s reload",
    "outputs": ["nginx_version"]
}))]
pub struct RemoteScriptParams {
    /// A host or jump_server resource name, or an address (a template such as a recovered
    /// host's `private_ip`). Naming the `via` jump server itself runs the script there.
    pub target: String,
    /// Where to reach a target resource instead of its inventory address: e.g. its recovered
    /// copy's `private_ip` (the copy keeps the host's logins and pinned host key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Name of the jump_server resource to tunnel through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Login for a target given by address (a resource's own `ssh` block is used otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<SshLogin>,
    /// Shell script; template values are shell-quoted.
    pub script: String,
    /// Environment variables; values may be templates and may read `credentials.<name>.<field>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variable -> `credential` or `credential.field`, injected and masked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    #[serde(default = "default_exit_codes")]
    pub expected_exit_codes: Vec<i32>,
    /// Names the script sets by printing `::output name=value` lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// `local_script`: run a script on the orchestrator's host (admins only).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"script": "dig +short {{ params.site_domain }}", "outputs": ["answer"]}))]
pub struct LocalScriptParams {
    pub script: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    #[serde(default = "default_exit_codes")]
    pub expected_exit_codes: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
}

/// The HTTP method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

/// How an HTTP request authenticates, from a credential.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HttpAuth {
    /// A `token` credential sent as `Authorization: Bearer`.
    Bearer(String),
    /// A `password` credential (with its username) sent as basic auth.
    Basic(String),
}

/// `http_request`: call an HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"method": "POST", "url": "https://dns.example.com/api/records/{{ params.record_id }}",
    "auth": {"bearer": "dns_api_token"}, "body": {"value": "{{ steps.recover.outputs.hosts.nginx.public_ip }}"},
    "expected_status": [200], "outputs": {"change_id": "/id"}}))]
pub struct HttpRequestParams {
    #[serde(default = "get")]
    pub method: HttpMethod,
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body; string leaves may be templates (the structure cannot change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    #[serde(default = "ok_statuses")]
    pub expected_status: Vec<u16>,
    /// Output name -> JSON pointer into the response body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// TLS certificate verification (turning it off is shown in the report).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
}

fn get() -> HttpMethod {
    HttpMethod::Get
}

fn ok_statuses() -> Vec<u16> {
    vec![200, 201, 202, 204]
}

/// What a check probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    Tcp,
    Http,
    Ping,
    Dns,
    Sql,
}

/// `check`: poll until it passes or `until` runs out; a failed check blocks its dependents.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "http", "url": "http://{{ steps.recover.outputs.hosts.nginx.private_ip }}/", "expected_status": [200], "interval": "5s", "until": "5m"}))]
pub struct CheckParams {
    #[serde(rename = "type")]
    pub check_type: CheckType,
    /// Run the probe from this jump_server (tcp, ping, http, dns): for networks only it
    /// reaches. http needs `curl` there, dns `getent` (or `dig` with a `server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "jump01")]
    pub via: Option<String>,
    /// tcp, ping: address or host resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// tcp: port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// http: URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// http: accepted statuses (default 200-399).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<Vec<u16>>,
    /// http: text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// http: a regular expression (Rust `regex` syntax) the body must match somewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = r"<title>WordPress( \d+\.\d+)?</title>")]
    pub matches: Option<String>,
    /// http: JSON pointer -> the value the JSON body must hold there. String values may be
    /// templates (they render to, and compare as, strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!({"/status": "ok", "/replicas": 3}))]
    pub json: Option<BTreeMap<String, Value>>,
    /// http: TLS verification.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// dns: the name to resolve (always as a fully qualified name: no search domains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "www.example.com")]
    pub name: Option<String>,
    /// dns: record type (default A).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_type: Option<DnsRecordType>,
    /// dns: values the answer must contain (IPs compare as addresses, names case-insensitively
    /// without the trailing dot); without it, the name must resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["{{ steps.recover.outputs.hosts.nginx.public_ip }}"]))]
    pub expect: Option<Vec<String>>,
    /// dns: the name server to ask, `ip` or `ip:port` (`[ipv6]:port`); default: the system's
    /// (/etc/resolv.conf). The hosts file is never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "198.51.100.53")]
    pub server: Option<String>,
    /// sql: database resource name (engine `postgresql`, `mysql` or `mariadb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// sql: a query whose single value must not be false, 0, NULL or empty (default `SELECT 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default = "five_seconds")]
    pub interval: HumanDuration,
    #[serde(default = "five_minutes")]
    pub until: HumanDuration,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// What happens when nobody answers a manual approval in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalTimeout {
    /// The step fails (and its `on_failure` applies).
    Reject,
    /// The step passes as if approved.
    Approve,
}

/// `manual_approval`: wait for a person with the role to approve or reject.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"instructions": "Confirm the business owner agrees to switch DNS.", "approvers_role": "operator", "timeout": "30m", "on_timeout": "reject"}))]
pub struct ManualApprovalParams {
    pub instructions: String,
    #[serde(default = "operator")]
    pub approvers_role: Role,
    #[serde(default = "one_hour")]
    pub timeout: HumanDuration,
    #[serde(default = "reject")]
    pub on_timeout: ApprovalTimeout,
}

fn operator() -> Role {
    Role::Operator
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

fn reject() -> ApprovalTimeout {
    ApprovalTimeout::Reject
}

/// `wait`: pause.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"duration": "30s"}))]
pub struct WaitParams {
    pub duration: HumanDuration,
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    Fixed,
    Exponential,
}

/// How often and how a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max_attempts": 3, "delay": "10s", "backoff": "exponential"}))]
pub struct RetryPolicy {
    /// Attempts in all, 1-100 (1: no retry).
    #[serde(default = "one")]
    pub max_attempts: u32,
    #[serde(default = "ten_seconds")]
    pub delay: HumanDuration,
    #[serde(default = "fixed")]
    pub backoff: Backoff,
}

fn one() -> u32 {
    1
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn fixed() -> Backoff {
    Backoff::Fixed
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            delay: ten_seconds(),
            backoff: Backoff::Fixed,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `n` (2, 3, ...).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 1u64 << attempt.saturating_sub(2).min(16);
                Duration::from_secs(
                    self.delay
                        .as_secs()
                        .saturating_mul(factor)
                        .min(super::duration::MAX_SECS),
                )
            }
        }
    }

    /// Worst-case time spent waiting between attempts.
    pub fn total_delay(&self) -> u64 {
        (2..=self.max_attempts)
            .map(|n| self.delay_before(n).as_secs())
            .sum()
    }
}

/// A step's definition after validation, with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    pub kind: StepKind,
    pub params: Value,
    pub timeout: HumanDuration,
    pub retry: RetryPolicy,
    pub idempotent: bool,
}

/// What the caller may leave out: timeout, retry and idempotency default per kind.
#[derive(Debug, Clone, Default)]
pub struct StepOptions {
    pub timeout: Option<HumanDuration>,
    pub retry: Option<RetryPolicy>,
    pub idempotent: Option<bool>,
}

/// Validates `params` for `kind` and fills defaults; errors are named `<prefix>.<field>`.
pub fn validate_step(
    engine: &TemplateEngine,
    kind: StepKind,
    params: &Value,
    options: StepOptions,
    prefix: &str,
) -> Result<StepDefinition, Vec<FieldError>> {
    let mut v = Violations::default();
    let normalized = match kind {
        StepKind::HostRecovery => typed::<HostRecoveryParams>(params, prefix).map(|p| {
            match &p.hosts {
                HostSet::Names(names) if names.is_empty() => {
                    v.add(format!("{prefix}.hosts"), "name at least one host")
                }
                HostSet::Selector { selector } if selector.trim().is_empty() => {
                    v.add(format!("{prefix}.hosts.selector"), "must not be empty")
                }
                _ => {}
            }
            to_value(&p)
        }),
        StepKind::PowerOn => typed::<PowerOnParams>(params, prefix).map(|p| {
            if p.hosts.is_empty() {
                v.add(format!("{prefix}.hosts"), "name at least one host");
            }
            let mut seen = BTreeSet::new();
            for (i, group) in p.hosts.iter().enumerate() {
                if group.names().is_empty() {
                    v.add(
                        format!("{prefix}.hosts[{i}]"),
                        "a group names at least one host",
                    );
                }
                for name in group.names() {
                    if !seen.insert(name.as_str()) {
                        v.add(
                            format!("{prefix}.hosts[{i}]"),
                            format!("`{name}` is named twice in the boot order"),
                        );
                    }
                }
            }
            if p.port == Some(0) {
                v.add(format!("{prefix}.port"), "must be 1-65535");
            }
            to_value(&p)
        }),
        StepKind::RemoteScript => typed::<RemoteScriptParams>(params, prefix).map(|p| {
            check_script_common(
                &mut v,
                prefix,
                &p.script,
                &p.env,
                &p.credentials,
                &p.expected_exit_codes,
                &p.outputs,
            );
            if p.target.trim().is_empty() {
                v.add(
                    format!("{prefix}.target"),
                    "must name a host, a jump server or an address",
                );
            }
            if let Some(fp) = p
                .login
                .as_ref()
                .and_then(|l| l.host_key_fingerprint.as_ref())
            {
                crate::domain::validation::check_fingerprint(
                    &mut v,
                    &format!("{prefix}.login.host_key_fingerprint"),
                    fp,
                );
            }
            to_value(&p)
        }),
        StepKind::LocalScript => typed::<LocalScriptParams>(params, prefix).map(|p| {
            check_script_common(
                &mut v,
                prefix,
                &p.script,
                &p.env,
                &p.credentials,
                &p.expected_exit_codes,
                &p.outputs,
            );
            to_value(&p)
        }),
        StepKind::HttpRequest => typed::<HttpRequestParams>(params, prefix).map(|p| {
            if !is_template(&p.url) {
                check_http_url(&mut v, &format!("{prefix}.url"), &p.url);
            }
            check_statuses(
                &mut v,
                &format!("{prefix}.expected_status"),
                &p.expected_status,
            );
            for (name, pointer) in &p.outputs {
                check_output_name(&mut v, &format!("{prefix}.outputs.{name}"), name);
                if !(pointer.is_empty() || pointer.starts_with('/')) {
                    v.add(
                        format!("{prefix}.outputs.{name}"),
                        "must be a JSON pointer such as /data/id",
                    );
                }
            }
            to_value(&p)
        }),
        StepKind::Check => typed::<CheckParams>(params, prefix).map(|p| {
            check_check(&mut v, prefix, &p);
            to_value(&p)
        }),
        StepKind::ManualApproval => typed::<ManualApprovalParams>(params, prefix).map(|p| {
            if p.instructions.trim().is_empty() {
                v.add(
                    format!("{prefix}.instructions"),
                    "tell the approver what to check",
                );
            }
            if p.approvers_role == Role::Viewer {
                v.add(
                    format!("{prefix}.approvers_role"),
                    "viewers cannot approve; use operator or admin",
                );
            }
            to_value(&p)
        }),
        StepKind::Wait => typed::<WaitParams>(params, prefix).map(|p| to_value(&p)),
    }?;
    check_templates(engine, &mut v, kind, &normalized, prefix);
    let retry = options.retry.unwrap_or_default();
    if !(1..=100).contains(&retry.max_attempts) {
        v.add(
            format!("{}retry.max_attempts", parent(prefix)),
            "must be between 1 and 100",
        );
    }
    let timeout = options
        .timeout
        .unwrap_or_else(|| default_timeout(kind, &normalized));
    if let Some((what, least)) = least_timeout(kind, &normalized) {
        if timeout < least {
            v.add(
                format!("{}timeout", parent(prefix)),
                format!("must be at least the step's {what} ({least}), or it would be cut short"),
            );
        }
    }
    if timeout.as_secs() == 0 {
        v.add(format!("{}timeout", parent(prefix)), "must be more than 0s");
    }
    if !v.is_empty() {
        return Err(v.into_errors());
    }
    let idempotent = options
        .idempotent
        .unwrap_or_else(|| default_idempotent(kind, &normalized));
    Ok(StepDefinition {
        kind,
        params: normalized,
        timeout,
        retry,
        idempotent,
    })
}

/// `steps[2].params` -> `steps[2].`; `params` -> ``.
fn parent(prefix: &str) -> String {
    match prefix.rfind('.') {
        Some(i) => prefix[..=i].to_owned(),
        None => String::new(),
    }
}

fn typed<T: DeserializeOwned>(params: &Value, prefix: &str) -> Result<T, Vec<FieldError>> {
    if !params.is_object() {
        return Err(vec![FieldError::new(prefix, "must be a JSON object")]);
    }
    serde_path_to_error::deserialize(params).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        vec![FieldError::new(field, err.into_inner().to_string())]
    })
}

fn to_value<T: Serialize>(params: &T) -> Value {
    serde_json::to_value(params).expect("step params serialize to JSON")
}

fn check_script_common(
    v: &mut Violations,
    prefix: &str,
    script: &str,
    env: &BTreeMap<String, String>,
    credentials: &BTreeMap<String, String>,
    exit_codes: &[i32],
    outputs: &[String],
) {
    if script.trim().is_empty() {
        v.add(format!("{prefix}.script"), "must not be empty");
    }
    if script.len() > 256 * 1024 {
        v.add(format!("{prefix}.script"), "must be at most 256 KiB");
    }
    for name in env.keys().chain(credentials.keys()) {
        if !is_env_name(name) {
            v.add(
                format!("{prefix}.env.{name}"),
                "environment variable names are letters, digits and `_`, not starting with a digit",
            );
        }
    }
    for name in env.keys().filter(|k| credentials.contains_key(*k)) {
        v.add(format!("{prefix}.credentials.{name}"), "is also set in env");
    }
    for (var, reference) in credentials {
        if is_template(reference) || reference.trim().is_empty() {
            v.add(
                format!("{prefix}.credentials.{var}"),
                "must name a credential (`name` or `name.field`)",
            );
        }
    }
    if exit_codes.is_empty() {
        v.add(
            format!("{prefix}.expected_exit_codes"),
            "list at least one exit code",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, name) in outputs.iter().enumerate() {
        check_output_name(v, &format!("{prefix}.outputs[{i}]"), name);
        if !seen.insert(name) {
            v.add(format!("{prefix}.outputs[{i}]"), "is listed twice");
        }
    }
}

pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_output_name(v: &mut Violations, field: &str, name: &str) {
    if !super::validation::is_name(name) {
        v.add(
            field,
            "output names are lowercase letters, digits and `_`, starting with a letter",
        );
    }
}

fn check_statuses(v: &mut Violations, field: &str, statuses: &[u16]) {
    if statuses.is_empty() {
        v.add(field, "list at least one status");
    }
    if statuses.iter().any(|s| !(100..=599).contains(s)) {
        v.add(field, "HTTP statuses are between 100 and 599");
    }
}

fn check_check(v: &mut Violations, prefix: &str, p: &CheckParams) {
    let need = |v: &mut Violations, present: bool, field: &str| {
        if !present {
            v.add(
                format!("{prefix}.{field}"),
                format!(
                    "is required for a {} check",
                    serde_json::to_value(p.check_type)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("")
                ),
            );
        }
    };
    let allowed: &[&str] = match p.check_type {
        CheckType::Tcp => {
            need(v, p.host.is_some(), "host");
            need(v, p.port.is_some(), "port");
            &["host", "port"]
        }
        CheckType::Http => {
            need(v, p.url.is_some(), "url");
            if let Some(url) = p.url.as_deref().filter(|u| !is_template(u)) {
                check_http_url(v, &format!("{prefix}.url"), url);
            }
            if let Some(statuses) = &p.expected_status {
                check_statuses(v, &format!("{prefix}.expected_status"), statuses);
            }
            check_body_expectations(v, prefix, p);
            &["url", "expected_status", "contains", "matches", "json"]
        }
        CheckType::Ping => {
            need(v, p.host.is_some(), "host");
            &["host"]
        }
        CheckType::Dns => {
            need(v, p.name.is_some(), "name");
            check_dns(v, prefix, p);
            &["name", "record_type", "expect", "server"]
        }
        CheckType::Sql => {
            need(v, p.database.is_some(), "database");
            if p.via.is_some() {
                v.add(
                    format!("{prefix}.via"),
                    "sql checks connect from the orchestrator; they cannot run from a jump server",
                );
            }
            &["database", "query"]
        }
    };
    let present = [
        ("host", p.host.is_some()),
        ("port", p.port.is_some()),
        ("url", p.url.is_some()),
        ("expected_status", p.expected_status.is_some()),
        ("contains", p.contains.is_some()),
        ("matches", p.matches.is_some()),
        ("json", p.json.is_some()),
        ("name", p.name.is_some()),
        ("record_type", p.record_type.is_some()),
        ("expect", p.expect.is_some()),
        ("server", p.server.is_some()),
        ("database", p.database.is_some()),
        ("query", p.query.is_some()),
    ];
    for (field, is_set) in present {
        if is_set && !allowed.contains(&field) {
            v.add(
                format!("{prefix}.{field}"),
                "does not apply to this type of check",
            );
        }
    }
    if p.interval.as_secs() == 0 {
        v.add(format!("{prefix}.interval"), "must be more than 0s");
    }
    if p.until < p.interval {
        v.add(format!("{prefix}.until"), "must be at least one interval");
    }
}

/// An http check's `matches` must compile and its `json` keys must be JSON pointers; templates
/// are checked once rendered, when the check runs.
fn check_body_expectations(v: &mut Violations, prefix: &str, p: &CheckParams) {
    if let Some(pattern) = p.matches.as_deref().filter(|m| !is_template(m)) {
        if let Err(e) = regex::Regex::new(pattern) {
            v.add(
                format!("{prefix}.matches"),
                format!("is not a valid regular expression: {}", regex_error(&e)),
            );
        }
    }
    let Some(expected) = &p.json else { return };
    if expected.is_empty() {
        v.add(
            format!("{prefix}.json"),
            "map at least one JSON pointer to its expected value, or leave `json` out",
        );
    }
    for (pointer, want) in expected {
        let field = format!("{prefix}.json.{pointer}");
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            v.add(
                &field,
                "must be a JSON pointer such as /status (empty for the whole body)",
            );
        }
        // Templates are filled in by dotted path (`json./status`), which a `.` in the key breaks.
        let templated = string_leaves(want).iter().any(|(_, t)| is_template(t));
        if templated && pointer.contains('.') {
            v.add(
                field,
                "a value under a pointer with `.` in it must be literal, not a template",
            );
        }
    }
}

/// The reason of a regex error on one line: a syntax error's text quotes the pattern with a caret
/// under the fault over several lines and ends with `error: <reason>`.
pub fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

/// A dns check's literal `expect` values must fit the record type, and `server` must be an
/// address (with an optional port).
fn check_dns(v: &mut Violations, prefix: &str, p: &CheckParams) {
    if let Some(name) = p.name.as_deref().filter(|n| !is_template(n)) {
        if !is_dns_name(name) {
            v.add(
                format!("{prefix}.name"),
                format!("`{name}` is not a DNS name"),
            );
        }
    }
    if p.expect.as_ref().is_some_and(Vec::is_empty) {
        v.add(
            format!("{prefix}.expect"),
            "list at least one value, or leave `expect` out to only require an answer",
        );
    }
    let record_type = p.record_type.unwrap_or(DnsRecordType::A);
    let literal = p.expect.iter().flatten().enumerate();
    for (i, value) in literal.filter(|(_, value)| !is_template(value)) {
        let field = format!("{prefix}.expect[{i}]");
        match record_type {
            DnsRecordType::A if value.parse::<std::net::Ipv4Addr>().is_err() => {
                v.add(field, format!("`{value}` is not an IPv4 address (type A)"))
            }
            DnsRecordType::AAAA if value.parse::<std::net::Ipv6Addr>().is_err() => v.add(
                field,
                format!("`{value}` is not an IPv6 address (type AAAA)"),
            ),
            DnsRecordType::CNAME if !is_dns_name(value) => {
                v.add(field, format!("`{value}` is not a DNS name (type CNAME)"))
            }
            _ => {}
        }
    }
    if let Some(server) = p.server.as_deref().filter(|s| !is_template(s)) {
        if parse_name_server(server).is_none() {
            v.add(
                format!("{prefix}.server"),
                format!("`{server}` is not a name server address: write `ip` or `ip:port` (`[ipv6]:port`)"),
            );
        }
    }
}

/// A name as DNS has it: host names, and labels such as `_dmarc` or `_sip._tcp` that records
/// other than addresses use.
fn is_dns_name(name: &str) -> bool {
    super::validation::is_hostname(&name.replace('_', "x"))
}

/// `ip` (port 53) or `ip:port` / `[ipv6]:port`.
pub fn parse_name_server(server: &str) -> Option<std::net::SocketAddr> {
    let server = server.trim();
    if let Ok(ip) = server.parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, 53));
    }
    server.parse().ok()
}

/// The string parameters that name things and so must be literal.
fn literal_fields(kind: StepKind) -> &'static [&'static str] {
    match kind {
        StepKind::HostRecovery | StepKind::PowerOn => &["hosts"],
        StepKind::RemoteScript => &["via", "login", "credentials", "outputs"],
        StepKind::LocalScript => &["credentials", "outputs"],
        StepKind::HttpRequest => &["auth", "outputs"],
        StepKind::Check => &["database", "via"],
        StepKind::ManualApproval | StepKind::Wait => &[],
    }
}

/// How a string parameter at `path` (relative to params) is used.
pub fn field_use(kind: StepKind, path: &str) -> FieldUse {
    match (kind, path) {
        (StepKind::RemoteScript | StepKind::LocalScript, "script") => FieldUse::Script,
        _ => FieldUse::Plain,
    }
}

/// Whether a string parameter at `path` may read `credentials.*` (it becomes an env var).
pub fn reads_credentials(kind: StepKind, path: &str) -> bool {
    matches!(kind, StepKind::RemoteScript | StepKind::LocalScript) && path.starts_with("env.")
}

pub const TEMPLATE_ROOTS: [&str; 5] = ["resources", "steps", "params", "execution", "credentials"];

/// Every string leaf of `params` with its path (`env.DB_HOST`, `body.items.0.name`).
pub fn string_leaves(params: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, path: String, out: &mut Vec<(String, String)>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_owned()
            } else {
                format!("{path}.{k}")
            }
        };
        match value {
            Value::String(s) => out.push((path, s.clone())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, join(&i.to_string()), out);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    walk(item, join(k), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(params, String::new(), &mut out);
    out
}

fn check_templates(
    engine: &TemplateEngine,
    v: &mut Violations,
    kind: StepKind,
    params: &Value,
    prefix: &str,
) {
    let literal = literal_fields(kind);
    for (path, text) in string_leaves(params) {
        if !is_template(&text) {
            continue;
        }
        let field = format!("{prefix}.{path}");
        let top = path.split('.').next().unwrap_or_default();
        if literal.contains(&top) {
            v.add(
                field,
                "names a resource, credential or output and must be literal, not a template",
            );
            continue;
        }
        match engine.references(&text) {
            Err(e) => v.add(field, format!("template error: {e}")),
            Ok(refs) => {
                for r in refs {
                    let root = r.split('.').next().unwrap_or_default();
                    if !TEMPLATE_ROOTS.contains(&root) {
                        v.add(&field, format!("unknown name `{r}`: templates read resources, steps, params, execution (and credentials in env)"));
                    } else if root == "credentials" && !reads_credentials(kind, &path) {
                        v.add(&field, format!("`{r}`: credentials may only be read in `env` values, which reach the script as environment variables"));
                    }
                }
            }
        }
    }
}

/// The timeout a step of `kind` with `params` gets when none is given.
pub fn default_timeout(kind: StepKind, params: &Value) -> Duration {
    let secs = |key: &str| {
        params
            .get(key)
            .and_then(|v| serde_json::from_value::<Duration>(v.clone()).ok())
            .map_or(0, Duration::as_secs)
    };
    Duration::from_secs(match kind {
        StepKind::HostRecovery => secs("wait") + 60,
        StepKind::PowerOn => {
            let hosts = params
                .get("hosts")
                .and_then(Value::as_array)
                .map_or(1, Vec::len) as u64;
            hosts * (secs("wait_until_running") + secs("delay_between")) + 60
        }
        StepKind::RemoteScript | StepKind::LocalScript => 600,
        StepKind::HttpRequest => 60,
        StepKind::Check => secs("until") + 30,
        StepKind::ManualApproval => secs("timeout") + 30,
        StepKind::Wait => secs("duration") + 10,
    })
}

/// The param a timeout must not be shorter than, for kinds that wait by design.
fn least_timeout(kind: StepKind, params: &Value) -> Option<(&'static str, Duration)> {
    let key = match kind {
        StepKind::Check => "until",
        StepKind::Wait => "duration",
        StepKind::ManualApproval => "timeout",
        _ => return None,
    };
    let value = serde_json::from_value::<Duration>(params.get(key)?.clone()).ok()?;
    Some((key, value))
}

/// Whether a step of `kind` with `params` is idempotent when not said.
pub fn default_idempotent(kind: StepKind, params: &Value) -> bool {
    match kind {
        StepKind::RemoteScript | StepKind::LocalScript => false,
        StepKind::HttpRequest => matches!(
            params.get("method").and_then(Value::as_str),
            Some("GET" | "HEAD" | "OPTIONS")
        ),
        // Host steps look up what this execution already asked the provider for before acting.
        StepKind::HostRecovery
        | StepKind::PowerOn
        | StepKind::Check
        | StepKind::ManualApproval
        | StepKind::Wait => true,
    }
}

/// Facts a recovered or booted host exposes as `outputs.hosts.<name>.<fact>`.
pub const HOST_FACTS: [&str; 7] = [
    "instance_id",
    "private_ip",
    "public_ip",
    "state",
    "snapshot_time",
    "provider_host_id",
    // power_on: when the host was seen running (RFC 3339).
    "running_at",
];

/// The first-level output names a step of this definition produces (host steps: `hosts`).
pub fn declared_outputs(def: &StepDefinition) -> BTreeSet<String> {
    let list = |key: &str| -> BTreeSet<String> {
        match def.params.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            Some(Value::Object(map)) => map.keys().cloned().collect(),
            _ => BTreeSet::new(),
        }
    };
    let mut out = match def.kind {
        StepKind::HostRecovery | StepKind::PowerOn => BTreeSet::from(["hosts".to_owned()]),
        StepKind::RemoteScript | StepKind::LocalScript => {
            let mut names = list("outputs");
            names.insert("exit_code".into());
            names
        }
        StepKind::HttpRequest => {
            let mut names = list("outputs");
            names.insert("status".into());
            names
        }
        StepKind::ManualApproval => {
            BTreeSet::from(["approved_by".to_owned(), "comment".to_owned()])
        }
        StepKind::Check | StepKind::Wait => BTreeSet::new(),
    };
    out.retain(|n| !n.is_empty());
    out
}

/// Merges plan-level overrides onto a step's params (RFC 7396 merge patch).
pub fn merged_params(base: &Value, overrides: &Value) -> Value {
    let mut merged = base.clone();
    if let Value::Object(map) = overrides {
        if !map.is_empty() {
            super::merge_patch(&mut merged, overrides);
        }
    }
    if merged.is_null() {
        Value::Object(Map::new())
    } else {
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(kind: StepKind, params: Value) -> Result<StepDefinition, Vec<String>> {
        validate_step(
            &TemplateEngine::new(),
            kind,
            &params,
            StepOptions::default(),
            "params",
        )
        .map_err(|errors| errors.into_iter().map(|e| e.field).collect())
    }

    #[test]
    fn defaults_are_filled_per_kind() {
        let d = check(
            StepKind::Check,
            json!({"type": "tcp", "host": "10.0.0.5", "port": 3306}),
        )
        .unwrap();
        assert_eq!(d.params["interval"], "5s");
        assert_eq!(d.timeout.as_secs(), 330);
        assert!(d.idempotent);
        let d = check(
            StepKind::RemoteScript,
            json!({"target": "nginx", "script": "nginx -t"}),
        )
        .unwrap();
        assert_eq!(d.params["expected_exit_codes"], json!([0]));
        assert!(!d.idempotent);
        let d = check(
            StepKind::HttpRequest,
            json!({"url": "https://x.example/health"}),
        )
        .unwrap();
        assert!(d.idempotent, "GET is idempotent");
        assert_eq!(d.retry.max_attempts, 1);
    }

    #[test]
    fn each_kind_reports_its_bad_fields_by_path() {
        assert_eq!(
            check(StepKind::Check, json!({"type": "tcp", "host": "h"})).unwrap_err(),
            vec!["params.port"]
        );
        assert_eq!(
            check(
                StepKind::Check,
                json!({"type": "ping", "host": "h", "url": "http://x"})
            )
            .unwrap_err(),
            vec!["params.url"]
        );
        assert_eq!(
            check(StepKind::Wait, json!({"duration": "soon"})).unwrap_err(),
            vec!["params.duration"]
        );
        assert_eq!(
            check(StepKind::HttpRequest, json!({"url": "ftp://x"})).unwrap_err(),
            vec!["params.url"]
        );
        assert_eq!(
            check(
                StepKind::HttpRequest,
                json!({"url": "https://x", "method": "FETCH"})
            )
            .unwrap_err(),
            vec!["params.method"]
        );
        assert_eq!(
            check(
                StepKind::RemoteScript,
                json!({"target": "t", "script": "x", "env": {"1BAD": "v"}})
            )
            .unwrap_err(),
            vec!["params.env.1BAD"]
        );
        assert_eq!(
            check(
                StepKind::ManualApproval,
                json!({"instructions": "ok", "approvers_role": "viewer"})
            )
            .unwrap_err(),
            vec!["params.approvers_role"]
        );
        assert_eq!(
            check(StepKind::PowerOn, json!({"hosts": []})).unwrap_err(),
            vec!["params.hosts"]
        );
        assert_eq!(
            check(StepKind::Wait, json!({"duration": "1m", "extra": 1})).unwrap_err(),
            vec!["params.extra"]
        );
    }

    #[test]
    fn templates_are_checked_for_syntax_roots_and_literal_fields() {
        assert_eq!(
            check(
                StepKind::RemoteScript,
                json!({"target": "t", "script": "echo {{ nope.x }}"})
            )
            .unwrap_err(),
            vec!["params.script"]
        );
        assert_eq!(
            check(
                StepKind::RemoteScript,
                json!({"target": "t", "script": "echo {{ params.x"})
            )
            .unwrap_err(),
            vec!["params.script"]
        );
        assert_eq!(
            check(
                StepKind::RemoteScript,
                json!({"target": "t", "script": "echo", "via": "{{ params.j }}"})
            )
            .unwrap_err(),
            vec!["params.via"]
        );
        // Credentials are readable in env values only.
        assert_eq!(
            check(
                StepKind::RemoteScript,
                json!({"target": "t", "script": "mysql -p{{ credentials.db.password }}"})
            )
            .unwrap_err(),
            vec!["params.script"]
        );
        assert!(check(
            StepKind::RemoteScript,
            json!({"target": "t", "script": "mysql", "env": {"MYSQL_PWD": "{{ credentials.db.password }}"}})
        )
        .is_ok());
    }

    #[test]
    fn an_http_checks_regex_and_json_pointers_are_validated_when_saved() {
        let http = |extra: Value| {
            let mut params = json!({"type": "http", "url": "https://www.example.com/health"});
            crate::domain::merge_patch(&mut params, &extra);
            check(StepKind::Check, params)
        };
        assert_eq!(
            http(json!({"matches": "ready (\\d+"})).unwrap_err(),
            vec!["params.matches"]
        );
        assert_eq!(
            http(json!({"json": {"status": "ok", "/replicas": 3}})).unwrap_err(),
            vec!["params.json.status"]
        );
        assert_eq!(http(json!({"json": {}})).unwrap_err(), vec!["params.json"]);
        // Templates are checked once rendered; "" points at the whole body.
        assert!(http(json!({"matches": "{{ params.pattern }}",
            "json": {"/version": "{{ params.version }}", "": {"status": "ok"}, "/app.name": "wp"}}))
        .is_ok());
        assert_eq!(
            http(json!({"json": {"/app.version": "{{ params.version }}"}})).unwrap_err(),
            vec!["params.json./app.version"]
        );
        let errors = validate_step(
            &TemplateEngine::new(),
            StepKind::Check,
            &json!({"type": "http", "url": "https://x.example/", "matches": "a(b"}),
            StepOptions::default(),
            "params",
        )
        .unwrap_err();
        assert_eq!(
            errors[0].message,
            "is not a valid regular expression: unclosed group"
        );
        assert_eq!(
            check(
                StepKind::Check,
                json!({"type": "tcp", "host": "h", "port": 22, "matches": "SSH", "json": {"/a": 1}})
            )
            .unwrap_err(),
            vec!["params.matches", "params.json"]
        );
    }

    #[test]
    fn a_dns_checks_expected_values_and_server_are_validated_when_saved() {
        let dns = |params: Value| check(StepKind::Check, params);
        assert_eq!(
            dns(
                json!({"type": "dns", "name": "www.example.com", "record_type": "AAAA",
                "expect": ["2001:db8::1", "203.0.113.5"]})
            )
            .unwrap_err(),
            vec!["params.expect[1]"]
        );
        assert_eq!(
            dns(json!({"type": "dns", "name": "www.example.com", "expect": []})).unwrap_err(),
            vec!["params.expect"]
        );
        assert_eq!(
            dns(json!({"type": "dns", "name": "not a name", "server": "ns1.example.com"}))
                .unwrap_err(),
            vec!["params.name", "params.server"]
        );
        assert!(dns(
            json!({"type": "dns", "name": "_dmarc.example.com", "record_type": "TXT",
            "expect": ["v=DMARC1; p=reject"], "server": "[2001:db8::53]:5353"})
        )
        .is_ok());
        assert!(dns(
            json!({"type": "dns", "name": "www.example.com", "record_type": "CNAME",
            "expect": ["LB.example.net.", "{{ params.target }}"], "server": "198.51.100.53"})
        )
        .is_ok());
        assert_eq!(
            parse_name_server("198.51.100.53").map(|a| a.port()),
            Some(53)
        );
    }

    #[test]
    fn retry_delays_grow_exponentially_and_are_bounded() {
        let r = RetryPolicy {
            max_attempts: 4,
            delay: Duration::from_secs(10),
            backoff: Backoff::Exponential,
        };
        assert_eq!(
            (2..=4)
                .map(|n| r.delay_before(n).as_secs())
                .collect::<Vec<_>>(),
            vec![10, 20, 40]
        );
        assert_eq!(r.total_delay(), 70);
    }

    #[test]
    fn declared_outputs_follow_the_kind() {
        let d = check(
            StepKind::RemoteScript,
            json!({"target": "t", "script": "x", "outputs": ["version"]}),
        )
        .unwrap();
        assert_eq!(
            declared_outputs(&d),
            BTreeSet::from(["exit_code".into(), "version".into()])
        );
        let d = check(StepKind::HostRecovery, json!({"hosts": ["web"]})).unwrap();
        assert_eq!(declared_outputs(&d), BTreeSet::from(["hosts".into()]));
    }
}
