//! Real etcd processes for tests and benchmarks: Debian's `etcd-server` package, started on
//! loopback with temporary data directories and killed when dropped. Where no `etcd` is
//! installed a test skips and says so (`.ci/run` installs it and checks it is there, so CI never
//! skips).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Etcd;

/// A free port on loopback (bound, then released for the caller to use).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The `etcd` binary: `$GANTRY_ETCD`, or `etcd` on the `PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GANTRY_ETCD") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// One etcd member on loopback, killed (and its data removed) when dropped.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Option<Child>,
    client: SocketAddr,
    _data: tempfile::TempDir,
}

impl EtcdProcess {
    /// A single-member etcd, or `None` (said on stderr) where etcd is not installed.
    pub fn start_or_skip(test: &str) -> Option<EtcdProcess> {
        let binary = binary_or_skip(test)?;
        Some(Self::start(&binary))
    }

    /// A single-member etcd from `binary`, answering before this returns.
    pub fn start(binary: &Path) -> EtcdProcess {
        Self::try_start(binary).expect("starting etcd")
    }

    /// [`EtcdProcess::start`], failing with a message rather than a panic.
    pub fn try_start(binary: &Path) -> Result<EtcdProcess, String> {
        let mut members = start_members(binary, 1)?;
        let process = members.pop().expect("one member");
        wait_until_answering(&process.client())?;
        Ok(process)
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// A client of it alone.
    pub fn client(&self) -> Etcd {
        Etcd::new(&[self.url()], Duration::from_secs(5)).expect("a client")
    }

    /// Kills it (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of etcd members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    /// Its members.
    pub members: Vec<EtcdProcess>,
}

impl EtcdCluster {
    /// An `n`-member cluster answering (with a leader) before this returns, or `None` (said on
    /// stderr) where etcd is not installed.
    pub fn start_or_skip(test: &str, n: usize) -> Option<EtcdCluster> {
        let binary = binary_or_skip(test)?;
        let members = start_members(&binary, n).expect("starting etcd members");
        let cluster = EtcdCluster { members };
        wait_until_answering(&cluster.client()).expect("an etcd cluster");
        Some(cluster)
    }

    /// Every member's client URL, comma separated (as `gantry up --etcd` takes them).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(EtcdProcess::url).collect();
        urls.join(",")
    }

    /// A client of the whole cluster.
    pub fn client(&self) -> Etcd {
        let urls: Vec<String> = self.members.iter().map(EtcdProcess::url).collect();
        Etcd::new(&urls, Duration::from_secs(5)).expect("a client")
    }
}

fn binary_or_skip(test: &str) -> Option<PathBuf> {
    let binary = etcd_binary();
    if binary.is_none() {
        eprintln!("{test}: skipped, no etcd here (Debian: apt-get install etcd-server)");
    }
    binary
}

/// `n` members of one new cluster from `binary`, started (not yet answering).
fn start_members(binary: &Path, n: usize) -> Result<Vec<EtcdProcess>, String> {
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..n).map(|_| (free_addr(), free_addr())).collect();
    let initial: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://{peer}"))
        .collect();
    let initial = initial.join(",");
    let mut members = Vec::with_capacity(n);
    for (i, (client, peer)) in addrs.into_iter().enumerate() {
        let data = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let child = Command::new(binary)
            .arg(format!("--name=m{i}"))
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls=http://{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        members.push(EtcdProcess {
            child: Some(child),
            client,
            _data: data,
        });
    }
    Ok(members)
}

/// Waits (up to 20 s) until `client` is answered: the cluster has a leader.
fn wait_until_answering(client: &Etcd) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.put(b"ready?", b"", 0).is_err() {
        if Instant::now() > deadline {
            return Err("etcd did not answer within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
