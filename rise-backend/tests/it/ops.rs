//! Operations: rate limits over HTTP, metrics, readiness, TLS.
