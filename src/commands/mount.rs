//! `mount STORE MOUNTPOINT`: every dump as a read-only image file (FUSE), in
//! the foreground until Ctrl-C, SIGTERM or SIGHUP, which unmount cleanly.

use super::{as_usage, loader_threads, open_store};
use crate::fuse::{self, MountConfig, Unmounted};
use crate::mountfs::{FsOptions, MountFs};
use crate::signals::Waiter;
use crate::store::resolve_group;
use anyhow::{bail, Context, Result};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct MountOptions {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_size: usize,
    pub allow_other: bool,
    /// `--group`: group of the images [default: the store's, else the user's].
    pub group: Option<String>,
    /// `--mode`: the images' mode [default: 0440 for a shared store, else 0400].
    pub mode: Option<u16>,
    pub threads: usize,
    pub direct_io: bool,
}

/// The images' group and mode: what was asked, else the store's choice. A
/// private store's images are its owner's only, even with `--allow-other`.
pub fn access(
    store_group: Option<u32>,
    group: Option<u32>,
    mode: Option<u16>,
) -> (Option<u32>, u16) {
    let gid = group.or(store_group);
    let mode = mode.unwrap_or(if gid.is_some() { 0o440 } else { 0o400 });
    (gid, mode)
}

/// FUSE starts a mount at 128 KiB of read-ahead; 1 MiB requests measured
/// about 1.5x faster sequential reads on this kind of VM (docs/DESIGN.md §4).
const READ_AHEAD_KB: u32 = 1024;

pub fn run(opts: &MountOptions) -> Result<u8> {
    let group = opts
        .group
        .as_deref()
        .map(resolve_group)
        .transpose()
        .map_err(as_usage)?;
    check_mountpoint(&opts.mountpoint).map_err(as_usage)?;
    let store = open_store(&opts.store)?;
    let (gid, image_mode) = access(store.group(), group, opts.mode);
    if opts.allow_other && image_mode & 0o044 == 0 {
        say(&format!(
            "note: the images are {image_mode:04o}: --allow-other lets nobody else read them \
             (the store is private); --group GROUP or --mode 0444 choose who may"
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse does not exist: FUSE is not available here \
             (load it with `modprobe fuse`; in a container, pass the device in)"
        );
    }
    // Blocked before any thread starts, so every thread inherits the mask
    // and only this one, once it unblocks, runs the handler.
    let signals = Waiter::install().context("cannot install signal handlers")?;
    let fs_opts = FsOptions {
        cache_bytes: opts.cache_size,
        prefetch_threads: loader_threads(),
        image_mode,
        ..FsOptions::default()
    };
    let fs = MountFs::new(store, &fs_opts)?;
    let dumps = fs.image_count();
    let cfg = MountConfig {
        allow_other: opts.allow_other,
        threads: opts.threads,
        direct_io: opts.direct_io,
        gid,
    };
    let mnt = opts.mountpoint.display();
    let mut mounted = fuse::mount(fs, &opts.mountpoint, &cfg).map_err(|e| {
        let denied = e.kind() == ErrorKind::PermissionDenied;
        let e = e.to_string();
        let e = e.trim(); // fusermount3's message ends with a newline
                          // fusermount3's refusals (used where /dev/fuse is open to users,
                          // e.g. Debian's 0666) arrive as text, not as an error kind.
        let refused = ["Permission denied", "not permitted", "no write access"];
        match denied || refused.iter().any(|r| e.contains(r)) {
            true => anyhow::anyhow!(
                "not permitted to mount on {mnt}: {e}; \
                 FUSE mounts need root, or access to /dev/fuse and fusermount3"
            ),
            false => anyhow::anyhow!("cannot mount on {mnt}: {e}"),
        }
    })?;
    if let Err(e) = mounted.set_read_ahead_kb(READ_AHEAD_KB) {
        say(&format!(
            "warning: cannot raise the mount's read-ahead ({e}); reads stay small"
        ));
    }
    // Not println!: a closed stdout must not panic with the mount up.
    let _ = writeln!(
        io::stdout(),
        "mounted {dumps} dump(s) of {} on {} (read-only); Ctrl-C or SIGTERM unmounts",
        opts.store.display(),
        mounted.mountpoint().display()
    );
    let _ = io::stdout().flush();
    signals.unblock();
    let got = mounted_wait(&mut mounted, &signals)?;
    serve(got, mounted, &signals)
}

/// Waits for a signal (Some) or for the session to end on its own (None,
/// e.g. someone ran `umount`).
fn mounted_wait(mounted: &mut fuse::Mounted, signals: &Waiter) -> Result<Option<i32>> {
    loop {
        if let Some(sig) = signals.wait(200)? {
            return Ok(Some(sig));
        }
        if mounted.is_finished() {
            return Ok(None);
        }
    }
}

fn serve(got: Option<i32>, mut mounted: fuse::Mounted, signals: &Waiter) -> Result<u8> {
    let mnt = mounted.mountpoint().display().to_string();
    if got.is_none() {
        mounted.join().context("the FUSE session failed")?;
        say(&format!("{mnt} was unmounted"));
        return Ok(0);
    }
    let how = {
        let _slow = SlowStop::watch(format!("still unmounting {mnt} after {STOP_PATIENCE:?}"));
        mounted
            .unmount()
            .with_context(|| format!("cannot unmount {mnt}"))?
    };
    if how == Unmounted::Clean && !finishes_within(&mounted, STOP_PATIENCE) {
        // The kernel ended the connection with the unmount: nothing can
        // reach this process any more, so a thread that has not noticed
        // (stuck in a read of the store) is no reason to stay.
        say(&format!(
            "unmounted {mnt}; exiting without the FUSE threads still busy after {STOP_PATIENCE:?} ({})",
            threads_summary()
        ));
        return Ok(0);
    }
    if how == Unmounted::Detached {
        say(&format!(
            "{mnt} is busy (an open file or a loop device): detached it; \
             serving its remaining users until they close. Signal again to stop now."
        ));
        if mounted_wait(&mut mounted, signals)?.is_some() {
            // Exiting closes /dev/fuse, which aborts the connection.
            say("stopped while still in use; its users now get I/O errors");
            return Ok(1);
        }
    }
    mounted.join().context("the FUSE session failed")?;
    say(&format!("unmounted {mnt}"));
    Ok(0)
}

/// How long a stop waits (for the unmount, then for the FUSE threads)
/// before it says so.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// Says `msg` if it is not dropped within `STOP_PATIENCE`: a stop that
/// hangs in the kernel explains itself instead of going silent.
struct SlowStop(Option<mpsc::Sender<()>>);

impl SlowStop {
    fn watch(msg: String) -> SlowStop {
        let (tx, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("slow-stop".into())
            .spawn(move || {
                if rx.recv_timeout(STOP_PATIENCE) == Err(mpsc::RecvTimeoutError::Timeout) {
                    say(&format!("{msg} ({})", threads_summary()));
                }
            });
        SlowStop(spawned.is_ok().then_some(tx))
    }
}

impl Drop for SlowStop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls until the FUSE session has ended, for at most `limit`.
fn finishes_within(mounted: &fuse::Mounted, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while !mounted.is_finished() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// This process's threads grouped by name and kernel wait point, e.g.
/// `8×fuser:fuse_dev_do_read`: where a stuck stop is stuck.
fn threads_summary() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "threads unknown".into();
    };
    let mut groups = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
        let name = read("comm");
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *groups
            .entry(format!("{name}:{}", read("wchan").trim()))
            .or_default() += 1;
    }
    let list: Vec<String> = groups.iter().map(|(k, n)| format!("{n}×{k}")).collect();
    format!("threads: {}", list.join(" "))
}

/// A status line on stderr; a closed stderr is ignored rather than a panic.
fn say(msg: &str) {
    let _ = writeln!(io::stderr(), "diskdump: {msg}");
}

/// Refuses what would fail obscurely or hide files: a missing path, a file,
/// a non-empty directory, a dead FUSE mount left by a killed process.
fn check_mountpoint(p: &Path) -> Result<()> {
    let d = p.display();
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("mountpoint {d} does not exist; create an empty directory first")
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {d} is a dead FUSE mount (transport endpoint is not connected); \
             clear it with `umount {d}` first"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot use mountpoint {d}")),
    };
    if !meta.is_dir() {
        bail!("mountpoint {d} is not a directory");
    }
    let mut entries =
        std::fs::read_dir(p).with_context(|| format!("cannot read mountpoint {d}"))?;
    if entries.next().is_some() {
        bail!("mountpoint {d} is not empty; mount on an empty directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::access;

    #[test]
    fn images_follow_the_store_unless_told() {
        assert_eq!(access(None, None, None), (None, 0o400));
        assert_eq!(access(Some(7), None, None), (Some(7), 0o440));
        assert_eq!(access(None, Some(8), None), (Some(8), 0o440));
        assert_eq!(access(Some(7), Some(8), Some(0o444)), (Some(8), 0o444));
        assert_eq!(access(None, None, Some(0o444)), (None, 0o444));
    }
}
