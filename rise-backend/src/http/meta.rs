//! Public metadata for clients: `GET /auth/config` tells `rise login` how to sign a person in
//! (so the CLI needs only the backend URL), and `GET /auth/whoami` shows a caller how the backend
//! sees their token.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use super::extract::Caller;
use crate::config::AuthConfig;

/// What `GET /auth/config` returns. Built once from configuration; holds nothing secret.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AuthMeta {
    /// OIDC issuers people can sign in with: those configured with a `client_id`.
    pub issuers: Vec<PublishedIssuer>,
    /// The issuer `rise login` uses without `--issuer`: `auth.login_issuer`, else the only one.
    pub default_issuer: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishedIssuer {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    /// The audience the backend expects in tokens (informational).
    pub audience: String,
    /// Scopes to ask for; absent when the CLI's default applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

impl AuthMeta {
    pub fn from_config(auth: &AuthConfig) -> Self {
        let issuers: Vec<PublishedIssuer> = auth
            .issuers
            .iter()
            .filter_map(|(name, i)| {
                Some(PublishedIssuer {
                    name: name.clone(),
                    issuer: i.issuer.clone(),
                    client_id: i.client_id.clone()?,
                    audience: i.audience.clone(),
                    scopes: i.login_scopes.clone(),
                })
            })
            .collect();
        let default_issuer = match (&auth.login_issuer, issuers.as_slice()) {
            (Some(name), _) => Some(name.clone()),
            (None, [only]) => Some(only.name.clone()),
            (None, _) => None,
        };
        Self {
            issuers,
            default_issuer,
        }
    }
}

pub(super) async fn auth_config(State(state): State<Arc<AppState>>) -> Json<AuthMeta> {
    Json((*state.auth_meta).clone())
}

#[derive(Serialize)]
pub(super) struct WhoAmI {
    subject: String,
    issuer: String,
    groups: Vec<String>,
    /// RFC 3339, UTC.
    expires_at: String,
}

pub(super) async fn whoami(Caller(principal): Caller) -> Json<WhoAmI> {
    let expires_at: SystemTime = principal.expires_at;
    Json(WhoAmI {
        subject: principal.subject.clone(),
        issuer: principal.issuer.clone(),
        groups: principal.groups.clone(),
        expires_at: crate::audit::rfc3339_seconds(expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use std::io::Write;

    fn config(extra: &str) -> Config {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(extra.as_bytes()).expect("write");
        Config::load(&Sources {
            files: vec![f.path().to_owned()],
            env: vec![],
        })
        .expect("config loads")
    }

    const TWO_ISSUERS: &str = r#"
[auth.issuers.corp]
issuer = "https://idp.example.com"
audience = "rise"
client_id = "rise-cli"

[auth.issuers.github]
issuer = "https://token.actions.githubusercontent.com"
audience = "rise"
"#;

    #[test]
    fn publishes_only_issuers_people_can_sign_in_with() {
        let meta = AuthMeta::from_config(&config(TWO_ISSUERS).auth);
        assert_eq!(
            meta,
            AuthMeta {
                issuers: vec![PublishedIssuer {
                    name: "corp".into(),
                    issuer: "https://idp.example.com".into(),
                    client_id: "rise-cli".into(),
                    audience: "rise".into(),
                    scopes: None,
                }],
                default_issuer: Some("corp".into()),
            }
        );
        let json = serde_json::to_value(&meta).expect("json");
        assert_eq!(json["issuers"][0]["client_id"], "rise-cli");
    }

    #[test]
    fn login_issuer_must_be_a_sign_in_issuer() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        write!(f, "[auth]\nlogin_issuer = \"github\"\n{TWO_ISSUERS}").expect("write");
        let err = Config::load(&Sources {
            files: vec![f.path().to_owned()],
            env: vec![],
        })
        .expect_err("github has no client_id")
        .to_string();
        assert!(err.contains("login_issuer"), "{err}");
        let ok = config(&format!("[auth]\nlogin_issuer = \"corp\"\n{TWO_ISSUERS}"));
        assert_eq!(
            AuthMeta::from_config(&ok.auth).default_issuer.as_deref(),
            Some("corp")
        );
    }
}
