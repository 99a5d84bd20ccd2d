//! What each fuzz target does with its input: one function per target, each feeding bytes to
//! one decoder of untrusted input and checking what must hold whatever the bytes. A panic, a
//! failed check, a stack overflow, a hang past libFuzzer's `-timeout` or memory past its
//! `-rss_limit_mb` is a finding. The binaries under `fuzz_targets/` only hand the input over.
//!
//! The targets run on libFuzzer's main thread (8 MiB of stack); the services' runtime threads
//! have 16 MiB, so a decoder that fits here fits there.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The input as text, when it is UTF-8 (the decoders of text take `&str`; the services turn
/// bytes into text before calling them).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Targets of the MySQL front (`quartet_db::wire`).
pub mod mysql {
    use quartet_db::wire::{self, Conn, Reader, WireError};

    /// The client's answer to the greeting (`HandshakeResponse41`), the password checks that
    /// take the scramble it carries, and the same bytes through [`reader`].
    pub fn handshake(data: &[u8]) {
        reader(data);
        if let Ok(response) = wire::parse_handshake_response(data) {
            let scramble = [7u8; 20];
            let _ = wire::check_native_password(b"secret", &scramble, &response.auth_response);
            let _ =
                wire::check_caching_sha2_password(b"secret", &scramble, &response.auth_response);
        }
    }

    /// The packet reader over a stream of the input's bytes, and the command packets the
    /// front reads (`COM_STMT_EXECUTE`'s parameters above all), as `front.rs` reads them.
    ///
    /// The first byte chooses the packet limit (`1 << (b % 24)` bytes), how many parameters
    /// the prepared statement has (`b >> 3`), and whether the sequence restarts before each
    /// packet, as it does before each command.
    pub fn packets(data: &[u8]) {
        let Some((&setup, stream)) = data.split_first() else {
            return;
        };
        let limit = 1usize << (setup % 24);
        let params = usize::from(setup >> 3);
        let restart = setup & 0x80 != 0;
        let mut conn = Conn::new(tokio::io::join(stream, tokio::io::sink()));
        conn.set_packet_limit(limit);
        let mut types = Vec::new();
        futures::executor::block_on(async {
            loop {
                if restart {
                    conn.reset_sequence();
                }
                let packet = match conn.read().await {
                    Ok(packet) => packet,
                    Err(WireError::TooLarge { limit: refused }) => {
                        assert_eq!(refused, limit, "a packet refused at another limit");
                        return;
                    }
                    Err(_) => return,
                };
                assert!(
                    packet.len() <= limit,
                    "a packet past the limit was accepted"
                );
                if command(&packet, params, &mut types).is_err() {
                    return;
                }
            }
        });
    }

    /// One command packet, read as the front reads it; the reply is not made.
    fn command(packet: &[u8], params: usize, types: &mut Vec<(u8, bool)>) -> Result<(), WireError> {
        let mut r = Reader::new(packet);
        match r.u8()? {
            0x02 | 0x03 | 0x16 => drop(String::from_utf8_lossy(r.rest())),
            0x17 => {
                let _statement = r.u32()?;
                r.skip(1 + 4)?;
                let values = wire::decode_params(&mut r, params, types)?;
                assert_eq!(values.len(), params, "parameters decoded in another number");
                let kinds = vec![wire::ColumnType::VarString; values.len()];
                drop(wire::text_row(&values));
                drop(wire::binary_row(&values, &kinds));
            }
            0x19 => drop(r.u32()?),
            0x1B => drop(r.u16()?),
            _ => {}
        }
        Ok(())
    }

    /// The length-encoded integers and strings a reader meets, in whatever order the input
    /// asks for: every read either answers or says the packet is too short.
    pub fn reader(data: &[u8]) {
        let mut r = Reader::new(data);
        while let Ok(op) = r.u8() {
            let read = match op % 7 {
                0 => r.u16().map(drop),
                1 => r.u32().map(drop),
                2 => r.lenenc_int().map(drop),
                3 => r.nul_str().map(drop),
                4 => r.lenenc_int().and_then(|n| r.bytes(n as usize).map(drop)),
                5 => r.u8().and_then(|n| r.skip(usize::from(n))),
                _ => r.u8().and_then(|n| r.bytes(usize::from(n)).map(drop)),
            };
            if read.is_err() {
                return;
            }
        }
        assert!(r.is_empty());
    }
}

/// Targets of the SQL path (`quartet_db::dialect` and `quartet_db::engine`).
pub mod sql {
    use super::*;
    use quartet_db::dialect::{self, Context, Plan};
    use quartet_db::engine::Engine;

    /// How long the SQL a statement turns into may run before SQLite is interrupted; the
    /// server's own bound is `max_execution_time`.
    const STATEMENT_TIME: Duration = Duration::from_millis(250);

    /// The most memory SQLite may hold (`PRAGMA hard_heap_limit`), so that `zeroblob(1e9)`
    /// and friends fail rather than taking the fuzzer past its memory limit.
    const SQLITE_HEAP: i64 = 256 << 20;

    /// The database statements run in.
    pub const DATABASE: &str = "fuzz";

    fn context() -> Context {
        Context {
            database: Some(DATABASE.into()),
            last_insert_id: 7,
            variables: vec![
                ("version".into(), "8.0.36-quartet".into()),
                ("sql_mode".into(), "STRICT_TRANS_TABLES".into()),
                ("max_allowed_packet".into(), "67108864".into()),
            ],
        }
    }

    /// Translation of any text: an answer or a MySQL error, never a panic or a stack
    /// overflow, whatever the nesting (the translator refuses more than `MAX_NESTING`).
    pub fn translate(data: &[u8]) {
        let Some(sql) = text(data) else { return };
        if let Ok(plans) = dialect::translate(sql, &context()) {
            assert!(!plans.is_empty(), "a statement translated into nothing");
            for plan in plans {
                if let Plan::Sqlite { statements, .. } = plan {
                    assert!(!statements.is_empty(), "SQL of no statement");
                }
            }
        }
    }

    /// Translation, then the SQLite statements run on a fresh in-memory engine with the
    /// catalog views, each under a time budget and SQLite's heap under a bound. The
    /// translated SQL must never reach a file: an `ATTACH` is a finding.
    pub fn execute(data: &[u8]) {
        let Some(sql) = text(data) else { return };
        let Ok(plans) = dialect::translate(sql, &context()) else {
            return;
        };
        let mut engine = engine();
        for plan in plans {
            let Plan::Sqlite {
                statements,
                read_only,
            } = plan
            else {
                continue;
            };
            arm(&engine);
            if read_only {
                for statement in &statements {
                    let _ = engine.query(statement);
                }
            } else {
                let _ = engine.write(&statements);
            }
        }
    }

    /// A fresh engine, as a replica's: in memory, with the catalog views.
    fn engine() -> Engine {
        let engine = Engine::in_memory()
            .and_then(|e| e.with_catalog(DATABASE))
            .expect("an in-memory engine opens");
        let conn = engine.connection();
        conn.pragma_update(None, "hard_heap_limit", SQLITE_HEAP)
            .expect("hard_heap_limit is a known pragma");
        conn.authorizer(Some(|context: rusqlite::hooks::AuthContext<'_>| {
            if let rusqlite::hooks::AuthAction::Attach { filename } = context.action {
                panic!("translated SQL attached the file {filename:?}");
            }
            rusqlite::hooks::Authorization::Allow
        }))
        .expect("the connection is ours");
        engine
    }

    /// Starts the time budget of one statement.
    fn arm(engine: &Engine) {
        let started = Instant::now();
        engine
            .connection()
            .progress_handler(1000, Some(move || started.elapsed() > STATEMENT_TIME))
            .expect("the connection is ours");
    }
}

/// zerorpc events (`quartet_rpc_gateway::zerorpc::event`): the first thing the gateway reads
/// from any peer, before a token is checked.
pub mod zerorpc {
    use quartet_rpc_gateway::zerorpc::event::Event;

    /// Decoding answers or names the fault; what decodes encodes to bytes that decode to an
    /// event encoding to the same bytes.
    pub fn event(data: &[u8]) {
        let Ok(event) = Event::decode(data) else {
            return;
        };
        let bytes = event.encode();
        let again = Event::decode(&bytes)
            .unwrap_or_else(|e| panic!("an event that decoded does not decode re-encoded: {e}"));
        assert_eq!(again.encode(), bytes, "re-encoding changed the event");
    }
}

/// Celery messages (`quartet_task_gateway::celery`): list elements popped from Redis, written
/// by any client of the broker.
pub mod celery {
    use quartet_task_gateway::celery::{self, TaskMessage};

    /// A popped element decodes or says why not; what decodes encodes to a message that
    /// decodes to the same encoding; the argument checks answer on any text.
    pub fn message(data: &[u8]) {
        if let Some(text) = super::text(data) {
            json(text);
        }
        let Ok(message) = TaskMessage::decode(data) else {
            return;
        };
        let encoded = message.encode();
        let again = TaskMessage::decode(encoded.as_bytes())
            .unwrap_or_else(|e| panic!("a message that decoded does not decode re-encoded: {e}"));
        assert_eq!(again.encode(), encoded, "re-encoding changed the message");
        json(message.args.text());
        json(message.kwargs.text());
        drop(message.signature());
        drop(message.list());
    }

    /// The checks run on task arguments and results before a worker reads them.
    fn json(text: &str) {
        let checked = celery::check_json(text);
        if let Ok(value) = celery::read_value(text) {
            assert!(checked.is_ok(), "read_value took what check_json refused");
            assert!(
                serde_json_depth(&value) <= celery::MAX_JSON_DEPTH,
                "a value nesting past MAX_JSON_DEPTH was read"
            );
        }
    }

    fn serde_json_depth(value: &serde_json::Value) -> usize {
        let mut deepest = 0;
        let mut pending = vec![(value, 0usize)];
        while let Some((value, above)) = pending.pop() {
            let children: Vec<&serde_json::Value> = match value {
                serde_json::Value::Array(items) => items.iter().collect(),
                serde_json::Value::Object(map) => map.values().collect(),
                _ => continue,
            };
            deepest = deepest.max(above + 1);
            pending.extend(children.into_iter().map(|c| (c, above + 1)));
        }
        deepest
    }
}

/// Shiro wildcard permissions (`quartet_kit::permission`), parsed from grants, tokens and
/// INI files.
pub mod permission {
    use quartet_kit::permission::Permission;

    /// Up to three permissions, one a line. Parsing never panics, and what Shiro's
    /// `WildcardPermission` guarantees holds: a permission implies itself, `*` implies every
    /// permission, a permission implies itself with more parts, and implication is
    /// transitive.
    pub fn implies(data: &[u8]) {
        let Some(text) = super::text(data) else {
            return;
        };
        let everything = Permission::parse("*").expect("* parses");
        let mut parsed = Vec::new();
        for line in text.splitn(3, '\n') {
            let case_sensitive = Permission::parse_case_sensitive(line);
            let Ok(p) = Permission::parse(line) else {
                assert!(
                    case_sensitive.is_err(),
                    "case decides whether {line:?} parses"
                );
                continue;
            };
            assert!(
                case_sensitive.is_ok(),
                "case decides whether {line:?} parses"
            );
            assert!(p.implies(&p), "{line:?} does not imply itself");
            assert!(everything.implies(&p), "* does not imply {line:?}");
            // The same text with parts added (not `p`'s display: parsing trims the whole
            // text but not each sub-part, so a display that sorts ` b` first reads back as
            // `b`, another permission, as in Shiro).
            let longer = format!("{}:x,y:z", line.trim());
            let longer = Permission::parse(&longer)
                .unwrap_or_else(|e| panic!("{longer:?} does not parse: {e}"));
            assert!(p.implies(&longer), "{line:?} does not imply {longer}");
            parsed.push(p);
        }
        if let [a, b, c] = parsed.as_slice() {
            for (x, y, z) in [(a, b, c), (c, b, a), (b, a, c), (a, c, b)] {
                if x.implies(y) && y.implies(z) {
                    assert!(x.implies(z), "{x} implies {y} implies {z}, but not {x} {z}");
                }
            }
        }
    }
}

/// The INI realm file (`quartet_auth::ini`), read at start from an operator's file.
pub mod ini {
    use quartet_auth::ini::IniRealm;

    /// Parsing answers a realm or every problem, each with a line inside the file.
    pub fn realm(data: &[u8]) {
        let Some(text) = super::text(data) else {
            return;
        };
        match IniRealm::parse(text) {
            Ok(realm) => {
                for user in realm.users.keys() {
                    drop(realm.permissions_of(user));
                }
            }
            Err(errors) => assert!(!errors.is_empty(), "refused without a reason"),
        }
    }
}

/// Access tokens (`quartet_kit::token::Verifier`), which every gateway reads from the
/// `Authorization` header of any caller.
pub mod jwt {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use p256::pkcs8::EncodePrivateKey;
    use quartet_auth::keys::SigningKey;
    use quartet_kit::token::{self, Verifier};

    /// The issuer and audience the verifier expects.
    pub const ISSUER: &str = "https://auth.fuzz";
    /// See [`ISSUER`].
    pub const AUDIENCE: &str = "quartet";

    struct Fixture {
        key: SigningKey,
        encoding: EncodingKey,
        verifier: Verifier,
    }

    /// A fixed key (so that a crash replays), its JWKS, a verifier of that set.
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid scalar");
            let der = secret.to_pkcs8_der().expect("PKCS#8 encodes");
            let key = SigningKey::from_pkcs8(der.as_bytes(), 0).expect("the fixed key loads");
            let encoding = EncodingKey::from_ec_der(der.as_bytes());
            let set = JwkSet {
                keys: vec![key.jwk().clone()],
            };
            let verifier = Verifier::from_jwks(&set, ISSUER, AUDIENCE);
            Fixture {
                key,
                encoding,
                verifier,
            }
        })
    }

    /// Input starting with `{` is a token's claims, signed here with the fixed key (what only
    /// the auth service can make: the claims' checks); anything else is an
    /// `Authorization` header value as a caller sends it. Verification answers, never panics.
    pub fn verify(data: &[u8]) {
        let fixture = fixture();
        let token = if data.first() == Some(&b'{') {
            let header = format!(
                r#"{{"alg":"ES256","kid":"{}","typ":"at+jwt"}}"#,
                fixture.key.kid
            );
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(data)
            );
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &fixture.encoding, Algorithm::ES256)
                    .expect("signing with the fixed key works");
            format!("{message}.{signature}")
        } else {
            let Some(header) = text(data) else { return };
            match token::bearer_token(header) {
                Some(token) => token.to_owned(),
                None => header.to_owned(),
            }
        };
        if let Ok(claims) = futures::executor::block_on(fixture.verifier.verify(&token)) {
            assert_eq!(claims.iss, ISSUER, "a token of another issuer verified");
            drop(claims.permissions());
        }
    }
}

/// Service configuration (`quartet_kit::config::Loader`): TOML files written by operators,
/// charts and the operator.
pub mod config {
    use std::io::Write as _;

    use quartet_kit::config::Loader;

    /// The first byte chooses the service (auth, task gateway, RPC gateway, database); the
    /// rest is its configuration file. Loading answers a configuration or the problems.
    pub fn load(data: &[u8]) {
        let Some((&service, toml)) = data.split_first() else {
            return;
        };
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(toml).expect("the file is written");
        let path = file.path().display().to_string();
        match service % 4 {
            0 => run::<quartet_auth::Config>(quartet_auth::SERVICE, &path),
            1 => run::<quartet_task_gateway::Config>(quartet_task_gateway::SERVICE, &path),
            2 => run::<quartet_rpc_gateway::Config>(quartet_rpc_gateway::SERVICE, &path),
            _ => run::<quartet_db::Config>(quartet_db::SERVICE, &path),
        }
    }

    fn run<T>(service: &str, path: &str)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema + Default,
    {
        let loader = Loader::new(service, "fuzz");
        let args = [service, "--config", path];
        let _ = loader.load::<T, _, _, _>(args, Vec::<(String, String)>::new());
    }
}
