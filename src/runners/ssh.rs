//! SSH for `remote_script` (and for checks run from a jump server), on async-ssh2-lite.
//!
//! - A target behind a jump server is reached as `ssh -J` does: a `direct-tcpip` channel of the
//!   jump server's session carries the target's own SSH session (through a socket pair, since
//!   libssh2 needs a file descriptor); nothing runs on the jump server for it.
//! - Host keys are checked before any secret is sent: a pinned fingerprint must match; with no
//!   pin the step fails, unless the resource opted in to `trust_on_first_use`, which pins the
//!   first key seen (in the inventory, audited).
//! - Connections are kept per execution and target and reused by its later steps, each
//!   carrying one script at a time (a busy target gets a second connection); idle ones are
//!   closed by `sweep`. A tunnel has a jump server connection of its own, so no libssh2
//!   session ever multiplexes channels for several tasks. Connections in use through a jump
//!   server are bounded by its `max_connections`.
//! - Scripts run under a small POSIX `sh` wrapper: it reads the environment preamble from
//!   stdin (for servers that refuse `setenv`; secrets never go on the command line), starts the
//!   script in its own session and sends it a hang-up when our side of the channel goes away
//!   (timeout, cancel, lost connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_ssh2_lite::ssh2::HashType;
use async_ssh2_lite::{AsyncSession, AsyncSessionStream};
use base64::Engine as _;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::script::{pump, End};
use super::{cancelled, LogSink};
use crate::db::Db;
use crate::domain::plans::{Inventory, InventoryResource};
use crate::domain::resources::ResourceKind;

/// TCP connect, handshake and login must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// What a connection that did not come up in time says.
const NO_SESSION: &str = "no SSH session within";
/// Concurrent uses of one jump server unless its `max_connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;
/// How long a stopped script gets to end after its hang-up before the channel is closed.
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// The line that ends the environment preamble.
const ENV_END: &str = "__DRO_ENV_END__";

/// The remote wrapper (POSIX sh). `$1` is the script. fd 3 keeps the channel's stdin for the
/// watcher, which hangs up the script's process group when stdin closes before the script ends.
const WRAPPER: &str = r#"exec 3<&0
while IFS= read -r __dro_l; do [ "$__dro_l" = __DRO_ENV_END__ ] && break; eval "$__dro_l"; done
unset __dro_l
if command -v setsid >/dev/null 2>&1; then setsid /bin/sh -c "$1" dro </dev/null & else /bin/sh -c "$1" dro </dev/null & fi
__dro_p=$!
{ cat >/dev/null; kill -HUP -$__dro_p || kill -HUP $__dro_p; sleep 5; kill -KILL -$__dro_p; } <&3 >/dev/null 2>&1 &
__dro_w=$!
exec 3<&-
wait $__dro_p
__dro_rc=$?
kill $__dro_w 2>/dev/null
exit $__dro_rc"#;

/// How to log in.
#[derive(Clone)]
pub enum Secret {
    Password(Zeroizing<String>),
    Key {
        pem: Zeroizing<String>,
        passphrase: Option<Zeroizing<String>>,
    },
}

/// What host key to accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyPolicy {
    Pinned(String),
    TrustOnFirstUse,
    Unpinned,
}

/// Where a key trusted on first use is pinned: a resource and the attribute path.
#[derive(Clone, Debug)]
pub struct PinTarget {
    pub resource_id: Uuid,
    pub name: String,
    pub path: &'static [&'static str],
}

/// One SSH server and how to log in to it.
#[derive(Clone)]
pub struct Endpoint {
    /// How messages name it: "host `web01` (10.0.0.5:22)".
    pub label: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// The credential's name (never its secret) for messages and connection keys.
    pub credential: String,
    pub secret: Secret,
    pub host_key: HostKeyPolicy,
    pub pin_to: Option<PinTarget>,
}

/// A jump server on the way.
#[derive(Clone)]
pub struct Jump {
    pub name: String,
    pub endpoint: Endpoint,
    pub max_connections: usize,
}

/// Where a script runs: on `target`, directly or through `jump`; with no target, on the jump
/// server itself.
#[derive(Clone)]
pub struct Route {
    pub execution: Uuid,
    pub jump: Option<Jump>,
    pub target: Option<Endpoint>,
}

impl Route {
    /// The server the script runs on.
    pub fn server(&self) -> Option<&Endpoint> {
        self.target
            .as_ref()
            .or(self.jump.as_ref().map(|j| &j.endpoint))
    }
}

enum Session {
    Tcp(AsyncSession<TcpStream>),
    Tunnel(AsyncSession<UnixStream>),
}

/// An authenticated connection.
pub struct Connection {
    session: Session,
    last_used: Mutex<Instant>,
    /// One script at a time.
    in_use: Arc<Semaphore>,
    /// A tunnelled session keeps its jump server's connection and the pump that carries it.
    _via: Option<Arc<Connection>>,
    _pump: Option<AbortOnDrop>,
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `work` (connect, handshake, login), or the error that it did not finish in time.
async fn within_connect_timeout<T>(
    ep: &Endpoint,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| format!("{}: {NO_SESSION} {CONNECT_TIMEOUT:?}", ep.label))?
}

impl Connection {
    /// A connection that just came up (through a jump server: with its jump server connection
    /// and the pump that carries the tunnel); the log says so.
    async fn up(
        session: Session,
        via: Option<(&str, Connection, AbortOnDrop)>,
        ep: &Endpoint,
        started: Instant,
        log: &LogSink,
    ) -> Self {
        let through = via
            .as_ref()
            .map(|(name, _, _)| format!(" through jump server `{name}`"))
            .unwrap_or_default();
        log.system(&format!(
            "connected to {} as `{}`{through} in {} ms",
            ep.label,
            ep.user,
            started.elapsed().as_millis()
        ))
        .await;
        let (via, pump) = via.map(|(_, c, p)| (Arc::new(c), p)).unzip();
        Self {
            session,
            last_used: Mutex::new(Instant::now()),
            in_use: Arc::new(Semaphore::new(1)),
            _via: via,
            _pump: pump,
        }
    }

    fn touch(&self) {
        if let Ok(mut at) = self.last_used.lock() {
            *at = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|at| at.elapsed())
            .unwrap_or_default()
    }
}

type Slot = Arc<tokio::sync::Mutex<Vec<Arc<Connection>>>>;

/// The connections of running executions, and the bounds per jump server.
pub struct SshPool {
    db: Option<Db>,
    slots: Mutex<HashMap<String, Slot>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Keys trusted on first use for targets that are not inventory resources, per execution.
    seen: Mutex<HashMap<String, String>>,
    idle: Duration,
}

/// A script and everything it runs with.
pub struct Job<'a> {
    pub script: &'a str,
    pub env: Vec<(String, String)>,
    pub log: &'a LogSink,
    pub cancel: watch::Receiver<bool>,
    pub deadline: Instant,
}

/// Why a script could not run.
enum ExecError {
    /// The connection could not open a channel: it may be stale, so try a fresh one once.
    Channel(String),
    Other(String),
}

impl SshPool {
    /// `db` receives keys trusted on first use; without it such keys are kept in memory only.
    pub fn new(db: Option<Db>, idle: Duration) -> Self {
        Self {
            db,
            slots: Mutex::default(),
            limits: Mutex::default(),
            seen: Mutex::default(),
            idle,
        }
    }

    /// Runs a script on the route's server; the error is why it could not be started.
    pub async fn run_script(&self, route: &Route, mut job: Job<'_>) -> (Map<String, Value>, End) {
        let _permit = match self.jump_permit(route, &mut job).await {
            Ok(permit) => permit,
            Err(end) => return (Map::new(), end),
        };
        for retry in [false, true] {
            let got = tokio::select! {
                c = self.connection(route, job.log) => c,
                _ = cancelled(&mut job.cancel) => return (Map::new(), End::Cancelled),
                _ = tokio::time::sleep_until(job.deadline.into()) => {
                    return (Map::new(), End::Stopped("timed out while connecting".into()))
                }
            };
            let (conn, _in_use, key) = match got {
                Ok(got) => got,
                // A session that never came up is tried once more on a new connection.
                Err(e) if !retry && e.contains(NO_SESSION) => {
                    job.log
                        .system(&format!("{e}; trying a new connection"))
                        .await;
                    continue;
                }
                Err(e) => return (Map::new(), End::Stopped(e)),
            };
            conn.touch();
            let ran = match &conn.session {
                Session::Tcp(s) => exec(s, &mut job).await,
                Session::Tunnel(s) => exec(s, &mut job).await,
            };
            conn.touch();
            match ran {
                Ok(done) => return done,
                Err(ExecError::Channel(e)) if !retry => {
                    self.forget(&key, &conn).await;
                    job.log
                        .system(&format!("the kept connection failed ({e}); reconnecting"))
                        .await;
                }
                Err(ExecError::Channel(e) | ExecError::Other(e)) => {
                    return (Map::new(), End::Stopped(e))
                }
            }
        }
        (Map::new(), End::Stopped("no connection".into()))
    }

    /// Runs `command` as it is (no wrapper, no environment) on the route's server and returns
    /// its exit code and stdout (at most 1 MiB): a check's probe run from a jump server.
    pub async fn capture(
        &self,
        route: &Route,
        command: &str,
        log: &LogSink,
        within: Duration,
    ) -> Result<(Option<i32>, String), String> {
        let work = async {
            let _bound = self.bounded(route).await?;
            let (conn, _in_use, key) = self.connection(route, log).await?;
            conn.touch();
            let ran = match &conn.session {
                Session::Tcp(s) => capture_on(s, command).await,
                Session::Tunnel(s) => capture_on(s, command).await,
            };
            if ran.is_err() {
                self.forget(&key, &conn).await;
            }
            ran
        };
        tokio::time::timeout(within, work)
            .await
            .map_err(|_| format!("no answer within {within:?}"))?
    }

    /// Opens a TCP connection to `host:port` from the route's jump server (a `direct-tcpip`
    /// channel), and closes it: a tcp check run from the jump server.
    pub async fn connect_from_jump(
        &self,
        route: &Route,
        host: &str,
        port: u16,
        log: &LogSink,
        within: Duration,
    ) -> Result<(), String> {
        let work = async {
            let _bound = self.bounded(route).await?;
            let (conn, _in_use, _) = self.connection(route, log).await?;
            let Session::Tcp(session) = &conn.session else {
                return Err("a jump server is reached directly".to_owned());
            };
            let mut channel = session
                .channel_direct_tcpip(host, port, None)
                .await
                .map_err(|e| e.to_string())?;
            let _ = channel.close().await;
            Ok(())
        };
        tokio::time::timeout(within, work)
            .await
            .map_err(|_| format!("no answer within {within:?}"))?
    }

    /// A use of the route's jump server within its bound.
    async fn bounded(&self, route: &Route) -> Result<Option<OwnedSemaphorePermit>, String> {
        let Some(jump) = &route.jump else {
            return Ok(None);
        };
        self.limit(jump)
            .acquire_owned()
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn limit(&self, jump: &Jump) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits
            .entry(format!("{}/{}", jump.name, jump.max_connections))
            .or_insert_with(|| Arc::new(Semaphore::new(jump.max_connections.max(1))))
            .clone()
    }

    /// Waits for a free use of the route's jump server, if it has one.
    async fn jump_permit(
        &self,
        route: &Route,
        job: &mut Job<'_>,
    ) -> Result<Option<OwnedSemaphorePermit>, End> {
        let Some(jump) = &route.jump else {
            return Ok(None);
        };
        let limit = self.limit(jump);
        if limit.available_permits() == 0 {
            job.log
                .system(&format!(
                    "waiting: jump server `{}` already has {} connections in use (max_connections)",
                    jump.name, jump.max_connections
                ))
                .await;
        }
        tokio::select! {
            p = limit.acquire_owned() => p.map(Some).map_err(|_| End::Stopped("closed".into())),
            _ = cancelled(&mut job.cancel) => Err(End::Cancelled),
            _ = tokio::time::sleep_until(job.deadline.into()) => {
                Err(End::Stopped(format!("timed out waiting for a free connection on jump server `{}`", jump.name)))
            }
        }
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// A connection of the route that no other script uses now: a kept one, or a new one.
    /// Each connection carries one script at a time (libssh2 sessions do not take concurrent
    /// channels from several tasks well), so a busy target gets a second connection.
    async fn connection(
        &self,
        route: &Route,
        log: &LogSink,
    ) -> Result<(Arc<Connection>, OwnedSemaphorePermit, String), String> {
        let server = route.server().ok_or("the step names no server")?;
        let via = match (&route.jump, &route.target) {
            (Some(j), Some(_)) => j.name.as_str(),
            _ => "-",
        };
        let key = format!(
            "{}|{via}|{}@{}:{}|{}",
            route.execution, server.user, server.address, server.port, server.credential
        );
        let slot = self.slot(&key);
        let mut kept = slot.lock().await;
        for conn in kept.iter() {
            if let Ok(permit) = conn.in_use.clone().try_acquire_owned() {
                return Ok((conn.clone(), permit, key));
            }
        }
        let conn = Arc::new(match (&route.jump, &route.target) {
            (Some(jump), Some(target)) => {
                let jump_conn = self
                    .connect_direct(route.execution, &jump.endpoint, log)
                    .await?;
                self.connect_tunnel(route.execution, &jump.name, jump_conn, target, log)
                    .await?
            }
            (_, _) => self.connect_direct(route.execution, server, log).await?,
        });
        let permit = conn
            .in_use
            .clone()
            .try_acquire_owned()
            .map_err(|e| e.to_string())?;
        kept.push(conn.clone());
        Ok((conn, permit, key))
    }

    /// Drops a kept connection that failed.
    async fn forget(&self, key: &str, conn: &Arc<Connection>) {
        let slot = self.slot(key);
        slot.lock().await.retain(|c| !Arc::ptr_eq(c, conn));
    }

    async fn connect_direct(
        &self,
        execution: Uuid,
        ep: &Endpoint,
        log: &LogSink,
    ) -> Result<Connection, String> {
        let started = Instant::now();
        let session = within_connect_timeout(ep, async {
            let tcp = TcpStream::connect((ep.address.as_str(), ep.port))
                .await
                .map_err(|e| format!("{}: cannot connect: {e}", ep.label))?;
            let _ = tcp.set_nodelay(true);
            let session = AsyncSession::new(tcp, None).map_err(|e| format!("{}: {e}", ep.label))?;
            self.login(execution, session, ep, log).await
        })
        .await?;
        Ok(Connection::up(Session::Tcp(session), None, ep, started, log).await)
    }

    async fn connect_tunnel(
        &self,
        execution: Uuid,
        jump_name: &str,
        jump: Connection,
        ep: &Endpoint,
        log: &LogSink,
    ) -> Result<Connection, String> {
        let Session::Tcp(jump_session) = &jump.session else {
            return Err("a jump server is reached directly".into());
        };
        let started = Instant::now();
        let (session, pump) = within_connect_timeout(ep, async {
            let channel = jump_session
                .channel_direct_tcpip(&ep.address, ep.port, None)
                .await
                .map_err(|e| {
                    format!(
                        "jump server `{jump_name}` could not open a tunnel to {}: {e}",
                        ep.label
                    )
                })?;
            let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
            // Aborted when dropped: on any failure below, and with the connection.
            let pump = AbortOnDrop(tokio::spawn(async move {
                let mut channel = Nudged::new(channel);
                let mut theirs = theirs;
                let _ = tokio::io::copy_bidirectional(&mut channel, &mut theirs).await;
                let _ = channel.inner.close().await;
            }));
            let session =
                AsyncSession::new(ours, None).map_err(|e| format!("{}: {e}", ep.label))?;
            Ok((self.login(execution, session, ep, log).await?, pump))
        })
        .await?;
        let via = Some((jump_name, jump, pump));
        Ok(Connection::up(Session::Tunnel(session), via, ep, started, log).await)
    }

    /// Handshake, host key check, then (only then) the login.
    async fn login<S>(
        &self,
        execution: Uuid,
        mut session: AsyncSession<S>,
        ep: &Endpoint,
        log: &LogSink,
    ) -> Result<AsyncSession<S>, String>
    where
        S: AsyncSessionStream + Send + Sync + 'static,
    {
        session
            .handshake()
            .await
            .map_err(|e| format!("{}: SSH handshake failed: {e}", ep.label))?;
        let seen = session
            .host_key_hash(HashType::Sha256)
            .map(|h| {
                format!(
                    "SHA256:{}",
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
                )
            })
            .ok_or_else(|| format!("{}: the server sent no host key", ep.label))?;
        self.check_host_key(execution, ep, &seen, log).await?;
        let refused = |e: &dyn std::fmt::Display| {
            format!(
                "{}: login as `{}` with credential `{}` was refused: {e}",
                ep.label, ep.user, ep.credential
            )
        };
        match &ep.secret {
            Secret::Password(password) => session
                .userauth_password(&ep.user, password)
                .await
                .map_err(|e| refused(&e))?,
            Secret::Key { pem, passphrase } => session
                .userauth_pubkey_memory(
                    &ep.user,
                    None,
                    pem,
                    passphrase.as_ref().map(|p| p.as_str()),
                )
                .await
                .map_err(|e| refused(&e))?,
        }
        if !session.authenticated() {
            return Err(refused(&"not authenticated"));
        }
        Ok(session)
    }

    async fn check_host_key(
        &self,
        execution: Uuid,
        ep: &Endpoint,
        seen: &str,
        log: &LogSink,
    ) -> Result<(), String> {
        let mismatch = |pinned: &str| {
            format!(
                "the host key of {} has CHANGED: it presented {seen}, but {pinned} is pinned. \
                 Refusing to log in (a man-in-the-middle, or a rebuilt host: if the change is \
                 expected, pin the new fingerprint)",
                ep.label
            )
        };
        match &ep.host_key {
            HostKeyPolicy::Pinned(pinned) if pinned == seen => Ok(()),
            HostKeyPolicy::Pinned(pinned) => Err(mismatch(pinned)),
            HostKeyPolicy::Unpinned => Err(format!(
                "the host key of {} is not pinned: it presented {seen}. Check it on the host \
                 (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and set \
                 `host_key_fingerprint`, or opt in to `trust_on_first_use`",
                ep.label
            )),
            HostKeyPolicy::TrustOnFirstUse => {
                let pinned = match &ep.pin_to {
                    Some(target) => self.pin(target, seen).await?,
                    None => {
                        let key = format!("{execution}|{}:{}", ep.address, ep.port);
                        let mut seen_keys = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen_keys
                            .entry(key)
                            .or_insert_with(|| seen.to_owned())
                            .clone()
                    }
                };
                if pinned != seen {
                    return Err(mismatch(&pinned));
                }
                let place = ep.pin_to.as_ref().map_or_else(
                    || "for this execution".to_owned(),
                    |t| format!("on `{}`", t.name),
                );
                log.system(&format!(
                    "trusted on first use: pinned host key {seen} of {} {place}",
                    ep.label
                ))
                .await;
                Ok(())
            }
        }
    }

    /// Pins `seen` unless a key is pinned already; returns the key now pinned.
    async fn pin(&self, target: &PinTarget, seen: &str) -> Result<String, String> {
        let Some(db) = &self.db else {
            return Ok(seen.to_owned());
        };
        let target = target.clone();
        let seen = seen.to_owned();
        db.transaction(move |conn| crate::db::resources::pin_host_key(conn, &target, &seen))
            .await
            .map_err(|e| format!("pinning the host key failed: {e}"))
    }

    /// Closes connections idle for longer than the pool's idle time.
    pub fn sweep(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(mut kept) => {
                kept.retain(|c| c.in_use.available_permits() == 0 || c.idle_for() < self.idle);
                !kept.is_empty()
            }
            Err(_) => true,
        });
        let executions: std::collections::HashSet<&str> =
            slots.keys().filter_map(|k| k.split('|').next()).collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|k, _| executions.contains(k.split('|').next().unwrap_or_default()));
    }

    /// Open connections (jump server connections that carry a tunnel not counted).
    pub fn open_connections(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .map(|s| s.try_lock().map_or(0, |kept| kept.len()))
            .sum()
    }
}

/// Runs one script on a session: environment, command, streamed output, exit status.
async fn exec<S>(
    session: &AsyncSession<S>,
    job: &mut Job<'_>,
) -> Result<(Map<String, Value>, End), ExecError>
where
    S: AsyncSessionStream + Send + Sync + 'static,
{
    let mut channel = session
        .channel_session()
        .await
        .map_err(|e| ExecError::Channel(format!("cannot open a session channel: {e}")))?;
    let mut preamble = String::new();
    let (mut by_setenv, mut by_stdin) = (0, 0);
    let mut setenv_works = true;
    for (name, value) in &job.env {
        if !is_env_name(name) {
            return Err(ExecError::Other(format!(
                "`{name}` is not an environment variable name"
            )));
        }
        if setenv_works && channel.setenv(name, value).await.is_ok() {
            by_setenv += 1;
            continue;
        }
        // The server refused (AcceptEnv): the rest go through the preamble.
        setenv_works = false;
        preamble.push_str(&export_line(name, value));
        by_stdin += 1;
    }
    if !job.env.is_empty() {
        job.log
            .system(&format!(
                "environment: {by_setenv} variable(s) by setenv, {by_stdin} by a preamble on stdin"
            ))
            .await;
    }
    channel
        .exec(&command(job.script))
        .await
        .map_err(|e| ExecError::Other(format!("the server refused to run the script: {e}")))?;
    preamble.push_str(ENV_END);
    preamble.push('\n');
    let sent = async {
        channel.write_all(preamble.as_bytes()).await?;
        channel.flush().await
    };
    if let Err(e) = sent.await {
        return Err(ExecError::Other(format!(
            "sending the environment failed: {e}"
        )));
    }
    drop(Zeroizing::new(preamble));
    let out = Nudged::new(channel.stream(0));
    let err = Nudged::new(channel.stderr());
    let log = job.log.clone();
    let streams = async move {
        let (outputs, _) = tokio::join!(
            pump(out, "stdout", log.clone(), true),
            pump(err, "stderr", log, false)
        );
        outputs
    };
    tokio::pin!(streams);
    let stopped = tokio::select! {
        outputs = &mut streams => Ok(outputs),
        _ = cancelled(&mut job.cancel) => Err(None),
        _ = tokio::time::sleep_until(job.deadline.into()) => Err(Some("timed out")),
    };
    match stopped {
        Ok(outputs) => {
            let _ = channel.close().await;
            let _ = channel.wait_close().await;
            let code = channel.exit_status().ok();
            let signal = channel.exit_signal().await.ok().and_then(|s| s.exit_signal);
            let end = match signal {
                Some(sig) => End::Stopped(format!("the remote script was killed by SIG{sig}")),
                None => End::Exited(code),
            };
            Ok((outputs, end))
        }
        Err(why) => {
            // EOF on stdin: the wrapper's watcher hangs up the script's process group.
            let _ = channel.send_eof().await;
            let outputs = tokio::time::timeout(HANGUP_GRACE, &mut streams)
                .await
                .unwrap_or_default();
            let _ = channel.close().await;
            let end = match why {
                None => End::Cancelled,
                Some(why) => End::Stopped(format!(
                    "{why}: the remote script was sent a hang-up and its channel closed"
                )),
            };
            Ok((outputs, end))
        }
    }
}

/// Runs a command on a session and collects its stdout (bounded) and exit code.
async fn capture_on<S>(
    session: &AsyncSession<S>,
    command: &str,
) -> Result<(Option<i32>, String), String>
where
    S: AsyncSessionStream + Send + Sync + 'static,
{
    use tokio::io::AsyncReadExt;
    let mut channel = session
        .channel_session()
        .await
        .map_err(|e| format!("cannot open a session channel: {e}"))?;
    channel
        .exec(command)
        .await
        .map_err(|e| format!("the server refused to run the probe: {e}"))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdout = Nudged::new(channel.stream(0)).take(1 << 20);
    let mut stderr = Nudged::new(channel.stderr()).take(64 << 10);
    let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    a.and(b)
        .map_err(|e| format!("reading the probe's output failed: {e}"))?;
    let _ = channel.close().await;
    let _ = channel.wait_close().await;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&err).into_owned();
    }
    Ok((channel.exit_status().ok(), text))
}

/// An async-ssh2-lite stream polled again after `NUDGE` whenever it says "not yet": its
/// readiness comes from the session's one socket, which every channel of the session reads, so
/// a channel's wake-up can be consumed by another's read (or never registered at all).
struct Nudged<T> {
    inner: T,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

const NUDGE: Duration = Duration::from_millis(2);

impl<T> Nudged<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(NUDGE)),
        }
    }

    /// Polls the inner stream; when it says "not yet", arms the timer so that the task is
    /// polled again soon.
    fn nudge<R>(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        op: impl FnOnce(std::pin::Pin<&mut T>, &mut std::task::Context<'_>) -> Poll<R>,
    ) -> Poll<R>
    where
        T: Unpin,
    {
        let this = self.get_mut();
        let polled = op(std::pin::Pin::new(&mut this.inner), cx);
        if polled.is_pending() {
            this.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + NUDGE);
            let _ = this.timer.as_mut().poll(cx);
        }
        polled
    }
}

use std::future::Future as _;
use std::task::Poll;

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Nudged<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.nudge(cx, |inner, cx| inner.poll_read(cx, buf))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Nudged<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.nudge(cx, |inner, cx| inner.poll_write(cx, data))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.nudge(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.nudge(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

/// The command line: the wrapper and the script as its argument (no secrets here).
fn command(script: &str) -> String {
    let quote = |s: &str| {
        shlex::try_quote(s)
            .map(|q| q.into_owned())
            .unwrap_or_default()
    };
    format!(
        "exec /bin/sh -c {} dro-step {}",
        quote(WRAPPER),
        quote(script)
    )
}

/// One preamble line, on one line whatever the value holds: `printf %b` turns the escapes back
/// into the value (the `x` keeps trailing newlines from `$(...)`).
fn export_line(name: &str, value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\'', "'\\''");
    format!("{name}=$(printf '%bx' '{escaped}'); {name}=\"${{{name}%x}}\"; export {name}\n")
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---- From a step's params and the inventory to a route -------------------------------------

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The credentials a route needs: the jump server's, the target's and the step's `login`.
pub fn credential_names(params: &Value, inventory: &Inventory) -> Vec<String> {
    let mut names = Vec::new();
    let resource_credential = |name: &str| {
        inventory.resources.get(name).and_then(|r| {
            r.attributes
                .get("ssh")
                .unwrap_or(&r.attributes)
                .get("credential")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    };
    for key in ["via", "target"] {
        if let Some(name) = text(params, key).and_then(resource_credential) {
            names.push(name);
        }
    }
    if let Some(name) = params
        .get("login")
        .and_then(|l| text(l, "credential"))
        .map(str::to_owned)
    {
        names.push(name);
    }
    names
}

fn secret_of(
    credentials: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    name: &str,
) -> Result<Secret, String> {
    let fields = credentials
        .get(name)
        .ok_or_else(|| format!("credential `{name}` was not loaded"))?;
    if let Some(pem) = fields.get("private_key") {
        return Ok(Secret::Key {
            pem: Zeroizing::new(pem.clone()),
            passphrase: fields.get("passphrase").map(|p| Zeroizing::new(p.clone())),
        });
    }
    fields
        .get("password")
        .map(|p| Secret::Password(Zeroizing::new(p.clone())))
        .ok_or_else(|| format!("credential `{name}` is not an SSH password or key"))
}

fn policy(fingerprint: Option<&str>, tofu: bool) -> HostKeyPolicy {
    match fingerprint {
        Some(fp) => HostKeyPolicy::Pinned(fp.to_owned()),
        None if tofu => HostKeyPolicy::TrustOnFirstUse,
        None => HostKeyPolicy::Unpinned,
    }
}

type Credentials = std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

/// The endpoint of a host or jump_server resource; `address` overrides where it is reached
/// (a recovered copy of the host keeps its host key and logins).
fn resource_endpoint(
    name: &str,
    res: &InventoryResource,
    address: Option<&str>,
    login: Option<&Value>,
    credentials: &Credentials,
) -> Result<Endpoint, String> {
    let a = &res.attributes;
    let (access, path): (&Value, &'static [&'static str]) = match res.kind {
        ResourceKind::JumpServer => (a, &["host_key_fingerprint"]),
        ResourceKind::Host => (
            a.get("ssh").unwrap_or(&Value::Null),
            &["ssh", "host_key_fingerprint"],
        ),
        other => {
            return Err(format!(
                "`{name}` is a {other}; scripts run on hosts and jump servers"
            ))
        }
    };
    let address = address
        .map(str::to_owned)
        .or_else(|| {
            ["address", "private_ip", "public_ip", "hostname"]
                .iter()
                .find_map(|k| text(a, k))
                .map(str::to_owned)
        })
        .ok_or_else(|| format!("`{name}` has no address to connect to"))?;
    let from = |key: &str| {
        login
            .and_then(|l| text(l, key))
            .or_else(|| text(access, key))
    };
    let user =
        from("user").ok_or_else(|| format!("`{name}` has no SSH user; give the step a `login`"))?;
    let credential = from("credential")
        .ok_or_else(|| format!("`{name}` has no SSH credential; give the step a `login`"))?;
    let port = login
        .and_then(|l| l.get("port"))
        .or_else(|| access.get("port"))
        .and_then(Value::as_u64)
        .unwrap_or(22) as u16;
    let fingerprint = text(access, "host_key_fingerprint");
    let tofu = access
        .get("trust_on_first_use")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Endpoint {
        label: format!("{} `{name}` ({address}:{port})", res.kind),
        secret: secret_of(credentials, credential)?,
        user: user.to_owned(),
        credential: credential.to_owned(),
        address,
        port,
        host_key: policy(fingerprint, tofu),
        pin_to: Some(PinTarget {
            resource_id: res.id,
            name: name.to_owned(),
            path,
        }),
    })
}

/// The jump server resource `via`, ready to connect to.
fn jump_of(via: &str, inventory: &Inventory, credentials: &Credentials) -> Result<Jump, String> {
    let res = inventory
        .resources
        .get(via)
        .filter(|r| r.kind == ResourceKind::JumpServer)
        .ok_or_else(|| format!("`{via}` is not a jump_server in the inventory"))?;
    Ok(Jump {
        name: via.to_owned(),
        endpoint: resource_endpoint(via, res, None, None, credentials)?,
        max_connections: res
            .attributes
            .get("max_connections")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_MAX_CONNECTIONS, |n| n as usize),
    })
}

/// The route of a probe run on the jump server `via` (a check's `via`).
pub fn on_jump(
    execution: Uuid,
    via: &str,
    inventory: &Inventory,
    credentials: &Credentials,
) -> Result<Route, String> {
    Ok(Route {
        execution,
        jump: Some(jump_of(via, inventory, credentials)?),
        target: None,
    })
}

/// The route a `remote_script` (rendered params) takes.
pub fn route(
    execution: Uuid,
    params: &Value,
    inventory: &Inventory,
    credentials: &Credentials,
) -> Result<Route, String> {
    let target = text(params, "target").ok_or("the step has no target")?;
    let login = params.get("login").filter(|l| l.is_object());
    let address = text(params, "address");
    let jump = match text(params, "via") {
        None => None,
        Some(via) => Some(jump_of(via, inventory, credentials)?),
    };
    // The script runs on the jump server itself.
    if jump.as_ref().is_some_and(|j| j.name == target) {
        return Ok(Route {
            execution,
            jump,
            target: None,
        });
    }
    let endpoint = match inventory.resources.get(target) {
        Some(res) => resource_endpoint(target, res, address, login, credentials)?,
        None => {
            let login = login.ok_or_else(|| {
                format!(
                    "`{target}` is an address, not an inventory resource: give the step a `login`"
                )
            })?;
            let user = text(login, "user").ok_or("the login has no user")?;
            let credential = text(login, "credential").ok_or("the login has no credential")?;
            let port = login.get("port").and_then(Value::as_u64).unwrap_or(22) as u16;
            Endpoint {
                label: format!("{target}:{port}"),
                address: target.to_owned(),
                port,
                user: user.to_owned(),
                credential: credential.to_owned(),
                secret: secret_of(credentials, credential)?,
                host_key: policy(
                    text(login, "host_key_fingerprint"),
                    login
                        .get("trust_on_first_use")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                ),
                pin_to: None,
            }
        }
    };
    Ok(Route {
        execution,
        jump,
        target: Some(endpoint),
    })
}

/// `remote_script`.
pub async fn run(attempt: super::Attempt) -> crate::engine::store::Outcome {
    let route = match route(
        attempt.execution,
        &attempt.params,
        &attempt.inventory,
        &attempt.credentials,
    ) {
        Ok(route) => route,
        Err(e) => {
            return super::script::conclude(&attempt, Map::new(), End::Stopped(e)).await;
        }
    };
    let script = text(&attempt.params, "script")
        .unwrap_or_default()
        .to_owned();
    let job = Job {
        script: &script,
        env: super::script::environment(&attempt),
        log: &attempt.log,
        cancel: attempt.cancel.clone(),
        deadline: attempt.deadline,
    };
    let (outputs, end) = attempt.ssh.run_script(&route, job).await;
    super::script::conclude(&attempt, outputs, end).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preamble_line_carries_any_value_on_one_line() {
        let line = export_line("DB_PASS", "it's a\nmulti\\line $(secret)\n");
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{line}printf '%s' \"$DB_PASS\""))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's a\nmulti\\line $(secret)\n"
        );
    }

    fn inventory() -> (Inventory, Credentials) {
        use crate::domain::plans::InventoryResource;
        let mut inv = Inventory::default();
        let res = |kind, attributes| InventoryResource {
            id: Uuid::nil(),
            kind,
            attributes,
            labels: Default::default(),
        };
        inv.resources.insert(
            "web".into(),
            res(
                ResourceKind::Host,
                serde_json::json!({"private_ip": "10.0.0.5",
                    "ssh": {"user": "root", "credential": "k", "trust_on_first_use": true}}),
            ),
        );
        inv.resources.insert(
            "jump01".into(),
            res(
                ResourceKind::JumpServer,
                serde_json::json!({"address": "198.51.100.7", "user": "ops", "credential": "p",
                    "host_key_fingerprint": "SHA256:x", "max_connections": 3}),
            ),
        );
        let mut creds = Credentials::new();
        creds.insert(
            "k".into(),
            [("private_key".to_owned(), "PEM".to_owned())].into(),
        );
        creds.insert(
            "p".into(),
            [("password".to_owned(), "pw".to_owned())].into(),
        );
        (inv, creds)
    }

    #[test]
    fn a_route_takes_logins_keys_and_addresses_from_the_inventory() {
        let (inv, creds) = inventory();
        let id = Uuid::nil();
        let r = route(
            id,
            &serde_json::json!({"target": "web", "address": "10.9.0.5", "via": "jump01"}),
            &inv,
            &creds,
        )
        .unwrap();
        let target = r.target.as_ref().unwrap();
        assert_eq!(target.address, "10.9.0.5");
        assert_eq!((target.user.as_str(), target.port), ("root", 22));
        assert_eq!(target.host_key, HostKeyPolicy::TrustOnFirstUse);
        assert_eq!(
            target.pin_to.as_ref().unwrap().path,
            &["ssh", "host_key_fingerprint"]
        );
        let jump = r.jump.as_ref().unwrap();
        assert_eq!(jump.max_connections, 3);
        assert_eq!(
            jump.endpoint.host_key,
            HostKeyPolicy::Pinned("SHA256:x".into())
        );
        // Naming the jump server as the target runs on it.
        let r = route(
            id,
            &serde_json::json!({"target": "jump01", "via": "jump01"}),
            &inv,
            &creds,
        )
        .unwrap();
        assert!(r.target.is_none());
        assert_eq!(r.server().unwrap().address, "198.51.100.7");
        // An address needs a login.
        let e = route(id, &serde_json::json!({"target": "10.1.1.1"}), &inv, &creds)
            .err()
            .unwrap();
        assert!(e.contains("give the step a `login`"), "{e}");
        let r = route(
            id,
            &serde_json::json!({"target": "10.1.1.1", "login": {"user": "u", "credential": "p"}}),
            &inv,
            &creds,
        )
        .unwrap();
        assert_eq!(r.target.unwrap().host_key, HostKeyPolicy::Unpinned);
    }

    #[test]
    fn environment_names_must_be_shell_identifiers() {
        assert!(is_env_name("DB_PASS"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A;rm"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn the_wrapper_passes_the_environment_and_the_scripts_exit_code() {
        use std::io::Write;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command("echo \"token=$TOKEN\"; exit 3"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{}{ENV_END}", export_line("TOKEN", "s3cr3t")).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "token=s3cr3t\n");
        assert_eq!(out.status.code(), Some(3));
    }
}
