//! Integration tests of rise-backend against real dependencies (see support/).

mod api;
mod infra;
mod support;
