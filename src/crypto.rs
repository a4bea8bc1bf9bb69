//! The master key and the sealing of credential secrets at rest: AES-256-GCM with a random
//! nonce per write, the credential's id as associated data (a ciphertext moved to another row
//! does not open), and a key id so a future key rotation knows which key sealed what.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub struct MasterKey {
    cipher: Aes256Gcm,
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A secret's sealed form.
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub key_id: String,
}

impl MasterKey {
    /// Parses `DRO_MASTER_KEY`: the standard base64 encoding of exactly 32 bytes.
    pub fn from_base64(raw: &str) -> Result<Self, String> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(raw.trim())
                .map_err(|_| "DRO_MASTER_KEY is not valid base64 (generate one with `openssl rand -base64 32`)".to_owned())?,
        );
        if bytes.len() != 32 {
            return Err(format!(
                "DRO_MASTER_KEY must decode to 32 bytes, not {} (generate one with `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        let digest = Sha256::digest(bytes.as_slice());
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            id,
        })
    }

    /// A new random key, base64-encoded as `DRO_MASTER_KEY` expects.
    pub fn generate_base64() -> String {
        let key = Aes256Gcm::generate_key(OsRng);
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// A short public name of this key (a prefix of its SHA-256), stored beside each ciphertext.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, plaintext: &[u8], associated: &[u8]) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: associated,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Sealed {
            nonce: nonce.to_vec(),
            ciphertext,
            key_id: self.id.clone(),
        }
    }

    /// Opens a sealed secret; fails when the key, the nonce, the data or `associated` differ.
    pub fn open(
        &self,
        nonce: &[u8],
        ciphertext: &[u8],
        associated: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        if nonce.len() != 12 {
            return Err("stored nonce has the wrong length".into());
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: associated,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| "the secret does not open with this master key".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_opens_only_with_same_key_and_associated_data() {
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let sealed = key.seal(b"hunter2", b"row-1");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            key.open(&sealed.nonce, &sealed.ciphertext, b"row-1")
                .unwrap()
                .as_slice(),
            b"hunter2"
        );
        assert!(key
            .open(&sealed.nonce, &sealed.ciphertext, b"row-2")
            .is_err());
        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        assert!(other
            .open(&sealed.nonce, &sealed.ciphertext, b"row-1")
            .is_err());
    }

    #[test]
    fn two_seals_of_the_same_secret_differ() {
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        assert_ne!(
            key.seal(b"x", b"a").ciphertext,
            key.seal(b"x", b"a").ciphertext
        );
    }

    #[test]
    fn a_short_or_malformed_key_is_refused_with_a_hint() {
        assert!(MasterKey::from_base64("c2hvcnQ=")
            .unwrap_err()
            .contains("32 bytes"));
        assert!(MasterKey::from_base64("%%%")
            .unwrap_err()
            .contains("openssl rand"));
    }
}
