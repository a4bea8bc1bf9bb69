use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp};

fn host(name: &str) -> Value {
    json!({
        "name": name,
        "kind": "host",
        "description": "WordPress VM",
        "attributes": {"private_ip": "10.0.1.20", "provider_host_id": "h-1"},
        "labels": {"app": "wordpress", "tier": "web"}
    })
}

#[tokio::test]
async fn resource_crud_round_trip_by_id_and_by_name() {
    let app = TestApp::spawn().await;
    let created = app.post_json("/api/v1/resources", &host("wordpress")).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location").unwrap(),
        format!("/api/v1/resources/{id}")
    );
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.body["created_by"], "test-admin");

    let by_id = app.get(&format!("/api/v1/resources/{id}")).await;
    let by_name = app.get("/api/v1/resources/wordpress").await;
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.body, by_name.body);
    assert_eq!(by_id.body["attributes"]["private_ip"], "10.0.1.20");
    assert_eq!(by_id.body["labels"]["tier"], "web");

    let mut changed = host("wordpress");
    changed["attributes"]["public_ip"] = json!("203.0.113.9");
    let replaced = send(
        app.admin(Method::PUT, "/api/v1/resources/wordpress")
            .json(&changed),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(replaced.body["version"], 2);
    assert_eq!(replaced.header("etag"), Some("\"2\""));
    assert_eq!(replaced.body["attributes"]["public_ip"], "203.0.113.9");

    let deleted = send(app.admin(Method::DELETE, &format!("/api/v1/resources/{id}"))).await;
    assert_eq!(deleted.status, 204);
    app.get(&format!("/api/v1/resources/{id}"))
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn patch_merges_and_null_removes_an_attribute() {
    let app = TestApp::spawn().await;
    app.post_json("/api/v1/resources", &host("nginx")).await;
    let patched = send(
        app.admin(Method::PATCH, "/api/v1/resources/nginx")
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"attributes": {"provider_host_id": null, "public_ip": "198.51.100.4"}, "labels": {"tier": null}}"#),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let attributes = &patched.body["attributes"];
    assert_eq!(attributes["private_ip"], "10.0.1.20");
    assert_eq!(attributes["public_ip"], "198.51.100.4");
    assert!(attributes.get("provider_host_id").is_none());
    assert_eq!(patched.body["labels"], json!({"app": "wordpress"}));

    let invalid = send(
        app.admin(Method::PATCH, "/api/v1/resources/nginx")
            .json(&json!({"attributes": {"private_ip": "nope"}})),
    )
    .await;
    invalid.assert_problem(400, "validation");
    assert_eq!(invalid.error_fields(), vec!["attributes.private_ip"]);
    assert_eq!(app.get("/api/v1/resources/nginx").await.body["version"], 2);
}

#[tokio::test]
async fn invalid_attributes_name_every_bad_field() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/resources",
            &json!({
                "name": "Web-01",
                "kind": "host",
                "attributes": {"private_ip": "10.0.0.300", "public_ip": "x",
                               "ssh": {"user": "root", "credential": "k", "host_key_fingerprint": "md5"}},
                "labels": {"bad key": "v"}
            }),
        )
        .await;
    response.assert_problem(400, "validation");
    assert_eq!(
        response.error_fields(),
        vec![
            "name",
            "labels.bad key",
            "attributes.private_ip",
            "attributes.public_ip",
            "attributes.ssh.host_key_fingerprint"
        ]
    );
    let listed = app.get("/api/v1/resources").await;
    assert_eq!(listed.body["total"], 0, "nothing is stored half-way");
}

#[tokio::test]
async fn an_unknown_kind_or_field_is_a_400_naming_it() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json("/api/v1/resources", &json!({"name": "x", "kind": "router"}))
        .await;
    r.assert_problem(400, "validation");
    assert_eq!(r.error_fields(), vec!["kind"]);

    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "x", "kind": "host", "colour": "red"}),
        )
        .await;
    assert_eq!(r.error_fields(), vec!["colour"]);

    let r = app
        .post_json("/api/v1/resources", &json!({"name": "x", "kind": "host", "attributes": {"ssh": {"user": "u", "credential": "c", "port": 70000}}}))
        .await;
    assert_eq!(r.error_fields(), vec!["attributes.ssh.port"]);
}

#[tokio::test]
async fn a_missing_or_wrong_kind_of_credential_is_a_field_error() {
    let app = TestApp::spawn().await;
    let jump = json!({"name": "jump01", "kind": "jump_server",
                      "attributes": {"address": "jump.example.com", "user": "ops", "credential": "nope"}});
    let r = app.post_json("/api/v1/resources", &jump).await;
    r.assert_problem(400, "validation");
    assert_eq!(r.error_fields(), vec!["attributes.credential"]);

    app.post_json(
        "/api/v1/credentials",
        &json!({"name": "nope", "kind": "token", "secret": {"token": "t0k3n"}}),
    )
    .await;
    let r = app.post_json("/api/v1/resources", &jump).await;
    assert_eq!(r.error_fields(), vec!["attributes.credential"]);
    assert!(
        r.text.contains("ssh_password or ssh_private_key"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn duplicate_name_is_409() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.post_json("/api/v1/resources", &host("db01"))
            .await
            .status,
        201
    );
    let again = app.post_json("/api/v1/resources", &host("db01")).await;
    again.assert_problem(409, "conflict");
    assert!(again.body["detail"]
        .as_str()
        .unwrap()
        .contains("a resource named `db01` already exists"));

    app.post_json("/api/v1/resources", &host("db02")).await;
    let rename = send(
        app.admin(Method::PUT, "/api/v1/resources/db02")
            .json(&host("db01")),
    )
    .await;
    rename.assert_problem(409, "conflict");
}

#[tokio::test]
async fn stale_if_match_is_412_and_current_one_passes() {
    let app = TestApp::spawn().await;
    app.post_json("/api/v1/resources", &host("web")).await;
    let first = send(
        app.admin(Method::PUT, "/api/v1/resources/web")
            .header("If-Match", "\"1\"")
            .json(&host("web")),
    )
    .await;
    assert_eq!(first.status, 200);
    let stale = send(
        app.admin(Method::PUT, "/api/v1/resources/web")
            .header("If-Match", "\"1\"")
            .json(&host("web")),
    )
    .await;
    stale.assert_problem(412, "precondition-failed");
    let stale_delete = send(
        app.admin(Method::DELETE, "/api/v1/resources/web")
            .header("If-Match", "\"1\""),
    )
    .await;
    stale_delete.assert_problem(412, "precondition-failed");
    let stale_patch = send(
        app.admin(Method::PATCH, "/api/v1/resources/web")
            .header("If-Match", "\"7\"")
            .json(&json!({"description": "x"})),
    )
    .await;
    stale_patch.assert_problem(412, "precondition-failed");
    assert_eq!(app.get("/api/v1/resources/web").await.body["version"], 2);
    let current = send(
        app.admin(Method::DELETE, "/api/v1/resources/web")
            .header("If-Match", "\"2\""),
    )
    .await;
    assert_eq!(current.status, 204);
}

#[tokio::test]
async fn a_malformed_replacement_is_400_even_with_a_stale_if_match() {
    let app = TestApp::spawn().await;
    app.post_json("/api/v1/resources", &host("web")).await;
    let mut bad = host("web");
    bad["attributes"] = json!([null, null]);
    let r = send(
        app.admin(Method::PUT, "/api/v1/resources/web")
            .header("If-Match", "\"9\"")
            .json(&bad),
    )
    .await;
    r.assert_problem(400, "validation");
    assert_eq!(r.body["errors"][0]["field"], "attributes", "{}", r.text);
    assert_eq!(app.get("/api/v1/resources/web").await.body["version"], 1);
}

#[tokio::test]
async fn list_filters_by_kind_and_label_and_pages_by_name() {
    let app = TestApp::spawn().await;
    for (name, tier) in [
        ("web03", "web"),
        ("web01", "web"),
        ("db01", "data"),
        ("web02", "web"),
    ] {
        let mut body = host(name);
        body["labels"] = json!({"tier": tier});
        assert_eq!(app.post_json("/api/v1/resources", &body).await.status, 201);
    }
    app.post_json(
        "/api/v1/resources",
        &json!({"name": "site", "kind": "http_endpoint", "attributes": {"url": "https://example.com/"}}),
    )
    .await;

    let hosts = app.get("/api/v1/resources?kind=host").await;
    assert_eq!(hosts.body["total"], 4);
    let web = app.get("/api/v1/resources?label=tier%3Dweb&limit=2").await;
    assert_eq!(web.body["total"], 3);
    let names: Vec<&str> = web.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web01", "web02"]);
    let cursor = web.body["next_cursor"].as_str().unwrap();
    let next = app
        .get(&format!(
            "/api/v1/resources?label=tier%3Dweb&limit=2&cursor={cursor}"
        ))
        .await;
    let names: Vec<&str> = next.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web03"]);
    assert!(next.body.get("next_cursor").is_none());

    let desc = app.get("/api/v1/resources?sort=-name&limit=1").await;
    assert_eq!(desc.body["items"][0]["name"], "web03");

    let bad = app.get("/api/v1/resources?limit=0").await;
    bad.assert_problem(400, "validation");
    assert_eq!(bad.error_fields(), vec!["limit"]);
    let bad = app.get("/api/v1/resources?kind=router").await;
    assert_eq!(bad.error_fields(), vec!["kind"]);
    let bad = app.get("/api/v1/resources?knd=host").await;
    bad.assert_problem(400, "validation");
}
