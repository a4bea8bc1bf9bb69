//! `/api/v1/resources`: the inventory of hosts, jump servers, databases, DNS records, HTTP
//! endpoints, buckets and anything else a plan acts on.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination::{self, SortByName};
use crate::auth::{Admin, Viewer};
use crate::db::audit::Actor;
use crate::db::models::{ResourceRow, ResourceWrite};
use crate::db::resources::{self as store, ResourceFilter};
use crate::db::Db;
use crate::domain::resources::{validate_attributes, CredentialRef, LabelSelector, ResourceKind};
use crate::domain::validation::{check_labels, check_name, check_text, Violations};
use crate::error::{Error, Problem, Result};
use crate::http::{etag, parse_json, IfMatch, JsonBody, Query};

/// What a client sends to create or replace a resource.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "wordpress",
    "kind": "host",
    "description": "WordPress in docker-compose (production VMware VM)",
    "attributes": {"private_ip": "10.0.1.20", "ssh": {"port": 22, "user": "root", "credential": "web_root_key"},
                   "provider": "hyperbdr", "provider_host_id": "6a1f0c3e"},
    "labels": {"app": "wordpress", "tier": "web"}
}))]
pub struct ResourceInput {
    /// Unique slug, used in templates as `resources.<name>`.
    #[schema(example = "wordpress")]
    pub name: String,
    pub kind: ResourceKind,
    #[serde(default)]
    pub description: String,
    /// Typed per kind: see HostAttributes, JumpServerAttributes, DatabaseAttributes,
    /// DnsRecordAttributes, HttpEndpointAttributes, ObjectStorageAttributes; `generic` takes
    /// any object.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub attributes: Value,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A resource as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceView {
    pub id: Uuid,
    #[schema(example = "wordpress")]
    pub name: String,
    #[schema(value_type = ResourceKind)]
    pub kind: String,
    pub description: String,
    /// Normalized: canonical IP addresses, defaults filled in.
    #[schema(value_type = Object)]
    pub attributes: Value,
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: Value,
    /// Increases by one on every change; the ETag is this number in quotes.
    #[schema(example = 1)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl From<ResourceRow> for ResourceView {
    fn from(r: ResourceRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            kind: r.kind,
            description: r.description,
            attributes: r.attributes,
            labels: r.labels,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by,
            updated_by: r.updated_by,
        }
    }
}

/// A page of resources, sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceList {
    pub items: Vec<ResourceView>,
    /// How many resources match the filters (all pages).
    pub total: i64,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResourceListQuery {
    /// Only resources of this kind.
    pub kind: Option<ResourceKind>,
    /// Label selector: `env=prod,tier=web` (all pairs match) and/or `critical` (key present).
    pub label: Option<String>,
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Checks a resource body and returns what to store with the credentials it names.
fn validated(input: ResourceInput) -> Result<(ResourceWrite, Vec<CredentialRef>)> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &input.name);
    check_text(&mut v, "description", &input.description, 2000);
    check_labels(&mut v, &input.labels);
    let mut errors = v.into_errors();
    let attributes = match validate_attributes(input.kind, &input.attributes) {
        Ok(valid) => Some(valid),
        Err(attribute_errors) => {
            errors.extend(attribute_errors);
            None
        }
    };
    match attributes {
        Some(valid) if errors.is_empty() => Ok((
            ResourceWrite {
                name: input.name,
                kind: input.kind.as_str().to_owned(),
                description: input.description,
                attributes: valid.value,
                labels: store::labels_value(&input.labels),
            },
            valid.credential_refs,
        )),
        _ => Err(Error::Validation(errors)),
    }
}

fn with_etag(mut builder: actix_web::HttpResponseBuilder, row: ResourceRow) -> HttpResponse {
    builder
        .insert_header((header::ETAG, etag(row.version)))
        .json(ResourceView::from(row))
}

/// List resources, filtered by kind and labels, sorted by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/resources", tag = "resources",
    params(ResourceListQuery),
    responses(
        (status = 200, description = "A page of resources", body = ResourceList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<ResourceListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let labels = match q.label.as_deref() {
        Some(raw) => raw
            .parse::<LabelSelector>()
            .map_err(|e| Error::field("label", e))?,
        None => LabelSelector::default(),
    };
    let filter = ResourceFilter {
        kind: q.kind.map(|k| k.as_str().to_owned()),
        labels,
        page: pagination::name_page(q.sort, q.cursor.as_deref(), limit)?,
    };
    let (rows, total) = db.run(move |conn| store::list(conn, &filter)).await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|r| r.name.as_str()));
    Ok(HttpResponse::Ok().json(ResourceList {
        items: rows.into_iter().map(ResourceView::from).collect(),
        total,
        next_cursor,
    }))
}

/// Create a resource. Its attributes are validated for its kind; credentials it names must exist.
#[utoipa::path(post, path = "/api/v1/resources", tag = "resources",
    request_body = ResourceInput,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` headers are set", body = ResourceView),
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
    JsonBody(input): JsonBody<ResourceInput>,
) -> Result<HttpResponse> {
    let (write, refs) = validated(input)?;
    let actor = Actor::from_user(&user);
    let row = db
        .transaction(move |conn| store::create(conn, write, &refs, &actor))
        .await?;
    let location = format!("/api/v1/resources/{}", row.id);
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, location));
    Ok(with_etag(builder, row))
}

/// Read one resource by id or name.
#[utoipa::path(get, path = "/api/v1/resources/{key}", tag = "resources",
    params(("key" = String, Path, description = "The resource's id or name", example = "wordpress")),
    responses(
        (status = 200, description = "The resource; `ETag` header set", body = ResourceView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, key: web::Path<String>) -> Result<HttpResponse> {
    let key = key.into_inner();
    let row = db.run(move |conn| store::find(conn, &key)).await?;
    Ok(with_etag(HttpResponse::Ok(), row))
}

/// Replace a resource. Send `If-Match` with the ETag you read to avoid overwriting a change.
#[utoipa::path(put, path = "/api/v1/resources/{key}", tag = "resources",
    params(
        ("key" = String, Path, description = "The resource's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body = ResourceInput,
    responses(
        (status = 200, description = "Replaced", body = ResourceView),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(input): JsonBody<ResourceInput>,
) -> Result<HttpResponse> {
    // A malformed body is refused whatever the resource's state: before If-Match is checked.
    let checked = validated(input)?;
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let row = db
        .transaction(move |conn| store::update(conn, &key, &if_match, &actor, |_| Ok(checked)))
        .await?;
    Ok(with_etag(HttpResponse::Ok(), row))
}

/// Change some fields of a resource with a JSON merge patch (RFC 7396): fields sent replace
/// the current ones, `null` removes an attribute, the result is validated as a whole.
#[utoipa::path(patch, path = "/api/v1/resources/{key}", tag = "resources",
    params(
        ("key" = String, Path, description = "The resource's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body(content = Object, description = "JSON merge patch of ResourceInput",
        content_type = "application/merge-patch+json",
        example = json!({"attributes": {"public_ip": "203.0.113.21"}, "labels": {"tier": "web"}})),
    responses(
        (status = 200, description = "Patched", body = ResourceView),
        (status = 400, description = "The patched resource is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
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
            store::update(conn, &key, &if_match, &actor, |current| {
                let mut merged = serde_json::json!({
                    "name": current.name,
                    "kind": current.kind,
                    "description": current.description,
                    "attributes": current.attributes,
                    "labels": current.labels,
                });
                super::merge_patch(&mut merged, &patch);
                validated(parse_json(merged.to_string().as_bytes())?)
            })
        })
        .await?;
    Ok(with_etag(HttpResponse::Ok(), row))
}

/// Delete a resource.
#[utoipa::path(delete, path = "/api/v1/resources/{key}", tag = "resources",
    params(
        ("key" = String, Path, description = "The resource's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The resource changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
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
