//! Integration tests of rise-backend against real dependencies (see support/).

mod acr;
mod api;
mod artifactory;
mod audit_api;
mod audit_crash;
mod audit_store;
mod auth;
mod cli;
mod conformance;
mod distribution;
mod dockerhub;
mod ecr;
mod generated;
mod ghcr;
mod google;
mod harbor;
mod infra;
mod ops;
mod quay;
mod replicas;
mod support;
