//! HTTP plumbing shared by every handler: the request context (id, path) that error bodies and
//! the audit trail quote, the observing middleware (request ids, metrics, access log), the JSON
//! body extractor with per-field errors, ETags and `If-Match`, and the safety net that turns
//! any error response actix produces on its own into problem+json.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::{problem_response, Error, FieldError, PROBLEM_JSON};
use crate::metrics::Metrics;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Largest JSON body the API accepts.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// What every part of a request's handling may want to quote: its id and its path.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub path: String,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// The context of the request being handled on this task, if any.
pub fn request_context() -> Option<RequestContext> {
    REQUEST.try_with(Clone::clone).ok()
}

/// The id of the request being handled, for audit rows.
pub fn current_request_id() -> Option<String> {
    request_context().map(|c| c.request_id)
}

/// Accepts a caller's `X-Request-Id` when it is short and plain; otherwise makes one.
fn request_id_of(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Outermost middleware: assigns the request id, runs the request inside its context, records
/// metrics by route pattern (bounded cardinality) and writes one access-log line.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let ctx = RequestContext {
        request_id: request_id_of(&req),
        path: req.path().to_owned(),
    };
    let request_id = ctx.request_id.clone();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().clone();

    // Every log line written while handling the request carries its id.
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut res = REQUEST.scope(ctx, next.call(req)).instrument(span).await?;

    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(metrics) = metrics {
        metrics.observe_request(method_label(&method), &route, status, elapsed);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = %route,
        status,
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(res)
}

/// The method as a metrics label: the standard ones by name, anything else as `other`, so a
/// caller cannot grow the label set without bound.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method as M;
    match *method {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Safety net for error responses that did not come from our `Error` (no route, wrong method,
/// actix's own payload errors): re-renders them as problem+json.
pub fn problem_for_plain_errors<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (slug, title, detail) = match status {
        StatusCode::NOT_FOUND => (
            "not-found",
            "Not found",
            format!(
                "no route matches {} {}",
                res.request().method(),
                res.request().path()
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "Method not allowed",
            format!(
                "{} is not allowed on {}",
                res.request().method(),
                res.request().path()
            ),
        ),
        _ if status.is_server_error() => {
            if let Some(e) = res.response().error() {
                tracing::error!(cause = %e, "request failed");
            }
            (
                "internal",
                "Internal error",
                "the service failed to handle the request; the log has the cause under this request id"
                    .to_owned(),
            )
        }
        _ => (
            "http-error",
            status.canonical_reason().unwrap_or("Error"),
            res.response()
                .error()
                .map_or_else(|| status.to_string(), |e| e.to_string()),
        ),
    };
    let (req, _) = res.into_parts();
    let response = problem_response(status, slug, title, detail, Vec::new(), Vec::new());
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body::<B>(),
    ))
}

/// A JSON request body, parsed with the path of the first field that fails. The media type must
/// be `application/json` (or any `+json` type such as `application/merge-patch+json`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type_ok = is_json_content_type(req);
        let length_ok = check_declared_length(req);
        let payload = payload.take();
        Box::pin(async move {
            if !content_type_ok {
                return Err(Error::UnsupportedMediaType(
                    "send the body as `application/json`".to_owned(),
                ));
            }
            length_ok?;
            parse_json(&read_body(payload).await?).map(JsonBody)
        })
    }
}

/// An optional JSON body: none when the body is empty; otherwise it must be valid JSON.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type_ok = is_json_content_type(req);
        let length_ok = check_declared_length(req);
        let payload = payload.take();
        Box::pin(async move {
            length_ok?;
            let body = read_body(payload).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(None));
            }
            if !content_type_ok {
                return Err(Error::UnsupportedMediaType(
                    "send the body as `application/json`".to_owned(),
                ));
            }
            parse_json(&body).map(|v| OptionalJson(Some(v)))
        })
    }
}

/// Reads a request body of at most `MAX_JSON_BODY` bytes.
pub async fn read_body(payload: Payload) -> Result<web::BytesMut, Error> {
    read_body_up_to(payload, MAX_JSON_BODY).await
}

/// Reads a request body of at most `max` bytes (413 beyond).
pub async fn read_body_up_to<S>(mut payload: S, max: usize) -> Result<web::BytesMut, Error>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>> + Unpin,
{
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Error::BadRequest(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(Error::PayloadTooLarge(format!(
                "the body is larger than {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// True when the request's `Accept` header names one of `media` (parameters ignored).
pub fn accepts(req: &HttpRequest, media: &[&str]) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .map(|part| part.split(';').next().unwrap_or_default().trim())
                .any(|m| media.contains(&m))
        })
}

/// A declared `Content-Length` over the limit is refused before reading a byte.
pub fn check_declared_length(req: &HttpRequest) -> Result<(), Error> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_JSON_BODY as u64 => Err(Error::PayloadTooLarge(format!(
            "the body is larger than {MAX_JSON_BODY} bytes"
        ))),
        _ => Ok(()),
    }
}

pub fn is_json_content_type(req: &HttpRequest) -> bool {
    let Ok(Some(mime)) = req.mime_type() else {
        return false;
    };
    mime.type_() == "application"
        && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
}

/// A query string parsed into `T`; a failure names the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = Error;
    type Future = std::future::Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let pairs = url::form_urlencoded::parse(req.query_string().as_bytes());
        if let Some((key, _)) = pairs
            .clone()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return std::future::ready(Err(Error::field(
                key.replace('\0', ""),
                "must not contain NUL characters",
            )));
        }
        let de = serde_urlencoded::Deserializer::new(pairs);
        let parsed = serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|err| {
                let path = err.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                Error::Validation(vec![FieldError::new(field, err.into_inner().to_string())])
            });
        std::future::ready(parsed)
    }
}

/// Field names whose values are secret: an error about them never quotes the value.
const SECRET_FIELD_HINTS: [&str; 6] = [
    "secret",
    "password",
    "passphrase",
    "token",
    "private_key",
    "secret_access_key",
];

/// Parses JSON into `T`; a failure names the field (`attributes.ssh.port`) and never quotes a
/// secret value. Strings holding NUL are refused here: PostgreSQL cannot store them.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("the body is not valid JSON: {e}")))?;
    from_value(value)
}

/// Converts an already parsed document (JSON or YAML) into `T`, with the same field errors.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    if let Some(path) = nul_path(&value, String::new()) {
        let field = if path.is_empty() {
            "body".to_owned()
        } else {
            path
        };
        return Err(Error::field(field, "must not contain NUL characters"));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        let message = if SECRET_FIELD_HINTS.iter().any(|hint| field.contains(hint)) {
            "invalid value (not shown because the field is secret)".to_owned()
        } else {
            strip_position(&err.into_inner().to_string())
        };
        Error::Validation(vec![FieldError::new(field, message)])
    })
}

/// The path of the first string or key that holds a NUL character.
fn nul_path(value: &serde_json::Value, path: String) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, join(&i.to_string()))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(k))
            } else {
                nul_path(v, join(k))
            }
        }),
        _ => None,
    }
}

/// serde_json appends " at line 1 column 42" to data errors; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The strong ETag of an object at `version`.
pub fn etag(version: i32) -> String {
    format!("\"{version}\"")
}

/// The `If-Match` header of a request: the ETags the caller last saw, or none (no check).
#[derive(Debug, Clone, Default)]
pub struct IfMatch(Option<Vec<String>>);

impl IfMatch {
    /// Passes when there was no header, when it is `*`, or when it names the current ETag.
    pub fn check(&self, current_version: i32) -> Result<(), Error> {
        let Some(tags) = &self.0 else {
            return Ok(());
        };
        let current = etag(current_version);
        if tags.iter().any(|tag| tag == "*" || *tag == current) {
            Ok(())
        } else {
            Err(Error::PreconditionFailed { current })
        }
    }
}

impl FromRequest for IfMatch {
    type Error = Error;
    type Future = std::future::Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let parsed = match req.headers().get(header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(raw) => raw
                .to_str()
                .map(|v| IfMatch(Some(v.split(',').map(|t| t.trim().to_owned()).collect())))
                .map_err(|_| Error::BadRequest("If-Match is not a valid header value".into())),
        };
        std::future::ready(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Port {
        port: u16,
        secret: Option<String>,
    }

    #[test]
    fn a_type_error_names_the_field() {
        let Err(Error::Validation(errors)) = parse_json::<Port>(br#"{"port": 70000}"#) else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "port");
        assert!(errors[0].message.contains("70000"), "{}", errors[0].message);
        assert!(!errors[0].message.contains("line"), "{}", errors[0].message);
    }

    #[test]
    fn an_error_about_a_secret_does_not_quote_it() {
        let Err(Error::Validation(errors)) =
            parse_json::<Port>(br#"{"port": 1, "secret": 12345678}"#)
        else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "secret");
        assert!(!errors[0].message.contains("12345678"));
    }

    #[test]
    fn a_nul_character_anywhere_is_a_field_error() {
        let Err(Error::Validation(errors)) =
            parse_json::<serde_json::Value>(br#"{"a": {"b": ["ok", "x\u0000y"]}}"#)
        else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "a.b.1");
    }

    #[test]
    fn broken_json_is_a_bad_request() {
        assert!(matches!(
            parse_json::<Port>(b"{\"port\": "),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            parse_json::<Port>(b"  "),
            Err(Error::BadRequest(_))
        ));
    }
}
