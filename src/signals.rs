//! Ctrl-C and SIGTERM: the first one sets a flag that long-running loops
//! check (so they stop cleanly: no manifest, temp files removed, non-zero
//! exit); a second one kills the process the default way.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicI32, Ordering};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: an atomic store and signal().
    SIGNAL.store(sig, Ordering::SeqCst);
    // SAFETY: restoring the default disposition is async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Installs the handlers for SIGINT and SIGTERM.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls signal().
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
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

/// For tests and the FUSE loop: pretend a signal arrived.
pub fn raise_flag(sig: i32) {
    SIGNAL.store(sig, Ordering::SeqCst);
}
