//! Inventory resources: the kinds, the typed attributes of each kind, and their validation.
//! A resource's attributes are stored normalized (canonical IPs, defaults filled in), and the
//! credentials they name are reported so the database can keep the reference.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::validation::{
    check_address, check_fingerprint, check_http_url, check_ip, check_required_text, check_text,
    is_hostname, Violations,
};
use crate::error::FieldError;

/// What a resource is; it decides the shape of `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Host,
    JumpServer,
    Database,
    DnsRecord,
    HttpEndpoint,
    ObjectStorage,
    Generic,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 7] = [
        Self::Host,
        Self::JumpServer,
        Self::Database,
        Self::DnsRecord,
        Self::HttpEndpoint,
        Self::ObjectStorage,
        Self::Generic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::JumpServer => "jump_server",
            Self::Database => "database",
            Self::DnsRecord => "dns_record",
            Self::HttpEndpoint => "http_endpoint",
            Self::ObjectStorage => "object_storage",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceKind {
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

fn default_ssh_port() -> u16 {
    22
}

/// How to reach a host over SSH.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshAccess {
    #[serde(default = "default_ssh_port")]
    #[schema(example = 22, default = 22)]
    pub port: u16,
    #[schema(example = "root")]
    pub user: String,
    /// Name of the credential (ssh_password or ssh_private_key) used to log in.
    #[schema(example = "web_root_key")]
    pub credential: String,
    /// Pinned host key, as `ssh-keygen -lf` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")]
    pub host_key_fingerprint: Option<String>,
    /// Pin the first key seen when no fingerprint is set (explicit opt-in).
    #[serde(default)]
    pub trust_on_first_use: bool,
}

/// Attributes of a `host`: a machine to recover, boot, configure or check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"private_ip": "10.0.1.20", "public_ip": "203.0.113.20", "os": "linux",
    "ssh": {"port": 22, "user": "root", "credential": "web_root_key"},
    "provider": "hyperbdr", "provider_host_id": "6a1f0c3e"}))]
pub struct HostAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `linux` or `windows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsFamily>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshAccess>,
    /// Name of the recovery provider this host is protected by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's id for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_host_id: Option<String>,
    /// Free-form facts of your own, readable in templates.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The operating system family of a host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OsFamily {
    Linux,
    Windows,
}

/// Attributes of a `jump_server`: an SSH host that can reach the recovery network.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"address": "198.51.100.7", "port": 22, "user": "ops",
    "credential": "jump_key", "host_key_fingerprint": "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}))]
pub struct JumpServerAttributes {
    /// IP address or DNS name.
    pub address: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: String,
    /// Name of the credential (ssh_password or ssh_private_key) used to log in.
    pub credential: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Most connections in use through this jump server at once (default 32); more wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 32, minimum = 1, maximum = 1000)]
    pub max_connections: Option<u16>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The database product.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseEngine {
    Mysql,
    Mariadb,
    Postgresql,
    Sqlserver,
    Oracle,
    Redis,
    Mongodb,
    Other,
}

/// Attributes of a `database`: a primary, a replica or a managed instance (RDS).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"engine": "mysql", "host": "10.0.2.5", "port": 3306,
    "user": "repl_admin", "credential": "mysql_admin", "role": "replica"}))]
pub struct DatabaseAttributes {
    pub engine: DatabaseEngine,
    /// IP address or DNS name.
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// e.g. `primary`, `replica`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The DNS record type.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[allow(clippy::upper_case_acronyms)] // the record types' own spelling
pub enum DnsRecordType {
    A,
    AAAA,
    CNAME,
    TXT,
}

/// Attributes of a `dns_record`: an entry to switch during failover.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"zone": "example.com", "record": "www.example.com", "type": "A",
    "value": "203.0.113.20", "ttl": 60}))]
pub struct DnsRecordAttributes {
    pub zone: String,
    /// Fully qualified record name.
    pub record: String,
    #[serde(rename = "type")]
    pub record_type: DnsRecordType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

fn default_true() -> bool {
    true
}

/// Attributes of an `http_endpoint`: an API to call or a page to check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://www.example.com/health", "tls_verify": true}))]
pub struct HttpEndpointAttributes {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// Attributes of an `object_storage` bucket whose replication a plan pauses or checks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"provider": "s3", "endpoint": "https://s3.eu-west-1.amazonaws.com",
    "bucket": "wp-media", "region": "eu-west-1", "credential": "s3_keys"}))]
pub struct ObjectStorageAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// A credential named by a resource's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    /// Where in the attributes, e.g. `attributes.ssh.credential`.
    pub attribute: String,
    pub credential: String,
    /// True when the credential is used to log in over SSH (so must be an SSH kind).
    pub ssh_login: bool,
}

/// Attributes that passed validation, normalized, with the credentials they name.
#[derive(Debug)]
pub struct ValidAttributes {
    pub value: Value,
    pub credential_refs: Vec<CredentialRef>,
}

/// Validates `attributes` for `kind`, collecting every problem under `attributes.<path>`.
pub fn validate_attributes(
    kind: ResourceKind,
    attributes: &Value,
) -> Result<ValidAttributes, Vec<FieldError>> {
    if !attributes.is_object() {
        return Err(vec![FieldError::new("attributes", "must be a JSON object")]);
    }
    let mut v = Violations::default();
    let mut refs = Vec::new();
    let value = match kind {
        ResourceKind::Host => typed::<HostAttributes>(attributes).map(|mut a| {
            normalize_host(&mut v, &mut refs, &mut a);
            to_value(&a)
        }),
        ResourceKind::JumpServer => typed::<JumpServerAttributes>(attributes).map(|mut a| {
            a.address = check_address(&mut v, "attributes.address", &a.address);
            check_ssh_login(
                &mut v,
                "attributes",
                a.port,
                &a.user,
                a.host_key_fingerprint.as_deref(),
            );
            if a.max_connections.is_some_and(|n| !(1..=1000).contains(&n)) {
                v.add("attributes.max_connections", "must be between 1 and 1000");
            }
            add_ref(
                &mut v,
                &mut refs,
                "attributes.credential",
                &a.credential,
                true,
            );
            to_value(&a)
        }),
        ResourceKind::Database => typed::<DatabaseAttributes>(attributes).map(|mut a| {
            a.host = check_address(&mut v, "attributes.host", &a.host);
            check_port(&mut v, "attributes.port", a.port);
            optional_ref(
                &mut v,
                &mut refs,
                "attributes.credential",
                a.credential.as_deref(),
            );
            to_value(&a)
        }),
        ResourceKind::DnsRecord => typed::<DnsRecordAttributes>(attributes).map(|a| {
            normalize_dns(&mut v, &mut refs, &a);
            to_value(&a)
        }),
        ResourceKind::HttpEndpoint => typed::<HttpEndpointAttributes>(attributes).map(|a| {
            check_http_url(&mut v, "attributes.url", &a.url);
            optional_ref(
                &mut v,
                &mut refs,
                "attributes.credential",
                a.credential.as_deref(),
            );
            to_value(&a)
        }),
        ResourceKind::ObjectStorage => typed::<ObjectStorageAttributes>(attributes).map(|a| {
            check_bucket(&mut v, &a.bucket);
            if let Some(endpoint) = &a.endpoint {
                check_http_url(&mut v, "attributes.endpoint", endpoint);
            }
            optional_ref(
                &mut v,
                &mut refs,
                "attributes.credential",
                a.credential.as_deref(),
            );
            to_value(&a)
        }),
        ResourceKind::Generic => Ok(attributes.clone()),
    }?;
    if value.to_string().len() > 64 * 1024 {
        v.add("attributes", "must be at most 64 KiB of JSON");
    }
    if !v.is_empty() {
        return Err(v.into_errors());
    }
    Ok(ValidAttributes {
        value,
        credential_refs: refs,
    })
}

/// Deserializes into the kind's struct, naming the failing field as `attributes.<path>`.
fn typed<T: DeserializeOwned>(attributes: &Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(attributes).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." {
            "attributes".to_owned()
        } else {
            format!("attributes.{path}")
        };
        vec![FieldError::new(field, err.into_inner().to_string())]
    })
}

fn to_value<T: Serialize>(attributes: &T) -> Value {
    serde_json::to_value(attributes).expect("attribute structs serialize to JSON")
}

fn normalize_host(v: &mut Violations, refs: &mut Vec<CredentialRef>, a: &mut HostAttributes) {
    if let Some(ip) = &a.private_ip {
        a.private_ip = Some(check_ip(v, "attributes.private_ip", ip));
    }
    if let Some(ip) = &a.public_ip {
        a.public_ip = Some(check_ip(v, "attributes.public_ip", ip));
    }
    if let Some(name) = &a.hostname {
        if !is_hostname(name) {
            v.add(
                "attributes.hostname",
                format!("`{name}` is not a valid host name"),
            );
        }
    }
    if let Some(ssh) = &a.ssh {
        check_ssh_login(
            v,
            "attributes.ssh",
            ssh.port,
            &ssh.user,
            ssh.host_key_fingerprint.as_deref(),
        );
        add_ref(v, refs, "attributes.ssh.credential", &ssh.credential, true);
    }
    if let Some(id) = &a.provider_host_id {
        check_required_text(v, "attributes.provider_host_id", id, 128);
    }
    if let Some(provider) = &a.provider {
        check_required_text(v, "attributes.provider", provider, 63);
    }
}

fn normalize_dns(v: &mut Violations, refs: &mut Vec<CredentialRef>, a: &DnsRecordAttributes) {
    if !is_hostname(&a.zone) {
        v.add(
            "attributes.zone",
            format!("`{}` is not a valid DNS zone", a.zone),
        );
    }
    let record = a.record.strip_prefix("*.").unwrap_or(&a.record);
    if !is_hostname(record) {
        v.add(
            "attributes.record",
            format!("`{}` is not a valid DNS name", a.record),
        );
    }
    if matches!(a.ttl, Some(ttl) if ttl == 0 || ttl > 604_800) {
        v.add("attributes.ttl", "must be between 1 and 604800 seconds");
    }
    if let Some(value) = &a.value {
        match a.record_type {
            DnsRecordType::A if value.parse::<std::net::Ipv4Addr>().is_err() => v.add(
                "attributes.value",
                format!("`{value}` is not an IPv4 address (type A)"),
            ),
            DnsRecordType::AAAA if value.parse::<std::net::Ipv6Addr>().is_err() => v.add(
                "attributes.value",
                format!("`{value}` is not an IPv6 address (type AAAA)"),
            ),
            DnsRecordType::CNAME if !is_hostname(value) => v.add(
                "attributes.value",
                format!("`{value}` is not a host name (type CNAME)"),
            ),
            _ => check_text(v, "attributes.value", value, 255),
        }
    }
    optional_ref(v, refs, "attributes.credential", a.credential.as_deref());
}

fn check_ssh_login(
    v: &mut Violations,
    prefix: &str,
    port: u16,
    user: &str,
    fingerprint: Option<&str>,
) {
    check_port(v, &format!("{prefix}.port"), Some(port));
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !user_ok {
        v.add(
            format!("{prefix}.user"),
            "must be a login name (letters, digits, `.`, `_`, `-`)",
        );
    }
    if let Some(fp) = fingerprint {
        check_fingerprint(v, &format!("{prefix}.host_key_fingerprint"), fp);
    }
}

fn check_port(v: &mut Violations, field: &str, port: Option<u16>) {
    if port == Some(0) {
        v.add(field, "must be between 1 and 65535");
    }
}

fn check_bucket(v: &mut Violations, bucket: &str) {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !ok {
        v.add(
            "attributes.bucket",
            "must be 3-63 characters of lowercase letters, digits, `-` and `.`",
        );
    }
}

fn add_ref(
    v: &mut Violations,
    refs: &mut Vec<CredentialRef>,
    field: &str,
    name: &str,
    ssh_login: bool,
) {
    if name.trim().is_empty() {
        v.add(field, "must name a credential");
        return;
    }
    refs.push(CredentialRef {
        attribute: field.to_owned(),
        credential: name.to_owned(),
        ssh_login,
    });
}

fn optional_ref(
    v: &mut Violations,
    refs: &mut Vec<CredentialRef>,
    field: &str,
    name: Option<&str>,
) {
    if let Some(name) = name {
        add_ref(v, refs, field, name, false);
    }
}

/// Labels selector from a query string: `env=prod,tier=web` (pairs) and `critical` (key present).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub equals: BTreeMap<String, String>,
    pub exists: Vec<String>,
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut selector = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    selector
                        .equals
                        .insert(k.trim().to_owned(), v.trim().to_owned());
                }
                Some(_) => return Err(format!("`{part}` has no label key")),
                None => selector.exists.push(part.to_owned()),
            }
        }
        Ok(selector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(kind: ResourceKind, attributes: Value) -> Vec<String> {
        validate_attributes(kind, &attributes)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_host_is_normalized_and_names_its_credential() {
        let valid = validate_attributes(
            ResourceKind::Host,
            &json!({"private_ip": "10.0.0.5", "public_ip": "2001:DB8::5",
                    "ssh": {"user": "root", "credential": "web_key"}}),
        )
        .unwrap();
        assert_eq!(valid.value["public_ip"], "2001:db8::5");
        assert_eq!(valid.value["ssh"]["port"], 22);
        assert_eq!(
            valid.credential_refs,
            vec![CredentialRef {
                attribute: "attributes.ssh.credential".into(),
                credential: "web_key".into(),
                ssh_login: true,
            }]
        );
    }

    #[test]
    fn every_bad_host_field_is_reported_with_its_path() {
        let f = fields(
            ResourceKind::Host,
            json!({"private_ip": "10.0.0.300", "public_ip": "x",
                   "ssh": {"user": "root;rm", "credential": "k", "host_key_fingerprint": "nope"}}),
        );
        assert_eq!(
            f,
            vec![
                "attributes.private_ip",
                "attributes.public_ip",
                "attributes.ssh.user",
                "attributes.ssh.host_key_fingerprint"
            ]
        );
    }

    #[test]
    fn unknown_and_mistyped_fields_name_their_path() {
        assert_eq!(
            fields(ResourceKind::Host, json!({"privat_ip": "1.1.1.1"})),
            vec!["attributes.privat_ip"]
        );
        assert_eq!(
            fields(
                ResourceKind::Host,
                json!({"ssh": {"user": "u", "credential": "c", "port": 70000}})
            ),
            vec!["attributes.ssh.port"]
        );
        assert_eq!(
            fields(ResourceKind::JumpServer, json!({"address": "1.2.3.4"})),
            vec!["attributes"]
        );
        assert_eq!(
            fields(ResourceKind::Generic, json!([1, 2])),
            vec!["attributes"]
        );
    }

    #[test]
    fn a_jump_server_needs_an_address_user_and_credential() {
        let ok = validate_attributes(
            ResourceKind::JumpServer,
            &json!({"address": "Jump.Example.com", "user": "ops", "credential": "jump_key"}),
        )
        .unwrap();
        assert_eq!(ok.value["address"], "jump.example.com");
        assert_eq!(ok.value["port"], 22);
        assert_eq!(
            fields(
                ResourceKind::JumpServer,
                json!({"address": "bad host", "user": "ops", "credential": ""})
            ),
            vec!["attributes.address", "attributes.credential"]
        );
    }

    #[test]
    fn dns_values_must_match_the_record_type() {
        let f = fields(
            ResourceKind::DnsRecord,
            json!({"zone": "example.com", "record": "www.example.com", "type": "A", "value": "::1", "ttl": 0}),
        );
        assert_eq!(f, vec!["attributes.ttl", "attributes.value"]);
    }

    #[test]
    fn other_kinds_check_their_own_fields() {
        assert_eq!(
            fields(ResourceKind::HttpEndpoint, json!({"url": "ftp://x"})),
            vec!["attributes.url"]
        );
        assert_eq!(
            fields(ResourceKind::ObjectStorage, json!({"bucket": "B"})),
            vec!["attributes.bucket"]
        );
        assert_eq!(
            fields(
                ResourceKind::Database,
                json!({"engine": "db2", "host": "x"})
            ),
            vec!["attributes.engine"]
        );
        assert!(fields(ResourceKind::Generic, json!({"anything": [1, 2, 3]})).is_empty());
    }

    #[test]
    fn label_selectors_parse_pairs_and_keys() {
        let s: LabelSelector = "env=prod, critical".parse().unwrap();
        assert_eq!(s.equals.get("env").map(String::as_str), Some("prod"));
        assert_eq!(s.exists, vec!["critical"]);
        assert!("=x".parse::<LabelSelector>().is_err());
    }
}
