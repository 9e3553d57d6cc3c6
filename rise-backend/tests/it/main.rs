//! Integration tests of rise-backend against real dependencies (see support/).

mod api;
mod artifactory;
mod audit_api;
mod audit_crash;
mod audit_store;
mod auth;
mod cli;
mod distribution;
mod ecr;
mod infra;
mod ops;
mod replicas;
mod support;
