//! Every setting of the service, read from the environment with its default, in one struct.
//! README.md lists the same variables; keep the two in step.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`: an external PostgreSQL. When unset, the embedded cluster under
    /// `data_dir/postgres` is used.
    pub database_url: Option<String>,
    /// `DRO_BIND`: address the HTTP server listens on.
    pub bind: SocketAddr,
    /// `DRO_JWT_SECRET`: HS256 key for bearer tokens (at least 32 bytes).
    pub jwt_secret: Option<String>,
    /// `DRO_MASTER_KEY`: base64 of 32 bytes; encrypts credentials at rest.
    pub master_key: Option<String>,
    /// `DRO_DATA_DIR`: where the embedded mode keeps its cluster and generated secrets.
    pub data_dir: PathBuf,
    /// `DRO_PG_BINDIR`: where `initdb` and `postgres` are, for the embedded mode.
    pub pg_bindir: Option<PathBuf>,
    /// `DRO_DB_POOL_SIZE`: most connections the pool keeps open.
    pub db_pool_size: u32,
    /// `DRO_DB_POOL_TIMEOUT_SECS`: how long a request waits for a free connection.
    pub db_pool_timeout_secs: u64,
    /// `DRO_HTTP_WORKERS`: actix worker threads (default: one per core).
    pub http_workers: usize,
    /// `DRO_HTTP_DB_THREADS`: blocking threads per HTTP worker, on which its database calls run
    /// (default 2). Few threads queue requests fairly in front of the pool; many make them
    /// race for its connections, and the losers wait long (see BENCHMARKS.md, API).
    pub http_db_threads: usize,
    /// `DRO_WORKERS`: concurrent step runs per instance (0: this instance runs no steps).
    pub workers: usize,
    /// `DRO_LEASE_SECS`: how long a worker's claim on a step lasts without a heartbeat.
    pub lease_secs: u64,
    /// `DRO_LOG`: a tracing filter such as `info` or `dr_orchestrator=debug,actix_web=info`.
    pub log_filter: String,
    /// `DRO_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `DRO_PUBLIC_URL`: the base URL clients reach the service at (links in webhook bodies);
    /// default `http://<DRO_BIND>`. Without a trailing slash.
    pub public_url: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { "<set>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("database_url", &hidden(self.database_url.is_some()))
            .field("bind", &self.bind)
            .field("jwt_secret", &hidden(self.jwt_secret.is_some()))
            .field("master_key", &hidden(self.master_key.is_some()))
            .field("data_dir", &self.data_dir)
            .field("pg_bindir", &self.pg_bindir)
            .field("db_pool_size", &self.db_pool_size)
            .field("db_pool_timeout_secs", &self.db_pool_timeout_secs)
            .field("http_workers", &self.http_workers)
            .field("http_db_threads", &self.http_db_threads)
            .field("workers", &self.workers)
            .field("lease_secs", &self.lease_secs)
            .field("log_filter", &self.log_filter)
            .field("log_format", &self.log_format)
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// A setting whose value could not be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `lookup`, so tests can pass a map instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let bind: SocketAddr = parse(
            &get,
            "DRO_BIND",
            "127.0.0.1:8080".parse().expect("literal address"),
        )?;
        let public_url = match get("DRO_PUBLIC_URL") {
            None => format!("http://{bind}"),
            Some(raw) => public_url(&raw)?,
        };
        Ok(Self {
            database_url: get("DATABASE_URL"),
            bind,
            jwt_secret: get("DRO_JWT_SECRET"),
            master_key: get("DRO_MASTER_KEY"),
            data_dir: get("DRO_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from),
            pg_bindir: get("DRO_PG_BINDIR").map(PathBuf::from),
            db_pool_size: parse(&get, "DRO_DB_POOL_SIZE", 16)?,
            db_pool_timeout_secs: parse(&get, "DRO_DB_POOL_TIMEOUT_SECS", 10)?,
            http_workers: parse(&get, "DRO_HTTP_WORKERS", cores)?,
            http_db_threads: parse(&get, "DRO_HTTP_DB_THREADS", 2)?,
            workers: parse(&get, "DRO_WORKERS", 8)?,
            lease_secs: parse(&get, "DRO_LEASE_SECS", 30)?,
            log_filter: get("DRO_LOG").unwrap_or_else(|| "info".to_owned()),
            log_format: match get("DRO_LOG_FORMAT").as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError {
                        var: "DRO_LOG_FORMAT",
                        message: format!("`{other}` is not one of: text, json"),
                    })
                }
            },
            public_url,
        })
        .and_then(Self::checked)
    }

    fn checked(self) -> Result<Self, ConfigError> {
        if self.db_pool_size == 0 {
            return Err(ConfigError {
                var: "DRO_DB_POOL_SIZE",
                message: "must be at least 1".into(),
            });
        }
        if self.lease_secs < 3 {
            return Err(ConfigError {
                var: "DRO_LEASE_SECS",
                message: "must be at least 3".into(),
            });
        }
        if self.http_db_threads == 0 {
            return Err(ConfigError {
                var: "DRO_HTTP_DB_THREADS",
                message: "must be at least 1".into(),
            });
        }
        if self.http_workers == 0 {
            return Err(ConfigError {
                var: "DRO_HTTP_WORKERS",
                message: "must be at least 1".into(),
            });
        }
        Ok(self)
    }

    /// True when the service runs its own private PostgreSQL cluster.
    pub fn embedded_database(&self) -> bool {
        self.database_url.is_none()
    }
}

/// An absolute http(s) base URL, kept without its trailing slash.
fn public_url(raw: &str) -> Result<String, ConfigError> {
    let error = |message: &str| ConfigError {
        var: "DRO_PUBLIC_URL",
        message: format!("`{raw}` {message}"),
    };
    let parsed = url::Url::parse(raw.trim()).map_err(|e| error(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(error("must be an http:// or https:// URL with a host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(error("must not have a query or fragment"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(var) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|e| ConfigError {
            var,
            message: format!("`{raw}` is not valid: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert!(c.embedded_database());
        assert_eq!(c.db_pool_size, 16);
        assert_eq!(c.http_db_threads, 2);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn the_public_url_follows_the_bind_address_or_is_checked() {
        let c = config(&[("DRO_BIND", "0.0.0.0:9000")]).unwrap();
        assert_eq!(c.public_url, "http://0.0.0.0:9000");
        let c = config(&[("DRO_PUBLIC_URL", "https://dro.example.com/")]).unwrap();
        assert_eq!(c.public_url, "https://dro.example.com");
        let err = config(&[("DRO_PUBLIC_URL", "dro.example.com")]).unwrap_err();
        assert_eq!(err.var, "DRO_PUBLIC_URL");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = config(&[("DRO_BIND", "not-an-address")]).unwrap_err();
        assert_eq!(err.var, "DRO_BIND");
        let err = config(&[("DRO_DB_POOL_SIZE", "0")]).unwrap_err();
        assert_eq!(err.var, "DRO_DB_POOL_SIZE");
        let err = config(&[("DRO_HTTP_DB_THREADS", "0")]).unwrap_err();
        assert_eq!(err.var, "DRO_HTTP_DB_THREADS");
        let err = config(&[("DRO_LOG_FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("xml"));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = config(&[
            ("DATABASE_URL", "postgres://u:pw-123@h/db"),
            ("DRO_JWT_SECRET", "jwt-456"),
            ("DRO_MASTER_KEY", "key-789"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["pw-123", "jwt-456", "key-789"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn an_empty_variable_counts_as_unset() {
        let c = config(&[("DATABASE_URL", "  ")]).unwrap();
        assert!(c.embedded_database());
    }
}
