//! An engine on its own thread, serving every client session and the Raft state machine.
//!
//! SQLite's session object (which records a transaction's row changes for replication)
//! borrows the connection, so an open transaction cannot be parked in an async task between
//! client commands. Here one thread owns the connection; while a session's transaction is open
//! the thread serves only that session and queues everyone else's requests, so transactions are
//! serializable. A queued request waits at most `lock_wait` and then gets MySQL's 1205 (lock
//! wait timeout, retryable). A session that disconnects has its transaction rolled back.
//!
//! **Speculative execution on the leader.** A write (an autocommit statement, or a transaction
//! at COMMIT) is executed, its changes recorded as an [`Entry`] and *kept* inside one open
//! SQLite transaction, each write under a savepoint of its own, and the entry is handed to the
//! group in execution order ([`Proposal`]). The next write executes at once on top of it, so a
//! group commits a stream of writes instead of one at a time. When the group applies an entry
//! this leader made, in order, its changes are already here: only its bookkeeping is written,
//! and once every speculative write is applied the SQLite transaction commits. Anything else —
//! another leader's entry, a proposal that failed, a restore — rolls the unapplied writes back
//! to the savepoint of the first one and the entries are applied the ordinary way, which is
//! also how followers apply everything. Nothing speculative is ever shown as committed: a read
//! that saw speculative rows reports the last one it saw ([`Read::seen`]) and the caller waits
//! until that write is applied (committed by the group) before answering.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Columns, Engine, EngineError, Entry, Outcome, Rows, Step, is_ddl};

/// Session number of the Raft state machine's own requests.
const SYSTEM: u64 = 0;

/// Who made an entry: an engine instance and its write number.
pub type ProposalId = (u64, u64);

/// One committed log entry for the state machine: its bookkeeping and, for writes, its data.
#[derive(Debug, Clone)]
pub struct Applying {
    /// Log position (exclusive end: index + 1) this entry brings the replica to.
    pub next_index: u64,
    /// Bookkeeping to store with it (applied log id, membership), see [`crate::engine::META_TABLE`].
    pub meta: Vec<(&'static str, Vec<u8>)>,
    /// The data change, for write entries.
    pub entry: Option<Entry>,
    /// Which engine made it, if it says.
    pub proposal: Option<ProposalId>,
}

/// How the group decided a proposal.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Committed and applied here.
    Applied,
    /// Committed, but its changes did not apply (on any replica).
    Refused(String),
    /// Not confirmed: it may still commit.
    Unknown(String),
}

/// A write executed here, for the group to commit. Proposals leave the engine in execution
/// order and must reach the log in that order.
#[derive(Debug)]
pub struct Proposal {
    /// Who made it.
    pub id: ProposalId,
    /// Its changes.
    pub entry: Entry,
    /// Where the decision goes (to the session waiting for its COMMIT).
    pub decided: oneshot::Sender<Decision>,
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
    /// The proposal with this write number is decided; `committed` if the group has it.
    Settle {
        seq: u64,
        committed: bool,
    },
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

    /// Whether the op needs every speculative write applied first (it reads the data as the
    /// group has it).
    fn needs_quiet(&self) -> bool {
        matches!(self, Op::Snapshot(_) | Op::Checksum)
    }
}

/// A write's result for its session.
#[derive(Debug)]
pub struct Written {
    /// What it did.
    pub outcome: Outcome,
    /// For a write that changed something: the group's decision, to wait for before OK.
    pub commit: Option<oneshot::Receiver<Decision>>,
    /// For a transaction that changed nothing: the last speculative write its reads may have
    /// seen, to wait for before OK.
    pub seen: Option<u64>,
}

/// A read's result.
#[derive(Debug)]
pub struct Read {
    /// The rows.
    pub rows: Rows,
    /// The last speculative write the rows may include: answer only once it is applied.
    pub seen: Option<u64>,
}

/// What the engine answered.
#[derive(Debug)]
enum Answer {
    Rows(Read),
    Written(Written),
    Shape(usize, Columns),
    Applied(Vec<Result<(), String>>),
    Meta(Option<Vec<u8>>),
    Checksum([u8; 32]),
    Done,
}

struct Request {
    session: u64,
    op: Op,
    at: Instant,
    reply: oneshot::Sender<Result<Answer, EngineError>>,
}

/// Positions shared between the engine thread, the Raft log and readers.
#[derive(Debug, Default)]
pub struct Progress {
    /// One past the last index in the Raft log (0 when empty). Set by the log store.
    pub log_next: AtomicU64,
    /// One past the last index applied to this engine.
    pub applied_next: AtomicU64,
    /// The highest write number of this engine's own writes applied.
    pub applied_seq: AtomicU64,
    /// One past the last index whose data is committed to the file, where the readers see
    /// it (the applied position lags here while speculative writes hold the file's
    /// transaction open).
    pub durable_next: AtomicU64,
    applied_changed: tokio::sync::Notify,
}

impl Progress {
    /// Waits until entries up to `index` (inclusive) are applied here.
    pub async fn wait_applied(&self, index: u64) {
        self.wait_until(|p| p.applied_next.load(Ordering::Acquire) > index)
            .await;
    }

    /// Waits until this engine's write number `seq` is applied.
    pub async fn wait_seq(&self, seq: u64) {
        self.wait_until(|p| p.applied_seq.load(Ordering::Acquire) >= seq)
            .await;
    }

    async fn wait_until(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let notified = self.applied_changed.notified();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    /// Records where the engine's data stands when it is opened: entries up to `next_index`
    /// were applied by an earlier run, and Raft will not apply them again.
    pub fn opened_at(&self, next_index: u64) {
        self.applied_next.fetch_max(next_index, Ordering::AcqRel);
        self.durable_next.fetch_max(next_index, Ordering::AcqRel);
        self.changed();
    }

    fn changed(&self) {
        self.applied_changed.notify_waiters();
    }
}

/// Stops a client's statement that runs past its time limit or is named by `KILL QUERY`,
/// through SQLite's progress handler (called every [`WATCH_EVERY`] virtual machine steps).
/// Reads are always watched; a write only when it runs alone in its SQLite transaction
/// (see `State::speculate`): SQLite rolls back the whole enclosing transaction when a write is
/// interrupted, and a transaction shared with other sessions' speculative writes or applied
/// entries must never be.
#[derive(Debug)]
struct Watch {
    /// The session whose read is running; [`SYSTEM`] while none is.
    running: AtomicU64,
    /// When the running read must stop, in milliseconds since `epoch`.
    deadline_ms: AtomicU64,
    /// The session a `KILL QUERY` named, until its read stops.
    killed: AtomicU64,
    epoch: Instant,
}

/// Virtual machine steps between two looks at the clock: well under a millisecond.
const WATCH_EVERY: i32 = 4000;

impl Watch {
    fn new() -> Self {
        Self {
            running: AtomicU64::new(SYSTEM),
            deadline_ms: AtomicU64::new(u64::MAX),
            killed: AtomicU64::new(SYSTEM),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the running read must stop now.
    fn expired(&self) -> bool {
        let running = self.running.load(Ordering::Acquire);
        running != SYSTEM
            && (self.killed.load(Ordering::Acquire) == running
                || self.now_ms() >= self.deadline_ms.load(Ordering::Acquire))
    }

    /// Runs `statement` for `session` under `limit`, and names why it stopped if it was.
    fn run<T>(
        &self,
        session: u64,
        limit: Duration,
        statement: impl FnOnce() -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .killed
            .compare_exchange(session, SYSTEM, Ordering::AcqRel, Ordering::Acquire);
        self.deadline_ms
            .store(self.now_ms().saturating_add(limit_ms), Ordering::Release);
        self.running.store(session, Ordering::Release);
        let result = statement();
        self.running.store(SYSTEM, Ordering::Release);
        let killed = self
            .killed
            .compare_exchange(session, SYSTEM, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        match result {
            Err(EngineError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)))
                if failure.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                Err(if killed {
                    EngineError::Killed
                } else {
                    EngineError::TimedOut(limit)
                })
            }
            other => other,
        }
    }
}

/// Reads served beside the engine thread, on read-only connections to the same file (SQLite's
/// WAL lets them read while the engine writes). They see what is committed to the file
/// ([`Progress::durable_next`]), so a read goes to them only when that covers the position it
/// must observe; reads inside a transaction, and reads that must see more, stay on the engine
/// thread. A reader never holds up a write, an open transaction, or the state machine.
#[derive(Debug)]
pub struct Readers {
    requests: Sender<ReadRequest>,
    watches: Vec<Arc<Watch>>,
}

struct ReadRequest {
    session: u64,
    sql: String,
    params: Vec<Value>,
    reply: oneshot::Sender<Result<Rows, EngineError>>,
}

impl Readers {
    /// Opens `count` readers on the database file at `path`, with the catalog views of
    /// `database`; their reads run under `engine`'s time limits.
    pub fn spawn(
        path: &std::path::Path,
        database: &str,
        count: usize,
        engine: &EngineHandle,
    ) -> Result<Self, EngineError> {
        let (requests, inbox) = std::sync::mpsc::channel::<ReadRequest>();
        let inbox = Arc::new(std::sync::Mutex::new(inbox));
        let mut watches = Vec::with_capacity(count);
        for i in 0..count {
            let reader = Engine::open_reader(path)?.with_catalog(database)?;
            let watch = Arc::new(Watch::new());
            let watching = watch.clone();
            reader
                .connection()
                .progress_handler(WATCH_EVERY, Some(move || watching.expired()))?;
            let (inbox, watch_here, limits) =
                (inbox.clone(), watch.clone(), engine.read_limits.clone());
            std::thread::Builder::new()
                .name(format!("quartet-db-reader-{i}"))
                .spawn(move || {
                    loop {
                        let next = inbox.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(request) = next else { return };
                        let limit = limits.of(request.session);
                        let rows = watch_here.run(request.session, limit, || {
                            reader.query_snapshot(&request.sql, &request.params)
                        });
                        let _ = request.reply.send(rows);
                    }
                })
                .map_err(|e| EngineError::Unexpected(format!("starting a reader: {e}")))?;
            watches.push(watch);
        }
        Ok(Self { requests, watches })
    }

    /// Runs a read-only query for `session` on the next free reader.
    pub async fn query(
        &self,
        session: u64,
        sql: &str,
        params: &[Value],
    ) -> Result<Rows, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(ReadRequest {
                session,
                sql: sql.to_owned(),
                params: params.to_vec(),
                reply,
            })
            .map_err(|_| EngineError::Stopped)?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Stops `session`'s read on whichever reader runs it (`KILL QUERY`).
    pub fn kill_query(&self, session: u64) {
        if session != SYSTEM {
            for watch in &self.watches {
                watch.killed.store(session, Ordering::Release);
            }
        }
    }
}

/// A cloneable handle on the engine thread.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    requests: Sender<Request>,
    progress: Arc<Progress>,
    watch: Arc<Watch>,
    read_limits: ReadLimits,
}

/// Each session's read time limit: the engine's, or lower where the session asked
/// (`SET max_execution_time`). Shared by the engine thread and the readers.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    most: Duration,
    lowered: Arc<std::sync::Mutex<HashMap<u64, Duration>>>,
}

impl ReadLimits {
    fn new(most: Duration) -> Self {
        Self {
            most,
            lowered: Arc::default(),
        }
    }

    fn lowered(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Duration>> {
        self.lowered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `session`'s reads may run.
    pub fn of(&self, session: u64) -> Duration {
        self.lowered()
            .get(&session)
            .map_or(self.most, |l| (*l).min(self.most))
    }
}

impl EngineHandle {
    /// Moves `engine` onto its own thread. Queued requests wait at most `lock_wait` behind
    /// another session's transaction or at the write gate. Returns the stream of proposals,
    /// in execution order, for the caller to put to the group.
    pub fn spawn(
        engine: Engine,
        progress: Arc<Progress>,
        lock_wait: Duration,
    ) -> (Self, mpsc::UnboundedReceiver<Proposal>) {
        Self::spawn_with(
            engine,
            progress,
            Limits {
                lock_wait,
                ..Limits::default()
            },
        )
    }

    /// [`EngineHandle::spawn`] with every limit named.
    pub fn spawn_with(
        engine: Engine,
        progress: Arc<Progress>,
        limits: Limits,
    ) -> (Self, mpsc::UnboundedReceiver<Proposal>) {
        let watch = Arc::new(Watch::new());
        let watching = watch.clone();
        engine
            .connection()
            .progress_handler(WATCH_EVERY, Some(move || watching.expired()))
            .expect("the engine's connection is not in use yet");
        let lock_wait = limits.lock_wait;
        let (requests, inbox) = std::sync::mpsc::channel();
        let (proposals, proposed) = mpsc::unbounded_channel();
        let shared = progress.clone();
        let thread_watch = watch.clone();
        let read_limits = ReadLimits::new(limits.max_statement);
        let thread_limits = read_limits.clone();
        let mut instance = [0u8; 8];
        getrandom::fill(&mut instance).expect("the OS random source is available");
        std::thread::Builder::new()
            .name("quartet-db-engine".into())
            .spawn(move || {
                Worker {
                    engine,
                    watch: thread_watch,
                    st: State {
                        progress: shared,
                        lock_wait,
                        limits,
                        read_limits: thread_limits,
                        instance: u64::from_le_bytes(instance),
                        next_seq: 1,
                        spec: VecDeque::new(),
                        orphans: HashSet::new(),
                        outer_open: false,
                        remembered: HashMap::new(),
                        client: None,
                        proposals,
                        deferred: VecDeque::new(),
                        aborted: HashMap::new(),
                    },
                }
                .serve(&inbox)
            })
            .expect("the engine thread starts");
        (
            Self {
                requests,
                progress,
                watch,
                read_limits,
            },
            proposed,
        )
    }

    /// The positions this engine shares.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    async fn ask(&self, session: u64, op: Op) -> Result<Answer, EngineError> {
        let (reply, answer) = oneshot::channel();
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
    ) -> Result<Read, EngineError> {
        let op = Op::Query {
            sql: sql.to_owned(),
            params: params.to_vec(),
        };
        match self.ask(session, op).await? {
            Answer::Rows(read) => Ok(read),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs writes for `session`: inside its open transaction, or (autocommit) executed and
    /// proposed to the group.
    pub async fn write(
        &self,
        session: u64,
        statements: Vec<String>,
        params: &[Value],
    ) -> Result<Written, EngineError> {
        let op = Op::Write {
            statements,
            params: params.to_vec(),
        };
        match self.ask(session, op).await? {
            Answer::Written(written) => Ok(written),
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

    /// Ends `session`'s transaction, if any, proposing what it wrote.
    pub async fn commit(&self, session: u64) -> Result<Option<Written>, EngineError> {
        match self.ask(session, Op::Commit).await? {
            Answer::Written(written) => Ok(Some(written)),
            _ => Ok(None),
        }
    }

    /// Rolls back `session`'s transaction, if any.
    pub async fn rollback(&self, session: u64) -> Result<(), EngineError> {
        self.ask(session, Op::Rollback).await.map(drop)
    }

    /// Stops `session`'s read if one is running (`KILL QUERY`): it fails with 1317. Does not
    /// wait. Writes are never stopped (see [`Watch`]).
    pub fn kill_query(&self, session: u64) {
        if session != SYSTEM {
            self.watch.killed.store(session, Ordering::Release);
        }
    }

    /// `session`'s reads may run at most `limit` (capped at the engine's own limit).
    pub fn set_read_limit(&self, session: u64, limit: Duration) {
        self.read_limits.lowered().insert(session, limit);
    }

    /// How long `session`'s reads may run.
    pub fn read_limit(&self, session: u64) -> Duration {
        self.read_limits.of(session)
    }

    /// The session is gone: roll back whatever it left open. Does not wait.
    pub fn close(&self, session: u64) {
        self.read_limits.lowered().remove(&session);
        self.tell(session, Op::Close);
    }

    /// Proposal `seq` is decided (`committed`: the group has it). Does not wait.
    pub fn settle(&self, seq: u64, committed: bool) {
        self.tell(SYSTEM, Op::Settle { seq, committed });
    }

    fn tell(&self, session: u64, op: Op) {
        let (reply, _) = oneshot::channel();
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

    /// Writes a consistent copy of the applied data to `path`.
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

/// What the engine lets one session spend.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request waits behind another session's transaction or the write gate
    /// before 1205.
    pub lock_wait: Duration,
    /// The longest a read, or a write running alone, may run (a session may lower it, never raise it).
    pub max_statement: Duration,
    /// How long a transaction may sit with no statement from its session while another
    /// request waits for it; then it is rolled back.
    pub idle_transaction: Duration,
    /// The most bytes one write (a statement, or a transaction at COMMIT) may replicate.
    /// Followers take an entry whole, heartbeats wait behind it, and one that takes longer
    /// to ship and store than the election timeout costs the group its leader.
    pub max_entry: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            lock_wait: Duration::from_secs(50),
            max_statement: Duration::from_secs(30),
            idle_transaction: Duration::from_secs(10),
            max_entry: 8 << 20,
        }
    }
}

/// Why a session's transaction was rolled back under it.
#[derive(Debug, Clone, Copy)]
enum Abort {
    /// A change of leader discarded the state it began on.
    LeaderChanged,
    /// It sat idle past the limit while others waited.
    Idle(Duration),
}

impl Abort {
    fn error(self) -> EngineError {
        match self {
            Abort::LeaderChanged => EngineError::Aborted,
            Abort::Idle(limit) => EngineError::IdleTransaction(limit),
        }
    }
}

/// The engine thread: the engine, and the state it keeps beside it (separate, so a client
/// transaction's SQLite session can borrow the engine while the state changes).
struct Worker {
    engine: Engine,
    watch: Arc<Watch>,
    st: State,
}

/// The engine thread's state.
struct State {
    progress: Arc<Progress>,
    lock_wait: Duration,
    limits: Limits,
    /// Sessions' read limits.
    read_limits: ReadLimits,
    /// This engine's identity in proposals.
    instance: u64,
    next_seq: u64,
    /// Own writes kept in the open transaction and not yet applied, in order.
    spec: VecDeque<u64>,
    /// Own writes proposed and then rolled back here: they may still be applied later, and
    /// no new write may execute before they are decided.
    orphans: HashSet<u64>,
    /// Whether the SQLite transaction holding speculative writes (and applied ones not yet
    /// committed with it) is open.
    outer_open: bool,
    /// Bookkeeping written inside the open transaction, to write again after a rollback.
    remembered: HashMap<&'static str, Vec<u8>>,
    /// The write number reserved by the client transaction in progress (its savepoint's).
    client: Option<u64>,
    proposals: mpsc::UnboundedSender<Proposal>,
    /// Requests waiting for the write gate, a quiet state or a transaction to end.
    deferred: VecDeque<Request>,
    /// Sessions whose transaction was rolled back under them, and why.
    aborted: HashMap<u64, Abort>,
}

/// A write result with nothing to replicate (yet): inside a transaction, or one that changed
/// nothing.
fn unreplicated(rows_affected: u64, last_insert_id: i64, seen: Option<u64>) -> Written {
    Written {
        outcome: Outcome {
            entry: Entry::default(),
            rows_affected,
            last_insert_id,
        },
        commit: None,
        seen,
    }
}

fn savepoint(seq: u64) -> String {
    format!("quartet_spec_{seq}")
}

impl Worker {
    fn serve(mut self, inbox: &Receiver<Request>) {
        loop {
            self.st.expire_deferred();
            let ready = self.st.deferred.iter().position(|r| self.st.ready(r));
            let request = match ready.and_then(|i| self.st.deferred.remove(i)) {
                Some(r) => r,
                None => match inbox.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) if !self.st.ready(&r) => {
                        self.st.deferred.push_back(r);
                        continue;
                    }
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            if let Some(begin) = self.outside(request)
                && let Some(system) = self.transaction(begin, inbox)
            {
                // A state machine request that ended the transaction, never a BEGIN.
                let _ = self.outside(system);
            }
            if !self.st.outer_open {
                // Everything applied is in the file now: readers may serve it.
                let applied = self.st.progress.applied_next.load(Ordering::Acquire);
                self.st
                    .progress
                    .durable_next
                    .store(applied, Ordering::Release);
            }
        }
    }

    /// Answers one request outside any transaction. Returns a BEGIN to serve.
    fn outside(&mut self, request: Request) -> Option<Request> {
        if let Some(abort) = self.st.aborted.remove(&request.session) {
            // The session's transaction was rolled back under it: say so once, before
            // anything else of the session runs outside a transaction.
            match request.op {
                Op::Query { .. } | Op::Write { .. } | Op::Describe { .. } | Op::Commit => {
                    let _ = request.reply.send(Err(abort.error()));
                    return None;
                }
                _ => {}
            }
        }
        let read_limit = self.st.read_limit(request.session);
        let answer = match request.op {
            Op::Begin => return Some(request),
            Op::Query { sql, params } => self
                .watch
                .run(request.session, read_limit, || {
                    self.engine.query_bound(&sql, &params)
                })
                .map(|rows| {
                    Answer::Rows(Read {
                        rows,
                        seen: self.st.spec.back().copied(),
                    })
                }),
            Op::Write { statements, params } => self
                .st
                .speculate(
                    &self.engine,
                    &statements,
                    &params,
                    (&self.watch, request.session, read_limit),
                )
                .map(Answer::Written),
            Op::Describe { sql } => self.engine.describe(&sql).map(|(p, c)| Answer::Shape(p, c)),
            Op::Commit | Op::Rollback => Ok(Answer::Done),
            Op::Close => {
                self.st.aborted.remove(&request.session);
                Ok(Answer::Done)
            }
            Op::Settle { seq, committed } => self
                .st
                .settle(&self.engine, seq, committed)
                .map(|()| Answer::Done),
            Op::Apply(entries) => self.st.apply(&self.engine, entries).map(Answer::Applied),
            Op::Snapshot(path) => self.engine.snapshot_to(&path).map(|()| Answer::Done),
            Op::Restore(path, next_index) => self.st.discard(&self.engine).and_then(|()| {
                self.st.orphans.clear();
                let restored = self.engine.restore_from(&path);
                if restored.is_ok() {
                    self.st.advance(next_index);
                }
                restored.map(|()| Answer::Done)
            }),
            Op::Meta(key) => self.engine.meta(key).map(Answer::Meta),
            Op::Checksum => self.engine.checksum().map(Answer::Checksum),
        };
        let _ = request.reply.send(answer);
        None
    }

    /// Serves `begin`'s session's transaction until it ends. Returns a state machine request
    /// that ended it, to serve next.
    fn transaction(&mut self, begin: Request, inbox: &Receiver<Request>) -> Option<Request> {
        let owner = begin.session;
        // The transaction runs under the savepoint its write will keep if it commits.
        let seq = self.st.next_seq;
        let opened = self
            .st
            .open_outer(&self.engine)
            .and_then(|()| self.engine.exec(&format!("SAVEPOINT {}", savepoint(seq))));
        if let Err(e) = opened {
            let _ = begin.reply.send(Err(e));
            return None;
        }
        self.st.client = Some(seq);
        let mut session = match crate::engine::recorder(self.engine.connection()) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.st.end_client(&self.engine);
                let _ = begin.reply.send(Err(e.into()));
                return None;
            }
        };
        let _ = begin.reply.send(Ok(Answer::Done));
        let (mut rows_affected, mut last_insert_id) = (0u64, 0i64);
        let mut last_heard = Instant::now();
        let mut waiting: VecDeque<Request> = std::mem::take(&mut self.st.deferred);
        loop {
            // Requests of other sessions wait their turn, but never longer than the lock wait.
            let now = Instant::now();
            let lock_wait = self.st.lock_wait;
            let (expired, kept): (VecDeque<_>, VecDeque<_>) = waiting.drain(..).partition(|r| {
                r.session != owner && r.session != SYSTEM && now.duration_since(r.at) >= lock_wait
            });
            waiting = kept;
            for request in expired {
                let _ = request.reply.send(Err(EngineError::LockWait));
            }
            // The state machine's requests cannot wait for the owner. Own writes applied in
            // order, blank entries and bookkeeping are taken in stride; anything else means
            // the speculative state is no longer the group's, and the transaction (begun on
            // it) is rolled back.
            let urgent = waiting.iter().position(|r| {
                r.session == SYSTEM
                    && matches!(
                        r.op,
                        Op::Apply(_) | Op::Restore(..) | Op::Settle { .. } | Op::Meta(_)
                    )
            });
            if let Some(i) = urgent {
                let request = waiting.remove(i).expect("position is in range");
                let in_stride = match &request.op {
                    Op::Meta(_) => true,
                    Op::Settle { seq, committed } => *committed || !self.st.spec.contains(seq),
                    Op::Apply(entries) => {
                        let mut expected = self.st.spec.iter();
                        entries.iter().all(|a| {
                            a.entry.is_none()
                                || a.proposal.is_some_and(|(instance, seq)| {
                                    instance == self.st.instance && expected.next() == Some(&seq)
                                })
                        })
                    }
                    _ => false,
                };
                if in_stride {
                    let answer = match request.op {
                        Op::Meta(key) => self.engine.meta(key).map(Answer::Meta),
                        Op::Settle { seq, committed } => self
                            .st
                            .settle(&self.engine, seq, committed)
                            .map(|()| Answer::Done),
                        Op::Apply(entries) => {
                            self.st.apply(&self.engine, entries).map(Answer::Applied)
                        }
                        _ => unreachable!("only in-stride requests get here"),
                    };
                    let _ = request.reply.send(answer);
                    continue;
                }
                drop(session);
                let _ = self.st.end_client(&self.engine);
                tracing::warn!(
                    session = owner,
                    "transaction rolled back: the speculative state it began on was discarded"
                );
                self.st.aborted.insert(owner, Abort::LeaderChanged);
                self.st.deferred = waiting;
                return Some(request);
            }
            let position = waiting.iter().position(|r| r.session == owner);
            let idle_limit = self.st.limits.idle_transaction;
            if position.is_none() && !waiting.is_empty() && last_heard.elapsed() >= idle_limit {
                // Others wait for a transaction its session has left idle: roll it back.
                drop(session);
                let _ = self.st.end_client(&self.engine);
                tracing::warn!(
                    session = owner,
                    idle_ms = idle_limit.as_millis() as u64,
                    "transaction rolled back: idle while other sessions waited"
                );
                self.st.aborted.insert(owner, Abort::Idle(idle_limit));
                self.st.deferred = waiting;
                return None;
            }
            let request = match position.and_then(|i| waiting.remove(i)) {
                Some(r) => r,
                None => match inbox.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) if r.session == owner => r,
                    Ok(r) => {
                        waiting.push_back(r);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return None,
                },
            };
            let conn = self.engine.connection();
            let read_limit = self.st.read_limit(owner);
            match request.op {
                Op::Query { sql, params } => {
                    let rows = self
                        .watch
                        .run(owner, read_limit, || Engine::query_on(conn, &sql, &params));
                    let _ = request
                        .reply
                        .send(rows.map(|rows| Answer::Rows(Read { rows, seen: None })));
                }
                Op::Describe { sql } => {
                    let _ = request
                        .reply
                        .send(Engine::describe_on(conn, &sql).map(|(p, c)| Answer::Shape(p, c)));
                }
                Op::Write { statements, params } => {
                    if statements.iter().any(|s| is_ddl(s)) {
                        let _ = request.reply.send(Err(EngineError::DdlInTransaction));
                        last_heard = Instant::now();
                        continue;
                    }
                    let mut result = Ok(());
                    for sql in &statements {
                        match conn.execute(sql, rusqlite::params_from_iter(params.iter())) {
                            Ok(n) => {
                                rows_affected = n as u64;
                                last_insert_id = conn.last_insert_rowid();
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    let written = result.map(|()| {
                        Answer::Written(unreplicated(rows_affected, last_insert_id, None))
                    });
                    let _ = request.reply.send(written.map_err(Into::into));
                }
                Op::Commit => {
                    let mut bytes = Vec::new();
                    let recorded = session.changeset_strm(&mut bytes);
                    drop(session);
                    let answer = match recorded {
                        Err(e) => {
                            let _ = self.st.end_client(&self.engine);
                            Err(e.into())
                        }
                        Ok(()) if bytes.is_empty() => {
                            // Nothing to replicate; its reads may have seen speculative rows.
                            let seen = self.st.spec.back().copied();
                            self.st.end_client(&self.engine).map(|()| {
                                Answer::Written(unreplicated(rows_affected, last_insert_id, seen))
                            })
                        }
                        Ok(()) if bytes.len() > self.st.limits.max_entry => {
                            let size = bytes.len();
                            self.st
                                .end_client(&self.engine)
                                .and(Err(EngineError::EntryTooLarge {
                                    size,
                                    limit: self.st.limits.max_entry,
                                }))
                        }
                        Ok(()) => self.st.keep_client(bytes, rows_affected, last_insert_id),
                    };
                    let _ = request.reply.send(answer);
                    self.st.deferred.extend(waiting);
                    return None;
                }
                Op::Begin => {
                    let _ = request.reply.send(Err(EngineError::Unexpected(
                        "BEGIN inside an open transaction".into(),
                    )));
                }
                Op::Rollback | Op::Close => {
                    drop(session);
                    let rolled = self.st.end_client(&self.engine).map(|()| Answer::Done);
                    let _ = request.reply.send(rolled);
                    self.st.deferred.extend(waiting);
                    return None;
                }
                Op::Settle { .. }
                | Op::Apply(_)
                | Op::Snapshot(_)
                | Op::Restore(..)
                | Op::Meta(_)
                | Op::Checksum => {
                    unreachable!("system requests are never the owner's")
                }
            }
            last_heard = Instant::now();
        }
    }
}

impl State {
    /// How long `session`'s reads may run.
    fn read_limit(&self, session: u64) -> Duration {
        self.read_limits.of(session)
    }

    fn gate_open(&self) -> bool {
        if !self.spec.is_empty() {
            // Steady leadership: write on top of the speculative ones, unless something
            // waits for them to drain.
            return !self.deferred.iter().any(|r| r.op.needs_quiet());
        }
        self.orphans.is_empty()
            && self.progress.applied_next.load(Ordering::Acquire)
                >= self.progress.log_next.load(Ordering::Acquire)
    }

    fn ready(&self, request: &Request) -> bool {
        if request.op.needs_quiet() {
            return self.spec.is_empty();
        }
        !request.op.writes() || self.gate_open()
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

    fn open_outer(&mut self, engine: &Engine) -> Result<(), EngineError> {
        if !self.outer_open {
            engine.exec("BEGIN")?;
            self.outer_open = true;
            self.remembered.clear();
        }
        Ok(())
    }

    /// Commits the open transaction once nothing speculative is left in it and no client
    /// transaction is in progress.
    fn close_outer_if_settled(&mut self, engine: &Engine) -> Result<(), EngineError> {
        if self.outer_open && self.spec.is_empty() && self.client.is_none() {
            engine.exec("COMMIT")?;
            self.outer_open = false;
            self.remembered.clear();
        }
        Ok(())
    }

    /// Rolls back to savepoint `seq` (dropping it and everything after it) and writes the
    /// bookkeeping of applied entries again, which may have been recorded after it.
    fn roll_back_to(&mut self, engine: &Engine, seq: u64) -> Result<(), EngineError> {
        let name = savepoint(seq);
        engine.exec(&format!("ROLLBACK TO {name}; RELEASE {name}"))?;
        let meta: Vec<(&str, &[u8])> = self
            .remembered
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .collect();
        engine.put_meta(&meta)
    }

    /// Rolls back every speculative write not yet applied (and whatever came after them,
    /// a client transaction included), keeping what was applied; those writes become orphans.
    fn discard(&mut self, engine: &Engine) -> Result<(), EngineError> {
        if let Some(&first) = self.spec.front() {
            self.roll_back_to(engine, first)?;
            self.client = None;
            tracing::info!(
                writes = self.spec.len(),
                "speculative writes rolled back; they apply only if the group committed them"
            );
            self.orphans.extend(self.spec.drain(..));
        }
        self.close_outer_if_settled(engine)
    }

    /// Executes an autocommit write under its own savepoint and proposes it.
    ///
    /// A write that runs alone — no speculative write, applied entry or client transaction
    /// shares the SQLite transaction it opens — is stopped at its session's time limit or by
    /// `KILL QUERY` (`watched`); SQLite then rolls back that transaction, which held only this
    /// write. One that runs beside others is not stopped, as the rollback would take them too.
    fn speculate(
        &mut self,
        engine: &Engine,
        statements: &[String],
        params: &[Value],
        watched: (&Watch, u64, Duration),
    ) -> Result<Written, EngineError> {
        let alone = !self.outer_open && self.spec.is_empty() && self.client.is_none();
        self.open_outer(engine)?;
        let seq = self.next_seq;
        let name = savepoint(seq);
        engine.exec(&format!("SAVEPOINT {name}"))?;
        let bound: Vec<(&str, &[Value])> =
            statements.iter().map(|s| (s.as_str(), params)).collect();
        let executed = if alone {
            let (watch, session, limit) = watched;
            watch.run(session, limit, || engine.execute_kept(&bound))
        } else {
            engine.execute_kept(&bound)
        };
        let executed = match executed {
            Err(e) if alone && engine.connection().is_autocommit() => {
                // Stopped, and SQLite rolled back the transaction it ran alone in.
                self.outer_open = false;
                self.remembered.clear();
                return Err(e);
            }
            other => other,
        };
        match executed {
            Ok(outcome) if outcome.entry.size() > self.limits.max_entry => {
                let size = outcome.entry.size();
                engine.exec(&format!("ROLLBACK TO {name}; RELEASE {name}"))?;
                self.close_outer_if_settled(engine)?;
                Err(EngineError::EntryTooLarge {
                    size,
                    limit: self.limits.max_entry,
                })
            }
            Ok(outcome) if !outcome.entry.steps.is_empty() => Ok(self.propose(seq, outcome)),
            other => {
                engine.exec(&format!("RELEASE {name}"))?;
                self.close_outer_if_settled(engine)?;
                let seen = self.spec.back().copied();
                other.map(|outcome| Written {
                    outcome,
                    commit: None,
                    seen,
                })
            }
        }
    }

    /// Hands a kept write (under savepoint `seq`) to the group.
    fn propose(&mut self, seq: u64, outcome: Outcome) -> Written {
        self.next_seq += 1;
        self.spec.push_back(seq);
        let (decided, commit) = oneshot::channel();
        let _ = self.proposals.send(Proposal {
            id: (self.instance, seq),
            entry: outcome.entry.clone(),
            decided,
        });
        Written {
            outcome,
            commit: Some(commit),
            seen: None,
        }
    }

    fn settle(&mut self, engine: &Engine, seq: u64, committed: bool) -> Result<(), EngineError> {
        if !committed && self.spec.contains(&seq) {
            self.discard(engine)?;
        }
        self.orphans.remove(&seq);
        Ok(())
    }

    /// Whether `applying` is the next speculative write of this engine, already in place.
    fn is_next_own(&self, applying: &Applying) -> bool {
        applying.entry.is_some()
            && applying.proposal.is_some_and(|(instance, seq)| {
                instance == self.instance && self.spec.front() == Some(&seq)
            })
    }

    fn apply(
        &mut self,
        engine: &Engine,
        entries: Vec<Applying>,
    ) -> Result<Vec<Result<(), String>>, EngineError> {
        let mut results = Vec::with_capacity(entries.len());
        for applying in entries {
            let meta: Vec<(&str, &[u8])> = applying
                .meta
                .iter()
                .map(|(k, v)| (*k, v.as_slice()))
                .collect();
            if self.is_next_own(&applying) {
                // Its changes are already here: record that it is applied.
                engine.put_meta(&meta)?;
                self.remember(&applying.meta);
                self.spec.pop_front();
                if let Some((_, seq)) = applying.proposal {
                    self.progress.applied_seq.store(seq, Ordering::Release);
                }
                self.close_outer_if_settled(engine)?;
                results.push(Ok(()));
            } else if applying.entry.is_none() && self.outer_open {
                // Blank and membership entries change no data: bookkeeping only.
                engine.put_meta(&meta)?;
                self.remember(&applying.meta);
                results.push(Ok(()));
            } else {
                self.discard(engine)?;
                let own = applying
                    .proposal
                    .filter(|(instance, _)| *instance == self.instance)
                    .map(|(_, seq)| seq);
                match engine.apply_with_meta(applying.entry.as_ref(), &meta) {
                    Ok(()) => {
                        if let Some(seq) = own {
                            self.progress.applied_seq.store(seq, Ordering::Release);
                        }
                        results.push(Ok(()));
                    }
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
                if let Some(seq) = own {
                    self.orphans.remove(&seq);
                }
            }
            self.advance(applying.next_index);
        }
        Ok(results)
    }

    fn remember(&mut self, meta: &[(&'static str, Vec<u8>)]) {
        for (key, value) in meta {
            self.remembered.insert(key, value.clone());
        }
    }

    fn advance(&self, next_index: u64) {
        self.progress
            .applied_next
            .store(next_index, Ordering::Release);
        self.progress.changed();
    }

    /// Ends the client transaction without keeping it (if a discard has not already).
    fn end_client(&mut self, engine: &Engine) -> Result<(), EngineError> {
        if let Some(seq) = self.client.take() {
            self.roll_back_to(engine, seq)?;
        }
        self.close_outer_if_settled(engine)
    }

    /// Keeps a committed client transaction (under its savepoint) as a speculative write and
    /// proposes it.
    fn keep_client(
        &mut self,
        changes: Vec<u8>,
        rows_affected: u64,
        last_insert_id: i64,
    ) -> Result<Answer, EngineError> {
        let seq = self
            .client
            .take()
            .ok_or_else(|| EngineError::Unexpected("no client transaction to keep".into()))?;
        let mut entry = Entry::default();
        entry.steps.push(Step::Changes(changes));
        Ok(Answer::Written(self.propose(
            seq,
            Outcome {
                entry,
                rows_affected,
                last_insert_id,
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        h: EngineHandle,
        proposals: mpsc::UnboundedReceiver<Proposal>,
    }

    fn harness(lock_wait: Duration) -> Harness {
        let engine = Engine::in_memory().expect("engine");
        let (h, proposals) = EngineHandle::spawn(engine, Arc::default(), lock_wait);
        Harness { h, proposals }
    }

    impl Harness {
        /// Stands in for the Raft group: takes the next proposal and applies it at the next
        /// index, as a committed entry, then settles it.
        async fn commit_next(&mut self) -> Proposal {
            let proposal = self.proposals.recv().await.expect("a proposal");
            self.apply(Some(proposal.entry.clone()), Some(proposal.id))
                .await;
            self.h.settle(proposal.id.1, true);
            proposal
        }

        async fn apply(&self, entry: Option<Entry>, proposal: Option<ProposalId>) {
            let next = self.h.progress().applied_next.load(Ordering::Acquire) + 1;
            self.h.progress().log_next.store(next, Ordering::Release);
            let results = self
                .h
                .apply(vec![Applying {
                    next_index: next,
                    meta: vec![],
                    entry,
                    proposal,
                }])
                .await
                .expect("apply");
            assert_eq!(results, vec![Ok(())]);
        }

        async fn write(&mut self, session: u64, sql: &str) -> Written {
            self.h
                .write(session, vec![sql.into()], &[])
                .await
                .expect("write")
        }

        async fn count(&self, session: u64) -> (i64, Option<u64>) {
            let read = self
                .h
                .query(session, "SELECT COUNT(*) FROM t", &[])
                .await
                .expect("count");
            match read.rows.rows[0][0] {
                Value::Integer(n) => (n, read.seen),
                ref other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn writes_run_ahead_of_their_commit_and_reads_say_what_they_saw() {
        let mut t = harness(Duration::from_secs(5));
        t.write(1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .await;
        t.commit_next().await;
        let first = t.write(1, "INSERT INTO t (v) VALUES ('a')").await;
        let second = t.write(2, "INSERT INTO t (v) VALUES ('b')").await;
        assert_eq!(
            (first.outcome.last_insert_id, second.outcome.last_insert_id),
            (1, 2),
            "the second write executed on top of the first, before either committed"
        );
        let (rows, seen) = t.count(3).await;
        assert_eq!(rows, 2);
        let newest = seen.expect("the read saw speculative writes");
        let first_proposal = t.commit_next().await;
        let second_proposal = t.commit_next().await;
        assert!(
            first_proposal.id.1 < second_proposal.id.1,
            "proposals leave in execution order"
        );
        assert_eq!(second_proposal.id.1, newest);
        assert_eq!(
            t.h.progress().applied_seq.load(Ordering::Acquire),
            newest,
            "applying its own entries marks them committed"
        );
        assert_eq!(t.count(3).await, (2, None), "nothing speculative is left");
    }

    #[tokio::test]
    async fn another_leaders_entry_discards_unapplied_writes_and_applies_in_their_place() {
        let mut t = harness(Duration::from_secs(5));
        t.write(1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .await;
        t.commit_next().await;
        let local = t.write(1, "INSERT INTO t (v) VALUES ('local')").await;
        assert!(local.commit.is_some());
        // The entry another leader made, from the same committed state.
        let mut other = Engine::in_memory().expect("engine");
        other
            .write(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".into()])
            .expect("schema");
        let elsewhere = other
            .execute_bound(&[("INSERT INTO t (v) VALUES ('from the new leader')", &[])])
            .expect("execute");
        t.apply(Some(elsewhere.entry), Some((7, 1))).await;
        let read = t.h.query(2, "SELECT v FROM t", &[]).await.expect("select");
        assert_eq!(
            read.rows.rows,
            vec![vec![Value::Text("from the new leader".into())]]
        );
        assert_eq!(read.seen, None);
        // The discarded write is an orphan: new writes wait until it is decided.
        let waiting = {
            let h = t.h.clone();
            tokio::spawn(async move {
                h.write(3, vec!["INSERT INTO t (v) VALUES ('next')".into()], &[])
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !waiting.is_finished(),
            "the gate holds writes for the orphan"
        );
        let orphan = t.proposals.recv().await.expect("the local proposal");
        t.h.settle(orphan.id.1, false);
        let next = waiting
            .await
            .expect("join")
            .expect("write after the orphan");
        assert_eq!(next.outcome.last_insert_id, 2);
    }

    #[tokio::test]
    async fn transactions_commit_or_roll_back_as_a_whole() {
        let mut t = harness(Duration::from_secs(5));
        t.write(1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .await;
        t.commit_next().await;
        t.h.begin(1).await.expect("begin");
        t.write(1, "INSERT INTO t (v) VALUES ('a')").await;
        assert_eq!(t.count(1).await.0, 1, "a transaction sees its own writes");
        t.h.rollback(1).await.expect("rollback");
        assert_eq!(t.count(1).await.0, 0);

        t.h.begin(1).await.expect("begin");
        t.h.write(
            1,
            vec!["INSERT INTO t (v) VALUES (?)".into()],
            &[Value::Text("b".into())],
        )
        .await
        .expect("insert");
        let written = t.h.commit(1).await.expect("commit").expect("was open");
        assert_eq!(
            written.outcome.entry.steps.len(),
            1,
            "the commit carries the transaction's changeset"
        );
        t.commit_next().await;
        assert_eq!(t.count(2).await, (1, None));
    }

    #[tokio::test]
    async fn other_sessions_wait_for_a_transaction_and_time_out_with_1205() {
        let mut t = harness(Duration::from_millis(300));
        t.write(1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .await;
        t.commit_next().await;
        t.h.begin(1).await.expect("begin");
        t.write(1, "INSERT INTO t (v) VALUES ('a')").await;
        let waited = t.h.query(2, "SELECT COUNT(*) FROM t", &[]).await;
        assert!(matches!(waited, Err(EngineError::LockWait)), "{waited:?}");
        assert_eq!(waited.expect_err("timed out").to_mysql("app").code, 1205);
        t.h.commit(1).await.expect("commit");
        t.commit_next().await;
        assert_eq!(t.count(2).await.0, 1);
        t.h.begin(3).await.expect("begin");
        assert!(matches!(
            t.h.write(
                3,
                vec!["CREATE TABLE u (id INTEGER PRIMARY KEY)".into()],
                &[]
            )
            .await,
            Err(EngineError::DdlInTransaction)
        ));
        t.h.close(3);
        assert_eq!(
            t.count(4).await.0,
            1,
            "closing a session rolls its transaction back and frees the engine"
        );
    }

    #[tokio::test]
    async fn an_open_transaction_survives_its_predecessors_commit_but_not_another_leader() {
        let mut t = harness(Duration::from_secs(5));
        t.write(1, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            .await;
        t.commit_next().await;
        // A write in flight, then a transaction on top of it.
        t.write(1, "INSERT INTO t (v) VALUES ('first')").await;
        t.h.begin(2).await.expect("begin");
        t.write(2, "INSERT INTO t (v) VALUES ('second')").await;
        t.commit_next().await; // the first write commits while the transaction is open
        let written = t.h.commit(2).await.expect("commit").expect("open");
        assert!(written.commit.is_some());
        t.commit_next().await;
        assert_eq!(t.count(3).await, (2, None));

        // Now another leader's entry arrives while a transaction is open.
        t.h.begin(4).await.expect("begin");
        t.write(4, "INSERT INTO t (v) VALUES ('doomed')").await;
        let mut other = Engine::in_memory().expect("engine");
        other
            .write(&["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".into()])
            .expect("schema");
        let elsewhere = other
            .execute_bound(&[("INSERT INTO t (id, v) VALUES (10, 'elsewhere')", &[])])
            .expect("execute");
        t.apply(Some(elsewhere.entry), None).await;
        let commit = t.h.commit(4).await;
        assert!(
            matches!(commit, Err(EngineError::Aborted)),
            "the owner learns its transaction is gone: {commit:?}"
        );
        assert_eq!(commit.expect_err("aborted").to_mysql("app").code, 1213);
        assert_eq!(t.count(5).await, (3, None));
    }
}
