//! `init [DIR] [--block-size N]`: create a store. Nothing else creates one,
//! so a mistyped `--store` is an error instead of a new store.

use crate::output;
use crate::store::{LocalStore, Store};
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Created {
    store: String,
    block_size: usize,
}

pub fn run(dir: &Path, block_size: Option<usize>) -> Result<u8> {
    let store = LocalStore::create(dir, block_size)?;
    let report = Created {
        store: store.root().display().to_string(),
        block_size: store.block_size(),
    };
    if output::json() {
        output::emit(&report)?;
    } else {
        println!(
            "created store {} (block size {})",
            report.store, report.block_size
        );
    }
    Ok(0)
}
