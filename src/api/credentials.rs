//! `/api/v1/credentials`: secret material, sealed at rest and write-only. No response, log
//! line or error message carries a secret; reading a credential shows only its metadata.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::pagination::{self, SortByName};
use crate::auth::{Admin, Viewer};
use crate::crypto::MasterKey;
use crate::db::audit::Actor;
use crate::db::credentials::{self as store, CredentialFilter};
use crate::db::models::{CredentialRow, CredentialWrite};
use crate::db::Db;
use crate::domain::credentials::{validate_secret, CredentialKind, ValidSecret};
use crate::domain::validation::{check_name, check_text, Violations};
use crate::error::{Error, Problem, Result};
use crate::http::{etag, parse_json, IfMatch, JsonBody, Query};

/// What a client sends to create or replace a credential. (No `Debug`: it holds the secret.)
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "jump_key",
    "kind": "ssh_private_key",
    "description": "ops user on the DR jump server",
    "username": "ops",
    "secret": {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n-----END OPENSSH PRIVATE KEY-----\n"}
}))]
pub struct CredentialInput {
    /// Unique slug, used in templates as `credentials.<name>`.
    #[schema(example = "jump_key")]
    pub name: String,
    pub kind: CredentialKind,
    #[serde(default)]
    pub description: String,
    /// The non-secret login name, when the kind has one.
    #[serde(default)]
    pub username: Option<String>,
    /// The secret, shaped by kind: PasswordSecret (ssh_password, password), PrivateKeySecret
    /// (ssh_private_key), TokenSecret (token), AccessKeyPairSecret (access_key_pair).
    /// Required on create; on replace, omit it (or send `null`) to keep the stored secret.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub secret: Option<Value>,
}

/// A credential as the API returns it: metadata only, never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    pub id: Uuid,
    #[schema(example = "jump_key")]
    pub name: String,
    #[schema(value_type = CredentialKind)]
    pub kind: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// When the secret was last set.
    pub secret_updated_at: DateTime<Utc>,
    #[schema(example = 1)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl From<CredentialRow> for CredentialView {
    fn from(r: CredentialRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            kind: r.kind,
            description: r.description,
            username: r.username,
            secret_updated_at: r.secret_updated_at,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by,
            updated_by: r.updated_by,
        }
    }
}

/// A page of credentials (metadata only), sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialList {
    pub items: Vec<CredentialView>,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CredentialListQuery {
    /// Only credentials of this kind.
    pub kind: Option<CredentialKind>,
    /// `name` (default) or `-name`.
    pub sort: Option<SortByName>,
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Checks a credential body; the secret, when present, is validated for the kind.
fn validated(
    input: CredentialInput,
    secret_required: bool,
) -> Result<(CredentialWrite, Option<ValidSecret>)> {
    let mut v = Violations::default();
    check_name(&mut v, "name", &input.name);
    check_text(&mut v, "description", &input.description, 2000);
    if let Some(user) = &input.username {
        check_text(&mut v, "username", user, 256);
    }
    let mut errors = v.into_errors();
    let secret = match &input.secret {
        None if secret_required => {
            errors.push(crate::error::FieldError::new("secret", "is required"));
            None
        }
        None => None,
        Some(raw) => match validate_secret(input.kind, raw) {
            Ok(valid) => Some(valid),
            Err(secret_errors) => {
                errors.extend(secret_errors);
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    Ok((
        CredentialWrite {
            name: input.name,
            kind: input.kind.as_str().to_owned(),
            description: input.description,
            username: input.username,
        },
        secret,
    ))
}

fn with_etag(mut builder: actix_web::HttpResponseBuilder, row: CredentialRow) -> HttpResponse {
    builder
        .insert_header((header::ETAG, etag(row.version)))
        .json(CredentialView::from(row))
}

/// List credentials (metadata only), sorted by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/credentials", tag = "credentials",
    params(CredentialListQuery),
    responses(
        (status = 200, description = "A page of credentials", body = CredentialList),
        (status = 400, description = "A query parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    _: Viewer,
    db: web::Data<Db>,
    Query(q): Query<CredentialListQuery>,
) -> Result<HttpResponse> {
    let limit = pagination::limit(q.limit)?;
    let filter = CredentialFilter {
        kind: q.kind.map(|k| k.as_str().to_owned()),
        page: pagination::name_page(q.sort, q.cursor.as_deref(), limit)?,
    };
    let (rows, total) = db.run(move |conn| store::list(conn, &filter)).await?;
    let next_cursor =
        pagination::next_cursor(rows.len(), limit, rows.last().map(|r| r.name.as_str()));
    Ok(HttpResponse::Ok().json(CredentialList {
        items: rows.into_iter().map(CredentialView::from).collect(),
        total,
        next_cursor,
    }))
}

/// Create a credential. The secret is encrypted before it is stored and is never returned.
#[utoipa::path(post, path = "/api/v1/credentials", tag = "credentials",
    request_body = CredentialInput,
    responses(
        (status = 201, description = "Created (metadata only)", body = CredentialView),
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
    JsonBody(input): JsonBody<CredentialInput>,
) -> Result<HttpResponse> {
    let (write, secret) = validated(input, true)?;
    let secret = secret.ok_or_else(|| Error::field("secret", "is required"))?;
    let actor = Actor::from_user(&user);
    let key = key.into_inner();
    let row = db
        .transaction(move |conn| store::create(conn, write, &secret, &key, &actor))
        .await?;
    let mut builder = HttpResponse::Created();
    builder.insert_header((header::LOCATION, format!("/api/v1/credentials/{}", row.id)));
    Ok(with_etag(builder, row))
}

/// Read a credential's metadata by id or name.
#[utoipa::path(get, path = "/api/v1/credentials/{key}", tag = "credentials",
    params(("key" = String, Path, description = "The credential's id or name", example = "jump_key")),
    responses(
        (status = 200, description = "The credential (metadata only); `ETag` header set", body = CredentialView),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such credential", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(_: Viewer, db: web::Data<Db>, key: web::Path<String>) -> Result<HttpResponse> {
    let key = key.into_inner();
    let row = db.run(move |conn| store::find(conn, &key)).await?;
    Ok(with_etag(HttpResponse::Ok(), row))
}

/// Replace a credential. Omit `secret` to keep the stored one; send it to rotate. A credential
/// that resources refer to cannot be renamed or change kind (409 names them).
#[utoipa::path(put, path = "/api/v1/credentials/{key}", tag = "credentials",
    params(
        ("key" = String, Path, description = "The credential's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body = CredentialInput,
    responses(
        (status = 200, description = "Replaced", body = CredentialView),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such credential", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, or renaming a credential in use", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The credential changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    Admin(user): Admin,
    db: web::Data<Db>,
    master_key: web::Data<MasterKey>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(input): JsonBody<CredentialInput>,
) -> Result<HttpResponse> {
    // A malformed body is refused whatever the credential's state: before If-Match is checked.
    let checked = validated(input, false)?;
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let master_key = master_key.into_inner();
    let row = db
        .transaction(move |conn| {
            store::update(conn, &key, &if_match, &master_key, &actor, |_| Ok(checked))
        })
        .await?;
    Ok(with_etag(HttpResponse::Ok(), row))
}

/// Change some fields of a credential with a JSON merge patch (RFC 7396); include `secret`
/// to rotate it.
#[utoipa::path(patch, path = "/api/v1/credentials/{key}", tag = "credentials",
    params(
        ("key" = String, Path, description = "The credential's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    request_body(content = Object, description = "JSON merge patch of CredentialInput",
        content_type = "application/merge-patch+json",
        example = json!({"description": "rotated 2026-11", "secret": {"password": "new-password"}})),
    responses(
        (status = 200, description = "Patched", body = CredentialView),
        (status = 400, description = "The patched credential is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such credential", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, or renaming a credential in use", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The credential changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn patch(
    Admin(user): Admin,
    db: web::Data<Db>,
    master_key: web::Data<MasterKey>,
    key: web::Path<String>,
    if_match: IfMatch,
    JsonBody(patch): JsonBody<Value>,
) -> Result<HttpResponse> {
    if !patch.is_object() {
        return Err(Error::field("body", "a merge patch must be a JSON object"));
    }
    let key = key.into_inner();
    let actor = Actor::from_user(&user);
    let master_key = master_key.into_inner();
    let row = db
        .transaction(move |conn| {
            store::update(conn, &key, &if_match, &master_key, &actor, |current| {
                let mut merged = serde_json::json!({
                    "name": current.name,
                    "kind": current.kind,
                    "description": current.description,
                    "username": current.username,
                });
                super::merge_patch(&mut merged, &patch);
                validated(parse_json(merged.to_string().as_bytes())?, false)
            })
        })
        .await?;
    Ok(with_etag(HttpResponse::Ok(), row))
}

/// Delete a credential. A credential that resources still refer to is a 409 naming them.
#[utoipa::path(delete, path = "/api/v1/credentials/{key}", tag = "credentials",
    params(
        ("key" = String, Path, description = "The credential's id or name"),
        ("If-Match" = Option<String>, Header, description = "ETag from a previous read; 412 when it changed since"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the admin role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such credential", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Resources still refer to it; `referrers` lists them", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The credential changed since the ETag in If-Match", body = Problem, content_type = "application/problem+json"),
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
