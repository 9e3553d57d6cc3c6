//! `cargo bench -p rise-backend --bench audit`: durable audit records per second through
//! `AuditLog` (group commit, hash chain) on the embedded SQLite store, with 1, 8 and 64
//! concurrent writers and no HTTP in the way. Prints one line per level and the average batch
//! (records per transaction) and the CPU time the audit writer thread spent per record (from
//! `/proc`, on Linux).
//!
//! This isolates the store from the request path: compare with `scripts/bench.sh`, whose
//! credential path commits the same records behind HTTP, JWT verification and policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rise_backend::audit::{AuditLog, AuditRecord, AuditSettings, CallerInfo, Operation, Outcome};
use rise_backend::registry::Actions;
use rise_backend::store::Store;

const RUN: Duration = Duration::from_secs(3);

fn record(writer: usize, n: u64) -> AuditRecord {
    let mut r = AuditRecord::begin(
        Operation::Credentials,
        &format!("req-{writer}-{n}"),
        CallerInfo {
            issuer: "bench".into(),
            subject: format!("client-{writer}"),
            groups: vec!["ci".into()],
            client_ip: Some([127, 0, 0, 1].into()),
            user_agent: Some("bench".into()),
        },
    );
    r.project = Some("my-app".into());
    r.registry = Some("default".into());
    r.repository = Some("my-app".into());
    r.actions_requested = Actions::PUSH_PULL;
    r.actions_granted = Actions::PUSH_PULL;
    r.outcome = Outcome::Granted;
    r.reason = "issued".into();
    r.expires_at = Some(SystemTime::now() + Duration::from_secs(3600));
    r.fingerprint = Some(rise_backend::audit::fingerprint(&format!("{writer}-{n}")));
    r
}

/// CPU time (user + system, in clock ticks of 1/100 s) used so far by the audit writer thread,
/// read from `/proc`; `None` where there is no such file or no such thread.
fn writer_cpu_ticks() -> Option<u64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // The kernel keeps 15 bytes of a thread's name: "rise-audit-writer" reads "rise-audit-writ".
        if comm.trim_end() != "rise-audit-writ" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // After the parenthesised name: state, then utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        total = Some(total.unwrap_or(0) + ticks);
    }
    total
}

/// Records per second, records per commit and the writer's CPU µs per record.
async fn measure(log: &AuditLog, writers: usize) -> (f64, f64, Option<f64>) {
    let before = log.stats();
    let cpu_before = writer_cpu_ticks();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for w in 0..writers {
        let (log, stop, done) = (log.clone(), stop.clone(), done.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                log.record(&record(w, n)).await.expect("durable commit");
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = log.stats();
    let records = done.load(Ordering::Relaxed) as f64;
    let transactions = (after.transactions - before.transactions).max(1) as f64;
    // The writer thread may start with the first record: no thread yet means no CPU used yet.
    let cpu_us = writer_cpu_ticks()
        .map(|a| a.saturating_sub(cpu_before.unwrap_or(0)) as f64 * 10_000.0 / records.max(1.0));
    (records / elapsed, records / transactions, cpu_us)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_sqlite(&dir.path().join("rise.db"), true)
            .await
            .expect("SQLite store");
        let log = AuditLog::start(store, AuditSettings::default());
        println!("durable audit on SQLite (WAL, synchronous=FULL), {RUN:?} per level");
        for writers in [1, 8, 64] {
            let (per_second, batch, cpu) = measure(&log, writers).await;
            let cpu = cpu.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"));
            println!(
                "{writers:>3} concurrent writers: {per_second:>9.0} records/s, {batch:>5.1} records per commit, writer CPU {cpu} us/record"
            );
        }
    });
}
