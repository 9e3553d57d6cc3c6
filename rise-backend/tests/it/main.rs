//! Integration tests of rise-backend against real dependencies (see support/).

mod distribution;
mod infra;
mod support;
