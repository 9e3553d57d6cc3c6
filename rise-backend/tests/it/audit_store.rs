//! The durable store and the audit log, one suite run against SQLite (a file in a temp dir, as in
//! production) and against a real PostgreSQL server.
//!
//! Each test is an `async fn(Backend)`; `suite!` instantiates it once per backend.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use rise_backend::audit::{
    self, AuditError, AuditFilter, AuditLog, AuditRecord, AuditSettings, CallerInfo, LinkProblem,
    Operation, Outcome, chain,
};
use rise_backend::registry::Actions;
use rise_backend::store::{Revocation, Store};
use secrecy::SecretString;
use tempfile::TempDir;

use crate::support::postgres::Postgres;

/// A store and what keeps it alive. `reopen` opens a second, independent handle on the same
/// database, as a restarted process or another replica would.
pub struct Backend {
    pub store: Store,
    location: Location,
}

enum Location {
    Sqlite {
        dir: TempDir,
    },
    Postgres {
        url: String,
        // Declared last: dropped (stopped) after the store that uses it.
        _server: Box<Postgres>,
    },
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_sqlite(&dir.path().join("rise.db"), true)
            .await
            .expect("open SQLite store");
        Self {
            store,
            location: Location::Sqlite { dir },
        }
    }

    async fn postgres() -> Self {
        let server = Postgres::start().await;
        let url = server.create_database("rise").await;
        let store = open_pg(&url).await;
        Self {
            store,
            location: Location::Postgres {
                url,
                _server: Box::new(server),
            },
        }
    }

    async fn reopen(&self) -> Store {
        match &self.location {
            Location::Sqlite { dir } => Store::open_sqlite(&dir.path().join("rise.db"), false)
                .await
                .expect("reopen SQLite store"),
            Location::Postgres { url, .. } => open_pg(url).await,
        }
    }

    /// Run one statement directly against the database, as an attacker with DB access would.
    async fn execute(&self, sql: String) {
        let sql = sqlx::AssertSqlSafe(sql);
        let result = if let Some(pool) = self.store.sqlite_pool() {
            sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        } else if let Some(pool) = self.store.postgres_pool() {
            sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        } else {
            unreachable!("a store is SQLite or PostgreSQL")
        };
        result.expect("direct SQL");
    }

    fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Hold what an append needs (SQLite's write lock; PostgreSQL's chain head row) in another
    /// transaction until the returned guard is released: writers block on their next commit.
    async fn hold_writes(&self) -> HeldWrites {
        use sqlx::Connection as _;
        match &self.location {
            Location::Sqlite { dir } => {
                let url = format!("sqlite://{}", dir.path().join("rise.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("connect");
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .expect("take the write lock");
                HeldWrites::Sqlite(conn)
            }
            Location::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
                sqlx::query("BEGIN")
                    .execute(&mut conn)
                    .await
                    .expect("begin");
                sqlx::query("SELECT 1 FROM audit_chain FOR UPDATE")
                    .execute(&mut conn)
                    .await
                    .expect("lock the chain head");
                HeldWrites::Postgres(conn)
            }
        }
    }
}

enum HeldWrites {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl HeldWrites {
    async fn release(self) {
        match self {
            HeldWrites::Sqlite(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(drop),
            HeldWrites::Postgres(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(drop),
        }
        .expect("release");
    }
}

async fn open_pg(url: &str) -> Store {
    Store::open_postgres(
        &SecretString::from(url.to_owned()),
        8,
        Duration::from_secs(10),
    )
    .await
    .expect("open PostgreSQL store")
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::postgres().await).await
                }
            )*
        }
    };
}

suite!(
    records_round_trip_exactly,
    concurrent_records_share_transactions,
    chain_verifies_across_reopen,
    verify_names_an_altered_record,
    verify_names_a_rehashed_record_by_its_successor,
    verify_names_removed_records,
    verify_names_rows_outside_the_chain,
    anchors_catch_a_rewrite_the_chain_alone_cannot,
    verify_while_writers_append_is_intact,
    filters_and_paging,
    store_failure_refuses_the_record,
    full_queue_refuses_at_once,
    two_writers_append_to_one_chain,
    many_contending_writers_are_never_refused,
    rows_planted_past_the_head_refuse_appends_at_once,
);

fn caller(subject: &str) -> CallerInfo {
    CallerInfo {
        issuer: "local".into(),
        subject: subject.into(),
        groups: vec!["dev".into(), "ops \"quoted\"".into()],
        client_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        user_agent: Some("skopeo/1.9.3".into()),
    }
}

fn record(subject: &str, project: &str, outcome: Outcome) -> AuditRecord {
    let mut r = AuditRecord::begin(
        Operation::Credentials,
        &format!("req-{subject}-{project}"),
        caller(subject),
    );
    r.project = Some(project.into());
    r.registry = Some("default".into());
    r.repository = Some(project.into());
    r.actions_requested = Actions::PUSH_PULL;
    match outcome {
        Outcome::Granted => {
            r.outcome = Outcome::Granted;
            r.reason = "issued".into();
            r.actions_granted = Actions::PUSH_PULL;
            r.expires_at = Some(SystemTime::now() + Duration::from_secs(900));
            r.fingerprint = Some(audit::fingerprint(&format!("secret-{subject}-{project}")));
        }
        Outcome::Denied => r.refused(false, "forbidden"),
        Outcome::Failed => r.refused(true, "upstream_error"),
    }
    r
}

fn log(store: &Store) -> AuditLog {
    AuditLog::start(store.clone(), AuditSettings::default())
}

async fn write_n(log: &AuditLog, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let outcome = [Outcome::Granted, Outcome::Denied, Outcome::Failed][i % 3];
        ids.push(
            log.record(&record(&format!("user{i}"), "my-app", outcome))
                .await
                .expect("record commits"),
        );
    }
    ids
}

async fn all_records(store: &Store) -> Vec<audit::StoredRecord> {
    store.audit_scan(0, 100_000).await.expect("scan")
}

async fn records_round_trip_exactly(b: Backend) {
    let log = log(&b.store);
    let mut r = record("alice", "my-app", Outcome::Granted);
    r.credential_id = Some("jti-123".into());
    r.caller.user_agent = Some("ünïcode agent".into());
    let id = log.record(&r).await.expect("commit");
    assert_eq!(id, 1, "{}: ids start at 1", b.kind());
    let stored = all_records(&b.store).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, 1);
    assert_eq!(
        stored[0].fields,
        r.fields(),
        "{}: stored as given",
        b.kind()
    );
    assert_eq!(stored[0].prev_hash, chain::GENESIS);
    assert_eq!(stored[0].hash, chain::seal(chain::GENESIS, 1, &r.fields()));
    // The secret itself is nowhere in the record.
    assert!(
        !format!("{:?}", stored[0]).contains("secret-alice"),
        "credential leaked into the record"
    );
}

/// Group commit: N records submitted together are committed in far fewer than N transactions.
async fn concurrent_records_share_transactions(b: Backend) {
    const N: usize = 200;
    let log = log(&b.store);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let log = log.clone();
        tasks.spawn(async move {
            log.record(&record(&format!("u{i}"), "my-app", Outcome::Granted))
                .await
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ids.push(joined.expect("task").expect("record commits"));
    }
    ids.sort();
    assert_eq!(ids, (1..=N as i64).collect::<Vec<_>>(), "gapless ids");
    let stats = log.stats();
    assert_eq!(stats.records, N as u64);
    assert!(
        stats.transactions >= 1 && stats.transactions < (N / 2) as u64,
        "{}: {N} concurrent records took {} transactions: not batched",
        b.kind(),
        stats.transactions
    );
    let report = audit::verify(&b.store).await.expect("verify");
    assert_eq!((report.records, report.broken), (N as u64, None));
}

async fn chain_verifies_across_reopen(b: Backend) {
    let report = audit::verify(&b.store).await.expect("verify empty");
    assert_eq!((report.records, report.head_id), (0, 0));
    assert_eq!(report.broken, None);

    write_n(&log(&b.store), 10).await;
    let reopened = b.reopen().await;
    let ids = write_n(&log(&reopened), 5).await;
    assert_eq!(ids, (11..=15).collect::<Vec<_>>(), "the chain continues");
    let report = audit::verify(&reopened).await.expect("verify");
    assert_eq!(report.records, 15);
    assert_eq!(report.head_id, 15);
    assert_eq!(report.broken, None, "{}", b.kind());
}

async fn verify_names_an_altered_record(b: Backend) {
    write_n(&log(&b.store), 10).await;
    b.execute("UPDATE audit_log SET subject = 'mallory' WHERE id = 4".into())
        .await;
    let report = audit::verify(&b.store).await.expect("verify");
    let broken = report.broken.expect("tampering detected");
    assert_eq!((broken.id, &broken.problem), (4, &LinkProblem::Altered));
    assert_eq!(report.records, 3, "records before the break are intact");
    assert!(
        broken.to_string().contains("record 4 was altered"),
        "{broken}"
    );
}

/// An attacker who also recomputes the altered record's hash breaks the link to the next one.
async fn verify_names_a_rehashed_record_by_its_successor(b: Backend) {
    write_n(&log(&b.store), 10).await;
    let stored = all_records(&b.store).await;
    let mut forged = stored[3].fields.clone();
    forged.result = "denied".into();
    let hash = chain::seal(&stored[3].prev_hash, 4, &forged);
    b.execute(format!(
        "UPDATE audit_log SET result = 'denied', hash = '{hash}' WHERE id = 4"
    ))
    .await;
    let broken = audit::verify(&b.store)
        .await
        .expect("verify")
        .broken
        .expect("tampering detected");
    assert_eq!((broken.id, broken.problem), (5, LinkProblem::Unlinked));
}

async fn verify_names_removed_records(b: Backend) {
    write_n(&log(&b.store), 10).await;
    b.execute("DELETE FROM audit_log WHERE id = 7".into()).await;
    let broken = audit::verify(&b.store)
        .await
        .expect("verify")
        .broken
        .expect("removal detected");
    assert_eq!(
        (broken.id, broken.problem),
        (8, LinkProblem::Gap { expected: 7 })
    );

    b.execute("DELETE FROM audit_log WHERE id >= 7".into())
        .await;
    let broken = audit::verify(&b.store)
        .await
        .expect("verify")
        .broken
        .expect("truncation detected");
    assert_eq!(
        (broken.id, broken.problem),
        (10, LinkProblem::HeadMismatch { last_id: 6 })
    );
}

/// A row with an id below 1 is outside the chain, where no walk from record 1 would see it.
async fn verify_names_rows_outside_the_chain(b: Backend) {
    write_n(&log(&b.store), 3).await;
    b.execute(
        "INSERT INTO audit_log SELECT -1, time_ms, request_id, operation, issuer, 'mallory', \
         caller_groups, client_ip, user_agent, project, registry, repository, \
         actions_requested, actions_granted, result, reason, expires_ms, fingerprint, \
         credential_id, prev_hash, hash FROM audit_log WHERE id = 1"
            .into(),
    )
    .await;
    let broken = audit::verify(&b.store)
        .await
        .expect("verify")
        .broken
        .expect("the planted row is found");
    assert_eq!(
        (broken.id, broken.problem),
        (0, LinkProblem::BeforeTheChain { rows: 1 })
    );
}

/// A row planted right after the head (outside the chain) takes the id the next record needs:
/// appends are refused at once, naming the problem, instead of retrying as if the head moved.
async fn rows_planted_past_the_head_refuse_appends_at_once(b: Backend) {
    let first = log(&b.store);
    write_n(&first, 2).await;
    b.execute(
        "INSERT INTO audit_log SELECT 3, time_ms, request_id, operation, issuer, 'mallory', \
         caller_groups, client_ip, user_agent, project, registry, repository, \
         actions_requested, actions_granted, result, reason, expires_ms, fingerprint, \
         credential_id, prev_hash, hash FROM audit_log WHERE id = 1"
            .into(),
    )
    .await;
    // A writer that knows the head (it wrote the records) and one that must read it.
    for writer in [first, log(&b.reopen().await)] {
        let started = std::time::Instant::now();
        let err = writer
            .record(&record("alice", "my-app", Outcome::Granted))
            .await
            .expect_err("no id is free after the head");
        assert!(
            err.to_string().contains("rows past the audit chain head"),
            "{}: {err}",
            b.kind()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
    }
}

/// Someone who can write the database may rewrite the last record, recompute its hash and move
/// the head, or cut the chain back: the chain alone still verifies, an anchor noted earlier
/// does not.
async fn anchors_catch_a_rewrite_the_chain_alone_cannot(b: Backend) {
    write_n(&log(&b.store), 5).await;
    let before = audit::verify(&b.store).await.expect("verify");
    let anchor = audit::Anchor {
        id: before.head_id,
        hash: before.head_hash.clone(),
    };
    let anchored = audit::verify_anchored(&b.store, std::slice::from_ref(&anchor))
        .await
        .expect("verify");
    assert_eq!(anchored.broken, None);

    // Rewrite record 5 and re-seal it, moving the head along.
    let stored = all_records(&b.store).await;
    let mut forged = stored[4].fields.clone();
    forged.subject = "mallory".into();
    let hash = chain::seal(&stored[4].prev_hash, 5, &forged);
    b.execute(format!(
        "UPDATE audit_log SET subject = 'mallory', hash = '{hash}' WHERE id = 5"
    ))
    .await;
    b.execute(format!(
        "UPDATE audit_chain SET head_hash = '{hash}' WHERE name = 'audit'"
    ))
    .await;
    assert_eq!(audit::verify(&b.store).await.expect("verify").broken, None);
    let broken = audit::verify_anchored(&b.store, std::slice::from_ref(&anchor))
        .await
        .expect("verify")
        .broken
        .expect("the anchor shows the rewrite");
    assert_eq!((broken.id, &broken.problem), (5, &LinkProblem::Unanchored));

    // Cut back to record 3, head moved to it.
    b.execute("DELETE FROM audit_log WHERE id > 3".into()).await;
    b.execute(format!(
        "UPDATE audit_chain SET head_id = 3, head_hash = '{}' WHERE name = 'audit'",
        stored[2].hash
    ))
    .await;
    assert_eq!(audit::verify(&b.store).await.expect("verify").broken, None);
    let broken = audit::verify_anchored(&b.store, &[anchor])
        .await
        .expect("verify")
        .broken
        .expect("the anchor shows the cut");
    assert_eq!(
        (broken.id, broken.problem),
        (5, LinkProblem::AnchorMissing { last_id: 3 })
    );
    assert!("5:abc".parse::<audit::Anchor>().is_err());
    assert!(
        format!("7:{}", "a".repeat(64))
            .parse::<audit::Anchor>()
            .is_ok()
    );
}

/// Verifying a live store: records appended during the walk are walked too, not taken for a
/// tampered tail.
async fn verify_while_writers_append_is_intact(b: Backend) {
    let log = log(&b.store);
    // More than one page (2000 records), so the walk takes a while.
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..2500 {
        let log = log.clone();
        batch.spawn(async move {
            log.record(&record(&format!("u{i}"), "my-app", Outcome::Granted))
                .await
        });
        if batch.len() == 500 {
            while let Some(r) = batch.join_next().await {
                r.expect("task").expect("commit");
            }
        }
    }
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                log.record(&record(&format!("late{i}"), "my-app", Outcome::Granted))
                    .await
                    .expect("commit");
            }
        })
    };
    let mut checks = 0;
    while !writer.is_finished() || checks == 0 {
        let report = audit::verify(&b.store).await.expect("verify");
        assert_eq!(report.broken, None, "{}: {report:?}", b.kind());
        assert!(report.records >= 2500, "{report:?}");
        checks += 1;
    }
    writer.await.expect("writer");
    let report = audit::verify(&b.store).await.expect("verify");
    assert_eq!((report.records, report.broken), (2800, None));
}

async fn filters_and_paging(b: Backend) {
    let log = log(&b.store);
    let before = SystemTime::now() - Duration::from_secs(1);
    for (subject, project, outcome) in [
        ("alice", "app-a", Outcome::Granted),
        ("bob", "app-a", Outcome::Denied),
        ("alice", "app-b", Outcome::Failed),
        ("alice", "app-a", Outcome::Granted),
        ("carol", "app-b", Outcome::Granted),
    ] {
        log.record(&record(subject, project, outcome))
            .await
            .expect("commit");
    }
    let mut old = record("old", "app-a", Outcome::Granted);
    old.time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    log.record(&old).await.expect("commit");

    let ids = |filter: AuditFilter| {
        let store = b.store.clone();
        async move {
            store
                .audit_page(&AuditFilter {
                    limit: filter.limit.max(1),
                    ..filter
                })
                .await
                .expect("query")
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let all = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    assert_eq!(ids(all.clone()).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        ids(AuditFilter {
            project: Some("app-a".into()),
            ..all.clone()
        })
        .await,
        [1, 2, 4, 6]
    );
    assert_eq!(
        ids(AuditFilter {
            subject: Some("alice".into()),
            project: Some("app-a".into()),
            ..all.clone()
        })
        .await,
        [1, 4]
    );
    assert_eq!(
        ids(AuditFilter {
            result: Some(Outcome::Denied),
            ..all.clone()
        })
        .await,
        [2]
    );
    assert_eq!(
        ids(AuditFilter {
            issuer: Some("github".into()),
            ..all.clone()
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(AuditFilter {
            since: Some(before),
            ..all.clone()
        })
        .await,
        [1, 2, 3, 4, 5],
        "since is inclusive and excludes the old record"
    );
    assert_eq!(
        ids(AuditFilter {
            until: Some(before),
            ..all.clone()
        })
        .await,
        [6]
    );
    // Paging: after_id + limit walk the filtered set without repeats or holes.
    let page1 = ids(AuditFilter {
        limit: 2,
        ..all.clone()
    })
    .await;
    let page2 = ids(AuditFilter {
        limit: 2,
        after_id: 2,
        ..all.clone()
    })
    .await;
    let page4 = ids(AuditFilter {
        limit: 2,
        after_id: 6,
        ..all.clone()
    })
    .await;
    assert_eq!((page1, page2, page4), (vec![1, 2], vec![3, 4], vec![]));
}

/// Fail closed: when the store cannot be written, `record` fails and the writer keeps serving.
async fn store_failure_refuses_the_record(b: Backend) {
    let log = log(&b.store);
    log.record(&record("alice", "my-app", Outcome::Granted))
        .await
        .expect("commit");
    b.execute("ALTER TABLE audit_log RENAME TO audit_log_moved".into())
        .await;
    let err = log
        .record(&record("bob", "my-app", Outcome::Granted))
        .await
        .expect_err("an unwritable store must refuse the record");
    assert!(matches!(err, AuditError::Store(_)), "{err:?}");
    assert_eq!(log.stats().failed_transactions, 1);
    b.execute("ALTER TABLE audit_log_moved RENAME TO audit_log".into())
        .await;
    let id = log
        .record(&record("carol", "my-app", Outcome::Granted))
        .await
        .expect("the writer recovers once the store does");
    assert_eq!(id, 2, "the failed batch left no trace in the chain");
    assert_eq!(audit::verify(&b.store).await.expect("verify").broken, None);
}

/// Backpressure: with the queue full, `record` fails at once instead of queueing without bound.
/// The writer is held on its first commit (it has one record, the queue of one another), so of
/// three records at least one is refused, at once; the others commit once writes resume.
async fn full_queue_refuses_at_once(b: Backend) {
    let log = AuditLog::start(
        b.store.clone(),
        AuditSettings {
            queue_capacity: 1,
            max_batch: 1,
            commit_timeout: Duration::from_secs(30),
        },
    );
    let held = b.hold_writes().await;
    let tasks: Vec<_> = ["alice", "bob", "carol"]
        .into_iter()
        .map(|subject| {
            let log = log.clone();
            tokio::spawn(async move {
                log.record(&record(subject, "my-app", Outcome::Granted))
                    .await
            })
        })
        .collect();
    // A refusal does not wait for the store: one task ends while writes are still held.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tasks.iter().any(|t| t.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: no record refused while the writer is held",
            b.kind()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held.release().await;
    let mut refused = 0;
    let mut ids = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(id) => ids.push(id),
            Err(AuditError::Overloaded(1)) => refused += 1,
            Err(e) => panic!("{}: {e:?}", b.kind()),
        }
    }
    assert!(refused >= 1, "{}: nothing refused", b.kind());
    ids.sort();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "{}: the accepted records commit in one chain",
        b.kind()
    );
    assert!(!ids.is_empty(), "{}: the writer's record commits", b.kind());
}

/// Two replicas (independent pools and writers) on one database append to ONE chain.
async fn two_writers_append_to_one_chain(b: Backend) {
    const PER_WRITER: usize = 100;
    let second = b.reopen().await;
    let logs = [log(&b.store), log(&second)];
    let mut tasks = tokio::task::JoinSet::new();
    for (w, l) in logs.iter().enumerate() {
        for i in 0..PER_WRITER {
            let l = l.clone();
            tasks.spawn(async move {
                l.record(&record(&format!("w{w}-{i}"), "my-app", Outcome::Granted))
                    .await
            });
        }
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ids.push(joined.expect("task").expect("record commits"));
    }
    ids.sort();
    assert_eq!(ids, (1..=(2 * PER_WRITER) as i64).collect::<Vec<_>>());
    let report = audit::verify(&b.store).await.expect("verify");
    assert_eq!(report.records, (2 * PER_WRITER) as u64);
    assert_eq!(report.broken, None, "{}", b.kind());
}

/// Replicas racing for the chain head, one record per transaction: a writer that keeps losing
/// the race must still get its records in (the head is locked after a loss), never a refusal.
async fn many_contending_writers_are_never_refused(b: Backend) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 300;
    let settings = AuditSettings {
        max_batch: 1,
        ..AuditSettings::default()
    };
    let mut logs = vec![AuditLog::start(b.store.clone(), settings.clone())];
    for _ in 1..WRITERS {
        logs.push(AuditLog::start(b.reopen().await, settings.clone()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (w, l) in logs.iter().enumerate() {
        let l = l.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_WRITER {
                let r = l
                    .record(&record(&format!("w{w}-{i}"), "my-app", Outcome::Granted))
                    .await;
                ids.push(r.map_err(|e| format!("writer {w}, record {i}: {e}"))?);
            }
            Ok::<_, String>(ids)
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        ids.extend(joined.expect("task").expect("every record commits"));
    }
    ids.sort();
    let total = WRITERS * PER_WRITER;
    assert_eq!(ids, (1..=total as i64).collect::<Vec<_>>());
    let report = audit::verify(&b.store).await.expect("verify");
    assert_eq!(report.records, total as u64);
    assert_eq!(report.broken, None, "{}", b.kind());
}

/// A database whose default isolation is REPEATABLE READ: replicas opening it empty at once
/// (migrations) and racing for the chain head still work, because Rise's connections ask for
/// READ COMMITTED themselves.
#[tokio::test]
async fn replicas_work_on_a_database_defaulting_to_repeatable_read() {
    let server = Postgres::start().await;
    let url = server.create_database("rr").await;
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query("ALTER DATABASE rr SET default_transaction_isolation = 'repeatable read'")
        .execute(&admin)
        .await
        .expect("alter the database default");
    admin.close().await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = url.clone();
        opening.spawn(async move {
            Store::open_postgres(&SecretString::from(url), 8, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())
        });
    }
    let mut stores = Vec::new();
    while let Some(opened) = opening.join_next().await {
        stores.push(
            opened
                .expect("task")
                .expect("every replica opens the empty database"),
        );
    }
    let settings = AuditSettings {
        max_batch: 1,
        ..AuditSettings::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (w, store) in stores.iter().take(4).enumerate() {
        let l = AuditLog::start(store.clone(), settings.clone());
        tasks.spawn(async move {
            for i in 0..100 {
                l.record(&record(&format!("w{w}-{i}"), "my-app", Outcome::Granted))
                    .await
                    .map_err(|e| format!("writer {w}, record {i}: {e}"))?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("every record commits");
    }
    let report = audit::verify(&stores[0]).await.expect("verify");
    assert_eq!((report.records, report.broken), (400, None));
}

/// PostgreSQL's "come back later" (a read-only server, as after a failover to a standby) is
/// unavailability, which the API answers with 503; a broken schema is not.
#[tokio::test]
async fn a_read_only_postgres_is_unavailable_and_a_missing_table_is_not() {
    use sqlx::Connection as _;
    let server = Postgres::start().await;
    let url = server.create_database("ro").await;
    let store = Store::open_postgres(&SecretString::from(url.clone()), 2, Duration::from_secs(10))
        .await
        .expect("open");
    let now = audit::unix_ms(SystemTime::now());
    let revocation = Revocation {
        kind: "subject".into(),
        value: "alice".into(),
        before_ms: now,
        created_ms: now,
        until_ms: now + 60_000,
        reason: "test".into(),
    };
    store
        .revocation_add(&revocation)
        .await
        .expect("a writable database takes the revocation");
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    // The store's sessions keep the default they started with: end them, as a failover does.
    let mut set_and_reconnect = async |sql: &'static str| {
        sqlx::query(sql).execute(&mut admin).await.expect(sql);
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = 'ro' AND pid <> pg_backend_pid()",
        )
        .execute(&mut admin)
        .await
        .expect("terminate the store's sessions");
    };
    // The first write after the sessions ended may meet one of them closing (also unavailable);
    // the next ones reach a new, read-only session.
    let failure = async |what: &str| {
        let mut last = String::new();
        for _ in 0..5 {
            let e = store.revocation_add(&revocation).await.expect_err(what);
            last = e.to_string();
            if last.contains(what) {
                return (e.is_unavailable(), last);
            }
            assert!(e.is_unavailable(), "a closing session is unavailable: {e}");
        }
        panic!("no write failed with {what:?}; the last error: {last}");
    };
    set_and_reconnect("ALTER DATABASE ro SET default_transaction_read_only = on").await;
    let (unavailable, e) = failure("read-only transaction").await;
    assert!(unavailable, "SQLSTATE 25006 is unavailability: {e}");
    set_and_reconnect("ALTER DATABASE ro RESET default_transaction_read_only").await;
    sqlx::query("DROP TABLE rise_revocations")
        .execute(&mut admin)
        .await
        .expect("drop");
    let (unavailable, e) = failure("does not exist").await;
    assert!(!unavailable, "a missing table is not unavailability: {e}");
}

/// An auditor's role that may only read the tables opens the store (nothing is migrated when
/// the schema is current), verifies the chain and reads records; it cannot append.
#[tokio::test]
async fn a_read_only_role_verifies_and_reads_the_log() {
    let server = Postgres::start().await;
    let url = server.create_database("audited").await;
    write_n(&log(&open_pg(&url).await), 5).await;
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    for statement in [
        "CREATE ROLE auditor LOGIN",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO auditor",
    ] {
        sqlx::query(statement)
            .execute(&admin)
            .await
            .expect(statement);
    }
    admin.close().await;
    let auditor_url = format!("postgres://auditor@127.0.0.1:{}/audited", server.port());
    let store = open_pg(&auditor_url).await;
    let report = audit::verify(&store).await.expect("verify");
    assert_eq!((report.records, report.broken), (5, None));
    assert_eq!(all_records(&store).await.len(), 5);
    let refused = log(&store)
        .record(&record("alice", "my-app", Outcome::Granted))
        .await
        .expect_err("an auditor cannot append");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
}

/// A database a newer Rise migrated opens (mixed versions during a rolling upgrade), and the
/// older server says so at start.
#[tokio::test]
async fn a_schema_newer_than_the_server_is_named_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rise.db");
    let store = Store::open_sqlite(&path, true).await.expect("store");
    write_n(&log(&store), 2).await;
    sqlx::query("INSERT INTO rise_schema_migrations (version, applied_ms) VALUES (999, 0)")
        .execute(store.sqlite_pool().expect("sqlite"))
        .await
        .expect("a newer migration");
    drop(store);
    let captured = crate::support::logs::TraceCapture::start();
    let store = Store::open_sqlite(&path, false).await.expect("opens");
    let said = captured.text();
    assert!(
        said.contains("WARN") && said.contains("schema is newer than this server's"),
        "{said}"
    );
    assert!(said.contains("database=999"), "{said}");
    assert_eq!(all_records(&store).await.len(), 2);
}

/// A PostgreSQL server that cannot be reached is named by host and port, with the reason, and
/// never with the URL's password.
#[tokio::test]
async fn an_unreachable_postgres_is_named_without_its_password() {
    for (url, reason) in [
        // The reason depends on the resolver (unknown host, or no answer in time).
        (
            "postgres://rise:s3cret-pw@db.invalid:5432/rise",
            "db.invalid:5432: ",
        ),
        (
            "postgres://rise:s3cret-pw@127.0.0.1:1/rise",
            "127.0.0.1:1: ",
        ),
    ] {
        let err = Store::open_postgres(
            &SecretString::from(url.to_owned()),
            2,
            Duration::from_secs(2),
        )
        .await
        .expect_err("nothing answers there")
        .to_string();
        assert!(err.contains(&format!("PostgreSQL at {reason}")), "{err}");
        assert!(!err.contains("s3cret-pw"), "{err}");
    }
}
