//! The seam between `dump` and a remote host: run one remote command with its stdin, stdout
//! and stderr as byte streams and learn how it ended. Everything above it (agent deployment,
//! sudo, the dump itself) is written once, in `deploy` and `commands::dump`; below it are two
//! transports: the system's OpenSSH client (`openssh`, the default: the user's ssh setup
//! applies exactly) and libssh2 (`crate::ssh`, for hosts without an `ssh` client).

pub mod openssh;

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::idle::IdleTimeout;
use crate::untrusted;

/// Which client reaches the hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The system's `ssh`, at this path.
    OpenSsh(PathBuf),
    Libssh2,
}

/// How to reach hosts, from the command line: the same for every target of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    /// `--ssh-config FILE` (like `ssh -F`), for both transports.
    pub config: Option<PathBuf>,
    /// `-o KEY=VALUE` for OpenSSH.
    pub ssh_options: Vec<String>,
    /// `--user`, for targets without `user@`.
    pub user: Option<String>,
    pub accept_new_host_key: bool,
}

impl Options {
    /// Picks the transport: `requested` (`openssh` or `libssh2`), else OpenSSH when an `ssh`
    /// client is on PATH, else libssh2 with a notice on stderr.
    pub fn choose(requested: Option<&str>) -> Result<Kind> {
        match requested {
            Some("libssh2") => Ok(Kind::Libssh2),
            Some("openssh") => match openssh::find_ssh() {
                Some(p) => Ok(Kind::OpenSsh(p)),
                None => bail!("--transport openssh: no `ssh` client on PATH"),
            },
            Some(other) => bail!("unknown transport {other:?} (openssh or libssh2)"),
            None => match openssh::find_ssh() {
                Some(p) => Ok(Kind::OpenSsh(p)),
                None => {
                    eprintln!(
                        "diskdump: no `ssh` client on PATH: using the built-in libssh2 transport \
                         (it refuses ssh_config features it cannot honour exactly)"
                    );
                    Ok(Kind::Libssh2)
                }
            },
        }
    }

    /// Refuses combinations that cannot work, before any connection.
    pub fn check(&self) -> Result<()> {
        if self.kind == Kind::Libssh2 && !self.ssh_options.is_empty() {
            bail!(
                "-o {} is an option for OpenSSH's ssh; the libssh2 transport does not take it: \
                 use --transport openssh",
                self.ssh_options[0]
            );
        }
        for o in &self.ssh_options {
            if o.contains('\n') || !o.contains(['=', ' ']) {
                bail!("-o {o:?}: expected KEY=VALUE");
            }
        }
        Ok(())
    }
}

/// A transport to `dest` (`[user@]host`).
pub fn connect(dest: &str, o: &Options) -> Result<Box<dyn Transport>> {
    match &o.kind {
        Kind::OpenSsh(program) => {
            let so = openssh::OpenSshOptions {
                config: o.config.clone(),
                options: o.ssh_options.clone(),
                user: o.user.clone(),
                accept_new_host_key: o.accept_new_host_key,
            };
            Ok(Box::new(openssh::OpenSsh::new(program.clone(), dest, &so)))
        }
        Kind::Libssh2 => {
            let so = crate::ssh::SshOptions {
                user: o.user.clone(),
                ssh_config: o.config.clone(),
                accept_new_host_key: o.accept_new_host_key,
                ..Default::default()
            };
            Ok(Box::new(crate::ssh::Libssh2::connect(dest, &so)?))
        }
    }
}

/// How much of a remote command's stderr is kept (its end), for error messages.
pub const STDERR_TAIL: usize = 64 * 1024;

/// A way to run commands on one remote host.
pub trait Transport: Send + Sync {
    /// `user@host:port` (or what is known of it), the name every error uses.
    fn label(&self) -> &str;
    /// Starts `cmd` (a POSIX shell command line) on the remote host.
    fn exec(&self, cmd: &str) -> Result<RemoteProcess>;
}

/// A running remote command.
pub struct RemoteProcess {
    /// Its stdout; EOF when the remote closes it.
    pub stdout: PipeReader,
    /// Its stdin: drop it to send EOF; writes fail with `BrokenPipe` once the remote is gone.
    pub stdin: PipeWriter,
    pub handle: Handle,
}

impl RemoteProcess {
    pub fn split(self) -> (PipeReader, PipeWriter, Handle) {
        (self.stdout, self.stdin, self.handle)
    }
}

/// Stops a remote command, from any thread.
pub type Killer = Arc<dyn Fn() + Send + Sync>;

/// Waits for or stops a remote command.
pub struct Handle {
    thread: JoinHandle<Result<ExitInfo>>,
    kill: Killer,
    label: String,
}

impl Handle {
    /// `thread` ends when the command has ended and returns how; `kill` drops the connection.
    pub fn new(thread: JoinHandle<Result<ExitInfo>>, kill: Killer, label: String) -> Handle {
        Handle {
            thread,
            kill,
            label,
        }
    }

    /// Waits until the remote command has ended.
    pub fn wait(self) -> Result<ExitInfo> {
        let label = self.label;
        self.thread
            .join()
            .map_err(|_| anyhow!("ssh {label}: the I/O thread panicked"))?
    }

    /// Waits at most `limit` (zero: no limit), then drops the connection: a remote that does
    /// not exit cannot hold us (and the store lock) forever. `Ok(None)` when it had to be cut.
    pub fn wait_for(self, limit: Duration) -> Result<Option<ExitInfo>> {
        if !limit.is_zero() {
            let deadline = Instant::now() + limit;
            while !self.thread.is_finished() {
                if Instant::now() >= deadline {
                    self.kill();
                    let _ = self.wait();
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.wait().map(Some)
    }

    /// Drops the connection: the remote command sees EOF on stdin and exits; [`Handle::wait`]
    /// then returns an error or a failed exit.
    pub fn kill(&self) {
        (self.kill)()
    }

    /// The kill switch alone, for a watchdog thread.
    pub fn killer(&self) -> Killer {
        self.kill.clone()
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status; -1 when it was killed by a signal. OpenSSH's client says 255 for its
    /// own failures (connection, host key, authentication).
    pub status: i32,
    /// The signal's name (e.g. `KILL`) if it was killed by one and the transport says so.
    pub signal: Option<String>,
    /// The last [`STDERR_TAIL`] bytes of its stderr, as sent (untrusted: escape before showing).
    pub stderr: String,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.status == 0 && self.signal.is_none()
    }

    /// The last non-empty stderr line, escaped and capped for display.
    pub fn last_line(&self) -> String {
        untrusted::last_line(&self.stderr)
    }
}

/// What a small command printed.
#[derive(Debug)]
pub struct Output {
    pub exit: ExitInfo,
    pub stdout: Vec<u8>,
}

/// Runs a small command: writes `input` to its stdin, keeps at most `max_out` bytes of its
/// stdout (more is an error: a remote cannot make us hold what it likes), and gives up after
/// `idle` without output while no input moves either (zero: never): a slow link uploading
/// the agent is not a stall.
pub fn run(
    t: &dyn Transport,
    cmd: &str,
    input: &[u8],
    max_out: usize,
    idle: Duration,
) -> Result<Output> {
    let (stdout, mut stdin, handle) = t.exec(cmd)?.split();
    let input = input.to_vec();
    let sent = Arc::new(AtomicU64::new(0));
    let progress = sent.clone();
    // A remote that stops reading (it failed, or it does not need the input) only ends the
    // writer with EPIPE: its exit status says what happened.
    let writer = std::thread::spawn(move || {
        for chunk in input.chunks(64 * 1024) {
            if stdin.write_all(chunk).is_err() {
                return;
            }
            progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    });
    let mut out = Vec::new();
    let mut reader = IdleTimeout::new(stdout, idle);
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0;
    let res: Result<()> = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) if out.len() + n > max_out => {
                break Err(anyhow!("its output exceeded {max_out} bytes"))
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                let now = sent.load(Ordering::Relaxed);
                if now == seen {
                    break Err(e.into());
                }
                seen = now; // input still moving: not silent
            }
            Err(e) => break Err(e.into()),
        }
    };
    if let Err(e) = res {
        handle.kill();
        let _ = handle.wait();
        let _ = writer.join();
        return Err(e).with_context(|| format!("ssh {}: running a remote command", t.label()));
    }
    drop(reader);
    let exit = handle.wait()?;
    let _ = writer.join();
    Ok(Output { exit, stdout: out })
}

/// Keeps the end of a stream: at most `cap` bytes, amortized.
pub(crate) fn keep_tail(buf: &mut Vec<u8>, more: &[u8], cap: usize) {
    buf.extend_from_slice(more);
    if buf.len() > 2 * cap {
        buf.drain(..buf.len() - cap);
    }
}

/// Reads `r` to its end, keeping only the last `cap` bytes.
pub(crate) fn read_tail(mut r: impl Read, cap: usize) -> Vec<u8> {
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 16 * 1024]);
    loop {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => keep_tail(&mut buf, &chunk[..n], cap),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if buf.len() > cap {
        buf.drain(..buf.len() - cap);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_capped() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let tail = read_tail(&data[..], 1000);
        assert_eq!(tail, &data[data.len() - 1000..]);
        let mut buf = Vec::new();
        for c in data.chunks(777) {
            keep_tail(&mut buf, c, 1000);
            assert!(buf.len() <= 2000 + 777);
        }
        assert!(buf.ends_with(&data[data.len() - 1000..]));
    }
}
