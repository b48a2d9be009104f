//! Signals. The batch commands (import, dump, restore, verify, gc) call
//! `install`: the first Ctrl-C or SIGTERM sets a flag their loops check, so
//! they stop cleanly (no manifest, temp files removed, non-zero exit), and a
//! second one kills the process the default way. `mount` uses a `Waiter`
//! instead: signals arrive as bytes on a pipe its main thread polls, and it
//! decides what a second one means.

use anyhow::{bail, Result};
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The first signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The write end of a `Waiter`'s pipe (-1: none).
static PIPE: AtomicI32 = AtomicI32::new(-1);
/// Whether a second signal should kill the process (batch commands).
static ONE_SHOT: AtomicBool = AtomicBool::new(true);

const HANDLED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work: atomics, write(2), signal(2).
    let _ = SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    let fd = PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: a full pipe just drops the byte; one pending wake-up is enough.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
    if ONE_SHOT.load(Ordering::SeqCst) {
        // SAFETY: restoring the default disposition is async-signal-safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

fn set_handlers() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with our handler is a valid argument.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        for s in HANDLED {
            if libc::sigaction(s, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Installs the flag-setting handlers for SIGINT, SIGTERM and SIGHUP.
pub fn install() {
    // Failing to install leaves the default (immediate exit): still safe for
    // the store, only less tidy.
    let _ = set_handlers();
}

/// The signal received, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Fails with "interrupted" once a signal has arrived.
pub fn check() -> Result<()> {
    match received() {
        None => Ok(()),
        Some(libc::SIGINT) => bail!("interrupted (Ctrl-C)"),
        Some(s) => bail!("interrupted (signal {s})"),
    }
}

/// Signals as bytes on a pipe, for a main thread that polls (mount).
pub struct Waiter {
    read_fd: i32,
    write_fd: i32,
    old_mask: libc::sigset_t,
}

impl Waiter {
    /// Blocks the signals in this thread (and the threads it starts next, so
    /// only this one runs the handler once it calls `unblock`) and installs
    /// the handler in waiting mode.
    pub fn install() -> io::Result<Waiter> {
        let mut fds = [0i32; 2];
        // SAFETY: plain libc calls on owned, initialized memory.
        let old_mask = unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in HANDLED {
                libc::sigaddset(&mut set, s);
            }
            let mut old_mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask);
            old_mask
        };
        PIPE.store(fds[1], Ordering::SeqCst);
        ONE_SHOT.store(false, Ordering::SeqCst);
        set_handlers()?;
        Ok(Waiter {
            read_fd: fds[0],
            write_fd: fds[1],
            old_mask,
        })
    }

    pub fn unblock(&self) {
        // SAFETY: restores the mask saved by `install`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }

    /// The next signal, or None after `timeout_ms`.
    pub fn wait(&self, timeout_ms: i32) -> io::Result<Option<i32>> {
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

impl Drop for Waiter {
    fn drop(&mut self) {
        self.unblock();
        // SAFETY: back to default dispositions before closing the pipe the
        // handler writes to.
        unsafe {
            for s in HANDLED {
                libc::signal(s, libc::SIG_DFL);
            }
            PIPE.store(-1, Ordering::SeqCst);
            libc::close(self.read_fd);
            libc::close(self.write_fd);
        }
    }
}
