//! The token signing keys: ES256 (P-256) key pairs that rotate with overlap.
//!
//! The newest key signs. When it is older than the rotation period a new key takes over, and
//! the old one stays in the published JWKS for the overlap period, so tokens it signed keep
//! verifying until they expire (the overlap must be at least the longest token lifetime).
//! Key ids are the first 16 characters of the base64url SHA-256 of the public point.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use quartet_kit::token::Claims;
use sha2::Digest;

/// One signing key.
#[derive(Clone)]
pub struct SigningKey {
    /// The key id, in every token header and JWKS entry.
    pub kid: String,
    /// When the key was made, seconds since the epoch.
    pub created: u64,
    encoding: EncodingKey,
    jwk: Jwk,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Stored key bytes are not a P-256 PKCS#8 key.
    #[error("stored signing key {kid} is not a P-256 PKCS#8 key: {reason}")]
    BadKey {
        /// Which key.
        kid: String,
        /// Why.
        reason: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

impl SigningKey {
    /// A fresh key pair.
    pub fn generate(created: u64) -> Self {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("the OS random source is available");
            // Fails only for 0 or values >= the group order: about 2^-128 of draws.
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                return Self::from_secret(&secret, created).expect("a fresh key encodes");
            }
        }
    }

    /// Loads a key stored as PKCS#8 DER (see [`SigningKey::pkcs8`]).
    pub fn from_pkcs8(der: &[u8], created: u64) -> Result<Self, KeyError> {
        use p256::pkcs8::DecodePrivateKey;
        let secret = p256::SecretKey::from_pkcs8_der(der).map_err(|e| KeyError::BadKey {
            kid: "?".into(),
            reason: e.to_string(),
        })?;
        Self::from_secret(&secret, created)
    }

    fn from_secret(secret: &p256::SecretKey, created: u64) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::BadKey {
            kid: "?".into(),
            reason,
        };
        let pkcs8 = secret
            .to_pkcs8_der()
            .map_err(|e| bad(e.to_string()))?
            .as_bytes()
            .to_vec();
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(bad("public point has no coordinates".into()));
        };
        let mut both = x.to_vec();
        both.extend_from_slice(y);
        let kid: String = URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(&both))
            .chars()
            .take(16)
            .collect();
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }))
        .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            kid,
            created,
            encoding: EncodingKey::from_ec_der(&pkcs8),
            jwk,
            pkcs8,
        })
    }

    /// The private key as PKCS#8 DER, for the store.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// The live keys, oldest first; the last one signs.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
    rotate_after: u64,
    overlap: u64,
}

impl KeyRing {
    /// A ring holding `keys` (oldest first) or, when empty, one fresh key. Keys rotate when the
    /// newest is `rotate_after` seconds old; a replaced key stays published `overlap` seconds.
    pub fn new(mut keys: Vec<SigningKey>, rotate_after: u64, overlap: u64, now: u64) -> Self {
        keys.sort_by_key(|k| k.created);
        if keys.is_empty() {
            keys.push(SigningKey::generate(now));
        }
        Self {
            keys,
            rotate_after,
            overlap,
        }
    }

    /// The key that signs now.
    pub fn current(&self) -> &SigningKey {
        self.keys.last().expect("a ring always holds a key")
    }

    /// Every key still published, oldest first.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// Rotates when due and drops keys whose overlap has passed. Returns whether anything changed.
    pub fn maintain(&mut self, now: u64) -> bool {
        let mut changed = false;
        if now.saturating_sub(self.current().created) >= self.rotate_after {
            self.keys.push(SigningKey::generate(now));
            changed = true;
        }
        // A key is retired when its successor has signed for longer than the overlap.
        let successors: Vec<u64> = self.keys.iter().skip(1).map(|k| k.created).collect();
        let before = self.keys.len();
        let mut index = 0;
        self.keys.retain(|_| {
            let keep = successors
                .get(index)
                .is_none_or(|&next| now.saturating_sub(next) < self.overlap);
            index += 1;
            keep
        });
        changed || self.keys.len() != before
    }

    /// The JWKS document of every published key.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }
}

/// Verifies `token` against the key set `set`, synchronously: the path every untrusted bearer
/// token takes (header, algorithm, key id, signature, then the claims), with no store and no
/// network. The entry point of fuzz targets and of tools that check a token offline.
pub fn verify_token(
    set: &JwkSet,
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<Claims, quartet_kit::token::TokenError> {
    let verifier = quartet_kit::token::Verifier::from_jwks(set, issuer, audience);
    // A verifier with fixed keys never waits on anything: its future is ready when polled.
    futures::executor::block_on(verifier.verify(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quartet_kit::token::{TokenError, Verifier};

    fn claims(now: u64) -> Claims {
        Claims {
            iss: "https://auth.example".into(),
            sub: "ada".into(),
            aud: "quartet".into(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: "t1".into(),
            client_id: "cli".into(),
            scope: "openid".into(),
            roles: vec!["admin".into()],
            perms: vec!["*".into()],
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    #[tokio::test]
    async fn tokens_verify_through_the_rings_jwks_across_a_rotation_until_the_overlap_ends() {
        let t0 = now();
        let mut ring = KeyRing::new(vec![], 3600, 900, t0);
        let old_token = ring.current().sign(&claims(t0)).expect("signs");
        let verifier = Verifier::from_jwks(&ring.jwks(), "https://auth.example", "quartet");
        assert_eq!(verifier.verify(&old_token).await.expect("valid").sub, "ada");

        assert!(!ring.maintain(t0 + 10), "nothing is due yet");
        assert!(ring.maintain(t0 + 3600), "rotation is due");
        assert_eq!(ring.keys().len(), 2);
        let new_token = ring.current().sign(&claims(t0)).expect("signs");
        verifier.set_keys(&ring.jwks());
        assert!(
            verifier.verify(&old_token).await.is_ok(),
            "the old key is still published"
        );
        assert!(verifier.verify(&new_token).await.is_ok());

        assert!(ring.maintain(t0 + 3600 + 900), "the overlap has ended");
        assert_eq!(ring.keys().len(), 1);
        verifier.set_keys(&ring.jwks());
        assert!(matches!(
            verifier.verify(&old_token).await,
            Err(TokenError::UnknownKey(_))
        ));
        assert!(verifier.verify(&new_token).await.is_ok());
    }

    #[tokio::test]
    async fn expired_foreign_or_tampered_tokens_are_refused() {
        let t0 = now();
        let ring = KeyRing::new(vec![], 3600, 900, t0);
        let verifier = Verifier::from_jwks(&ring.jwks(), "https://auth.example", "quartet");
        let mut expired = claims(t0 - 4000);
        expired.exp = t0 - 3000;
        assert!(matches!(
            verifier
                .verify(&ring.current().sign(&expired).expect("signs"))
                .await,
            Err(TokenError::Invalid(_))
        ));
        let mut other_audience = claims(t0);
        other_audience.aud = "elsewhere".into();
        assert!(matches!(
            verifier
                .verify(&ring.current().sign(&other_audience).expect("signs"))
                .await,
            Err(TokenError::Invalid(_))
        ));

        let token = ring.current().sign(&claims(t0)).expect("signs");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut payload = claims(t0);
        payload.perms = vec!["*".into(), "more".into()];
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("json"));
        assert!(matches!(
            verifier.verify(&parts.join(".")).await,
            Err(TokenError::Invalid(_))
        ));

        let stranger = SigningKey::generate(t0);
        let forged = stranger.sign(&claims(t0)).expect("signs");
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_survive_a_pkcs8_round_trip() {
        let key = SigningKey::generate(5);
        let loaded = SigningKey::from_pkcs8(key.pkcs8(), 5).expect("loads");
        assert_eq!(loaded.kid, key.kid);
        assert!(SigningKey::from_pkcs8(b"garbage", 5).is_err());
    }
}
