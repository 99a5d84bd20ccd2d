//! Hashes made outside this code base, by their algorithms' definitions, log in: Shiro 1's
//! iterated salted digest computed with Python's hashlib, and bcrypt from the system's libcrypt
//! through Python's `crypt` module. A successful login hands back an argon2id rehash.

use quartet_auth::credentials::{HashSettings, PasswordHasher};

/// Runs a Python snippet that prints one line: the stored hash.
fn python(script: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn hasher() -> PasswordHasher {
    PasswordHasher::new(HashSettings {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    })
    .expect("valid settings")
}

/// Shiro's `SimpleHash`: digest(salt + password), then digest(previous) for each further iteration;
/// formatted by `Shiro1CryptFormat` with standard base64.
const SHIRO1: &str = r#"
import base64, hashlib, os, sys
alg, py, iterations, password = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
salt = os.urandom(16)
digest = hashlib.new(py, salt + password).digest()
for _ in range(iterations - 1):
    digest = hashlib.new(py, digest).digest()
print("$shiro1$%s$%d$%s$%s" % (alg, iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))
"#;

fn shiro1(alg: &str, py: &str, iterations: u32, password: &str) -> String {
    let script = format!(
        "import sys; sys.argv = ['x', {alg:?}, {py:?}, '{iterations}', {password:?}]\n{SHIRO1}"
    );
    python(&script)
}

#[test]
fn shiro1_hashes_from_hashlib_verify_and_migrate_to_argon2id() {
    let h = hasher();
    for (alg, py, iterations) in [
        ("SHA-256", "sha256", 500_000),
        ("SHA-512", "sha512", 1024),
        ("SHA-1", "sha1", 1),
        ("MD5", "md5", 3),
    ] {
        let stored = shiro1(alg, py, iterations, "Tr0ub4dor&3");
        let verified = h
            .verify(&stored, "Tr0ub4dor&3")
            .expect("checkable")
            .unwrap_or_else(|| panic!("{stored} should verify"));
        let rehash = verified.rehash.expect("migrates");
        assert!(rehash.starts_with("$argon2id$"), "{rehash}");
        assert_eq!(
            h.verify(&rehash, "Tr0ub4dor&3")
                .expect("checkable")
                .map(|v| v.rehash),
            Some(None)
        );
        assert_eq!(
            h.verify(&stored, "tr0ub4dor&3").expect("checkable"),
            None,
            "{alg}: wrong password must fail"
        );
    }
}

#[test]
fn bcrypt_hashes_from_libcrypt_verify_bare_and_in_shiro2_form() {
    let stored = python(
        "import crypt; print(crypt.crypt('hunter2', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5)))",
    );
    assert!(stored.starts_with("$2"), "{stored}");
    let h = hasher();
    assert!(
        h.verify(&stored, "hunter2")
            .expect("checkable")
            .expect("valid")
            .rehash
            .is_some()
    );
    assert_eq!(h.verify(&stored, "hunter3").expect("checkable"), None);
    let shiro2 = format!("$shiro2${}", stored.trim_start_matches('$'));
    assert!(
        h.verify(&shiro2, "hunter2").expect("checkable").is_some(),
        "{shiro2}"
    );
}
