//! The audit log: one record per credential request (granted or not) and per repository of a
//! `/token` exchange (sharing its request id), durably committed BEFORE the credential leaves
//! Rise, hash-chained for tamper evidence.
//!
//! [`AuditLog::record`] hands a record to a single writer and waits for its commit. The writer
//! drains whatever has queued up while the previous commit was in flight and commits it in one
//! transaction (group commit): under load, one fsync covers many requests; when idle, a record is
//! committed at once, without waiting for company. On SQLite the writer is a thread with its own
//! connection (`store::SqliteAppender`); on PostgreSQL, a task using the pool. The queue
//! is bounded: when it is full, `record` fails at once ([`AuditError::Overloaded`]) and the
//! caller answers 503.
//!
//! Architecture invariant: a credential is returned only after `record` returned `Ok` for it.
//! The converse does not hold: a record proves issuance was *attempted* (a client may have gone
//! away, or a commit may succeed after its waiter timed out), never that it was delivered.
//!
//! This module speaks domain types; the HTTP layer turns them into JSON.

pub mod chain;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::config::AuditConfig;
use crate::registry::{Actions, IssuedCredential};
use crate::store::{SqliteAppender, Store, StoreError};

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /registry/credentials`.
    Credentials,
    /// A registry token exchange (`GET`/`POST /token`).
    Token,
    /// A revocation of grants or credentials: `POST /grants/revocations` by an audit
    /// administrator, or `rise-backend grants revoke` by an operator.
    Revoke,
    /// `rise-backend keys rotate`: the signing keys moved one slot on.
    RotateKeys,
    /// `rise-backend keys reseal`: stored keys sealed again with a new sealing key.
    ResealKeys,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Credentials => "credentials",
            Operation::Token => "token",
            Operation::Revoke => "revoke",
            Operation::RotateKeys => "rotate_keys",
            Operation::ResealKeys => "reseal_keys",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A credential was issued.
    Granted,
    /// The caller was refused (policy, unknown project, bad request).
    Denied,
    /// Rise or an upstream failed (provider error, internal error).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "granted" => Some(Outcome::Granted),
            "denied" => Some(Outcome::Denied),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// Who asked, as far as Rise knows.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerInfo {
    /// Configured issuer name (`local`, `github`, ...).
    pub issuer: String,
    pub subject: String,
    pub groups: Vec<String>,
    /// The TCP peer, or the client a configured trusted proxy reports (never a forwarding header
    /// from anyone else, which any client can set).
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl CallerInfo {
    /// An operator running a `rise-backend` command on a machine with access to the store:
    /// issuer [`OPERATOR_ISSUER_NAME`](crate::config::OPERATOR_ISSUER_NAME), the account name
    /// as the command found it, and the command in place of a user agent.
    pub fn operator(account: String, command: &str) -> Self {
        Self {
            issuer: crate::config::OPERATOR_ISSUER_NAME.to_owned(),
            subject: account,
            groups: Vec::new(),
            client_ip: None,
            user_agent: Some(format!(
                "rise-backend/{} {command}",
                env!("CARGO_PKG_VERSION")
            )),
        }
    }

    pub fn new(
        principal: &Principal,
        client_ip: Option<IpAddr>,
        user_agent: Option<String>,
    ) -> Self {
        Self {
            issuer: principal.issuer.clone(),
            subject: principal.subject.clone(),
            groups: principal.groups.clone(),
            client_ip,
            user_agent,
        }
    }
}

/// One audit record as the application builds it. Never holds a credential: only its
/// [`fingerprint`].
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub time: SystemTime,
    pub request_id: String,
    pub operation: Operation,
    pub caller: CallerInfo,
    pub project: Option<String>,
    pub registry: Option<String>,
    pub repository: Option<String>,
    pub actions_requested: Actions,
    pub actions_granted: Actions,
    pub outcome: Outcome,
    /// `issued` for grants; the stable error code (`forbidden`, `upstream_error`, ...) otherwise.
    pub reason: String,
    pub expires_at: Option<SystemTime>,
    /// [`fingerprint`] of the issued secret.
    pub fingerprint: Option<String>,
    /// The provider's identifier of the credential, where it has one.
    pub credential_id: Option<String>,
}

impl AuditRecord {
    /// A record of a request by `caller`, to be completed with [`granted`](Self::granted) or
    /// [`refused`](Self::refused). Until then it reads as failed, so a forgotten completion
    /// never looks like a grant.
    pub fn begin(operation: Operation, request_id: &str, caller: CallerInfo) -> Self {
        Self {
            time: SystemTime::now(),
            request_id: request_id.to_owned(),
            operation,
            caller,
            project: None,
            registry: None,
            repository: None,
            actions_requested: Actions::NONE,
            actions_granted: Actions::NONE,
            outcome: Outcome::Failed,
            reason: "incomplete".into(),
            expires_at: None,
            fingerprint: None,
            credential_id: None,
        }
    }

    /// Complete as a grant of `credential`: its scope, expiry and fingerprint.
    pub fn granted(&mut self, credential: &IssuedCredential) {
        use secrecy::ExposeSecret;
        self.outcome = Outcome::Granted;
        self.reason = "issued".into();
        self.actions_granted = credential.granted_actions;
        self.expires_at = Some(credential.expires_at);
        self.fingerprint = Some(fingerprint(credential.password.expose_secret()));
        self.credential_id = credential.credential_id.clone();
        if self.repository.is_none() {
            self.repository = Some(credential.repository.clone());
        }
    }

    /// Complete as a refusal (`failed` = Rise or upstream at fault) with a stable code.
    /// Complete as an administrative action carried out (`reason` says what was done).
    pub fn done(&mut self, reason: String) {
        self.outcome = Outcome::Granted;
        self.reason = reason;
    }

    pub fn refused(&mut self, failed: bool, reason: &str) {
        self.outcome = if failed {
            Outcome::Failed
        } else {
            Outcome::Denied
        };
        self.reason = reason.to_owned();
        self.actions_granted = Actions::NONE;
        self.expires_at = None;
        self.fingerprint = None;
    }

    /// The stored (and hashed) representation.
    pub fn fields(&self) -> RecordFields {
        RecordFields {
            time_ms: unix_ms(self.time),
            request_id: self.request_id.clone(),
            operation: self.operation.as_str().to_owned(),
            issuer: self.caller.issuer.clone(),
            subject: self.caller.subject.clone(),
            // A Vec<String> always serialises; the fallback is unreachable.
            groups: serde_json::to_string(&self.caller.groups).unwrap_or_else(|_| "[]".into()),
            client_ip: self.caller.client_ip.map(|ip| ip.to_string()),
            user_agent: self.caller.user_agent.clone(),
            project: self.project.clone(),
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            actions_requested: self.actions_requested.to_string(),
            actions_granted: self.actions_granted.to_string(),
            result: self.outcome.as_str().to_owned(),
            reason: self.reason.clone(),
            expires_ms: self.expires_at.map(unix_ms),
            fingerprint: self.fingerprint.clone(),
            credential_id: self.credential_id.clone(),
        }
    }
}

/// A record as stored: plain column values. Verification hashes exactly these, so it works on
/// whatever the database holds, even values no current code would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFields {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub request_id: String,
    pub operation: String,
    pub issuer: String,
    pub subject: String,
    /// JSON array of strings.
    pub groups: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub project: Option<String>,
    pub registry: Option<String>,
    pub repository: Option<String>,
    /// Comma-separated, canonical order (`pull,push`); empty for none.
    pub actions_requested: String,
    pub actions_granted: String,
    pub result: String,
    pub reason: String,
    pub expires_ms: Option<i64>,
    pub fingerprint: Option<String>,
    pub credential_id: Option<String>,
}

/// A committed record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in the chain, from 1, without gaps.
    pub id: i64,
    pub fields: RecordFields,
    pub prev_hash: String,
    pub hash: String,
}

/// Which records to read. `after_id` + `limit` page through them in id order.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub result: Option<Outcome>,
    /// Inclusive.
    pub since: Option<SystemTime>,
    /// Exclusive.
    pub until: Option<SystemTime>,
    pub after_id: i64,
    pub limit: u32,
}

/// Why a record could not be committed. Every variant means: do not hand out the credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit queue is full ({0} records waiting)")]
    Overloaded(usize),
    #[error("the audit writer has stopped")]
    WriterStopped,
    #[error("the audit record was not committed within {0:?}")]
    Timeout(Duration),
    #[error("the audit store failed: {0}")]
    Store(String),
}

/// Bounds of the writer; from [`AuditConfig`].
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub commit_timeout: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self::from(&AuditConfig::default())
    }
}

impl From<&AuditConfig> for AuditSettings {
    fn from(c: &AuditConfig) -> Self {
        Self {
            queue_capacity: usize::try_from(c.queue_capacity)
                .unwrap_or(usize::MAX)
                .max(1),
            max_batch: usize::try_from(c.max_batch).unwrap_or(usize::MAX).max(1),
            commit_timeout: c.commit_timeout,
        }
    }
}

/// Counters of the writer, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records durably committed.
    pub records: u64,
    /// Transactions committed (each holds one or more records).
    pub transactions: u64,
    /// Transactions that failed (their records were refused).
    pub failed_transactions: u64,
}

/// The audit log: a queue to the single writer, plus the store for reading.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Pending>,
    store: Store,
    counters: Arc<Counters>,
    settings: AuditSettings,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
}

struct Pending {
    fields: RecordFields,
    done: oneshot::Sender<Result<i64, AuditError>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("store", &self.inner.store)
            .field("stats", &self.stats())
            .finish()
    }
}

impl AuditLog {
    /// Start the writer: a thread for SQLite, a task on the current Tokio runtime for
    /// PostgreSQL. It stops when the last clone of the returned handle is dropped, after
    /// committing what is queued. Should the thread not start, every record is refused.
    pub fn start(store: Store, settings: AuditSettings) -> Self {
        let (queue, rx) = mpsc::channel(settings.queue_capacity);
        let counters = Arc::new(Counters::default());
        let max_batch = settings.max_batch;
        match store.sqlite_appender() {
            Some(appender) => {
                let counters = counters.clone();
                let started = std::thread::Builder::new()
                    .name("rise-audit-writer".into())
                    .spawn(move || sqlite_writer(rx, appender, &counters, max_batch));
                if let Err(e) = started {
                    tracing::error!(error = %e, "cannot start the audit writer thread; every record will be refused");
                }
            }
            None => {
                tokio::spawn(writer(rx, store.clone(), counters.clone(), max_batch));
            }
        }
        Self {
            inner: Arc::new(Inner {
                queue,
                store,
                counters,
                settings,
            }),
        }
    }

    /// Durably commit `record`; returns its id. Only after `Ok` may the credential it describes
    /// be handed out.
    pub async fn record(&self, record: &AuditRecord) -> Result<i64, AuditError> {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            fields: record.fields(),
            done,
        };
        // Enqueue without waiting: a full queue means the store cannot keep up, and waiting
        // would only grow latency and memory until clients time out anyway.
        self.inner.queue.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                AuditError::Overloaded(self.inner.settings.queue_capacity)
            }
            mpsc::error::TrySendError::Closed(_) => AuditError::WriterStopped,
        })?;
        let timeout = self.inner.settings.commit_timeout;
        match tokio::time::timeout(timeout, committed).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AuditError::WriterStopped),
            Err(_) => Err(AuditError::Timeout(timeout)),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn stats(&self) -> AuditStats {
        let c = &self.inner.counters;
        AuditStats {
            records: c.records.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            failed_transactions: c.failed_transactions.load(Ordering::Relaxed),
        }
    }

    /// Committed records matching `filter`.
    pub async fn query(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.store.audit_page(filter).await
    }
}

/// The PostgreSQL writer: take everything queued (up to `max_batch`), commit it in one
/// transaction, answer every waiter, repeat.
async fn writer(
    mut rx: mpsc::Receiver<Pending>,
    store: Store,
    counters: Arc<Counters>,
    max_batch: usize,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch.min(4096));
    // The chain head after our last append; re-read after a failure.
    let mut head = None;
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let fields: Vec<&RecordFields> = batch.iter().map(|p| &p.fields).collect();
        let started = std::time::Instant::now();
        let result = store.append_audit(&fields, &mut head).await;
        settle(&mut batch, result, started, &counters);
    }
}

/// The SQLite writer, on a thread of its own: the same loop, blocking. It commits as soon as
/// anything is queued: waiting for a fuller batch measured slower (`scripts/bench.sh` on 2
/// cores: a 1 ms wait made batches of about 50 instead of 13 and cut credentials from about 30k
/// to 19k req/s), because callers waiting on the commit cannot use the time it adds.
fn sqlite_writer(
    mut rx: mpsc::Receiver<Pending>,
    mut appender: SqliteAppender,
    counters: &Counters,
    max_batch: usize,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch.min(4096));
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let fields: Vec<&RecordFields> = batch.iter().map(|p| &p.fields).collect();
        let started = std::time::Instant::now();
        let result = appender.append(&fields);
        settle(&mut batch, result, started, counters);
    }
}

/// Answer every waiter of a batch with its id, or with the failure; empties `batch`.
fn settle(
    batch: &mut Vec<Pending>,
    result: Result<Vec<i64>, StoreError>,
    started: std::time::Instant,
    counters: &Counters,
) {
    match result {
        Ok(ids) => {
            crate::metrics::record_audit_commit(started.elapsed());
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            counters
                .records
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            for (pending, id) in batch.drain(..).zip(ids) {
                // A waiter that gave up (timeout) has dropped its receiver; nothing to do.
                let _ = pending.done.send(Ok(id));
            }
        }
        Err(e) => {
            counters.failed_transactions.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, records = batch.len(), "audit commit failed; refusing the batch");
            let err = AuditError::Store(e.to_string());
            for pending in batch.drain(..) {
                let _ = pending.done.send(Err(err.clone()));
            }
        }
    }
    batch.clear();
}

/// A credential's fingerprint: `sha256:` and the first 16 bytes (32 hex digits) of the SHA-256
/// of the secret. Enough to match a credential a client holds against the log; the secret itself
/// is never stored. (A low-entropy static password could be guessed offline from it; Rise's
/// own credentials are high-entropy tokens.)
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("sha256:{}", data_encoding::HEXLOWER.encode(&digest[..16]))
}

/// Milliseconds since the Unix epoch (negative before it; saturating far outside).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis())
            .map(|ms| -ms)
            .unwrap_or(i64::MIN),
    }
}

/// A time given by a person: RFC 3339 with any offset (`2026-01-02T03:04:05Z`, `...+02:00`),
/// the same without an offset (read as UTC), or Unix seconds. The error says what to give.
pub fn parse_time(v: &str) -> Result<SystemTime, &'static str> {
    const EXPECTED: &str =
        "give RFC 3339 (2026-01-02T03:04:05Z, or with an offset such as +02:00) or Unix seconds";
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or("out of range");
    }
    if let Ok(t) = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339) {
        return Ok(SystemTime::from(t));
    }
    humantime::parse_rfc3339_weak(v).map_err(|_| EXPECTED)
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
const LAST_RFC3339_SECOND: Duration = Duration::from_secs(253_402_300_799);

/// `t` in RFC 3339 to the second. A time the format cannot write (before 1970, after the year
/// 9999: an upstream's absurd expiry, a corrupt row) is shown at the nearest bound instead of
/// failing the reply.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(writable(t)).to_string()
}

/// [`rfc3339_seconds`] with milliseconds.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(writable(t)).to_string()
}

fn writable(t: SystemTime) -> SystemTime {
    t.clamp(
        SystemTime::UNIX_EPOCH,
        SystemTime::UNIX_EPOCH + LAST_RFC3339_SECOND,
    )
}

/// The inverse of [`unix_ms`].
pub fn from_unix_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        SystemTime::UNIX_EPOCH
            .checked_add(magnitude)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(magnitude)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked before the first broken link (all of them when intact).
    pub records: u64,
    /// Id and hash of the chain head as recorded in the store.
    pub head_id: i64,
    pub head_hash: String,
    pub broken: Option<BrokenLink>,
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The record at fault (for `HeadMismatch`, the head the store names).
    pub id: i64,
    pub problem: LinkProblem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkProblem {
    /// The record's content no longer matches its hash: it was altered.
    Altered,
    /// The record does not point at its predecessor: a record was removed or inserted before it.
    Unlinked,
    /// Ids jump from `expected` to this one: records were removed.
    Gap { expected: i64 },
    /// The last record is not the recorded head: records were removed from the end, or the
    /// head was altered.
    HeadMismatch { last_id: i64 },
    /// Rows with ids below 1: outside the chain, so no walk would see them.
    BeforeTheChain { rows: i64 },
    /// The record's hash is not the one anchored outside the database: the chain was rewritten
    /// from here (or before), hashes recomputed.
    Unanchored,
    /// An anchored record is past the end of the chain: it was cut back and its head moved.
    AnchorMissing { last_id: i64 },
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            LinkProblem::Altered => write!(
                f,
                "record {} was altered: its content does not match its hash",
                self.id
            ),
            LinkProblem::Unlinked => write!(
                f,
                "record {} does not link to its predecessor: a record before it was removed, inserted or altered",
                self.id
            ),
            LinkProblem::Gap { expected } => write!(
                f,
                "record {expected} is missing (the next record is {})",
                self.id
            ),
            LinkProblem::Unanchored => write!(
                f,
                "record {} does not have the anchored hash: the chain was rewritten up to it, hashes recomputed",
                self.id
            ),
            LinkProblem::AnchorMissing { last_id } => write!(
                f,
                "anchored record {} is gone: the chain ends at {last_id}, so it was cut back and its head rewritten",
                self.id
            ),
            LinkProblem::BeforeTheChain { rows } => write!(
                f,
                "{rows} record(s) have an id below 1, outside the chain: they were not written by Rise"
            ),
            LinkProblem::HeadMismatch { last_id } => write!(
                f,
                "the chain head names record {} but the last record is {last_id}: records were removed from the end, or the head was altered",
                self.id
            ),
        }
    }
}

/// Walk the whole chain from the first record, recomputing every hash; stop at the first
/// broken link. Safe while writers append: the head is read after the rows it must cover (it
/// only moves forward, and moves in the transaction that adds its rows), so records appended
/// during the walk are walked too, and only rows beyond the head are a broken tail.
pub async fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    verify_anchored(store, &[]).await
}

/// A record's id and hash noted outside the database (`audit verify` prints the head; keep
/// those lines somewhere the database's writers cannot rewrite). The chain alone cannot show a
/// rewrite by someone who recomputes every hash after the change; an anchor can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub id: i64,
    pub hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;
    /// `ID:HASH`, as `audit verify` prints the head.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || "give ID:HASH, e.g. 1234:9f86d0... (the head `audit verify` prints)".to_owned();
        let (id, hash) = s.trim().split_once(':').ok_or_else(bad)?;
        let id: i64 = id.trim().parse().map_err(|_| bad())?;
        let hash = hash.trim().to_ascii_lowercase();
        if id == 0 && hash == chain::GENESIS {
            return Err(
                "0:000... is the head of an empty chain: there is nothing to anchor until a record is written; leave it out"
                    .to_owned(),
            );
        }
        if id < 1 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Anchor { id, hash })
    }
}

/// [`verify`], also checking that every anchor is in the chain, with its hash.
pub async fn verify_anchored(
    store: &Store,
    anchors: &[Anchor],
) -> Result<VerifyReport, StoreError> {
    const PAGE: u32 = 2000;
    let mut report = VerifyReport {
        records: 0,
        head_id: 0,
        head_hash: chain::GENESIS.to_owned(),
        broken: None,
    };
    let before = store.audit_rows_before_the_chain().await?;
    if before > 0 {
        report.broken = Some(BrokenLink {
            id: 0,
            problem: LinkProblem::BeforeTheChain { rows: before },
        });
        return Ok(report);
    }
    let mut prev_id = 0i64;
    let mut prev_hash = chain::GENESIS.to_owned();
    // The head read after the last scan: every row up to it was committed before it was read.
    let mut covered = None;
    loop {
        let page = store.audit_scan(prev_id, PAGE).await?;
        for r in &page {
            let problem = if r.id != prev_id + 1 {
                Some(LinkProblem::Gap {
                    expected: prev_id + 1,
                })
            } else if r.prev_hash != prev_hash {
                Some(LinkProblem::Unlinked)
            } else if chain::seal(&r.prev_hash, r.id, &r.fields) != r.hash {
                Some(LinkProblem::Altered)
            } else if anchors.iter().any(|a| a.id == r.id && a.hash != r.hash) {
                Some(LinkProblem::Unanchored)
            } else {
                None
            };
            if let Some(problem) = problem {
                report.broken = Some(BrokenLink { id: r.id, problem });
                return Ok(report);
            }
            report.records += 1;
            prev_id = r.id;
            prev_hash.clone_from(&r.hash);
        }
        if page.len() == PAGE as usize {
            continue;
        }
        if let Some(head_id) = covered
            && prev_id < head_id
        {
            // Rows the head had already counted are not there: removed from the end.
            report.broken = Some(BrokenLink {
                id: head_id,
                problem: LinkProblem::HeadMismatch { last_id: prev_id },
            });
            return Ok(report);
        }
        // The end of the rows, as of the scan: the head read now covers at least all of them.
        let (head_id, head_hash) = store.audit_head().await?;
        report.head_id = head_id;
        report.head_hash.clone_from(&head_hash);
        if prev_id < head_id {
            // Appended while we walked (or removed: the next scan tells): walk on.
            covered = Some(head_id);
            continue;
        }
        if prev_id != head_id || prev_hash != head_hash {
            report.broken = Some(BrokenLink {
                id: head_id,
                problem: LinkProblem::HeadMismatch { last_id: prev_id },
            });
        } else if let Some(a) = anchors.iter().find(|a| a.id > prev_id) {
            report.broken = Some(BrokenLink {
                id: a.id,
                problem: LinkProblem::AnchorMissing { last_id: prev_id },
            });
        }
        return Ok(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head `audit verify` prints for an empty chain, given back as an anchor, is refused
    /// saying why, not as if it were malformed.
    #[test]
    fn the_empty_chains_head_is_no_anchor_and_says_so() {
        let err = format!("0:{}", chain::GENESIS)
            .parse::<Anchor>()
            .expect_err("nothing to anchor");
        assert!(err.contains("empty chain"), "{err}");
        let err = "x:1".parse::<Anchor>().expect_err("malformed");
        assert!(err.contains("give ID:HASH"), "{err}");
    }

    #[test]
    fn times_are_read_with_any_offset() {
        let utc = parse_time("2026-01-01T02:00:00Z").expect("utc");
        assert_eq!(parse_time("2026-01-01T04:00:00+02:00"), Ok(utc));
        assert_eq!(parse_time("2025-12-31T21:00:00-05:00"), Ok(utc));
        assert_eq!(parse_time("2026-01-01T02:00:00"), Ok(utc));
        assert_eq!(parse_time(" 1767232800 "), Ok(utc));
        let err = parse_time("yesterday").expect_err("not a time");
        assert!(err.contains("+02:00"), "{err}");
    }

    #[test]
    fn times_outside_rfc3339_are_written_at_its_bounds() {
        assert_eq!(
            rfc3339_seconds(from_unix_ms(i64::MAX)),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339_millis(from_unix_ms(i64::MIN)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_seconds(from_unix_ms(1_700_000_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn fingerprint_is_truncated_sha256_and_never_the_secret() {
        let f = fingerprint("s3cret-token");
        assert!(f.starts_with("sha256:"));
        assert_eq!(f.len(), "sha256:".len() + 32);
        assert!(!f.contains("s3cret"));
        assert_eq!(f, fingerprint("s3cret-token"));
        assert_ne!(f, fingerprint("s3cret-tokem"));
    }

    #[test]
    fn unix_ms_round_trips() {
        for ms in [0i64, 1, 1_700_000_000_123, -5_000] {
            assert_eq!(unix_ms(from_unix_ms(ms)), ms);
        }
    }
}
