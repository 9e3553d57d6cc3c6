//! The Quay API calls Rise makes (robot accounts of one organization and a robot's permission on
//! one repository), and their wire types.
//!
//! Shapes come from Quay's public API reference and its source (no Quay runs in Rise's test
//! environment; the tests use a fake built from the same sources,
//! `tests/it/support/fake_quay.rs`):
//! - `createOrgRobot`: `PUT /api/v1/organization/{orgname}/robots/{robot_shortname}`, scope
//!   `org:admin`, optional JSON body `description` (at most 255 characters) and
//!   `unstructured_metadata` (an object); 201 with `name` (`orgname+shortname`), `created`,
//!   `last_accessed`, `description`, `token`, `unstructured_metadata`. An invalid or taken name
//!   is a 400 (`endpoints/api/robot.py`, `data/model/user.py::create_robot` in `quay/quay`;
//!   <https://docs.redhat.com/en/documentation/red_hat_quay/3/html/red_hat_quay_api_reference/createorgrobot>,
//!   <https://docs.redhat.com/en/documentation/red_hat_quay/3/html/managing_access_and_permissions/creating-robot-account-api>).
//! - `deleteOrgRobot`: `DELETE` on the same path, 204 (404 when it does not exist).
//! - `getOrgRobots`: `GET /api/v1/organization/{orgname}/robots`, query `permissions`, `token`
//!   (default true: every robot's token is in the reply, so Rise sends `token=false`) and
//!   `limit`; 200 with `{"robots": [{name, created, last_accessed, teams, repositories,
//!   description}]}`. No paging.
//! - `changeUserPermissions`: `PUT /api/v1/repository/{namespace}/{repository}/permissions/user/{username}`,
//!   scope `repo:admin`, body `{"role": "read" | "write" | "admin"}` (required); 200 with
//!   `role`, `name`, `is_robot`, ... (`endpoints/api/permission.py`).
//! - Scopes: `org:admin` administers organizations "including creating robots"; `repo:admin` is
//!   administrator access to repositories
//!   (<https://docs.redhat.com/en/documentation/red_hat_quay/3/html/red_hat_quay_api_reference/authorization>;
//!   `require_scope(scopes.ORG_ADMIN)` on the robot endpoints, `require_repo_admin` on permissions).
//! - Errors are RFC 7807-style: `{"status", "error_message", "title", "error_type", "detail",
//!   "type"}`; 401 `invalid_token`, 403 `insufficient_scope` (`endpoints/exception.py`).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::registry::ProviderError;
use crate::registry::providers::artifactory::redact_for_log;
use crate::registry::providers::upstream;

pub(super) const CREATE_OPERATION: &str = "Quay create robot";
pub(super) const PERMISSION_OPERATION: &str = "Quay grant repository permission";
pub(super) const DELETE_OPERATION: &str = "Quay delete robot";
pub(super) const LIST_OPERATION: &str = "Quay list robots";
/// Create and permission replies are small.
const MAX_BODY: usize = 64 * 1024;
/// A robot listing grows with the organization's robots.
const MAX_LIST_BODY: usize = 8 * 1024 * 1024;

/// `createOrgRobot`'s body.
#[derive(Debug, Serialize)]
pub(super) struct CreateRobot<'a> {
    pub description: &'a str,
    pub unstructured_metadata: serde_json::Value,
}

/// `createOrgRobot`'s reply. `token` is the only secret.
#[derive(Deserialize)]
pub(super) struct CreatedRobot {
    pub name: String,
    pub token: SecretString,
}

/// One robot of `getOrgRobots` (asked without tokens).
#[derive(Debug, Deserialize)]
pub(super) struct ListedRobot {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Deserialize)]
struct RobotList {
    robots: Vec<ListedRobot>,
}

#[derive(Serialize)]
struct Role<'a> {
    role: &'a str,
}

#[derive(Deserialize)]
struct GrantedRole {
    role: String,
}

/// Quay's error body; every field optional.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
    /// Data-model errors come as `{"message": ...}` only (with 400).
    #[serde(default)]
    message: Option<String>,
}

/// Quay answers a robot that does not exist with 400 `{"message": "Could not find robot with
/// specified username"}` (a data-model error), not 404.
fn robot_missing(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|e| e.message)
        .is_some_and(|m| m.starts_with("Could not find robot"))
}

/// How a delete ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    Now,
    AlreadyGone,
}

/// Why a permission was not granted.
#[derive(Debug)]
pub(super) enum GrantError {
    /// 404: the repository (or the robot) does not exist.
    NotFound(String),
    Other(ProviderError),
}

/// A client for one Quay API base URL and one bearer token source.
#[derive(Debug, Clone)]
pub(super) struct QuayClient {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
}

impl QuayClient {
    pub fn new(
        base: &Url,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let http =
            upstream::http_client(connect_timeout, timeout, reqwest::header::HeaderMap::new())
                .map_err(ProviderError::Misconfigured)?;
        Ok(Self {
            http,
            base: base.clone(),
            timeout,
        })
    }

    /// `<base>/api/v1/<segments...>`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| ProviderError::Misconfigured("url cannot have a path".into()))?;
            path.pop_if_empty().extend(["api", "v1"]);
            path.extend(segments);
        }
        Ok(url)
    }

    pub async fn create_robot(
        &self,
        token: &SecretString,
        organization: &str,
        shortname: &str,
        body: &CreateRobot<'_>,
    ) -> Result<CreatedRobot, ProviderError> {
        let url = self.url(&["organization", organization, "robots", shortname])?;
        let builder = self
            .http
            .put(url)
            .bearer_auth(token.expose_secret())
            .json(body);
        let (status, bytes) = self.send(CREATE_OPERATION, builder, MAX_BODY).await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(status_error(CREATE_OPERATION, status, &bytes, token));
        }
        // Never put the body in an error: on success it holds the robot's token.
        let created: CreatedRobot =
            serde_json::from_slice(&bytes).map_err(|e| malformed(CREATE_OPERATION, status, &e))?;
        if created.token.expose_secret().is_empty() {
            return Err(ProviderError::Upstream {
                operation: CREATE_OPERATION,
                detail: format!("HTTP {status} without a token"),
            });
        }
        Ok(created)
    }

    /// Give `username` the role `role` on `organization/repository` and check Quay says so.
    pub async fn grant(
        &self,
        token: &SecretString,
        organization: &str,
        repository: &str,
        username: &str,
        role: &str,
    ) -> Result<(), GrantError> {
        let mut segments = vec!["repository", organization];
        segments.extend(repository.split('/'));
        segments.extend(["permissions", "user", username]);
        let url = self.url(&segments).map_err(GrantError::Other)?;
        let builder = self
            .http
            .put(url)
            .bearer_auth(token.expose_secret())
            .json(&Role { role });
        let (status, bytes) = self
            .send(PERMISSION_OPERATION, builder, MAX_BODY)
            .await
            .map_err(GrantError::Other)?;
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(GrantError::NotFound(summarise_error_body(&bytes, token)));
            }
            other => {
                return Err(GrantError::Other(with_missing_repository_hint(
                    status_error(PERMISSION_OPERATION, other, &bytes, token),
                )));
            }
        }
        let granted: GrantedRole = serde_json::from_slice(&bytes)
            .map_err(|e| GrantError::Other(malformed(PERMISSION_OPERATION, status, &e)))?;
        if granted.role != role {
            return Err(GrantError::Other(ProviderError::Upstream {
                operation: PERMISSION_OPERATION,
                detail: format!(
                    "asked for role {role}, Quay answered {:?}",
                    granted.role.chars().take(20).collect::<String>()
                ),
            }));
        }
        Ok(())
    }

    pub async fn delete_robot(
        &self,
        token: &SecretString,
        organization: &str,
        shortname: &str,
    ) -> Result<Deleted, ProviderError> {
        let url = self.url(&["organization", organization, "robots", shortname])?;
        let builder = self.http.delete(url).bearer_auth(token.expose_secret());
        let (status, bytes) = self.send(DELETE_OPERATION, builder, MAX_BODY).await?;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Deleted::Now),
            StatusCode::NOT_FOUND => Ok(Deleted::AlreadyGone),
            StatusCode::BAD_REQUEST if robot_missing(&bytes) => Ok(Deleted::AlreadyGone),
            other => Err(status_error(DELETE_OPERATION, other, &bytes, token)),
        }
    }

    /// The organization's robots, without their tokens.
    pub async fn list_robots(
        &self,
        token: &SecretString,
        organization: &str,
    ) -> Result<Vec<ListedRobot>, ProviderError> {
        let mut url = self.url(&["organization", organization, "robots"])?;
        url.query_pairs_mut().append_pair("token", "false");
        let builder = self.http.get(url).bearer_auth(token.expose_secret());
        let (status, bytes) = self.send(LIST_OPERATION, builder, MAX_LIST_BODY).await?;
        if status != StatusCode::OK {
            return Err(status_error(LIST_OPERATION, status, &bytes, token));
        }
        let list: RobotList =
            serde_json::from_slice(&bytes).map_err(|e| malformed(LIST_OPERATION, status, &e))?;
        Ok(list.robots)
    }

    /// One Quay API call, timed for `rise_upstream_request_duration_seconds` whatever its outcome.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
        max_body: usize,
    ) -> Result<(StatusCode, Vec<u8>), ProviderError> {
        let reply = upstream::exchange("quay", operation, self.timeout, max_body, builder).await?;
        Ok((reply.status, reply.body))
    }
}

fn malformed(operation: &'static str, status: StatusCode, e: &serde_json::Error) -> ProviderError {
    ProviderError::Upstream {
        operation,
        detail: format!(
            "HTTP {status} with a malformed body ({:?} at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    }
}

/// 401/403 mean Rise's OAuth token is wrong, expired or lacks a scope or an administrator: the
/// operator must act. Anything else is Quay failing. The body is summarised for the log,
/// redacted, never returned to a caller.
fn status_error(
    operation: &'static str,
    status: StatusCode,
    body: &[u8],
    token: &SecretString,
) -> ProviderError {
    let detail = format!("HTTP {status}: {}", summarise_error_body(body, token));
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Misconfigured(format!(
            "{operation} refused Rise's OAuth token ({detail}); the token must be valid, carry the scopes org:admin (robots) and repo:admin (repository permissions), and its user must administer the organization"
        )),
        _ => ProviderError::Upstream { operation, detail },
    }
}

/// Quay documents 404 for a repository that does not exist, but its data model can fail the
/// permission call on one with another status (400 or 500): say what to check.
fn with_missing_repository_hint(e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Upstream { operation, detail } => ProviderError::Upstream {
            operation,
            detail: format!(
                "{detail}; check that the repository exists in Quay (Rise does not create repositories)"
            ),
        },
        other => other,
    }
}

/// `title: detail` from a Quay error body, or the redacted raw text.
fn summarise_error_body(body: &[u8], token: &SecretString) -> String {
    let secrets = [token.expose_secret()];
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if e.title.is_some() || e.detail.is_some() || e.error_message.is_some() => {
            let title = e.title.or(e.error_type).unwrap_or_else(|| "?".into());
            let detail = e.detail.or(e.error_message).unwrap_or_default();
            redact_for_log(&format!("{title}: {detail}"), &secrets)
        }
        Ok(ErrorBody {
            message: Some(m), ..
        }) => redact_for_log(&m, &secrets),
        _ => format!(
            "unrecognised body {:?}",
            redact_for_log(&String::from_utf8_lossy(body), &secrets)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let token = SecretString::from("oauth-token-hunter2");
        let body = br#"{"status":403,"error_message":"Unauthorized","title":"insufficient_scope","error_type":"insufficient_scope","detail":"Unauthorized oauth-token-hunter2","type":"https://q/api/v1/error/insufficient_scope"}"#;
        assert_eq!(
            summarise_error_body(body, &token),
            "insufficient_scope: Unauthorized [REDACTED]"
        );
        assert_eq!(
            summarise_error_body(
                br#"{"message":"Could not find robot with specified username"}"#,
                &token
            ),
            "Could not find robot with specified username"
        );
        assert!(robot_missing(
            br#"{"message":"Could not find robot with specified username"}"#
        ));
        assert!(!robot_missing(br#"{"message":"Invalid robot name"}"#));
        assert!(!robot_missing(b"not json"));
        let e = with_missing_repository_hint(status_error(
            PERMISSION_OPERATION,
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"message":"Internal Server Error"}"#,
            &token,
        ));
        let shown = e.to_string();
        assert!(
            shown.contains("Internal Server Error") && shown.contains("exists in Quay"),
            "{shown}"
        );
        let s = summarise_error_body(b"<html>oauth-token-hunter2</html>", &token);
        assert!(s.starts_with("unrecognised body"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn statuses_map_to_operator_or_upstream() {
        let token = SecretString::from("t0k3n");
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let e = status_error(CREATE_OPERATION, status, b"{}", &token);
            assert!(
                matches!(&e, ProviderError::Misconfigured(m) if m.contains("org:admin") && m.contains("repo:admin")),
                "{e:?}"
            );
        }
        let e = status_error(LIST_OPERATION, StatusCode::BAD_GATEWAY, b"", &token);
        assert!(
            matches!(e, ProviderError::Upstream { operation, .. } if operation == LIST_OPERATION),
            "{e:?}"
        );
    }

    #[test]
    fn urls_escape_each_segment() {
        let base = Url::parse("https://quay.example.com/").expect("url");
        let c =
            QuayClient::new(&base, Duration::from_secs(1), Duration::from_secs(1)).expect("client");
        let u = c
            .url(&["organization", "acme", "robots", "rise_1_ab"])
            .expect("url");
        assert_eq!(
            u.as_str(),
            "https://quay.example.com/api/v1/organization/acme/robots/rise_1_ab"
        );
        let u = c
            .url(&["repository", "acme", "a+b/c", "permissions"])
            .expect("url");
        assert_eq!(
            u.as_str(),
            "https://quay.example.com/api/v1/repository/acme/a+b%2Fc/permissions"
        );
    }
}
