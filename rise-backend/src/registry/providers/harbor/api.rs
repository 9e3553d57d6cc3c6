//! The Harbor v2.0 robot account calls Rise makes, and their wire types.
//!
//! Shapes come from Harbor's published API definition, `api/v2.0/swagger.yaml` in
//! `goharbor/harbor` (the `robot` tag), and the code behind it: the handler
//! `src/server/v2.0/handler/robot.go` (name rule, duration and level validation, listing),
//! `src/controller/robot/controller.go` (`expires_at` = creation + `duration` days, `-1` never,
//! `0` Harbor's default; stored names without Harbor's robot prefix, which is added when shown;
//! `<project>+<name>` for project robots; a permission on an unknown project is not found) and
//! `src/pkg/robot/dao/dao.go` (a taken name is a conflict, an unknown id not found). No Harbor
//! runs in Rise's test environment; the tests use a fake built from the same sources
//! (`tests/it/support/fake_harbor.rs`):
//! - `POST /api/v2.0/robots` (`CreateRobot`, Harbor 2.2+): body `RobotCreate` = `name`,
//!   `description`, `secret`, `level` (`system` | `project`), `disable`, `duration` (days; `-1`
//!   never expires, `0` takes Harbor's configured default, so Rise never sends it),
//!   `permissions: [{kind, namespace, access: [{resource, action, effect}]}]`. The name must
//!   match `^[a-z0-9]+(?:[._-][a-z0-9]+)*$`. Replies 201 `RobotCreated` = `id`, `name` (with
//!   Harbor's robot prefix, `robot$` by default), `secret`, `creation_time`, `expires_at` (Unix
//!   seconds; `-1` = never) and a `Location` header; 400, 401, 403, 404, 500 documented, and a
//!   conflict (409) when the name is taken.
//! - `GET /api/v2.0/robots` (`ListRobot`): `q` (e.g. `name=~rise-`: fuzzy match), `page`,
//!   `page_size` (at most 100); without `Level` in `q` it lists system robots. 200 with an array
//!   of `Robot` (`id`, `name`, `description`, `level`, `duration`, `disable`, `expires_at`,
//!   `permissions`, `creation_time`, ...) and `X-Total-Count`.
//! - `GET /api/v2.0/robots/{robot_id}` (`GetRobotByID`): 200 `Robot`, 401, 403, 404.
//! - `DELETE /api/v2.0/robots/{robot_id}` (`DeleteRobot`): 200, 400, 401, 403, 404, 500.
//! - Errors: `{"errors":[{"code": "...", "message": "..."}]}` (the `Errors` definition).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::registry::ProviderError;
use crate::registry::providers::artifactory::redact_for_log;
use crate::registry::providers::upstream;

pub(super) const CREATE_OPERATION: &str = "Harbor create robot";
pub(super) const DELETE_OPERATION: &str = "Harbor delete robot";
pub(super) const LIST_OPERATION: &str = "Harbor list robots";
pub(super) const GET_OPERATION: &str = "Harbor get robot";
/// Harbor's documented maximum `page_size`.
pub(super) const PAGE_SIZE: usize = 100;
/// Upstream replies are small (a page of 100 robots is a few tens of KiB); anything bigger is
/// not a reply Rise can use.
const MAX_BODY: usize = 1024 * 1024;

/// `RobotCreate`. `secret` is omitted: Harbor generates one.
#[derive(Debug, Serialize)]
pub(super) struct CreateRobot<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub level: &'static str,
    pub disable: bool,
    pub duration: i64,
    pub permissions: Vec<RobotPermission<'a>>,
}

#[derive(Debug, Serialize)]
pub(super) struct RobotPermission<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
    pub access: Vec<Access>,
}

#[derive(Debug, Serialize)]
pub(super) struct Access {
    pub resource: &'static str,
    pub action: &'static str,
}

/// `RobotCreated`. `secret` is the only secret.
#[derive(Deserialize)]
pub(super) struct RobotCreated {
    pub id: i64,
    pub name: String,
    pub secret: SecretString,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// The fields of `Robot` Rise reads when listing (a listed robot carries no secret).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Robot {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
}

/// The outcome of a delete: Harbor's 404 means someone (the reaper, an operator) was first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deleted {
    Now,
    AlreadyGone,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// A failed create: a name conflict is told apart so the caller can pick another name.
pub(super) enum CreateError {
    NameTaken,
    Other(ProviderError),
}

/// A client for one Harbor, authenticating with Rise's own Harbor identity (basic auth).
#[derive(Debug, Clone)]
pub(super) struct HarborClient {
    http: reqwest::Client,
    robots_url: Url,
    timeout: Duration,
}

/// Rise's Harbor identity for one call.
pub(super) struct Login<'a> {
    pub username: &'a str,
    pub password: &'a SecretString,
}

impl Login<'_> {
    fn secrets(&self) -> [&str; 1] {
        [self.password.expose_secret()]
    }
}

impl HarborClient {
    pub fn new(
        base_url: &Url,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let robots_url = base_url
            .join("api/v2.0/robots")
            .map_err(|e| ProviderError::Misconfigured(format!("url: {e}")))?;
        let http =
            upstream::http_client(connect_timeout, timeout, reqwest::header::HeaderMap::new())
                .map_err(ProviderError::Misconfigured)?;
        Ok(Self {
            http,
            robots_url,
            timeout,
        })
    }

    pub async fn create_robot(
        &self,
        login: &Login<'_>,
        body: &CreateRobot<'_>,
    ) -> Result<RobotCreated, CreateError> {
        let builder = self.authorize(self.http.post(self.robots_url.clone()), login);
        let (status, bytes) = self
            .send(CREATE_OPERATION, builder.json(body))
            .await
            .map_err(CreateError::Other)?;
        match status {
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => return Err(CreateError::NameTaken),
            other => {
                return Err(CreateError::Other(status_error(
                    CREATE_OPERATION,
                    other,
                    &bytes,
                    &login.secrets(),
                )));
            }
        }
        // Never put the body in an error: on success it holds the robot's secret.
        let created: RobotCreated = serde_json::from_slice(&bytes).map_err(|e| {
            CreateError::Other(upstream::malformed(
                CREATE_OPERATION,
                status,
                &e,
                bytes.len(),
            ))
        })?;
        if created.id <= 0 || created.name.is_empty() || created.secret.expose_secret().is_empty() {
            return Err(CreateError::Other(ProviderError::Upstream {
                operation: CREATE_OPERATION,
                detail: "HTTP 201 without a usable id, name or secret".into(),
            }));
        }
        Ok(created)
    }

    pub async fn get_robot(
        &self,
        login: &Login<'_>,
        id: i64,
    ) -> Result<Option<Robot>, ProviderError> {
        let builder = self.authorize(self.http.get(self.robot_url(id)?), login);
        let (status, bytes) = self.send(GET_OPERATION, builder).await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| upstream::malformed(GET_OPERATION, status, &e, bytes.len())),
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(status_error(GET_OPERATION, other, &bytes, &login.secrets())),
        }
    }

    pub async fn delete_robot(&self, login: &Login<'_>, id: i64) -> Result<Deleted, ProviderError> {
        let builder = self.authorize(self.http.delete(self.robot_url(id)?), login);
        let (status, bytes) = self.send(DELETE_OPERATION, builder).await?;
        match status {
            StatusCode::OK => Ok(Deleted::Now),
            StatusCode::NOT_FOUND => Ok(Deleted::AlreadyGone),
            other => Err(status_error(
                DELETE_OPERATION,
                other,
                &bytes,
                &login.secrets(),
            )),
        }
    }

    /// One page (1-based) of system robots whose name contains `name_contains`.
    pub async fn list_robots(
        &self,
        login: &Login<'_>,
        name_contains: &str,
        page: usize,
    ) -> Result<Vec<Robot>, ProviderError> {
        let mut url = self.robots_url.clone();
        url.query_pairs_mut()
            .append_pair("q", &format!("name=~{name_contains}"))
            .append_pair("page", &page.to_string())
            .append_pair("page_size", &PAGE_SIZE.to_string());
        let builder = self.authorize(self.http.get(url), login);
        let (status, bytes) = self.send(LIST_OPERATION, builder).await?;
        if status != StatusCode::OK {
            return Err(status_error(
                LIST_OPERATION,
                status,
                &bytes,
                &login.secrets(),
            ));
        }
        // Harbor answers `null` rather than `[]` for an empty page.
        let robots: Option<Vec<Robot>> = serde_json::from_slice(&bytes)
            .map_err(|e| upstream::malformed(LIST_OPERATION, status, &e, bytes.len()))?;
        Ok(robots.unwrap_or_default())
    }

    fn robot_url(&self, id: i64) -> Result<Url, ProviderError> {
        let mut url = self.robots_url.clone();
        url.path_segments_mut()
            .map_err(|()| ProviderError::Misconfigured("url cannot have a path".into()))?
            .push(&id.to_string());
        Ok(url)
    }

    fn authorize(
        &self,
        builder: reqwest::RequestBuilder,
        login: &Login<'_>,
    ) -> reqwest::RequestBuilder {
        // The single place Rise's Harbor password is exposed: to the Harbor it belongs to.
        // reqwest marks the Authorization header sensitive.
        builder.basic_auth(login.username, Some(login.password.expose_secret()))
    }

    /// One Harbor API call, timed for `rise_upstream_request_duration_seconds` whatever its outcome.
    async fn send(
        &self,
        operation: &'static str,
        builder: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ProviderError> {
        let reply =
            upstream::exchange("harbor", operation, self.timeout, MAX_BODY, builder).await?;
        Ok((reply.status, reply.body))
    }
}

/// 401/403 mean Rise's own Harbor identity is wrong or too weak: the operator must act.
/// Anything else is the upstream failing. The body is summarised for the log, redacted, never
/// returned to callers.
fn status_error(
    operation: &'static str,
    status: StatusCode,
    body: &[u8],
    secrets: &[&str],
) -> ProviderError {
    let summary = summarise_error_body(body, secrets);
    let detail = format!("HTTP {status}: {summary}");
    match status {
        StatusCode::UNAUTHORIZED => ProviderError::Misconfigured(format!(
            "{operation}: Harbor refused Rise's credential ({detail}); check username and password"
        )),
        StatusCode::FORBIDDEN => ProviderError::Misconfigured(format!(
            "{operation}: Rise's Harbor account may not manage system robot accounts ({detail}); it must be a Harbor administrator, or (Harbor 2.12+) a system robot with the robot create/list/delete permissions and pull/push on the projects"
        )),
        _ => ProviderError::Upstream { operation, detail },
    }
}

/// `code: message; code: message` from a Harbor error body, or the redacted raw text.
fn summarise_error_body(body: &[u8], secrets: &[&str]) -> String {
    let items: Vec<String> = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) if !parsed.errors.is_empty() => parsed
            .errors
            .iter()
            .map(|item| {
                let code = match &item.code {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "?".into(),
                };
                format!("{code}: {}", item.message.as_deref().unwrap_or(""))
            })
            .collect(),
        _ => {
            let text = String::from_utf8_lossy(body);
            return format!("unrecognised body {:?}", redact_for_log(&text, secrets));
        }
    };
    redact_for_log(&items.join("; "), secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_summarised_and_redacted() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad password hunter2"}]}"#;
        assert_eq!(
            summarise_error_body(body, &["hunter2"]),
            "UNAUTHORIZED: bad password [REDACTED]"
        );
        let s = summarise_error_body(b"<html>hunter2</html>", &["hunter2"]);
        assert!(s.starts_with("unrecognised body"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn statuses_map_to_operator_or_upstream() {
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let e = status_error(CREATE_OPERATION, status, b"{}", &[]);
            assert!(matches!(e, ProviderError::Misconfigured(_)), "{e:?}");
        }
        let e = status_error(CREATE_OPERATION, StatusCode::BAD_GATEWAY, b"", &[]);
        assert!(
            matches!(e, ProviderError::Upstream { operation, .. } if operation == CREATE_OPERATION),
            "{e:?}"
        );
    }

    #[test]
    fn create_body_is_the_documented_shape() {
        let body = CreateRobot {
            name: "rise-1-abc",
            description: "d",
            level: "system",
            disable: false,
            duration: 1,
            permissions: vec![RobotPermission {
                kind: "project",
                namespace: "team",
                access: vec![Access {
                    resource: "repository",
                    action: "pull",
                }],
            }],
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serialises"),
            serde_json::json!({
                "name": "rise-1-abc", "description": "d", "level": "system", "disable": false,
                "duration": 1,
                "permissions": [{"kind": "project", "namespace": "team",
                                 "access": [{"resource": "repository", "action": "pull"}]}]
            })
        );
    }
}
