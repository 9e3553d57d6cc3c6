//! Checks the provider tests share: what an error, a log or a command's output shows must not
//! carry a secret, and an error of the HTTP API is exactly `{"error", "message"}`.

use std::process::Output;

use axum::http::StatusCode;
use rise_backend::registry::ProviderError;
use serde_json::{Value, json};

/// Neither the `Display` nor the `Debug` form of `e` contains any of `secrets`.
pub fn assert_no_secret(e: &ProviderError, secrets: &[&str]) {
    let shown = format!("{e} {e:?}");
    for s in secrets {
        assert!(!shown.contains(s), "error reveals a secret: {shown}");
    }
}

/// `logs` contain none of `secrets`; a failure names only a short prefix of the leaked one
/// (enough to tell which fake secret it is).
pub fn assert_logs_free_of(logs: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !logs.contains(s.as_str()),
            "a secret is in the logs: {}…",
            s.chars().take(12).collect::<String>()
        );
    }
}

/// Neither stdout nor stderr of a command contains any of `secrets`.
pub fn assert_output_free_of(output: &Output, secrets: &[&str]) {
    for stream in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(stream);
        for s in secrets {
            assert!(!text.contains(s), "{text}");
        }
    }
}

/// An API answer `got` has `status` and the body `{"error": code, "message": ...}` (nothing
/// else), with `part` in its message.
pub fn check_error(got: &(StatusCode, Value), status: StatusCode, code: &str, part: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(
        body,
        &json!({"error": code, "message": body["message"].clone()}),
        "an error body is exactly error and message"
    );
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(part), "{message:?} lacks {part:?}");
}
