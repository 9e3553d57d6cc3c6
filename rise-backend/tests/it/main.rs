//! Integration tests of rise-backend against real dependencies (see support/).

mod infra;
mod support;
