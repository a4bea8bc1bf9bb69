//! Bearer-token authentication (HS256 JWT) and roles. Handlers take `Viewer`, `Operator` or
//! `Admin` as an argument: the extractor rejects the request before the handler runs, so a
//! handler cannot forget to check, and its signature says who may call it.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;

const ISSUER: &str = "dr-orchestrator";

/// What a caller may do: `viewer` reads; `operator` also runs, approves and cancels;
/// `admin` also defines the inventory, steps and plans.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// The signing and verifying keys, built once from `DRO_JWT_SECRET`.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        // Only HS256 is accepted: a token that names any other algorithm (or `none`) fails.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues a token for `subject` with `role`, valid for `ttl` from now.
    pub fn issue(&self, subject: &str, role: Role, ttl: chrono::Duration) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl.num_seconds(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// Verifies a bearer token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<AuthUser, Error> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        "the token must be signed with HS256"
                    }
                    ErrorKind::InvalidIssuer => "the token was not issued by this service",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                Error::Unauthorized(why.to_owned())
            })?;
        if let Err(why) = check_subject(&data.claims.sub) {
            return Err(Error::Unauthorized(format!("the token's subject {why}")));
        }
        Ok(AuthUser {
            subject: data.claims.sub,
            role: data.claims.role,
        })
    }
}

/// A subject names a person or a system in the audit trail: short, printable.
pub fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.trim().is_empty() {
        return Err("is empty");
    }
    if subject.chars().count() > 256 {
        return Err("is longer than 256 characters");
    }
    if subject.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    Ok(())
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub subject: String,
    pub role: Role,
}

fn authenticate(req: &HttpRequest, needed: Role) -> Result<AuthUser, Error> {
    let keys = req
        .app_data::<web::Data<JwtKeys>>()
        .ok_or_else(|| Error::internal("JwtKeys missing from app data"))?;
    let raw = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("send `Authorization: Bearer <token>`".into()))?;
    let token = raw
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthorized("the Authorization header must be `Bearer <token>`".into())
        })?;
    let user = keys.verify(token)?;
    if user.role < needed {
        return Err(Error::Forbidden(format!(
            "this needs the {} role; the token has {}",
            needed.as_str(),
            user.role.as_str()
        )));
    }
    Ok(user)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub AuthUser);

        impl FromRequest for $name {
            type Error = Error;
            type Future = Ready<Result<Self, Error>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready(authenticate(req, $role).map($name))
            }
        }
    };
}

role_extractor!(
    Viewer,
    Role::Viewer,
    "A caller with at least the viewer role."
);
role_extractor!(
    Operator,
    Role::Operator,
    "A caller with at least the operator role."
);
role_extractor!(Admin, Role::Admin, "A caller with the admin role.");

/// Parses a duration such as `90s`, `15m`, `1h`, `7d` (for `token --ttl`).
pub fn parse_ttl(raw: &str) -> Result<chrono::Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 30m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => n,
        "m" | "" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("unknown unit `{unit}`; use s, m, h or d")),
    };
    if seconds <= 0 || seconds > 366 * 86_400 {
        return Err("the ttl must be between 1s and 366d".into());
    }
    Ok(chrono::Duration::seconds(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_with_subject_and_role() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys.issue("alice", Role::Operator, chrono::Duration::minutes(5));
        let user = keys.verify(&token).unwrap();
        assert_eq!(user.subject, "alice");
        assert_eq!(user.role, Role::Operator);
    }

    #[test]
    fn roles_are_ordered_viewer_operator_admin() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn ttl_accepts_units_and_rejects_nonsense() {
        assert_eq!(parse_ttl("1h").unwrap().num_seconds(), 3600);
        assert_eq!(parse_ttl("90s").unwrap().num_seconds(), 90);
        assert_eq!(parse_ttl("7d").unwrap().num_seconds(), 7 * 86_400);
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
