//! Where the JWT secret and the master key come from: the environment, or, in the embedded
//! mode with nothing set, files generated once under the data dir (mode 0600) and reused.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::crypto::MasterKey;

pub const JWT_SECRET_FILE: &str = "jwt_secret";
pub const MASTER_KEY_FILE: &str = "master_key";
pub const ADMIN_TOKEN_FILE: &str = "admin_token";

/// The service's two secrets, ready to use.
pub struct Secrets {
    pub jwt_secret: Zeroizing<Vec<u8>>,
    pub master_key: MasterKey,
    /// True when at least one of them was read from (or written to) the data dir.
    pub from_data_dir: bool,
}

impl Secrets {
    pub fn resolve(config: &Config) -> Result<Self, String> {
        let mut from_data_dir = false;
        let jwt = match &config.jwt_secret {
            Some(s) => Zeroizing::new(s.clone()),
            None if config.embedded_database() => {
                from_data_dir = true;
                load_or_create(&config.data_dir, JWT_SECRET_FILE, generate_jwt_secret)?
            }
            None => return Err(missing("DRO_JWT_SECRET", "openssl rand -hex 32")),
        };
        if jwt.len() < 32 {
            return Err("DRO_JWT_SECRET must be at least 32 bytes long".into());
        }
        let master = match &config.master_key {
            Some(s) => Zeroizing::new(s.clone()),
            None if config.embedded_database() => {
                from_data_dir = true;
                load_or_create(
                    &config.data_dir,
                    MASTER_KEY_FILE,
                    MasterKey::generate_base64,
                )?
            }
            None => return Err(missing("DRO_MASTER_KEY", "openssl rand -base64 32")),
        };
        Ok(Self {
            jwt_secret: Zeroizing::new(jwt.as_bytes().to_vec()),
            master_key: MasterKey::from_base64(&master)?,
            from_data_dir,
        })
    }
}

fn missing(var: &str, how: &str) -> String {
    format!(
        "{var} is not set. With DATABASE_URL set the service does not invent secrets (every \
         instance must share them); generate one with `{how}` and set {var}"
    )
}

fn generate_jwt_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load_or_create(
    dir: &Path,
    name: &str,
    generate: fn() -> String,
) -> Result<Zeroizing<String>, String> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(Zeroizing::new(s.trim().to_owned())),
        Ok(_) => {
            return Err(format!(
                "{} is empty; delete it to generate a new one",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let value = Zeroizing::new(generate());
    // Written whole to a private temporary file, then linked into place: a crash never leaves
    // a half-written key, and when two processes race the first one's key wins.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    write_private(&tmp, &value)?;
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(value),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => fs::read_to_string(&path)
            .map(|s| Zeroizing::new(s.trim().to_owned()))
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// Writes `content` to a new or truncated file only its owner can read (mode 0600).
pub fn write_private(path: &Path, content: &str) -> Result<(), String> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded_config(dir: &Path) -> Config {
        let mut c = Config::from_lookup(|_| None).unwrap();
        c.data_dir = dir.to_path_buf();
        c
    }

    #[test]
    fn embedded_mode_generates_secrets_once_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("dro-secrets-{}", uuid::Uuid::new_v4()));
        let first = Secrets::resolve(&embedded_config(&dir)).unwrap();
        let second = Secrets::resolve(&embedded_config(&dir)).unwrap();
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.master_key.id(), second.master_key.id());
        for name in [JWT_SECRET_FILE, MASTER_KEY_FILE] {
            let mode = fs::metadata(dir.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn external_database_without_secrets_is_refused() {
        let mut c = embedded_config(Path::new("/nonexistent"));
        c.database_url = Some("postgres://x".into());
        let err = Secrets::resolve(&c).err().unwrap();
        assert!(err.contains("DRO_JWT_SECRET"), "{err}");
    }
}
