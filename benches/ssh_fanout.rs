//! SSH fan-out: `echo ok` on N targets with at most C at once, through the runner's pool,
//! first on fresh connections, then again on the kept ones. Driven by
//! `scripts/bench-ssh.sh`, which starts the sshd and runs pssh and an OpenSSH loop beside it.
//!
//! Env: TARGETS (file: one `address port` per line), SSH_USER, SSH_KEY (private key file),
//! HOST_FP (the sshd's fingerprint), CONCURRENCY (default 50).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dr_orchestrator::runners::script::End;
use dr_orchestrator::runners::ssh::{Endpoint, HostKeyPolicy, Job, Route, Secret, SshPool};
use dr_orchestrator::runners::LogSink;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("set {key} (see scripts/bench-ssh.sh)"))
}

async fn round(pool: &Arc<SshPool>, routes: &[Route], concurrency: usize) -> (Duration, usize) {
    let limit = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for route in routes {
        let (pool, route, limit) = (pool.clone(), route.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let log = LogSink::discard();
            let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
            let job = Job {
                script: "echo ok",
                env: Vec::new(),
                log: &log,
                cancel,
                deadline: Instant::now() + Duration::from_secs(120),
            };
            match pool.run_script(&route, job).await.1 {
                End::Exited(Some(0)) => true,
                End::Stopped(e) => {
                    eprintln!("failed: {e}");
                    false
                }
                _ => false,
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap_or(false));
    }
    (started.elapsed(), ok)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let targets = std::fs::read_to_string(env("TARGETS")).unwrap();
        let key = Zeroizing::new(std::fs::read_to_string(env("SSH_KEY")).unwrap());
        let user = env("SSH_USER");
        let fp = env("HOST_FP");
        let concurrency: usize = std::env::var("CONCURRENCY")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(50);
        let execution = uuid::Uuid::new_v4();
        let routes: Vec<Route> = targets
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(address, port)| Route {
                execution,
                jump: None,
                target: Some(Endpoint {
                    label: format!("{address}:{port}"),
                    address: address.to_owned(),
                    port: port.trim().parse().unwrap(),
                    user: user.clone(),
                    credential: "bench".into(),
                    secret: Secret::Key {
                        pem: key.clone(),
                        passphrase: None,
                    },
                    host_key: HostKeyPolicy::Pinned(fp.clone()),
                    pin_to: None,
                }),
            })
            .collect();
        let pool = Arc::new(SshPool::new(None, Duration::from_secs(600)));
        let (first, ok1) = round(&pool, &routes, concurrency).await;
        let (second, ok2) = round(&pool, &routes, concurrency).await;
        println!(
            "dr-orchestrator first_contact_s={:.3} ok={ok1}/{n} second_command_s={:.3} ok={ok2}/{n}",
            first.as_secs_f64(),
            second.as_secs_f64(),
            n = routes.len()
        );
    });
}
