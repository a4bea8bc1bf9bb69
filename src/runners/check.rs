//! `check`: a probe repeated every `interval` until it passes or `until` runs out; every
//! attempt is logged and kept as evidence in the step's outputs. A failed check fails the step,
//! which blocks what depends on it. This build probes `tcp`, `http` and `ping` (the system's);
//! `dns` and `sql` come with the rest of the runners.

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
async fn probe(params: &Value, per_try: Duration) -> Result<String, String> {
    let text = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match params
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "tcp" => {
            let host = text("host");
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
        "ping" => ping(&text("host"), per_try).await,
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

pub async fn run(mut attempt: Attempt) -> Outcome {
    let interval = duration(&attempt.params, "interval", 5).max(Duration::from_millis(100));
    let until = Instant::now() + duration(&attempt.params, "until", 300);
    let stop = until.min(attempt.deadline);
    let per_try = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let supported = matches!(
        attempt.params.get("type").and_then(Value::as_str),
        Some("tcp" | "http" | "ping")
    );
    let mut evidence: Vec<Value> = Vec::new();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let started = chrono::Utc::now();
        let result = tokio::select! {
            r = probe(&attempt.params, per_try) => r,
            _ = cancelled(&mut attempt.cancel) => return Outcome::Cancelled,
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
            _ = cancelled(&mut attempt.cancel) => return Outcome::Cancelled,
        }
    }
}
