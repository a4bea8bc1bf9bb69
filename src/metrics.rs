//! Prometheus metrics: HTTP requests by route and status, request latency, and the state of the
//! database pool, rendered as text for `GET /metrics`.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::db::PgPool;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
    pool_max: IntGauge,
    step_runs: IntCounterVec,
    step_duration: HistogramVec,
    claim_wait: prometheus::Histogram,
    executions_by_state: prometheus::IntGaugeVec,
    steps_by_state: prometheus::IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "dro_http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("metric definition is valid");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "dro_http_request_duration_seconds",
                "Time to answer an HTTP request, by method and route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )
        .expect("metric definition is valid");
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("metric definition is valid");
        let pool_connections = gauge("dro_db_pool_connections", "Open database connections");
        let pool_idle = gauge("dro_db_pool_idle_connections", "Idle database connections");
        let pool_max = gauge("dro_db_pool_max_size", "Most connections the pool may open");
        let step_runs = IntCounterVec::new(
            Opts::new(
                "dro_step_attempts_total",
                "Step attempts run by this instance, by how they ended",
            ),
            &["outcome"],
        )
        .expect("metric definition is valid");
        let step_duration = HistogramVec::new(
            HistogramOpts::new(
                "dro_step_attempt_duration_seconds",
                "Time one step attempt took, by how it ended",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["outcome"],
        )
        .expect("metric definition is valid");
        let claim_wait = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "dro_step_claim_wait_seconds",
                "How long a step was ready before a worker of this instance claimed it",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
        )
        .expect("metric definition is valid");
        let executions_by_state = prometheus::IntGaugeVec::new(
            Opts::new("dro_executions", "Executions by state (all instances)"),
            &["status"],
        )
        .expect("metric definition is valid");
        let steps_by_state = prometheus::IntGaugeVec::new(
            Opts::new(
                "dro_step_runs",
                "Step runs by state (all instances); `ready` is the queue depth",
            ),
            &["status"],
        )
        .expect("metric definition is valid");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(pool_connections.clone()),
            Box::new(pool_idle.clone()),
            Box::new(pool_max.clone()),
            Box::new(step_runs.clone()),
            Box::new(step_duration.clone()),
            Box::new(claim_wait.clone()),
            Box::new(executions_by_state.clone()),
            Box::new(steps_by_state.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Self {
            registry,
            requests,
            latency,
            pool_connections,
            pool_idle,
            pool_max,
            step_runs,
            step_duration,
            claim_wait,
            executions_by_state,
            steps_by_state,
        }
    }

    /// A worker claimed a step that had been ready for `secs`.
    pub fn observe_claim(&self, secs: f64) {
        self.claim_wait.observe(secs.max(0.0));
    }

    /// Sets the state gauges from counts read from the database.
    pub fn set_states(&self, executions: &[(String, i64)], steps: &[(String, i64)]) {
        self.executions_by_state.reset();
        for (status, n) in executions {
            self.executions_by_state
                .with_label_values(&[status])
                .set(*n);
        }
        self.steps_by_state.reset();
        for (status, n) in steps {
            self.steps_by_state.with_label_values(&[status]).set(*n);
        }
    }

    /// One step attempt ended (`succeeded`, `failed`, `cancelled`, `waiting_approval`).
    pub fn observe_step(&self, outcome: &str, elapsed: Duration) {
        self.step_runs.with_label_values(&[outcome]).inc();
        self.step_duration
            .with_label_values(&[outcome])
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric, with the pool's state read now.
    pub fn render(&self, pool: &PgPool) -> String {
        let state = pool.state();
        self.pool_connections.set(i64::from(state.connections));
        self.pool_idle.set(i64::from(state.idle_connections));
        self.pool_max.set(i64::from(pool.max_size()));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
