//! Which Rise project a registry belongs to (`<config>/registries.json`), written by
//! `rise registry login` and read by the credential helper, which is only told a server URL.
//!
//! Several projects may share a registry host (ECR accounts, Artifactory). Clients that name a
//! path (`host/docker-local/my-app`) get the project whose repository matches longest; clients that
//! name only the host (skopeo, `docker push`) get the project registered last for that host.
//!
//! Docker Hub has several names: images say `docker.io`, the registry answers at
//! `registry-1.docker.io`, and Docker files it (and asks the helper for it) as
//! `https://index.docker.io/v1/`. All are one host here, stored as `docker.io`.

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::error::CliError;
use crate::fsutil;

/// Docker Hub's host as Rise stores it (the registry part of its image references).
pub const DOCKER_HUB: &str = "docker.io";
/// Where the Docker CLI files Docker Hub in `config.json` (`auths` and `credHelpers` keys) and
/// the server URL it hands a credential helper.
pub const DOCKER_HUB_INDEX: &str = "https://index.docker.io/v1/";

/// `docker.io`, `index.docker.io` and `registry-1.docker.io` (any case) are [`DOCKER_HUB`];
/// other hosts are returned as they are.
pub fn canonical_host(host: &str) -> &str {
    const ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    if ALIASES.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        DOCKER_HUB
    } else {
        host
    }
}

/// Whether two registry hosts name the same registry.
pub fn same_host(a: &str, b: &str) -> bool {
    canonical_host(a).eq_ignore_ascii_case(canonical_host(b))
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryMap {
    /// Most recently registered first.
    #[serde(default)]
    pub registries: Vec<Mapping>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Registry host and port, as clients name it: `registry.example.com`, `127.0.0.1:5000`.
    pub host: String,
    /// The project's repository path in that registry.
    #[serde(default)]
    pub repository: String,
    pub project: String,
    pub backend: String,
    /// Actions to ask for (`push,pull`); the backend's default (all allowed) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<String>,
    /// Seconds before expiry at which cached credentials are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_secs: Option<u64>,
}

/// The result of looking a server URL up.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    None,
    One(&'a Mapping),
    /// Several projects share the host and the URL does not say which: the most recently
    /// registered is used; the others are named in a warning.
    Ambiguous(&'a Mapping, Vec<&'a Mapping>),
}

impl RegistryMap {
    pub fn load(ctx: &Context) -> Result<Self, CliError> {
        fsutil::read_json_or_default(&ctx.registries_file()?)
    }

    /// Add or replace mapping `m` in `registries.json` (see [`Self::upsert`]), under its lock
    /// and re-reading the file under it, so that registrations running side by side all stay.
    pub fn register(ctx: &Context, m: Mapping) -> Result<(), CliError> {
        let path = ctx.registries_file()?;
        let _lock = fsutil::lock_file(&ctx.registries_lock_file()?)?;
        let mut map: Self = fsutil::read_json_or_default(&path)?;
        map.upsert(m);
        fsutil::write_json_private(&path, &map)
    }

    /// Add or replace the mapping for its host and repository, making it the most recent.
    pub fn upsert(&mut self, m: Mapping) {
        self.registries
            .retain(|x| !(same_host(&x.host, &m.host) && x.repository == m.repository));
        self.registries.insert(0, m);
    }

    pub fn lookup(&self, server_url: &str) -> Lookup<'_> {
        let (host, path) = split_server_url(server_url);
        let on_host: Vec<&Mapping> = self
            .registries
            .iter()
            .filter(|m| same_host(&m.host, host))
            .collect();
        if on_host.is_empty() {
            return Lookup::None;
        }
        if !path.is_empty() {
            // The repository that is the longest prefix of the path wins.
            let best = on_host
                .iter()
                .filter(|m| is_path_prefix(&m.repository, path))
                .max_by_key(|m| m.repository.len());
            if let Some(m) = best {
                return Lookup::One(m);
            }
            // A namespace above the repositories (`host/docker-local`): those under it.
            let under: Vec<&Mapping> = on_host
                .iter()
                .copied()
                .filter(|m| is_path_prefix(path, &m.repository))
                .collect();
            return pick(under);
        }
        pick(on_host)
    }
}

fn pick(candidates: Vec<&Mapping>) -> Lookup<'_> {
    match candidates.split_first() {
        None => Lookup::None,
        Some((first, [])) => Lookup::One(first),
        Some((first, rest)) => Lookup::Ambiguous(first, rest.to_vec()),
    }
}

/// `prefix` is `path` or a whole-component prefix of it; the empty prefix matches everything.
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// `https://host:5000/v2/ns/repo/` -> (`host:5000`, `ns/repo`). Docker sends `https://host` or
/// `host`, skopeo a bare `host:port`; some tools add `/v1/` or `/v2/`.
pub fn split_server_url(url: &str) -> (&str, &str) {
    let rest = url.trim();
    let rest = rest
        .strip_prefix("https://")
        .or_else(|| rest.strip_prefix("http://"))
        .unwrap_or(rest);
    let rest = rest.trim_end_matches('/');
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path
        .strip_prefix("v2")
        .or_else(|| path.strip_prefix("v1"))
        .filter(|p| p.is_empty() || p.starts_with('/'))
        .unwrap_or(path)
        .trim_matches('/');
    (host, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: &str, repository: &str, project: &str) -> Mapping {
        Mapping {
            host: host.into(),
            repository: repository.into(),
            project: project.into(),
            backend: "http://b".into(),
            actions: None,
            margin_secs: None,
        }
    }

    fn check(map: &RegistryMap, url: &str, expect: Option<&str>, ambiguous: bool) {
        let got = map.lookup(url);
        let (project, amb) = match &got {
            Lookup::None => (None, false),
            Lookup::One(m) => (Some(m.project.as_str()), false),
            Lookup::Ambiguous(m, _) => (Some(m.project.as_str()), true),
        };
        assert_eq!((project, amb), (expect, ambiguous), "{url}: {got:?}");
    }

    #[test]
    fn server_urls() {
        assert_eq!(split_server_url("127.0.0.1:5000"), ("127.0.0.1:5000", ""));
        assert_eq!(split_server_url("https://h/v2/"), ("h", ""));
        assert_eq!(split_server_url("https://h/v1/"), ("h", ""));
        assert_eq!(
            split_server_url("h/docker-local/app"),
            ("h", "docker-local/app")
        );
        assert_eq!(split_server_url("h/v2x/app"), ("h", "v2x/app"));
        assert_eq!(split_server_url(" http://h:1/ \n"), ("h:1", ""));
    }

    #[test]
    fn lookups() {
        let mut map = RegistryMap::default();
        map.upsert(m("reg:5000", "my-app", "my-app"));
        check(&map, "reg:5000", Some("my-app"), false);
        check(&map, "https://REG:5000", Some("my-app"), false);
        check(&map, "other:5000", None, false);

        map.upsert(m("jfrog.io", "docker-local/a", "a"));
        map.upsert(m("jfrog.io", "docker-local/b", "b"));
        check(&map, "jfrog.io/docker-local/a", Some("a"), false);
        check(&map, "jfrog.io/docker-local/a/sub", Some("a"), false);
        check(&map, "jfrog.io/docker-local/ab", None, false);
        check(&map, "jfrog.io/docker-local", Some("b"), true);
        check(&map, "jfrog.io", Some("b"), true);

        // Re-registering moves a mapping to the front and does not duplicate it.
        map.upsert(m("jfrog.io", "docker-local/a", "a"));
        check(&map, "jfrog.io", Some("a"), true);
        assert_eq!(map.registries.len(), 3);
    }

    #[test]
    fn docker_hub_is_found_under_each_of_its_names() {
        let mut map = RegistryMap::default();
        map.upsert(m("docker.io", "my-org/app", "hub"));
        for url in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
            "https://registry-1.docker.io/v2/",
            "docker.io/my-org/app",
        ] {
            check(&map, url, Some("hub"), false);
        }
        check(&map, "other.docker.io", None, false);
        // Registering under another name of Docker Hub replaces the entry.
        map.upsert(m("index.docker.io", "my-org/app", "hub2"));
        assert_eq!(map.registries.len(), 1);
        assert_eq!(canonical_host("Registry-1.Docker.IO"), DOCKER_HUB);
        assert_eq!(canonical_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn registrations_side_by_side_all_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::from_env([(
            "RISE_CONFIG_DIR".to_owned(),
            dir.path().display().to_string(),
        )]);
        std::thread::scope(|threads| {
            for i in 0..16 {
                let ctx = &ctx;
                threads.spawn(move || {
                    RegistryMap::register(ctx, m("reg", &format!("app{i}"), &format!("app{i}")))
                        .expect("register");
                });
            }
        });
        let map = RegistryMap::load(&ctx).expect("load");
        for i in 0..16 {
            check(
                &map,
                &format!("reg/app{i}"),
                Some(&format!("app{i}")),
                false,
            );
        }
    }
}
