//! What a caller may send through any front, checked the same way on all three (REST, gRPC,
//! zerorpc) before a permission is looked up or a backend is asked.
//!
//! - **Names** ([`callable`]): a service or method name becomes part of a Shiro permission
//!   (`rpc:call:<service>.<method>`, `rpc:describe:<service>`), and Shiro splits on `:` and
//!   `,`, treats `*` as a wildcard and lower-cases everything, while zerorpc names are
//!   case-sensitive. So a name holds only the characters on which that parsing changes
//!   nothing — lower-case ASCII letters, digits, `_` and `-` — and is at most
//!   [`MAX_NAME_BYTES`] long. `.` is refused too: it separates service from method. A method
//!   named `_zpc_…` is zerorpc's own traffic (heartbeats, stream credit), never a method.
//! - **Arguments** ([`json_arguments`], [`msgpack_arguments`]): one array of positional
//!   arguments, nesting arrays and maps at most [`MAX_DEPTH`] levels (the list itself is one).
//! - **Deadlines** ([`timeout`]): a finite number of seconds above 0 that is at least a
//!   nanosecond once rounded (`5e-324` is no time at all), at most the gateway's maximum
//!   (larger asks get the maximum).
//!
//! Each refusal is an [`InputError`] naming the value and the rule; [`InputError::problem`]
//! gives the REST and gRPC answer, the zerorpc front names it by [`InputError::zerorpc_name`].

use std::time::Duration;

use quartet_kit::error::{ErrorKind, Problem};
use rmpv::Value;

pub use crate::zerorpc::event::MAX_DEPTH;

/// The longest service or method name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// The prefix of zerorpc's protocol events (`_zpc_hb`, `_zpc_more`), which no method may take.
pub const PROTOCOL_PREFIX: &str = "_zpc_";

/// Why a caller's input is refused; each names the value and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// An empty service or method name.
    #[error("the {what} name is empty: call <service>.<method>")]
    EmptyName {
        /// `service` or `method`.
        what: &'static str,
    },
    /// A name longer than [`MAX_NAME_BYTES`].
    #[error("the {what} name is {len} bytes long; names are at most {MAX_NAME_BYTES}")]
    LongName {
        /// `service` or `method`.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A character outside the rule.
    #[error(
        "the {what} name {name:?} contains {character:?}: service and method names hold only lower-case ASCII letters, digits, '_' and '-' (a name becomes part of a permission, where ':', ',' and '*' have meaning and case is ignored, and '.' separates service from method)"
    )]
    BadCharacter {
        /// `service` or `method`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// The first character refused.
        character: char,
    },
    /// A zerorpc protocol event's name used as a method.
    #[error(
        "{name:?} is zerorpc's own protocol traffic, not a method: names starting {PROTOCOL_PREFIX:?} cannot be called"
    )]
    ProtocolName {
        /// The name as given.
        name: String,
    },
    /// The arguments are not in the encoding they claim.
    #[error("the arguments are not {encoding}: {reason}")]
    Encoding {
        /// `JSON` or `MessagePack`.
        encoding: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Something other than one array of positional arguments.
    #[error(
        "the arguments must be one {encoding} array of positional arguments (zerorpc has no keyword arguments)"
    )]
    NotArray {
        /// `JSON` or `MessagePack`.
        encoding: &'static str,
    },
    /// Arguments nested deeper than [`MAX_DEPTH`].
    #[error(
        "the arguments nest arrays and maps deeper than {MAX_DEPTH} levels (the argument list is one): send flatter data"
    )]
    TooDeep,
    /// A deadline that is not a number of seconds above 0, or rounds to no time at all
    /// (under a nanosecond).
    #[error(
        "timeout {given:?} is not a number of seconds of at least 1 ns (1e-9); asks above the gateway's {max:?} get that"
    )]
    Timeout {
        /// The value as given.
        given: String,
        /// The gateway's maximum.
        max: Duration,
    },
}

impl InputError {
    /// The answer on REST and gRPC: 404 / `NOT_FOUND` for a protocol event's name (no such
    /// method), else 400 / `INVALID_ARGUMENT`.
    pub fn problem(&self) -> Problem {
        let (kind, code) = match self {
            InputError::ProtocolName { .. } => (ErrorKind::NotFound, "no-such-method"),
            InputError::EmptyName { .. }
            | InputError::LongName { .. }
            | InputError::BadCharacter { .. } => (ErrorKind::InvalidArgument, "invalid-name"),
            InputError::Timeout { .. } => (ErrorKind::InvalidArgument, "invalid-timeout"),
            InputError::Encoding { .. } | InputError::NotArray { .. } | InputError::TooDeep => {
                (ErrorKind::InvalidArgument, "invalid-arguments")
            }
        };
        Problem::new(kind, code, self.to_string())
    }

    /// The error's name on the zerorpc front: `NameError` for a protocol event's name (as
    /// for any method that does not exist), `ProtocolError` for arguments nested too deep,
    /// `InvalidArgument` for the rest.
    pub fn zerorpc_name(&self) -> &'static str {
        match self {
            InputError::ProtocolName { .. } => "NameError",
            InputError::TooDeep => "ProtocolError",
            _ => "InvalidArgument",
        }
    }
}

/// Checks one name (`what` is `service` or `method`) against the rule in the module docs.
pub fn name(what: &'static str, name: &str) -> Result<(), InputError> {
    if name.is_empty() {
        return Err(InputError::EmptyName { what });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(InputError::LongName {
            what,
            len: name.len(),
        });
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
    {
        return Err(InputError::BadCharacter {
            what,
            name: name.to_owned(),
            character,
        });
    }
    if what == "method" && name.starts_with(PROTOCOL_PREFIX) {
        return Err(InputError::ProtocolName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Whether `service.method` may be called at all, before permissions: both names follow the
/// rule in the module docs. The one check every front makes (through
/// [`crate::router::authorize`]).
pub fn callable(service: &str, method: &str) -> Result<(), InputError> {
    name("service", service)?;
    name("method", method)
}

/// The time a call may take: `requested` seconds (finite, at least a nanosecond once rounded),
/// at most `max`; `None`
/// (not asked) is `max`. The text is what the caller sent, for the refusal.
pub fn timeout(requested: Option<&str>, max: Duration) -> Result<Duration, InputError> {
    let Some(text) = requested else {
        return Ok(max);
    };
    let refused = || InputError::Timeout {
        given: text.to_owned(),
        max,
    };
    let seconds: f64 = text.trim().parse().map_err(|_| refused())?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(refused());
    }
    // Compared as seconds first: a huge value never reaches `Duration`, which would panic.
    if seconds >= max.as_secs_f64() {
        return Ok(max);
    }
    // Above 0 but under a nanosecond (`5e-324`) is no time at all: the call would be over
    // before it was sent.
    let duration = Duration::from_secs_f64(seconds);
    if duration.is_zero() {
        return Err(refused());
    }
    Ok(duration)
}

/// Positional arguments from a JSON array (an empty body is no arguments). serde_json stops
/// at 128 levels by itself; [`MAX_DEPTH`] is checked on what it read.
pub fn json_arguments(bytes: &[u8]) -> Result<Vec<Value>, InputError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| InputError::Encoding {
            encoding: "JSON",
            reason: if e.to_string().contains("recursion limit") {
                format!("{e} (arguments may nest at most {MAX_DEPTH} levels)")
            } else {
                e.to_string()
            },
        })?;
    let serde_json::Value::Array(items) = &parsed else {
        return Err(InputError::NotArray { encoding: "JSON" });
    };
    if json_depth(&parsed) > MAX_DEPTH {
        return Err(InputError::TooDeep);
    }
    Ok(items.iter().map(crate::router::from_json).collect())
}

/// Positional arguments from one MessagePack array, nesting at most [`MAX_DEPTH`] levels.
pub fn msgpack_arguments(bytes: &[u8]) -> Result<Vec<Value>, InputError> {
    let mut reader = bytes;
    let value =
        crate::zerorpc::event::read_nested(&mut reader, MAX_DEPTH).map_err(
            |fault| match fault {
                None => InputError::TooDeep,
                Some(reason) => InputError::Encoding {
                    encoding: "MessagePack",
                    reason,
                },
            },
        )?;
    match value {
        Value::Array(items) if reader.is_empty() => Ok(items),
        _ => Err(InputError::NotArray {
            encoding: "MessagePack",
        }),
    }
}

/// How many levels of arrays and objects `value` nests, counted without recursion.
fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, above)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(above + 1);
        pending.extend(children.map(|child| (child, above + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_widen_or_cross_a_permission_are_refused_naming_the_character() {
        for good in [
            "demo",
            "add",
            "daily_report",
            "v2-api",
            "_zerorpc_inspect",
            "x",
        ] {
            assert_eq!(callable("demo", good), Ok(()), "{good}");
        }
        for (bad, character) in [
            ("*", '*'),
            ("add,pid", ','),
            ("add:x", ':'),
            ("ADD", 'A'),
            ("Add", 'A'),
            ("a.b", '.'),
            ("a b", ' '),
            ("a\tb", '\t'),
            ("a\u{0}b", '\u{0}'),
            ("é", 'é'),
        ] {
            let refused = callable("demo", bad).expect_err(bad);
            assert_eq!(
                refused,
                InputError::BadCharacter {
                    what: "method",
                    name: bad.into(),
                    character
                }
            );
            let text = refused.to_string();
            assert!(text.contains(&format!("{character:?}")), "{text}");
            assert!(text.contains("lower-case ASCII letters"), "{text}");
            assert_eq!(refused.problem().status, 400);
            let service = callable(bad, "add").expect_err(bad);
            assert!(
                service.to_string().starts_with("the service name"),
                "{service}"
            );
        }
        assert_eq!(
            callable("", "add"),
            Err(InputError::EmptyName { what: "service" })
        );
        assert!(matches!(
            callable("demo", &"a".repeat(MAX_NAME_BYTES + 1)),
            Err(InputError::LongName { len: 129, .. })
        ));
        assert_eq!(callable("demo", &"a".repeat(MAX_NAME_BYTES)), Ok(()));
    }

    #[test]
    fn protocol_events_are_not_methods() {
        for internal in ["_zpc_hb", "_zpc_more", "_zpc_err", "_zpc_anything"] {
            let refused = callable("demo", internal).expect_err(internal);
            assert_eq!(refused.problem().status, 404, "{refused}");
            assert_eq!(refused.zerorpc_name(), "NameError");
            assert!(
                refused.to_string().contains("protocol traffic"),
                "{refused}"
            );
        }
        // A service may be called anything the rule allows, even that.
        assert_eq!(callable("_zpc_hb", "add"), Ok(()));
    }

    #[test]
    fn timeouts_are_finite_seconds_above_zero_and_clamped_to_the_maximum() {
        let max = Duration::from_secs(30);
        assert_eq!(timeout(None, max), Ok(max));
        assert_eq!(timeout(Some("1.5"), max), Ok(Duration::from_millis(1500)));
        for huge in ["1e308", "31", "1e20"] {
            assert_eq!(timeout(Some(huge), max), Ok(max), "{huge}");
        }
        for bad in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "-1",
            "-0",
            "0",
            "1e-400",
            "",
            "x",
            "1s",
            // Above 0, but less than the nanosecond a deadline counts in: no time at all.
            "5e-324",
            "1e-10",
            "0.0000000004",
        ] {
            let refused = timeout(Some(bad), max).expect_err(bad);
            assert!(refused.to_string().starts_with("timeout "), "{refused}");
            assert_eq!(refused.problem().status, 400);
        }
        assert_eq!(timeout(Some("1e-9"), max), Ok(Duration::from_nanos(1)));
    }

    /// `levels` arrays nested around `leaf`, as MessagePack.
    fn nested(levels: usize, leaf: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x91; levels];
        bytes.extend_from_slice(leaf);
        bytes
    }

    #[test]
    fn arguments_nest_at_most_max_depth_levels_in_either_encoding() {
        for leaf in [
            &[0xc0][..],
            &[0xa1, b'x'],
            &[0xc4, 0x01, 0x00],
            &[0x90],
            &[0x80],
        ] {
            // `[]` and `{}` as the leaf are a level themselves.
            let levels = if leaf[0] == 0x90 || leaf[0] == 0x80 {
                MAX_DEPTH - 1
            } else {
                MAX_DEPTH
            };
            assert!(msgpack_arguments(&nested(levels, leaf)).is_ok(), "{leaf:?}");
            assert_eq!(
                msgpack_arguments(&nested(levels + 1, leaf)),
                Err(InputError::TooDeep),
                "{leaf:?}"
            );
        }
        assert_eq!(
            msgpack_arguments(&nested(100_000, &[0xc0])),
            Err(InputError::TooDeep)
        );
        let json = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert_eq!(
            json_arguments(json(MAX_DEPTH).as_bytes()).map(|a| a.len()),
            Ok(1)
        );
        assert_eq!(
            json_arguments(json(MAX_DEPTH + 1).as_bytes()),
            Err(InputError::TooDeep)
        );
        let deep = json_arguments(json(100_000).as_bytes()).expect_err("deep");
        assert!(deep.to_string().contains("at most 100 levels"), "{deep}");
        assert_eq!(json_arguments(b" "), Ok(Vec::new()));
        assert_eq!(
            json_arguments(b"{\"a\": 1}"),
            Err(InputError::NotArray { encoding: "JSON" })
        );
        assert!(matches!(
            msgpack_arguments(&[0x92, 0x01]),
            Err(InputError::Encoding { .. })
        ));
        assert_eq!(
            msgpack_arguments(&[0x90, 0x90]),
            Err(InputError::NotArray {
                encoding: "MessagePack"
            })
        );
    }
}
