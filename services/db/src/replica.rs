//! One replica of a shard group: the engine thread, the Raft instance around it, and the
//! operations the MySQL front and the admin API call.
//!
//! - **Writes** run on the leader only. The engine executes them and hands back an entry
//!   (see [`crate::actor`]); the entry is proposed to the group and the client hears OK only
//!   after a majority holds it in its log and it has been applied here.
//! - **Reads** are linearizable by default: the leader confirms it is still leader with a round
//!   of heartbeats acknowledged by a majority (Raft's read index), waits until it has applied
//!   that far, and only then reads. Concurrent reads share one round. A confirmed round also
//!   grants a **lease** of a quarter of the minimum election timeout: followers refuse to vote
//!   for anyone else until a whole election timeout after they last heard from this leader
//!   (openraft's leader lease), so within the lease no other leader can exist and reads are
//!   served locally without a round (every write acknowledged before the read has been applied
//!   here, since acknowledgement waits for that). The lease is measured on the monotonic clock
//!   from the moment the round started, so a paused process resumes without one. A session may instead
//!   accept data up to a bound old (`SET quartet_read_staleness_ms = N`) and read from any
//!   replica that heard from its leader within that bound and has applied what the leader had
//!   committed then.
//! - **Errors** a client can retry are MySQL errors naming what happened: not the leader
//!   (1290, with the leader's MySQL address), no leader yet (1290), a commit whose outcome is
//!   unknown because the group could not confirm it in time (1180).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use rusqlite::types::Value;
use tokio::sync::{mpsc, oneshot};

use crate::actor::{Decision, EngineHandle, Progress, Proposal, Readers, Written};
use crate::dialect::MysqlError;
use crate::engine::{Columns, Engine, EngineError, Outcome, Rows};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Contacts, Network, RaftService, request_election};
use crate::raft::state_machine::StateMachine;
use crate::raft::{Command, Member, NodeId, Raft};

/// A replica this many entries or fewer behind the leader counts as caught up.
pub const CAUGHT_UP: u64 = 1000;

/// How long a queued statement waits behind another session's transaction (InnoDB's default).
pub const LOCK_WAIT: Duration = Duration::from_secs(50);

/// Read-only connections per replica serving reads beside the engine thread.
const READERS: usize = 2;

/// How long adding a learner waits for it to hold the whole log before undoing the addition.
pub const LEARNER_CATCH_UP: Duration = Duration::from_secs(10);

/// Why a replica could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The engine refused (SQL errors, lock waits...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// This replica is not the leader.
    #[error("{}", not_leader_message(.0))]
    NotLeader(Option<(NodeId, Member)>),
    /// The group did not confirm in time; for a write, whether it committed is unknown.
    #[error("{0}")]
    Unconfirmed(String),
    /// The group committed the entry but its changes did not apply (on any replica).
    #[error("the write was refused when applied: {0}")]
    Refused(String),
    /// An admin request that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    /// openraft failed.
    #[error("raft: {0}")]
    Raft(String),
}

fn not_leader_message(leader: &Option<(NodeId, Member)>) -> String {
    match leader {
        Some((id, member)) => format!(
            "this replica is not the leader; retry on node {id} (mysql {})",
            member.mysql
        ),
        None => "this group has no leader right now (an election is under way); retry shortly"
            .to_owned(),
    }
}

impl ReplicaError {
    /// The MySQL error a client sees, for a statement run in `database`.
    pub fn to_mysql(&self, database: &str) -> MysqlError {
        let error = |code, sqlstate, message: String| MysqlError {
            code,
            sqlstate,
            message,
        };
        match self {
            ReplicaError::Engine(e) => e.to_mysql(database),
            ReplicaError::NotLeader(_) => error(1290, "HY000", self.to_string()),
            ReplicaError::Unconfirmed(_) => error(1180, "HY000", self.to_string()),
            ReplicaError::Refused(_) | ReplicaError::Invalid(_) | ReplicaError::Raft(_) => {
                error(1105, "HY000", self.to_string())
            }
        }
    }
}

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Inside the session's own transaction (on the leader, serializable).
    Transaction,
    /// Linearizable: through the leader's read index.
    Linearizable,
    /// From this replica if its data is at most this old.
    Stale(Duration),
}

/// Raft timing and group formation.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// This node's id in the group (non-zero).
    pub node_id: NodeId,
    /// How peers and clients reach this node.
    pub me: Member,
    /// The group to form on first start; empty: a group of this node alone, unless `join`.
    pub initial_members: BTreeMap<NodeId, Member>,
    /// Wait to be added by an existing group instead of forming one.
    pub join: bool,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout (randomised between this and twice this).
    pub election_timeout: Duration,
    /// How long a write or a read-index round may wait for a majority.
    pub commit_timeout: Duration,
    /// A snapshot is taken after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Shared secret between replicas (empty: none).
    pub secret: String,
    /// The database that always exists (listed in `information_schema.schemata`).
    pub database: String,
    /// On new storage, abstain — grant no votes, stand for no election — until admitted
    /// (`admit`, or `initialize`): a replica whose data was lost has forgotten the votes it
    /// cast, and must not cast them again before it has been removed and added afresh.
    pub abstain_until_admitted: bool,
    /// What one session may make the engine spend (lock wait, read time, idle transactions).
    pub limits: crate::actor::Limits,
}

impl GroupOptions {
    /// A group of this node alone serving `database`, with quick timings: tests and
    /// embedded use.
    pub fn alone(database: &str) -> Self {
        Self {
            node_id: 1,
            me: Member::default(),
            initial_members: BTreeMap::new(),
            join: false,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(150),
            commit_timeout: Duration::from_secs(5),
            snapshot_every: 1000,
            secret: String::new(),
            database: database.to_owned(),
            abstain_until_admitted: false,
            limits: crate::actor::Limits::default(),
        }
    }
}

/// One replica.
pub struct Replica {
    /// Read-only connections serving reads the file already answers.
    readers: Readers,
    /// What one session may make the engine spend.
    limits: crate::actor::Limits,
    id: NodeId,
    raft: Arc<Raft>,
    engine: EngineHandle,
    reads: mpsc::Sender<oneshot::Sender<Result<u64, ReplicaError>>>,
    /// The last confirmed read round: when it started, in which term, at which read index.
    lease: Arc<std::sync::Mutex<Option<(Instant, u64, u64)>>>,
    /// How long a confirmed round lets reads skip the next one.
    lease_length: Duration,
    /// Set while this leader hands leadership over: it serves no linearizable reads.
    transferring: std::sync::atomic::AtomicBool,
    commit_timeout: Duration,
    /// When this replica last accepted its leader's append, and the leader's commit index then.
    contact: Arc<std::sync::Mutex<Option<(Instant, u64)>>>,
    secret: String,
    /// The addresses this replica advertises.
    me: Member,
    /// Made when this replica's storage was, kept with it: another one means the data was lost.
    incarnation: String,
    /// Set while it abstains from votes and elections (new storage, not yet admitted).
    abstaining: Arc<std::sync::atomic::AtomicBool>,
    /// When each peer last answered this replica.
    contacts: Contacts,
    /// A peer silent for longer than this is not counted as alive.
    alive_within: Duration,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The incarnation of the storage in `dir`, and whether it was made just now: read from its
/// `incarnation` file, or made (16 random bytes, hex) and written there durably (a temporary
/// file synced, renamed into place, the directory synced) when the storage is new.
fn incarnation(dir: &Path) -> std::io::Result<(String, bool)> {
    use std::io::Write as _;
    let path = dir.join("incarnation");
    match std::fs::read_to_string(&path) {
        Ok(found) if !found.trim().is_empty() => return Ok((found.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let made: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temporary = dir.join("incarnation.new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(made.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok((made, true))
}

impl Replica {
    /// Opens the replica's data in `dir` (created if absent) and starts its Raft instance.
    pub async fn start(dir: &Path, options: GroupOptions) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("storage.path {}: {e}", dir.display()))?;
        let (incarnation, new_storage) = incarnation(dir)
            .map_err(|e| anyhow::anyhow!("storage.path {}: incarnation: {e}", dir.display()))?;
        let abstaining = Arc::new(std::sync::atomic::AtomicBool::new(
            options.abstain_until_admitted && new_storage,
        ));
        let progress = Arc::new(Progress::default());
        let engine = Engine::open(&dir.join("data.sqlite"))
            .and_then(|e| e.with_catalog(&options.database))
            .map_err(|e| anyhow::anyhow!("storage.path {}: {e}", dir.display()))?;
        let log = LogStore::open(&dir.join("raft-log.sqlite"), progress.clone())
            .map_err(|e| anyhow::anyhow!("storage.path {}: raft log: {e}", dir.display()))?;
        let (engine, proposals) = EngineHandle::spawn_with(engine, progress, options.limits);
        let readers = Readers::spawn(
            &dir.join("data.sqlite"),
            &options.database,
            READERS,
            &engine,
        )
        .map_err(|e| anyhow::anyhow!("storage.path {}: readers: {e}", dir.display()))?;
        let state_machine = StateMachine::new(engine.clone(), dir.to_path_buf());
        let heartbeat = options.heartbeat.as_millis() as u64;
        let election = options.election_timeout.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "quartet-db".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_every),
            max_in_snapshot_log_to_keep: options.snapshot_every / 2,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()?;
        let contacts = Contacts::default();
        let raft = Arc::new(
            Raft::new(
                options.node_id,
                Arc::new(config),
                Network::new(&options.secret, contacts.clone()),
                log,
                state_machine,
            )
            .await?,
        );
        if !options.join && !raft.is_initialized().await? {
            let members = if options.initial_members.is_empty() {
                BTreeMap::from([(options.node_id, options.me.clone())])
            } else {
                options.initial_members.clone()
            };
            if members.contains_key(&options.node_id) {
                match raft.initialize(members).await {
                    Ok(()) => tracing::info!(node = options.node_id, "group initialised"),
                    Err(e) => tracing::info!(error = %e, "group already initialised elsewhere"),
                }
            }
        }
        tokio::spawn(propose(
            raft.clone(),
            engine.clone(),
            proposals,
            options.commit_timeout,
        ));
        let (reads, queue) = mpsc::channel(4096);
        let lease = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(read_rounds(
            raft.clone(),
            queue,
            options.commit_timeout,
            lease.clone(),
        ));
        if abstaining.load(Ordering::Acquire) {
            raft.runtime_config().elect(false);
            tracing::info!(
                node = options.node_id,
                "new storage: no votes and no elections until admitted"
            );
        }
        Ok(Arc::new(Self {
            readers,
            limits: options.limits,
            id: options.node_id,
            raft,
            engine,
            reads,
            commit_timeout: options.commit_timeout,
            lease,
            lease_length: options.election_timeout / 4,
            transferring: std::sync::atomic::AtomicBool::new(false),
            contact: Arc::default(),
            secret: options.secret,
            me: options.me,
            incarnation,
            abstaining,
            contacts,
            alive_within: options.election_timeout * 2,
        }))
    }

    /// Forms a group of this replica alone, when it belongs to none: how an operator starts
    /// a group whose replicas all wait to be added. Refused when it is already a member (of
    /// this group or any), so that a replica whose data was lost never forms a second one.
    pub async fn initialize(&self) -> Result<(), ReplicaError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        if initialized {
            return Err(ReplicaError::Invalid(format!(
                "node {} is already a member of a group",
                self.id
            )));
        }
        self.admit();
        self.raft
            .initialize(BTreeMap::from([(self.id, self.me.clone())]))
            .await
            .map_err(|e| ReplicaError::Invalid(e.to_string()))?;
        tracing::info!(node = self.id, "group formed on request");
        Ok(())
    }

    /// Ends abstaining: this replica votes and stands for election again. Whoever admits it
    /// vouches that it is new to the group, or was removed and added afresh since its data
    /// was lost.
    pub fn admit(&self) {
        if self.abstaining.swap(false, Ordering::AcqRel) {
            self.raft.runtime_config().elect(true);
            tracing::info!(node = self.id, "admitted: votes and stands for election");
        }
    }

    /// Waits until the group has a leader this replica knows of; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ReplicaError> {
        let mut metrics = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(leader) = metrics.borrow().current_leader {
                    return Ok(leader);
                }
                if metrics.changed().await.is_err() {
                    return Err(ReplicaError::Raft("raft stopped".into()));
                }
            }
        })
        .await
        .map_err(|_| ReplicaError::NotLeader(None))?
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft instance (for metrics and shutdown).
    pub fn raft(&self) -> &Arc<Raft> {
        &self.raft
    }

    /// The peer-facing gRPC service of this replica.
    pub fn raft_service(&self) -> quartet_proto::db::v1::raft_server::RaftServer<RaftService> {
        let contact = self.contact.clone();
        RaftService::server(
            self.id,
            self.raft.clone(),
            Arc::new(move |commit| {
                *contact.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), commit));
            }),
            &self.secret,
            self.abstaining.clone(),
        )
    }

    /// Stops `session`'s running read, if any (`KILL QUERY`).
    pub fn kill_query(&self, session: u64) {
        self.engine.kill_query(session);
        self.readers.kill_query(session);
    }

    /// What one session may make the engine spend.
    pub fn limits(&self) -> crate::actor::Limits {
        self.limits
    }

    /// Caps how long `session`'s reads may run (`SET max_execution_time`).
    pub fn set_read_limit(&self, session: u64, limit: Duration) {
        self.engine.set_read_limit(session, limit);
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
            .unwrap_or_default();
        Some((id, member))
    }

    fn ensure_leader(&self) -> Result<(), ReplicaError> {
        match self.leader() {
            Some((id, _)) if id == self.id => Ok(()),
            other => Err(ReplicaError::NotLeader(other)),
        }
    }

    /// Waits until reads here may observe everything committed before the call. Returns the
    /// log position a read must observe (none inside a transaction: its own state).
    async fn read_barrier(&self, consistency: Consistency) -> Result<Option<u64>, ReplicaError> {
        match consistency {
            Consistency::Transaction => Ok(None),
            Consistency::Stale(bound) => {
                if self.leader().is_some_and(|(id, _)| id == self.id) {
                    // The leader's applied data is never older than the bound.
                    let applied = self.engine.progress().applied_next.load(Ordering::Acquire);
                    return Ok(Some(applied.saturating_sub(1)));
                }
                let contact = *self.contact.lock().unwrap_or_else(|p| p.into_inner());
                match contact {
                    Some((at, commit)) if at.elapsed() <= bound => {
                        tokio::time::timeout(
                            bound.saturating_sub(at.elapsed()),
                            self.engine.progress().wait_applied(commit),
                        )
                        .await
                        .map(|()| Some(commit))
                        .map_err(|_| {
                            ReplicaError::Unconfirmed(format!(
                                "this replica is more than {} ms behind its leader; read from the leader or allow more staleness",
                                bound.as_millis()
                            ))
                        })
                    }
                    _ => Err(ReplicaError::Unconfirmed(format!(
                        "this replica has not heard from a leader within {} ms; read from the leader or allow more staleness",
                        bound.as_millis()
                    ))),
                }
            }
            Consistency::Linearizable => {
                self.ensure_leader()?;
                if self.transferring.load(Ordering::Acquire) {
                    return Err(ReplicaError::NotLeader(None));
                }
                let leased = {
                    let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
                    let metrics = self.raft.metrics().borrow().clone();
                    lease.filter(|(started, term, _)| {
                        started.elapsed() < self.lease_length
                            && metrics.current_term == *term
                            && metrics.state == ServerState::Leader
                    })
                };
                if let Some((_, _, index)) = leased {
                    return tokio::time::timeout(
                        self.commit_timeout,
                        self.engine.progress().wait_applied(index),
                    )
                    .await
                    .map(|()| Some(index))
                    .map_err(|_| {
                        ReplicaError::Unconfirmed(
                            "the leader could not apply its log in time".into(),
                        )
                    });
                }
                let (tx, rx) = oneshot::channel();
                self.reads
                    .send(tx)
                    .await
                    .map_err(|_| ReplicaError::Raft("the read queue has stopped".into()))?;
                let index = rx
                    .await
                    .map_err(|_| ReplicaError::Raft("the read queue has stopped".into()))??;
                tokio::time::timeout(
                    self.commit_timeout,
                    self.engine.progress().wait_applied(index),
                )
                .await
                .map(|()| Some(index))
                .map_err(|_| {
                    ReplicaError::Unconfirmed("the leader could not apply its log in time".into())
                })
            }
        }
    }

    /// Runs a read for `session`.
    pub async fn query(
        &self,
        session: u64,
        sql: &str,
        params: &[Value],
        consistency: Consistency,
    ) -> Result<Rows, ReplicaError> {
        let must_see = self.read_barrier(consistency).await?;
        // When the file holds everything applied here, a reader serves the read, so it waits
        // neither behind another session's transaction nor behind the state machine. Not
        // merely the position the barrier named: a lease's read index may predate writes
        // acknowledged since, which the read must see too (the engine thread's connection
        // always does).
        let progress = self.engine.progress();
        let applied = progress.applied_next.load(Ordering::Acquire);
        if let Some(index) = must_see
            && applied > index
            && progress.durable_next.load(Ordering::Acquire) >= applied
        {
            return Ok(self.readers.query(session, sql, params).await?);
        }
        let read = self.engine.query(session, sql, params).await?;
        self.committed(read.seen).await?;
        Ok(read.rows)
    }

    /// Waits until this leader's speculative write `seen` (which a read may have observed)
    /// is applied, so nothing uncommitted is ever answered.
    async fn committed(&self, seen: Option<u64>) -> Result<(), ReplicaError> {
        let Some(seq) = seen else {
            return Ok(());
        };
        tokio::time::timeout(self.commit_timeout, self.engine.progress().wait_seq(seq))
            .await
            .map_err(|_| {
                ReplicaError::Unconfirmed(format!(
                    "the rows read include a write the group did not confirm within {} ms; retry",
                    self.commit_timeout.as_millis()
                ))
            })
    }

    /// Parameter count and result columns of `sql` (no consistency needed: schema only).
    pub async fn describe(
        &self,
        session: u64,
        sql: &str,
    ) -> Result<(usize, Columns), ReplicaError> {
        Ok(self.engine.describe(session, sql).await?)
    }

    /// Runs writes for `session`: inside its transaction, or committed through the group.
    pub async fn write(
        &self,
        session: u64,
        statements: Vec<String>,
        params: &[Value],
    ) -> Result<Outcome, ReplicaError> {
        self.ensure_leader()?;
        let written = self.engine.write(session, statements, params).await?;
        self.decided(written).await
    }

    /// Opens a transaction for `session` (on the leader only).
    pub async fn begin(&self, session: u64) -> Result<(), ReplicaError> {
        self.ensure_leader()?;
        Ok(self.engine.begin(session).await?)
    }

    /// Commits `session`'s transaction through the group.
    pub async fn commit(&self, session: u64) -> Result<(), ReplicaError> {
        match self.engine.commit(session).await? {
            Some(written) => self.decided(written).await.map(drop),
            None => Ok(()),
        }
    }

    /// Rolls back `session`'s transaction.
    pub async fn rollback(&self, session: u64) -> Result<(), ReplicaError> {
        Ok(self.engine.rollback(session).await?)
    }

    /// The session is gone.
    pub fn close(&self, session: u64) {
        self.engine.close(session);
    }

    /// Waits for the group's decision on a write (or, for one that changed nothing, for the
    /// speculative writes its reads may have seen).
    async fn decided(&self, written: Written) -> Result<Outcome, ReplicaError> {
        let Some(commit) = written.commit else {
            self.committed(written.seen).await?;
            return Ok(written.outcome);
        };
        match commit.await {
            Ok(Decision::Applied) => Ok(written.outcome),
            Ok(Decision::Refused(refusal)) => Err(ReplicaError::Refused(refusal)),
            Ok(Decision::Unknown(why)) => Err(ReplicaError::Unconfirmed(why)),
            Err(_) => Err(ReplicaError::Unconfirmed(
                "commit outcome unknown: the replica stopped while the write was being committed"
                    .into(),
            )),
        }
    }

    /// The group as this replica sees it.
    pub fn status(&self) -> GroupStatus {
        let alive = self.alive_within.as_millis() as u64;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let last_log = metrics.last_log_index;
        let contacts = self
            .contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let members = membership
            .nodes()
            .map(|(id, member)| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|m| m.map_or(0, |l| l.index));
                let heard = if *id == self.id {
                    Some(0)
                } else if metrics.state == ServerState::Leader {
                    contacts.get(id).map(|at| at.elapsed().as_millis() as u64)
                } else {
                    None
                };
                let lag = matched.map(|m| last_log.unwrap_or(0).saturating_sub(m));
                MemberStatus {
                    id: *id,
                    addr: member.addr.clone(),
                    mysql: member.mysql.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag,
                    last_heard_ms: heard,
                    healthy: metrics.state == ServerState::Leader
                        && (*id == self.id
                            || (lag.is_some_and(|lag| lag <= CAUGHT_UP)
                                && heard.is_some_and(|ms| ms <= alive))),
                }
            })
            .collect::<Vec<MemberStatus>>();
        let committed = if metrics.state == ServerState::Leader {
            // The highest index a majority of voters holds (the leader holds its whole log).
            let mut held: Vec<u64> = members
                .iter()
                .filter(|m| m.voter)
                .map(|m| {
                    if m.id == self.id {
                        last_log.unwrap_or(0)
                    } else {
                        m.matched.unwrap_or(0)
                    }
                })
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            held.get(held.len() / 2).copied()
        } else {
            self.contact
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|(_, commit)| commit)
        };
        GroupStatus {
            node: self.id,
            addr: self.me.addr.clone(),
            mysql: self.me.mysql.clone(),
            incarnation: self.incarnation.clone(),
            abstaining: self.abstaining.load(Ordering::Acquire),
            role: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: last_log,
            committed,
            applied: metrics.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Adds `member` as a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<(), ReplicaError> {
        if id == 0 {
            return Err(ReplicaError::Invalid("node id 0 is reserved".into()));
        }
        if member.addr.is_empty() {
            return Err(ReplicaError::Invalid(
                "the new node's addr is required".into(),
            ));
        }
        check_address("addr", &member.addr)?;
        if !member.mysql.is_empty() {
            check_address("mysql", &member.mysql)?;
        }
        let status = self.status();
        // Another replica's address would make that replica answer for the new node: for the
        // leader's own, openraft's core panicked. (Each RPC names its node too, so a replica
        // refuses one meant for another whatever the spelling of its address.)
        if let Some(other) = status
            .members
            .iter()
            .find(|m| m.id != id && m.addr == member.addr)
        {
            return Err(ReplicaError::Invalid(format!(
                "{} is the address of node {}: a learner needs a replica of its own",
                member.addr, other.id
            )));
        }
        let was_member = status.members.iter().any(|m| m.id == id);
        let addr = member.addr.clone();
        self.membership_call(self.raft.add_learner(id, member, true))
            .await?;
        // openraft may return before the learner holds the log (it does for one it cannot
        // reach); wait until its reported progress reaches the log's end, as promised.
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let mut metrics = self.raft.metrics();
        let wait = LEARNER_CATCH_UP.max(self.commit_timeout);
        let caught_up = tokio::time::timeout(wait, async {
            loop {
                let matched = metrics
                    .borrow()
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                if matched.is_some_and(|m| m >= target) {
                    return true;
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        if caught_up {
            return Ok(());
        }
        // Leave nothing behind: a learner that never catches up would stay in every
        // membership and every status.
        if !was_member {
            let removed = self
                .membership_call(
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false),
                )
                .await;
            if let Err(e) = removed {
                tracing::warn!(node = id, error = %e, "removing a learner that did not catch up failed");
            }
        }
        Err(ReplicaError::Unconfirmed(format!(
            "node {id} at {addr} did not catch up within {} ms (is it running, and is the address right?); it was not added",
            wait.as_millis()
        )))
    }

    /// Makes learners voters.
    pub async fn promote(&self, ids: BTreeSet<NodeId>) -> Result<(), ReplicaError> {
        let status = self.status();
        for id in &ids {
            if !status.members.iter().any(|m| m.id == *id) {
                return Err(ReplicaError::Invalid(format!(
                    "node {id} is not a member: add it as a learner first"
                )));
            }
        }
        self.membership_call(
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false),
        )
        .await
    }

    /// Removes nodes: voters leave the voting set and the group in one change; learners go.
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<(), ReplicaError> {
        let status = self.status();
        let voters: BTreeSet<NodeId> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        let remaining: Vec<&MemberStatus> = status
            .members
            .iter()
            .filter(|m| m.voter && !ids.contains(&m.id))
            .collect();
        if remaining.is_empty() {
            return Err(ReplicaError::Invalid(
                "refusing to remove every voter: the group would have none".into(),
            ));
        }
        for id in &ids {
            if !status.members.iter().any(|m| m.id == *id) {
                return Err(ReplicaError::Invalid(format!("node {id} is not a member")));
            }
        }
        // The voters left must include a live, caught-up majority, or the group would stall.
        let caught_up = remaining.iter().filter(|m| m.healthy).count();
        let majority = remaining.len() / 2 + 1;
        if caught_up < majority {
            return Err(ReplicaError::Invalid(format!(
                "refusing the removal: {} voters would remain, only {caught_up} of them alive and caught up, and a majority needs {majority}",
                remaining.len()
            )));
        }
        let leaving_voters: BTreeSet<NodeId> = voters.intersection(&ids).copied().collect();
        if !leaving_voters.is_empty() {
            self.membership_call(
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(leaving_voters.clone()), false),
            )
            .await?;
        }
        let learners: BTreeSet<NodeId> = ids.difference(&leaving_voters).copied().collect();
        if !learners.is_empty() {
            self.membership_call(
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(learners), false),
            )
            .await?;
        }
        Ok(())
    }

    async fn membership_call<T, F>(&self, call: F) -> Result<(), ReplicaError>
    where
        F: Future<Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, Member>>>>,
    {
        match tokio::time::timeout(Duration::from_secs(60), call).await {
            Err(_) => Err(ReplicaError::Unconfirmed(
                "the membership change was not confirmed within 60 s".into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(ReplicaError::NotLeader(
                    forward
                        .leader_id
                        .map(|id| (id, forward.leader_node.unwrap_or_default())),
                ))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ReplicaError::Invalid(e.to_string()))
            }
            Ok(Err(e)) => Err(ReplicaError::Raft(e.to_string())),
        }
    }

    /// Moves leadership to voter `to`: this leader stops heartbeating until the followers'
    /// leader lease lapses, `to` starts an election (its log is complete, so it wins), and
    /// this replica follows. openraft 0.9 has no TimeoutNow message; this is its equivalent.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ReplicaError> {
        self.ensure_leader()?;
        if to == self.id {
            return Ok(());
        }
        let status = self.status();
        let target = status
            .members
            .iter()
            .find(|m| m.id == to)
            .ok_or_else(|| ReplicaError::Invalid(format!("node {to} is not a member")))?;
        if !target.voter {
            return Err(ReplicaError::Invalid(format!(
                "node {to} is a learner; only a voter can lead"
            )));
        }
        let member = Member {
            addr: target.addr.clone(),
            mysql: target.mysql.clone(),
        };
        let config = self.raft.config().clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        // No lease reads from here on: this leader is about to stop being one.
        self.transferring.store(true, Ordering::Release);
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.raft.runtime_config().heartbeat(false);
        let result = async {
            // Followers refuse votes while their leader lease (the election timeout) lasts.
            tokio::time::sleep(Duration::from_millis(config.election_timeout_max)).await;
            while Instant::now() < deadline {
                // The target must hold the whole log to win.
                let caught_up = self
                    .status()
                    .members
                    .iter()
                    .find(|m| m.id == to)
                    .is_some_and(|m| m.lag == Some(0));
                if caught_up {
                    request_election(&member, &self.secret)
                        .await
                        .map_err(ReplicaError::Raft)?;
                    let mut metrics = self.raft.metrics();
                    let waited = tokio::time::timeout(Duration::from_secs(3), async {
                        loop {
                            if metrics.borrow().current_leader == Some(to) {
                                return;
                            }
                            if metrics.changed().await.is_err() {
                                return;
                            }
                        }
                    })
                    .await;
                    if waited.is_ok() && self.raft.metrics().borrow().current_leader == Some(to) {
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(config.heartbeat_interval)).await;
            }
            Err(ReplicaError::Unconfirmed(format!(
                "node {to} did not become leader within 10 s"
            )))
        }
        .await;
        self.raft.runtime_config().heartbeat(true);
        self.transferring.store(false, Ordering::Release);
        result
    }

    /// The data's checksum once at least `at_least` is applied here, and the applied index it
    /// was taken at.
    pub async fn checksum(&self, at_least: u64) -> Result<(u64, [u8; 32]), ReplicaError> {
        tokio::time::timeout(
            self.commit_timeout,
            self.engine.progress().wait_applied(at_least),
        )
        .await
        .map_err(|_| {
            ReplicaError::Unconfirmed(format!("index {at_least} is not applied here yet"))
        })?;
        // Taken on the engine thread between entries; the index read after it is the one it
        // reflects, because entries are only applied on that same thread.
        let sum = self.engine.checksum().await?;
        let applied = self
            .engine
            .progress()
            .applied_next
            .load(Ordering::Acquire)
            .saturating_sub(1);
        Ok((applied, sum))
    }
}

/// Checks that `addr` (the `field` of a new member) is `host:port`: a host of letters, digits,
/// '.', '-', '_' or a bracketed IPv6 address, and a port from 1 to 65535.
fn check_address(field: &str, addr: &str) -> Result<(), ReplicaError> {
    let invalid = || {
        ReplicaError::Invalid(format!(
            "{field} {addr:?} is not host:port (a host name or IP address, and a port from 1 to 65535)"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0) && !port.starts_with('+');
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

/// Puts the engine's writes to the group in the order it executed them (`client_write_ff`
/// only enqueues, so the log keeps that order), then hands each decision to the session
/// waiting for it and tells the engine.
async fn propose(
    raft: Arc<Raft>,
    engine: EngineHandle,
    mut proposals: mpsc::UnboundedReceiver<Proposal>,
    timeout: Duration,
) {
    while let Some(proposal) = proposals.recv().await {
        let (_, seq) = proposal.id;
        let command = Command {
            entry: proposal.entry,
            proposal: Some(proposal.id),
        };
        let responder = raft.client_write_ff(command).await;
        let engine = engine.clone();
        let decided = proposal.decided;
        tokio::spawn(async move {
            let unknown = |why: String| {
                Decision::Unknown(format!(
                    "commit outcome unknown: {why}; check before retrying"
                ))
            };
            let decision = match responder {
                Err(fatal) => unknown(fatal.to_string()),
                Ok(responder) => match tokio::time::timeout(timeout, responder).await {
                    Err(_) => unknown(format!(
                        "the group did not confirm the write within {} ms (no majority reachable?)",
                        timeout.as_millis()
                    )),
                    Ok(Err(_)) => unknown("raft stopped".into()),
                    Ok(Ok(Ok(response))) => match response.data.error {
                        None => Decision::Applied,
                        Some(refusal) => Decision::Refused(refusal),
                    },
                    // Leadership moved while the entry was in flight: it may already sit in
                    // a majority's logs and commit under the next leader.
                    Ok(Ok(Err(ClientWriteError::ForwardToLeader(forward)))) => unknown(format!(
                        "leadership moved (now {}) while the write was being committed",
                        forward
                            .leader_id
                            .map_or_else(|| "no leader".to_owned(), |id| format!("node {id}"))
                    )),
                    Ok(Ok(Err(e))) => unknown(e.to_string()),
                },
            };
            engine.settle(
                seq,
                matches!(decision, Decision::Applied | Decision::Refused(_)),
            );
            let _ = decided.send(decision);
        });
    }
}

/// The leader's read-index rounds: every read queued while a round runs waits for the next
/// one, which then serves them all (a round confirms leadership for reads that arrived before
/// it started, never after).
async fn read_rounds(
    raft: Arc<Raft>,
    mut queue: mpsc::Receiver<oneshot::Sender<Result<u64, ReplicaError>>>,
    timeout: Duration,
    lease: Arc<std::sync::Mutex<Option<(Instant, u64, u64)>>>,
) {
    while let Some(first) = queue.recv().await {
        let mut waiting = vec![first];
        while let Ok(next) = queue.try_recv() {
            waiting.push(next);
        }
        let started = Instant::now();
        let term = raft.metrics().borrow().current_term;
        let result = match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
            Err(_) => Err(ReplicaError::Unconfirmed(format!(
                "the leader could not confirm its leadership with a majority within {} ms",
                timeout.as_millis()
            ))),
            Ok(Ok((read, _))) => Ok(read.map_or(0, |id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ReplicaError::NotLeader(
                    f.leader_id
                        .map(|id| (id, f.leader_node.unwrap_or_default())),
                ))
            }
            Ok(Err(RaftError::APIError(e))) => Err(ReplicaError::Unconfirmed(e.to_string())),
            Ok(Err(e)) => Err(ReplicaError::Raft(e.to_string())),
        };
        let mut granted = lease.lock().unwrap_or_else(|p| p.into_inner());
        *granted = match &result {
            Ok(index) if raft.metrics().borrow().current_term == term => {
                Some((started, term, *index))
            }
            _ => None,
        };
        drop(granted);
        for waiter in waiting {
            let copy = match &result {
                Ok(index) => Ok(*index),
                Err(e) => Err(match e {
                    ReplicaError::NotLeader(l) => ReplicaError::NotLeader(l.clone()),
                    ReplicaError::Unconfirmed(m) => ReplicaError::Unconfirmed(m.clone()),
                    other => ReplicaError::Raft(other.to_string()),
                }),
            };
            let _ = waiter.send(copy);
        }
    }
}

/// A member as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// gRPC address.
    pub addr: String,
    /// MySQL address.
    pub mysql: String,
    /// Voter, or learner.
    pub voter: bool,
    /// The last log index the leader knows it holds (leader only).
    pub matched: Option<u64>,
    /// Entries behind the leader's log (leader only).
    pub lag: Option<u64>,
    /// Milliseconds since it last answered the leader (leader only; 0 for the leader itself).
    pub last_heard_ms: Option<u64>,
    /// Answered the leader within two election timeouts and at most 1000 entries behind: it
    /// counts towards a majority that can make progress (leader only; the leader itself is).
    pub healthy: bool,
}

/// The group as one replica sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct GroupStatus {
    /// The replica that answered.
    pub node: NodeId,
    /// Its gRPC address, as it advertises it (what to add it to a group with).
    pub addr: String,
    /// Its MySQL address, as it advertises it.
    pub mysql: String,
    /// Made with its storage and kept with it: a member reporting another one has lost its data.
    pub incarnation: String,
    /// Its storage is new and it has not been admitted: it grants no votes and stands for no
    /// election.
    pub abstaining: bool,
    /// leader, follower, candidate or learner.
    pub role: String,
    /// The leader it follows.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last index in its log.
    pub last_log_index: Option<u64>,
    /// Committed index as far as it knows.
    pub committed: Option<u64>,
    /// Applied index.
    pub applied: Option<u64>,
    /// Members, voters and learners.
    pub members: Vec<MemberStatus>,
}
