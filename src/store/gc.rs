//! The sweep of a gc, beside running dumps and imports (no lock between
//! them). The guarantee: a block a running writer was told is present, or
//! wrote, is never deleted. How:
//!
//! - Every writer registers before it asks about any block; its start time
//!   is its registration file's mtime (`lock::register_writer`).
//! - A writer counts a block as present only if the block's mtime is at
//!   least its start, refreshing it (`utimensat`) when older; new blocks are
//!   born with a fresh mtime.
//! - gc reads its own start T0 from a file it touches (the store
//!   filesystem's clock, the one all these mtimes come from), then the live
//!   writers, and deletes only blocks that no manifest names and whose mtime
//!   is before `min(T0, oldest live writer's start) - GRACE`. A writer that
//!   registered after gc listed the writers touches only after T0.
//! - Deleting is two-phase, so a refresh racing the decision wins: each
//!   doomed block is renamed to `<hash>.lz4.gc` (a writer then sees it
//!   missing and stores it again; readers still find it), and after
//!   `SETTLE` each is checked again: refreshed since → renamed back, else
//!   unlinked. A gc killed half-way leaves `.gc` files; the next gc puts
//!   them back before anything else.
//! - Writers that answer "present" from the index (`store::index`) touch
//!   nothing, so while one runs gc deletes nothing: it takes `gc-active`
//!   before it lists the writers, and a writer registers before it tests
//!   `gc-active` — either the writer sees the gc (and checks blocks on disk
//!   as above) or the gc sees the writer (and defers to the next gc).
//!   Blocks leave the index (a `del` file) before they are set aside.

use super::{LocalStore, Store, WalkItem};
use crate::digest::Digest;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Margin for the clock: all the times compared come from the store
/// filesystem's clock, but that clock may be stepped back (NTP) between a
/// gc's start and a writer's registration. Unreferenced blocks younger than
/// this are left for the next gc.
pub const GRACE: Duration = Duration::from_secs(60);
/// Time between renaming doomed blocks aside and deleting them: longer than
/// any refresh that resolved a block's path before the rename takes.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Clone)]
pub struct SweepStats {
    pub live_blocks: u64,
    /// Unreferenced but too young to delete (a writer may need them).
    pub young_blocks: u64,
    pub removed_blocks: u64,
    pub removed_bytes: u64,
    pub removed_temps: u64,
    /// `.gc` files an interrupted gc left, put back.
    pub recovered: u64,
    pub running_writers: usize,
    /// Object stores: packs rewritten without their dead blocks, packs
    /// deleted, and packs left for a later gc because a writer ran.
    pub packs_rewritten: u64,
    pub packs_deleted: u64,
    pub packs_deferred: u64,
    /// Live blocks that failed their check while being copied (their pack stays).
    pub damaged_blocks: u64,
    /// Unreferenced blocks kept because a running writer may have been
    /// told they are present by the index (see `store::index`).
    pub deferred_blocks: u64,
    pub deferred_bytes: u64,
}

fn mtime(p: &Path) -> std::io::Result<Option<SystemTime>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m.modified()?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `<hash>.lz4.tmp.<pid>.<n>` or `<name>.manifest.tmp.<pid>.<n>` → pid.
fn temp_pid(p: &str) -> Option<u32> {
    let (_, rest) = p.rsplit_once(".tmp.")?;
    rest.split('.').next()?.parse().ok()
}

impl LocalStore {
    /// The filesystem's "now": the mtime of a file we just touched.
    fn fs_now(&self) -> Result<SystemTime> {
        let p = self.blocks_dir().join("gc-start");
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .with_context(|| format!("cannot write {}", p.display()))?;
        // UTIME_NOW: the filesystem's clock, which also stamps blocks.
        let times = [libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        }; 2];
        // SAFETY: futimens on an open descriptor with a two-element array.
        if unsafe { libc::futimens(std::os::fd::AsRawFd::as_raw_fd(&f), times.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot touch {}", p.display()));
        }
        // Re-read: the filesystem may round or use its own clock.
        Ok(fs::symlink_metadata(&p)?.modified()?)
    }

    /// Puts a `.gc` file back (or drops it when a new copy exists).
    fn restore_doomed(&self, d: &Digest) -> Result<()> {
        let (doomed, path) = (self.doomed_path(d), self.block_path(d));
        match super::local_rename_noreplace(&doomed, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                fs::remove_file(&doomed).or_else(ignore_missing)?;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot restore {}", doomed.display())),
        }
    }

    /// Sweeps what `live` does not name (see the module doc). The caller
    /// holds the gc lock and computed `live` after calling `gc_begin`.
    pub fn gc_sweep(
        &self,
        start: &GcStart,
        live: &HashSet<Digest>,
        dry_run: bool,
    ) -> Result<SweepStats> {
        let mut st = SweepStats {
            running_writers: start.writer_pids.len(),
            ..SweepStats::default()
        };
        let (mut candidates, mut temps, mut leftovers) = (Vec::new(), Vec::new(), Vec::new());
        self.walk(&mut |item| {
            match item {
                WalkItem::Block(d, n) if !live.contains(&d) => candidates.push((d, n)),
                WalkItem::Block(..) => st.live_blocks += 1,
                WalkItem::Stray(p) if p.ends_with(".lz4.gc") => leftovers.push(p),
                WalkItem::Stray(p) if p.contains(".tmp.") => temps.push(p),
                WalkItem::Stray(_) => {}
            }
            Ok(())
        })?;
        temps.extend(self.manifest_temps()?);
        for p in &leftovers {
            let hex = p
                .rsplit('/')
                .next()
                .unwrap_or("")
                .trim_end_matches(".lz4.gc");
            if let Some(d) = Digest::from_hex(hex) {
                if !dry_run {
                    self.restore_doomed(&d)?;
                }
                st.recovered += 1;
            }
        }
        // A writer that answers from the index may rely on any of them.
        if start.index_writers > 0 {
            st.deferred_blocks = candidates.len() as u64;
            st.deferred_bytes = candidates.iter().map(|c| c.1).sum();
            candidates.clear();
        }
        let mut old = Vec::new();
        for (d, n) in candidates {
            crate::signals::check()?;
            match mtime(&self.block_path(&d))? {
                None => continue,
                Some(t) if t >= start.cutoff => st.young_blocks += 1,
                Some(_) if dry_run => {
                    st.removed_blocks += 1;
                    st.removed_bytes += n;
                }
                Some(_) => old.push((d, n)),
            }
        }
        // The index stops answering for them before any goes.
        let digests: Vec<Digest> = old.iter().map(|x| x.0).collect();
        self.index_remove(&digests)
            .context("cannot update the block index")?;
        // Phase 1: old unreferenced blocks are set aside.
        let mut doomed = Vec::new();
        for (d, n) in old {
            match fs::rename(self.block_path(&d), self.doomed_path(&d)) {
                Ok(()) => doomed.push((d, n)),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot set aside block {d}")),
            }
        }
        // Phase 2: deleted unless a writer refreshed it meanwhile.
        if !doomed.is_empty() {
            std::thread::sleep(SETTLE);
        }
        for (d, n) in doomed {
            crate::signals::check()?;
            match mtime(&self.doomed_path(&d))? {
                Some(t) if t < start.cutoff => {
                    fs::remove_file(self.doomed_path(&d))
                        .or_else(ignore_missing)
                        .with_context(|| format!("cannot remove block {d}"))?;
                    st.removed_blocks += 1;
                    st.removed_bytes += n;
                }
                Some(_) => {
                    self.restore_doomed(&d)?;
                    st.young_blocks += 1;
                }
                None => {}
            }
        }
        // Temp files of writers that are gone: a live writer's pid is
        // registered, and one that registered since made its temps after t0.
        for p in temps {
            let alive = temp_pid(&p).is_some_and(|pid| start.writer_pids.contains(&pid));
            let path = self.root().join(&p);
            if alive || mtime(&path)?.is_none_or(|t| t >= start.t0) {
                continue;
            }
            st.removed_temps += 1;
            if !dry_run {
                crate::signals::check()?;
                fs::remove_file(&path)
                    .or_else(ignore_missing)
                    .with_context(|| format!("cannot remove {p}"))?;
            }
        }
        if !dry_run {
            self.tidy()?;
        }
        Ok(st)
    }

    /// What a gc must know before it reads the manifests: its cutoff (see
    /// the module doc) and the live writers' pids.
    pub fn gc_begin(&self) -> Result<GcStart> {
        let t0 = self.fs_now()?;
        let writers = super::lock::live_writers(
            &self.blocks_dir().join(super::local::WRITERS),
            t0.checked_sub(GRACE).unwrap_or(t0),
        )?;
        let oldest = writers.iter().map(|w| w.since).min().unwrap_or(t0).min(t0);
        Ok(GcStart {
            t0,
            cutoff: oldest.checked_sub(GRACE).unwrap_or(SystemTime::UNIX_EPOCH),
            writer_pids: writers.iter().map(|w| w.pid).collect(),
            index_writers: writers.iter().filter(|w| w.uses_index).count(),
        })
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// A gc's view of the writers when it started.
#[derive(Debug, Clone)]
pub struct GcStart {
    /// When the gc started (the filesystem's clock).
    pub t0: SystemTime,
    /// Blocks with an mtime at or after this are kept.
    pub cutoff: SystemTime,
    pub writer_pids: HashSet<u32>,
    /// Live writers that may answer from the index: nothing is deleted.
    pub index_writers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_give_their_writers_pid() {
        assert_eq!(temp_pid("ab/cd/abcd.lz4.tmp.1234.7"), Some(1234));
        assert_eq!(temp_pid("2026/04/24/x.manifest.tmp.99.0"), Some(99));
        assert_eq!(temp_pid("ab/cd/abcd.lz4.bad"), None);
    }
}
