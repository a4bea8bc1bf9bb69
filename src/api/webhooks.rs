//! `/api/v1/webhooks`: outbound subscriptions (admins define, viewers read), their deliveries
//! with every attempt, and redelivery (operators). A subscription's signing secret is
//! generated here and shown once, in the create (or rotate) response; it is sealed at rest.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination::{self, SortByName};
use crate::auth::{Admin, Operator, Viewer};
use crate::crypto::MasterKey;
use crate::db::audit::Actor;
use crate::db::webhooks::{
    self as store, AttemptRow, DeliveryRow, SubscriptionRow, SubscriptionWrite,
};
use crate::db::Db;
use crate::error::{Error, Problem, Result};
use crate::http::{etag, parse_json, IfMatch, JsonBody, Query};
use crate::webhooks::outbound::{self, Format};
use crate::webhooks::signature::Secret;

/// What a client sends to create or replace a subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "ops_chat",
    "description": "every failure of the WordPress failover plan, to the ops channel",
    "url": "https://chatops.example.com/hooks/dro",
    "events": ["execution.started", "step.failed", "approval.required", "execution.succeeded", "execution.failed"],
    "plan": "wordpress_failover",
    "format": "standard",
    "active": true
}))]
pub struct WebhookInput {
    /// Unique slug.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where deliveries are POSTed: http(s), no user or password in it.
    pub url: String,
    /// Event types to send (see the README's list); empty or absent: every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only executions of this plan (name or id); absent: every plan.
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub format: Format,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// A subscription as the API returns it; never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    #[schema(example = "ops_chat")]
    pub name: String,
    pub description: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub format: Format,
    pub active: bool,
    /// When the signing secret was last set.
    pub secret_updated_at: DateTime<Utc>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

/// A subscription with its signing secret: only in the create and rotate-secret responses.
#[derive(Serialize, ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The Standard Webhooks signing secret (`whsec_...`). Shown this once: store it now.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
}

/// A page of subscriptions, sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WebhookListQuery {
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The state of a delivery.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet: due at `next_attempt_at` (first try or a retry).
    Pending,
    /// A try got a 2xx answer.
    Delivered,
    /// Every try of the schedule failed; `redeliver` sends it again.
    Dead,
}

impl DeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    fn parse(raw: &str) -> Self {
        match raw {
            "delivered" => Self::Delivered,
            "dead" => Self::Dead,
            _ => Self::Pending,
        }
    }
}

/// One try to send a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    #[schema(example = 1)]
    pub attempt: i32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 500)]
    pub status_code: Option<i32>,
    /// Why the try failed (no answer, or a status other than 2xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: i32,
    /// The start of the receiver's answer (at most 1 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
}

/// One event sent (or to send) to one subscription, with every try.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` header and the body's `id`: the same on every try.
    #[schema(example = "msg_6f1c0e5c8d0b4f5aa3e3b1a2c4d5e6f7")]
    pub webhook_id: String,
    pub event_id: i64,
    #[schema(example = "step.failed")]
    pub event_type: String,
    pub execution_id: Uuid,
    pub status: DeliveryStatus,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body as sent (once a first try was made).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    pub attempts: Vec<AttemptView>,
}

/// A page of deliveries, newest event first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryListQuery {
    /// Only deliveries in this state.
    pub status: Option<DeliveryStatus>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn view(row: SubscriptionRow, plan: Option<String>) -> WebhookView {
    WebhookView {
        id: row.id,
        name: row.name,
        description: row.description,
        url: row.url,
        events: row.events,
        plan,
        format: Format::parse(&row.format),
        active: row.active,
        secret_updated_at: row.secret_updated_at,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
        created_by: row.created_by,
        updated_by: row.updated_by,
    }
}

fn delivery_view(row: DeliveryRow, attempts: Vec<AttemptRow>) -> DeliveryView {
    DeliveryView {
        webhook_id: outbound::webhook_id(row.id),
        id: row.id,
        event_id: row.event_id,
        event_type: row.event_type,
        execution_id: row.execution_id,
        status: DeliveryStatus::parse(&row.status),
        next_attempt_at: row.next_attempt_at,
        created_at: row.created_at,
        delivered_at: row.delivered_at,
        payload: row.payload,
        attempts: attempts
            .into_iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                at: a.at,
                status_code: a.status_code,
                error: a.error,
                latency_ms: a.latency_ms,
                response_excerpt: a.response_excerpt,
            })
            .collect(),
    }
}

/// Checks a body and resolves its plan filter (inside the write's transaction).
fn validated(conn: &mut diesel::PgConnection, input: WebhookInput) -> Result<SubscriptionWrite> {
    let events = outbound::validate(&input.name, &input.description, &input.url, &input.events)?;
    let plan_id = match &input.plan {
        Some(plan) => Some(store::plan_id(conn, plan)?),
        None => None,
    };
    Ok(SubscriptionWrite {
        name: input.name,
        description: input.description,
        url: input.url,
        events,
        plan_id,
        format: input.format.as_str().to_owned(),
        active: input.active,
    })
}

/// A row and its plan's name, read in the same connection.
fn with_plan(
    conn: &mut diesel::PgConnection,
    row: SubscriptionRow,
) -> Result<(SubscriptionRow, Option<String>)> {
    let plan = match row.plan_id {
        Some(id) => store::plan_names(conn, &[id])?.remove(&id),
        None => None,
    };
    Ok((row, plan))
}

fn respond(
    mut builder: actix_web::HttpResponseBuilder,
    (row, plan): (SubscriptionRow, Option<String>),
) -> HttpResponse {
    builder
        .insert_header((header::ETAG, etag(row.version)))
        .json(view(row, plan))
}

/// List webhook subscriptions, sorted by name (never their secrets).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    params(WebhookListQuery),
    responses(
        (status = 200, description = "A page of subscriptions", body = WebhookList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<WebhookListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let page = pagination::name_page(q.sort, q.cursor.as_deref(), limit)?;
    let (rows, total, names) = db
        .run(move |conn| {
            let (rows, total) = store::list(conn, &page)?;
            let ids: Vec<Uuid> = rows.iter().filter_map(|r| r.plan_id).collect();
            let names = store::plan_names(conn, &ids)?;
            Ok((rows, total, names))
        })
        .await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|r| r.name.as_str()));
    let items = rows
        .into_iter()
        .map(|r| {
            let plan = r.plan_id.and_then(|id| names.get(&id).cloned());
            view(r, plan)
        })
        .collect();
    Ok(HttpResponse::Ok().json(WebhookList {
        items,
        total,
        next_cursor,
    }))
}

/// Subscribe a URL to execution events. The answer holds the signing secret, this once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = WebhookInput,
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = WebhookWithSecret),
        (status = 400, description = "Invalid body; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Data<MasterKey>,
    JsonBody(input): JsonBody<WebhookInput>,
) -> Result<HttpResponse> {
    let actor = Actor::from_user(&user);
    let key = key.into_inner();
    let (_, secret) = Secret::generate();
    let shown = secret.clone();
    let (row, plan) = db
        .transaction(move |conn| {
            let write = validated(conn, input)?;
            let row = store::create(conn, write, &secret, &key, &actor)?;
            with_plan(conn, row)
        })
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/webhooks/{}", row.id)))
        .insert_header((header::ETAG, etag(row.version)))
        .json(WebhookWithSecret {
            webhook: view(row, plan),
            secret: shown.to_string(),
        }))
}

/// Read a subscription by id or name (never its secret).
#[utoipa::path(get, path = "/api/v1/webhooks/{key}", tag = "webhooks",
    params(("key" = String, Path, description = "The subscription's id or name", example = "ops_chat")),
    responses(
        (status = 200, description = "The subscription; `ETag` header set", body = WebhookView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, key: web::Path<String>) -> Result<HttpResponse> {
    let key = key.into_inner();
    let found = db
        .run(move |conn| {
            let row = store::find(conn, &key)?;
            with_plan(conn, row)
        })
        .await?;
    Ok(respond(HttpResponse::Ok(), found))
}

/// Replace a subscription (its secret stays; see `rotate-secret`).
#[utoipa::path(put, path = "/api/v1/webhooks/{key}", tag = "webhooks",
    params(
        ("key" = String, Path, description = "The subscription's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body = WebhookInput,
    responses(
        (status = 200, description = "Replaced", body = WebhookView),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The subscription changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(input): JsonBody<WebhookInput>,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let row = db
        .transaction(move |conn| {
            let row = store::update(conn, &key, &if_match, &actor, |conn, _| {
                validated(conn, input)
            })?;
            with_plan(conn, row)
        })
        .await?;
    Ok(respond(HttpResponse::Ok(), row))
}

/// Change some fields of a subscription with a JSON merge patch (RFC 7396), e.g. `{"active": false}`.
#[utoipa::path(patch, path = "/api/v1/webhooks/{key}", tag = "webhooks",
    params(
        ("key" = String, Path, description = "The subscription's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body(content = Object, description = "JSON merge patch of WebhookInput",
        content_type = "application/merge-patch+json",
        example = json!({"active": false})),
    responses(
        (status = 200, description = "Patched", body = WebhookView),
        (status = 400, description = "The patched subscription is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The subscription changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn patch(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<Value>,
) -> Result<HttpResponse> {
    if !patch.is_object() {
        return Err(Error::field("body", "a merge patch must be a JSON object"));
    }
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let row = db
        .transaction(move |conn| {
            let row = store::update(conn, &key, &if_match, &actor, |conn, current| {
                let plan = match current.plan_id {
                    Some(id) => store::plan_names(conn, &[id])?.remove(&id),
                    None => None,
                };
                let mut merged = serde_json::json!({
                    "name": current.name,
                    "description": current.description,
                    "url": current.url,
                    "events": current.events,
                    "plan": plan,
                    "format": current.format,
                    "active": current.active,
                });
                super::merge_patch(&mut merged, &patch);
                validated(conn, parse_json(merged.to_string().as_bytes())?)
            })?;
            with_plan(conn, row)
        })
        .await?;
    Ok(respond(HttpResponse::Ok(), row))
}

/// Delete a subscription and its delivery history.
#[utoipa::path(delete, path = "/api/v1/webhooks/{key}", tag = "webhooks",
    params(
        ("key" = String, Path, description = "The subscription's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The subscription changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    db.transaction(move |conn| store::delete(conn, &key, &if_match, &actor))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Replace the signing secret with a new one, shown once in the answer. Deliveries sent from
/// now on are signed with it (retries too).
#[utoipa::path(post, path = "/api/v1/webhooks/{key}/rotate-secret", tag = "webhooks",
    params(
        ("key" = String, Path, description = "The subscription's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 200, description = "The subscription with its new `secret`, shown only here", body = WebhookWithSecret),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The subscription changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    Admin(user): Admin,
    db: web::Data<Db>,
    master_key: web::Data<MasterKey>,
    key: web::Path<String>,
    if_match: IfMatch,
) -> Result<HttpResponse> {
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let master_key = master_key.into_inner();
    let (_, secret) = Secret::generate();
    let shown = secret.clone();
    let (row, plan) = db
        .transaction(move |conn| {
            let row = store::rotate_secret(conn, &key, &if_match, &secret, &master_key, &actor)?;
            with_plan(conn, row)
        })
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(row.version)))
        .json(WebhookWithSecret {
            webhook: view(row, plan),
            secret: shown.to_string(),
        }))
}

/// A subscription's deliveries, newest event first, each with its attempts.
#[utoipa::path(get, path = "/api/v1/webhooks/{key}/deliveries", tag = "webhooks",
    params(("key" = String, Path, description = "The subscription's id or name"), DeliveryListQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn deliveries(
    _: Viewer,
    db: web::Data<Db>,
    key: web::Path<String>,
    Query(q): Query<DeliveryListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let before = pagination::decode_cursor(q.cursor.as_deref())?
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| Error::field("cursor", "is not a cursor this service returned"))
        })
        .transpose()?;
    let key = key.into_inner();
    let status = q.status.map(DeliveryStatus::as_str);
    let (page, total) = db
        .run(move |conn| {
            let sub = store::find(conn, &key)?;
            store::deliveries(conn, sub.id, status, before, limit)
        })
        .await?;
    let last = page.last().map(|(d, _)| d.event_id.to_string());
    let next_cursor = pagination::next_cursor(page.len(), limit, last.as_deref());
    Ok(HttpResponse::Ok().json(DeliveryList {
        items: page.into_iter().map(|(d, a)| delivery_view(d, a)).collect(),
        total,
        next_cursor,
    }))
}

/// Send a delivery again now (a dead one too): it becomes pending, keeps its attempts, and
/// the retry schedule starts over. Same `webhook-id` as before.
#[utoipa::path(post, path = "/api/v1/webhooks/{key}/deliveries/{id}/redeliver", tag = "webhooks",
    params(
        ("key" = String, Path, description = "The subscription's id or name"),
        ("id" = Uuid, Path, description = "The delivery's id"),
    ),
    responses(
        (status = 202, description = "Queued to be sent again", body = DeliveryView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such subscription or delivery", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn redeliver(
    Operator(user): Operator,
    db: web::Data<Db>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (key, raw_id) = path.into_inner();
    let id = Uuid::parse_str(&raw_id).map_err(|_| Error::not_found("delivery", &raw_id))?;
    let actor = Actor::from_user(&user);
    let (row, attempts) = db
        .transaction(move |conn| store::redeliver(conn, &key, id, &actor))
        .await?;
    Ok(HttpResponse::Accepted().json(delivery_view(row, attempts)))
}
