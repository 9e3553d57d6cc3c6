//! The connection cap (`server.max_connections`): each accepted connection holds one slot until
//! it closes; a connection arriving when every slot is taken is closed at once, before any TLS
//! handshake or request is read. Without a cap, a client opening connections until the process
//! runs out of file descriptors would also starve what the broker itself needs descriptors for:
//! database connections, calls to upstream registries and identity providers, key files.

use std::future::Ready;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept back from connections for the broker's own use (database pool, upstream
/// calls, key and certificate files, the audit writer).
pub const DESCRIPTOR_RESERVE: u64 = 128;

/// The fewest connections the default allows, however low the open-file limit.
const MIN_DEFAULT: u64 = 16;

/// The highest default, however high the open-file limit: each connection also costs memory
/// (buffers, a task, TLS state), so a limit in the hundreds of thousands is no cap at all.
const MAX_DEFAULT: u64 = 16_384;

/// The default cap where the open-file limit is unlimited or unknown.
const FALLBACK: u64 = 4096;

/// The process's soft open-file limit (`ulimit -n`, systemd `LimitNOFILE=`); `None` when it is
/// unlimited or cannot be read.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The most connections the open-file limit leaves room for after [`DESCRIPTOR_RESERVE`], at
/// most [`MAX_DEFAULT`] (and never below a small floor); the default of `server.max_connections`.
pub fn default_max_connections() -> u64 {
    default_for(open_file_limit())
}

fn default_for(open_file_limit: Option<u64>) -> u64 {
    match open_file_limit {
        Some(limit) => limit
            .saturating_sub(DESCRIPTOR_RESERVE)
            .clamp(MIN_DEFAULT, MAX_DEFAULT),
        None => FALLBACK,
    }
}

/// An acceptor that gives each connection a slot, or closes it when none is free. It runs first:
/// as the server's acceptor for plain HTTP, as the one inside the TLS acceptor for HTTPS, so a
/// refused connection costs no handshake.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl ConnectionCap {
    pub fn new(max_connections: u64) -> Self {
        let slots = usize::try_from(max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            refusals: Arc::new(Refusals::default()),
        }
    }
}

impl<I, S> Accept<I, S> for ConnectionCap {
    type Stream = Slotted<I>;
    type Service = S;
    type Future = Ready<io::Result<(Slotted<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        std::future::ready(match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Ok((
                Slotted {
                    inner: stream,
                    _slot: slot,
                },
                service,
            )),
            Err(_) => {
                // Dropping the stream closes the connection.
                drop(stream);
                self.refusals.count();
                Err(io::Error::other(
                    "connection refused: server.max_connections are open",
                ))
            }
        })
    }
}

/// Counts refused connections and says so in the log at most every [`Refusals::EVERY`], so a
/// flood of connections is one warning a period, not one line each.
#[derive(Default)]
struct Refusals {
    since_said: AtomicU64,
    last_said: std::sync::Mutex<Option<Instant>>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn count(&self) {
        crate::metrics::record_connection_refused();
        self.since_said.fetch_add(1, Ordering::Relaxed);
        let Ok(mut last) = self.last_said.try_lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        *last = Some(Instant::now());
        // Taken under the lock: each refusal is said once, in the warning after it.
        let unsaid = self.since_said.swap(0, Ordering::Relaxed);
        tracing::warn!(
            refused = unsaid,
            "server.max_connections connections are open: new connections are closed as they arrive (raise server.max_connections and the open-file limit, or put a proxy in front); `refused` counts those since the last such warning, and for 10 s more are only counted, in rise_connections_refused_total"
        );
    }
}

/// A connection holding its slot until it is dropped.
pub struct Slotted<I> {
    inner: I,
    _slot: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Slotted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Slotted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_the_reserve_free_within_bounds() {
        // A shell's usual soft limit: 128 kept back.
        assert_eq!(default_for(Some(1024)), 896);
        // systemd's usual hard limit, raised to: bounded for memory's sake.
        assert_eq!(default_for(Some(524_288)), MAX_DEFAULT);
        // A limit below the reserve still lets a few connections in.
        assert_eq!(default_for(Some(100)), MIN_DEFAULT);
        // Unlimited or unknown.
        assert_eq!(default_for(None), FALLBACK);
    }
}
