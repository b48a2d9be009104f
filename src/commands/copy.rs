//! `copy [DUMP...] --to STORE`: dumps from this store into another (local
//! or S3, either way), each block sent once: blocks the destination has are
//! skipped, the rest are read, checked (decoded and hashed: damage is not
//! copied) and stored as they are, then each manifest is written under its
//! own date and name. A dump already in the destination is skipped.

use super::{loader_threads, open_store, resolve, usage};
use crate::digest::Digest;
use crate::manifest::Manifest;
use crate::store::{get_block, ManifestEntry, Store};
use crate::{output, progress};
use anyhow::{bail, Context, Result};
use indicatif::HumanBytes;
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Serialize)]
struct Copied {
    from: String,
    to: Option<String>,
    /// Already in the destination (same key, same content).
    skipped: bool,
}

#[derive(Serialize)]
struct Report {
    source: String,
    destination: String,
    dumps: Vec<Copied>,
    blocks_copied: u64,
    bytes_copied: u64,
    blocks_present: u64,
    seconds: f64,
}

/// The dumps to copy: every dump (none named), every dump of a name, or
/// the manifests given.
fn select(src: &dyn Store, args: &[String]) -> Result<Vec<(ManifestEntry, Manifest)>> {
    let all = src.manifests()?;
    let mut out = Vec::new();
    if args.is_empty() {
        for e in all {
            let m = src.read_manifest(&e)?;
            out.push((e, m));
        }
        return Ok(out);
    }
    for a in args {
        let by_name: Vec<&ManifestEntry> = all
            .iter()
            .filter(|e| e.base_name() == a || e.name == *a)
            .collect();
        if by_name.is_empty() {
            let r = resolve(src, a)?;
            let Some(e) = r.entry else {
                bail!("{a} is not a dump in store {}", src.describe());
            };
            out.push((e, r.manifest));
        } else {
            for e in by_name {
                out.push((e.clone(), src.read_manifest(e)?));
            }
        }
    }
    Ok(out)
}

pub fn run(store: &Path, to: &Path, args: &[String]) -> Result<u8> {
    let started = Instant::now();
    let src = open_store(store)?;
    let dst = crate::store::open(to).context("cannot open the destination store")?;
    if src.describe() == dst.describe() {
        return Err(usage("the destination is the source store"));
    }
    if src.block_size() != dst.block_size() {
        return Err(usage(format!(
            "{} uses block size {} and {} uses {}: blocks cannot be shared",
            src.describe(),
            src.block_size(),
            dst.describe(),
            dst.block_size()
        )));
    }
    let dumps = select(src.as_ref(), args)?;
    let session = dst.begin_writes()?;
    let result = copy_all(src.as_ref(), dst.as_ref(), &dumps);
    let ended = dst.end_writes(session);
    let (copied, blocks, bytes, present) = result?;
    ended?;
    let report = Report {
        source: src.describe(),
        destination: dst.describe(),
        dumps: copied,
        blocks_copied: blocks,
        bytes_copied: bytes,
        blocks_present: present,
        seconds: started.elapsed().as_secs_f64(),
    };
    if output::json() {
        output::emit(&report)?;
        return Ok(0);
    }
    for c in &report.dumps {
        match &c.to {
            Some(to) => crate::outln!("copied {} → {to}", c.from)?,
            None => crate::outln!("{}: already in {}", c.from, report.destination)?,
        }
    }
    crate::outln!(
        "copied {} dumps to {}: {} blocks ({} stored), {} already there, in {:.1}s",
        report.dumps.iter().filter(|c| !c.skipped).count(),
        report.destination,
        report.blocks_copied,
        HumanBytes(report.bytes_copied),
        report.blocks_present,
        report.seconds
    )?;
    Ok(0)
}

type Totals = (Vec<Copied>, u64, u64, u64);

fn copy_all(
    src: &dyn Store,
    dst: &dyn Store,
    dumps: &[(ManifestEntry, Manifest)],
) -> Result<Totals> {
    // Every block once, whichever dumps share it.
    let mut seen = HashSet::new();
    let mut todo: Vec<Digest> = Vec::new();
    for (_, m) in dumps {
        for d in &m.blocks {
            if seen.insert(*d) {
                todo.push(*d);
            }
        }
    }
    let zero = Digest::zero_block(src.block_size());
    if seen.insert(zero) && src.contains(&zero)? {
        todo.push(zero); // Python 0.1.5's readers read it from the store
    }
    let present = AtomicU64::new(0);
    let (blocks, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let bar = progress::count_bar(todo.len() as u64, "copy");
    std::thread::scope(|s| {
        for _ in 0..loader_threads() {
            s.spawn(|| {
                let (mut frame, mut raw) = (Vec::new(), Vec::new());
                loop {
                    let Some(d) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if crate::signals::received().is_some()
                        || failed.lock().unwrap_or_else(|p| p.into_inner()).is_some()
                    {
                        return;
                    }
                    let r = (|| -> Result<()> {
                        if dst.contains(d)? {
                            present.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        get_block(src, d, &mut frame, &mut raw)?;
                        if dst.put_frame(d, &frame)? {
                            blocks.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                        }
                        Ok(())
                    })();
                    if let Err(e) = r {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    crate::signals::check()?;
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.context("copy stopped; no manifest was written for the dumps not yet copied"));
    }
    // Manifests last, once every block they name is stored (write_manifest
    // makes them durable first).
    let mut copied = Vec::new();
    for (e, m) in dumps {
        if let Some(there) = dst.find_manifest(&e.rel)? {
            if dst.read_manifest(&there)?.render() == m.render() {
                copied.push(Copied {
                    from: e.rel.clone(),
                    to: None,
                    skipped: true,
                });
                continue;
            }
        }
        let name = e.base_name().to_string();
        let written = dst
            .write_manifest(&name, m)
            .with_context(|| format!("cannot write {} to {}", e.rel, dst.describe()))?;
        copied.push(Copied {
            from: e.rel.clone(),
            to: Some(written.rel),
            skipped: false,
        });
    }
    Ok((
        copied,
        blocks.into_inner(),
        bytes.into_inner(),
        present.into_inner(),
    ))
}
