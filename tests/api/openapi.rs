use std::process::Command;

use serde_json::Value;

fn printed_document() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dr-orchestrator"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn committed_openapi_document_matches_what_the_binary_prints() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed");
    let printed = printed_document();
    assert!(
        committed.trim_end() == printed.trim_end(),
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json` and commit it"
    );
}

#[test]
fn every_operation_is_described_secured_and_answers_in_problem_json_on_error() {
    let doc: Value = serde_json::from_str(&printed_document()).unwrap();
    let public = ["/healthz", "/readyz", "/metrics"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let name = format!("{method} {path}");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{name} has no summary"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{name} has no tag"
            );
            if !public.contains(&path.as_str()) {
                assert!(
                    op["security"].is_array(),
                    "{name} does not declare bearer auth"
                );
                let unauthorized = &op["responses"]["401"]["content"]["application/problem+json"];
                assert!(
                    unauthorized.is_object(),
                    "{name} does not document 401 as problem+json"
                );
            }
            if let Some(body) = op.get("requestBody") {
                let has_example = body["content"].as_object().unwrap().values().any(|c| {
                    c.get("example").is_some()
                        || c["schema"]["$ref"].as_str().is_some_and(|r| {
                            let name = r.rsplit('/').next().unwrap();
                            doc["components"]["schemas"][name].get("example").is_some()
                        })
                });
                assert!(has_example, "{name}'s request body has no example");
            }
        }
    }
    let undescribed: Vec<&String> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, schema)| {
            schema.get("description").is_none() && schema.get("example").is_none()
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        undescribed.is_empty(),
        "schemas with neither description nor example: {undescribed:?}"
    );
}
