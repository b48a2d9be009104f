//! The store lock: `flock` on `.blockstore/lock`. Dumps and imports hold it
//! shared for their whole run, so gc (exclusive) can never sweep a block a
//! running dump was told the store already has.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The lock is held and the caller would not wait (exit code 3).
#[derive(Debug)]
pub struct StoreBusy(pub String);

impl std::fmt::Display for StoreBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreBusy {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Held until dropped (closing the file releases the flock).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl StoreLock {
    /// Takes the lock; if it is held in a conflicting mode, either fails with a
    /// clear message (`wait == false`) or says what it waits for and blocks.
    pub fn acquire(path: &Path, kind: LockKind, wait: bool) -> Result<StoreLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            // Never readable by others, even in a group-shared store: anyone
            // who can open it can flock it and stall every writer.
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open the store lock {}", path.display()))?;
        let op = match kind {
            LockKind::Shared => libc::LOCK_SH,
            LockKind::Exclusive => libc::LOCK_EX,
        };
        match flock(&file, op | libc::LOCK_NB) {
            Ok(()) => return Ok(StoreLock { _file: file }),
            Err(e) if e.raw_os_error() != Some(libc::EWOULDBLOCK) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
            Err(_) => {}
        }
        let what = match kind {
            LockKind::Shared => "a running gc",
            LockKind::Exclusive => "running dumps or imports",
        };
        if !wait {
            return Err(StoreBusy(format!(
                "the store is busy: {what} hold its lock ({})",
                path.display()
            ))
            .into());
        }
        eprintln!(
            "waiting for {what} to finish (store lock {})",
            path.display()
        );
        // Poll instead of blocking: the signal handlers restart a blocking
        // flock, so Ctrl-C or SIGTERM would not end the wait.
        loop {
            crate::signals::check().with_context(|| format!("stopped waiting for {what}"))?;
            match flock(&file, op | libc::LOCK_NB) {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_excludes_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = StoreLock::acquire(&p, LockKind::Shared, false).unwrap();
        let _b = StoreLock::acquire(&p, LockKind::Shared, false).unwrap();
        let err = StoreLock::acquire(&p, LockKind::Exclusive, false).unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        drop(a);
        drop(_b);
        let _x = StoreLock::acquire(&p, LockKind::Exclusive, false).unwrap();
        assert!(StoreLock::acquire(&p, LockKind::Shared, false).is_err());
    }
}
