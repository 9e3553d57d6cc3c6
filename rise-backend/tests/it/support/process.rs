//! Child processes for tests: output captured line by line (and searchable while the process
//! runs), waiting for a log line with a deadline, SIGKILL + reap on `Drop`, and a timeout on
//! every one-shot command.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use super::SETUP_HINT;

/// Timeout for one-shot external commands (skopeo, pg_ctl, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server may take to report that it is ready. A deadline for a hung start, not a
/// performance target: oidc-provider needs ~0.5 s on an idle machine, but the whole suite runs
/// its servers side by side on two cores, and a CI run once saw a start take more than 30 s.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// `name` on `PATH`; panics with the setup hint when it is not there.
pub fn require_binary(name: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| panic!("`{name}` not found on PATH: {SETUP_HINT}"))
}

/// `name` on `PATH`, if it is there and executable.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Panics with the setup hint unless `path` is an executable file.
pub fn require_executable(path: &Path) -> PathBuf {
    assert!(
        is_executable(path),
        "{} is missing or not executable: {SETUP_HINT}",
        path.display()
    );
    path.to_path_buf()
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read, released).
/// Only for programs that cannot bind port 0 themselves and report the port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Whether this test process runs as root.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the effective uid of the process.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a one-shot command (stdin closed, output captured) and kills it after `timeout`.
/// A non-zero exit is not an error here: look at `Output::status`.
pub async fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning `{what}`"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.with_context(|| format!("waiting for `{what}`")),
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => bail!("`{what}` did not finish within {timeout:?} (killed)"),
    }
}

/// Like [`run_with_timeout`], but a non-zero exit is an error carrying the output.
pub async fn run_ok(cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    let output = run_with_timeout(cmd, timeout).await?;
    if !output.status.success() {
        bail!(
            "`{what}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// `program arg1 arg2 ...` for error messages.
pub fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut text = std.get_program().to_string_lossy().into_owned();
    for arg in std.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Output lines of a process (stdout and stderr interleaved in arrival order), kept in memory.
#[derive(Clone)]
pub struct Logs {
    lines: Arc<Mutex<Vec<String>>>,
    /// Bumped on every new line; closed when every output stream has ended.
    changed: watch::Receiver<usize>,
}

impl Logs {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // A reader task that panicked cannot leave the Vec inconsistent.
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// All lines so far, joined with `\n`.
    pub fn text(&self) -> String {
        self.lock().join("\n")
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// Number of lines so far (a starting point for [`Logs::wait_for_after`]).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.lock().iter().any(|line| line.contains(needle))
    }

    /// Waits for a line (from the first one on) that satisfies `matches`.
    pub async fn wait_for(
        &self,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_for_after(0, matches, timeout).await
    }

    /// Waits for a line with index `>= from` that satisfies `matches`. Fails when the timeout
    /// passes or the output ends (the process exited) first.
    pub async fn wait_for_after(
        &self,
        from: usize,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut changed = self.changed.clone();
        let mut next = from;
        loop {
            // Mark the current version seen *before* looking, so that a line pushed after the
            // look wakes up `changed()` below.
            changed.borrow_and_update();
            {
                let lines = self.lock();
                if let Some(line) = lines.iter().skip(next).find(|line| matches(line)) {
                    return Ok(line.clone());
                }
                next = next.max(lines.len());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => {
                    let lines = self.lock();
                    if let Some(line) = lines.iter().skip(next).find(|line| matches(line)) {
                        return Ok(line.clone());
                    }
                    bail!("the output ended (process exited?) without the expected line");
                }
                Err(_elapsed) => bail!("no expected line within {timeout:?}"),
            }
        }
    }
}

/// A long-running child process: output captured into [`Logs`], killed (SIGKILL) and reaped on
/// `Drop`.
pub struct ChildProcess {
    name: String,
    child: Child,
    logs: Logs,
}

impl ChildProcess {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured. `name` prefixes echoed lines
    /// (`RISE_TEST_LOG=1`) and error messages.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let what = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: `{what}`"))?;

        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let echo = std::env::var_os("RISE_TEST_LOG").is_some_and(|v| !v.is_empty() && v != "0");
        if let Some(stdout) = child.stdout.take() {
            spawn_reader(name, stdout, lines.clone(), tx.clone(), echo);
        }
        if let Some(stderr) = child.stderr.take() {
            spawn_reader(name, stderr, lines.clone(), tx, echo);
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            logs: Logs { lines, changed: rx },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit, at most `timeout`; then gives its output readers a moment
    /// to drain the pipes. The error names the process and carries its output.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status =
            loop {
                if let Some(status) = self.try_status() {
                    break status;
                }
                if Instant::now() >= deadline {
                    bail!(self.failure_report(
                        &format!("did not exit within {timeout:?}"),
                        "still running"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(status)
    }

    /// Waits for a matching output line; the error names the process, its exit status and its
    /// output so far.
    pub async fn wait_for_line(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        match self.logs.wait_for(matches, timeout).await {
            Ok(line) => Ok(line),
            Err(err) => {
                // Give a crashing process a moment to be reaped so that its status shows.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let status = match self.try_status() {
                    Some(status) => format!("exited with {status}"),
                    None => "still running".to_owned(),
                };
                Err(err.context(self.failure_report(what, &status)))
            }
        }
    }

    /// A multi-line message: what failed, the process state and its output.
    pub fn failure_report(&self, what: &str, state: &str) -> String {
        // The machine's load tells a hung program from a starved one.
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut report = format!(
            "{}: {what} ({state}; load average {}); output:",
            self.name,
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        for line in self.logs.lines() {
            let _ = write!(report, "\n  | {line}");
        }
        report
    }

    /// Kills the process and waits for it to be reaped.
    pub async fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGKILL, then reap: death after SIGKILL takes microseconds, so a short poll suffices
        // (Drop cannot await).
        let _ = self.child.start_kill();
        for _ in 0..400 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("{}: still not reaped 2 s after SIGKILL", self.name);
    }
}

fn spawn_reader<R>(
    name: &str,
    stream: R,
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<watch::Sender<usize>>,
    echo: bool,
) where
    R: AsyncRead + Unpin + Send + 'static,
{
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line =
                        strip_ansi(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']));
                    if echo {
                        eprintln!("[{name}] {line}");
                    }
                    lines
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(line);
                    changed.send_modify(|count| *count += 1);
                }
            }
        }
        // Dropping the last sender closes the channel: waiters learn that the output ended.
        drop(changed);
    });
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which some programs print even to pipes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A reqwest client for talking to the test servers: loopback only, so proxies from the
/// environment are ignored; redirects are not followed (tests look at them).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(COMMAND_TIMEOUT)
        .build()
        .expect("building a reqwest client")
}
