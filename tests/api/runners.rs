//! The http_request step and the tcp/http checks against the HTTP server of
//! `common::start_http_server`; ping and PostgreSQL sql checks on loopback.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{run_single, start_http_server, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_authenticates_sends_json_and_extracts_outputs() {
    let app = TestApp::spawn_with_engine(2).await;
    let (base, _server) = start_http_server();
    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "dns_token", "kind": "token", "secret": {"token": "t0k"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let e = run_single(&app, "dns_switch", "http_request", json!({
        "method": "PUT", "url": format!("{base}/api/records/www"), "auth": {"bearer": "dns_token"},
        "body": {"value": "203.0.113.9"}, "expected_status": [200], "outputs": {"record": "/data/id", "value": "/data/value"}
    })).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let outputs = &e["steps"][0]["outputs"];
    assert_eq!(
        (
            outputs["status"].as_u64(),
            outputs["record"].as_str(),
            outputs["value"].as_str()
        ),
        (Some(200), Some("www"), Some("203.0.113.9"))
    );
    let id = e["id"].as_str().unwrap();
    let logs = app.get(&format!("/api/v1/executions/{id}/logs")).await.text;
    assert!(logs.contains("HTTP 200") && !logs.contains("t0k"), "{logs}");

    let e = run_single(
        &app,
        "wrong_status",
        "http_request",
        json!({"url": format!("{base}/status/500")}),
    )
    .await;
    assert_eq!(e["status"], "failed");
    assert!(
        e["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP status 500"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_keeps_polling_until_the_site_answers_and_keeps_the_evidence() {
    let app = TestApp::spawn_with_engine(2).await;
    let (base, _server) = start_http_server();
    let e = run_single(&app, "site_up", "check", json!({
        "type": "http", "url": format!("{base}/flaky"), "contains": "WordPress", "interval": "1s", "until": "30s"
    })).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let outputs = &e["steps"][0]["outputs"];
    assert_eq!(outputs["tries"], 4, "{e}");
    let evidence = outputs["evidence"].as_array().unwrap();
    assert_eq!(evidence.iter().filter(|t| t["passed"] == false).count(), 3);
    assert!(evidence[0]["detail"].as_str().unwrap().contains("HTTP 503"));
    let id = e["id"].as_str().unwrap();
    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    assert_eq!(
        report.body["timeline"][0]["evidence"]["outputs"]["tries"],
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_passes_on_an_open_port_and_fails_on_a_closed_one_when_time_runs_out() {
    let app = TestApp::spawn_with_engine(2).await;
    let (base, _server) = start_http_server();
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let e = run_single(
        &app,
        "port_open",
        "check",
        json!({"type": "tcp", "host": "127.0.0.1", "port": port, "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    // A host named by its inventory resource probes the resource's address.
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "web", "kind": "host", "attributes": {"private_ip": "127.0.0.1"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let e = run_single(
        &app,
        "web_port",
        "check",
        json!({"type": "tcp", "host": "web", "port": port, "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let detail = e["steps"][0]["outputs"]["evidence"][0]["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains("127.0.0.1"), "{detail}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let e = run_single(&app, "port_closed", "check", json!({"type": "tcp", "host": "127.0.0.1", "port": closed, "interval": "1s", "until": "3s"})).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("did not pass after"),
        "{e}"
    );
    assert!(e["steps"][0]["outputs"]["tries"].as_u64().unwrap() >= 2);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_check_reaches_loopback_with_an_icmp_echo() {
    let app = TestApp::spawn_with_engine(1).await;
    let e = run_single(
        &app,
        "ping_lo",
        "check",
        json!({"type": "ping", "host": "127.0.0.1", "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let detail = e["steps"][0]["outputs"]["evidence"][0]["detail"]
        .as_str()
        .unwrap();
    // As root (CI) the echo goes out from this process; elsewhere the system ping answers and
    // the evidence says why.
    assert!(
        detail.contains("ICMP echo reply in")
            || (detail.contains("system ping") && detail.contains("ICMP sockets not permitted")),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_runs_its_query_against_the_database_resource() {
    let app = TestApp::spawn_with_engine(1).await;
    let url = url::Url::parse(&app.db.url).unwrap();
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        println!("skipped: the test PostgreSQL listens on a unix socket only, and a database resource needs an address");
        return;
    };
    let r = app.post_json("/api/v1/credentials", &json!({"name": "pg_pw", "kind": "password", "username": url.username(), "secret": {"password": "trust-auth-ignores-it"}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app.post_json("/api/v1/resources", &json!({"name": "pg", "kind": "database", "attributes": {
        "engine": "postgresql", "host": host, "port": url.port().unwrap_or(5432),
        "database": url.path().trim_start_matches('/'), "user": url.username(), "credential": "pg_pw"}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let e = run_single(&app, "writable", "check", json!({"type": "sql", "database": "pg", "query": "SELECT NOT pg_is_in_recovery()", "interval": "1s", "until": "5s"})).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert!(e["steps"][0]["outputs"]["evidence"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("returned true"));
    let e = run_single(&app, "never", "check", json!({"type": "sql", "database": "pg", "query": "SELECT 1 = 2", "interval": "1s", "until": "2s"})).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("returned false"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_tls_verification_off_shows_in_the_report() {
    let app = TestApp::spawn_with_engine(2).await;
    let (base, _server) = start_http_server();
    let e = run_single(
        &app,
        "insecure_probe",
        "check",
        json!({"type": "http", "url": format!("{base}/status/200"), "tls_verify": false,
               "interval": "1s", "until": "10s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let id = e["id"].as_str().unwrap();
    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    let warnings = report.body["timeline"][0]["warnings"].to_string();
    assert!(
        warnings.contains("TLS certificate verification was off"),
        "{}",
        report.text
    );
    let md = crate::common::send(
        app.admin(
            reqwest::Method::GET,
            &format!("/api/v1/executions/{id}/report"),
        )
        .header("accept", "text/markdown"),
    )
    .await;
    assert!(
        md.text.contains("TLS certificate verification was off"),
        "{}",
        md.text
    );
    let e = run_single(
        &app,
        "secure_probe",
        "check",
        json!({"type": "http", "url": format!("{base}/status/200"), "interval": "1s", "until": "10s"}),
    )
    .await;
    let id = e["id"].as_str().unwrap();
    let report = app.get(&format!("/api/v1/executions/{id}/report")).await;
    assert!(
        report.body["timeline"][0].get("warnings").is_none(),
        "{}",
        report.text
    );
}
