//! Integration tests of rise-backend against real dependencies (see support/).

mod api;
mod artifactory;
mod infra;
mod support;
