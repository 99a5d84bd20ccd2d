//! An engine on its own thread, serving every client session: autocommit statements, and
//! interactive transactions that stay open across client commands.
//!
//! SQLite's session object (which records a transaction's row changes for replication)
//! borrows the connection, so an open transaction cannot be parked in an async task between
//! client commands. Here one thread owns the connection; while a session's transaction is open
//! the thread serves only that session and queues everyone else's requests, so transactions are
//! serializable. A queued request waits at most `lock_wait` and then gets MySQL's 1205 (lock
//! wait timeout, retryable). A session that disconnects has its transaction rolled back.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rusqlite::session::Session;
use rusqlite::types::Value;

use crate::engine::{Columns, Engine, EngineError, Entry, Outcome, Rows, Step, is_ddl};

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
    /// Done, nothing to return.
    Done,
}

struct Request {
    session: u64,
    op: Op,
    at: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Answer, EngineError>>,
}

/// A cloneable handle on the engine thread.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    requests: Sender<Request>,
}

impl EngineHandle {
    /// Moves `engine` onto its own thread. Queued requests wait at most `lock_wait` behind
    /// another session's transaction.
    pub fn spawn(engine: Engine, lock_wait: Duration) -> Self {
        let (requests, inbox) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("quartet-db-engine".into())
            .spawn(move || serve(engine, &inbox, lock_wait))
            .expect("the engine thread starts");
        Self { requests }
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
        match self
            .ask(
                session,
                Op::Query {
                    sql: sql.to_owned(),
                    params: params.to_vec(),
                },
            )
            .await?
        {
            Answer::Rows(rows) => Ok(rows),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Runs writes for `session`: at once (autocommit) or inside its open transaction.
    pub async fn write(
        &self,
        session: u64,
        statements: Vec<String>,
        params: &[Value],
    ) -> Result<Outcome, EngineError> {
        match self
            .ask(
                session,
                Op::Write {
                    statements,
                    params: params.to_vec(),
                },
            )
            .await?
        {
            Answer::Written(outcome) => Ok(outcome),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Parameter count and result columns of `sql`.
    pub async fn describe(&self, session: u64, sql: &str) -> Result<(usize, Columns), EngineError> {
        match self
            .ask(
                session,
                Op::Describe {
                    sql: sql.to_owned(),
                },
            )
            .await?
        {
            Answer::Shape(params, columns) => Ok((params, columns)),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Opens a transaction for `session` (committing one it already has, as MySQL does).
    pub async fn begin(&self, session: u64) -> Result<(), EngineError> {
        self.ask(session, Op::Begin).await.map(drop)
    }

    /// Commits `session`'s transaction, if any; returns what it wrote.
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
        let (reply, _) = tokio::sync::oneshot::channel();
        let _ = self.requests.send(Request {
            session,
            op: Op::Close,
            at: Instant::now(),
            reply,
        });
    }
}

/// Answers one request outside any transaction. Returns the session that asked to begin.
fn autocommit(engine: &mut Engine, request: Request) -> Option<Request> {
    let answer = match request.op {
        Op::Begin => return Some(request),
        Op::Query { sql, params } => engine.query_bound(&sql, &params).map(Answer::Rows),
        Op::Write { statements, params } => {
            let bound: Vec<(&str, &[Value])> = statements
                .iter()
                .map(|s| (s.as_str(), params.as_slice()))
                .collect();
            engine.write_bound(&bound).map(Answer::Written)
        }
        Op::Describe { sql } => engine.describe(&sql).map(|(p, c)| Answer::Shape(p, c)),
        Op::Commit | Op::Rollback | Op::Close => Ok(Answer::Done),
    };
    let _ = request.reply.send(answer);
    None
}

fn serve(mut engine: Engine, inbox: &Receiver<Request>, lock_wait: Duration) {
    let mut deferred: VecDeque<Request> = VecDeque::new();
    loop {
        let request = match deferred.pop_front() {
            Some(r) => r,
            None => match inbox.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let mut begin = autocommit(&mut engine, request);
        while let Some(request) = begin {
            begin = transaction(&mut engine, request, inbox, &mut deferred, lock_wait);
        }
    }
}

/// Serves `owner`'s transaction until it ends. Returns a BEGIN that ended it implicitly, to
/// start the next transaction.
fn transaction(
    engine: &mut Engine,
    begin: Request,
    inbox: &Receiver<Request>,
    deferred: &mut VecDeque<Request>,
    lock_wait: Duration,
) -> Option<Request> {
    let owner = begin.session;
    let conn = engine.connection();
    let tx = match conn.unchecked_transaction() {
        Ok(tx) => tx,
        Err(e) => {
            let _ = begin.reply.send(Err(e.into()));
            return None;
        }
    };
    let mut session = match Session::new(&tx).and_then(|mut s| s.attach(None::<&str>).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            let _ = begin.reply.send(Err(e.into()));
            return None;
        }
    };
    let _ = begin.reply.send(Ok(Answer::Done));
    let (mut rows_affected, mut last_insert_id) = (0u64, 0i64);
    let mut waiting: VecDeque<Request> = std::mem::take(deferred);
    loop {
        // Requests of other sessions wait their turn, but never longer than the lock wait.
        let now = Instant::now();
        let mut kept = VecDeque::new();
        for request in waiting.drain(..) {
            if request.session != owner && now.duration_since(request.at) >= lock_wait {
                let _ = request.reply.send(Err(EngineError::LockWait));
            } else {
                kept.push_back(request);
            }
        }
        waiting = kept;
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
                Err(RecvTimeoutError::Disconnected) => return None,
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
                let _ = request.reply.send(
                    result
                        .map(|()| {
                            Answer::Written(Outcome {
                                entry: Entry::default(),
                                rows_affected,
                                last_insert_id,
                            })
                        })
                        .map_err(Into::into),
                );
            }
            Op::Commit | Op::Begin => {
                let mut bytes = Vec::new();
                let recorded = session.changeset_strm(&mut bytes);
                drop(session);
                let committed = recorded
                    .and_then(|()| tx.commit())
                    .map_err(EngineError::from)
                    .map(|()| {
                        let mut entry = Entry::default();
                        if !bytes.is_empty() {
                            entry.steps.push(Step::Changes(bytes));
                        }
                        Outcome {
                            entry,
                            rows_affected,
                            last_insert_id,
                        }
                    });
                deferred.extend(waiting);
                if matches!(request.op, Op::Begin) {
                    if let Err(e) = committed {
                        let _ = request.reply.send(Err(e));
                        return None;
                    }
                    return Some(request);
                }
                let _ = request.reply.send(committed.map(Answer::Written));
                return None;
            }
            Op::Rollback | Op::Close => {
                drop(session);
                let rolled = tx
                    .rollback()
                    .map_err(EngineError::from)
                    .map(|()| Answer::Done);
                let _ = request.reply.send(rolled);
                deferred.extend(waiting);
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(lock_wait: Duration) -> EngineHandle {
        let engine = Engine::in_memory().expect("engine");
        EngineHandle::spawn(engine, lock_wait)
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
    async fn transactions_commit_or_roll_back_as_a_whole() {
        let h = handle(Duration::from_secs(5));
        h.write(
            1,
            vec!["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".into()],
            &[],
        )
        .await
        .expect("create");
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
        assert_eq!(count(&h, 2).await, 1);
        assert!(
            h.write(1, vec!["DROP TABLE t".into()], &[]).await.is_ok(),
            "DDL outside a transaction runs"
        );
    }

    #[tokio::test]
    async fn other_sessions_wait_for_a_transaction_and_time_out_with_1205() {
        let h = handle(Duration::from_millis(300));
        h.write(
            1,
            vec!["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)".into()],
            &[],
        )
        .await
        .expect("create");
        h.begin(1).await.expect("begin");
        h.write(1, vec!["INSERT INTO t (v) VALUES ('a')".into()], &[])
            .await
            .expect("insert");
        // Session 2 waits behind the open transaction, then gives up.
        let waited = h.query(2, "SELECT COUNT(*) FROM t", &[]).await;
        assert!(matches!(waited, Err(EngineError::LockWait)), "{waited:?}");
        assert_eq!(waited.expect_err("timed out").to_mysql("app").code, 1205);
        // A waiting reader is served as soon as the transaction commits, and sees its rows.
        let reader = {
            let h = h.clone();
            tokio::spawn(async move { count(&h, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.commit(1).await.expect("commit");
        assert_eq!(reader.await.expect("join"), 1);
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
}
