//! A throwaway sshd on 127.0.0.1 with generated keys, and a temp HOME whose `.ssh/config`
//! reaches it as `testhost`. Needs root (sshd re-execs and switches users) and
//! `/usr/sbin/sshd`; gate tests with `#[cfg_attr(not(have_sshd), ignore = ...)]` (build.rs).
#![allow(dead_code)] // each test binary uses a different part of this helper

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";

#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Also give the server an RSA host key (it then offers ed25519 and RSA).
    pub rsa_host_key: bool,
    /// More `NAME=value` for remote sessions, besides HOME (e.g. a PATH with fake tools).
    pub set_env: Vec<String>,
    /// More sshd_config lines (e.g. `LogLevel DEBUG1`, `HostCertificate ...`).
    pub extra_config: Vec<String>,
    /// Sign the ed25519 host key with this CA private key (principal `127.0.0.1`) and serve
    /// the certificate.
    pub host_ca: Option<PathBuf>,
}

pub struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Sshd {
    /// Starts an sshd; fails the test if this machine cannot run one (such
    /// tests carry `#[cfg_attr(not(have_sshd), ignore = ...)]`).
    pub fn start() -> Sshd {
        Self::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Sshd {
        if let Err(why) = prerequisites() {
            super::need(false, &why);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd"); // sshd's privilege separation dir
        keygen(&d.join("host_ed25519"), "ed25519", "");
        if opts.rsa_host_key {
            keygen(&d.join("host_rsa"), "rsa", "");
        }
        keygen(&d.join("client_ed25519"), "ed25519", "");
        if let Some(ca) = &opts.host_ca {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(ca)
                .args(["-I", "diskdump-test-host", "-h", "-n", "127.0.0.1"])
                .arg(d.join("host_ed25519.pub"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ssh-keygen -s (host certificate) failed");
        }
        fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys")).unwrap();
        fs::set_permissions(d.join("authorized_keys"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir_all(d.join("remote-home")).unwrap();
        fs::create_dir_all(d.join("home/.ssh")).unwrap();
        fs::set_permissions(d.join("home/.ssh"), fs::Permissions::from_mode(0o700)).unwrap();
        // A port found free can be taken before sshd binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            fs::write(d.join("sshd_config"), sshd_config(d, port, &opts)).unwrap();
            let log = fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn sshd");
            if wait_for_banner(port, &mut child) {
                let sshd = Sshd { dir, child, port };
                sshd.write_client_files();
                return sshd;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start; log:\n{}",
            fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
    }

    fn write_client_files(&self) {
        let config = format!(
            "Host {}\n    HostName 127.0.0.1\n    Port {}\n    User root\n    IdentityFile {}\n    UserKnownHostsFile {}\n",
            self.host_alias(),
            self.port,
            self.client_key().display(),
            self.known_hosts().display(),
        );
        fs::write(self.ssh_config(), config).unwrap();
        fs::write(self.known_hosts(), self.known_hosts_line("ed25519")).unwrap();
    }

    /// The temp HOME for the client side (`.ssh/config`, `.ssh/known_hosts`).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    /// HOME of remote sessions (sshd's `SetEnv HOME=`), so the agent cache lands in the temp dir.
    pub fn remote_home(&self) -> PathBuf {
        self.dir.path().join("remote-home")
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn host_alias(&self) -> &'static str {
        "testhost"
    }
    pub fn ssh_config(&self) -> PathBuf {
        self.home().join(".ssh/config")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.home().join(".ssh/known_hosts")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }
    /// `host_ed25519.pub` or `host_rsa.pub`.
    pub fn host_key_pub(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("host_{kind}.pub"))
    }
    /// A known_hosts line for this server's `kind` host key.
    pub fn known_hosts_line(&self, kind: &str) -> String {
        let public = fs::read_to_string(self.host_key_pub(kind)).unwrap();
        let mut fields = public.split_whitespace();
        let (ktype, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {ktype} {key}\n", self.port)
    }
    /// `SHA256:...` of this server's `kind` host key, from `ssh-keygen -l`.
    pub fn fingerprint(&self, kind: &str) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.host_key_pub(kind))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }
    /// Makes `testhost` log in as the non-root `user` (created if missing;
    /// see [`ensure_user`]): its key is accepted and the remote HOME is its own.
    pub fn login_as(&self, user: &str) {
        let (uid, gid) = ensure_user(user);
        // sshd reads authorized_keys as the user: the temp dir must be traversable.
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(self.remote_home(), Some(uid), Some(gid)).unwrap();
        let config = fs::read_to_string(self.ssh_config()).unwrap();
        fs::write(
            self.ssh_config(),
            config.replace("User root\n", &format!("User {user}\n")),
        )
        .unwrap();
    }

    /// Environment for a spawned `diskdump`: the temp HOME, and its ssh config passed
    /// explicitly (OpenSSH's `ssh` reads `~/.ssh/config` from the passwd home, not `$HOME`).
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![
            ("HOME".into(), self.home().into_os_string()),
            (
                "DISKDUMP_SSH_CONFIG".into(),
                self.ssh_config().into_os_string(),
            ),
        ]
    }
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `ssh-keygen -t kind -N passphrase -f path`.
pub fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("pub"));
    let status = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            passphrase,
            "-C",
            "diskdump-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen -t {kind} failed");
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("sshd tests need root".into());
    }
    if !Path::new(SSHD).exists() {
        return Err(format!("{SSHD} is not installed"));
    }
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        return Err("ssh-keygen is not installed".into());
    }
    Ok(())
}

fn sshd_config(d: &Path, port: u16, opts: &SshdOptions) -> String {
    let d = d.display();
    let rsa = if opts.rsa_host_key {
        format!("HostKey {d}/host_rsa\n")
    } else {
        String::new()
    };
    // sshd uses only the first SetEnv line, so everything goes on one.
    let env = opts
        .set_env
        .iter()
        .map(|e| format!(" {e}"))
        .collect::<String>();
    let cert = if opts.host_ca.is_some() {
        format!("HostCertificate {d}/host_ed25519-cert.pub\n")
    } else {
        String::new()
    };
    format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n{rsa}{cert}\
         AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
         MaxStartups 100\nMaxSessions 100\nSetEnv HOME={d}/remote-home{env}\n{}",
        opts.extra_config.iter().map(|l| format!("{l}\n")).collect::<String>()
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until the server greets with `SSH-` (ready), or gives up when it exits or after 10 s.
fn wait_for_banner(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Creates the local user `name` (no password, login allowed with a key) if
/// it does not exist; returns its uid and gid. Needs root (CI runs as root).
pub fn ensure_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "useradd {name} failed");
    }
    // A locked account ('!') is refused by sshd with UsePAM no; '*' is not.
    let ok = Command::new("usermod")
        .args(["-p", "*", name])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "usermod -p '*' {name} failed");
    (id("-u").unwrap(), id("-g").unwrap())
}
