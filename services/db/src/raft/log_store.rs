//! The Raft log, kept in its own SQLite file next to the data.
//!
//! **fsync policy**: the file runs in WAL mode with `synchronous = FULL`, so every append,
//! truncation and vote is on disk (the WAL fsynced) before openraft hears it is done; an entry
//! therefore counts towards a majority only once it is durable on that replica. Appends arrive
//! in batches from openraft, one SQLite transaction (one fsync) per batch. The data file
//! (the state machine) syncs lazily, since the log can replay it.
//!
//! All access runs on tokio's blocking pool so an fsync never stalls the Raft core's task.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};
use rusqlite::{Connection, OptionalExtension, params};

use super::{LogId, NodeId, StorageError, TypeConfig, decode, encode};
use crate::actor::Progress;

type LogEntry = openraft::Entry<TypeConfig>;

/// The log store; cheap to clone (clones share the file).
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    progress: Arc<Progress>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens (or creates) the log at `path`; keeps `progress.log_next` up to date.
    pub fn open(path: &Path, progress: Arc<Progress>) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, body BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )?;
        let last: Option<i64> = conn.query_row("SELECT MAX(idx) FROM log", [], |r| r.get(0))?;
        let next = match last {
            Some(i) => i as u64 + 1,
            None => Self::state_on(&conn, "last_purged")
                .ok()
                .flatten()
                .and_then(|b| decode::<LogId>(&b).ok())
                .map_or(0, |id| id.index + 1),
        };
        progress.log_next.store(next, Ordering::Release);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            progress,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?
    }

    fn state_on(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, rusqlite::Error> {
        conn.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
    }

    async fn state<T: for<'de> serde::Deserialize<'de> + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        self.run(move |conn| {
            let bytes = Self::state_on(conn, key).map_err(read_err)?;
            bytes.map(|b| decode(&b).map_err(read_err)).transpose()
        })
        .await
    }

    async fn set_state<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_err)?;
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO state (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, bytes],
            )
            .map_err(write_err)?;
            Ok(())
        })
        .await
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i as i64,
        Bound::Excluded(&i) => i as i64 + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i as i64,
        Bound::Excluded(&i) => i as i64 - 1,
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let (start, end) = bounds(&range);
        self.run(move |conn| {
            let mut statement = conn
                .prepare_cached("SELECT body FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")
                .map_err(read_err)?;
            let rows = statement
                .query_map(params![start, end], |r| r.get::<_, Vec<u8>>(0))
                .map_err(read_err)?;
            let mut entries = Vec::new();
            for row in rows {
                entries.push(decode(&row.map_err(read_err)?).map_err(read_err)?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.state("last_purged").await?;
        let last = self
            .run(|conn| {
                conn.query_row("SELECT body FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .optional()
                .map_err(read_err)
            })
            .await?;
        let last_log_id = match last {
            Some(bytes) => Some(decode::<LogEntry>(&bytes).map_err(read_err)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.set_state("vote", vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.state("vote").await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.set_state("committed", &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.state::<Option<LogId>>("committed").await?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = LogEntry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((
                entry.log_id.index as i64,
                encode(&entry).map_err(write_err)?,
            ));
        }
        let Some(&(last, _)) = encoded.last() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let written = self
            .run(move |conn| {
                let tx = conn.transaction().map_err(write_err)?;
                {
                    let mut insert = tx
                        .prepare_cached("INSERT OR REPLACE INTO log (idx, body) VALUES (?1, ?2)")
                        .map_err(write_err)?;
                    for (index, body) in &encoded {
                        insert.execute(params![index, body]).map_err(write_err)?;
                    }
                }
                tx.commit().map_err(write_err)
            })
            .await;
        match written {
            Ok(()) => {
                self.progress
                    .log_next
                    .store(last as u64 + 1, Ordering::Release);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index as i64;
        self.run(move |conn| {
            conn.execute("DELETE FROM log WHERE idx >= ?1", [from])
                .map_err(write_err)?;
            Ok(())
        })
        .await?;
        self.progress
            .log_next
            .store(log_id.index, Ordering::Release);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.set_state("last_purged", &log_id).await?;
        let upto = log_id.index as i64;
        self.run(move |conn| {
            conn.execute("DELETE FROM log WHERE idx <= ?1", [upto])
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }
}
