//! Shared test support: spawners for real parts and protocol-faithful fakes.

pub mod fake_artifactory;
