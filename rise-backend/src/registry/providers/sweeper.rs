//! Deleting, once they have expired, the upstream credentials a provider created, for upstreams
//! that do not expire them on time by themselves (Harbor and Quay robots, Docker Hub
//! organization access tokens that count against a limit until deleted).
//!
//! A provider implements [`Sweep`] (list what Rise created, delete what has expired) and keeps
//! a [`Schedule`]. This module decides when sweeps run:
//! - [`sweep_now`] on demand (tests, operators), after a sweep already running;
//! - [`sweep_unless_done_since`] when a provider needs room upstream now: callers that ran
//!   into a full upstream together share one sweep;
//! - [`sweep_soon`] in the background after a request, at most once per interval, so the first
//!   request after a start also cleans up what an earlier run left behind;
//! - a [`Reaper`] task every interval, for as long as the provider lives.
//!
//! Sweeps of one provider never overlap.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

// Tokio's clock, so tests can pause it; the same as `std::time::Instant` otherwise.
use tokio::time::Instant;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Rise's expired upstream credentials that are gone now.
    pub deleted: usize,
    /// Rise's upstream credentials still within their lifetime.
    pub kept: usize,
    /// Deletions that failed (retried on a later sweep).
    pub failed: usize,
}

/// A provider's list-and-delete pass.
pub(crate) trait Sweep: Send + Sync + 'static {
    fn schedule(&self) -> &Schedule;

    /// List what Rise created upstream and delete what has expired, within the provider's
    /// bounds on pages and deletions. Never called twice at once.
    fn sweep(&self) -> impl Future<Output = SweepReport> + Send;
}

/// When one provider's sweeps run.
#[derive(Debug)]
pub(crate) struct Schedule {
    interval: Duration,
    /// When the last sweep started; `None` before the first.
    last: Mutex<Option<Instant>>,
    /// Held during a sweep, so sweeps never overlap.
    running: tokio::sync::Mutex<()>,
    /// What the sweeps finished so far did.
    done: Mutex<Done>,
}

/// The sweeps of one provider finished so far.
#[derive(Debug, Default, Clone, Copy)]
struct Done {
    sweeps: u64,
    /// Their deletions, all together.
    deleted: usize,
    last: SweepReport,
}

/// Where a provider's sweeps stood at some moment ([`sweep_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SweepMark {
    sweeps: u64,
    deleted: usize,
}

impl Schedule {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
            done: Mutex::new(Done::default()),
        }
    }

    /// True when no sweep has started within the interval; marks one as started.
    fn claim(&self) -> bool {
        // A poisoned lock only guards an `Instant`: take the value.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < self.interval) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn done(&self) -> Done {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_started(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

/// Sweep now; waits for a sweep already running to finish first.
pub(crate) async fn sweep_now<S: Sweep>(provider: &S) -> SweepReport {
    let _one_at_a_time = provider.schedule().running.lock().await;
    run(provider).await
}

/// Where `provider`'s sweeps stand: take it before an upstream call, and give it to
/// [`sweep_unless_done_since`] when that call found no room.
pub(crate) fn sweep_mark<S: Sweep>(provider: &S) -> SweepMark {
    let done = provider.schedule().done();
    SweepMark {
        sweeps: done.sweeps,
        deleted: done.deleted,
    }
}

/// What [`sweep_unless_done_since`] got: a sweep of the caller's own, or what the sweeps that
/// finished after the caller's mark did (their deletions together, the last one's counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    pub own: bool,
    pub report: SweepReport,
}

/// Sweep, unless a sweep has finished since `mark` ([`sweep_mark`]); waits for a sweep already
/// running first. Many callers that find the upstream full at once so share one sweep; one that
/// learns the shared sweep left no room for it can call again with a fresh mark.
pub(crate) async fn sweep_unless_done_since<S: Sweep>(provider: &S, mark: SweepMark) -> Swept {
    let _one_at_a_time = provider.schedule().running.lock().await;
    let done = provider.schedule().done();
    if done.sweeps != mark.sweeps {
        return Swept {
            own: false,
            report: SweepReport {
                deleted: done.deleted.saturating_sub(mark.deleted),
                ..done.last
            },
        };
    }
    Swept {
        own: true,
        report: run(provider).await,
    }
}

/// One sweep, with the running lock held.
async fn run<S: Sweep>(provider: &S) -> SweepReport {
    let schedule = provider.schedule();
    schedule.mark_started();
    let report = provider.sweep().await;
    let mut done = schedule.done.lock().unwrap_or_else(|e| e.into_inner());
    *done = Done {
        sweeps: done.sweeps + 1,
        deleted: done.deleted.saturating_add(report.deleted),
        last: report,
    };
    report
}

/// Start a sweep in the background unless one started within the interval or one is running.
/// Outside a Tokio runtime nothing happens.
pub(crate) fn sweep_soon<S: Sweep>(provider: &Arc<S>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !provider.schedule().claim() {
        return;
    }
    let provider = Arc::clone(provider);
    runtime.spawn(async move { sweep_unless_running(&*provider).await });
}

async fn sweep_unless_running<S: Sweep>(provider: &S) {
    let schedule = provider.schedule();
    let Ok(_only_sweep) = schedule.running.try_lock() else {
        return;
    };
    run(provider).await;
}

/// The task that sweeps every interval (the first sweep one interval after the start). Dropping
/// the reaper stops it; it also stops once the provider is gone.
#[derive(Debug)]
pub(crate) struct Reaper(Option<tokio::task::AbortHandle>);

impl Reaper {
    /// Start sweeping `provider`; inside no Tokio runtime there is no task.
    pub(crate) fn start<S: Sweep>(provider: &Arc<S>) -> Self {
        let interval = provider.schedule().interval;
        let provider = Arc::downgrade(provider);
        Self(
            tokio::runtime::Handle::try_current()
                .ok()
                .map(|runtime| runtime.spawn(reap_loop(provider, interval)).abort_handle()),
        )
    }

    /// Whether a task was started.
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

async fn reap_loop<S: Sweep>(provider: Weak<S>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(provider) = provider.upgrade() else {
            return;
        };
        sweep_unless_running(&*provider).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts sweeps; each takes `takes` and reports one deletion.
    #[derive(Debug)]
    struct Counting {
        schedule: Schedule,
        sweeps: AtomicUsize,
        running: AtomicUsize,
        overlapped: AtomicUsize,
        takes: Duration,
    }

    impl Counting {
        fn new(interval: Duration, takes: Duration) -> Arc<Self> {
            Arc::new(Self {
                schedule: Schedule::new(interval),
                sweeps: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                overlapped: AtomicUsize::new(0),
                takes,
            })
        }
    }

    impl Sweep for Counting {
        fn schedule(&self) -> &Schedule {
            &self.schedule
        }

        async fn sweep(&self) -> SweepReport {
            if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(self.takes).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.sweeps.fetch_add(1, Ordering::SeqCst);
            SweepReport {
                deleted: 1,
                ..SweepReport::default()
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_soon_runs_at_most_once_per_interval() {
        let p = Counting::new(Duration::from_secs(60), Duration::ZERO);
        for _ in 0..5 {
            sweep_soon(&p);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        sweep_soon(&p);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_never_overlap_and_sweep_now_waits_for_the_running_one() {
        let p = Counting::new(Duration::from_secs(1), Duration::from_secs(5));
        sweep_soon(&p);
        tokio::task::yield_now().await;
        let report = sweep_now(&*p).await;
        assert_eq!(report.deleted, 1);
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 2);
        assert_eq!(p.overlapped.load(Ordering::SeqCst), 0);
    }

    /// Callers that found the upstream full while a sweep ran, or before one finished, do not
    /// each sweep again; one that saw the latest sweep does.
    #[tokio::test(start_paused = true)]
    async fn callers_needing_room_together_share_one_sweep() {
        let p = Counting::new(Duration::from_secs(3600), Duration::from_secs(5));
        let seen = sweep_mark(&*p);
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let p = Arc::clone(&p);
                tokio::spawn(async move { sweep_unless_done_since(&*p, seen).await })
            })
            .collect();
        let mut own = 0;
        for caller in callers {
            let swept = caller.await.expect("joined");
            // Those that shared it have its report.
            assert_eq!(swept.report.deleted, 1);
            own += usize::from(swept.own);
        }
        assert_eq!(own, 1);
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 1);
        // A caller that saw that sweep finish needs a new one.
        let seen = sweep_mark(&*p);
        assert_eq!(seen.sweeps, 1);
        assert!(sweep_unless_done_since(&*p, seen).await.own);
        // One that saw neither gets their deletions together.
        let shared = sweep_unless_done_since(
            &*p,
            SweepMark {
                sweeps: 0,
                deleted: 0,
            },
        )
        .await;
        assert!(!shared.own);
        assert_eq!(shared.report.deleted, 2);
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 2);
        assert_eq!(p.overlapped.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reaper_sweeps_every_interval_until_dropped() {
        let p = Counting::new(Duration::from_secs(10), Duration::ZERO);
        let reaper = Reaper::start(&p);
        assert!(reaper.is_running());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            p.sweeps.load(Ordering::SeqCst),
            0,
            "first sweep after one interval"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 3);
        drop(reaper);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(p.sweeps.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn outside_a_runtime_nothing_starts() {
        let p = Counting::new(Duration::from_secs(1), Duration::ZERO);
        assert!(!Reaper::start(&p).is_running());
        sweep_soon(&p);
        assert!(p.schedule.claim(), "sweep_soon claimed nothing");
    }
}
