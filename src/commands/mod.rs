//! One file per command; each takes plain options and prints its own report.

pub mod catalog;
pub mod completions;
pub mod copy;
pub mod deploy;
pub mod diff;
pub mod dump;
pub mod forget;
pub mod gc;
pub mod import;
pub mod info;
pub mod init;
pub mod list;
pub mod mount;
pub mod restore;
pub mod status;
pub mod verify;

use crate::manifest::Manifest;
use crate::store::{ManifestEntry, Store};
use anyhow::{bail, Context, Result};
use std::path::{Component, Path};
use std::sync::Arc;

/// A manifest named on the command line, read and parsed.
pub struct Resolved {
    /// Its place in the store, if it is in the store.
    pub entry: Option<ManifestEntry>,
    /// What to call it in messages.
    pub label: String,
    pub manifest: Manifest,
}

/// Number of worker threads for hashing, compression and decompression.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Threads that load blocks ahead of a reader. A cold block costs a few
/// dependent disk reads (directories, inode, data) before any CPU work, so
/// more loads in flight than cores hide that latency: a cold restore of the
/// 2 GiB benchmark image took 6.3 s with 2 threads, 3.3 s with 8 to 16; a
/// cold `dd` through the mount ran at 594 MB/s with 8, 665 MB/s with 16.
pub fn loader_threads() -> usize {
    (cores() * 8).clamp(16, 64)
}

/// Finds a manifest as users type it: a path relative to the store (with or
/// without a leading `./`), an absolute path, a path relative to the current
/// directory (inside the store or not), or a dump name (its newest dump).
pub fn resolve(store: &dyn Store, arg: &str) -> Result<Resolved> {
    if arg.is_empty() || arg.chars().any(char::is_control) {
        return Err(usage(format!("invalid manifest or dump name {arg:?}")));
    }
    let p = Path::new(arg);
    // Relative to the store, if it stays inside it.
    if !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        let rel = p
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        for candidate in [rel.clone(), format!("{}{rel}", crate::store::LEGACY_PREFIX)] {
            if let Some(e) = store.find_manifest(&candidate)? {
                return read_entry(store, e);
            }
        }
    }
    // A file by its path (absolute or from the current directory): the
    // store's own entry if it is inside the store, else read as it is. Only
    // for what looks like a path: a file in the current directory must not
    // shadow a dump name.
    let path_like = p.is_absolute() || arg.contains('/') || arg.ends_with(".manifest");
    if path_like && p.is_file() {
        let real = p
            .canonicalize()
            .with_context(|| format!("cannot resolve {arg}"))?;
        if let Some(root) = store.local_root() {
            let root = root
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", root.display()))?;
            if let Ok(rel) = real.strip_prefix(&root) {
                if let Some(e) = store.find_manifest(&rel.to_string_lossy())? {
                    return read_entry(store, e);
                }
            }
        }
        let manifest = crate::store::read_manifest_file(&real, arg)?;
        return Ok(Resolved {
            entry: None,
            label: arg.to_string(),
            manifest,
        });
    }
    let newest = store
        .manifests()?
        .into_iter()
        .filter(|e| e.name == arg || e.base_name() == arg)
        .max_by(|a, b| a.newness().cmp(&b.newness()));
    match newest {
        Some(e) => read_entry(store, e),
        None if arg.ends_with(".manifest") || arg.contains('/') => bail!(
            "no manifest {arg} in store {} or from the current directory",
            store.describe()
        ),
        None => bail!(
            "no dump named {arg:?} in store {} (`diskdump status` lists the dumps)",
            store.describe()
        ),
    }
}

fn read_entry(store: &dyn Store, e: ManifestEntry) -> Result<Resolved> {
    let manifest = store.read_manifest(&e)?;
    Ok(Resolved {
        label: e.rel.clone(),
        entry: Some(e),
        manifest,
    })
}

/// An error in what the user asked for (exit code 2, like a clap error).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Marks an argument-checking error as a usage error, keeping its text.
pub fn as_usage(e: anyhow::Error) -> anyhow::Error {
    usage(format!("{e:#}"))
}

/// A line on stdout that fails (instead of panicking like `println!`) when
/// the reader has gone: `status | head` then ends quietly.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($t)*)
    }};
}

/// Opens the store (a directory or `s3://…`) with a message that says where we looked.
pub fn open_store(location: &Path) -> Result<Arc<dyn Store>> {
    crate::store::open(location).with_context(|| "cannot open the store".to_string())
}
