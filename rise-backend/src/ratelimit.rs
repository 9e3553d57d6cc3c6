//! Rate limiting: quotas, bucket keys and the [`RateLimiter`] that keeps the buckets.
//!
//! This module knows no HTTP. The HTTP layer (`http/ratelimit.rs`) decides which buckets a
//! request draws from (client IP, caller subject, project, failed authentications per IP) and
//! turns a denial into a 429.
//!
//! The limiter is a trait so that a limiter shared by all replicas (for instance one backed by the
//! PostgreSQL database the replicas already share) can replace the in-memory one without touching
//! the HTTP layer. Only [`InMemoryRateLimiter`] exists today: see its documentation for what that
//! means when Rise runs as several replicas.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::lenient;

/// The `[rate_limit]` configuration section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Turn every limit off (benchmarks, or when a gateway in front of Rise limits already).
    #[serde(deserialize_with = "lenient::bool")]
    pub enabled: bool,
    /// Per caller: one bucket per (issuer, subject).
    pub per_subject: QuotaConfig,
    /// Per client address (IPv6 per /64), for every request to a limited route.
    pub per_ip: QuotaConfig,
    /// Per project, over all its callers; off unless set.
    #[serde(default)]
    pub per_project: Option<QuotaConfig>,
    /// Failed authentications per client address. Once spent, the address is refused before its
    /// credentials are even checked, so guessing is slow.
    pub auth_failures_per_ip: QuotaConfig,
    /// The most buckets kept in memory (all kinds together). Idle buckets are evicted first; when
    /// an attacker rotates addresses faster than buckets go idle, the buckets closest to full are
    /// evicted, which only ever makes a limit more lenient for the evicted key.
    #[serde(deserialize_with = "lenient::u64")]
    pub max_buckets: u64,
    /// How many replicas serve behind one load balancer. Each replica enforces its share of every
    /// quota (rate / replicas, burst / replicas rounded up), so together they never allow more
    /// than the configured limit (plus at most `replicas - 1` of burst). The tolerance runs the
    /// other way: a caller whose requests all reach one replica gets only that replica's share.
    #[serde(deserialize_with = "lenient::u64")]
    pub replicas: u64,
}

impl RateLimitConfig {
    /// Check the bounds that keep the bucket arithmetic meaningful.
    pub fn validate(&self) -> Result<(), String> {
        let quotas = [
            ("per_subject", Some(&self.per_subject)),
            ("per_ip", Some(&self.per_ip)),
            ("per_project", self.per_project.as_ref()),
            ("auth_failures_per_ip", Some(&self.auth_failures_per_ip)),
        ];
        for (name, quota) in quotas {
            if let Some(q) = quota {
                q.validate()
                    .map_err(|message| format!("rate_limit.{name}: {message}"))?;
            }
        }
        if !(1..=1000).contains(&self.replicas) {
            return Err("rate_limit.replicas must be between 1 and 1000".into());
        }
        if !(1_000..=100_000_000).contains(&self.max_buckets) {
            return Err("rate_limit.max_buckets must be between 1000 and 100000000".into());
        }
        Ok(())
    }
}

/// A rate and a burst, as configured: `{ rate = "10/s", burst = 50 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sustained rate: a number (per second) or `"N/s"`, `"N/min"`, `"N/h"`.
    pub rate: Rate,
    /// How many requests may come at once after a quiet period.
    #[serde(deserialize_with = "lenient::u64")]
    pub burst: u64,
}

impl QuotaConfig {
    const MAX_BURST: u64 = 1_000_000;

    fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_BURST).contains(&self.burst) {
            return Err(format!("burst must be between 1 and {}", Self::MAX_BURST));
        }
        Ok(())
    }

    pub fn quota(&self) -> Quota {
        Quota::new(self.rate, self.burst)
    }

    /// One replica's share of this quota when `replicas` replicas enforce it together.
    pub fn share(&self, replicas: u64) -> Quota {
        let replicas = replicas.max(1);
        Quota::new(
            Rate(self.rate.as_per_second() / replicas as f64),
            self.burst.div_ceil(replicas),
        )
    }
}

/// Requests per second, parsed from a number or `"N/s"`, `"N/min"`, `"N/h"`. At least one per
/// hour and at most a billion per second, so that bucket arithmetic in nanoseconds never overflows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    const MIN_PER_SECOND: f64 = 1.0 / 3600.0;
    const MAX_PER_SECOND: f64 = 1e9;

    pub fn per_second(n: f64) -> Result<Self, String> {
        if n.is_finite() && (Self::MIN_PER_SECOND..=Self::MAX_PER_SECOND).contains(&n) {
            Ok(Rate(n))
        } else {
            Err(format!(
                "rate {n} is out of range: give between 1/h and 1000000000/s"
            ))
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?}: give a number per second or N/s, N/min, N/h");
        let (count, unit) = match s.split_once('/') {
            Some((count, unit)) => (count.trim(), unit.trim()),
            None => (s.trim(), "s"),
        };
        let count: f64 = count.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        Self::per_second(count / seconds)
    }

    pub fn as_per_second(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Str(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Int(n) => Rate::per_second(n as f64),
            Raw::Float(n) => Rate::per_second(n),
            Raw::Str(s) => Rate::parse(&s),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// A bucket's parameters in the form the limiter computes with: the generic cell rate algorithm
/// (GCRA), the "virtual scheduling" form of a token bucket. A bucket is one timestamp, the
/// theoretical arrival time (TAT) of the next request; a request at `now` conforms when
/// `TAT - tolerance <= now`, and moves the TAT one `interval` later. This admits exactly `burst`
/// requests at once after a quiet period and `rate` per second sustained, like a token bucket
/// holding `burst` tokens refilled at `rate`, while storing 8 bytes instead of a count and a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Nanoseconds between two requests at the sustained rate (one token's refill time).
    interval_ns: u64,
    /// `(burst - 1) * interval`: how far ahead of `now` the TAT may run.
    tolerance_ns: u64,
}

impl Quota {
    pub fn new(rate: Rate, burst: u64) -> Self {
        // `Rate` bounds keep this within 1 ns ..= 3.6e12 ns; the cast saturates regardless.
        let interval_ns = ((1e9 / rate.as_per_second()).round() as u64).max(1);
        let tolerance_ns = interval_ns.saturating_mul(burst.max(1) - 1);
        Quota {
            interval_ns,
            tolerance_ns,
        }
    }
}

/// What a bucket belongs to. The variant is part of the key, so a subject named like an address
/// never shares a bucket with that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketKey<'a> {
    /// A caller, named by its issuer and subject.
    Subject { issuer: &'a str, subject: &'a str },
    /// A client address; build it with [`BucketKey::client_ip`].
    ClientIp(IpAddr),
    /// A project, over all its callers.
    Project(&'a str),
    /// Failed authentications from a client address; build it with [`BucketKey::auth_failures`].
    AuthFailures(IpAddr),
}

impl<'a> BucketKey<'a> {
    pub fn client_ip(ip: IpAddr) -> Self {
        BucketKey::ClientIp(address_block(ip))
    }

    pub fn auth_failures(ip: IpAddr) -> Self {
        BucketKey::AuthFailures(address_block(ip))
    }
}

impl fmt::Display for BucketKey<'_> {
    /// A stable text form, e.g. for a shared limiter's table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketKey::Subject { issuer, subject } => write!(f, "subject:{issuer}:{subject}"),
            BucketKey::ClientIp(ip) => write!(f, "ip:{ip}"),
            BucketKey::Project(p) => write!(f, "project:{p}"),
            BucketKey::AuthFailures(ip) => write!(f, "auth-failures:{ip}"),
        }
    }
}

/// The unit an address is limited as: an IPv4 address, or the /64 an IPv6 address is in. One
/// IPv6 host usually owns a whole /64, so limiting single IPv6 addresses would let it rotate
/// through 2^64 fresh buckets. IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn address_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
    }
}

/// The answer for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit; a request would conform again after `retry_after`.
    Denied {
        retry_after: Duration,
    },
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allowed
    }
}

/// Keeps buckets. Object-safe, so the application holds an `Arc<dyn RateLimiter>` and a shared
/// implementation can replace the in-memory one.
///
/// A shared implementation needs the same two operations over a stable key
/// ([`BucketKey`]'s `Display` form) and one timestamp per key; it may batch or cache as long as it
/// documents its tolerance as [`InMemoryRateLimiter`] does.
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Draw one request from `key`'s bucket if it conforms to `quota`. A denied request does not
    /// draw: hammering a full bucket does not extend the wait.
    async fn acquire(&self, key: BucketKey<'_>, quota: Quota) -> Decision;

    /// What [`acquire`](Self::acquire) would answer now, without drawing.
    async fn peek(&self, key: BucketKey<'_>, quota: Quota) -> Decision;
}

/// A source of monotonic time, injected so that tests move time by hand instead of sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_ns(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        // u64 nanoseconds last 584 years of uptime; saturate rather than wrap after that.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The in-memory limiter: buckets live in this process only.
///
/// **Across replicas.** Every replica keeps its own buckets. The HTTP layer gives each replica
/// 1/N of every configured rate and burst (`[rate_limit] replicas = N`), so the replicas
/// together allow at most the configured limit plus N−1 of burst, and a key whose requests all
/// reach one replica gets that replica's share only (see README, "Rate limits").
///
/// **Memory.** Buckets sit in `SHARDS` independently locked maps (a lock is held for a hash-map
/// lookup and one compare, never across an `.await`), keyed by a keyed 64-bit hash of the
/// [`BucketKey`], so an entry is 16 bytes whatever the subject's length and a caller cannot aim
/// keys at one shard. A shard never holds more than its share of `max_buckets`: when full, it first
/// drops idle buckets (refilled completely, so indistinguishable from absent), then the half
/// closest to full. Eviction can only make a limit more lenient for the evicted key, never
/// stricter for anyone; an attacker rotating keys gains nothing it did not have with fresh keys.
#[derive(Debug)]
pub struct InMemoryRateLimiter<C: Clock = MonotonicClock> {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hasher: RandomState,
    clock: C,
}

/// Maps a key hash to its bucket's theoretical arrival time (ns).
type Shard = HashMap<u64, u64, BuildHasherDefault<PassThroughHasher>>;

const SHARDS: usize = 64;

impl InMemoryRateLimiter<MonotonicClock> {
    pub fn new(max_buckets: u64) -> Self {
        Self::with_clock(max_buckets, MonotonicClock::default())
    }
}

impl<C: Clock> InMemoryRateLimiter<C> {
    pub fn with_clock(max_buckets: u64, clock: C) -> Self {
        let total = usize::try_from(max_buckets).unwrap_or(usize::MAX);
        let shard_capacity = (total / SHARDS).max(16);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard::default()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        InMemoryRateLimiter {
            shards,
            shard_capacity,
            hasher: RandomState::new(),
            clock,
        }
    }

    /// The number of buckets currently held (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_and_hash(&self, key: BucketKey<'_>) -> (&Mutex<Shard>, u64) {
        let hash = self.hasher.hash_one(key);
        // The map indexes by the low bits; choose the shard from other bits so that keys of one
        // shard still spread over its table.
        let shard = (hash >> 32) as usize % SHARDS;
        (&self.shards[shard], hash)
    }

    fn decide(&self, key: BucketKey<'_>, quota: Quota, draw: bool) -> Decision {
        let (shard, hash) = self.shard_and_hash(key);
        let mut buckets = lock(shard);
        // Read the clock under the lock: a thread that read it, then waited for the lock while
        // others advanced the bucket, would judge by a stale `now` and could refuse a request
        // that conforms (seen under load with a sub-millisecond tolerance).
        let now = self.clock.now_ns();
        let tat = buckets.get(&hash).copied().unwrap_or(now).max(now);
        let conforms_at = tat.saturating_sub(quota.tolerance_ns);
        if conforms_at > now {
            return Decision::Denied {
                retry_after: Duration::from_nanos(conforms_at - now),
            };
        }
        if draw {
            let new_tat = tat.saturating_add(quota.interval_ns);
            if !buckets.contains_key(&hash) && buckets.len() >= self.shard_capacity {
                evict(&mut buckets, now, self.shard_capacity);
            }
            buckets.insert(hash, new_tat);
        }
        Decision::Allowed
    }
}

#[async_trait]
impl<C: Clock> RateLimiter for InMemoryRateLimiter<C> {
    async fn acquire(&self, key: BucketKey<'_>, quota: Quota) -> Decision {
        self.decide(key, quota, true)
    }

    async fn peek(&self, key: BucketKey<'_>, quota: Quota) -> Decision {
        self.decide(key, quota, false)
    }
}

/// Make room in a full shard: drop idle buckets, and unless that freed half of it, the half of
/// the rest with the earliest TAT (closest to full, so the least state is lost). Freeing at least
/// half keeps the cost amortised: the next eviction is half a shard of inserts away.
fn evict(buckets: &mut Shard, now: u64, capacity: usize) {
    buckets.retain(|_, tat| *tat > now);
    if buckets.len() <= capacity / 2 {
        return;
    }
    // Not empty: more than `capacity / 2` buckets are left.
    let mut tats: Vec<u64> = buckets.values().copied().collect();
    let middle = tats.len() / 2;
    let (_, median, _) = tats.select_nth_unstable(middle);
    let median = *median;
    buckets.retain(|_, tat| *tat > median);
}

/// A poisoned shard only means another request panicked while holding it; the map itself is
/// always consistent (every update is a single insert), so keep using it.
fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The keys are already keyed SipHash values; hashing them again would only cost time.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `HashMap<u64, _>`; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Time that only moves when a test says so.
    #[derive(Debug, Default, Clone)]
    struct ManualClock(Arc<AtomicU64>);

    impl ManualClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn limiter() -> (InMemoryRateLimiter<ManualClock>, ManualClock) {
        let clock = ManualClock::default();
        // Start away from zero so "now" is never the origin.
        clock.advance(Duration::from_secs(1000));
        (
            InMemoryRateLimiter::with_clock(100_000, clock.clone()),
            clock,
        )
    }

    fn quota(per_second: f64, burst: u64) -> Quota {
        Quota::new(Rate::per_second(per_second).expect("valid rate"), burst)
    }

    const ALICE: BucketKey<'static> = BucketKey::Subject {
        issuer: "local",
        subject: "alice",
    };

    fn allowed_in_a_row(l: &InMemoryRateLimiter<ManualClock>, key: BucketKey, q: Quota) -> u64 {
        let mut n = 0;
        while l.decide(key, q, true).is_allowed() {
            n += 1;
            assert!(n <= 10_000_000, "bucket never ran dry");
        }
        n
    }

    #[test]
    fn burst_then_sustained_rate() {
        let (l, clock) = limiter();
        let q = quota(10.0, 50);
        assert_eq!(
            allowed_in_a_row(&l, ALICE, q),
            50,
            "a fresh bucket holds the burst"
        );
        // 10/s: one request every 100 ms.
        clock.advance(Duration::from_millis(99));
        assert!(!l.decide(ALICE, q, true).is_allowed());
        clock.advance(Duration::from_millis(1));
        assert!(l.decide(ALICE, q, true).is_allowed());
        assert!(!l.decide(ALICE, q, true).is_allowed());
        // After a full second, ten more.
        clock.advance(Duration::from_secs(1));
        assert_eq!(allowed_in_a_row(&l, ALICE, q), 10);
        // After a long quiet period the bucket refills to the burst, never beyond.
        clock.advance(Duration::from_secs(3600));
        assert_eq!(allowed_in_a_row(&l, ALICE, q), 50);
    }

    #[test]
    fn retry_after_is_the_wait_until_the_next_request_conforms() {
        let (l, clock) = limiter();
        let q = quota(2.0, 1);
        assert!(l.decide(ALICE, q, true).is_allowed());
        assert_eq!(
            l.decide(ALICE, q, true),
            Decision::Denied {
                retry_after: Duration::from_millis(500)
            }
        );
        clock.advance(Duration::from_millis(200));
        assert_eq!(
            l.decide(ALICE, q, true),
            Decision::Denied {
                retry_after: Duration::from_millis(300)
            },
            "denied requests do not draw, so the wait only shrinks"
        );
        clock.advance(Duration::from_millis(300));
        assert!(l.decide(ALICE, q, true).is_allowed());
    }

    #[test]
    fn slow_rates_and_peek() {
        let (l, clock) = limiter();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let key = BucketKey::auth_failures(ip);
        let q = QuotaConfig {
            rate: Rate::parse("10/min").expect("rate"),
            burst: 3,
        }
        .quota();
        for _ in 0..3 {
            assert!(l.decide(key, q, false).is_allowed(), "peek never draws");
            assert!(l.decide(key, q, true).is_allowed());
        }
        assert_eq!(
            l.decide(key, q, false),
            Decision::Denied {
                retry_after: Duration::from_secs(6)
            }
        );
        clock.advance(Duration::from_secs(6));
        assert!(l.decide(key, q, false).is_allowed());
    }

    #[test]
    fn keys_are_independent() {
        let (l, _) = limiter();
        let q = quota(1.0, 2);
        let bob = BucketKey::Subject {
            issuer: "local",
            subject: "bob",
        };
        let other_issuer = BucketKey::Subject {
            issuer: "github",
            subject: "alice",
        };
        assert_eq!(allowed_in_a_row(&l, ALICE, q), 2);
        assert_eq!(allowed_in_a_row(&l, bob, q), 2);
        assert_eq!(allowed_in_a_row(&l, other_issuer, q), 2);
        assert_eq!(allowed_in_a_row(&l, BucketKey::Project("alice"), q), 2);
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(BucketKey::client_ip(a), BucketKey::client_ip(b));
        assert_ne!(BucketKey::client_ip(a), BucketKey::client_ip(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let v4: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(BucketKey::client_ip(mapped), BucketKey::client_ip(v4));
    }

    #[test]
    fn memory_stays_bounded_when_keys_rotate() {
        let (l, clock) = limiter();
        let q = quota(1.0, 5);
        let max = 100_000;
        // An attacker rotating addresses far faster than buckets go idle.
        for i in 0..(3 * max as u32) {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(l.decide(BucketKey::client_ip(ip), q, true).is_allowed());
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(l.len() <= max, "{} buckets held", l.len());
        // Idle buckets go first: after they refill, new keys make room by dropping them.
        clock.advance(Duration::from_secs(10));
        let dry = BucketKey::Project("busy");
        assert_eq!(allowed_in_a_row(&l, dry, q), 5);
        for i in 0..(max as u32) {
            let ip = IpAddr::from((i + 10_000_000).to_be_bytes());
            l.decide(BucketKey::client_ip(ip), q, true);
        }
        assert!(l.len() <= max, "{} buckets held", l.len());
        assert!(
            !l.decide(dry, q, true).is_allowed(),
            "a busy bucket survives eviction of idle ones"
        );
    }

    #[test]
    fn rate_parsing() {
        let check = |s: &str, per_second: Option<f64>| match (Rate::parse(s), per_second) {
            (Ok(r), Some(p)) => assert!((r.as_per_second() - p).abs() < 1e-9, "{s}"),
            (Err(_), None) => {}
            (got, want) => panic!("{s}: got {got:?}, want {want:?}"),
        };
        check("10", Some(10.0));
        check("10/s", Some(10.0));
        check("30/min", Some(0.5));
        check("36 / h", Some(0.01));
        check("0.5", Some(0.5));
        check("0", None);
        check("-1/s", None);
        check("1/day", None);
        check("1/d", None);
        check("NaN", None);
        check("inf", None);
        check("2000000000/s", None);
        check("1/2h", None);
    }

    #[test]
    fn extreme_quotas_do_not_overflow() {
        let (l, clock) = limiter();
        let slow = Quota::new(Rate::parse("1/h").expect("rate"), QuotaConfig::MAX_BURST);
        let fast = Quota::new(Rate::per_second(1e9).expect("rate"), 1);
        assert!(l.decide(ALICE, slow, true).is_allowed());
        assert!(l.decide(BucketKey::Project("p"), fast, true).is_allowed());
        clock.advance(Duration::from_nanos(1));
        assert!(l.decide(BucketKey::Project("p"), fast, true).is_allowed());
    }

    #[test]
    fn config_bounds() {
        let q = |burst| QuotaConfig {
            rate: Rate::per_second(1.0).expect("rate"),
            burst,
        };
        let config = |burst, max_buckets| RateLimitConfig {
            enabled: true,
            per_subject: q(burst),
            per_ip: q(1),
            per_project: None,
            auth_failures_per_ip: q(1),
            max_buckets,
            replicas: 1,
        };
        assert!(config(50, 100_000).validate().is_ok());
        let err = config(0, 100_000).validate().expect_err("zero burst");
        assert!(err.contains("rate_limit.per_subject"), "{err}");
        assert!(config(50, 10).validate().is_err());
        let none = RateLimitConfig {
            replicas: 0,
            ..config(50, 100_000)
        };
        assert!(none.validate().expect_err("zero").contains("replicas"));
    }

    #[test]
    fn replicas_together_allow_at_most_the_configured_quota() {
        let quota = QuotaConfig {
            rate: Rate::per_second(10.0).expect("rate"),
            burst: 5,
        };
        // Three replicas, each with its own buckets, one caller spreading requests over all.
        let clock = ManualClock::default();
        clock.advance(Duration::from_secs(1000));
        let replicas: Vec<_> = (0..3)
            .map(|_| InMemoryRateLimiter::with_clock(1000, clock.clone()))
            .collect();
        let share = quota.share(3);
        let mut allowed = 0;
        for i in 0..30 {
            if replicas[i % 3].decide(ALICE, share, true).is_allowed() {
                allowed += 1;
            }
        }
        // Burst 5 over 3 replicas: 2 each (rounded up), so 6 at once, never 30.
        assert_eq!(allowed, 6);
        // Over one second the three shares refill 10/3 per second each: 10 in all.
        let mut refilled = 0;
        for step in 0..100 {
            clock.advance(Duration::from_millis(10));
            if replicas[step % 3].decide(ALICE, share, true).is_allowed() {
                refilled += 1;
            }
        }
        assert!((9..=11).contains(&refilled), "{refilled} in one second");
        // One replica alone gives a third.
        assert_eq!(quota.share(1).interval_ns * 3, share.interval_ns);
    }

    /// A clock whose first reading stalls until another thread has decided (or 300 ms have
    /// passed) and reads `first_ns`; every later reading is `later_ns`. It lets a test put a
    /// second decision between the first one's reading of the clock and its use.
    #[derive(Debug)]
    struct StallingClock {
        first_ns: u64,
        later_ns: u64,
        readings: AtomicU64,
        first_read: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Clock for StallingClock {
        fn now_ns(&self) -> u64 {
            if self.readings.fetch_add(1, Ordering::SeqCst) > 0 {
                return self.later_ns;
            }
            let _ = lock_ignoring_poison(&self.first_read).send(());
            let _ = lock_ignoring_poison(&self.release).recv_timeout(Duration::from_millis(300));
            self.first_ns
        }
    }

    fn lock_ignoring_poison<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The clock is read under the bucket's lock. Were it read before, a decision that read
    /// the clock, then waited while a later request advanced the bucket, would judge by its
    /// stale time and refuse a request that conforms. Here the first request stalls right after
    /// reading the clock; the second, 10 ms later, must wait for it. One request per interval
    /// (burst 1): both conform in either order, but not with the first one's stale time.
    #[test]
    fn a_decision_uses_the_time_it_holds_the_bucket_at() {
        let (first_read, first_was_read) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        let first_ns = Duration::from_secs(1000).as_nanos() as u64;
        let limiter = Arc::new(InMemoryRateLimiter::with_clock(
            1000,
            StallingClock {
                first_ns,
                later_ns: first_ns + Duration::from_millis(10).as_nanos() as u64,
                readings: AtomicU64::new(0),
                first_read: std::sync::Mutex::new(first_read),
                release: std::sync::Mutex::new(released),
            },
        ));
        let one_per_ms = quota(1000.0, 1);
        let first = {
            let limiter = limiter.clone();
            std::thread::spawn(move || limiter.decide(ALICE, one_per_ms, true))
        };
        first_was_read
            .recv_timeout(Duration::from_secs(10))
            .expect("the first decision reads the clock");
        let second = limiter.decide(ALICE, one_per_ms, true);
        let _ = release.send(());
        let first = first.join().expect("the first decision");
        assert_eq!(first, Decision::Allowed, "the first request conforms");
        assert_eq!(
            second,
            Decision::Allowed,
            "the request 10 ms later conforms"
        );
        // And the bucket holds the second request's draw: the next one waits 1 ms from it.
        assert_eq!(
            limiter.decide(ALICE, one_per_ms, false),
            Decision::Denied {
                retry_after: Duration::from_millis(1)
            }
        );
    }
}
