//! `gantry up` as a real process on loopback: tokens, policy decisions, bad requests, tenants'
//! isolation, scheduling, `kill -9` and restart without losing a job, and a verified audit log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{gantry, text};

struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(data: &Path, cache: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("GANTRY_CACHE_DIR", cache)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting gantry up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Daemon {
            url: format!("http://{addr}"),
            child,
        }
    }

    fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (status, JSON body) of a request.
fn request(url: &str, method: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let response = match method {
        "POST" => {
            let mut r = agent.post(url).header("content-type", "application/json");
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.send(body.unwrap_or("").as_bytes())
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(t) = token {
                r = r.header("Authorization", &format!("Bearer {t}"));
            }
            r.call()
        }
    }
    .expect("the daemon answers");
    let status = response.status().as_u16();
    let body = response.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn wait_for_state(url: &str, token: &str, job: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = request(&format!("{url}/v1/jobs/{job}"), "GET", Some(token), None);
        if v["state"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} never became {want}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_authenticates_decides_isolates_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    assert!(
        gantry(&["init", "--data-dir", d], dir.path())
            .status
            .success()
    );
    let token = |name: &str, tenant: &str| {
        let o = gantry(
            &[
                "user",
                "add",
                name,
                "--roles",
                "researcher",
                "--tenants",
                tenant,
                "--data-dir",
                d,
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", text(&o).1);
        text(&o).0.trim().to_string()
    };
    let (ada, lee) = (token("ada", "vision"), token("lee", "language"));

    let mut daemon = Daemon::start(&data, &cache);
    let url = daemon.url.clone();
    let jobs = format!("{url}/v1/jobs");
    assert_eq!(
        request(&format!("{url}/v1/health"), "GET", None, None).0,
        200
    );

    // Authentication.
    assert_eq!(request(&jobs, "GET", None, None).0, 401);
    assert_eq!(request(&jobs, "GET", Some("gantry_0000_nope"), None).0, 401);
    let mut forged = ada.clone();
    forged.pop();
    assert_eq!(request(&jobs, "GET", Some(&forged), None).0, 401);

    // Allowed, and refused by policy with the reason.
    let (s, v) = request(
        &jobs,
        "POST",
        Some(&ada),
        Some(r#"{"id": "v1", "tenant": "vision", "gpus": 8}"#),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["state"], "pending");
    let (s, v) = request(
        &jobs,
        "POST",
        Some(&ada),
        Some(r#"{"tenant": "language", "gpus": 8}"#),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["reasons"][0]
            .as_str()
            .unwrap()
            .contains("not a member of tenant language"),
        "{v}"
    );

    // Bad requests: nothing stored.
    for (body, want) in [
        ("{not json", 400),
        (r#"{"tenant": "vision"}"#, 400),
        (r#"{"tenant": "vision", "gpus": 1, "colour": "red"}"#, 400),
        (
            r#"{"id": "../../etc/passwd", "tenant": "vision", "gpus": 1}"#,
            400,
        ),
        (r#"{"id": "v1", "tenant": "vision", "gpus": 1}"#, 409),
        (r#"{"tenant": "nowhere", "gpus": 1}"#, 400),
    ] {
        let (s, v) = request(&jobs, "POST", Some(&ada), Some(body));
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["error"].is_string(), "{body}: {v}");
    }
    let huge = format!(
        r#"{{"tenant": "vision", "gpus": 1, "id": "{}"}}"#,
        "x".repeat(100_000)
    );
    assert_eq!(request(&jobs, "POST", Some(&ada), Some(&huge)).0, 413);
    let (_, all) = request(&jobs, "GET", Some(&ada), None);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");

    // Tenants see only their own jobs; another tenant's job is a 404, not a 403.
    let (_, theirs) = request(&jobs, "GET", Some(&lee), None);
    assert_eq!(theirs, json!([]));
    assert_eq!(
        request(&format!("{jobs}/v1"), "GET", Some(&lee), None).0,
        404
    );
    assert_eq!(
        request(&format!("{jobs}/v1/cancel"), "POST", Some(&lee), None).0,
        404
    );

    // The scheduler places it; a second job too.
    wait_for_state(&url, &ada, "v1", "scheduled");
    let (s, _) = request(
        &jobs,
        "POST",
        Some(&lee),
        Some(r#"{"id": "l1", "tenant": "language", "gpus": 4}"#),
    );
    assert_eq!(s, 201);

    // kill -9, restart: every accepted job is still there and placed again.
    daemon.signal("-9");
    let mut daemon = Daemon::start(&data, &cache);
    let url = daemon.url.clone();
    wait_for_state(&url, &ada, "v1", "scheduled");
    wait_for_state(&url, &lee, "l1", "scheduled");
    let (s, v) = request(
        &format!("{url}/v1/jobs/l1/cancel"),
        "POST",
        Some(&lee),
        None,
    );
    assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
    daemon.signal("-TERM");

    // Every decision was recorded; the log verifies (the torn tail of the killed run cut).
    let key = gantry::keys::load(&data.join("keys/host.pk8")).unwrap();
    let report = gantry::audit::verify(
        &data.join("audit.log"),
        Some(&gantry::keys::public_hex(&key)),
    )
    .unwrap();
    let text = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(text.contains("not a member of tenant language"));
    assert!(text.matches("\"job.submit\"").count() >= 3, "{report:?}");
}
