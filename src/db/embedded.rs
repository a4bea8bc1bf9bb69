//! The embedded default: when no `DATABASE_URL` is set, the service runs a private PostgreSQL
//! cluster under `<data dir>/postgres` (initdb on first start, a child `postgres` on a unix
//! socket inside that directory, no TCP port), and stops it cleanly on shutdown. PostgreSQL
//! refuses to run as root, so as root the cluster runs as the `postgres` user (or a
//! `dro-postgres` system user created for it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

const PORT: u16 = 5432;
const SUPERUSER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// What to tell a user who has neither a server nor `DATABASE_URL`.
pub const NO_SERVER_HELP: &str = "PostgreSQL's server programs (initdb, postgres) were not found, \
and DATABASE_URL is not set. Either install them (Debian/Ubuntu: `apt-get install -y postgresql`; \
or point DRO_PG_BINDIR at the directory that holds them), or set DATABASE_URL to an existing \
PostgreSQL database, e.g. postgres://user:password@127.0.0.1:5432/dr_orchestrator";

/// A running private cluster. Dropping an owned cluster stops the server.
pub struct EmbeddedPostgres {
    cluster_dir: PathBuf,
    pid: Option<Pid>,
    child: Option<Child>,
    /// The exclusive claim on the data dir; `None` for a shared cluster, which is never stopped.
    owner_lock: Option<Flock<fs::File>>,
}

impl EmbeddedPostgres {
    /// Starts (creating on first use) the cluster under `root/postgres` for this process alone,
    /// or adopts the one still running there after a crash. Stops it when dropped. Refuses
    /// when another live process already owns that directory.
    pub fn start(root: &Path, bindir: Option<&Path>) -> Result<Self, String> {
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let lock_path = root.join("embedded.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            format!(
                "another dr-orchestrator process is using the embedded PostgreSQL in {}; stop it, \
                 or give this one its own DRO_DATA_DIR or a DATABASE_URL",
                root.display()
            )
        })?;
        let mut cluster = Self::start_inner(root, bindir)?;
        cluster.owner_lock = Some(lock);
        Ok(cluster)
    }

    /// Starts or joins a cluster that several processes share (test harnesses); it is left
    /// running when dropped.
    pub fn start_shared(root: &Path, bindir: Option<&Path>) -> Result<Self, String> {
        Self::start_inner(root, bindir)
    }

    fn start_inner(root: &Path, bindir: Option<&Path>) -> Result<Self, String> {
        let bindir = find_bindir(bindir)?;
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let root = root
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
        let cluster_dir = root.join("postgres");
        let socket = cluster_dir.join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > 100 {
            return Err(format!(
                "the socket path {} is too long for a unix socket; set DRO_DATA_DIR to a shorter path",
                socket.display()
            ));
        }
        let owner = ClusterOwner::for_current_process()?;
        if let Some(user) = &owner.user {
            // The unprivileged cluster user must be able to walk into the data dir; the
            // secrets beside it stay 0600.
            fs::set_permissions(&root, fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("cannot set the mode of {}: {e}", root.display()))?;
            check_traversable(&root, user)?;
        }
        if !cluster_dir.join("PG_VERSION").exists() {
            init_cluster(&bindir, &cluster_dir, &owner, &root)?;
        }
        let mut cluster = Self {
            cluster_dir,
            pid: None,
            child: None,
            owner_lock: None,
        };
        if let Some(pid) = cluster.running_pid() {
            tracing::warn!(
                pid = pid.as_raw(),
                "reusing the embedded PostgreSQL that is already running"
            );
            cluster.pid = Some(pid);
        } else {
            cluster.spawn(&bindir, &owner, &root)?;
        }
        cluster.wait_ready(&root)?;
        Ok(cluster)
    }

    /// A libpq URL for `database` over the cluster's unix socket.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@/{database}?host={}&port={PORT}",
            percent_encode_path(&self.cluster_dir)
        )
    }

    /// Creates `database` if it does not exist yet.
    pub fn ensure_database(&self, database: &str) -> Result<(), String> {
        let mut conn = PgConnection::establish(&self.url("postgres"))
            .map_err(|e| format!("cannot connect to the embedded PostgreSQL: {e}"))?;
        let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "EXISTS (SELECT 1 FROM pg_database WHERE datname = '{}')",
            database.replace('\'', "''")
        )))
        .get_result(&mut conn)
        .map_err(|e| e.to_string())?;
        if !exists {
            diesel::sql_query(format!(
                "CREATE DATABASE \"{}\"",
                database.replace('"', "\"\"")
            ))
            .execute(&mut conn)
            .map_err(|e| format!("cannot create database {database}: {e}"))?;
        }
        Ok(())
    }

    /// The pid in `postmaster.pid` when it is a live PostgreSQL serving this very directory.
    /// After a reboot the file is stale and its pid may belong to anything else: that is not
    /// adopted (PostgreSQL's own start then clears the stale file).
    fn running_pid(&self) -> Option<Pid> {
        let text = fs::read_to_string(self.cluster_dir.join("postmaster.pid")).ok()?;
        let pid = Pid::from_raw(text.lines().next()?.trim().parse().ok()?);
        if !is_alive(pid) {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_postgres = args
            .first()
            .is_some_and(|exe| exe.ends_with(b"postgres") || exe.ends_with(b"postmaster"));
        let dir = self.cluster_dir.as_os_str().as_encoded_bytes();
        (is_postgres && args.contains(&dir)).then_some(pid)
    }

    fn spawn(&mut self, bindir: &Path, owner: &ClusterOwner, root: &Path) -> Result<(), String> {
        let log = log_file(root)?;
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.cluster_dir)
            .arg("-k")
            .arg(&self.cluster_dir)
            .args(["-p", &PORT.to_string(), "-c", "listen_addresses="])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Its own process group: a Ctrl-C to the service must not reach the database
            // before the service has drained its requests.
            .process_group(0);
        owner.apply(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bindir.join("postgres").display()))?;
        self.pid = Some(Pid::from_raw(child.id() as i32));
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, root: &Path) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.url("postgres");
        loop {
            if PgConnection::establish(&url).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.pid = None;
                    return Err(format!(
                        "the embedded PostgreSQL exited ({status}); its log ends with:\n{}",
                        log_tail(root)
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the embedded PostgreSQL did not accept connections within {}s; its log ends with:\n{}",
                    READY_TIMEOUT.as_secs(),
                    log_tail(root)
                ));
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown: running transactions are rolled back, the server checkpoints and exits.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        if kill(pid, Signal::SIGINT).is_err() {
            return;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            let exited = match self.child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(Some(_))),
                // An adopted server is not our child: it is gone once its pid is dead (or a
                // zombie nobody reaps) or it removed its pid file.
                None => !is_alive(pid) || !self.cluster_dir.join("postmaster.pid").exists(),
            };
            if exited {
                tracing::info!("embedded PostgreSQL stopped");
                return;
            }
            sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            pid = pid.as_raw(),
            "embedded PostgreSQL did not stop in time"
        );
    }
}

/// True when `pid` runs and is not a zombie.
fn is_alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => true,
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.owner_lock.is_some() {
            self.stop();
        }
    }
}

/// The OS user the cluster runs as: ourselves, or an unprivileged user when we are root.
struct ClusterOwner {
    user: Option<User>,
}

impl ClusterOwner {
    fn for_current_process() -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Self { user: None });
        }
        for name in ["postgres", "dro-postgres"] {
            if let Ok(Some(user)) = User::from_name(name) {
                return Ok(Self { user: Some(user) });
            }
        }
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "dro-postgres"])
            .status()
            .map_err(|e| format!("running as root and no `postgres` user exists; creating `dro-postgres` failed: {e}"))?;
        if !status.success() {
            return Err(
                "running as root and no `postgres` user exists; `useradd dro-postgres` failed"
                    .into(),
            );
        }
        match User::from_name("dro-postgres") {
            Ok(Some(user)) => Ok(Self { user: Some(user) }),
            _ => Err("the user `dro-postgres` was created but cannot be found".into()),
        }
    }

    fn apply(&self, cmd: &mut Command) {
        if let Some(user) = &self.user {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", &user.dir);
        }
    }

    fn chown(&self, path: &Path) -> Result<(), String> {
        match &self.user {
            Some(user) => nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot hand {} to {}: {e}", path.display(), user.name)),
            None => Ok(()),
        }
    }
}

/// Every directory above the data dir must let the cluster's user pass (as `/root`, mode 0700,
/// does not): say so plainly instead of letting initdb fail with a bare EACCES.
fn check_traversable(root: &Path, user: &User) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for dir in root.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode();
        let passes = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passes {
            return Err(format!(
                "the embedded PostgreSQL runs as the unprivileged user `{}`, which cannot enter {} \
                 (mode {:o}); set DRO_DATA_DIR to a directory it can reach, e.g. /var/lib/dr-orchestrator",
                user.name,
                dir.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

fn init_cluster(
    bindir: &Path,
    cluster_dir: &Path,
    owner: &ClusterOwner,
    root: &Path,
) -> Result<(), String> {
    fs::create_dir_all(cluster_dir)
        .map_err(|e| format!("cannot create {}: {e}", cluster_dir.display()))?;
    fs::set_permissions(cluster_dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    owner.chown(cluster_dir)?;
    tracing::info!(dir = %cluster_dir.display(), "creating the embedded PostgreSQL cluster");
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(cluster_dir)
        .args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ])
        .current_dir(root)
        .stdin(Stdio::null());
    owner.apply(&mut cmd);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bindir.join("initdb").display()))?;
    if !out.status.success() {
        // Leave nothing half-made behind: the next start would take it for a cluster.
        let _ = fs::remove_dir_all(cluster_dir);
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Finds a directory with `initdb` and `postgres`: the override, the newest Debian layout
/// (`/usr/lib/postgresql/<major>/bin`), then `PATH`.
pub fn find_bindir(explicit: Option<&Path>) -> Result<PathBuf, String> {
    find_bindir_in(
        explicit,
        Path::new("/usr/lib/postgresql"),
        std::env::var_os("PATH"),
    )
}

fn find_bindir_in(
    explicit: Option<&Path>,
    debian_root: &Path,
    path_var: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = explicit {
        return if has_server(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(format!(
                "DRO_PG_BINDIR={} holds no initdb and postgres",
                dir.display()
            ))
        };
    }
    let mut debian: Vec<(u32, PathBuf)> = fs::read_dir(debian_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Ok(dir);
    }
    path_var
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_server(dir))
        .ok_or_else(|| NO_SERVER_HELP.to_owned())
}

fn log_file(root: &Path) -> Result<fs::File, String> {
    let path = root.join("postgres.log");
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

fn log_tail(root: &Path) -> String {
    let text = fs::read_to_string(root.join("postgres.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Percent-encodes a filesystem path for the `host=` parameter of a libpq URL.
fn percent_encode_path(path: &Path) -> String {
    path.to_string_lossy()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_percent_encoded_in_the_url() {
        assert_eq!(percent_encode_path(Path::new("/a b/c")), "/a%20b/c");
    }

    #[test]
    fn without_server_programs_the_message_says_what_to_install_or_set() {
        let err = find_bindir_in(
            None,
            Path::new("/nonexistent"),
            Some("/nonexistent/bin".into()),
        )
        .unwrap_err();
        assert!(err.contains("apt-get install -y postgresql"), "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn a_wrong_bindir_override_says_so() {
        let err = find_bindir(Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(err.contains("DRO_PG_BINDIR"));
    }
}
