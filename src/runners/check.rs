//! `check`: a probe repeated every `interval` until it passes or `until` runs out; every
//! attempt is logged and kept as evidence in the step's outputs. A failed check fails the step,
//! which blocks what depends on it. Probes: `tcp`, `http` (status, `contains`, `matches`,
//! `json`), `ping` (the system's), `dns` (a fresh resolver each try, so no cache hides a change)
//! and `sql` (PostgreSQL through diesel, MySQL and MariaDB through `mysql_async`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use serde_json::{json, Map, Value};

use super::{cancelled, Attempt};
use crate::domain::duration::Duration as PlanDuration;
use crate::domain::steps::{parse_name_server, regex_error};
use crate::engine::store::Outcome;

/// Evidence kept per check: the first attempts and the last ones.
const EVIDENCE: usize = 20;

/// Longest JSON value quoted in a detail; a pointer may select a large part of the body.
const QUOTE: usize = 200;

fn duration(params: &Value, key: &str, default: u64) -> Duration {
    params
        .get(key)
        .and_then(|v| serde_json::from_value::<PlanDuration>(v.clone()).ok())
        .map_or(Duration::from_secs(default), PlanDuration::std)
}

fn str_param<'a>(params: &'a Value, key: &str) -> Option<&'a str> {
    params.get(key).and_then(Value::as_str)
}

/// Why a probe did not pass. A `settled` miss cannot change by trying again (the check asks
/// for something this build cannot do, or a rendered template is not usable), so the check
/// fails at once instead of polling until `until`.
#[derive(Debug, PartialEq)]
struct Miss {
    detail: String,
    settled: bool,
}

impl Miss {
    fn settled(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            settled: true,
        }
    }

    /// The same miss with its detail put in context.
    fn context(self, wrap: impl FnOnce(String) -> String) -> Self {
        Self {
            detail: wrap(self.detail),
            settled: self.settled,
        }
    }
}

impl From<String> for Miss {
    fn from(detail: String) -> Self {
        Self {
            detail,
            settled: false,
        }
    }
}

impl From<&str> for Miss {
    fn from(detail: &str) -> Self {
        detail.to_owned().into()
    }
}

/// The name of the inventory resource a check acts on: a `sql` check's `database`, or the
/// `host` of a tcp or ping check when it is written as a resource name.
pub fn resource_name(kind: crate::domain::steps::StepKind, params: &Value) -> Option<&str> {
    if kind != crate::domain::steps::StepKind::Check {
        return None;
    }
    let field = match str_param(params, "type") {
        Some("sql") => "database",
        Some("tcp" | "ping") => "host",
        _ => return None,
    };
    str_param(params, field).filter(|name| crate::domain::validation::is_name(name))
}

/// One probe: `Ok(detail)` when it passes, a `Miss` when not (yet).
async fn probe(attempt: &Attempt, per_try: Duration) -> Result<String, Miss> {
    let params = &attempt.params;
    // A host given as a resource name probes that resource's address.
    let host = attempt
        .resource()
        .and_then(|r| {
            ["private_ip", "address", "host", "public_ip"]
                .iter()
                .find_map(|k| r.get(*k))
        })
        .and_then(Value::as_str)
        .or_else(|| str_param(params, "host"))
        .unwrap_or_default();
    if let Some(via) = str_param(params, "via") {
        return from_jump(attempt, via, host, per_try).await;
    }
    match str_param(params, "type").unwrap_or_default() {
        "tcp" => {
            let port = params.get("port").and_then(Value::as_u64).unwrap_or(0);
            Ok(tcp(host, port, per_try).await?)
        }
        "http" => http(params, per_try).await,
        "ping" => Ok(ping(host, per_try).await?),
        "dns" => dns(params, per_try).await,
        "sql" => sql(attempt, per_try).await,
        other => Err(Miss::settled(format!(
            "this build cannot probe `{other}` checks"
        ))),
    }
}

async fn tcp(host: &str, port: u64, per_try: Duration) -> Result<String, String> {
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match tokio::time::timeout(per_try, tokio::net::TcpStream::connect(&target)).await {
        Ok(Ok(_)) => Ok(format!("connected to {target}")),
        Ok(Err(e)) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!("{target}: no answer within {per_try:?}")),
    }
}

/// GET `url`: the status must be accepted, then the body must satisfy `contains`, `matches`
/// and `json`.
async fn http(params: &Value, per_try: Duration) -> Result<String, Miss> {
    let url = str_param(params, "url").unwrap_or_default();
    let tls_verify = params
        .get("tls_verify")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let client = super::http::client(tls_verify, per_try).map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = super::http::bounded_body(response).await?;
    judge_http(params, url, status, &String::from_utf8_lossy(&body))
}

/// The status must be accepted, then the body must satisfy `contains`, `matches` and `json`.
fn judge_http(params: &Value, url: &str, status: u16, body: &str) -> Result<String, Miss> {
    let expected: Option<Vec<u64>> = params
        .get("expected_status")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(Value::as_u64).collect());
    let status_ok = match &expected {
        Some(list) => list.contains(&u64::from(status)),
        None => (200..400).contains(&status),
    };
    if !status_ok {
        return Err(format!("GET {url}: HTTP {status}").into());
    }
    let seen = check_body(params, body)
        .map_err(|miss| miss.context(|why| format!("GET {url}: HTTP {status}, but {why}")))?;
    Ok(format!("GET {url}: HTTP {status}{seen}"))
}

/// The probe run from the jump server `via`, over SSH: tcp opens a `direct-tcpip` channel
/// there; ping, http and dns run the jump server's `ping`, `curl`, and `getent` (or `dig` for
/// a given name server or other record types).
async fn from_jump(
    attempt: &Attempt,
    via: &str,
    host: &str,
    per_try: Duration,
) -> Result<String, Miss> {
    use super::ssh;
    let params = &attempt.params;
    let route = ssh::on_jump(
        attempt.execution,
        via,
        &attempt.inventory,
        &attempt.credentials,
    )
    .map_err(Miss::settled)?;
    let (pool, log) = (&attempt.ssh, &attempt.log);
    // Connecting to the jump server is part of the try.
    let within = per_try + Duration::from_secs(10);
    let wait = per_try.as_secs().max(1);
    let quote = |s: &str| {
        shlex::try_quote(s)
            .map(|q| q.into_owned())
            .map_err(|_| Miss::settled(format!("`{s}` cannot be passed to a shell")))
    };
    let from = format!("from jump server `{via}`");
    match str_param(params, "type").unwrap_or_default() {
        "tcp" => {
            let port = params.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
            pool.connect_from_jump(&route, host, port, log, within)
                .await
                .map(|()| format!("connected to {host}:{port} {from}"))
                .map_err(|e| format!("{host}:{port} {from}: {e}").into())
        }
        "ping" => {
            let command = format!("ping -c 1 -W {wait} -- {}", quote(host)?);
            let (code, out) = pool.capture(&route, &command, log, within).await?;
            let summary = out
                .lines()
                .find(|l| l.contains("time="))
                .unwrap_or_else(|| out.lines().last().unwrap_or("no reply"))
                .trim()
                .to_owned();
            let detail = format!("ping {host} {from}: {summary}");
            if code == Some(0) {
                Ok(detail)
            } else {
                Err(detail.into())
            }
        }
        "http" => {
            let url = str_param(params, "url").unwrap_or_default();
            let insecure = params.get("tls_verify").and_then(Value::as_bool) == Some(false);
            let command = format!(
                "curl -sS --max-time {wait} --max-redirs 5 -L {} -o - -w '\n%{{http_code}}' -- {}",
                if insecure { "-k" } else { "" },
                quote(url)?
            );
            let (code, out) = pool.capture(&route, &command, log, within).await?;
            let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
            match (code, status.trim().parse::<u16>()) {
                (Some(0), Ok(status)) => judge_http(params, url, status, body)
                    .map(|ok| format!("{ok} {from}"))
                    .map_err(|miss| miss.context(|why| format!("{why} ({from})"))),
                (Some(127), _) => Err(Miss::settled(format!("`curl` is not installed on jump server `{via}`"))),
                _ => Err(format!("GET {url} {from}: {}", out.trim()).into()),
            }
        }
        "dns" => {
            let name = str_param(params, "name").unwrap_or_default().trim();
            let record_type = str_param(params, "record_type").unwrap_or("A");
            let command = match (str_param(params, "server"), record_type) {
                (None, "A") => format!("getent ahostsv4 {} | cut -d' ' -f1 | sort -u", quote(name)?),
                (None, "AAAA") => format!("getent ahostsv6 {} | cut -d' ' -f1 | sort -u", quote(name)?),
                (server, _) => {
                    let at = match server.map(|s| s.rsplit_once(':').filter(|(h, _)| !h.contains(':')).unwrap_or((s, "53"))) {
                        Some((ip, port)) => format!("@{} -p {}", quote(ip)?, quote(port)?),
                        None => String::new(),
                    };
                    format!("dig +short +time={wait} +tries=1 {at} -t {} -- {}", quote(record_type)?, quote(name)?)
                }
            };
            let rtype = RecordType::from_str(record_type)
                .map_err(|_| Miss::settled(format!("`{record_type}` is not a DNS record type")))?;
            let (_, out) = pool.capture(&route, &command, log, within).await?;
            let answered: Vec<String> = out
                .lines()
                .map(|l| l.trim().trim_end_matches('.').to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            let query = format!("{name} {record_type} {from}");
            if answered.is_empty() {
                return Err(format!("{query}: no answer").into());
            }
            let listed = answered.join(", ");
            let mut missing = Vec::new();
            for want in params.get("expect").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !answer_holds(rtype, &answered, want)? {
                    missing.push(want);
                }
            }
            if missing.is_empty() {
                Ok(format!("{query}: answered {listed}"))
            } else {
                Err(format!("{query}: answered {listed}, not {}", missing.join(", ")).into())
            }
        }
        other => Err(Miss::settled(format!(
            "`{other}` checks cannot run from a jump server in this build (tcp, ping, http and dns can)"
        ))),
    }
}

/// The body against `contains`, `matches` and `json`: `Ok` with what the JSON pointers held (as
/// evidence), or `Err` with the first expectation it misses.
fn check_body(params: &Value, body: &str) -> Result<String, Miss> {
    if let Some(needle) = str_param(params, "contains") {
        if !body.contains(needle) {
            return Err(format!("the body lacks `{needle}`").into());
        }
    }
    if let Some(pattern) = str_param(params, "matches") {
        // Checked when the step is saved, unless it is a template: then only here.
        let re = regex::Regex::new(pattern).map_err(|e| {
            Miss::settled(format!(
                "`matches` is not a valid regular expression: {}",
                regex_error(&e)
            ))
        })?;
        if !re.is_match(body) {
            return Err(format!("the body does not match `{pattern}`").into());
        }
    }
    let Some(Value::Object(expected)) = params.get("json") else {
        return Ok(String::new());
    };
    let doc: Value =
        serde_json::from_str(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let mut seen = Vec::new();
    for (pointer, want) in expected {
        match doc.pointer(pointer) {
            None => return Err(format!("the JSON body has nothing at `{pointer}`").into()),
            Some(got) if !same_json(got, want) => {
                return Err(
                    format!("`{pointer}` is {}, expected {}", quote(got), quote(want)).into(),
                )
            }
            Some(got) => seen.push(format!("{pointer} = {}", quote(got))),
        }
    }
    Ok(format!("; {}", seen.join(", ")))
}

/// JSON equality, except that numbers compare by value (`3` equals `3.0`).
fn same_json(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

/// A JSON value as text, cut to `QUOTE` characters.
fn quote(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// ICMP echo from this process (surge-ping: an unprivileged ICMP datagram socket where the
/// kernel allows one, else a raw socket); when neither is permitted, the system's `ping`, and
/// the evidence says so.
async fn ping(host: &str, per_try: Duration) -> Result<String, String> {
    if host.is_empty() || host.starts_with('-') {
        return Err(format!("`{host}` is not a host to ping"));
    }
    let ip = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip,
        Err(_) => tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("ping {host}: cannot resolve: {e}"))?
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| format!("ping {host}: the name has no address"))?,
    };
    let config = match ip {
        std::net::IpAddr::V4(_) => surge_ping::Config::default(),
        std::net::IpAddr::V6(_) => surge_ping::Config::builder()
            .kind(surge_ping::ICMP::V6)
            .build(),
    };
    let fallback = match surge_ping::Client::new(&config) {
        Ok(client) => {
            let mut pinger = client
                .pinger(ip, surge_ping::PingIdentifier(rand::random()))
                .await;
            pinger.timeout(per_try);
            return match pinger.ping(surge_ping::PingSequence(0), &[0; 16]).await {
                Ok((_, rtt)) => Ok(format!(
                    "ping {host} ({ip}): ICMP echo reply in {:.2} ms",
                    rtt.as_secs_f64() * 1000.0
                )),
                Err(e) => Err(format!("ping {host} ({ip}): no ICMP echo reply: {e}")),
            };
        }
        Err(e) => e,
    };
    system_ping(host, per_try)
        .await
        .map(|ok| format!("{ok} (ICMP sockets not permitted here: {fallback})"))
        .map_err(|miss| format!("{miss} (ICMP sockets not permitted here: {fallback})"))
}

/// ICMP echo through the system's `ping`, for when this process may not open ICMP sockets.
async fn system_ping(host: &str, per_try: Duration) -> Result<String, String> {
    let wait = per_try.as_secs().max(1).to_string();
    let run = tokio::process::Command::new("ping")
        .args(["-c", "1", "-W", &wait, "--", host])
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(per_try + Duration::from_secs(1), run).await {
        Err(_) => return Err(format!("ping {host}: no answer within {per_try:?}")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("the system `ping` is not installed (Debian: iputils-ping)".into())
        }
        Ok(Err(e)) => return Err(format!("ping {host}: {e}")),
        Ok(Ok(out)) => out,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("time="))
        .unwrap_or("no reply")
        .trim()
        .to_owned();
    if out.status.success() {
        Ok(format!("ping {host} (system ping): {summary}"))
    } else {
        Err(format!("ping {host} (system ping): {summary}"))
    }
}

/// Resolves `name` (type `record_type`, default A) at `server` or the system's name servers. It
/// passes when the answer holds every `expect` value, or without `expect` when there is an
/// answer; the detail lists what was answered either way.
async fn dns(params: &Value, per_try: Duration) -> Result<String, Miss> {
    let name = str_param(params, "name").unwrap_or_default().trim();
    let type_name = str_param(params, "record_type").unwrap_or("A");
    let record_type = RecordType::from_str(type_name)
        .map_err(|_| Miss::settled(format!("`{type_name}` is not a DNS record type")))?;
    let (resolver, asked) = resolver(str_param(params, "server"), per_try)?;
    let query = format!("{name} {type_name} at {asked}");
    // Always fully qualified: search domains from resolv.conf would change what is asked.
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let lookup = tokio::time::timeout(per_try, resolver.lookup(fqdn.as_str(), record_type))
        .await
        .map_err(|_| format!("{query}: no answer within {per_try:?}"))?
        .map_err(|e| format!("{query}: {e}"))?;
    let answered: Vec<String> = lookup
        .answers()
        .iter()
        .filter(|r| r.record_type() == record_type)
        .map(|r| rdata_text(&r.data))
        .collect();
    if answered.is_empty() {
        return Err(format!("{query}: no {type_name} records in the answer").into());
    }
    let listed = answered.join(", ");
    let expected: Vec<&str> = params
        .get("expect")
        .and_then(Value::as_array)
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut missing = Vec::new();
    for want in expected {
        if !answer_holds(record_type, &answered, want)? {
            missing.push(want);
        }
    }
    if missing.is_empty() {
        Ok(format!("{query}: answered {listed}"))
    } else {
        Err(format!("{query}: answered {listed}, not {}", missing.join(", ")).into())
    }
}

/// A resolver built for one probe (its cache dies with it), asking `server` or the name servers
/// of /etc/resolv.conf; never the hosts file. Also returns whom it asks, for the evidence.
fn resolver(server: Option<&str>, per_try: Duration) -> Result<(TokioResolver, String), Miss> {
    let (config, mut options) = match server {
        Some(server) => {
            let addr = parse_name_server(server).ok_or_else(|| {
                Miss::settled(format!(
                    "`{server}` is not a name server address (`ip` or `ip:port`)"
                ))
            })?;
            let mut name_server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut name_server.connections {
                connection.port = addr.port();
            }
            let config = ResolverConfig::from_name_servers(vec![name_server]);
            (config, Default::default())
        }
        None => hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    let asked = match server {
        Some(server) => server.trim().to_owned(),
        None => {
            let ips: Vec<String> = config
                .name_servers()
                .iter()
                .map(|ns| ns.ip.to_string())
                .collect();
            format!("the system resolver ({})", ips.join(", "))
        }
    };
    options.timeout = per_try;
    options.use_hosts_file = ResolveHosts::Never;
    let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| format!("cannot set up a resolver for {asked}: {e}"))?;
    Ok((resolver, asked))
}

/// A record's value as written in `expect`: addresses as they print, names without the final
/// dot, TXT strings joined.
fn rdata_text(data: &RData) -> String {
    match data {
        RData::CNAME(name) => name.to_string().trim_end_matches('.').to_owned(),
        other => other.to_string(),
    }
}

/// Whether the answer holds `want`: addresses compare parsed (`::1` is `0:0::1`), names
/// case-insensitively without the final dot, anything else exactly.
fn answer_holds(record_type: RecordType, answered: &[String], want: &str) -> Result<bool, Miss> {
    match record_type {
        RecordType::A | RecordType::AAAA => {
            let want: IpAddr = want
                .trim()
                .parse()
                .map_err(|_| Miss::settled(format!("`{want}` in `expect` is not an IP address")))?;
            Ok(answered.iter().any(|a| a.parse() == Ok(want)))
        }
        RecordType::CNAME => {
            let want = want.trim().trim_end_matches('.');
            Ok(answered.iter().any(|a| a.eq_ignore_ascii_case(want)))
        }
        _ => Ok(answered.iter().any(|a| a == want)),
    }
}

/// What a sql check connects with: its database resource's attributes and the password of the
/// resource's credential.
struct SqlTarget {
    engine: String,
    host: String,
    port: Option<u16>,
    database: String,
    user: String,
    password: Option<String>,
}

impl SqlTarget {
    fn of(db: &Value, credentials: &BTreeMap<String, BTreeMap<String, String>>) -> Self {
        let field = |k: &str| {
            db.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let password = db
            .get("credential")
            .and_then(Value::as_str)
            .and_then(|c| credentials.get(c))
            .and_then(|f| f.get("password").cloned());
        Self {
            engine: field("engine"),
            host: field("host"),
            port: db
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok()),
            database: field("database"),
            user: field("user"),
            password,
        }
    }

    /// `host:port/database` for the evidence.
    fn label(&self, default_port: u16) -> String {
        format!(
            "{}:{}/{}",
            self.host,
            self.port.unwrap_or(default_port),
            self.database
        )
    }
}

/// Runs the check's query against its database resource (PostgreSQL, MySQL or MariaDB): it
/// passes when the query runs and its single value is not false, 0, NULL or empty
/// (`SELECT 1`, `SELECT NOT pg_is_in_recovery()`, `SELECT @@read_only = 0`).
async fn sql(attempt: &Attempt, per_try: Duration) -> Result<String, Miss> {
    let db = attempt
        .resource()
        .ok_or("the database resource was not loaded")?;
    let target = SqlTarget::of(db, &attempt.credentials);
    let query = str_param(&attempt.params, "query")
        .unwrap_or("SELECT 1")
        .to_owned();
    let (label, value) = match target.engine.as_str() {
        "postgresql" => (
            target.label(5432),
            postgres_value(&target, query, per_try).await,
        ),
        "mysql" | "mariadb" => (
            target.label(3306),
            mysql_value(&target, query, per_try).await,
        ),
        other => {
            return Err(Miss::settled(format!(
            "sql checks run on PostgreSQL, MySQL and MariaDB databases; `{other}` is not supported"
        )))
        }
    };
    // A driver's message may quote what it was given: never the password.
    let secret = target.password.unwrap_or_default();
    let value = value.map_err(|e| {
        let e = if secret.is_empty() {
            e
        } else {
            e.replace(&secret, "******")
        };
        format!("{label}: {e}")
    })?;
    Ok(verdict(&label, value)?)
}

/// PostgreSQL through diesel (libpq) on a blocking thread; libpq's `connect_timeout` bounds the
/// connection.
async fn postgres_value(
    t: &SqlTarget,
    query: String,
    per_try: Duration,
) -> Result<Option<String>, String> {
    let mut url = url::Url::parse("postgres://localhost/").map_err(|e| e.to_string())?;
    url.set_host(Some(&t.host)).map_err(|e| e.to_string())?;
    let _ = url.set_port(Some(t.port.unwrap_or(5432)));
    let _ = url.set_username(&t.user);
    let _ = url.set_password(t.password.as_deref());
    url.set_path(&t.database);
    url.query_pairs_mut()
        .append_pair("connect_timeout", &per_try.as_secs().max(1).to_string());
    tokio::task::spawn_blocking(move || {
        use diesel::prelude::*;
        #[derive(diesel::QueryableByName)]
        struct One {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            v: Option<String>,
        }
        let mut conn = diesel::PgConnection::establish(url.as_str()).map_err(|e| e.to_string())?;
        diesel::sql_query(format!("SELECT ({query})::text AS v"))
            .get_result::<One>(&mut conn)
            .map(|one| one.v)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// MySQL and MariaDB through `mysql_async`, chosen over the synchronous `mysql` crate: with
/// default features off both bring the same protocol crate (`mysql_common`), but `mysql_async`
/// runs on the service's tokio (no blocking thread, and a timeout really stops it) and adds
/// fewer crates (`mysql` brings its own buffered I/O, `io-enum`, `pem` and Windows pipe crates).
/// Built without TLS and with the pure-Rust compression backend, so no OpenSSL; the password
/// never crosses the wire in clear (MySQL's challenge-response login), and a server that
/// requires TLS refuses the probe with its own message. Its `rustls-tls` + `ring` features
/// would add no crate to the tree (reqwest already has them) when database resources grow a
/// TLS setting.
async fn mysql_value(
    t: &SqlTarget,
    query: String,
    per_try: Duration,
) -> Result<Option<String>, String> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(t.host.clone())
        .tcp_port(t.port.unwrap_or(3306))
        .user(Some(t.user.clone()).filter(|u| !u.is_empty()))
        .pass(t.password.clone())
        .db_name(Some(t.database.clone()).filter(|d| !d.is_empty()))
        // Probe the address as written, not a local socket the server might point to.
        .prefer_socket(false);
    let run = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        let row: Option<mysql_async::Row> =
            conn.query_first(query).await.map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        Ok(row.and_then(|r| r.as_ref(0).and_then(mysql_text)))
    };
    tokio::time::timeout(per_try, run)
        .await
        .map_err(|_| format!("no answer within {per_try:?}"))?
}

/// A MySQL value as text (the text protocol sends every non-NULL value as bytes).
fn mysql_text(value: &mysql_async::Value) -> Option<String> {
    use mysql_async::Value as V;
    match value {
        V::NULL => None,
        V::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        V::Int(n) => Some(n.to_string()),
        V::UInt(n) => Some(n.to_string()),
        V::Float(n) => Some(n.to_string()),
        V::Double(n) => Some(n.to_string()),
        other => Some(other.as_sql(false)),
    }
}

/// A sql check passes unless the query's value is NULL (or there is no row), empty, false or
/// zero.
fn verdict(label: &str, value: Option<String>) -> Result<String, String> {
    let Some(value) = value else {
        return Err(format!("{label}: the query returned NULL or no row"));
    };
    let text = value.trim();
    let zero = text.parse::<f64>().is_ok_and(|n| n == 0.0);
    let falsy = ["f", "false"].iter().any(|f| text.eq_ignore_ascii_case(f));
    if text.is_empty() {
        Err(format!("{label}: the query returned an empty value"))
    } else if zero || falsy {
        Err(format!("{label}: the query returned {text}"))
    } else {
        Ok(format!("{label}: the query returned {text}"))
    }
}

pub async fn run(attempt: Attempt) -> Outcome {
    let interval = duration(&attempt.params, "interval", 5).max(Duration::from_millis(100));
    let until = Instant::now() + duration(&attempt.params, "until", 300);
    let stop = until.min(attempt.deadline);
    let per_try = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut cancel = attempt.cancel.clone();
    let mut evidence: Vec<Value> = Vec::new();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let started = chrono::Utc::now();
        let result = tokio::select! {
            r = probe(&attempt, per_try) => r,
            _ = cancelled(&mut cancel) => return Outcome::Cancelled,
        };
        let (ok, settled, detail) = match result {
            Ok(d) => (true, false, d),
            Err(miss) => (false, miss.settled, miss.detail),
        };
        attempt
            .log
            .line(
                "stdout",
                &format!(
                    "try {tries}: {} — {detail}",
                    if ok { "pass" } else { "not yet" }
                ),
            )
            .await;
        let record = json!({"try": tries, "at": started, "passed": ok, "detail": detail});
        if evidence.len() < EVIDENCE {
            evidence.push(record);
        } else {
            evidence[EVIDENCE - 1] = record;
        }
        let outputs = |evidence: &Vec<Value>| -> Map<String, Value> {
            let mut out = json!({"tries": tries, "evidence": evidence});
            if attempt.params.get("tls_verify") == Some(&Value::Bool(false)) {
                // Kept with the outputs so that the report shows it.
                out["tls_verify"] = json!(false);
            }
            out.as_object().cloned().unwrap_or_default()
        };
        if ok {
            return Outcome::Succeeded {
                outputs: outputs(&evidence),
                exit_code: None,
            };
        }
        if settled || Instant::now() + interval > stop {
            return Outcome::Failed {
                error: format!("the check did not pass after {tries} tries: {detail}"),
                exit_code: None,
                outputs: outputs(&evidence),
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancelled(&mut cancel) => return Outcome::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_system_ping_fallback_reaches_loopback_and_says_so() {
        let detail = system_ping("127.0.0.1", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(
            detail.contains("system ping") && detail.contains("time="),
            "{detail}"
        );
    }

    #[test]
    fn a_sql_value_passes_unless_null_empty_false_or_zero() {
        for failing in [
            None,
            Some(""),
            Some("f"),
            Some("FALSE"),
            Some("0"),
            Some("0.00"),
        ] {
            assert!(
                verdict("db", failing.map(str::to_owned)).is_err(),
                "{failing:?}"
            );
        }
        for passing in ["1", "t", "true", "primary", "0.5"] {
            assert!(verdict("db", Some(passing.to_owned())).is_ok(), "{passing}");
        }
    }

    #[test]
    fn dns_answers_compare_addresses_parsed_and_names_without_case_or_final_dot() {
        let v6 = vec!["2001:db8::1".to_owned()];
        assert_eq!(
            answer_holds(RecordType::AAAA, &v6, "2001:0db8:0:0::1"),
            Ok(true)
        );
        assert_eq!(
            answer_holds(RecordType::AAAA, &v6, "2001:db8::2"),
            Ok(false)
        );
        assert!(answer_holds(RecordType::A, &v6, "not-an-ip").is_err());
        let cname = vec!["lb.example.net".to_owned()];
        assert_eq!(
            answer_holds(RecordType::CNAME, &cname, "LB.Example.NET."),
            Ok(true)
        );
        let txt = vec!["v=spf1 -all".to_owned()];
        assert_eq!(
            answer_holds(RecordType::TXT, &txt, "V=SPF1 -all"),
            Ok(false)
        );
    }

    #[test]
    fn an_http_body_is_checked_by_regex_and_by_json_pointer() {
        let params =
            json!({"matches": r"ready \d+/\d+", "json": {"/status": "ok", "/replicas": 3}});
        let body = r#"{"status": "ok", "replicas": 3.0, "note": "ready 3/3"}"#;
        let seen = check_body(&params, body).unwrap();
        assert!(seen.contains("/status = \"ok\""), "{seen}");
        let miss = |body: &str| check_body(&params, body).unwrap_err();
        let body = r#"{"status": "degraded", "replicas": 3, "note": "ready 3/3"}"#;
        assert_eq!(
            miss(body),
            Miss::from("`/status` is \"degraded\", expected \"ok\"")
        );
        assert!(miss("ready 3/3, not JSON").detail.contains("not JSON"));
        assert!(miss(r#"{"note": "starting"}"#)
            .detail
            .contains("does not match"));
    }

    #[test]
    fn a_rendered_regex_that_does_not_compile_fails_the_check_at_once() {
        let miss = check_body(&json!({"matches": "(unclosed"}), "body").unwrap_err();
        assert!(miss.settled, "{miss:?}");
        assert!(miss.detail.contains("unclosed group"), "{miss:?}");
    }
}
