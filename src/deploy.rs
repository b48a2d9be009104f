//! Starting the agent on a remote host, written once above any [`Transport`]: the platform
//! check, the hash check, the upload (through the command's stdin: no scp or sftp needed),
//! sudo, and one redeploy when the cached agent is missing or different.
//!
//! Where the agent lives on the remote:
//! - `~/.cache/diskdump/agent-<hash prefix>`, uploaded by `dump` itself. The directory and
//!   the file are refused when they are a symlink, not owned by the login user, or writable
//!   by group or others. The remote shell opens the file once, checks the open file's owner,
//!   mode and SHA-256 through that descriptor and executes the same descriptor
//!   (`/proc/self/fd/3`): what is checked is what runs.
//! - `/usr/local/lib/diskdump/diskdump-agent` ([`SYSTEM_AGENT`]), root-owned, installed once
//!   by `diskdump deploy HOST --sudo`. With `--sudo` it is preferred when its hash is this
//!   diskdump's agent: a sudoers rule for exactly that file lets the login user run the agent
//!   as root and nothing else. Without it, `--sudo` runs `sudo -n sh -c` (a user with full
//!   sudo rights): root copies the user's cached agent into a root-only temp file, checks the
//!   copy's hash and executes the copy, so nothing the login user can write runs as root
//!   after the check.

use std::io::{self, PipeReader, PipeWriter, Read};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::idle::IdleTimeout;
use crate::transport::{self, ExitInfo, Handle, Transport};
use crate::untrusted;

/// Exit status of the start command when the agent must be (re)deployed first.
pub const AGENT_MISSING: i32 = 97;
/// Exit status of the remote scripts when the agent cache is unsafe (reason on stderr).
pub const UNSAFE_CACHE: i32 = 98;
/// Where `diskdump deploy HOST --sudo` installs the agent, root-owned.
pub const SYSTEM_AGENT: &str = "/usr/local/lib/diskdump/diskdump-agent";
/// Largest reply a deploy script may send (it sends a few lines).
const MAX_REPLY: usize = 64 * 1024;

/// Quotes one word for the remote POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The agent's SHA-256 as lowercase hex, refusing anything else (it goes into scripts).
fn checked_hash(hex: &str) -> Result<String> {
    let hash = hex.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("agent hash {hex:?} is not a SHA-256 hex digest");
    }
    Ok(hash)
}

/// Shell functions and variables every script starts with. `ok PATH KIND UID`: PATH (followed:
/// callers check for symlinks themselves) is a KIND (`regular` or `directory`) owned by UID
/// and not writable by group or others.
const PRELUDE: &str = r#"u=$(id -u); d="$HOME/.cache/diskdump"
ok() { k=$2; o=$3; set -- $(stat -L -c '%u %a %F' -- "$1" 2>/dev/null); [ "$1" = "$o" ] && [ $(( 0$2 & 022 )) -eq 0 ] && [ "$3" = "$k" ]; }
"#;

fn unsafe_dir_msg() -> String {
    format!(
        "echo \"diskdump: refusing the agent cache $d: it must be a directory (not a symlink) owned by uid $u and not writable by group or others\" >&2; exit {UNSAFE_CACHE}"
    )
}

/// The one remote command that starts a cached agent with `args` (already quoted), or exits
/// [`AGENT_MISSING`] before writing anything when it is not there, not this version, or the
/// remote is not Linux x86_64.
pub fn start_command(agent_hash: &str, sudo: bool, args: &str) -> Result<String> {
    let hash = checked_hash(agent_hash)?;
    let name = format!("agent-{}", &hash[..16]);
    let mut s = String::from(PRELUDE);
    s += &format!(
        "p=\"$d/{name}\"\n[ \"$(uname -sm)\" = 'Linux x86_64' ] || exit {AGENT_MISSING}\n"
    );
    if sudo {
        // The root-owned system agent, when it is this version.
        s += &format!(
            "a={SYSTEM_AGENT}; if [ ! -L \"$a\" ] && ok \"${{a%/*}}\" directory 0 && ok \"$a\" regular 0 && \
             [ \"$(sha256sum < \"$a\" 2>/dev/null)\" = '{hash}  -' ]; then exec sudo -n \"$a\" {args}; fi\n"
        );
    }
    s += &format!("[ -f \"$p\" ] || exit {AGENT_MISSING}\n");
    s += &format!(
        "[ ! -L \"$d\" ] && ok \"$d\" directory \"$u\" || {{ {} ; }}\n",
        unsafe_dir_msg()
    );
    s += &format!(
        "[ ! -L \"$p\" ] || {{ echo \"diskdump: refusing $p: it is a symlink\" >&2; exit {UNSAFE_CACHE}; }}\n"
    );
    if sudo {
        let root = format!(
            "umask 077; t=$(mktemp /var/tmp/diskdump-agent.XXXXXX) || exit 1; \
             cat < \"$1\" > \"$t\" && chmod 700 \"$t\" && command exec 3< \"$t\"; r=$?; rm -f -- \"$t\"; \
             [ $r -eq 0 ] && [ \"$(sha256sum <&3)\" = '{hash}  -' ] || exit {AGENT_MISSING}; \
             shift; exec /proc/self/fd/3 \"$@\""
        );
        s += &format!(
            "exec sudo -n sh -c {} diskdump-agent \"$p\" {args}\n",
            sh_quote(&root)
        );
    } else {
        s += &format!(
            "command exec 3< \"$p\" || exit {AGENT_MISSING}\n\
             ok /dev/fd/3 regular \"$u\" || {{ echo \"diskdump: refusing $p: it must be owned by uid $u and not writable by group or others\" >&2; exit {UNSAFE_CACHE}; }}\n\
             [ \"$(sha256sum <&3)\" = '{hash}  -' ] || exit {AGENT_MISSING}\n\
             exec /proc/self/fd/3 {args}\n"
        );
    }
    Ok(s)
}

/// The script that receives the agent on stdin into the user's cache, after the platform
/// check (its first line of output is `uname -sm`).
fn upload_script(hash: &str) -> String {
    let name = format!("agent-{}", &hash[..16]);
    format!(
        "{PRELUDE}umask 077\nuname -sm; [ \"$(uname -sm)\" = 'Linux x86_64' ] || exit 0\n\
         mkdir -p -- \"$d\" || exit 1\n\
         [ ! -L \"$d\" ] && ok \"$d\" directory \"$u\" || {{ {} ; }}\n\
         t=$(mktemp \"$d/.upload.XXXXXX\") || exit 1\n\
         if cat > \"$t\" && [ \"$(sha256sum < \"$t\")\" = '{hash}  -' ] && chmod 700 \"$t\" && mv -f -- \"$t\" \"$d/{name}\"; \
         then echo uploaded; else rm -f -- \"$t\"; echo 'diskdump: the agent upload failed' >&2; exit 1; fi\n",
        unsafe_dir_msg()
    )
}

/// The script that installs the agent from stdin as [`SYSTEM_AGENT`] (root-owned, 0755),
/// as root or through `sudo -n`. Prints `uname -sm`, the login user, then `installed`.
fn install_script(hash: &str) -> String {
    let dir = SYSTEM_AGENT.rsplit_once('/').expect("absolute path").0;
    let root = format!(
        "umask 022; d={dir}; mkdir -p \"$d\" && chown 0:0 \"$d\" && chmod 755 \"$d\" || exit 1; \
         t=$(mktemp \"$d/.agent.XXXXXX\") || exit 1; \
         if cat > \"$t\" && [ \"$(sha256sum < \"$t\")\" = '{hash}  -' ] && chmod 755 \"$t\" && mv -f -- \"$t\" {SYSTEM_AGENT}; \
         then echo installed; else rm -f -- \"$t\"; exit 1; fi"
    );
    format!(
        "uname -sm; [ \"$(uname -sm)\" = 'Linux x86_64' ] || exit 0\nid -un\n\
         if [ \"$(id -u)\" = 0 ]; then exec sh -c {q}; else exec sudo -n sh -c {q}; fi\n",
        q = sh_quote(&root)
    )
}

/// Checks a deploy script's reply: platform first, then `done_word` as the last line.
fn check_reply(label: &str, out: &transport::Output, done_word: &str) -> Result<Vec<String>> {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let platform = lines.first().map(String::as_str).unwrap_or("").trim();
    if out.exit.success() && platform != "Linux x86_64" {
        bail!(
            "ssh {label}: the remote is \"{}\"; the diskdump agent runs only on Linux x86_64",
            untrusted::escape(platform)
        );
    }
    if !out.exit.success() || lines.last().map(String::as_str) != Some(done_word) {
        bail!(
            "ssh {label}: {}",
            exit_reason(&out.exit, "the agent upload")
        );
    }
    Ok(lines)
}

/// Uploads the agent into the login user's cache.
pub fn upload(t: &dyn Transport, agent: &[u8], agent_hash: &str, idle: Duration) -> Result<()> {
    let hash = checked_hash(agent_hash)?;
    let out = transport::run(t, &upload_script(&hash), agent, MAX_REPLY, idle)?;
    check_reply(t.label(), &out, "uploaded").map(drop)
}

/// Installs the agent as [`SYSTEM_AGENT`] (as root, or with `sudo -n`); returns the sudoers
/// line that lets the login user run exactly that file as root.
pub fn install_system(
    t: &dyn Transport,
    agent: &[u8],
    agent_hash: &str,
    idle: Duration,
) -> Result<String> {
    let hash = checked_hash(agent_hash)?;
    let out = transport::run(t, &install_script(&hash), agent, MAX_REPLY, idle)?;
    let lines = check_reply(t.label(), &out, "installed")?;
    let user = untrusted::escape(lines.get(1).map(String::as_str).unwrap_or("USER"));
    Ok(format!("{user} ALL=(root) NOPASSWD: {SYSTEM_AGENT}"))
}

/// Why a remote command failed, for a one-line error: sudo's refusals explained, otherwise
/// the status and the last stderr line (escaped).
pub fn exit_reason(exit: &ExitInfo, what: &str) -> String {
    if let Some(hint) = sudo_hint(&exit.stderr) {
        return hint;
    }
    let status = match &exit.signal {
        Some(sig) => format!("was killed by SIG{sig}"),
        // OpenSSH's own failures (connection, host key, login): its last lines say why.
        None if exit.status == 255 => {
            let said = untrusted::last_lines(&exit.stderr, 3);
            // In batch mode OpenSSH says only this about a host key it does not know.
            let hint = if said == "Host key verification failed." {
                " (the host key is unknown to known_hosts, or changed: see `ssh HOST`; \
                 --accept-new-host-key records an unknown key)"
            } else {
                ""
            };
            return format!("ssh failed: {said}{hint}");
        }
        None => format!("exited with status {}", exit.status),
    };
    match exit.last_line() {
        l if l.is_empty() => format!("{what} {status}"),
        l => format!("{what} {status}: {l}"),
    }
}

/// Explains sudo's refusals (diskdump always runs `sudo -n`, which never prompts).
pub fn sudo_hint(stderr: &str) -> Option<String> {
    let s = stderr.to_ascii_lowercase();
    let safe = format!(
        "install the agent once with `diskdump deploy HOST --sudo` (as a user with full sudo rights, or as root@HOST) \
         and allow exactly that file: `USER ALL=(root) NOPASSWD: {SYSTEM_AGENT}`; or connect as root"
    );
    if s.contains("a password is required")
        || s.contains("no tty present")
        || s.contains("a terminal is required")
    {
        return Some(format!(
            "sudo on the remote host wants a password, but diskdump runs it non-interactively (sudo -n): {safe}"
        ));
    }
    if s.contains("not in the sudoers file") || s.contains("is not allowed to execute") {
        return Some(format!(
            "the remote user may not run the agent with sudo (or {SYSTEM_AGENT} is missing or another version): {safe}"
        ));
    }
    if s.contains("sudo: not found") || s.contains("sudo: command not found") {
        return Some(
            "sudo is not installed on the remote host: connect as root instead of using --sudo"
                .into(),
        );
    }
    None
}

/// How to start an agent.
pub struct Launch<'a> {
    pub agent: &'a [u8],
    pub agent_hash: &'a str,
    pub sudo: bool,
    /// The agent's arguments, already quoted for the remote shell.
    pub args: &'a str,
    /// Silence allowed while waiting for the agent (zero: no limit).
    pub idle: Duration,
}

/// A started agent: its output (as the receiver reads it), its input and its handle.
pub struct Agent {
    pub input: AgentInput,
    pub output: PipeWriter,
    pub handle: Handle,
}

/// The agent's stdout, read through the idle timeout, with the first byte (read to learn
/// whether the agent started) put back in front.
pub struct AgentInput {
    first: Option<u8>,
    error: Option<io::Error>,
    inner: IdleTimeout<PipeReader>,
}

impl AgentInput {
    /// Whether a read gave up because the agent went silent.
    pub fn timed_out(&self) -> bool {
        self.inner.timed_out()
    }
}

impl Read for AgentInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        match (self.first.take(), buf.is_empty()) {
            (Some(b), false) => {
                buf[0] = b;
                Ok(1)
            }
            (first, _) => {
                self.first = first;
                self.inner.read(buf)
            }
        }
    }
}

/// Starts the cached agent; when it is missing or another version, calls `deploying`,
/// uploads it and starts it again (once).
pub fn start(t: &dyn Transport, l: &Launch, deploying: &dyn Fn()) -> Result<Agent> {
    let cmd = start_command(l.agent_hash, l.sudo, l.args)?;
    match try_start(t, &cmd, l.idle)? {
        Ok(agent) => Ok(agent),
        Err(exit) if exit.status == AGENT_MISSING => {
            deploying();
            upload(t, l.agent, l.agent_hash, l.idle)?;
            match try_start(t, &cmd, l.idle)? {
                Ok(agent) => Ok(agent),
                Err(exit) if exit.status == AGENT_MISSING => bail!(
                    "ssh {}: the agent was uploaded but does not start (its copy fails the hash check: \
                     is something else writing to the cache?)",
                    t.label()
                ),
                Err(exit) => bail!("ssh {}: {}", t.label(), exit_reason(&exit, "the agent")),
            }
        }
        Err(exit) => bail!(
            "ssh {}: {}",
            t.label(),
            exit_reason(&exit, "the agent (before it started)")
        ),
    }
}

/// Runs `cmd` and reads the first byte: `Ok(Ok(agent))` once something came (or the read
/// failed: the caller's receive reports it), `Ok(Err(exit))` when the command ended silently.
fn try_start(t: &dyn Transport, cmd: &str, idle: Duration) -> Result<Result<Agent, ExitInfo>> {
    let (stdout, output, handle) = t.exec(cmd)?.split();
    let mut inner = IdleTimeout::new(stdout, idle);
    let mut byte = [0u8; 1];
    let (first, error) = loop {
        match inner.read(&mut byte) {
            Ok(0) => {
                drop(output);
                let exit = match handle.wait_for(idle)? {
                    Some(exit) => exit,
                    None => bail!(
                        "ssh {}: the remote command closed its output but did not exit",
                        t.label()
                    ),
                };
                return Ok(Err(exit));
            }
            Ok(_) => break (Some(byte[0]), None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break (None, Some(e)),
        }
    };
    Ok(Ok(Agent {
        input: AgentInput {
            first,
            error,
            inner,
        },
        output,
        handle,
    }))
}

#[cfg(test)]
mod tests;
