//! The state machine: committed entries applied to the replica's engine, and snapshots.
//!
//! The applied log id and the membership are stored in the engine's bookkeeping table in the
//! same SQLite transaction as each entry's changes, so after a crash the data and the position
//! agree and openraft replays the log from there. A snapshot is a `VACUUM INTO` copy of the
//! whole database (the bookkeeping inside it says where it stands); installing one restores
//! that copy over the replica's database with SQLite's backup API.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use tokio::sync::Mutex;

use super::{Applied, LogId, Member, NodeId, StorageError, TypeConfig, decode, encode};
use crate::actor::{Applying, EngineHandle};
use crate::engine::Engine;

const APPLIED: &str = "raft.applied";
const MEMBERSHIP: &str = "raft.membership";

type Membership = StoredMembership<NodeId, Member>;

/// A snapshot held in memory: its description and the SQLite file's bytes.
#[derive(Clone)]
struct Stored {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// The state machine over one engine; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    engine: EngineHandle,
    dir: PathBuf,
    current: Arc<Mutex<Option<Stored>>>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

impl StateMachine {
    /// A state machine applying to `engine`; snapshot files are made in `dir`.
    pub fn new(engine: EngineHandle, dir: PathBuf) -> Self {
        Self {
            engine,
            dir,
            current: Arc::default(),
        }
    }

    fn scratch(&self, what: &str) -> PathBuf {
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        self.dir
            .join(format!("{what}-{:016x}.sqlite", u64::from_le_bytes(nonce)))
    }

    /// Reads where a snapshot file stands from its own bookkeeping table.
    fn position_of(path: &std::path::Path) -> Result<(Option<LogId>, Membership), StorageError> {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(snapshot_err)?;
        position(
            Engine::meta_on(&conn, APPLIED).map_err(snapshot_err)?,
            Engine::meta_on(&conn, MEMBERSHIP).map_err(snapshot_err)?,
        )
    }
}

/// Decodes the stored applied log id and membership.
fn position(
    applied: Option<Vec<u8>>,
    membership: Option<Vec<u8>>,
) -> Result<(Option<LogId>, Membership), StorageError> {
    let applied = applied.map(|b| decode(&b).map_err(sm_err)).transpose()?;
    let membership = membership
        .map(|b| decode(&b).map_err(sm_err))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let path = self.scratch("snapshot");
        self.engine
            .snapshot(path.clone())
            .await
            .map_err(snapshot_err)?;
        let read = (|| {
            let (applied, membership) = Self::position_of(&path)?;
            let data = std::fs::read(&path).map_err(snapshot_err)?;
            Ok::<_, StorageError>((applied, membership, data))
        })();
        let _ = std::fs::remove_file(&path);
        let (applied, membership, data) = read?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: applied.map_or_else(
                || "empty".into(),
                |id| format!("{}-{}", id.leader_id.term, id.index),
            ),
        };
        *self.current.lock().await = Some(Stored {
            meta: meta.clone(),
            data: data.clone(),
        });
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let (applied, membership) = position(
            self.engine.meta(APPLIED).await.map_err(sm_err)?,
            self.engine.meta(MEMBERSHIP).await.map_err(sm_err)?,
        )?;
        // After a restart Raft resumes after this position without applying anything again;
        // readers and the write gate must know the data is already there. (A leader that
        // keeps its term across a restart appends no new entry that would tell them.)
        if let Some(id) = applied {
            self.engine.progress().opened_at(id.index + 1);
        }
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Vec::new();
        for entry in entries {
            let mut meta = vec![(APPLIED, encode(&entry.log_id).map_err(sm_err)?)];
            let mut proposal = None;
            let data = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(command) => {
                    proposal = command.proposal;
                    Some(command.entry)
                }
                EntryPayload::Membership(membership) => {
                    let stored = Membership::new(Some(entry.log_id), membership);
                    meta.push((MEMBERSHIP, encode(&stored).map_err(sm_err)?));
                    None
                }
            };
            batch.push(Applying {
                next_index: entry.log_id.index + 1,
                meta,
                entry: data,
                proposal,
            });
        }
        let results = self.engine.apply(batch).await.map_err(sm_err)?;
        Ok(results
            .into_iter()
            .map(|r| Applied { error: r.err() })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let path = self.scratch("received");
        std::fs::write(&path, &data).map_err(snapshot_err)?;
        let next_index = meta.last_log_id.map_or(0, |id| id.index + 1);
        let restored = self.engine.restore(path.clone(), next_index).await;
        let _ = std::fs::remove_file(&path);
        restored.map_err(snapshot_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot installed");
        *self.current.lock().await = Some(Stored {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current.lock().await.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
