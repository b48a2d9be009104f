//! The SSH side of `dump`, and the only module that uses `ssh2` (libssh2).
//!
//! [`Remote::connect`] resolves the host through ssh_config ([`config`]), connects with a
//! timeout, verifies the host key against known_hosts and logs in (ssh-agent, then identity
//! files). A [`Remote`] runs small commands ([`Remote::run`]), uploads files atomically over
//! SCP, deploys the agent once per content hash ([`Remote::ensure_agent`]), and starts the
//! long-running agent as a duplex byte stream ([`Remote::exec_stream`]).
//!
//! libssh2 holds one session lock through each call, so a blocking read on a channel stops a
//! concurrent write on it: reading and writing one channel from two threads deadlocks. Streams
//! are therefore driven by one thread in non-blocking mode ([`drive`]), which moves bytes
//! between the channel and two OS pipes; callers use the other ends of the pipes as ordinary
//! blocking `Read`/`Write` from any thread, and the pipe capacity bounds memory.

mod config;

pub use config::{sudo_hint, SshOptions, Target};

use std::fs::{self, OpenOptions};
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use ssh2::{BlockDirections, Channel, CheckResult, ErrorCode, KnownHostFileKind, KnownHosts, MethodType, Session};

use config::{KnownLine, Resolved};

/// libssh2's "would block", as returned by calls that are not `Read`/`Write` (`send_eof`...).
const LIBSSH2_ERROR_EAGAIN: i32 = -37;
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
/// Largest read or write the pump does at once, and the most it buffers in each direction.
const CHUNK: usize = 256 * 1024;
/// How much of the remote stderr is kept for error messages (the end of it).
const STDERR_TAIL: usize = 64 * 1024;
/// Bigger pipes than the 64 KiB default mean fewer wake-ups per MiB moved.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Blocking calls after login (opening channels, SCP) give up after this long without progress.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A logged-in SSH session to one host.
pub struct Remote {
    sess: Session,
    fd: RawFd,
    label: String,
}

impl Remote {
    /// Connects to `[user@]host`, where `host` may be an ssh_config alias.
    pub fn connect(dest: &str, opts: &SshOptions) -> Result<Remote> {
        let r = config::resolve(dest, opts).with_context(|| format!("ssh {dest}"))?;
        Self::open(&r).with_context(|| format!("ssh {}", r.label()))
    }

    fn open(r: &Resolved) -> Result<Remote> {
        let tcp = tcp_connect(r)?;
        let fd = tcp.as_raw_fd();
        let mut sess = Session::new().context("cannot create an SSH session")?;
        sess.set_tcp_stream(tcp);
        sess.set_timeout(millis(r.connect_timeout));
        let known = KnownDb::load(&sess, &r.known_hosts)?;
        let name = r.known_host_name();
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
                bail!("no SSH handshake within {:?} (is an SSH server listening there?): {e}", r.connect_timeout);
            }
            bail!("SSH handshake failed: {e}");
        }
        verify_host_key(&sess, &known, r)?;
        authenticate(&sess, r)?;
        sess.set_timeout(millis(IO_TIMEOUT));
        Ok(Remote { sess, fd, label: r.label() })
    }

    /// `user@host:port`, the name every error uses.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs a small command; returns its exit status (-1 if killed by a signal), stdout and the
    /// last 64 KiB of stderr.
    pub fn run(&self, cmd: &str) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let mut ch = self.exec(cmd)?;
        let mut io = PumpIo { stdin: None, stdout: Sink::Memory(Vec::new()), wake: None, kill: None };
        let done = drive(&self.sess, self.fd, &mut ch, &mut io);
        self.sess.set_blocking(true);
        let done = done.with_context(|| format!("ssh {}: running {cmd:?}", self.label))?;
        let Sink::Memory(out) = io.stdout else { unreachable!("run() collects into memory") };
        Ok((done.status, out, done.stderr))
    }

    /// Like [`Remote::run`], but a non-zero exit is an error carrying the remote stderr.
    pub fn run_ok(&self, cmd: &str) -> Result<Vec<u8>> {
        let (status, out, err) = self.run(cmd)?;
        if status != 0 {
            let err = String::from_utf8_lossy(&err);
            bail!("ssh {}: {cmd:?} exited with status {status}: {}", self.label, err.trim_end());
        }
        Ok(out)
    }

    /// Uploads `data` over SCP to `remote_path.tmp.<unique>`, then renames it into place, so
    /// nobody ever sees a partial file.
    pub fn upload(&self, remote_path: &str, data: &[u8], mode: i32) -> Result<()> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = format!("{remote_path}.tmp.{:x}{nanos:x}", std::process::id());
        let res = self.scp_send(&tmp, data, mode).and_then(|()| {
            self.run_ok(&format!("mv -f -- {} {}", sh_quote(&tmp), sh_quote(remote_path))).map(drop)
        });
        if res.is_err() {
            let _ = self.run(&format!("rm -f -- {}", sh_quote(&tmp)));
        }
        res.with_context(|| format!("ssh {}: uploading {remote_path}", self.label))
    }

    fn scp_send(&self, path: &str, data: &[u8], mode: i32) -> Result<()> {
        let mut ch = self.sess.scp_send(Path::new(path), mode, data.len() as u64, None)?;
        ch.write_all(data)?;
        // The SCP protocol ends a file with a NUL status byte; libssh2 leaves it to us, and
        // OpenSSH's `scp -t` exits 1 ("lost connection") without it.
        ch.write_all(&[0])?;
        ch.send_eof()?;
        ch.wait_eof()?;
        // scp reports errors in-band on stdout (\x01 or \x02, a message), some on stderr.
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = ch.read_to_end(&mut out);
        let _ = ch.stderr().read_to_end(&mut err);
        ch.close()?;
        ch.wait_close()?;
        match ch.exit_status()? {
            0 => Ok(()),
            status => {
                out.retain(|&b| b > 2);
                out.extend_from_slice(&err);
                bail!("remote scp exited with status {status}: {}", String::from_utf8_lossy(&out).trim_end())
            }
        }
    }

    /// Makes sure the agent executable is in `~/.cache/diskdump/agent-<hash prefix>` (dir mode
    /// 0700) on the remote, uploading it only when no file with that SHA-256 is there. Refuses
    /// anything but Linux x86_64 (the agent is a static x86_64 Linux binary). Returns its path.
    pub fn ensure_agent(&self, agent: &[u8], agent_hash_hex: &str) -> Result<String> {
        let hash = agent_hash_hex.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("agent hash {agent_hash_hex:?} is not a SHA-256 hex digest");
        }
        let name = format!("agent-{}", &hash[..16]);
        // One round trip: platform, cache dir (absolute, for sudo), hash of what is there.
        let script = format!(
            "uname -sm; [ \"$(uname -sm)\" = 'Linux x86_64' ] || exit 0; d=\"$HOME/.cache/diskdump\"; \
             mkdir -p \"$d\" && chmod 700 \"$d\" && echo \"$d\" && {{ sha256sum \"$d/{name}\" 2>/dev/null || echo none; }}"
        );
        let out = String::from_utf8_lossy(&self.run_ok(&script)?).into_owned();
        let mut lines = out.lines();
        let platform = lines.next().unwrap_or("").trim();
        if platform != "Linux x86_64" {
            bail!("ssh {}: the remote is {platform:?}; the diskdump agent runs only on Linux x86_64", self.label);
        }
        let (dir, present) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        if !dir.starts_with('/') {
            bail!("ssh {}: could not set up the agent cache dir (got {dir:?})", self.label);
        }
        let path = format!("{dir}/{name}");
        if present.split_whitespace().next() != Some(hash.as_str()) {
            self.upload(&path, agent, 0o700)?;
        }
        Ok(path)
    }

    /// Starts `cmd` and hands its stdin/stdout to the caller as pipes, driven by a thread.
    pub fn exec_stream(self, cmd: &str) -> Result<RemoteProcess> {
        let mut ch = self.exec(cmd)?;
        let ((out_r, out_w), (in_r, in_w), (wake_r, wake_w)) = (io::pipe()?, io::pipe()?, io::pipe()?);
        // The pump's ends never block it; the caller's ends stay blocking.
        for fd in [out_w.as_raw_fd(), in_r.as_raw_fd(), wake_r.as_raw_fd()] {
            set_nonblocking(fd)?;
        }
        for fd in [out_w.as_raw_fd(), in_r.as_raw_fd()] {
            // Best effort: a smaller pipe only costs more wake-ups.
            unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
        }
        let kill = Arc::new(AtomicBool::new(false));
        let mut io =
            PumpIo { stdin: Some(in_r), stdout: Sink::Pipe(Some(out_w)), wake: Some(wake_r), kill: Some(kill.clone()) };
        let label = self.label.clone();
        let thread = std::thread::Builder::new().name(format!("ssh {label}")).spawn(move || {
            let res = drive(&self.sess, self.fd, &mut ch, &mut io);
            // Normally the remote has closed already, so this cannot wait long.
            self.sess.set_blocking(true);
            self.sess.set_timeout(5000);
            drop(ch);
            let _ = self.sess.disconnect(None, "done", None);
            let done = res.with_context(|| format!("ssh {}: remote command", self.label))?;
            Ok(ExitInfo {
                status: done.status,
                signal: done.signal,
                stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
            })
        })?;
        Ok(RemoteProcess { stdout: out_r, stdin: in_w, handle: Handle { thread, wake: wake_w, kill, label } })
    }

    fn exec(&self, cmd: &str) -> Result<Channel> {
        let mut ch = self.sess.channel_session().with_context(|| format!("ssh {}: opening a channel", self.label))?;
        ch.exec(cmd).with_context(|| format!("ssh {}: starting {cmd:?}", self.label))?;
        Ok(ch)
    }
}

/// A remote command started by [`Remote::exec_stream`].
pub struct RemoteProcess {
    stdout: PipeReader,
    stdin: PipeWriter,
    handle: Handle,
}

impl RemoteProcess {
    /// The remote stdout (EOF when the remote closes it), stdin (drop it to send EOF; writes
    /// fail with `BrokenPipe` once the remote is gone: ask [`Handle::wait`] why) and the handle.
    pub fn split(self) -> (PipeReader, PipeWriter, Handle) {
        (self.stdout, self.stdin, self.handle)
    }
}

/// Waits for or stops a remote command.
pub struct Handle {
    thread: JoinHandle<Result<ExitInfo>>,
    wake: PipeWriter,
    kill: Arc<AtomicBool>,
    label: String,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status; -1 when the command was killed by a signal.
    pub status: i32,
    /// The signal name (e.g. `KILL`) if it was killed by one.
    pub signal: Option<String>,
    /// The last 64 KiB of its stderr.
    pub stderr: String,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.status == 0 && self.signal.is_none()
    }
}

impl Handle {
    /// Waits until the remote command has exited and closed the channel.
    pub fn wait(self) -> Result<ExitInfo> {
        self.thread.join().map_err(|_| anyhow!("ssh {}: the I/O thread panicked", self.label))?
    }

    /// Drops the connection: the remote command sees EOF on stdin (and a broken pipe on
    /// stdout) and exits; [`Handle::wait`] then returns an error.
    pub fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write(&[1]);
    }

    pub fn label(&self) -> &str {
        &self.label
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
            bail!("connecting to {addr} timed out after {:?}", r.connect_timeout)
        }
        Some((addr, e)) => Err(e).with_context(|| format!("cannot connect to {addr}")),
        None => bail!("host name {:?} has no address", r.host),
    }
}

/// known_hosts lines, each in its own libssh2 collection: asking one line "does it name this
/// host?" is how hashed names are matched (libssh2 has the HMAC), and one line per collection
/// keeps that linear in the file size.
struct KnownDb {
    entries: Vec<(KnownLine, KnownHosts)>,
    revoked: Vec<Vec<u8>>,
}

impl KnownDb {
    fn load(sess: &Session, files: &[std::path::PathBuf]) -> Result<KnownDb> {
        let mut db = KnownDb { entries: Vec::new(), revoked: Vec::new() };
        for file in files.iter().map(|f| f.as_path()).chain([Path::new("/etc/ssh/ssh_known_hosts")]) {
            let text = match fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
            };
            for line in text.lines().filter_map(config::parse_known_line) {
                match line.marker.as_deref() {
                    Some("revoked") => db.revoked.push(line.blob),
                    Some(_) => {} // @cert-authority: host certificates are not supported
                    None => {
                        let mut kh = sess.known_hosts()?;
                        // Lines libssh2 cannot parse (unknown key types...) are skipped, as
                        // OpenSSH skips lines it cannot use.
                        if kh.read_str(&line.text, KnownHostFileKind::OpenSSH).is_ok() {
                            db.entries.push((line, kh));
                        }
                    }
                }
            }
        }
        Ok(db)
    }

    fn names(kh: &KnownHosts, line: &KnownLine, name: &str) -> bool {
        matches!(kh.check(name, &line.blob), CheckResult::Match)
    }

    /// Key types recorded for `name` (`host` or `[host]:port`), without duplicates.
    fn types_for(&self, name: &str) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for (line, kh) in &self.entries {
            if Self::names(kh, line, name) && !types.contains(&line.key_type) {
                types.push(line.key_type.clone());
            }
        }
        types
    }

    /// `Match` if a line for `name` has this key, `Mismatch` if lines for `name` exist but
    /// none has it, `NotFound` otherwise.
    fn check(&self, name: &str, key: &[u8]) -> CheckResult {
        if self.entries.iter().any(|(_, kh)| matches!(kh.check(name, key), CheckResult::Match)) {
            CheckResult::Match
        } else if self.entries.iter().any(|(line, kh)| Self::names(kh, line, name)) {
            CheckResult::Mismatch
        } else {
            CheckResult::NotFound
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
    let prefs: Vec<&str> = config::hostkey_prefs(known_types).into_iter().filter(|a| supported.contains(a)).collect();
    if prefs.is_empty() {
        bail!("known_hosts has only {} keys for this host, which libssh2 cannot verify", known_types.join(", "));
    }
    sess.method_pref(MethodType::HostKey, &prefs.join(","))?;
    Ok(true)
}

fn verify_host_key(sess: &Session, known: &KnownDb, r: &Resolved) -> Result<()> {
    let (key, _) = sess.host_key().context("the server sent no host key")?;
    let (ktype, fp, name) = (config::blob_key_type(key), config::fingerprint(key), r.known_host_name());
    let files: Vec<String> = r.known_hosts.iter().map(|f| f.display().to_string()).collect();
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
    let ends_clean = fs::read(file).map(|b| b.is_empty() || b.ends_with(b"\n")).unwrap_or(true);
    let mut f = OpenOptions::new().create(true).append(true).open(file)?;
    f.write_all(if ends_clean { line.to_string() } else { format!("\n{line}") }.as_bytes())?;
    Ok(())
}

/// ssh-agent first (every identity it holds), then identity files (config's, then defaults).
fn authenticate(sess: &Session, r: &Resolved) -> Result<()> {
    let mut tried = Vec::new();
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match try_agent(sess, &r.user) {
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
        let public = path.with_file_name(format!("{}.pub", path.file_name().unwrap_or_default().to_string_lossy()));
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
        bail!("no way to log in as {}: no ssh-agent (SSH_AUTH_SOCK unset) and no identity file", r.user);
    }
    bail!("authentication as {} failed (tried: {})", r.user, tried.join("; "))
}

fn try_agent(sess: &Session, user: &str) -> Result<bool, ssh2::Error> {
    let mut agent = sess.agent()?;
    agent.connect()?;
    agent.list_identities()?;
    for id in agent.identities()? {
        if agent.userauth(user, &id).is_ok() && sess.authenticated() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where the pump's bytes go and come from.
struct PumpIo {
    /// The caller's input; `None` once it hit EOF (or for `run`, which has no input).
    stdin: Option<PipeReader>,
    stdout: Sink,
    /// Readable when [`Handle::kill`] wants attention.
    wake: Option<PipeReader>,
    kill: Option<Arc<AtomicBool>>,
}

enum Sink {
    /// `None` once the caller dropped its reader: further output is discarded.
    Pipe(Option<PipeWriter>),
    Memory(Vec<u8>),
}

struct Finished {
    status: i32,
    signal: Option<String>,
    stderr: Vec<u8>,
}

/// Bytes taken from one side and not yet given to the other.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.is_empty() {
            self.clear();
        }
    }
    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }
}

/// Moves bytes between the channel and `io` in non-blocking mode until the remote closes the
/// channel: input to the channel, channel stdout to the sink, stderr into a tail buffer, and
/// `poll()` when nothing moved. Every libssh2 call that returned "again" is repeated with the
/// same arguments on the next turn, which libssh2 requires before it sends another packet.
fn drive(sess: &Session, fd: RawFd, ch: &mut Channel, io: &mut PumpIo) -> Result<Finished> {
    sess.set_blocking(false);
    let (mut input, mut output) = (Pending::default(), Pending::default());
    let (mut stderr, mut scratch, mut eof_sent) = (Vec::new(), vec![0u8; CHUNK], false);
    loop {
        if io.kill.as_ref().is_some_and(|k| k.load(Ordering::SeqCst)) {
            // Closing the socket is instant and cannot block on a half-sent packet; sshd then
            // closes the command's pipes.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            bail!("killed; remote stderr: {}", String::from_utf8_lossy(&stderr).trim_end());
        }
        let mut progress = false;
        // Take new input only when the last chunk is fully written, so a write that would
        // block is retried with the same bytes.
        if let (true, Some(r)) = (input.is_empty(), io.stdin.as_mut()) {
            input.buf.resize(CHUNK, 0);
            match nb(r.read(&mut input.buf)) {
                Ok(Some(n)) if n > 0 => input.buf.truncate(n),
                Ok(None) => input.clear(),
                _ => {
                    io.stdin = None; // the caller closed its end (or it failed)
                    input.clear();
                }
            }
            progress |= !input.is_empty() || io.stdin.is_none();
        }
        if !input.is_empty() {
            match nb(ch.write(input.bytes())) {
                Ok(Some(n)) => {
                    input.consume(n);
                    progress |= n > 0;
                }
                Ok(None) => {}
                Err(_) => {
                    // The remote no longer takes input: drop it; the caller's writes now fail.
                    io.stdin = None;
                    input.clear();
                    eof_sent = true;
                }
            }
        }
        if io.stdin.is_none() && input.is_empty() && !eof_sent {
            match ch.send_eof() {
                Ok(()) => {
                    eof_sent = true;
                    progress = true;
                }
                Err(e) if e.code() == ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => {}
                Err(_) => eof_sent = true, // already closed: nothing left to tell
            }
        }
        // Read stdout only while there is room: a slow caller then holds back the SSH
        // window, and through it the remote command.
        if output.buf.len() < CHUNK {
            if let Some(n) = nb(ch.read(&mut scratch)).context("reading the remote stdout")?.filter(|&n| n > 0) {
                output.buf.extend_from_slice(&scratch[..n]);
                progress = true;
            }
        }
        // Always drain stderr: unread stderr would keep the channel from reaching EOF.
        if let Some(n) = nb(ch.stderr().read(&mut scratch)).context("reading the remote stderr")?.filter(|&n| n > 0) {
            stderr.extend_from_slice(&scratch[..n]);
            if stderr.len() > 2 * STDERR_TAIL {
                stderr.drain(..stderr.len() - STDERR_TAIL);
            }
            progress = true;
        }
        progress |= flush_output(&mut output, &mut io.stdout);
        if output.is_empty() && ch.eof() {
            if let Sink::Pipe(w) = &mut io.stdout {
                *w = None; // the caller's reader sees EOF now
            }
            // The remote may still read input after closing its stdout: finish on its CLOSE.
            match ch.wait_close() {
                Ok(()) => break,
                Err(e) if e.code() == ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => {}
                Err(e) => return Err(e).context("waiting for the remote command to finish"),
            }
        }
        if !progress {
            wait_ready(sess, fd, io, input.is_empty(), !output.is_empty())?;
        }
    }
    if stderr.len() > STDERR_TAIL {
        stderr.drain(..stderr.len() - STDERR_TAIL);
    }
    let signal = ch.exit_signal().ok().and_then(|s| s.exit_signal);
    let status = if signal.is_some() { -1 } else { ch.exit_status()? };
    Ok(Finished { status, signal, stderr })
}

/// Gives pending output to the sink; returns whether anything moved.
fn flush_output(out: &mut Pending, sink: &mut Sink) -> bool {
    if out.is_empty() {
        return false;
    }
    match sink {
        Sink::Memory(v) => v.extend_from_slice(out.bytes()),
        Sink::Pipe(Some(w)) => match nb(w.write(out.bytes())) {
            Ok(Some(n)) => {
                out.consume(n);
                return n > 0;
            }
            Ok(None) => return false,
            Err(_) => *sink = Sink::Pipe(None), // the caller dropped its reader
        },
        Sink::Pipe(None) => {}
    }
    out.clear();
    true
}

/// Sleeps until the socket is ready in the direction libssh2 waits for, the caller's input is
/// readable, its output pipe has room, or a kill arrives (at most 1 s).
fn wait_ready(sess: &Session, fd: RawFd, io: &mut PumpIo, want_input: bool, have_output: bool) -> Result<()> {
    let pfd = |fd, events| libc::pollfd { fd, events, revents: 0 };
    let socket_events = match sess.block_directions() {
        BlockDirections::Outbound => libc::POLLOUT,
        BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
        BlockDirections::Inbound | BlockDirections::None => libc::POLLIN,
    };
    let mut fds = vec![pfd(fd, socket_events)];
    if let (true, Some(r)) = (want_input, &io.stdin) {
        fds.push(pfd(r.as_raw_fd(), libc::POLLIN));
    }
    if let (true, Sink::Pipe(Some(w))) = (have_output, &io.stdout) {
        fds.push(pfd(w.as_raw_fd(), libc::POLLOUT));
    }
    if let Some(w) = &io.wake {
        fds.push(pfd(w.as_raw_fd(), libc::POLLIN));
    }
    // SAFETY: `fds` is a live array of initialized pollfd of the length given.
    if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).context("poll");
        }
    }
    if let Some(w) = io.wake.as_mut().filter(|_| fds.last().is_some_and(|f| f.revents != 0)) {
        // A byte means "look at the kill flag"; EOF means the Handle is gone: stop watching.
        if matches!(nb(w.read(&mut [0u8; 16])), Ok(Some(0)) | Err(_)) {
            io.wake = None;
        }
    }
    Ok(())
}

/// Maps "would block" (and EINTR) to `None`.
fn nb<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(e),
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

/// Quotes one word for the remote POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn pending_buffer() {
        let mut p = Pending { buf: b"abcdef".to_vec(), pos: 0 };
        p.consume(2);
        assert_eq!(p.bytes(), b"cdef");
        p.consume(4);
        assert!(p.is_empty() && p.buf.is_empty());
    }
}
