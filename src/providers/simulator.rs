//! The simulator: an HTTP service that answers HyperBDR's API v2 the way [`super::hyperbdr`]
//! speaks it (same paths, envelope, login and token header) over a configured set of hosts, so
//! drills run on a laptop and tests drive the real client over HTTP.
//!
//! Per host and purpose an instance goes recovering -> powered off -> starting -> running (or
//! failed), and is gone once deleted. Times are evaluated when asked, so no task runs in the
//! background. Paths under `/simulator/` steer it (failures, timings, token expiry) and report
//! every recover / power-on / delete asked for.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};

use super::hyperbdr::{
    self, BootInstance, BOOT_DOING, BOOT_DONE, BOOT_FAILED, BOOT_NONE, NOT_FOUND_CODE,
    POWER_FAILED, POWER_OFF, POWER_RUNNING, POWER_STARTING, SCENE, SCENE_HEADER, TOKEN_HEADER,
};
use super::Purpose;

/// Codes the simulator invents for what hyperbdrctl shows no code for.
const LOGIN_FAILED_CODE: &str = "00001001";
const TOKEN_INVALID_CODE: &str = "00001002";
const BAD_REQUEST_CODE: &str = "00000400";
const REFUSED_CODE: &str = "00010001";

// ----------------------------------------------------------------------------------------------
// Configuration
// ----------------------------------------------------------------------------------------------

/// The simulator's settings and hosts, as written in its YAML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    #[serde(default = "default_username")]
    pub username: String,
    #[serde(default = "default_password")]
    pub password: String,
    /// How long a login token is accepted.
    #[serde(default = "default_token_ttl", deserialize_with = "de_duration")]
    pub token_ttl: Duration,
    /// How long a recovery takes unless the host says otherwise.
    #[serde(default = "default_boot_time", deserialize_with = "de_duration")]
    pub boot_time: Duration,
    /// How long a power-on takes unless the host says otherwise.
    #[serde(default = "default_power_on_time", deserialize_with = "de_duration")]
    pub power_on_time: Duration,
    /// The largest getHosts page answered, whatever page_size asks.
    #[serde(default = "default_max_page_size")]
    pub max_page_size: usize,
    #[serde(default)]
    pub hosts: Vec<SimHost>,
}

/// One protected host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimHost {
    pub id: String,
    /// Defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub source_ip: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    /// The addresses a recovered instance gets (point them at loopback for tests with a real
    /// sshd).
    #[serde(default)]
    pub private_ip: Option<String>,
    #[serde(default)]
    pub public_ip: Option<String>,
    /// Recovery time; the simulator's `boot_time` when absent.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub boot_time: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub power_on_time: Option<Duration>,
    /// Absent: one snapshot taken a minute before start; `[]`: none (never synced).
    #[serde(default)]
    pub snapshots: Option<Vec<SimSnapshot>>,
    #[serde(default = "default_sync_state")]
    pub sync_state: String,
    #[serde(default)]
    pub fail: Option<Fail>,
}

/// A snapshot: `taken_at`, or `age` before the simulator started (default 1m).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSnapshot {
    pub id: String,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub age: Option<Duration>,
    #[serde(default)]
    pub taken_at: Option<DateTime<Utc>>,
}

/// What fails for a host: its recoveries, or the boots (power-ons) of its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fail {
    Recover,
    Boot,
}

fn default_username() -> String {
    "admin".into()
}
fn default_password() -> String {
    "simulator".into()
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_boot_time() -> Duration {
    Duration::from_secs(5)
}
fn default_power_on_time() -> Duration {
    Duration::from_secs(2)
}
fn default_max_page_size() -> usize {
    100
}
fn default_sync_state() -> String {
    hyperbdr::SYNC_DONE.into()
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            username: default_username(),
            password: default_password(),
            token_ttl: default_token_ttl(),
            boot_time: default_boot_time(),
            power_on_time: default_power_on_time(),
            max_page_size: default_max_page_size(),
            hosts: Vec::new(),
        }
    }
}

impl SimHost {
    /// A host with defaults for everything but its id.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            name: None,
            source_ip: None,
            os: None,
            private_ip: None,
            public_ip: None,
            boot_time: None,
            power_on_time: None,
            snapshots: None,
            sync_state: default_sync_state(),
            fail: None,
        }
    }
}

impl SimulatorConfig {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let config: Self = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for h in &self.hosts {
            if h.id.is_empty() {
                return Err("a host has an empty id".into());
            }
            if !seen.insert(h.id.as_str()) {
                return Err(format!("host id `{}` appears twice", h.id));
            }
        }
        if self.max_page_size == 0 {
            return Err("max_page_size must be at least 1".into());
        }
        Ok(())
    }
}

/// `150ms`, `2s`, `5m`, `1h`, or a number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let bad = || format!("`{raw}` is not a duration like 150ms, 2s, 5m or 1h");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(u64),
    Text(String),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match RawDuration::deserialize(d)? {
        RawDuration::Secs(s) => Ok(Duration::from_secs(s)),
        RawDuration::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

// ----------------------------------------------------------------------------------------------
// State
// ----------------------------------------------------------------------------------------------

/// A recover, power-on or delete the simulator was asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimCall {
    pub action: SimAction,
    pub host_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// False when the simulator refused it (e.g. a second recovery for the same purpose).
    pub accepted: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimAction {
    Recover,
    PowerOn,
    Delete,
}

#[derive(Debug, Clone)]
enum Phase {
    Recovering {
        until: Instant,
        fails: bool,
        then_power_on: bool,
    },
    PoweredOff,
    Starting {
        until: Instant,
        fails: bool,
    },
    Running,
    Failed,
}

#[derive(Debug, Clone)]
struct SimInstance {
    purpose: Purpose,
    /// Empty until the recovery has finished.
    instance_id: String,
    phase: Phase,
    snapshot_id: String,
    snapshot_time: DateTime<Utc>,
    task_id: String,
    error: Option<String>,
    changed: Instant,
}

#[derive(Debug, Clone)]
struct Task {
    id: String,
    host_id: String,
    kind: &'static str,
    created_at: DateTime<Utc>,
    /// Why it failed, told only through the task's steps (as HyperBDR does for boots).
    failure: Option<String>,
}

#[derive(Debug, Clone)]
struct HostState {
    spec: SimHost,
    snapshots: Vec<(String, DateTime<Utc>)>,
    instances: Vec<SimInstance>,
}

/// An error envelope to answer the next API call with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectedError {
    #[serde(default = "default_injected_code")]
    code: String,
    #[serde(default = "default_injected_title")]
    title: String,
    #[serde(default)]
    error: String,
    #[serde(default = "default_injected_status")]
    status: u16,
}

fn default_injected_code() -> String {
    "00099999".into()
}
fn default_injected_title() -> String {
    "Simulated failure".into()
}
fn default_injected_status() -> u16 {
    500
}

struct State {
    config: SimulatorConfig,
    hosts: Vec<HostState>,
    tokens: HashMap<String, Instant>,
    calls: Vec<SimCall>,
    tasks: Vec<Task>,
    logins: u64,
    next_instance: u64,
    next_task: u64,
    fail_next: Option<InjectedError>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    traces: Arc<AtomicU64>,
}

impl Shared {
    fn new(mut config: SimulatorConfig) -> Self {
        let now = Utc::now();
        let hosts = std::mem::take(&mut config.hosts)
            .into_iter()
            .map(|spec| HostState {
                snapshots: resolve_snapshots(&spec, now),
                spec,
                instances: Vec::new(),
            })
            .collect();
        Self {
            state: Arc::new(Mutex::new(State {
                config,
                hosts,
                tokens: HashMap::new(),
                calls: Vec::new(),
                tasks: Vec::new(),
                logins: 0,
                next_instance: 0,
                next_task: 0,
                fail_next: None,
            })),
            traces: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The state with every instance advanced to now.
    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked leaves consistent data (every change is one assignment).
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.advance(Instant::now());
        state
    }

    fn trace_id(&self) -> String {
        format!(
            "sim-trace-{}",
            self.traces.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    fn ok(&self, data: Value) -> HttpResponse {
        HttpResponse::Ok().json(json!({
            "code": "00000000", "data": data, "error": null, "title": "", "trace_id": self.trace_id(),
        }))
    }

    fn error(&self, status: u16, code: &str, title: &str, error: &str) -> HttpResponse {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        HttpResponse::build(status).json(json!({
            "code": code, "data": null, "error": error, "title": title, "trace_id": self.trace_id(),
        }))
    }

    fn bad_request(&self, error: &str) -> HttpResponse {
        self.error(400, BAD_REQUEST_CODE, "Bad request", error)
    }

    fn not_found(&self, what: &str) -> HttpResponse {
        self.error(404, NOT_FOUND_CODE, "not found", what)
    }
}

fn resolve_snapshots(spec: &SimHost, now: DateTime<Utc>) -> Vec<(String, DateTime<Utc>)> {
    let Some(snapshots) = &spec.snapshots else {
        return vec![(
            format!("{}-snap-1", spec.id),
            now - chrono::Duration::minutes(1),
        )];
    };
    snapshots
        .iter()
        .map(|s| {
            let age = s.age.unwrap_or(Duration::from_secs(60));
            let taken = s.taken_at.unwrap_or_else(|| {
                now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::zero())
            });
            (s.id.clone(), taken)
        })
        .collect()
}

impl State {
    fn advance(&mut self, now: Instant) {
        let mut failures = Vec::new();
        for host in &mut self.hosts {
            for i in &mut host.instances {
                advance_instance(i, &host.spec, &self.config, now, &mut self.next_instance);
                if matches!(i.phase, Phase::Failed) && i.error.is_none() {
                    failures.push((i.task_id.clone(), host.spec.id.clone()));
                    i.error = Some(String::new());
                }
            }
        }
        // A failed recovery says why only through its task's steps.
        for (task_id, host_id) in failures {
            if let Some(t) = self.tasks.iter_mut().find(|t| t.id == task_id) {
                t.failure = Some(format!(
                    "simulated recovery failure of host {host_id} (fail: recover)"
                ));
            }
        }
    }

    fn host(&self, id: &str) -> Option<&HostState> {
        self.hosts.iter().find(|h| h.spec.id == id)
    }

    fn host_mut(&mut self, id: &str) -> Option<&mut HostState> {
        self.hosts.iter_mut().find(|h| h.spec.id == id)
    }

    fn new_task(&mut self, host_id: &str, kind: &'static str) -> String {
        self.next_task += 1;
        let id = format!("sim-task-{}", self.next_task);
        self.tasks.push(Task {
            id: id.clone(),
            host_id: host_id.into(),
            kind,
            created_at: Utc::now(),
            failure: None,
        });
        id
    }

    fn record(
        &mut self,
        action: SimAction,
        host_id: &str,
        purpose: Option<Purpose>,
        instance_id: Option<String>,
        accepted: bool,
    ) {
        self.calls.push(SimCall {
            action,
            host_id: host_id.into(),
            purpose,
            instance_id,
            accepted,
            at: Utc::now(),
        });
    }
}

fn advance_instance(
    i: &mut SimInstance,
    spec: &SimHost,
    config: &SimulatorConfig,
    now: Instant,
    next_instance: &mut u64,
) {
    loop {
        match i.phase {
            Phase::Recovering {
                until,
                fails,
                then_power_on,
            } if until <= now => {
                i.changed = until;
                if fails {
                    i.phase = Phase::Failed;
                    continue;
                }
                *next_instance += 1;
                i.instance_id = format!("sim-i-{next_instance}");
                i.phase = if then_power_on {
                    Phase::Starting {
                        until: until + spec.power_on_time.unwrap_or(config.power_on_time),
                        fails: spec.fail == Some(Fail::Boot),
                    }
                } else {
                    Phase::PoweredOff
                };
            }
            Phase::Starting { until, fails } if until <= now => {
                i.changed = until;
                if fails {
                    i.error = Some(format!(
                        "simulated boot failure of instance {} (fail: boot)",
                        i.instance_id
                    ));
                    i.phase = Phase::Failed;
                } else {
                    i.phase = Phase::Running;
                }
            }
            _ => return,
        }
    }
}

fn wire_instance(i: &SimInstance, spec: &SimHost) -> BootInstance {
    let (boot_status, power_status) = match i.phase {
        Phase::Recovering { .. } => (BOOT_DOING, ""),
        Phase::PoweredOff => (BOOT_DONE, POWER_OFF),
        Phase::Starting { .. } => (BOOT_DONE, POWER_STARTING),
        Phase::Running => (BOOT_DONE, POWER_RUNNING),
        Phase::Failed if i.instance_id.is_empty() => (BOOT_FAILED, ""),
        Phase::Failed => (BOOT_DONE, POWER_FAILED),
    };
    let ready = !i.instance_id.is_empty();
    BootInstance {
        boot_instance_purpose: hyperbdr::purpose_value(i.purpose).into(),
        instance_id: i.instance_id.clone(),
        boot_status: boot_status.into(),
        power_status: power_status.into(),
        private_ip: spec.private_ip.clone().filter(|_| ready),
        public_ip: spec.public_ip.clone().filter(|_| ready),
        snapshot_id: Some(i.snapshot_id.clone()),
        snapshot_created_at: Some(i.snapshot_time.to_rfc3339()),
        boot_task_id: Some(i.task_id.clone()),
        boot_task_error_description: i.error.clone().filter(|e| !e.is_empty()),
    }
}

fn parse_purpose(raw: &str) -> Option<Purpose> {
    [Purpose::Drill, Purpose::Failover]
        .into_iter()
        .find(|p| hyperbdr::purpose_value(*p) == raw)
}

// ----------------------------------------------------------------------------------------------
// HyperBDR API handlers
// ----------------------------------------------------------------------------------------------

/// The answer to a call with a wrong scene header or token, or the injected error if one is
/// pending; `None`: go on.
fn refusal(sim: &Shared, req: &HttpRequest) -> Option<HttpResponse> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header(SCENE_HEADER).as_deref() != Some(SCENE) {
        return Some(sim.bad_request(&format!("header {SCENE_HEADER}: {SCENE} is required")));
    }
    let mut state = sim.lock();
    let now = Instant::now();
    let valid = header(TOKEN_HEADER)
        .and_then(|t| state.tokens.get(&t).copied())
        .is_some_and(|expires| expires > now);
    if !valid {
        return Some(sim.error(
            401,
            TOKEN_INVALID_CODE,
            "token expired or invalid",
            "log in again",
        ));
    }
    let injected = state.fail_next.take();
    drop(state);
    injected.map(|e| sim.error(e.status, &e.code, &e.title, &e.error))
}

macro_rules! authorized {
    ($sim:expr, $req:expr) => {
        if let Some(response) = refusal(&$sim, &$req) {
            return response;
        }
    };
}

async fn login(sim: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if req
        .headers()
        .get(SCENE_HEADER)
        .and_then(|v| v.to_str().ok())
        != Some(SCENE)
    {
        return sim.bad_request(&format!("header {SCENE_HEADER}: {SCENE} is required"));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut state = sim.lock();
    if field("username") != state.config.username || field("password") != state.config.password {
        return sim.error(
            400,
            LOGIN_FAILED_CODE,
            "Login failed",
            "username or password is incorrect",
        );
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let expires = Instant::now() + state.config.token_ttl;
    state.tokens.insert(token.clone(), expires);
    state.logins += 1;
    drop(state);
    sim.ok(json!({"token": token, "refresh_token": "", "roles": "admin"}))
}

fn host_summary(h: &HostState) -> Map<String, Value> {
    let spec = &h.spec;
    let latest = h.snapshots.iter().max_by_key(|(_, t)| *t);
    let newest = h.instances.iter().max_by_key(|i| i.changed);
    let boot_status = newest
        .map(|i| wire_instance(i, spec).boot_status)
        .unwrap_or_else(|| BOOT_NONE.into());
    let mut m = Map::new();
    m.insert("id".into(), json!(spec.id));
    m.insert(
        "name".into(),
        json!(spec.name.as_deref().unwrap_or(&spec.id)),
    );
    m.insert("ip".into(), json!(spec.source_ip));
    m.insert("os_type".into(), json!(spec.os));
    m.insert("status".into(), json!(spec.sync_state));
    m.insert("display_status".into(), json!(spec.sync_state));
    m.insert("boot_status".into(), json!(boot_status));
    m.insert("latest_snapshot_id".into(), json!(latest.map(|s| &s.0)));
    m.insert(
        "latest_snapshot_time".into(),
        json!(latest.map(|s| s.1.to_rfc3339())),
    );
    m
}

#[derive(Deserialize)]
struct HostsQuery {
    page: Option<usize>,
    page_size: Option<usize>,
    ids: Option<String>,
    kw: Option<String>,
}

async fn get_hosts(
    sim: web::Data<Shared>,
    req: HttpRequest,
    query: web::Query<HostsQuery>,
) -> HttpResponse {
    authorized!(sim, req);
    let state = sim.lock();
    let ids: Option<Vec<&str>> = query
        .ids
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::trim).collect());
    let matching: Vec<&HostState> = state
        .hosts
        .iter()
        .filter(|h| {
            ids.as_ref()
                .is_none_or(|ids| ids.contains(&h.spec.id.as_str()))
        })
        .filter(|h| {
            query.kw.as_deref().is_none_or(|kw| {
                h.spec.id.contains(kw) || h.spec.name.as_deref().unwrap_or("").contains(kw)
            })
        })
        .collect();
    let page = query.page.unwrap_or(1).max(1);
    let page_size = query
        .page_size
        .unwrap_or(10)
        .clamp(1, state.config.max_page_size);
    let hosts: Vec<Value> = matching
        .iter()
        .skip((page - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|h| Value::Object(host_summary(h)))
        .collect();
    let total = matching.len();
    drop(state);
    sim.ok(json!({"hosts": hosts, "total": total, "page": page, "page_size": page_size}))
}

#[derive(Deserialize)]
struct DetailQuery {
    host_id: String,
    sheet: Option<String>,
}

async fn get_host_detail(
    sim: web::Data<Shared>,
    req: HttpRequest,
    query: web::Query<DetailQuery>,
) -> HttpResponse {
    authorized!(sim, req);
    let state = sim.lock();
    let Some(h) = state.host(&query.host_id) else {
        drop(state);
        return sim.not_found(&format!("host {} does not exist", query.host_id));
    };
    if query.sheet.as_deref() == Some("snapshot") {
        let snapshots: Vec<Value> = h
            .snapshots
            .iter()
            .map(|(id, t)| json!({"id": id, "name": id, "status": "available", "created_at": t.to_rfc3339()}))
            .collect();
        drop(state);
        return sim.ok(json!({ "snapshots": snapshots }));
    }
    let mut m = host_summary(h);
    let newest = h.instances.iter().max_by_key(|i| i.changed);
    if let Some(i) = newest {
        let w = wire_instance(i, &h.spec);
        m.insert(
            "boot_instance_purpose".into(),
            json!(w.boot_instance_purpose),
        );
        m.insert("boot_task_id".into(), json!(w.boot_task_id));
        m.insert(
            "boot_task_error_description".into(),
            json!(w.boot_task_error_description),
        );
    }
    let instances: Vec<BootInstance> = h
        .instances
        .iter()
        .map(|i| wire_instance(i, &h.spec))
        .collect();
    m.insert("boot_instances".into(), json!(instances));
    drop(state);
    sim.ok(Value::Object(m))
}

#[derive(Deserialize)]
struct BootItem {
    migration_id: String,
    #[serde(default)]
    snapshot_id: Option<String>,
    boot_instance_purpose: String,
    /// HyperBDR boots what it recovers; `false` leaves it powered off (assumed, see hyperbdr.rs).
    #[serde(default = "yes")]
    power_on: bool,
}

fn yes() -> bool {
    true
}

/// Reads `{"<key>": [items]}`.
fn batch<T: serde::de::DeserializeOwned>(body: &[u8], key: &str) -> Result<Vec<T>, String> {
    let mut v: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let items = v
        .get_mut(key)
        .map(Value::take)
        .ok_or_else(|| format!("body: `{key}` is required"))?;
    serde_json::from_value(items).map_err(|e| format!("{key}: {e}"))
}

async fn batch_boot(sim: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    authorized!(sim, req);
    let items: Vec<BootItem> = match batch(&body, "batch_boot") {
        Ok(items) => items,
        Err(e) => return sim.bad_request(&e),
    };
    let mut state = sim.lock();
    state.advance(Instant::now());
    // Every item is checked before any is started: a refused batch changes nothing.
    let mut plans = Vec::new();
    for item in &items {
        let Some(purpose) = parse_purpose(&item.boot_instance_purpose) else {
            drop(state);
            return sim.bad_request(&format!(
                "boot_instance_purpose `{}` is not drill or failover",
                item.boot_instance_purpose
            ));
        };
        let Some(h) = state.host(&item.migration_id) else {
            drop(state);
            return sim.not_found(&format!("host {} does not exist", item.migration_id));
        };
        // A failed instance does not stand in the way of a new recovery (it is replaced).
        if let Some(existing) = h
            .instances
            .iter()
            .find(|i| i.purpose == purpose && !matches!(i.phase, Phase::Failed))
        {
            let message = format!(
                "host {} already has a {} instance{}; delete it first",
                item.migration_id,
                item.boot_instance_purpose,
                if existing.instance_id.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", existing.instance_id)
                }
            );
            let host_id = item.migration_id.clone();
            state.record(SimAction::Recover, &host_id, Some(purpose), None, false);
            drop(state);
            return sim.error(400, REFUSED_CODE, "Boot refused", &message);
        }
        let snapshot = match &item.snapshot_id {
            Some(id) => h.snapshots.iter().find(|(s, _)| s == id),
            None => h.snapshots.iter().max_by_key(|(_, t)| *t),
        };
        let Some(snapshot) = snapshot.cloned() else {
            let what = item.snapshot_id.as_deref().unwrap_or("any snapshot");
            let message = format!("host {} has no snapshot {what}", item.migration_id);
            drop(state);
            return sim.bad_request(&message);
        };
        let boot_time = h.spec.boot_time.unwrap_or(state.config.boot_time);
        let fails = h.spec.fail == Some(Fail::Recover);
        plans.push((item, purpose, snapshot, boot_time, fails));
    }
    let now = Instant::now();
    for (item, purpose, (snapshot_id, snapshot_time), boot_time, fails) in plans {
        let task_id = state.new_task(&item.migration_id, "boot");
        let instance = SimInstance {
            purpose,
            instance_id: String::new(),
            phase: Phase::Recovering {
                until: now + boot_time,
                fails,
                then_power_on: item.power_on,
            },
            snapshot_id,
            snapshot_time,
            task_id,
            error: None,
            changed: now,
        };
        if let Some(h) = state.host_mut(&item.migration_id) {
            h.instances
                .retain(|i| i.purpose != purpose || !matches!(i.phase, Phase::Failed));
            h.instances.push(instance);
        }
        state.record(
            SimAction::Recover,
            &item.migration_id,
            Some(purpose),
            None,
            true,
        );
    }
    drop(state);
    sim.ok(json!({"accepted": true}))
}

#[derive(Deserialize)]
struct PowerOnItem {
    migration_id: String,
    boot_instance_purpose: String,
}

async fn batch_power_on(
    sim: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    authorized!(sim, req);
    let items: Vec<PowerOnItem> = match batch(&body, "batch_power_on_instances") {
        Ok(items) => items,
        Err(e) => return sim.bad_request(&e),
    };
    let mut state = sim.lock();
    for item in &items {
        let Some(purpose) = parse_purpose(&item.boot_instance_purpose) else {
            drop(state);
            return sim.bad_request("boot_instance_purpose is not drill or failover");
        };
        let Some(h) = state.host(&item.migration_id) else {
            drop(state);
            return sim.not_found(&format!("host {} does not exist", item.migration_id));
        };
        let refusal = match h.instances.iter().find(|i| i.purpose == purpose) {
            None => Some("has no instance to power on".to_owned()),
            Some(i) => match i.phase {
                Phase::PoweredOff | Phase::Starting { .. } | Phase::Running => None,
                Phase::Recovering { .. } => Some("is still recovering".to_owned()),
                Phase::Failed => Some("has a failed instance".to_owned()),
            },
        };
        if let Some(why) = refusal {
            let message = format!("host {} {why}", item.migration_id);
            let host_id = item.migration_id.clone();
            state.record(SimAction::PowerOn, &host_id, Some(purpose), None, false);
            drop(state);
            return sim.error(400, REFUSED_CODE, "Power-on refused", &message);
        }
    }
    let now = Instant::now();
    let default_time = state.config.power_on_time;
    for item in &items {
        let purpose = parse_purpose(&item.boot_instance_purpose);
        let Some(h) = state.host_mut(&item.migration_id) else {
            continue;
        };
        let time = h.spec.power_on_time.unwrap_or(default_time);
        let fails = h.spec.fail == Some(Fail::Boot);
        let mut instance_id = None;
        if let Some(i) = h.instances.iter_mut().find(|i| Some(i.purpose) == purpose) {
            if matches!(i.phase, Phase::PoweredOff) {
                i.phase = Phase::Starting {
                    until: now + time,
                    fails,
                };
                i.changed = now;
            }
            instance_id = Some(i.instance_id.clone());
        }
        state.record(
            SimAction::PowerOn,
            &item.migration_id,
            purpose,
            instance_id,
            true,
        );
    }
    drop(state);
    sim.ok(json!({"accepted": true}))
}

#[derive(Deserialize)]
struct DeleteItem {
    migration_id: String,
    #[serde(default)]
    instance_id: Option<String>,
}

async fn batch_delete(sim: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    authorized!(sim, req);
    let items: Vec<DeleteItem> = match batch(&body, "batch_delete_instances") {
        Ok(items) => items,
        Err(e) => return sim.bad_request(&e),
    };
    let mut state = sim.lock();
    if let Some(item) = items.iter().find(|i| state.host(&i.migration_id).is_none()) {
        let message = format!("host {} does not exist", item.migration_id);
        drop(state);
        return sim.not_found(&message);
    }
    for item in &items {
        if let Some(h) = state.host_mut(&item.migration_id) {
            // Deleting what is already gone succeeds: clean-up is idempotent.
            h.instances.retain(|i| match &item.instance_id {
                Some(id) => &i.instance_id != id,
                None => false,
            });
        }
        state.record(
            SimAction::Delete,
            &item.migration_id,
            None,
            item.instance_id.clone(),
            true,
        );
    }
    drop(state);
    sim.ok(json!({"accepted": true}))
}

#[derive(Deserialize)]
struct TasksQuery {
    source_id: Option<String>,
}

fn task_status(state: &State, task: &Task) -> &'static str {
    if task.failure.is_some() {
        return "failed";
    }
    let instance = state
        .hosts
        .iter()
        .flat_map(|h| &h.instances)
        .find(|i| i.task_id == task.id);
    match instance.map(|i| &i.phase) {
        Some(Phase::Recovering { .. }) => "running",
        Some(Phase::Failed) => "failed",
        _ => "success",
    }
}

async fn get_tasks(
    sim: web::Data<Shared>,
    req: HttpRequest,
    query: web::Query<TasksQuery>,
) -> HttpResponse {
    authorized!(sim, req);
    let state = sim.lock();
    let tasks: Vec<Value> = state
        .tasks
        .iter()
        .filter(|t| query.source_id.as_ref().is_none_or(|s| &t.host_id == s))
        .map(|t| {
            json!({"id": t.id, "source_id": t.host_id, "type": t.kind,
                   "status": task_status(&state, t), "created_at": t.created_at.to_rfc3339()})
        })
        .collect();
    drop(state);
    let total = tasks.len();
    sim.ok(json!({"tasks": tasks, "total": total}))
}

#[derive(Deserialize)]
struct StepsQuery {
    task_id: String,
}

async fn get_task_steps(
    sim: web::Data<Shared>,
    req: HttpRequest,
    query: web::Query<StepsQuery>,
) -> HttpResponse {
    authorized!(sim, req);
    let state = sim.lock();
    let Some(task) = state.tasks.iter().find(|t| t.id == query.task_id) else {
        drop(state);
        return sim.not_found(&format!("task {} does not exist", query.task_id));
    };
    let status = task_status(&state, task);
    let message = task.failure.clone().unwrap_or_default();
    drop(state);
    sim.ok(json!({"steps": [
        {"id": "step-1", "name": "prepare", "status": "success", "message": ""},
        {"id": "step-2", "name": "create instance", "status": status, "message": message},
    ]}))
}

// ----------------------------------------------------------------------------------------------
// Control endpoints (not HyperBDR's)
// ----------------------------------------------------------------------------------------------

/// `POST /simulator/hosts/{id}`: `{"fail": "recover"|"boot"|null, "boot_time": "2s",
/// "power_on_time": "1s", "sync_state": "...", "private_ip": "...", "public_ip": "..."}`, each
/// optional; applies to recoveries and power-ons started afterwards.
async fn control_host(
    sim: web::Data<Shared>,
    id: web::Path<String>,
    body: web::Json<Map<String, Value>>,
) -> HttpResponse {
    let mut state = sim.lock();
    let Some(h) = state.host_mut(&id) else {
        drop(state);
        return sim.not_found(&format!("host {id} does not exist"));
    };
    let mut spec = h.spec.clone();
    if let Err(e) = patch_host(&mut spec, &body) {
        drop(state);
        return sim.bad_request(&e);
    }
    h.spec = spec;
    drop(state);
    sim.ok(json!({"id": id.as_str()}))
}

fn patch_host(spec: &mut SimHost, body: &Map<String, Value>) -> Result<(), String> {
    let text = |k: &str, v: &Value| -> Result<Option<String>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(format!("{k}: a string or null")),
        }
    };
    for (k, v) in body {
        match k.as_str() {
            "fail" => {
                spec.fail = serde_json::from_value(v.clone())
                    .map_err(|_| "fail: \"recover\", \"boot\" or null".to_owned())?
            }
            "boot_time" => spec.boot_time = text(k, v)?.map(|s| parse_duration(&s)).transpose()?,
            "power_on_time" => {
                spec.power_on_time = text(k, v)?.map(|s| parse_duration(&s)).transpose()?
            }
            "sync_state" => spec.sync_state = text(k, v)?.unwrap_or_else(default_sync_state),
            "private_ip" => spec.private_ip = text(k, v)?,
            "public_ip" => spec.public_ip = text(k, v)?,
            other => return Err(format!("unknown field `{other}`")),
        }
    }
    Ok(())
}

/// `GET /simulator/calls`: every recover / power-on / delete asked for, and the login count.
async fn control_calls(sim: web::Data<Shared>) -> HttpResponse {
    let state = sim.lock();
    let body = json!({"calls": state.calls, "logins": state.logins});
    drop(state);
    HttpResponse::Ok().json(body)
}

/// `POST /simulator/expire-tokens`: every token handed out so far is refused from now on.
async fn control_expire_tokens(sim: web::Data<Shared>) -> HttpResponse {
    let mut state = sim.lock();
    let expired = state.tokens.len();
    state.tokens.clear();
    drop(state);
    HttpResponse::Ok().json(json!({ "expired": expired }))
}

/// `POST /simulator/fail-next`: `{"code","title","error","status"}` (all optional): the next
/// authenticated API call answers this error envelope.
async fn control_fail_next(sim: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    let injected: InjectedError = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => return sim.bad_request(&e.to_string()),
    };
    if StatusCode::from_u16(injected.status).is_err() {
        return sim.bad_request("status: not an HTTP status");
    }
    sim.lock().fail_next = Some(injected);
    HttpResponse::Ok().json(json!({"armed": true}))
}

// ----------------------------------------------------------------------------------------------
// Running it
// ----------------------------------------------------------------------------------------------

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(hyperbdr::LOGIN_PATH, web::post().to(login))
        .route(hyperbdr::HOSTS_PATH, web::get().to(get_hosts))
        .route(hyperbdr::HOST_DETAIL_PATH, web::get().to(get_host_detail))
        .route(hyperbdr::BOOT_PATH, web::post().to(batch_boot))
        .route(hyperbdr::POWER_ON_PATH, web::post().to(batch_power_on))
        .route(hyperbdr::DELETE_PATH, web::post().to(batch_delete))
        .route(hyperbdr::TASKS_PATH, web::get().to(get_tasks))
        .route(hyperbdr::TASK_STEPS_PATH, web::get().to(get_task_steps))
        .route("/simulator/hosts/{id}", web::post().to(control_host))
        .route("/simulator/calls", web::get().to(control_calls))
        .route(
            "/simulator/expire-tokens",
            web::post().to(control_expire_tokens),
        )
        .route("/simulator/fail-next", web::post().to(control_fail_next));
}

/// A simulator serving on the current tokio runtime.
pub struct RunningSimulator {
    addr: SocketAddr,
    handle: ServerHandle,
    shared: Shared,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningSimulator {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every recover / power-on / delete asked for so far.
    pub fn calls(&self) -> Vec<SimCall> {
        self.shared.lock().calls.clone()
    }

    /// How many times `action` was accepted for `host_id`.
    pub fn accepted(&self, action: SimAction, host_id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.action == action && c.host_id == host_id && c.accepted)
            .count()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u64 {
        self.shared.lock().logins
    }

    /// Stops accepting connections and finishes requests in flight.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.server.await;
    }

    /// Serves until the server stops.
    pub async fn wait(self) -> std::io::Result<()> {
        match self.server.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Starts the simulator on `bind` (port 0: a free one) on the current tokio runtime.
pub async fn start(config: SimulatorConfig, bind: SocketAddr) -> std::io::Result<RunningSimulator> {
    config.check().map_err(std::io::Error::other)?;
    let shared = Shared::new(config);
    let app_shared = shared.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_shared.clone()))
            .app_data(web::JsonConfig::default().limit(64 * 1024))
            .configure(routes)
            .default_service(web::to(|sim: web::Data<Shared>| async move {
                sim.not_found("no such API")
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(bind)?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    Ok(RunningSimulator {
        addr,
        handle,
        shared,
        server,
    })
}

/// `dr-orchestrator simulator`: serves until Ctrl-C.
pub fn run_cli(hosts_file: Option<&Path>, bind: SocketAddr) -> Result<(), String> {
    let config = match hosts_file {
        Some(path) => SimulatorConfig::load(path)?,
        None => SimulatorConfig::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let (username, hosts) = (config.username.clone(), config.hosts.len());
        let sim = start(config, bind)
            .await
            .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        println!(
            "HyperBDR simulator on {} ({hosts} hosts; log in as `{username}`; Ctrl-C stops it)",
            sim.url()
        );
        tokio::select! {
            served = async { sim.wait().await } => served.map_err(|e| format!("the simulator failed: {e}")),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_with_units() {
        assert_eq!(parse_duration("150ms").unwrap(), Duration::from_millis(150));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn a_config_file_fills_in_defaults() {
        let c = SimulatorConfig::from_yaml(
            "boot_time: 200ms\nhosts:\n  - id: web\n    private_ip: 127.0.0.2\n    fail: boot\n    snapshots:\n      - {id: s1, age: 10m}\n",
        )
        .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("admin", "simulator")
        );
        assert_eq!(c.boot_time, Duration::from_millis(200));
        let h = &c.hosts[0];
        assert_eq!(
            (h.fail, h.sync_state.as_str()),
            (Some(Fail::Boot), "sync_snapshot_done")
        );
        assert!(SimulatorConfig::from_yaml("hosts: [{id: a}, {id: a}]").is_err());
        let example = include_str!("../../examples/simulator-hosts.yaml");
        let c = SimulatorConfig::from_yaml(example).unwrap();
        assert!(c.hosts.iter().any(|h| h.id == "vm-wordpress-01"));
        assert!(SimulatorConfig::from_yaml("hosts: [{id: a, colour: red}]").is_err());
    }

    #[test]
    fn an_instance_walks_recovering_powered_off_starting_running() {
        let config = SimulatorConfig::default();
        let spec = SimHost::new("h");
        let t0 = Instant::now();
        let mut n = 0;
        let mut i = SimInstance {
            purpose: Purpose::Drill,
            instance_id: String::new(),
            phase: Phase::Recovering {
                until: t0 + Duration::from_secs(1),
                fails: false,
                then_power_on: false,
            },
            snapshot_id: "s".into(),
            snapshot_time: Utc::now(),
            task_id: "t".into(),
            error: None,
            changed: t0,
        };
        advance_instance(&mut i, &spec, &config, t0, &mut n);
        assert_eq!(wire_instance(&i, &spec).boot_status, BOOT_DOING);
        advance_instance(&mut i, &spec, &config, t0 + Duration::from_secs(1), &mut n);
        assert_eq!(
            (
                i.instance_id.as_str(),
                wire_instance(&i, &spec).power_status.as_str()
            ),
            ("sim-i-1", POWER_OFF)
        );
        i.phase = Phase::Starting {
            until: t0 + Duration::from_secs(2),
            fails: true,
        };
        advance_instance(&mut i, &spec, &config, t0 + Duration::from_secs(3), &mut n);
        let w = wire_instance(&i, &spec);
        assert_eq!(
            (w.boot_status.as_str(), w.power_status.as_str()),
            (BOOT_DONE, POWER_FAILED)
        );
        assert!(w
            .boot_task_error_description
            .unwrap()
            .contains("boot failure"));
    }
}
