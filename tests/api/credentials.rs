use diesel::prelude::*;
use diesel::sql_types::Text;
use reqwest::Method;
use serde_json::json;

use crate::common::{captured_logs, send, TestApp};

#[derive(QueryableByName)]
struct Dump {
    #[diesel(sql_type = Text)]
    dump: String,
}

/// Everything the database holds in the tables a secret could leak into, as text.
fn database_text(app: &TestApp) -> String {
    let mut conn = app.conn();
    diesel::sql_query(
        "SELECT concat_ws(' ',
            (SELECT string_agg(row_to_json(c)::text || encode(c.secret_ciphertext, 'escape'), ' ') FROM credentials c),
            (SELECT string_agg(row_to_json(a)::text, ' ') FROM audit_log a),
            (SELECT string_agg(row_to_json(r)::text, ' ') FROM resources r)) AS dump",
    )
    .get_result::<Dump>(&mut conn)
    .unwrap()
    .dump
}

#[tokio::test]
async fn a_credentials_secret_is_in_no_response_no_log_and_not_in_the_database_plain_text() {
    let app = TestApp::spawn().await;
    let secret = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let created = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "mysql_admin", "kind": "password", "username": "root",
                    "secret": {"password": secret}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["username"], "root");
    let mut texts = vec![created.text.clone()];
    texts.push(app.get("/api/v1/credentials/mysql_admin").await.text);
    texts.push(app.get("/api/v1/credentials").await.text);
    texts.push(app.get("/api/v1/audit").await.text);
    // A bad update that quotes the secret's field must not echo it either.
    texts.push(
        send(app.admin(Method::PUT, "/api/v1/credentials/mysql_admin").json(
            &json!({"name": "mysql_admin", "kind": "ssh_private_key", "secret": {"private_key": secret}}),
        ))
        .await
        .text,
    );
    for text in &texts {
        assert!(
            !text.contains(&secret),
            "secret leaked in a response: {text}"
        );
    }
    assert!(
        !texts[0].contains("secret\""),
        "no secret field at all: {}",
        texts[0]
    );
    let stored = database_text(&app);
    assert!(stored.contains("mysql_admin"), "the dump is real");
    assert!(!stored.contains(&secret), "secret stored in plain text");
    assert!(
        !captured_logs().contains(&secret),
        "secret in the service's log"
    );
}

#[tokio::test]
async fn a_mistyped_secret_is_named_but_not_quoted() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "k", "kind": "token", "secret": {"token": 31415926535_u64}}),
        )
        .await;
    r.assert_problem(400, "validation");
    assert_eq!(r.error_fields(), vec!["secret.token"]);
    assert!(!r.text.contains("31415926535"), "{}", r.text);

    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "k", "kind": "token"}),
        )
        .await;
    assert_eq!(r.error_fields(), vec!["secret"]);
}

#[tokio::test]
async fn the_stored_secret_opens_with_the_master_key_and_rotates() {
    let app = TestApp::spawn().await;
    let created = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": "jump_pw", "kind": "ssh_password", "username": "ops",
                    "secret": {"password": "first"}}),
        )
        .await;
    let id: uuid::Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    let open = |app: &TestApp| {
        let plain = dr_orchestrator::db::credentials::open_secret(
            &mut app.conn(),
            id,
            &app.state.master_key,
        )
        .unwrap();
        serde_json::from_slice::<serde_json::Value>(&plain).unwrap()
    };
    assert_eq!(open(&app)["password"], "first");

    // Metadata change keeps the secret.
    let kept = send(
        app.admin(Method::PATCH, "/api/v1/credentials/jump_pw")
            .json(&json!({"description": "DR jump server"})),
    )
    .await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    assert_eq!(open(&app)["password"], "first");

    let rotated = send(
        app.admin(Method::PATCH, "/api/v1/credentials/jump_pw")
            .header("If-Match", "\"2\"")
            .json(&json!({"secret": {"password": "second"}})),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(rotated.body["version"], 3);
    assert_eq!(open(&app)["password"], "second");
    let audit = app
        .get("/api/v1/audit?target_type=credential&action=update")
        .await;
    assert_eq!(audit.body["items"][0]["details"]["secret_replaced"], true);
}

#[tokio::test]
async fn deleting_a_credential_in_use_is_409_naming_the_referrers() {
    let app = TestApp::spawn().await;
    app.post_json(
        "/api/v1/credentials",
        &json!({"name": "web_key", "kind": "ssh_private_key",
                "secret": {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"}}),
    )
    .await;
    for name in ["nginx", "wordpress"] {
        let r = app
            .post_json(
                "/api/v1/resources",
                &json!({"name": name, "kind": "host",
                        "attributes": {"ssh": {"user": "root", "credential": "web_key"}}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = send(app.admin(Method::DELETE, "/api/v1/credentials/web_key")).await;
    r.assert_problem(409, "conflict");
    let names: Vec<&str> = r.body["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["nginx", "wordpress"]);

    let rename = send(
        app.admin(Method::PATCH, "/api/v1/credentials/web_key")
            .json(&json!({"name": "web_key2"})),
    )
    .await;
    rename.assert_problem(409, "conflict");

    for name in ["nginx", "wordpress"] {
        send(app.admin(Method::DELETE, &format!("/api/v1/resources/{name}"))).await;
    }
    let r = send(app.admin(Method::DELETE, "/api/v1/credentials/web_key")).await;
    assert_eq!(r.status, 204, "{}", r.text);
}

#[tokio::test]
async fn every_mutation_writes_an_audit_row_with_who_and_request_id() {
    let app = TestApp::spawn().await;
    app.post_json(
        "/api/v1/credentials",
        &json!({"name": "t", "kind": "token", "secret": {"token": "x"}}),
    )
    .await;
    let created = send(
        app.admin(Method::POST, "/api/v1/resources")
            .header("X-Request-Id", "req-abc-123")
            .json(&json!({"name": "site", "kind": "http_endpoint", "attributes": {"url": "https://example.com", "credential": "t"}})),
    )
    .await;
    assert_eq!(created.header("x-request-id"), Some("req-abc-123"));
    send(
        app.admin(Method::PATCH, "/api/v1/resources/site")
            .json(&json!({"description": "front door"})),
    )
    .await;
    send(app.admin(Method::DELETE, "/api/v1/resources/site")).await;
    // A rejected write leaves no row.
    app.post_json(
        "/api/v1/resources",
        &json!({"name": "Bad!", "kind": "host"}),
    )
    .await;

    let audit = app.get("/api/v1/audit").await;
    assert_eq!(audit.status, 200);
    let items = audit.body["items"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["action"].as_str().unwrap(),
                i["target_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("delete", "resource"),
            ("update", "resource"),
            ("create", "resource"),
            ("create", "credential")
        ]
    );
    assert_eq!(items[2]["request_id"], "req-abc-123");
    assert_eq!(items[2]["actor"], "test-admin");
    assert_eq!(items[2]["actor_role"], "admin");
    assert_eq!(items[1]["details"]["changed"], json!(["description"]));

    let page = app.get("/api/v1/audit?limit=3").await;
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/api/v1/audit?limit=3&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["items"][0]["target_type"], "credential");
}
