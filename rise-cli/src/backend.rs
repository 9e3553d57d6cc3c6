//! The Rise backend's HTTP API as the client uses it, and its wire types.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::{CliError, Hint};

/// A Rise backend at a base URL.
#[derive(Debug, Clone)]
pub struct Backend {
    base: String,
    http: reqwest::Client,
}

/// `GET /auth/config`: what `rise login` needs to sign in.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfigResponse {
    #[serde(default)]
    pub issuers: Vec<PublishedIssuer>,
    #[serde(default)]
    pub default_issuer: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishedIssuer {
    /// The issuer's name in the backend's configuration.
    pub name: String,
    /// The issuer URL (OIDC discovery lives under it).
    pub issuer: String,
    /// The OAuth client id the CLI signs in as.
    pub client_id: String,
    /// Scopes to ask for; the CLI's default when absent.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// `GET /auth/whoami`: the caller as the backend sees it.
#[derive(Debug, Clone, Deserialize)]
pub struct WhoAmI {
    pub subject: String,
    pub issuer: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// What to ask `/registry/credentials` for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialQuery {
    pub project: String,
    /// Comma-separated actions (`pull`, `push,pull`); the backend's default (all allowed) if None.
    pub actions: Option<String>,
    pub ttl: Option<Duration>,
}

/// A brokered registry credential.
#[derive(Debug, Clone)]
pub struct Grant {
    pub registry_url: String,
    pub username: String,
    pub password: SecretString,
    /// Computed from `expires_in` on receipt, so the local clock's offset does not matter.
    pub expires_at: SystemTime,
    pub repository: String,
    /// `registry_url/repository`.
    pub image: String,
    pub project: String,
    pub actions: Vec<String>,
    pub warnings: Vec<String>,
}

/// A grant and the backend's response body as received (it holds the password).
#[derive(Debug)]
pub struct GrantResponse {
    pub grant: Grant,
    pub body: SecretString,
}

/// What to read from `GET /audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub project: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// `granted`, `denied` or `failed`.
    pub result: Option<String>,
    /// RFC 3339 or Unix seconds, as the backend takes them.
    pub since: Option<String>,
    pub until: Option<String>,
    pub after_id: i64,
    pub limit: u32,
}

/// A page of the audit log. Records are kept as the backend sent them (`--format jsonl` prints
/// them unchanged); [`AuditRecord`] reads the fields the table shows.
#[derive(Debug, Deserialize)]
pub struct AuditPage {
    pub records: Vec<serde_json::Value>,
    #[serde(default)]
    pub next_after_id: Option<i64>,
}

/// The fields of an audit record that `rise audit` shows in its table.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditRecord {
    pub id: i64,
    pub time: String,
    pub operation: String,
    pub caller: AuditCaller,
    pub project: Option<String>,
    pub repository: Option<String>,
    pub actions_granted: Vec<String>,
    pub result: String,
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditCaller {
    pub issuer: String,
    pub subject: String,
    pub client_ip: Option<String>,
}

#[derive(Deserialize)]
struct CredentialsWire {
    credentials: CredentialsInner,
    repository: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    scope: Option<ScopeWire>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct CredentialsInner {
    registry_url: String,
    username: String,
    password: SecretString,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ScopeWire {
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorWire {
    error: String,
    message: String,
}

impl Backend {
    /// `url` must be an absolute `http(s)://` URL.
    pub fn new(url: &str, http: reqwest::Client) -> Result<Self, CliError> {
        Ok(Self {
            base: normalize_url(url)?,
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn auth_config(&self) -> Result<AuthConfigResponse, CliError> {
        let response = self
            .send(self.http.get(self.endpoint("/auth/config")))
            .await?;
        let response = self.check(response, None).await?;
        self.json(response).await
    }

    pub async fn whoami(&self, token: &SecretString) -> Result<WhoAmI, CliError> {
        let request = self
            .http
            .get(self.endpoint("/auth/whoami"))
            .bearer_auth(token.expose_secret());
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        self.json(response).await
    }

    pub async fn credentials(
        &self,
        token: &SecretString,
        query: &CredentialQuery,
    ) -> Result<GrantResponse, CliError> {
        let mut params = vec![("project", query.project.clone())];
        if let Some(actions) = &query.actions {
            params.push(("actions", actions.clone()));
        }
        if let Some(ttl) = query.ttl {
            params.push(("ttl", ttl.as_secs().to_string()));
        }
        let request = self
            .http
            .get(self.endpoint("/registry/credentials"))
            .query(&params)
            .bearer_auth(token.expose_secret());
        let received_at = SystemTime::now();
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        let body = response.text().await.map_err(|e| self.unreachable(&e))?;
        let wire: CredentialsWire = serde_json::from_str(&body).map_err(|e| {
            CliError::Unavailable(format!(
                "the Rise backend at {} sent credentials in an unexpected format ({}); is the backend a compatible version?",
                self.base,
                json_problem(&e)
            ))
        })?;
        let registry_url = strip_scheme(&wire.credentials.registry_url).to_owned();
        let image = wire
            .image
            .unwrap_or_else(|| format!("{registry_url}/{}", wire.repository));
        let grant = Grant {
            registry_url,
            username: wire.credentials.username,
            password: wire.credentials.password,
            expires_at: received_at + Duration::from_secs(wire.credentials.expires_in),
            repository: wire.repository,
            image,
            project: wire.project.unwrap_or_else(|| query.project.clone()),
            actions: wire.scope.map(|s| s.actions).unwrap_or_default(),
            warnings: wire.warnings,
        };
        Ok(GrantResponse {
            grant,
            body: body.into(),
        })
    }

    /// One page of `GET /audit` (audit administrators only): records in id order after
    /// `query.after_id`, and the cursor of the next page if there is one.
    pub async fn audit(
        &self,
        token: &SecretString,
        query: &AuditQuery,
    ) -> Result<AuditPage, CliError> {
        let mut params: Vec<(&str, String)> = vec![
            ("format", "json".to_owned()),
            ("limit", query.limit.to_string()),
            ("after_id", query.after_id.to_string()),
        ];
        for (name, value) in [
            ("project", &query.project),
            ("subject", &query.subject),
            ("issuer", &query.issuer),
            ("result", &query.result),
            ("since", &query.since),
            ("until", &query.until),
        ] {
            if let Some(v) = value {
                params.push((name, v.clone()));
            }
        }
        let request = self
            .http
            .get(self.endpoint("/audit"))
            .query(&params)
            .bearer_auth(token.expose_secret());
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        self.json(response).await
    }

    /// `POST /grants/revocations` with `body`; the revocation the backend recorded.
    pub async fn revoke_grants(
        &self,
        token: &SecretString,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        let request = self
            .http
            .post(self.endpoint("/grants/revocations"))
            .json(body)
            .bearer_auth(token.expose_secret());
        let response = self.send(request).await?;
        let response = self.check(response, Some(token)).await?;
        self.json(response).await
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        request.send().await.map_err(|e| self.unreachable(&e))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, CliError> {
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Unavailable(format!(
                "the Rise backend at {} answered in an unexpected format ({}); is the backend a compatible version?",
                self.base,
                json_problem(&e)
            ))
        })
    }

    /// Turn a non-2xx answer into the backend's own sentence, plus what to do next where the
    /// sentence cannot know it (signing in again).
    async fn check(
        &self,
        response: reqwest::Response,
        token: Option<&SecretString>,
    ) -> Result<reqwest::Response, CliError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorWire>(&bytes) {
            Ok(err) => {
                let hint = match status.as_u16() {
                    401 if token.is_some() => Hint(Some(format!(
                        "sign in again with `rise login --backend {}` (in CI, check RISE_TOKEN)",
                        self.base
                    ))),
                    _ => Hint::default(),
                };
                Err(CliError::Backend {
                    status: status.as_u16(),
                    code: err.error,
                    message: err.message,
                    hint,
                })
            }
            Err(_) if status.as_u16() == 404 => Err(CliError::Unavailable(format!(
                "{} does not look like a Rise backend (HTTP 404 without a Rise error); check the --backend URL",
                self.base
            ))),
            Err(_) => Err(CliError::Unavailable(format!(
                "the Rise backend at {} answered HTTP {} without an error message; check the --backend URL or try again later",
                self.base,
                status.as_u16()
            ))),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        CliError::Unavailable(format!(
            "cannot reach the Rise backend at {}: {}; check the URL and that the backend is running",
            self.base,
            describe_reqwest(e)
        ))
    }
}

/// What is wrong with a JSON body, without quoting it (it may hold secrets).
pub fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "fields missing or of the wrong type",
        serde_json::error::Category::Eof => "cut short",
        serde_json::error::Category::Io => "unreadable",
    }
}

/// A short reason for a transport failure, without the URL (the caller names it).
pub fn describe_reqwest(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "the request timed out"
    } else if e.is_connect() {
        "the connection failed"
    } else if e.is_decode() || e.is_body() {
        "the response was cut short"
    } else {
        "the request failed"
    }
}

/// `https://rise.example.com/` -> `https://rise.example.com`; refuses non-http(s) and relative URLs.
pub fn normalize_url(url: &str) -> Result<String, CliError> {
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| {
        CliError::Input(format!(
            "invalid backend URL {trimmed:?}: give an absolute URL such as https://rise.example.com"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(CliError::Input(format!(
            "invalid backend URL {trimmed:?}: it must start with https:// (or http:// for local testing)"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(CliError::Input(format!(
            "invalid backend URL {trimmed:?}: remove the query or fragment"
        )));
    }
    Ok(trimmed.to_owned())
}

/// `https://host:5000/` -> `host:5000`.
pub fn strip_scheme(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    rest.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("https://rise.example.com/").expect("valid"),
            "https://rise.example.com"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:3000").expect("valid"),
            "http://127.0.0.1:3000"
        );
        for bad in ["rise.example.com", "ftp://x", "https://x/?a=b", ""] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
        assert_eq!(strip_scheme("https://h:5000/"), "h:5000");
        assert_eq!(strip_scheme("h"), "h");
    }
}
