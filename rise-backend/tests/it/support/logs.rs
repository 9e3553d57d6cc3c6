//! Capturing the log lines a test provokes, to check that none carries a secret.
//!
//! One global subscriber serves every capture. It formats only the events of threads that hold
//! a [`TraceCapture`], into that capture's buffer. A thread-local default subscriber per capture
//! (`set_default`) is not enough: tracing caches each call site's interest, and a site first
//! reached by a test without a capture could stay silent for a test with one.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::filter::{LevelFilter, dynamic_filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

thread_local! {
    /// The buffer of this thread's capture, if it has one.
    static CURRENT: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Every tracing event of the current thread, at TRACE (reqwest and hyper included), written as
/// text into a buffer while this value lives. Use it on a current-thread runtime (the default of
/// `#[tokio::test]`), where every task of the test runs on the test's thread.
pub struct TraceCapture {
    buffer: Buffer,
}

impl TraceCapture {
    pub fn start() -> Self {
        static GLOBAL: Once = Once::new();
        GLOBAL.call_once(|| {
            let capturing = dynamic_filter_fn(|_, _| {
                CURRENT.with(|c| c.try_borrow().is_ok_and(|b| b.is_some()))
            });
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(ToCurrent)
                .with_ansi(false)
                .with_filter(LevelFilter::TRACE)
                .with_filter(capturing);
            tracing::subscriber::set_global_default(Registry::default().with(layer))
                .expect("no other global subscriber in the test binary");
        });
        let buffer = Buffer::default();
        CURRENT.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        TraceCapture { buffer }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.buffer.0.lock().expect("log buffer").clone()).expect("utf-8 logs")
    }
}

impl Drop for TraceCapture {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// A shared buffer of log text.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes to the current thread's capture; events of other threads are filtered out before.
struct ToCurrent;

/// The writer of one event: this thread's buffer, or nowhere.
struct CurrentWriter(Option<Buffer>);

impl Write for CurrentWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(b) => b.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ToCurrent {
    type Writer = CurrentWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CurrentWriter(CURRENT.with(|c| c.try_borrow().ok().and_then(|b| b.clone())))
    }
}
