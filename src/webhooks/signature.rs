//! The Standard Webhooks signature scheme (<https://www.standardwebhooks.com>), both ways.
//!
//! A message is signed as `base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))`
//! and sent in `webhook-signature` as `v1,<signature>` (several may be given, space-separated,
//! while a secret is rotated). Secrets are written `whsec_<base64 of the key>`. The receiver
//! refuses a timestamp outside its tolerance (replays) before it checks the signature.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The headers of the scheme.
pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The prefix of a secret as the scheme writes it.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a timestamp may be from now, either way, by default (the scheme's recommendation).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// A signing key. (No `Debug`: it is a secret.)
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// A new random key and its `whsec_...` text (shown to the user once).
    pub fn generate() -> (Self, Zeroizing<String>) {
        use rand::RngCore;
        let mut key = Zeroizing::new(vec![0u8; 32]);
        rand::thread_rng().fill_bytes(&mut key);
        let text = Zeroizing::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(&*key)));
        (Self(key), text)
    }

    /// Reads a `whsec_<base64>` secret (what the scheme's libraries take).
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("must start with `{SECRET_PREFIX}`"))?;
        let key = Zeroizing::new(
            STANDARD
                .decode(encoded)
                .map_err(|_| "is not base64 after the prefix".to_owned())?,
        );
        if !(24..=64).contains(&key.len()) {
            return Err("must hold 24 to 64 bytes of key".into());
        }
        Ok(Self(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Checks a received message: the timestamp within `tolerance_secs` of `now`, then one of
    /// the `v1` signatures (compared in constant time).
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::Malformed("webhook-timestamp is not a number of seconds"))?;
        if (now - ts).abs() > tolerance_secs {
            return Err(VerifyError::Stale { skew: now - ts });
        }
        let mut any = false;
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            any = true;
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            if self.mac(id, ts, body).verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        if any {
            Err(VerifyError::Mismatch)
        } else {
            Err(VerifyError::Malformed(
                "webhook-signature holds no v1 signature",
            ))
        }
    }
}

/// Why a received message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the timestamp is {skew} s away from now, outside the replay window")]
    Stale { skew: i64 },
    #[error("the signature does not match the body")]
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specifications_example_as_it_says() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(s.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
    }

    #[test]
    fn verifies_a_good_message_among_several_signatures() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        let header = format!("v1,bm90IGl0 {SPEC_SIGNATURE}");
        s.verify(SPEC_ID, "1614265330", &header, SPEC_BODY, SPEC_TS + 10, 300)
            .unwrap();
    }

    #[test]
    fn refuses_stale_timestamps_changed_bodies_and_other_keys() {
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert!(matches!(
            s.verify(
                SPEC_ID,
                "1614265330",
                SPEC_SIGNATURE,
                SPEC_BODY,
                SPEC_TS + 301,
                300
            ),
            Err(VerifyError::Stale { skew: 301 })
        ));
        assert_eq!(
            s.verify(SPEC_ID, "1614265330", SPEC_SIGNATURE, b"{}", SPEC_TS, 300),
            Err(VerifyError::Mismatch)
        );
        let (other, _) = Secret::generate();
        assert_eq!(
            other.verify(
                SPEC_ID,
                "1614265330",
                SPEC_SIGNATURE,
                SPEC_BODY,
                SPEC_TS,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert!(matches!(
            s.verify(SPEC_ID, "soon", SPEC_SIGNATURE, SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            s.verify(SPEC_ID, "1614265330", "v2,abc", SPEC_BODY, SPEC_TS, 300),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn generated_secrets_parse_back_and_bad_ones_are_refused() {
        let (key, text) = Secret::generate();
        let again = Secret::parse(&text).unwrap();
        assert_eq!(key.sign("a", 1, b"b"), again.sign("a", 1, b"b"));
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_AAAA").is_err());
    }
}
