//! Outbound webhooks end to end: real executions, a real PostgreSQL outbox, real HTTP receivers
//! on loopback ports, signatures checked with the subscription's secret.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use dr_orchestrator::auth::Role;
use dr_orchestrator::webhooks::dispatcher::{Dispatcher, DispatcherConfig};
use dr_orchestrator::webhooks::signature::Secret;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{captured_logs, send, TestApp};
use crate::engine::{drill, finished, plan, script};

const PUBLIC_URL: &str = "https://dro.example.test";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Checks the Standard Webhooks signature with the subscription's secret.
    #[track_caller]
    fn assert_signed_by(&self, secret: &str) {
        Secret::parse(secret)
            .unwrap()
            .verify(
                &self.id,
                &self.timestamp,
                &self.signature,
                &self.body,
                chrono::Utc::now().timestamp(),
                300,
            )
            .unwrap_or_else(|e| panic!("{} does not verify: {e}", self.id));
    }
}

/// An HTTP receiver on a loopback port that records every request; it answers 500 to the
/// first `failures` requests (and to every one while `failures` is `usize::MAX`), then 200.
struct Receiver {
    base: String,
    got: Arc<Mutex<Vec<Received>>>,
    failures: Arc<AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start(failures: usize) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let failures = Arc::new(AtomicUsize::new(failures));
        let (g, f) = (got.clone(), failures.clone());
        let server = HttpServer::new(move || {
            let (got, failures) = (g.clone(), f.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (got, failures) = (got.clone(), failures.clone());
                async move {
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    got.lock().unwrap().push(Received {
                        path: req.path().to_owned(),
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: body.to_vec(),
                    });
                    let left = failures.load(Ordering::SeqCst);
                    if left == usize::MAX {
                        return HttpResponse::InternalServerError()
                            .body("receiver is down for maintenance");
                    }
                    if left > 0 {
                        failures.fetch_sub(1, Ordering::SeqCst);
                        return HttpResponse::InternalServerError().body("try again later");
                    }
                    HttpResponse::Ok().body("thanks")
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base: format!("http://{addr}"),
            got,
            failures,
            handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The requests to `path` answered with success, in order (one per delivery).
    async fn wait_for(&self, path: &str, count: usize, secs: u64) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got: Vec<Received> = self
                .received()
                .into_iter()
                .filter(|r| r.path == path)
                .collect();
            let mut distinct: Vec<Received> = Vec::new();
            for r in got {
                if let Some(i) = distinct.iter().position(|d| d.id == r.id) {
                    distinct[i] = r;
                } else {
                    distinct.push(r);
                }
            }
            if distinct.len() >= count && self.failures.load(Ordering::SeqCst) == 0 {
                return distinct;
            }
            assert!(
                Instant::now() < deadline,
                "{path} got {} distinct deliveries, wanted {count}",
                distinct.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = futures_util::FutureExt::now_or_never(self.handle.stop(false));
    }
}

/// A webhook dispatcher instance over the test's database; aborted on drop ("killed").
struct Webhooks(tokio::task::JoinHandle<()>);

impl Webhooks {
    fn start(app: &TestApp, schedule: &[Duration]) -> Self {
        let mut config = DispatcherConfig::new(PUBLIC_URL);
        config.schedule = schedule.to_vec();
        config.poll = Duration::from_millis(100);
        let d =
            Dispatcher::new(app.state.db.clone(), app.state.master_key.clone(), config).unwrap();
        Self(d.start())
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const QUICK: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(200),
    Duration::from_millis(200),
    Duration::from_millis(200),
];

/// Subscribes; returns the secret from the create response.
async fn subscribe(app: &TestApp, body: Value) -> String {
    let r = app.post_json("/api/v1/webhooks", &body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["secret"].as_str().unwrap().to_owned()
}

/// A plan `name` of two local scripts, b after a.
async fn two_step_plan(app: &TestApp, name: &str) {
    script(app, &format!("{name}_a"), "echo a", json!({})).await;
    script(app, &format!("{name}_b"), "echo b", json!({})).await;
    plan(
        app,
        name,
        json!([
            {"key": "a", "step": format!("{name}_a")},
            {"key": "b", "step": format!("{name}_b"), "depends_on": ["a"]}
        ]),
    )
    .await;
}

async fn timeline(app: &TestApp, id: &str) -> Vec<(String, Option<String>)> {
    let r = app.get(&format!("/api/v1/executions/{id}/events")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["step"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn deliveries(app: &TestApp, hook: &str, query: &str) -> Value {
    let r = send(app.as_role(
        Role::Viewer,
        Method::GET,
        &format!("/api/v1/webhooks/{hook}/deliveries{query}"),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

#[actix_web::test]
async fn every_event_of_an_execution_arrives_in_order_signed_with_a_summary_and_its_url() {
    let app = TestApp::spawn_with_engine(2).await;
    let receiver = Receiver::start(0);
    let _webhooks = Webhooks::start(&app, &QUICK);
    two_step_plan(&app, "web_failover").await;
    let secret = subscribe(&app, json!({"name": "ops", "url": receiver.url("/all")})).await;
    let id = drill(&app, "web_failover").await;
    assert_eq!(finished(&app, &id, 60).await["status"], "succeeded");
    let events = timeline(&app, &id).await;
    let got = receiver.wait_for("/all", events.len(), 30).await;
    let sent: Vec<(String, Option<String>)> = got
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["type"].as_str().unwrap().to_owned(),
                b["data"]["step"]["key"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(sent, events, "every event, in the timeline's order");
    for r in &got {
        r.assert_signed_by(&secret);
        let b = r.json();
        assert_eq!(b["id"], r.id.as_str(), "the body's id is the webhook-id");
        assert_eq!(
            b["data"]["execution"]["url"],
            format!("{PUBLIC_URL}/api/v1/executions/{id}")
        );
        assert_eq!(b["data"]["execution"]["plan"], "web_failover");
        assert_eq!(b["data"]["execution"]["mode"], "drill");
        assert!(
            b["data"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("Drill of web_failover"),
            "{b}"
        );
    }
    let last = got.last().unwrap().json();
    assert_eq!(last["type"], "execution.succeeded");
    assert_eq!(last["data"]["summary"], "Drill of web_failover succeeded");
    assert_eq!(last["data"]["execution"]["status"], "succeeded");
    let step_b = got
        .iter()
        .map(Received::json)
        .find(|b| b["type"] == "step.succeeded" && b["data"]["step"]["key"] == "b")
        .unwrap();
    assert_eq!(
        step_b["data"]["summary"],
        "Drill of web_failover: step b succeeded"
    );
    let page = deliveries(&app, "ops", "?status=delivered").await;
    assert_eq!(page["total"], events.len());
}

#[actix_web::test]
async fn a_receiver_failing_three_times_gets_every_event_in_order_with_each_attempt_recorded() {
    let app = TestApp::spawn_with_engine(2).await;
    let receiver = Receiver::start(3);
    let _webhooks = Webhooks::start(&app, &QUICK);
    two_step_plan(&app, "flaky").await;
    let secret = subscribe(
        &app,
        json!({"name": "chat", "url": receiver.url("/chat"),
               "events": ["execution.started", "step.succeeded", "execution.succeeded"]}),
    )
    .await;
    let id = drill(&app, "flaky").await;
    assert_eq!(finished(&app, &id, 60).await["status"], "succeeded");
    let got = receiver.wait_for("/chat", 4, 60).await;
    let types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "execution.started",
            "step.succeeded",
            "step.succeeded",
            "execution.succeeded"
        ]
    );
    for r in &got {
        r.assert_signed_by(&secret);
    }
    // The first event was tried four times under one id; nothing overtook it meanwhile.
    let all = receiver.received();
    assert_eq!(all.len(), 7, "{all:?}");
    assert!(
        all[..4].iter().all(|r| r.id == got[0].id),
        "retries come before later events"
    );

    let page = deliveries(&app, "chat", "").await;
    assert_eq!(page["total"], 4);
    let items = page["items"].as_array().unwrap();
    assert_eq!(
        items[0]["event_type"], "execution.succeeded",
        "newest first"
    );
    let first = items.last().unwrap();
    assert_eq!(first["event_type"], "execution.started");
    assert_eq!(first["status"], "delivered");
    assert_eq!(first["webhook_id"], got[0].id.as_str());
    let attempts = first["attempts"].as_array().unwrap();
    let codes: Vec<i64> = attempts
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 500, 200]);
    assert_eq!(attempts[0]["response_excerpt"], "try again later");
    assert_eq!(attempts[0]["error"], "HTTP 500");
    assert!(attempts.iter().all(|a| a["latency_ms"].as_i64().is_some()));
    assert!(attempts[3].get("error").is_none());
}

#[actix_web::test]
async fn subscriptions_for_failures_only_or_another_plan_get_nothing_from_a_succeeding_run() {
    let app = TestApp::spawn_with_engine(2).await;
    let receiver = Receiver::start(0);
    let _webhooks = Webhooks::start(&app, &QUICK);
    two_step_plan(&app, "billing").await;
    two_step_plan(&app, "payroll").await;
    subscribe(&app, json!({"name": "failures", "url": receiver.url("/failures"), "events": ["execution.failed", "step.failed"]})).await;
    subscribe(
        &app,
        json!({"name": "payroll_only", "url": receiver.url("/payroll"), "plan": "payroll"}),
    )
    .await;
    subscribe(&app, json!({"name": "billing_end", "url": receiver.url("/billing"), "plan": "billing", "events": ["execution.succeeded"]})).await;
    let id = drill(&app, "billing").await;
    assert_eq!(finished(&app, &id, 60).await["status"], "succeeded");
    let got = receiver.wait_for("/billing", 1, 30).await;
    assert_eq!(got[0].json()["type"], "execution.succeeded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/billing"]);
    assert_eq!(deliveries(&app, "failures", "").await["total"], 0);
    assert_eq!(deliveries(&app, "payroll_only", "").await["total"], 0);
    let r = app.get("/api/v1/webhooks/payroll_only").await;
    assert_eq!(r.body["plan"], "payroll");
}

#[actix_web::test]
async fn events_committed_while_the_service_is_down_are_delivered_after_a_restart() {
    let mut app = TestApp::spawn_with_engine(2).await;
    let receiver = Receiver::start(0);
    two_step_plan(&app, "restart").await;
    let secret = subscribe(&app, json!({"name": "itsm", "url": receiver.url("/itsm")})).await;
    // The dispatcher dies before anything is sent: the events are committed with their
    // deliveries, and nobody sends them.
    drop(Webhooks::start(&app, &QUICK));
    let id = drill(&app, "restart").await;
    assert_eq!(finished(&app, &id, 60).await["status"], "succeeded");
    app.kill_engine(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty());
    let events = timeline(&app, &id).await;
    assert_eq!(
        deliveries(&app, "itsm", "?status=pending").await["total"],
        events.len()
    );

    // "Restart": a new instance (engine and dispatcher) sends them all, in order.
    app.start_engine(2, Duration::from_secs(15));
    let _webhooks = Webhooks::start(&app, &QUICK);
    let got = receiver.wait_for("/itsm", events.len(), 30).await;
    let types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = events.into_iter().map(|(t, _)| t).collect();
    assert_eq!(types, expected);
    for r in &got {
        r.assert_signed_by(&secret);
    }
}

#[actix_web::test]
async fn a_delivery_is_dead_after_the_last_try_and_a_redeliver_sends_it_again() {
    let app = TestApp::spawn_with_engine(2).await;
    let receiver = Receiver::start(usize::MAX);
    let _webhooks = Webhooks::start(
        &app,
        &[Duration::from_millis(100), Duration::from_millis(100)],
    );
    two_step_plan(&app, "dead").await;
    let secret = subscribe(
        &app,
        json!({"name": "pager", "url": receiver.url("/pager"), "events": ["execution.succeeded"]}),
    )
    .await;
    let id = drill(&app, "dead").await;
    assert_eq!(finished(&app, &id, 60).await["status"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let page = deliveries(&app, "pager", "?status=dead").await;
        if page["total"] == 1 {
            break page["items"][0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "never dead: {}",
            deliveries(&app, "pager", "").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        dead["attempts"].as_array().unwrap().len(),
        3,
        "one try and two retries: {dead}"
    );
    assert_eq!(receiver.received().len(), 3);

    receiver.failures.store(0, Ordering::SeqCst);
    let path = format!(
        "/api/v1/webhooks/pager/deliveries/{}/redeliver",
        dead["id"].as_str().unwrap()
    );
    let r = send(app.as_role(Role::Viewer, Method::POST, &path)).await;
    r.assert_problem(403, "forbidden");
    let r = send(app.as_role(Role::Operator, Method::POST, &path)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    let got = receiver.wait_for("/pager", 1, 30).await;
    assert_eq!(
        got[0].id,
        dead["webhook_id"].as_str().unwrap(),
        "the same webhook-id"
    );
    got[0].assert_signed_by(&secret);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = deliveries(&app, "pager", "?status=delivered").await;
        if page["total"] == 1 {
            assert_eq!(
                page["items"][0]["attempts"].as_array().unwrap().len(),
                4,
                "history kept"
            );
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn bad_urls_and_unknown_event_types_are_named_and_the_secret_is_shown_only_once() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"name": "a", "url": "ftp://example.com/x"}), "url"),
        (
            json!({"name": "a", "url": "https://ops:pw@example.com/x"}),
            "url",
        ),
        (json!({"name": "a", "url": "not a url"}), "url"),
        (
            json!({"name": "a", "url": "https://example.com/x", "events": ["step.failed", "step.exploded"]}),
            "events[1]",
        ),
        (
            json!({"name": "a", "url": "https://example.com/x", "plan": "no_such_plan"}),
            "plan",
        ),
        (
            json!({"name": "A b", "url": "https://example.com/x"}),
            "name",
        ),
        (
            json!({"name": "a", "url": "https://example.com/x", "format": "teams"}),
            "format",
        ),
    ];
    for (body, field) in cases {
        let r = app.post_json("/api/v1/webhooks", &body).await;
        r.assert_problem(400, "validation");
        assert!(
            r.error_fields().iter().any(|f| f == field),
            "{field}: {}",
            r.text
        );
    }
    let r = send(
        app.as_role(Role::Operator, Method::POST, "/api/v1/webhooks")
            .json(&json!({"name": "a", "url": "https://example.com/x"})),
    )
    .await;
    r.assert_problem(403, "forbidden");

    let r = app
        .post_json(
            "/api/v1/webhooks",
            &json!({"name": "ops", "url": "https://chat.example.com/hook", "format": "slack"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    Secret::parse(&secret).unwrap();
    assert_eq!(r.header("etag"), Some("\"1\""));
    let r = app
        .post_json(
            "/api/v1/webhooks",
            &json!({"name": "ops", "url": "https://x.example.com/"}),
        )
        .await;
    r.assert_problem(409, "conflict");

    let read = send(app.as_role(Role::Viewer, Method::GET, "/api/v1/webhooks/ops")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["format"], "slack");
    assert_eq!(read.body["active"], true);
    let list = send(app.as_role(Role::Viewer, Method::GET, "/api/v1/webhooks")).await;
    assert_eq!(list.body["total"], 1);
    let stale = send(
        app.admin(Method::PATCH, "/api/v1/webhooks/ops")
            .header("if-match", "\"7\"")
            .json(&json!({"active": false})),
    )
    .await;
    stale.assert_problem(412, "precondition-failed");
    let patched = send(
        app.admin(Method::PATCH, "/api/v1/webhooks/ops")
            .header("if-match", "\"1\"")
            .json(&json!({"active": false})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["active"], false);
    let audit = app.get("/api/v1/audit?target_type=webhook").await;
    for shown in [
        &read.text,
        &list.text,
        &patched.text,
        &audit.text,
        &captured_logs(),
    ] {
        assert!(!shown.contains(&secret), "the secret leaked");
        assert!(
            !shown.contains(&secret["whsec_".len()..]),
            "the secret leaked"
        );
    }

    let rotated = send(app.admin(Method::POST, "/api/v1/webhooks/ops/rotate-secret")).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let new_secret = rotated.body["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert_eq!(rotated.header("etag"), Some("\"3\""));
    let r = send(
        app.admin(Method::DELETE, "/api/v1/webhooks/ops")
            .header("if-match", "\"3\""),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app.get("/api/v1/webhooks/ops").await;
    r.assert_problem(404, "not-found");
}

#[actix_web::test]
async fn an_event_that_commits_a_moment_after_a_later_one_is_still_delivered_first() {
    use diesel::prelude::*;
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(0);
    let _webhooks = Webhooks::start(&app, &QUICK);
    two_step_plan(&app, "race").await;
    let r = crate::engine::start(&app, "race", json!({"mode": "dry_run"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let execution = r.body["id"].as_str().unwrap().to_owned();
    subscribe(
        &app,
        json!({"name": "race", "url": receiver.url("/race"), "events": ["step.failed", "step.succeeded"]}),
    )
    .await;
    let insert = |kind: &str| {
        format!(
            "INSERT INTO execution_events (execution_id, type, step_key) VALUES ('{execution}', '{kind}', 'a')"
        )
    };
    // One transaction takes the lower event id and commits a moment later (as a busy engine
    // transaction may); another takes the next id and commits at once.
    let mut slow = app.conn();
    diesel::sql_query("BEGIN").execute(&mut slow).unwrap();
    diesel::sql_query(insert("step.failed"))
        .execute(&mut slow)
        .unwrap();
    diesel::sql_query(insert("step.succeeded"))
        .execute(&mut app.conn())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let early: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    assert!(
        early.is_empty(),
        "nothing goes out before it settles: {early:?}"
    );
    diesel::sql_query("COMMIT").execute(&mut slow).unwrap();
    let got = receiver.wait_for("/race", 2, 30).await;
    let order: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, ["step.failed", "step.succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_after_the_commit_delivers_every_event_once_restarted() {
    use diesel::prelude::*;
    let db = crate::common::TestDb::new();
    let jwt = "a-shared-secret-for-two-lives-0123456789abcdef";
    let key = dr_orchestrator::crypto::MasterKey::generate_base64();
    // The receiver refuses the first try, so the rest waits for the retry (5 s on).
    let receiver = Receiver::start(1);
    let (mut first, base) = crate::cli::serve_on(&db.url, jwt, &key).await;
    let token = dr_orchestrator::auth::JwtKeys::new(jwt.as_bytes()).issue(
        "ops",
        Role::Admin,
        chrono::Duration::minutes(10),
    );
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = post(
        "/api/v1/webhooks",
        json!({"name": "ops", "url": receiver.url("/ops"), "events": ["execution.started", "step.succeeded", "execution.succeeded"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = post(
        "/api/v1/steps",
        json!({"name": "say", "kind": "local_script", "params": {"script": "echo hi"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = post(
        "/api/v1/plans",
        json!({"name": "p", "steps": [{"key": "say", "step": "say"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = post("/api/v1/plans/p/executions", json!({"mode": "drill"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The run ends and the first try is refused; then the service dies with three deliveries
    // committed and none made.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e: Value = client
            .get(format!("{base}/api/v1/executions/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if e["status"] == "succeeded" && !receiver.received().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery was tried: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Kill only once the refused try is recorded: killed between the try and its record, the
    // delivery stays leased to the dead instance for the whole lease (60 s), as it should, and
    // the restarted one rightly waits that long (a slow machine hit this window).
    let mut conn = diesel::PgConnection::establish(&db.url).unwrap();
    loop {
        let recorded: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "SELECT count(*) FROM webhook_delivery_attempts",
        )
        .get_result(&mut conn)
        .unwrap();
        if recorded > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused try was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let pending: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(
        pending, 3,
        "every event is still to deliver when the service dies"
    );

    let (_second, _) = crate::cli::serve_on(&db.url, jwt, &key).await;
    let got = receiver.wait_for("/ops", 3, 60).await;
    let types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        ["execution.started", "step.succeeded", "execution.succeeded"]
    );
    for r in &got {
        r.assert_signed_by(&secret);
    }
}
