//! Placeholder until the HyperBDR client lands (same public surface).
use super::*;

pub struct HyperBdrConfig {
    pub base_url: url::Url,
    pub username: String,
    pub password: zeroize::Zeroizing<String>,
    pub tls_verify: bool,
    pub request_timeout: std::time::Duration,
    pub connect_timeout: std::time::Duration,
}

pub struct Client;

impl Client {
    pub fn new(_config: HyperBdrConfig) -> Result<Client, ProviderError> {
        Ok(Client)
    }
}

#[async_trait]
impl RecoveryProvider for Client {
    async fn test(&self) -> ProviderResult<String> {
        Err(ProviderError::Unreachable("no client".into()))
    }
    async fn hosts(&self) -> ProviderResult<Vec<ProtectedHost>> {
        Err(ProviderError::Unreachable("no client".into()))
    }
    async fn host(&self, _: &str) -> ProviderResult<ProtectedHost> {
        Err(ProviderError::Unreachable("no client".into()))
    }
    async fn recover(&self, _: &str, _: Option<&str>, _: Purpose) -> ProviderResult<()> {
        Err(ProviderError::Unreachable("no client".into()))
    }
    async fn instance(&self, _: &str, _: Purpose) -> ProviderResult<Option<Instance>> {
        Err(ProviderError::Unreachable("no client".into()))
    }
    async fn power_on(&self, _: &str, _: Purpose) -> ProviderResult<()> {
        Err(ProviderError::Unreachable("no client".into()))
    }
    async fn delete_instance(&self, _: &str, _: &str) -> ProviderResult<()> {
        Err(ProviderError::Unreachable("no client".into()))
    }
}
