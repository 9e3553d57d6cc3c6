//! Test support: the real programs Rise is tested against, each started on a free loopback port
//! in its own temp dir and stopped on `Drop`.
//!
//! Everything here panics with a pointer to `scripts/setup-test-deps.sh` when a program is
//! missing: a missing dependency fails the test, it never skips it.
//!
//! Set `RISE_TEST_LOG=1` to echo the output of every started program to stderr.

// Not every test module uses every helper.
#![allow(dead_code)]

pub mod app;
pub mod aws_proxy;
pub mod fake_acr;
pub mod fake_artifactory;
pub mod fake_dockerhub;
pub mod fake_ghcr;
pub mod fake_google;
pub mod fake_harbor;
pub mod fake_quay;
pub mod image;
pub mod logs;
pub mod moto;
pub mod oidc;
pub mod postgres;
pub mod process;
pub mod provider_calls;
pub mod provider_checks;
pub mod recording_proxy;
pub mod registry;
pub mod rise;
pub mod rise_process;
pub mod skopeo;

use std::path::{Path, PathBuf};

/// What to run when a test dependency is missing.
pub const SETUP_HINT: &str = "run `scripts/setup-test-deps.sh` from the repository root";

/// The repository root (the Cargo workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("rise-backend has a parent directory")
        .to_path_buf()
}

/// `rise-backend/tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}
