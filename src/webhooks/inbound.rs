//! Inbound hooks, the pure part: what a hook may do, how its caller authenticates (a Standard
//! Webhooks signature over the raw body, or a bearer token chosen explicitly), the delivery id
//! that makes a retry idempotent, and reading execution parameters out of the caller's payload
//! with JSON pointers. No I/O: `api::hooks` and `db::hooks` do the rest.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::signature::{self, Secret, VerifyError};
use crate::domain::validation::Violations;
use crate::error::{Error, FieldError};

/// Largest body a caller may send to a hook.
pub const MAX_BODY: usize = 256 * 1024;
/// Where an approve/reject payload holds the execution id unless the hook says otherwise.
pub const DEFAULT_EXECUTION_POINTER: &str = "/execution_id";
/// Where a payload confirms a failover unless the hook says otherwise.
pub const DEFAULT_CONFIRM_POINTER: &str = "/confirm";
/// The header a bearer-mode caller names its delivery with (or `webhook-id`).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Prefix of a generated bearer token (so secret scanners can spot a leaked one).
pub const TOKEN_PREFIX: &str = "drohook_";

/// What a call to the hook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HookAction {
    /// Start an execution of the hook's plan in its mode.
    Start,
    /// Approve the manual approval step waiting in the execution the payload names.
    Approve,
    /// Reject it (the step fails; its `on_failure` applies).
    Reject,
}

impl HookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// How a caller proves it may call the hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HookAuth {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` (HMAC-SHA256
    /// of `id.timestamp.body` with the `whsec_...` secret), timestamps within 5 minutes.
    #[default]
    Signature,
    /// `Authorization: Bearer <token>`, for tools that cannot sign; the delivery id comes in
    /// `Idempotency-Key` (or `webhook-id`).
    Bearer,
}

impl HookAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Bearer => "bearer",
        }
    }
}

/// Who confirms a failover started by a hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailoverConfirmation {
    /// The execution is created paused; an operator resumes it.
    #[default]
    Operator,
    /// The payload carries the plan's name at `confirm_pointer`, as the API's `confirm`.
    Payload,
}

impl FailoverConfirmation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Payload => "payload",
        }
    }
}

/// A new secret for a hook, shown to the admin once: a `whsec_...` signing key, or a bearer
/// token.
pub fn generate_secret(auth: HookAuth) -> Zeroizing<String> {
    match auth {
        HookAuth::Signature => Secret::generate().1,
        HookAuth::Bearer => {
            use rand::RngCore;
            let mut bytes = Zeroizing::new([0u8; 32]);
            rand::thread_rng().fill_bytes(&mut *bytes);
            Zeroizing::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(*bytes)))
        }
    }
}

/// A JSON pointer (RFC 6901) a hook reads the payload with: empty (the whole payload) or
/// `/`-separated.
pub fn check_pointer(v: &mut Violations, field: &str, pointer: &str) {
    if !(pointer.is_empty() || pointer.starts_with('/')) {
        v.add(
            field,
            "must be a JSON pointer (RFC 6901), e.g. `/incident/site`",
        );
    } else if pointer.len() > 500 || pointer.contains('\0') {
        v.add(field, "must be at most 500 characters, without NUL");
    }
}

/// Checks the caller's credentials against the hook's secret, before the body is parsed.
/// `header` reads a request header by its lower-case name. Every refusal is a 401 that says
/// what was wrong, never what the secret is.
pub fn authenticate<'a>(
    auth: HookAuth,
    secret: &str,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: i64,
) -> Result<(), Error> {
    match auth {
        HookAuth::Signature => {
            let (Some(id), Some(ts), Some(sig)) = (
                header(signature::ID_HEADER),
                header(signature::TIMESTAMP_HEADER),
                header(signature::SIGNATURE_HEADER),
            ) else {
                return Err(Error::Unauthorized(
                    "sign the call: `webhook-id`, `webhook-timestamp` and `webhook-signature` are required (Standard Webhooks)".into(),
                ));
            };
            let key = Secret::parse(secret)
                .map_err(|e| Error::internal(format!("a stored hook secret {e}")))?;
            key.verify(id, ts, sig, body, now, signature::DEFAULT_TOLERANCE_SECS)
                .map_err(|e| match e {
                    VerifyError::Malformed(what) => Error::Unauthorized(what.to_owned()),
                    VerifyError::Stale { .. } => Error::Unauthorized(format!(
                        "{e} ({} s); sign with the current time",
                        signature::DEFAULT_TOLERANCE_SECS
                    )),
                    VerifyError::Mismatch => Error::Unauthorized(
                        "the signature does not match the body with this hook's secret".into(),
                    ),
                })
        }
        HookAuth::Bearer => {
            let presented = header("authorization")
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            match presented {
                None => Err(Error::Unauthorized(
                    "send the hook's token as `Authorization: Bearer <token>`".into(),
                )),
                Some(token) if same_secret(token.as_bytes(), secret.as_bytes()) => Ok(()),
                Some(_) => Err(Error::Unauthorized("the token is not this hook's".into())),
            }
        }
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The caller's id for this delivery: `webhook-id` (signature mode: it is signed), or in
/// bearer mode `Idempotency-Key` or `webhook-id`. Required: it is what makes a retry safe.
pub fn delivery_id<'a>(
    auth: HookAuth,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, Error> {
    let id = match auth {
        HookAuth::Signature => header(signature::ID_HEADER),
        HookAuth::Bearer => header(IDEMPOTENCY_HEADER).or_else(|| header(signature::ID_HEADER)),
    };
    let field = match auth {
        HookAuth::Signature => signature::ID_HEADER,
        HookAuth::Bearer => "Idempotency-Key",
    };
    match id.map(str::trim) {
        None | Some("") => Err(Error::field(
            field,
            "is required: it names the delivery, so a retry returns the same execution",
        )),
        Some(id) if id.len() > 200 || id.contains('\0') => {
            Err(Error::field(field, "must be 1-200 characters"))
        }
        Some(id) => Ok(id.to_owned()),
    }
}

/// The execution parameters a payload gives through a hook's mapping
/// (`{"param": "/pointer"}`); a pointer that finds nothing or `null` leaves the parameter to
/// its default.
pub fn map_params(mapping: &Map<String, Value>, payload: &Value) -> Map<String, Value> {
    mapping
        .iter()
        .filter_map(|(name, pointer)| {
            let value = payload.pointer(pointer.as_str()?)?;
            (!value.is_null()).then(|| (name.clone(), value.clone()))
        })
        .collect()
}

/// Says where in the payload each invalid parameter came from.
pub fn name_sources(errors: Vec<FieldError>, mapping: &Map<String, Value>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|mut e| {
            let pointer = e
                .field
                .strip_prefix("params.")
                .and_then(|name| mapping.get(name))
                .and_then(Value::as_str);
            if let Some(pointer) = pointer {
                e.message = format!("{} (read from the payload at `{pointer}`)", e.message);
            }
            e
        })
        .collect()
}

/// The string at `pointer` in the payload, if there is one.
pub fn text_at<'a>(payload: &'a Value, pointer: &str) -> Option<&'a str> {
    payload.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn a_signed_call_passes_and_a_changed_body_or_old_timestamp_does_not() {
        let secret = generate_secret(HookAuth::Signature);
        let key = Secret::parse(&secret).unwrap();
        let sig = key.sign("d1", 1_000, b"{}");
        let h = [
            ("webhook-id", "d1"),
            ("webhook-timestamp", "1000"),
            ("webhook-signature", sig.as_str()),
        ];
        authenticate(HookAuth::Signature, &secret, headers(&h), b"{}", 1_010).unwrap();
        let changed = authenticate(HookAuth::Signature, &secret, headers(&h), b"{ }", 1_010);
        assert!(matches!(changed, Err(Error::Unauthorized(_))));
        let stale = authenticate(HookAuth::Signature, &secret, headers(&h), b"{}", 2_000);
        assert!(matches!(stale, Err(Error::Unauthorized(m)) if m.contains("replay window")));
        let unsigned = authenticate(HookAuth::Signature, &secret, headers(&[]), b"{}", 1_000);
        assert!(matches!(unsigned, Err(Error::Unauthorized(_))));
    }

    #[test]
    fn a_bearer_token_must_match_exactly() {
        let token = generate_secret(HookAuth::Bearer);
        assert!(token.starts_with(TOKEN_PREFIX));
        let good = format!("Bearer {}", &*token);
        let bad = format!("Bearer {}x", &*token);
        let ok = [("authorization", good.as_str())];
        let wrong = [("authorization", bad.as_str())];
        authenticate(HookAuth::Bearer, &token, headers(&ok), b"", 0).unwrap();
        assert!(authenticate(HookAuth::Bearer, &token, headers(&wrong), b"", 0).is_err());
        assert!(authenticate(HookAuth::Bearer, &token, headers(&[]), b"", 0).is_err());
    }

    #[test]
    fn the_delivery_id_is_required_and_bearer_mode_takes_an_idempotency_key() {
        let h = [("idempotency-key", "INC-7"), ("webhook-id", "w")];
        assert_eq!(delivery_id(HookAuth::Bearer, headers(&h)).unwrap(), "INC-7");
        assert_eq!(delivery_id(HookAuth::Signature, headers(&h)).unwrap(), "w");
        let missing = delivery_id(HookAuth::Bearer, headers(&[]));
        assert!(matches!(missing, Err(Error::Validation(e)) if e[0].field == "Idempotency-Key"));
    }

    #[test]
    fn parameters_are_read_through_pointers_and_errors_say_where_from() {
        let mapping = json!({"site": "/incident/site", "count": "/n", "absent": "/nope"});
        let mapping = mapping.as_object().unwrap();
        let payload = json!({"incident": {"site": "www.example.com"}, "n": null});
        let params = map_params(mapping, &payload);
        assert_eq!(Value::Object(params), json!({"site": "www.example.com"}));
        let named = name_sources(
            vec![FieldError::new("params.site", "must be a host name")],
            mapping,
        );
        assert_eq!(
            named[0].message,
            "must be a host name (read from the payload at `/incident/site`)"
        );
    }

    #[test]
    fn pointers_start_with_a_slash_or_are_empty() {
        let mut v = Violations::default();
        check_pointer(&mut v, "a", "/x/0");
        check_pointer(&mut v, "b", "");
        check_pointer(&mut v, "c", "x");
        let errors = v.into_errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "c");
    }
}
