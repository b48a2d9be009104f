//! The libssh2 transport (the only file that uses `ssh2`), for hosts without an OpenSSH
//! client. Its submodules are the pure parts (`config`: ssh_config, known_hosts lines, keys,
//! and the keywords refused because libssh2 cannot do them as OpenSSH does) and the stream pump
//! (`pump`, behind a small channel trait this file implements).
//!
//! [`Libssh2::connect`] resolves the host through ssh_config (`config`), connects with a
//! timeout, verifies the host key against known_hosts and logs in (ssh-agent, then identity
//! files). Each command runs on a channel as a duplex byte stream ([`Remote::exec_stream`]).
//!
//! libssh2 holds one session lock through each call, so reading and writing one channel from
//! two threads deadlocks; streams are driven by one thread in non-blocking mode (see `pump`).
//!
//! Throughput: libssh2 does all crypto of a session on the pump thread, in its own portable
//! chacha20-poly1305 (its default and here the cheapest: its AES-GCM calls OpenSSL once per
//! 16-byte block): ~200 MB/s one way over loopback, a third of OpenSSH's `ssh`.

mod config;
mod pump;

pub use config::SshOptions;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ssh2::{
    BlockDirections, Channel, CheckResult, ErrorCode, KnownHostFileKind, KnownHosts, MethodType,
    Session,
};

use crate::transport::{RemoteProcess, Transport};
use config::{KnownLine, Resolved};
use pump::PumpIo;

const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
/// Blocking calls after login (opening channels) give up after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// The libssh2 transport to one host: one session per command (the first one is opened by
/// [`Libssh2::connect`], so that connection errors come first).
pub struct Libssh2 {
    resolved: Resolved,
    label: String,
    ready: Mutex<Option<Remote>>,
}

impl Libssh2 {
    /// Connects to `[user@]host`, where `host` may be an ssh_config alias. ssh_config
    /// keywords libssh2 cannot honour as OpenSSH does are refused first (see `config`).
    pub fn connect(dest: &str, opts: &SshOptions) -> Result<Libssh2> {
        let r = config::resolve(dest, opts).with_context(|| format!("ssh {dest}"))?;
        let remote = Remote::open(&r).with_context(|| format!("ssh {}", r.label()))?;
        Ok(Libssh2 {
            label: r.label(),
            resolved: r,
            ready: Mutex::new(Some(remote)),
        })
    }
}

impl Transport for Libssh2 {
    fn label(&self) -> &str {
        &self.label
    }

    fn exec(&self, cmd: &str) -> Result<RemoteProcess> {
        let ready = self.ready.lock().unwrap_or_else(|p| p.into_inner()).take();
        let remote = match ready {
            Some(r) => r,
            None => Remote::open(&self.resolved).with_context(|| format!("ssh {}", self.label))?,
        };
        remote.exec_stream(cmd)
    }
}

/// A logged-in SSH session to one host.
struct Remote {
    sess: Session,
    fd: RawFd,
    label: String,
}

impl Remote {
    fn open(r: &Resolved) -> Result<Remote> {
        let tcp = tcp_connect(r)?;
        let fd = tcp.as_raw_fd();
        let mut sess = Session::new().context("cannot create an SSH session")?;
        sess.set_tcp_stream(tcp);
        sess.set_timeout(millis(r.connect_timeout));
        let name = r.known_host_name();
        let known = KnownDb::load(&sess, &r.known_hosts, &name)?;
        let types = known.types_for(&name);
        let steered = steer_host_key(&sess, &types)?;
        // Ciphers: libssh2's default order (chacha20-poly1305 first) is the fastest here. Its
        // AES-GCM calls OpenSSL once per 16-byte block: ~50% more CPU per byte, measured.
        if let Err(e) = sess.handshake() {
            if steered {
                bail!(
                    "SSH handshake failed ({e}); known_hosts has only {} keys for {name}, and the server \
                     did not offer one: if its host keys really changed, verify and update known_hosts",
                    types.join(", ")
                );
            }
            if e.code() == ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) {
                bail!(
                    "no SSH handshake within {:?} (is an SSH server listening there?): {e}",
                    r.connect_timeout
                );
            }
            bail!("SSH handshake failed: {e}");
        }
        verify_host_key(&sess, &known, r)?;
        authenticate(&sess, r)?;
        sess.set_timeout(millis(IO_TIMEOUT));
        Ok(Remote {
            sess,
            fd,
            label: r.label(),
        })
    }

    /// Starts `cmd`; its stdin and stdout become pipes the caller reads and writes from any
    /// threads, while a thread of ours drives the channel (see `pump`).
    fn exec_stream(self, cmd: &str) -> Result<RemoteProcess> {
        let mut ch = self.exec(cmd)?;
        pump::spawn(self.label.clone(), move |io| {
            let res = self.drive(&mut ch, io);
            // Normally the remote has closed already, so this cannot wait long.
            self.sess.set_timeout(5000);
            drop(ch);
            let _ = self.sess.disconnect(None, "done", None);
            res
        })
    }

    /// Runs the pump on `ch` in non-blocking mode, and leaves the session blocking again.
    fn drive(&self, ch: &mut Channel, io: &mut PumpIo) -> Result<pump::Finished> {
        self.sess.set_blocking(false);
        let res = pump::drive(
            &mut Libssh2Channel {
                sess: &self.sess,
                ch,
                fd: self.fd,
            },
            io,
        );
        self.sess.set_blocking(true);
        res
    }

    fn exec(&self, cmd: &str) -> Result<Channel> {
        let mut ch = self
            .sess
            .channel_session()
            .with_context(|| format!("ssh {}: opening a channel", self.label))?;
        ch.exec(cmd)
            .with_context(|| format!("ssh {}: starting {cmd:?}", self.label))?;
        Ok(ch)
    }
}

fn tcp_connect(r: &Resolved) -> Result<TcpStream> {
    let addrs: Vec<_> = (r.host.as_str(), r.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve host name {:?}", r.host))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, r.connect_timeout) {
            Ok(s) => {
                // The protocol is request/response in small frames: do not let Nagle delay them.
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    match last {
        Some((addr, e)) if e.kind() == io::ErrorKind::TimedOut => {
            bail!(
                "connecting to {addr} timed out after {:?}",
                r.connect_timeout
            )
        }
        Some((addr, e)) => Err(e).with_context(|| format!("cannot connect to {addr}")),
        None => bail!("host name {:?} has no address", r.host),
    }
}

/// An ed25519 public key that names nothing: what libssh2 is asked about (see `KnownDb::load`).
const PROBE_KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAS3eA1gw0tYn56O3XiQxrCzZCI6FbXy5hrFdun5v+Yq";

fn probe_blob() -> Vec<u8> {
    config::base64_decode(PROBE_KEY).expect("valid base64")
}

/// known_hosts lines. A plain or hashed line goes into its own libssh2 collection: asking one
/// line "does it name this host?" is how hashed names are matched (libssh2 has the HMAC), and
/// one line per collection keeps that linear in the file size. Lines with wildcard or negated
/// patterns, which libssh2 compares literally, are matched here as OpenSSH matches them.
struct KnownDb {
    /// Each line, with the libssh2 collection that matches its (plain or hashed) names.
    entries: Vec<(KnownLine, Option<KnownHosts>)>,
    revoked: Vec<Vec<u8>>,
}

impl KnownDb {
    /// Reads `files` and the system file; an `@cert-authority` line for `name` is refused
    /// (libssh2 cannot verify host certificates).
    fn load(sess: &Session, files: &[std::path::PathBuf], name: &str) -> Result<KnownDb> {
        let mut db = KnownDb {
            entries: Vec::new(),
            revoked: Vec::new(),
        };
        for file in files
            .iter()
            .map(|f| f.as_path())
            .chain([Path::new("/etc/ssh/ssh_known_hosts")])
        {
            let text = match fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
            };
            for (n, raw) in text.lines().enumerate() {
                let Some(line) = config::parse_known_line(raw) else {
                    continue;
                };
                let patterns = line.names.contains(['*', '?', '!']) && !line.names.starts_with('|');
                match line.marker.as_deref() {
                    Some("revoked") => db.revoked.push(line.blob),
                    Some(_) if patterns && !config::host_patterns_match(&line.names, name) => {}
                    Some(m) => bail!(
                        "{}:{}: the libssh2 transport cannot verify host certificates (`@{m}`); \
                         use --transport openssh (the system's ssh client) for this host",
                        file.display(),
                        n + 1
                    ),
                    None if patterns => db.entries.push((line, None)),
                    None => {
                        // libssh2 only answers whether the line names the host, asked with a
                        // placeholder key: a line whose key type libssh2 does not know still
                        // counts as a key on record (accept-new must not add another).
                        let mut kh = sess.known_hosts()?;
                        let probe = format!("{} ssh-ed25519 {PROBE_KEY}", line.names);
                        if kh.read_str(&probe, KnownHostFileKind::OpenSSH).is_ok() {
                            db.entries.push((line, Some(kh)));
                        }
                    }
                }
            }
        }
        Ok(db)
    }

    fn names(line: &KnownLine, kh: &Option<KnownHosts>, name: &str) -> bool {
        match kh {
            Some(kh) => matches!(kh.check(name, &probe_blob()), CheckResult::Match),
            None => config::host_patterns_match(&line.names, name),
        }
    }

    /// Key types recorded for `name` (`host` or `[host]:port`), without duplicates.
    fn types_for(&self, name: &str) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for (line, kh) in &self.entries {
            if Self::names(line, kh, name) && !types.contains(&line.key_type) {
                types.push(line.key_type.clone());
            }
        }
        types
    }

    /// `Match` if a line for `name` has this key, `Mismatch` if lines for `name` exist but
    /// none has it, `NotFound` otherwise.
    fn check(&self, name: &str, key: &[u8]) -> CheckResult {
        let mut named = self
            .entries
            .iter()
            .filter(|(line, kh)| Self::names(line, kh, name))
            .peekable();
        if named.peek().is_none() {
            CheckResult::NotFound
        } else if named.any(|(line, _)| line.blob == key) {
            CheckResult::Match
        } else {
            CheckResult::Mismatch
        }
    }
}

/// libssh2 answers `Mismatch` when known_hosts has only another key type for the host, so
/// offer only the known types: the server then shows a key we can actually compare.
fn steer_host_key(sess: &Session, known_types: &[String]) -> Result<bool> {
    if known_types.is_empty() {
        return Ok(false);
    }
    let supported = sess.supported_algs(MethodType::HostKey)?;
    let prefs: Vec<&str> = config::hostkey_prefs(known_types)
        .into_iter()
        .filter(|a| supported.contains(a))
        .collect();
    if prefs.is_empty() {
        bail!(
            "known_hosts has only {} keys for this host, which libssh2 cannot verify",
            known_types.join(", ")
        );
    }
    sess.method_pref(MethodType::HostKey, &prefs.join(","))?;
    Ok(true)
}

fn verify_host_key(sess: &Session, known: &KnownDb, r: &Resolved) -> Result<()> {
    let (key, _) = sess.host_key().context("the server sent no host key")?;
    let (ktype, fp, name) = (
        config::blob_key_type(key),
        config::fingerprint(key),
        r.known_host_name(),
    );
    let files: Vec<String> = r
        .known_hosts
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let first = files.first().cloned().unwrap_or_default();
    if known.revoked.iter().any(|k| k == key) {
        bail!("the server's {ktype} host key {fp} is marked @revoked in known_hosts; refusing to connect");
    }
    match known.check(&name, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => bail!(
            "HOST KEY CHANGED: the server's {ktype} key {fp} is not the key known_hosts ({}) has for {name}. \
             Someone may be intercepting the connection, or the host was reinstalled. Refusing to connect; \
             if the change is expected, remove the old key (ssh-keygen -R '{name}' -f {first}) and add the new one",
            files.join(", ")
        ),
        CheckResult::NotFound if r.accept_new => {
            let line = format!("{name} {ktype} {}\n", config::base64_encode(key, true));
            append_known_host(Path::new(&first), &line)
                .with_context(|| format!("cannot record the host key of {name} in {first}"))
        }
        _ => {
            let short = ktype.trim_start_matches("ssh-").split('-').next().unwrap_or("");
            bail!(
                "unknown host key: {name} is not in known_hosts ({}); the server's {ktype} key is {fp}. \
                 If that fingerprint is right, add it with `ssh-keyscan -p {} -t {short} {} >> {first}`, \
                 or set `StrictHostKeyChecking accept-new` for this host in ssh_config",
                files.join(", "),
                r.port,
                r.host
            )
        }
    }
}

fn append_known_host(file: &Path, line: &str) -> Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.exists()) {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let ends_clean = fs::read(file)
        .map(|b| b.is_empty() || b.ends_with(b"\n"))
        .unwrap_or(true);
    let mut f = OpenOptions::new().create(true).append(true).open(file)?;
    f.write_all(
        if ends_clean {
            line.to_string()
        } else {
            format!("\n{line}")
        }
        .as_bytes(),
    )?;
    Ok(())
}

/// ssh-agent first (every identity it holds), then identity files (config's, then defaults).
fn authenticate(sess: &Session, r: &Resolved) -> Result<()> {
    let mut tried = Vec::new();
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        // IdentitiesOnly: only agent keys that are one of the identity files (by their .pub).
        let only: Option<Vec<Vec<u8>>> = r.identities_only.then(|| {
            r.identity_files
                .iter()
                .filter_map(|(p, _)| {
                    let public = format!("{}.pub", p.display());
                    config::public_key_blob(&fs::read_to_string(public).ok()?)
                })
                .collect()
        });
        match try_agent(sess, &r.user, only.as_deref()) {
            Ok(true) => return Ok(()),
            Ok(false) => tried.push("ssh-agent: no key accepted".to_string()),
            Err(e) => tried.push(format!("ssh-agent: {}", e.message())),
        }
    }
    let mut locked = None;
    for (path, from_config) in &r.identity_files {
        let content = match fs::read(path) {
            Ok(c) => c,
            Err(e) if !from_config && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                tried.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        if config::key_file_encrypted(&content) == Some(true) {
            tried.push(format!("{}: passphrase-protected", path.display()));
            locked.get_or_insert(path);
            continue;
        }
        let public = path.with_file_name(format!(
            "{}.pub",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let public = public.exists().then_some(public);
        match sess.userauth_pubkey_file(&r.user, public.as_deref(), path, None) {
            Ok(()) if sess.authenticated() => return Ok(()),
            Ok(()) => tried.push(format!("{}: more authentication required", path.display())),
            Err(e) => tried.push(format!("{}: {}", path.display(), e.message())),
        }
    }
    if let Some(path) = locked {
        bail!(
            "identity file {} is passphrase-protected; load it into ssh-agent (ssh-add {}) and set SSH_AUTH_SOCK \
             (tried: {})",
            path.display(),
            path.display(),
            tried.join("; ")
        );
    }
    if tried.is_empty() {
        bail!(
            "no way to log in as {}: no ssh-agent (SSH_AUTH_SOCK unset) and no identity file",
            r.user
        );
    }
    bail!(
        "authentication as {} failed (tried: {})",
        r.user,
        tried.join("; ")
    )
}

fn try_agent(sess: &Session, user: &str, only: Option<&[Vec<u8>]>) -> Result<bool, ssh2::Error> {
    let mut agent = sess.agent()?;
    agent.connect()?;
    agent.list_identities()?;
    for id in agent.identities()? {
        if only.is_some_and(|keys| !keys.iter().any(|k| k.as_slice() == id.blob())) {
            continue;
        }
        if agent.userauth(user, &id).is_ok() && sess.authenticated() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A libssh2 channel in non-blocking mode, as the pump sees it.
struct Libssh2Channel<'a> {
    sess: &'a Session,
    ch: &'a mut Channel,
    fd: RawFd,
}

impl pump::Duplex for Libssh2Channel<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ch.write(buf)
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ch.read(buf)
    }
    fn read_stderr(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ch.stderr().read(buf)
    }
    // ssh2 turns libssh2's EAGAIN (-37) into `WouldBlock` in these conversions.
    fn send_eof(&mut self) -> io::Result<()> {
        Ok(self.ch.send_eof()?)
    }
    fn eof(&self) -> bool {
        self.ch.eof()
    }
    fn wait_close(&mut self) -> io::Result<()> {
        Ok(self.ch.wait_close()?)
    }
    fn poll_fd(&self) -> (RawFd, libc::c_short) {
        let events = match self.sess.block_directions() {
            BlockDirections::Outbound => libc::POLLOUT,
            BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
            BlockDirections::Inbound | BlockDirections::None => libc::POLLIN,
        };
        (self.fd, events)
    }
    fn exit(&self) -> io::Result<(i32, Option<String>)> {
        // libssh2 reports status 0 for a command killed by a signal: check the signal first.
        let signal = self.ch.exit_signal().ok().and_then(|s| s.exit_signal);
        let status = if signal.is_some() {
            -1
        } else {
            self.ch.exit_status()?
        };
        Ok((status, signal))
    }
    fn abort(&mut self) {
        // Closing the socket is instant and cannot wait on a half-sent packet; sshd then
        // closes the command's pipes.
        // SAFETY: shutdown on the session's socket, which outlives this call.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}
