//! Credentials: the kinds of secret material, the shape of each kind's secret, and its
//! validation. Messages about a secret's fields never quote the value.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::validation::Violations;
use crate::error::FieldError;

/// What kind of secret a credential holds; it decides the shape of `secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    SshPassword,
    SshPrivateKey,
    Token,
    AccessKeyPair,
    Password,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 5] = [
        Self::SshPassword,
        Self::SshPrivateKey,
        Self::Token,
        Self::AccessKeyPair,
        Self::Password,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SshPassword => "ssh_password",
            Self::SshPrivateKey => "ssh_private_key",
            Self::Token => "token",
            Self::AccessKeyPair => "access_key_pair",
            Self::Password => "password",
        }
    }

    /// Whether an SSH login can use this kind.
    pub fn is_ssh(self) -> bool {
        matches!(self, Self::SshPassword | Self::SshPrivateKey)
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("`{s}` is not one of: {}", all.join(", "))
            })
    }
}

/// The secret of an `ssh_password` or `password` credential.
#[derive(Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct PasswordSecret {
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

/// The secret of an `ssh_private_key` credential.
#[derive(Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeySecret {
    /// PEM or OpenSSH private key.
    #[schema(
        example = "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n-----END OPENSSH PRIVATE KEY-----\n"
    )]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

/// The secret of a `token` credential (an API token, bearer or otherwise).
#[derive(Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct TokenSecret {
    #[schema(example = "glpat-XXXXXXXXXXXXXXXX")]
    pub token: String,
}

/// The secret of an `access_key_pair` credential (a cloud SDK's AK/SK).
#[derive(Serialize, Deserialize, ToSchema, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyPairSecret {
    #[schema(example = "AKIAIOSFODNN7EXAMPLE")]
    pub access_key_id: String,
    #[schema(example = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]
    pub secret_access_key: String,
}

/// A validated secret, serialized as the plaintext that gets sealed.
pub struct ValidSecret {
    pub plaintext: Zeroizing<Vec<u8>>,
}

const MAX_SECRET: usize = 4096;
const MAX_PRIVATE_KEY: usize = 16 * 1024;

/// Validates `secret` for `kind`; errors are named `secret.<field>` and never quote values.
pub fn validate_secret(
    kind: CredentialKind,
    secret: &Value,
) -> Result<ValidSecret, Vec<FieldError>> {
    let mut v = Violations::default();
    let plaintext = match kind {
        CredentialKind::SshPassword | CredentialKind::Password => {
            let s: PasswordSecret = typed(secret)?;
            check_secret_text(&mut v, "secret.password", &s.password, MAX_SECRET);
            seal_json(&s)
        }
        CredentialKind::SshPrivateKey => {
            let s: PrivateKeySecret = typed(secret)?;
            check_secret_text(
                &mut v,
                "secret.private_key",
                &s.private_key,
                MAX_PRIVATE_KEY,
            );
            let looks_like_key =
                s.private_key.contains("-----BEGIN") && s.private_key.contains("PRIVATE KEY-----");
            if !looks_like_key {
                v.add(
                    "secret.private_key",
                    "must be a PEM or OpenSSH private key (-----BEGIN ... PRIVATE KEY-----)",
                );
            }
            if let Some(p) = &s.passphrase {
                check_secret_text(&mut v, "secret.passphrase", p, MAX_SECRET);
            }
            seal_json(&s)
        }
        CredentialKind::Token => {
            let s: TokenSecret = typed(secret)?;
            check_secret_text(&mut v, "secret.token", &s.token, MAX_SECRET);
            seal_json(&s)
        }
        CredentialKind::AccessKeyPair => {
            let s: AccessKeyPairSecret = typed(secret)?;
            check_secret_text(&mut v, "secret.access_key_id", &s.access_key_id, 256);
            check_secret_text(
                &mut v,
                "secret.secret_access_key",
                &s.secret_access_key,
                MAX_SECRET,
            );
            seal_json(&s)
        }
    };
    if !v.is_empty() {
        return Err(v.into_errors());
    }
    Ok(ValidSecret { plaintext })
}

fn seal_json<T: Serialize>(secret: &T) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(serde_json::to_vec(secret).expect("secret structs serialize to JSON"))
}

fn check_secret_text(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.is_empty() {
        v.add(field, "must not be empty");
    } else if value.len() > max {
        v.add(field, format!("must be at most {max} bytes"));
    }
}

/// Deserializes a secret; a failure names the field but says nothing of what was sent.
fn typed<T: DeserializeOwned>(secret: &Value) -> Result<T, Vec<FieldError>> {
    if !secret.is_object() {
        return Err(vec![FieldError::new("secret", "must be a JSON object")]);
    }
    serde_path_to_error::deserialize(secret).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "secret".to_owned()
        } else {
            format!("secret.{path}")
        };
        let raw = err.into_inner().to_string();
        let message = if raw.starts_with("missing field") || raw.starts_with("unknown field") {
            raw
        } else {
            "must be a string (the value sent is not shown: it is secret)".to_owned()
        };
        vec![FieldError::new(field, message)]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_errors(kind: CredentialKind, secret: Value) -> Vec<FieldError> {
        validate_secret(kind, &secret).err().unwrap_or_default()
    }

    #[test]
    fn each_kind_accepts_its_own_shape() {
        assert!(validate_secret(CredentialKind::Password, &json!({"password": "p"})).is_ok());
        assert!(validate_secret(CredentialKind::Token, &json!({"token": "t"})).is_ok());
        assert!(validate_secret(
            CredentialKind::AccessKeyPair,
            &json!({"access_key_id": "a", "secret_access_key": "s"})
        )
        .is_ok());
        assert!(validate_secret(
            CredentialKind::SshPrivateKey,
            &json!({"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----", "passphrase": "pp"}),
        )
        .is_ok());
    }

    #[test]
    fn errors_name_the_field_and_never_quote_the_secret() {
        let errors = field_errors(CredentialKind::Password, json!({"password": 987654321}));
        assert_eq!(errors[0].field, "secret.password");
        assert!(!errors[0].message.contains("987654321"));

        let errors = field_errors(
            CredentialKind::SshPrivateKey,
            json!({"private_key": "hunter2"}),
        );
        assert_eq!(errors[0].field, "secret.private_key");
        assert!(!errors[0].message.contains("hunter2"));

        let errors = field_errors(CredentialKind::Token, json!({}));
        assert_eq!(errors[0].message, "missing field `token`");
        assert_eq!(
            field_errors(CredentialKind::Token, json!("t"))[0].field,
            "secret"
        );
    }

    #[test]
    fn empty_secrets_are_refused() {
        let errors = field_errors(CredentialKind::SshPassword, json!({"password": ""}));
        assert_eq!(errors[0].field, "secret.password");
    }
}
