//! Helpers for tests that mount the real binary with FUSE: a temp store and
//! mountpoint, images to import, a mount process started and stopped, and
//! `/proc/self/mountinfo` checks. Tests that need root, /dev/fuse or loop
//! devices are gated by `have_fuse`/`have_loop` (build.rs) and call
//! `super::need_none(fuse_missing())`, which fails loudly when one is missing.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_diskdump");

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root and /dev/fuse: what a real mount needs.
pub fn fuse_missing() -> Option<String> {
    if !is_root() {
        return Some("needs root to mount FUSE".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// FUSE plus loop devices, losetup and mkfs.ext4.
pub fn loop_missing() -> Option<String> {
    fuse_missing().or_else(|| {
        if !Path::new("/dev/loop-control").exists() {
            return Some("no loop devices (/dev/loop-control)".into());
        }
        ["losetup", "mkfs.ext4", "mount", "umount"]
            .into_iter()
            .find(|t| !tool_exists(t))
            .map(|t| format!("{t} is not installed"))
    })
}

pub fn tool_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A temp dir holding a store and an empty mountpoint.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        Env { dir, store, mnt }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `data` to a file in the temp dir and returns its path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write test file");
        p
    }

    /// `diskdump import`; returns the image's path in the mount,
    /// e.g. `2026/04/24/web-sda.img`.
    pub fn import(&self, image: &Path, name: &str, date: &str) -> String {
        super::ensure_store(&self.store, &["import"]);
        let out = run(Command::new(BIN)
            .arg("--store")
            .arg(&self.store)
            .arg("import")
            .arg(image)
            .args(["--as", name, "--date", date]));
        let text = String::from_utf8_lossy(&out.stdout);
        let rel = text
            .split(" as ")
            .nth(1)
            .and_then(|s| s.split(".manifest").next())
            .unwrap_or_else(|| panic!("unexpected import output: {text}"));
        format!("{rel}.img")
    }

    /// Starts `diskdump mount STORE MNT` and waits until it is mounted.
    pub fn mount(&self, extra: &[&str]) -> MountProc {
        MountProc::start(&self.store, &self.mnt, extra, &self.path("mount.log"))
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

/// Makes an ext4 image of `size` (e.g. "64M") holding `dir`'s files,
/// without mounting anything (`mkfs.ext4 -d`).
pub fn make_ext4(dir: &Path, image: &Path, size: &str) {
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-d"])
        .arg(dir)
        .arg(image)
        .arg(size));
}

/// Mount points in this namespace, unescaped from /proc/self/mountinfo.
pub fn mount_points() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            p.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .collect()
}

pub fn is_mounted(p: &Path) -> bool {
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    mount_points().iter().any(|m| Path::new(m) == p)
}

/// Polls `cond` every 20 ms for up to `secs`.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A running `diskdump mount`; killed and unmounted on drop if a test
/// fails before stopping it, so no dead mount outlives the test.
pub struct MountProc {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

impl MountProc {
    pub fn start(store: &Path, mnt: &Path, extra: &[&str], log: &Path) -> MountProc {
        MountProc::start_with_env(store, mnt, extra, log, &[])
    }

    /// `start` with extra environment variables (an S3 store's credentials).
    pub fn start_with_env(
        store: &Path,
        mnt: &Path,
        extra: &[&str],
        log: &Path,
        env: &[(String, String)],
    ) -> MountProc {
        let mnt = mnt.canonicalize().expect("mountpoint exists");
        let log_file = File::create(log).expect("mount log");
        let child = Command::new(BIN)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("mount")
            .arg(store)
            .arg(&mnt)
            .args(extra)
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("start diskdump mount");
        let mut m = MountProc {
            child: Some(child),
            mnt,
            log: log.to_path_buf(),
        };
        // Up when the kernel lists it and the process has said so (after
        // its setup); or given up on when the process exits.
        let ready = |m: &mut MountProc| is_mounted(&m.mnt) && m.log_text().contains("mounted ");
        let up = wait_for(20, || ready(&mut m) || m.try_wait().is_some());
        assert!(
            up && ready(&mut m),
            "mount did not come up: {}",
            m.log_text()
        );
        m
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// The exit status once the process ends (None while it runs).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `secs` for the process to exit.
    pub fn wait(&mut self, secs: u64) -> Option<ExitStatus> {
        let mut status = None;
        wait_for(secs, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Sends `sig` and waits: the process must exit 0 with nothing left mounted.
    pub fn stop_with(mut self, sig: i32) -> String {
        self.signal(sig);
        let status = self.wait(20);
        assert!(
            status.is_some_and(|s| s.success()),
            "exit {status:?}: {}\n{}",
            self.log_text(),
            if status.is_none() {
                threads_of(self.pid())
            } else {
                String::new()
            }
        );
        assert!(!is_mounted(&self.mnt), "still mounted: {}", self.log_text());
        self.child = None;
        self.log_text()
    }

    pub fn stop(self) -> String {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Where each thread of a hung process is (name, state, kernel stack), and
/// whether its mount is still there: what a stop that timed out needs.
pub fn threads_of(pid: i32) -> String {
    let mut out = format!("threads of {pid}:\n");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| {
        let mut v: Vec<_> = d.flatten().map(|e| e.path()).collect();
        v.sort();
        v
    });
    for t in tasks.unwrap_or_default() {
        let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("")
            .to_string();
        out += &format!(
            "{} {} {state} wchan={}\n{}",
            t.display(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        );
    }
    let fuse: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - fuse"))
        .map(String::from)
        .collect();
    out += &format!("fuse mounts: {fuse:?}\n");
    out
}

/// st_blocks × 512: the bytes a file really occupies.
pub fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").blocks() * 512
}

/// Reads all of a file (e.g. a loop device) up to `limit` bytes.
pub fn read_prefix(p: &Path, limit: usize) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .expect("open")
        .take(limit as u64)
        .read_to_end(&mut v)
        .expect("read");
    v
}
