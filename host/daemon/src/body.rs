//! Request and response bodies, read and written only after the caller is known and allowed.
//!
//! Handlers take the body as an unread stream and call these once the request has been
//! authenticated (and decided, where the decision needs nothing from the body), so an
//! unauthenticated client can make the daemon read nothing but headers. Every read is bounded in
//! size (413) and in time between frames (408); uploads stream into the store and downloads out
//! of it, a bounded number of chunks in memory, whatever the object's size.

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::api::ApiError;

/// Longest wait for the next part of a body.
pub const IDLE: Duration = Duration::from_secs(30);

/// Longest time to read a small (JSON) body whole.
pub const WHOLE: Duration = Duration::from_secs(60);

/// Slowest an upload may arrive on average, once it has run for [`WHOLE`], in bytes per second:
/// a trickle holds a connection and a store write for as long as it lasts.
pub const MIN_RATE: u64 = 16 << 10;

/// Reads `body` whole, at most `limit` bytes.
pub async fn bytes(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let read = async {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = next_frame(&mut body).await? {
            if out.len() + frame.len() > limit {
                return Err(too_large(limit));
            }
            out.extend_from_slice(&frame);
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(WHOLE, read)
        .await
        .map_err(|_| timed_out())?
}

/// Reads `body` whole (at most `limit` bytes) as JSON of type `T`; a malformed body is a 400
/// naming the field, line and column.
pub async fn json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    parse_json(&bytes(body, limit).await?)
}

/// [`json`] for a `T` whose fields serde cannot hold to its own (a flattened, tagged enum
/// takes no `deny_unknown_fields`): a top-level field that `T` does not write back is refused
/// by name, as every other body's unknown fields are.
pub async fn json_exact<T: DeserializeOwned + serde::Serialize>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = bytes(body, limit).await?;
    let value: T = parse_json(&bytes)?;
    let raw: serde_json::Value = parse_json(&bytes)?;
    // What it writes back is what it knows.
    let known = serde_json::to_value(&value).unwrap_or_default();
    if let (Some(raw), Some(known)) = (raw.as_object(), known.as_object())
        && let Some(unknown) = raw.keys().find(|k| !known.contains_key(*k))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON this endpoint takes: unknown field `{unknown}`"),
        ));
    }
    Ok(value)
}

/// A body read whole ([`bytes`]) as the JSON of `T`, or a 400 saying why not.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let refused = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON this endpoint takes: {e}"),
        )
    };
    let mut json = serde_json::Deserializer::from_slice(bytes);
    // The field named: a value of the wrong type or size said only its line and column.
    let value =
        serde_path_to_error::deserialize(&mut json).map_err(|e| match e.path().to_string() {
            path if path == "." => refused(e.inner()),
            path => refused(&format!("field `{path}`: {}", e.inner())),
        })?;
    json.end().map_err(|e| refused(&e))?;
    Ok(value)
}

/// The next data frame of `body` (trailers are skipped), waiting at most [`IDLE`] for it.
async fn next_frame(body: &mut Body) -> Result<Option<Bytes>, ApiError> {
    loop {
        let frame = tokio::time::timeout(IDLE, body.frame())
            .await
            .map_err(|_| timed_out())?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body: {e}"),
                ));
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than this endpoint takes ({limit} bytes)"),
    )
}

fn timed_out() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the body did not arrive in time (at most {} s between parts, {} s for a small body)",
            IDLE.as_secs(),
            WHOLE.as_secs()
        ),
    )
}

/// Feeds `body` (at most `limit` bytes) to a blocking reader, a few frames at a time: for
/// streaming an upload into the store from a blocking thread. The reader fails (and the write
/// it feeds is abandoned) if the body is too large, too slow or broken; the error it returns
/// then is in `outcome`.
pub fn stream(
    body: Body,
    limit: usize,
) -> (BodyReader, tokio::task::JoinHandle<Result<u64, ApiError>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let feeder = tokio::spawn(async move {
        let mut body = body;
        let mut total = 0u64;
        let start = tokio::time::Instant::now();
        loop {
            let elapsed = start.elapsed();
            if elapsed > WHOLE && total < MIN_RATE * elapsed.as_secs() {
                let _ = tx
                    .send(Err(std::io::Error::other("the upload is too slow")))
                    .await;
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the upload arrives slower than {} KiB/s", MIN_RATE >> 10),
                ));
            }
            let frame = match next_frame(&mut body).await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(total),
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("the upload failed")))
                        .await;
                    return Err(e);
                }
            };
            total += frame.len() as u64;
            if total > limit as u64 {
                let _ = tx
                    .send(Err(std::io::Error::other("the upload is too large")))
                    .await;
                return Err(too_large(limit));
            }
            if tx.send(Ok(frame)).await.is_err() {
                // The writer gave up first; its error is the one that matters.
                return Ok(total);
            }
        }
    });
    (
        BodyReader {
            rx,
            current: Bytes::new(),
        },
        feeder,
    )
}

/// The blocking end of [`stream`].
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(bytes)) => self.current = bytes,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A response body fed from a blocking reader (a decrypting [`gantry::storage::ObjectReader`]),
/// one chunk at a time through a small channel: a slow client slows the reader instead of
/// making the daemon buffer the object. A read error aborts the response, so a client never
/// mistakes a corrupt object's partial bytes for the whole. So does a client that takes its
/// bytes slower than [`MIN_RATE`] once [`WHOLE`] has passed: a trickle would hold the blocking
/// thread and `guard` for as long as it lasted.
///
/// `guard` is held until the reader is done (a slot of a bounded number of transfers).
pub fn from_reader(reader: impl Read + Send + 'static, guard: impl Send + 'static) -> Body {
    from_reader_paced(reader, guard, WHOLE, MIN_RATE)
}

/// [`from_reader`], the client given `grace` before it must keep up `min_rate` bytes a second.
fn from_reader_paced(
    reader: impl Read + Send + 'static,
    guard: impl Send + 'static,
    grace: Duration,
    min_rate: u64,
) -> Body {
    const CHUNK: usize = 64 << 10;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let too_slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = too_slow.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let mut reader = reader;
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let item = match reader.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    Ok(Bytes::from(chunk))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            // By when the client must have taken what was sent before this chunk.
            let due = start + grace.max(Duration::from_secs_f64(sent as f64 / min_rate as f64));
            sent += item.as_ref().map_or(0, |b| b.len() as u64);
            match runtime.block_on(tokio::time::timeout_at(due, tx.send(item))) {
                Ok(Ok(())) if !failed => {}
                Ok(_) => return,
                Err(_) => {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
        }
    });
    Body::new(ChannelBody { rx, too_slow })
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    /// The feeder gave up on a client too slow: the body ends in an error, not as if whole.
    too_slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let too_slow = self.too_slow.clone();
        self.rx.poll_recv(cx).map(|item| match item {
            Some(r) => Some(r.map(http_body::Frame::data)),
            None if too_slow.load(std::sync::atomic::Ordering::SeqCst) => {
                Some(Err(std::io::Error::other(format!(
                    "the client takes the response slower than {} KiB/s",
                    MIN_RATE >> 10
                ))))
            }
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: a node's run report took any unknown field (`"junk": 1`), where every
    /// other body refuses them: its tagged event is flattened, which serde cannot hold to its
    /// fields. A field the report does not know is refused by name.
    #[test]
    fn a_run_report_with_a_field_it_does_not_know_is_refused_by_name() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let parse = |text: &str| {
            let body = Body::from(text.to_string());
            runtime.block_on(json_exact::<crate::nodes::RunReport>(body, 1 << 16))
        };
        let ok = r#"{"job": "vision/a", "attempt": 3, "event": "log", "entry": "hi"}"#;
        assert!(parse(ok).is_ok());
        let ended = r#"{"job": "vision/a", "attempt": 3, "event": "ended", "outcome": "failed", "reason": "x"}"#;
        assert!(parse(ended).is_ok());
        let junk = r#"{"job": "vision/a", "attempt": 3, "event": "log", "entry": "hi", "junk": 1}"#;
        let e = format!("{:?}", parse(junk).unwrap_err());
        assert!(
            e.contains("400") && e.contains("unknown field `junk`"),
            "{e}"
        );
    }

    /// Found by a review: a download's feeder waited on its client without end (a write may
    /// stall 30 s, and a client taking a byte every 29 s never stalls that long), so a few slow
    /// readers held every transfer slot and blocking thread. A client slower than the floor
    /// once the grace is over gets its slot back from it, and a body that ends in an error,
    /// never one that looks whole.
    #[test]
    fn a_download_taken_slower_than_the_floor_gives_back_its_slot_and_fails() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let (slot, given_back) = tokio::sync::oneshot::channel::<()>();
            let object = std::io::Cursor::new(vec![7u8; 4 << 20]);
            let mut body = from_reader_paced(object, slot, Duration::from_millis(200), 1 << 20);
            let first = body.frame().await.unwrap().unwrap();
            assert!(first.is_data());
            // Then nothing taken for a second: the feeder gives up and drops the slot.
            tokio::time::timeout(Duration::from_secs(10), given_back)
                .await
                .expect("the slot is given back")
                .expect_err("dropped, not used");
            let mut error = None;
            while let Some(frame) = body.frame().await {
                if let Err(e) = frame {
                    error = Some(e.to_string());
                    break;
                }
            }
            let error = error.expect("the body ends in an error");
            assert!(error.contains("slower than"), "{error}");
        });
        // A client that keeps up gets the whole.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let object = std::io::Cursor::new(vec![7u8; 1 << 20]);
            let body = from_reader_paced(object, (), Duration::from_millis(200), 1 << 20);
            let whole = body.collect().await.expect("whole").to_bytes();
            assert_eq!(whole.len(), 1 << 20);
        });
    }
}
