//! `status`: the store's size, dedup ratio and dumps.

use super::open_store;
use crate::store::{Store, WalkItem};
use anyhow::Result;
use indicatif::HumanBytes;
use std::path::Path;

pub fn run(store_dir: &Path) -> Result<u8> {
    let store = open_store(store_dir)?;
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
    println!("Store:         {}", store.root().display());
    println!("Block size:    {}", store.block_size());
    println!("Blocks:        {blocks} ({} stored)", HumanBytes(stored));
    if stray > 0 {
        println!("Stray files:   {stray} (interrupted writes; `diskdump gc` removes them)");
    }
    println!(
        "Dumps:         {} ({} logical)",
        entries.len(),
        HumanBytes(logical)
    );
    let ratio = if stored > 0 {
        logical as f64 / stored as f64
    } else {
        0.0
    };
    println!("Dedup ratio:   {ratio:.2}x (logical bytes of all dumps / stored bytes)");
    if !rows.is_empty() {
        println!();
        println!("{:<33} {:>11}  MANIFEST", "DATE", "SIZE");
        for (date, rel, size) in rows {
            println!("{date:<33} {size:>11}  {rel}");
        }
    }
    Ok(u8::from(bad > 0))
}
