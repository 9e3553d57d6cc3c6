//! Integration tests of rise-backend against real dependencies (see support/).

mod api;
<<<<<<< HEAD
mod auth;
=======
mod ecr;
>>>>>>> ecr
mod infra;
mod support;
