//! Who may run beside whom. Dumps and imports never wait for gc and gc never
//! waits for them: each writer registers itself in `.blockstore/writers/`
//! (a file it holds `flock`ed, whose mtime is its start), and gc only takes
//! `.blockstore/lock` exclusively, which only another gc contends for.
//! Safety comes from timestamps, not from the lock (see `store::gc`).

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

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
    /// A dump or import: registers as a writer, never waits.
    Shared,
    /// A gc: excludes other gcs only.
    Exclusive,
}

/// Held until dropped (closing the file releases the flock; a writer's
/// registration file is removed).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    registration: Option<PathBuf>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(p) = &self.registration {
            let _ = fs::remove_file(p);
        }
    }
}

/// Opens (creating) a lock file: 0600 in every store, even a group-shared
/// one, since anyone who can open it can flock it and stall its users.
pub(super) fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Takes an exclusive flock without waiting; false if someone holds it.
pub(super) fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A running dump or import, as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub pid: u32,
    /// When it registered, by the store filesystem's clock.
    pub since: SystemTime,
    /// It may answer "present" from the index without touching the block
    /// (its registration's name ends `.index`): gc deletes nothing while it runs.
    pub uses_index: bool,
}

/// How a writer's registration name ends when it may use the index (a
/// name, not content: registering must not need free space).
const USES_INDEX: &str = ".index";

static SEQ: AtomicU64 = AtomicU64::new(0);

impl StoreLock {
    /// Registers a writer in `dir`; returns the lock and its start time (the
    /// registration file's mtime: the filesystem's clock, like block mtimes).
    /// The file is locked under a dot-name first and then renamed, so a
    /// final name is locked for as long as its writer lives.
    pub fn register_writer(dir: &Path) -> Result<(StoreLock, SystemTime)> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        loop {
            let name = format!(
                "{}.{}{USES_INDEX}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let (tmp, path) = (dir.join(format!(".{name}")), dir.join(&name));
            let file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue, // a dead namesake
                r => r.with_context(|| format!("cannot register in {}", dir.display()))?,
            };
            flock(&file, libc::LOCK_EX)
                .with_context(|| format!("cannot lock {}", tmp.display()))?;
            match fs::rename(&tmp, &path) {
                Ok(()) => {}
                // A gc took it for a dead registration (we stalled a long time).
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot register {}", path.display()))
                }
            }
            let since = file.metadata()?.modified()?;
            return Ok((
                StoreLock {
                    _file: file,
                    registration: Some(path),
                },
                since,
            ));
        }
    }

    /// This writer will not use the index after all: its registration
    /// loses the `.index` mark, so later gcs judge by mtimes alone (a gc
    /// listing meanwhile sees either name; both keep what it relies on).
    pub fn drop_index_mark(&mut self) -> Result<()> {
        let Some(p) = &self.registration else {
            return Ok(());
        };
        let Some(plain) = p.to_str().and_then(|s| s.strip_suffix(USES_INDEX)) else {
            return Ok(());
        };
        let plain = PathBuf::from(plain);
        fs::rename(p, &plain).with_context(|| format!("cannot rename {}", p.display()))?;
        self.registration = Some(plain);
        Ok(())
    }

    /// Takes `path` exclusively (gc against gc); if another holds it, either
    /// fails with a clear message (`wait == false`) or says so and waits.
    pub fn acquire(path: &Path, wait: bool) -> Result<StoreLock> {
        let file = open_lock_file(path)
            .with_context(|| format!("cannot open the store lock {}", path.display()))?;
        let ctx = || format!("cannot lock {}", path.display());
        let locked = |file: File| StoreLock {
            _file: file,
            registration: None,
        };
        if try_lock_exclusive(&file).with_context(ctx)? {
            return Ok(locked(file));
        }
        let what = "another gc";
        if !wait {
            return Err(StoreBusy(format!(
                "the store is busy: {what} holds its lock ({})",
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
        while !try_lock_exclusive(&file).with_context(ctx)? {
            crate::signals::check().with_context(|| format!("stopped waiting for {what}"))?;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(locked(file))
    }
}

/// Is a gc running? A writer asks after it registered: if not, any gc
/// that starts later lists it (see `store::index`). Anything unexpected
/// counts as "yes" (the writer then checks blocks on disk, always safe).
pub fn gc_running(path: &Path) -> bool {
    let Ok(file) = open_lock_file(path) else {
        return true;
    };
    match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(()) => false, // closing the file releases it
        Err(_) => true,
    }
}

/// Marks a gc as running for `gc_running` until dropped. Writers hold
/// the file only for a moment, so this waits for them.
pub fn hold_gc_active(path: &Path) -> Result<File> {
    let file = open_lock_file(path).with_context(|| format!("cannot open {}", path.display()))?;
    while !try_lock_exclusive(&file).with_context(|| format!("cannot lock {}", path.display()))? {
        crate::signals::check()?;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(file)
}

/// The writers registered in `dir` that are alive (their file is locked).
/// Unlocked registrations are dead writers' (killed): removed, and so are
/// half-made ones (dot-names) older than `stale_before`. A writer that is
/// registering now is left out: it asks about blocks only after this call.
pub fn live_writers(dir: &Path, stale_before: SystemTime) -> Result<Vec<Writer>> {
    let mut out = Vec::new();
    for (name, _) in super::local::list_dir(dir)? {
        let path = dir.join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // finished meanwhile
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        let since = file.metadata()?.modified()?;
        let uses_index = name.ends_with(USES_INDEX);
        let held = match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => true,
            Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        };
        let registering = name.starts_with('.');
        if held && !registering {
            let pid = name
                .split('.')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            out.push(Writer {
                pid,
                since,
                uses_index,
            });
        } else if !held && (!registering || since < stale_before) {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writers_never_wait_and_gc_excludes_gc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let w = dir.path().join("writers");
        let gc = StoreLock::acquire(&p, false).unwrap();
        // A writer registers while a gc runs.
        let (a, since) = StoreLock::register_writer(&w).unwrap();
        let (mut b, _) = StoreLock::register_writer(&w).unwrap();
        // A writer that found a gc running drops its index mark.
        let active = dir.path().join("gc-active");
        assert!(!gc_running(&active));
        let held = hold_gc_active(&active).unwrap();
        assert!(gc_running(&active));
        drop(held);
        assert!(!gc_running(&active));
        b.drop_index_mark().unwrap();
        let err = StoreLock::acquire(&p, false).unwrap_err();
        assert!(err.to_string().contains("another gc"), "{err}");
        drop(gc);
        let _gc = StoreLock::acquire(&p, false).unwrap();
        let now = SystemTime::now() + Duration::from_secs(10);
        let live = live_writers(&w, now).unwrap();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|x| x.pid == std::process::id()));
        assert!(live.iter().any(|x| x.since == since));
        assert_eq!(live.iter().filter(|x| x.uses_index).count(), 1);
        drop(a);
        assert_eq!(live_writers(&w, now).unwrap().len(), 1);
        // A killed writer's registration (nobody holds it) goes at once; a
        // half-made one only when old (its writer may be about to lock it).
        let (dead, half) = (w.join("999999.0"), w.join(".999999.1"));
        File::create(&dead).unwrap();
        File::create(&half).unwrap();
        assert_eq!(live_writers(&w, SystemTime::UNIX_EPOCH).unwrap().len(), 1);
        assert!(!dead.exists() && half.exists());
        assert_eq!(live_writers(&w, now).unwrap().len(), 1);
        assert!(!half.exists());
    }
}
