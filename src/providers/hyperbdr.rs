//! The HyperBDR REST API v2 client: logs in, lists protected hosts, recovers them, powers the
//! recovered instances on and deletes them. The simulator ([`super::simulator`]) answers the same
//! API, so this one client serves both provider kinds.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{
    Instance, InstanceState, ProtectedHost, ProviderError, ProviderResult, Purpose,
    RecoveryProvider, Snapshot,
};

// =================================================================================================
// Mapping: HyperBDR API v2 <-> RecoveryProvider. Every path, field and state this client relies
// on is here.
//
// CERTAIN (seen in oneprolabs/hyperbdrctl, internal/client and internal/app/host, task):
// - Login: POST /api/v2/loginNoImageCaptcha {"username","password"}; the token is `data.token`,
//   sent back as `X-Auth-Token`; every request carries `X-SCENE` (`dr` here) and `X-LANG`.
// - Envelope {code, data, error, title, trace_id}; success codes "", "00000000", "200".
// - hyperbdrctl logs in again once only when a call answers HTTP 401; it knows no envelope code
//   for "token expired", so neither does this client (HTTP 401 is the signal).
// - A missing host answers HTTP 404 (its fixture: code "00003005", title "not found").
// - GET /api/v2/getHosts?page=&page_size=&ids=&kw=... -> data.hosts [{id, name, status,
//   boot_status, os_type, ...}] (page is 1-based).
// - GET /api/v2/getHostDetail?host_id= -> data {id, name, status, task_error_description,
//   boot_status, boot_task_id, boot_task_error_description, ...}; with `sheet=snapshot` ->
//   data.snapshots [{id, name, status, created_at}], created_at RFC 3339 or "YYYY-MM-DD HH:MM:SS";
//   hyperbdrctl boots from the newest when no snapshot is given.
// - Sync states: host_register_done, sync_doing, sync_snapshot_done (done); anything containing
//   "fail" or "error" is a failure.
// - Boot states: not_boot, boot_doing, boot_done, boot_failed; clean states clean_doing,
//   clean_done.
// - POST /api/v2/batchBoot {"batch_boot":[{migration_id, snapshot_id, boot_instance_purpose,
//   cloud_type}]}, migration_id being the host id; "drill" is a purpose hyperbdrctl's tests send.
//   cloud_type is left out (hyperbdrctl leaves out empty fields): the host's boot config decides.
// - POST /api/v2/batchDeleteInstances {"batch_delete_instances":[{migration_id}]}.
// - GET /hypermotion/v1/job/steps?task_id= -> data [..] or data.steps [{message, logs:[{detail,
//   error_reason, traceback}]}]: where a failed task says why. GET /api/v2/getTasks?source_id=
//   lists a host's tasks (not needed by this client).
//
// ASSUMED (not in hyperbdrctl; the simulator implements exactly this):
// - getHosts answers `data.total` (all matching hosts); without it the client reads pages until
//   one comes back empty. The server may cap page_size, so a short page does not mean the end.
// - A host in the list carries `ip` (its production address) and `latest_snapshot_id` /
//   `latest_snapshot_time`; `hosts()` reads those instead of one snapshot call per host.
// - "failover" is the boot_instance_purpose of a failover.
// - batchBoot with `power_on: false` leaves the instance created and powered off; a separate
//   POST /api/v2/batchPowerOnInstances {"batch_power_on_instances":[{migration_id,
//   boot_instance_purpose}]} boots it (named after batchDeleteInstances). A HyperBDR without it
//   answers 404, which `power_on` reports as an API error naming the missing call.
// - getHostDetail lists a host's recovered instances under `boot_instances`, one per purpose,
//   each a [`BootInstance`] (instance id, addresses, snapshot, power state). When the list is
//   missing the host-level boot_status/boot_task_* fields are read as the instance of the
//   purpose in `boot_instance_purpose`.
// - A host whose recovery for a purpose failed may be recovered again for it (the failed
//   instance is replaced); one that is under way or done is refused until deleted.
// - A batchDeleteInstances item may carry `instance_id` to delete that instance only; deleting
//   an instance that is gone answers success or 404, both Ok here.
// =================================================================================================

pub const LOGIN_PATH: &str = "/api/v2/loginNoImageCaptcha";
pub const HOSTS_PATH: &str = "/api/v2/getHosts";
pub const HOST_DETAIL_PATH: &str = "/api/v2/getHostDetail";
pub const BOOT_PATH: &str = "/api/v2/batchBoot";
pub const POWER_ON_PATH: &str = "/api/v2/batchPowerOnInstances";
pub const DELETE_PATH: &str = "/api/v2/batchDeleteInstances";
pub const TASKS_PATH: &str = "/api/v2/getTasks";
pub const TASK_STEPS_PATH: &str = "/hypermotion/v1/job/steps";

pub const TOKEN_HEADER: &str = "X-Auth-Token";
pub const SCENE_HEADER: &str = "X-SCENE";
pub const SCENE: &str = "dr";
pub const LANG_HEADER: &str = "X-LANG";

pub const SUCCESS_CODES: [&str; 3] = ["", "00000000", "200"];
pub const NOT_FOUND_CODE: &str = "00003005";

pub const SYNC_DONE: &str = "sync_snapshot_done";
pub const BOOT_NONE: &str = "not_boot";
pub const BOOT_DOING: &str = "boot_doing";
pub const BOOT_DONE: &str = "boot_done";
pub const BOOT_FAILED: &str = "boot_failed";
pub const CLEAN_DOING: &str = "clean_doing";
pub const CLEAN_DONE: &str = "clean_done";

/// Power states of a booted instance (assumed names).
pub const POWER_OFF: &str = "off";
pub const POWER_STARTING: &str = "starting";
pub const POWER_RUNNING: &str = "running";
pub const POWER_FAILED: &str = "failed";

/// Hosts asked for per getHosts page (the server may answer fewer).
pub const PAGE_SIZE: usize = 50;
/// A bound on pages read, against a server that never stops answering.
const MAX_PAGES: usize = 1000;
/// Largest response body read.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// `boot_instance_purpose` for each purpose ("drill" certain, "failover" assumed).
pub fn purpose_value(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Drill => "drill",
        Purpose::Failover => "failover",
    }
}

/// Whether replication is good enough to recover from.
pub fn is_protected(sync_state: &str) -> bool {
    sync_state == SYNC_DONE
}

/// Our state of an instance from its boot and power states; `None`: no instance (not booted, or
/// cleaned up).
pub fn instance_state(boot_status: &str, power_status: &str) -> Option<InstanceState> {
    match boot_status {
        BOOT_NONE | CLEAN_DONE | "" => None,
        BOOT_DOING => Some(InstanceState::Recovering),
        BOOT_FAILED => Some(InstanceState::Failed),
        CLEAN_DOING => Some(InstanceState::Deleting),
        BOOT_DONE => Some(match power_status {
            POWER_STARTING => InstanceState::Starting,
            POWER_RUNNING => InstanceState::Running,
            POWER_FAILED => InstanceState::Failed,
            _ => InstanceState::PoweredOff,
        }),
        other if is_failure(other) => Some(InstanceState::Failed),
        _ => Some(InstanceState::Recovering),
    }
}

fn is_failure(status: &str) -> bool {
    let s = status.to_ascii_lowercase();
    s.contains("fail") || s.contains("error")
}

/// One recovered instance in getHostDetail's `boot_instances` (assumed shape, see Mapping).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BootInstance {
    pub boot_instance_purpose: String,
    #[serde(default)]
    pub instance_id: String,
    pub boot_status: String,
    #[serde(default)]
    pub power_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_task_error_description: Option<String>,
}

/// HyperBDR's timestamps: RFC 3339, or "YYYY-MM-DD HH:MM:SS" taken as UTC.
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

// ----------------------------------------------------------------------------------------------
// The envelope
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct Envelope {
    #[serde(default)]
    code: Value,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    error: Value,
    #[serde(default)]
    title: Value,
    #[serde(default)]
    trace_id: Value,
}

impl Envelope {
    fn code(&self) -> String {
        text(&self.code)
    }

    fn is_success(&self) -> bool {
        SUCCESS_CODES.contains(&self.code().as_str())
    }

    /// "title: error (code X, trace_id Y)", leaving out what is empty.
    fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let title = text(&self.title);
        if !title.is_empty() {
            parts.push(title);
        }
        let error = text(&self.error);
        if !error.is_empty() && !parts.contains(&error) {
            parts.push(error);
        }
        let mut s = parts.join(": ");
        let mut ids = Vec::new();
        let code = self.code();
        if !code.is_empty() {
            ids.push(format!("code {code}"));
        }
        let trace = text(&self.trace_id);
        if !trace.is_empty() {
            ids.push(format!("trace_id {trace}"));
        }
        if !ids.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!("({})", ids.join(", ")));
        }
        truncate(s, 1000)
    }
}

/// A JSON value as text: strings as they are, null as empty, the rest as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(o) if o.is_empty() => String::new(),
        other => other.to_string(),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// How one call ended, before the retry-after-login decision.
#[derive(Debug)]
enum CallError {
    /// HTTP 401: the token is expired or invalid.
    Unauthorized(String),
    Provider(ProviderError),
}

impl From<ProviderError> for CallError {
    fn from(e: ProviderError) -> Self {
        CallError::Provider(e)
    }
}

/// Turns an HTTP status and body into the envelope's `data` or an error.
fn parse_response(status: u16, body: &[u8]) -> Result<Value, CallError> {
    let envelope = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .and_then(|v| serde_json::from_value::<Envelope>(v).ok());
    let what = |fallback: String| match &envelope {
        Some(e) if !e.describe().is_empty() => format!("HyperBDR: {}", e.describe()),
        _ => fallback,
    };
    if status == 401 {
        return Err(CallError::Unauthorized(what("HTTP 401".into())));
    }
    if status == 404 {
        return Err(ProviderError::NotFound(what("HTTP 404".into())).into());
    }
    match envelope {
        None if status >= 500 => {
            Err(ProviderError::Unreachable(format!("HyperBDR answered HTTP {status}")).into())
        }
        None if !(200..300).contains(&status) => {
            Err(ProviderError::Api(format!("HyperBDR answered HTTP {status}")).into())
        }
        None => Err(ProviderError::Api(
            "HyperBDR answered something that is not a JSON envelope".into(),
        )
        .into()),
        Some(e) if !e.is_success() || !(200..300).contains(&status) => {
            let mut m = format!("HyperBDR: {}", e.describe());
            if !(200..300).contains(&status) {
                m.push_str(&format!(" [HTTP {status}]"));
            }
            Err(ProviderError::Api(m).into())
        }
        Some(e) => Ok(e.data),
    }
}

// ----------------------------------------------------------------------------------------------
// The client
// ----------------------------------------------------------------------------------------------

/// Where HyperBDR is and how to log in.
#[derive(Clone)]
pub struct HyperBdrConfig {
    pub base_url: url::Url,
    pub username: String,
    pub password: Zeroizing<String>,
    pub tls_verify: bool,
    /// PEM certificate(s) to trust besides the usual roots (a console with a private CA).
    pub ca_certificate: Option<String>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl fmt::Debug for HyperBdrConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperBdrConfig")
            .field("base_url", &self.base_url.as_str())
            .field("username", &self.username)
            .field("password", &"***")
            .field("tls_verify", &self.tls_verify)
            .field("ca_certificate", &self.ca_certificate.is_some())
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A HyperBDR client; clones share the connection pool and the token.
#[derive(Clone)]
pub struct Client {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    config: HyperBdrConfig,
    http: reqwest::Client,
    /// The current token; the lock also makes concurrent callers log in once.
    token: tokio::sync::Mutex<Option<Zeroizing<String>>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.config.base_url.as_str())
            .finish_non_exhaustive()
    }
}

enum Method {
    Get,
    Post,
}

impl Client {
    pub fn new(config: HyperBdrConfig) -> Result<Client, ProviderError> {
        if !matches!(config.base_url.scheme(), "http" | "https") {
            return Err(ProviderError::Api(format!(
                "HyperBDR URL must be http or https, not {}",
                config.base_url.scheme()
            )));
        }
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.ca_certificate {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ProviderError::Api(format!("the CA certificate is not PEM: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            // An API call never redirects; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(!config.tls_verify)
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| ProviderError::Api(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: std::sync::Arc::new(Inner {
                config,
                http,
                token: tokio::sync::Mutex::new(None),
            }),
        })
    }

    pub fn base_url(&self) -> &url::Url {
        &self.inner.config.base_url
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> url::Url {
        let base = &self.inner.config.base_url;
        let mut u = base.clone();
        u.set_path(&format!("{}{}", base.path().trim_end_matches('/'), path));
        u.set_query(None);
        if !query.is_empty() {
            u.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        u
    }

    /// One HTTP exchange; `token` None for the login itself.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Value, CallError> {
        let url = self.url(path, query);
        let mut request = match method {
            Method::Get => self.inner.http.get(url),
            Method::Post => self.inner.http.post(url),
        }
        .header(reqwest::header::ACCEPT, "application/json")
        .header(SCENE_HEADER, SCENE)
        .header(LANG_HEADER, "en");
        if let Some(token) = token {
            request = request.header(TOKEN_HEADER, token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(path, &e))?;
        let status = response.status().as_u16();
        let body = read_bounded(response).await.map_err(|e| match e {
            Bounded::TooLarge => ProviderError::Api(format!(
                "HyperBDR's answer to {path} is larger than {} MiB",
                MAX_RESPONSE / (1024 * 1024)
            )),
            Bounded::Transport(e) => self.transport_error(path, &e),
        })?;
        parse_response(status, &body)
    }

    /// A transport failure, without the URL's query (reqwest's text quotes the URL).
    fn transport_error(&self, path: &str, e: &reqwest::Error) -> ProviderError {
        let base = self.inner.config.base_url.as_str().trim_end_matches('/');
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            format!("cannot connect ({})", root_cause(e))
        } else {
            root_cause(e)
        };
        ProviderError::Unreachable(format!("HyperBDR at {base} ({path}): {why}"))
    }

    async fn login(&self) -> ProviderResult<Zeroizing<String>> {
        let config = &self.inner.config;
        // The body holds the password: it is never logged, nor put into an error.
        let body = json!({
            "username": config.username,
            "password": config.password.as_str(),
        });
        let data = match self
            .send(&Method::Post, LOGIN_PATH, &[], Some(&body), None)
            .await
        {
            Ok(data) => data,
            Err(CallError::Unauthorized(m)) => return Err(ProviderError::Auth(m)),
            Err(CallError::Provider(ProviderError::Api(m) | ProviderError::NotFound(m))) => {
                return Err(ProviderError::Auth(m))
            }
            Err(CallError::Provider(e)) => return Err(e),
        };
        match data.get("token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => Ok(Zeroizing::new(t.to_owned())),
            _ => Err(ProviderError::Auth(
                "HyperBDR's login answer holds no token".into(),
            )),
        }
    }

    /// The current token, logging in when there is none.
    async fn token(&self) -> ProviderResult<Zeroizing<String>> {
        let mut slot = self.inner.token.lock().await;
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let t = self.login().await?;
        *slot = Some(t.clone());
        Ok(t)
    }

    /// A new token after `stale` was refused (unless another caller already replaced it).
    async fn relogin(&self, stale: &str) -> ProviderResult<Zeroizing<String>> {
        let mut slot = self.inner.token.lock().await;
        if let Some(t) = slot.as_ref() {
            if t.as_str() != stale {
                return Ok(t.clone());
            }
        }
        *slot = None;
        let t = self.login().await?;
        *slot = Some(t.clone());
        Ok(t)
    }

    /// An authenticated call; logs in again once if the token is refused.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> ProviderResult<Value> {
        let token = self.token().await?;
        match self.send(&method, path, query, body, Some(&token)).await {
            Ok(v) => return Ok(v),
            Err(CallError::Provider(e)) => return Err(e),
            Err(CallError::Unauthorized(_)) => {}
        }
        tracing::info!(path, "HyperBDR refused the token; logging in again");
        let token = self.relogin(&token).await?;
        match self.send(&method, path, query, body, Some(&token)).await {
            Ok(v) => Ok(v),
            Err(CallError::Provider(e)) => Err(e),
            Err(CallError::Unauthorized(m)) => Err(ProviderError::Auth(format!(
                "a fresh token was refused: {m}"
            ))),
        }
    }

    /// One getHosts page: the hosts and the total when the server says it.
    async fn hosts_page(&self, page: usize) -> ProviderResult<(Vec<Value>, Option<usize>)> {
        let query = [
            ("page", page.to_string()),
            ("page_size", PAGE_SIZE.to_string()),
        ];
        let data = self.call(Method::Get, HOSTS_PATH, &query, None).await?;
        let hosts = match data.get("hosts") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(ProviderError::Api("getHosts: `hosts` is not a list".into())),
        };
        let total = data
            .get("total")
            .and_then(Value::as_u64)
            .map(|t| t as usize);
        Ok((hosts, total))
    }

    async fn detail(&self, host_id: &str) -> ProviderResult<Value> {
        self.call(
            Method::Get,
            HOST_DETAIL_PATH,
            &[("host_id", host_id.to_owned())],
            None,
        )
        .await
    }

    async fn snapshots(&self, host_id: &str) -> ProviderResult<Vec<Snapshot>> {
        let data = self
            .call(
                Method::Get,
                HOST_DETAIL_PATH,
                &[
                    ("host_id", host_id.to_owned()),
                    ("sheet", "snapshot".into()),
                ],
                None,
            )
            .await?;
        Ok(snapshots_from(&data))
    }

    /// Why a task failed, from its steps (newest message first); None when it does not say.
    async fn task_error(&self, task_id: &str) -> Option<String> {
        let data = self
            .call(
                Method::Get,
                TASK_STEPS_PATH,
                &[("task_id", task_id.to_owned())],
                None,
            )
            .await
            .ok()?;
        step_error(&data)
    }
}

enum Bounded {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, Bounded> {
    if response.content_length().unwrap_or(0) > MAX_RESPONSE as u64 {
        return Err(Bounded::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Bounded::Transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(Bounded::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The innermost cause of a reqwest error (the outer ones quote the URL).
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A protected host from a getHosts item or getHostDetail's data.
fn host_from(v: &Value) -> ProviderResult<ProtectedHost> {
    let id = str_field(v, "id")
        .ok_or_else(|| ProviderError::Api("HyperBDR listed a host without an id".into()))?;
    let sync_state = str_field(v, "status").unwrap_or_default();
    let latest_snapshot = match (
        str_field(v, "latest_snapshot_id"),
        str_field(v, "latest_snapshot_time").and_then(|t| parse_time(&t)),
    ) {
        (Some(id), Some(taken_at)) => Some(Snapshot { id, taken_at }),
        _ => None,
    };
    Ok(ProtectedHost {
        name: str_field(v, "name").unwrap_or_else(|| id.clone()),
        id,
        source_ip: str_field(v, "ip"),
        os: str_field(v, "os_type"),
        protected: is_protected(&sync_state),
        sync_state,
        latest_snapshot,
    })
}

/// Snapshots from `getHostDetail?sheet=snapshot`, newest first, those without a time left out.
fn snapshots_from(data: &Value) -> Vec<Snapshot> {
    let items = match data {
        Value::Array(a) => a.as_slice(),
        _ => data
            .get("snapshots")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default(),
    };
    let mut snapshots: Vec<Snapshot> = items
        .iter()
        .filter(|s| !str_field(s, "status").is_some_and(|st| is_failure(&st)))
        .filter_map(|s| {
            let taken_at = str_field(s, "created_at")
                .or_else(|| str_field(s, "updated_at"))
                .and_then(|t| parse_time(&t))?;
            Some(Snapshot {
                id: str_field(s, "id")?,
                taken_at,
            })
        })
        .collect();
    snapshots.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.id.cmp(&a.id)));
    snapshots
}

/// The host's instance for `purpose` from getHostDetail's data.
fn boot_instance(detail: &Value, purpose: Purpose) -> ProviderResult<Option<BootInstance>> {
    let want = purpose_value(purpose);
    if let Some(list) = detail.get("boot_instances").filter(|v| !v.is_null()) {
        let list: Vec<BootInstance> = serde_json::from_value(list.clone()).map_err(|e| {
            ProviderError::Api(format!("getHostDetail: unexpected boot_instances: {e}"))
        })?;
        return Ok(list.into_iter().find(|i| i.boot_instance_purpose == want));
    }
    // Without the list: the host-level boot fields, if they are for this purpose.
    if str_field(detail, "boot_instance_purpose").as_deref() != Some(want) {
        return Ok(None);
    }
    Ok(Some(BootInstance {
        boot_instance_purpose: want.to_owned(),
        instance_id: str_field(detail, "instance_id").unwrap_or_default(),
        boot_status: str_field(detail, "boot_status").unwrap_or_default(),
        power_status: str_field(detail, "power_status").unwrap_or_default(),
        boot_task_id: str_field(detail, "boot_task_id"),
        boot_task_error_description: str_field(detail, "boot_task_error_description"),
        ..BootInstance::default()
    }))
}

fn instance_from(host_id: &str, b: BootInstance) -> Option<Instance> {
    let state = instance_state(&b.boot_status, &b.power_status)?;
    let error = if state == InstanceState::Failed {
        b.boot_task_error_description.filter(|e| !e.is_empty())
    } else {
        None
    };
    Some(Instance {
        host_id: host_id.to_owned(),
        instance_id: b.instance_id,
        state,
        private_ip: b.private_ip.filter(|s| !s.is_empty()),
        public_ip: b.public_ip.filter(|s| !s.is_empty()),
        snapshot_time: b.snapshot_created_at.as_deref().and_then(parse_time),
        snapshot_id: b.snapshot_id.filter(|s| !s.is_empty()),
        error,
    })
}

/// The newest message of a task's steps (hyperbdrctl reads them the same way).
fn step_error(data: &Value) -> Option<String> {
    let steps = match data {
        Value::Array(a) => a,
        _ => data.get("steps")?.as_array()?,
    };
    for step in steps.iter().rev() {
        if let Some(m) = str_field(step, "message") {
            return Some(m);
        }
        let Some(logs) = step.get("logs").and_then(Value::as_array) else {
            continue;
        };
        for log in logs.iter().rev() {
            let parts: Vec<String> = ["detail", "error_reason", "traceback"]
                .iter()
                .filter_map(|k| str_field(log, k))
                .collect();
            if !parts.is_empty() {
                return Some(parts.join(" - "));
            }
        }
    }
    None
}

#[async_trait::async_trait]
impl RecoveryProvider for Client {
    async fn test(&self) -> ProviderResult<String> {
        let (first, total) = self.hosts_page(1).await?;
        let count = match total {
            Some(t) => t.to_string(),
            None if first.len() < PAGE_SIZE => first.len().to_string(),
            None => format!("at least {}", first.len()),
        };
        Ok(format!(
            "HyperBDR at {}, {count} protected hosts",
            self.base_url().as_str().trim_end_matches('/')
        ))
    }

    async fn hosts(&self) -> ProviderResult<Vec<ProtectedHost>> {
        let mut hosts: Vec<ProtectedHost> = Vec::new();
        for page in 1..=MAX_PAGES {
            let (items, total) = self.hosts_page(page).await?;
            if items.is_empty() {
                return Ok(hosts);
            }
            for item in &items {
                let host = host_from(item)?;
                // A host seen twice (the list moved between pages) is listed once.
                if !hosts.iter().any(|h| h.id == host.id) {
                    hosts.push(host);
                }
            }
            if total.is_some_and(|t| hosts.len() >= t) {
                return Ok(hosts);
            }
        }
        Err(ProviderError::Api(format!(
            "getHosts did not end after {MAX_PAGES} pages"
        )))
    }

    async fn host(&self, host_id: &str) -> ProviderResult<ProtectedHost> {
        let detail = self.detail(host_id).await?;
        let mut host = host_from(&detail)?;
        if let Some(newest) = self.snapshots(host_id).await?.into_iter().next() {
            host.latest_snapshot = Some(newest);
        }
        Ok(host)
    }

    async fn recover(
        &self,
        host_id: &str,
        snapshot: Option<&str>,
        purpose: Purpose,
    ) -> ProviderResult<()> {
        let snapshot_id = match snapshot {
            Some(s) => s.to_owned(),
            None => {
                self.snapshots(host_id)
                    .await?
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        ProviderError::Api(format!(
                            "host {host_id} has no snapshot to recover from"
                        ))
                    })?
                    .id
            }
        };
        let body = json!({"batch_boot": [{
            "migration_id": host_id,
            "snapshot_id": snapshot_id,
            "boot_instance_purpose": purpose_value(purpose),
            "power_on": false,
        }]});
        self.call(Method::Post, BOOT_PATH, &[], Some(&body)).await?;
        Ok(())
    }

    async fn instance(&self, host_id: &str, purpose: Purpose) -> ProviderResult<Option<Instance>> {
        let detail = self.detail(host_id).await?;
        let Some(boot) = boot_instance(&detail, purpose)? else {
            return Ok(None);
        };
        let task_id = boot.boot_task_id.clone();
        let Some(mut instance) = instance_from(host_id, boot) else {
            return Ok(None);
        };
        if instance.state == InstanceState::Failed && instance.error.is_none() {
            instance.error = match task_id {
                Some(task) => self.task_error(&task).await,
                None => None,
            }
            .or_else(|| Some(BOOT_FAILED.to_owned()));
        }
        Ok(Some(instance))
    }

    async fn power_on(&self, host_id: &str, purpose: Purpose) -> ProviderResult<()> {
        let body = json!({"batch_power_on_instances": [{
            "migration_id": host_id,
            "boot_instance_purpose": purpose_value(purpose),
        }]});
        match self
            .call(Method::Post, POWER_ON_PATH, &[], Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(ProviderError::NotFound(m)) => Err(ProviderError::Api(format!(
                "this HyperBDR has no {POWER_ON_PATH} (or host {host_id} is unknown): {m}"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn delete_instance(&self, host_id: &str, instance_id: &str) -> ProviderResult<()> {
        let body = json!({"batch_delete_instances": [{
            "migration_id": host_id,
            "instance_id": instance_id,
        }]});
        match self.call(Method::Post, DELETE_PATH, &[], Some(&body)).await {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_and_power_states_map_to_instance_states() {
        use InstanceState::*;
        let cases = [
            (BOOT_NONE, "", None),
            (CLEAN_DONE, "", None),
            (BOOT_DOING, "", Some(Recovering)),
            (BOOT_FAILED, "", Some(Failed)),
            (CLEAN_DOING, "", Some(Deleting)),
            (BOOT_DONE, POWER_OFF, Some(PoweredOff)),
            (BOOT_DONE, "", Some(PoweredOff)),
            (BOOT_DONE, POWER_STARTING, Some(Starting)),
            (BOOT_DONE, POWER_RUNNING, Some(Running)),
            (BOOT_DONE, POWER_FAILED, Some(Failed)),
            ("boot_error", "", Some(Failed)),
        ];
        for (boot, power, want) in cases {
            assert_eq!(instance_state(boot, power), want, "{boot}/{power}");
        }
    }

    #[test]
    fn only_a_finished_snapshot_sync_is_protected() {
        assert!(is_protected("sync_snapshot_done"));
        for s in ["sync_doing", "host_register_done", "sync_failed", ""] {
            assert!(!is_protected(s), "{s}");
        }
    }

    #[test]
    fn a_success_envelope_yields_its_data() {
        let body =
            br#"{"code":"00000000","data":{"token":"t"},"error":null,"title":"","trace_id":"x"}"#;
        let data = parse_response(200, body).unwrap();
        assert_eq!(data["token"], "t");
        assert_eq!(
            parse_response(200, br#"{"code":"200","data":[1]}"#).unwrap(),
            json!([1])
        );
    }

    #[test]
    fn an_error_envelope_quotes_title_error_and_trace_id() {
        let body = br#"{"code":"00010002","data":null,"error":"disk quota","title":"Boot refused","trace_id":"tr-9"}"#;
        let Err(CallError::Provider(ProviderError::Api(m))) = parse_response(200, body) else {
            panic!("not an Api error");
        };
        assert_eq!(
            m,
            "HyperBDR: Boot refused: disk quota (code 00010002, trace_id tr-9)"
        );
        let Err(CallError::Provider(ProviderError::Api(m))) = parse_response(400, body) else {
            panic!("not an Api error");
        };
        assert!(m.ends_with("[HTTP 400]"), "{m}");
    }

    #[test]
    fn http_401_asks_for_a_new_login_and_404_is_not_found() {
        assert!(matches!(
            parse_response(401, br#"{"code":"x","title":"token expired"}"#),
            Err(CallError::Unauthorized(m)) if m.contains("token expired")
        ));
        assert!(matches!(
            parse_response(404, br#"{"code":"00003005","title":"not found"}"#),
            Err(CallError::Provider(ProviderError::NotFound(m))) if m.contains("00003005")
        ));
    }

    #[test]
    fn a_5xx_without_envelope_is_unreachable_and_garbage_is_an_api_error() {
        assert!(matches!(
            parse_response(502, b"<html>bad gateway</html>"),
            Err(CallError::Provider(ProviderError::Unreachable(_)))
        ));
        assert!(matches!(
            parse_response(200, b"<html>"),
            Err(CallError::Provider(ProviderError::Api(_)))
        ));
    }

    #[test]
    fn times_are_read_in_both_formats() {
        let a = parse_time("2024-05-01T10:00:00+02:00").unwrap();
        let b = parse_time("2024-05-01 08:00:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn snapshots_are_newest_first_without_failed_ones() {
        let data = json!({"snapshots": [
            {"id": "s1", "status": "available", "created_at": "2024-05-01 08:00:00"},
            {"id": "s3", "status": "failed", "created_at": "2024-05-03 08:00:00"},
            {"id": "s2", "created_at": "2024-05-02T08:00:00Z"},
            {"id": "s0"},
        ]});
        let ids: Vec<String> = snapshots_from(&data).into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["s2", "s1"]);
    }

    #[test]
    fn the_instance_of_the_purpose_is_read_from_boot_instances_or_host_fields() {
        let detail = json!({"id": "h1", "boot_instances": [
            {"boot_instance_purpose": "failover", "boot_status": "boot_doing"},
            {"boot_instance_purpose": "drill", "boot_status": "boot_done", "power_status": "off",
             "instance_id": "i-1", "private_ip": "10.0.0.5", "snapshot_id": "s1",
             "snapshot_created_at": "2024-05-01 08:00:00"},
        ]});
        let b = boot_instance(&detail, Purpose::Drill).unwrap().unwrap();
        let i = instance_from("h1", b).unwrap();
        assert_eq!(
            (i.state, i.instance_id.as_str(), i.private_ip.as_deref()),
            (InstanceState::PoweredOff, "i-1", Some("10.0.0.5"))
        );
        assert!(i.snapshot_time.is_some());

        let flat = json!({"boot_instance_purpose": "drill", "boot_status": "boot_failed",
                          "boot_task_error_description": "no quota"});
        let i =
            instance_from("h1", boot_instance(&flat, Purpose::Drill).unwrap().unwrap()).unwrap();
        assert_eq!(
            (i.state, i.error.as_deref()),
            (InstanceState::Failed, Some("no quota"))
        );
        assert!(boot_instance(&flat, Purpose::Failover).unwrap().is_none());
    }

    #[test]
    fn a_failed_task_says_why_in_its_newest_step() {
        let data = json!({"steps": [
            {"message": "old"},
            {"logs": [{"detail": "volume", "error_reason": "quota exceeded"}]},
        ]});
        assert_eq!(
            step_error(&data).as_deref(),
            Some("volume - quota exceeded")
        );
        assert_eq!(step_error(&json!([{"message": "m"}])).as_deref(), Some("m"));
    }

    #[test]
    fn the_config_debug_hides_the_password() {
        let c = HyperBdrConfig {
            base_url: "https://bdr.example:10443".parse().unwrap(),
            username: "u".into(),
            password: Zeroizing::new("hunter2".into()),
            tls_verify: true,
            ca_certificate: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
