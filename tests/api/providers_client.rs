//! The HyperBDR client driven over HTTP against the embedded simulator: login, paging, recovery,
//! power-on, clean-up, re-login, and how failures reach the operator. No database needed.

use std::time::{Duration, Instant};

use dr_orchestrator::providers::hyperbdr::{Client, HyperBdrConfig};
use dr_orchestrator::providers::simulator::{
    self, Fail, RunningSimulator, SimAction, SimHost, SimSnapshot, SimulatorConfig,
};
use dr_orchestrator::providers::{
    Instance, InstanceState, ProviderError, Purpose, RecoveryProvider,
};
use serde_json::{json, Value};
use zeroize::Zeroizing;

const PASSWORD: &str = "s3cret-sim-pass";

fn sim_host(id: &str) -> SimHost {
    SimHost {
        private_ip: Some(format!("127.0.0.{}", id.len() + 1)),
        ..SimHost::new(id)
    }
}

/// A simulator with quick recoveries and power-ons, and pages of at most 2 hosts.
async fn start_sim(hosts: Vec<SimHost>) -> RunningSimulator {
    let config = SimulatorConfig {
        password: PASSWORD.into(),
        boot_time: Duration::from_millis(150),
        power_on_time: Duration::from_millis(100),
        max_page_size: 2,
        hosts,
        ..SimulatorConfig::default()
    };
    simulator::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client_with(url: &str, password: &str, request_timeout: Duration) -> Client {
    Client::new(HyperBdrConfig {
        base_url: url.parse().unwrap(),
        username: "admin".into(),
        password: Zeroizing::new(password.into()),
        tls_verify: true,
        ca_certificate: None,
        request_timeout,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

fn client(sim: &RunningSimulator) -> Client {
    client_with(&sim.url(), PASSWORD, Duration::from_secs(5))
}

async fn control(sim: &RunningSimulator, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Polls the instance until `done` holds (or 5 s pass).
async fn wait_until(
    c: &Client,
    host: &str,
    purpose: Purpose,
    done: impl Fn(&Instance) -> bool,
) -> Instance {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let i = c.instance(host, purpose).await.unwrap();
        if let Some(i) = i.filter(|i| done(i)) {
            return i;
        }
        assert!(Instant::now() < deadline, "{host}: condition not reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn settled(i: &Instance) -> bool {
    !matches!(i.state, InstanceState::Recovering | InstanceState::Starting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_listed_across_pages_after_one_lazy_login() {
    let mut hosts: Vec<SimHost> = (1..=5).map(|n| sim_host(&format!("h{n}"))).collect();
    hosts[2].sync_state = "sync_doing".into();
    let sim = start_sim(hosts).await;
    let c = client(&sim);
    assert_eq!(sim.logins(), 0, "login is lazy");

    let listed = c.hosts().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["h1", "h2", "h3", "h4", "h5"]);
    let h3 = &listed[2];
    assert_eq!(
        (h3.protected, h3.sync_state.as_str()),
        (false, "sync_doing")
    );
    assert!(listed[0].protected);
    assert_eq!(
        listed[0].latest_snapshot.as_ref().map(|s| s.id.as_str()),
        Some("h1-snap-1")
    );

    let said = c.test().await.unwrap();
    assert_eq!(
        said,
        format!("HyperBDR at {}, 5 protected hosts", sim.url())
    );
    assert_eq!(sim.logins(), 1, "the token is kept between calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_detail_names_the_newest_snapshot_and_an_unknown_host_is_not_found() {
    let mut web = sim_host("web");
    web.name = Some("wordpress".into());
    web.source_ip = Some("192.168.10.21".into());
    web.os = Some("linux".into());
    web.snapshots = Some(vec![
        SimSnapshot {
            id: "old".into(),
            age: Some(Duration::from_secs(3600)),
            taken_at: None,
        },
        SimSnapshot {
            id: "new".into(),
            age: Some(Duration::from_secs(60)),
            taken_at: None,
        },
    ]);
    let sim = start_sim(vec![web]).await;
    let c = client(&sim);

    let h = c.host("web").await.unwrap();
    assert_eq!(
        (h.name.as_str(), h.source_ip.as_deref(), h.os.as_deref()),
        ("wordpress", Some("192.168.10.21"), Some("linux"))
    );
    let newest = h.latest_snapshot.unwrap();
    assert_eq!(newest.id, "new");
    assert!(chrono::Utc::now() - newest.taken_at >= chrono::Duration::seconds(59));

    let err = c.host("nope").await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::NotFound(m) if m.contains("nope")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_host_comes_up_powered_off_with_its_facts_and_then_runs() {
    let mut web = sim_host("web");
    web.private_ip = Some("127.0.0.21".into());
    web.public_ip = Some("127.0.0.121".into());
    let sim = start_sim(vec![web]).await;
    let c = client(&sim);

    assert_eq!(c.instance("web", Purpose::Drill).await.unwrap(), None);
    c.recover("web", None, Purpose::Drill).await.unwrap();
    let i = c.instance("web", Purpose::Drill).await.unwrap().unwrap();
    assert_eq!(
        (i.state, i.instance_id.as_str()),
        (InstanceState::Recovering, "")
    );

    let i = wait_until(&c, "web", Purpose::Drill, settled).await;
    assert_eq!(i.state, InstanceState::PoweredOff);
    assert!(i.instance_id.starts_with("sim-i-"), "{i:?}");
    assert_eq!(
        (i.private_ip.as_deref(), i.public_ip.as_deref()),
        (Some("127.0.0.21"), Some("127.0.0.121"))
    );
    assert_eq!(i.snapshot_id.as_deref(), Some("web-snap-1"));
    assert!(i.snapshot_time.is_some() && i.error.is_none());
    assert_eq!(c.instance("web", Purpose::Failover).await.unwrap(), None);

    c.power_on("web", Purpose::Drill).await.unwrap();
    let starting = c.instance("web", Purpose::Drill).await.unwrap().unwrap();
    assert_eq!(starting.state, InstanceState::Starting);
    let running = wait_until(&c, "web", Purpose::Drill, settled).await;
    assert_eq!(running.state, InstanceState::Running);
    assert_eq!(running.instance_id, i.instance_id);

    assert_eq!(sim.accepted(SimAction::Recover, "web"), 1);
    assert_eq!(sim.accepted(SimAction::PowerOn, "web"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_recovery_for_the_same_purpose_is_refused_and_recorded() {
    let sim = start_sim(vec![sim_host("db")]).await;
    let c = client(&sim);

    c.recover("db", Some("db-snap-1"), Purpose::Drill)
        .await
        .unwrap();
    let err = c.recover("db", None, Purpose::Drill).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Api(m) if m.contains("already has a drill instance")),
        "{err:?}"
    );
    c.recover("db", None, Purpose::Failover).await.unwrap();

    assert_eq!(sim.accepted(SimAction::Recover, "db"), 2);
    let refused: Vec<_> = sim.calls().into_iter().filter(|c| !c.accepted).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].purpose, Some(Purpose::Drill));

    let err = c
        .recover("db", Some("no-such-snapshot"), Purpose::Drill)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Api(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_instance_is_idempotent() {
    let sim = start_sim(vec![sim_host("web")]).await;
    let c = client(&sim);
    c.recover("web", None, Purpose::Drill).await.unwrap();
    let i = wait_until(&c, "web", Purpose::Drill, settled).await;

    c.delete_instance("web", &i.instance_id).await.unwrap();
    assert_eq!(c.instance("web", Purpose::Drill).await.unwrap(), None);
    c.delete_instance("web", &i.instance_id).await.unwrap();
    c.delete_instance("web", "sim-i-999").await.unwrap();
    assert_eq!(sim.accepted(SimAction::Delete, "web"), 3);

    // Gone, so the host can be recovered for a drill again.
    c.recover("web", None, Purpose::Drill).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_replaced_by_one_new_login() {
    let sim = start_sim(vec![sim_host("web")]).await;
    let c = client(&sim);
    c.hosts().await.unwrap();
    assert_eq!(sim.logins(), 1);

    let expired = control(&sim, "/simulator/expire-tokens", json!({})).await;
    assert_eq!(expired["expired"], 1);
    assert_eq!(c.hosts().await.unwrap().len(), 1);
    assert_eq!(sim.logins(), 2);
    c.host("web").await.unwrap();
    assert_eq!(sim.logins(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_envelope_is_quoted_with_title_error_and_trace_id() {
    let sim = start_sim(vec![sim_host("web")]).await;
    let c = client(&sim);
    control(
        &sim,
        "/simulator/fail-next",
        json!({"code": "00020001", "title": "Quota exceeded", "error": "no vCPU left in az-1", "status": 200}),
    )
    .await;

    let err = c.recover("web", None, Purpose::Drill).await.unwrap_err();
    let ProviderError::Api(m) = &err else {
        panic!("not an Api error: {err:?}");
    };
    for part in [
        "Quota exceeded",
        "no vCPU left in az-1",
        "00020001",
        "trace_id sim-trace-",
    ] {
        assert!(m.contains(part), "{m} lacks {part}");
    }
    assert_eq!(sim.accepted(SimAction::Recover, "web"), 0);
    // Only the next call fails.
    c.recover("web", None, Purpose::Drill).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_that_never_quotes_the_password() {
    let sim = start_sim(vec![sim_host("web")]).await;
    let wrong = "wrong-password-42";
    let c = client_with(&sim.url(), wrong, Duration::from_secs(5));
    let err = c.hosts().await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Auth(m) if m.contains("Login failed")),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?} {c:?}").contains(wrong));
    assert_eq!(sim.logins(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_and_a_silent_server_are_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = client_with(&url, PASSWORD, Duration::from_secs(2))
        .hosts()
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable(_)), "{err:?}");

    // Accepts connections, never answers: the request timeout ends the call.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let err = client_with(&url, PASSWORD, Duration::from_millis(300))
        .hosts()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Unreachable(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_set_to_fail_recovery_is_failed_with_the_reason_from_its_task() {
    let sim = start_sim(vec![sim_host("web")]).await;
    let c = client(&sim);
    control(
        &sim,
        "/simulator/hosts/web",
        json!({"fail": "recover", "boot_time": "50ms"}),
    )
    .await;

    c.recover("web", None, Purpose::Failover).await.unwrap();
    let i = wait_until(&c, "web", Purpose::Failover, settled).await;
    assert_eq!(
        (i.state, i.instance_id.as_str()),
        (InstanceState::Failed, "")
    );
    let error = i.error.unwrap_or_default();
    assert!(
        error.contains("simulated recovery failure of host web"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_set_to_fail_boot_is_failed_after_power_on() {
    let mut web = sim_host("web");
    web.fail = Some(Fail::Boot);
    let sim = start_sim(vec![web]).await;
    let c = client(&sim);

    c.recover("web", None, Purpose::Drill).await.unwrap();
    let off = wait_until(&c, "web", Purpose::Drill, settled).await;
    assert_eq!(off.state, InstanceState::PoweredOff);
    c.power_on("web", Purpose::Drill).await.unwrap();
    let i = wait_until(&c, "web", Purpose::Drill, settled).await;
    assert_eq!(i.state, InstanceState::Failed);
    assert!(
        i.error
            .as_deref()
            .unwrap_or_default()
            .contains("boot failure"),
        "{i:?}"
    );

    // Cleared at run time: a new recovery boots fine.
    control(&sim, "/simulator/hosts/web", json!({"fail": null})).await;
    c.delete_instance("web", &i.instance_id).await.unwrap();
    c.recover("web", None, Purpose::Drill).await.unwrap();
    wait_until(&c, "web", Purpose::Drill, settled).await;
    c.power_on("web", Purpose::Drill).await.unwrap();
    let i = wait_until(&c, "web", Purpose::Drill, settled).await;
    assert_eq!(i.state, InstanceState::Running);
    sim.stop().await;
}
