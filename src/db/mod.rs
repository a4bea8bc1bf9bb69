//! The database: connection pool, embedded migrations, the one helper through which every query
//! runs off the async workers, and the row-level operations of each table.

pub mod audit;
pub mod credentials;
pub mod embedded;
pub mod hooks;
pub mod models;
pub mod plans;
pub mod providers;
pub mod resources;
pub mod schema;
pub mod steps;
pub mod webhooks;

use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{Error, Result};

pub type PgPool = Pool<ConnectionManager<PgConnection>>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key that serializes migrations when several instances start at once.
const MIGRATION_LOCK: i64 = 0x64726f5f6d6967; // "dro_mig"

pub fn build_pool(url: &str, max_size: u32, timeout: Duration) -> Result<PgPool, String> {
    Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1))
        .connection_timeout(timeout)
        .test_on_check_out(false)
        .build(ConnectionManager::<PgConnection>::new(url))
        .map_err(|e| format!("cannot connect to the database: {e}"))
}

/// Applies every pending migration, one instance at a time; returns the versions applied.
pub fn migrate(conn: &mut PgConnection) -> Result<Vec<String>, String> {
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .execute(conn)
        .map_err(|e| format!("cannot take the migration lock: {e}"))?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| format!("migration failed: {e}"));
    let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).execute(conn);
    result
}

/// True when the database has every migration this binary knows. Reads only (no DDL), so a
/// least-privilege user can probe it.
pub fn migrations_applied(conn: &mut PgConnection) -> Result<bool, String> {
    use diesel::migration::MigrationSource;
    use diesel::sql_types::Text;

    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = Text)]
        version: String,
    }
    let applied: std::collections::HashSet<String> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Applied>(conn)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|a| a.version)
            .collect();
    let known =
        MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS).map_err(|e| e.to_string())?;
    Ok(known
        .iter()
        .all(|m| applied.contains(&m.name().version().to_string())))
}

/// How a request path names an object: by id or by its name. Anything else cannot exist,
/// so it is a 404 before any query runs.
#[derive(Debug, Clone)]
pub enum Key {
    Id(uuid::Uuid),
    Name(String),
}

impl Key {
    pub fn parse(what: &'static str, raw: &str) -> Result<Self> {
        if let Ok(id) = uuid::Uuid::parse_str(raw) {
            return Ok(Self::Id(id));
        }
        if crate::domain::validation::is_name(raw) {
            return Ok(Self::Name(raw.to_owned()));
        }
        Err(Error::not_found(what, raw))
    }
}

/// Keyset pagination by name, shared by every list sorted by name.
#[derive(Debug, Default, Clone)]
pub struct NamePage {
    /// The last name of the previous page.
    pub after_name: Option<String>,
    pub descending: bool,
    pub limit: i64,
}

/// Runs `build()` (a boxed, filtered query on `$table`) once to count and once for one page of
/// `$row`s ordered by name after the cursor; evaluates to `Result<(Vec<$row>, i64)>`.
macro_rules! page_by_name {
    ($conn:expr, $build:expr, $table:ident, $row:ty, $page:expr) => {{
        let page: &$crate::db::NamePage = $page;
        let total: i64 = $build().count().get_result($conn)?;
        let mut query = $build();
        query = match (&page.after_name, page.descending) {
            (Some(after), false) => query.filter($table::name.gt(after.clone())),
            (Some(after), true) => query.filter($table::name.lt(after.clone())),
            (None, _) => query,
        };
        query = if page.descending {
            query.order($table::name.desc())
        } else {
            query.order($table::name.asc())
        };
        let rows = query
            .limit(page.limit)
            .select(<$row>::as_select())
            .load($conn)?;
        Ok((rows, total))
    }};
}
pub(crate) use page_by_name;

/// Generates `find` (by id or name) and `find_for_update` (the same, locking the row until the
/// transaction ends) for a table with `id` and a unique `name`.
macro_rules! lookup_by_key {
    ($table:ident, $row:ty, $what:literal) => {
        /// Finds a row by its id or its name.
        pub fn find(conn: &mut PgConnection, key: &str) -> Result<$row> {
            let found = match $crate::db::Key::parse($what, key)? {
                $crate::db::Key::Id(id) => $table::table
                    .find(id)
                    .select(<$row>::as_select())
                    .first(conn),
                $crate::db::Key::Name(name) => $table::table
                    .filter($table::name.eq(name))
                    .select(<$row>::as_select())
                    .first(conn),
            };
            found
                .optional()?
                .ok_or_else(|| Error::not_found($what, key))
        }

        /// Finds and locks a row until the transaction ends.
        pub(crate) fn find_for_update(conn: &mut PgConnection, key: &str) -> Result<$row> {
            let id = match $crate::db::Key::parse($what, key)? {
                $crate::db::Key::Id(id) => id,
                $crate::db::Key::Name(name) => $table::table
                    .filter($table::name.eq(name))
                    .select($table::id)
                    .first(conn)
                    .optional()?
                    .ok_or_else(|| Error::not_found($what, key))?,
            };
            $table::table
                .find(id)
                .select(<$row>::as_select())
                .for_update()
                .first(conn)
                .optional()?
                .ok_or_else(|| Error::not_found($what, key))
        }
    };
}
pub(crate) use lookup_by_key;

/// Handle on the pool that runs each database call on tokio's blocking threads, never on an
/// actix worker.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut PgConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        // The wait for a connection is bounded by the pool's timeout from here, queueing for a
        // blocking thread included (HTTP workers have few: `DRO_HTTP_DB_THREADS`). A call that
        // waited too long gives up before it touches the database: its caller is told 503, so
        // it must not run afterwards. It is never abandoned once started.
        let deadline = std::time::Instant::now() + pool.connection_timeout();
        let joined = tokio::task::spawn_blocking(move || {
            let _request = span.enter();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Unavailable(
                    "no database connection became free in time".into(),
                ));
            }
            let mut conn = pool.get_timeout(left)?;
            f(&mut conn)
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                tracing::error!("a database task panicked");
                Err(Error::internal("a database task panicked"))
            }
            Err(e) => Err(Error::internal(e)),
        }
    }

    /// Runs `f` in one transaction: everything it writes lands together or not at all.
    pub async fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut PgConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |conn| conn.transaction(f)).await
    }
}

/// A secret sealed with the master key: its ciphertext, nonce and the id of the key that
/// sealed it, as the tables that hold secrets store them.
pub type Sealed = (Vec<u8>, Vec<u8>, String);

/// Opens a secret sealed for row `id` (the associated data), refusing one sealed with another
/// master key; `what` names the row in errors (never the secret).
pub fn open_sealed(
    key: &crate::crypto::MasterKey,
    what: &str,
    id: uuid::Uuid,
    (ciphertext, nonce, key_id): Sealed,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    if key_id != key.id() {
        return Err(Error::internal(format!(
            "{what} {id} was sealed with master key {key_id}, not the configured {}",
            key.id()
        )));
    }
    key.open(&nonce, &ciphertext, id.as_bytes())
        .map_err(|e| Error::internal(format!("{what} {id}: {e}")))
}
