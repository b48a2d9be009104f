//! `gc [--dry-run]`: mark every block any manifest (dated or Python-era)
//! references, sweep the rest. Holds the store lock exclusively, so no dump
//! or import is running; stops before deleting anything if a manifest fails
//! to parse.

use super::open_store;
use crate::digest::Digest;
use crate::output;
use crate::store::{LocalStore, LockKind, Store, WalkItem};
use anyhow::{Context, Result};
use indicatif::HumanBytes;
use serde::Serialize;
use std::collections::HashSet;
use std::fs;
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
        )
    }
}

pub fn run(store_dir: &Path, dry_run: bool, wait: bool) -> Result<u8> {
    let store = open_store(store_dir)?;
    let report = collect(&store, dry_run, wait)?;
    if output::json() {
        output::emit(&report)?;
    } else {
        report.print()?;
    }
    Ok(0)
}

pub fn collect(store: &LocalStore, dry_run: bool, wait: bool) -> Result<GcReport> {
    let _lock = store.lock(LockKind::Exclusive, wait)?;
    let mut live: HashSet<Digest> = HashSet::new();
    let entries = store.manifests()?;
    for e in &entries {
        let m = store
            .read_manifest(e)
            .context("gc stopped before deleting anything: every manifest must parse to know which blocks are live")?;
        live.extend(m.blocks);
    }
    let (mut garbage, mut temps, mut kept) = (Vec::new(), Vec::new(), 0u64);
    store.walk(&mut |item| {
        match item {
            WalkItem::Block(d, n) if !live.contains(&d) => garbage.push((d, n)),
            WalkItem::Block(..) => kept += 1,
            // Nothing writes while we hold the lock: any temp file is left over.
            WalkItem::Stray(p) if p.contains(".tmp.") => temps.push(p),
            WalkItem::Stray(_) => {}
        }
        Ok(())
    })?;
    // Manifests a killed writer never renamed into place.
    temps.extend(store.manifest_temps()?);
    let bytes: u64 = garbage.iter().map(|(_, n)| n).sum();
    if !dry_run {
        for (d, _) in &garbage {
            // Stopping between two removals leaves a valid store.
            crate::signals::check()?;
            store
                .remove(d)
                .with_context(|| format!("cannot remove block {d}"))?;
        }
        for p in &temps {
            crate::signals::check()?;
            fs::remove_file(store.root().join(p)).with_context(|| format!("cannot remove {p}"))?;
        }
        store.tidy()?;
    }
    Ok(GcReport {
        dry_run,
        manifests: entries.len(),
        live_blocks: kept,
        removed_blocks: garbage.len() as u64,
        removed_bytes: bytes,
        removed_temp_files: temps.len() as u64,
    })
}
