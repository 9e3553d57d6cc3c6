//! The audit appender of a SQLite store: one connection of its own, used from one thread.
//!
//! Appends are the hot path of every credential (each reply waits for its record's commit), so
//! they bypass sqlx: a batch is `BEGIN IMMEDIATE`, the conditional head move, one cached
//! single-row `INSERT` per record, `COMMIT`, all on this thread. Through sqlx the same batch is a
//! round trip to its connection thread, a statement text built per batch size, a copy of every
//! value and a ping when the connection returns to the pool; `scripts/bench.sh` measured the
//! difference. Everything else (reads, migrations, keys) still goes through the sqlx pool.
//!
//! The connection is opened on first use and again after a failure, so a store that was briefly
//! unwritable recovers without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::{CHAIN, INSERT_RECORDS_HEAD, ROWS_PAST_HEAD, Sealed, StoreError};
use crate::audit::RecordFields;

/// One writer's connection to a SQLite store and its idea of the chain head.
pub(crate) struct SqliteAppender {
    path: PathBuf,
    conn: Option<Connection>,
    /// The chain head after our last append; `None`: read it first.
    head: Option<(i64, String)>,
}

impl std::fmt::Debug for SqliteAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAppender")
            .field("path", &self.path)
            .finish()
    }
}

/// How long a writer waits for another process's write lock before failing the batch.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl SqliteAppender {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            conn: None,
            head: None,
        }
    }

    /// Append `records` to the chain atomically and durably (the commit fsyncs the WAL);
    /// returns their ids, in order. When another writer moved the head, nothing is written,
    /// the head is re-read and the batch sealed again. Blocks the thread.
    pub(crate) fn append(&mut self, records: &[&RecordFields]) -> Result<Vec<i64>, StoreError> {
        const ATTEMPTS: usize = 64;
        for _ in 0..ATTEMPTS {
            let result = self.try_append(records);
            match result {
                Ok(Some(ids)) => return Ok(ids),
                Ok(None) => self.head = None,
                Err(e) => {
                    // Start afresh next time: the connection may be what failed.
                    self.head = None;
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        Err(StoreError::Corrupt(format!(
            "the audit chain head moved under {ATTEMPTS} consecutive appends"
        )))
    }

    /// One attempt: `None` when the head was not where we sealed the batch.
    fn try_append(&mut self, records: &[&RecordFields]) -> Result<Option<Vec<i64>>, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path)?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Open("the audit connection is not open".into()));
        };
        // Dropping the transaction without committing rolls it back. The write lock is taken
        // first, so a head read here cannot be moved by another writer before it is used.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let (head_id, head_hash) = match self.head.take() {
            Some(known) => known,
            None => read_head(&tx)?,
        };
        let batch = Sealed::new(head_id, head_hash, records);
        let moved = tx
            .prepare_cached(&format!(
                "UPDATE audit_chain SET head_id = ?1, head_hash = ?2
                 WHERE name = '{CHAIN}' AND head_id = ?3 AND head_hash = ?4"
            ))
            .and_then(|mut update| {
                update.execute(params![
                    batch.head_id(),
                    batch.head_hash(),
                    batch.previous_head.0,
                    batch.previous_head.1
                ])
            })
            .map_err(sql)?;
        if moved != 1 {
            return Ok(None);
        }
        {
            let mut insert = tx
                .prepare_cached(&format!(
                    "{INSERT_RECORDS_HEAD} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                     ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
                ))
                .map_err(sql)?;
            for (i, f) in batch.records.iter().enumerate() {
                let inserted = insert.execute(params![
                    batch.ids[i],
                    f.time_ms,
                    f.request_id,
                    f.operation,
                    f.issuer,
                    f.subject,
                    f.groups,
                    f.client_ip,
                    f.user_agent,
                    f.project,
                    f.registry,
                    f.repository,
                    f.actions_requested,
                    f.actions_granted,
                    f.result,
                    f.reason,
                    f.expires_ms,
                    f.fingerprint,
                    f.credential_id,
                    batch.prev_hashes[i],
                    batch.hashes[i],
                ]);
                match inserted {
                    Ok(_) => {}
                    // The head was where we sealed (we moved it, under the write lock), yet its
                    // successor ids are taken: rows written outside the chain.
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Corrupt(ROWS_PAST_HEAD.into()));
                    }
                    Err(e) => return Err(sql(e)),
                }
            }
        }
        tx.commit().map_err(sql)?;
        self.head = Some((batch.head_id(), batch.head_hash().to_owned()));
        Ok(Some(batch.ids))
    }
}

/// A connection with the store's durability settings: WAL, `synchronous = FULL` (a commit
/// returns once the WAL is fsynced).
fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open(format!("SQLite database {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open(format!(
            "SQLite database {} is in journal mode {mode}, not WAL",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(sql)?;
    Ok(conn)
}

fn read_head(conn: &Connection) -> Result<(i64, String), StoreError> {
    conn.query_row(
        "SELECT head_id, head_hash FROM audit_chain WHERE name = ?1",
        [CHAIN],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => {
            StoreError::Corrupt("the audit_chain head row is missing".into())
        }
        e => sql(e),
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

/// SQLite's messages name tables and constraints, never values.
fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Append(e.to_string())
}
