//! `quartet-db`: a MySQL-speaking database whose shard groups are replicated by consensus,
//! with SQLite as each replica's state machine.
//!
//! | module | what it holds |
//! |---|---|
//! | [`dialect`] | MySQL statements → SQLite SQL or session instructions; MySQL errors |
//! | [`engine`] | one replica's SQLite; writes as changesets for deterministic replication; checksums |
//! | [`wire`] | the MySQL client/server protocol: packets, handshake, native password, text rows |
//! | [`front`] | the MySQL front: sessions running statements on a replica |
//! | [`actor`] | the engine thread: sessions, transactions, the write gate, applying entries |
//! | [`raft`] | openraft's types, the durable log, the state machine, peer transport |
//! | [`replica`] | one replica: leader-only writes committed by a majority, read index |
//! | [`admin`] | the admin API (REST and gRPC): status, membership, leadership, checksums |
//!
//! The domain (dialect, engine) imports no transport (docs/db.md).

pub mod actor;
pub mod admin;
pub mod dialect;
pub mod engine;
pub mod front;
pub mod raft;
pub mod replica;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quartet_kit::app::{Context, ServiceConfig};
use quartet_kit::reexport::tonic::service::Routes;
use quartet_kit::settings::AuthClientSettings;
use quartet_kit::{BaseSettings, ServerSettings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The binary's name, also its `service.name` in traces and its `QUARTET_*` prefix.
pub const SERVICE: &str = "quartet-db";

/// One line for `--help`.
pub const ABOUT: &str = "Sharded, Raft-replicated SQL database behind the MySQL wire protocol.";

/// The MySQL protocol listener and who may log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MysqlSettings {
    /// Address of the MySQL protocol listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The database (schema) clients use.
    pub database: String,
    /// The user name clients log in as.
    pub user: String,
    /// File holding that user's password (e.g. a mounted Secret); empty allows an empty password, for local use only.
    pub password_file: String,
    /// Client connections served at once; one more is answered with error 1040 (Too many connections) and closed.
    pub max_connections: u32,
    /// Time a new connection has to complete its login, in milliseconds (MySQL's `connect_timeout`); then it is closed.
    pub connect_timeout_ms: u64,
    /// The longest statement packet accepted after login, in bytes (MySQL's `max_allowed_packet`); a longer one gets error 1153 and the connection is closed.
    pub max_allowed_packet: u64,
    /// The longest a read, or an autocommit write that runs alone, may run, in milliseconds; then it stops with error 3024. A session may lower it with `SET max_execution_time = N`, never raise it past this.
    pub max_execution_time_ms: u64,
    /// The most bytes of row changes one write (a statement, or a transaction at COMMIT) may replicate; a larger one is rolled back with error 8025. An entry that takes longer to ship and store than the election timeout would cost the group its leader.
    pub max_write_bytes: u64,
    /// How long a transaction may stay open with no statement from its session, in milliseconds; then it is rolled back (its session's next statement gets error 1205), so an idle client cannot hold everyone else's writes.
    pub idle_transaction_timeout_ms: u64,
}

impl Default for MysqlSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3306)),
            database: "quartet".into(),
            user: "root".into(),
            password_file: String::new(),
            max_connections: 512,
            connect_timeout_ms: 10_000,
            max_allowed_packet: 64 * 1024 * 1024,
            max_execution_time_ms: 30_000,
            idle_transaction_timeout_ms: 10_000,
            max_write_bytes: 8 << 20,
        }
    }
}

impl MysqlSettings {
    /// The front's limits.
    pub fn limits(&self) -> front::Limits {
        front::Limits {
            max_connections: self.max_connections as usize,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_allowed_packet: usize::try_from(self.max_allowed_packet).unwrap_or(usize::MAX),
        }
    }
}

/// Where this replica keeps its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StorageSettings {
    /// Directory of this replica's files: the data (`data.sqlite`) and the Raft log (`raft-log.sqlite`).
    pub path: String,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            path: "quartet-db-data".into(),
        }
    }
}

/// This replica's place in its Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RaftSettings {
    /// This node's id in the group: a positive number, unique in the group; an id used before starts again only from empty storage.
    pub node_id: u64,
    /// The gRPC address peers reach this node at (`host:port`); empty: the gRPC listen address.
    pub advertise: String,
    /// The MySQL address clients reach this node at (`host:port`), named in not-leader errors; empty: the MySQL listen address.
    pub mysql_advertise: String,
    /// The group to form on first start, `id=grpc-host:port/mysql-host:port` comma-separated; empty: a group of this node alone.
    pub initial_members: String,
    /// Do not form a group: wait to be added to an existing one through the admin API.
    pub join: bool,
    /// A StatefulSet pod's name (`<set>-<ordinal>`, from the downward API): the node id is then the ordinal + 1, and the replica waits to be added (`join`) — the operator forms the group through the admin API, once, so that a replica whose data was lost never forms a second one.
    pub pod_name: String,
    /// Heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout in milliseconds (randomised up to twice this); a leader's death is noticed within it.
    pub election_timeout_ms: u64,
    /// How long a write or a linearizable read waits for a majority before a retryable error, in milliseconds.
    pub commit_timeout_ms: u64,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
    /// File holding the secret replicas present to each other (e.g. a mounted Secret); empty: none, for local use only.
    pub secret_file: String,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            node_id: 1,
            advertise: String::new(),
            mysql_advertise: String::new(),
            initial_members: String::new(),
            join: false,
            pod_name: String::new(),
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            commit_timeout_ms: 5000,
            snapshot_every: 20_000,
            secret_file: String::new(),
        }
    }
}

impl RaftSettings {
    /// This node's id and whether it waits to be added: from `pod_name` when set (the
    /// ordinal + 1, waiting), else `node_id` and `join`.
    pub fn identity(&self) -> Result<(u64, bool), String> {
        if self.pod_name.is_empty() {
            return if self.node_id == 0 {
                Err("raft.node_id must be a positive number".into())
            } else {
                Ok((self.node_id, self.join))
            };
        }
        let ordinal = self
            .pod_name
            .rsplit_once('-')
            .and_then(|(set, n)| (!set.is_empty()).then_some(n))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "raft.pod_name {:?} is not a StatefulSet pod's name (<set>-<ordinal>)",
                    self.pod_name
                )
            })?;
        Ok((ordinal + 1, true))
    }

    /// Parses `initial_members`.
    pub fn members(&self) -> Result<BTreeMap<u64, raft::Member>, String> {
        let mut members = BTreeMap::new();
        for item in self.initial_members.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let bad = || {
                format!("raft.initial_members: {item:?} is not id=grpc-host:port/mysql-host:port")
            };
            let (id, addrs) = item.split_once('=').ok_or_else(bad)?;
            let id: u64 = id.trim().parse().map_err(|_| bad())?;
            if id == 0 {
                return Err(format!(
                    "raft.initial_members: node id 0 in {item:?} is reserved"
                ));
            }
            let (addr, mysql) = addrs.split_once('/').unwrap_or((addrs, ""));
            if addr.is_empty() {
                return Err(bad());
            }
            members.insert(
                id,
                raft::Member {
                    addr: addr.to_owned(),
                    mysql: mysql.to_owned(),
                },
            );
        }
        Ok(members)
    }
}

/// Every setting of `quartet-db`; `quartet-db --config-reference` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// Listeners, logging and shutdown, shared with every Quartet server.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Verifying callers' tokens from `quartet-auth`.
    pub auth: AuthClientSettings,
    /// The MySQL protocol front.
    pub mysql: MysqlSettings,
    /// Data on disk.
    pub storage: StorageSettings,
    /// The Raft group.
    pub raft: RaftSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerSettings::with_ports(7140),
            auth: AuthClientSettings::default(),
            mysql: MysqlSettings::default(),
            storage: StorageSettings::default(),
            raft: RaftSettings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn base(&self) -> &BaseSettings {
        &self.server.base
    }
}

fn read_secret(setting: &str, file: &str) -> anyhow::Result<String> {
    if file.is_empty() {
        return Ok(String::new());
    }
    Ok(std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{setting} {file:?}: {e}"))?
        .trim_end_matches(['\n', '\r'])
        .to_owned())
}

/// Readiness (`raft`: a leader is known) and Raft gauges on the admin listener's `/metrics`.
fn observe(replica: &Arc<replica::Replica>, ctx: &Context) -> anyhow::Result<()> {
    use prometheus::{IntGauge, Opts};
    let watched = replica.clone();
    ctx.readiness.register("raft", move || {
        let status = watched.status();
        async move {
            match status.leader {
                Some(_) => Ok(()),
                None => Err(format!(
                    "no leader known (this node is {}, term {})",
                    status.role, status.term
                )),
            }
        }
    });
    let gauge = |name: &str, help: &str| -> anyhow::Result<IntGauge> {
        let g = IntGauge::with_opts(Opts::new(name, help))?;
        ctx.metrics.registry().register(Box::new(g.clone()))?;
        Ok(g)
    };
    let leader = gauge(
        "quartet_db_raft_is_leader",
        "1 while this replica leads its group",
    )?;
    let term = gauge("quartet_db_raft_term", "The current Raft term")?;
    let last_log = gauge(
        "quartet_db_raft_last_log_index",
        "The last index in this replica's log",
    )?;
    let applied = gauge(
        "quartet_db_raft_applied_index",
        "The last index applied to this replica's data",
    )?;
    let mut metrics = replica.raft().metrics();
    tokio::spawn(async move {
        loop {
            {
                let m = metrics.borrow();
                leader.set(i64::from(m.state == openraft::ServerState::Leader));
                term.set(m.current_term as i64);
                last_log.set(m.last_log_index.map_or(-1, |i| i as i64));
                applied.set(m.last_applied.map_or(-1, |l| l.index as i64));
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Opens the data, joins or forms the Raft group, serves MySQL clients, the admin API and the
/// standard listeners until a stop signal.
pub async fn run(config: Config, ctx: Context) -> anyhow::Result<()> {
    let password = read_secret("mysql.password_file", &config.mysql.password_file)?;
    let secret = read_secret("raft.secret_file", &config.raft.secret_file)?;
    if secret.is_empty() {
        tracing::warn!(
            "raft.secret_file is not set: any caller reaching the gRPC port can act as a replica (local use only)"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.mysql.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (mysql): {e}", config.mysql.listen))?;
    let mysql_addr = listener.local_addr()?;
    let settings = &config.raft;
    let (node_id, join) = settings.identity().map_err(|e| anyhow::anyhow!(e))?;
    let me = raft::Member {
        addr: if settings.advertise.is_empty() {
            config.server.grpc.listen.to_string()
        } else {
            settings.advertise.clone()
        },
        mysql: if settings.mysql_advertise.is_empty() {
            mysql_addr.to_string()
        } else {
            settings.mysql_advertise.clone()
        },
    };
    let options = replica::GroupOptions {
        node_id,
        me,
        initial_members: settings.members().map_err(|e| anyhow::anyhow!(e))?,
        join,
        heartbeat: Duration::from_millis(settings.heartbeat_ms),
        election_timeout: Duration::from_millis(settings.election_timeout_ms),
        commit_timeout: Duration::from_millis(settings.commit_timeout_ms),
        snapshot_every: settings.snapshot_every.max(10),
        secret: secret.clone(),
        database: config.mysql.database.clone(),
        // In a StatefulSet a replica's volume may be lost and the pod come back empty under
        // the same id; elsewhere the one who starts it with new storage knows it is new.
        abstain_until_admitted: !settings.pod_name.is_empty(),
        limits: actor::Limits {
            lock_wait: replica::LOCK_WAIT,
            max_statement: Duration::from_millis(config.mysql.max_execution_time_ms.max(1)),
            idle_transaction: Duration::from_millis(
                config.mysql.idle_transaction_timeout_ms.max(1),
            ),
            max_entry: usize::try_from(config.mysql.max_write_bytes).unwrap_or(usize::MAX),
        },
    };
    let replica =
        replica::Replica::start(std::path::Path::new(&config.storage.path), options).await?;

    observe(&replica, &ctx)?;

    let users = HashMap::from([(config.mysql.user.clone(), password)]);
    let front = Arc::new(
        front::Front::new(replica.clone(), &config.mysql.database, users)
            .with_limits(config.mysql.limits()),
    );
    tracing::info!(listener = "mysql", addr = %mysql_addr, "listening");
    ctx.shutdown
        .spawn(front.serve(listener, ctx.shutdown.token()));

    let authenticator =
        admin::accepting_secret(quartet_kit::token::authenticator(&config.auth), &secret);
    let mut grpc = Routes::builder();
    grpc.add_service(replica.raft_service());
    grpc.add_service(admin::AdminService::server(
        replica.clone(),
        authenticator.clone(),
    ));
    let rest = admin::rest(replica.clone()).with_bearer(authenticator);
    let served = quartet_kit::app::serve_server(ctx, &config.server, grpc.routes(), rest).await;
    if let Err(e) = replica.raft().shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    served
}

#[cfg(test)]
mod tests {
    use super::RaftSettings;

    fn pod(name: &str) -> Result<(u64, bool), String> {
        RaftSettings {
            pod_name: name.into(),
            ..RaftSettings::default()
        }
        .identity()
    }

    #[test]
    fn a_pods_ordinal_is_its_node_id_and_it_waits_to_be_added() {
        assert_eq!(pod("orders-0"), Ok((1, true)));
        assert_eq!(pod("orders-db-4"), Ok((5, true)));
        for bad in ["orders", "orders-x", "-3", "orders-"] {
            let e = pod(bad).expect_err(bad);
            assert!(e.contains("raft.pod_name") && e.contains(bad), "{e}");
        }
        let explicit = RaftSettings {
            node_id: 7,
            join: true,
            ..RaftSettings::default()
        };
        assert_eq!(explicit.identity(), Ok((7, true)));
        let zero = RaftSettings {
            node_id: 0,
            ..RaftSettings::default()
        };
        assert!(zero.identity().is_err());
    }
}
