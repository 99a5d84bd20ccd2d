//! Password hashing and verification: argon2id by default, and the formats a Shiro
//! application stored, so its users log in unchanged and are moved to argon2id on success.
//!
//! | stored form | meaning |
//! |---|---|
//! | `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` | the current default (PHC string, base64 without padding) |
//! | `$shiro1$<digest>$<iterations>$<salt>$<hash>` | Shiro 1 `SimpleHash`: `H(salt ‖ password)`, then `H` again `iterations − 1` times; MD5, SHA-1, SHA-256, SHA-384, SHA-512; standard base64 |
//! | `$shiro2$argon2id$v=19$t=…,m=…,p=…$<salt>$<hash>` | Shiro 2 argon2 (also `argon2i`, `argon2d`; parameters in any order) |
//! | `$shiro2$2y$<cost>$…`, `$2a$`/`$2b$`/`$2y$…` | bcrypt |
//! | anything else | a clear-text password (INI realms); compared in constant time |
//!
//! Verification is constant-time in the secret, and a successful check against anything but
//! argon2id with the current parameters returns the new hash to store ([`Verified::rehash`]).
//! Cost parameters read from a stored hash are bounded, so an imported hash cannot make one
//! login cost gigabytes or minutes.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// Base64 that accepts input with or without padding, for formats written by other tools.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// Base64 without padding, as PHC strings write it.
const B64_NO_PAD: GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// Most iterations accepted from a `$shiro1$` hash (Shiro's documented example is 500 000).
pub const MAX_DIGEST_ITERATIONS: u32 = 5_000_000;
/// Most argon2 memory accepted from a stored hash, in KiB (256 MiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// Most argon2 passes accepted from a stored hash.
pub const MAX_ARGON2_PASSES: u32 = 64;

/// Argon2id cost settings for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HashSettings {
    /// Memory per hash, in KiB. OWASP's minimum for argon2id is 19456 (19 MiB).
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes computed in parallel.
    pub parallelism: u32,
}

impl Default for HashSettings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// Why a stored credential cannot be checked. A wrong password is not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The stored string looks like a hash format but is malformed.
    #[error("stored {format} hash is malformed: {reason}")]
    Malformed {
        /// Which format it claimed to be.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A digest or algorithm Shiro allows that is not supported here.
    #[error("stored hash uses unsupported algorithm {0:?}")]
    Unsupported(String),
    /// Cost parameters beyond the safety bounds.
    #[error("stored hash asks for {0}, beyond the accepted bound")]
    TooCostly(String),
    /// The hash settings themselves are invalid.
    #[error("argon2 settings: {0}")]
    Settings(String),
}

/// A successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The argon2id hash to store instead, when the stored form is outdated.
    pub rehash: Option<String>,
}

/// Hashes and verifies passwords.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    settings: HashSettings,
}

fn malformed(format: &'static str, reason: impl Into<String>) -> CredentialError {
    CredentialError::Malformed {
        format,
        reason: reason.into(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Argon2 parameters read from `m=…,t=…,p=…` in any order.
fn parse_argon2_params(
    format: &'static str,
    text: &str,
) -> Result<(u32, u32, u32), CredentialError> {
    let (mut m, mut t, mut p) = (None, None, None);
    for item in text.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| malformed(format, format!("parameter {item:?} is not key=value")))?;
        let value: u32 = value
            .parse()
            .map_err(|_| malformed(format, format!("parameter {key} is not a number")))?;
        match key {
            "m" => m = Some(value),
            "t" => t = Some(value),
            "p" => p = Some(value),
            other => return Err(malformed(format, format!("unknown parameter {other:?}"))),
        }
    }
    match (m, t, p) {
        (Some(m), Some(t), Some(p)) => Ok((m, t, p)),
        _ => Err(malformed(format, "needs m, t and p")),
    }
}

impl PasswordHasher {
    /// A hasher producing argon2id hashes with `settings`; fails when the settings are invalid.
    pub fn new(settings: HashSettings) -> Result<Self, CredentialError> {
        Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| CredentialError::Settings(e.to_string()))?;
        Ok(Self { settings })
    }

    /// The settings new hashes use.
    pub fn settings(&self) -> HashSettings {
        self.settings
    }

    /// Hashes `password` with a fresh 16-byte salt into a PHC argon2id string.
    pub fn hash(&self, password: &str) -> String {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).expect("the OS random source is available");
        let s = self.settings;
        let hash = argon2_raw(
            Algorithm::Argon2id,
            s.memory_kib,
            s.iterations,
            s.parallelism,
            password.as_bytes(),
            &salt,
            32,
        )
        .expect("settings were validated in new()");
        format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            s.memory_kib,
            s.iterations,
            s.parallelism,
            B64_NO_PAD.encode(salt),
            B64_NO_PAD.encode(hash)
        )
    }

    /// Checks `password` against `stored`. `Ok(None)` is a wrong password.
    pub fn verify(
        &self,
        stored: &str,
        password: &str,
    ) -> Result<Option<Verified>, CredentialError> {
        let ok = if let Some(rest) = stored.strip_prefix("$argon2") {
            let current = format!(
                "id$v=19$m={},t={},p={}$",
                self.settings.memory_kib, self.settings.iterations, self.settings.parallelism
            );
            let ok = verify_argon2("argon2", &format!("argon2{rest}"), password)?;
            return Ok(ok.then(|| Verified {
                rehash: (!rest.starts_with(&current)).then(|| self.hash(password)),
            }));
        } else if let Some(rest) = stored.strip_prefix("$shiro2$") {
            if rest.starts_with("argon2") {
                verify_argon2("shiro2 argon2", rest, password)?
            } else if rest.starts_with('2') {
                verify_bcrypt(&format!("${rest}"), password)?
            } else {
                return Err(CredentialError::Unsupported(
                    rest.split('$').next().unwrap_or_default().to_owned(),
                ));
            }
        } else if let Some(rest) = stored.strip_prefix("$shiro1$") {
            verify_shiro1(rest, password)?
        } else if stored.starts_with("$2a$")
            || stored.starts_with("$2b$")
            || stored.starts_with("$2y$")
        {
            verify_bcrypt(stored, password)?
        } else {
            constant_time_eq(stored.as_bytes(), password.as_bytes())
        };
        Ok(ok.then(|| Verified {
            rehash: Some(self.hash(password)),
        }))
    }
}

fn argon2_raw(
    alg: Algorithm,
    m: u32,
    t: u32,
    p: u32,
    password: &[u8],
    salt: &[u8],
    len: usize,
) -> Result<Vec<u8>, CredentialError> {
    let params = Params::new(m, t, p, Some(len)).map_err(|e| malformed("argon2", e.to_string()))?;
    let mut out = vec![0u8; len];
    Argon2::new(alg, Version::V0x13, params)
        .hash_password_into(password, salt, &mut out)
        .map_err(|e| malformed("argon2", e.to_string()))?;
    Ok(out)
}

/// Verifies `argon2<variant>$v=19$<params>$<salt>$<hash>` (the part after the leading `$`).
fn verify_argon2(
    format: &'static str,
    text: &str,
    password: &str,
) -> Result<bool, CredentialError> {
    let fields: Vec<&str> = text.split('$').collect();
    let [variant, version, params, salt, hash] = fields.as_slice() else {
        return Err(malformed(
            format,
            "expected <variant>$v=19$<params>$<salt>$<hash>",
        ));
    };
    let alg = match *variant {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        other => return Err(CredentialError::Unsupported(other.to_owned())),
    };
    if *version != "v=19" {
        return Err(malformed(
            format,
            format!("version {version:?} (only v=19 is defined)"),
        ));
    }
    let (m, t, p) = parse_argon2_params(format, params)?;
    if m > MAX_ARGON2_MEMORY_KIB {
        return Err(CredentialError::TooCostly(format!("{m} KiB of memory")));
    }
    if t > MAX_ARGON2_PASSES {
        return Err(CredentialError::TooCostly(format!("{t} passes")));
    }
    let salt = B64_LENIENT
        .decode(salt)
        .map_err(|e| malformed(format, format!("salt: {e}")))?;
    let expected = B64_LENIENT
        .decode(hash)
        .map_err(|e| malformed(format, format!("hash: {e}")))?;
    if expected.len() < 4 {
        return Err(malformed(format, "hash is shorter than 4 bytes"));
    }
    let actual = argon2_raw(alg, m, t, p, password.as_bytes(), &salt, expected.len())?;
    Ok(constant_time_eq(&actual, &expected))
}

fn verify_bcrypt(stored: &str, password: &str) -> Result<bool, CredentialError> {
    let cost: u32 = stored
        .split('$')
        .nth(2)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| malformed("bcrypt", "no cost field"))?;
    if !(4..=31).contains(&cost) {
        return Err(malformed("bcrypt", format!("cost {cost} outside 4..=31")));
    }
    if cost > 16 {
        return Err(CredentialError::TooCostly(format!("bcrypt cost {cost}")));
    }
    bcrypt::verify(password, stored).map_err(|e| malformed("bcrypt", e.to_string()))
}

/// Shiro 1's iterated digest: `H(salt ‖ password)`, then `H(previous)` `iterations − 1` times.
pub fn shiro1_digest<D: Digest>(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut hasher = D::new();
    hasher.update(salt);
    hasher.update(password);
    let mut out = hasher.finalize().to_vec();
    for _ in 1..iterations {
        out = D::digest(&out).to_vec();
    }
    out
}

fn verify_shiro1(text: &str, password: &str) -> Result<bool, CredentialError> {
    let fields: Vec<&str> = text.split('$').collect();
    let [alg, iterations, salt, hash] = fields.as_slice() else {
        return Err(malformed(
            "shiro1",
            "expected <algorithm>$<iterations>$<salt>$<hash>",
        ));
    };
    let iterations: u32 = iterations.parse().map_err(|_| {
        malformed(
            "shiro1",
            format!("iterations {iterations:?} is not a number"),
        )
    })?;
    if iterations == 0 {
        return Err(malformed("shiro1", "iterations must be at least 1"));
    }
    if iterations > MAX_DIGEST_ITERATIONS {
        return Err(CredentialError::TooCostly(format!(
            "{iterations} digest iterations"
        )));
    }
    let salt = B64_LENIENT
        .decode(salt)
        .map_err(|e| malformed("shiro1", format!("salt: {e}")))?;
    let expected = B64_LENIENT
        .decode(hash)
        .map_err(|e| malformed("shiro1", format!("hash: {e}")))?;
    let p = password.as_bytes();
    let actual = match alg.to_ascii_uppercase().as_str() {
        "MD5" => shiro1_digest::<md5::Md5>(p, &salt, iterations),
        "SHA-1" | "SHA1" => shiro1_digest::<sha1::Sha1>(p, &salt, iterations),
        "SHA-256" => shiro1_digest::<sha2::Sha256>(p, &salt, iterations),
        "SHA-384" => shiro1_digest::<sha2::Sha384>(p, &salt, iterations),
        "SHA-512" => shiro1_digest::<sha2::Sha512>(p, &salt, iterations),
        _ => return Err(CredentialError::Unsupported((*alg).to_owned())),
    };
    Ok(constant_time_eq(&actual, &expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(HashSettings {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .expect("valid")
    }

    #[test]
    fn argon2id_round_trip_without_rehash_at_current_settings() {
        let h = cheap();
        let stored = h.hash("correct horse");
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert_eq!(
            h.verify(&stored, "correct horse"),
            Ok(Some(Verified { rehash: None }))
        );
        assert_eq!(h.verify(&stored, "wrong"), Ok(None));
        assert_ne!(h.hash("correct horse"), stored, "salts differ");
    }

    #[test]
    fn argon2id_at_old_settings_is_rehashed() {
        let old = PasswordHasher::new(HashSettings {
            memory_kib: 32,
            iterations: 1,
            parallelism: 1,
        })
        .expect("valid");
        let stored = old.hash("pw");
        let verified = cheap()
            .verify(&stored, "pw")
            .expect("checkable")
            .expect("valid");
        assert!(
            verified
                .rehash
                .expect("rehash")
                .starts_with("$argon2id$v=19$m=64,t=1,p=1$")
        );
    }

    #[test]
    fn shiro2_argon2_parameters_in_any_order() {
        let salt = b"0123456789abcdef";
        let raw = argon2_raw(Algorithm::Argon2id, 64, 2, 1, b"pw", salt, 32).expect("hash");
        let stored = format!(
            "$shiro2$argon2id$v=19$t=2,m=64,p=1${}${}",
            B64_NO_PAD.encode(salt),
            B64_NO_PAD.encode(raw)
        );
        let verified = cheap()
            .verify(&stored, "pw")
            .expect("checkable")
            .expect("valid");
        assert!(verified.rehash.is_some());
        assert_eq!(cheap().verify(&stored, "pW"), Ok(None));
    }

    #[test]
    fn clear_text_credentials_compare_exactly_and_are_rehashed() {
        assert!(
            cheap()
                .verify("secret", "secret")
                .expect("ok")
                .expect("valid")
                .rehash
                .is_some()
        );
        assert_eq!(cheap().verify("secret", "secret "), Ok(None));
    }

    #[test]
    fn malformed_and_costly_hashes_are_named() {
        let h = cheap();
        assert!(matches!(
            h.verify("$shiro1$SHA-256$x$c2FsdA==$aGFzaA==", "p"),
            Err(CredentialError::Malformed {
                format: "shiro1",
                ..
            })
        ));
        assert_eq!(
            h.verify("$shiro1$WHIRLPOOL$1$$aGFzaA==", "p"),
            Err(CredentialError::Unsupported("WHIRLPOOL".into()))
        );
        assert!(matches!(
            h.verify("$shiro1$SHA-256$99999999$$aGFzaA==", "p"),
            Err(CredentialError::TooCostly(_))
        ));
        assert!(matches!(
            h.verify(
                "$argon2id$v=19$m=9999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                "p"
            ),
            Err(CredentialError::TooCostly(_))
        ));
        assert!(matches!(
            h.verify("$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g", "p"),
            Err(CredentialError::Malformed { .. })
        ));
        assert!(matches!(
            h.verify("$argon2id$v=19$m=64,t=1$c2FsdHNhbHQ$aGFzaGhhc2g", "p"),
            Err(CredentialError::Malformed { .. })
        ));
        assert_eq!(
            h.verify("$shiro2$scrypt$x", "p"),
            Err(CredentialError::Unsupported("scrypt".into()))
        );
        assert!(
            PasswordHasher::new(HashSettings {
                memory_kib: 1,
                iterations: 0,
                parallelism: 1
            })
            .is_err()
        );
    }
}
