//! Integration tests of rise-backend against real dependencies (see support/).

mod api;
mod auth;
mod infra;
mod support;
