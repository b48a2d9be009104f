//! The crash rule (docs/DESIGN.md §1, "dirty markers"). Block files are renamed
//! into place without an fsync each (one `syncfs` before the manifest is far
//! cheaper), so a crash can leave a block file that exists but is empty or
//! partial. Every writing run (import, dump) therefore first creates
//! `.blockstore/dirty/<pid>.<nanos>`, fsynced and held under `flock` for the
//! whole run, and removes it after its final `syncfs`.
//!
//! A run that starts and finds a marker nobody holds (its run died before
//! syncing) checks, before it counts any block as present, every block
//! written since that marker was made (by modification time, through the
//! block directories' times), decoding and hashing each, and moves the
//! damaged ones aside; then it removes the marker. Starting runs take the
//! `dirty` directory's flock exclusively while they do this, so no run
//! counts an unchecked block as present.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Clock granularity and skew between a marker's and a block's timestamps.
const SLACK: Duration = Duration::from_secs(2);

pub const DIR: &str = "dirty";

/// This run's marker: removed (after a `syncfs`) when the run ends, kept if
/// the run dies, so the next one checks what it wrote.
pub struct DirtyMarker {
    path: PathBuf,
    _file: File,
}

impl DirtyMarker {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes `file`'s flock exclusively, polling so a signal ends the wait.
fn lock_waiting(file: &File) -> Result<()> {
    loop {
        match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                crate::signals::check()?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Markers whose run is gone (their flock is free), with their times; each
/// is returned locked, so no other starting run takes it too.
fn stale_markers(dir: &Path) -> Result<Vec<(PathBuf, SystemTime, File)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = e?.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // ended meanwhile
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => {
                let t = file.metadata()?.modified()?;
                out.push((path, t, file));
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {} // a live run
            Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }
    Ok(out)
}

/// What `begin` found of interrupted runs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Markers of interrupted runs, now removed.
    pub markers: usize,
    /// Blocks written since the oldest of them, all checked.
    pub checked: usize,
    /// Those found damaged and moved aside.
    pub damaged: Vec<String>,
}

/// Starts a writing run in the block area `blocks`: recovers from
/// interrupted runs (see the module doc) with `check_since`, which must check
/// every block written at or after the given time, then creates this run's
/// marker.
pub fn begin(
    blocks: &Path,
    check_since: &mut dyn FnMut(SystemTime) -> Result<(usize, Vec<String>)>,
) -> Result<(DirtyMarker, Recovery)> {
    let dir = blocks.join(DIR);
    match fs::create_dir(&dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot create {}", dir.display()))
        }
        _ => {}
    }
    let dir_file = File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    lock_waiting(&dir_file).with_context(|| format!("cannot lock {}", dir.display()))?;
    let stale = stale_markers(&dir)?;
    let mut rec = Recovery::default();
    if let Some(oldest) = stale.iter().map(|(_, t, _)| *t).min() {
        let since = oldest.checked_sub(SLACK).unwrap_or(SystemTime::UNIX_EPOCH);
        let (checked, damaged) = check_since(since)?;
        rec = Recovery {
            markers: stale.len(),
            checked,
            damaged,
        };
        for (path, _, _) in &stale {
            fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let path = dir.join(format!("{}.{nanos}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // The marker must be on disk before any block this run writes.
    let pid = std::process::id();
    let made = flock(&file, libc::LOCK_EX)
        .and_then(|_| writeln!(file, "a diskdump run writing blocks (pid {pid})"))
        .and_then(|_| file.sync_all())
        .and_then(|_| dir_file.sync_all());
    if let Err(e) = made {
        let _ = fs::remove_file(&path); // a full disk must not leave it behind
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok((DirtyMarker { path, _file: file }, rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_markers_are_left_alone_dead_ones_checked_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut calls = Vec::new();
        let mut check = |t: SystemTime| {
            calls.push(t);
            Ok((3, vec!["x".to_string()]))
        };
        let (live, rec) = begin(dir.path(), &mut check).unwrap();
        assert_eq!(rec, Recovery::default());
        // A second run while the first is alive: nothing to recover.
        let (second, rec) = begin(dir.path(), &mut check).unwrap();
        assert_eq!(rec.markers, 0);
        drop(second); // dropped without `end`: like a run killed by a signal 9
        assert!(dir.path().join(DIR).read_dir().unwrap().count() == 2);
        let (_third, rec) = begin(dir.path(), &mut check).unwrap();
        assert_eq!(rec.markers, 1);
        assert_eq!((rec.checked, rec.damaged.len()), (3, 1));
        assert_eq!(calls.len(), 1);
        assert!(live.path().exists(), "a live run's marker stays");
    }
}
