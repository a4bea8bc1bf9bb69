//! remote_script end to end against real OpenSSH servers started here (see `sshd.rs`):
//! logins, streaming, exit codes, timeout and cancel, secrets, host keys, jump servers.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp};
use crate::engine::{drill, finished, logs, plan, step};
use crate::sshd::{
    self, Fixture, Netns, Options, Sshd, KEY_USER, PASSPHRASE, PASSWORD, PASSWORD_USER,
};

async fn created(app: &TestApp, path: &str, body: Value) {
    let r = app.post_json(path, &body).await;
    assert_eq!(r.status, 201, "{path}: {}", r.text);
}

/// Credentials for both test users, and a token to inject.
async fn credentials(app: &TestApp, f: &Fixture) {
    created(
        app,
        "/api/v1/credentials",
        json!({"name": "pw_login", "kind": "ssh_password", "username": PASSWORD_USER,
               "secret": {"password": PASSWORD}}),
    )
    .await;
    created(
        app,
        "/api/v1/credentials",
        json!({"name": "key_login", "kind": "ssh_private_key", "username": KEY_USER,
               "secret": {"private_key": f.key}}),
    )
    .await;
    created(
        app,
        "/api/v1/credentials",
        json!({"name": "key_pass_login", "kind": "ssh_private_key", "username": KEY_USER,
               "secret": {"private_key": f.key_with_passphrase, "passphrase": PASSPHRASE}}),
    )
    .await;
    created(
        app,
        "/api/v1/credentials",
        json!({"name": "api", "kind": "token", "secret": {"token": "tok-S3cr3t-value"}}),
    )
    .await;
}

/// A host resource reached over SSH on `port`.
async fn host(app: &TestApp, name: &str, ip: &str, port: u16, ssh: Value) {
    let mut access = json!({"port": port, "user": PASSWORD_USER, "credential": "pw_login"});
    for (k, v) in ssh.as_object().unwrap() {
        access[k] = v.clone();
    }
    created(
        app,
        "/api/v1/resources",
        json!({"name": name, "kind": "host", "attributes": {"private_ip": ip, "ssh": access}}),
    )
    .await;
}

/// A loopback sshd, a service with an engine, the test credentials and the host `web` (pinned).
async fn web_host() -> Option<(Sshd, TestApp)> {
    let f = sshd::fixture()?;
    let sshd = Sshd::start(f, Options::default());
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    host(
        &app,
        "web",
        "127.0.0.1",
        sshd.port,
        json!({"host_key_fingerprint": sshd.fingerprint}),
    )
    .await;
    Some((sshd, app))
}

async fn remote_step(app: &TestApp, name: &str, params: Value) {
    created(
        app,
        "/api/v1/steps",
        json!({"name": name, "kind": "remote_script", "params": params}),
    )
    .await;
}

/// One remote_script step in a plan of its own, started as a drill; returns the execution id.
async fn start_one(app: &TestApp, name: &str, params: Value, timeout: Option<&str>) -> String {
    remote_step(app, name, params).await;
    let mut s = json!({"key": "s", "step": name});
    if let Some(t) = timeout {
        s["timeout"] = json!(t);
    }
    plan(app, &format!("p_{name}"), json!([s])).await;
    drill(app, &format!("p_{name}")).await
}

/// One step in a plan of its own, run as a drill to its end.
async fn run_one(app: &TestApp, name: &str, params: Value, timeout: Option<&str>) -> Value {
    let id = start_one(app, name, params, timeout).await;
    finished(app, &id, 90).await
}

fn pid_in(log: &str) -> Option<i32> {
    log.lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.trim().parse().ok())
}

fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_login_streams_stdout_and_stderr_in_order_and_sets_outputs() {
    let Some((_sshd, app)) = web_host().await else {
        return;
    };
    let e = run_one(
        &app,
        "hello",
        json!({"target": "web",
               "script": "echo one; echo two >&2; sleep 0.2; echo three; echo \"::output who=$(id -un)\"",
               "outputs": ["who"]}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let s = step(&e, "s");
    assert_eq!(s["outputs"]["who"], PASSWORD_USER, "{s}");
    assert_eq!(s["outputs"]["exit_code"], 0);
    let id = e["id"].as_str().unwrap();
    let r = app
        .get(&format!("/api/v1/executions/{id}/logs?step=s&limit=100"))
        .await;
    let lines: Vec<(String, String)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["stream"] != "system")
        .map(|l| {
            (
                l["stream"].as_str().unwrap().to_owned(),
                l["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pos = |data: &str| lines.iter().position(|(_, d)| d == data).unwrap();
    assert!(pos("one") < pos("three"), "{lines:?}");
    assert!(
        lines.contains(&("stderr".into(), "two".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "one".into())),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reaches_the_log_while_the_script_still_runs() {
    let Some((_sshd, app)) = web_host().await else {
        return;
    };
    let id = start_one(
        &app,
        "slow",
        json!({"target": "web", "script": "echo early; sleep 4; echo late"}),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = logs(&app, &id, "s").await;
        if log.contains("early") {
            assert!(!log.contains("late"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no output while running: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = app.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(e.body["status"], "running", "{}", e.text);
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_passphrase_logs_in_and_exit_codes_are_judged() {
    let Some(f) = sshd::fixture() else { return };
    let sshd = Sshd::start(f, Options::default());
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    host(
        &app,
        "db",
        "127.0.0.1",
        sshd.port,
        json!({"user": KEY_USER, "credential": "key_pass_login", "host_key_fingerprint": sshd.fingerprint}),
    )
    .await;
    let e = run_one(
        &app,
        "three",
        json!({"target": "db", "script": "id -un; exit 3"}),
        None,
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    let s = step(&e, "s");
    assert!(s["error"].as_str().unwrap().contains("exit code 3"), "{s}");
    assert_eq!(s["exit_code"], 3, "{s}");
    let log = logs(&app, e["id"].as_str().unwrap(), "s").await;
    assert!(log.contains(KEY_USER), "{log}");

    let e = run_one(
        &app,
        "three_ok",
        json!({"target": "db", "script": "exit 3", "expected_exit_codes": [0, 3]}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_passphrase_logs_in_to_an_address_given_with_a_login() {
    let Some(f) = sshd::fixture() else { return };
    let sshd = Sshd::start(f, Options::default());
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    let e = run_one(
        &app,
        "by_address",
        json!({"target": "127.0.0.1",
               "login": {"user": KEY_USER, "credential": "key_login", "port": sshd.port,
                         "host_key_fingerprint": sshd.fingerprint},
               "script": "echo \"::output user=$(id -un)\"", "outputs": ["user"]}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "s")["outputs"]["user"], KEY_USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_script_is_hung_up_on_the_remote_side() {
    let Some((_sshd, app)) = web_host().await else {
        return;
    };
    let e = run_one(
        &app,
        "hang",
        json!({"target": "web", "script": "echo pid=$$; exec sleep 300"}),
        Some("2s"),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = step(&e, "s")["error"].as_str().unwrap().to_owned();
    assert!(error.contains("timed out"), "{error}");
    let log = logs(&app, e["id"].as_str().unwrap(), "s").await;
    let pid = pid_in(&log).expect("the script printed its pid");
    assert!(
        gone(pid),
        "the remote script {pid} still runs after the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_script_is_hung_up_on_the_remote_side() {
    let Some((_sshd, app)) = web_host().await else {
        return;
    };
    let id = start_one(
        &app,
        "long",
        json!({"target": "web", "script": "echo pid=$$; exec sleep 300"}),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        if let Some(pid) = pid_in(&logs(&app, &id, "s").await) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the script never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let r = send(app.admin(Method::POST, &format!("/api/v1/executions/{id}/cancel"))).await;
    assert!(r.status < 300, "{}", r.text);
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "cancelled", "{e}");
    assert!(
        gone(pid),
        "the remote script {pid} still runs after the cancel"
    );
}

/// The secret reaches the script by the environment only; the stored log shows it masked.
async fn secret_is_injected_and_masked(accept_env: bool, how: &str) {
    let Some(f) = sshd::fixture() else { return };
    let sshd = Sshd::start(
        f,
        Options {
            accept_env,
            ..Options::default()
        },
    );
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    host(
        &app,
        "web",
        "127.0.0.1",
        sshd.port,
        json!({"host_key_fingerprint": sshd.fingerprint}),
    )
    .await;
    let e = run_one(
        &app,
        "secretive",
        json!({"target": "web",
               "credentials": {"API_TOKEN": "api.token"},
               "env": {"REGION": "dr-east"},
               "script": "echo \"token is $API_TOKEN in $REGION\"\n\
                          n=$(ps -eo args | grep -F -e \"$API_TOKEN\" | grep -v -e grep | wc -l)\n\
                          echo \"::output on_command_lines=$n\"",
               "outputs": ["on_command_lines"]}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "s")["outputs"]["on_command_lines"], "0", "{e}");
    let log = logs(&app, e["id"].as_str().unwrap(), "s").await;
    assert!(log.contains("token is ****** in dr-east"), "{log}");
    assert!(log.contains(how), "{log}");
    let everything = app
        .get(&format!(
            "/api/v1/executions/{}/logs",
            e["id"].as_str().unwrap()
        ))
        .await
        .text;
    assert!(!everything.contains("tok-S3cr3t-value"), "{everything}");
    assert!(!e.to_string().contains("tok-S3cr3t-value"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_goes_through_a_stdin_preamble_when_setenv_is_refused() {
    secret_is_injected_and_masked(false, "0 variable(s) by setenv, 2 by a preamble on stdin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_goes_through_setenv_when_the_server_accepts_it() {
    secret_is_injected_and_masked(true, "2 variable(s) by setenv, 0 by a preamble on stdin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_unpinned_host_key_is_refused_before_logging_in() {
    let Some(f) = sshd::fixture() else { return };
    let sshd = Sshd::start(f, Options::default());
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    let other = &f.host_keys[1].1;
    host(
        &app,
        "spoofed",
        "127.0.0.1",
        sshd.port,
        json!({"host_key_fingerprint": other}),
    )
    .await;
    host(&app, "unpinned", "127.0.0.1", sshd.port, json!({})).await;
    let e = run_one(
        &app,
        "spoof",
        json!({"target": "spoofed", "script": "echo never"}),
        None,
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = step(&e, "s")["error"].as_str().unwrap().to_owned();
    assert!(error.contains("CHANGED"), "{error}");
    assert!(
        error.contains(&sshd.fingerprint) && error.contains(other.as_str()),
        "{error}"
    );
    let e = run_one(
        &app,
        "unknown",
        json!({"target": "unpinned", "script": "echo never"}),
        None,
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = step(&e, "s")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("not pinned") && error.contains(&sshd.fingerprint),
        "{error}"
    );
    assert!(!logs(&app, e["id"].as_str().unwrap(), "s")
        .await
        .contains("never"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_pins_the_first_key_and_then_refuses_another() {
    let Some(f) = sshd::fixture() else { return };
    let port = sshd::free_port();
    let first = Sshd::start(
        f,
        Options {
            port,
            ..Options::default()
        },
    );
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    host(
        &app,
        "fresh",
        "127.0.0.1",
        port,
        json!({"trust_on_first_use": true}),
    )
    .await;
    let e = run_one(
        &app,
        "first",
        json!({"target": "fresh", "script": "echo hi"}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let r = app.get("/api/v1/resources/fresh").await;
    assert_eq!(
        r.body["attributes"]["ssh"]["host_key_fingerprint"], first.fingerprint,
        "{}",
        r.text
    );
    let audit = app.get("/api/v1/audit?action=pin_host_key").await;
    assert_eq!(
        audit.body["items"][0]["target_name"], "fresh",
        "{}",
        audit.text
    );
    drop(first);
    // The same address now answers with another key.
    let _second = Sshd::start(
        f,
        Options {
            port,
            host_key: 1,
            ..Options::default()
        },
    );
    let e = run_one(
        &app,
        "second",
        json!({"target": "fresh", "script": "echo hi"}),
        None,
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        step(&e, "s")["error"].as_str().unwrap().contains("CHANGED"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_steps_of_an_execution_reuse_the_connection() {
    let Some((_sshd, app)) = web_host().await else {
        return;
    };
    remote_step(
        &app,
        "where",
        json!({"target": "web", "script": "echo \"::output client=$SSH_CLIENT\"", "outputs": ["client"]}),
    )
    .await;
    plan(
        &app,
        "p_reuse",
        json!([{"key": "a", "step": "where"}, {"key": "b", "step": "where", "depends_on": ["a"]},
               {"key": "c", "step": "where", "depends_on": ["b"]}]),
    )
    .await;
    let id = drill(&app, "p_reuse").await;
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let client = |k: &str| {
        step(&e, k)["outputs"]["client"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Same client port: the same TCP connection.
    assert_eq!(client("a"), client("b"));
    assert_eq!(client("b"), client("c"));
    let mut connected = 0;
    for k in ["a", "b", "c"] {
        connected += logs(&app, &id, k).await.matches("connected to").count();
    }
    assert_eq!(connected, 1);
}

/// A jump server in a network namespace, and a target sshd on the namespace's own loopback:
/// the host cannot reach the target except through the jump server.
struct Hidden {
    _jump: Sshd,
    _target: Sshd,
    ns: Netns,
    target_port: u16,
}

async fn hidden_network(app: &TestApp, f: &Fixture, max_connections: u16) -> Option<Hidden> {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: cannot create a network namespace: {why}");
            return None;
        }
    };
    let jump = Sshd::start(
        f,
        Options {
            listen: &ns.ns_ip.clone(),
            port: 22,
            netns: Some(&ns.name.clone()),
            ..Options::default()
        },
    );
    let target_port = 2222;
    let target = Sshd::start(
        f,
        Options {
            listen: "0.0.0.0",
            port: target_port,
            host_key: 1,
            netns: Some(&ns.name.clone()),
            ..Options::default()
        },
    );
    created(
        app,
        "/api/v1/resources",
        json!({"name": "jump01", "kind": "jump_server",
               "attributes": {"address": ns.ns_ip, "port": 22, "user": PASSWORD_USER,
                              "credential": "pw_login", "host_key_fingerprint": jump.fingerprint,
                              "max_connections": max_connections}}),
    )
    .await;
    Some(Hidden {
        _jump: jump,
        _target: target,
        ns,
        target_port,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_reachable_only_through_the_jump_server_runs_through_it() {
    let Some(f) = sshd::fixture() else { return };
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    let Some(net) = hidden_network(&app, f, 4).await else {
        return;
    };
    let fp = &f.host_keys[1].1;
    host(
        &app,
        "app",
        "127.0.0.1",
        net.target_port,
        json!({"host_key_fingerprint": fp}),
    )
    .await;
    // Directly, the target is not there.
    let e = run_one(
        &app,
        "direct",
        json!({"target": "app", "script": "echo hi"}),
        Some("10s"),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    let e = run_one(
        &app,
        "tunnelled",
        json!({"target": "app", "via": "jump01",
               "script": "echo \"::output seen_from=${SSH_CLIENT%% *}\"", "outputs": ["seen_from"]}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    // sshd on the target saw the jump server's side of the tunnel (inside the namespace).
    assert_eq!(step(&e, "s")["outputs"]["seen_from"], "127.0.0.1", "{e}");
    let log = logs(&app, e["id"].as_str().unwrap(), "s").await;
    assert!(log.contains("through jump server `jump01`"), "{log}");
    // The seed's other mode: the script runs on the jump server itself.
    let e = run_one(
        &app,
        "on_jump",
        json!({"target": "jump01", "via": "jump01",
               "script": "echo \"::output addr=${SSH_CONNECTION}\"", "outputs": ["addr"]}),
        None,
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let addr = step(&e, "s")["outputs"]["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(addr.contains(&net.ns.ns_ip), "{addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_scripts_on_fifty_targets_run_at_once_through_one_jump_server() {
    let Some(f) = sshd::fixture() else { return };
    let app = TestApp::spawn_with_engine(50).await;
    credentials(&app, f).await;
    let Some(net) = hidden_network(&app, f, 50).await else {
        return;
    };
    let dir = tempdir("fifty");
    // Each script waits until all fifty have started: it passes only if they run at once.
    remote_step(
        &app,
        "barrier",
        json!({"target": "127.0.0.1", "via": "jump01",
               "login": {"user": PASSWORD_USER, "credential": "pw_login", "port": net.target_port,
                         "host_key_fingerprint": f.host_keys[1].1},
               "script": format!("touch {dir}/$(echo $SSH_CONNECTION | cut -d' ' -f3)\n\
                                  i=0; while [ $(ls {dir} | wc -l) -lt 50 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n\
                                  ls {dir} | wc -l")}),
    )
    .await;
    let steps: Vec<Value> = (1..=50)
        .map(|i| json!({"key": format!("t{i}"), "step": "barrier", "params": {"target": format!("127.0.0.{i}")}}))
        .collect();
    plan(&app, "p_fifty", json!(steps)).await;
    let id = drill(&app, "p_fifty").await;
    let e = finished(&app, &id, 180).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    for i in 1..=50 {
        let log = logs(&app, &id, &format!("t{i}")).await;
        assert!(log.lines().any(|l| l.trim() == "50"), "t{i}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_server_never_carries_more_connections_than_its_bound() {
    let Some(f) = sshd::fixture() else { return };
    let app = TestApp::spawn_with_engine(6).await;
    credentials(&app, f).await;
    let Some(net) = hidden_network(&app, f, 2).await else {
        return;
    };
    let dir = tempdir("bound");
    remote_step(
        &app,
        "counted",
        json!({"target": "127.0.0.1", "via": "jump01",
               "login": {"user": PASSWORD_USER, "credential": "pw_login", "port": net.target_port,
                         "host_key_fingerprint": f.host_keys[1].1},
               "script": format!("touch {dir}/run.$ME; ls {dir} | grep -c '^run' > {dir}/seen.$ME\n\
                                  sleep 0.5; rm {dir}/run.$ME")}),
    )
    .await;
    let steps: Vec<Value> = (1..=6)
        .map(|i| {
            json!({"key": format!("t{i}"), "step": "counted",
                   "params": {"target": format!("127.0.0.{i}"), "env": {"ME": format!("t{i}")}}})
        })
        .collect();
    plan(&app, "p_bound", json!(steps)).await;
    let id = drill(&app, "p_bound").await;
    let e = finished(&app, &id, 120).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let mut most = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("seen.") {
            let n: u32 = std::fs::read_to_string(entry.path())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            most = most.max(n);
        }
    }
    assert!(
        (1..=2).contains(&most),
        "{most} scripts ran at once through a jump server bounded to 2"
    );
    let waited = (1..=6).map(|i| format!("t{i}"));
    let mut any_waited = false;
    for k in waited {
        any_waited |= logs(&app, &id, &k)
            .await
            .contains("waiting: jump server `jump01`");
    }
    assert!(any_waited, "no step waited for the bound");
}

/// A fresh world-writable directory (the test users write into it).
fn tempdir(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("dro-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir.display().to_string()
}

async fn check_step(app: &TestApp, name: &str, params: Value) -> Value {
    created(
        app,
        "/api/v1/steps",
        json!({"name": name, "kind": "check", "params": params}),
    )
    .await;
    plan(
        app,
        &format!("p_{name}"),
        json!([{"key": "s", "step": name}]),
    )
    .await;
    let id = drill(app, &format!("p_{name}")).await;
    finished(app, &id, 90).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_from_the_jump_server_reach_what_only_it_can_reach() {
    let Some(f) = sshd::fixture() else { return };
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    let Some(net) = hidden_network(&app, f, 4).await else {
        return;
    };
    // An HTTP server on the namespace's own loopback.
    let port = 8088;
    let _web = KillOnDrop(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns.name,
                "python3",
                "-m",
                "http.server",
            ])
            .args([
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
                "/etc",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let fast = json!({"interval": "1s", "until": "20s"});
    let with = |extra: Value| {
        let mut p = fast.clone();
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let e = check_step(
        &app,
        "tcp_from_jump",
        with(json!({"type": "tcp", "host": "127.0.0.1", "port": net.target_port, "via": "jump01"})),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let evidence = step(&e, "s")["outputs"]["evidence"].to_string();
    assert!(evidence.contains("from jump server `jump01`"), "{evidence}");
    let e = check_step(
        &app,
        "http_from_jump",
        with(
            json!({"type": "http", "url": format!("http://127.0.0.1:{port}/"),
                    "contains": "Directory listing", "via": "jump01"}),
        ),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let e = check_step(
        &app,
        "ping_from_jump",
        with(json!({"type": "ping", "host": net.ns.ns_ip, "via": "jump01"})),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let e = check_step(
        &app,
        "dns_from_jump",
        with(json!({"type": "dns", "name": "localhost", "expect": ["127.0.0.1"], "via": "jump01"})),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    // The same HTTP probe from the orchestrator itself finds nothing there.
    let e = check_step(
        &app,
        "http_direct",
        json!({"type": "http", "url": format!("http://127.0.0.1:{port}/"),
               "contains": "Directory listing", "interval": "1s", "until": "2s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TerminateOnDrop(std::process::Child);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// The seed's scenario-1 web tier: nginx's upstream still names the old WordPress address; a
/// remote script rewrites it with `sed` to the recovered one, tests and reloads nginx, and an
/// http check through nginx then passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_tier_step_repoints_nginx_to_the_recovered_backend() {
    let Some(f) = sshd::fixture() else { return };
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        eprintln!("SKIPPED: nginx is not installed (Debian: nginx)");
        return;
    }
    let sshd = Sshd::start(f, Options::default());
    let app = TestApp::spawn_with_engine(2).await;
    credentials(&app, f).await;
    let (backend, _server) = crate::common::start_http_server();
    let backend_port = backend.rsplit(':').next().unwrap().to_owned();
    // nginx runs as the SSH user, who owns its configuration (as an admin would with sudo).
    let dir = tempdir("nginx");
    let nginx_port = sshd::free_port();
    let conf = format!("{dir}/nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {dir}; proxy_temp_path {dir};\n\
             fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
             upstream wordpress {{ server 127.0.0.9:{backend_port}; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://wordpress; }} }}\n}}\n"
        ),
    )
    .unwrap();
    std::process::Command::new("chown")
        .args(["-R", PASSWORD_USER, &dir])
        .status()
        .unwrap();
    // nginx itself is the child (not `runuser`, whose SIGKILL would orphan nginx), stopped by
    // SIGTERM so that its master stops the workers too.
    let _nginx = TerminateOnDrop({
        use std::os::unix::process::CommandExt;
        let user = nix::unistd::User::from_name(PASSWORD_USER)
            .unwrap()
            .expect("the fixture made the user");
        std::process::Command::new("/usr/sbin/nginx")
            .args(["-c", &conf, "-g", "daemon off;"])
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    let site = format!("http://127.0.0.1:{nginx_port}/health");
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        match reqwest::get(&site).await {
            Ok(r) => break r.status().as_u16(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("nginx did not start: {e}"),
        }
    };
    assert_eq!(
        before, 502,
        "the old upstream must be dead before the switch"
    );
    host(
        &app,
        "nginx",
        "127.0.0.1",
        sshd.port,
        json!({"host_key_fingerprint": sshd.fingerprint}),
    )
    .await;
    created(
        &app,
        "/api/v1/resources",
        json!({"name": "wordpress", "kind": "host", "attributes": {"private_ip": "127.0.0.9"}}),
    )
    .await;
    remote_step(
        &app,
        "switch_upstream",
        json!({"target": "nginx",
               "script": format!("sed -i \"s/{{{{ resources.wordpress.private_ip | bare }}}}/{{{{ params.recovered_ip | bare }}}}/\" {conf}\n\
                                  /usr/sbin/nginx -t -c {conf} && /usr/sbin/nginx -s reload -c {conf}")}),
    )
    .await;
    created(
        &app,
        "/api/v1/steps",
        json!({"name": "site_up", "kind": "check",
               "params": {"type": "http", "url": site, "contains": "primary", "interval": "1s", "until": "30s"}}),
    )
    .await;
    let r = app
        .post_json(
            "/api/v1/plans",
            &json!({"name": "web_tier", "target_rto": "10m",
                    "parameters": {"recovered_ip": {"type": "string"}},
                    "steps": [{"key": "switch", "step": "switch_upstream"},
                              {"key": "verify", "step": "site_up", "depends_on": ["switch"]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(
        app.admin(Method::POST, "/api/v1/plans/web_tier/executions")
            .json(&json!({"mode": "drill", "params": {"recovered_ip": "127.0.0.1"}})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let e = finished(&app, &id, 90).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let log = logs(&app, &id, "switch").await;
    assert!(log.contains("test is successful"), "{log}");
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .contains(&format!("server 127.0.0.1:{backend_port};")));
    // `nginx -s reload` returns before the old worker has closed its listening socket, so a
    // request right after the check may still reach it; the new upstream serves once it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let status = reqwest::get(&site).await.unwrap().status().as_u16();
        if status == 200 || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after, 200, "nginx still proxies to the old upstream");
}
