//! Real etcd processes for tests and benchmarks: Debian's `etcd-server` package, started on
//! loopback with temporary data directories and killed when dropped. Where no `etcd` is
//! installed a test skips and says so (`.ci/run` installs it and checks it is there, so CI never
//! skips).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Etcd, EtcdTls};

/// What an etcd serving TLS is started with (PEM files), and what its clients trust and present.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The member's certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA whose client certificates it accepts (it asks every client for one).
    pub ca: PathBuf,
    /// What a client of it is given.
    pub client: EtcdTls,
}

/// A free port on loopback (bound, then released for the caller to use), never one given before
/// in this process: tests start etcd members side by side, and two must not be handed one port.
/// (Another process may still take it meanwhile: members that do not come up are started again
/// on other ports, see [`start_answering`].)
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        if GIVEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.port())
        {
            return addr;
        }
    }
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
    tls: Option<EtcdTls>,
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
        Self::start_with(binary, None)
    }

    /// A single-member etcd serving its clients over TLS only (and asking each for a
    /// certificate), or `None` (said on stderr) where etcd is not installed.
    pub fn start_tls_or_skip(test: &str, tls: &ServerTls) -> Option<EtcdProcess> {
        let binary = binary_or_skip(test)?;
        Some(Self::start_with(&binary, Some(tls)).expect("starting etcd with TLS"))
    }

    fn start_with(binary: &Path, tls: Option<&ServerTls>) -> Result<EtcdProcess, String> {
        let mut members = start_answering(binary, 1, tls)?;
        Ok(members.pop().expect("one member"))
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// A client of it alone.
    pub fn client(&self) -> Etcd {
        Etcd::new_tls(&[self.url()], Duration::from_secs(5), self.tls.as_ref()).expect("a client")
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
        let members = start_answering(&binary, n, None).expect("an etcd cluster");
        Some(EtcdCluster { members })
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
fn start_members(
    binary: &Path,
    n: usize,
    tls: Option<&ServerTls>,
) -> Result<Vec<EtcdProcess>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
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
        let mut command = Command::new(binary);
        if let Some(tls) = tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg(format!("--name=m{i}"))
            .arg(format!("--data-dir={}", data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={scheme}://{client}"))
            .arg(format!("--advertise-client-urls={scheme}://{client}"))
            .arg(format!("--listen-peer-urls=http://{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--initial-cluster-state=new")
            // As the README tells operators: history compacted, so that it cannot fill etcd.
            .arg("--auto-compaction-mode=revision")
            .arg("--auto-compaction-retention=1000")
            .stdout(Stdio::null())
            // Its log where a test's failure needs it: `GANTRY_ETCD_LOG=1`.
            .stderr(match std::env::var_os("GANTRY_ETCD_LOG") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        members.push(EtcdProcess {
            child: Some(child),
            client,
            tls: tls.map(|t| t.client.clone()),
            _data: data,
        });
    }
    Ok(members)
}

/// Waits (up to 20 s) until `client` is answered: the cluster has a leader.
/// `n` members of one new cluster, answering (with a leader): started again on other ports, up
/// to three times, when one exits or they do not answer (a port taken by another process
/// between [`free_addr`] and etcd's bind).
fn start_answering(
    binary: &Path,
    n: usize,
    tls: Option<&ServerTls>,
) -> Result<Vec<EtcdProcess>, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let mut members = start_members(binary, n, tls)?;
        let client = match n {
            1 => members[0].client(),
            _ => {
                let urls: Vec<String> = members.iter().map(EtcdProcess::url).collect();
                Etcd::new(&urls, Duration::from_secs(5)).map_err(|e| e.to_string())?
            }
        };
        match wait_until_answering(&client, &mut members) {
            Ok(()) => return Ok(members),
            // Dropped: killed, their data removed.
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn wait_until_answering(client: &Etcd, members: &mut [EtcdProcess]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.put(b"ready?", b"", 0).is_err() {
        let exited = members.iter_mut().any(|m| {
            m.child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        if exited {
            return Err("an etcd member exited before answering (its port taken?)".into());
        }
        if Instant::now() > deadline {
            return Err("etcd did not answer within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A CA, a certificate for an etcd member on loopback (good for clients too: etcd's own gateway
/// presents it to its gRPC server) and one for its client, written under `dir`; and a client's
/// TLS that trusts another CA, to be refused.
#[cfg(any(test, feature = "pki"))]
pub fn pki(dir: &Path) -> (ServerTls, EtcdTls) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose as Eku, IsCa,
        KeyPair,
    };
    let ca_of = || {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
    };
    let (ca, other_ca) = (ca_of(), ca_of());
    let signed = |names: Vec<String>, purposes: Vec<Eku>| {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.extended_key_usages = purposes;
        let cert = params.signed_by(&key, &ca).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    };
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let (server_cert, server_key) = signed(names, vec![Eku::ServerAuth, Eku::ClientAuth]);
    let (client_cert, client_key) = signed(vec![], vec![Eku::ClientAuth]);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writing a PEM file");
        // The keys only their owner may read, as a replica asks of `--etcd-key`.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("making a PEM file its owner's");
        path
    };
    write("client.pem", &client_cert);
    write("client.key", &client_key);
    let client = EtcdTls {
        ca_pem: ca.pem().into_bytes(),
        client: Some((client_cert.into_bytes(), client_key.into_bytes())),
    };
    let server = ServerTls {
        cert: write("server.pem", &server_cert),
        key: write("server.key", &server_key),
        ca: write("ca.pem", &ca.pem()),
        client: client.clone(),
    };
    let stranger = EtcdTls {
        ca_pem: other_ca.pem().into_bytes(),
        ..client
    };
    (server, stranger)
}
