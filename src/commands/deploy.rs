//! `deploy HOST [--sudo]`: put the agent on a host ahead of time. With `--sudo` it is
//! installed root-owned at a fixed path, for a sudoers rule that names exactly that file.

use crate::agent_bin::{agent_hash, AGENT};
use crate::{deploy, transport};
use anyhow::Result;
use std::time::Duration;

pub fn run(dest: &str, sudo: bool, how: &transport::Options, idle_timeout: u64) -> Result<u8> {
    let remote = transport::connect(dest, how)?;
    let idle = Duration::from_secs(idle_timeout);
    if sudo {
        let line = deploy::install_system(&*remote, AGENT, &agent_hash(), idle)?;
        crate::outln!(
            "{}: installed the agent as {} (owned by root)",
            remote.label(),
            deploy::SYSTEM_AGENT
        )?;
        crate::outln!("To let the login user run exactly this file as root, add with visudo:")?;
        crate::outln!("    {line}")?;
        crate::outln!("Re-run `diskdump deploy {dest} --sudo` after upgrading diskdump.")?;
    } else {
        deploy::upload(&*remote, AGENT, &agent_hash(), idle)?;
        crate::outln!(
            "{}: uploaded the agent into ~/.cache/diskdump",
            remote.label()
        )?;
    }
    Ok(0)
}
