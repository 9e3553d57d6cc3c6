//! Integration tests of rise-backend against real dependencies (see support/).

mod api;
mod auth;
mod cli;
mod distribution;
mod ecr;
mod infra;
mod support;
