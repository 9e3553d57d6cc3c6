//! Editing the auth files container tools read: Docker's `config.json` and the containers
//! `auth.json` (podman, buildah, skopeo). Both have the same shape; only the entries for one
//! registry are changed, everything else is kept, and the file is replaced atomically with mode
//! 0600. Several files are edited together ([`Edits`]): all of them change, or none does.

use std::fs::Permissions;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
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

/// Changes to one or more auth files, made in memory first: every file is read and every change
/// checked before [`Edits::write`] writes any, so one file that cannot be edited (not a JSON
/// object, a field of the wrong type) leaves all of them as they were.
#[derive(Default)]
pub struct Edits {
    files: Vec<Edit>,
}

/// One file's new content, and what to put back if a later file cannot be written.
struct Edit {
    /// As the user named it, for messages.
    path: PathBuf,
    /// The file itself ([`resolve`]): every read and write goes here, and two names for one
    /// file make one edit.
    target: PathBuf,
    /// Its bytes and permissions before, `None` when it did not exist. Other registries'
    /// passwords may be in it.
    before: Option<(SecretSlice<u8>, Option<Permissions>)>,
    /// The directories writing it created, outermost first: putting it back removes them.
    made_dirs: Vec<PathBuf>,
    root: Map<String, Value>,
}

impl Edits {
    /// Make the credential helper answer for `host`: `credHelpers[host] = "rise"`. A password
    /// stored for the same host under `auths` is removed (the helper supersedes it, and a stale
    /// secret should not linger). Returns notes for the user.
    pub fn register_helper(&mut self, path: &Path, host: &str) -> Result<Vec<String>, CliError> {
        let root = self.open(path)?;
        let mut notes = Vec::new();
        object_entry(root, path, "credHelpers")?
            .insert(host.to_owned(), Value::String(HELPER_NAME.to_owned()));
        if let Some(Value::Object(auths)) = root.get_mut("auths")
            && auths.remove(host).is_some()
        {
            notes.push(format!(
                "removed the password stored for {host} in {}: the helper now supplies fresh credentials",
                path.display()
            ));
        }
        Ok(notes)
    }

    /// Store a short-lived credential under `auths[key]` (`key` is a host or `host/repository`).
    /// Removes a `credHelpers` entry for the same host, which would otherwise take precedence.
    pub fn store_password(
        &mut self,
        path: &Path,
        key: &str,
        host: &str,
        username: &str,
        password: &SecretString,
    ) -> Result<Vec<String>, CliError> {
        let root = self.open(path)?;
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
        let auths = object_entry(root, path, "auths")?;
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
        Ok(notes)
    }

    /// Write every edited file, each atomically with mode 0600. When one cannot be written, the
    /// ones already written are put back as they were, so either all of them change or none.
    pub fn write(mut self) -> Result<(), CliError> {
        let contents = self
            .files
            .iter()
            .map(|edit| fsutil::json_bytes(&edit.path, &edit.root).map(SecretSlice::from))
            .collect::<Result<Vec<_>, _>>()?;
        for (written, bytes) in contents.iter().enumerate() {
            let edit = &mut self.files[written];
            let dir = edit.target.parent().unwrap_or(Path::new("."));
            let result = fsutil::create_private_dir_noting(dir, &mut edit.made_dirs)
                .and_then(|()| fsutil::write_private(&edit.target, bytes.expose_secret()));
            if let Err(e) = result {
                let failed = undo(&self.files[..written], e);
                // The failed write may have created some of its directories before it stopped.
                self.files[written].remove_made_dirs();
                return Err(failed);
            }
        }
        Ok(())
    }

    /// The content of `path` to edit: the edit already made to the same file, else the file as
    /// it is now.
    fn open(&mut self, path: &Path) -> Result<&mut Map<String, Value>, CliError> {
        let target = resolve(path);
        let index = match self.files.iter().position(|e| e.target == target) {
            Some(i) => i,
            None => {
                let before = fsutil::read_optional(&target).map_err(|e| {
                    CliError::Input(format!(
                        "{e}; fix that, then run this again (nothing was changed)"
                    ))
                })?;
                let root = parse(path, before.as_deref())?;
                let permissions = std::fs::metadata(&target).ok().map(|m| m.permissions());
                self.files.push(Edit {
                    path: path.to_owned(),
                    target,
                    before: before.map(|b| (SecretSlice::from(b), permissions)),
                    made_dirs: Vec::new(),
                    root,
                });
                self.files.len() - 1
            }
        };
        Ok(&mut self.files[index].root)
    }
}

/// The file `path` leads to once its missing directories are made, so that two names for it make
/// one edit and every read and write reaches the same file: the longest part of `path` that
/// exists, canonical (symbolic links and `..` resolved by the file system), then the rest, with
/// `..` and `.` resolved by name (a directory not there yet is no symbolic link). Read as given,
/// `new/../config.json` would not be found while `new` is missing, and the existing
/// `config.json` then replaced with only Rise's entries.
fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        match std::env::current_dir() {
            Ok(dir) => dir.join(path),
            Err(_) => return path.to_owned(),
        }
    };
    let parts: Vec<Component> = absolute.components().collect();
    for existing in (1..=parts.len()).rev() {
        let Ok(mut resolved) = std::fs::canonicalize(parts[..existing].iter().collect::<PathBuf>())
        else {
            continue;
        };
        if existing < parts.len() && !resolved.is_dir() {
            // Through a file: no name below it resolves. Left as given, it fails as it would.
            return absolute;
        }
        for part in &parts[existing..] {
            match part {
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::Normal(name) => resolved.push(name),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return resolved;
    }
    absolute
}

impl Edit {
    /// Remove the directories writing this file created, innermost first, while they are empty:
    /// one that now holds something else stays, and so do those around it.
    fn remove_made_dirs(&self) {
        for dir in self.made_dirs.iter().rev() {
            if std::fs::remove_dir(dir).is_err() {
                return;
            }
        }
    }

    /// Put the file back as it was before [`Edits::write`]: its bytes and mode, or no file (and
    /// none of the directories made for it).
    fn restore(&self) -> Result<(), CliError> {
        match &self.before {
            Some((bytes, permissions)) => {
                fsutil::write_private(&self.target, bytes.expose_secret())?;
                if let Some(p) = permissions {
                    std::fs::set_permissions(&self.target, p.clone())
                        .map_err(|e| CliError::file("restore the mode of", &self.path, &e))?;
                }
                Ok(())
            }
            None => {
                std::fs::remove_file(&self.target)
                    .map_err(|e| CliError::file("remove", &self.path, &e))?;
                self.remove_made_dirs();
                Ok(())
            }
        }
    }
}

/// The error `failed` after the files in `written` are put back, saying whether they were.
fn undo(written: &[Edit], failed: CliError) -> CliError {
    if written.is_empty() {
        return failed;
    }
    let mut restored = Vec::new();
    let mut stuck = Vec::new();
    for edit in written.iter().rev() {
        let path = edit.path.display();
        match (edit.restore(), &edit.before) {
            (Ok(()), Some(_)) => restored.push(format!("{path} was put back as it was")),
            (Ok(()), None) => restored.push(format!("{path} was removed again")),
            (Err(e), _) => stuck.push(format!("{path} holds the new entries ({e})")),
        }
    }
    CliError::Input(if stuck.is_empty() {
        format!(
            "{failed}; {}, so nothing was changed: fix that, then run this again",
            restored.join(" and ")
        )
    } else {
        format!(
            "{failed}; and putting back what was already written failed: {}: fix both, then run this again",
            stuck.join("; ")
        )
    })
}

fn parse(path: &Path, bytes: Option<&[u8]>) -> Result<Map<String, Value>, CliError> {
    let Some(bytes) = bytes else {
        return Ok(Map::new());
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CliError::Input(format!(
            "{} is not a JSON object; fix or move it, then run this again (nothing was changed)",
            path.display()
        ))),
    }
}

fn object_entry<'a>(
    root: &'a mut Map<String, Value>,
    path: &Path,
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
        let mut edits = Edits::default();
        let notes = edits.register_helper(&path, "reg:5000").expect("register");
        edits.write().expect("write");
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
        let mut edits = Edits::default();
        let notes = edits
            .store_password(
                &path,
                "reg:5000/my-app",
                "reg:5000",
                "u",
                &"p".to_owned().into(),
            )
            .expect("store");
        edits.write().expect("write");
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
        let mut edits = Edits::default();
        let err = edits
            .register_helper(&path, "h")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[1,2]");
        let missing = dir.path().join("new/config.json");
        edits.register_helper(&missing, "h").expect("prepared");
        edits.write().expect("created");
        assert!(missing.is_file());
    }

    #[test]
    fn a_failed_write_puts_back_the_files_already_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = dir.path().join("docker/config.json");
        let seed = br#"{"auths":{"other.io":{"auth":"eDp5"}},"psFormat":"x"}"#;
        std::fs::create_dir(dir.path().join("docker")).expect("dir");
        std::fs::write(&existing, seed).expect("seed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640))
                .expect("chmod");
        }
        let absent = dir.path().join("new/deeper/auth.json");
        // Absent when read, and its directory cannot be made once `absent` is written (even
        // as root, whom permission bits would not stop).
        let unwritable = absent.join("auth.json");
        let password: SecretString = "s3cret-pw".to_owned().into();
        let mut edits = Edits::default();
        for path in [&existing, &absent, &unwritable] {
            edits
                .store_password(path, "reg:5000", "reg:5000", "u", &password)
                .expect("prepared");
        }
        let err = edits.write().expect_err("unwritable").to_string();
        assert_eq!(std::fs::read(&existing).expect("read"), seed);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&existing).expect("meta").permissions();
            assert_eq!(mode.mode() & 0o777, 0o640);
        }
        assert!(!absent.exists(), "{} was left behind", absent.display());
        let made = dir.path().join("new");
        assert!(
            !made.exists(),
            "the directory {} was left behind",
            made.display()
        );
        assert!(dir.path().is_dir(), "a directory that was there is gone");
        assert!(
            err.starts_with(&format!("cannot create directory {}", absent.display())),
            "{err}"
        );
        assert!(
            err.contains(&format!("{} was removed again", absent.display())),
            "{err}"
        );
        assert!(
            err.contains(&format!("{} was put back as it was", existing.display())),
            "{err}"
        );
        assert!(!err.contains("s3cret-pw"), "{err}");
        assert!(!err.contains(&STANDARD.encode("u:s3cret-pw")), "{err}");
    }

    #[test]
    fn directories_made_for_a_file_that_is_taken_back_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = dir.path().join("a/b/config.json");
        // Absent when read; once `file` is written, `file/auth.json` cannot be.
        let file = dir.path().join("file");
        let unwritable = file.join("auth.json");
        let mut edits = Edits::default();
        for path in [&made, &file, &unwritable] {
            edits.register_helper(path, "reg:5000").expect("prepared");
        }
        let err = edits.write().expect_err("unwritable").to_string();
        for path in [&made, &file] {
            assert!(
                err.contains(&format!("{} was removed again", path.display())),
                "{err}"
            );
        }
        assert!(!dir.path().join("a").exists(), "a/b was left behind");
        assert!(dir.path().is_dir(), "a directory that was there is gone");
    }

    #[test]
    fn a_path_back_out_of_a_directory_not_there_yet_edits_the_file_it_reaches() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("docker")).expect("dir");
        let real = dir.path().join("docker/config.json");
        std::fs::write(&real, br#"{"auths":{"other.io":{"auth":"eDp5"}}}"#).expect("seed");
        // What the OS reaches once `new` exists: docker/config.json, with its other entries.
        let named = dir.path().join("new/../docker/config.json");
        let mut edits = Edits::default();
        edits.register_helper(&named, "reg:5000").expect("prepared");
        edits.write().expect("written");
        let doc: Value =
            serde_json::from_slice(&std::fs::read(&real).expect("read")).expect("json");
        assert_eq!(doc["auths"]["other.io"]["auth"], "eDp5", "{doc}");
        assert_eq!(doc["credHelpers"]["reg:5000"], "rise", "{doc}");
        assert!(!dir.path().join("new").exists(), "a directory was made");
    }

    #[test]
    fn a_path_back_out_of_a_file_is_not_resolved_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("plain"), "x").expect("seed");
        // The OS refuses `plain/..` (not a directory); read by name it would be `config.json`.
        let named = dir.path().join("plain/../config.json");
        let mut edits = Edits::default();
        let err = edits
            .register_helper(&named, "reg:5000")
            .expect_err("a path through a file")
            .to_string();
        assert!(err.contains("nothing was changed"), "{err}");
        assert!(!dir.path().join("config.json").exists());
    }

    #[test]
    fn taking_a_file_back_removes_only_the_directories_this_write_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Empty and there before: it must stay.
        std::fs::create_dir(dir.path().join("docker")).expect("dir");
        let through = dir.path().join("new/../docker/config.json");
        let file = dir.path().join("file");
        let unwritable = file.join("auth.json");
        let mut edits = Edits::default();
        for path in [&through, &file, &unwritable] {
            edits.register_helper(path, "reg:5000").expect("prepared");
        }
        edits.write().expect_err("unwritable");
        assert!(
            dir.path().join("docker").is_dir(),
            "an existing directory was removed"
        );
        assert!(!dir.path().join("docker/config.json").exists());
        assert!(
            !dir.path().join("new").exists(),
            "a directory was left behind"
        );
    }

    #[test]
    fn two_names_for_one_file_make_one_edit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{}").expect("seed");
        #[cfg(unix)]
        let other = {
            let link = dir.path().join("auth.json");
            std::os::unix::fs::symlink(&path, &link).expect("symlink");
            link
        };
        #[cfg(not(unix))]
        let other = path.clone();
        let password: SecretString = "p".to_owned().into();
        let mut edits = Edits::default();
        edits
            .store_password(
                &path,
                "https://index.docker.io/v1/",
                "https://index.docker.io/v1/",
                "u",
                &password,
            )
            .expect("docker");
        edits
            .store_password(&other, "docker.io/my-app", "docker.io", "u", &password)
            .expect("containers");
        edits.write().expect("write");
        let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(v["auths"]["https://index.docker.io/v1/"]["auth"], "dTpw");
        assert_eq!(v["auths"]["docker.io/my-app"]["auth"], "dTpw");
    }

    /// The same for a file not there yet, named once directly and once through a linked
    /// directory: one edit, so neither entry overwrites the other.
    #[cfg(unix)]
    #[test]
    fn two_names_for_a_file_not_there_yet_make_one_edit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("docker");
        std::fs::create_dir(&real).expect("dir");
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&real, &linked).expect("symlink");
        let password: SecretString = "p".to_owned().into();
        let mut edits = Edits::default();
        edits
            .store_password(
                &real.join("config.json"),
                "127.0.0.1:5000",
                "127.0.0.1:5000",
                "u",
                &password,
            )
            .expect("docker");
        edits
            .store_password(
                &linked.join("config.json"),
                "127.0.0.1:5000/my-app",
                "127.0.0.1:5000",
                "u",
                &password,
            )
            .expect("containers");
        edits.write().expect("write");
        let v: Value =
            serde_json::from_slice(&std::fs::read(real.join("config.json")).expect("read"))
                .expect("json");
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], "dTpw", "{v}");
        assert_eq!(v["auths"]["127.0.0.1:5000/my-app"]["auth"], "dTpw", "{v}");
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
