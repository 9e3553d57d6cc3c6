//! The `rise` and `docker-credential-rise` binaries as a user meets them without a backend: help
//! texts, exit codes and the sentences of local errors, snapshot-tested. The end-to-end tests
//! against a real backend, identity provider and registry live in `rise-backend/tests/it/cli.rs`
//! (they need the backend's test support).

mod offline;
