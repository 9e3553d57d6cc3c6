//! Rise backend: a container-registry credential broker.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and invariants.

pub mod audit;
pub mod auth;
pub mod config;
pub mod connections;
pub mod http;
pub mod keyring;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod refusals;
pub mod registry;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;
