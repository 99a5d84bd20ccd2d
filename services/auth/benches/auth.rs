//! quartet-auth's throughput figures, for `make bench` (scripts/bench.sh runs the peers on
//! the same workloads and reports ratios). Not a test: it asserts nothing.
//!
//! usage: cargo bench -p quartet-auth --bench auth -- <seconds per figure> <output dir>
//! Prints `name value` lines; writes the token and the JWKS it verified to the output dir so the
//! PyJWT peer verifies the very same token.

#![allow(clippy::print_stdout)] // printing the figures is this program's job

use std::time::{Duration, Instant};

use quartet_auth::credentials::{HashSettings, PasswordHasher};
use quartet_auth::keys::KeyRing;
use quartet_auth::permission::{Permission, PermissionSet};
use quartet_auth::service::{Auth, LockoutSettings, TokenSettings};
use quartet_auth::store::Store;
use quartet_kit::token::{Claims, Verifier};

/// The same workload as ShiroPeer.java's `bench`: 51 held permissions, 8 requests in turn.
fn permission_workload() -> (PermissionSet, Vec<&'static str>) {
    let mut held: Vec<Permission> = (0..50)
        .map(|i| Permission::parse(&format!("service{i}:read,write:instance{i}")).expect("valid"))
        .collect();
    held.push(Permission::parse("reports:*:q3").expect("valid"));
    let requested = vec![
        "service7:write:instance7",
        "service49:read:instance49",
        "reports:export:q3",
        "reports:export:q4",
        "unknown:read",
        "service3:delete:instance3",
        "service0:read",
        "service12:write:instance13",
    ];
    (PermissionSet::new(held), requested)
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let seconds: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let out_dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/quartet/bench".into()),
    );
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let budget = Duration::from_secs_f64(seconds);

    // Permission checks: parse the requested string, scan the held set (what a realm does).
    let (held, requested) = permission_workload();
    let (mut checks, mut permitted) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget {
        for round in 0..1000 {
            if held
                .permits_str(requested[round % requested.len()])
                .expect("valid")
            {
                permitted += 1;
            }
            checks += 1;
        }
    }
    println!(
        "permission_checks_per_sec {:.0}",
        rate(checks, start.elapsed())
    );
    println!("permission_checks_permitted {permitted}");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Local token verification against the JWKS (signature, issuer, audience, expiry).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let ring = KeyRing::new(vec![], 86_400, 3_600, now);
    let claims = Claims {
        iss: "http://127.0.0.1:7111".into(),
        sub: "ada".into(),
        aud: "quartet".into(),
        exp: now + 3600,
        iat: now,
        nbf: now,
        jti: "bench".into(),
        client_id: "bench".into(),
        scope: String::new(),
        roles: vec!["ops".into()],
        perms: vec!["task:submit:*".into()],
    };
    let token = ring.current().sign(&claims).expect("signs");
    std::fs::write(out_dir.join("token.jwt"), &token).expect("write token");
    std::fs::write(
        out_dir.join("jwks.json"),
        serde_json::to_string(&ring.jwks()).expect("json"),
    )
    .expect("write jwks");
    let verifier = Verifier::from_jwks(&ring.jwks(), &claims.iss, &claims.aud);
    let verified = runtime.block_on(async {
        let mut n = 0u64;
        let start = Instant::now();
        while start.elapsed() < budget {
            for _ in 0..100 {
                verifier.verify(&token).await.expect("valid");
                n += 1;
            }
        }
        rate(n, start.elapsed())
    });
    println!("token_verifications_per_sec {verified:.0}");

    // Logins at the default argon2id cost, through the whole path: store lookup, lockout,
    // hash, audit record.
    let settings = HashSettings::default();
    println!("argon2_memory_kib {}", settings.memory_kib);
    println!("argon2_iterations {}", settings.iterations);
    println!("argon2_parallelism {}", settings.parallelism);
    let db = out_dir.join("bench-auth.db");
    let _ = std::fs::remove_file(&db);
    let logins = runtime.block_on(async {
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", db.display()), 4)
            .await
            .expect("store");
        let hasher = PasswordHasher::new(settings).expect("settings");
        let stored = hasher.hash("correct horse battery");
        std::fs::write(out_dir.join("argon2.hash"), &stored).expect("write hash");
        store.create_user("ada", &stored, 0).await.expect("user");
        let auth = Auth::open(
            store,
            hasher,
            TokenSettings::default(),
            LockoutSettings::default(),
        )
        .await
        .expect("auth");
        let mut n = 0u64;
        let start = Instant::now();
        while start.elapsed() < budget {
            auth.login("ada", "correct horse battery", "bench", "127.0.0.1")
                .await
                .expect("login");
            n += 1;
        }
        rate(n, start.elapsed())
    });
    println!("logins_per_sec {logins:.1}");
}
