//! Differential tests against the real Apache Shiro (Debian's libshiro-java, run with the JDK):
//! thousands of generated permission pairs must get the same verdict (or the same refusal)
//! from Shiro's `WildcardPermission` and ours, and a password hashed by Shiro's own
//! `DefaultPasswordService` must log in here.
//!
//! The pairs come from a seeded generator; a failure prints the seed, and
//! `QUARTET_SHIRO_SEED=<seed> cargo test -p quartet-auth --test shiro_peer` replays it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use quartet_auth::credentials::{HashSettings, PasswordHasher};
use quartet_auth::permission::Permission;

const JARS: [&str; 3] = [
    "/usr/share/java/shiro-core.jar",
    "/usr/share/java/commons-beanutils.jar",
    "/usr/share/java/slf4j-api.jar",
];

/// Compiles the peer once per source change into /var/tmp/quartet/java; returns the classpath.
fn peer_classpath() -> String {
    for jar in JARS {
        assert!(
            PathBuf::from(jar).exists(),
            "{jar} is missing: install Debian's libshiro-java (scripts/setup.sh does)"
        );
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e/java/ShiroPeer.java");
    let out = PathBuf::from("/var/tmp/quartet/java");
    let class = out.join("ShiroPeer.class");
    let stale = match (
        std::fs::metadata(&class).and_then(|m| m.modified()),
        std::fs::metadata(&source).and_then(|m| m.modified()),
    ) {
        (Ok(built), Ok(edited)) => built < edited,
        _ => true,
    };
    let jars = JARS.join(":");
    if stale {
        std::fs::create_dir_all(&out).expect("class directory");
        let status = Command::new("javac")
            .arg("-d")
            .arg(&out)
            .arg("-cp")
            .arg(&jars)
            .arg(&source)
            .status()
            .expect("javac runs");
        assert!(status.success(), "javac failed");
    }
    format!("{}:{jars}", out.display())
}

fn shiro(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(peer_classpath())
        .arg("ShiroPeer")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("java runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("java finishes");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8")
}

/// xorshift64*: small, seeded, good enough to spread test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Permission-like strings: mostly well-formed, with the edge cases Shiro's parser has opinions on.
fn permission(rng: &mut Rng) -> String {
    let subs = ["a", "b", "*", "A", "ab", "", " a", "x*"];
    let parts = 1 + rng.next() % 4;
    let mut text = String::new();
    for p in 0..parts {
        if p > 0 {
            text.push(':');
        }
        let n = 1 + rng.next() % 3;
        for s in 0..n {
            if s > 0 {
                text.push(',');
            }
            text.push_str(rng.pick(&subs));
        }
    }
    match rng.next() % 10 {
        0 => text.push(':'),
        1 => text.insert(0, ':'),
        2 => text.push(','),
        3 => text = format!("  {text} "),
        _ => {}
    }
    text
}

#[test]
fn thousands_of_permission_pairs_get_shiros_verdicts() {
    let seed: u64 = std::env::var("QUARTET_SHIRO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    let pairs: Vec<(String, String)> = (0..4000)
        .map(|_| (permission(&mut rng), permission(&mut rng)))
        .collect();
    let input: String = pairs.iter().map(|(h, r)| format!("{h}\t{r}\n")).collect();
    let verdicts: Vec<String> = shiro(&["implies"], &input)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts.len(), pairs.len());
    let mut mismatches = Vec::new();
    for ((held, requested), theirs) in pairs.iter().zip(&verdicts) {
        let ours = match (Permission::parse(held), Permission::parse(requested)) {
            (Ok(h), Ok(r)) => h.implies(&r).to_string(),
            _ => "error".to_owned(),
        };
        let theirs = if theirs.starts_with("error:") {
            "error"
        } else {
            theirs.as_str()
        };
        if ours != theirs {
            mismatches.push(format!(
                "{held:?} implies {requested:?}: shiro {theirs}, ours {ours}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} pairs differ from Shiro (seed {seed}; rerun with QUARTET_SHIRO_SEED={seed}):\n{}",
        mismatches.len(),
        pairs.len(),
        mismatches
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_password_hashed_by_shiro_itself_verifies_and_migrates() {
    let stored = shiro(&["hash", "Tr0ub4dor&3", "1024"], "")
        .trim()
        .to_owned();
    assert!(stored.starts_with("$shiro1$SHA-256$1024$"), "{stored}");
    let hasher = PasswordHasher::new(HashSettings {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    })
    .expect("valid");
    let verified = hasher
        .verify(&stored, "Tr0ub4dor&3")
        .expect("checkable")
        .expect("Shiro's hash must verify");
    assert!(verified.rehash.is_some_and(|h| h.starts_with("$argon2id$")));
    assert_eq!(
        hasher.verify(&stored, "tr0ub4dor&3").expect("checkable"),
        None
    );
}
