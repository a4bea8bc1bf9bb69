//! The seed's two scenarios (examples/vmware-to-cloud-mysql, examples/cross-region-rds) run end
//! to end as drills: the simulator recovers the hosts onto loopback addresses where real sshd's
//! started here answer, scripts run on a jump server, checks probe real nginx, MariaDB and
//! dnsmasq, and the report shows every step, its evidence and the measured RTO.
//!
//! The steps the examples run only in a failover run in these drills too (`run_in: both`): the
//! point is to exercise them for real. Tools the seed calls (MHA, the DRS SDK scripts,
//! docker-compose) are small shell stand-ins that check their arguments and say what they did.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dr_orchestrator::providers::simulator::{self, RunningSimulator, SimAction, SimHost};
use reqwest::Method;
use serde_json::{json, Value};

use crate::checks::{mariadb_user, Dnsmasq};
use crate::common::{captured_logs, send, start_http_server, TestApp};
use crate::engine::{finished, logs, step, wait_for};
use crate::sshd::{self, Fixture, Options, Sshd, KEY_USER, PASSWORD, PASSWORD_USER};

async fn created(app: &TestApp, path: &str, body: Value) {
    let r = app.post_json(path, &body).await;
    assert_eq!(r.status, 201, "{path}: {}", r.text);
}

/// The sshd fixture, or `None`, said loudly, when it or one of `tools` (path, Debian package) is
/// not installed.
fn tools_present(tools: &[(&str, &str)]) -> Option<&'static Fixture> {
    let f = sshd::fixture()?;
    for (tool, package) in tools {
        if !Path::new(tool).exists() {
            eprintln!("SKIPPED: {tool} is not installed (Debian: {package})");
            return None;
        }
    }
    Some(f)
}

/// A fresh directory owned by `user` (the SSH user the scripts run as), removed on drop.
struct OwnedDir(PathBuf);

impl std::ops::Deref for OwnedDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn owned_dir(tag: &str, user: &str) -> OwnedDir {
    let dir =
        std::env::temp_dir().join(format!("dro-scen-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(&dir, user);
    OwnedDir(dir)
}

fn chown(path: &Path, user: &str) {
    let ok = Command::new("chown")
        .args(["-R", user])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "chown {user} {}", path.display());
}

/// Writes an executable file.
fn executable(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A real nginx, run as the SSH user who owns its configuration (as an admin would with sudo),
/// proxying `listen` to the upstream `upstream`. Stopped on drop.
struct Nginx {
    child: Child,
    _dir: OwnedDir,
    conf: PathBuf,
    url: String,
}

impl Nginx {
    fn start(user: &str, listen: &str, upstream: &str) -> Self {
        let dir = owned_dir("nginx", user);
        let port = sshd::free_port();
        let d = dir.display();
        let conf = dir.join("wordpress.conf");
        std::fs::write(
            &conf,
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
                 access_log off;\nclient_body_temp_path {d}; proxy_temp_path {d};\n\
                 fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
                 upstream wordpress {{ server {upstream}; }}\n\
                 server {{ listen {listen}:{port}; location / {{ proxy_pass http://wordpress; }} }}\n}}\n"
            ),
        )
        .unwrap();
        chown(&dir, user);
        use std::os::unix::process::CommandExt;
        let account = nix::unistd::User::from_name(user)
            .unwrap()
            .expect("the sshd fixture made the user");
        // nginx itself is the child (`runuser` would orphan it when killed).
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .uid(account.uid.as_raw())
            .gid(account.gid.as_raw())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            _dir: dir,
            conf,
            url: format!("http://{listen}:{port}/"),
        }
    }

    /// The status nginx answers with, once it answers (it fails the test after 10 s).
    async fn status(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match reqwest::get(&self.url).await {
                Ok(r) => return r.status().as_u16(),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("nginx did not start on {}: {e}", self.url),
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// The recovered WordPress, as its VM brings it up: an HTTP service on `ip` answering with a
/// WordPress page. Returns its port.
fn wordpress_site(ip: &str) -> (u16, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let server = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok()
                .content_type("text/html")
                .body("<!doctype html><title>WordPress</title><h1>Welcome back</h1>")
        }))
    })
    .workers(1)
    .disable_signals()
    .bind((ip, 0))
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

/// One sshd per recovered host, each on its own loopback address and the same port (so the
/// boot step can wait for that port on every host).
fn host_sshds(f: &Fixture, ips: &[&str]) -> (u16, Vec<Sshd>) {
    let port = sshd::free_port();
    let sshds = ips
        .iter()
        .map(|ip| {
            Sshd::start(
                f,
                Options {
                    listen: ip,
                    port,
                    ..Options::default()
                },
            )
        })
        .collect();
    (port, sshds)
}

/// A simulator whose hosts recover and boot in 300 ms.
async fn simulator(hosts: &[(&str, &str, Option<&str>)]) -> RunningSimulator {
    let config = simulator::SimulatorConfig {
        boot_time: Duration::from_millis(300),
        power_on_time: Duration::from_millis(300),
        hosts: hosts
            .iter()
            .map(|(id, private_ip, public_ip)| SimHost {
                private_ip: Some((*private_ip).into()),
                public_ip: public_ip.map(Into::into),
                ..SimHost::new(id)
            })
            .collect(),
        ..simulator::SimulatorConfig::default()
    };
    simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn provider(app: &TestApp, sim: &RunningSimulator) {
    created(
        app,
        "/api/v1/providers",
        json!({"name": "sim", "kind": "simulator", "base_url": sim.url(),
               "settings": {"poll_interval": "1s"}}),
    )
    .await;
}

async fn define_step(app: &TestApp, name: &str, kind: &str, params: Value, extra: Value) {
    let mut body = json!({"name": name, "kind": kind, "params": params});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    created(app, "/api/v1/steps", body).await;
}

/// Approves the plan's sign-off once it waits for a person, as the operator on duty would.
async fn sign_off(app: &TestApp, id: &str, key: &str) {
    let e = wait_for(app, id, 50, |e| {
        step(e, key)["status"] == "waiting_approval"
            || matches!(
                e["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "paused")
            )
    })
    .await;
    assert_eq!(step(&e, key)["status"], "waiting_approval", "{e}");
    let r = send(
        app.as_role(
            dr_orchestrator::auth::Role::Operator,
            Method::POST,
            &format!("/api/v1/executions/{id}/steps/{key}/approve"),
        )
        .json(&json!({"comment": "pages and latest posts checked"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Every log line of the execution, all steps.
async fn all_logs(app: &TestApp, id: &str) -> String {
    let mut all = String::new();
    let mut after = 0;
    loop {
        let r = app
            .get(&format!(
                "/api/v1/executions/{id}/logs?after={after}&limit=5000"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        all.push_str(&r.text);
        match r.body["next_after"].as_i64() {
            Some(n) => after = n,
            None => return all,
        }
    }
}

/// The drill succeeded with every step, and its report says so: each step in the timeline,
/// evidence for checks, host steps and approvals, the hosts recovered, the measured RTO within
/// the target (in JSON and Markdown). Secrets appear nowhere. Returns the JSON report.
async fn assert_drill_report(
    app: &TestApp,
    id: &str,
    keys: &[&str],
    hosts: &[&str],
    secrets: &[&str],
) -> Value {
    let e = app.get(&format!("/api/v1/executions/{id}")).await;
    assert_eq!(e.body["status"], "succeeded", "{}", e.text);
    for key in keys {
        assert_eq!(
            step(&e.body, key)["status"],
            "succeeded",
            "{key}: {}",
            e.text
        );
    }
    assert_eq!(e.body["steps"].as_array().unwrap().len(), keys.len());

    let r = app.get(&format!("/api/v1/executions/{id}/report")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let report = &r.body;
    assert_eq!(report["mode"], "drill", "{}", r.text);
    assert_eq!(report["status"], "succeeded", "{}", r.text);
    let timeline = report["timeline"].as_array().unwrap();
    for key in keys {
        let s = timeline
            .iter()
            .find(|s| s["key"] == *key)
            .unwrap_or_else(|| panic!("{key} is not in the timeline: {}", r.text));
        assert_eq!(s["status"], "succeeded", "{s}");
        assert!(s["duration_secs"].as_f64().is_some(), "{s}");
        match s["kind"].as_str().unwrap() {
            "check" => {
                let tries = s["evidence"]["outputs"]["evidence"].as_array();
                assert!(tries.is_some_and(|t| !t.is_empty()), "{key}: {s}");
            }
            "host_recovery" | "power_on" => {
                for h in hosts {
                    assert!(
                        s["evidence"]["outputs"]["hosts"][h]["instance_id"].is_string(),
                        "{key} has no evidence of {h}: {s}"
                    );
                }
            }
            "manual_approval" => {
                assert_eq!(s["evidence"]["approval"]["by"], "test-operator", "{s}");
            }
            _ => {}
        }
    }
    let rto = report["measured_rto_secs"]
        .as_f64()
        .expect("a measured RTO");
    assert!(rto > 0.0 && rto < 900.0, "{rto}");
    assert!(report["target_rto"].is_string() || report["target_rto"].is_number());
    assert_eq!(report["rto_met"], true, "{}", r.text);
    let recovered = report["recovered"].as_array().unwrap();
    assert_eq!(recovered.len(), hosts.len(), "{}", r.text);
    for h in hosts {
        assert!(
            recovered
                .iter()
                .any(|i| i["host"] == *h && i["instance_id"].is_string()),
            "{h} is not in `recovered`: {}",
            r.text
        );
    }

    let md = send(
        app.admin(Method::GET, &format!("/api/v1/executions/{id}/report"))
            .header("Accept", "text/markdown"),
    )
    .await;
    assert_eq!(md.status, 200, "{}", md.text);
    assert!(
        md.text.contains("- Measured RTO: ") && md.text.contains("(met)"),
        "{}",
        md.text
    );
    for key in keys {
        assert!(
            md.text.contains(&format!("| {key} |")),
            "{key}: {}",
            md.text
        );
    }

    let everything = [
        e.text.clone(),
        r.text.clone(),
        md.text,
        all_logs(app, id).await,
        app.get(&format!("/api/v1/executions/{id}/events"))
            .await
            .text,
        captured_logs(),
    ];
    for secret in secrets {
        for (i, text) in everything.iter().enumerate() {
            assert!(
                !text.contains(secret),
                "a secret appears in output {i}: {text}"
            );
        }
    }
    r.body
}

/// The provider was asked to recover each host once, and to power them on in `order`.
fn assert_recovered_once_and_booted_in_order(sim: &RunningSimulator, order: &[&str]) {
    let calls = sim.calls();
    for id in order {
        assert_eq!(sim.accepted(SimAction::Recover, id), 1, "{id}: {calls:?}");
    }
    let asked = calls
        .iter()
        .filter(|c| c.action == SimAction::Recover)
        .count();
    assert_eq!(asked, order.len(), "{calls:?}");
    let booted: Vec<&str> = calls
        .iter()
        .filter(|c| c.action == SimAction::PowerOn && c.accepted)
        .map(|c| c.host_id.as_str())
        .collect();
    assert_eq!(booted, order, "{calls:?}");
}

/// Polls until `url` answers with a body containing `text` (nginx's reload lets the old worker
/// answer for a moment).
async fn answers(url: &str, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == 200 && r.text().await.is_ok_and(|b| b.contains(text)) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ----------------------------------------------------------------------------------------------
// Scenario 1
// ----------------------------------------------------------------------------------------------

/// Stands in for MHA's masterha_master_switch: checks its arguments, records the switch next to
/// its configuration and prints what it did.
const MHA: &str = r#"#!/bin/sh
set -e
for a in "$@"; do
  case $a in
    --master_state=*) state=${a#*=} ;;
    --conf=*) conf=${a#*=} ;;
    --dead_master_host=*) dead=${a#*=} ;;
    --new_master_host=*) new=${a#*=} ;;
    --ignore_last_failover|--interactive=0) ;;
    *) echo "masterha_master_switch: unknown argument $a" >&2; exit 2 ;;
  esac
done
if [ "$state" != dead ] || [ ! -f "$conf" ] || [ -z "$dead" ] || [ -z "$new" ]; then
  echo "usage: masterha_master_switch --master_state=dead --conf=FILE --dead_master_host=H --new_master_host=H" >&2
  exit 2
fi
echo "Dead master: $dead. Promoting $new($new:3306) (configuration $conf)."
echo "$new" > "$(dirname "$conf")/promoted"
echo "Master failover to $new($new:3306) completed successfully."
"#;

/// Stands in for docker-compose in the WordPress directory: says what it would do with the
/// database host it would start WordPress against.
const DOCKER_COMPOSE: &str = r#"#!/bin/sh
echo "docker-compose $*: wordpress with$(grep WORDPRESS_DB_HOST docker-compose.yml | tr -s ' ')"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_vmware_to_cloud_mysql_ha_runs_as_a_drill_end_to_end() {
    let Some(f) = tools_present(&[
        ("/usr/sbin/nginx", "nginx"),
        ("/usr/bin/mysqladmin", "mariadb-client"),
    ]) else {
        return;
    };
    let Some((db_user, db_password)) = mariadb_user().await else {
        return;
    };
    // Production addresses are loopback addresses nothing listens on: the old upstream is dead.
    // The simulator recovers the DR database VM onto 127.0.0.1 (where MariaDB runs), WordPress
    // onto 127.0.0.21 and Nginx onto 127.0.0.22, each with an sshd of its own.
    let (ssh_port, _hosts) = host_sshds(f, &["127.0.0.1", "127.0.0.21", "127.0.0.22"]);
    let jump = Sshd::start(
        f,
        Options {
            listen: "127.0.0.10",
            host_key: 1,
            ..Options::default()
        },
    );
    let sim = simulator(&[
        ("vm-mysql-dr-01", "127.0.0.1", None),
        ("vm-wordpress-01", "127.0.0.21", None),
        ("vm-nginx-01", "127.0.0.22", Some("198.51.100.122")),
    ])
    .await;
    let (wp_port, _wordpress) = wordpress_site("127.0.0.21");
    let nginx = Nginx::start(KEY_USER, "127.0.0.22", &format!("127.0.1.21:{wp_port}"));
    assert_eq!(nginx.status().await, 502, "the old upstream must be dead");
    let (dns_api, _dns_api) = start_http_server();

    // The jump server's tools (MHA) and the WordPress directory on the recovered host.
    let tools = owned_dir("jump01", KEY_USER);
    executable(&tools.join("bin/masterha_master_switch"), MHA);
    std::fs::write(
        tools.join("app1.cnf"),
        "[server default]\nmanager_workdir=/var/log/mha\n",
    )
    .unwrap();
    let wp_dir = owned_dir("wordpress", KEY_USER);
    executable(&wp_dir.join("bin/docker-compose"), DOCKER_COMPOSE);
    std::fs::write(
        wp_dir.join("docker-compose.yml"),
        "services:\n  wordpress:\n    environment:\n      WORDPRESS_DB_HOST: 192.168.10.20:3306\n",
    )
    .unwrap();
    std::fs::write(
        wp_dir.join("wp-config.php"),
        "<?php\ndefine( 'WP_HOME', 'http://192.168.10.22' );\ndefine( 'WP_SITEURL', 'http://192.168.10.22' );\n",
    )
    .unwrap();
    chown(&tools, KEY_USER);
    chown(&wp_dir, KEY_USER);

    let app = TestApp::spawn_with_engine(4).await;
    provider(&app, &sim).await;
    for body in [
        json!({"name": "jump_key", "kind": "ssh_private_key", "username": KEY_USER,
               "description": "ops user on the DR jump server", "secret": {"private_key": f.key}}),
        json!({"name": "web_root_key", "kind": "ssh_private_key", "username": KEY_USER,
               "description": "the recovered hosts' admin", "secret": {"private_key": f.key}}),
        json!({"name": "mysql_admin", "kind": "password", "username": db_user,
               "secret": {"password": db_password}}),
        json!({"name": "dns_api_token", "kind": "token", "secret": {"token": "t0k"}}),
    ] {
        created(&app, "/api/v1/credentials", body).await;
    }
    let ssh = json!({"user": KEY_USER, "credential": "web_root_key", "port": ssh_port,
                     "trust_on_first_use": true});
    for body in [
        json!({"name": "jump01", "kind": "jump_server",
               "attributes": {"address": "127.0.0.10", "port": jump.port, "user": KEY_USER,
                              "credential": "jump_key", "host_key_fingerprint": jump.fingerprint,
                              "extra": {"tools": tools.join("bin")}}}),
        json!({"name": "mysql_dr", "kind": "host", "labels": {"app": "wordpress", "tier": "db"},
               "attributes": {"private_ip": "127.0.1.20", "os": "linux", "provider": "sim",
                              "provider_host_id": "vm-mysql-dr-01", "ssh": ssh}}),
        json!({"name": "wordpress", "kind": "host", "labels": {"app": "wordpress", "tier": "web"},
               "attributes": {"private_ip": "127.0.1.21", "os": "linux", "provider": "sim",
                              "provider_host_id": "vm-wordpress-01", "ssh": ssh,
                              "extra": {"app_dir": &*wp_dir}}}),
        json!({"name": "nginx", "kind": "host", "labels": {"app": "wordpress", "tier": "edge"},
               "attributes": {"private_ip": "127.0.1.22", "public_ip": "198.51.100.22",
                              "os": "linux", "provider": "sim", "provider_host_id": "vm-nginx-01",
                              "ssh": ssh, "extra": {"nginx_conf": nginx.conf}}}),
        json!({"name": "mysql_primary", "kind": "database",
               "attributes": {"engine": "mysql", "host": "192.168.10.20", "port": 3306, "role": "primary"}}),
        json!({"name": "mysql_replica", "kind": "database",
               "attributes": {"engine": "mysql", "host": "127.0.0.1", "port": 3306, "database": "test",
                              "user": db_user, "credential": "mysql_admin", "role": "replica",
                              "extra": {"mha_config": tools.join("app1.cnf")}}}),
        json!({"name": "site_dns", "kind": "dns_record",
               "attributes": {"zone": "example.com", "record": "www.example.com", "type": "A",
                              "value": "198.51.100.22", "ttl": 60}}),
    ] {
        created(&app, "/api/v1/resources", body).await;
    }

    let recovered_wordpress = "{{ steps.boot.outputs.hosts.wordpress.private_ip }}";
    let recovered_nginx = "{{ steps.boot.outputs.hosts.nginx.private_ip }}";
    for (name, kind, params, extra) in [
        (
            "recover_hosts",
            "host_recovery",
            json!({"hosts": ["mysql_dr", "wordpress", "nginx"], "snapshot": "latest", "wait": "2m"}),
            json!({}),
        ),
        (
            "boot_db_app_web",
            "power_on",
            json!({"hosts": ["mysql_dr", "wordpress", "nginx"], "wait_until_running": "1m", "port": ssh_port}),
            json!({}),
        ),
        (
            "replica_reachable",
            "check",
            json!({"type": "ping", "host": "{{ resources.mysql_replica.host }}", "interval": "1s", "until": "20s"}),
            json!({}),
        ),
        (
            "promote_replica",
            "remote_script",
            json!({"target": "jump01", "script":
                "PATH={{ resources.jump01.extra.tools }}:\"$PATH\"\n\
                 masterha_master_switch --master_state=dead \\\n\
                 --conf={{ resources.mysql_replica.extra.mha_config }} \\\n\
                 --dead_master_host={{ resources.mysql_primary.host }} \\\n\
                 --new_master_host={{ resources.mysql_replica.host }} \\\n\
                 --ignore_last_failover --interactive=0"}),
            json!({"timeout": "1m"}),
        ),
        (
            "replica_accepts_connections",
            "remote_script",
            json!({"target": "jump01",
                "script": "mysqladmin -h {{ resources.mysql_replica.host }} -u \"$MYSQL_USER\" --connect-timeout=10 ping\n\
                           mysqladmin -h {{ resources.mysql_replica.host }} -u \"$MYSQL_USER\" --connect-timeout=10 status",
                "env": {"MYSQL_USER": "{{ resources.mysql_replica.user }}"},
                "credentials": {"MYSQL_PWD": "mysql_admin.password"}}),
            json!({"idempotent": true}),
        ),
        (
            "replica_answers_sql",
            "check",
            json!({"type": "sql", "database": "mysql_replica", "query": "SELECT 1", "interval": "1s", "until": "20s"}),
            json!({}),
        ),
        (
            "nginx_upstream_switch",
            "remote_script",
            json!({"target": "nginx", "address": recovered_nginx, "via": "jump01", "script":
                "set -e\n\
                 conf={{ resources.nginx.extra.nginx_conf }}\n\
                 cp \"$conf\" \"$conf.bak\"\n\
                 sed -i \"s/{{ resources.wordpress.private_ip | bare }}/{{ steps.boot.outputs.hosts.wordpress.private_ip | bare }}/g\" \"$conf\"\n\
                 /usr/sbin/nginx -t -c \"$conf\"\n\
                 /usr/sbin/nginx -s reload -c \"$conf\""}),
            json!({}),
        ),
        (
            "nginx_answers",
            "check",
            json!({"type": "http", "url": nginx.url.replace("127.0.0.22", recovered_nginx),
                "expected_status": [200, 301, 302], "contains": "WordPress", "interval": "1s", "until": "30s"}),
            json!({}),
        ),
        (
            "wordpress_db_switch",
            "remote_script",
            json!({"target": "wordpress", "address": recovered_wordpress, "via": "jump01", "script":
                "set -e\n\
                 cd {{ resources.wordpress.extra.app_dir }}\n\
                 PATH=\"$PWD/bin:$PATH\"\n\
                 docker-compose down\n\
                 sed -i \"s/^\\( *WORDPRESS_DB_HOST:\\).*/\\1 {{ resources.mysql_replica.host | bare }}:3306/\" docker-compose.yml\n\
                 docker-compose up -d"}),
            json!({}),
        ),
        (
            "wordpress_answers",
            "check",
            json!({"type": "http", "url": format!("http://{recovered_wordpress}:{wp_port}/"),
                "contains": "WordPress", "interval": "1s", "until": "30s"}),
            json!({}),
        ),
        (
            "wordpress_site_url",
            "remote_script",
            json!({"target": "wordpress", "address": recovered_wordpress, "via": "jump01", "script":
                "set -e\n\
                 url={{ params.site_url }}\n\
                 sed -i \"s|define( *'WP_HOME'.*|define('WP_HOME', '$url');|; s|define( *'WP_SITEURL'.*|define('WP_SITEURL', '$url');|\" {{ resources.wordpress.extra.app_dir }}/wp-config.php"}),
            json!({}),
        ),
        (
            "dns_switch",
            "http_request",
            json!({"method": "PUT", "url": format!("{dns_api}/api/records/{{{{ resources.site_dns.record }}}}"),
                "auth": {"bearer": "dns_api_token"},
                "body": {"type": "A", "ttl": 60, "value": "{{ steps.boot.outputs.hosts.nginx.public_ip }}"},
                "expected_status": [200, 204], "outputs": {"dns_value": "/data/value"}}),
            json!({}),
        ),
        (
            "site_answers",
            "check",
            json!({"type": "http", "url": "{{ params.site_url }}", "contains": "WordPress", "interval": "1s", "until": "30s"}),
            json!({}),
        ),
        (
            "business_signoff",
            "manual_approval",
            json!({"instructions": "Open the site, log in, check the latest posts against production's last known state.",
                "approvers_role": "operator", "timeout": "5m"}),
            json!({}),
        ),
    ] {
        define_step(&app, name, kind, params, extra).await;
    }
    // The seed's plan; the failover-only steps run in this drill too.
    let keys = [
        "recover",
        "replica_reachable",
        "promote_replica",
        "replica_writable",
        "replica_sql",
        "boot",
        "nginx_switch",
        "nginx_up",
        "wordpress_db",
        "wordpress_up",
        "site_url",
        "dns",
        "site_up",
        "signoff",
    ];
    created(
        &app,
        "/api/v1/plans",
        json!({"name": "vmware_to_cloud_mysql", "target_rto": "15m",
               "description": "VMware to cloud, MySQL primary/replica; site back within 15 minutes",
               "parameters": {"site_url": {"type": "string", "default": "http://www.example.com"}},
               "steps": [
                   {"key": "recover", "step": "recover_hosts"},
                   {"key": "replica_reachable", "step": "replica_reachable"},
                   {"key": "promote_replica", "step": "promote_replica", "depends_on": ["replica_reachable"], "run_in": "both", "on_failure": "pause"},
                   {"key": "replica_writable", "step": "replica_accepts_connections", "depends_on": ["promote_replica"], "run_in": "both"},
                   {"key": "replica_sql", "step": "replica_answers_sql", "depends_on": ["promote_replica"], "run_in": "both"},
                   {"key": "boot", "step": "boot_db_app_web", "depends_on": ["recover"]},
                   {"key": "nginx_switch", "step": "nginx_upstream_switch", "depends_on": ["boot"]},
                   {"key": "nginx_up", "step": "nginx_answers", "depends_on": ["nginx_switch"]},
                   {"key": "wordpress_db", "step": "wordpress_db_switch", "depends_on": ["boot", "replica_writable", "replica_sql"], "run_in": "both"},
                   {"key": "wordpress_up", "step": "wordpress_answers", "depends_on": ["wordpress_db"], "run_in": "both"},
                   {"key": "site_url", "step": "wordpress_site_url", "depends_on": ["boot"]},
                   {"key": "dns", "step": "dns_switch", "depends_on": ["nginx_up", "wordpress_up", "site_url"], "run_in": "both"},
                   {"key": "site_up", "step": "site_answers", "depends_on": ["dns"], "run_in": "both"},
                   {"key": "signoff", "step": "business_signoff", "depends_on": ["site_up"], "run_in": "both"},
               ]}),
    )
    .await;
    let r = send(
        app.admin(
            Method::POST,
            "/api/v1/plans/vmware_to_cloud_mysql/executions",
        )
        .json(&json!({"mode": "drill", "params": {"site_url": nginx.url}})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    sign_off(&app, &id, "signoff").await;
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}");

    // What the steps did, on the hosts themselves.
    assert_eq!(
        std::fs::read_to_string(tools.join("promoted"))
            .unwrap()
            .trim(),
        "127.0.0.1"
    );
    let promote = logs(&app, &id, "promote_replica").await;
    assert!(
        promote.contains("Master failover to 127.0.0.1(127.0.0.1:3306) completed successfully"),
        "{promote}"
    );
    let ping = logs(&app, &id, "replica_writable").await;
    assert!(
        ping.contains("mysqld is alive") && ping.contains("Uptime:"),
        "{ping}"
    );
    let conf = std::fs::read_to_string(&nginx.conf).unwrap();
    assert!(
        conf.contains(&format!("server 127.0.0.21:{wp_port};")),
        "{conf}"
    );
    let switch = logs(&app, &id, "nginx_switch").await;
    assert!(
        switch.contains("test is successful") && switch.contains("through jump server `jump01`"),
        "{switch}"
    );
    assert!(
        answers(&nginx.url, "WordPress").await,
        "nginx still proxies to the old upstream"
    );
    let compose = std::fs::read_to_string(wp_dir.join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains("WORDPRESS_DB_HOST: 127.0.0.1:3306"),
        "{compose}"
    );
    let wp_config = std::fs::read_to_string(wp_dir.join("wp-config.php")).unwrap();
    assert!(
        wp_config.contains(&format!("define('WP_HOME', '{}');", nginx.url)),
        "{wp_config}"
    );
    assert_eq!(
        step(&e, "dns")["outputs"]["dns_value"],
        "198.51.100.122",
        "{e}"
    );
    let boot = &step(&e, "boot")["outputs"]["hosts"];
    for (h, ip) in [
        ("mysql_dr", "127.0.0.1"),
        ("wordpress", "127.0.0.21"),
        ("nginx", "127.0.0.22"),
    ] {
        assert_eq!(boot[h]["state"], "running", "{boot}");
        assert_eq!(boot[h]["private_ip"], ip, "{boot}");
    }
    // The recovered copies' host keys were pinned on first use.
    let r = app.get("/api/v1/resources/nginx").await;
    assert_eq!(
        r.body["attributes"]["ssh"]["host_key_fingerprint"], f.host_keys[0].1,
        "{}",
        r.text
    );

    assert_recovered_once_and_booted_in_order(
        &sim,
        &["vm-mysql-dr-01", "vm-wordpress-01", "vm-nginx-01"],
    );
    let private_key_line = f.key.lines().nth(1).unwrap();
    assert_drill_report(
        &app,
        &id,
        &keys,
        &["mysql_dr", "wordpress", "nginx"],
        &[db_password, private_key_line, "t0k"],
    )
    .await;
}

// ----------------------------------------------------------------------------------------------
// Scenario 2
// ----------------------------------------------------------------------------------------------

const AK: &str = "AKDRO7SCENARIOKEYID42";
const SK: &str = "drs-Sk/9f3Kq+scenario-Secret-77";

/// Stands in for master.py: asks DRS to switch a job over, authenticated by the cloud SDK keys
/// from the environment; records the job's direction beside itself.
const DRS_SWITCHOVER: &str = r#"#!/bin/sh
set -e
if [ -z "$CLOUD_SDK_AK" ] || [ -z "$CLOUD_SDK_SK" ]; then
  echo "CLOUD_SDK_AK and CLOUD_SDK_SK must be set" >&2; exit 2
fi
while [ $# -gt 0 ]; do
  case $1 in
    --job-id) job=$2; shift 2 ;;
    --region) region=$2; shift 2 ;;
    *) echo "master.py: unknown argument $1" >&2; exit 2 ;;
  esac
done
home=$(dirname "$0")/..
printf %s "$CLOUD_SDK_AK:$CLOUD_SDK_SK" | sha256sum | cut -d' ' -f1 > "$home/drs-$job.caller"
echo switching > "$home/drs-$job.direction"
echo "batch_switchover job $job in $region as $CLOUD_SDK_AK: accepted"
"#;

/// Stands in for master_status.py: exits 1 while the job's direction is not "up" yet. The job
/// finishes switching between two polls.
const DRS_STATUS: &str = r#"#!/bin/sh
if [ -z "$CLOUD_SDK_AK" ] || [ -z "$CLOUD_SDK_SK" ]; then
  echo "CLOUD_SDK_AK and CLOUD_SDK_SK must be set" >&2; exit 2
fi
[ "$1" = --job-id ] && job=$2
home=$(dirname "$0")/..
direction=$(cat "$home/drs-$job.direction" 2>/dev/null || echo down)
echo "job $job direction: $direction"
case $direction in
  up) exit 0 ;;
  switching) echo up > "$home/drs-$job.direction"; exit 1 ;;
  *) exit 1 ;;
esac
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_cross_region_with_drs_switchover_and_dns_runs_as_a_drill_end_to_end() {
    let Some(f) = tools_present(&[("/usr/sbin/nginx", "nginx")]) else {
        return;
    };
    // Region B: WordPress recovered onto 127.0.0.51, Nginx onto 127.0.0.52 (its public address,
    // where it serves the site, is 127.0.0.62); production's addresses are dead loopback ones.
    let (ssh_port, _hosts) = host_sshds(f, &["127.0.0.51", "127.0.0.52"]);
    let jump = Sshd::start(
        f,
        Options {
            listen: "127.0.0.40",
            host_key: 1,
            ..Options::default()
        },
    );
    let sim = simulator(&[
        ("ecs-wordpress-a", "127.0.0.51", None),
        ("ecs-nginx-a", "127.0.0.52", Some("127.0.0.62")),
    ])
    .await;
    let (wp_port, _wordpress) = wordpress_site("127.0.0.51");
    let nginx = Nginx::start(
        PASSWORD_USER,
        "127.0.0.62",
        &format!("127.0.1.51:{wp_port}"),
    );
    assert_eq!(nginx.status().await, 502, "the old upstream must be dead");
    // The DR DNS the jump server manages: dnsmasq re-reads a hosts directory when a file in it
    // changes; it still answers with production's public address.
    let drs_home = owned_dir("jump_b", KEY_USER);
    executable(&drs_home.join("bin/drs_switchover"), DRS_SWITCHOVER);
    executable(&drs_home.join("bin/drs_status"), DRS_STATUS);
    let zone = drs_home.join("dns");
    std::fs::create_dir(&zone).unwrap();
    std::fs::write(zone.join("site"), "198.51.100.44 www.dr-site.test\n").unwrap();
    chown(&drs_home, KEY_USER);
    let hostsdir = format!("--hostsdir={}", zone.display());
    let Some(dns) = Dnsmasq::start("", &[hostsdir.as_str()]) else {
        return;
    };

    let app = TestApp::spawn_with_engine(4).await;
    provider(&app, &sim).await;
    for body in [
        json!({"name": "jump_b_key", "kind": "ssh_private_key", "username": KEY_USER,
               "secret": {"private_key": f.key}}),
        json!({"name": "nginx_root", "kind": "ssh_password", "username": PASSWORD_USER,
               "secret": {"password": PASSWORD}}),
        json!({"name": "wordpress_root", "kind": "ssh_password", "username": PASSWORD_USER,
               "secret": {"password": PASSWORD}}),
        json!({"name": "cloud_keys", "kind": "access_key_pair",
               "description": "Cloud SDK keys allowed to switch the DRS job",
               "secret": {"access_key_id": AK, "secret_access_key": SK}}),
    ] {
        created(&app, "/api/v1/credentials", body).await;
    }
    for body in [
        json!({"name": "jump_b", "kind": "jump_server",
               "attributes": {"address": "127.0.0.40", "port": jump.port, "user": KEY_USER,
                              "credential": "jump_b_key", "trust_on_first_use": true,
                              "extra": {"drs_home": &*drs_home, "dns_zone": zone}}}),
        json!({"name": "wordpress", "kind": "host", "labels": {"app": "wordpress", "tier": "web"},
               "attributes": {"private_ip": "127.0.1.51", "provider": "sim",
                              "provider_host_id": "ecs-wordpress-a",
                              "ssh": {"user": PASSWORD_USER, "credential": "wordpress_root",
                                      "port": ssh_port, "trust_on_first_use": true}}}),
        json!({"name": "nginx", "kind": "host", "labels": {"app": "wordpress", "tier": "edge"},
               "attributes": {"private_ip": "127.0.1.52", "public_ip": "198.51.100.44",
                              "provider": "sim", "provider_host_id": "ecs-nginx-a",
                              "ssh": {"user": PASSWORD_USER, "credential": "nginx_root",
                                      "port": ssh_port, "trust_on_first_use": true},
                              "extra": {"nginx_conf": nginx.conf}}}),
        json!({"name": "rds_primary", "kind": "database",
               "attributes": {"engine": "mysql", "host": "rds-a.internal.example.com", "port": 3306, "role": "primary"}}),
        json!({"name": "rds_dr", "kind": "database",
               "attributes": {"engine": "mysql", "host": "rds-b.internal.example.com", "port": 3306,
                              "role": "replica", "extra": {"drs_job_id": "2f9c0d8e-drs-job", "region": "region-b"}}}),
    ] {
        created(&app, "/api/v1/resources", body).await;
    }

    let cloud_keys = json!({"CLOUD_SDK_AK": "cloud_keys.access_key_id",
                            "CLOUD_SDK_SK": "cloud_keys.secret_access_key"});
    let nginx_public = "{{ steps.boot.outputs.hosts.nginx.public_ip }}";
    for (name, kind, params, extra) in [
        (
            "recover_web_hosts",
            "host_recovery",
            json!({"hosts": {"selector": "app=wordpress"}, "snapshot": "latest", "wait": "2m"}),
            json!({}),
        ),
        (
            "boot_web_hosts",
            "power_on",
            json!({"hosts": ["wordpress", "nginx"], "wait_until_running": "1m", "port": ssh_port}),
            json!({}),
        ),
        (
            "drs_switchover",
            "remote_script",
            json!({"target": "jump_b", "credentials": cloud_keys, "script":
                "{{ resources.jump_b.extra.drs_home }}/bin/drs_switchover --job-id {{ resources.rds_dr.extra.drs_job_id }} --region {{ resources.rds_dr.extra.region }}"}),
            json!({}),
        ),
        (
            "drs_direction_check",
            "remote_script",
            json!({"target": "jump_b", "credentials": cloud_keys, "script":
                "{{ resources.jump_b.extra.drs_home }}/bin/drs_status --job-id {{ resources.rds_dr.extra.drs_job_id }}"}),
            json!({"retry": {"max_attempts": 3, "delay": "1s", "backoff": "fixed"}, "idempotent": true}),
        ),
        (
            "nginx_upstream_switch",
            "remote_script",
            json!({"target": "nginx", "address": "{{ steps.boot.outputs.hosts.nginx.private_ip }}", "via": "jump_b", "script":
                "set -e\n\
                 sed -i \"s/server {{ resources.wordpress.private_ip | bare }}/server {{ steps.boot.outputs.hosts.wordpress.private_ip | bare }}/\" {{ resources.nginx.extra.nginx_conf }}\n\
                 /usr/sbin/nginx -t -c {{ resources.nginx.extra.nginx_conf }} && /usr/sbin/nginx -s reload -c {{ resources.nginx.extra.nginx_conf }}"}),
            json!({}),
        ),
        // A file renamed into the directory is read whole; one edited in place could be read
        // half-written.
        (
            "dns_switch",
            "remote_script",
            json!({"target": "jump_b", "script":
                "set -e\n\
                 zone={{ resources.jump_b.extra.dns_zone }}\n\
                 grep -v \" {{ params.site_domain | bare }}$\" \"$zone/site\" > \"$zone.new\" || true\n\
                 echo \"{{ steps.boot.outputs.hosts.nginx.public_ip | bare }} {{ params.site_domain | bare }}\" >> \"$zone.new\"\n\
                 mv \"$zone.new\" \"$zone/site\"\n\
                 cat \"$zone/site\""}),
            json!({}),
        ),
        (
            "dns_answers",
            "check",
            json!({"type": "dns", "name": "{{ params.site_domain }}", "expect": [nginx_public],
                "server": dns.server(), "interval": "1s", "until": "20s"}),
            json!({}),
        ),
        (
            "site_answers",
            "check",
            json!({"type": "http", "url": nginx.url.replace("127.0.0.62", nginx_public),
                "contains": "WordPress", "matches": "<title>WordPress</title>", "interval": "1s", "until": "30s"}),
            json!({}),
        ),
        (
            "business_signoff",
            "manual_approval",
            json!({"instructions": "Check the site's pages and that the latest orders are present (RPO ~ 0).",
                "timeout": "5m"}),
            json!({}),
        ),
    ] {
        define_step(&app, name, kind, params, extra).await;
    }
    let keys = [
        "recover",
        "drs_switch",
        "boot",
        "drs_check",
        "nginx_switch",
        "dns_switch",
        "dns_up",
        "site_up",
        "signoff",
    ];
    created(
        &app,
        "/api/v1/plans",
        json!({"name": "cross_region_rds", "target_rto": "15m",
               "description": "Same cloud, cross-region; hosts plus managed RDS. RTO < 15 min, RPO ~ 0.",
               "parameters": {"site_domain": {"type": "hostname", "required": true}},
               "steps": [
                   {"key": "recover", "step": "recover_web_hosts", "stage": 1},
                   {"key": "drs_switch", "step": "drs_switchover", "stage": 1, "run_in": "both", "on_failure": "pause"},
                   {"key": "boot", "step": "boot_web_hosts", "depends_on": ["recover"]},
                   {"key": "drs_check", "step": "drs_direction_check", "depends_on": ["drs_switch"], "run_in": "both"},
                   {"key": "nginx_switch", "step": "nginx_upstream_switch", "depends_on": ["boot"]},
                   {"key": "dns_switch", "step": "dns_switch", "depends_on": ["boot"]},
                   {"key": "dns_up", "step": "dns_answers", "depends_on": ["dns_switch"]},
                   {"key": "site_up", "step": "site_answers", "depends_on": ["nginx_switch", "dns_up"]},
                   {"key": "signoff", "step": "business_signoff", "depends_on": ["site_up", "drs_check"], "run_in": "both"},
               ]}),
    )
    .await;
    let r = send(
        app.admin(Method::POST, "/api/v1/plans/cross_region_rds/executions")
            .json(&json!({"mode": "drill", "params": {"site_domain": "www.dr-site.test"}})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    sign_off(&app, &id, "signoff").await;
    let e = finished(&app, &id, 30).await;
    assert_eq!(e["status"], "succeeded", "{e}\n{}", dns.log());

    // The keys reached the DRS script through the environment, and nowhere else.
    use sha2::Digest;
    let expected = format!("{:x}", sha2::Sha256::digest(format!("{AK}:{SK}")));
    assert_eq!(
        std::fs::read_to_string(drs_home.join("drs-2f9c0d8e-drs-job.caller"))
            .unwrap()
            .trim(),
        expected
    );
    let switch = logs(&app, &id, "drs_switch").await;
    assert!(
        switch.contains("batch_switchover job 2f9c0d8e-drs-job in region-b as ******: accepted"),
        "{switch}"
    );
    // The job was still switching at the first poll; the step's retry saw it through.
    assert_eq!(step(&e, "drs_check")["attempt"], 2, "{e}");
    assert!(logs(&app, &id, "drs_check").await.contains("direction: up"));
    let conf = std::fs::read_to_string(&nginx.conf).unwrap();
    assert!(
        conf.contains(&format!("server 127.0.0.51:{wp_port};")),
        "{conf}"
    );
    let switch = logs(&app, &id, "nginx_switch").await;
    assert!(
        switch.contains("test is successful") && switch.contains("through jump server `jump_b`"),
        "{switch}"
    );
    assert!(
        answers(&nginx.url, "WordPress").await,
        "nginx still proxies to the old upstream"
    );
    let zone_file = std::fs::read_to_string(zone.join("site")).unwrap();
    assert_eq!(zone_file, "127.0.0.62 www.dr-site.test\n");
    let dns_up = &step(&e, "dns_up")["outputs"]["evidence"];
    let last = dns_up.as_array().unwrap().last().unwrap().to_string();
    assert!(
        last.contains("127.0.0.62") && !last.contains("198.51.100.44"),
        "the name resolves to the recovered nginx only: {dns_up}"
    );

    assert_recovered_once_and_booted_in_order(&sim, &["ecs-wordpress-a", "ecs-nginx-a"]);
    let report = assert_drill_report(
        &app,
        &id,
        &keys,
        &["wordpress", "nginx"],
        &[AK, SK, PASSWORD, f.key.lines().nth(1).unwrap()],
    )
    .await;
    let drs_check = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "drs_check")
        .unwrap();
    assert_eq!(drs_check["attempts"], 2, "{drs_check}");
}
