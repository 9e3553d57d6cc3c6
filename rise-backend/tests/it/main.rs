//! Integration tests of rise-backend against real dependencies (see support/).

mod audit_store;
mod infra;
mod support;
