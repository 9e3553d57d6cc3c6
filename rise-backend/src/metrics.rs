//! Prometheus metrics, served at `GET /metrics`.
//!
//! Code records through the functions below (thin wrappers over the `metrics` facade), never
//! through the facade's macros directly, so every series name and label set is defined here once.
//! Label values are bounded: routes are matched route templates, providers and operations are
//! `&'static str` from code, registry names come from configuration, and no label ever carries a
//! subject, a project or an address.
//!
//! The recorder is process-global (the facade's design). [`install`] is idempotent; the HTTP
//! router calls it, so in-process tests that build several routers share one registry.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::registry::{IssuedCredential, ProviderError};

pub const HTTP_REQUESTS: &str = "rise_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "rise_http_request_duration_seconds";
pub const ISSUANCES: &str = "rise_credential_issuances_total";
pub const UPSTREAM_DURATION: &str = "rise_upstream_request_duration_seconds";
pub const CACHE_LOOKUPS: &str = "rise_cache_lookups_total";
pub const RATE_LIMIT_REJECTIONS: &str = "rise_rate_limit_rejections_total";
pub const AUDIT_COMMIT_DURATION: &str = "rise_audit_commit_duration_seconds";
pub const TLS_RELOADS: &str = "rise_tls_certificate_reloads_total";
pub const KEY_RELOADS: &str = "rise_signing_key_reloads_total";
pub const CONNECTIONS_REFUSED: &str = "rise_connections_refused_total";
pub const PARSE_REFUSALS: &str = "rise_http_parse_refusals_total";

/// Histogram buckets (seconds) for every `*_seconds` series: from a fast local operation to an
/// upstream call about to time out.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes; keeps memory
/// bounded between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder as the process's global recorder (once) and return its handle.
/// `None` when another global recorder was installed first (then `/metrics` says so).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            {
                Ok(b) => b,
                // Only an empty bucket list is an error, and the list above is not empty.
                Err(e) => {
                    tracing::error!(error = %e, "metrics: invalid histogram buckets");
                    return None;
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics stays empty");
                return None;
            }
            describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                // Rendering also folds samples in, so scrapes still bound memory.
                tracing::warn!(error = %e, "metrics: cannot start the upkeep thread");
            }
            Some(handle)
        })
        .as_ref()
}

/// The Prometheus text exposition of every series recorded so far.
pub fn render() -> Option<String> {
    install().map(PrometheusHandle::render)
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by matched route template, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency by matched route template and method"
    );
    describe_counter!(
        ISSUANCES,
        "Credential issuances by registry, provider kind and result"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Latency of calls to upstream registries and clouds by provider kind and operation"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Credential cache lookups by provider kind and result"
    );
    describe_counter!(
        RATE_LIMIT_REJECTIONS,
        "Requests refused with 429 by the limit that refused them"
    );
    describe_histogram!(
        AUDIT_COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Time to durably commit audit records"
    );
    describe_counter!(TLS_RELOADS, "TLS certificate reloads by result");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed on arrival because server.max_connections were open"
    );
    describe_counter!(
        PARSE_REFUSALS,
        "HTTP/1 requests the HTTP parser refused before routing (400: not HTTP, 414: request target too long, 431: head too large), by status"
    );
    describe_counter!(
        KEY_RELOADS,
        "Re-reads of the registry token and grant keys that found a rotation (rotated), a retired key back (refused_retired_key) or failed (error)"
    );
}

/// One HTTP request. `route` is the matched route template (`/registry/credentials`), or
/// `unmatched` for requests no route matched: never the raw path.
pub fn record_http_request(route: &str, method: &'static str, status: u16, duration: Duration) {
    let route = route.to_owned();
    counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_REQUEST_DURATION, "route" => route, "method" => method)
        .record(duration.as_secs_f64());
}

/// One answer of a provider to `issue`: `registry` is the configured name, `provider` the kind
/// (`RegistryProvider::kind()`), `result` one of [`issuance_result`]'s values.
///
/// Recorded once per request by the `/registry/credentials` handler; providers do not call it.
pub fn record_issuance(registry: &str, provider: &'static str, result: &'static str) {
    counter!(ISSUANCES, "registry" => registry.to_owned(), "provider" => provider, "result" => result)
        .increment(1);
}

/// A connection closed on arrival by the connection cap.
pub fn record_connection_refused() {
    counter!(CONNECTIONS_REFUSED).increment(1);
}

/// A request the HTTP/1 parser refused before routing (so not in `rise_http_requests_total`).
pub fn record_parse_refusal(status: u16) {
    let status = match status {
        400 => "400",
        414 => "414",
        431 => "431",
        _ => "other",
    };
    counter!(PARSE_REFUSALS, "status" => status).increment(1);
}

/// The `result` label of an issuance: `issued`, `upstream_error`, `timeout`, `misconfigured` or
/// `unsupported`.
pub fn issuance_result(result: &Result<IssuedCredential, ProviderError>) -> &'static str {
    match result {
        Ok(_) => "issued",
        Err(ProviderError::Upstream { .. }) => "upstream_error",
        Err(ProviderError::Timeout { .. }) => "timeout",
        Err(ProviderError::Misconfigured(_)) => "misconfigured",
        Err(ProviderError::Unsupported(_)) => "unsupported",
    }
}

/// One call to an upstream (`operation` such as `AssumeRole`, `GetAuthorizationToken`), timed by
/// the provider around the call, whatever its outcome.
pub fn record_upstream_latency(
    provider: &'static str,
    operation: &'static str,
    duration: Duration,
) {
    histogram!(UPSTREAM_DURATION, "provider" => provider, "operation" => operation)
        .record(duration.as_secs_f64());
}

/// One lookup in a credential cache in front of a provider.
pub fn record_cache(provider: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(CACHE_LOOKUPS, "provider" => provider, "result" => result).increment(1);
}

/// One request refused with 429; `scope` names the limit (`subject`, `client_ip`, `project`,
/// `auth_failures`).
pub fn record_rate_limited(scope: &'static str) {
    counter!(RATE_LIMIT_REJECTIONS, "scope" => scope).increment(1);
}

/// One durable commit of audit records (a group commit counts once).
pub fn record_audit_commit(duration: Duration) {
    histogram!(AUDIT_COMMIT_DURATION).record(duration.as_secs_f64());
}

/// One attempt to reload the TLS certificate.
pub fn record_tls_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// A re-read of the registry token and grant keys that did not find them unchanged: `rotated`
/// (picked up), `refused_retired_key` (a key this server saw retired is back: the store was
/// rolled back or tampered with) or `error` (the store could not be read).
pub fn record_key_reload(result: &'static str) {
    counter!(KEY_RELOADS, "result" => result).increment(1);
}
