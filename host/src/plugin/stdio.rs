//! Guest stdout/stderr, captured and re-emitted as `tracing` events tagged with the plugin.
//!
//! Output is buffered per call up to a cap, then emitted line by line within the plugin's output
//! allowance (see [`super::output`]); the excess is dropped (and counted) instead of failing the
//! guest's write, so a chatty plugin neither floods the log nor traps.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of output kept per stream and call.
pub const OUTPUT_CAP: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

/// One captured stream (stdout or stderr) of one store.
#[derive(Debug, Clone, Default)]
pub struct CapturedOutput {
    buffer: Arc<Mutex<Buffer>>,
}

impl CapturedOutput {
    fn append(&self, data: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_CAP.saturating_sub(buffer.bytes.len());
        let kept = room.min(data.len());
        buffer.bytes.extend_from_slice(&data[..kept]);
        buffer.dropped += data.len() - kept;
    }

    /// Emits what was written as one event per line, as far as `budget` allows (lines cut to
    /// [`super::LOG_MESSAGE_CAP`]), and clears the buffer; the rest is counted as dropped.
    pub fn flush_to_tracing(
        &self,
        plugin: &str,
        stream: &'static str,
        budget: &super::OutputBudget,
    ) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.bytes.is_empty() && buffer.dropped == 0 {
            return;
        }
        let text = String::from_utf8_lossy(&buffer.bytes);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let line = super::error::cap_line(line, super::LOG_MESSAGE_CAP);
            if budget.admit(line.len()) {
                tracing::info!(target: "gantry::guest", plugin, stream, "{line}");
            }
        }
        if buffer.dropped > 0 {
            budget.drop_event(buffer.dropped);
        }
        buffer.bytes.clear();
        buffer.dropped = 0;
    }

    /// The message of a Rust panic written to this stream in the current call, as
    /// "message (at file:line:col)", if there is one.
    pub fn panic_message(&self) -> Option<String> {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&buffer.bytes);
        let at = text.rfind("panicked at ")? + "panicked at ".len();
        let rest = &text[at..];
        let (location, message) = rest.split_once(":\n").unwrap_or((rest.trim_end(), ""));
        let message: Vec<&str> = message
            .lines()
            .take_while(|l| !l.starts_with("note: "))
            .collect();
        Some(format!("{} (at {location})", message.join(" ")))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(OUTPUT_CAP)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
