//! All integration tests: one binary, one module per area.

mod artifactory;
mod support;
