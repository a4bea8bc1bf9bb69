//! The seed's two scenarios, as shipped under examples/, load through the API and validate.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{send, TestApp};

fn yaml(dir: &str, file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(dir)
        .join(file);
    serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Creates the scenario's credentials, resources and steps, then the plan from its YAML file.
pub async fn load_example(app: &TestApp, dir: &str) -> Value {
    let inventory = yaml(dir, "inventory.yaml");
    for (list, path) in [
        ("credentials", "/api/v1/credentials"),
        ("providers", "/api/v1/providers"),
        ("resources", "/api/v1/resources"),
    ] {
        for item in inventory[list].as_array().unwrap() {
            let r = app.post_json(path, item).await;
            assert_eq!(r.status, 201, "{dir} {list} {}: {}", item["name"], r.text);
        }
    }
    for step in yaml(dir, "steps.yaml").as_array().unwrap() {
        let r = app.post_json("/api/v1/steps", step).await;
        assert_eq!(r.status, 201, "{dir} step {}: {}", step["name"], r.text);
    }
    let plan_text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(dir)
            .join("plan.yaml"),
    )
    .unwrap();
    let r = send(
        app.admin(Method::POST, "/api/v1/plans")
            .header("content-type", "application/yaml")
            .body(plan_text),
    )
    .await;
    assert_eq!(r.status, 201, "{dir} plan: {}", r.text);
    r.body
}

#[tokio::test]
async fn scenario_1_vmware_to_cloud_validates_and_renders() {
    let app = TestApp::spawn().await;
    let plan = load_example(&app, "vmware-to-cloud-mysql").await;
    let name = plan["name"].as_str().unwrap();

    let report = send(app.admin(Method::POST, &format!("/api/v1/plans/{name}/validate"))).await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert_eq!(report.body["valid"], true, "{}", report.text);
    let failover = &report.body["modes"][1];
    assert_eq!(failover["mode"], "failover");
    assert!(failover["order"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k == "promote_replica"));
    let drill = &report.body["modes"][0];
    assert!(!drill["order"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k == "promote_replica" || k == "dns"));

    let rendered = send(
        app.admin(Method::POST, &format!("/api/v1/plans/{name}/render"))
            .json(&json!({"mode": "failover"})),
    )
    .await;
    assert_eq!(rendered.status, 200, "{}", rendered.text);
    let steps = rendered.body["steps"].as_array().unwrap();
    let nginx = steps.iter().find(|s| s["key"] == "nginx_switch").unwrap();
    let script = nginx["params"]["script"].as_str().unwrap();
    assert!(
        script.contains("s/192.168.10.21/<steps.boot.outputs.hosts.wordpress.private_ip>/g"),
        "{script}"
    );
    assert_eq!(nginx["params"]["target"], "nginx");
    assert_eq!(
        nginx["params"]["address"],
        "<steps.boot.outputs.hosts.nginx.private_ip>"
    );
    let writable = steps
        .iter()
        .find(|s| s["key"] == "replica_writable")
        .unwrap();
    assert_eq!(
        writable["params"]["credentials"]["MYSQL_PWD"],
        "mysql_admin.password (******)"
    );
    assert_eq!(writable["params"]["env"]["MYSQL_USER"], "root");
    assert!(
        !rendered.text.contains("REPLACE-ME"),
        "no secret in a render"
    );
}

#[tokio::test]
async fn scenario_2_cross_region_validates_and_renders_with_its_parameter() {
    let app = TestApp::spawn().await;
    let plan = load_example(&app, "cross-region-rds").await;
    let name = plan["name"].as_str().unwrap();
    let report = send(app.admin(Method::POST, &format!("/api/v1/plans/{name}/validate"))).await;
    assert_eq!(report.body["valid"], true, "{}", report.text);

    let missing = send(
        app.admin(Method::POST, &format!("/api/v1/plans/{name}/render"))
            .json(&json!({"mode": "drill"})),
    )
    .await;
    missing.assert_problem(400, "validation");
    assert_eq!(missing.error_fields(), vec!["params.site_domain"]);

    let rendered = send(
        app.admin(Method::POST, &format!("/api/v1/plans/{name}/render"))
            .json(&json!({"mode": "drill", "params": {"site_domain": "www.example.com"}})),
    )
    .await;
    assert_eq!(rendered.status, 200, "{}", rendered.text);
    let steps = rendered.body["steps"].as_array().unwrap();
    let runs: Vec<&str> = steps
        .iter()
        .filter(|s| s["runs"] == true)
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        runs,
        vec!["recover", "boot", "nginx_switch", "hosts_entry", "site_up"]
    );
    let site = steps.iter().find(|s| s["key"] == "site_up").unwrap();
    assert!(site["params"]["script"]
        .as_str()
        .unwrap()
        .ends_with("http://www.example.com/"));
    let drs = steps.iter().find(|s| s["key"] == "drs_switch").unwrap();
    assert_eq!(drs["runs"], false);
    assert_eq!(
        drs["params"]["credentials"]["CLOUD_SDK_SK"],
        "cloud_keys.secret_access_key (******)"
    );
}
