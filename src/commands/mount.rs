//! `mount STORE MOUNTPOINT`: every dump as a read-only image file (FUSE).

use anyhow::{bail, Result};
use std::path::PathBuf;

pub struct MountOptions {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub cache_size: usize,
    pub allow_other: bool,
    pub threads: usize,
}

pub fn run(_opts: &MountOptions) -> Result<u8> {
    bail!("mount is not built yet")
}
