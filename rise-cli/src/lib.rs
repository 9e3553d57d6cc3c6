//! The Rise client: the `rise` command and the `docker-credential-rise` helper share this library.
//!
//! Code map:
//! - [`error`]: the one error type, its exit codes and the sentences users read.
//! - [`context`]: where files live (config and cache directories) and the environment.
//! - [`backend`]: the Rise backend's HTTP API (`/auth/config`, `/auth/whoami`,
//!   `/registry/credentials`) and its wire types.
//! - [`oidc`]: sign-in against the backend's OIDC issuer (device grant, authorization code + PKCE,
//!   refresh, revocation).
//! - [`session`]: stored logins and the caller's token (`RISE_TOKEN`, `RISE_TOKEN_FILE` or login).
//! - [`body`]: reading response bodies with a size limit.
//! - [`cache`]: brokered registry credentials cached per caller token and scope.
//! - [`registries`]: which project a registry host (and path) belongs to, for the helper.
//! - [`auth_file`]: editing Docker's `config.json` and containers' `auth.json`.
//! - [`helper`]: the Docker credential-helper protocol.
//! - [`push`]: `rise push` (OCI layout / `docker save` archive to a registry, no daemon).
//! - [`cli`]: the `rise` command line.
//!
//! Architecture invariant: secrets (tokens, registry passwords) are `SecretString` in memory and
//! are exposed only where they are sent, written to a 0600 file, or printed because the user asked.

#![forbid(unsafe_code)]

pub mod auth_file;
pub mod backend;
pub mod body;
pub mod cache;
pub mod cli;
pub mod context;
pub mod error;
pub mod fsutil;
pub mod helper;
pub mod jwt;
pub mod oidc;
pub mod push;
pub mod registries;
pub mod session;
#[cfg(test)]
mod testing;

pub use error::CliError;
