//! `gantry bench attack`: what hostile clients cost a real `gantry up` on loopback. The daemon
//! runs as a child process (this binary, on a throwaway data directory) so its memory is its
//! own; the attacks are bounded in time:
//!
//! - a slowloris: `connections` from another loopback address (127.0.0.2), each sending half a
//!   request line and nothing more, while one client asks `/v1/health` every 100 ms;
//! - unauthenticated large bodies: 8 uploads of 60 MiB each without a token, and the daemon's
//!   peak resident memory before and after;
//! - a junk flood: `junk` requests with a wrong token, and what they add to the audit log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::api::{Latency, latency};

/// Sizes of the attacks.
#[derive(Debug, Clone)]
pub struct AttackParams {
    /// Slow connections held open at once.
    pub connections: usize,
    /// Seconds the slowloris lasts.
    pub seconds: f64,
    /// Requests of the junk flood.
    pub junk: usize,
    /// The `gantry` binary whose daemon is attacked (`None`: this one); another build's, to
    /// compare side by side.
    pub daemon: Option<std::path::PathBuf>,
}

impl Default for AttackParams {
    fn default() -> Self {
        Self {
            connections: 1000,
            seconds: 10.0,
            junk: 2000,
            daemon: None,
        }
    }
}

/// What `gantry bench attack --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// Slow connections opened (over the per-source cap, each closes the longest idle one).
    pub slow_connections: usize,
    /// `/v1/health` during the slowloris.
    pub health_under_slowloris: Latency,
    /// Health checks that failed or took over 3 s during it.
    pub health_failures: usize,
    /// Unauthenticated uploads sent, and their size each (MiB).
    pub unauthenticated_uploads: usize,
    /// Size of each, MiB.
    pub upload_mib: usize,
    /// How many were answered 401 before their body was read.
    pub refused_before_body: usize,
    /// The daemon's peak resident memory before and after them, MiB.
    pub peak_rss_before_mib: f64,
    /// After.
    pub peak_rss_after_mib: f64,
    /// Junk requests (a wrong token) sent.
    pub junk_requests: usize,
    /// Audit entries they added (after a clean stop).
    pub junk_audit_entries: usize,
    /// Bytes they added to the audit log.
    pub junk_audit_bytes: u64,
}

/// A daemon in a child process; killed when dropped.
struct DaemonProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Runs the attacks; `cache_dir` is where compiled plugins are cached.
pub fn run(
    params: AttackParams,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<AttackReport> {
    super::in_scratch_dir("attack", |dir| run_in(dir, params, cache_dir))
}

fn run_in(
    dir: &std::path::Path,
    params: AttackParams,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<AttackReport> {
    gantry::storage::Store::init(dir)?;
    let mut daemon = start(dir, params.daemon.as_deref(), cache_dir.as_deref())?;
    let url = format!("http://{}", daemon.addr);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .new_agent();
    // Warm up: the policy compiled, the first requests served.
    let _ = agent.get(&format!("{url}/v1/health")).call();

    let (slow_connections, health, health_failures) =
        slowloris(&agent, &url, daemon.addr, &params)?;

    let pid = daemon.child.id();
    let before = peak_rss_mib(pid);
    let (uploads, mib) = (8, 60);
    let refused = unauthenticated_uploads(daemon.addr, uploads, mib);
    let after = peak_rss_mib(pid);

    let log = dir.join("audit.log");
    let log_before = std::fs::read_to_string(&log).unwrap_or_default();
    for i in 0..params.junk {
        let _ = agent
            .get(&format!("{url}/v1/jobs/junk-{i}"))
            .header("Authorization", "Bearer gantry_0000_junk")
            .call();
    }
    // A clean stop writes the counts of the last interval.
    // SAFETY: kill(2) with the child's own pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = daemon.child.wait();
    let log_after = std::fs::read_to_string(&log).unwrap_or_default();
    let added = log_after.get(log_before.len()..).unwrap_or("");
    let junk_audit_entries = added
        .lines()
        .filter(|l| l.contains("\"request.rejected\""))
        .count();
    Ok(AttackReport {
        slow_connections,
        health_under_slowloris: health,
        health_failures,
        unauthenticated_uploads: uploads,
        upload_mib: mib,
        refused_before_body: refused,
        peak_rss_before_mib: before,
        peak_rss_after_mib: after,
        junk_requests: params.junk,
        junk_audit_entries,
        junk_audit_bytes: added.len() as u64,
    })
}

/// `count` concurrent unauthenticated uploads of `mib` MiB each; how many were refused before
/// their body.
fn unauthenticated_uploads(addr: SocketAddr, count: usize, mib: usize) -> usize {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .map(|_| s.spawn(|| unauthenticated_upload(addr, mib << 20)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .filter(|r| *r)
            .count()
    })
}

/// Starts `gantry up` (`exe`, or this binary) on `dir`, listening on a free loopback port.
fn start(
    dir: &std::path::Path,
    exe: Option<&std::path::Path>,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<DaemonProcess> {
    let exe = match exe {
        Some(exe) => exe.to_path_buf(),
        None => std::env::current_exe()?,
    };
    let mut command = Command::new(exe);
    command
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match cache_dir {
        Some(c) => command.env("GANTRY_CACHE_DIR", c),
        None => command.env_remove("GANTRY_CACHE_DIR"),
    };
    let mut child = command.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("the daemon did not start: {line:?}"))?
        .parse()?;
    Ok(DaemonProcess { child, addr })
}

/// The slowloris, and health checks during it: (connections opened, health latency, failures).
fn slowloris(
    agent: &ureq::Agent,
    url: &str,
    to: SocketAddr,
    params: &AttackParams,
) -> anyhow::Result<(usize, Latency, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let held = runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        for _ in 0..params.connections {
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                break;
            };
            if socket
                .bind("127.0.0.2:0".parse().expect("an address"))
                .is_err()
            {
                break;
            }
            let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await
            else {
                continue;
            };
            let _ = c.write_all(b"GET /v1/health HTTP/1.1\r\nHos").await;
            held.push(c);
        }
        held
    });
    let (mut ms, mut failures) = (Vec::new(), 0);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < params.seconds {
        let t = Instant::now();
        let ok = agent
            .get(&format!("{url}/v1/health"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        failures += usize::from(!ok);
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = held.len();
    drop(held);
    Ok((opened, latency(ms), failures))
}

/// Sends an upload of `len` bytes without a token; true when the daemon answered 401 right
/// after the headers (before any of the body was sent).
fn unauthenticated_upload(to: SocketAddr, len: usize) -> bool {
    let Ok(mut conn) = TcpStream::connect(to) else {
        return false;
    };
    let head = format!(
        "PUT /v1/datasets/big.csv?tenant=vision&classification=internal HTTP/1.1\r\n\
         Host: x\r\nContent-Length: {len}\r\n\r\n"
    );
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let mut answer = [0u8; 256];
    if let Ok(n) = conn.read(&mut answer)
        && n > 0
    {
        return String::from_utf8_lossy(&answer[..n]).contains(" 401 ");
    }
    // No answer yet: send the body, as a client that means it would.
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < len && conn.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    false
}
