//! A throw-away PostgreSQL server: `initdb` into a temp dir, `postgres` on a free loopback port,
//! trust auth, stopped on `Drop`.
//!
//! Facts:
//! - Debian's binaries live in `/usr/lib/postgresql/<version>/bin` (not on `PATH`); the newest
//!   version there is used. `/usr/local/bin/postgres` may be a stray symlink: not used.
//! - postgres refuses to run as root. As root, the temp dir (under /tmp, which the `postgres`
//!   user can traverse) is chowned to `postgres` and initdb/postgres run through
//!   `runuser -u postgres --`. runuser stays the parent of postgres and does not pass a SIGKILL
//!   on, so `Drop` stops the server with `pg_ctl stop -m immediate` before killing runuser.
//! - postgres cannot bind port 0 and report it: a port is picked with a bind-and-release probe,
//!   and the start is retried on "Address already in use".
//! - The unix socket lives in the temp dir (`unix_socket_directories`); clients here use TCP.
//! - The Debian package's own cluster (15/main) is not needed; scripts/setup-test-deps.sh stops
//!   it and sets it to manual start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;
use tokio::process::Command;

use super::SETUP_HINT;
use super::process::{
    COMMAND_TIMEOUT, ChildProcess, STARTUP_TIMEOUT, free_port, is_executable, run_ok,
    running_as_root,
};

const SUPERUSER: &str = "postgres";
const OS_USER: &str = "postgres";

/// A running PostgreSQL server; stopped on drop.
pub struct Postgres {
    process: ChildProcess,
    port: u16,
    bin_dir: PathBuf,
    data_dir: PathBuf,
    as_os_user: bool,
    dir: TempDir,
}

impl Postgres {
    pub async fn start() -> Self {
        Self::try_start()
            .await
            .unwrap_or_else(|err| panic!("starting postgres: {err:#}"))
    }

    async fn try_start() -> Result<Self> {
        let bin_dir = postgres_bin_dir().unwrap_or_else(|| {
            panic!("no /usr/lib/postgresql/<version>/bin with postgres, initdb and pg_ctl: {SETUP_HINT}")
        });
        let as_os_user = running_as_root();
        let dir = if as_os_user {
            let (uid, gid) = os_user_ids(OS_USER)?.unwrap_or_else(|| {
                panic!("running as root needs the `{OS_USER}` system user: {SETUP_HINT}")
            });
            let dir = tempfile::Builder::new()
                .prefix("rise-pg-")
                .tempdir_in("/tmp")
                .context("creating a temp dir in /tmp")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("chown {} to {OS_USER}", dir.path().display()))?;
            dir
        } else {
            tempfile::Builder::new()
                .prefix("rise-pg-")
                .tempdir()
                .context("creating a temp dir")?
        };
        let data_dir = dir.path().join("data");

        let mut initdb = command(&bin_dir.join("initdb"), as_os_user, dir.path());
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg("--no-sync");
        run_ok(initdb, COMMAND_TIMEOUT).await?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let mut server = command(&bin_dir.join("postgres"), as_os_user, dir.path());
            server
                .arg("-D")
                .arg(&data_dir)
                .arg("-p")
                .arg(port.to_string())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "logging_collector=off"])
                .args(["-c", "max_connections=200"]);
            let mut process = ChildProcess::spawn("postgres", server)?;
            match process
                .wait_for_line(
                    "waiting for `ready to accept connections`",
                    |line| line.contains("database system is ready to accept connections"),
                    STARTUP_TIMEOUT,
                )
                .await
            {
                Ok(_) => {
                    return Ok(Self {
                        process,
                        port,
                        bin_dir,
                        data_dir,
                        as_os_user,
                        dir,
                    });
                }
                Err(err) if attempt < 5 && process.logs().contains("already in use") => {
                    eprintln!("postgres: port {port} was taken, retrying: {err:#}");
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The directory of the unix socket (`host=` for libpq).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn logs(&self) -> String {
        self.process.logs().text()
    }

    /// Creates database `name` (letters, digits, `_`, `-`) and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "database name {name:?}: use letters, digits, `_` and `-`"
        );
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .unwrap_or_else(|err| panic!("connecting to {}: {err}", self.url()));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err}"));
        conn.close().await.ok();
        self.url_for(name)
    }

    fn stop(&mut self) {
        let mut pg_ctl = std_command(
            &self.bin_dir.join("pg_ctl"),
            self.as_os_user,
            self.dir.path(),
        );
        pg_ctl
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "10"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        match pg_ctl.output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "postgres: pg_ctl stop failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(err) => eprintln!("postgres: running pg_ctl stop: {err}"),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stop the postmaster itself (it is runuser's child when running as root), then
        // `process` (runuser) is killed and reaped by its own Drop, then the temp dir goes.
        if self.process.try_status().is_none() {
            self.stop();
        }
        // Give runuser a moment to notice that its child is gone.
        for _ in 0..100 {
            if self.process.try_status().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `program` as the postgres OS user when `as_os_user`, run in `dir`.
fn command(program: &Path, as_os_user: bool, dir: &Path) -> Command {
    Command::from(std_command(program, as_os_user, dir))
}

fn std_command(program: &Path, as_os_user: bool, dir: &Path) -> std::process::Command {
    let mut cmd = if as_os_user {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", OS_USER, "--"]).arg(program);
        cmd
    } else {
        std::process::Command::new(program)
    };
    // The postgres user may not be able to enter the test's working directory.
    cmd.current_dir(dir);
    for var in [
        "PGDATA",
        "PGPORT",
        "PGHOST",
        "PGUSER",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has postgres, initdb and pg_ctl.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            ["postgres", "initdb", "pg_ctl"]
                .iter()
                .all(|name| is_executable(&bin.join(name)))
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// uid and gid of `user` from /etc/passwd.
fn os_user_ids(user: &str) -> Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == user {
            let uid = fields[2].parse().context("uid in /etc/passwd")?;
            let gid = fields[3].parse().context("gid in /etc/passwd")?;
            return Ok(Some((uid, gid)));
        }
    }
    Ok(None)
}
