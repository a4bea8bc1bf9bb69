//! dr-orchestrator: a headless REST service that orchestrates disaster recovery.
//!
//! Wiring, from the outside in: [`config`] -> database ([`db`], the embedded cluster when no
//! `DATABASE_URL` is set) -> secrets -> the HTTP app ([`build_app`]: middleware, [`api`] routes).

pub mod api;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod providers;
pub mod runners;
pub mod secrets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};

use crate::auth::{JwtKeys, Role};
use crate::config::{Config, LogFormat};
use crate::crypto::MasterKey;
use crate::db::embedded::EmbeddedPostgres;
use crate::db::Db;
use crate::domain::templates::TemplateEngine;
use crate::metrics::Metrics;
use crate::secrets::Secrets;

/// Name of the database the embedded cluster holds.
pub const EMBEDDED_DATABASE: &str = "dr_orchestrator";

/// Everything the HTTP app shares between requests.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub jwt: Arc<JwtKeys>,
    pub master_key: Arc<MasterKey>,
    pub metrics: Arc<Metrics>,
    pub templates: Arc<TemplateEngine>,
    /// Provider clients, kept per provider version.
    pub providers: Arc<providers::registry::Registry>,
}

impl AppState {
    pub fn new(db: Db, secrets: Secrets) -> Self {
        Self {
            db,
            jwt: Arc::new(JwtKeys::new(&secrets.jwt_secret)),
            master_key: Arc::new(secrets.master_key),
            metrics: Arc::new(Metrics::new()),
            templates: Arc::new(TemplateEngine::new()),
            providers: Arc::default(),
        }
    }
}

/// The actix app: shared state, routes, problem+json for every error, request observation.
pub fn build_app(
    state: &AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state.db.clone()))
        .app_data(web::Data::from(state.jwt.clone()))
        .app_data(web::Data::from(state.master_key.clone()))
        .app_data(web::Data::from(state.metrics.clone()))
        .app_data(web::Data::from(state.templates.clone()))
        .app_data(web::Data::from(state.providers.clone()))
        .configure(api::routes)
        .wrap(ErrorHandlers::new().default_handler(http::problem_for_plain_errors))
        .wrap(from_fn(http::observe))
}

/// Sets up logging to stderr as text or JSON lines.
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A database ready for use: migrated, and the embedded cluster behind it when there is one
/// (dropping it stops the cluster).
pub struct Database {
    pub db: Db,
    pub embedded: Option<EmbeddedPostgres>,
}

/// Connects to `DATABASE_URL`, or starts the embedded cluster, then applies migrations.
pub fn open_database(config: &Config) -> Result<Database, String> {
    let (url, embedded) = match &config.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let cluster = EmbeddedPostgres::start(&config.data_dir, config.pg_bindir.as_deref())?;
            cluster.ensure_database(EMBEDDED_DATABASE)?;
            (cluster.url(EMBEDDED_DATABASE), Some(cluster))
        }
    };
    let pool = db::build_pool(
        &url,
        config.db_pool_size,
        Duration::from_secs(config.db_pool_timeout_secs),
    )
    .map_err(|e| redact_password(&e, &url))?;
    let mut conn = pool
        .get()
        .map_err(|e| redact_password(&format!("cannot connect to the database: {e}"), &url))?;
    let applied = db::migrate(&mut conn)?;
    if !applied.is_empty() {
        tracing::info!(versions = ?applied, "applied migrations");
    }
    Ok(Database {
        db: Db::new(pool),
        embedded,
    })
}

/// Removes the database password from a message (libpq may quote parts of the URL).
fn redact_password(message: &str, url: &str) -> String {
    let password = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => message.replace(&p, "***"),
        None => message.to_owned(),
    }
}

/// `dr-orchestrator migrate`.
pub fn migrate(config: &Config) -> Result<(), String> {
    let database = open_database(config)?;
    drop(database);
    Ok(())
}

/// What a service runs on, opened before its runtime starts: the secrets, the migrated database
/// (checked against the master key) and the app state. Dropping it stops the embedded cluster.
pub struct Prepared {
    pub state: AppState,
    pub database: Database,
    /// The secrets were generated into (or read from) the data directory: the embedded mode.
    pub secrets_from_data_dir: bool,
}

impl Prepared {
    pub fn open(config: &Config) -> Result<Self, String> {
        // Secrets first: a misconfigured instance must not touch (migrate) the database.
        let secrets = Secrets::resolve(config)?;
        let database = open_database(config)?;
        {
            let mut conn = database
                .db
                .pool()
                .get()
                .map_err(|e| format!("cannot connect to the database: {e}"))?;
            db::credentials::check_master_key(&mut conn, &secrets.master_key)?;
        }
        let secrets_from_data_dir = secrets.from_data_dir;
        Ok(Self {
            state: AppState::new(database.db.clone(), secrets),
            database,
            secrets_from_data_dir,
        })
    }
}

/// The runtime `serve` and `demo` run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// The service running on the current tokio runtime: the executor pool, and the HTTP server
/// listening on `addr` (which stops on SIGINT/SIGTERM, or through [`Service::handle`]).
pub struct Service {
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: Option<(Arc<engine::Engine>, Vec<tokio::task::JoinHandle<()>>)>,
}

impl Service {
    /// Starts the engine and binds the HTTP server to `config.bind` (port 0: a free one).
    pub fn start(state: &AppState, config: &Config) -> Result<Self, String> {
        let engine = start_engine(state, config);
        let app_state = state.clone();
        let server = HttpServer::new(move || build_app(&app_state))
            .workers(config.http_workers)
            .worker_max_blocking_threads(config.http_db_threads)
            .shutdown_timeout(30)
            .bind(config.bind)
            .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
        let addr = *server
            .addrs()
            .first()
            .ok_or_else(|| format!("cannot listen on {}", config.bind))?;
        let server = server.run();
        let handle = server.handle();
        tracing::info!(bind = %addr, "dr-orchestrator is listening");
        Ok(Self {
            addr,
            handle,
            server: tokio::spawn(server),
            engine,
        })
    }

    /// Stops the HTTP server (draining requests in flight) when asked.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.handle.clone()
    }

    /// Serves until the HTTP server stops, then stops the executor pool.
    pub async fn wait(self) -> Result<(), String> {
        let served = match self.server.await {
            Ok(result) => result.map_err(|e| format!("the HTTP server failed: {e}")),
            Err(e) => Err(format!("the HTTP server failed: {e}")),
        };
        if let Some((engine, tasks)) = self.engine {
            // Steps in flight keep their leases until they expire; another instance (or this
            // one after a restart) reclaims them.
            engine.stop();
            for task in tasks {
                task.abort();
            }
        }
        served
    }
}

/// `dr-orchestrator serve`: runs until SIGINT/SIGTERM, then drains requests and stops the
/// embedded cluster if it started one.
pub fn serve(config: &Config) -> Result<(), String> {
    let prepared = Prepared::open(config)?;
    let result = runtime()?.block_on(async {
        let service = Service::start(&prepared.state, config)?;
        println!("dr-orchestrator is listening on http://{}", service.addr);
        println!("  Swagger UI: http://{}/docs/", service.addr);
        if prepared.secrets_from_data_dir {
            announce_admin_token(&prepared.state, config);
        }
        service.wait().await
    });
    drop(prepared);
    result
}

/// Starts this instance's executor pool and webhook dispatcher (none with `DRO_WORKERS=0`).
fn start_engine(
    state: &AppState,
    config: &Config,
) -> Option<(Arc<engine::Engine>, Vec<tokio::task::JoinHandle<()>>)> {
    if config.workers == 0 {
        return None;
    }
    let engine = engine::Engine::new(
        state.db.clone(),
        state.templates.clone(),
        state.master_key.clone(),
        state.metrics.clone(),
        engine::EngineConfig {
            workers: config.workers,
            lease: Duration::from_secs(config.lease_secs),
            ..engine::EngineConfig::default()
        },
    );
    let mut tasks = engine.start();
    tracing::info!(workers = config.workers, owner = %engine.owner, "executor pool started");
    // Webhook deliveries go out from every instance that runs steps, on their own tasks.
    let dispatcher = webhooks::dispatcher::Dispatcher::new(
        state.db.clone(),
        state.master_key.clone(),
        webhooks::dispatcher::DispatcherConfig::new(config.public_url.clone()),
    );
    match dispatcher {
        Ok(d) => tasks.push(d.start()),
        Err(e) => tracing::error!(error = %e, "webhook deliveries will not be sent"),
    }
    Some((engine, tasks))
}

/// The embedded mode's ready-to-paste admin token: on a terminal it is printed; otherwise (a
/// journal, `docker logs`) it goes to a 0600 file, so no log ever holds it.
pub fn announce_admin_token(state: &AppState, config: &Config) {
    use std::io::IsTerminal;
    let token = state
        .jwt
        .issue("admin", Role::Admin, chrono::Duration::hours(12));
    if std::io::stdout().is_terminal() {
        println!("  Admin token for Swagger UI's Authorize button (valid 12h; `dr-orchestrator token` makes more):");
        println!("  {token}");
        return;
    }
    let path = config.data_dir.join(secrets::ADMIN_TOKEN_FILE);
    match secrets::write_private(&path, &token) {
        Ok(()) => println!(
            "  Admin token (valid 12h) written to {}; `dr-orchestrator token` makes more",
            path.display()
        ),
        Err(e) => tracing::warn!(error = %e, "cannot write the admin token file"),
    }
}

/// `dr-orchestrator token`: a JWT signed with the same secret `serve` uses.
pub fn issue_token(
    config: &Config,
    role: Role,
    subject: &str,
    ttl: chrono::Duration,
) -> Result<String, String> {
    auth::check_subject(subject).map_err(|why| format!("--subject {why}"))?;
    let secrets = Secrets::resolve(config)?;
    Ok(JwtKeys::new(&secrets.jwt_secret).issue(subject, role, ttl))
}
