//! `info MANIFEST`: one dump's header, block counts, stored and shared bytes,
//! and any blocks missing from the store.

use super::{open_store, resolve};
use crate::digest::Digest;
use anyhow::Result;
use indicatif::HumanBytes;
use std::collections::HashSet;
use std::path::Path;

pub fn run(store_dir: &Path, arg: &str) -> Result<u8> {
    let store = open_store(store_dir)?;
    let r = resolve(&*store, arg)?;
    let m = &r.manifest;
    let zero = m.zero_digest();
    let zero_blocks = (0..m.blocks.len())
        .filter(|&i| m.blocks[i] == zero && m.block_len(i) == m.block_size)
        .count();
    let unique: HashSet<Digest> = m.blocks.iter().copied().filter(|d| *d != zero).collect();
    // Blocks any other dump references, to tell what deleting this one frees.
    let mut others = HashSet::new();
    for e in store.manifests()? {
        if Some(&e) != r.entry.as_ref() {
            if let Ok(o) = store.read_manifest(&e) {
                others.extend(o.blocks.into_iter().filter(|d| unique.contains(d)));
            }
        }
    }
    let (mut stored, mut shared, mut missing) = (0u64, 0u64, Vec::new());
    for d in &unique {
        match store.stored_size(d)? {
            Some(n) => {
                stored += n;
                if others.contains(d) {
                    shared += n;
                }
            }
            None => missing.push(*d),
        }
    }
    if crate::output::json() {
        let missing: Vec<_> = missing
            .iter()
            .map(|d| {
                let idx = m
                    .blocks
                    .iter()
                    .position(|b| b == d)
                    .expect("from this manifest");
                serde_json::json!({
                    "hash": d.to_hex(),
                    "block": idx,
                    "offset": idx as u64 * m.block_size as u64,
                })
            })
            .collect();
        crate::output::emit(&serde_json::json!({
            "path": r.label,
            "source": m.source,
            "date": m.date,
            "size": m.total_size,
            "block_size": m.block_size,
            "blocks": m.blocks.len(),
            "unique_blocks": unique.len(),
            "zero_blocks": zero_blocks,
            "new_blocks": m.new_blocks,
            "stored_bytes": stored,
            "shared_bytes": shared,
            "missing_blocks": missing,
        }))?;
        return Ok(u8::from(!missing.is_empty()));
    }
    crate::outln!("Manifest:      {}", r.label)?;
    crate::outln!("Source:        {}", m.source)?;
    crate::outln!("Date:          {}", m.date)?;
    crate::outln!(
        "Size:          {} ({})",
        m.total_size,
        HumanBytes(m.total_size)
    )?;
    crate::outln!("Block size:    {}", m.block_size)?;
    crate::outln!(
        "Blocks:        {} ({} unique non-zero, {} zero)",
        m.blocks.len(),
        unique.len(),
        zero_blocks
    )?;
    crate::outln!(
        "Stored:        {} ({}) compressed",
        stored,
        HumanBytes(stored)
    )?;
    crate::outln!(
        "Shared:        {} ({}) also used by other dumps",
        shared,
        HumanBytes(shared)
    )?;
    if missing.is_empty() {
        crate::outln!("Missing:       0 blocks")?;
        Ok(0)
    } else {
        crate::outln!("Missing:       {} blocks", missing.len())?;
        for d in missing.iter().take(20) {
            let idx = m
                .blocks
                .iter()
                .position(|b| b == d)
                .expect("from this manifest");
            crate::outln!(
                "  missing block {d} (block {idx}, offset {})",
                idx as u64 * m.block_size as u64
            )?;
        }
        Ok(1)
    }
}
