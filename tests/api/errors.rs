use reqwest::Method;
use serde_json::json;

use crate::common::{send, TestApp};

#[tokio::test]
async fn unknown_route_is_404_problem_json() {
    let app = TestApp::spawn().await;
    let r = send(app.anonymous(Method::GET, "/no/such/route")).await;
    r.assert_problem(404, "not-found");
    assert_eq!(r.body["instance"], "/no/such/route");
    assert!(r.body["request_id"].as_str().is_some());
    app.get("/api/v1/resources/ghost")
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn wrong_method_is_405_problem_json() {
    let app = TestApp::spawn().await;
    let r = send(app.admin(Method::DELETE, "/api/v1/resources")).await;
    r.assert_problem(405, "method-not-allowed");
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = send(app.admin(Method::from_bytes(b"TRACE").unwrap(), "/api/v1/plans/p1")).await;
    r.assert_problem(405, "method-not-allowed");
    assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
    send(app.admin(Method::POST, "/api/v1/audit"))
        .await
        .assert_problem(405, "method-not-allowed");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_and_broken_json_is_400() {
    let app = TestApp::spawn().await;
    let r = send(
        app.admin(Method::POST, "/api/v1/resources")
            .header("content-type", "text/plain")
            .body("name=web"),
    )
    .await;
    r.assert_problem(415, "unsupported-media-type");
    let r = send(app.admin(Method::POST, "/api/v1/resources").body("{}")).await;
    r.assert_problem(415, "unsupported-media-type");

    let r = send(
        app.admin(Method::POST, "/api/v1/resources")
            .header("content-type", "application/json")
            .body(r#"{"name": "web", "#),
    )
    .await;
    r.assert_problem(400, "bad-request");
    let r = send(
        app.admin(Method::POST, "/api/v1/resources")
            .header("content-type", "application/json")
            .body(""),
    )
    .await;
    r.assert_problem(400, "bad-request");
    let r = send(
        app.admin(Method::POST, "/api/v1/resources")
            .json(&json!([1, 2])),
    )
    .await;
    r.assert_problem(400, "validation");
    let r = send(
        app.admin(Method::PATCH, "/api/v1/resources/x")
            .json(&json!("str")),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn an_oversized_body_is_413_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let huge = json!({"name": "big", "kind": "generic", "attributes": {"blob": "x".repeat(2 * 1024 * 1024)}});
    let r = app.post_json("/api/v1/resources", &huge).await;
    r.assert_problem(413, "payload-too-large");
    assert_eq!(app.get("/api/v1/resources").await.body["total"], 0);
}

#[tokio::test]
async fn hostile_paths_and_headers_never_give_a_500() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/resources/%00",
        "/api/v1/resources/'%20OR%201=1--",
        "/api/v1/resources/%F0%9F%92%A5",
        "/api/v1/credentials/..%2F..%2Fetc",
        "/api/v1/resources?cursor=%%%",
        "/api/v1/resources?cursor=AA",
        "/api/v1/credentials?cursor=AA",
        "/api/v1/steps?cursor=AA",
        "/api/v1/plans?cursor=AA",
        "/api/v1/audit?cursor=AA",
        "/api/v1/audit?target_id=not-a-uuid",
    ] {
        let r = app.get(path).await;
        assert!(
            r.status >= 400 && r.status < 500,
            "{path}: {} {}",
            r.status,
            r.text
        );
        assert!(
            r.content_type().starts_with("application/problem+json"),
            "{path}"
        );
    }
    let r = send(
        app.admin(Method::PUT, "/api/v1/resources/web")
            .header(
                "If-Match",
                reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            )
            .json(&json!({"name": "web", "kind": "host"})),
    )
    .await;
    assert!(r.status >= 400 && r.status < 500, "{}", r.text);
}
