//! Integration tests of rise-backend against real dependencies (see support/).

mod ecr;
mod infra;
mod support;
