//! `http_request`: one call with reqwest (rustls). TLS is verified unless the step opts out (the
//! log says so), redirects and the body read are bounded, auth comes from a credential, and
//! JSON-pointer outputs are taken from the response.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{cancelled, Attempt};
use crate::engine::store::Outcome;

/// Most of a response body that is read (and kept for outputs).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most of a body that goes into the log.
const LOGGED_BODY: usize = 2048;

fn failed(error: impl Into<String>, outputs: Map<String, Value>) -> Outcome {
    Outcome::Failed {
        error: error.into(),
        exit_code: None,
        outputs,
    }
}

/// A client for one attempt: bounded redirects, TLS verification as the step says.
pub fn client(tls_verify: bool, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .danger_accept_invalid_certs(!tls_verify)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
}

/// Reads at most `MAX_BODY` bytes of a response.
pub async fn bounded_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response failed: {e}"))?
    {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    Ok(body)
}

pub async fn run(mut attempt: Attempt) -> Outcome {
    let p = &attempt.params;
    let method = p.get("method").and_then(Value::as_str).unwrap_or("GET");
    let url = p
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let tls_verify = p.get("tls_verify").and_then(Value::as_bool).unwrap_or(true);
    let left = attempt
        .deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let client = match client(tls_verify, left) {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot build the HTTP client: {e}"), Map::new()),
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return failed(format!("`{method}` is not an HTTP method"), Map::new());
    };
    if !tls_verify {
        attempt
            .log
            .system("TLS certificate verification is OFF for this request (tls_verify: false)")
            .await;
    }
    let mut request = client.request(method.clone(), &url);
    if let Some(Value::Object(headers)) = p.get("headers") {
        for (k, v) in headers {
            request = request.header(k.as_str(), v.as_str().unwrap_or_default());
        }
    }
    if let Some(body) = p.get("body") {
        request = request.json(body);
    }
    if let Some(Value::Object(auth)) = p.get("auth") {
        {
            for (scheme, name) in auth {
                let name = name.as_str().unwrap_or_default();
                let Some(fields) = attempt.credentials.get(name) else {
                    return failed(format!("credential `{name}` was not loaded"), Map::new());
                };
                request = match scheme.as_str() {
                    "bearer" => {
                        request.bearer_auth(fields.get("token").cloned().unwrap_or_default())
                    }
                    _ => request.basic_auth(
                        fields.get("username").cloned().unwrap_or_default(),
                        fields.get("password").cloned(),
                    ),
                };
            }
        }
    }
    attempt.log.system(&format!("{method} {url}")).await;
    let sent = tokio::select! {
        r = request.send() => r,
        _ = cancelled(&mut attempt.cancel) => return Outcome::Cancelled,
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return failed("timed out", Map::new()),
        Err(e) => return failed(format!("the request failed: {e}"), Map::new()),
    };
    let status = response.status().as_u16();
    let body = match bounded_body(response).await {
        Ok(b) => b,
        Err(e) => {
            return failed(
                e,
                json!({"status": status})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )
        }
    };
    let text = String::from_utf8_lossy(&body);
    attempt.log.line("stdout", &format!("HTTP {status}")).await;
    for line in text.chars().take(LOGGED_BODY).collect::<String>().lines() {
        attempt.log.line("stdout", line).await;
    }
    let mut outputs = Map::new();
    outputs.insert("status".into(), json!(status));
    if !tls_verify {
        // Kept with the outputs so that the report shows it.
        outputs.insert("tls_verify".into(), json!(false));
    }
    let json_body: Option<Value> = serde_json::from_slice(&body).ok();
    if let Some(Value::Object(pointers)) = p.get("outputs") {
        for (name, pointer) in pointers {
            let pointer = pointer.as_str().unwrap_or_default();
            match json_body.as_ref().and_then(|b| b.pointer(pointer)) {
                Some(v) => {
                    outputs.insert(name.clone(), v.clone());
                }
                None => {
                    return failed(
                        format!("output `{name}`: the response has nothing at `{pointer}`"),
                        outputs,
                    );
                }
            }
        }
    }
    let expected: Vec<u64> = p
        .get("expected_status")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_else(|| vec![200, 201, 202, 204]);
    if expected.contains(&u64::from(status)) {
        Outcome::Succeeded {
            outputs,
            exit_code: None,
        }
    } else {
        failed(
            format!("HTTP status {status}, expected one of {expected:?}"),
            outputs,
        )
    }
}
