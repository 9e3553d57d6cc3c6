//! Private files: read if present, write atomically with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CliError, describe_io};

/// Read a file, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CliError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::file("read", path, &e)),
    }
}

/// Read a JSON file we own, `T::default()` when it does not exist. A corrupt file is an error
/// naming the file, so the user can move it away (we never overwrite what we cannot read).
pub fn read_json_or_default<T: DeserializeOwned + Default>(path: &Path) -> Result<T, CliError> {
    match read_optional(path)? {
        None => Ok(T::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Input(format!(
                "{} is not valid ({}): fix it or delete it, then retry",
                path.display(),
                e
            ))
        }),
    }
}

/// Serialize `value` as pretty JSON into `path` (see [`write_private`]).
pub fn write_json_private<T: Serialize>(path: &Path, value: &T) -> Result<(), CliError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| CliError::Other(format!("cannot serialize {}: {e}", path.display())))?;
    bytes.push(b'\n');
    write_private(path, &bytes)
}

/// Write `bytes` to `path` atomically (a temporary file in the same directory, synced, then
/// renamed over the target) with mode 0600. Creates missing parent directories with mode 0700.
/// When `path` is a symbolic link, the file it points to is replaced, not the link.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let target = resolve_symlink(path);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&dir)?;
    let write_err = |e: std::io::Error| CliError::file("write", &target, &e);
    // NamedTempFile creates the file with mode 0600 before any byte is written.
    let mut tmp = tempfile::Builder::new()
        .prefix(".rise-")
        .tempfile_in(&dir)
        .map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    set_private_mode(tmp.as_file()).map_err(write_err)?;
    tmp.persist(&target).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Create a directory (and parents) with mode 0700 where we create it.
pub fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| {
        CliError::Input(format!(
            "cannot create directory {}: {}",
            dir.display(),
            describe_io(&e)
        ))
    })
}

fn resolve_symlink(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
        }
        _ => path.to_owned(),
    }
}

#[cfg(unix)]
fn set_private_mode(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_private_mode(_: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn writes_atomically_with_private_mode_and_follows_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real.json");
        std::fs::write(&real, b"old").expect("seed");
        std::os::unix::fs::symlink(&real, dir.path().join("link.json")).expect("symlink");
        write_private(&dir.path().join("link.json"), b"new").expect("write");
        assert_eq!(std::fs::read(&real).expect("read"), b"new");
        assert!(
            std::fs::symlink_metadata(dir.path().join("link.json"))
                .expect("meta")
                .file_type()
                .is_symlink()
        );
        let mode = std::fs::metadata(&real).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let fresh = dir.path().join("a/b/c.json");
        write_private(&fresh, b"x").expect("write nested");
        let dmode = std::fs::metadata(dir.path().join("a/b"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
    }

    #[test]
    fn corrupt_json_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        std::fs::write(&p, b"{nope").expect("seed");
        let err = read_json_or_default::<serde_json::Value>(&p)
            .expect_err("corrupt")
            .to_string();
        assert!(err.contains("x.json"), "{err}");
        assert!(err.contains("delete it"), "{err}");
    }
}
