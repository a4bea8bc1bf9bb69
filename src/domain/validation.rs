//! Field checks shared by every kind of object, collecting every problem of a request at once
//! so the caller can fix them in one go.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::{Error, FieldError};

/// Collects the invalid fields of one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldError>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was collected, else the validation error listing every field.
    pub fn into_result<T>(self, value: T) -> Result<T, Error> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::Validation(self.0))
        }
    }

    pub fn into_errors(self) -> Vec<FieldError> {
        self.0
    }
}

pub const NAME_RULE: &str =
    "must be 1-63 characters of lowercase letters, digits and `_`, starting with a letter (it is used in templates as resources.<name>)";

/// Names are slugs that templates can use as identifiers: `resources.web01.private_ip`.
pub fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    starts_with_letter && rest_ok && name.len() <= 63
}

pub fn check_name(v: &mut Violations, field: &str, name: &str) {
    if !is_name(name) {
        v.add(field, NAME_RULE);
    }
}

pub fn check_text(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        v.add(field, "must not contain control characters");
    }
}

/// A required short text: not blank, bounded, no control characters.
pub fn check_required_text(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        v.add(field, "must not be empty");
    }
    check_text(v, field, value, max);
}

/// Labels: up to 64 pairs; keys like Kubernetes label keys, values short plain strings.
pub fn check_labels(v: &mut Violations, labels: &BTreeMap<String, String>) {
    if labels.len() > 64 {
        v.add("labels", "at most 64 labels");
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        if !key_ok {
            v.add(
                format!("labels.{key}"),
                "label keys are 1-63 characters of letters, digits, `.`, `_`, `-`, `/`, starting with a letter or digit",
            );
        }
        let value_ok = value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !value_ok {
            v.add(
                format!("labels.{key}"),
                "label values are at most 63 characters of letters, digits, `.`, `_`, `-`",
            );
        }
    }
}

/// Parses an IP address, returning its canonical text.
pub fn check_ip(v: &mut Violations, field: &str, value: &str) -> String {
    match value.trim().parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => {
            v.add(field, format!("`{value}` is not an IPv4 or IPv6 address"));
            value.to_owned()
        }
    }
}

/// A DNS host name (RFC 1123 labels), without a trailing dot.
pub fn is_hostname(value: &str) -> bool {
    let name = value.strip_suffix('.').unwrap_or(value);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// An address to connect to: an IP or a host name.
pub fn check_address(v: &mut Violations, field: &str, value: &str) -> String {
    let value = value.trim();
    if let Ok(ip) = value.parse::<IpAddr>() {
        return ip.to_string();
    }
    if !is_hostname(value) || value.chars().all(|c| c.is_ascii_digit() || c == '.') {
        v.add(
            field,
            format!("`{value}` is neither an IP address nor a host name"),
        );
    }
    value.to_ascii_lowercase()
}

/// An OpenSSH SHA256 host-key fingerprint, as `ssh-keygen -lf` prints it.
pub fn check_fingerprint(v: &mut Violations, field: &str, value: &str) {
    let ok = value.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
    });
    if !ok {
        v.add(
            field,
            "must be an OpenSSH SHA256 fingerprint such as SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU (see `ssh-keygen -lf`)",
        );
    }
}

/// An absolute http(s) URL without embedded credentials (those belong in a credential).
pub fn check_http_url(v: &mut Violations, field: &str, value: &str) {
    match url::Url::parse(value) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            v.add(field, "must be an http:// or https:// URL")
        }
        Ok(u) if !u.username().is_empty() || u.password().is_some() => v.add(
            field,
            "must not embed a user or password; reference a credential instead",
        ),
        Ok(u) if u.host_str().is_none() => v.add(field, "must name a host"),
        Ok(_) => {}
        Err(e) => v.add(field, format!("is not a valid URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(f: impl FnOnce(&mut Violations)) -> Vec<FieldError> {
        let mut v = Violations::default();
        f(&mut v);
        v.into_errors()
    }

    #[test]
    fn names_are_template_friendly_slugs() {
        for good in ["web01", "nginx", "db_replica_2"] {
            assert!(errors(|v| check_name(v, "name", good)).is_empty(), "{good}");
        }
        for bad in ["", "Web", "1web", "web-01", "we b", &"a".repeat(64)] {
            assert_eq!(errors(|v| check_name(v, "name", bad)).len(), 1, "{bad}");
        }
    }

    #[test]
    fn ip_addresses_are_checked_and_canonicalized() {
        let mut v = Violations::default();
        assert_eq!(check_ip(&mut v, "ip", " 10.0.0.1 "), "10.0.0.1");
        assert_eq!(check_ip(&mut v, "ip", "2001:DB8::1"), "2001:db8::1");
        assert!(v.is_empty());
        let e = errors(|v| {
            check_ip(v, "attributes.private_ip", "10.0.0.300");
        });
        assert_eq!(e[0].field, "attributes.private_ip");
        assert!(e[0].message.contains("10.0.0.300"));
    }

    #[test]
    fn addresses_accept_ips_and_host_names_only() {
        assert!(errors(|v| {
            check_address(v, "a", "jump.example.com");
            check_address(v, "a", "192.168.1.10");
        })
        .is_empty());
        assert_eq!(
            errors(|v| {
                check_address(v, "a", "999.1.1.1");
            })
            .len(),
            1
        );
        assert_eq!(
            errors(|v| {
                check_address(v, "a", "bad host;rm");
            })
            .len(),
            1
        );
    }

    #[test]
    fn fingerprints_must_be_openssh_sha256() {
        assert!(errors(|v| check_fingerprint(
            v,
            "f",
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        ))
        .is_empty());
        assert_eq!(errors(|v| check_fingerprint(v, "f", "MD5:aa:bb")).len(), 1);
    }

    #[test]
    fn urls_must_be_http_and_carry_no_password() {
        assert!(errors(|v| check_http_url(v, "u", "https://api.example.com/x")).is_empty());
        assert_eq!(errors(|v| check_http_url(v, "u", "ftp://x")).len(), 1);
        assert_eq!(
            errors(|v| check_http_url(v, "u", "https://u:p@x.com")).len(),
            1
        );
        assert_eq!(errors(|v| check_http_url(v, "u", "not a url")).len(), 1);
    }

    #[test]
    fn labels_reject_odd_keys_and_values() {
        let mut labels = BTreeMap::new();
        labels.insert("env".to_string(), "prod".to_string());
        labels.insert("tier/web".to_string(), "front-end".to_string());
        assert!(errors(|v| check_labels(v, &labels)).is_empty());
        labels.insert("bad key".to_string(), "x".to_string());
        labels.insert("k".to_string(), "has space".to_string());
        assert_eq!(errors(|v| check_labels(v, &labels)).len(), 2);
    }
}
