//! The execution engine end to end: real PostgreSQL, real processes, one or two engine
//! instances in the test process.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp, TestResponse};

/// Creates a local_script step.
pub async fn script(app: &TestApp, name: &str, script: &str, extra: Value) {
    let mut body = json!({"name": name, "kind": "local_script", "params": {"script": script}});
    if let Value::Object(map) = extra {
        for (k, v) in map {
            if k == "params" {
                for (pk, pv) in v.as_object().unwrap() {
                    body["params"][pk] = pv.clone();
                }
            } else {
                body[k] = v;
            }
        }
    }
    let r = app.post_json("/api/v1/steps", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

pub async fn plan(app: &TestApp, name: &str, steps: Value) {
    let r = app
        .post_json(
            "/api/v1/plans",
            &json!({"name": name, "target_rto": "10m", "steps": steps}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

pub async fn start(app: &TestApp, plan: &str, body: Value) -> TestResponse {
    send(
        app.admin(Method::POST, &format!("/api/v1/plans/{plan}/executions"))
            .json(&body),
    )
    .await
}

pub async fn drill(app: &TestApp, plan: &str) -> String {
    let r = start(app, plan, json!({"mode": "drill"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

/// Polls the execution until `done` says so (or fails the test after `secs`).
pub async fn wait_for(app: &TestApp, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = app.get(&format!("/api/v1/executions/{id}")).await;
        if done(&r.body) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting; last state: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn finished(app: &TestApp, id: &str, secs: u64) -> Value {
    wait_for(app, id, secs, |e| {
        matches!(
            e["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
    .await
}

pub fn step<'a>(execution: &'a Value, key: &str) -> &'a Value {
    execution["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap()
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

pub async fn logs(app: &TestApp, id: &str, step: &str) -> String {
    let mut all = String::new();
    let mut after = 0;
    loop {
        let r = app
            .get(&format!(
                "/api/v1/executions/{id}/logs?step={step}&after={after}&limit=5000"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        for line in r.body["items"].as_array().unwrap() {
            all.push_str(line["data"].as_str().unwrap());
            all.push('\n');
        }
        match r.body["next_after"].as_i64() {
            Some(n) => after = n,
            None => return all,
        }
    }
}

/// True while a process whose command line contains `needle` runs.
pub fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diamond_runs_in_dependency_order_with_its_branches_concurrent() {
    let app = TestApp::spawn_with_engine(4).await;
    script(&app, "quick", "echo start", json!({})).await;
    script(&app, "slow", "sleep 1", json!({})).await;
    plan(
        &app,
        "diamond",
        json!([
            {"key": "a", "step": "quick"},
            {"key": "b", "step": "slow", "depends_on": ["a"]},
            {"key": "c", "step": "slow", "depends_on": ["a"]},
            {"key": "d", "step": "quick", "depends_on": ["b", "c"]},
        ]),
    )
    .await;
    let id = drill(&app, "diamond").await;
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let (a, b, c, d) = (step(&e, "a"), step(&e, "b"), step(&e, "c"), step(&e, "d"));
    assert!(
        at(&b["started_at"]) >= at(&a["finished_at"])
            && at(&c["started_at"]) >= at(&a["finished_at"])
    );
    assert!(
        at(&b["started_at"]) < at(&c["finished_at"])
            && at(&c["started_at"]) < at(&b["finished_at"]),
        "b and c overlap: {e}"
    );
    assert!(
        at(&d["started_at"]) >= at(&b["finished_at"])
            && at(&d["started_at"]) >= at(&c["finished_at"])
    );
}

#[tokio::test]
async fn a_failed_attempt_is_retried_then_succeeds() {
    let app = TestApp::spawn_with_engine(2).await;
    let marker = std::env::temp_dir().join(format!("dro-retry-{}", uuid::Uuid::new_v4().simple()));
    let body = format!(
        "if [ -f {m} ]; then echo second; else touch {m}; echo first >&2; exit 3; fi",
        m = marker.display()
    );
    script(
        &app,
        "flaky",
        &body,
        json!({"retry": {"max_attempts": 3, "delay": "1s"}}),
    )
    .await;
    plan(&app, "retrying", json!([{"key": "f", "step": "flaky"}])).await;
    let id = drill(&app, "retrying").await;
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "f")["attempt"], 2);
    let text = logs(&app, &id, "f").await;
    assert!(
        text.contains("first") && text.contains("second") && text.contains("exit code 3"),
        "{text}"
    );
    let _ = std::fs::remove_file(marker);
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group_within_a_second() {
    let app = TestApp::spawn_with_engine(2).await;
    script(
        &app,
        "sleeper",
        "sleep 6001 & sleep 6001; echo never",
        json!({"timeout": "2s"}),
    )
    .await;
    plan(&app, "slowpoke", json!([{"key": "s", "step": "sleeper"}])).await;
    let id = drill(&app, "slowpoke").await;
    let e = finished(&app, &id, 30).await;
    let s = step(&e, "s");
    assert_eq!(s["status"], "failed", "{e}");
    assert!(s["error"].as_str().unwrap().contains("timed out"), "{e}");
    let took = (at(&s["finished_at"]) - at(&s["started_at"])).num_milliseconds();
    assert!(
        (2000..3000).contains(&took),
        "killed {took} ms after start (timeout 2 s)"
    );
    assert!(
        !process_running("sleep 6001"),
        "a process of the group survived"
    );
}

#[tokio::test]
async fn on_failure_abort_continue_and_pause_behave_as_specified() {
    let app = TestApp::spawn_with_engine(2).await;
    script(&app, "fails", "exit 1", json!({})).await;
    script(&app, "works", "echo ok", json!({})).await;
    plan(
        &app,
        "aborting",
        json!([
            {"key": "bad", "step": "fails", "on_failure": "abort"},
            {"key": "after", "step": "works", "depends_on": ["bad"]},
        ]),
    )
    .await;
    let e = finished(&app, &drill(&app, "aborting").await, 30).await;
    assert_eq!(
        (e["status"].as_str(), step(&e, "after")["status"].as_str()),
        (Some("failed"), Some("cancelled")),
        "{e}"
    );

    plan(
        &app,
        "continuing",
        json!([
            {"key": "bad", "step": "fails", "on_failure": "continue"},
            {"key": "after", "step": "works", "depends_on": ["bad"]},
            {"key": "other", "step": "works"},
        ]),
    )
    .await;
    let e = finished(&app, &drill(&app, "continuing").await, 30).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(step(&e, "other")["status"], "succeeded");
    assert_eq!(step(&e, "after")["status"], "skipped");
    assert!(step(&e, "after")["error"]
        .as_str()
        .unwrap()
        .contains("blocked"));

    plan(
        &app,
        "pausing",
        json!([
            {"key": "bad", "step": "fails", "on_failure": "pause"},
            {"key": "after", "step": "works", "depends_on": ["bad"]},
        ]),
    )
    .await;
    let id = drill(&app, "pausing").await;
    let e = wait_for(&app, &id, 30, |e| e["status"] == "paused").await;
    assert!(e["pause_reason"].as_str().unwrap().contains("bad"), "{e}");
    let skipped = send(app.as_role(
        dr_orchestrator::auth::Role::Operator,
        Method::POST,
        &format!("/api/v1/executions/{id}/steps/bad/skip"),
    ))
    .await;
    assert_eq!(skipped.status, 200, "{}", skipped.text);
    let resumed = send(app.as_role(
        dr_orchestrator::auth::Role::Operator,
        Method::POST,
        &format!("/api/v1/executions/{id}/resume"),
    ))
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "after")["status"], "succeeded");
}

#[tokio::test]
async fn cancel_stops_a_running_script() {
    let app = TestApp::spawn_with_engine(2).await;
    script(&app, "long", "sleep 6002", json!({})).await;
    plan(&app, "cancellable", json!([{"key": "l", "step": "long"}])).await;
    let id = drill(&app, "cancellable").await;
    wait_for(&app, &id, 30, |e| step(e, "l")["status"] == "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(process_running("sleep 6002"));
    let asked = Instant::now();
    let r = send(app.admin(Method::POST, &format!("/api/v1/executions/{id}/cancel"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    let e = wait_for(&app, &id, 10, |e| step(e, "l")["status"] == "cancelled").await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the step stopped {:?} after the cancel",
        asked.elapsed()
    );
    assert!(!process_running("sleep 6002"), "{e}");
    let again = send(app.admin(Method::POST, &format!("/api/v1/executions/{id}/resume"))).await;
    again.assert_problem(409, "conflict");
}

#[tokio::test]
async fn manual_approval_is_approved_or_rejected_with_who_and_why() {
    let app = TestApp::spawn_with_engine(2).await;
    let r = app
        .post_json("/api/v1/steps", &json!({"name": "signoff", "kind": "manual_approval", "params": {"instructions": "check the site"}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    script(&app, "works", "echo ok", json!({})).await;
    plan(&app, "gated", json!([{"key": "gate", "step": "signoff"}, {"key": "after", "step": "works", "depends_on": ["gate"]}])).await;

    let id = drill(&app, "gated").await;
    wait_for(&app, &id, 30, |e| {
        step(e, "gate")["status"] == "waiting_approval"
    })
    .await;
    let viewer = send(app.as_role(
        dr_orchestrator::auth::Role::Viewer,
        Method::POST,
        &format!("/api/v1/executions/{id}/steps/gate/approve"),
    ))
    .await;
    viewer.assert_problem(403, "forbidden");
    let ok = send(
        app.as_role(
            dr_orchestrator::auth::Role::Operator,
            Method::POST,
            &format!("/api/v1/executions/{id}/steps/gate/approve"),
        )
        .json(&json!({"comment": "owner agreed"})),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "gate")["approval"]["by"], "test-operator");
    assert_eq!(step(&e, "gate")["approval"]["comment"], "owner agreed");

    let id = drill(&app, "gated").await;
    wait_for(&app, &id, 30, |e| {
        step(e, "gate")["status"] == "waiting_approval"
    })
    .await;
    let no = send(
        app.admin(
            Method::POST,
            &format!("/api/v1/executions/{id}/steps/gate/reject"),
        )
        .json(&json!({"comment": "not yet"})),
    )
    .await;
    assert_eq!(no.status, 200, "{}", no.text);
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "failed");
    assert!(step(&e, "gate")["error"]
        .as_str()
        .unwrap()
        .contains("not yet"));
    let twice = send(app.admin(
        Method::POST,
        &format!("/api/v1/executions/{id}/steps/gate/approve"),
    ))
    .await;
    twice.assert_problem(409, "conflict");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_execution_and_failover_needs_confirmation() {
    let app = TestApp::spawn_with_engine(1).await;
    script(&app, "works", "echo ok", json!({})).await;
    plan(&app, "p", json!([{"key": "w", "step": "works"}])).await;
    let first = send(
        app.admin(Method::POST, "/api/v1/plans/p/executions")
            .header("Idempotency-Key", "INC-42")
            .json(&json!({"mode": "drill"})),
    )
    .await;
    let second = send(
        app.admin(Method::POST, "/api/v1/plans/p/executions")
            .header("Idempotency-Key", "INC-42")
            .json(&json!({"mode": "drill"})),
    )
    .await;
    assert_eq!((first.status, second.status), (201, 200));
    assert_eq!(first.body["id"], second.body["id"]);

    let unconfirmed = start(&app, "p", json!({"mode": "failover"})).await;
    unconfirmed.assert_problem(400, "validation");
    assert_eq!(unconfirmed.error_fields(), vec!["confirm"]);
    let viewer = send(
        app.as_role(
            dr_orchestrator::auth::Role::Viewer,
            Method::POST,
            "/api/v1/plans/p/executions",
        )
        .json(&json!({"mode": "drill"})),
    )
    .await;
    viewer.assert_problem(403, "forbidden");
    let confirmed = start(&app, "p", json!({"mode": "failover", "confirm": "p"})).await;
    assert_eq!(confirmed.status, 201, "{}", confirmed.text);
    assert_eq!(confirmed.body["mode"], "failover");
    let in_use = send(app.admin(Method::DELETE, "/api/v1/plans/p")).await;
    in_use.assert_problem(409, "conflict");
    assert_eq!(in_use.body["referrers"][0]["kind"], "execution");
    let audit = app.get("/api/v1/audit?target_type=execution").await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec!["start", "start"],
        "a repeated idempotent start is not a new mutation"
    );
}

#[tokio::test]
async fn a_dry_run_renders_everything_and_touches_nothing() {
    let app = TestApp::spawn_with_engine(1).await;
    let marker = std::env::temp_dir().join(format!("dro-dry-{}", uuid::Uuid::new_v4().simple()));
    script(
        &app,
        "toucher",
        &format!("touch {}", marker.display()),
        json!({}),
    )
    .await;
    plan(&app, "dry", json!([{"key": "t", "step": "toucher"}])).await;
    let r = start(&app, "dry", json!({"mode": "dry_run"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded");
    assert!(step(&r.body, "t")["outputs"]["rendered"]["script"]
        .as_str()
        .unwrap()
        .contains("touch"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!marker.exists(), "a dry run ran the script");
}

#[tokio::test]
async fn outputs_flow_to_a_dependent_step_and_secrets_are_masked_in_logs() {
    let app = TestApp::spawn_with_engine(2).await;
    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "api", "kind": "token", "secret": {"token": "tok-SECRET-981"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    script(
        &app,
        "versioned",
        "echo '::output version=1.2.3'; echo \"token is $API_TOKEN\"",
        json!({"params": {"outputs": ["version"], "credentials": {"API_TOKEN": "api.token"}}}),
    )
    .await;
    script(
        &app,
        "user",
        "echo got {{ steps.v.outputs.version }}",
        json!({}),
    )
    .await;
    plan(&app, "flow", json!([{"key": "v", "step": "versioned"}, {"key": "u", "step": "user", "depends_on": ["v"]}])).await;
    let id = drill(&app, "flow").await;
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "v")["outputs"]["version"], "1.2.3");
    assert!(logs(&app, &id, "u").await.contains("got 1.2.3"));
    let v_logs = logs(&app, &id, "v").await;
    assert!(v_logs.contains("token is ******"), "{v_logs}");
    let everything = app.get(&format!("/api/v1/executions/{id}/logs")).await.text
        + &app
            .get(&format!("/api/v1/executions/{id}/events"))
            .await
            .text
        + &app.get(&format!("/api/v1/executions/{id}")).await.text;
    assert!(!everything.contains("tok-SECRET-981"));
}

#[tokio::test]
async fn the_live_stream_and_the_report_tell_the_whole_story() {
    let app = TestApp::spawn_with_engine(2).await;
    script(&app, "works", "echo working", json!({})).await;
    plan(&app, "story", json!([{"key": "one", "step": "works"}, {"key": "two", "step": "works", "depends_on": ["one"]}])).await;
    let id = drill(&app, "story").await;
    let response = app
        .admin(
            Method::GET,
            &format!("/api/v1/executions/{id}/events?follow=true"),
        )
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the stream ends with the execution")
        .unwrap();
    assert!(
        body.contains("event: log") && body.contains("working"),
        "{body}"
    );
    assert!(
        body.contains("step.succeeded") && body.contains("execution.succeeded"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("event: end\ndata: {}"), "{body}");

    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert_eq!(report.body["critical_path"], json!(["one", "two"]));
    assert_eq!(report.body["rto_met"], true);
    assert!(report.body["measured_rto_secs"].as_f64().unwrap() < 600.0);
    let md = send(
        app.admin(Method::GET, &format!("/api/v1/executions/{id}/report"))
            .header("accept", "text/markdown"),
    )
    .await;
    assert!(md.content_type().starts_with("text/markdown"));
    assert!(
        md.text.contains("| one | local_script | succeeded |"),
        "{}",
        md.text
    );

    // Once the plan has run, its RTO estimate uses the measured durations.
    let report = send(app.admin(Method::POST, "/api/v1/plans/story/validate")).await;
    let drill = &report.body["modes"][0];
    assert_eq!(drill["measured_steps"], 2, "{}", report.text);
    assert_eq!(drill["estimated_duration"], "2s", "{}", report.text);

    let metrics = send(app.anonymous(Method::GET, "/metrics")).await.text;
    for line in [
        r#"dro_executions{status="succeeded"} 1"#,
        r#"dro_step_runs{status="succeeded"} 2"#,
        r#"dro_step_attempts_total{outcome="succeeded"} 2"#,
        "dro_step_claim_wait_seconds_count 2",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_run_200_parallel_steps_each_exactly_once() {
    let mut app = TestApp::spawn_with_engine(4).await;
    app.start_engine(4, Duration::from_secs(3));
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "tick", "kind": "wait", "params": {"duration": "0s"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let steps: Vec<Value> = (0..200)
        .map(|i| json!({"key": format!("s{i}"), "step": "tick"}))
        .collect();
    plan(&app, "wide", Value::Array(steps)).await;
    let id = drill(&app, "wide").await;
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert!(e["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["attempt"] == 1));
    let events = app.get(&format!("/api/v1/executions/{id}/events")).await;
    let starts: Vec<&Value> = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "step.started")
        .collect();
    assert_eq!(starts.len(), 200, "every step started exactly once");
    let workers: std::collections::BTreeSet<&str> = starts
        .iter()
        .map(|e| e["data"]["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "both instances took work: {workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_instances_steps_are_reclaimed_as_specified() {
    let mut app = TestApp::spawn().await;
    let first = app.start_engine(2, Duration::from_secs(3));
    script(&app, "unsafe_sleep", "sleep 6003", json!({})).await;
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "safe_wait", "kind": "wait", "params": {"duration": "4s"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    plan(
        &app,
        "crashy",
        json!([{"key": "script", "step": "unsafe_sleep"}, {"key": "wait", "step": "safe_wait"}]),
    )
    .await;
    let id = drill(&app, "crashy").await;
    wait_for(&app, &id, 30, |e| {
        step(e, "script")["status"] == "running" && step(e, "wait")["status"] == "running"
    })
    .await;

    app.kill_engine(first);
    // The survivor's own lease is long: on a loaded machine a 3 s lease can lapse between its
    // heartbeats and reclaim the re-run wait once more (the attempt count below would be 3+).
    app.start_engine(2, Duration::from_secs(15));
    let e = wait_for(&app, &id, 30, |e| e["status"] == "paused").await;
    assert_eq!(
        step(&e, "script")["status"],
        "interrupted",
        "a script that may have half-run waits for a person: {e}"
    );
    assert!(e["pause_reason"].as_str().unwrap().contains("interrupted"));
    let e = wait_for(&app, &id, 30, |e| step(e, "wait")["status"] == "ready").await;
    assert!(
        step(&e, "wait")["error"]
            .as_str()
            .unwrap()
            .contains("running it again"),
        "{e}"
    );
    // The operator decides about the script; on resume the idempotent wait runs again.
    let skip = send(app.admin(
        Method::POST,
        &format!("/api/v1/executions/{id}/steps/script/skip"),
    ))
    .await;
    assert_eq!(skip.status, 200, "{}", skip.text);
    let resume = send(app.admin(Method::POST, &format!("/api/v1/executions/{id}/resume"))).await;
    assert_eq!(resume.status, 200, "{}", resume.text);
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "wait")["attempt"], 2);
    let events = app
        .get(&format!("/api/v1/executions/{id}/events"))
        .await
        .text;
    assert!(events.contains("step.interrupted") && events.contains("worker stopped answering"));
    // The dead instance's script outlived it, as a real crash leaves it: clean up.
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 6003"])
        .status();
}

#[tokio::test]
async fn fifty_megabytes_of_output_are_stored_whole() {
    let app = TestApp::spawn_with_engine(1).await;
    script(
        &app,
        "loud",
        "head -c 50000000 /dev/zero | tr '\\0' 'x' | fold -w 1000",
        json!({"timeout": "5m"}),
    )
    .await;
    plan(&app, "loud", json!([{"key": "l", "step": "loud"}])).await;
    let id = drill(&app, "loud").await;
    let e = finished(&app, &id, 240).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let mut conn = app.conn();
    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        bytes: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        lines: i64,
    }
    let stored: Stored = diesel::RunQueryDsl::get_result(
        diesel::sql_query("SELECT coalesce(sum(length(data)), 0)::bigint AS bytes, count(*) AS lines FROM step_logs WHERE stream = 'stdout'"),
        &mut conn,
    )
    .unwrap();
    assert_eq!((stored.bytes, stored.lines), (50_000_000, 50_000));
}
