//! The one error type of the service and its rendering as RFC 7807 `application/problem+json`.
//! Internal causes are logged with the request id; the client sees a stable `type` and a
//! human `detail` that never carries a secret or a database message.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request, named by its JSON path.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `attributes.private_ip`.
    #[schema(example = "attributes.private_ip")]
    pub field: String,
    /// What is wrong with it.
    #[schema(example = "`10.0.0.300` is not an IPv4 or IPv6 address")]
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Something that still refers to the object a request wanted to delete or rename.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Referrer {
    /// What kind of object refers, e.g. `resource`.
    #[schema(example = "resource")]
    pub kind: String,
    pub id: uuid::Uuid,
    #[schema(example = "jump01")]
    pub name: String,
}

/// An RFC 7807 problem document; every error response of the API has this shape.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/validation",
    "title": "Invalid request",
    "status": 400,
    "detail": "1 field is invalid",
    "instance": "/api/v1/resources",
    "request_id": "3f0e8a0c-2f0b-4a43-9d0e-6a2d3d1f1c11",
    "errors": [{"field": "attributes.private_ip", "message": "`10.0.0.300` is not an IPv4 or IPv6 address"}]
}))]
pub struct Problem {
    /// Stable identifier of the problem kind; README lists them.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request path that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Correlates with the service's log lines and the `X-Request-Id` response header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Per-field validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Objects that still refer to the target (on 409 for delete or rename).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub referrers: Vec<Referrer>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} `{key}` does not exist")]
    NotFound { what: &'static str, key: String },
    #[error("{detail}")]
    Conflict {
        detail: String,
        referrers: Vec<Referrer>,
    },
    #[error("the object changed since it was read: its ETag is now {current}")]
    PreconditionFailed { current: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A system the request depends on (a recovery provider) failed or did not answer.
    #[error("{0}")]
    Upstream(String),
    /// An unexpected failure; the message goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: &'static str, key: impl std::fmt::Display) -> Self {
        Self::NotFound {
            what,
            key: key.to_string(),
        }
    }

    pub fn upstream(detail: impl Into<String>) -> Self {
        Self::Upstream(detail.into())
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::Conflict {
            detail: detail.into(),
            referrers: Vec::new(),
        }
    }

    /// The stable `type` slug and the title for this error.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Validation(_) => ("validation", "Invalid request"),
            Self::BadRequest(_) => ("bad-request", "Malformed request"),
            Self::Unauthorized(_) => ("unauthorized", "Authentication required"),
            Self::Forbidden(_) => ("forbidden", "Not allowed for this role"),
            Self::NotFound { .. } => ("not-found", "Not found"),
            Self::Conflict { .. } => ("conflict", "Conflict"),
            Self::PreconditionFailed { .. } => ("precondition-failed", "Precondition failed"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::PayloadTooLarge(_) => ("payload-too-large", "Payload too large"),
            Self::Unavailable(_) => ("unavailable", "Service unavailable"),
            Self::Upstream(_) => ("upstream", "Upstream failure"),
            Self::Internal(_) => ("internal", "Internal error"),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Validation(errors) if errors.len() == 1 => {
                format!("{}: {}", errors[0].field, errors[0].message)
            }
            Self::Validation(errors) => format!("{} fields are invalid", errors.len()),
            Self::Internal(_) => {
                "the service failed to handle the request; the log has the cause under this request id"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Renders a problem document for `status`, filling in the current request's path and id.
pub fn problem_response(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: String,
    errors: Vec<FieldError>,
    referrers: Vec<Referrer>,
) -> HttpResponse {
    let ctx = crate::http::request_context();
    let problem = Problem {
        type_: format!("/problems/{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        instance: ctx.as_ref().map(|c| c.path.clone()),
        request_id: ctx.map(|c| c.request_id),
        errors,
        referrers,
    };
    let mut builder = HttpResponse::build(status);
    builder.content_type(PROBLEM_JSON);
    if status == StatusCode::UNAUTHORIZED {
        builder.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
    }
    builder.json(problem)
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Internal(cause) = self {
            tracing::error!(cause = %cause, "request failed");
        }
        let (slug, title) = self.kind();
        let errors = match self {
            Self::Validation(errors) => errors.clone(),
            _ => Vec::new(),
        };
        let referrers = match self {
            Self::Conflict { referrers, .. } => referrers.clone(),
            _ => Vec::new(),
        };
        problem_response(
            self.status_code(),
            slug,
            title,
            self.detail(),
            errors,
            referrers,
        )
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error as D};
        match e {
            D::NotFound => Self::not_found("object", "requested"),
            D::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => Self::conflict(
                unique_violation_detail(info.constraint_name(), info.details()),
            ),
            D::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                Self::conflict("the object is still referred to by another object")
            }
            other => Self::internal(other),
        }
    }
}

/// A unique violation names its constraint; turn the ones we know into plain words, quoting
/// the name from PostgreSQL's detail (`Key (name)=(web01) already exists.`).
fn unique_violation_detail(constraint: Option<&str>, details: Option<&str>) -> String {
    let what = match constraint {
        Some("resources_name_key") => "resource",
        Some("credentials_name_key") => "credential",
        Some("steps_name_key") => "step",
        Some("plans_name_key") => "plan",
        Some("hooks_name_key") => "hook",
        Some("webhook_subscriptions_name_key") => "webhook",
        _ => return "an object with the same unique key already exists".to_owned(),
    };
    let name = details
        .and_then(|d| d.strip_prefix("Key (name)=("))
        .and_then(|d| d.strip_suffix(") already exists."));
    match name {
        Some(name) => format!("a {what} named `{name}` already exists"),
        None => format!("a {what} with this name already exists"),
    }
}

impl From<diesel::r2d2::PoolError> for Error {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        tracing::warn!(cause = %e, "database pool exhausted or unreachable");
        Self::Unavailable("no database connection is available; try again shortly".to_owned())
    }
}
