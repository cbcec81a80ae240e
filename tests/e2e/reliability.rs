//! The reliability suite's concurrency test: many clients uploading, submitting, cancelling and
//! reading at once against a real `gantry up` on loopback (seeded, bounded in time), then the
//! promises checked: every acknowledged write readable, no accepted job lost, no GPU held by two
//! jobs, no job holding GPUs once everything is over, `store verify` and `audit verify` clean.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::daemon::{Daemon, cancel, put, request, train_toml};
use crate::support::{add_user, gantry, init_data_dir, shared_cache, text};

/// Two nodes of four GPUs: few enough that jobs contend for them.
const SMALL: &str = r#"
[[tenants]]
name = "vision"

[[tenants]]
name = "language"

[[nodes]]
name = "a"
rack = "r0"
gpus = { count = 4, model = "H100-80GB", memory_mib = 81920 }

[[nodes]]
name = "b"
rack = "r0"
gpus = { count = 4, model = "H100-80GB", memory_mib = 81920 }
"#;

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the daemon acknowledged.
#[derive(Default)]
struct Acked {
    /// Dataset (tenant, name) -> its bytes.
    datasets: BTreeMap<(String, String), Vec<u8>>,
    /// Job (tenant, id).
    jobs: BTreeSet<(String, String)>,
}

/// One client's run: `ops` random operations as `token` in `tenant`.
fn client(url: &str, token: &str, tenant: &str, seed: u64, until: Instant, acked: &Mutex<Acked>) {
    let mut rng = Rng(seed | 1);
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        match rng.below(10) {
            // Uploads: often the same content under another name (content addressing races).
            0 | 1 => {
                let name = format!("d{seed}-{n}");
                let content =
                    format!("{},1,2\n", rng.below(4)).repeat(1 + rng.below(3) as usize * 1000);
                let (s, _) = put(
                    &format!("{url}/v1/datasets/{name}?tenant={tenant}&classification=internal"),
                    token,
                    content.as_bytes(),
                );
                if s == 201 {
                    acked
                        .lock()
                        .unwrap()
                        .datasets
                        .insert((tenant.to_string(), name), content.into_bytes());
                } else {
                    assert!(s == 503, "an upload answered {s}");
                }
            }
            // Submissions: plain jobs and short training runs.
            2..=4 => {
                let id = format!("j{seed}-{n}");
                let mut body = json!({"id": id, "tenant": tenant, "gpus": 1 + rng.below(4)});
                if rng.below(3) == 0 {
                    body["train"] = json!(train_toml(1 + rng.below(3) as u32));
                }
                let (s, v) = request(
                    &format!("{url}/v1/jobs"),
                    "POST",
                    Some(token),
                    Some(&body.to_string()),
                );
                assert_eq!(s, 201, "{v}");
                acked
                    .lock()
                    .unwrap()
                    .jobs
                    .insert((tenant.to_string(), id.clone()));
                mine.push(id);
            }
            // Cancels of its own jobs, whatever state they are in.
            5 | 6 if !mine.is_empty() => {
                let id = &mine[rng.below(mine.len() as u64) as usize];
                let (s, v) = cancel(url, token, id);
                assert!([200, 202, 409].contains(&s), "cancel {id}: {s} {v}");
            }
            // Reads.
            _ => {
                let (s, v) = request(&format!("{url}/v1/gpus"), "GET", Some(token), None);
                assert_eq!(s, 200, "{v}");
                let (s, v) = request(&format!("{url}/v1/jobs"), "GET", Some(token), None);
                assert_eq!(s, 200, "{v}");
            }
        }
    }
}

/// The review's promises under concurrency: acknowledged writes stay, GPUs are never held twice,
/// nothing is left holding GPUs, the store and the audit log verify.
#[test]
fn many_clients_at_once_lose_nothing_and_never_hold_a_gpu_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = init_data_dir(dir.path());
    let cluster = dir.path().join("small.toml");
    std::fs::write(&cluster, SMALL).unwrap();
    let users = [
        ("ada", "vision"),
        ("bo", "vision"),
        ("lee", "language"),
        ("max", "language"),
    ]
    .map(|(name, tenant)| {
        let token = add_user(&data, name, "researcher,writer", tenant, "internal");
        (name, tenant, token)
    });
    let ops = add_user(&data, "ops", "admin", "vision,language", "secret");
    let mut daemon = Daemon::start_with(
        &data,
        &shared_cache(),
        &["--cluster", cluster.to_str().unwrap()],
    );
    let url = daemon.url.clone();
    let acked = Mutex::new(Acked::default());
    let until = Instant::now() + Duration::from_secs(12);
    std::thread::scope(|s| {
        for (i, (_, tenant, token)) in users.iter().enumerate() {
            for k in 0..2u64 {
                let (url, acked) = (&url, &acked);
                s.spawn(move || client(url, token, tenant, 7 + 100 * i as u64 + k, until, acked));
            }
        }
        // Meanwhile: GPU holdings are consistent at every moment they are looked at.
        let (url, ops) = (&url, &ops);
        s.spawn(move || {
            while Instant::now() < until {
                check_holdings(url, ops, false);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    });
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.jobs.len() > 20 && acked.datasets.len() > 5,
        "too little work: {} jobs, {} datasets",
        acked.jobs.len(),
        acked.datasets.len()
    );

    // Every acknowledged job is there; every acknowledged dataset reads back as written.
    let (_, all) = request(&format!("{url}/v1/jobs"), "GET", Some(&ops), None);
    let stored: BTreeSet<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["tenant"].as_str().unwrap().to_string(),
                j["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for job in &acked.jobs {
        assert!(stored.contains(job), "accepted job {job:?} lost");
    }
    for ((tenant, name), content) in &acked.datasets {
        let got = ureq::get(&format!("{url}/v1/datasets/{name}/content?tenant={tenant}"))
            .header("Authorization", &format!("Bearer {ops}"))
            .call()
            .unwrap()
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        assert!(
            &got == content,
            "dataset {tenant}/{name} does not read back as written"
        );
    }

    // Cancel everything still live; then nothing holds a GPU.
    for (tenant, id) in &acked.jobs {
        let (s, v) = request(
            &format!("{url}/v1/jobs/{id}/cancel?tenant={tenant}"),
            "POST",
            Some(&ops),
            None,
        );
        assert!([200, 202, 409].contains(&s), "{s} {v}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(&ops), None);
        if gpus["busy"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GPUs still held after every job ended: {gpus}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_holdings(&url, &ops, true);
    daemon.signal("-TERM");

    // The store and the audit log verify.
    let d = data.to_str().unwrap();
    let out = gantry(&["store", "verify", "--data-dir", d], dir.path());
    assert!(out.status.success(), "{}", text(&out).1);
    let key = gantry::keys::load(&data.join("keys/host.pk8")).unwrap();
    gantry::audit::verify(
        &data.join("audit.log"),
        Some(&gantry::keys::public_hex(&key)),
    )
    .unwrap();
}

/// The GPUs the daemon shows busy are exactly those of jobs in GPU-holding states, none held
/// by two jobs; with `over`, no job holds any.
pub(crate) fn check_holdings(url: &str, ops: &str, over: bool) {
    let (_, jobs) = request(&format!("{url}/v1/jobs"), "GET", Some(ops), None);
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    for j in jobs.as_array().unwrap() {
        let state = j["state"].as_str().unwrap();
        let holding = ["scheduled", "running", "cancelling"].contains(&state);
        if over {
            assert!(!holding, "a job still holds GPUs: {j}");
        }
        if !holding {
            continue;
        }
        for g in j["gpu_ids"].as_array().unwrap() {
            let g = g.as_str().unwrap().to_string();
            let who = format!("{}/{}", j["tenant"], j["id"]);
            if let Some(other) = held.insert(g.clone(), who.clone()) {
                panic!("GPU {g} held by {other} and {who}");
            }
        }
    }
    // The host's count is read a moment after the jobs while they move, so only at rest must
    // the two views agree.
    if over {
        let (_, gpus) = request(&format!("{url}/v1/gpus"), "GET", Some(ops), None);
        assert_eq!(gpus["busy"], 0, "{gpus}");
    }
}
