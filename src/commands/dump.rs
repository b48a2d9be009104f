//! `dump`: parallel targets over SSH (wired to the agent and receiver).

use crate::cli::{DumpArgs, TargetSpec};
use anyhow::{bail, Result};
use std::path::Path;

pub fn run(_store_dir: &Path, _targets: Vec<TargetSpec>, _args: DumpArgs) -> Result<u8> {
    bail!("dump over SSH is not built yet")
}
