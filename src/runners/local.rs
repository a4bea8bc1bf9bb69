//! `local_script`: `/bin/sh -c` on the orchestrator's host, in its own process group, so that a
//! timeout or a cancel kills the script and everything it started.

use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};
use tokio::process::Command;

use super::script::{conclude, environment, pump, End};
use super::{cancelled, Attempt};
use crate::engine::store::Outcome;

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
    cmd.envs(environment(&attempt));
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
    let end = match waited {
        Err("cancelled") => End::Cancelled,
        Err(why) => End::Stopped(format!("{why}: the process group was killed")),
        Ok(Err(e)) => End::Stopped(format!("waiting for the script failed: {e}")),
        Ok(Ok(status)) => End::Exited(status.code()),
    };
    conclude(&attempt, outputs, end).await
}
