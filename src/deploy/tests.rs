//! The deploy logic against a fake transport: each "remote" command runs in a local `sh` with
//! a temp HOME (and, for some tests, a fake `uname` first on PATH). The scripts run for real;
//! only the SSH connection is missing.

use super::*;
use crate::digest::Digest;
use crate::transport::openssh;
use crate::transport::RemoteProcess;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

struct LocalSh {
    home: PathBuf,
    path: String,
    commands: Mutex<Vec<String>>,
}

impl LocalSh {
    fn new(home: &Path) -> LocalSh {
        LocalSh {
            home: home.to_path_buf(),
            path: std::env::var("PATH").unwrap_or_default(),
            commands: Mutex::new(Vec::new()),
        }
    }
    /// A `uname` that says `uname_says`.
    fn with_uname(mut self, bin: &Path, uname_says: &str) -> LocalSh {
        fs::create_dir_all(bin).unwrap();
        let f = bin.join("uname");
        fs::write(&f, format!("#!/bin/sh\necho '{uname_says}'\n")).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        self.path = format!("{}:{}", bin.display(), self.path);
        self
    }
    fn count(&self) -> usize {
        self.commands.lock().unwrap().len()
    }
}

impl Transport for LocalSh {
    fn label(&self) -> &str {
        "local"
    }
    fn exec(&self, cmd: &str) -> Result<RemoteProcess> {
        self.commands.lock().unwrap().push(cmd.to_string());
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .env("HOME", &self.home)
            .env("PATH", &self.path);
        openssh::spawn(c, "local".into())
    }
}

/// A fake agent: prints its arguments, then echoes its input.
const AGENT: &[u8] = b"#!/bin/sh\necho \"agent $*\"\nexec cat\n";

fn hash(agent: &[u8]) -> String {
    Digest::of(agent).to_hex()
}

fn launch<'a>(agent: &'a [u8], h: &'a str, args: &'a str) -> Launch<'a> {
    Launch {
        agent,
        agent_hash: h,
        sudo: false,
        args,
        idle: Duration::from_secs(20),
    }
}

/// Starts the agent and returns its first line, whether it was deployed, and the error.
fn start_agent(t: &LocalSh, agent: &[u8]) -> Result<(String, bool)> {
    let h = hash(agent);
    let deployed = std::cell::Cell::new(false);
    let a = start(t, &launch(agent, &h, "--x 'a b'"), &|| deployed.set(true))?;
    drop(a.output);
    let mut out = String::new();
    let mut input = a.input;
    input.read_to_string(&mut out)?;
    let exit = a.handle.wait()?;
    assert!(exit.success(), "{exit:?}");
    Ok((out, deployed.get()))
}

fn cache(home: &Path, agent: &[u8]) -> PathBuf {
    home.join(format!(".cache/diskdump/agent-{}", &hash(agent)[..16]))
}

#[test]
fn deploys_once_then_starts_the_cached_agent_in_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalSh::new(dir.path());
    assert_eq!(
        start_agent(&t, AGENT).unwrap(),
        ("agent --x a b\n".into(), true)
    );
    assert_eq!(t.count(), 3, "start (missing), upload, start");
    let f = cache(dir.path(), AGENT);
    assert_eq!(fs::read(&f).unwrap(), AGENT);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&f), mode(f.parent().unwrap())), (0o700, 0o700));
    assert_eq!(
        start_agent(&t, AGENT).unwrap(),
        ("agent --x a b\n".into(), false)
    );
    assert_eq!(t.count(), 4, "one command when cached");
    // A damaged copy is replaced; no upload leftovers stay.
    fs::write(&f, b"#!/bin/sh\necho evil\n").unwrap();
    assert!(start_agent(&t, AGENT).unwrap().1);
    assert_eq!(fs::read(&f).unwrap(), AGENT);
    let names: Vec<_> = fs::read_dir(f.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn other_platforms_are_refused_before_any_upload() {
    let dir = tempfile::tempdir().unwrap();
    let t =
        LocalSh::new(&dir.path().join("home")).with_uname(&dir.path().join("bin"), "Linux aarch64");
    let e = format!("{:#}", start_agent(&t, AGENT).unwrap_err());
    assert!(
        e.contains("\"Linux aarch64\"") && e.contains("only on Linux x86_64"),
        "{e}"
    );
    assert!(!cache(&dir.path().join("home"), AGENT).exists());
}

fn unsafe_error(home: &Path) -> String {
    let t = LocalSh::new(home);
    let e = format!("{:#}", start_agent(&t, AGENT).unwrap_err());
    assert!(e.contains("refusing"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn unsafe_caches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let t = LocalSh::new(home);
    start_agent(&t, AGENT).unwrap();
    let f = cache(home, AGENT);
    let d = f.parent().unwrap().to_path_buf();
    // Group-writable directory.
    fs::set_permissions(&d, fs::Permissions::from_mode(0o770)).unwrap();
    assert!(unsafe_error(home).contains("agent cache"));
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    start_agent(&t, AGENT).expect("755 is not writable by others: fine");
    // Other-writable file.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o702)).unwrap();
    assert!(unsafe_error(home).contains("not writable"));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).unwrap();
    // The file as a symlink to an intact copy elsewhere.
    let elsewhere = home.join("elsewhere");
    fs::rename(&f, &elsewhere).unwrap();
    symlink(&elsewhere, &f).unwrap();
    assert!(unsafe_error(home).contains("symlink"));
    fs::remove_file(&f).unwrap();
    // The directory as a symlink.
    let real = home.join("realdir");
    fs::rename(&d, &real).unwrap();
    symlink(&real, &d).unwrap();
    assert!(unsafe_error(home).contains("agent cache"));
    // Owned by another user (root runs these tests: give it to nobody).
    fs::remove_file(&d).unwrap();
    fs::rename(&real, &d).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        assert!(unsafe_error(home).contains("owned by uid"));
    }
}

#[test]
fn the_file_checked_is_the_file_executed() {
    // The start command opens the agent once: replacing the path after the open (here: by
    // the agent's own first line of output, simulated by a rename race) cannot swap it. What
    // we can check deterministically: the process runs from a descriptor, not the path.
    let dir = tempfile::tempdir().unwrap();
    let agent = b"#!/bin/sh\necho \"$0\"\n";
    let t = LocalSh::new(dir.path());
    let (out, _) = start_agent(&t, agent).unwrap();
    assert_eq!(out.trim(), "/proc/self/fd/3");
    let cmd = start_command(&hash(agent), false, "x").unwrap();
    let open = cmd.find("exec 3<").unwrap();
    let check = cmd.find("sha256sum <&3").unwrap();
    assert!(open < check && cmd.contains("exec /proc/self/fd/3 x"));
    assert!(
        !cmd[check..].contains("\"$p\""),
        "nothing uses the path after the check"
    );
}

#[test]
fn failures_are_one_escaped_line() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalSh::new(dir.path());
    start_agent(&t, AGENT).unwrap();
    // An agent that fails at once with hostile stderr.
    let bad = b"#!/bin/sh\nprintf 'x\\033[2J\\nOK forged row\\n' >&2\nexit 5\n";
    let e = format!("{:#}", start_agent(&t, bad).unwrap_err());
    assert!(e.contains("exited with status 5"), "{e}");
    assert!(!e.contains('\u{1b}') && !e.contains('\n'), "{e:?}");
    let reason = exit_reason(
        &ExitInfo {
            status: 1,
            signal: None,
            stderr: "sudo: a password is required\n".into(),
        },
        "x",
    );
    assert!(
        reason.contains("NOPASSWD: /usr/local/lib/diskdump/diskdump-agent"),
        "{reason}"
    );
    assert!(reason.contains("diskdump deploy HOST --sudo"), "{reason}");
    assert!(
        !reason.contains(".cache"),
        "never a user-writable path in sudoers: {reason}"
    );
}

#[test]
fn replies_and_stderr_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalSh::new(dir.path());
    let e = transport::run(
        &t,
        "head -c 50000000 /dev/zero",
        b"",
        MAX_REPLY,
        Duration::ZERO,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("exceeded 65536 bytes"), "{e:#}");
    let out = transport::run(
        &t,
        "head -c 5000000 /dev/zero >&2; echo hi",
        b"",
        MAX_REPLY,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exit.stderr.len(), transport::STDERR_TAIL);
}

#[test]
fn sudo_hints() {
    assert!(sudo_hint("sudo: a password is required\n")
        .unwrap()
        .contains("sudo -n"));
    assert!(
        sudo_hint("bob is not in the sudoers file.  This incident will be reported.").is_some()
    );
    assert!(sudo_hint("sh: 1: sudo: not found")
        .unwrap()
        .contains("not installed"));
    assert!(sudo_hint("agent: cannot open /dev/sda: Permission denied").is_none());
}

#[test]
fn quoting() {
    assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
    assert_eq!(sh_quote("it's"), r"'it'\''s'");
}

#[test]
fn a_slow_upload_is_not_a_stall_but_silence_is() {
    let dir = tempfile::tempdir().unwrap();
    let t = LocalSh::new(dir.path());
    let idle = Duration::from_millis(300);
    // The remote takes ~2 s to read 4 MB and says nothing meanwhile.
    let slow =
        "i=0; while [ $i -lt 40 ]; do head -c 100000 >/dev/null; sleep 0.05; i=$((i+1)); done; \
                cat >/dev/null; echo done";
    let out = transport::run(&t, slow, &vec![7u8; 4 << 20], MAX_REPLY, idle).unwrap();
    assert_eq!(out.stdout, b"done\n");
    let t0 = std::time::Instant::now();
    let e = transport::run(&t, "sleep 5", b"", MAX_REPLY, idle).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(format!("{e:#}").contains("no data"), "{e:#}");
}
