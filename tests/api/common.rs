//! The test harness: a real PostgreSQL database per test (cloned from a migrated template), the
//! service on a free loopback port, tokens for each role, and the service's log lines.
//!
//! PostgreSQL is found in this order: `TEST_DATABASE_URL`; a server on 127.0.0.1:5432 (user
//! `postgres`, trust auth, as on the CI machine); a private cluster under
//! `target/test-postgres` managed with the service's own embedded mode.
//!
//! For the runners: a small HTTP service (`start_http_server`) and `run_single`, which runs one
//! step as a one-step plan's drill.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use diesel::prelude::*;
use dr_orchestrator::auth::Role;
use dr_orchestrator::crypto::MasterKey;
use dr_orchestrator::db::embedded::EmbeddedPostgres;
use dr_orchestrator::db::{self, Db};
use dr_orchestrator::engine::{Engine, EngineConfig};
use dr_orchestrator::secrets::Secrets;
use dr_orchestrator::{build_app, AppState};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// How to reach the test server for a given database name.
enum Server {
    Url(url::Url),
    Embedded(EmbeddedPostgres),
}

impl Server {
    fn url(&self, database: &str) -> String {
        match self {
            Server::Url(base) => {
                let mut u = base.clone();
                u.set_path(&format!("/{database}"));
                u.to_string()
            }
            Server::Embedded(cluster) => cluster.url(database),
        }
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Ok(raw) = std::env::var("TEST_DATABASE_URL") {
            return Server::Url(url::Url::parse(&raw).expect("TEST_DATABASE_URL is a URL"));
        }
        let local = "postgres://postgres@127.0.0.1:5432/postgres";
        if PgConnection::establish(local).is_ok() {
            return Server::Url(url::Url::parse(local).expect("literal URL"));
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-postgres");
        let lock = std::fs::File::create(std::env::temp_dir().join("dro-test-postgres.lock"))
            .expect("lock file for the test cluster");
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .expect("lock the test cluster");
        let cluster = EmbeddedPostgres::start_shared(&dir, None).unwrap_or_else(|e| {
            panic!(
                "no PostgreSQL for the tests: set TEST_DATABASE_URL, run a server on \
                 127.0.0.1:5432, or install Debian's `postgresql` package ({e})"
            )
        });
        // Shared by every test process; it stays up for the next run.
        Server::Embedded(cluster)
    })
}

fn admin_connection() -> PgConnection {
    PgConnection::establish(&server().url("postgres")).expect("connect to the test server")
}

/// A migrated template database named after the migrations' content, built once.
fn template() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut hasher = Sha256::new();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<PathBuf> = walk(&dir);
        files.sort();
        for f in files {
            hasher.update(f.strip_prefix(&dir).unwrap().to_string_lossy().as_bytes());
            hasher.update(std::fs::read(&f).unwrap());
        }
        let name = format!("dro_tmpl_{}", &hex(&hasher.finalize())[..16]);
        let mut conn = admin_connection();
        diesel::sql_query("SELECT pg_advisory_lock(727274)")
            .execute(&mut conn)
            .unwrap();
        if !database_exists(&mut conn, &name) {
            let wip = format!("{name}_wip");
            exec(
                &mut conn,
                &format!("DROP DATABASE IF EXISTS {wip} WITH (FORCE)"),
            );
            exec(&mut conn, &format!("CREATE DATABASE {wip}"));
            {
                let mut t = PgConnection::establish(&server().url(&wip)).unwrap();
                db::migrate(&mut t).expect("migrations apply to an empty database");
            }
            exec(&mut conn, &format!("ALTER DATABASE {wip} RENAME TO {name}"));
        }
        diesel::sql_query("SELECT pg_advisory_unlock(727274)")
            .execute(&mut conn)
            .unwrap();
        name
    })
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn exec(conn: &mut PgConnection, sql: &str) {
    diesel::sql_query(sql)
        .execute(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn database_exists(conn: &mut PgConnection, name: &str) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT 1 FROM pg_database WHERE datname = '{name}')"
    )))
    .get_result(conn)
    .unwrap()
}

/// A database of one's own, dropped with the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> Self {
        let template = template();
        let name = format!("dro_t_{}", uuid::Uuid::new_v4().simple());
        exec(
            &mut admin_connection(),
            &format!("CREATE DATABASE {name} TEMPLATE {template}"),
        );
        let url = server().url(&name);
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin_connection());
    }
}

/// Every log line the service writes in this test process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a test sees of a response.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    /// Asserts an RFC 7807 problem with `status` and `type` `/problems/<slug>`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "content type {} for {}",
            self.content_type(),
            self.text
        );
        assert_eq!(
            self.body["type"],
            format!("/problems/{slug}"),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    /// The fields named in a validation problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The service, listening on a free loopback port, over a database of its own.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub db: TestDb,
    /// The service's JWT secret, for tests that forge tokens with the right key.
    pub jwt_secret: Vec<u8>,
    client: reqwest::Client,
    handle: ServerHandle,
    engines: Vec<(std::sync::Arc<Engine>, Vec<tokio::task::JoinHandle<()>>)>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_sized(4).await
    }

    async fn spawn_sized(pool_size: u32) -> Self {
        log_buffer();
        let db = TestDb::new();
        let pool = db::build_pool(&db.url, pool_size, Duration::from_secs(10)).unwrap();
        let jwt_secret = uuid::Uuid::new_v4().to_string().repeat(2).into_bytes();
        let secrets = Secrets {
            jwt_secret: Zeroizing::new(jwt_secret.clone()),
            master_key: MasterKey::from_base64(&MasterKey::generate_base64()).unwrap(),
            from_data_dir: false,
        };
        let state = AppState::new(Db::new(pool), secrets);
        let app_state = state.clone();
        let server = HttpServer::new(move || build_app(&app_state))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base: format!("http://{addr}"),
            state,
            db,
            jwt_secret,
            client: reqwest::Client::new(),
            handle,
            engines: Vec::new(),
        }
    }

    /// The service with an executor pool of `workers` (short lease, fast polling for tests).
    /// With one engine instance. Its lease is long enough that a loaded 2-core machine never
    /// lets it lapse mid-step; the tests of lapsed leases start engines with short ones.
    pub async fn spawn_with_engine(workers: usize) -> Self {
        let mut app = Self::spawn_sized(24).await;
        app.start_engine(workers, Duration::from_secs(15));
        app
    }

    /// Starts another engine instance on the same database; returns its index.
    pub fn start_engine(&mut self, workers: usize, lease: Duration) -> usize {
        let engine = Engine::new(
            self.state.db.clone(),
            self.state.templates.clone(),
            self.state.master_key.clone(),
            self.state.metrics.clone(),
            EngineConfig {
                workers,
                lease,
                poll: Duration::from_millis(100),
                reap_every: Duration::from_millis(300),
            },
        );
        let tasks = engine.start();
        self.engines.push((engine, tasks));
        self.engines.len() - 1
    }

    /// Kills an engine instance the hard way: its tasks stop mid-step, its leases lapse.
    pub fn kill_engine(&mut self, index: usize) {
        let (engine, tasks) = &self.engines[index];
        engine.stop();
        for t in tasks {
            t.abort();
        }
    }

    pub fn token(&self, role: Role) -> String {
        self.state.jwt.issue(
            &format!("test-{}", role.as_str()),
            role,
            chrono::Duration::minutes(10),
        )
    }

    /// A request with no credentials.
    pub fn anonymous(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// A request as a caller with `role`.
    pub fn as_role(&self, role: Role, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.anonymous(method, path).bearer_auth(self.token(role))
    }

    /// A request as an admin.
    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.as_role(Role::Admin, method, path)
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        send(self.admin(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> TestResponse {
        send(self.admin(Method::POST, path).json(body)).await
    }

    /// A direct connection to the test's database, for assertions on what is stored.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.db.url).unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for (engine, tasks) in &self.engines {
            engine.stop();
            for t in tasks {
                t.abort();
            }
        }
        let handle = self.handle.clone();
        // Stop the server's worker; the database is dropped after.
        let _ = futures_util::FutureExt::now_or_never(handle.stop(false));
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> TestResponse {
    let response = request.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    TestResponse {
        status,
        headers,
        text,
        body,
    }
}

/// A small HTTP service for the runners' tests: `/api/records/{id}` (needs the bearer token
/// `t0k`), `/flaky` (503 for the first three calls, then 200 with `WordPress`), `/status/{n}`,
/// `/health` (JSON: `{"status": "ok", "replicas": 3, "version": "6.4.2", ...}`).
pub fn start_http_server() -> (String, actix_web::dev::ServerHandle) {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = HttpServer::new(move || {
        let calls = calls.clone();
        App::new()
            .route(
                "/api/records/{id}",
                web::put().to(
                    |req: HttpRequest, body: web::Json<Value>, id: web::Path<String>| async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if auth != "Bearer t0k" {
                            return HttpResponse::Unauthorized().finish();
                        }
                        HttpResponse::Ok()
                            .json(json!({"data": {"id": id.into_inner(), "value": body["value"]}}))
                    },
                ),
            )
            .route(
                "/flaky",
                web::get().to(move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < 3 {
                            HttpResponse::ServiceUnavailable().body("starting")
                        } else {
                            HttpResponse::Ok().body("<title>WordPress</title>")
                        }
                    }
                }),
            )
            .route(
                "/health",
                web::get().to(|| async {
                    HttpResponse::Ok()
                        .json(json!({"status": "ok", "replicas": 3, "version": "6.4.2",
                        "db": {"role": "primary", "lag": 0}}))
                }),
            )
            .route(
                "/status/{n}",
                web::get().to(|n: web::Path<u16>| async move {
                    HttpResponse::build(
                        actix_web::http::StatusCode::from_u16(n.into_inner()).unwrap(),
                    )
                    .finish()
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}"), handle)
}

/// Saves `params` as a step `name` of `kind`, runs it as a one-step plan's drill and returns the
/// execution once it has ended.
pub async fn run_single(app: &TestApp, name: &str, kind: &str, params: Value) -> Value {
    let r = app
        .post_json(
            "/api/v1/steps",
            &json!({"name": name, "kind": kind, "params": params}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = app
        .post_json(
            "/api/v1/plans",
            &json!({"name": format!("p_{name}"), "steps": [{"key": "s", "step": name}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(
        app.admin(Method::POST, &format!("/api/v1/plans/p_{name}/executions"))
            .json(&json!({"mode": "drill"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = app.get(&format!("/api/v1/executions/{id}")).await;
        if matches!(
            e.body["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return e.body;
        }
        assert!(Instant::now() < deadline, "{}", e.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
