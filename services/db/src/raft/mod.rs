//! The Raft group under each shard: openraft's types for quartet-db, the durable log, the
//! SQLite state machine and the replica-to-replica transport.
//!
//! | module | what it holds |
//! |---|---|
//! | [`log_store`] | the Raft log, vote and commit mark in their own SQLite file, fsynced |
//! | [`state_machine`] | entries applied to the engine; snapshots as SQLite copies |
//! | [`network`] | openraft's RPCs over gRPC (`quartet.db.v1.Raft`), MessagePack inside |

// openraft's StorageError is large (224 bytes) and is the type its traits require.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::engine::Entry;

/// How replicas and clients reach a member of the group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its gRPC address (`host:port`), where the Raft service and the admin API listen.
    pub addr: String,
    /// Its MySQL address (`host:port`), named in not-leader errors.
    pub mysql: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (mysql {})", self.addr, self.mysql)
    }
}

/// A log entry's data: one committed write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    /// The changes to apply.
    pub entry: Entry,
    /// Which engine executed it (instance, write number): the leader that made it finds its
    /// changes already in place.
    #[serde(default)]
    pub proposal: Option<(u64, u64)>,
}

/// What applying a [`Command`] did: `None` when it applied, else why it did not (the same on
/// every replica).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The refusal, if the entry's changes did not apply.
    pub error: Option<String>,
}

openraft::declare_raft_types!(
    /// openraft's type parameters for quartet-db.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// A node id.
pub type NodeId = u64;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A storage failure, as openraft takes it.
pub type StorageError = openraft::StorageError<NodeId>;

/// MessagePack with field names, so optional fields that openraft skips still decode.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// The inverse of [`encode`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}
