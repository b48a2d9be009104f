//! `status`: the store's size, dedup ratio and dumps.

use super::open_store;
use crate::store::WalkItem;
use anyhow::Result;
use indicatif::HumanBytes;
use std::path::Path;

pub fn run(store_dir: &Path) -> Result<u8> {
    let store = open_store(store_dir)?;
    for w in store.warnings() {
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
                rows.push((m.date.clone(), e.rel.clone(), Ok(m.total_size)));
            }
            Err(err) => {
                bad += 1;
                rows.push((String::new(), e.rel.clone(), Err(format!("{err:#}"))));
            }
        }
    }
    let ratio = if stored > 0 {
        logical as f64 / stored as f64
    } else {
        0.0
    };
    let index = store.index_summary();
    if crate::output::json() {
        let dumps: Vec<_> = rows
            .iter()
            .map(|(date, path, size)| match size {
                Ok(n) => serde_json::json!({"date": date, "path": path, "size": n}),
                Err(e) => serde_json::json!({"path": path, "error": e}),
            })
            .collect();
        crate::output::emit(&serde_json::json!({
            "store": store.describe(),
            "block_size": store.block_size(),
            "group": store.group(),
            "blocks": blocks,
            "stored_bytes": stored,
            "stray_files": stray,
            "dumps": entries.len(),
            "unreadable_dumps": bad,
            "logical_bytes": logical,
            "dedup_ratio": ratio,
            "index_blocks": index.map(|i| i.0),
            "index_files": index.map(|i| i.1),
            "manifests": dumps,
        }))?;
        return Ok(u8::from(bad > 0));
    }
    crate::outln!("Store:         {}", store.describe())?;
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
    crate::outln!("Dedup ratio:   {ratio:.2}x (logical bytes of all dumps / stored bytes)")?;
    if let Some((n, files)) = index {
        crate::outln!(
            "Block index:   {n} entries in {files} files (dumps and imports answer \"present?\" from it)"
        )?;
    }
    if !rows.is_empty() {
        crate::outln!()?;
        crate::outln!("{:<33} {:>11}  MANIFEST", "DATE", "SIZE")?;
        for (date, rel, size) in rows {
            let size = match size {
                Ok(n) => HumanBytes(n).to_string(),
                Err(e) => format!("UNREADABLE: {e}"),
            };
            crate::outln!("{date:<33} {size:>11}  {rel}")?;
        }
    }
    Ok(u8::from(bad > 0))
}
