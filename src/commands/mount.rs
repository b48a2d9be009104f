//! `mount STORE MOUNTPOINT`: every dump as a read-only image file (FUSE), in
//! the foreground until Ctrl-C, SIGTERM or SIGHUP, which unmount cleanly.

use super::{cores, open_store};
use crate::fuse::{self, MountConfig, Unmounted};
use crate::mountfs::{FsOptions, MountFs};
use anyhow::{bail, Context, Result};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

pub struct MountOptions {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_size: usize,
    pub allow_other: bool,
    pub threads: usize,
}

/// FUSE starts a mount at 128 KiB of read-ahead; 1 MiB requests measured
/// about 1.5x faster sequential reads (MACHINE-NOTES).
const READ_AHEAD_KB: u32 = 1024;

pub fn run(opts: &MountOptions) -> Result<u8> {
    let store = open_store(&opts.store)?;
    check_mountpoint(&opts.mountpoint)?;
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse does not exist: FUSE is not available here \
             (load it with `modprobe fuse`; in a container, pass the device in)"
        );
    }
    // Blocked before any thread starts, so every thread inherits the mask
    // and only this one, once it unblocks, runs the handler.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let fs_opts = FsOptions {
        cache_bytes: opts.cache_size,
        prefetch_threads: cores(),
        ..FsOptions::default()
    };
    let fs = MountFs::new(Arc::new(store), &fs_opts)?;
    let dumps = fs.image_count();
    let cfg = MountConfig {
        allow_other: opts.allow_other,
        threads: opts.threads,
    };
    let mnt = opts.mountpoint.display();
    let mut mounted = fuse::mount(fs, &opts.mountpoint, &cfg).map_err(|e| {
        let denied = e.kind() == ErrorKind::PermissionDenied;
        let e = e.to_string();
        let e = e.trim(); // fusermount3's message ends with a newline
                          // fusermount3's refusals arrive as text, not as an error kind.
        match denied || e.contains("Permission denied") || e.contains("not permitted") {
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
fn mounted_wait(mounted: &mut fuse::Mounted, signals: &Signals) -> Result<Option<i32>> {
    loop {
        if let Some(sig) = signals.wait(200)? {
            return Ok(Some(sig));
        }
        if mounted.is_finished() {
            return Ok(None);
        }
    }
}

fn serve(got: Option<i32>, mut mounted: fuse::Mounted, signals: &Signals) -> Result<u8> {
    let mnt = mounted.mountpoint().display().to_string();
    if got.is_none() {
        mounted.join().context("the FUSE session failed")?;
        say(&format!("{mnt} was unmounted"));
        return Ok(0);
    }
    let how = mounted
        .unmount()
        .with_context(|| format!("cannot unmount {mnt}"))?;
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

/// The write end of the self-pipe, for the signal handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte
    // (one pending wake-up is enough).
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// SIGINT/SIGTERM/SIGHUP turned into bytes on a pipe the main thread polls.
struct Signals {
    read_fd: i32,
    write_fd: i32,
    old_mask: libc::sigset_t,
}

impl Signals {
    /// Blocks the signals in this thread (and the threads it starts next)
    /// and installs the handler; `unblock` lets them in.
    fn install() -> io::Result<Signals> {
        let mut fds = [0i32; 2];
        // SAFETY: plain libc calls on owned, initialized memory.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
                return Err(io::Error::last_os_error());
            }
            SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            let mut old_mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            for s in SIGNALS {
                if libc::sigaction(s, &sa, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(Signals {
                read_fd: fds[0],
                write_fd: fds[1],
                old_mask,
            })
        }
    }

    fn unblock(&self) {
        // SAFETY: restores the mask saved by `install`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }

    /// The next signal, or None after `timeout_ms`.
    fn wait(&self, timeout_ms: i32) -> io::Result<Option<i32>> {
        let mut pfd = libc::pollfd {
            fd: self.read_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        let mut b = 0u8;
        // SAFETY: reads one byte into `b` from our non-blocking pipe.
        let got = unsafe { libc::read(self.read_fd, (&mut b as *mut u8).cast(), 1) };
        Ok((n > 0 && got == 1).then_some(i32::from(b)))
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.unblock();
        // SAFETY: back to default dispositions before closing the pipe the
        // handler writes to.
        unsafe {
            for s in SIGNALS {
                libc::signal(s, libc::SIG_DFL);
            }
            SIGNAL_PIPE.store(-1, Ordering::Relaxed);
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}
