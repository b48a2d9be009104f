//! Shell completions and man pages, generated from the CLI definition (so
//! they never drift from it): `completions bash|zsh|fish` to stdout,
//! `manpages DIR` writes diskdump.1 and diskdump-<command>.1.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

pub fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut cmd = crate::cli::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "diskdump", &mut out);
    Ok(0)
}

pub fn manpages(dir: &Path) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = crate::cli::Cli::command();
    let mut written = Vec::new();
    let mut write = |name: &'static str, c: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.name(name)).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Leaked once per page: clap names are 'static; this runs once.
        let name: &'static str = format!("diskdump-{}", sub.get_name()).leak();
        write(name, sub.clone())?;
    }
    write("diskdump", cmd)?;
    for p in &written {
        crate::outln!("{}", p.display())?;
    }
    Ok(0)
}
