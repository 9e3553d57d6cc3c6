//! `skopeo` (Debian's 1.9.3) as the registry client: push an OCI layout, pull it back, inspect.
//!
//! Facts:
//! - Runs with `--insecure-policy` so that it does not depend on /etc/containers/policy.json.
//! - `--*-tls-verify=false` makes it fall back to plain HTTP for `127.0.0.1:PORT`.
//! - Anonymous access is `--dest-no-creds` / `--src-no-creds` / `--no-creds`; without it (and
//!   without creds) skopeo would use whatever ${XDG_RUNTIME_DIR}/containers/auth.json or
//!   ~/.docker/config.json holds. `REGISTRY_AUTH_FILE` from the environment is removed.
//! - To the realm: `GET /token?account=USER&scope=repository:NAME:pull,push&service=SVC` with
//!   Basic auth (see shared/FACTS.md for identity tokens and credential helpers).
//! - Every invocation is killed after [`COMMAND_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tokio::process::Command;

use super::process::{COMMAND_TIMEOUT, require_binary, run_with_timeout};

/// How skopeo authenticates to the registry.
#[derive(Debug, Clone)]
pub enum Creds {
    /// No credentials at all (`--no-creds`).
    Anonymous,
    /// `--creds USER:PASSWORD`.
    Basic { username: String, password: String },
    /// `--authfile PATH`: a docker `config.json` (`auths`, `credHelpers`, `identitytoken`, ...).
    AuthFile(PathBuf),
}

impl Creds {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    pub fn auth_file(path: impl Into<PathBuf>) -> Self {
        Self::AuthFile(path.into())
    }

    /// The flags for one side (`prefix` is `dest-`, `src-` or empty).
    fn args(&self, prefix: &str) -> Vec<String> {
        match self {
            Self::Anonymous => vec![format!("--{prefix}no-creds")],
            Self::Basic { username, password } => {
                vec![format!("--{prefix}creds"), format!("{username}:{password}")]
            }
            Self::AuthFile(path) => vec![
                format!("--{prefix}authfile"),
                path.to_string_lossy().into_owned(),
            ],
        }
    }
}

/// `skopeo copy oci:LAYOUT docker://DEST` to a plain-HTTP registry. `dest` is
/// `127.0.0.1:PORT/name:tag`. `Err` carries skopeo's stderr.
pub async fn copy_to_registry(
    layout_dir: &Path,
    dest: &str,
    creds: Creds,
) -> Result<Output, String> {
    let mut args = vec!["copy".to_owned(), "--dest-tls-verify=false".to_owned()];
    args.extend(creds.args("dest-"));
    args.push(format!("oci:{}", layout_dir.display()));
    args.push(format!("docker://{dest}"));
    skopeo(&args, &[]).await
}

/// `skopeo copy docker://SRC oci:LAYOUT` from a plain-HTTP registry (`layout_dir` is created).
pub async fn copy_from_registry(
    src: &str,
    layout_dir: &Path,
    creds: Creds,
) -> Result<Output, String> {
    let mut args = vec!["copy".to_owned(), "--src-tls-verify=false".to_owned()];
    args.extend(creds.args("src-"));
    args.push(format!("docker://{src}"));
    args.push(format!("oci:{}", layout_dir.display()));
    skopeo(&args, &[]).await
}

/// `skopeo inspect docker://IMAGE`: the parsed JSON (`Digest`, `Layers`, ...).
pub async fn inspect(image: &str, creds: Creds) -> Result<Value, String> {
    let output = inspect_args(image, creds, false).await?;
    serde_json::from_slice(&output.stdout).map_err(|err| {
        format!(
            "skopeo inspect printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// `skopeo inspect --raw docker://IMAGE`: the manifest exactly as the registry serves it.
pub async fn inspect_raw(image: &str, creds: Creds) -> Result<Vec<u8>, String> {
    Ok(inspect_args(image, creds, true).await?.stdout)
}

async fn inspect_args(image: &str, creds: Creds, raw: bool) -> Result<Output, String> {
    let mut args = vec!["inspect".to_owned(), "--tls-verify=false".to_owned()];
    if raw {
        args.push("--raw".to_owned());
    }
    args.extend(creds.args(""));
    args.push(format!("docker://{image}"));
    skopeo(&args, &[]).await
}

/// Runs `skopeo --insecure-policy ARGS...` with extra environment variables (e.g. a `PATH` with
/// a `docker-credential-NAME` helper). `Ok` when it exits 0, otherwise `Err(stderr)`.
pub async fn skopeo(args: &[String], envs: &[(&str, &str)]) -> Result<Output, String> {
    let mut cmd = Command::new(require_binary("skopeo"));
    cmd.arg("--insecure-policy")
        .args(args)
        .env_remove("REGISTRY_AUTH_FILE");
    for (name, value) in envs {
        cmd.env(name, value);
    }
    let output = run_with_timeout(cmd, COMMAND_TIMEOUT)
        .await
        .map_err(|err| format!("{err:#}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
