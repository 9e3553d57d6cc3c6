//! The Docker credential-helper protocol, spoken by `docker-credential-rise`.
//!
//! `get` reads a server URL on stdin and prints `{"ServerURL","Username","Secret"}`: brokered
//! credentials for the project that `rise registry login` mapped to that registry, from the cache
//! while they stay valid for longer than the margin, else fresh from the backend. `store` accepts
//! and ignores what `docker login` hands it (Rise brokers credentials itself; a `docker login`
//! must not fail); `erase` forgets cached credentials for the host; `list` names the hosts with
//! cached credentials. The cache is an optimisation: when it cannot be read or written, `get`
//! says so on stderr and still answers. `version` needs no configuration directory.
//!
//! Architecture invariant: `get` hands out a credential only for the registry Docker asked about.
//! When the backend names another registry for the project (it moved), the helper answers with
//! an error and caches nothing, so the old host never receives a credential for the new one.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::backend::{Backend, CredentialQuery, printable};
use crate::cache::{self, DEFAULT_MARGIN, Scope};
use crate::context::{Context, parse_duration, vars};
use crate::error::CliError;
use crate::registries::{Lookup, Mapping, RegistryMap, same_host, split_server_url};
use crate::session;

/// The message Docker's helper client recognises as "no credentials here" (not an error).
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// What the helper prints and its exit status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
}

#[derive(Serialize)]
struct Credentials<'a> {
    #[serde(rename = "ServerURL")]
    server_url: &'a str,
    #[serde(rename = "Username")]
    username: &'a str,
    #[serde(rename = "Secret")]
    secret: &'a str,
}

/// Run one helper action with its stdin.
pub async fn handle(ctx: &Context, action: &str, input: &str) -> Outcome {
    match action {
        "get" => match get(ctx, input.trim()).await {
            Ok(Some((out, warnings))) => Outcome {
                stdout: out,
                stderr: warnings,
                status: 0,
            },
            Ok(None) => Outcome {
                stdout: format!("{NOT_FOUND}\n"),
                status: 1,
                ..Outcome::default()
            },
            // Docker and containers/image show the helper's stdout when it fails.
            Err(e) => Outcome {
                stdout: format!("docker-credential-rise: {e}\n"),
                status: 1,
                ..Outcome::default()
            },
        },
        "store" => Outcome {
            stderr: "docker-credential-rise: not storing: Rise fetches fresh credentials on every use\n".into(),
            ..Outcome::default()
        },
        "erase" => {
            let (host, _) = split_server_url(input.trim());
            match cache::forget(ctx, Some(host), None) {
                Ok(_) => Outcome::default(),
                Err(e) => Outcome {
                    stdout: format!("docker-credential-rise: {e}\n"),
                    status: 1,
                    ..Outcome::default()
                },
            }
        }
        "list" => match list(ctx) {
            Ok(out) => Outcome {
                stdout: out,
                ..Outcome::default()
            },
            Err(e) => Outcome {
                stdout: format!("docker-credential-rise: {e}\n"),
                status: 1,
                ..Outcome::default()
            },
        },
        "version" | "--version" | "-v" => Outcome {
            stdout: format!("docker-credential-rise {}\n", env!("CARGO_PKG_VERSION")),
            ..Outcome::default()
        },
        _ => Outcome {
            stdout: "Usage: docker-credential-rise <get|store|erase|list|version>\n\
                     A Docker credential helper that fetches short-lived registry credentials from Rise.\n\
                     Set it up with `rise registry login --project NAME`.\n"
                .into(),
            status: 1,
            ..Outcome::default()
        },
    }
}

async fn get(ctx: &Context, server_url: &str) -> Result<Option<(String, String)>, CliError> {
    let map = RegistryMap::load(ctx)?;
    let mut warnings = String::new();
    let mapping = match map.lookup(server_url) {
        Lookup::None => return Ok(None),
        Lookup::One(m) => m,
        Lookup::Ambiguous(m, others) => {
            let names: Vec<&str> = others.iter().map(|o| o.project.as_str()).collect();
            warnings.push_str(&format!(
                "docker-credential-rise: {server_url} is shared by projects {} and {}; using {} (registered last); run `rise registry login --project NAME` to switch\n",
                m.project,
                names.join(", "),
                m.project
            ));
            m
        }
    };
    let margin = margin(ctx, mapping)?;
    let (host, _) = split_server_url(server_url);
    let (grant, cache_problems) = credentials_for(ctx, mapping, host, margin).await?;
    for problem in cache_problems {
        warnings.push_str(&format!("docker-credential-rise: warning: {problem}\n"));
    }
    let body = Credentials {
        server_url,
        username: &grant.username,
        // Exposed to the container tool that asked for it, on the helper's stdout.
        secret: grant.password.expose_secret(),
    };
    let out = serde_json::to_string(&body)
        .map_err(|e| CliError::Other(format!("cannot encode credentials: {e}")))?;
    Ok(Some((out + "\n", warnings)))
}

/// Cached credentials for the mapping's project on `registry` while they outlive `margin`, else
/// fresh ones; and what went wrong with the cache, if anything (for a warning: the credential is
/// good). A grant the backend issued for another registry is an error, and is not cached.
pub async fn credentials_for(
    ctx: &Context,
    mapping: &Mapping,
    registry: &str,
    margin: Duration,
) -> Result<(crate::backend::Grant, Vec<String>), CliError> {
    let http = ctx.http()?;
    let backend = Backend::new(&mapping.backend, http.clone(), ctx.transport())?;
    let caller = session::caller_token(ctx, &http, backend.url()).await?;
    let actions = mapping.actions.clone().unwrap_or_default();
    let scope = Scope {
        backend: backend.url(),
        registry,
        caller: &caller.token,
        project: &mapping.project,
        actions: &actions,
    };
    let mut problems = Vec::new();
    match cache::get(ctx, &scope, margin) {
        Ok(Some(grant)) => return Ok((grant, problems)),
        Ok(None) => {}
        Err(e) => problems.push(format!("cannot read the credential cache ({e})")),
    }
    let query = CredentialQuery {
        project: mapping.project.clone(),
        actions: mapping.actions.clone(),
        ttl: None,
    };
    let response = backend.credentials(&caller.token, &query).await?;
    if !same_host(split_server_url(&response.grant.registry_url).0, registry) {
        // Whatever is cached for this scope predates the move: it must not be used either.
        let _ = cache::remove(ctx, &scope);
        return Err(CliError::Input(format!(
            "project {} now lives on the registry {}, not {registry}: run `rise registry login --project {}` to use it there",
            mapping.project,
            printable(&response.grant.registry_url, 200),
            mapping.project
        )));
    }
    if let Err(e) = cache::put(ctx, &scope, &response.grant) {
        problems.push(format!(
            "cannot cache the credential ({e}); a fresh one is fetched on every use until this is fixed"
        ));
    }
    Ok((response.grant, problems))
}

/// `RISE_CREDENTIAL_MARGIN`, else the mapping's margin, else [`DEFAULT_MARGIN`].
pub fn margin(ctx: &Context, mapping: &Mapping) -> Result<Duration, CliError> {
    if let Some(v) = ctx.var(vars::CREDENTIAL_MARGIN) {
        return parse_duration(v)
            .map_err(|m| CliError::Input(format!("{}: {m}", vars::CREDENTIAL_MARGIN)));
    }
    Ok(mapping
        .margin_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_MARGIN))
}

fn list(ctx: &Context) -> Result<String, CliError> {
    let map = RegistryMap::load(ctx)?;
    let cached = cache::usernames(ctx)?;
    let listed: BTreeMap<String, String> = map
        .registries
        .iter()
        .map(|m| {
            let user = cached.get(&m.host).cloned().unwrap_or_default();
            (m.host.clone(), user)
        })
        .collect();
    serde_json::to_string(&listed)
        .map(|s| s + "\n")
        .map_err(|e| CliError::Other(format!("cannot encode the list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{FakeServer, credentials_body, route};

    fn ctx(dir: &std::path::Path) -> Context {
        ctx_with(dir, &[])
    }

    fn ctx_with(dir: &std::path::Path, extra: &[(&str, &str)]) -> Context {
        let mut vars = vec![
            (
                "RISE_CONFIG_DIR".to_owned(),
                dir.join("c").display().to_string(),
            ),
            (
                "RISE_CACHE_DIR".to_owned(),
                dir.join("k").display().to_string(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Context::from_env(vars)
    }

    /// Map 127.0.0.1:5000 to project my-app on `backend`.
    fn map_registry(c: &Context, backend: &str) {
        RegistryMap::register(
            c,
            Mapping {
                host: "127.0.0.1:5000".into(),
                repository: "my-app".into(),
                project: "my-app".into(),
                backend: backend.into(),
                actions: None,
                margin_secs: None,
            },
        )
        .expect("register");
    }

    #[tokio::test]
    async fn unknown_hosts_are_not_found_and_store_never_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path());
        let out = handle(&c, "get", "unknown.example.com\n").await;
        assert_eq!(out.stdout.trim(), NOT_FOUND);
        assert_eq!(out.status, 1);
        let out = handle(
            &c,
            "store",
            r#"{"ServerURL":"x","Username":"u","Secret":"s"}"#,
        )
        .await;
        assert_eq!(out.status, 0);
        assert_eq!(handle(&c, "store", "garbage").await.status, 0);
        assert_eq!(handle(&c, "erase", "x").await.status, 0);
        assert_eq!(handle(&c, "list", "").await.stdout, "{}\n");
        assert_eq!(handle(&c, "bogus", "").await.status, 1);
    }

    #[tokio::test]
    async fn mapped_host_without_login_says_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ctx(dir.path());
        RegistryMap::register(
            &c,
            Mapping {
                host: "127.0.0.1:5000".into(),
                repository: "my-app".into(),
                project: "my-app".into(),
                backend: "http://127.0.0.1:9".into(),
                actions: None,
                margin_secs: None,
            },
        )
        .expect("register");
        let out = handle(&c, "get", "127.0.0.1:5000").await;
        assert_eq!(out.status, 1);
        assert!(
            out.stdout
                .contains("rise login --backend http://127.0.0.1:9"),
            "{}",
            out.stdout
        );
    }

    #[tokio::test]
    async fn version_needs_no_configuration_directory() {
        let c = Context::with_platform_dirs([], None, None);
        let out = handle(&c, "version", "").await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(out.stdout.starts_with("docker-credential-rise "), "{out:?}");
        let out = handle(&c, "get", "127.0.0.1:5000").await;
        assert_eq!(out.status, 1);
        assert!(
            out.stdout.contains("set RISE_CONFIG_DIR or HOME"),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn an_unwritable_cache_is_a_warning_and_the_credential_is_still_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("127.0.0.1:5000", 3600),
        )]);
        // A cache directory under a file cannot be created.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").expect("write");
        let cache = blocker.join("x").display().to_string();
        let c = ctx_with(
            dir.path(),
            &[("RISE_TOKEN", "t"), ("RISE_CACHE_DIR", &cache)],
        );
        map_registry(&c, &server.url);
        let out = handle(&c, "get", "127.0.0.1:5000\n").await;
        assert_eq!(out.status, 0, "{out:?}");
        let creds: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(creds["Secret"], "s3cret-password");
        assert!(
            out.stderr
                .starts_with("docker-credential-rise: warning: cannot cache the credential"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("s3cret-password"), "{}", out.stderr);
    }

    #[tokio::test]
    async fn a_credential_for_the_registry_the_project_moved_to_is_not_handed_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("registry.new.example", 3600),
        )]);
        let c = ctx_with(dir.path(), &[("RISE_TOKEN", "t")]);
        map_registry(&c, &server.url);
        for _ in 0..2 {
            let out = handle(&c, "get", "127.0.0.1:5000").await;
            assert_eq!(out.status, 1, "{out:?}");
            assert_eq!(
                out.stdout,
                "docker-credential-rise: project my-app now lives on the registry registry.new.example, not 127.0.0.1:5000: run `rise registry login --project my-app` to use it there\n"
            );
            assert!(!out.stderr.contains("s3cret-password"), "{out:?}");
        }
        // Asked both times: nothing was cached for the old host.
        assert_eq!(server.requests().len(), 2, "{:?}", server.requests());
        assert!(cache::usernames(&c).expect("list").is_empty());
    }

    #[tokio::test]
    async fn a_cached_credential_goes_only_to_the_token_it_was_issued_to() {
        use base64::Engine;
        let jwt = |claims: &str| {
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            format!("eyJhbGciOiJub25lIn0.{payload}.sig")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("127.0.0.1:5000", 3600),
        )]);
        let issued = jwt(r#"{"iss":"https://idp","sub":"alice","exp":99999999999}"#);
        let forged = jwt(r#"{"iss":"https://idp","sub":"alice"}"#);
        // The same token twice: the second answer is cached. Any other token, whatever its
        // claims say, is checked (and audited) by the backend.
        for (token, asked) in [(&issued, 1), (&issued, 1), (&forged, 2)] {
            let c = ctx_with(dir.path(), &[("RISE_TOKEN", token)]);
            map_registry(&c, &server.url);
            let out = handle(&c, "get", "127.0.0.1:5000").await;
            assert_eq!(out.status, 0, "{out:?}");
            assert_eq!(server.requests().len(), asked, "{token}");
        }
    }

    #[tokio::test]
    async fn an_unbelievable_expiry_follows_the_error_protocol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = FakeServer::start(vec![route(
            "GET /registry/credentials",
            200,
            &credentials_body("127.0.0.1:5000", u64::MAX),
        )]);
        let c = ctx_with(dir.path(), &[("RISE_TOKEN", "t")]);
        map_registry(&c, &server.url);
        let out = handle(&c, "get", "127.0.0.1:5000").await;
        assert_eq!(out.status, 1, "{out:?}");
        assert!(
            out.stdout
                .starts_with("docker-credential-rise: the Rise backend at "),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("sent an invalid expiry"),
            "{}",
            out.stdout
        );
        assert!(!out.stdout.contains("s3cret-password"), "{}", out.stdout);
    }
}
