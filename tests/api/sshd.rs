//! Real OpenSSH servers for the SSH tests: Debian's `sshd` on loopback ports or inside a
//! network namespace, with a password user and a key user of their own.
//!
//! Needs root (test users, a privilege-separation directory, namespaces) and
//! `/usr/sbin/sshd`; `.ci/run` installs `openssh-server`. Without them the SSH tests print why
//! and stop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PASSWORD_USER: &str = "drotest_pw";
pub const PASSWORD: &str = "Pw-for-ssh-tests-7";
pub const KEY_USER: &str = "drotest_key";
pub const PASSPHRASE: &str = "correct horse battery";

/// Keys and users made once per test process.
pub struct Fixture {
    pub dir: PathBuf,
    /// Private keys (OpenSSH format) of KEY_USER: without and with a passphrase.
    pub key: String,
    pub key_with_passphrase: String,
    /// Host keys and their fingerprints (`SHA256:...`).
    pub host_keys: [(PathBuf, String); 2],
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn keygen(path: &Path, passphrase: &str) -> Result<String, String> {
    let _ = std::fs::remove_file(path);
    run(Command::new("ssh-keygen")
        .args([
            "-q", "-t", "ed25519", "-C", "dro-test", "-N", passphrase, "-f",
        ])
        .arg(path))?;
    let listed = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub")))?;
    listed
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| format!("ssh-keygen -lf printed {listed}"))
}

fn setup() -> Result<Fixture, String> {
    if !Path::new("/usr/sbin/sshd").exists() {
        return Err("/usr/sbin/sshd is not installed (Debian: openssh-server)".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("the SSH tests need root (test users, /run/sshd)".into());
    }
    std::fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
    for user in [PASSWORD_USER, KEY_USER] {
        if run(Command::new("id").arg("-u").arg(user)).is_err() {
            run(Command::new("useradd").args(["-m", "-s", "/bin/sh", user]))?;
        }
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        let stdin = chpasswd.stdin.as_mut().ok_or("chpasswd has no stdin")?;
        writeln!(stdin, "{PASSWORD_USER}:{PASSWORD}\n{KEY_USER}:{PASSWORD}")
            .map_err(|e| e.to_string())?;
    }
    chpasswd.wait().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("dro-sshd-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("authorized_keys")).map_err(|e| e.to_string())?;
    keygen(&dir.join("user_key"), "")?;
    keygen(&dir.join("user_key_pass"), PASSPHRASE)?;
    let mut authorized = String::new();
    for name in ["user_key.pub", "user_key_pass.pub"] {
        authorized.push_str(&std::fs::read_to_string(dir.join(name)).map_err(|e| e.to_string())?);
    }
    std::fs::write(dir.join("authorized_keys").join(KEY_USER), authorized)
        .map_err(|e| e.to_string())?;
    let host_a = dir.join("host_a");
    let host_b = dir.join("host_b");
    let fp_a = keygen(&host_a, "")?;
    let fp_b = keygen(&host_b, "")?;
    Ok(Fixture {
        key: std::fs::read_to_string(dir.join("user_key")).map_err(|e| e.to_string())?,
        key_with_passphrase: std::fs::read_to_string(dir.join("user_key_pass"))
            .map_err(|e| e.to_string())?,
        host_keys: [(host_a, fp_a), (host_b, fp_b)],
        dir,
    })
}

/// The fixture, or `None` after printing why the SSH tests cannot run here.
pub fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    match FIXTURE.get_or_init(setup) {
        Ok(f) => Some(f),
        Err(why) => {
            eprintln!("SKIPPED: SSH tests cannot run here: {why}");
            None
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start one sshd.
pub struct Options<'a> {
    pub listen: &'a str,
    pub port: u16,
    /// 0 or 1: which fixture host key.
    pub host_key: usize,
    /// Accept `setenv` for every variable (AcceptEnv *).
    pub accept_env: bool,
    /// Run inside this network namespace.
    pub netns: Option<&'a str>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1",
            port: free_port(),
            host_key: 0,
            accept_env: false,
            netns: None,
        }
    }
}

/// A running sshd, stopped on drop.
pub struct Sshd {
    pub port: u16,
    pub fingerprint: String,
    child: Child,
}

impl Sshd {
    pub fn start(f: &Fixture, o: Options<'_>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let (host_key, fingerprint) = &f.host_keys[o.host_key];
        let pid_file = f.dir.join(format!("sshd{n}.pid"));
        let _ = std::fs::remove_file(&pid_file);
        let config = format!(
            "ListenAddress {listen}:{port}\nHostKey {key}\nPidFile {pid}\n\
             AuthorizedKeysFile {dir}/authorized_keys/%u\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin no\n\
             AllowUsers {PASSWORD_USER} {KEY_USER}\nMaxStartups 300\nMaxSessions 64\n\
             AllowTcpForwarding yes\nLogLevel ERROR\n{env}",
            listen = o.listen,
            port = o.port,
            key = host_key.display(),
            pid = pid_file.display(),
            dir = f.dir.display(),
            env = if o.accept_env { "AcceptEnv *\n" } else { "" },
        );
        let config_file = f.dir.join(format!("sshd{n}.conf"));
        std::fs::write(&config_file, config).unwrap();
        let mut cmd = match o.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/sshd"]);
                c
            }
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = cmd
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config_file)
            .stdout(Stdio::null())
            .spawn()
            .expect("sshd starts");
        // sshd writes its pid file once it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port: o.port,
            fingerprint: fingerprint.clone(),
            child,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SIGTERM to the listener (the `ip netns exec` wrapper execs sshd itself).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A network namespace joined to the host by a veth pair: the host is `.1`, the namespace
/// `.2` of a /30. Removed on drop.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
    veth: String,
}

impl Netns {
    pub fn create() -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let name = format!("dro{tag}");
        let veth = format!("dh{tag}");
        let peer = format!("dn{tag}");
        let subnet = format!("10.{}.{}", 100 + std::process::id() % 100, n * 4 % 256);
        let ns = Self {
            host_ip: format!("{subnet}.1"),
            ns_ip: format!("{subnet}.2"),
            name: name.clone(),
            veth: veth.clone(),
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(args)).map(|_| ());
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{}/30", ns.ns_ip), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
