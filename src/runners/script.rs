//! What `local_script` and `remote_script` share: output lines streamed into the log as they
//! come, `::output name=value` lines collected as step outputs, and the exit code judged
//! against the step's expected codes.

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{Attempt, LogSink};
use crate::engine::store::Outcome;

/// Lines of the form `::output name=value` set step outputs.
pub const OUTPUT_PREFIX: &str = "::output ";

/// How a script ended.
pub enum End {
    /// It exited by itself (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It was stopped by a cancel.
    Cancelled,
    /// It was stopped (timeout) or could not be waited for; the text says what happened.
    Stopped(String),
}

/// Turns how a script ended into the step's outcome, keeping only the declared outputs.
pub async fn conclude(attempt: &Attempt, outputs: Map<String, Value>, end: End) -> Outcome {
    let expected: Vec<i64> = attempt
        .params
        .get("expected_exit_codes")
        .and_then(Value::as_array)
        .map(|codes| codes.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_else(|| vec![0]);
    let declared: Vec<&str> = attempt
        .params
        .get("outputs")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut kept = Map::new();
    for (name, value) in outputs {
        if declared.contains(&name.as_str()) {
            kept.insert(name, value);
        } else {
            attempt
                .log
                .system(&format!("ignored undeclared output `{name}`"))
                .await;
        }
    }
    match end {
        End::Cancelled => Outcome::Cancelled,
        End::Stopped(error) => Outcome::Failed {
            error,
            exit_code: None,
            outputs: kept,
        },
        End::Exited(code) => {
            kept.insert("exit_code".into(), json!(code));
            match code {
                Some(c) if expected.contains(&i64::from(c)) => Outcome::Succeeded {
                    outputs: kept,
                    exit_code: Some(c),
                },
                Some(c) => Outcome::Failed {
                    error: format!("exit code {c}, expected one of {expected:?}"),
                    exit_code: Some(c),
                    outputs: kept,
                },
                None => Outcome::Failed {
                    error: "killed by a signal".into(),
                    exit_code: None,
                    outputs: kept,
                },
            }
        }
    }
}

/// Copies a stream line by line into the log (lines over the limit are split, so memory stays
/// bounded); with `outputs`, `::output` lines are collected.
pub async fn pump(
    stream: impl AsyncRead + Unpin,
    name: &'static str,
    log: LogSink,
    outputs: bool,
) -> Map<String, Value> {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut found = Map::new();
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        buf.clear();
        match read_bounded_line(&mut reader, &mut buf).await {
            Ok(0) | Err(_) => return found,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if outputs {
            if let Some((k, v)) = line
                .strip_prefix(OUTPUT_PREFIX)
                .and_then(|rest| rest.split_once('='))
            {
                found.insert(k.trim().to_owned(), Value::String(v.to_owned()));
            }
        }
        log.line(name, line).await;
    }
}

/// Reads at most one line, but never more than `MAX_LINE` bytes at a time.
async fn read_bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = super::logs::MAX_LINE - buf.len();
        let window = &available[..available.len().min(room)];
        if let Some(i) = window.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&window[..=i]);
            reader.consume(i + 1);
            return Ok(buf.len());
        }
        let n = window.len();
        buf.extend_from_slice(window);
        reader.consume(n);
        if buf.len() >= super::logs::MAX_LINE {
            return Ok(buf.len());
        }
    }
}

/// The script's environment: `env` params and injected secrets (secrets win on a clash).
pub fn environment(attempt: &Attempt) -> Vec<(String, String)> {
    let mut vars: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    if let Some(Value::Object(env)) = attempt.params.get("env") {
        for (k, v) in env {
            vars.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
        }
    }
    for (k, v) in &attempt.secret_env {
        vars.insert(k.clone(), v.clone());
    }
    vars.into_iter().collect()
}
