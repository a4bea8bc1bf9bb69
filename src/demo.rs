//! `dr-orchestrator demo`: the seed's scenario 1 as a drill on this machine. Starts the service
//! (as `serve` does) and the HyperBDR simulator in-process, loads `examples/demo/` through the
//! service's own HTTP API, runs a drill, prints its log as it comes and then its report.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Role;
use crate::config::Config;
use crate::providers::simulator::{self, SimulatorConfig};
use crate::{announce_admin_token, runtime, Prepared, Service};

// Compiled in, so the demo runs from any directory (its ./data is wherever it is started).
const INVENTORY: &str = include_str!("../examples/demo/inventory.yaml");
const STEPS: &str = include_str!("../examples/demo/steps.yaml");
const PLAN: &str = include_str!("../examples/demo/plan.yaml");
const SIMULATOR_HOSTS: &str = include_str!("../examples/demo/simulator-hosts.yaml");

/// The provider the demo's hosts name; it points at the simulator the demo starts.
const PROVIDER: &str = "hyperbdr_sim";
/// Who the demo acts as in the audit trail.
const SUBJECT: &str = "demo";
const POLL: Duration = Duration::from_millis(250);

pub struct DemoOptions {
    /// Keep serving after the report, until Ctrl-C.
    pub keep_running: bool,
}

/// Runs the demo; an error when it could not run or the drill did not succeed.
pub fn run(config: &Config, options: &DemoOptions) -> Result<(), String> {
    match &config.database_url {
        None => println!(
            "Starting dr-orchestrator with its own PostgreSQL under {} ...",
            std::path::Path::new(".").join(&config.data_dir).display()
        ),
        Some(_) => println!("Starting dr-orchestrator on DATABASE_URL ..."),
    }
    let prepared = Prepared::open(config)?;
    let result = runtime()?.block_on(async {
        let service = Service::start(&prepared.state, config)?;
        let base = format!("http://{}", service.addr);
        println!("  service:            {base}");
        let sim = start_simulator().await?;
        let simulator_url = sim.url();
        println!("  HyperBDR simulator: {simulator_url}");
        let token = prepared
            .state
            .jwt
            .issue(SUBJECT, Role::Admin, chrono::Duration::hours(1));
        let api = Api {
            client: reqwest::Client::new(),
            base: base.clone(),
            token,
        };
        let stopper = service.handle();
        let serving = service.wait();
        tokio::pin!(serving);
        let drill = tokio::select! {
            drill = drill(&api, &simulator_url) => drill,
            // On SIGINT (and SIGTERM) actix stops the server by itself.
            _ = tokio::signal::ctrl_c() => {
                println!();
                println!("Interrupted: stopping. The next `dr-orchestrator demo` cancels this drill.");
                let served = serving.await;
                sim.stop().await;
                return served;
            }
            served = &mut serving => return served,
        };
        if options.keep_running && drill.is_ok() {
            println!();
            println!("Explore the plan, the execution and its report in Swagger UI: {base}/docs/");
            announce_admin_token(&prepared.state, config);
            println!("Serving until Ctrl-C.");
        } else {
            stopper.stop(true).await;
        }
        let served = serving.await;
        sim.stop().await;
        drill.and(served)
    });
    drop(prepared);
    result
}

async fn start_simulator() -> Result<simulator::RunningSimulator, String> {
    let config = SimulatorConfig::from_yaml(SIMULATOR_HOSTS)
        .map_err(|e| format!("examples/demo/simulator-hosts.yaml: {e}"))?;
    let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    simulator::start(config, bind)
        .await
        .map_err(|e| format!("cannot start the simulator: {e}"))
}

/// Loads the example, runs the drill to its end, prints the report; Ok when it succeeded.
async fn drill(api: &Api, simulator_url: &str) -> Result<(), String> {
    println!();
    println!(
        "Loading examples/demo (scenario 1 over the simulator) through {}/api/v1 ...",
        api.base
    );
    let plan = load(api, simulator_url).await?;
    cancel_unfinished(api, &plan).await?;

    println!();
    println!("Starting a drill of `{}` ...", plan.name);
    let executions = format!("/api/v1/plans/{}/executions", plan.name);
    let (status, started) = api
        .call(
            api.request(Method::POST, &executions)
                .json(&json!({"mode": "drill", "params": {"service_url": api.base}})),
        )
        .await?;
    if !status.is_success() {
        return Err(refused(&executions, "drill", status, &started));
    }
    let id = field(&started, "id")?;
    println!("  execution {id}: {}/api/v1/executions/{id}", api.base);
    println!();
    let status = follow(api, &id).await?;

    let report = api
        .request(Method::GET, &format!("/api/v1/executions/{id}/report"))
        .header("accept", "text/markdown")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot read the report: {e}"))?
        .text()
        .await
        .map_err(|e| format!("cannot read the report: {e}"))?;
    println!();
    println!("---- report (GET /api/v1/executions/{id}/report, Accept: text/markdown) ----");
    println!();
    println!("{}", report.trim_end());
    println!("----");
    println!();
    if status == "succeeded" {
        println!("Drill succeeded.");
        Ok(())
    } else {
        println!("Drill {status}.");
        Err(format!("the demo drill ended {status}"))
    }
}

/// The service's own API, as the demo's admin.
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
    }

    /// Sends; the status and the JSON body (Null when empty). Only transport errors fail here.
    async fn call(&self, request: RequestBuilder) -> Result<(StatusCode, Value), String> {
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Creates an object, or replaces the one of that name left by an earlier demo.
    async fn upsert(&self, collection: &str, name: &str, body: &Value) -> Result<(), String> {
        let (status, answer) = self
            .call(self.request(Method::POST, collection).json(body))
            .await?;
        let (status, answer, verb) = if status == StatusCode::CONFLICT {
            let (s, a) = self
                .call(
                    self.request(Method::PUT, &format!("{collection}/{name}"))
                        .json(body),
                )
                .await?;
            (s, a, "replaced")
        } else {
            (status, answer, "created")
        };
        if !status.is_success() {
            return Err(refused(collection, name, status, &answer));
        }
        println!("  {verb} {collection}/{name}");
        Ok(())
    }
}

/// Why the API refused, from its problem+json (which never quotes a secret).
fn refused(collection: &str, name: &str, status: StatusCode, problem: &Value) -> String {
    let mut why = format!(
        "{collection}/{name}: {status}: {}",
        problem["detail"].as_str().unwrap_or("")
    );
    for e in problem["errors"].as_array().into_iter().flatten() {
        why.push_str(&format!("; {}: {}", e["field"], e["message"]));
    }
    why
}

fn field(v: &Value, name: &str) -> Result<String, String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the service's answer has no `{name}`: {v}"))
}

#[derive(Deserialize)]
struct Inventory {
    credentials: Vec<Value>,
    resources: Vec<Value>,
}

struct LoadedPlan {
    name: String,
    id: String,
}

/// Provider, credentials, resources, steps, then the plan (a new version when it exists).
async fn load(api: &Api, simulator_url: &str) -> Result<LoadedPlan, String> {
    let provider = json!({
        "name": PROVIDER, "kind": "simulator",
        "description": "The HyperBDR simulator started by `dr-orchestrator demo`",
        "base_url": simulator_url, "settings": {"poll_interval": "1s"},
    });
    let inventory: Inventory = serde_norway::from_str(INVENTORY)
        .map_err(|e| format!("examples/demo/inventory.yaml: {e}"))?;
    let steps: Vec<Value> =
        serde_norway::from_str(STEPS).map_err(|e| format!("examples/demo/steps.yaml: {e}"))?;
    let name = serde_norway::from_str::<Value>(PLAN)
        .ok()
        .and_then(|p| p["name"].as_str().map(str::to_owned))
        .ok_or("examples/demo/plan.yaml has no name")?;
    api.upsert("/api/v1/providers", PROVIDER, &provider).await?;
    for (collection, items) in [
        ("/api/v1/credentials", &inventory.credentials),
        ("/api/v1/resources", &inventory.resources),
        ("/api/v1/steps", &steps),
    ] {
        for item in items {
            api.upsert(collection, &field(item, "name")?, item).await?;
        }
    }
    let yaml = |method| {
        api.request(method, "/api/v1/plans")
            .header("content-type", "application/yaml")
            .body(PLAN)
    };
    let (mut status, mut answer) = api.call(yaml(Method::POST)).await?;
    let mut verb = "created";
    if status == StatusCode::CONFLICT {
        (status, answer) = api
            .call(
                api.request(Method::PUT, &format!("/api/v1/plans/{name}"))
                    .header("content-type", "application/yaml")
                    .body(PLAN),
            )
            .await?;
        verb = "saved a new version of";
    }
    if !status.is_success() {
        return Err(refused("/api/v1/plans", &name, status, &answer));
    }
    println!("  {verb} /api/v1/plans/{name}");
    Ok(LoadedPlan {
        id: field(&answer, "id")?,
        name,
    })
}

/// An earlier demo stopped mid-drill left its drill unfinished; it would compete for the same
/// simulated hosts, so it is cancelled.
async fn cancel_unfinished(api: &Api, plan: &LoadedPlan) -> Result<(), String> {
    for status in ["queued", "running", "paused"] {
        let path = format!("/api/v1/executions?plan_id={}&status={status}", plan.id);
        let (_, list) = api.call(api.request(Method::GET, &path)).await?;
        for e in list["items"].as_array().into_iter().flatten() {
            let id = field(e, "id")?;
            let path = format!("/api/v1/executions/{id}/cancel");
            api.call(api.request(Method::POST, &path)).await?;
            println!("  cancelled the unfinished drill {id} of an earlier demo");
        }
    }
    Ok(())
}

/// One line of the execution's log, as `GET .../logs` returns it.
#[derive(Deserialize)]
struct LogLine {
    id: i64,
    step: String,
    stream: String,
    data: String,
}

#[derive(Deserialize)]
struct LogPage {
    items: Vec<LogLine>,
}

/// Prints step transitions and log lines until the execution ends (or pauses); its status.
async fn follow(api: &Api, id: &str) -> Result<String, String> {
    let since = Instant::now();
    let stamp = || format!("[{:5.1}s]", since.elapsed().as_secs_f64());
    let (mut started, mut finished, mut approved) =
        (HashSet::new(), HashSet::new(), HashSet::new());
    let mut held: Vec<LogLine> = Vec::new();
    let mut after = 0;
    loop {
        let (_, execution) = api
            .call(api.request(Method::GET, &format!("/api/v1/executions/{id}")))
            .await?;
        let steps = execution["steps"].as_array().cloned().unwrap_or_default();
        for s in &steps {
            let key = str_of(s, "key");
            let waiting = matches!(str_of(s, "status"), "pending" | "ready" | "skipped");
            if !waiting && started.insert(key.to_owned()) {
                println!("{} {key:<18} started ({})", stamp(), str_of(s, "kind"));
            }
        }

        let path = format!("/api/v1/executions/{id}/logs?after={after}&limit=1000");
        let (_, page) = api.call(api.request(Method::GET, &path)).await?;
        let page: LogPage = serde_json::from_value(page).map_err(|e| e.to_string())?;
        after = page.items.last().map_or(after, |l| l.id);
        held.extend(page.items);
        // A step's lines come after its "started" line: those of a step not seen running wait.
        held.retain(|l| {
            if !started.contains(&l.step) {
                return true;
            }
            let mark = match l.stream.as_str() {
                "stdout" => "|",
                "stderr" => "!",
                _ => "*",
            };
            println!("{} {:<18} {mark} {}", stamp(), l.step, l.data);
            false
        });

        for s in &steps {
            let key = str_of(s, "key");
            match str_of(s, "status") {
                "waiting_approval" if approved.insert(key.to_owned()) => {
                    println!(
                        "{} {key:<18} waits for a person: the demo approves it \
                         (POST /api/v1/executions/{id}/steps/{key}/approve)",
                        stamp()
                    );
                    approve(api, id, key).await?;
                }
                "succeeded" | "failed" | "skipped" | "cancelled" | "interrupted"
                    if finished.insert(key.to_owned()) =>
                {
                    println!("{} {key:<18} {}", stamp(), outcome(s));
                }
                _ => {}
            }
        }
        let status = str_of(&execution, "status").to_owned();
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            println!("{} execution {status}", stamp());
            return Ok(status);
        }
        if status == "paused" {
            let reason = str_of(&execution, "pause_reason");
            println!("{} execution paused: {reason}", stamp());
            return Ok(status);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn str_of<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or("")
}

/// "succeeded in 2.1 s", "failed: why", "skipped".
fn outcome(step: &Value) -> String {
    let status = str_of(step, "status");
    let took = match (step["started_at"].as_str(), step["finished_at"].as_str()) {
        (Some(a), Some(b)) => match (
            a.parse::<chrono::DateTime<chrono::Utc>>(),
            b.parse::<chrono::DateTime<chrono::Utc>>(),
        ) {
            (Ok(a), Ok(b)) => format!(" in {:.1} s", (b - a).num_milliseconds() as f64 / 1000.0),
            _ => String::new(),
        },
        _ => String::new(),
    };
    match step["error"].as_str() {
        Some(error) => format!("{status}{took}: {error}"),
        None => format!("{status}{took}"),
    }
}

/// The demo plays the person who signs off, through the same endpoint Swagger UI offers.
async fn approve(api: &Api, id: &str, key: &str) -> Result<(), String> {
    let path = format!("/api/v1/executions/{id}/steps/{key}/approve");
    let (status, answer) = api
        .call(
            api.request(Method::POST, &path)
                .json(&json!({"comment": "approved by dr-orchestrator demo"})),
        )
        .await?;
    if !status.is_success() {
        return Err(refused("approve", key, status, &answer));
    }
    Ok(())
}
