//! The HTTP API: the route table, the OpenAPI document that describes it, and one module per
//! resource. Handlers are thin: extract, authorize (by extractor), call the db or domain layer.

pub mod audit;
pub mod credentials;
pub mod executions;
pub mod health;
pub mod hooks;
pub mod pagination;
pub mod plans;
pub mod providers;
pub mod readiness;
pub mod resources;
pub mod steps;
pub mod webhooks;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::domain;
use crate::error::{FieldError, Problem, Referrer};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dr-orchestrator",
        description = "Orchestrates disaster recovery: an inventory of hosts, jump servers, databases and \
DNS records; recovery plans made of reusable steps; drills and failovers run by a durable executor pool.\n\n\
Authenticate with `Authorization: Bearer <JWT>` (get one with `dr-orchestrator token --role admin`). \
Roles: `viewer` reads, `operator` also runs and approves, `admin` also defines.\n\n\
ITSM and ChatOps tools call inbound hooks at `/hooks/{hook_id}` instead, signed with the \
hook's secret (Standard Webhooks) or with its bearer token.\n\n\
Errors are RFC 7807 `application/problem+json` with a stable `type`, a `detail`, the `request_id`, \
and `errors[]` naming each invalid field. Objects carry an `ETag`; send it back in `If-Match` on \
PUT, PATCH and DELETE to avoid overwriting someone else's change (412 when it changed).",
        license(name = "Apache-2.0"),
    ),
    paths(
        health::healthz, health::readyz, health::metrics,
        resources::list, resources::create, resources::get, resources::replace, resources::patch, resources::delete,
        credentials::list, credentials::create, credentials::get, credentials::replace, credentials::patch, credentials::delete,
        steps::list, steps::create, steps::get, steps::replace, steps::patch, steps::delete,
        plans::list, plans::create, plans::get, plans::replace, plans::delete,
        plans::versions, plans::version, plans::validate, plans::render, readiness::readiness,
        executions::start, executions::list, executions::get,
        executions::cancel, executions::pause, executions::resume,
        executions::retry_step, executions::skip_step, executions::approve_step, executions::reject_step,
        executions::logs, executions::events, executions::report, executions::cleanup,
        providers::list, providers::create, providers::get, providers::replace, providers::delete,
        providers::test, providers::hosts,
        hooks::list, hooks::create, hooks::get, hooks::replace, hooks::delete,
        hooks::rotate_secret, hooks::receive,
        webhooks::list, webhooks::create, webhooks::get, webhooks::replace, webhooks::patch,
        webhooks::delete, webhooks::rotate_secret, webhooks::deliveries, webhooks::redeliver,
        audit::list,
    ),
    components(schemas(
        Problem, FieldError, Referrer, pagination::SortByName,
        domain::resources::HostAttributes, domain::resources::SshAccess,
        domain::resources::JumpServerAttributes, domain::resources::DatabaseAttributes,
        domain::resources::DnsRecordAttributes, domain::resources::HttpEndpointAttributes,
        domain::resources::ObjectStorageAttributes,
        domain::credentials::PasswordSecret, domain::credentials::PrivateKeySecret,
        domain::credentials::TokenSecret, domain::credentials::AccessKeyPairSecret,
        domain::steps::HostRecoveryParams, domain::steps::PowerOnParams,
        domain::steps::RemoteScriptParams, domain::steps::LocalScriptParams,
        domain::steps::HttpRequestParams, domain::steps::CheckParams,
        domain::steps::ManualApprovalParams, domain::steps::WaitParams,
    )),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "resources", description = "The inventory a plan acts on"),
        (name = "credentials", description = "Secret material: encrypted at rest, write-only"),
        (name = "steps", description = "Reusable action definitions"),
        (name = "plans", description = "Recovery plans: versioned DAGs of steps, validated and rendered"),
        (name = "executions", description = "Drills, failovers and dry runs: start, follow, steer, report"),
        (name = "providers", description = "Recovery providers (HyperBDR, the simulator) and their protected hosts"),
        (name = "hooks", description = "Inbound hooks: ITSM and ChatOps tools start plans and decide approvals, signed (Standard Webhooks) or with a token"),
        (name = "webhooks", description = "Outbound webhooks: signed deliveries of execution events, retried, with every attempt recorded"),
        (name = "audit", description = "Every mutation: who, what, when"),
    ),
    modifiers(&BearerAuth, &CommonResponses, &OperationIds),
)]
pub struct ApiDoc;

struct BearerAuth;

/// Handlers are named by what they do within their module (`list`, `get`, `create`...), and
/// utoipa takes the function's name as the operation id; clients (Swagger UI's "Try it out",
/// generated SDKs) need ids unique in the document, so each gets its tag in front:
/// `resources_list`, `executions_approve_step`.
struct OperationIds;

/// The operations of a path the API uses (it has no HEAD, OPTIONS or TRACE handlers).
fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
    ]
    .into_iter()
    .flatten()
}

impl Modify for OperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
                if let (Some(tag), Some(id)) = (tag, op.operation_id.as_mut()) {
                    if !id.starts_with(&format!("{tag}_")) {
                        *id = format!("{tag}_{id}");
                    }
                }
            }
        }
    }
}

/// Answers every API operation can give whatever it does: 503 when no database connection is
/// free, 413 for an oversized body, 400 for a malformed `If-Match`.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    crate::error::PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            for op in operations_mut(item) {
                let responses = &mut op.responses.responses;
                responses.entry("503".into()).or_insert_with(|| {
                    problem("No database connection is free; try again shortly").into()
                });
                if op.request_body.is_some() {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| problem("The body is larger than 1 MiB").into());
                }
                let takes_if_match = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.name.eq_ignore_ascii_case("If-Match"));
                if takes_if_match {
                    responses
                        .entry("400".into())
                        .or_insert_with(|| problem("Malformed body or If-Match header").into());
                }
            }
        }
    }
}

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token from `dr-orchestrator token --role admin --subject you`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "webhook_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "Standard Webhooks: `v1,<base64 HMAC-SHA256 of webhook-id.webhook-timestamp.body>` \
                 with the hook's `whsec_` secret, plus the `webhook-id` and `webhook-timestamp` headers",
            ))),
        );
        components.add_security_scheme(
            "hook_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A hook's token (hooks with `auth: bearer`), with an `Idempotency-Key` per delivery",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document the service serves at `/api-docs/openapi.json`: what utoipa derives,
/// plus what its types cannot say (the shape of each server-sent event).
pub fn openapi_document() -> serde_json::Value {
    let mut doc =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes to JSON");
    describe_event_stream(&mut doc);
    doc
}

/// The OpenAPI document as pretty JSON (what `dr-orchestrator openapi` prints and
/// `openapi/openapi.json` holds).
pub fn openapi_json() -> String {
    serde_json::to_string_pretty(&openapi_document())
        .expect("the OpenAPI document serializes to JSON")
}

/// An SSE stream's schema describes one event (as OpenAPI 3.2's `itemSchema` does, and as
/// schemathesis reads it): `event` names the message, `data` holds its JSON.
fn describe_event_stream(doc: &mut serde_json::Value) {
    let data = |schema: serde_json::Value| {
        serde_json::json!({"properties": {"data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": schema,
        }}})
    };
    let when = |event: &str, then: serde_json::Value| serde_json::json!({"if": {"properties": {"event": {"const": event}}}, "then": then});
    let event_schema = serde_json::json!({
        "type": "object",
        "description": "One server-sent event. `event`: an execution event (with `id`), \
            `log`: a log line, `end`: the execution ended and the stream closes, `error`: \
            the stream stopped (reconnect with `after`).",
        "required": ["event", "data"],
        "properties": {
            "id": {"type": "string", "description": "`e<event id>`, on `event` messages"},
            "event": {"type": "string", "enum": ["event", "log", "end", "error"]},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer"},
        },
        "allOf": [
            when("event", data(serde_json::json!({"$ref": "#/components/schemas/EventView"}))),
            when("log", data(serde_json::json!({"$ref": "#/components/schemas/LogLine"}))),
            when("error", data(serde_json::json!({
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }))),
        ],
    });
    let stream = doc
        .pointer_mut("/paths/~1api~1v1~1executions~1{id}~1events/get/responses/200/content/text~1event-stream")
        .expect("the events operation documents an event stream");
    stream["schema"] = event_schema;
}

/// A resource with its routes; any other method gets a 405 problem with an `Allow` header
/// naming the methods the routes take (so the two never drift apart).
macro_rules! resource {
    ($path:expr, $($method:ident => $handler:expr),+ $(,)?) => {
        web::resource($path)
            $(.route(web::$method().to($handler)))+
            .default_service(web::to(|req: actix_web::HttpRequest| async move {
                method_not_allowed(&req, &[$(stringify!($method)),+])
            }))
    };
}

fn method_not_allowed(req: &actix_web::HttpRequest, methods: &[&str]) -> HttpResponse {
    let allow = methods
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = crate::error::problem_response(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{} is not allowed on {}; allowed: {allow}",
            req.method(),
            req.path()
        ),
        Vec::new(),
        Vec::new(),
    );
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Every route of the service.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource!("/healthz", get => health::healthz))
        .service(resource!("/readyz", get => health::readyz))
        .service(resource!("/metrics", get => health::metrics))
        .service(resource!("/docs", get => || async {
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, "/docs/"))
                .finish()
        }))
        .service(resource!("/hooks/{hook_id}", post => hooks::receive))
        .service(
            SwaggerUi::new("/docs/{_:.*}")
                .external_url_unchecked("/api-docs/openapi.json", openapi_document())
                // Swagger UI would send the document's address to validator.swagger.io: the
                // page must work offline and tell no one where the service runs.
                .config(utoipa_swagger_ui::Config::default().validator_url("none")),
        )
        .service(
            web::scope("/api/v1")
                .service(resource!("/resources", get => resources::list, post => resources::create))
                .service(resource!("/resources/{key}",
                    get => resources::get, put => resources::replace,
                    patch => resources::patch, delete => resources::delete))
                .service(resource!("/credentials", get => credentials::list, post => credentials::create))
                .service(resource!("/credentials/{key}",
                    get => credentials::get, put => credentials::replace,
                    patch => credentials::patch, delete => credentials::delete))
                .service(resource!("/steps", get => steps::list, post => steps::create))
                .service(resource!("/steps/{key}",
                    get => steps::get, put => steps::replace,
                    patch => steps::patch, delete => steps::delete))
                .service(resource!("/plans", get => plans::list, post => plans::create))
                .service(resource!("/plans/{key}",
                    get => plans::get, put => plans::replace, delete => plans::delete))
                .service(resource!("/plans/{key}/versions", get => plans::versions))
                .service(resource!("/plans/{key}/versions/{version}", get => plans::version))
                .service(resource!("/plans/{key}/validate", post => plans::validate))
                .service(resource!("/plans/{key}/render", post => plans::render))
                .service(resource!("/plans/{key}/readiness", post => readiness::readiness))
                .service(resource!("/plans/{key}/executions", post => executions::start))
                .service(resource!("/executions", get => executions::list))
                .service(resource!("/executions/{id}", get => executions::get))
                .service(resource!("/executions/{id}/cancel", post => executions::cancel))
                .service(resource!("/executions/{id}/pause", post => executions::pause))
                .service(resource!("/executions/{id}/resume", post => executions::resume))
                .service(resource!("/executions/{id}/steps/{key}/retry", post => executions::retry_step))
                .service(resource!("/executions/{id}/steps/{key}/skip", post => executions::skip_step))
                .service(resource!("/executions/{id}/steps/{key}/approve", post => executions::approve_step))
                .service(resource!("/executions/{id}/steps/{key}/reject", post => executions::reject_step))
                .service(resource!("/executions/{id}/logs", get => executions::logs))
                .service(resource!("/executions/{id}/events", get => executions::events))
                .service(resource!("/executions/{id}/report", get => executions::report))
                .service(resource!("/executions/{id}/cleanup", post => executions::cleanup))
                .service(resource!("/providers", get => providers::list, post => providers::create))
                .service(resource!("/providers/{key}",
                    get => providers::get, put => providers::replace, delete => providers::delete))
                .service(resource!("/providers/{key}/test", post => providers::test))
                .service(resource!("/providers/{key}/hosts", get => providers::hosts))
                .service(resource!("/hooks", get => hooks::list, post => hooks::create))
                .service(resource!("/hooks/{key}",
                    get => hooks::get, put => hooks::replace, delete => hooks::delete))
                .service(resource!("/hooks/{key}/rotate-secret", post => hooks::rotate_secret))
                .service(resource!("/webhooks", get => webhooks::list, post => webhooks::create))
                .service(resource!("/webhooks/{key}",
                    get => webhooks::get, put => webhooks::replace,
                    patch => webhooks::patch, delete => webhooks::delete))
                .service(resource!("/webhooks/{key}/rotate-secret", post => webhooks::rotate_secret))
                .service(resource!("/webhooks/{key}/deliveries", get => webhooks::deliveries))
                .service(resource!("/webhooks/{key}/deliveries/{id}/redeliver", post => webhooks::redeliver))
                .service(resource!("/audit", get => audit::list)),
        );
}

pub use crate::domain::merge_patch;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut doc, &json!({"c": [1]}));
        assert_eq!(doc, json!({"a": "z", "c": [1]}));
    }

    fn collect_refs<'a>(value: &'a serde_json::Value, refs: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                    refs.push(r);
                }
                map.values().for_each(|v| collect_refs(v, refs));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = openapi_document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 100, "the document refers to its schemas");
        let dangling: Vec<_> = refs
            .into_iter()
            .filter(|r| doc.pointer(r.trim_start_matches('#')).is_none())
            .collect();
        assert!(dangling.is_empty(), "unresolved: {dangling:?}");
    }

    #[test]
    fn operation_ids_are_unique_and_name_their_tag() {
        let doc = openapi_document();
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default();
                let tag = op["tags"][0].as_str().unwrap_or_default();
                assert!(id.starts_with(&format!("{tag}_")), "{method} {path}: {id}");
                assert!(seen.insert(id.to_owned()), "{method} {path}: {id} twice");
            }
        }
        assert!(seen.contains("resources_list") && seen.contains("audit_list"));
    }
}
