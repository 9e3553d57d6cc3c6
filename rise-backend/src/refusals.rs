//! The HTTP library's own refusals, answered in JSON like every other error.
//!
//! Before there is a request to route, hyper answers an HTTP/1 connection itself when the
//! request cannot be read: `400` for a request line, header or version it cannot parse, `431`
//! for a head over `server::MAX_REQUEST_HEAD_BYTES`, `414` for a request target over 65,534
//! bytes that hyper read whole before the bound was checked (within one read chunk's slack). It writes a bare head (`content-length: 0`, `date`, and
//! `connection: close` on HTTP/1.1), then closes the connection, and has no hook to change that
//! answer.
//!
//! [`JsonRefusals`] wraps each connection's stream above TLS. When a write ends with such a
//! head, the head is replaced by the same status with a JSON body, `{"error", "message"}`,
//! saying what to fix. The match is strict: the status line is one of those three, and the
//! only headers are exactly the ones hyper writes. Rise's own responses never match: every
//! response it writes has a `content-type`. HTTP/2 connections (the whole preface read first)
//! are passed through untouched; there a header list over the bound is refused by the HTTP/2
//! library with a bare `431` on its stream, and the connection goes on.
//!
//! On HTTP/1 the stream reports no vectored writes, so hyper gathers each response into one
//! buffer and a refusal is always whole within one write; and it reads at most
//! [`HTTP1_READ_CHUNK`] at a time, which keeps hyper's head bound tight (see there).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum_server::accept::Accept;
use futures_util::TryFutureExt as _;
use futures_util::future::MapOk;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An acceptor whose connections answer hyper's refusals in JSON; wraps the acceptor whose
/// streams hyper reads (the TLS one, for HTTPS).
#[derive(Clone)]
pub struct JsonRefusals<A>(pub A);

type Wrap<St, Sv> = fn((St, Sv)) -> (Refusing<St>, Sv);

impl<I, S, A> Accept<I, S> for JsonRefusals<A>
where
    A: Accept<I, S>,
{
    type Stream = Refusing<A::Stream>;
    type Service = A::Service;
    type Future = MapOk<A::Future, Wrap<A::Stream, A::Service>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let wrap: Wrap<A::Stream, A::Service> =
            |(stream, service)| (Refusing::new(stream), service);
        self.0.accept(stream, service).map_ok(wrap)
    }
}

/// What the connection speaks, from the first bytes the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), all of which hyper-util reads to choose.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most an HTTP/1 read takes at once. hyper refuses a head only once
/// `server::MAX_REQUEST_HEAD_BYTES` of it sit unparsed, and reads into all of its buffer's spare
/// room: on a connection kept alive, one read could bring in a complete head twice the bound.
/// In chunks, a head is refused at the bound plus at most one chunk.
const HTTP1_READ_CHUNK: usize = 8 * 1024;

/// A connection's stream, rewriting hyper's bare refusals (see the module).
pub struct Refusing<S> {
    inner: S,
    protocol: Protocol,
    /// The first bytes read, while they could still be the HTTP/2 preface.
    first: Vec<u8>,
    /// A rewritten refusal's bytes not yet written, from `pending_at`.
    pending: Vec<u8>,
    pending_at: usize,
}

impl<S> Refusing<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            protocol: Protocol::Unknown,
            first: Vec::new(),
            pending: Vec::new(),
            pending_at: 0,
        }
    }

    fn note_read(&mut self, bytes: &[u8]) {
        if self.protocol != Protocol::Unknown || bytes.is_empty() {
            return;
        }
        let wanted = HTTP2_PREFACE.len() - self.first.len();
        self.first
            .extend_from_slice(&bytes[..bytes.len().min(wanted)]);
        if !HTTP2_PREFACE.starts_with(&self.first) {
            self.protocol = Protocol::Http1;
        } else if self.first.len() == HTTP2_PREFACE.len() {
            self.protocol = Protocol::Http2;
        }
        if self.protocol != Protocol::Unknown {
            self.first = Vec::new();
        }
    }
}

impl<S: AsyncWrite + Unpin> Refusing<S> {
    /// Write what is left of a rewritten refusal.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_at < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pending_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending_at += n;
        }
        self.pending = Vec::new();
        self.pending_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Refusing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.protocol == Protocol::Http2 || buf.remaining() <= HTTP1_READ_CHUNK {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.note_read(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        // hyper offers the whole of its read buffer's spare room, which grows on a connection
        // kept alive; read a chunk, so a head is checked against the bound every chunk.
        let mut chunk = [0u8; HTTP1_READ_CHUNK];
        let mut small = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
        this.note_read(small.filled());
        buf.put_slice(small.filled());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Refusing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if this.protocol != Protocol::Http2
            && let Some((at, refusal)) = hyper_refusal(buf)
        {
            crate::metrics::record_parse_refusal(refusal.status);
            let mut rewritten = buf[..at].to_vec();
            rewritten.extend_from_slice(&refusal.in_json());
            this.pending = rewritten;
            // The whole of `buf` is taken; what the socket does not take now is written
            // before any flush or shutdown completes.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    /// Not on HTTP/1, so that refusals come whole (see the module); on HTTP/2 as the stream
    /// beneath does. The protocol is known by then: hyper-util reads the first bytes through
    /// this stream before it builds the connection.
    fn is_write_vectored(&self) -> bool {
        self.protocol == Protocol::Http2 && self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.protocol == Protocol::Http2 && this.pending.is_empty() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        Pin::new(this).poll_write(cx, first)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// One of hyper's refusals, as it wrote it.
#[derive(Debug, PartialEq, Eq)]
struct Refusal<'a> {
    status_line: &'a [u8],
    status: u16,
    date: Option<&'a [u8]>,
}

impl Refusal<'_> {
    fn in_json(&self) -> Vec<u8> {
        let (code, message) = match self.status {
            431 => (
                "request_head_too_large",
                format!(
                    "the request line and headers take more than the {} KiB Rise reads; send a shorter URL or fewer, shorter headers (the connection is closed)",
                    crate::server::MAX_REQUEST_HEAD_BYTES / 1024
                ),
            ),
            414 => (
                "uri_too_long",
                "the request target is too long; send a shorter URL (the connection is closed)"
                    .to_owned(),
            ),
            _ => (
                "bad_request",
                "the request is not valid HTTP: its request line, a header or the version could not be parsed; send a well-formed HTTP/1.1 request (the connection is closed)"
                    .to_owned(),
            ),
        };
        let body = serde_json::json!({ "error": code, "message": message }).to_string();
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(self.status_line);
        out.extend_from_slice(b"connection: close\r\ncontent-type: application/json\r\n");
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        if let Some(date) = self.date {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(date);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// Where `buf` ends with one of hyper's bare refusals: its offset, and the refusal.
fn hyper_refusal(buf: &[u8]) -> Option<(usize, Refusal<'_>)> {
    // `HTTP/1.1 ` or `HTTP/1.0 ` (hyper answers in the connection's version).
    const START: &[u8] = b"HTTP/1.";
    const VERSION: usize = START.len() + 2;
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let at = buf.windows(START.len()).rposition(|w| w == START)?;
    let head = &buf[at..buf.len() - 2];
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    let status_line = lines.next().filter(|l| l.ends_with(b"\r\n"))?;
    // HTTP/1.1 says the connection closes; HTTP/1.0 closes without saying so.
    let must_say_close = match status_line.get(START.len()..VERSION)? {
        b"1 " => true,
        b"0 " => false,
        _ => return None,
    };
    let status = match status_line.get(VERSION..VERSION + 4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let (mut closes, mut empty, mut date) = (false, false, None);
    for line in lines {
        let line = line.strip_suffix(b"\r\n")?;
        let colon = line.iter().position(|&b| b == b':')?;
        let value = line[colon + 1..].trim_ascii();
        match &line[..colon] {
            b"connection" if value == b"close" && !closes => closes = true,
            b"content-length" if value == b"0" && !empty => empty = true,
            b"date" if date.is_none() => date = Some(value),
            _ => return None,
        }
    }
    (empty && (closes || !must_say_close)).then_some((
        at,
        Refusal {
            status_line,
            status,
            date,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 00:48:01 GMT\r\n\r\n";

    #[test]
    fn hypers_refusals_are_recognised_and_nothing_else() {
        let (at, refusal) = hyper_refusal(BARE_400).expect("a refusal");
        assert_eq!(at, 0);
        assert_eq!(refusal.status, 400);
        assert_eq!(refusal.date, Some(&b"Mon, 30 Nov 2026 00:48:01 GMT"[..]));
        // After a response still in the same buffer (pipelined requests).
        let mut two = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let ok_len = two.len();
        two.extend_from_slice(BARE_400);
        assert_eq!(hyper_refusal(&two).map(|(at, _)| at), Some(ok_len));
        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        assert_eq!(hyper_refusal(too_large).map(|(_, r)| r.status), Some(431));
        // On an HTTP/1.0 connection hyper answers in HTTP/1.0 and does not say it closes.
        let http10 = b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 00:48:01 GMT\r\n\r\n";
        assert_eq!(hyper_refusal(http10).map(|(_, r)| r.status), Some(400));

        for not_hypers in [
            // Rise's own refusals: typed and with a body.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            // Another status, a body length, no close, a repeated or unknown header.
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.2 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.0 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nx-other: 1\r\n\r\n",
            // Not at the end of the write, or not a head at all.
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nmore",
            b"\r\n\r\n",
            b"",
        ] {
            assert_eq!(hyper_refusal(not_hypers), None, "{}", String::from_utf8_lossy(not_hypers));
        }
    }

    #[test]
    fn a_refusal_in_json_keeps_its_status_and_date() {
        let (_, refusal) = hyper_refusal(BARE_400).expect("a refusal");
        let rewritten = String::from_utf8(refusal.in_json()).expect("text");
        let (head, body) = rewritten.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            head.contains("\r\ndate: Mon, 30 Nov 2026 00:48:01 GMT"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"], "bad_request");
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.contains("HTTP/1.1")),
            "{json}"
        );
    }

    /// Writes assembled from the pieces of heads (and stray bytes) never panic the matcher, and
    /// whatever it matches is rewritten into a well-formed JSON refusal of the same status.
    #[test]
    fn any_write_is_matched_without_panic_and_rewritten_whole() {
        const PIECES: &[&[u8]] = &[
            b"HTTP/1.1 ",
            b"400 Bad Request",
            b"431 ",
            b"414 x",
            b"200 OK",
            b"\r\n",
            b"\n",
            b"\r\n\r\n",
            b"connection: close\r\n",
            b"content-length: 0\r\n",
            b"date: Mon, 30 Nov 2026 00:48:01 GMT\r\n",
            b"content-type: application/json\r\n",
            b":",
            b" ",
            b"\xff\x00",
            b"ok",
        ];
        // SplitMix64, so every run draws the same writes.
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as usize
        };
        let mut matched = 0;
        for _ in 0..50_000 {
            let mut buf = Vec::new();
            for _ in 0..next() % 8 {
                buf.extend_from_slice(PIECES[next() % PIECES.len()]);
            }
            // Half the writes end in a head's shape (a status line, header lines, the blank
            // line), built from the same pieces, so the deeper checks run too.
            if next() % 2 == 0 {
                buf.extend_from_slice(if next() % 2 == 0 {
                    b"HTTP/1.1 "
                } else {
                    b"HTTP/1.0 "
                });
                buf.extend_from_slice(PIECES[1 + next() % 4]);
                buf.extend_from_slice(b"\r\n");
                for _ in 0..next() % 5 {
                    buf.extend_from_slice(PIECES[8 + next() % 4]);
                }
                buf.extend_from_slice(b"\r\n");
            }
            let Some((at, refusal)) = hyper_refusal(&buf) else {
                continue;
            };
            matched += 1;
            let rewritten = refusal.in_json();
            let text = String::from_utf8_lossy(&rewritten);
            let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
            assert!(buf[at..].starts_with(refusal.status_line), "{buf:?}");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{text}"
            );
            let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert!(json["error"].is_string() && json["message"].is_string());
        }
        // The pieces do assemble into hyper's refusals, so the rewrite is exercised too.
        assert!(matched > 500, "only {matched} writes matched");
    }

    /// A stream beneath that takes vectored writes.
    struct Vectored;

    impl AsyncWrite for Vectored {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// HTTP/1 gets whole writes (so a refusal is never split); HTTP/2 keeps the vectored writes
    /// of the stream beneath.
    #[test]
    fn only_http2_writes_vectored() {
        let mut http1 = Refusing::new(Vectored);
        http1.note_read(b"GET / HTTP/1.1\r\n");
        assert!(!http1.is_write_vectored());
        let mut http2 = Refusing::new(Vectored);
        assert!(!http2.is_write_vectored(), "not before the preface");
        http2.note_read(HTTP2_PREFACE);
        assert!(http2.is_write_vectored());
    }

    #[test]
    fn the_http2_preface_is_told_from_http1_however_it_arrives() {
        let mut whole = Refusing::new(());
        whole.note_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(whole.protocol, Protocol::Http2);
        let mut split = Refusing::new(());
        for byte in HTTP2_PREFACE.chunks(1) {
            assert_eq!(split.protocol, Protocol::Unknown);
            split.note_read(byte);
        }
        assert_eq!(split.protocol, Protocol::Http2);
        // hyper-util reads the whole preface before it chooses HTTP/2.
        for http1 in [
            &b"POST / HTTP/1.1\r\n"[..],
            b"GARBAGE",
            b"PRX",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        ] {
            let mut conn = Refusing::new(());
            conn.note_read(http1);
            assert_eq!(conn.protocol, Protocol::Http1, "{http1:?}");
        }
    }
}
