//! `gantry bench cluster`'s failover figure: three `gantry up --etcd` replicas (child processes
//! of this binary, on one etcd started on loopback), the leader killed with SIGKILL again and
//! again; the time from the kill to another replica answering as leader, and whether a job
//! submitted through each new leader is still there at the end.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use gantry_daemon::db::User;

/// The leader's lease of the replicas, seconds (the tests' too).
const LEASE_S: u64 = 2;

/// What the kill loop measured.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// Leaders killed.
    pub kills: usize,
    /// The leader's lease, seconds.
    pub lease_s: u64,
    /// From a kill to another replica answering as leader: median, seconds.
    pub median_s: f64,
    /// The slowest, seconds.
    pub max_s: f64,
    /// Jobs accepted by a new leader that the last one did not list.
    pub lost_jobs: usize,
}

/// One replica: its data directory, address and process.
struct Replica {
    dir: PathBuf,
    listen: String,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self, etcd: &str, cache: Option<&Path>) -> anyhow::Result<()> {
        let mut up = Command::new(std::env::current_exe()?);
        up.args(["up", "--listen", &self.listen, "--data-dir"])
            .arg(&self.dir)
            .args(["--etcd", etcd, "--leader-lease-s", &LEASE_S.to_string()])
            .arg("--cluster")
            .arg(self.dir.join("cluster.toml"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(cache) = cache {
            up.env("GANTRY_CACHE_DIR", cache);
        }
        let mut child = up.spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            anyhow::bail!("gantry up --etcd said {line:?}");
        };
        self.listen = addr.to_string();
        self.child = Some(child);
        Ok(())
    }

    fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it answers as the leader.
    fn leads(&self, http: &ureq::Agent) -> bool {
        self.child.is_some()
            && http
                .get(&format!("{}/v1/health", self.url()))
                .call()
                .ok()
                .and_then(|r| r.into_body().read_json::<Value>().ok())
                .is_some_and(|v| v["role"] == "leader")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills the leader of three replicas `kills` times on the etcd `binary` starts.
pub fn run(binary: &Path, kills: usize, cache: Option<PathBuf>) -> anyhow::Result<Failover> {
    let etcd = gantry_etcd::testing::EtcdProcess::try_start(binary)
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
    super::in_scratch_dir("cluster-failover", |dir| {
        let token = replica_dirs(dir)?;
        let mut replicas: Vec<Replica> = (0..3)
            .map(|i| Replica {
                dir: dir.join(format!("r{i}")),
                listen: "127.0.0.1:0".into(),
                child: None,
            })
            .collect();
        for r in &mut replicas {
            r.start(&etcd.url(), cache.as_deref())?;
        }
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let mut leader = leader_within(&replicas, &http, Duration::from_secs(60))?.0;
        let (mut took, mut accepted) = (Vec::new(), Vec::new());
        for round in 0..kills {
            replicas[leader].kill();
            let (next, t) = leader_within(&replicas, &http, Duration::from_secs(60))?;
            took.push(t.as_secs_f64());
            replicas[leader].start(&etcd.url(), cache.as_deref())?;
            leader = next;
            let id = format!("failover-{round}");
            let r = http
                .post(&format!("{}/v1/jobs", replicas[leader].url()))
                .header("Authorization", &format!("Bearer {token}"))
                .send_json(json!({"id": id, "tenant": "vision", "gpus": 1}))?;
            anyhow::ensure!(r.status() == 201, "the new leader refused {id}");
            accepted.push(id);
        }
        let listed: Value = http
            .get(&format!("{}/v1/jobs", replicas[leader].url()))
            .header("Authorization", &format!("Bearer {token}"))
            .call()?
            .into_body()
            .read_json()?;
        let lost_jobs = accepted
            .iter()
            .filter(|id| {
                !listed
                    .as_array()
                    .is_some_and(|jobs| jobs.iter().any(|j| j["id"] == id.as_str()))
            })
            .count();
        took.sort_by(f64::total_cmp);
        Ok(Failover {
            kills,
            lease_s: LEASE_S,
            median_s: took.get(took.len() / 2).copied().unwrap_or(0.0),
            max_s: took.last().copied().unwrap_or(0.0),
            lost_jobs,
        })
    })
}

/// Three copies of one initialised data directory (the same keys, an admin, a cluster file of
/// eight GPUs) under `dir`: the admin's token.
fn replica_dirs(dir: &Path) -> anyhow::Result<String> {
    let first = dir.join("r0");
    gantry::storage::Store::init(&first)?;
    let admin = User {
        name: "bench".into(),
        roles: vec!["admin".into()],
        tenants: vec!["vision".into()],
        clearance: "public".into(),
    };
    let token = crate::local::add_users(&first, "gantry bench cluster", &[admin])?.remove(0);
    std::fs::write(
        first.join("cluster.toml"),
        "[[tenants]]\nname = \"vision\"\n\n[[nodes]]\nname = \"node-a\"\nrack = \"r0\"\n\
         gpus = { count = 8, model = \"H100-80GB\", memory_mib = 81920 }\n",
    )?;
    for i in 1..3 {
        copy_dir(&first, &dir.join(format!("r{i}")))?;
    }
    Ok(token)
}

/// The replica that answers as leader, waiting up to `within`, and how long it took.
fn leader_within(
    replicas: &[Replica],
    http: &ureq::Agent,
    within: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(i) = replicas.iter().position(|r| r.leads(http)) {
            return Ok((i, start.elapsed()));
        }
        anyhow::ensure!(start.elapsed() < within, "no leader within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies directory `from` to `to`, recursively (nothing holds it).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
