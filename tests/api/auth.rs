use dr_orchestrator::auth::Role;
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

use crate::common::{send, TestApp};

async fn with_token(app: &TestApp, token: &str) -> crate::common::TestResponse {
    send(
        app.anonymous(Method::GET, "/api/v1/resources")
            .bearer_auth(token),
    )
    .await
}

#[tokio::test]
async fn a_missing_token_is_401_with_a_bearer_challenge() {
    let app = TestApp::spawn().await;
    let r = send(app.anonymous(Method::GET, "/api/v1/resources")).await;
    r.assert_problem(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = send(
        app.anonymous(Method::GET, "/api/v1/resources")
            .header("Authorization", "Basic YTpi"),
    )
    .await;
    r.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn expired_wrongly_signed_and_garbage_tokens_are_401() {
    let app = TestApp::spawn().await;
    let expired = app
        .state
        .jwt
        .issue("old", Role::Admin, chrono::Duration::seconds(-120));
    let r = with_token(&app, &expired).await;
    r.assert_problem(401, "unauthorized");
    assert!(r.body["detail"].as_str().unwrap().contains("expired"));

    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "mallory", "role": "admin", "iss": "dr-orchestrator", "iat": now, "nbf": now, "exp": now + 600});
    let forged = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"not-the-service-secret-0123456789"),
    )
    .unwrap();
    let r = with_token(&app, &forged).await;
    r.assert_problem(401, "unauthorized");
    assert!(r.body["detail"].as_str().unwrap().contains("signature"));

    with_token(&app, "not.a.jwt")
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn an_alg_none_token_is_401() {
    let app = TestApp::spawn().await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = chrono::Utc::now().timestamp();
    let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64.encode(
        json!({"sub": "mallory", "role": "admin", "iss": "dr-orchestrator", "iat": now, "nbf": now, "exp": now + 600}).to_string(),
    );
    for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
        with_token(&app, &token)
            .await
            .assert_problem(401, "unauthorized");
    }
    // Another algorithm with the right secret is refused too.
    let hs512 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "x", "role": "admin", "iss": "dr-orchestrator", "iat": now, "nbf": now, "exp": now + 600}),
        &EncodingKey::from_secret(&app.jwt_secret),
    )
    .unwrap();
    with_token(&app, &hs512)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn a_token_not_valid_yet_or_from_another_issuer_is_401() {
    let app = TestApp::spawn().await;
    let key = EncodingKey::from_secret(&app.jwt_secret);
    let now = chrono::Utc::now().timestamp();
    let sign = |claims: serde_json::Value| encode(&Header::default(), &claims, &key).unwrap();
    let good = sign(
        json!({"sub": "ok", "role": "viewer", "iss": "dr-orchestrator", "iat": now, "nbf": now, "exp": now + 600}),
    );
    assert_eq!(
        with_token(&app, &good).await.status,
        200,
        "control: a well-formed token passes"
    );

    let early = sign(
        json!({"sub": "early", "role": "admin", "iss": "dr-orchestrator", "iat": now, "nbf": now + 3600, "exp": now + 7200}),
    );
    let r = with_token(&app, &early).await;
    r.assert_problem(401, "unauthorized");
    assert!(
        r.body["detail"].as_str().unwrap().contains("not valid yet"),
        "{}",
        r.text
    );

    let foreign = sign(
        json!({"sub": "x", "role": "admin", "iss": "someone-else", "iat": now, "nbf": now, "exp": now + 600}),
    );
    with_token(&app, &foreign)
        .await
        .assert_problem(401, "unauthorized");
    let no_role = sign(
        json!({"sub": "x", "iss": "dr-orchestrator", "iat": now, "nbf": now, "exp": now + 600}),
    );
    with_token(&app, &no_role)
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_write() {
    let app = TestApp::spawn().await;
    let read = send(app.as_role(Role::Viewer, Method::GET, "/api/v1/resources")).await;
    assert_eq!(read.status, 200);
    let body = json!({"name": "web", "kind": "host"});
    let write = send(
        app.as_role(Role::Viewer, Method::POST, "/api/v1/resources")
            .json(&body),
    )
    .await;
    write.assert_problem(403, "forbidden");
    assert!(write.body["detail"].as_str().unwrap().contains("admin"));
    let op = send(
        app.as_role(Role::Operator, Method::POST, "/api/v1/credentials")
            .json(&body),
    )
    .await;
    op.assert_problem(403, "forbidden");
    let del = send(app.as_role(Role::Viewer, Method::DELETE, "/api/v1/resources/web")).await;
    del.assert_problem(403, "forbidden");
    assert_eq!(app.get("/api/v1/resources").await.body["total"], 0);
}
