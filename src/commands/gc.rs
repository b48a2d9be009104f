//! `gc [--dry-run]`: mark every block any manifest (dated or Python-era)
//! references, sweep the rest (`store::gc`: beside running dumps and
//! imports, neither waiting for the other). Stops before deleting anything
//! if a manifest fails to parse.

use super::open_store;
use crate::output;
use crate::store::{LiveBlocks, Store};
use anyhow::Result;
use indicatif::HumanBytes;
use serde::Serialize;
use std::path::Path;

/// What a gc found and did (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub manifests: usize,
    pub live_blocks: u64,
    /// Unreferenced blocks removed (or, with --dry-run, that would be).
    pub removed_blocks: u64,
    pub removed_bytes: u64,
    pub removed_temp_files: u64,
    /// Unreferenced blocks kept because they are newer than this gc's cutoff
    /// (a running dump may need them; the next gc takes them).
    pub young_blocks: u64,
    /// Dumps and imports running when this gc started.
    pub running_writers: usize,
    /// Blocks an interrupted gc had set aside, put back.
    pub recovered_blocks: u64,
    /// S3 stores: packs rewritten with their live blocks only, packs
    /// deleted, and packs kept for a later gc because a dump was running.
    pub packs_rewritten: u64,
    pub packs_deleted: u64,
    pub packs_deferred: u64,
    /// Live blocks that failed their check while being copied (their pack stays).
    pub damaged_blocks: u64,
    /// Unreferenced blocks kept for the next gc: a dump or import running
    /// since before this gc may have been told they are present.
    pub deferred_blocks: u64,
    pub deferred_bytes: u64,
}

impl GcReport {
    pub fn print(&self) -> std::io::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        crate::outln!(
            "gc: {} manifests, {} live blocks; {verb} {} unreferenced blocks ({}) and {} temp files",
            self.manifests,
            self.live_blocks,
            self.removed_blocks,
            HumanBytes(self.removed_bytes),
            self.removed_temp_files
        )?;
        if self.packs_deleted + self.packs_deferred > 0 {
            crate::outln!(
                "gc: {} packs rewritten, {} {}",
                self.packs_rewritten,
                self.packs_deleted,
                if self.dry_run {
                    "would be deleted"
                } else {
                    "deleted"
                }
            )?;
        }
        if self.packs_deferred > 0 {
            crate::outln!(
                "gc: kept {} packs for the next gc: {} dump(s) or import(s) running (they may use their blocks)",
                self.packs_deferred,
                self.running_writers
            )?;
        }
        if self.deferred_blocks > 0 {
            crate::outln!(
                "gc: kept {} unreferenced blocks ({}) for the next gc: {} dump(s) or import(s) running may use them",
                self.deferred_blocks,
                HumanBytes(self.deferred_bytes),
                self.running_writers
            )?;
        }
        if self.damaged_blocks > 0 {
            crate::outln!(
                "gc: {} live blocks failed their check and were not copied (their packs stay; run `diskdump verify`)",
                self.damaged_blocks
            )?;
        }
        if self.young_blocks > 0 {
            crate::outln!(
                "gc: kept {} unreferenced blocks written or used in the last minute \
                 (the next gc removes them if still unreferenced)",
                self.young_blocks
            )?;
        }
        Ok(())
    }
}

pub fn run(store_dir: &Path, dry_run: bool, wait: bool) -> Result<u8> {
    let store = open_store(store_dir)?;
    let report = collect(store.as_ref(), dry_run, wait)?;
    if output::json() {
        output::emit(&report)?;
    } else {
        report.print()?;
    }
    Ok(0)
}

pub fn collect(store: &dyn Store, dry_run: bool, wait: bool) -> Result<GcReport> {
    let live = || -> Result<LiveBlocks> {
        let mut live = LiveBlocks::default();
        for e in &store.manifests()? {
            match store.read_manifest(e) {
                Ok(m) => live.blocks.extend(m.blocks),
                // Removed since the listing (forget, delete): its blocks are garbage.
                Err(err) if is_not_found(&err) => continue,
                Err(err) => return Err(err.context(
                    "gc stopped before deleting anything: every manifest must parse to know which blocks are live",
                )),
            }
            live.manifests += 1;
        }
        Ok(live)
    };
    let mut manifests = 0;
    let st = store.collect_garbage(
        &mut || {
            let l = live()?;
            manifests = l.manifests;
            Ok(l)
        },
        dry_run,
        wait,
    )?;
    Ok(GcReport {
        dry_run,
        manifests,
        live_blocks: st.live_blocks,
        removed_blocks: st.removed_blocks,
        removed_bytes: st.removed_bytes,
        removed_temp_files: st.removed_temps,
        young_blocks: st.young_blocks,
        running_writers: st.running_writers,
        recovered_blocks: st.recovered,
        packs_rewritten: st.packs_rewritten,
        packs_deleted: st.packs_deleted,
        packs_deferred: st.packs_deferred,
        damaged_blocks: st.damaged_blocks,
        deferred_blocks: st.deferred_blocks,
        deferred_bytes: st.deferred_bytes,
    })
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}
