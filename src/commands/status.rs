//! `status`: the store's size, dedup ratio and dumps.

use super::open_store;
use crate::store::{Store, WalkItem};
use anyhow::Result;
use indicatif::HumanBytes;
use std::path::Path;

pub fn run(store_dir: &Path) -> Result<u8> {
    let store = open_store(store_dir)?;
    if let Some(w) = store.mode_warning() {
        eprintln!("diskdump: {w}");
    }
    let (mut blocks, mut stored, mut stray) = (0u64, 0u64, 0u64);
    store.walk(&mut |item| {
        match item {
            WalkItem::Block(_, n) => {
                blocks += 1;
                stored += n;
            }
            WalkItem::Stray(_) => stray += 1,
        }
        Ok(())
    })?;
    let entries = store.manifests()?;
    let mut rows = Vec::new();
    let (mut logical, mut bad) = (0u64, 0usize);
    for e in &entries {
        match store.read_manifest(e) {
            Ok(m) => {
                logical += m.total_size;
                rows.push((
                    m.date.clone(),
                    e.rel.clone(),
                    HumanBytes(m.total_size).to_string(),
                ));
            }
            Err(err) => {
                bad += 1;
                rows.push((String::new(), e.rel.clone(), format!("UNREADABLE: {err:#}")));
            }
        }
    }
    crate::outln!("Store:         {}", store.root().display())?;
    crate::outln!("Block size:    {}", store.block_size())?;
    match store.group() {
        None => crate::outln!("Access:        private (0700/0600)")?,
        Some(g) => crate::outln!("Access:        shared with group {g} (0750/0640)")?,
    }
    crate::outln!("Blocks:        {blocks} ({} stored)", HumanBytes(stored))?;
    if stray > 0 {
        crate::outln!("Stray files:   {stray} (temp files of interrupted writes, which `diskdump gc` removes, or damaged blocks moved aside)")?;
    }
    crate::outln!(
        "Dumps:         {} ({} logical)",
        entries.len(),
        HumanBytes(logical)
    )?;
    let ratio = if stored > 0 {
        logical as f64 / stored as f64
    } else {
        0.0
    };
    crate::outln!("Dedup ratio:   {ratio:.2}x (logical bytes of all dumps / stored bytes)")?;
    if !rows.is_empty() {
        crate::outln!()?;
        crate::outln!("{:<33} {:>11}  MANIFEST", "DATE", "SIZE")?;
        for (date, rel, size) in rows {
            crate::outln!("{date:<33} {size:>11}  {rel}")?;
        }
    }
    Ok(u8::from(bad > 0))
}
