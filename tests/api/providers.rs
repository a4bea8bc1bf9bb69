//! `/api/v1/providers`: definitions, their validation and references, the connection test, the
//! provider's host list for binding; and a drill's automatic clean-up.

use std::time::Duration;

use dr_orchestrator::auth::Role;
use dr_orchestrator::providers::simulator::{self, SimAction, SimHost, SimulatorConfig};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp};
use crate::engine::{drill, finished};

/// A self-signed certificate (public material only), as a private CA would be pasted.
const PRIVATE_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUeMqf6EHDyeZegTBPgrfMYn4n2j8wCgYIKoZIzj0EAwIw\nGDEWMBQGA1UEAwwNaHlwZXJiZHIudGVzdDAeFw0yNjEyMDIwMTIxMzdaFw0zNjEx\nMjkwMTIxMzdaMBgxFjAUBgNVBAMMDWh5cGVyYmRyLnRlc3QwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAQ+O9q2wLgMWMj2gmrpzUSkMMLcvMBfS5i82PJONZSlF+2l\nYpndhBWWZjMIYl70t86IQIjREdovxVDApshvOuClo1MwUTAdBgNVHQ4EFgQUEnK2\natzl2vftyEFvrWy9ONU9TeowHwYDVR0jBBgwFoAUEnK2atzl2vftyEFvrWy9ONU9\nTeowDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiA2c0CaF1KgN8SR\nvcTc3BiUBYX3M7RiA+SYfYQTNoCZ+gIhAOtTk1zF5qegJRd2i9BxqP35SgMXpVPi\nOoYK/pJdrqkm\n-----END CERTIFICATE-----\n";

async fn simulator_with(ids: &[&str]) -> simulator::RunningSimulator {
    let config = SimulatorConfig {
        boot_time: Duration::from_millis(200),
        power_on_time: Duration::from_millis(200),
        hosts: ids.iter().map(|id| SimHost::new(id)).collect(),
        ..SimulatorConfig::default()
    };
    simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn login(app: &TestApp, name: &str, kind: &str, secret: Value) {
    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": name, "kind": kind, "username": "admin", "secret": secret}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

fn field_errors(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn providers_are_validated_and_stored_without_their_secret() {
    let app = TestApp::spawn().await;
    login(
        &app,
        "hb_login",
        "password",
        json!({"password": "pr0vider-pw"}),
    )
    .await;
    login(
        &app,
        "a_key",
        "ssh_password",
        json!({"password": "x-pw-123"}),
    )
    .await;

    let bad = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "Bad Name", "kind": "hyperbdr", "base_url": "https://admin:pw@hb.example.com",
                    "settings": {"poll_interval": "0s"}}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    let fields = field_errors(&bad.body);
    for f in ["name", "base_url", "credential", "settings.poll_interval"] {
        assert!(fields.contains(&f.to_owned()), "{f} in {fields:?}");
    }
    let wrong_kind = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "hb", "kind": "hyperbdr", "base_url": "https://hb.example.com", "credential": "a_key"}),
        )
        .await;
    assert_eq!(wrong_kind.status, 400, "{}", wrong_kind.text);
    assert!(wrong_kind.text.contains("password"), "{}", wrong_kind.text);
    let unknown = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "hb", "kind": "hyperbdr", "base_url": "ftp://hb.example.com", "credential": "nope"}),
        )
        .await;
    assert_eq!(unknown.status, 400, "{}", unknown.text);

    let bad_ca = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "hb", "kind": "hyperbdr", "base_url": "https://hb.example.com",
                    "credential": "hb_login", "settings": {"ca_certificate": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}}),
        )
        .await;
    assert_eq!(bad_ca.status, 400, "{}", bad_ca.text);
    assert_eq!(field_errors(&bad_ca.body), ["settings.ca_certificate"]);
    let r = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "hb_private_ca", "kind": "hyperbdr", "base_url": "https://hb.example.com",
                    "credential": "hb_login", "settings": {"ca_certificate": PRIVATE_CA}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["settings"]["ca_certificate"], PRIVATE_CA);
    let r = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "hb", "kind": "hyperbdr", "base_url": "https://hb.example.com/",
                    "credential": "hb_login", "settings": {"recovery_timeout": "45m"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["base_url"], "https://hb.example.com");
    assert_eq!(r.body["credential"], "hb_login");
    assert_eq!(r.body["settings"]["recovery_timeout"], "45m");
    assert_eq!(r.body["settings"]["tls_verify"], true);
    let listed = app.get("/api/v1/providers").await;
    assert_eq!(listed.body["total"], 2);
    assert!(!listed.text.contains("pr0vider-pw"));
    // Viewers read; only admins define.
    let as_operator = send(
        app.as_role(Role::Operator, Method::POST, "/api/v1/providers")
            .json(&json!({"name": "x", "kind": "simulator", "base_url": "http://127.0.0.1:1"})),
    )
    .await;
    assert_eq!(as_operator.status, 403);
    let as_viewer = send(app.as_role(Role::Viewer, Method::GET, "/api/v1/providers/hb")).await;
    assert_eq!(as_viewer.status, 200);
}

#[tokio::test]
async fn a_provider_named_by_hosts_and_its_login_cannot_be_pulled_away() {
    let app = TestApp::spawn().await;
    login(
        &app,
        "hb_login",
        "password",
        json!({"password": "pr0vider-pw"}),
    )
    .await;
    let r = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "hb", "kind": "hyperbdr", "base_url": "https://hb.example.com", "credential": "hb_login"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "web", "kind": "host",
                    "attributes": {"private_ip": "10.0.0.5", "provider": "hb", "provider_host_id": "h-1"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let delete = send(app.admin(Method::DELETE, "/api/v1/providers/hb")).await;
    assert_eq!(delete.status, 409, "{}", delete.text);
    assert_eq!(delete.body["referrers"][0]["name"], "web");
    let rename = send(app.admin(Method::PUT, "/api/v1/providers/hb").json(&json!({
        "name": "hb2", "kind": "hyperbdr", "base_url": "https://hb.example.com", "credential": "hb_login"}))).await;
    assert_eq!(rename.status, 409, "{}", rename.text);
    let cred = send(app.admin(Method::DELETE, "/api/v1/credentials/hb_login")).await;
    assert_eq!(cred.status, 409, "{}", cred.text);
    assert_eq!(cred.body["referrers"][0]["kind"], "provider");
    assert_eq!(cred.body["referrers"][0]["name"], "hb");

    // Once no host names it, it goes; then its login can go too.
    assert_eq!(
        send(app.admin(Method::DELETE, "/api/v1/resources/web"))
            .await
            .status,
        204
    );
    assert_eq!(
        send(app.admin(Method::DELETE, "/api/v1/providers/hb"))
            .await
            .status,
        204
    );
    assert_eq!(
        send(app.admin(Method::DELETE, "/api/v1/credentials/hb_login"))
            .await
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_test_and_the_host_list_speak_to_the_provider() {
    let sim = simulator_with(&["vm-web", "vm-db"]).await;
    let app = TestApp::spawn().await;
    login(
        &app,
        "sim_login",
        "password",
        json!({"password": "simulator"}),
    )
    .await;
    login(
        &app,
        "bad_login",
        "password",
        json!({"password": "n0t-the-password"}),
    )
    .await;
    for (name, credential, url) in [
        ("sim", "sim_login", sim.url()),
        ("wrong", "bad_login", sim.url()),
        ("gone", "sim_login", "http://127.0.0.1:9".to_owned()),
    ] {
        let r = app
            .post_json(
                "/api/v1/providers",
                &json!({"name": name, "kind": "simulator", "base_url": url, "credential": credential,
                        "settings": {"request_timeout": "2s"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "web", "kind": "host",
                    "attributes": {"private_ip": "10.0.0.5", "provider": "sim", "provider_host_id": "vm-web"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let test = |name: &str| {
        let path = format!("/api/v1/providers/{name}/test");
        let app = &app;
        async move { send(app.as_role(Role::Operator, Method::POST, &path)).await }
    };
    let ok = test("sim").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["ok"], true, "{}", ok.text);
    let refused = test("wrong").await;
    assert_eq!(refused.body["ok"], false, "{}", refused.text);
    assert!(
        refused.body["detail"].as_str().unwrap().contains("login"),
        "{}",
        refused.text
    );
    assert!(!refused.text.contains("n0t-the-password"));
    let unreachable = test("gone").await;
    assert_eq!(unreachable.body["ok"], false, "{}", unreachable.text);
    assert!(
        unreachable.body["detail"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        unreachable.text
    );

    let hosts = app.get("/api/v1/providers/sim/hosts").await;
    assert_eq!(hosts.status, 200, "{}", hosts.text);
    let items = hosts.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let web = items.iter().find(|h| h["id"] == "vm-web").unwrap();
    assert_eq!(web["bound_to"], "web");
    assert_eq!(web["protected"], true);
    let db = items.iter().find(|h| h["id"] == "vm-db").unwrap();
    assert!(db.get("bound_to").is_none(), "{db}");
    let down = app.get("/api/v1/providers/gone/hosts").await;
    assert_eq!(down.status, 502, "{}", down.text);
    assert_eq!(
        down.header("content-type"),
        Some("application/problem+json"),
        "{}",
        down.text
    );
    // A refused login is a 502 until the credential is rotated; the next call uses the new one.
    let refused = app.get("/api/v1/providers/wrong/hosts").await;
    assert_eq!(refused.status, 502, "{}", refused.text);
    assert!(!refused.text.contains("n0t-the-password"));
    let rotated = send(
        app.admin(Method::PATCH, "/api/v1/credentials/bad_login")
            .json(&json!({"secret": {"password": "simulator"}})),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(app.get("/api/v1/providers/wrong/hosts").await.status, 200);
    // Testing and listing change nothing at the provider.
    assert!(sim.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_whose_plan_says_so_is_cleaned_up_automatically_after_its_retention() {
    let sim = simulator_with(&["vm-web"]).await;
    let app = TestApp::spawn_with_engine(2).await;
    let r = app
        .post_json(
            "/api/v1/providers",
            &json!({"name": "sim", "kind": "simulator", "base_url": sim.url()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "web", "kind": "host",
                    "attributes": {"private_ip": "10.0.0.5", "provider": "sim", "provider_host_id": "vm-web"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "recover_web", "kind": "host_recovery", "params": {"hosts": ["web"]}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/plans",
            &json!({"name": "keep_briefly", "auto_cleanup_after": "1s",
                    "steps": [{"key": "recover", "step": "recover_web"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = drill(&app, "keep_briefly").await;
    assert_eq!(finished(&app, &id, 60).await["status"], "succeeded");
    // The sweep deletes the instance, then records it (the audit entry comes last).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let audit = loop {
        let audit = app.get("/api/v1/audit?action=cleanup").await;
        if audit.body["total"] == 1 || std::time::Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(audit.body["items"][0]["actor"], "engine", "{}", audit.text);
    assert_eq!(sim.accepted(SimAction::Delete, "vm-web"), 1);
    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    assert_eq!(
        report.body["recovered"][0]["state"], "deleted",
        "{}",
        report.text
    );
}
