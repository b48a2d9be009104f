//! `init [DIR] [--block-size N]`: create a store. Nothing else creates one,
//! so a mistyped `--store` is an error instead of a new store.

use crate::output;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Created {
    store: String,
    block_size: usize,
    /// The group the store is shared with (numeric id), or null: private.
    group: Option<u32>,
}

pub fn run(dir: &Path, block_size: Option<usize>, group: Option<&str>) -> Result<u8> {
    let group = group
        .map(crate::store::resolve_group)
        .transpose()
        .map_err(super::as_usage)?;
    // A store gets a directory of its own: init into a full one is a typo.
    if let Ok(mut rd) = std::fs::read_dir(dir) {
        if rd.next().is_some() && !dir.join(".blockstore").exists() {
            return Err(super::usage(format!(
                "{} is not empty; a store needs a directory of its own",
                dir.display()
            )));
        }
    }
    let bs = block_size.unwrap_or(diskdump_agent::DEFAULT_BLOCK_SIZE);
    let store = crate::store::create(dir, bs, group)?;
    let report = Created {
        store: store.describe(),
        block_size: store.block_size(),
        group: store.group(),
    };
    if output::json() {
        output::emit(&report)?;
    } else {
        let access = match report.group {
            None => "private".to_string(),
            Some(g) => format!("shared read-only with group {g}"),
        };
        crate::outln!(
            "created store {} (block size {}, {access})",
            report.store,
            report.block_size
        )?;
    }
    Ok(0)
}
