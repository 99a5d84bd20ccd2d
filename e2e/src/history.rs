//! Recorded histories of client operations against a database under faults, and the checks run
//! over them: **linearizability** of a set of registers and **no lost acknowledged write**.
//!
//! The linearizability check is the Wing & Gong search with Lowe's memoisation, done per key
//! (registers compose: a history is linearizable iff each key's is). An operation may be
//! linearized next only if it was invoked before every not-yet-linearized operation returned;
//! a read must see the register's current value; the search memoises (set of linearized
//! operations, value) pairs so each is explored once. Operations whose outcome the client
//! could not learn (a timeout, a dropped connection, MySQL 1180) never return: they may take
//! effect at any point after their invocation, or not at all. Operations that definitely
//! failed are dropped. Written here because the checkers that fit (Knossos, Porcupine, Elle)
//! are Clojure and Go programs, not libraries a Rust test can call.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// What a register operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Set the register.
    Write(i64),
    /// Read the register: its value, `None` before any write.
    Read(Option<i64>),
}

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Definitely did not happen.
    Failed,
    /// Unknown: it may have happened.
    Unknown,
}

/// One operation in a history. Times are any monotonic clock, e.g. nanoseconds since start.
#[derive(Debug, Clone)]
pub struct Event {
    /// Which register.
    pub key: String,
    /// The operation (for a read, the value it returned).
    pub op: Op,
    /// When the client invoked it.
    pub invoked: u64,
    /// When the client learned the outcome.
    pub completed: u64,
    /// The outcome.
    pub outcome: Outcome,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The register whose history has no linearization.
    pub key: String,
    /// Its operations that took part in the search, in invocation order.
    pub operations: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "register {:?} has no linearization ({} operations; the first 40):",
            self.key,
            self.operations.len()
        )?;
        for op in self.operations.iter().take(40) {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Call {
    op: Op,
    invoked: u64,
    /// `u64::MAX` for an operation whose outcome is unknown.
    returned: u64,
}

/// Checks every register's history; returns the first violation found.
pub fn check_registers(events: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Call>> = BTreeMap::new();
    for event in events {
        let returned = match (event.outcome, event.op) {
            (Outcome::Failed, _) | (Outcome::Unknown, Op::Read(_)) => continue,
            (Outcome::Unknown, Op::Write(_)) => u64::MAX,
            (Outcome::Ok, _) => event.completed,
        };
        by_key.entry(&event.key).or_default().push(Call {
            op: event.op,
            invoked: event.invoked,
            returned,
        });
    }
    for (key, mut calls) in by_key {
        calls.sort_by_key(|c| c.invoked);
        if !linearizable(&calls) {
            return Err(Violation {
                key: key.to_owned(),
                operations: calls
                    .iter()
                    .map(|c| {
                        let end = if c.returned == u64::MAX {
                            "?".to_owned()
                        } else {
                            c.returned.to_string()
                        };
                        format!("{:?} [{} .. {end}]", c.op, c.invoked)
                    })
                    .collect(),
            });
        }
    }
    Ok(())
}

fn linearizable(calls: &[Call]) -> bool {
    let mut done = vec![false; calls.len()];
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    search(calls, &mut done, None, &mut seen)
}

fn bits(done: &[bool]) -> Vec<u64> {
    let mut words = vec![0u64; done.len().div_ceil(64)];
    for (i, d) in done.iter().enumerate() {
        if *d {
            words[i / 64] |= 1 << (i % 64);
        }
    }
    words
}

fn search(
    calls: &[Call],
    done: &mut [bool],
    value: Option<i64>,
    seen: &mut HashSet<(Vec<u64>, Option<i64>)>,
) -> bool {
    // Everything that returned is linearized: the rest (unknown writes) may happen later, or
    // never; either way no observed read depends on them.
    let earliest_return = calls
        .iter()
        .zip(done.iter())
        .filter(|(_, d)| !**d)
        .map(|(c, _)| c.returned)
        .min();
    let Some(earliest_return) = earliest_return else {
        return true;
    };
    if earliest_return == u64::MAX {
        return true;
    }
    for i in 0..calls.len() {
        if done[i] || calls[i].invoked > earliest_return {
            continue;
        }
        let next = match calls[i].op {
            Op::Write(v) => Some(v),
            Op::Read(seen_value) if seen_value == value => value,
            Op::Read(_) => continue,
        };
        done[i] = true;
        if seen.insert((bits(done), next)) && search(calls, done, next, seen) {
            return true;
        }
        done[i] = false;
    }
    false
}

/// Acknowledged writes missing from what was finally read: each one is a lost write.
pub fn lost_writes(acknowledged: &BTreeSet<i64>, finally_present: &BTreeSet<i64>) -> Vec<i64> {
    acknowledged.difference(finally_present).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, invoked: u64, completed: u64, outcome: Outcome) -> Event {
        Event {
            key: "k".into(),
            op,
            invoked,
            completed,
            outcome,
        }
    }

    use Op::{Read, Write};
    use Outcome::{Failed, Ok as Acked, Unknown};

    #[test]
    fn sequential_histories_that_read_the_last_write_pass() {
        let h = [
            ev(Read(None), 0, 1, Acked),
            ev(Write(1), 2, 3, Acked),
            ev(Read(Some(1)), 4, 5, Acked),
            ev(Write(2), 6, 7, Acked),
            ev(Read(Some(2)), 8, 9, Acked),
        ];
        assert_eq!(check_registers(&h), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let h = [
            ev(Write(1), 0, 1, Acked),
            ev(Write(2), 2, 3, Acked),
            ev(Read(Some(1)), 4, 5, Acked),
        ];
        let violation = check_registers(&h).expect_err("stale read");
        assert_eq!(violation.key, "k");
        assert_eq!(violation.operations.len(), 3);
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps the write: both old and new values are fine.
        for seen in [None, Some(1)] {
            let h = [ev(Write(1), 0, 10, Acked), ev(Read(seen), 5, 6, Acked)];
            assert_eq!(check_registers(&h), Ok(()), "{seen:?}");
        }
        // But two reads in sequence cannot go back in time.
        let h = [
            ev(Write(1), 0, 10, Acked),
            ev(Read(Some(1)), 1, 2, Acked),
            ev(Read(None), 3, 4, Acked),
        ];
        assert!(check_registers(&h).is_err(), "new then old value");
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never_but_failed_ones_never() {
        let late = [
            ev(Write(1), 0, 1, Unknown),
            ev(Read(None), 2, 3, Acked),
            ev(Read(Some(1)), 50, 51, Acked),
        ];
        assert_eq!(check_registers(&late), Ok(()));
        let never = [ev(Write(1), 0, 1, Unknown), ev(Read(None), 2, 3, Acked)];
        assert_eq!(check_registers(&never), Ok(()));
        let failed = [ev(Write(1), 0, 1, Failed), ev(Read(Some(1)), 2, 3, Acked)];
        assert!(
            check_registers(&failed).is_err(),
            "a failed write must not be observed"
        );
    }

    #[test]
    fn a_value_nobody_wrote_is_caught() {
        let h = [ev(Write(1), 0, 1, Acked), ev(Read(Some(7)), 2, 3, Acked)];
        assert!(check_registers(&h).is_err());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut h = vec![ev(Write(1), 0, 1, Acked)];
        h.push(Event {
            key: "other".into(),
            op: Read(None),
            invoked: 2,
            completed: 3,
            outcome: Acked,
        });
        assert_eq!(check_registers(&h), Ok(()));
    }

    #[test]
    fn many_concurrent_clients_of_a_real_register_always_pass() {
        // Simulate a linearizable register: each op takes effect at a random instant inside
        // its interval, five overlapping clients; the checker must accept every such history.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _round in 0..20 {
            let mut ops = Vec::new();
            for client in 0..5u64 {
                let mut t = client;
                for n in 0..12u64 {
                    let start = t + next() % 5;
                    let point = start + 1 + next() % 6;
                    let end = point + 1 + next() % 5;
                    let write = next() % 2 == 0;
                    ops.push((point, start, end, write, (client * 100 + n) as i64));
                    t = end + 1;
                }
            }
            ops.sort();
            let mut value = None;
            let mut history = Vec::new();
            for (_, start, end, write, v) in ops {
                let op = if write {
                    value = Some(v);
                    Write(v)
                } else {
                    Read(value)
                };
                history.push(ev(op, start, end, Acked));
            }
            assert_eq!(check_registers(&history), Ok(()));
        }
    }

    #[test]
    fn lost_writes_are_the_acknowledged_ones_missing() {
        let acked = BTreeSet::from([1, 2, 3]);
        let present = BTreeSet::from([1, 3, 4]);
        assert_eq!(lost_writes(&acked, &present), vec![2]);
    }
}
