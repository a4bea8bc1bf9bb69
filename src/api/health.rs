//! Liveness, readiness and metrics: unauthenticated, for load balancers and Prometheus.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::{Error, Problem, Result};
use crate::metrics::Metrics;

/// The process is alive.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// The service can serve requests: its database answers and is migrated.
#[derive(Serialize, ToSchema)]
pub struct ServiceReadiness {
    #[schema(example = "ready")]
    pub status: String,
    /// The database answered a query.
    pub database: bool,
    /// Every migration this binary knows is applied.
    pub migrations: bool,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The service is alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the database is reachable and its schema is up to date.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = ServiceReadiness),
        (status = 503, description = "Database unreachable or migrations pending", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub async fn readyz(db: web::Data<Db>) -> Result<HttpResponse> {
    let applied = db
        .run(|conn| crate::db::migrations_applied(conn).map_err(Error::internal))
        .await
        .map_err(|_| Error::Unavailable("the database is not reachable".into()))?;
    if !applied {
        return Err(Error::Unavailable(
            "the database schema is behind this binary: run `dr-orchestrator migrate`".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(ServiceReadiness {
        status: "ready".into(),
        database: true,
        migrations: true,
    }))
}

/// Prometheus metrics in the text exposition format: `dro_http_requests_total` by method, route
/// and status, `dro_http_request_duration_seconds`, `dro_db_pool_*`, `dro_executions` and
/// `dro_step_runs` by state (`ready` is the queue depth), `dro_step_attempts_total` and
/// `dro_step_attempt_duration_seconds` by outcome, and `dro_step_claim_wait_seconds`.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4")))]
pub async fn metrics(metrics: web::Data<Metrics>, db: web::Data<Db>) -> HttpResponse {
    // A database hiccup must not hide the HTTP and pool metrics: the state gauges keep their
    // last values then.
    if let Ok((executions, steps)) = db.run(crate::engine::store::state_counts).await {
        metrics.set_states(&executions, &steps);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render(db.pool()))
}
