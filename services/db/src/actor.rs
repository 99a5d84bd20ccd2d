//! An engine on its own thread, serving every client session and the Raft state machine.
//!
//! SQLite's session object (which records a transaction's row changes for replication)
//! borrows the connection, so an open transaction cannot be parked in an async task between
//! client commands. Here one thread owns the connection; while a session's transaction is open
//! the thread serves only that session and queues everyone else's requests, so transactions are
//! serializable. A queued request waits at most `lock_wait` and then gets MySQL's 1205 (lock
//! wait timeout, retryable). A session that disconnects has its transaction rolled back.
//!
//! Writes never change the database directly. A write (or a transaction at COMMIT) is
//! executed, its changes recorded as an [`Entry`], and rolled back; the entry changes the
//! database when the group has committed it and the state machine hands it to
//! [`EngineHandle::apply`] — on every replica alike, the leader included. So the next write must
//! not execute before the previous one is applied, or its changes would be computed against a
//! state the group never had: writes and `BEGIN` wait (the *write gate*) while a proposal is
//! in flight or the Raft log holds entries not yet applied here.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rusqlite::session::Session;
use rusqlite::types::Value;

use crate::engine::{Columns, Engine, EngineError, Entry, Outcome, Rows, Step, is_ddl};

/// Session number of the Raft state machine's own requests.
const SYSTEM: u64 = 0;

/// One committed log entry for the state machine: its bookkeeping and, for writes, its data.
#[derive(Debug, Clone)]
pub struct Applying {
    /// Log position (exclusive end: index + 1) this entry brings the replica to.
    pub next_index: u64,
    /// Bookkeeping to store with it (applied log id, membership), see [`crate::engine::META_TABLE`].
    pub meta: Vec<(&'static str, Vec<u8>)>,
    /// The data change, for write entries.
    pub entry: Option<Entry>,
}

/// What a request asks of the engine.
#[derive(Debug)]
enum Op {
    Query {
        sql: String,
        params: Vec<Value>,
    },
    Write {
        statements: Vec<String>,
        params: Vec<Value>,
    },
    Describe {
        sql: String,
    },
    Begin,
    Commit,
    Rollback,
    Close,
    /// The proposal of an earlier write has been decided (committed, or failed).
    Settle,
    Apply(Vec<Applying>),
    Snapshot(PathBuf),
    Restore(PathBuf, u64),
    Meta(&'static str),
    Checksum,
}

impl Op {
    /// Whether the op must pass the write gate.
    fn writes(&self) -> bool {
        matches!(self, Op::Write { .. } | Op::Begin)
    }
}

/// What the engine answered.
#[derive(Debug)]
pub enum Answer {
    /// Rows of a query.
    Rows(Rows),
    /// The effect of a write (its entry is empty inside a transaction until COMMIT).
    Written(Outcome),
    /// Parameter count and result columns of a statement.
    Shape(usize, Columns),
    /// Per applied entry: whether its data change applied.
    Applied(Vec<Result<(), String>>),
    /// A bookkeeping value.
    Meta(Option<Vec<u8>>),
    /// A checksum.
    Checksum([u8; 32]),
    /// Done, nothing to return.
    Done,
}

struct Request {
    session: u64,
    op: Op,
    at: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Answer, EngineError>>,
}

/// Positions shared between the engine thread, the Raft log and readers.
#[derive(Debug, Default)]
pub struct Progress {
    /// One past the last index in the Raft log (0 when empty). Set by the log store.
    pub log_next: AtomicU64,
    /// One past the last index applied to this engine.
    pub applied_next: AtomicU64,
    applied_changed: tokio::sync::Notify,
}

impl Progress {
    /// Waits until entries up to `index` (inclusive) are applied here.
    pub async fn wait_applied(&self, index: u64) {
        loop {
            let notified = self.applied_changed.notified();
            if self.applied_next.load(Ordering::Acquire) > index {
                return;
            }
            notified.await;
        }
    }
}

/// A cloneable handle on the engine thread.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    requests: Sender<Request>,
    progress: Arc<Progress>,
}

impl EngineHandle {
    /// Moves `engine` onto its own thread. Queued requests wait at most `lock_wait` behind
    /// another session's transaction or at the write gate.
    pub fn spawn(engine: Engine, progress: Arc<Progress>, lock_wait: Duration) -> Self {
        let (requests, inbox) = std::sync::mpsc::channel();
        let shared = progress.clone();
        std::thread::Builder::new()
            .name("quartet-db-engine".into())
            .spawn(move || {
                Worker {
                    engine,
                    progress: shared,
                    lock_wait,
                    in_flight: 0,
                    deferred: VecDeque::new(),
                    aborted: Default::default(),
                }
                .serve(&inbox)
            })
            .expect("the engine thread starts");
        Self { requests, progress }
    }

    /// The positions this engine shares.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    async fn ask(&self, session: u64, op: Op) -> Result<Answer, EngineError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests
            .send(Request {
                session,
                op,
                at: Instant::now(),
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Runs a query for `session`.
    pub async fn query(
        &self,
        session: u64,
        sql: &str,
        params: &[Value],
    ) -> Result<Rows, EngineError> {
        let op = Op::Query {
            sql: sql.to_owned(),
            params: params.to_vec(),
        };
        match self.ask(session, op).await? {
            Answer::Rows(rows) => Ok(rows),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs writes for `session`: inside its open transaction, or (autocommit) executed and
    /// recorded as an entry to propose. When the outcome's entry is not empty, the caller
    /// must propose it and then call [`EngineHandle::settle`], whatever happens.
    pub async fn write(
        &self,
        session: u64,
        statements: Vec<String>,
        params: &[Value],
    ) -> Result<Outcome, EngineError> {
        let op = Op::Write {
            statements,
            params: params.to_vec(),
        };
        match self.ask(session, op).await? {
            Answer::Written(outcome) => Ok(outcome),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Parameter count and result columns of `sql`.
    pub async fn describe(&self, session: u64, sql: &str) -> Result<(usize, Columns), EngineError> {
        let op = Op::Describe {
            sql: sql.to_owned(),
        };
        match self.ask(session, op).await? {
            Answer::Shape(params, columns) => Ok((params, columns)),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Opens a transaction for `session`. One already open must be ended first.
    pub async fn begin(&self, session: u64) -> Result<(), EngineError> {
        self.ask(session, Op::Begin).await.map(drop)
    }

    /// Ends `session`'s transaction, if any, and returns what it wrote. As with
    /// [`EngineHandle::write`], a non-empty entry must be proposed and then settled.
    pub async fn commit(&self, session: u64) -> Result<Option<Outcome>, EngineError> {
        match self.ask(session, Op::Commit).await? {
            Answer::Written(outcome) => Ok(Some(outcome)),
            _ => Ok(None),
        }
    }

    /// Rolls back `session`'s transaction, if any.
    pub async fn rollback(&self, session: u64) -> Result<(), EngineError> {
        self.ask(session, Op::Rollback).await.map(drop)
    }

    /// The session is gone: roll back whatever it left open. Does not wait.
    pub fn close(&self, session: u64) {
        self.tell(session, Op::Close);
    }

    /// The proposal of an entry returned by `write` or `commit` is decided: the write gate
    /// may open once the log is applied. Does not wait.
    pub fn settle(&self) {
        self.tell(SYSTEM, Op::Settle);
    }

    fn tell(&self, session: u64, op: Op) {
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = self.requests.send(Request {
            session,
            op,
            at: Instant::now(),
            reply,
        });
    }

    /// Applies committed log entries in order; per entry, whether its data change applied
    /// (an entry that does not apply is skipped identically on every replica).
    pub async fn apply(
        &self,
        entries: Vec<Applying>,
    ) -> Result<Vec<Result<(), String>>, EngineError> {
        match self.ask(SYSTEM, Op::Apply(entries)).await? {
            Answer::Applied(results) => Ok(results),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Writes a consistent copy of the database to `path`.
    pub async fn snapshot(&self, path: PathBuf) -> Result<(), EngineError> {
        self.ask(SYSTEM, Op::Snapshot(path)).await.map(drop)
    }

    /// Replaces the database with the copy at `path`, which brings it to log position
    /// `next_index`.
    pub async fn restore(&self, path: PathBuf, next_index: u64) -> Result<(), EngineError> {
        self.ask(SYSTEM, Op::Restore(path, next_index))
            .await
            .map(drop)
    }

    /// A bookkeeping value.
    pub async fn meta(&self, key: &'static str) -> Result<Option<Vec<u8>>, EngineError> {
        match self.ask(SYSTEM, Op::Meta(key)).await? {
            Answer::Meta(value) => Ok(value),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The checksum of the data as applied so far.
    pub async fn checksum(&self) -> Result<[u8; 32], EngineError> {
        match self.ask(SYSTEM, Op::Checksum).await? {
            Answer::Checksum(sum) => Ok(sum),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// The engine thread's state.
struct Worker {
    engine: Engine,
    progress: Arc<Progress>,
    lock_wait: Duration,
    /// Entries handed out by `write`/`commit` and not yet settled.
    in_flight: u32,
    /// Requests waiting for the write gate or for a transaction to end, oldest first.
    deferred: VecDeque<Request>,
    /// Sessions whose transaction was rolled back by a change of leader.
    aborted: std::collections::HashSet<u64>,
}

/// How a transaction ended.
enum Ended {
    /// Normally; nothing more to do.
    Done,
    /// The engine's state moved under it: serve this system request next.
    Aborted(Request),
}

impl Worker {
    fn gate_open(&self) -> bool {
        self.in_flight == 0
            && self.progress.applied_next.load(Ordering::Acquire)
                >= self.progress.log_next.load(Ordering::Acquire)
    }

    fn serve(mut self, inbox: &Receiver<Request>) {
        loop {
            self.expire_deferred();
            let ready = self
                .deferred
                .iter()
                .position(|r| !r.op.writes() || self.gate_open());
            let request = match ready.and_then(|i| self.deferred.remove(i)) {
                Some(r) => r,
                None => match inbox.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) if r.op.writes() && !self.gate_open() => {
                        self.deferred.push_back(r);
                        continue;
                    }
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            if let Some(begin) = self.outside(request)
                && let Ended::Aborted(system) = self.transaction(begin, inbox)
            {
                // A state machine request, never a BEGIN.
                let _ = self.outside(system);
            }
        }
    }

    /// Requests waiting longer than the lock wait are answered with 1205.
    fn expire_deferred(&mut self) {
        let now = Instant::now();
        let lock_wait = self.lock_wait;
        let (expired, kept): (VecDeque<_>, VecDeque<_>) = self
            .deferred
            .drain(..)
            .partition(|r| r.session != SYSTEM && now.duration_since(r.at) >= lock_wait);
        self.deferred = kept;
        for request in expired {
            let _ = request.reply.send(Err(EngineError::LockWait));
        }
    }

    /// Answers one request outside any transaction. Returns a BEGIN to serve.
    fn outside(&mut self, request: Request) -> Option<Request> {
        if self.aborted.remove(&request.session) {
            // The session's transaction was rolled back under it: say so once, before
            // anything else of the session runs outside a transaction.
            match request.op {
                Op::Query { .. } | Op::Write { .. } | Op::Describe { .. } | Op::Commit => {
                    let _ = request.reply.send(Err(EngineError::Aborted));
                    return None;
                }
                _ => {}
            }
        }
        let answer = match request.op {
            Op::Begin => return Some(request),
            Op::Query { sql, params } => self.engine.query_bound(&sql, &params).map(Answer::Rows),
            Op::Write { statements, params } => {
                let bound: Vec<(&str, &[Value])> = statements
                    .iter()
                    .map(|s| (s.as_str(), params.as_slice()))
                    .collect();
                let executed = self.engine.execute_bound(&bound);
                if let Ok(outcome) = &executed
                    && !outcome.entry.steps.is_empty()
                {
                    self.in_flight += 1;
                }
                executed.map(Answer::Written)
            }
            Op::Describe { sql } => self.engine.describe(&sql).map(|(p, c)| Answer::Shape(p, c)),
            Op::Commit | Op::Rollback | Op::Close => Ok(Answer::Done),
            Op::Settle => {
                self.in_flight = self.in_flight.saturating_sub(1);
                Ok(Answer::Done)
            }
            Op::Apply(entries) => self.apply(entries).map(Answer::Applied),
            Op::Snapshot(path) => self.engine.snapshot_to(&path).map(|()| Answer::Done),
            Op::Restore(path, next_index) => {
                let restored = self.engine.restore_from(&path);
                if restored.is_ok() {
                    self.advance(next_index);
                }
                restored.map(|()| Answer::Done)
            }
            Op::Meta(key) => self.engine.meta(key).map(Answer::Meta),
            Op::Checksum => self.engine.checksum().map(Answer::Checksum),
        };
        let _ = request.reply.send(answer);
        None
    }

    fn apply(&mut self, entries: Vec<Applying>) -> Result<Vec<Result<(), String>>, EngineError> {
        let mut results = Vec::with_capacity(entries.len());
        for applying in entries {
            let meta: Vec<(&str, &[u8])> = applying
                .meta
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect();
            match self.engine.apply_with_meta(applying.entry.as_ref(), &meta) {
                Ok(()) => results.push(Ok(())),
                // The bookkeeping was stored; the entry's own change was refused alike on
                // every replica.
                Err(EngineError::Sqlite(e)) if applying.entry.is_some() => {
                    results.push(Err(e.to_string()));
                }
                Err(EngineError::Diverged(kind)) => results.push(Err(format!(
                    "the entry's changes conflict with this replica's rows ({kind})"
                ))),
                Err(e) => return Err(e),
            }
            self.advance(applying.next_index);
        }
        Ok(results)
    }

    fn advance(&self, next_index: u64) {
        self.progress
            .applied_next
            .store(next_index, Ordering::Release);
        self.progress.applied_changed.notify_waiters();
    }

    /// Serves `begin`'s session's transaction until it ends.
    fn transaction(&mut self, begin: Request, inbox: &Receiver<Request>) -> Ended {
        let owner = begin.session;
        let conn = self.engine.connection();
        let tx = match conn.unchecked_transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let _ = begin.reply.send(Err(e.into()));
                return Ended::Done;
            }
        };
        let mut session =
            match Session::new(&tx).and_then(|mut s| s.attach(None::<&str>).map(|()| s)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = begin.reply.send(Err(e.into()));
                    return Ended::Done;
                }
            };
        let _ = begin.reply.send(Ok(Answer::Done));
        let (mut rows_affected, mut last_insert_id) = (0u64, 0i64);
        let mut waiting: VecDeque<Request> = std::mem::take(&mut self.deferred);
        loop {
            // Requests of other sessions wait their turn, but never longer than the lock wait.
            let now = Instant::now();
            let lock_wait = self.lock_wait;
            let (expired, kept): (VecDeque<_>, VecDeque<_>) = waiting.drain(..).partition(|r| {
                r.session != owner && r.session != SYSTEM && now.duration_since(r.at) >= lock_wait
            });
            waiting = kept;
            for request in expired {
                let _ = request.reply.send(Err(EngineError::LockWait));
            }
            // The state machine's requests that cannot wait for the owner: a data change
            // or a restore means another leader's writes arrived, so this transaction (begun
            // on a state that is no longer current) is rolled back.
            let urgent = waiting.iter().position(|r| {
                r.session == SYSTEM
                    && match &r.op {
                        Op::Apply(entries) => entries.iter().any(|a| a.entry.is_some()),
                        Op::Restore(..) | Op::Settle | Op::Meta(_) => true,
                        _ => false,
                    }
            });
            if let Some(i) = urgent {
                let request = waiting.remove(i).expect("position is in range");
                match request.op {
                    Op::Settle => {
                        self.in_flight = self.in_flight.saturating_sub(1);
                        let _ = request.reply.send(Ok(Answer::Done));
                    }
                    Op::Meta(key) => {
                        let _ = request
                            .reply
                            .send(Engine::meta_on(&tx, key).map(Answer::Meta));
                    }
                    _ => {
                        drop(session);
                        let _ = tx.rollback();
                        tracing::warn!(
                            session = owner,
                            "transaction rolled back: another leader's writes arrived"
                        );
                        self.aborted.insert(owner);
                        self.deferred = waiting;
                        return Ended::Aborted(request);
                    }
                }
                continue;
            }
            let position = waiting.iter().position(|r| r.session == owner);
            let request = match position.and_then(|i| waiting.remove(i)) {
                Some(r) => r,
                None => match inbox.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) if r.session == owner => r,
                    Ok(r) => {
                        waiting.push_back(r);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ended::Done,
                },
            };
            match request.op {
                Op::Query { sql, params } => {
                    let _ = request
                        .reply
                        .send(Engine::query_on(&tx, &sql, &params).map(Answer::Rows));
                }
                Op::Describe { sql } => {
                    let _ = request
                        .reply
                        .send(Engine::describe_on(&tx, &sql).map(|(p, c)| Answer::Shape(p, c)));
                }
                Op::Write { statements, params } => {
                    if statements.iter().any(|s| is_ddl(s)) {
                        let _ = request.reply.send(Err(EngineError::DdlInTransaction));
                        continue;
                    }
                    let mut result = Ok(());
                    for sql in &statements {
                        match tx.execute(sql, rusqlite::params_from_iter(params.iter())) {
                            Ok(n) => {
                                rows_affected = n as u64;
                                last_insert_id = tx.last_insert_rowid();
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    let written = result.map(|()| {
                        Answer::Written(Outcome {
                            entry: Entry::default(),
                            rows_affected,
                            last_insert_id,
                        })
                    });
                    let _ = request.reply.send(written.map_err(Into::into));
                }
                Op::Commit => {
                    let mut bytes = Vec::new();
                    let recorded = session.changeset_strm(&mut bytes);
                    drop(session);
                    // The changes reach the database when the group applies the entry.
                    let ended = recorded.and_then(|()| tx.rollback());
                    let answer = ended.map_err(EngineError::from).map(|()| {
                        let mut entry = Entry::default();
                        if !bytes.is_empty() {
                            entry.steps.push(Step::Changes(bytes));
                            self.in_flight += 1;
                        }
                        Answer::Written(Outcome {
                            entry,
                            rows_affected,
                            last_insert_id,
                        })
                    });
                    let _ = request.reply.send(answer);
                    self.deferred.extend(waiting);
                    return Ended::Done;
                }
                Op::Begin => {
                    let _ = request.reply.send(Err(EngineError::Unexpected(
                        "BEGIN inside an open transaction".into(),
                    )));
                }
                Op::Rollback | Op::Close => {
                    drop(session);
                    let rolled = tx.rollback().map_err(EngineError::from);
                    let _ = request.reply.send(rolled.map(|()| Answer::Done));
                    self.deferred.extend(waiting);
                    return Ended::Done;
                }
                Op::Settle
                | Op::Apply(_)
                | Op::Snapshot(_)
                | Op::Restore(..)
                | Op::Meta(_)
                | Op::Checksum => {
                    unreachable!("system requests are never the owner's")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(lock_wait: Duration) -> EngineHandle {
        let engine = Engine::in_memory().expect("engine");
        EngineHandle::spawn(engine, Arc::default(), lock_wait)
    }

    /// Stands in for the Raft group: applies an entry at the next index, then settles it.
    async fn commit_entry(h: &EngineHandle, entry: Entry) {
        let next = h.progress().applied_next.load(Ordering::Acquire) + 1;
        h.progress().log_next.store(next, Ordering::Release);
        let results = h
            .apply(vec![Applying {
                next_index: next,
                meta: vec![],
                entry: Some(entry),
            }])
            .await
            .expect("apply");
        assert_eq!(results, vec![Ok(())]);
        h.settle();
    }

    async fn write(h: &EngineHandle, session: u64, sql: &str) {
        let outcome = h
            .write(session, vec![sql.into()], &[])
            .await
            .expect("write");
        commit_entry(h, outcome.entry).await;
    }

    async fn count(h: &EngineHandle, session: u64) -> i64 {
        let rows = h
            .query(session, "SELECT COUNT(*) FROM t", &[])
            .await
            .expect("count");
        match rows.rows[0][0] {
            Value::Integer(n) => n,
            ref other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn writes_change_nothing_until_their_entry_is_applied() {
        let h = handle(Duration::from_secs(5));
        write(&h, 1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
        let outcome = h
            .write(1, vec!["INSERT INTO t (v) VALUES ('a')".into()], &[])
            .await
            .expect("insert");
        assert_eq!(outcome.last_insert_id, 1);
        assert_eq!(count(&h, 2).await, 0, "not applied yet");
        // The gate is closed while the entry is in flight: a second write waits for it.
        let second = {
            let h = h.clone();
            tokio::spawn(async move {
                h.write(3, vec!["INSERT INTO t (v) VALUES ('b')".into()], &[])
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second write waits at the gate");
        commit_entry(&h, outcome.entry).await;
        let second = second.await.expect("join").expect("second write");
        assert_eq!(
            second.last_insert_id, 2,
            "computed on the state that includes the first"
        );
        commit_entry(&h, second.entry).await;
        assert_eq!(count(&h, 2).await, 2);
    }

    #[tokio::test]
    async fn transactions_commit_or_roll_back_as_a_whole() {
        let h = handle(Duration::from_secs(5));
        write(&h, 1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
        h.begin(1).await.expect("begin");
        h.write(1, vec!["INSERT INTO t (v) VALUES ('a')".into()], &[])
            .await
            .expect("insert");
        assert_eq!(count(&h, 1).await, 1, "a transaction sees its own writes");
        h.rollback(1).await.expect("rollback");
        assert_eq!(count(&h, 1).await, 0);

        h.begin(1).await.expect("begin");
        h.write(
            1,
            vec!["INSERT INTO t (v) VALUES (?)".into()],
            &[Value::Text("b".into())],
        )
        .await
        .expect("insert");
        let outcome = h.commit(1).await.expect("commit").expect("was open");
        assert_eq!(
            outcome.entry.steps.len(),
            1,
            "the commit carries the transaction's changeset"
        );
        commit_entry(&h, outcome.entry).await;
        assert_eq!(count(&h, 2).await, 1);
    }

    #[tokio::test]
    async fn other_sessions_wait_for_a_transaction_and_time_out_with_1205() {
        let h = handle(Duration::from_millis(300));
        write(&h, 1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
        h.begin(1).await.expect("begin");
        h.write(1, vec!["INSERT INTO t (v) VALUES ('a')".into()], &[])
            .await
            .expect("insert");
        // Session 2 waits behind the open transaction, then gives up.
        let waited = h.query(2, "SELECT COUNT(*) FROM t", &[]).await;
        assert!(matches!(waited, Err(EngineError::LockWait)), "{waited:?}");
        assert_eq!(waited.expect_err("timed out").to_mysql("app").code, 1205);
        // A waiting reader is served as soon as the transaction commits.
        let reader = {
            let h = h.clone();
            tokio::spawn(async move { count(&h, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = h.commit(1).await.expect("commit").expect("was open");
        assert_eq!(reader.await.expect("join"), 0, "served before the apply");
        commit_entry(&h, outcome.entry).await;
        assert_eq!(count(&h, 2).await, 1);
        // DDL inside a transaction is refused rather than committing implicitly.
        h.begin(3).await.expect("begin");
        assert!(matches!(
            h.write(
                3,
                vec!["CREATE TABLE u (id INTEGER PRIMARY KEY)".into()],
                &[]
            )
            .await,
            Err(EngineError::DdlInTransaction)
        ));
        h.close(3);
        assert_eq!(
            count(&h, 4).await,
            1,
            "closing a session rolls its transaction back and frees the engine"
        );
    }

    #[tokio::test]
    async fn another_leaders_entry_rolls_an_open_transaction_back() {
        let h = handle(Duration::from_secs(5));
        write(&h, 1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").await;
        // An entry made elsewhere (as a new leader would send it).
        let mut other = Engine::in_memory().expect("engine");
        other
            .write(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".into()])
            .expect("schema");
        let elsewhere = other
            .execute_bound(&[("INSERT INTO t (v) VALUES ('from the new leader')", &[])])
            .expect("execute");
        h.begin(1).await.expect("begin");
        h.write(1, vec!["INSERT INTO t (v) VALUES ('local')".into()], &[])
            .await
            .expect("insert");
        commit_entry(&h, elsewhere.entry).await;
        let rows = h.query(2, "SELECT v FROM t", &[]).await.expect("select");
        assert_eq!(
            rows.rows,
            vec![vec![Value::Text("from the new leader".into())]]
        );
        let commit = h.commit(1).await;
        assert!(
            matches!(commit, Err(EngineError::Aborted)),
            "the owner learns its transaction is gone: {commit:?}"
        );
        assert_eq!(commit.expect_err("aborted").to_mysql("app").code, 1213);
    }
}
