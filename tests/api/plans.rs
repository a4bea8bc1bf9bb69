//! Steps and plans through the API: CRUD, YAML, versions, validation paths, render, injection.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp, TestResponse};

/// A small inventory: a jump server, two hosts, a database, their credentials.
async fn inventory(app: &TestApp) {
    for c in [
        json!({"name": "jump_key", "kind": "ssh_password", "username": "ops", "secret": {"password": "jump-secret-1"}}),
        json!({"name": "root_pw", "kind": "ssh_password", "username": "root", "secret": {"password": "root-secret-2"}}),
        json!({"name": "db_pw", "kind": "password", "username": "app", "secret": {"password": "db-secret-3"}}),
    ] {
        assert_eq!(app.post_json("/api/v1/credentials", &c).await.status, 201);
    }
    for r in [
        json!({"name": "jump01", "kind": "jump_server", "attributes": {"address": "203.0.113.10", "user": "ops", "credential": "jump_key"}}),
        json!({"name": "web", "kind": "host", "attributes": {"private_ip": "10.0.0.10", "provider": "sim", "provider_host_id": "h-web", "ssh": {"user": "root", "credential": "root_pw"}}}),
        json!({"name": "db", "kind": "host", "attributes": {"private_ip": "10.0.0.20", "provider": "sim", "provider_host_id": "h-db", "ssh": {"user": "root", "credential": "root_pw"}}}),
    ] {
        let res = app.post_json("/api/v1/resources", &r).await;
        assert_eq!(res.status, 201, "{}", res.text);
    }
}

async fn step(app: &TestApp, body: Value) -> TestResponse {
    app.post_json("/api/v1/steps", &body).await
}

/// Steps the plans below use.
async fn steps(app: &TestApp) {
    for s in [
        json!({"name": "recover", "kind": "host_recovery", "params": {"hosts": ["web", "db"]}}),
        json!({"name": "boot", "kind": "power_on", "params": {"hosts": ["db", "web"]}}),
        json!({"name": "say", "kind": "remote_script", "params": {"target": "web", "via": "jump01", "script": "printf '%s\\n' {{ params.msg }}", "outputs": ["said"]}}),
        json!({"name": "pause", "kind": "wait", "params": {"duration": "30s"}}),
    ] {
        let r = step(app, s).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

fn plan(steps: Value) -> Value {
    json!({"name": "p1", "target_rto": "15m", "parameters": {"msg": {"type": "string", "default": "hello"}}, "steps": steps})
}

async fn post_plan(app: &TestApp, body: &Value) -> TestResponse {
    app.post_json("/api/v1/plans", body).await
}

/// The (field, message) pairs of a 400.
fn problems(r: &TestResponse) -> Vec<(String, String)> {
    assert_eq!(r.status, 400, "{}", r.text);
    r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn step_crud_fills_defaults_and_names_bad_fields() {
    let app = TestApp::spawn().await;
    let r = step(&app, json!({"name": "db_port", "kind": "check", "params": {"type": "tcp", "host": "10.0.0.20", "port": 3306}})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["params"]["interval"], "5s");
    assert_eq!(r.body["timeout"], "5m30s");
    assert_eq!(r.body["idempotent"], true);
    assert_eq!(r.body["retry"]["max_attempts"], 1);

    let patched = send(
        app.admin(Method::PATCH, "/api/v1/steps/db_port")
            .header("If-Match", "\"1\"")
            .json(&json!({"params": {"until": "2m"}, "retry": {"max_attempts": 3}})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["params"]["until"], "2m");
    assert_eq!(
        patched.body["timeout"], "2m30s",
        "a default timeout follows the new until"
    );
    assert_eq!(patched.body["version"], 2);
    let explicit = send(
        app.admin(Method::PATCH, "/api/v1/steps/db_port")
            .json(&json!({"timeout": "20m"})),
    )
    .await;
    assert_eq!(explicit.body["timeout"], "20m");
    let kept = send(
        app.admin(Method::PATCH, "/api/v1/steps/db_port")
            .json(&json!({"params": {"until": "3m"}})),
    )
    .await;
    assert_eq!(kept.body["timeout"], "20m", "a chosen timeout is kept");
    let short = send(
        app.admin(Method::PATCH, "/api/v1/steps/db_port")
            .json(&json!({"params": {"until": "30m"}})),
    )
    .await;
    assert_eq!(
        problems(&short)[0].0,
        "timeout",
        "a timeout shorter than until is refused"
    );
    let missing = step(&app, json!({"name": "w", "kind": "wait", "params": {}})).await;
    assert_eq!(
        problems(&missing)[0],
        ("params".to_owned(), "missing field `duration`".to_owned())
    );

    let bad = step(&app, json!({"name": "Bad Name", "kind": "check", "params": {"type": "http", "url": "ftp://x", "port": 1}})).await;
    assert_eq!(
        problems(&bad)
            .into_iter()
            .map(|(f, _)| f)
            .collect::<Vec<_>>(),
        vec!["name", "params.url", "params.port"]
    );
    let bad = step(&app, json!({"name": "s", "kind": "remote_script", "params": {"target": "web", "script": "echo {{ secrets.x }}"}})).await;
    assert_eq!(problems(&bad)[0].0, "params.script");
    let bad = step(&app, json!({"name": "s", "kind": "teleport"})).await;
    assert_eq!(problems(&bad)[0].0, "kind");

    let deleted = send(app.admin(Method::DELETE, "/api/v1/steps/db_port")).await;
    assert_eq!(deleted.status, 204);
}

#[tokio::test]
async fn a_plan_round_trips_as_yaml_and_every_save_is_a_new_version() {
    let app = TestApp::spawn().await;
    inventory(&app).await;
    steps(&app).await;
    let yaml = "name: p1\ntarget_rto: 15m\nparameters:\n  msg: {type: string, default: hello}\nsteps:\n  - {key: recover, step: recover}\n  - {key: boot, step: boot, depends_on: [recover]}\n  - {key: say, step: say, depends_on: [boot]}\n";
    let created = send(
        app.admin(Method::POST, "/api/v1/plans")
            .header("content-type", "application/yaml")
            .body(yaml),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["version"], 1);

    let as_yaml = send(
        app.admin(Method::GET, "/api/v1/plans/p1")
            .header("accept", "application/yaml"),
    )
    .await;
    assert_eq!(as_yaml.status, 200);
    assert!(as_yaml.content_type().starts_with("application/yaml"));
    assert_eq!(as_yaml.header("etag"), Some("\"1\""));
    let parsed: Value = serde_norway::from_str(&as_yaml.text).unwrap();
    assert_eq!(parsed["steps"][2]["depends_on"], json!(["boot"]));

    let edited = as_yaml.text.replace("hello", "bonjour");
    let saved = send(
        app.admin(Method::PUT, "/api/v1/plans/p1")
            .header("content-type", "application/yaml")
            .header("If-Match", "\"1\"")
            .body(edited.clone()),
    )
    .await;
    assert_eq!(saved.status, 200, "{}", saved.text);
    assert_eq!(saved.body["version"], 2);
    assert_eq!(saved.body["parameters"]["msg"]["default"], "bonjour");
    let stale = send(
        app.admin(Method::PUT, "/api/v1/plans/p1")
            .header("content-type", "application/yaml")
            .header("If-Match", "\"1\"")
            .body(edited),
    )
    .await;
    stale.assert_problem(412, "precondition-failed");

    let versions = app.get("/api/v1/plans/p1/versions").await;
    let numbers: Vec<i64> = versions.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, vec![2, 1]);
    let v1 = app.get("/api/v1/plans/p1/versions/1").await;
    assert_eq!(
        v1.body["spec"]["parameters"]["msg"]["default"], "hello",
        "version 1 is unchanged"
    );
    assert_eq!(v1.body["resolved"][1]["definition"]["kind"], "power_on");
    app.get("/api/v1/plans/p1/versions/3")
        .await
        .assert_problem(404, "not-found");
    app.get("/api/v1/plans/p1/versions/zero")
        .await
        .assert_problem(404, "not-found");

    let bad_yaml = send(
        app.admin(Method::POST, "/api/v1/plans")
            .header("content-type", "application/yaml")
            .body("name: [unclosed"),
    )
    .await;
    bad_yaml.assert_problem(400, "bad-request");
    let not_plan = send(
        app.admin(Method::POST, "/api/v1/plans")
            .header("content-type", "text/csv")
            .body("a,b"),
    )
    .await;
    not_plan.assert_problem(415, "unsupported-media-type");
}

#[tokio::test]
async fn editing_a_step_leaves_saved_plan_versions_as_they_were() {
    let app = TestApp::spawn().await;
    inventory(&app).await;
    steps(&app).await;
    let r = post_plan(&app, &plan(json!([{"key": "w", "step": "pause"}]))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let changed = send(
        app.admin(Method::PATCH, "/api/v1/steps/pause")
            .json(&json!({"params": {"duration": "5m"}})),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let v1 = app.get("/api/v1/plans/p1/versions/1").await;
    assert_eq!(
        v1.body["resolved"][0]["definition"]["params"]["duration"],
        "30s"
    );
    assert_eq!(v1.body["resolved"][0]["step_version"], 1);

    let in_use = send(app.admin(Method::DELETE, "/api/v1/steps/pause")).await;
    in_use.assert_problem(409, "conflict");
    assert_eq!(in_use.body["referrers"][0]["name"], "p1");
}

#[tokio::test]
async fn each_plan_error_is_reported_at_its_path_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    inventory(&app).await;
    steps(&app).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([{"key": "a", "step": "pause", "depends_on": ["b"]}, {"key": "b", "step": "pause", "depends_on": ["a"]}]),
            "steps[0].depends_on",
            "cycle: a -> b -> a",
        ),
        (
            json!([{"key": "a", "step": "nope"}]),
            "steps[0].step",
            "no step named `nope`",
        ),
        (
            json!([{"key": "a", "step": "pause", "depends_on": ["ghost"]}]),
            "steps[0].depends_on[0]",
            "`ghost`",
        ),
        (
            json!([{"key": "a", "step": "pause"}, {"key": "a", "step": "pause"}]),
            "steps[1].key",
            "already the key",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"script": "echo {{ resources.nowhere.private_ip }}"}}]),
            "steps[0].params.script",
            "no resource named `nowhere`",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"script": "echo {{ resources.web.public_ip }}"}}]),
            "steps[0].params.script",
            "has no attribute `public_ip`",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"credentials": {"PW": "vault.password"}}}]),
            "steps[0].params.credentials.PW",
            "no credential named `vault`",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"env": {"PW": "{{ credentials.db_pw.token }}"}}}]),
            "steps[0].params.env.PW",
            "has the fields",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"script": "echo {{ params.undeclared }}"}}]),
            "steps[0].params.script",
            "not a declared parameter",
        ),
        (
            json!([{"key": "a", "step": "say"}, {"key": "b", "step": "say", "params": {"script": "echo {{ steps.a.outputs.said }}"}}]),
            "steps[1].params.script",
            "not an ancestor",
        ),
        (
            json!([{"key": "a", "step": "say"}, {"key": "b", "step": "say", "depends_on": ["a"], "params": {"script": "echo {{ steps.a.outputs.nothing }}"}}]),
            "steps[1].params.script",
            "has no output `nothing`",
        ),
        (
            json!([{"key": "a", "step": "pause", "run_in": "drill"}, {"key": "b", "step": "pause", "run_in": "failover", "depends_on": ["a"]}]),
            "steps[1].depends_on[0]",
            "could never start",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"via": "web"}}]),
            "steps[0].params.via",
            "not a jump_server",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"via": "jump99"}}]),
            "steps[0].params.via",
            "no resource named `jump99`",
        ),
        (
            json!([{"key": "a", "step": "say", "params": {"target": "10.9.9.9"}}]),
            "steps[0].params.login",
            "needs a `login`",
        ),
        (
            json!([{"key": "a", "step": "boot"}]),
            "steps[0].params.hosts[0]",
            "not recovered by a host_recovery step",
        ),
        (
            json!([{"key": "a", "step": "pause", "params": {"duration": "forever"}}]),
            "steps[0].params.duration",
            "duration",
        ),
    ];
    for (steps, field, fragment) in cases {
        let r = post_plan(&app, &plan(steps.clone())).await;
        let found = problems(&r);
        assert!(
            found
                .iter()
                .any(|(f, m)| f == field && m.contains(fragment)),
            "for {steps}: expected `{field}` with `{fragment}`, got {found:?}"
        );
    }
    assert_eq!(
        app.get("/api/v1/plans").await.body["total"],
        0,
        "no invalid plan was stored"
    );
}

#[tokio::test]
async fn validate_reports_critical_path_rto_risk_and_inventory_drift() {
    let app = TestApp::spawn().await;
    inventory(&app).await;
    steps(&app).await;
    let body = json!({"name": "p1", "target_rto": "1m", "steps": [
        {"key": "recover", "step": "recover"},
        {"key": "boot", "step": "boot", "depends_on": ["recover"]},
        {"key": "w", "step": "pause"},
    ]});
    let created = post_plan(&app, &body).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(
        created.body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("target RTO of 1m"),
        "{}",
        created.text
    );

    let report = send(app.admin(Method::POST, "/api/v1/plans/p1/validate")).await;
    assert_eq!(report.body["valid"], true);
    assert_eq!(
        report.body["modes"][0]["critical_path"],
        json!(["recover", "boot"])
    );
    assert_eq!(report.body["target_rto"], "1m");

    // The inventory changes under a saved plan: validation says so.
    let gone = send(app.admin(Method::DELETE, "/api/v1/resources/db")).await;
    assert_eq!(gone.status, 204);
    let report = send(
        app.admin(Method::POST, "/api/v1/plans/p1/validate")
            .json(&json!({"version": 1})),
    )
    .await;
    assert_eq!(report.body["valid"], false, "{}", report.text);
    assert_eq!(
        report.body["errors"][0]["field"],
        "steps[0].params.hosts[1]"
    );
    let r = send(
        app.admin(Method::POST, "/api/v1/plans/p1/validate")
            .json(&json!({"version": 9})),
    )
    .await;
    r.assert_problem(404, "not-found");
}

#[tokio::test]
async fn render_resolves_values_masks_secrets_and_quoting_holds_in_a_real_shell() {
    let app = TestApp::spawn().await;
    inventory(&app).await;
    steps(&app).await;
    let body = plan(json!([
        {"key": "say", "step": "say", "params": {
            "env": {"DB_PW": "{{ credentials.db_pw.password }}", "WHERE": "{{ resources.web.private_ip }}"},
            "credentials": {"ROOT_PW": "root_pw.password"}}},
    ]));
    assert_eq!(post_plan(&app, &body).await.status, 201);

    let marker =
        std::env::temp_dir().join(format!("dro-injected-{}", uuid::Uuid::new_v4().simple()));
    let hostile = format!(
        "x'; touch {m}; echo '$(touch {m}) `touch {m}` ; rm -rf / && touch {m}",
        m = marker.display()
    );
    let rendered = send(
        app.admin(Method::POST, "/api/v1/plans/p1/render")
            .json(&json!({"mode": "drill", "params": {"msg": hostile}})),
    )
    .await;
    assert_eq!(rendered.status, 200, "{}", rendered.text);
    let params = &rendered.body["steps"][0]["params"];
    assert_eq!(params["env"]["DB_PW"], "******");
    assert_eq!(params["env"]["WHERE"], "10.0.0.10");
    assert_eq!(
        params["credentials"]["ROOT_PW"],
        "root_pw.password (******)"
    );
    for secret in ["jump-secret-1", "root-secret-2", "db-secret-3"] {
        assert!(
            !rendered.text.contains(secret),
            "{secret} leaked into the render"
        );
    }

    let script = params["script"].as_str().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        hostile,
        "the value arrives as one literal word"
    );
    assert!(!marker.exists(), "the parameter escaped its quoting");

    let typed = send(
        app.admin(Method::POST, "/api/v1/plans/p1/render")
            .json(&json!({"mode": "drill", "params": {"msg": 42}})),
    )
    .await;
    assert_eq!(typed.error_fields(), vec!["params.msg"]);
    let unknown = send(
        app.admin(Method::POST, "/api/v1/plans/p1/render")
            .json(&json!({"mode": "drill", "params": {"other": "x"}})),
    )
    .await;
    assert_eq!(unknown.error_fields(), vec!["params.other"]);
    let mode = send(
        app.admin(Method::POST, "/api/v1/plans/p1/render")
            .json(&json!({"mode": "chaos"})),
    )
    .await;
    assert_eq!(mode.error_fields(), vec!["mode"]);
}

#[tokio::test]
async fn stages_order_the_plan_and_viewers_may_read_but_not_save() {
    let app = TestApp::spawn().await;
    inventory(&app).await;
    steps(&app).await;
    let body = plan(json!([
        {"key": "c", "step": "pause", "stage": 2},
        {"key": "a", "step": "pause", "stage": 1},
        {"key": "b", "step": "pause", "stage": 1},
    ]));
    let viewer = send(
        app.as_role(
            dr_orchestrator::auth::Role::Viewer,
            Method::POST,
            "/api/v1/plans",
        )
        .json(&body),
    )
    .await;
    viewer.assert_problem(403, "forbidden");
    assert_eq!(post_plan(&app, &body).await.status, 201);
    let v = app.get("/api/v1/plans/p1/versions/1").await;
    assert_eq!(v.body["resolved"][0]["depends_on"], json!(["a", "b"]));
    let report = send(app.as_role(
        dr_orchestrator::auth::Role::Viewer,
        Method::POST,
        "/api/v1/plans/p1/validate",
    ))
    .await;
    assert_eq!(report.body["modes"][0]["order"], json!(["a", "b", "c"]));
}
