//! The cipher service, like Shiro's `CipherService` but with versioned keys: AES-256-GCM
//! encryption, key rotation, re-wrapping old ciphertexts under the newest key, and HMAC-SHA256
//! signatures.
//!
//! Formats, all ASCII:
//! - ciphertext `qc1.<version>.<base64url(nonce ‖ ciphertext ‖ tag)>`; the optional associated
//!   data is authenticated but not stored, so decryption must be given the same bytes;
//! - signature `qh1.<version>.<base64url(HMAC-SHA256)>`.
//!
//! Each data key version yields two keys: one for AES-GCM and one for HMAC, derived with
//! HMAC-SHA256 under distinct labels, so a signature never reveals anything about encryption.
//! Data keys are stored wrapped (AES-256-GCM) under the master key from `cipher.master_key_file`;
//! the master key never touches the store. Nonces are 96 random bits: safe for far more than
//! the 2^32 messages per key that NIST allows, and rotation resets the count.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use quartet_kit::{ApiError, ErrorKind};

type HmacSha256 = Hmac<Sha256>;

/// Why a cipher operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// The input is not in the expected format.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// `ciphertext`, `signature` or `master key`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The key version it names is not (or no longer) held.
    #[error("key version {0} is unknown")]
    UnknownVersion(u32),
    /// Authentication failed: tampered ciphertext, wrong associated data, or wrong key.
    #[error("decryption failed: the ciphertext or its associated data was altered")]
    Tampered,
    /// No master key is configured, so nothing can be encrypted.
    #[error("the cipher service is not configured (set cipher.master_key_file)")]
    NotConfigured,
}

impl ApiError for CipherError {
    fn kind(&self) -> ErrorKind {
        match self {
            CipherError::Malformed { .. } | CipherError::Tampered => ErrorKind::InvalidArgument,
            CipherError::UnknownVersion(_) => ErrorKind::FailedPrecondition,
            CipherError::NotConfigured => ErrorKind::Unavailable,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            CipherError::Malformed { .. } => "malformed-input",
            CipherError::UnknownVersion(_) => "unknown-key-version",
            CipherError::Tampered => "decryption-failed",
            CipherError::NotConfigured => "cipher-not-configured",
        }
    }
}

fn malformed(what: &'static str, reason: impl Into<String>) -> CipherError {
    CipherError::Malformed {
        what,
        reason: reason.into(),
    }
}

fn derive(key: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

/// One data key version.
#[derive(Clone)]
struct DataKey {
    aead: Aes256Gcm,
    mac: [u8; 32],
}

impl DataKey {
    fn new(raw: [u8; 32]) -> Self {
        let aead = Aes256Gcm::new_from_slice(&derive(&raw, b"quartet cipher aes-256-gcm"))
            .expect("32-byte key");
        Self {
            aead,
            mac: derive(&raw, b"quartet cipher hmac-sha256"),
        }
    }
}

/// The master key that wraps data keys for storage.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads a master key: 32 bytes, written as base64 (standard alphabet) in a text file.
    pub fn from_base64(text: &str) -> Result<Self, CipherError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| malformed("master key", format!("not base64: {e}")))?;
        if bytes.len() != 32 {
            return Err(malformed(
                "master key",
                format!("{} bytes, expected 32", bytes.len()),
            ));
        }
        Ok(Self(
            Aes256Gcm::new_from_slice(&bytes).expect("32-byte key"),
        ))
    }

    /// A fresh random master key, base64, for `cipher.master_key_file`.
    pub fn generate_base64() -> String {
        STANDARD.encode(random::<32>())
    }

    fn wrap(&self, version: u32, key: &[u8; 32]) -> String {
        let nonce = random::<12>();
        let aad = format!("quartet data key v{version}");
        let sealed = self
            .0
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key,
                    aad: aad.as_bytes(),
                },
            )
            .expect("encrypting 32 bytes cannot fail");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        STANDARD.encode(out)
    }

    fn unwrap(&self, version: u32, wrapped: &str) -> Result<[u8; 32], CipherError> {
        let bytes = STANDARD
            .decode(wrapped)
            .map_err(|e| malformed("stored key", e.to_string()))?;
        if bytes.len() < 12 {
            return Err(malformed("stored key", "too short"));
        }
        let aad = format!("quartet data key v{version}");
        let key = self
            .0
            .decrypt(
                Nonce::from_slice(&bytes[..12]),
                Payload {
                    msg: &bytes[12..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                malformed(
                    "stored key",
                    format!("version {version} does not open with this master key"),
                )
            })?;
        key.try_into()
            .map_err(|_| malformed("stored key", "not 32 bytes"))
    }
}

/// The data keys, by version; the highest version encrypts and signs.
#[derive(Clone, Default)]
pub struct Cipher {
    keys: BTreeMap<u32, DataKey>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Splits a cipher token (`<prefix>.<version>.<base64url data>`, e.g. a ciphertext
/// `q1.3.…` or a signature) into its key version and bytes; `what` names it in errors. Public
/// as the entry point of fuzz targets: it reads untrusted input before any key is used.
pub fn parse_token(
    what: &'static str,
    prefix: &str,
    token: &str,
) -> Result<(u32, Vec<u8>), CipherError> {
    let mut parts = token.splitn(3, '.');
    let (Some(tag), Some(version), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed(
            what,
            format!("expected {prefix}.<version>.<data>"),
        ));
    };
    if tag != prefix {
        return Err(malformed(
            what,
            format!("starts with {tag:?}, expected {prefix:?}"),
        ));
    }
    let version: u32 = version
        .parse()
        .map_err(|_| malformed(what, format!("version {version:?} is not a number")))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| malformed(what, format!("not base64url: {e}")))?;
    Ok((version, bytes))
}

impl Cipher {
    /// Loads stored `(version, wrapped key)` pairs.
    pub fn load(master: &MasterKey, stored: &[(u32, String)]) -> Result<Self, CipherError> {
        let mut keys = BTreeMap::new();
        for (version, wrapped) in stored {
            keys.insert(*version, DataKey::new(master.unwrap(*version, wrapped)?));
        }
        Ok(Self { keys })
    }

    /// Adds a new data key version, which becomes the current one. Returns the version and its
    /// wrapped form to store.
    pub fn rotate(&mut self, master: &MasterKey) -> (u32, String) {
        let version = self.current_version().map_or(1, |v| v + 1);
        let raw = random::<32>();
        self.keys.insert(version, DataKey::new(raw));
        (version, master.wrap(version, &raw))
    }

    /// The version that encrypts and signs, if any key exists.
    pub fn current_version(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    /// The versions held.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    fn current(&self) -> Result<(u32, &DataKey), CipherError> {
        self.keys
            .iter()
            .next_back()
            .map(|(v, k)| (*v, k))
            .ok_or(CipherError::NotConfigured)
    }

    fn key(&self, version: u32) -> Result<&DataKey, CipherError> {
        self.keys
            .get(&version)
            .ok_or(CipherError::UnknownVersion(version))
    }

    /// Encrypts `plaintext`, binding `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, CipherError> {
        let (version, key) = self.current()?;
        let nonce = random::<12>();
        let sealed = key
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| malformed("plaintext", "too long for AES-GCM"))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(format!("qc1.{version}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypts a `qc1` ciphertext with the same `aad` it was made with.
    pub fn decrypt(&self, ciphertext: &str, aad: &[u8]) -> Result<Vec<u8>, CipherError> {
        let (version, bytes) = parse_token("ciphertext", "qc1", ciphertext)?;
        let key = self.key(version)?;
        if bytes.len() < 12 + 16 {
            return Err(malformed("ciphertext", "shorter than a nonce and a tag"));
        }
        key.aead
            .decrypt(
                Nonce::from_slice(&bytes[..12]),
                Payload {
                    msg: &bytes[12..],
                    aad,
                },
            )
            .map_err(|_| CipherError::Tampered)
    }

    /// Re-encrypts a ciphertext under the current key (same `aad`), so old keys can be retired.
    pub fn rewrap(&self, ciphertext: &str, aad: &[u8]) -> Result<String, CipherError> {
        self.encrypt(&self.decrypt(ciphertext, aad)?, aad)
    }

    /// Signs `data` with HMAC-SHA256 under the current key.
    pub fn sign(&self, data: &[u8]) -> Result<String, CipherError> {
        let (version, key) = self.current()?;
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&key.mac).expect("HMAC takes any key length");
        mac.update(data);
        Ok(format!(
            "qh1.{version}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        ))
    }

    /// Whether `signature` is a valid signature of `data` (constant-time comparison).
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<bool, CipherError> {
        let (version, tag) = parse_token("signature", "qh1", signature)?;
        let key = self.key(version)?;
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&key.mac).expect("HMAC takes any key length");
        mac.update(data);
        let expected = mac.finalize().into_bytes();
        Ok(tag.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn master() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).expect("valid")
    }

    #[test]
    fn round_trip_rotation_rewrap_and_reload() {
        let m = master();
        let mut cipher = Cipher::default();
        assert_eq!(cipher.encrypt(b"x", b""), Err(CipherError::NotConfigured));
        let (v1, w1) = cipher.rotate(&m);
        let c1 = cipher.encrypt(b"card 4111", b"user:ada").expect("encrypt");
        assert!(c1.starts_with("qc1.1."), "{c1}");
        assert_eq!(
            cipher.decrypt(&c1, b"user:ada").expect("decrypt"),
            b"card 4111"
        );
        assert_eq!(
            cipher.decrypt(&c1, b"user:bob"),
            Err(CipherError::Tampered),
            "associated data is bound"
        );

        let (v2, w2) = cipher.rotate(&m);
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(
            cipher
                .decrypt(&c1, b"user:ada")
                .expect("old versions still decrypt"),
            b"card 4111"
        );
        let c2 = cipher.rewrap(&c1, b"user:ada").expect("rewrap");
        assert!(c2.starts_with("qc1.2."), "{c2}");

        let reloaded = Cipher::load(&m, &[(v1, w1.clone()), (v2, w2)]).expect("load");
        assert_eq!(
            reloaded.decrypt(&c2, b"user:ada").expect("decrypt"),
            b"card 4111"
        );
        let retired = Cipher::load(&m, &[(v1, w1)]).expect("load");
        assert_eq!(
            retired.decrypt(&c2, b"user:ada"),
            Err(CipherError::UnknownVersion(2))
        );
        assert!(
            matches!(
                Cipher::load(&master(), &[(1, cipher.rotate(&m).1)]),
                Err(CipherError::Malformed { .. })
            ),
            "another master key cannot open the store"
        );
    }

    #[test]
    fn tampering_and_malformed_input_are_named() {
        let m = master();
        let mut cipher = Cipher::default();
        cipher.rotate(&m);
        let c = cipher.encrypt(b"secret", b"").expect("encrypt");
        let mut bytes = URL_SAFE_NO_PAD
            .decode(c.rsplit('.').next().expect("body"))
            .expect("b64");
        bytes[20] ^= 1;
        let flipped = format!("qc1.1.{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(cipher.decrypt(&flipped, b""), Err(CipherError::Tampered));
        for bad in [
            "",
            "qc1",
            "qc2.1.AAAA",
            "qc1.x.AAAA",
            "qc1.1.!!!",
            "qc1.1.AAAA",
        ] {
            assert!(
                matches!(cipher.decrypt(bad, b""), Err(CipherError::Malformed { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            cipher.decrypt("qc1.9.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", b""),
            Err(CipherError::UnknownVersion(9))
        );
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_same_data() {
        let m = master();
        let mut cipher = Cipher::default();
        cipher.rotate(&m);
        let sig = cipher.sign(b"order 42 paid").expect("sign");
        assert!(sig.starts_with("qh1.1."));
        assert_eq!(cipher.verify(b"order 42 paid", &sig), Ok(true));
        assert_eq!(cipher.verify(b"order 43 paid", &sig), Ok(false));
        cipher.rotate(&m);
        assert_eq!(
            cipher.verify(b"order 42 paid", &sig),
            Ok(true),
            "older versions still verify"
        );
        assert!(cipher.sign(b"x").expect("sign").starts_with("qh1.2."));
        assert!(matches!(
            cipher.verify(b"x", "qc1.1.AAAA"),
            Err(CipherError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn decrypt_never_panics_on_arbitrary_input(input in "\\PC{0,80}") {
            let mut cipher = Cipher::default();
            cipher.rotate(&master());
            let _ = cipher.decrypt(&input, b"");
            let _ = cipher.verify(b"", &input);
        }

        #[test]
        fn every_plaintext_round_trips(plain in prop::collection::vec(any::<u8>(), 0..256), aad in prop::collection::vec(any::<u8>(), 0..32)) {
            let mut cipher = Cipher::default();
            cipher.rotate(&master());
            let sealed = cipher.encrypt(&plain, &aad).expect("encrypt");
            prop_assert_eq!(cipher.decrypt(&sealed, &aad).expect("decrypt"), plain);
        }
    }
}
