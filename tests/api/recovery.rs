//! Host recovery, boot order, drill clean-up and readiness against the simulator, over HTTP.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dr_orchestrator::providers::simulator::{
    self, Fail, RunningSimulator, SimAction, SimHost, SimSnapshot, SimulatorConfig,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp};
use crate::engine::{drill, finished, logs, plan, script, step};

/// A simulator whose hosts recover in 300 ms and boot in 300 ms.
async fn sim(hosts: Vec<SimHost>) -> RunningSimulator {
    let config = SimulatorConfig {
        boot_time: Duration::from_millis(300),
        power_on_time: Duration::from_millis(300),
        hosts,
        ..SimulatorConfig::default()
    };
    simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn sim_host(id: &str, ip: &str) -> SimHost {
    SimHost {
        private_ip: Some(ip.into()),
        public_ip: Some(format!("203.0.113.{}", ip.rsplit('.').next().unwrap())),
        ..SimHost::new(id)
    }
}

/// Defines provider `sim` pointing at the simulator, and one inventory host per `(name, id)`.
async fn inventory(app: &TestApp, sim: &RunningSimulator, hosts: &[(&str, &str)]) {
    let r = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "sim", "kind": "simulator", "base_url": sim.url(),
                    "settings": {"poll_interval": "1s"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for (i, (name, id)) in hosts.iter().enumerate() {
        let r = app
            .post_json(
                "/api/v1/resources",
                &json!({"name": name, "kind": "host", "labels": {"tier": "app"},
                        "attributes": {"private_ip": format!("192.168.10.{}", 20 + i),
                                       "provider": "sim", "provider_host_id": id}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

async fn host_step(app: &TestApp, name: &str, kind: &str, params: Value) {
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": name, "kind": kind, "params": params}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// Creates a step `<plan>_<key>` per `(key, kind, params)` and plan `plan` running them one
/// after the other; `extra` is merged into every plan step (e.g. an `on_failure`).
async fn chain(app: &TestApp, name: &str, steps: &[(&str, &str, Value)], extra: Value) {
    let mut plan_steps = Vec::new();
    for (i, (key, kind, params)) in steps.iter().enumerate() {
        host_step(app, &format!("{name}_{key}"), kind, params.clone()).await;
        let mut s = json!({"key": key, "step": format!("{name}_{key}")});
        if i > 0 {
            s["depends_on"] = json!([steps[i - 1].0]);
        }
        for (k, v) in extra.as_object().into_iter().flatten() {
            s[k] = v.clone();
        }
        plan_steps.push(s);
    }
    plan(app, name, Value::Array(plan_steps)).await;
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovering_three_hosts_yields_their_facts_and_later_steps_read_them() {
    let sim = sim(vec![
        sim_host("vm-db", "10.20.0.11"),
        sim_host("vm-app", "10.20.0.12"),
        sim_host("vm-web", "10.20.0.13"),
    ])
    .await;
    let app = TestApp::spawn_with_engine(2).await;
    inventory(
        &app,
        &sim,
        &[("db", "vm-db"), ("app", "vm-app"), ("web", "vm-web")],
    )
    .await;
    let point = "echo \"::output upstream={{ steps.recover.outputs.hosts.app.private_ip }}\"";
    let steps = [
        (
            "recover",
            "host_recovery",
            json!({"hosts": {"selector": "tier=app"}}),
        ),
        (
            "point",
            "local_script",
            json!({"script": point, "outputs": ["upstream"]}),
        ),
    ];
    chain(&app, "recover_three", &steps, json!({})).await;
    let id = drill(&app, "recover_three").await;
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let hosts = &step(&e, "recover")["outputs"]["hosts"];
    for (name, ip) in [
        ("db", "10.20.0.11"),
        ("app", "10.20.0.12"),
        ("web", "10.20.0.13"),
    ] {
        let h = &hosts[name];
        assert_eq!(h["private_ip"], ip, "{hosts}");
        assert!(h["instance_id"].as_str().is_some_and(|i| !i.is_empty()));
        assert_eq!(h["state"], "powered_off", "recovered powered off: {h}");
        assert!(h["snapshot_time"].is_string(), "{h}");
    }
    assert_eq!(step(&e, "point")["outputs"]["upstream"], "10.20.0.12");
    for id in ["vm-db", "vm-app", "vm-web"] {
        assert_eq!(sim.accepted(SimAction::Recover, id), 1, "{id}");
        assert_eq!(sim.accepted(SimAction::PowerOn, id), 0, "{id}");
    }
    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    assert_eq!(report.body["recovered"].as_array().unwrap().len(), 3);
    let log = logs(&app, &id, "recover").await;
    assert!(log.contains("app: recovered as instance"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_boots_groups_in_order_each_running_and_answering_before_the_next() {
    // Every recovered host "is" 127.0.0.1 where this listener answers, as sshd would.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sim = sim(vec![
        sim_host("vm-db", "127.0.0.1"),
        sim_host("vm-app1", "127.0.0.1"),
        sim_host("vm-app2", "127.0.0.1"),
        sim_host("vm-web", "127.0.0.1"),
    ])
    .await;
    let app = TestApp::spawn_with_engine(2).await;
    inventory(
        &app,
        &sim,
        &[
            ("db", "vm-db"),
            ("app1", "vm-app1"),
            ("app2", "vm-app2"),
            ("web", "vm-web"),
        ],
    )
    .await;
    let steps = [
        (
            "recover",
            "host_recovery",
            json!({"hosts": ["db", "app1", "app2", "web"]}),
        ),
        (
            "boot",
            "power_on",
            json!({"hosts": ["db", ["app1", "app2"], "web"], "port": port, "wait_until_running": "30s"}),
        ),
    ];
    chain(&app, "boot_order", &steps, json!({})).await;
    let id = drill(&app, "boot_order").await;
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let hosts = &step(&e, "boot")["outputs"]["hosts"];
    let running = |h: &str| at(&hosts[h]["running_at"]);
    let calls = sim.calls();
    let asked = |h: &str| {
        calls
            .iter()
            .find(|c| c.action == SimAction::PowerOn && c.host_id == h && c.accepted)
            .unwrap_or_else(|| panic!("{h} was never powered on: {calls:?}"))
            .at
    };
    // A group is asked for only once the group before it runs.
    assert!(asked("vm-app1") >= running("db") && asked("vm-app2") >= running("db"));
    assert!(asked("vm-web") >= running("app1") && asked("vm-web") >= running("app2"));
    // Hosts of a group start together.
    let apart = (asked("vm-app1") - asked("vm-app2"))
        .num_milliseconds()
        .abs();
    assert!(apart < 300, "app1 and app2 started {apart} ms apart");
    for h in ["db", "app1", "app2", "web"] {
        assert_eq!(hosts[h]["state"], "running", "{hosts}");
    }
    let log = logs(&app, &id, "boot").await;
    assert!(log.contains("group 2 of 3: booting app1, app2"), "{log}");
    assert!(log.contains(&format!("port {port} answers")), "{log}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_failing_to_boot_fails_the_step_by_name_and_later_groups_stay_off() {
    let mut web = sim_host("vm-app", "10.20.0.12");
    web.fail = Some(Fail::Boot);
    let sim = sim(vec![
        sim_host("vm-db", "10.20.0.11"),
        web,
        sim_host("vm-web", "10.20.0.13"),
    ])
    .await;
    let app = TestApp::spawn_with_engine(2).await;
    inventory(
        &app,
        &sim,
        &[("db", "vm-db"), ("app", "vm-app"), ("web", "vm-web")],
    )
    .await;
    let steps = [
        (
            "recover",
            "host_recovery",
            json!({"hosts": ["db", "app", "web"]}),
        ),
        ("boot", "power_on", json!({"hosts": ["db", "app", "web"]})),
    ];
    chain(&app, "boot_fails", &steps, json!({})).await;
    let id = drill(&app, "boot_fails").await;
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "failed", "{e}");
    let boot = step(&e, "boot");
    let error = boot["error"].as_str().unwrap();
    assert!(
        error.contains("app (") && !error.contains("db ("),
        "names the host that failed: {error}"
    );
    assert_eq!(
        boot["outputs"]["hosts"]["db"]["state"], "running",
        "keeps the facts of the host that booted: {boot}"
    );
    assert_eq!(sim.accepted(SimAction::PowerOn, "vm-web"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_during_recovery_followed_by_a_reclaim_does_not_recover_twice() {
    let mut slow = sim_host("vm-db", "10.20.0.11");
    slow.boot_time = Some(Duration::from_secs(4));
    let sim = sim(vec![slow, sim_host("vm-app", "10.20.0.12")]).await;
    let mut app = TestApp::spawn().await;
    let first = app.start_engine(2, Duration::from_secs(2));
    inventory(&app, &sim, &[("db", "vm-db"), ("app", "vm-app")]).await;
    let steps = [("recover", "host_recovery", json!({"hosts": ["db", "app"]}))];
    chain(&app, "crash_recovery", &steps, json!({})).await;
    let id = drill(&app, "crash_recovery").await;
    // The provider was asked for both hosts; db is still recovering when the instance dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim.accepted(SimAction::Recover, "vm-db") == 0
        || sim.accepted(SimAction::Recover, "vm-app") == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never asked: {:?}",
            sim.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.kill_engine(first);
    app.start_engine(2, Duration::from_secs(2));
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert!(step(&e, "recover")["attempt"].as_i64().unwrap() >= 2, "{e}");
    assert_eq!(
        sim.accepted(SimAction::Recover, "vm-db"),
        1,
        "{:?}",
        sim.calls()
    );
    assert_eq!(
        sim.accepted(SimAction::Recover, "vm-app"),
        1,
        "{:?}",
        sim.calls()
    );
    let asked = sim
        .calls()
        .iter()
        .filter(|c| c.action == SimAction::Recover)
        .count();
    assert_eq!(asked, 2, "no second request, not even a refused one");
    let log = logs(&app, &id, "recover").await;
    assert!(log.contains("already asked for by this execution"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_up_deletes_exactly_what_the_drill_created_and_is_idempotent() {
    let sim = sim(vec![
        sim_host("vm-db", "10.20.0.11"),
        sim_host("vm-app", "10.20.0.12"),
        sim_host("vm-other", "10.20.0.13"),
    ])
    .await;
    let app = TestApp::spawn_with_engine(2).await;
    inventory(
        &app,
        &sim,
        &[("db", "vm-db"), ("app", "vm-app"), ("other", "vm-other")],
    )
    .await;
    for (name, hosts) in [("two", json!(["db", "app"])), ("other", json!(["other"]))] {
        let steps = [("recover", "host_recovery", json!({"hosts": hosts}))];
        chain(&app, name, &steps, json!({})).await;
    }
    let other = drill(&app, "other").await;
    let id = drill(&app, "two").await;
    assert_eq!(finished(&app, &other, 60).await["status"], "succeeded");
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let created: Vec<String> = ["db", "app"]
        .iter()
        .map(|h| {
            step(&e, "recover")["outputs"]["hosts"][h]["instance_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    let cleanup = |id: String| {
        let app = &app;
        async move {
            send(app.as_role(
                dr_orchestrator::auth::Role::Operator,
                Method::POST,
                &format!("/api/v1/executions/{id}/cleanup"),
            ))
            .await
        }
    };
    let r = cleanup(id.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["complete"], true, "{}", r.text);
    let deletes: Vec<(String, Option<String>)> = sim
        .calls()
        .into_iter()
        .filter(|c| c.action == SimAction::Delete)
        .map(|c| (c.host_id, c.instance_id))
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    for (host, instance) in &deletes {
        assert!(host == "vm-db" || host == "vm-app", "{deletes:?}");
        assert!(created.contains(instance.as_ref().unwrap()), "{deletes:?}");
    }
    // Again: nothing more is asked, the answer is the same.
    let again = cleanup(id.clone()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["complete"], true);
    assert_eq!(again.body["instances"], r.body["instances"]);
    assert_eq!(
        sim.calls()
            .iter()
            .filter(|c| c.action == SimAction::Delete)
            .count(),
        2
    );
    // The other drill's instance is untouched; the report shows what was deleted.
    assert_eq!(sim.accepted(SimAction::Delete, "vm-other"), 0);
    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    for i in report.body["recovered"].as_array().unwrap() {
        assert_eq!(i["state"], "deleted", "{i}");
        assert!(i["deleted_at"].is_string());
    }
    let log = logs(&app, &id, "@cleanup").await;
    assert!(log.contains("deleted instance"), "{log}");
    // A failover's instances are production: never cleaned up.
    let r = crate::engine::start(
        &app,
        "other",
        json!({"mode": "failover", "confirm": "other"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let failover = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(finished(&app, &failover, 60).await["status"], "succeeded");
    let refused = cleanup(failover).await;
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert!(
        refused.text.contains("never cleaned up"),
        "{}",
        refused.text
    );
    assert_eq!(cleanup(uuid::Uuid::new_v4().to_string()).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_stale_snapshot_and_an_unreachable_jump_server_with_reasons() {
    let mut stale = sim_host("vm-db", "10.20.0.11");
    stale.snapshots = Some(vec![SimSnapshot {
        id: "snap-old".into(),
        age: Some(Duration::from_secs(3 * 3600)),
        taken_at: None,
    }]);
    let sim = sim(vec![stale, sim_host("vm-app", "10.20.0.12")]).await;
    let app = TestApp::spawn().await;
    inventory(&app, &sim, &[("db", "vm-db"), ("app", "vm-app")]).await;
    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "jump_pw", "kind": "ssh_password", "username": "ops",
                    "secret": {"password": "s3cret-jump"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "jump01", "kind": "jump_server",
                    "attributes": {"address": "127.0.0.1", "port": closed, "user": "ops", "credential": "jump_pw",
                                   "host_key_fingerprint": "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    host_step(
        &app,
        "recover_both",
        "host_recovery",
        json!({"hosts": ["db", "app"]}),
    )
    .await;
    script(&app, "noop", "true", json!({})).await;
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "on_jump", "kind": "remote_script", "params": {"target": "jump01", "script": "true"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/plans",
            &json!({"name": "ready", "target_rto": "15m", "target_rpo": "1h",
                    "steps": [{"key": "recover", "step": "recover_both"},
                              {"key": "jump", "step": "on_jump", "depends_on": ["recover"]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(app.admin(Method::POST, "/api/v1/plans/ready/readiness")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ready"], false, "{}", r.text);
    let find = |kind: &str, subject: &str| -> Value {
        r.body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == kind && c["subject"] == subject)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} check of {subject}: {}", r.text))
    };
    let db = find("host", "db");
    assert_eq!(db["ok"], false);
    assert!(
        db["detail"]
            .as_str()
            .unwrap()
            .contains("older than the plan's RPO"),
        "{db}"
    );
    assert_eq!(find("host", "app")["ok"], true);
    assert_eq!(find("provider", "sim")["ok"], true);
    assert_eq!(find("credential", "jump_pw")["ok"], true);
    let jump = find("jump_server", "jump01");
    assert_eq!(jump["ok"], false);
    assert!(!jump["detail"].as_str().unwrap().is_empty(), "{jump}");
    assert!(!r.text.contains("s3cret-jump"));
    // Nothing was recovered by asking.
    assert!(sim.calls().is_empty(), "{:?}", sim.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_failed_recovery_recovers_only_the_host_that_failed() {
    let mut broken = sim_host("vm-app", "10.20.0.12");
    broken.fail = Some(Fail::Recover);
    let sim = sim(vec![sim_host("vm-db", "10.20.0.11"), broken]).await;
    let app = TestApp::spawn_with_engine(2).await;
    inventory(&app, &sim, &[("db", "vm-db"), ("app", "vm-app")]).await;
    let steps = [("recover", "host_recovery", json!({"hosts": ["db", "app"]}))];
    chain(
        &app,
        "retry_recovery",
        &steps,
        json!({"on_failure": "pause"}),
    )
    .await;
    let id = drill(&app, "retry_recovery").await;
    let e = crate::engine::wait_for(&app, &id, 60, |e| e["status"] == "paused").await;
    let recover = step(&e, "recover");
    assert!(recover["error"].as_str().unwrap().contains("app ("), "{e}");
    assert_eq!(
        recover["outputs"]["hosts"]["db"]["state"], "powered_off",
        "{e}"
    );

    // The provider side is mended; the operator retries the step and resumes.
    let mended = reqwest::Client::new()
        .post(format!("{}/simulator/hosts/vm-app", sim.url()))
        .json(&json!({"fail": null}))
        .send()
        .await
        .unwrap();
    assert!(mended.status().is_success());
    for action in ["steps/recover/retry", "resume"] {
        let r = send(app.admin(Method::POST, &format!("/api/v1/executions/{id}/{action}"))).await;
        assert_eq!(r.status, 200, "{action}: {}", r.text);
    }
    let e = finished(&app, &id, 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        sim.accepted(SimAction::Recover, "vm-db"),
        1,
        "{:?}",
        sim.calls()
    );
    assert_eq!(
        sim.accepted(SimAction::Recover, "vm-app"),
        2,
        "{:?}",
        sim.calls()
    );
    assert_eq!(
        step(&e, "recover")["outputs"]["hosts"]["app"]["private_ip"],
        "10.20.0.12"
    );
}
