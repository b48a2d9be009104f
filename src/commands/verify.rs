//! `verify [MANIFEST...]`: decompress and rehash every block (in parallel),
//! check every manifest parses and has all its blocks; report each problem.

use super::{loader_threads, open_store, resolve};
use crate::digest::Digest;
use crate::image::load_block;
use crate::manifest::Manifest;
use crate::progress;
use crate::store::{Store, WalkItem};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub fn run(store_dir: &Path, args: &[String], repair: bool) -> Result<u8> {
    let store = open_store(store_dir)?;
    for w in store.warnings() {
        eprintln!("diskdump: {w}");
    }
    // Left-overs of an interrupted run are not damage: notes, not problems.
    let mut notes = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let json = crate::output::json();
    let mut report = |msg: String| {
        if !json {
            // A closed stdout fails the summary line below.
            let _ = crate::outln!("PROBLEM: {msg}");
        }
        problems.push(msg);
    };
    // (label, manifest) of every dump to check the block list of.
    let mut dumps: Vec<(String, Manifest)> = Vec::new();
    let mut blocks: Vec<(Digest, u64)> = Vec::new();
    if args.is_empty() {
        store.walk(&mut |item| {
            match item {
                WalkItem::Block(d, n) => blocks.push((d, n)),
                WalkItem::Stray(p) if p.contains(".tmp.") => notes.push(format!(
                    "{p}: temp file of an interrupted write (gc removes it)"
                )),
                WalkItem::Stray(p) if p.ends_with(".lz4.bad") => notes.push(format!(
                    "{p}: a damaged block moved aside (kept for inspection; delete it when done)"
                )),
                WalkItem::Stray(p) if p.ends_with(".lz4.gc") => notes.push(format!(
                    "{p}: set aside by an interrupted gc (the next gc puts it back or removes it)"
                )),
                WalkItem::Stray(p) => report(format!("{p}: not a block file")),
            }
            Ok(())
        })?;
        for p in store.leftovers()? {
            notes.push(format!(
                "{p}: unfinished manifest of an interrupted write (gc removes it)"
            ));
        }
        for e in store.manifests()? {
            match store.read_manifest(&e) {
                Ok(m) => dumps.push((e.rel, m)),
                Err(err) => report(format!("unreadable manifest: {err:#}")),
            }
        }
    } else {
        let mut seen = HashSet::new();
        for a in args {
            match resolve(store.as_ref(), a) {
                Ok(r) => {
                    for d in &r.manifest.blocks {
                        if seen.insert(*d) {
                            if let Some(n) = store.stored_size(d)? {
                                blocks.push((*d, n));
                            }
                        }
                    }
                    dumps.push((r.label, r.manifest));
                }
                Err(err) => report(format!("{err:#}")),
            }
        }
    }
    let present: HashSet<Digest> = blocks.iter().map(|(d, _)| *d).collect();
    for (label, m) in &dumps {
        check_manifest(label, m, &present, &mut report);
    }
    if args.is_empty() {
        for d in store.audit_index(&present, repair)? {
            report(format!(
                "the index of present blocks lists block {d}, which is not in the store \
                 (a dump would take it for stored){}",
                if repair {
                    ": taken out of the index"
                } else {
                    "; `verify --repair` takes it out"
                }
            ));
        }
    }
    let bad = check_blocks(store.as_ref(), &blocks);
    for (d, msg) in &bad {
        report(msg.clone());
        if repair {
            match store.quarantine(d) {
                Ok(p) => crate::say!(
                    "  moved aside to {p}; the next dump or import of this data stores it again"
                ),
                Err(e) => crate::say!("  cannot move it aside: {e}"),
            }
        }
    }
    crate::signals::check()?;
    if !json {
        for n in &notes {
            crate::outln!("note: {n}")?;
        }
    }
    let bytes: u64 = blocks.iter().map(|(_, n)| n).sum();
    if json {
        crate::output::emit(&serde_json::json!({
            "blocks": blocks.len(),
            "stored_bytes": bytes,
            "manifests": dumps.len(),
            "ok": problems.is_empty(),
            "problems": problems,
            "notes": notes,
        }))?;
        return Ok(u8::from(!problems.is_empty()));
    }
    crate::outln!(
        "verified {} blocks ({} stored) and {} manifests: {}",
        blocks.len(),
        indicatif::HumanBytes(bytes),
        dumps.len(),
        if problems.is_empty() {
            "no problems".to_string()
        } else {
            format!("{} problems", problems.len())
        }
    )?;
    Ok(u8::from(!problems.is_empty()))
}

/// Every block a manifest names must be in the store.
fn check_manifest(
    label: &str,
    m: &Manifest,
    present: &HashSet<Digest>,
    report: &mut impl FnMut(String),
) {
    let mut missing: HashMap<Digest, usize> = HashMap::new();
    for (i, d) in m.blocks.iter().enumerate() {
        if !present.contains(d) {
            missing.entry(*d).or_insert(i);
        }
    }
    let mut first: Vec<(usize, Digest)> = missing.into_iter().map(|(d, i)| (i, d)).collect();
    first.sort();
    for (i, d) in first.iter().take(10) {
        report(format!(
            "{label}: block {i} (offset {}) {d} is missing",
            *i as u64 * m.block_size as u64
        ));
    }
    if first.len() > 10 {
        report(format!("{label}: {} more missing blocks", first.len() - 10));
    }
}

/// Loads every block on all cores, with more loads in flight than cores (see `loader_threads`); returns each bad block with a message.
fn check_blocks(store: &dyn Store, blocks: &[(Digest, u64)]) -> Vec<(Digest, String)> {
    let total: u64 = blocks.iter().map(|(_, n)| n).sum();
    let bar = progress::bytes_bar(total, "verify");
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..loader_threads() {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((d, n)) = blocks.get(i) else { return };
                if crate::signals::received().is_some() {
                    return;
                }
                if let Err(e) = load_block(store, d) {
                    bad.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((*d, format!("{}: {e}", store.block_location(d))));
                }
                bar.inc(*n);
            });
        }
    });
    bar.finish_and_clear();
    let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    bad.sort();
    bad
}
