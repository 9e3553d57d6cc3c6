//! The client's one error type. Every error is one sentence that says what went wrong and what
//! to do next, and maps to a documented exit code:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | unexpected failure (a bug or an unclassified local problem) |
//! | 2 | usage error: unknown flag, missing argument (from the argument parser) |
//! | 3 | not signed in, or the sign-in has expired or was refused: run `rise login` |
//! | 4 | permission denied: the backend or registry refused the action for this identity |
//! | 5 | not found: the project (or another named thing) does not exist on the backend |
//! | 6 | unavailable: the backend, identity provider or registry could not be reached or failed |
//! | 7 | invalid local input: an image source, a configuration file or an option value |
//! | 8 | the registry refused the upload for a reason other than authorization |
//!
//! The same table is printed by `rise --help` ([`EXIT_CODES_HELP`]).

use std::fmt;

/// Exit codes, as documented in the module docs and in `rise --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Failure = 1,
    Usage = 2,
    Auth = 3,
    Denied = 4,
    NotFound = 5,
    Unavailable = 6,
    Input = 7,
    Registry = 8,
}

/// The exit-code table shown in `rise --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  unexpected failure
  2  usage error (unknown flag, missing argument)
  3  not signed in, or the sign-in expired or was refused: run `rise login`
  4  permission denied by the backend or the registry
  5  not found (for example an unknown project)
  6  the backend, identity provider or registry is unreachable or failed
  7  invalid local input (image source, configuration file, option value)
  8  the registry refused the upload for another reason";

/// A failure, already phrased for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No usable caller token for this backend.
    #[error(
        "not logged in to {backend}: run `rise login --backend {backend}` (in CI, set RISE_TOKEN or RISE_TOKEN_FILE)"
    )]
    NotLoggedIn { backend: String },
    /// The stored login can no longer be refreshed.
    #[error("your login to {backend} has expired: run `rise login --backend {backend}` again")]
    LoginExpired { backend: String },
    /// No backend was named and none is remembered.
    #[error(
        "no Rise backend given: run `rise login --backend URL`, pass --backend URL, or set RISE_BACKEND"
    )]
    NoBackend,
    /// The backend answered with its JSON error; `message` is already a sentence for the user.
    #[error("{message}{hint}")]
    Backend {
        status: u16,
        code: String,
        message: String,
        /// What to do next when the backend's message does not say (e.g. sign in again).
        hint: Hint,
    },
    /// A server could not be reached or answered with something unusable.
    #[error("{0}")]
    Unavailable(String),
    /// Signing in failed (denied, code expired, provider error).
    #[error("{0}")]
    Auth(String),
    /// The registry refused an operation because of authorization.
    #[error("{0}")]
    RegistryDenied(String),
    /// The registry refused an operation for another reason.
    #[error("{0}")]
    Registry(String),
    /// Bad local input: an image source, a file we must read, an option value.
    #[error("{0}")]
    Input(String),
    /// Something unexpected.
    #[error("{0}")]
    Other(String),
}

/// An optional "what next" appended to a backend message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hint(pub Option<String>);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(h) => write!(f, "; {h}"),
            None => Ok(()),
        }
    }
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::NotLoggedIn { .. } | CliError::LoginExpired { .. } | CliError::Auth(_) => {
                Exit::Auth
            }
            CliError::NoBackend | CliError::Input(_) => Exit::Input,
            CliError::Backend { status, .. } => match status {
                401 => Exit::Auth,
                403 => Exit::Denied,
                404 => Exit::NotFound,
                400..=499 => Exit::Input,
                _ => Exit::Unavailable,
            },
            CliError::Unavailable(_) => Exit::Unavailable,
            CliError::RegistryDenied(_) => Exit::Denied,
            CliError::Registry(_) => Exit::Registry,
            CliError::Other(_) => Exit::Failure,
        }
    }

    /// A local file problem, phrased with the path and what to check.
    pub fn file(action: &str, path: &std::path::Path, err: &std::io::Error) -> Self {
        CliError::Input(format!(
            "cannot {action} {}: {}",
            path.display(),
            describe_io(err)
        ))
    }
}

/// `std::io::Error`'s message without the "(os error N)" noise.
pub fn describe_io(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::NotFound => "no such file or directory".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let s = err.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_owned(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_status_maps_to_exit_code() {
        let e = |status| CliError::Backend {
            status,
            code: "x".into(),
            message: "m".into(),
            hint: Hint::default(),
        };
        assert_eq!(e(401).exit(), Exit::Auth);
        assert_eq!(e(403).exit(), Exit::Denied);
        assert_eq!(e(404).exit(), Exit::NotFound);
        assert_eq!(e(400).exit(), Exit::Input);
        assert_eq!(e(502).exit(), Exit::Unavailable);
    }

    #[test]
    fn backend_message_is_shown_with_hint() {
        let e = CliError::Backend {
            status: 401,
            code: "token_expired".into(),
            message: "token has expired".into(),
            hint: Hint(Some("run `rise login`".into())),
        };
        assert_eq!(e.to_string(), "token has expired; run `rise login`");
    }

    #[test]
    fn help_table_lists_every_code() {
        for code in [
            Exit::Failure,
            Exit::Usage,
            Exit::Auth,
            Exit::Denied,
            Exit::NotFound,
            Exit::Unavailable,
            Exit::Input,
            Exit::Registry,
        ] {
            let line = format!("\n  {}  ", code as u8);
            assert!(EXIT_CODES_HELP.contains(&line), "{code:?} missing");
        }
    }
}
