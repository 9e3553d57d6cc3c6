//! Editing the auth files container tools read: Docker's `config.json` and the containers
//! `auth.json` (podman, buildah, skopeo). Both have the same shape; only the entries for one
//! registry are changed, everything else is kept, and the file is replaced atomically with mode
//! 0600.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::context::{Context, vars};
use crate::error::CliError;
use crate::fsutil;
use crate::registries::{DOCKER_HUB, DOCKER_HUB_INDEX, canonical_host};

/// The helper's name as the files name it (`docker-credential-<name>` on PATH).
pub const HELPER_NAME: &str = "rise";

/// Which tool family's file to edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFile {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    Docker,
    /// `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`, else (Linux)
    /// `/run/containers/<uid>/auth.json`.
    Containers,
}

impl AuthFile {
    /// The key this file's tools look a registry host up under: Docker files Docker Hub as
    /// `https://index.docker.io/v1/`; the containers tools as `docker.io`.
    pub fn registry_key(self, host: &str) -> String {
        let host = canonical_host(host);
        match self {
            AuthFile::Docker if host == DOCKER_HUB => DOCKER_HUB_INDEX.to_owned(),
            _ => host.to_owned(),
        }
    }

    pub fn path(self, ctx: &Context) -> Result<PathBuf, CliError> {
        match self {
            AuthFile::Docker => {
                if let Some(dir) = ctx.var(vars::DOCKER_CONFIG) {
                    return Ok(PathBuf::from(dir).join("config.json"));
                }
                let home = ctx
                    .var(vars::HOME)
                    .map(PathBuf::from)
                    .or_else(dirs::home_dir)
                    .ok_or_else(|| {
                        CliError::Input(
                            "cannot find Docker's configuration: set DOCKER_CONFIG or HOME".into(),
                        )
                    })?;
                Ok(home.join(".docker").join("config.json"))
            }
            AuthFile::Containers => {
                if let Some(file) = ctx.var(vars::REGISTRY_AUTH_FILE) {
                    return Ok(PathBuf::from(file));
                }
                if let Some(runtime) = ctx.var(vars::XDG_RUNTIME_DIR) {
                    return Ok(PathBuf::from(runtime).join("containers").join("auth.json"));
                }
                // Without XDG_RUNTIME_DIR (root's shell, `sudo`, a CI container) podman, skopeo
                // and buildah use /run/containers/<uid>/auth.json.
                per_uid_default().ok_or_else(|| {
                    CliError::Input(
                        "cannot find the containers auth file: set REGISTRY_AUTH_FILE or XDG_RUNTIME_DIR".into(),
                    )
                })
            }
        }
    }
}

/// `/run/containers/<uid>/auth.json`: the containers tools' file when `XDG_RUNTIME_DIR` is unset.
#[cfg(target_os = "linux")]
fn per_uid_default() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    Some(PathBuf::from(format!("/run/containers/{uid}/auth.json")))
}

#[cfg(not(target_os = "linux"))]
fn per_uid_default() -> Option<PathBuf> {
    None
}

/// Make the credential helper answer for `host`: `credHelpers[host] = "rise"`. A password
/// stored for the same host under `auths` is removed (the helper supersedes it, and a stale
/// secret should not linger). Returns notes for the user.
pub fn register_helper(path: &std::path::Path, host: &str) -> Result<Vec<String>, CliError> {
    let mut root = load(path)?;
    let mut notes = Vec::new();
    object_entry(&mut root, path, "credHelpers")?
        .insert(host.to_owned(), Value::String(HELPER_NAME.to_owned()));
    if let Some(Value::Object(auths)) = root.get_mut("auths")
        && auths.remove(host).is_some()
    {
        notes.push(format!(
            "removed the password stored for {host} in {}: the helper now supplies fresh credentials",
            path.display()
        ));
    }
    save(path, root)?;
    Ok(notes)
}

/// Store a short-lived credential under `auths[key]` (`key` is a host or `host/repository`).
/// Removes a `credHelpers` entry for the same host, which would otherwise take precedence.
pub fn store_password(
    path: &std::path::Path,
    key: &str,
    host: &str,
    username: &str,
    password: &SecretString,
) -> Result<Vec<String>, CliError> {
    let mut root = load(path)?;
    let mut notes = Vec::new();
    if let Some(Value::Object(helpers)) = root.get_mut("credHelpers")
        && helpers.remove(host).is_some()
    {
        notes.push(format!(
            "removed the credential helper entry for {host} in {}, which would hide the stored password",
            path.display()
        ));
    }
    if let Some(store) = root.get("credsStore").and_then(Value::as_str) {
        notes.push(format!(
            "{} sets credsStore = {store:?}, which Docker asks before `auths`: run without --store-password to use the Rise helper instead",
            path.display()
        ));
    }
    // Exposed only to be written into the user's 0600 auth file, as they asked.
    let auth = STANDARD.encode(format!("{username}:{}", password.expose_secret()));
    let auths = object_entry(&mut root, path, "auths")?;
    let entry = auths
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(e) = entry {
        e.remove("identitytoken");
        e.remove("registrytoken");
        e.insert("auth".to_owned(), Value::String(auth));
    }
    save(path, root)?;
    Ok(notes)
}

fn load(path: &std::path::Path) -> Result<Map<String, Value>, CliError> {
    let Some(bytes) = fsutil::read_optional(path)? else {
        return Ok(Map::new());
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CliError::Input(format!(
            "{} is not a JSON object; fix or move it, then run this again (nothing was changed)",
            path.display()
        ))),
    }
}

fn object_entry<'a>(
    root: &'a mut Map<String, Value>,
    path: &std::path::Path,
    key: &str,
) -> Result<&'a mut Map<String, Value>, CliError> {
    match root
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(m) => Ok(m),
        _ => Err(CliError::Input(format!(
            "\"{key}\" in {} is not a JSON object; fix it, then run this again (nothing was changed)",
            path.display()
        ))),
    }
}

fn save(path: &std::path::Path, root: Map<String, Value>) -> Result<(), CliError> {
    fsutil::write_json_private(path, &Value::Object(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containers_file_is_found_as_podman_and_skopeo_find_it() {
        let ctx = |vars: &[(&str, &str)]| {
            Context::from_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
        let path = |vars: &[(&str, &str)]| AuthFile::Containers.path(&ctx(vars)).expect("path");
        assert_eq!(
            path(&[
                ("REGISTRY_AUTH_FILE", "/a.json"),
                ("XDG_RUNTIME_DIR", "/run/user/7")
            ]),
            PathBuf::from("/a.json")
        );
        assert_eq!(
            path(&[("XDG_RUNTIME_DIR", "/run/user/7")]),
            PathBuf::from("/run/user/7/containers/auth.json")
        );
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt as _;
            let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
            assert_eq!(
                path(&[]),
                PathBuf::from(format!("/run/containers/{uid}/auth.json"))
            );
        }
    }

    #[test]
    fn helper_registration_keeps_other_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"other.io":{"auth":"eDp5"},"reg:5000":{"auth":"b2xkOnB3"}},"credHelpers":{"gcr.io":"gcloud"},"psFormat":"table {{.ID}}","experimental":"enabled"}"#,
        )
        .expect("seed");
        let notes = register_helper(&path, "reg:5000").expect("register");
        assert_eq!(notes.len(), 1, "{notes:?}");
        let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(v["credHelpers"]["reg:5000"], "rise");
        assert_eq!(v["credHelpers"]["gcr.io"], "gcloud");
        assert_eq!(v["auths"]["other.io"]["auth"], "eDp5");
        assert!(v["auths"].get("reg:5000").is_none());
        assert_eq!(v["psFormat"], "table {{.ID}}");
        assert_eq!(v["experimental"], "enabled");
    }

    #[test]
    fn storing_a_password_removes_the_shadowing_helper_and_warns_about_creds_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("auth.json");
        std::fs::write(&path, r#"{"credHelpers":{"reg:5000":"rise"},"credsStore":"desktop","auths":{"reg:5000/my-app":{"identitytoken":"x"}}}"#)
            .expect("seed");
        let notes = store_password(
            &path,
            "reg:5000/my-app",
            "reg:5000",
            "u",
            &"p".to_owned().into(),
        )
        .expect("store");
        assert_eq!(notes.len(), 2, "{notes:?}");
        let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            v["auths"]["reg:5000/my-app"],
            serde_json::json!({"auth": "dTpw"})
        );
        assert!(v["credHelpers"].get("reg:5000").is_none());
        assert_eq!(v["credsStore"], "desktop");
    }

    #[test]
    fn a_file_that_is_not_an_object_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, "[1,2]").expect("seed");
        let err = register_helper(&path, "h")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[1,2]");
        let missing = dir.path().join("new/config.json");
        register_helper(&missing, "h").expect("created");
    }

    #[test]
    fn docker_hub_keys_are_what_each_tool_looks_up() {
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                AuthFile::Docker.registry_key(host),
                "https://index.docker.io/v1/"
            );
            assert_eq!(AuthFile::Containers.registry_key(host), "docker.io");
        }
        assert_eq!(AuthFile::Docker.registry_key("reg:5000"), "reg:5000");
        assert_eq!(AuthFile::Containers.registry_key("reg:5000"), "reg:5000");
    }
}
