//! Authentication: turns a bearer JWT into a typed [`Principal`].
//!
//! Trusted issuers are configured ([`crate::config::AuthConfig`]): the built-in local development
//! issuer and any number of OIDC issuers whose keys come from discovery + JWKS.

use std::time::SystemTime;

use serde_json::{Map, Value};

/// An authenticated caller. Produced only by [`Authenticator::verify`]; handlers receive it through
/// the HTTP layer's extractor and never parse headers themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The configured name of the issuer that vouched for the caller (e.g. `local`, `github`).
    pub issuer: String,
    /// The token's `iss` claim.
    pub issuer_url: String,
    /// The subject as mapped by the issuer's `subject_claim` (default `sub`).
    pub subject: String,
    /// Groups as mapped by the issuer's `groups_claim` (default `groups`); empty when absent.
    pub groups: Vec<String>,
    /// All claims of the token, for policy rules that match on any claim.
    pub claims: Map<String, Value>,
    /// When the caller's token expires (a registry token from `/token` never outlives it).
    pub expires_at: SystemTime,
}

/// Why a token was refused. Each variant has a stable code and a message for the caller that
/// says what to fix; neither ever contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header: send `Authorization: Bearer <jwt>`")]
    MissingHeader,
    #[error("malformed Authorization header: expected `Bearer <jwt>`")]
    MalformedHeader,
    #[error("malformed token: {0}")]
    MalformedToken(String),
    #[error("token issuer {0:?} is not trusted by this Rise server")]
    UnknownIssuer(String),
    #[error("token is signed with a key (kid {0:?}) the issuer does not publish")]
    UnknownKey(String),
    /// A local-issuer token minted with another data directory's key.
    #[error(
        "token is signed with a key (kid {0:?}) that is not this server's local development issuer key: mint it with `rise-backend token issue` and the server's configuration (the key is in its data directory)"
    )]
    UnknownLocalKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm {0} is not accepted for this issuer")]
    AlgorithmNotAllowed(String),
    #[error("token has expired")]
    Expired,
    /// Valid for longer than the issuer's `max_token_lifetime` (the limit, as written).
    #[error(
        "token is valid for longer than the {0} this server accepts from its issuer: use a shorter-lived token"
    )]
    LifetimeTooLong(String),
    #[error("token is not valid yet (nbf/iat in the future)")]
    NotYetValid,
    #[error("token audience does not include {expected:?}")]
    WrongAudience { expected: String },
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    /// The issuer's keys could not be fetched; a server-side problem, not the caller's.
    #[error("the keys of issuer {0:?} cannot be fetched right now")]
    IssuerUnavailable(String),
}

impl AuthError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingHeader => "missing_token",
            AuthError::MalformedHeader => "malformed_authorization",
            AuthError::MalformedToken(_) => "malformed_token",
            AuthError::UnknownIssuer(_) => "unknown_issuer",
            AuthError::UnknownKey(_) | AuthError::UnknownLocalKey(_) => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::Expired => "token_expired",
            AuthError::LifetimeTooLong(_) => "token_lifetime_too_long",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::IssuerUnavailable(_) => "issuer_unavailable",
        }
    }
}

mod jwks;
mod keys;
mod local;
mod verifier;

pub use local::{KEY_FILE as LOCAL_ISSUER_KEY_FILE, LocalIssuer};
pub use verifier::Authenticator;

/// Whether `text` (a subject or group) carries characters that could forge or disguise a log
/// line or an audit table: control characters, line and paragraph separators, and the
/// invisible bidirectional marks and overrides.
pub fn has_deceptive_chars(text: &str) -> bool {
    text.chars().any(is_deceptive_char)
}

/// A control character, a line or paragraph separator, an invisible bidirectional mark or
/// override, a zero-width space or a byte-order mark.
pub fn is_deceptive_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}
