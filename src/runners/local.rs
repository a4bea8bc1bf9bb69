//! `local_script`: `/bin/sh -c` on the orchestrator's host, in its own process group, so that a
//! timeout or a cancel kills the script and everything it started.

use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::{cancelled, Attempt, LogSink};
use crate::engine::store::Outcome;

/// Lines of the form `::output name=value` set step outputs.
pub const OUTPUT_PREFIX: &str = "::output ";

pub async fn run(mut attempt: Attempt) -> Outcome {
    let script = attempt
        .params
        .get("script")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(Value::Object(env)) = attempt.params.get("env") {
        for (k, v) in env {
            cmd.env(k, v.as_str().unwrap_or_default());
        }
    }
    for (k, v) in &attempt.secret_env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed {
                error: format!("cannot start /bin/sh: {e}"),
                exit_code: None,
                outputs: Map::new(),
            }
        }
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out_task = tokio::spawn(pump(stdout, "stdout", attempt.log.clone(), true));
    let err_task = tokio::spawn(pump(stderr, "stderr", attempt.log.clone(), false));

    let waited = tokio::select! {
        status = child.wait() => Ok(status),
        _ = cancelled(&mut attempt.cancel) => Err("cancelled"),
        _ = tokio::time::sleep_until(attempt.deadline.into()) => Err("timed out"),
    };
    if waited.is_err() {
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    }
    let outputs = out_task.await.unwrap_or_default();
    let _ = err_task.await;
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
    match waited {
        Err("cancelled") => Outcome::Cancelled,
        Err(why) => Outcome::Failed {
            error: format!("{why}: the process group was killed"),
            exit_code: None,
            outputs: kept,
        },
        Ok(Err(e)) => Outcome::Failed {
            error: format!("waiting for the script failed: {e}"),
            exit_code: None,
            outputs: kept,
        },
        Ok(Ok(status)) => {
            let code = status.code();
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
/// bounded); stdout's `::output` lines are collected.
async fn pump(
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
        // Read at most one line, but never more than MAX_LINE bytes at a time.
        let read = read_bounded_line(&mut reader, &mut buf).await;
        match read {
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
