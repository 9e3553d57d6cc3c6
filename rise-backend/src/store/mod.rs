//! The durable store: SQLite in the data directory (the embedded default) or PostgreSQL (for
//! several replicas), behind one [`Store`].
//!
//! Both backends run the same SQL where they can (`$1` placeholders work on both); where they
//! differ (DDL types, row locks, `BEGIN IMMEDIATE`) the statement is chosen by `Dialect`.
//!
//! **Durability.** "Committed" means the commit has reached stable storage, so it survives a
//! power loss, not only a crash of Rise:
//! - SQLite runs in WAL mode with `synchronous = FULL`: every commit fsyncs the WAL before it
//!   returns. (`NORMAL` would survive `kill -9` but could lose the last commits on power loss.)
//!   The audit writer commits many records per transaction, so the fsync is shared. New
//!   databases use 1 KiB pages. They were chosen when a per-row trigger and a fingerprint index
//!   made each record dirty pages at scattered positions (then about 1.5x the records/s of 4 KiB
//!   pages); with the batch-level head check, 1, 2 and 4 KiB pages measured within noise of each
//!   other (`scripts/bench.sh`). An existing database keeps the page size it was created with.
//! - PostgreSQL connections set `synchronous_commit = on`, so a server default of `off` cannot
//!   silently weaken the guarantee; the server's own `fsync` setting remains the operator's.
//!
//! **Chain.** All records, from every writer, form one hash chain. A writer seals a batch on the
//! head it knows (ids `head + 1 ..`, each hash over its predecessor's) and appends it only if
//! that is still the head, moving the head in the same transaction: on PostgreSQL one statement
//! (a CTE on the `audit_chain` row), on SQLite a transaction under SQLite's write lock
//! (`BEGIN IMMEDIATE`, the conditional head move, the inserts). Otherwise nothing is written and
//! the writer re-reads the head. Writers therefore serialise their *batches*, not their records.
//!
//! **Who writes.** Everything goes through the sqlx pool except SQLite audit appends, which the
//! audit writer thread makes on a connection of its own (`SqliteAppender`).

mod sqlite_appender;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::audit::{AuditFilter, RecordFields, StoredRecord, chain};
use crate::config::DatabaseConfig;
pub(crate) use sqlite_appender::SqliteAppender;

/// The file name of the embedded SQLite database inside the data directory.
pub const SQLITE_FILE: &str = "rise.db";

/// The one chain every record belongs to.
const CHAIN: &str = "audit";

/// Advisory lock key serialising schema migrations of replicas that start together.
const MIGRATION_LOCK: i64 = 0x0072_6973_656d_6967; // "risemig"

/// A failure of the durable store. Messages carry no credentials (URLs are never included).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("the database is inconsistent: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Append(String),
}

impl StoreError {
    /// The database is out of reach (down, unreachable, or every connection busy past the
    /// acquire timeout), as opposed to refusing or corrupting what was asked.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Open(_) => true,
            StoreError::Sql(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                // Class 08: connection exceptions; 57P01-57P03: the server is shutting down
                // or starting; 53300: too many connections; 25006: read-only (a failover).
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "25006"
                    )
            }),
            StoreError::Sql(e) => matches!(
                e,
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            ),
            StoreError::Corrupt(_) | StoreError::Append(_) => false,
        }
    }
}

/// Why an append that holds the chain head still cannot write: the ids after the head are taken
/// by rows the head row does not know of (written outside the chain).
pub(crate) const ROWS_PAST_HEAD: &str =
    "audit_log holds rows past the audit chain head; run `rise-backend audit verify`";

/// A handle to the durable store; cheap to clone (it wraps a connection pool).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// The SQLite file, for the audit writer's own connection ([`SqliteAppender`]).
    sqlite_file: Option<PathBuf>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone, Copy)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn pick(self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// SQLite's default `BEGIN` takes the write lock only at the first write, and a reader
    /// that then wants to write can fail with SQLITE_BUSY; `IMMEDIATE` takes it up front.
    fn begin_write(self) -> &'static str {
        self.pick("BEGIN IMMEDIATE", "BEGIN")
    }
}

/// Run `$body` with `$pool` bound to the backend's pool and `$d` to its dialect. The body is
/// compiled once per backend, so it may use either pool's concrete types.
macro_rules! on_backend {
    ($store:expr, |$pool:ident, $d:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $d = Dialect::Sqlite;
                $body
            }
            Backend::Postgres($pool) => {
                #[allow(unused_variables)]
                let $d = Dialect::Postgres;
                $body
            }
        }
    };
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("kind", &self.kind()).finish()
    }
}

impl Store {
    /// Open the configured store (creating the SQLite file if needed) and bring its schema up
    /// to date.
    pub async fn open(db: &DatabaseConfig, data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(db, data_dir, true).await
    }

    /// Like [`open`](Self::open), but a missing SQLite file is an error: for tools that read
    /// the log, so a mistyped data directory is not reported as an empty, intact log.
    pub async fn open_existing(db: &DatabaseConfig, data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(db, data_dir, false).await
    }

    async fn open_with(
        db: &DatabaseConfig,
        data_dir: &Path,
        create: bool,
    ) -> Result<Store, StoreError> {
        let url = db
            .resolve_url()
            .map_err(|e| StoreError::Open(e.to_string()))?;
        match url {
            None => Self::open_sqlite(&data_dir.join(SQLITE_FILE), create).await,
            Some(url) => {
                let text = url.expose_secret();
                if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                    Self::open_postgres(&url, db.max_connections, db.acquire_timeout).await
                } else if let Some(path) = text.strip_prefix("sqlite:") {
                    let path = path.strip_prefix("//").unwrap_or(path);
                    Self::open_sqlite(Path::new(path), create).await
                } else {
                    Err(StoreError::Open(
                        "database.url must start with postgres://, postgresql:// or sqlite:".into(),
                    ))
                }
            }
        }
    }

    /// SQLite at `path` (WAL, `synchronous = FULL`). With `create = false` a missing file is an
    /// error, so a mistyped data directory is not mistaken for an empty audit log.
    pub async fn open_sqlite(path: &Path, create: bool) -> Result<Store, StoreError> {
        if !create
            && let Err(e) = std::fs::metadata(path)
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return Err(StoreError::Open(format!(
                "there is no SQLite database {}: give the configuration of the server this database belongs to (its server.data_dir or database.url)",
                path.display()
            )));
        }
        if create {
            create_private_file(path)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .page_size(1024)
            .pragma("cache_size", "-65536")
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // One writer (the audit writer) plus readers; WAL lets readers run beside the writer.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file cannot go stale like a network connection: skip the ping per acquire.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open(format!("SQLite database {}: {e}", path.display())))?;
        let store = Store {
            backend: Backend::Sqlite(pool),
            sqlite_file: Some(path.to_path_buf()),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// PostgreSQL at `url`. Errors never repeat the URL: it usually carries a password.
    pub async fn open_postgres(
        url: &SecretString,
        max_connections: u64,
        acquire_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| {
                StoreError::Open(
                    "database.url is not a valid PostgreSQL URL (postgres://user:password@host:port/database)"
                        .into(),
                )
            })?
            // The chain's conditional append and the migrations' advisory lock rely on READ
            // COMMITTED (each statement sees what committed before it): a database whose
            // default is REPEATABLE READ or SERIALIZABLE would fail them under concurrency.
            // Notices stay on the server: the schema check every start makes (`CREATE TABLE IF
            // NOT EXISTS`) would otherwise put "already exists, skipping" in every command's output.
            .options([
                ("synchronous_commit", "on"),
                ("default_transaction_isolation", "read committed"),
                ("client_min_messages", "warning"),
            ]);
        // Host and port are not secret, and say which server could not be reached.
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(max_connections.max(2)).unwrap_or(u32::MAX))
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Open(format!("PostgreSQL at {server}: {}", redact_sqlx(&e)))
            })?;
        let store = Store {
            backend: Backend::Postgres(pool),
            sqlite_file: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether several replicas may share this store (PostgreSQL); SQLite is one host's.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// A round trip to the database, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, |pool, d| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// The stored value of key slot `name` (see `keyring`), if any.
    pub async fn key_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        on_backend!(self, |pool, d| {
            Ok(
                sqlx::query_scalar("SELECT value FROM rise_keys WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// The stored values of the key slots `names` that exist, read in one statement, so
    /// together they are one state of the table: never half of a rotation.
    pub async fn key_get_all_of(
        &self,
        names: &[String; 3],
    ) -> Result<Vec<(String, String)>, StoreError> {
        on_backend!(self, |pool, d| {
            Ok(
                sqlx::query_as("SELECT name, value FROM rise_keys WHERE name IN ($1, $2, $3)")
                    .bind(names[0].as_str())
                    .bind(names[1].as_str())
                    .bind(names[2].as_str())
                    .fetch_all(pool)
                    .await?,
            )
        })
    }

    /// When key slot `name` was last written (ms since the epoch), if it exists.
    pub async fn key_updated_ms(&self, name: &str) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |pool, d| {
            Ok(
                sqlx::query_scalar("SELECT updated_ms FROM rise_keys WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?,
            )
        })
    }

    /// The stored value of key slot `name`, storing `value` first if the slot is empty. The
    /// first writer wins: concurrent callers all get the same value back.
    pub async fn key_get_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        on_backend!(self, |pool, d| {
            sqlx::query(
                "INSERT INTO rise_keys (name, value, updated_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(value)
            .bind(crate::audit::unix_ms(std::time::SystemTime::now()))
            .execute(pool)
            .await?;
            self.key_get(name)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("key slot {name} vanished")))
        })
    }

    /// Record a revocation (see [`Revocation`]).
    pub async fn revocation_add(&self, r: &Revocation) -> Result<(), StoreError> {
        on_backend!(self, |pool, d| {
            sqlx::query(
                "INSERT INTO rise_revocations (kind, value, before_ms, created_ms, until_ms, reason)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&r.kind)
            .bind(&r.value)
            .bind(r.before_ms)
            .bind(r.created_ms)
            .bind(r.until_ms)
            .bind(&r.reason)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The revocations still in force at `now_ms` (`until_ms` later), oldest first.
    pub async fn revocations_active(&self, now_ms: i64) -> Result<Vec<Revocation>, StoreError> {
        on_backend!(self, |pool, d| {
            let rows: Vec<(String, String, i64, i64, i64, String)> = sqlx::query_as(
                "SELECT kind, value, before_ms, created_ms, until_ms, reason
                 FROM rise_revocations WHERE until_ms > $1 ORDER BY created_ms, kind, value",
            )
            .bind(now_ms)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(
                    |(kind, value, before_ms, created_ms, until_ms, reason)| Revocation {
                        kind,
                        value,
                        before_ms,
                        created_ms,
                        until_ms,
                        reason,
                    },
                )
                .collect())
        })
    }

    /// Every key slot and its stored value, by name.
    pub async fn key_all(&self) -> Result<Vec<(String, String)>, StoreError> {
        on_backend!(self, |pool, d| {
            Ok(
                sqlx::query_as("SELECT name, value FROM rise_keys ORDER BY name")
                    .fetch_all(pool)
                    .await?,
            )
        })
    }

    /// Replace slot `name`'s value with `new` if it still holds `old`; whether it did. The
    /// slot's write time stays: it dates the last rotation, which this is not.
    pub async fn key_replace(&self, name: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        on_backend!(self, |pool, d| {
            let done =
                sqlx::query("UPDATE rise_keys SET value = $3 WHERE name = $1 AND value = $2")
                    .bind(name)
                    .bind(old)
                    .bind(new)
                    .execute(pool)
                    .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Rotate the slots `[previous, current, next]` in one transaction: `previous ← current`,
    /// `current ← next`, `next ← fresh`. `reseal((from, to), value)` re-encodes a value for its
    /// new slot. Concurrent rotations serialise on the row locks (SQLite: the write lock).
    /// With `expected_next`, the rotation happens only if it accepts the stored `next` value.
    pub async fn key_rotate(
        &self,
        rows: &[String; 3],
        fresh: String,
        expected_next: Option<impl Fn(&str) -> bool>,
        reseal: impl Fn((&str, &str), &str) -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let [previous, current, next] = rows;
        let now = crate::audit::unix_ms(std::time::SystemTime::now());
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let select = d.pick(
                "SELECT value FROM rise_keys WHERE name = $1",
                "SELECT value FROM rise_keys WHERE name = $1 FOR UPDATE",
            );
            let mut read = async |name: &str| -> anyhow::Result<String> {
                let value: Option<String> = sqlx::query_scalar(select)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
                value.with_context(|| format!("key slot {name} is empty: nothing to rotate"))
            };
            let old_current = read(current).await?;
            let old_next = read(next).await?;
            if expected_next
                .as_ref()
                .is_some_and(|expected| !expected(&old_next))
            {
                // Dropping the transaction rolls it back: nothing changes.
                anyhow::bail!(crate::keyring::ROTATED_MEANWHILE);
            }
            let updates = [
                (previous, reseal((current, previous), &old_current)?),
                (current, reseal((next, current), &old_next)?),
                (next, fresh),
            ];
            for (name, value) in updates {
                sqlx::query(
                    "INSERT INTO rise_keys (name, value, updated_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                )
                .bind(name.as_str())
                .bind(value)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// A SQLite store's audit appender (a connection of its own, for one thread); `None` for
    /// PostgreSQL, which appends through [`append_audit`](Self::append_audit).
    pub(crate) fn sqlite_appender(&self) -> Option<SqliteAppender> {
        self.sqlite_file.as_deref().map(SqliteAppender::new)
    }

    /// The SQLite pool, for tools and tests that inspect the database directly.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(p) => Some(p),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, for tools and tests that inspect the database directly.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// Close the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        on_backend!(self, |pool, d| pool.close().await)
    }

    /// Apply every migration not yet recorded in `rise_schema_migrations`, under a lock so
    /// replicas starting together do not race.
    async fn migrate(&self) -> Result<(), StoreError> {
        let latest = latest_migration(match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        });
        if let Some(version) = self.current_schema().await {
            if version > latest {
                tracing::warn!(
                    database = version,
                    this_server = latest,
                    "the database schema is newer than this server's: a newer Rise migrated it; upgrade this server (replicas of mixed versions are meant only for the length of a rolling upgrade)"
                );
            }
            if version >= latest {
                return Ok(());
            }
        }
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            if let Dialect::Postgres = d {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS rise_schema_migrations (
                    version BIGINT PRIMARY KEY,
                    applied_ms BIGINT NOT NULL
                )",
            )
            .execute(&mut *tx)
            .await?;
            let current: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM rise_schema_migrations")
                    .fetch_one(&mut *tx)
                    .await?;
            let current = current.unwrap_or(0);
            for &(version, statements) in migrations(d) {
                if version <= current {
                    continue;
                }
                for &statement in statements {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO rise_schema_migrations (version, applied_ms) VALUES ($1, $2)",
                )
                .bind(version)
                .bind(crate::audit::unix_ms(std::time::SystemTime::now()))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO audit_chain (name, head_id, head_hash) VALUES ($1, 0, $2)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(CHAIN)
            .bind(chain::GENESIS)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The schema version, when the schema and the chain's head row are in place, read without
    /// writing: at this build's version (or later) opening writes nothing, so a role that may only
    /// read (an auditor running `audit verify`) can open the store. `None` (no schema yet, or any
    /// error) means "migrate".
    async fn current_schema(&self) -> Option<i64> {
        on_backend!(self, |pool, d| {
            let version: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM rise_schema_migrations")
                    .fetch_one(pool)
                    .await
                    .ok()?;
            let head: Option<i64> =
                sqlx::query_scalar("SELECT head_id FROM audit_chain WHERE name = $1")
                    .bind(CHAIN)
                    .fetch_optional(pool)
                    .await
                    .ok()?;
            head.and(version)
        })
    }

    /// Append `records` to the chain atomically; returns their ids, in order. Either all are
    /// durably committed or none is. PostgreSQL only: a SQLite store appends through its
    /// [`SqliteAppender`], on a thread of its own.
    ///
    /// `head` is the writer's idea of the chain head (`None`: read it). The append is ONE
    /// statement whose commit is conditional on that head still being the head: a
    /// data-modifying CTE advances `audit_chain` only from the expected head and inserts only if
    /// it did. When another writer (a replica) moved the head, nothing is written, the head is
    /// re-read under a row lock on the head (fair among replicas) and the batch re-sealed. So
    /// the steady state of one writer costs one round trip and one commit per batch.
    pub(crate) async fn append_audit(
        &self,
        records: &[&RecordFields],
        head: &mut Option<(i64, String)>,
    ) -> Result<Vec<i64>, StoreError> {
        let Backend::Postgres(pool) = &self.backend else {
            return Err(StoreError::Append(
                "a SQLite store appends through its SqliteAppender".into(),
            ));
        };
        // The optimistic append first: one round trip when this writer owns the head.
        if let Some((head_id, head_hash)) = head.take() {
            let batch = Sealed::new(head_id, head_hash, records);
            if pg_append(pool, &batch).await? {
                *head = Some((batch.head_id(), batch.head_hash().to_owned()));
                return Ok(batch.ids);
            }
        }
        // Another writer moved the head (or we do not know it): lock the head row, then seal
        // and append under that lock. PostgreSQL queues row locks fairly, so a writer that
        // keeps losing the optimistic race cannot be starved by one that keeps winning it.
        {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(
                "SELECT head_id, head_hash FROM audit_chain WHERE name = $1 FOR UPDATE",
            )
            .bind(CHAIN)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the audit_chain head row is missing".into()))?;
            let batch = Sealed::new(row.try_get("head_id")?, row.try_get("head_hash")?, records);
            if pg_append(&mut *tx, &batch).await? {
                tx.commit().await?;
                *head = Some((batch.head_id(), batch.head_hash().to_owned()));
                return Ok(batch.ids);
            }
            // Under the lock the head cannot move: the ids after it are taken by rows the head
            // row does not know of (written outside the chain). Release the lock before saying so.
            tx.rollback().await?;
        }
        Err(StoreError::Corrupt(ROWS_PAST_HEAD.into()))
    }

    /// Records matching `filter`, by ascending id, at most `filter.limit`.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>, StoreError> {
        let sql = filtered_select(filter);
        on_backend!(self, |pool, d| {
            // Bound in the order `filtered_select` wrote the conditions. The text is built
            // from constant fragments and placeholders only; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(filter.after_id);
            if let Some(v) = &filter.project {
                query = query.bind(v);
            }
            if let Some(v) = &filter.subject {
                query = query.bind(v);
            }
            if let Some(v) = &filter.issuer {
                query = query.bind(v);
            }
            if let Some(v) = filter.result {
                query = query.bind(v.as_str());
            }
            if let Some(v) = filter.since {
                query = query.bind(crate::audit::unix_ms(v));
            }
            if let Some(v) = filter.until {
                query = query.bind(crate::audit::unix_ms(v));
            }
            let rows = query.bind(i64::from(filter.limit)).fetch_all(pool).await?;
            rows.iter().map(decode_record).collect()
        })
    }

    /// Every record with `id > after_id`, by ascending id, at most `limit` (for verification).
    pub async fn audit_scan(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(SELECT_SCAN)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(decode_record).collect()
        })
    }

    /// How many rows have an id the chain cannot have (below 1): none were ever written by Rise.
    pub async fn audit_rows_before_the_chain(&self) -> Result<i64, StoreError> {
        on_backend!(self, |pool, d| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE id < 1")
                .fetch_one(pool)
                .await?;
            Ok(row.try_get("n")?)
        })
    }

    /// The chain head: the id and hash of the last record (`0` and the genesis hash when empty).
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        on_backend!(self, |pool, d| {
            let row = sqlx::query("SELECT head_id, head_hash FROM audit_chain WHERE name = $1")
                .bind(CHAIN)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::Corrupt("the audit_chain head row is missing".into()))?;
            Ok((row.try_get("head_id")?, row.try_get("head_hash")?))
        })
    }
}

/// A batch with its chain positions and hashes, in column order for binding.
struct Sealed<'a> {
    records: &'a [&'a RecordFields],
    ids: Vec<i64>,
    prev_hashes: Vec<String>,
    hashes: Vec<String>,
    /// The head before the batch, for an empty batch.
    previous_head: (i64, String),
}

impl<'a> Sealed<'a> {
    fn new(head_id: i64, head_hash: String, records: &'a [&'a RecordFields]) -> Self {
        let mut ids = Vec::with_capacity(records.len());
        let mut prev_hashes = Vec::with_capacity(records.len());
        let mut hashes = Vec::with_capacity(records.len());
        let mut id = head_id;
        let mut prev = head_hash.clone();
        for f in records {
            id += 1;
            let hash = chain::seal(&prev, id, f);
            ids.push(id);
            prev_hashes.push(std::mem::replace(&mut prev, hash.clone()));
            hashes.push(hash);
        }
        Self {
            records,
            ids,
            prev_hashes,
            hashes,
            previous_head: (head_id, head_hash),
        }
    }

    fn head_id(&self) -> i64 {
        self.ids.last().copied().unwrap_or(self.previous_head.0)
    }

    fn head_hash(&self) -> &str {
        self.hashes.last().unwrap_or(&self.previous_head.1)
    }

    fn column<T>(&self, get: impl Fn(&RecordFields) -> T) -> Vec<T> {
        self.records.iter().map(|f| get(f)).collect()
    }
}

/// Whether an append failed only because another writer got there first.
fn head_moved(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

/// Write a sealed batch if the chain head is still the one it was sealed on; `false` when
/// another writer moved it (nothing was written). The whole batch is ONE statement (arrays +
/// `UNNEST`), conditional on the head.
async fn pg_append<'e, E>(executor: E, batch: &Sealed<'_>) -> Result<bool, StoreError>
where
    E: sqlx::PgExecutor<'e>,
{
    {
        let result = sqlx::query(APPEND_RECORDS_PG)
            .bind(&batch.ids)
            .bind(batch.column(|f| f.time_ms))
            .bind(batch.column(|f| f.request_id.clone()))
            .bind(batch.column(|f| f.operation.clone()))
            .bind(batch.column(|f| f.issuer.clone()))
            .bind(batch.column(|f| f.subject.clone()))
            .bind(batch.column(|f| f.groups.clone()))
            .bind(batch.column(|f| f.client_ip.clone()))
            .bind(batch.column(|f| f.user_agent.clone()))
            .bind(batch.column(|f| f.project.clone()))
            .bind(batch.column(|f| f.registry.clone()))
            .bind(batch.column(|f| f.repository.clone()))
            .bind(batch.column(|f| f.actions_requested.clone()))
            .bind(batch.column(|f| f.actions_granted.clone()))
            .bind(batch.column(|f| f.result.clone()))
            .bind(batch.column(|f| f.reason.clone()))
            .bind(batch.column(|f| f.expires_ms))
            .bind(batch.column(|f| f.fingerprint.clone()))
            .bind(batch.column(|f| f.credential_id.clone()))
            .bind(&batch.prev_hashes)
            .bind(&batch.hashes)
            .bind(CHAIN)
            .bind(batch.previous_head.0)
            .bind(&batch.previous_head.1)
            .bind(batch.head_id())
            .bind(batch.head_hash())
            .execute(executor)
            .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == batch.records.len() as u64),
            Err(e) if head_moved(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// sqlx's connection errors can quote the host; they never quote the password, but keep only
/// the kind of failure to be safe.
fn redact_sqlx(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!("server refused: {}", db.message()),
        // The OS's words (refused, unknown host): they never carry the URL or its password.
        sqlx::Error::Io(io) => format!("I/O error: {io}"),
        sqlx::Error::Tls(_) => "TLS error".into(),
        sqlx::Error::PoolTimedOut => "timed out connecting".into(),
        other => other.to_string(),
    }
}

fn decode_record<R>(row: &R) -> Result<StoredRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredRecord {
        id: row.try_get("id")?,
        fields: RecordFields {
            time_ms: row.try_get("time_ms")?,
            request_id: row.try_get("request_id")?,
            operation: row.try_get("operation")?,
            issuer: row.try_get("issuer")?,
            subject: row.try_get("subject")?,
            groups: row.try_get("caller_groups")?,
            client_ip: row.try_get("client_ip")?,
            user_agent: row.try_get("user_agent")?,
            project: row.try_get("project")?,
            registry: row.try_get("registry")?,
            repository: row.try_get("repository")?,
            actions_requested: row.try_get("actions_requested")?,
            actions_granted: row.try_get("actions_granted")?,
            result: row.try_get("result")?,
            reason: row.try_get("reason")?,
            expires_ms: row.try_get("expires_ms")?,
            fingerprint: row.try_get("fingerprint")?,
            credential_id: row.try_get("credential_id")?,
        },
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// The head of an `INSERT` of audit records, in [`RecordFields`] order.
/// Create the SQLite file 0600 if it does not exist, so that the database and the WAL and
/// shared-memory files SQLite gives the same mode are readable by Rise's user alone: the audit
/// log names callers and their addresses. An existing file keeps its mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Open(format!(
            "creating SQLite database {}: {e}",
            path.display()
        ))),
    }
}

const INSERT_RECORDS_HEAD: &str = "INSERT INTO audit_log (
    id, time_ms, request_id, operation, issuer, subject, caller_groups, client_ip, user_agent,
    project, registry, repository, actions_requested, actions_granted, result, reason,
    expires_ms, fingerprint, credential_id, prev_hash, hash
) ";

/// Advance the head from the expected one and, only if that happened, insert the batch; one
/// statement, one implicit transaction. A concurrent append blocks on the head row, then finds
/// it moved and writes nothing.
const APPEND_RECORDS_PG: &str = "WITH head AS (
    UPDATE audit_chain SET head_id = $25, head_hash = $26
    WHERE name = $22 AND head_id = $23 AND head_hash = $24
    RETURNING 1
)
INSERT INTO audit_log (
    id, time_ms, request_id, operation, issuer, subject, caller_groups, client_ip, user_agent,
    project, registry, repository, actions_requested, actions_granted, result, reason,
    expires_ms, fingerprint, credential_id, prev_hash, hash
) SELECT * FROM UNNEST(
    $1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
    $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], $14::TEXT[],
    $15::TEXT[], $16::TEXT[], $17::BIGINT[], $18::TEXT[], $19::TEXT[], $20::TEXT[], $21::TEXT[]
) WHERE EXISTS (SELECT 1 FROM head)";

/// The page of `filter` as SQL naming only the conditions it sets, so the planner can use the
/// `(project, id)` and `(subject, id)` indexes (an `$n IS NULL OR ...` form defeats them).
/// Placeholders follow the order: after_id, project, subject, issuer, result, since, until,
/// limit, skipping those not set.
fn filtered_select(filter: &AuditFilter) -> String {
    let mut sql = String::from("SELECT * FROM audit_log WHERE id > $1");
    let mut n = 1;
    let conditions = [
        (filter.project.is_some(), "project ="),
        (filter.subject.is_some(), "subject ="),
        (filter.issuer.is_some(), "issuer ="),
        (filter.result.is_some(), "result ="),
        (filter.since.is_some(), "time_ms >="),
        (filter.until.is_some(), "time_ms <"),
    ];
    for (set, condition) in conditions {
        if set {
            n += 1;
            sql.push_str(&format!(" AND {condition} ${n}"));
        }
    }
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", n + 1));
    sql
}

const SELECT_SCAN: &str = "SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2";

/// A revocation of grants: those it matches are refused at `/token` (by subject: those issued
/// no later than the second of `before_ms`). `kind` is `credential` (`value`: a grant's credential id, as in the audit log)
/// or `subject` (`value`: `ISSUER/SUBJECT`). After `until_ms` every grant it can match has
/// expired, and it is no longer loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub kind: String,
    pub value: String,
    pub before_ms: i64,
    pub created_ms: i64,
    pub until_ms: i64,
    pub reason: String,
}

/// Versioned schema changes, per dialect. Append new versions; never edit an applied one.
/// The version the last migration of this build brings the schema to.
fn latest_migration(d: Dialect) -> i64 {
    migrations(d).iter().map(|&(v, _)| v).max().unwrap_or(0)
}

fn migrations(d: Dialect) -> &'static [(i64, &'static [&'static str])] {
    match d {
        Dialect::Sqlite => &[
            (1, V1_SQLITE),
            (2, V2_KEYS),
            (3, V3_SQLITE_HEAD_TRIGGER),
            (4, V4_NO_FINGERPRINT_INDEX),
            (5, V5_SQLITE_NO_HEAD_TRIGGER),
            (6, V6_REVOCATIONS),
        ],
        Dialect::Postgres => &[
            (1, V1_POSTGRES),
            (2, V2_KEYS),
            (4, V4_NO_FINGERPRINT_INDEX),
            (6, V6_REVOCATIONS),
        ],
    }
}

const V1_SQLITE: &[&str] = &[
    // `id INTEGER PRIMARY KEY` is SQLite's rowid: ids are assigned by the writer, not by SQLite.
    "CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        operation TEXT NOT NULL,
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        caller_groups TEXT NOT NULL,
        client_ip TEXT,
        user_agent TEXT,
        project TEXT,
        registry TEXT,
        repository TEXT,
        actions_requested TEXT NOT NULL,
        actions_granted TEXT NOT NULL,
        result TEXT NOT NULL,
        reason TEXT NOT NULL,
        expires_ms INTEGER,
        fingerprint TEXT,
        credential_id TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX audit_log_project ON audit_log (project, id)",
    "CREATE INDEX audit_log_subject ON audit_log (subject, id)",
    "CREATE INDEX audit_log_time ON audit_log (time_ms)",
    "CREATE INDEX audit_log_fingerprint ON audit_log (fingerprint)",
    "CREATE TABLE audit_chain (
        name TEXT PRIMARY KEY,
        head_id INTEGER NOT NULL,
        head_hash TEXT NOT NULL
    )",
];

const V1_POSTGRES: &[&str] = &[
    "CREATE TABLE audit_log (
        id BIGINT PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        operation TEXT NOT NULL,
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        caller_groups TEXT NOT NULL,
        client_ip TEXT,
        user_agent TEXT,
        project TEXT,
        registry TEXT,
        repository TEXT,
        actions_requested TEXT NOT NULL,
        actions_granted TEXT NOT NULL,
        result TEXT NOT NULL,
        reason TEXT NOT NULL,
        expires_ms BIGINT,
        fingerprint TEXT,
        credential_id TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    "CREATE INDEX audit_log_project ON audit_log (project, id)",
    "CREATE INDEX audit_log_subject ON audit_log (subject, id)",
    "CREATE INDEX audit_log_time ON audit_log (time_ms)",
    "CREATE INDEX audit_log_fingerprint ON audit_log (fingerprint)",
    "CREATE TABLE audit_chain (
        name TEXT PRIMARY KEY,
        head_id BIGINT NOT NULL,
        head_hash TEXT NOT NULL
    )",
];

/// Generated keys shared by replicas (`keyring`): one row per slot, values sealed.
const V2_KEYS: &[&str] = &["CREATE TABLE rise_keys (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    )"];

/// (Dropped by version 5.) When SQLite appends were single statements, this trigger refused a
/// record not following the chain head (another writer appended first) and advanced the head.
const V3_SQLITE_HEAD_TRIGGER: &[&str] = &["CREATE TRIGGER audit_log_follows_head
    AFTER INSERT ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'audit chain head moved')
        WHERE NOT EXISTS (
            SELECT 1 FROM audit_chain
            WHERE name = 'audit' AND head_id = NEW.id - 1 AND head_hash = NEW.prev_hash
        );
        UPDATE audit_chain SET head_id = NEW.id, head_hash = NEW.hash WHERE name = 'audit';
    END"];

/// The appender checks and moves the head once per batch, in the transaction that inserts
/// it; the per-row trigger of version 3 would refuse those rows (and cost a quarter of the
/// insert's CPU).
const V5_SQLITE_NO_HEAD_TRIGGER: &[&str] = &["DROP TRIGGER IF EXISTS audit_log_follows_head"];

/// No query looks records up by fingerprint, and an index on a random value dirties one more
/// page per record in every commit; find a credential's record with `audit export` instead.
const V4_NO_FINGERPRINT_INDEX: &[&str] = &["DROP INDEX IF EXISTS audit_log_fingerprint"];

/// Revoked grants (see [`Revocation`]); a handful of rows, read whole by every replica.
const V6_REVOCATIONS: &[&str] = &["CREATE TABLE rise_revocations (
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        before_ms BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        until_ms BIGINT NOT NULL,
        reason TEXT NOT NULL
    )"];

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening an existing store where there is none names the file and what to check, rather
    /// than SQLite's "unable to open database file", and creates nothing.
    #[tokio::test]
    async fn a_missing_sqlite_file_is_named_with_what_to_check() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rise.db");
        let err = Store::open_sqlite(&path, false)
            .await
            .expect_err("no database there");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("server.data_dir"), "{message}");
        assert!(!path.exists());
    }

    /// A new database, and the WAL and shared-memory files beside it, are for Rise's user alone;
    /// a database the operator made keeps its mode.
    #[tokio::test]
    async fn a_new_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("rise.db");
        // The schema's migration has written through the WAL; the pool keeps it open.
        let store = Store::open_sqlite(&path, true).await.expect("store");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        for file in ["rise.db", "rise.db-wal", "rise.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        drop(store);

        let theirs = dir.path().join("theirs.db");
        std::fs::write(&theirs, b"").expect("create");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let _store = Store::open_sqlite(&theirs, true).await.expect("store");
        assert_eq!(mode(&theirs), 0o640);
    }

    /// A page filtered by project or subject is read through its index, not by scanning the log.
    #[tokio::test]
    async fn filtered_pages_use_the_indexes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_sqlite(&dir.path().join("rise.db"), true)
            .await
            .expect("store");
        let pool = store.sqlite_pool().expect("sqlite");
        for (filter, index) in [
            (
                AuditFilter {
                    project: Some("my-app".into()),
                    limit: 10,
                    ..Default::default()
                },
                "audit_log_project",
            ),
            (
                AuditFilter {
                    subject: Some("alice".into()),
                    result: Some(crate::audit::Outcome::Denied),
                    limit: 10,
                    ..Default::default()
                },
                "audit_log_subject",
            ),
        ] {
            let sql = filtered_select(&filter);
            // after_id, then one text value per condition, then the limit.
            let mut query =
                sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))).bind(0i64);
            for _ in 2..sql.matches('$').count() {
                query = query.bind("x");
            }
            let plan: Vec<String> = query
                .bind(10i64)
                .fetch_all(pool)
                .await
                .expect("plan")
                .iter()
                .map(|row| row.get::<String, _>("detail"))
                .collect();
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{sql}: {plan:?}"
            );
        }
        assert_eq!(
            filtered_select(&AuditFilter {
                project: Some("p".into()),
                until: Some(std::time::SystemTime::now()),
                limit: 1,
                ..Default::default()
            }),
            "SELECT * FROM audit_log WHERE id > $1 AND project = $2 AND time_ms < $3 ORDER BY id LIMIT $4"
        );
    }
}
