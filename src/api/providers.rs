//! `/api/v1/providers`: the DR products (HyperBDR, or the built-in simulator) that recover
//! protected hosts. Admins define them; anyone may list a provider's hosts to bind inventory
//! hosts to them; operators test the connection.

use std::time::Instant;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination::{self, SortByName};
use crate::auth::{Admin, Operator, Viewer};
use crate::crypto::MasterKey;
use crate::db::audit::Actor;
use crate::db::models::{ProviderRow, ProviderWrite};
use crate::db::providers as store;
use crate::db::Db;
use crate::domain::validation::{check_name, check_text, Violations};
use crate::error::{Error, Problem, Result};
use crate::http::{etag, IfMatch, JsonBody, Query};
use crate::providers::registry::{self, Registry};
use crate::providers::{ProtectedHost, ProviderSettings};

/// Which DR product a provider is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// HyperBDR's REST API v2.
    Hyperbdr,
    /// The built-in simulator (`dr-orchestrator simulator`), which speaks the same API.
    Simulator,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Hyperbdr => "hyperbdr",
            Self::Simulator => "simulator",
        }
    }
}

/// What a client sends to create or replace a provider.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "hyperbdr",
    "kind": "hyperbdr",
    "description": "HyperBDR console of the DR site",
    "base_url": "https://hyperbdr.example.com",
    "credential": "hyperbdr_login",
    "settings": {"poll_interval": "10s", "recovery_timeout": "45m"}
}))]
pub struct ProviderInput {
    /// Unique slug; inventory hosts name it in their `provider` attribute.
    #[schema(example = "hyperbdr")]
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub description: String,
    /// The provider's API root (http or https, no user or password in it).
    #[schema(example = "https://hyperbdr.example.com")]
    pub base_url: String,
    /// A `password` credential (username and password) to log in with. Required for
    /// `hyperbdr`; a simulator without one logs in with its default user.
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub settings: ProviderSettings,
}

/// A provider as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: Uuid,
    #[schema(example = "hyperbdr")]
    pub name: String,
    pub kind: ProviderKind,
    pub description: String,
    pub base_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    pub settings: ProviderSettings,
    #[schema(example = 1)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

fn view(row: ProviderRow, credential: Option<String>) -> Result<ProviderView> {
    Ok(ProviderView {
        id: row.id,
        kind: serde_json::from_value(serde_json::json!(row.kind)).map_err(Error::internal)?,
        settings: serde_json::from_value(row.settings).map_err(Error::internal)?,
        name: row.name,
        description: row.description,
        base_url: row.base_url,
        credential,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
        created_by: row.created_by,
        updated_by: row.updated_by,
    })
}

/// A page of providers, sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub items: Vec<ProviderView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProviderListQuery {
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The result of `POST /providers/{key}/test`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderTest {
    /// True when the provider answered and accepted the login.
    pub ok: bool,
    /// What the provider said (or why it could not be reached).
    #[schema(example = "HyperBDR at https://hyperbdr.example.com: 12 protected hosts")]
    pub detail: String,
    pub latency_ms: u64,
}

/// A host the provider protects, and the inventory host bound to it, if any.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderHost {
    #[serde(flatten)]
    pub host: ProtectedHost,
    /// The inventory host whose `provider_host_id` is this host's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "wordpress")]
    pub bound_to: Option<String>,
}

/// Every host the provider protects.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderHostList {
    pub items: Vec<ProviderHost>,
}

/// Checks a provider body; returns what to store and the credential name to resolve.
fn validated(input: &ProviderInput) -> Result<()> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &input.name);
    check_text(&mut v, "description", &input.description, 2000);
    match url::Url::parse(&input.base_url) {
        Err(e) => v.add("base_url", format!("not a URL: {e}")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            v.add("base_url", "must be an http or https URL")
        }
        Ok(u) if !u.username().is_empty() || u.password().is_some() => v.add(
            "base_url",
            "must not carry a user or password; name a credential instead",
        ),
        Ok(u) if u.host_str().is_none() => v.add("base_url", "must name a host"),
        Ok(_) => {}
    }
    if input.kind == ProviderKind::Hyperbdr && input.credential.is_none() {
        v.add(
            "credential",
            "a hyperbdr provider needs a `password` credential to log in with",
        );
    }
    let s = &input.settings;
    if let Some(pem) = &s.ca_certificate {
        match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
            Ok(certs) if !certs.is_empty() => {}
            Ok(_) => v.add("settings.ca_certificate", "holds no PEM certificate"),
            Err(_) => v.add("settings.ca_certificate", "is not a PEM certificate"),
        }
    }
    for (field, d, min) in [
        ("settings.request_timeout", s.request_timeout, 1),
        ("settings.poll_interval", s.poll_interval, 1),
        ("settings.recovery_timeout", s.recovery_timeout, 1),
        ("settings.power_on_timeout", s.power_on_timeout, 1),
    ] {
        if d.as_secs() < min {
            v.add(field, format!("must be at least {min}s"));
        }
    }
    let errors = v.into_errors();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(errors))
    }
}

/// The row to write, with the credential resolved (inside the write's transaction).
fn write_of(conn: &mut diesel::PgConnection, input: &ProviderInput) -> Result<ProviderWrite> {
    let credential_id = match &input.credential {
        Some(name) => Some(store::resolve_credential(conn, name)?),
        None => None,
    };
    Ok(ProviderWrite {
        name: input.name.clone(),
        kind: input.kind.as_str().to_owned(),
        description: input.description.clone(),
        base_url: input.base_url.trim_end_matches('/').to_owned(),
        credential_id,
        settings: serde_json::to_value(&input.settings).map_err(Error::internal)?,
    })
}

fn respond(
    mut builder: actix_web::HttpResponseBuilder,
    row: ProviderRow,
    credential: Option<String>,
) -> Result<HttpResponse> {
    let tag = etag(row.version);
    Ok(builder
        .insert_header((header::ETAG, tag))
        .json(view(row, credential)?))
}

/// List providers, sorted by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/providers", tag = "providers",
    params(ProviderListQuery),
    responses(
        (status = 200, description = "A page of providers", body = ProviderList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<ProviderListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let page = pagination::name_page(q.sort, q.cursor.as_deref(), limit)?;
    let (rows, total, names) = db
        .run(move |conn| {
            let (rows, total) = store::list(conn, &page)?;
            let names = rows
                .iter()
                .map(|r| store::credential_name(conn, r.credential_id))
                .collect::<Result<Vec<_>>>()?;
            Ok((rows, total, names))
        })
        .await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|r| r.name.as_str()));
    Ok(HttpResponse::Ok().json(ProviderList {
        items: rows
            .into_iter()
            .zip(names)
            .map(|(row, name)| view(row, name))
            .collect::<Result<_>>()?,
        total,
        next_cursor,
    }))
}

/// Define a provider. Its credential must be a `password` credential.
#[utoipa::path(post, path = "/api/v1/providers", tag = "providers",
    request_body = ProviderInput,
    responses(
        (status = 201, description = "Created; `Location` and `ETag` headers are set", body = ProviderView),
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
    JsonBody(input): JsonBody<ProviderInput>,
) -> Result<HttpResponse> {
    validated(&input)?;
    let actor = Actor::from_user(&user);
    let credential = input.credential.clone();
    let row = db
        .transaction(move |conn| {
            let write = write_of(conn, &input)?;
            store::create(conn, write, &actor)
        })
        .await?;
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, format!("/api/v1/providers/{}", row.id)));
    respond(builder, row, credential)
}

/// Read one provider by id or name.
#[utoipa::path(get, path = "/api/v1/providers/{key}", tag = "providers",
    params(("key" = String, Path, description = "The provider's id or name", example = "hyperbdr")),
    responses(
        (status = 200, description = "The provider; `ETag` header set", body = ProviderView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, key: web::Path<String>) -> Result<HttpResponse> {
    let key = key.into_inner();
    let (row, name) = db
        .run(move |conn| {
            let row = store::find(conn, &key)?;
            let name = store::credential_name(conn, row.credential_id)?;
            Ok((row, name))
        })
        .await?;
    respond(HttpResponse::Ok(), row, name)
}

/// Replace a provider. A rename is refused while inventory hosts name it.
#[utoipa::path(put, path = "/api/v1/providers/{key}", tag = "providers",
    params(
        ("key" = String, Path, description = "The provider's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body = ProviderInput,
    responses(
        (status = 200, description = "Replaced", body = ProviderView),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The new name is taken, or hosts still name the old one (`referrers`)", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The provider changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(input): JsonBody<ProviderInput>,
) -> Result<HttpResponse> {
    validated(&input)?;
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let credential = input.credential.clone();
    let row = db
        .transaction(move |conn| {
            let write = write_of(conn, &input)?;
            store::update(conn, &key, &if_match, &actor, write)
        })
        .await?;
    respond(HttpResponse::Ok(), row, credential)
}

/// Delete a provider; refused while inventory hosts name it.
#[utoipa::path(delete, path = "/api/v1/providers/{key}", tag = "providers",
    params(
        ("key" = String, Path, description = "The provider's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Inventory hosts still name it; `referrers` lists them", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The provider changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
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

/// Loads a stored provider and builds its client (a fresh one: a test must really log in).
async fn client_of(
    db: &Db,
    key: web::Data<MasterKey>,
    name: String,
) -> Result<(String, registry::Provider)> {
    db.run(move |conn| {
        let row = store::find(conn, &name)?;
        let provider = registry::build(conn, &key, &row)?;
        Ok((row.name, provider))
    })
    .await
}

/// Log in to the provider and read its hosts: does it answer, and does it accept the login?
/// Changes nothing at the provider.
#[utoipa::path(post, path = "/api/v1/providers/{key}/test", tag = "providers",
    params(("key" = String, Path, description = "The provider's id or name")),
    responses(
        (status = 200, description = "The result (`ok` false says why the provider failed)", body = ProviderTest),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn test(
    _: Operator,
    db: web::Data<Db>,
    key: web::Data<MasterKey>,
    name: web::Path<String>,
) -> Result<HttpResponse> {
    let (_, provider) = client_of(&db, key, name.into_inner()).await?;
    let started = Instant::now();
    let result = provider.client.test().await;
    let latency_ms = started.elapsed().as_millis() as u64;
    Ok(HttpResponse::Ok().json(match result {
        Ok(detail) => ProviderTest {
            ok: true,
            detail,
            latency_ms,
        },
        Err(e) => ProviderTest {
            ok: false,
            detail: e.to_string(),
            latency_ms,
        },
    }))
}

/// The hosts the provider protects, each with the inventory host bound to it (so a console can
/// offer the binding).
#[utoipa::path(get, path = "/api/v1/providers/{key}/hosts", tag = "providers",
    params(("key" = String, Path, description = "The provider's id or name")),
    responses(
        (status = 200, description = "The provider's protected hosts", body = ProviderHostList),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such provider", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider failed or could not be reached", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn hosts(
    _: Viewer,
    db: web::Data<Db>,
    key: web::Data<MasterKey>,
    name: web::Path<String>,
    registry: web::Data<Registry>,
) -> Result<HttpResponse> {
    let name = name.into_inner();
    let key2 = key.clone();
    let registry2 = registry.clone();
    let (provider, bound) = db
        .run(move |conn| {
            let row = store::find(conn, &name)?;
            let provider = registry2.get(conn, &key2, &row.name)?;
            let bound = store::bound_hosts(conn, &row.name)?;
            Ok((provider, bound))
        })
        .await?;
    let hosts = provider
        .client
        .hosts()
        .await
        .map_err(|e| Error::upstream(format!("provider `{}`: {e}", provider.name)))?;
    let items = hosts
        .into_iter()
        .map(|host| {
            let bound_to = bound
                .iter()
                .find(|(_, _, a)| {
                    a.get("provider_host_id").and_then(|v| v.as_str()) == Some(host.id.as_str())
                })
                .map(|(_, n, _)| n.clone());
            ProviderHost { host, bound_to }
        })
        .collect();
    Ok(HttpResponse::Ok().json(ProviderHostList { items }))
}
