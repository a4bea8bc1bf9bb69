//! The binary as a newcomer uses it: `serve` with nothing configured runs its own PostgreSQL
//! under ./data, `token` from the same directory makes a token that service accepts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dr-orchestrator");

fn bare_command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for var in [
        "DATABASE_URL",
        "DRO_JWT_SECRET",
        "DRO_MASTER_KEY",
        "DRO_DATA_DIR",
        "DRO_BIND",
        "DRO_PG_BINDIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` in `dir` with nothing configured but the port; returns it and its base URL
/// once `/readyz` answers 200.
async fn start_serve(dir: &Path) -> (KillOnDrop, String) {
    let port = free_port();
    let child = bare_command(dir)
        .arg("serve")
        .env("DRO_BIND", format!("127.0.0.1:{port}"))
        .env("DRO_HTTP_WORKERS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            if r.status() == 200 {
                return (child, base);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the service did not become ready"
        );
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("serve exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends SIGINT and waits for the process to exit; returns what it printed on stdout.
async fn interrupt(child: &mut KillOnDrop) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut out).unwrap();
    out
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dro-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn serve_with_nothing_configured_runs_its_own_postgres_and_token_works_beside_it() {
    let dir = temp_dir();
    let (mut child, base) = start_serve(&dir).await;
    let client = reqwest::Client::new();
    let docs = client.get(format!("{base}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    for file in ["jwt_secret", "master_key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("data").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    let out = bare_command(&dir)
        .args([
            "token",
            "--role",
            "operator",
            "--subject",
            "ci",
            "--ttl",
            "15m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim();
    let r = client
        .get(format!("{base}/api/v1/resources"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A second process on the same data dir is refused rather than sharing (and later
    // stopping) the first one's database.
    let second = bare_command(&dir).arg("migrate").output().unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another dr-orchestrator process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let still = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(still.status(), 200, "the first service keeps its database");

    let banner = interrupt(&mut child).await;
    assert!(banner.contains("/docs/"), "{banner}");
    // Not a terminal: the admin token goes to a private file, never to stdout (a log).
    assert!(!banner.contains("eyJ"), "{banner}");
    assert!(banner.contains("admin_token"), "{banner}");
    let token_file = dir.join("data/admin_token");
    let admin = std::fs::read_to_string(&token_file).unwrap();
    assert!(admin.starts_with("eyJ"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !dir.join("data/postgres/postmaster.pid").exists(),
        "the embedded PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_serve_is_killed_the_next_serve_adopts_its_postgres_and_stops_it() {
    let dir = temp_dir();
    let (mut first, _) = start_serve(&dir).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(
        dir.join("data/postgres/postmaster.pid").exists(),
        "the orphan is still running"
    );

    let (mut second, base) = start_serve(&dir).await;
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    interrupt(&mut second).await;
    assert!(
        !dir.join("data/postgres/postmaster.pid").exists(),
        "the adopted PostgreSQL was stopped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_an_external_database_and_no_secrets_serve_says_what_to_set_before_touching_it() {
    let dir = std::env::temp_dir();
    let out = bare_command(&dir)
        .arg("serve")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DRO_JWT_SECRET is not set"), "{stderr}");
    assert!(
        !stderr.contains("cannot connect"),
        "secrets are checked first: {stderr}"
    );
}

#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let out = bare_command(&std::env::temp_dir())
        .arg("migrate")
        .env(
            "DATABASE_URL",
            "postgres://dro:hunter2-pw@127.0.0.1:1/nowhere",
        )
        .env("DRO_DB_POOL_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2-pw"), "{stderr}");
}

#[test]
fn a_bad_setting_exits_2_naming_the_variable() {
    let out = bare_command(&std::env::temp_dir())
        .arg("serve")
        .env("DRO_BIND", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DRO_BIND"));
}

#[test]
fn token_refuses_a_bad_role_or_ttl() {
    let dir = std::env::temp_dir();
    let out = bare_command(&dir)
        .args(["token", "--role", "root"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = bare_command(&dir)
        .args(["token", "--ttl", "1y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let long = "x".repeat(300);
    let out = bare_command(&dir)
        .args(["token", "--subject", &long])
        .env("DATABASE_URL", "postgres://unused")
        .env("DRO_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("256"));
}

/// Starts `serve` on an external database with shared secrets; waits for `/readyz`.
pub async fn serve_on(url: &str, jwt: &str, key: &str) -> (KillOnDrop, String) {
    let port = free_port();
    let child = bare_command(&std::env::temp_dir())
        .arg("serve")
        .env("DATABASE_URL", url)
        .env("DRO_JWT_SECRET", jwt)
        .env("DRO_MASTER_KEY", key)
        .env("DRO_BIND", format!("127.0.0.1:{port}"))
        .env("DRO_HTTP_WORKERS", "1")
        .env("DRO_WORKERS", "2")
        .env("DRO_LEASE_SECS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{base}/readyz"))
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_instance_that_runs_a_script_pauses_the_execution_on_the_survivor() {
    let db = crate::common::TestDb::new();
    let jwt = "a-shared-secret-for-two-instances-0123456789";
    let key = dr_orchestrator::crypto::MasterKey::generate_base64();
    let (mut first, a) = serve_on(&db.url, jwt, &key).await;
    let (_second, b) = serve_on(&db.url, jwt, &key).await;
    let token = dr_orchestrator::auth::JwtKeys::new(jwt.as_bytes()).issue(
        "ops",
        dr_orchestrator::auth::Role::Admin,
        chrono::Duration::minutes(10),
    );
    let client = reqwest::Client::new();
    let post = |url: String, body: serde_json::Value| {
        client.post(url).bearer_auth(&token).json(&body).send()
    };
    let r = post(format!("{a}/api/v1/steps"), serde_json::json!({"name": "long", "kind": "local_script", "params": {"script": "sleep 6004"}})).await.unwrap();
    assert_eq!(r.status(), 201);
    let r = post(
        format!("{a}/api/v1/plans"),
        serde_json::json!({"name": "p", "steps": [{"key": "l", "step": "long"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = post(
        format!("{a}/api/v1/plans/p/executions"),
        serde_json::json!({"mode": "drill"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Find which instance took the step (its worker id carries its pid) and kill -9 it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let worker = loop {
        let events: serde_json::Value = client
            .get(format!("{b}/api/v1/executions/{id}/events"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let started = events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "step.started")
            .cloned();
        if let Some(e) = started {
            break e["data"]["worker"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pid: i32 = worker.split(':').nth(1).unwrap().parse().unwrap();
    let (survivor, victim_is_first) = if pid == first.0.id() as i32 {
        (b.clone(), true)
    } else {
        (a.clone(), false)
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    if victim_is_first {
        let _ = first.0.wait();
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let execution = loop {
        let e: serde_json::Value = client
            .get(format!("{survivor}/api/v1/executions/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if e["status"] == "paused" {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never reclaimed the step: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        execution["steps"][0]["status"], "interrupted",
        "{execution}"
    );
    assert!(execution["pause_reason"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    let _ = std::process::Command::new("pkill")
        .args(["-f", "sleep 6004"])
        .status();
}

/// Runs `dr-orchestrator demo --exit` on a free port, asserts it exits 0; what it printed.
fn run_demo(mut cmd: Command) -> String {
    let port = free_port();
    let mut child = KillOnDrop(
        cmd.args(["demo", "--exit", "--bind", &format!("127.0.0.1:{port}")])
            .env("DRO_HTTP_WORKERS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.0.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            panic!(
                "the demo did not finish in 90 s:\n{}",
                stdout.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = stdout.join().unwrap();
    let err = stderr.join().unwrap();
    assert!(status.success(), "{status}\n{out}\n{err}");
    out
}

/// What a newcomer must see: the drill succeeded, the report with its RTO met, the recovered
/// hosts' addresses, and no secret but masked ones.
fn assert_demo_story(out: &str) {
    assert!(out.contains("execution succeeded"), "{out}");
    assert!(out.contains("Drill succeeded."), "{out}");
    let rto = out
        .lines()
        .find(|l| l.starts_with("- Measured RTO:"))
        .unwrap_or_else(|| panic!("no RTO line in the report:\n{out}"));
    assert!(rto.ends_with("against a target of 15m (met)"), "{rto}");
    assert!(
        out.contains("| wordpress | vm-wordpress-01 | sim-i-1 | 127.0.0.21 |"),
        "{out}"
    );
    assert!(out.contains("sed -i s/192.168.10.21/127.0.0.21/g"), "{out}");
    assert!(out.contains("signoff            succeeded"), "{out}");
    assert!(out.contains("Bearer ******"), "{out}");
    for secret in ["demo-mysql-password", "demo-dns-token", "eyJ"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
}

#[test]
fn demo_runs_scenario_1_as_a_drill_on_its_own_postgres_and_prints_the_report() {
    let dir = temp_dir();
    let out = run_demo(bare_command(&dir));
    assert_demo_story(&out);
    assert!(
        !dir.join("data/postgres/postmaster.pid").exists(),
        "the embedded PostgreSQL was stopped"
    );

    // Run again on the same ./data: the example is replaced, not refused.
    let again = run_demo(bare_command(&dir));
    assert!(
        again.contains("replaced /api/v1/steps/promote_replica"),
        "{again}"
    );
    assert!(
        again.contains("saved a new version of /api/v1/plans/"),
        "{again}"
    );
    assert_demo_story(&again);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_on_an_external_database_too() {
    let db = crate::common::TestDb::new();
    let mut cmd = bare_command(&std::env::temp_dir());
    cmd.env("DATABASE_URL", &db.url)
        .env(
            "DRO_JWT_SECRET",
            "a-secret-for-the-demo-test-0123456789abcdef",
        )
        .env(
            "DRO_MASTER_KEY",
            dr_orchestrator::crypto::MasterKey::generate_base64(),
        );
    let out = run_demo(cmd);
    assert!(out.contains("on DATABASE_URL"), "{out}");
    assert_demo_story(&out);
}

/// The image's build stage gets every directory the build reads: the manifest names the
/// benchmarks, and `include_str!` pulls files in from outside `src/`.
#[test]
fn the_dockerfile_copies_everything_the_release_build_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src".to_owned(),
        "migrations".to_owned(),
    ];
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    if manifest.contains("[[bench]]") {
        needed.push("benches".into());
    }
    // Top-level directories that non-test code includes (`include_str!("../<dir>/...")`).
    let mut sources = vec![root.join("src")];
    while let Some(dir) = sources.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for include in code.split("include_str!(\"").skip(1) {
                let target = include.split('"').next().unwrap();
                let resolved = path.parent().unwrap().join(target);
                let relative = std::fs::canonicalize(&resolved)
                    .unwrap_or_else(|_| panic!("{} includes a missing {target}", path.display()));
                let top = relative
                    .strip_prefix(std::fs::canonicalize(root).unwrap())
                    .unwrap()
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                needed.push(top);
            }
        }
    }
    for n in &needed {
        assert!(
            copied.contains(&n.as_str()),
            "the Dockerfile's build stage does not COPY {n} (it copies {copied:?})"
        );
    }
    assert!(
        needed.contains(&"examples".to_owned()),
        "the demo's files were found"
    );
}
