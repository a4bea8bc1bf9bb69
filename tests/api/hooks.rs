//! Inbound hooks as an ITSM tool uses them: signed (or bearer) calls to `/hooks/{id}` start
//! plans and decide approvals; refused calls start nothing.

use dr_orchestrator::auth::Role;
use dr_orchestrator::webhooks::signature::Secret;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{captured_logs, send, TestApp, TestResponse};
use crate::engine::{finished, plan, script, step, wait_for};

/// A plan `web` with a typed parameter `site` its one step echoes.
async fn site_plan(app: &TestApp) {
    script(app, "echo_site", "echo site={{ params.site }}", json!({})).await;
    let r = app
        .post_json(
            "/api/v1/plans",
            &json!({"name": "web", "parameters": {"site": {"type": "hostname", "required": true}},
                    "steps": [{"key": "say", "step": "echo_site", "run_in": "both"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// Creates a hook; returns its id and its secret.
async fn hook(app: &TestApp, body: &Value) -> (String, String) {
    let r = app.post_json("/api/v1/hooks", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["secret"].as_str().unwrap().to_owned(),
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Calls a hook signed with `secret` at time `ts`.
async fn call_at(
    app: &TestApp,
    id: &str,
    secret: &str,
    delivery: &str,
    ts: i64,
    body: &str,
) -> TestResponse {
    let signature = Secret::parse(secret)
        .unwrap()
        .sign(delivery, ts, body.as_bytes());
    send(
        app.anonymous(Method::POST, &format!("/hooks/{id}"))
            .header("content-type", "application/json")
            .header("webhook-id", delivery)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned()),
    )
    .await
}

async fn call(app: &TestApp, id: &str, secret: &str, delivery: &str, body: &str) -> TestResponse {
    call_at(app, id, secret, delivery, now(), body).await
}

async fn executions(app: &TestApp) -> i64 {
    let r = app.get("/api/v1/executions").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["total"].as_i64().unwrap()
}

async fn drill_hook(app: &TestApp) -> (String, String) {
    site_plan(app).await;
    hook(
        app,
        &json!({"name": "itsm_drill", "action": "start", "plan": "web", "mode": "drill",
                "params": {"site": "/change/site"}}),
    )
    .await
}

#[tokio::test]
async fn a_signed_call_starts_a_drill_as_the_hook_with_params_from_the_payload() {
    let app = TestApp::spawn_with_engine(1).await;
    let (id, secret) = drill_hook(&app).await;
    let r = call(
        &app,
        &id,
        &secret,
        "msg_1",
        r#"{"change": {"site": "WWW.Example.com"}}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let execution = r.body["execution_id"].as_str().unwrap();
    assert_eq!(r.body["url"], format!("/api/v1/executions/{execution}"));
    assert_eq!(r.header("location"), r.body["url"].as_str());
    assert_eq!(r.body["status"], "running");
    let e = finished(&app, execution, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["created_by"], "hook:itsm_drill");
    assert_eq!(e["mode"], "drill");
    assert_eq!(e["params"], json!({"site": "www.example.com"}));
    let audit = app
        .get(&format!("/api/v1/audit?target_id={execution}"))
        .await;
    assert_eq!(
        audit.body["items"][0]["actor"], "hook:itsm_drill",
        "{}",
        audit.text
    );
    assert_eq!(audit.body["items"][0]["action"], "start");
}

#[tokio::test]
async fn a_retried_delivery_returns_the_same_execution_and_starts_one() {
    let app = TestApp::spawn().await;
    let (id, secret) = drill_hook(&app).await;
    let body = r#"{"change": {"site": "www.example.com"}}"#;
    let first = call(&app, &id, &secret, "msg_retry", body).await;
    assert_eq!(first.status, 202, "{}", first.text);
    // A retry is signed again (a new timestamp), with the same id and body.
    let again = call_at(&app, &id, &secret, "msg_retry", now() - 60, body).await;
    assert_eq!(again.status, 202, "{}", again.text);
    assert_eq!(again.body, first.body);
    assert_eq!(executions(&app).await, 1);
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_unsigned_calls_are_401_and_start_nothing() {
    let app = TestApp::spawn().await;
    let (id, secret) = drill_hook(&app).await;
    let body = r#"{"change": {"site": "www.example.com"}}"#;
    let (other, _) = Secret::generate();
    let forged = other.sign("msg_x", now(), body.as_bytes());
    let r = send(
        app.anonymous(Method::POST, &format!("/hooks/{id}"))
            .header("webhook-id", "msg_x")
            .header("webhook-timestamp", now().to_string())
            .header("webhook-signature", forged)
            .body(body),
    )
    .await;
    r.assert_problem(401, "unauthorized");
    assert!(r.body["detail"]
        .as_str()
        .unwrap()
        .contains("does not match"));

    let stale = call_at(&app, &id, &secret, "msg_old", now() - 600, body).await;
    stale.assert_problem(401, "unauthorized");
    assert!(stale.body["detail"]
        .as_str()
        .unwrap()
        .contains("replay window"));

    let unsigned = send(
        app.anonymous(Method::POST, &format!("/hooks/{id}"))
            .header("webhook-id", "msg_y")
            .body(body),
    )
    .await;
    unsigned.assert_problem(401, "unauthorized");
    // A JWT is no way in either.
    let jwt = send(
        app.admin(Method::POST, &format!("/hooks/{id}"))
            .header("webhook-id", "msg_z")
            .body(body),
    )
    .await;
    jwt.assert_problem(401, "unauthorized");
    let big = format!(r#"{{"pad": "{}"}}"#, "x".repeat(300 * 1024));
    call(&app, &id, &secret, "msg_big", &big)
        .await
        .assert_problem(413, "payload-too-large");
    assert_eq!(executions(&app).await, 0);
    assert!(!r.text.contains(&secret) && !captured_logs().contains(&secret));
}

#[tokio::test]
async fn a_delivery_id_reused_with_another_body_is_a_409_replay() {
    let app = TestApp::spawn().await;
    let (id, secret) = drill_hook(&app).await;
    let first = call(
        &app,
        &id,
        &secret,
        "msg_7",
        r#"{"change": {"site": "a.example.com"}}"#,
    )
    .await;
    assert_eq!(first.status, 202, "{}", first.text);
    let replay = call(
        &app,
        &id,
        &secret,
        "msg_7",
        r#"{"change": {"site": "b.example.com"}}"#,
    )
    .await;
    replay.assert_problem(409, "conflict");
    assert!(replay.body["detail"].as_str().unwrap().contains("replay"));
    assert_eq!(executions(&app).await, 1);
}

#[tokio::test]
async fn a_disabled_hook_is_403_an_unknown_one_404_and_neither_starts_anything() {
    let app = TestApp::spawn().await;
    site_plan(&app).await;
    let (id, secret) = hook(
        &app,
        &json!({"name": "off", "action": "start", "plan": "web", "mode": "drill",
                "params": {"site": "/site"}, "enabled": false}),
    )
    .await;
    let body = r#"{"site": "www.example.com"}"#;
    let r = call(&app, &id, &secret, "m1", body).await;
    r.assert_problem(403, "forbidden");
    let unknown = call(&app, &uuid::Uuid::new_v4().to_string(), &secret, "m2", body).await;
    unknown.assert_problem(404, "not-found");
    let not_an_id = call(&app, "off", &secret, "m3", body).await;
    not_an_id.assert_problem(404, "not-found");
    assert_eq!(executions(&app).await, 0);
    assert!(!r.text.contains(&secret) && !unknown.text.contains(&secret));
}

#[tokio::test]
async fn a_payload_failing_the_parameter_types_is_400_naming_the_field_and_starts_nothing() {
    let app = TestApp::spawn().await;
    let (id, secret) = drill_hook(&app).await;
    let r = call(
        &app,
        &id,
        &secret,
        "m1",
        r#"{"change": {"site": "not a host!"}}"#,
    )
    .await;
    r.assert_problem(400, "validation");
    assert_eq!(r.error_fields(), vec!["params.site"]);
    assert!(r.text.contains("/change/site"), "{}", r.text);
    let missing = call(&app, &id, &secret, "m2", r#"{"change": {}}"#).await;
    missing.assert_problem(400, "validation");
    assert_eq!(missing.error_fields(), vec!["params.site"]);
    let not_json = call(&app, &id, &secret, "m3", "site=www.example.com").await;
    not_json.assert_problem(400, "bad-request");
    assert_eq!(executions(&app).await, 0);
    // Refused deliveries are not recorded: the same id may be sent again, fixed.
    let fixed = call(
        &app,
        &id,
        &secret,
        "m1",
        r#"{"change": {"site": "www.example.com"}}"#,
    )
    .await;
    assert_eq!(fixed.status, 202, "{}", fixed.text);
}

/// A plan `gated`: a manual approval, then a script.
async fn gated_plan(app: &TestApp) {
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "signoff", "kind": "manual_approval", "params": {"instructions": "go?"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    script(app, "works", "echo ok", json!({})).await;
    plan(
        app,
        "gated",
        json!([{"key": "gate", "step": "signoff"}, {"key": "after", "step": "works", "depends_on": ["gate"]}]),
    )
    .await;
}

async fn waiting_drill(app: &TestApp) -> String {
    let id = crate::engine::drill(app, "gated").await;
    wait_for(app, &id, 30, |e| {
        step(e, "gate")["status"] == "waiting_approval"
    })
    .await;
    id
}

#[tokio::test]
async fn a_hook_approves_the_waiting_step_and_another_rejects_it() {
    let app = TestApp::spawn_with_engine(2).await;
    gated_plan(&app).await;
    let (approve, approve_secret) = hook(
        &app,
        &json!({"name": "chat_approve", "action": "approve", "comment_pointer": "/text"}),
    )
    .await;
    let (reject, reject_secret) = hook(
        &app,
        &json!({"name": "chat_reject", "action": "reject", "execution_pointer": "/run"}),
    )
    .await;

    let id = waiting_drill(&app).await;
    let body = json!({"execution_id": id, "text": "go from #dr-bridge"}).to_string();
    let r = call(&app, &approve, &approve_secret, "a1", &body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["execution_id"], id.as_str());
    assert_eq!(r.body["step"], "gate");
    assert_eq!(r.body["decision"], "approved");
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(step(&e, "gate")["approval"]["by"], "hook:chat_approve");
    assert_eq!(
        step(&e, "gate")["approval"]["comment"],
        "go from #dr-bridge"
    );
    // Nothing waits any more: a second approval is a conflict.
    let late = call(&app, &approve, &approve_secret, "a2", &body).await;
    late.assert_problem(409, "conflict");

    let id = waiting_drill(&app).await;
    let r = call(
        &app,
        &reject,
        &reject_secret,
        "r1",
        &json!({"run": id}).to_string(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["decision"], "rejected");
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(step(&e, "gate")["approval"]["by"], "hook:chat_reject");
    let no_id = call(&app, &reject, &reject_secret, "r2", r#"{"run": 42}"#).await;
    no_id.assert_problem(400, "validation");
    assert_eq!(no_id.error_fields(), vec!["execution_id"]);
}

#[tokio::test]
async fn a_failover_by_hook_waits_for_an_operator_unless_the_payload_confirms_the_plan() {
    let app = TestApp::spawn_with_engine(1).await;
    site_plan(&app).await;
    let (waits, waits_secret) = hook(
        &app,
        &json!({"name": "incident_failover", "action": "start", "plan": "web", "mode": "failover",
                "params": {"site": "/site"}}),
    )
    .await;
    let (confirms, confirms_secret) = hook(
        &app,
        &json!({"name": "confirmed_failover", "action": "start", "plan": "web", "mode": "failover",
                "params": {"site": "/site"}, "failover_confirmation": "payload",
                "confirm_pointer": "/confirm_plan"}),
    )
    .await;

    let r = call(
        &app,
        &waits,
        &waits_secret,
        "f1",
        r#"{"site": "www.example.com"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["status"], "paused");
    let id = r.body["execution_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let e = app.get(&format!("/api/v1/executions/{id}")).await.body;
    assert_eq!(e["status"], "paused", "{e}");
    assert_eq!(e["mode"], "failover");
    assert_eq!(step(&e, "say")["status"], "ready", "{e}");
    assert!(e["pause_reason"].as_str().unwrap().contains("operator"));
    let go = send(app.as_role(
        Role::Operator,
        Method::POST,
        &format!("/api/v1/executions/{id}/resume"),
    ))
    .await;
    assert_eq!(go.status, 200, "{}", go.text);
    assert_eq!(finished(&app, &id, 30).await["status"], "succeeded");

    let wrong = call(
        &app,
        &confirms,
        &confirms_secret,
        "c1",
        r#"{"site": "www.example.com", "confirm_plan": "other"}"#,
    )
    .await;
    wrong.assert_problem(400, "validation");
    assert_eq!(wrong.error_fields(), vec!["confirm"]);
    assert!(wrong.text.contains("/confirm_plan"), "{}", wrong.text);
    assert_eq!(executions(&app).await, 1);

    let right = call(
        &app,
        &confirms,
        &confirms_secret,
        "c2",
        r#"{"site": "www.example.com", "confirm_plan": "web"}"#,
    )
    .await;
    assert_eq!(right.status, 202, "{}", right.text);
    assert_eq!(right.body["status"], "running");
    let id = right.body["execution_id"].as_str().unwrap();
    let e = finished(&app, id, 30).await;
    assert_eq!(
        (e["status"].as_str(), e["mode"].as_str()),
        (Some("succeeded"), Some("failover"))
    );
}

#[tokio::test]
async fn bearer_mode_takes_only_its_token_and_secrets_are_shown_only_at_create_and_rotate() {
    let app = TestApp::spawn().await;
    site_plan(&app).await;
    let created = app
        .post_json(
            "/api/v1/hooks",
            &json!({"name": "jira", "action": "start", "plan": "web", "mode": "dry_run",
                    "auth": "bearer", "params": {"site": "/fields/site"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let token = created.body["secret"].as_str().unwrap().to_owned();
    assert!(!token.starts_with("whsec_"));
    assert_eq!(created.body["url"], format!("/hooks/{id}"));

    let body = r#"{"fields": {"site": "www.example.com"}}"#;
    let call_with = |token: String, key: Option<&'static str>| {
        let mut r = app
            .anonymous(Method::POST, &format!("/hooks/{id}"))
            .bearer_auth(token)
            .body(body);
        if let Some(key) = key {
            r = r.header("Idempotency-Key", key);
        }
        send(r)
    };
    call_with(format!("{token}x"), Some("JIRA-1"))
        .await
        .assert_problem(401, "unauthorized");
    let no_key = call_with(token.clone(), None).await;
    no_key.assert_problem(400, "validation");
    assert_eq!(no_key.error_fields(), vec!["Idempotency-Key"]);
    assert_eq!(executions(&app).await, 0);
    let ok = call_with(token.clone(), Some("JIRA-1")).await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    assert_eq!(ok.body["status"], "succeeded"); // a dry run is done at once
    let again = call_with(token.clone(), Some("JIRA-1")).await;
    assert_eq!(again.body, ok.body);
    assert_eq!(executions(&app).await, 1);

    // Read back, listed, or audited, the secret is nowhere.
    let read = app.get(&format!("/api/v1/hooks/{id}")).await;
    let listed = send(app.as_role(Role::Viewer, Method::GET, "/api/v1/hooks")).await;
    let audit = app.get("/api/v1/audit?target_type=hook").await;
    for r in [&read, &listed, &audit] {
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            !r.text.contains(&token) && r.body.get("secret").is_none(),
            "{}",
            r.text
        );
    }
    assert_eq!(listed.body["items"][0]["plan"], "web");
    let viewer = send(app.as_role(
        Role::Viewer,
        Method::POST,
        &format!("/api/v1/hooks/{id}/rotate-secret"),
    ))
    .await;
    viewer.assert_problem(403, "forbidden");

    let rotated = send(app.admin(Method::POST, &format!("/api/v1/hooks/{id}/rotate-secret"))).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let new_token = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    call_with(token.clone(), Some("JIRA-2"))
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(
        call_with(new_token.clone(), Some("JIRA-2")).await.status,
        202
    );
    let logs = captured_logs();
    assert!(!logs.contains(&token) && !logs.contains(&new_token));
}

#[tokio::test]
async fn hooks_are_checked_against_their_plan_and_changed_under_etags() {
    let app = TestApp::spawn().await;
    site_plan(&app).await;
    let undeclared = app
        .post_json(
            "/api/v1/hooks",
            &json!({"name": "h", "action": "start", "plan": "web", "mode": "drill",
                    "params": {"site": "/s", "region": "/r", "bad": "no-slash"}}),
        )
        .await;
    undeclared.assert_problem(400, "validation");
    assert_eq!(undeclared.error_fields(), vec!["params.bad"]);
    let undeclared = app
        .post_json(
            "/api/v1/hooks",
            &json!({"name": "h", "action": "start", "plan": "web", "mode": "drill",
                    "params": {"site": "/s", "region": "/r"}}),
        )
        .await;
    undeclared.assert_problem(400, "validation");
    assert_eq!(undeclared.error_fields(), vec!["params.region"]);
    let mixed = app
        .post_json(
            "/api/v1/hooks",
            &json!({"name": "h", "action": "approve", "plan": "web"}),
        )
        .await;
    mixed.assert_problem(400, "validation");
    assert_eq!(mixed.error_fields(), vec!["plan"]);
    let no_plan = app
        .post_json(
            "/api/v1/hooks",
            &json!({"name": "h", "action": "start", "plan": "nope", "mode": "drill"}),
        )
        .await;
    no_plan.assert_problem(400, "validation");

    let def = json!({"name": "h", "action": "start", "plan": "web", "mode": "drill",
                     "params": {"site": "/s"}});
    let (id, _) = hook(&app, &def).await;
    app.post_json("/api/v1/hooks", &def)
        .await
        .assert_problem(409, "conflict");
    let mut changed = def.clone();
    changed["enabled"] = json!(false);
    let stale = send(
        app.admin(Method::PUT, "/api/v1/hooks/h")
            .header("If-Match", "\"7\"")
            .json(&changed),
    )
    .await;
    stale.assert_problem(412, "precondition-failed");
    let ok = send(
        app.admin(Method::PUT, &format!("/api/v1/hooks/{id}"))
            .header("If-Match", "\"1\"")
            .json(&changed),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(
        (ok.body["enabled"].as_bool(), ok.header("etag")),
        (Some(false), Some("\"2\""))
    );
    changed["auth"] = json!("bearer");
    let auth = send(app.admin(Method::PUT, "/api/v1/hooks/h").json(&changed)).await;
    assert_eq!(auth.error_fields(), vec!["auth"]);

    let plan_in_use = send(app.admin(Method::DELETE, "/api/v1/plans/web")).await;
    plan_in_use.assert_problem(409, "conflict");
    assert_eq!(plan_in_use.body["referrers"][0]["kind"], "hook");
    let operator = send(app.as_role(Role::Operator, Method::DELETE, "/api/v1/hooks/h")).await;
    operator.assert_problem(403, "forbidden");
    let gone = send(app.admin(Method::DELETE, "/api/v1/hooks/h")).await;
    assert_eq!(gone.status, 204, "{}", gone.text);
    assert_eq!(app.get("/api/v1/hooks/h").await.status, 404);
}
