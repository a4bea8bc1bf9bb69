//! From a stored provider to a client: the row's settings, its login opened from the
//! credential store, one client per provider version kept for reuse (it keeps its token).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use diesel::pg::PgConnection;
use serde_json::{Map, Value};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::hyperbdr::{Client, HyperBdrConfig};
use super::{ProviderSettings, RecoveryProvider};
use crate::crypto::MasterKey;
use crate::db::models::ProviderRow;
use crate::error::{Error, Result};

/// The login a simulator provider without a credential uses (the simulator's default).
pub const SIMULATOR_LOGIN: (&str, &str) = ("admin", "simulator");

/// A provider ready to call.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub settings: ProviderSettings,
    pub client: Arc<dyn RecoveryProvider>,
}

/// The provider's version and its login credential's: a client is good while both hold.
type Versions = (i32, i32);

/// Clients by provider id, rebuilt when the provider or its login credential changes.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<Uuid, (Versions, Provider)>>,
}

impl Registry {
    /// The provider named `name`, as stored now.
    pub fn get(&self, conn: &mut PgConnection, key: &MasterKey, name: &str) -> Result<Provider> {
        let row = crate::db::providers::find(conn, name).map_err(|e| match e {
            Error::NotFound { .. } => {
                Error::conflict(format!("no provider named `{name}` is defined"))
            }
            other => other,
        })?;
        // A rotated login (the credential's version) needs a new client as much as an edit.
        let login_version = match row.credential_id {
            Some(id) => crate::db::credentials::version(conn, id)?,
            None => 0,
        };
        let current = (row.version, login_version);
        if let Some((version, p)) = self.clients.lock().unwrap().get(&row.id) {
            if *version == current {
                return Ok(p.clone());
            }
        }
        let provider = build(conn, key, &row)?;
        self.clients
            .lock()
            .unwrap()
            .insert(row.id, (current, provider.clone()));
        Ok(provider)
    }
}

/// Builds the client for a stored provider (opening its credential).
pub fn build(conn: &mut PgConnection, key: &MasterKey, row: &ProviderRow) -> Result<Provider> {
    let settings: ProviderSettings =
        serde_json::from_value(row.settings.clone()).map_err(Error::internal)?;
    let (username, password) = match row.credential_id {
        Some(id) => {
            let username = crate::db::credentials::username(conn, id)?.unwrap_or_default();
            let plain = crate::db::credentials::open_secret(conn, id, key)?;
            let secret: Map<String, Value> =
                serde_json::from_slice(&plain).map_err(Error::internal)?;
            let password = secret
                .get("password")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            (username, Zeroizing::new(password))
        }
        None => (
            SIMULATOR_LOGIN.0.to_owned(),
            Zeroizing::new(SIMULATOR_LOGIN.1.to_owned()),
        ),
    };
    let base_url = url::Url::parse(&row.base_url).map_err(Error::internal)?;
    let request_timeout = settings.request_timeout.std();
    let client = Client::new(HyperBdrConfig {
        base_url,
        username,
        password,
        tls_verify: settings.tls_verify,
        ca_certificate: settings.ca_certificate.clone(),
        request_timeout,
        connect_timeout: request_timeout.min(std::time::Duration::from_secs(10)),
    })
    .map_err(|e| Error::conflict(format!("provider `{}`: {e}", row.name)))?;
    Ok(Provider {
        name: row.name.clone(),
        settings,
        client: Arc::new(client),
    })
}
