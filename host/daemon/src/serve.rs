//! The daemon's connection handling: what a slow or hostile client can hold, and for how long.
//!
//! A client can hold connections without finishing a request (slowloris), start TLS handshakes
//! it never completes, trickle a body, or stop reading a response. Each is bounded here, as
//! nginx and Envoy bound them: a cap on connections in all and per source address, so one source
//! cannot take every slot; a bound on TLS handshakes in flight and on each one's time; a header
//! timeout that also ends idle keep-alive connections; a bound on how long one write may stall.
//! Bodies are bounded (size and time) where they are read ([`super::body`]). The descriptor limit
//! is raised to its hard limit at start and the connection cap kept below it, so accepting never
//! fails for lack of descriptors while health checks wait.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// What connections may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    /// Connections open at once, in all (kept below the descriptor limit).
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_connections_per_source: usize,
    /// Time to send a request's headers, and to start the next request on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// TLS handshakes in flight at once.
    pub max_tls_handshakes: usize,
    /// Time to complete a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest a single write of a response may stall (a client that stopped reading).
    pub write_stall_timeout: Duration,
    /// At shutdown, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_connections_per_source: 256,
            header_timeout: Duration::from_secs(10),
            max_tls_handshakes: 64,
            tls_handshake_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Raises this process's descriptor limit to its hard limit and returns the number of
/// descriptors it may use.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

impl ConnLimits {
    /// These limits with the connection cap lowered to fit `descriptors` (the daemon keeps
    /// some for its files, database, audit log and training threads).
    pub fn fitted(mut self, descriptors: u64) -> Self {
        let room = descriptors.saturating_sub(128).max(16) as usize;
        if self.max_connections > room {
            tracing::warn!(
                wanted = self.max_connections,
                descriptors,
                "the connection cap is lowered to fit the descriptor limit"
            );
            self.max_connections = room;
        }
        self.max_connections_per_source = self
            .max_connections_per_source
            .min(self.max_connections)
            .max(1);
        self
    }
}

/// Open connections per source address.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted against its source; uncounted when dropped.
struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

/// The source a connection from `ip` counts against: an IPv4 address (one mapped into IPv6
/// too), or an IPv6 address's /64, which one host is routinely given whole: counted one
/// address each, one host had 2^64 sources, each with a whole share of the connections.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

impl PerSource {
    fn take(table: &Arc<PerSource>, ip: IpAddr, limit: usize) -> Option<SourceSlot> {
        let ip = source_of(ip);
        let mut map = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The peer's address, in every request's extensions (for the audit of refusals).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The certificate a TLS client presented, verified against the daemon's client CA (`gantry up
/// --client-ca`), DER: in the extensions of every request of that connection.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Arc<Vec<u8>>);

/// Serves `app` on `listener` (through `tls` when given) under `limits`, until `shutdown`
/// completes; then lets requests in flight finish for up to `limits.drain_timeout`. `refused`
/// counts each connection turned away at a cap.
pub async fn serve(
    listener: &TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnLimits,
    refused: impl Fn(),
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(Semaphore::new(limits.max_tls_handshakes));
    let sources = Arc::new(PerSource::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or memory, or a connection reset before accept:
                    // back off a little instead of spinning, then go on.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refused();
            continue; // dropping the stream closes it
        };
        let Some(slot) = PerSource::take(&sources, peer.ip(), limits.max_connections_per_source)
        else {
            refused();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            app: app.clone(),
            peer,
            limits: limits.clone(),
            stop: stop_rx.clone(),
            cert: None,
        };
        let (tls, handshakes) = (tls.clone(), handshakes.clone());
        tokio::spawn(async move {
            let _held = (permit, slot);
            match tls {
                None => conn.run(stream).await,
                Some(acceptor) => {
                    let Some(stream) = handshake(&acceptor, stream, &handshakes, &conn).await
                    else {
                        return;
                    };
                    conn.cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|c| PeerCert(Arc::new(c.as_ref().to_vec())));
                    conn.run(stream).await
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    // Wait for the connections to drain (each holds a permit until it ends).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        limits.drain_timeout + Duration::from_secs(1),
        connections.acquire_many(all),
    )
    .await;
}

/// A TLS handshake, bounded in time and in how many run at once; `None` when refused, failed
/// or timed out.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    handshakes: &Semaphore,
    conn: &Connection,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let Ok(_permit) = handshakes.try_acquire() else {
        tracing::debug!(peer = %conn.peer, "TLS handshake refused: too many in flight");
        return None;
    };
    match tokio::time::timeout(conn.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            None
        }
    }
}

/// One accepted connection.
struct Connection {
    app: axum::Router,
    peer: SocketAddr,
    limits: Arc<ConnLimits>,
    stop: watch::Receiver<bool>,
    /// The client's certificate, where it presented one the client CA verified.
    cert: Option<PeerCert>,
}

impl Connection {
    async fn run<Io>(mut self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let app = self.app.clone();
        let cert = self.cert.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(Peer(peer));
            if let Some(cert) = &cert {
                request.extensions_mut().insert(cert.clone());
            }
            let mut app = app.clone();
            // Boxed, so that the connection is Unpin and can be taken apart when it is done.
            Box::pin(async move {
                let request = request.map(axum::body::Body::new);
                tower_service::Service::call(&mut app, request).await
            })
        });
        let io = StallGuard::new(io, self.limits.write_stall_timeout);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .keep_alive(true);
        let mut conn = builder.serve_connection(TokioIo::new(io), service);
        let ended = tokio::select! {
            result = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => Some(result),
            _ = self.stop.wait_for(|stop| *stop) => None,
        };
        match ended {
            Some(Ok(())) => return linger(conn.into_parts().io.into_inner()).await,
            Some(Err(e)) => return tracing::debug!(%peer, error = %e, "connection ended"),
            None => {}
        }
        std::pin::Pin::new(&mut conn).graceful_shutdown();
        let _ = tokio::time::timeout(self.limits.drain_timeout, conn).await;
    }
}

/// How long a closing connection may go on discarding what its client sends ([`linger`]).
const LINGER_TOTAL: Duration = Duration::from_secs(10);

/// How long a closing connection waits for more of what its client sends ([`linger`]).
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// Closes a connection that hyper is done with the way nginx's lingering close does: the write
/// half first (the answer is complete), then whatever the client still sends is read and
/// discarded until it stops, for at most [`LINGER_TOTAL`]. Without it, a refusal decided on
/// the headers (no token, no permission, too large) left the unread body in the socket, the
/// kernel answered the client with a reset, and a client still sending the body never read
/// the refusal. Discarding costs no memory; the connection keeps its slot meanwhile.
async fn linger<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if io.shutdown().await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    let mut sink = vec![0u8; 16 << 10];
    loop {
        let until = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(until, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// An I/O stream whose writes may not stall for longer than a limit: a client that stops
/// reading a response loses its connection instead of holding it (and whatever produces the
/// response) for ever.
struct StallGuard<Io> {
    io: Io,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<Io> StallGuard<Io> {
    fn new(io: Io, limit: Duration) -> Self {
        Self {
            io,
            limit,
            stalled: None,
        }
    }

    /// After a write that made no progress: an error once it has stalled too long.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for StallGuard<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for StallGuard<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.check(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.check(cx).map_ok(|_| ()),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: connections were counted per address, and one IPv6 host has a /64 of
    /// them: each address a whole share, so a few hosts took every connection. A /64 is one
    /// source; an IPv4 address mapped into IPv6 is that IPv4 address.
    #[test]
    fn an_ipv6_hosts_addresses_are_one_source() {
        let table = Arc::new(PerSource::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = PerSource::take(&table, ip("2001:db8:1:2::1"), 2).unwrap();
        let b = PerSource::take(&table, ip("2001:db8:1:2:ffff::9"), 2).unwrap();
        assert!(PerSource::take(&table, ip("2001:db8:1:2::77"), 2).is_none());
        let other = PerSource::take(&table, ip("2001:db8:1:3::1"), 2).expect("another /64");
        let v4 = PerSource::take(&table, ip("192.0.2.7"), 1).unwrap();
        assert!(PerSource::take(&table, ip("::ffff:192.0.2.7"), 1).is_none());
        drop((a, b, other, v4));
        assert!(table.0.lock().unwrap().is_empty());
    }
}
