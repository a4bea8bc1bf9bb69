//! Engine overhead against the floor PostgreSQL allows, measured in the same run:
//! - a chain of 200 no-op steps (each waits for the previous): per-step overhead vs. the time
//!   of 200 sequential single-row commits;
//! - 1000 independent no-op steps: steps per second vs. 1000 single-row commits made by as many
//!   connections as the engine has workers.
//!
//! Run: `cargo bench --bench engine` (PostgreSQL from BENCH_DATABASE_URL or 127.0.0.1:5432).

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use dr_orchestrator::crypto::MasterKey;
use dr_orchestrator::db::{self, Db};
use dr_orchestrator::domain::plans::{self, CatalogStep, Inventory, PlanSpec};
use dr_orchestrator::domain::steps::{validate_step, StepKind, StepOptions};
use dr_orchestrator::domain::templates::TemplateEngine;
use dr_orchestrator::engine::store::{self, ExecutionMode, NewExecution};
use dr_orchestrator::engine::{Engine, EngineConfig};
use dr_orchestrator::metrics::Metrics;
use serde_json::{json, Map};
use uuid::Uuid;

/// The engine's workers (`BENCH_WORKERS`, default 32: no-op steps need little each, and more
/// of them in flight make bigger claim and record batches).
fn workers() -> usize {
    std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(32)
}

fn server() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db(base: &str, name: &str) -> String {
    let mut url = url::Url::parse(base).expect("a database URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// `n` single-row commits over `connections` connections in parallel; seconds taken.
fn commit_floor(url: &str, n: usize, connections: usize) -> f64 {
    let mut setup = PgConnection::establish(url).unwrap();
    diesel::sql_query("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, v text)")
        .execute(&mut setup)
        .unwrap();
    let started = Instant::now();
    let per = n / connections;
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                for _ in 0..per {
                    conn.transaction::<_, diesel::result::Error, _>(|c| {
                        diesel::sql_query("INSERT INTO bench_floor (v) VALUES ('x')").execute(c)?;
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    started.elapsed().as_secs_f64()
}

fn plan_of(keys: Vec<(String, Vec<String>)>) -> PlanSpec {
    serde_json::from_value(json!({
        "name": "bench",
        "steps": keys.into_iter().map(|(k, deps)| json!({"key": k, "step": "noop", "depends_on": deps})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// Creates a plan version with `spec` and runs it once; seconds from start to finish.
async fn run_plan(db: &Db, templates: &TemplateEngine, spec: PlanSpec) -> f64 {
    run_plan_with(
        db,
        templates,
        spec,
        StepKind::Wait,
        json!({"duration": "0s"}),
    )
    .await
}

/// This process's resident memory and its high-water mark, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `spec` with every step being one definition of `kind` with `params`.
async fn run_plan_with(
    db: &Db,
    templates: &TemplateEngine,
    spec: PlanSpec,
    kind: StepKind,
    params: serde_json::Value,
) -> f64 {
    let noop = validate_step(templates, kind, &params, StepOptions::default(), "params").unwrap();
    let step_id = Uuid::new_v4();
    let catalog = move |_: &str| {
        Some(CatalogStep {
            id: step_id,
            name: "noop".into(),
            version: 1,
            definition: noop.clone(),
        })
    };
    let (resolved, report) = plans::validate(
        templates,
        &spec,
        &catalog,
        &Inventory::default(),
        &Default::default(),
    );
    assert!(report.valid, "{:?}", report.errors);
    let resolved = resolved.unwrap();
    let plan_id = db
        .transaction(move |conn| {
            use dr_orchestrator::db::schema::{plan_versions, plans, steps};
            let plan_id = Uuid::new_v4();
            diesel::insert_into(steps::table)
                .values((
                    steps::id.eq(step_id),
                    steps::name.eq(format!("noop_{}", step_id.simple())),
                    steps::kind.eq("wait"),
                    steps::definition.eq(json!({})),
                    steps::created_by.eq("bench"),
                    steps::updated_by.eq("bench"),
                ))
                .execute(conn)?;
            diesel::insert_into(plans::table)
                .values((
                    plans::id.eq(plan_id),
                    plans::name.eq(format!("bench_{}", plan_id.simple())),
                    plans::created_by.eq("bench"),
                    plans::updated_by.eq("bench"),
                ))
                .execute(conn)?;
            diesel::insert_into(plan_versions::table)
                .values((
                    plan_versions::plan_id.eq(plan_id),
                    plan_versions::version.eq(1),
                    plan_versions::spec.eq(json!({})),
                    plan_versions::resolved.eq(serde_json::to_value(&resolved).unwrap()),
                    plan_versions::created_by.eq("bench"),
                ))
                .execute(conn)?;
            Ok((plan_id, resolved))
        })
        .await
        .unwrap();
    let (plan_id, resolved) = plan_id;
    let started = Instant::now();
    let id = db
        .transaction(move |conn| {
            let params = Map::new();
            Ok(store::create(
                conn,
                NewExecution {
                    plan_id,
                    plan_name: "bench",
                    version: 1,
                    resolved: &resolved,
                    mode: ExecutionMode::Drill,
                    params: &params,
                    idempotency_key: None,
                    created_by: "bench",
                    paused: None,
                    auto_cleanup_secs: None,
                },
            )?
            .id)
        })
        .await
        .unwrap();
    loop {
        let status = db
            .run(move |conn| Ok(store::execution(conn, id)?.status))
            .await
            .unwrap();
        if status == "succeeded" {
            return started.elapsed().as_secs_f64();
        }
        assert!(status == "running", "the bench execution ended {status}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn main() {
    let base = server();
    let name = format!("dro_bench_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::establish(&base).expect("PostgreSQL for the benchmark");
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .unwrap();
    let url = with_db(&base, &name);
    let result = std::panic::catch_unwind(|| bench(&url));
    diesel::sql_query(format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn bench(url: &str) {
    let pool = db::build_pool(url, (workers() + 4) as u32, Duration::from_secs(30)).unwrap();
    db::migrate(&mut pool.get().unwrap()).unwrap();
    let db = Db::new(pool);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let templates = Arc::new(TemplateEngine::new());
        let engine = Engine::new(
            db.clone(),
            templates.clone(),
            Arc::new(MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()),
            Arc::new(Metrics::new()),
            EngineConfig { workers: workers(), ..EngineConfig::default() },
        );
        let tasks = engine.start();
        // Warm-up: connections, caches.
        run_plan(&db, &templates, plan_of((0..20).map(|i| (format!("w{i}"), vec![])).collect())).await;

        let chain: Vec<(String, Vec<String>)> = (0..200)
            .map(|i| (format!("c{i}"), if i == 0 { vec![] } else { vec![format!("c{}", i - 1)] }))
            .collect();
        let chain_secs = run_plan(&db, &templates, plan_of(chain)).await;
        let chain_floor = commit_floor(url, 200, 1);

        let wide: Vec<(String, Vec<String>)> = (0..1000).map(|i| (format!("s{i}"), vec![])).collect();
        let wide_secs = run_plan(&db, &templates, plan_of(wide)).await;
        let wide_floor = commit_floor(url, 1000, workers().min(8));

        // 50 MB of output from one local script: stored throughput and memory growth.
        let (rss_before, _) = memory();
        let loud_secs = run_plan_with(
            &db,
            &templates,
            plan_of(vec![("loud".into(), vec![])]),
            StepKind::LocalScript,
            json!({"script": "head -c 50000000 /dev/zero | tr '\\0' 'x' | fold -w 1000"}),
        )
        .await;
        let (_, peak) = memory();

        engine.stop();
        for t in tasks {
            t.abort();
        }
        let per_step_ms = chain_secs * 1000.0 / 200.0;
        let floor_ms = chain_floor * 1000.0 / 200.0;
        println!("engine benchmark ({} workers, {} cores)", workers(), std::thread::available_parallelism().map_or(0, |n| n.get()));
        println!("chain of 200 no-op steps: {chain_secs:.3} s = {per_step_ms:.2} ms per step; floor (200 sequential commits): {floor_ms:.2} ms per commit; ratio {:.1}x", per_step_ms / floor_ms);
        println!(
            "50 MB of script output stored in {loud_secs:.2} s = {:.1} MB/s; resident memory grew by at most {:.1} MB (peak {:.1} MB, before {:.1} MB)",
            50.0 / loud_secs,
            peak.saturating_sub(rss_before) as f64 / 1e6,
            peak as f64 / 1e6,
            rss_before as f64 / 1e6
        );
        println!("1000 independent no-op steps: {wide_secs:.3} s = {:.0} steps/s; floor (1000 commits over {} connections): {:.0} commits/s; ratio {:.1}x", 1000.0 / wide_secs, workers().min(8), 1000.0 / wide_floor, wide_secs / wide_floor);
    });
}
