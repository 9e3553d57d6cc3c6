//! Private files: read if present, write atomically with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{json_problem, printable};
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
/// The error names where and in which field, never a value: serde's own message quotes the
/// offending value, which in `login.json` may be a refresh token.
pub fn read_json_or_default<T: DeserializeOwned + Default>(path: &Path) -> Result<T, CliError> {
    match read_optional(path)? {
        None => Ok(T::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Input(format!(
                "{} is not valid ({}): fix it or delete it, then retry",
                path.display(),
                where_json_fails(&bytes, &e)
            ))
        }),
    }
}

/// `fields missing or of the wrong type at line 3 column 20, in "logins" > "https://x" >
/// "expires_at"`: what [`json_problem`] says, where, and the keys leading there.
fn where_json_fails(text: &[u8], e: &serde_json::Error) -> String {
    let mut shown = format!(
        "{} at line {} column {}",
        json_problem(e),
        e.line(),
        e.column()
    );
    // serde_json counts lines from 1 and columns in bytes from 1 (0 when the line is empty).
    let line_start: usize = text
        .split_inclusive(|b| *b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    // Up to the character the error is at, not through it: at a `}` that closes an object
    // lacking a field, that object's key is still open.
    let at = (line_start + e.column()).saturating_sub(1);
    let mut objects = keys_at(text, at);
    // The one message that names a field the file lacks: a name from our own schema. It comes
    // at the end of the object, whose last key is done with.
    let message = e.to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    if missing.is_some()
        && let Some(last) = objects.last_mut()
    {
        *last = None;
    }
    let keys: Vec<String> = objects
        .iter()
        .flatten()
        .map(|k| format!("{:?}", printable(k, 100)))
        .collect();
    if !keys.is_empty() {
        shown.push_str(&format!(", in {}", keys.join(" > ")));
    }
    if let Some(field) = missing {
        shown.push_str(&format!(" (missing {field:?})"));
    }
    shown
}

/// For each object open at byte `offset` of a JSON text (read up to it), outermost first, the key
/// whose value is being read, if any. Only keys are collected: values, which may be secrets, are
/// skipped.
fn keys_at(text: &[u8], offset: usize) -> Vec<Option<String>> {
    enum Open {
        /// An object, and the key whose value is being read (once one was).
        Object(Option<String>),
        Array,
    }
    let mut open: Vec<Open> = Vec::new();
    let mut expecting_key = false;
    let mut i = 0;
    while i < offset.min(text.len()) {
        match text[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if expecting_key && let Some(Open::Object(key)) = open.last_mut() {
                    let end = i.min(text.len());
                    *key = Some(String::from_utf8_lossy(&text[start..end]).into_owned());
                }
                expecting_key = false;
            }
            b'{' => {
                open.push(Open::Object(None));
                expecting_key = true;
            }
            b'[' => {
                open.push(Open::Array);
                expecting_key = false;
            }
            b'}' | b']' => {
                open.pop();
                expecting_key = false;
            }
            b',' => expecting_key = matches!(open.last(), Some(Open::Object(_))),
            _ => {}
        }
        i += 1;
    }
    open.into_iter()
        .filter_map(|o| match o {
            Open::Object(key) => Some(key),
            Open::Array => None,
        })
        .collect()
}

/// Serialize `value` as pretty JSON into `path` (see [`write_private`]).
pub fn write_json_private<T: Serialize>(path: &Path, value: &T) -> Result<(), CliError> {
    write_private(path, &json_bytes(path, value)?)
}

/// `value` as pretty JSON with a final newline, as [`write_json_private`] writes it to `path`.
pub fn json_bytes<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, CliError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| CliError::Other(format!("cannot serialize {}: {e}", path.display())))?;
    bytes.push(b'\n');
    Ok(bytes)
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

/// An exclusive advisory lock on `path` (created 0600 if missing), released when the returned
/// file is dropped. Every read-modify-write of a file of ours that two processes may run at
/// once (the credential helper runs in parallel) holds one, and re-reads the file under it.
pub fn lock_file(path: &Path) -> Result<std::fs::File, CliError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    // Like every file of ours: no one else needs to read it, or to learn when files change.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(path)
        .map_err(|e| CliError::file("open the lock file", path, &e))?;
    file.lock().map_err(|e| CliError::file("lock", path, &e))?;
    Ok(file)
}

/// Create a directory (and parents) with mode 0700 where we create it.
pub fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    create_private_dir_noting(dir, &mut Vec::new())
}

/// [`create_private_dir`], noting in `made` every directory it created, outermost first (also
/// when it stops part way), so that exactly those can be removed again.
pub fn create_private_dir_noting(dir: &Path, made: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        next = d.parent();
    }
    for d in missing.into_iter().rev() {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        match builder.create(d) {
            Ok(()) => made.push(d.to_owned()),
            // Made by someone else meanwhile: theirs, not ours to remove.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => {
                return Err(CliError::Input(format!(
                    "cannot create directory {}: {}",
                    d.display(),
                    describe_io(&e)
                )));
            }
        }
    }
    Ok(())
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

    #[test]
    fn corrupt_json_is_located_without_quoting_a_value() {
        // Shaped like `login.json`; only deserialized, never read.
        #[allow(dead_code)]
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            #[serde(default)]
            logins: std::collections::BTreeMap<String, Login>,
        }
        #[allow(dead_code)]
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Login {
            refresh_token: String,
            expires_at: Option<u64>,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("login.json");
        let check = |text: &str, expect: &str| {
            std::fs::write(&path, text).expect("write");
            let err = read_json_or_default::<Doc>(&path)
                .expect_err("corrupt")
                .to_string();
            assert_eq!(
                err,
                format!(
                    "{} is not valid ({expect}): fix it or delete it, then retry",
                    path.display()
                ),
                "{text}"
            );
        };
        let wrong = "fields missing or of the wrong type";
        check(
            r#"{"logins":{"b":{"refresh_token":"t","expires_at":"SECRET-abc"}}}"#,
            &format!(r#"{wrong} at line 1 column 61, in "logins" > "b" > "expires_at""#),
        );
        check(
            "{\n  \"logins\": {\n    \"https://x\": {\n      \"refresh_token\": 42,\n      \"expires_at\": \"SECRET-abc\"\n    }\n  }\n}\n",
            &format!(r#"{wrong} at line 4 column 25, in "logins" > "https://x" > "refresh_token""#),
        );
        check(
            r#"{"logins":{"b":{"expires_at":1}, "c": {}}}"#,
            &format!(r#"{wrong} at line 1 column 31, in "logins" > "b" (missing "refresh_token")"#),
        );
        check(
            r#"{"logins":{"b":{"refresh_token":"SECRET-abc","colour":1}}}"#,
            &format!(r#"{wrong} at line 1 column 53, in "logins" > "b" > "colour""#),
        );
        check(
            r#"{"logins":{"b":{"refresh_token":"SECRET-abc",,}}}"#,
            r#"not JSON at line 1 column 46, in "logins" > "b" > "refresh_token""#,
        );
        check(
            r#"{"logins":{"b":{"refresh_token":"SECRET-ab"#,
            r#"cut short at line 1 column 42, in "logins" > "b" > "refresh_token""#,
        );
        check(
            r#"{"logins":[{"refresh_token":"SECRET-abc"}]}"#,
            &format!(r#"{wrong} at line 1 column 10, in "logins""#),
        );
    }
}
