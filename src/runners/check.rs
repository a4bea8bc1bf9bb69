//! `check`: a probe repeated every `interval` until it passes or `until` runs out; every
//! attempt is logged and kept as evidence in the step's outputs. A failed check fails the step,
//! which blocks what depends on it. This build probes `tcp`, `http`, `ping` (the system's) and
//! `sql` (PostgreSQL); `dns` and MySQL come with the rest of the runners.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{cancelled, Attempt};
use crate::domain::duration::Duration as PlanDuration;
use crate::engine::store::Outcome;

/// Evidence kept per check: the first attempts and the last ones.
const EVIDENCE: usize = 20;

fn duration(params: &Value, key: &str, default: u64) -> Duration {
    params
        .get(key)
        .and_then(|v| serde_json::from_value::<PlanDuration>(v.clone()).ok())
        .map_or(Duration::from_secs(default), PlanDuration::std)
}

/// One probe: `Ok(detail)` when it passes, `Err(detail)` when not (yet).
async fn probe(attempt: &Attempt, per_try: Duration) -> Result<String, String> {
    let params = &attempt.params;
    let text = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // A host given as a resource name probes that resource's address.
    let host = attempt
        .resource
        .as_ref()
        .and_then(|r| {
            ["private_ip", "address", "host", "public_ip"]
                .iter()
                .find_map(|k| r.get(*k))
        })
        .and_then(Value::as_str)
        .map_or_else(|| text("host"), str::to_owned);
    match params
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "tcp" => {
            let port = params.get("port").and_then(Value::as_u64).unwrap_or(0);
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
        "http" => {
            let url = text("url");
            let tls_verify = params
                .get("tls_verify")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let client = super::http::client(tls_verify, per_try).map_err(|e| e.to_string())?;
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status().as_u16();
            let body = super::http::bounded_body(response).await?;
            let expected: Option<Vec<u64>> = params
                .get("expected_status")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_u64).collect());
            let status_ok = match &expected {
                Some(list) => list.contains(&u64::from(status)),
                None => (200..400).contains(&status),
            };
            if !status_ok {
                return Err(format!("GET {url}: HTTP {status}"));
            }
            if let Some(needle) = params.get("contains").and_then(Value::as_str) {
                if !String::from_utf8_lossy(&body).contains(needle) {
                    return Err(format!(
                        "GET {url}: HTTP {status}, but the body lacks `{needle}`"
                    ));
                }
            }
            Ok(format!("GET {url}: HTTP {status}"))
        }
        "ping" => ping(&host, per_try).await,
        "sql" => sql(attempt, per_try).await,
        other => Err(format!("this build cannot probe `{other}` checks yet")),
    }
}

/// ICMP echo through the system's `ping` (raw sockets need privileges this service should not
/// hold); the evidence says so.
async fn ping(host: &str, per_try: Duration) -> Result<String, String> {
    if host.is_empty() || host.starts_with('-') {
        return Err(format!("`{host}` is not a host to ping"));
    }
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

/// Runs the check's query against its PostgreSQL database resource: it passes when the query
/// runs and its single value is not false, 0 or NULL (`SELECT 1`, `SELECT NOT pg_is_in_recovery()`).
async fn sql(attempt: &Attempt, per_try: Duration) -> Result<String, String> {
    let db = attempt
        .resource
        .clone()
        .ok_or("the database resource was not loaded")?;
    let field = |k: &str| {
        db.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if field("engine") != "postgresql" {
        return Err(format!(
            "sql checks support PostgreSQL in this build, not `{}`",
            field("engine")
        ));
    }
    let password = db
        .get("credential")
        .and_then(Value::as_str)
        .and_then(|c| attempt.credentials.get(c))
        .and_then(|f| f.get("password").cloned());
    let mut url = url::Url::parse("postgres://localhost/").map_err(|e| e.to_string())?;
    url.set_host(Some(&field("host")))
        .map_err(|e| e.to_string())?;
    let _ = url.set_port(Some(
        db.get("port").and_then(Value::as_u64).unwrap_or(5432) as u16
    ));
    let _ = url.set_username(&field("user"));
    let _ = url.set_password(password.as_deref());
    url.set_path(&field("database"));
    url.query_pairs_mut()
        .append_pair("connect_timeout", &per_try.as_secs().max(1).to_string());
    let query = attempt
        .params
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or("SELECT 1")
        .to_owned();
    let target = format!(
        "{}:{}/{}",
        field("host"),
        url.port().unwrap_or(5432),
        field("database")
    );
    let secret = password.unwrap_or_default();
    let ran = tokio::task::spawn_blocking(move || {
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
    // The driver's message may quote the connection string: never its password.
    .map_err(|e| {
        if secret.is_empty() {
            e
        } else {
            e.replace(&secret, "******")
        }
    })?;
    match ran.as_deref() {
        None | Some("f" | "false" | "0") => Err(format!("{target}: the query returned {ran:?}")),
        Some(v) => Ok(format!("{target}: the query returned {v}")),
    }
}

pub async fn run(attempt: Attempt) -> Outcome {
    let interval = duration(&attempt.params, "interval", 5).max(Duration::from_millis(100));
    let until = Instant::now() + duration(&attempt.params, "until", 300);
    let stop = until.min(attempt.deadline);
    let per_try = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let supported = matches!(
        attempt.params.get("type").and_then(Value::as_str),
        Some("tcp" | "http" | "ping" | "sql")
    );
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
        let (ok, detail) = match &result {
            Ok(d) => (true, d.clone()),
            Err(d) => (false, d.clone()),
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
            json!({"tries": tries, "evidence": evidence})
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        if ok {
            return Outcome::Succeeded {
                outputs: outputs(&evidence),
                exit_code: None,
            };
        }
        if !supported || Instant::now() + interval > stop {
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
