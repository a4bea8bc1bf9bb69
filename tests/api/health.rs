use reqwest::Method;

use crate::common::{send, TestApp};

#[tokio::test]
async fn healthz_and_readyz_answer_200_without_a_token() {
    let app = TestApp::spawn().await;
    let h = send(app.anonymous(Method::GET, "/healthz")).await;
    assert_eq!((h.status, h.body["status"].as_str()), (200, Some("ok")));
    let r = send(app.anonymous(Method::GET, "/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["migrations"], true);
}

#[tokio::test]
async fn readyz_is_503_when_migrations_are_missing() {
    let app = TestApp::spawn().await;
    diesel::RunQueryDsl::execute(
        diesel::sql_query("DELETE FROM __diesel_schema_migrations"),
        &mut app.conn(),
    )
    .unwrap();
    send(app.anonymous(Method::GET, "/readyz"))
        .await
        .assert_problem(503, "unavailable");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_show_the_pool() {
    let app = TestApp::spawn().await;
    app.get("/api/v1/resources").await;
    app.get("/api/v1/resources/ghost").await;
    let m = send(app.anonymous(Method::GET, "/metrics")).await;
    assert_eq!(m.status, 200);
    assert!(m.content_type().starts_with("text/plain"));
    assert!(
        m.text.contains(
            r#"dro_http_requests_total{method="GET",route="/api/v1/resources",status="200"} 1"#
        ),
        "{}",
        m.text
    );
    assert!(m.text.contains(
        r#"dro_http_requests_total{method="GET",route="/api/v1/resources/{key}",status="404"} 1"#
    ));
    assert!(m.text.contains("dro_http_request_duration_seconds_bucket"));
    assert!(m.text.contains("dro_db_pool_max_size 4"));
}

#[tokio::test]
async fn swagger_ui_and_the_document_are_served() {
    let app = TestApp::spawn().await;
    let ui = send(app.anonymous(Method::GET, "/docs/")).await;
    assert_eq!(ui.status, 200);
    assert!(
        ui.text.contains("swagger"),
        "{}",
        &ui.text[..ui.text.len().min(300)]
    );
    let init = send(app.anonymous(Method::GET, "/docs/swagger-initializer.js")).await;
    assert!(
        init.text.contains("/api-docs/openapi.json"),
        "{}",
        init.text
    );
    let doc = send(app.anonymous(Method::GET, "/api-docs/openapi.json")).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["info"]["title"], "dr-orchestrator");
}
