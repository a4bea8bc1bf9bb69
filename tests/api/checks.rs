//! dns, MySQL/MariaDB sql and http body checks, end to end through the engine: dns against a
//! dnsmasq started here on a free loopback port, sql against the local MariaDB, http against
//! `common::start_http_server`.

use std::fs::File;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{captured_logs, run_single, start_http_server, TestApp};

/// A dnsmasq answering on 127.0.0.1 from a hosts file of its own (re-read on `set_hosts`) and
/// the extra records it was started with; killed on drop.
pub struct Dnsmasq {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Dnsmasq {
    /// `None` (said loudly) when dnsmasq is not installed; a dnsmasq that is installed but does
    /// not come up fails the test.
    pub fn start(hosts: &str, extra: &[&str]) -> Option<Self> {
        let Some(binary) = ["dnsmasq", "/usr/sbin/dnsmasq"].into_iter().find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok()
        }) else {
            eprintln!(
                "SKIPPED: dnsmasq is not installed, so the dns checks are not tested \
                 (Debian: apt-get install dnsmasq; scripts/install-deps.sh does it)"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!("dro-dnsmasq-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        // A free port can be taken between the probe and dnsmasq's bind: try a few.
        for _ in 0..3 {
            let port = free_udp_and_tcp_port();
            let log = File::create(dir.join("log")).unwrap();
            let child = Command::new(binary)
                .args([
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--log-facility=-",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut dns = Self {
                child,
                dir: dir.clone(),
                port,
            };
            if dns.wait_ready() {
                return Some(dns);
            }
            // Killed on drop, but the directory stays for the next try.
            dns.dir = PathBuf::new();
        }
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        panic!("dnsmasq is installed but did not start on 127.0.0.1: {log}");
    }

    /// Whether it answers on TCP within 5 s (it opens UDP and TCP together).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the hosts file and makes dnsmasq re-read it (SIGHUP).
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(self.dir.join("hosts"), hosts).unwrap();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }

    /// What it logged, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port that is free for UDP and for TCP right now.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn step_error(e: &Value) -> &str {
    e["steps"][0]["error"].as_str().unwrap_or_default()
}

fn detail(e: &Value, i: usize) -> &str {
    e["steps"][0]["outputs"]["evidence"][i]["detail"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_check_passes_when_the_answer_holds_every_expected_value() {
    let Some(dns) = Dnsmasq::start(
        "10.9.8.7 app.dr.test\n10.9.8.6 app.dr.test\n",
        &[
            "--cname=www.dr.test,app.dr.test",
            "--txt-record=app.dr.test,v=1 ok",
        ],
    ) else {
        return;
    };
    let app = TestApp::spawn_with_engine(1).await;
    let server = dns.server();
    let e = run_single(
        &app,
        "dns_a",
        "check",
        json!({"type": "dns", "name": "app.dr.test",
        "expect": ["10.9.8.7"], "server": server, "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}\n{}", dns.log());
    let answered = detail(&e, 0);
    assert!(
        answered.contains(&format!("at {server}"))
            && answered.contains("10.9.8.7")
            && answered.contains("10.9.8.6"),
        "the evidence lists every answered value: {answered}"
    );
    // Names compare without case or final dot; TXT strings exactly.
    let e = run_single(&app, "dns_cname", "check", json!({"type": "dns", "name": "www.dr.test",
        "record_type": "CNAME", "expect": ["APP.dr.test."], "server": server, "interval": "1s", "until": "5s"}))
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let e = run_single(&app, "dns_txt", "check", json!({"type": "dns", "name": "app.dr.test",
        "record_type": "TXT", "expect": ["v=1 ok"], "server": server, "interval": "1s", "until": "5s"}))
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    // Without `expect`, any answer will do.
    let e = run_single(
        &app,
        "dns_any",
        "check",
        json!({"type": "dns", "name": "app.dr.test",
        "server": server, "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_check_fails_when_time_runs_out_and_says_what_was_answered() {
    let Some(dns) = Dnsmasq::start("10.9.8.7 app.dr.test\n", &[]) else {
        return;
    };
    let app = TestApp::spawn_with_engine(1).await;
    let server = dns.server();
    let e = run_single(
        &app,
        "dns_moved",
        "check",
        json!({"type": "dns", "name": "app.dr.test",
        "expect": ["10.9.8.8"], "server": server, "interval": "1s", "until": "3s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    let error = step_error(&e);
    assert!(
        error.contains("did not pass after")
            && error.contains("answered 10.9.8.7")
            && error.contains("not 10.9.8.8"),
        "{error}"
    );
    assert!(
        e["steps"][0]["outputs"]["tries"].as_u64().unwrap() >= 2,
        "{e}"
    );
    // A name the server does not know fails with the server's refusal.
    let e = run_single(
        &app,
        "dns_unknown",
        "check",
        json!({"type": "dns", "name": "nowhere.dr.test",
        "server": server, "interval": "1s", "until": "1s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        step_error(&e).contains("nowhere.dr.test A at 127.0.0.1"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_check_sees_an_answer_that_changes_between_tries() {
    // A TTL of 5 minutes: a resolver that cached the first answer would never see the change.
    let Some(dns) = Dnsmasq::start("10.0.0.1 app.dr.test\n", &["--local-ttl=300"]) else {
        return;
    };
    let app = TestApp::spawn_with_engine(1).await;
    let params = json!({"type": "dns", "name": "app.dr.test", "expect": ["10.0.0.2"],
        "server": dns.server(), "interval": "1s", "until": "30s"});
    let check = run_single(&app, "dns_switch", "check", params);
    let switch = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        dns.set_hosts("10.0.0.2 app.dr.test\n");
    };
    let (e, ()) = tokio::join!(check, switch);
    assert_eq!(e["status"], "succeeded", "{e}\n{}", dns.log());
    let tries = e["steps"][0]["outputs"]["tries"].as_u64().unwrap();
    assert!(tries >= 2, "{e}");
    assert!(detail(&e, 0).contains("answered 10.0.0.1"), "{e}");
    assert!(
        detail(&e, tries as usize - 1).contains("answered 10.0.0.2"),
        "{e}"
    );
}

/// A MariaDB user with a password for the sql checks, on the local MariaDB (127.0.0.1:3306,
/// root without a password, database `test`); `None`, said loudly, when there is none.
pub async fn mariadb_user() -> Option<(&'static str, &'static str)> {
    use mysql_async::prelude::Queryable;
    const USER: &str = "dro_check";
    const PASSWORD: &str = "dro-check-Pw-7d41";
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(3306)
        .user(Some("root"))
        .prefer_socket(false);
    let connect = tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts)).await;
    let mut conn = match connect {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            eprintln!("SKIPPED: no MariaDB at 127.0.0.1:3306 for root without a password ({e})");
            return None;
        }
        Err(_) => {
            eprintln!("SKIPPED: the MariaDB at 127.0.0.1:3306 did not answer within 5s");
            return None;
        }
    };
    // Both hosts: a TCP client on 127.0.0.1 is matched as `localhost` when names resolve.
    for host in ["localhost", "%"] {
        for sql in [
            format!("CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'"),
            format!("ALTER USER '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'"),
            format!("GRANT SELECT ON test.* TO '{USER}'@'{host}'"),
        ] {
            conn.query_drop(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    let _ = conn.disconnect().await;
    Some((USER, PASSWORD))
}

/// A password credential and a database resource `name` of `engine` on the local MariaDB.
async fn mariadb_resource(app: &TestApp, name: &str, engine: &str, user: &str, password: &str) {
    let r = app
        .post_json(
            "/api/v1/credentials",
            &json!({"name": format!("{name}_pw"), "kind": "password", "username": user,
                "secret": {"password": password}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": name, "kind": "database", "attributes": {"engine": engine,
                "host": "127.0.0.1", "port": 3306, "database": "test", "user": user,
                "credential": format!("{name}_pw")}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_on_mariadb_or_mysql_passes_on_a_true_value_and_fails_on_zero() {
    let Some((user, password)) = mariadb_user().await else {
        return;
    };
    let app = TestApp::spawn_with_engine(1).await;
    mariadb_resource(&app, "maria", "mariadb", user, password).await;
    mariadb_resource(&app, "my", "mysql", user, password).await;
    let e = run_single(
        &app,
        "maria_up",
        "check",
        json!({"type": "sql", "database": "maria",
        "query": "SELECT 1", "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        detail(&e, 0),
        "127.0.0.1:3306/test: the query returned 1",
        "{e}"
    );
    let e = run_single(
        &app,
        "my_writable",
        "check",
        json!({"type": "sql", "database": "my",
        "query": "SELECT @@read_only = 0", "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let e = run_single(
        &app,
        "maria_zero",
        "check",
        json!({"type": "sql", "database": "maria",
        "query": "SELECT 0", "interval": "1s", "until": "2s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(step_error(&e).contains("the query returned 0"), "{e}");
    let e = run_single(
        &app,
        "maria_null",
        "check",
        json!({"type": "sql", "database": "maria",
        "query": "SELECT NULL", "interval": "1s", "until": "1s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(step_error(&e).contains("returned NULL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_with_a_wrong_password_fails_without_quoting_it() {
    let Some((user, _)) = mariadb_user().await else {
        return;
    };
    let app = TestApp::spawn_with_engine(1).await;
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    mariadb_resource(&app, "maria", "mariadb", user, &wrong).await;
    let e = run_single(
        &app,
        "maria_denied",
        "check",
        json!({"type": "sql", "database": "maria",
        "interval": "1s", "until": "1s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(step_error(&e).contains("Access denied"), "{e}");
    let id = e["id"].as_str().unwrap();
    let logs = app.get(&format!("/api/v1/executions/{id}/logs")).await.text;
    let report = app
        .get(&format!("/api/v1/executions/{id}/report"))
        .await
        .text;
    for (what, text) in [
        ("execution", e.to_string()),
        ("logs", logs),
        ("report", report),
        ("service log", captured_logs()),
    ] {
        assert!(!text.contains(&wrong), "the password is in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_on_an_unsupported_engine_fails_naming_the_supported_ones() {
    let app = TestApp::spawn_with_engine(1).await;
    let r = app
        .post_json(
            "/api/v1/resources",
            &json!({"name": "mssql", "kind": "database",
                "attributes": {"engine": "sqlserver", "host": "127.0.0.1"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let e = run_single(
        &app,
        "mssql_up",
        "check",
        json!({"type": "sql", "database": "mssql",
        "interval": "1s", "until": "5s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        step_error(&e).contains("PostgreSQL, MySQL and MariaDB")
            && step_error(&e).contains("`sqlserver` is not supported"),
        "{e}"
    );
    assert_eq!(
        e["steps"][0]["outputs"]["tries"], 1,
        "an unsupported engine is not retried: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_passes_when_the_body_matches_the_regex_and_every_json_pointer() {
    let app = TestApp::spawn_with_engine(1).await;
    let (base, _server) = start_http_server();
    let e = run_single(&app, "healthy", "check", json!({"type": "http", "url": format!("{base}/health"),
        "matches": r#""version":\s*"6\.\d+\.\d+""#,
        "json": {"/status": "{{ 'o' ~ 'k' }}", "/replicas": 3.0, "/db/role": "primary", "/db": {"role": "primary", "lag": 0}},
        "interval": "1s", "until": "5s"}))
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let seen = detail(&e, 0);
    assert!(
        seen.contains("/status = \"ok\"") && seen.contains("/replicas = 3"),
        "the evidence shows what the pointers held: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_fails_naming_the_pointer_that_differs_or_the_regex_that_misses() {
    let app = TestApp::spawn_with_engine(1).await;
    let (base, _server) = start_http_server();
    let health = format!("{base}/health");
    let e = run_single(
        &app,
        "replica",
        "check",
        json!({"type": "http", "url": health,
        "json": {"/status": "ok", "/db/role": "replica"}, "interval": "1s", "until": "2s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        step_error(&e).contains("`/db/role` is \"primary\", expected \"replica\""),
        "{e}"
    );
    let e = run_single(
        &app,
        "missing",
        "check",
        json!({"type": "http", "url": health,
        "json": {"/leader": true}, "interval": "1s", "until": "1s"}),
    )
    .await;
    assert!(step_error(&e).contains("nothing at `/leader`"), "{e}");
    let e = run_single(
        &app,
        "v7",
        "check",
        json!({"type": "http", "url": health,
        "matches": r#""version":\s*"7\."#, "interval": "1s", "until": "1s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(step_error(&e).contains("does not match"), "{e}");
    let e = run_single(
        &app,
        "not_json",
        "check",
        json!({"type": "http", "url": format!("{base}/status/200"),
        "json": {"/status": "ok"}, "interval": "1s", "until": "1s"}),
    )
    .await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(step_error(&e).contains("the body is not JSON"), "{e}");
}

#[tokio::test]
async fn saving_a_check_with_a_bad_regex_pointer_address_or_server_names_each_field() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "bad_http", "kind": "check", "params": {"type": "http",
                "url": "https://www.example.com/", "matches": "(unclosed",
                "json": {"status": "ok", "/ok": 1}}}),
        )
        .await;
    r.assert_problem(400, "validation");
    assert_eq!(
        r.error_fields(),
        vec!["params.matches", "params.json.status"],
        "{}",
        r.text
    );
    assert!(r.text.contains("unclosed group"), "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "bad_dns", "kind": "check", "params": {"type": "dns",
                "name": "www.example.com", "expect": ["203.0.113.5", "www.example.net"],
                "server": "ns1.example.com:53"}}),
        )
        .await;
    r.assert_problem(400, "validation");
    assert_eq!(
        r.error_fields(),
        vec!["params.expect[1]", "params.server"],
        "{}",
        r.text
    );
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": "tcp_regex", "kind": "check", "params": {"type": "tcp",
                "host": "10.0.0.5", "port": 22, "matches": "SSH"}}),
        )
        .await;
    assert_eq!(r.error_fields(), vec!["params.matches"], "{}", r.text);
}
