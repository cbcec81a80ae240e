//! Real etcd processes for tests: Debian's `etcd-server` package, started on loopback with a
//! temporary data directory and killed when dropped. Where no `etcd` is installed a test skips
//! and says so (`.ci/run` installs it and checks it is there, so CI never skips).

use std::net::SocketAddr;
use std::path::PathBuf;
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
    child: Child,
    client: SocketAddr,
    _data: tempfile::TempDir,
}

impl EtcdProcess {
    /// A single-member etcd, or `None` (said on stderr) where etcd is not installed.
    pub fn start_or_skip(test: &str) -> Option<EtcdProcess> {
        let Some(binary) = etcd_binary() else {
            eprintln!("{test}: skipped, no etcd here (Debian: apt-get install etcd-server)");
            return None;
        };
        Some(Self::start(&binary))
    }

    /// A single-member etcd from `binary`, answering before this returns.
    pub fn start(binary: &std::path::Path) -> EtcdProcess {
        Self::try_start(binary).expect("starting etcd")
    }

    /// [`EtcdProcess::start`], failing with a message rather than a panic.
    pub fn try_start(binary: &std::path::Path) -> Result<EtcdProcess, String> {
        let (client, peer) = (free_addr(), free_addr());
        let data = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let child = Command::new(binary)
            .arg("--name=gantry-test")
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls=http://{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
            .arg(format!("--initial-cluster=gantry-test=http://{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let process = EtcdProcess {
            child,
            client,
            _data: data,
        };
        let c = process.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.get(b"ready?").is_err() {
            if Instant::now() > deadline {
                return Err("etcd did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// A client of it.
    pub fn client(&self) -> Etcd {
        Etcd::new(&[self.url()], Duration::from_secs(5)).expect("a client")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
