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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

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

/// The connections open, in all and per source, and which of them are idle (no request in
/// progress: before the first request's headers, between kept-alive requests, in a TLS
/// handshake or lingering at close).
///
/// Only a connection in a request holds its slot against newcomers. At a cap, a new connection
/// takes the slot of the connection of that source (or, at the cap in all, of any source) idle
/// for longest, and is refused only when none is idle. Found by a review: a command job on a
/// node opened 256 connections from loopback and sent nothing; this machine's agent, from the
/// same address, was refused its heartbeats and the node left service. Holding a slot now
/// costs a client a request in progress, and bodies are read only after authentication
/// ([`super::body`]), so an unauthenticated client holds nothing another needs.
struct Slots {
    max_connections: usize,
    max_per_source: usize,
    max_handshakes: usize,
    state: Mutex<SlotState>,
    /// Hears of a handshake ended to make room for another (connections at a cap are told
    /// through [`Slots::take`]'s own).
    at_cap: Arc<dyn Fn(AtCap) + Send + Sync>,
}

#[derive(Default)]
struct SlotState {
    /// Connection ids and idle stamps, from one counter: a smaller stamp is idle for longer.
    next: u64,
    open: HashMap<u64, Open>,
    per_source: HashMap<IpAddr, Source>,
    /// Idle connections by the stamp of when they went idle, longest idle first.
    idle: BTreeMap<u64, u64>,
    /// Connections in a TLS handshake by when it began, oldest first.
    handshakes: BTreeMap<u64, u64>,
}

/// One source's connections: how many, and its idle ones as [`SlotState::idle`] has them (a
/// newcomer at the source's cap finds the longest idle one without a walk past every other
/// source's).
#[derive(Default)]
struct Source {
    open: usize,
    idle: BTreeMap<u64, u64>,
}

struct Open {
    source: IpAddr,
    /// Requests in progress (more than one while a response kept until written is flushed
    /// after the next request, pipelined, began).
    busy: u32,
    idle_since: Option<u64>,
    handshake_since: Option<u64>,
    evict: Arc<Notify>,
}

/// What happened to a connection at a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtCap {
    /// It was closed at once: every connection in its way was in a request.
    Refused,
    /// It took the slot of an idle connection, which was closed.
    Evicted,
}

impl SlotState {
    /// Closes `id`'s connection (its task is told through its `evict`) and frees its slot.
    fn evict(&mut self, id: u64) {
        if let Some(open) = self.forget(id) {
            open.evict.notify_one();
        }
    }

    /// Drops `id` from the tables, freeing its slot.
    fn forget(&mut self, id: u64) -> Option<Open> {
        self.mark_busy(id);
        let open = self.open.remove(&id)?;
        if let Some(stamp) = open.handshake_since {
            self.handshakes.remove(&stamp);
        }
        if let Some(entry) = self.per_source.get_mut(&open.source) {
            entry.open -= 1;
            if entry.open == 0 {
                self.per_source.remove(&open.source);
            }
        }
        Some(open)
    }

    /// The connection idle for longest, of `source` when given.
    fn longest_idle(&self, source: Option<IpAddr>) -> Option<u64> {
        match source {
            Some(s) => self.per_source.get(&s)?.idle.values().next().copied(),
            None => self.idle.values().next().copied(),
        }
    }

    /// Ends one of `id`'s requests; idle from now when none is left (unless it is already).
    fn mark_idle(&mut self, id: u64) {
        let stamp = self.stamp();
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        open.busy = open.busy.saturating_sub(1);
        if open.busy > 0 || open.idle_since.is_some() {
            return;
        }
        open.idle_since = Some(stamp);
        self.idle.insert(stamp, id);
        if let Some(entry) = self.per_source.get_mut(&open.source) {
            entry.idle.insert(stamp, id);
        }
    }

    /// Marks `id` in one more request.
    fn mark_busy(&mut self, id: u64) {
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        open.busy += 1;
        if let Some(stamp) = open.idle_since.take() {
            self.idle.remove(&stamp);
            if let Some(entry) = self.per_source.get_mut(&open.source) {
                entry.idle.remove(&stamp);
            }
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

impl Slots {
    fn new(limits: &ConnLimits) -> Arc<Self> {
        Arc::new(Self {
            max_connections: limits.max_connections,
            max_per_source: limits.max_connections_per_source,
            max_handshakes: limits.max_tls_handshakes.max(1),
            state: Mutex::default(),
            at_cap: Arc::new(|_| {}),
        })
    }

    /// [`Slots::new`], telling `at_cap` of the handshakes ended at their bound.
    fn hearing(limits: &ConnLimits, at_cap: Arc<dyn Fn(AtCap) + Send + Sync>) -> Arc<Self> {
        let mut slots = Self::new(limits);
        if let Some(s) = Arc::get_mut(&mut slots) {
            s.at_cap = at_cap;
        }
        slots
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `ip` (idle until its first request), taking an idle
    /// connection's where a cap is reached; `None` when refused. `at_cap` hears of either.
    fn take(self: &Arc<Self>, ip: IpAddr, at_cap: &dyn Fn(AtCap)) -> Option<Slot> {
        let source = source_of(ip);
        let mut state = self.lock();
        if state.per_source.get(&source).map_or(0, |s| s.open) >= self.max_per_source {
            let Some(victim) = state.longest_idle(Some(source)) else {
                at_cap(AtCap::Refused);
                return None;
            };
            state.evict(victim);
            at_cap(AtCap::Evicted);
        }
        if state.open.len() >= self.max_connections {
            let Some(victim) = state.longest_idle(None) else {
                at_cap(AtCap::Refused);
                return None;
            };
            state.evict(victim);
            at_cap(AtCap::Evicted);
        }
        let id = state.stamp();
        let evict = Arc::new(Notify::new());
        state.open.insert(
            id,
            Open {
                source,
                busy: 0,
                idle_since: None,
                handshake_since: None,
                evict: evict.clone(),
            },
        );
        state.per_source.entry(source).or_default().open += 1;
        state.mark_idle(id);
        Some(Slot {
            slots: self.clone(),
            id,
            evict,
        })
    }

    /// Connections open.
    fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// One connection's slot; freed when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Told when the connection is to close to make room for another.
    evict: Arc<Notify>,
}

impl Slot {
    /// A handle the connection's requests mark it busy through.
    fn handle(&self) -> SlotHandle {
        SlotHandle {
            slots: self.slots.clone(),
            id: self.id,
        }
    }
}

#[cfg(test)]
impl Slot {
    fn handshake_for_test(&self) -> Handshaking {
        self.handle().handshake()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().forget(self.id);
    }
}

#[derive(Clone)]
struct SlotHandle {
    slots: Arc<Slots>,
    id: u64,
}

impl SlotHandle {
    /// Marks the connection in a request (not to be evicted) until the guard is dropped.
    fn busy(&self) -> Busy {
        self.slots.lock().mark_busy(self.id);
        Busy(self.clone())
    }
}

/// A TLS handshake in progress on a connection; its place freed when dropped.
struct Handshaking(SlotHandle);

impl SlotHandle {
    /// A place among the TLS handshakes in flight. At their bound, the oldest handshake of the
    /// source with the most in flight is ended (found by a review: 64 connections that sent
    /// nothing held every place, and no client of any source could complete a handshake).
    fn handshake(&self) -> Handshaking {
        let mut state = self.slots.lock();
        if state.handshakes.len() >= self.slots.max_handshakes {
            // Per source: how many in flight, and its oldest (the map is oldest first, so a
            // source's first seen is its oldest).
            let mut by_source: HashMap<IpAddr, (usize, u64, u64)> = HashMap::new();
            for (stamp, id) in &state.handshakes {
                if let Some(open) = state.open.get(id) {
                    let entry = by_source.entry(open.source).or_insert((0, *stamp, *id));
                    entry.0 += 1;
                }
            }
            // The most in flight; among sources tied, the one whose oldest is oldest (found
            // by a review: a tie, as an attacker spread over many addresses makes, picked a
            // source at random).
            let victim = by_source
                .into_values()
                .min_by_key(|&(n, oldest, _)| (core::cmp::Reverse(n), oldest))
                .map(|(_, _, id)| id);
            if let Some(victim) = victim {
                state.evict(victim);
                (self.slots.at_cap)(AtCap::Evicted);
            }
        }
        let stamp = state.stamp();
        if let Some(open) = state.open.get_mut(&self.id) {
            open.handshake_since = Some(stamp);
            state.handshakes.insert(stamp, self.id);
        }
        Handshaking(self.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut state = self.0.slots.lock();
        if let Some(stamp) = state
            .open
            .get_mut(&self.0.id)
            .and_then(|o| o.handshake_since.take())
        {
            state.handshakes.remove(&stamp);
        }
    }
}

/// A request in progress on a connection: from its headers until its response is written
/// (the guard travels with the response body).
struct Busy(SlotHandle);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.slots.lock().mark_idle(self.0.id);
    }
}

/// The source a connection from `ip` counts against: an IPv4 address (one mapped into IPv6
/// too), or an IPv6 address's /64, which one host is routinely given whole: counted one
/// address each, one host had 2^64 sources, each with a whole share of the connections. Every
/// loopback address is this host's, one source (127.0.0.2 was a second share for any local
/// process that bound it).
fn source_of(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        _ if ip.is_loopback() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !u128::from(u64::MAX),
        )),
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
/// completes; then lets requests in flight finish for up to `limits.drain_timeout`. `at_cap`
/// hears of each connection refused at a cap, or let in in an idle one's place.
pub async fn serve(
    listener: &TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnLimits,
    at_cap: impl Fn(AtCap) + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let at_cap: Arc<dyn Fn(AtCap) + Send + Sync> = Arc::new(at_cap);
    let slots = Slots::hearing(&limits, at_cap.clone());
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
        let Some(slot) = slots.take(peer.ip(), &*at_cap) else {
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            app: app.clone(),
            peer,
            limits: limits.clone(),
            stop: stop_rx.clone(),
            cert: None,
            slot: slot.handle(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let serving = async move {
                match tls {
                    None => conn.run(stream).await,
                    Some(acceptor) => {
                        let Some(stream) = handshake(&acceptor, stream, &conn).await else {
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
            };
            tokio::select! {
                () = serving => {}
                () = slot.evict.notified() => {
                    tracing::debug!(%peer, "idle connection closed for a new one at a cap");
                }
            }
            drop(slot);
        });
    }
    let _ = stop_tx.send(true);
    // Wait for the connections to drain (each holds its slot until it ends).
    let deadline = tokio::time::Instant::now() + limits.drain_timeout + Duration::from_secs(1);
    while slots.open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS handshake, bounded in time and in how many run at once (the oldest of the source with
/// most in flight ends at the bound); `None` when failed or timed out.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    conn: &Connection,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _place = conn.slot.handshake();
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
    slot: SlotHandle,
}

impl Connection {
    async fn run<Io>(mut self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let app = self.app.clone();
        let cert = self.cert.clone();
        let slot = self.slot.clone();
        let written = Written::default();
        let on_flush = written.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            let busy = slot.busy();
            let written = written.clone();
            request.extensions_mut().insert(Peer(peer));
            if let Some(cert) = &cert {
                request.extensions_mut().insert(cert.clone());
            }
            let mut app = app.clone();
            // Boxed, so that the connection is Unpin and can be taken apart when it is done.
            Box::pin(async move {
                let request = request.map(axum::body::Body::new);
                let response = tower_service::Service::call(&mut app, request).await;
                // Busy until the response body is handed over whole (and dropped), or, for a
                // response the app asks to keep ([`UntilWritten`]), until it is flushed too.
                response.map(|mut r| {
                    let keep = r.extensions_mut().remove::<UntilWritten>();
                    let held = Handover {
                        written,
                        busy: Some(busy),
                        keep,
                    };
                    r.map(|body| {
                        axum::body::Body::new(http_body_util::BodyExt::map_err(body, move |e| {
                            // The closure owns the handover: its drop is the signal.
                            let _held = &held;
                            e
                        }))
                    })
                })
            })
        });
        let mut io = StallGuard::new(io, self.limits.write_stall_timeout);
        io.written = Some(on_flush);
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

/// A response extension: what it holds is kept until the response is written out (flushed to
/// the kernel), and the connection counts as in a request until then. Found by a review: a
/// connection counted idle once hyper had the body's last chunk in its buffer, and a flood of
/// new connections evicted it with up to 400 KB of a download unsent. For successful answers
/// to authenticated requests ([`crate::api`]'s bound on a token's requests in progress holds
/// the token's count here too); an unauthenticated client that stops reading stays evictable.
pub struct UntilWritten(pub Box<dyn std::any::Any + Send + Sync>);

impl Clone for UntilWritten {
    fn clone(&self) -> Self {
        // Extensions must be cloneable; a clone holds nothing (only the original is kept).
        UntilWritten(Box::new(()))
    }
}

/// A response's hold on its connection (and on what the app asked to keep), moved here when
/// its body is handed over whole; let go at the next completed flush (or with the connection).
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<Kept>>>);

/// A response's hold kept until the next completed flush: its connection's busy mark and what
/// the app asked to keep.
struct Kept {
    _busy: Busy,
    _what: UntilWritten,
}

impl Written {
    fn release(&self) {
        let held = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        drop(held);
    }
}

/// Carried by a response body: when the body goes (handed over whole, or dropped), a response
/// to keep moves its hold into [`Written`]; any other lets go at once.
struct Handover {
    written: Written,
    busy: Option<Busy>,
    keep: Option<UntilWritten>,
}

impl Drop for Handover {
    fn drop(&mut self) {
        if let (Some(busy), Some(what)) = (self.busy.take(), self.keep.take()) {
            let kept = Kept {
                _busy: busy,
                _what: what,
            };
            self.written
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(kept);
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
    /// What a response kept until written holds, let go at the next completed flush.
    written: Option<Written>,
}

impl<Io> StallGuard<Io> {
    fn new(io: Io, limit: Duration) -> Self {
        Self {
            io,
            limit,
            stalled: None,
            written: None,
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
                // Everything hyper buffered is with the kernel now.
                if let (Poll::Ready(Ok(())), Some(written)) = (&ready, &self.written) {
                    written.release();
                }
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

    fn limits(max_connections: usize, per_source: usize) -> ConnLimits {
        ConnLimits {
            max_connections,
            max_connections_per_source: per_source,
            ..ConnLimits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Found by a review: connections were counted per address, and one IPv6 host has a /64 of
    /// them: each address a whole share, so a few hosts took every connection. A /64 is one
    /// source; an IPv4 address mapped into IPv6 is that IPv4 address; every loopback address is
    /// one source.
    #[test]
    fn an_ipv6_hosts_addresses_are_one_source() {
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        for local in ["127.0.0.2", "127.9.8.7", "::1", "::ffff:127.0.0.5"] {
            assert_eq!(source_of(ip(local)), ip("127.0.0.1"), "{local}");
        }
        let slots = Slots::new(&limits(16, 2));
        let busy = |s: &Slot| std::mem::forget(s.handle().busy());
        let a = slots.take(ip("2001:db8:1:2::1"), &|_| {}).unwrap();
        let b = slots.take(ip("2001:db8:1:2:ffff::9"), &|_| {}).unwrap();
        busy(&a);
        busy(&b);
        assert!(slots.take(ip("2001:db8:1:2::77"), &|_| {}).is_none());
        let other = slots
            .take(ip("2001:db8:1:3::1"), &|_| {})
            .expect("another /64");
        drop((a, b, other));
        assert_eq!(slots.open(), 0);
        assert!(slots.lock().per_source.is_empty() && slots.lock().idle.is_empty());
    }

    /// Found by a review: a command job opened 256 connections from loopback and sent nothing;
    /// this machine's agent, from the same address, was refused its heartbeats and the node
    /// left service. At a source's cap a newcomer takes the place of that source's connection
    /// idle for longest; one in a request keeps its slot, and only when all are in requests
    /// is the newcomer refused.
    #[test]
    fn at_a_sources_cap_a_new_connection_takes_the_longest_idle_ones_place() {
        let slots = Slots::new(&limits(16, 3));
        let heard = Mutex::new(Vec::new());
        let at_cap = |what| heard.lock().unwrap().push(what);
        let first = slots.take(ip("127.0.0.1"), &at_cap).unwrap();
        let second = slots.take(ip("127.0.0.2"), &at_cap).unwrap();
        let third = slots.take(ip("127.0.0.1"), &at_cap).unwrap();
        let in_request = first.handle().busy();
        // The fourth takes the second's place: the first is in a request.
        let fourth = slots.take(ip("127.0.0.1"), &at_cap).unwrap();
        assert!(
            futures_ready(second.evict.notified()),
            "the second is told to close"
        );
        assert!(!futures_ready(first.evict.notified()));
        assert_eq!(slots.open(), 3);
        // A request ended makes the first idle again, now the most recent idle one.
        drop(in_request);
        let _fifth = slots.take(ip("127.0.0.1"), &at_cap).unwrap();
        assert!(
            futures_ready(third.evict.notified()),
            "the third was idle longest"
        );
        // All in requests: refused.
        let _held: Vec<_> = [&first, &fourth, &_fifth]
            .iter()
            .map(|s| s.handle().busy())
            .collect();
        assert!(slots.take(ip("127.0.0.1"), &at_cap).is_none());
        assert_eq!(
            *heard.lock().unwrap(),
            [AtCap::Evicted, AtCap::Evicted, AtCap::Refused]
        );
        // Another source is not in the way.
        assert!(slots.take(ip("192.0.2.1"), &at_cap).is_some());
        drop((second, third));
        assert_eq!(slots.open(), 3);
    }

    /// Found by reading (the second review): a connection was idle as soon as one request's
    /// response was written, though a pipelined request after it was still in progress. It is
    /// idle when its last request ends.
    #[test]
    fn a_connection_is_idle_only_when_its_last_request_in_progress_ends() {
        let slots = Slots::new(&limits(16, 16));
        let a = slots.take(ip("192.0.2.1"), &|_| {}).unwrap();
        let (first, second) = (a.handle().busy(), a.handle().busy());
        assert!(slots.lock().idle.is_empty());
        drop(first);
        assert!(
            slots.lock().idle.is_empty(),
            "a request is still in progress"
        );
        drop(second);
        assert_eq!(slots.lock().idle.len(), 1);
        drop(a);
        assert!(slots.lock().idle.is_empty() && slots.lock().per_source.is_empty());
    }

    /// At the cap in all, the connection idle for longest of any source makes room.
    #[test]
    fn at_the_cap_in_all_the_longest_idle_connection_of_any_source_makes_room() {
        let slots = Slots::new(&limits(2, 2));
        let a = slots.take(ip("192.0.2.1"), &|_| {}).unwrap();
        let b = slots.take(ip("192.0.2.2"), &|_| {}).unwrap();
        let _busy = b.handle().busy();
        let c = slots.take(ip("192.0.2.3"), &|_| {}).unwrap();
        assert!(futures_ready(a.evict.notified()));
        let _busy_c = c.handle().busy();
        assert!(slots.take(ip("192.0.2.4"), &|_| {}).is_none());
        drop(a);
        assert_eq!(slots.open(), 2);
    }

    /// Found by a review: 64 connections that sent nothing held every TLS handshake place and no
    /// client could complete one. At the bound, the oldest handshake of the source with most
    /// in flight ends; a handshake over gives its place back.
    #[test]
    fn at_the_bound_on_handshakes_the_oldest_of_the_busiest_source_ends() {
        let slots = Slots::new(&ConnLimits {
            max_tls_handshakes: 2,
            ..limits(16, 16)
        });
        let a = slots.take(ip("192.0.2.1"), &|_| {}).unwrap();
        let b = slots.take(ip("192.0.2.1"), &|_| {}).unwrap();
        let c = slots.take(ip("198.51.100.1"), &|_| {}).unwrap();
        let (_ha, _hb) = (a.handshake_for_test(), b.handshake_for_test());
        let hc = c.handshake_for_test();
        assert!(
            futures_ready(a.evict.notified()),
            "the oldest of the busiest source ends"
        );
        assert!(!futures_ready(b.evict.notified()) && !futures_ready(c.evict.notified()));
        drop(hc);
        let d = slots.take(ip("198.51.100.2"), &|_| {}).unwrap();
        let _hd = d.handshake_for_test();
        assert!(!futures_ready(b.evict.notified()), "a place was free");
        assert_eq!(slots.lock().handshakes.len(), 2);
    }

    /// Found by the review of that: with every source at one handshake (an attacker spread over
    /// many addresses), the one ended was any source's. Among tied sources the oldest
    /// handshake ends, and the end is counted.
    #[test]
    fn among_sources_tied_at_the_handshake_bound_the_oldest_ends_and_is_counted() {
        let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = ended.clone();
        let slots = Slots::hearing(
            &ConnLimits {
                max_tls_handshakes: 3,
                ..limits(16, 16)
            },
            Arc::new(move |what| {
                assert_eq!(what, AtCap::Evicted);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        let conns: Vec<Slot> = (1..=4)
            .map(|i| {
                slots
                    .take(ip(&format!("2001:db8:{i}::1")), &|_| {})
                    .unwrap()
            })
            .collect();
        let _held: Vec<Handshaking> = conns.iter().map(Slot::handshake_for_test).collect();
        assert!(futures_ready(conns[0].evict.notified()), "the oldest ends");
        for c in &conns[1..] {
            assert!(!futures_ready(c.evict.notified()));
        }
        assert_eq!(ended.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Found by a review: a connection counted idle once hyper had the last of a download's
    /// body in its buffer, and a flood of new connections evicted it with much of the download
    /// unsent. A response kept until written ([`UntilWritten`]) keeps its connection in a request
    /// until it is flushed: a slow reader gets all of it through a flood at the source's cap.
    #[tokio::test]
    async fn a_download_kept_until_written_is_not_cut_by_a_flood_of_new_connections() {
        const SIZE: usize = 16 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                let mut response =
                    axum::response::Response::new(axum::body::Body::from(vec![7u8; SIZE]));
                response.extensions_mut().insert(UntilWritten(Box::new(())));
                response
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(&listener, None, app, limits(64, 4), |_| {}, async {
                let _ = stopped.await;
            })
            .await
        });
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket.connect(to).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut flood = Vec::new();
        for _ in 0..30 {
            flood.push(tokio::net::TcpStream::connect(to).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut got))
            .await
            .expect("read in time")
            .expect("read");
        let body = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |at| got.len() - at - 4);
        assert_eq!(body, SIZE, "the download was cut");
        let _ = stop.send(());
        drop(flood);
        server.await.unwrap();
    }

    /// Whether `f` is ready at its first poll.
    fn futures_ready<F: Future>(f: F) -> bool {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        f.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }

    /// The review's attack end to end on a served router: the source's every slot held by
    /// connections that send nothing, a client with a request is answered.
    #[tokio::test]
    async fn a_slowloris_at_its_sources_cap_does_not_keep_a_client_with_a_request_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "up" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(&listener, None, app, limits(64, 8), |_| {}, async {
                let _ = stopped.await;
            })
            .await
        });
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(tokio::net::TcpStream::connect(to).await.unwrap());
        }
        for _ in 0..3 {
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut c = tokio::net::TcpStream::connect(to).await?;
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut answer = String::new();
                c.read_to_string(&mut answer).await?;
                std::io::Result::Ok(answer)
            })
            .await
            .expect("answered in time");
            let answer = answer.expect("answered through the slowloris");
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("up"),
                "{answer}"
            );
            held.push(tokio::net::TcpStream::connect(to).await.unwrap());
        }
        let _ = stop.send(());
        drop(held);
        server.await.unwrap();
    }
}
