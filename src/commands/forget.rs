//! `forget` (retention per dump name), `delete` (given dumps) and
//! `protect`/`unprotect`. The decisions are `retention::apply`'s; this file
//! only groups the dumps, prints and removes.

use super::catalog::{dumps, short_date, DumpRow};
use super::{open_store, resolve};
use crate::output;
use crate::retention::{self, Policy};
use crate::say;
use crate::store::{ManifestEntry, Store};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct ForgetOptions {
    pub names: Vec<String>,
    pub policy: Policy,
    pub dry_run: bool,
    pub prune: bool,
    /// Names without dumps are fine (a config group's new target), not an error.
    pub allow_missing: bool,
}

#[derive(Debug, Serialize)]
struct Verdict {
    path: String,
    date: String,
    /// Rules that keep it (`last`, `daily`, `within 7d`, `protected`, ...); empty when removed.
    reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Group {
    name: String,
    keep: Vec<Verdict>,
    remove: Vec<Verdict>,
}

#[derive(Debug, Serialize)]
struct ForgetReport {
    dry_run: bool,
    policy: String,
    groups: Vec<Group>,
    removed: usize,
    kept: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    gc: Option<super::gc::GcReport>,
}

pub fn run(store_dir: &Path, o: &ForgetOptions) -> Result<u8> {
    let store = open_store(store_dir)?;
    let mut groups: BTreeMap<String, Vec<DumpRow>> = BTreeMap::new();
    for r in dumps(&*store)? {
        // Python-era dumps are read, never written: forget leaves them alone.
        if r.legacy || !(o.names.is_empty() || o.names.contains(&r.name)) {
            continue;
        }
        groups.entry(r.name.clone()).or_default().push(r);
    }
    for n in &o.names {
        if !groups.contains_key(n) && !o.allow_missing {
            bail!("no dumps named {n:?} in store {}", store.describe());
        }
    }
    let mut report = ForgetReport {
        dry_run: o.dry_run,
        policy: o.policy.describe(),
        groups: Vec::new(),
        removed: 0,
        kept: 0,
        gc: None,
    };
    let mut doomed: Vec<ManifestEntry> = Vec::new();
    for (name, rows) in groups {
        // A dump whose date cannot be read is kept: never remove what we cannot place.
        let (dated, undated): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.time.is_some());
        let times: Vec<_> = dated
            .iter()
            .map(|r| r.time.expect("partitioned").with_timezone(&chrono::Local))
            .collect();
        let prot: Vec<bool> = dated.iter().map(|r| r.protected).collect();
        let decisions = retention::apply(&o.policy, &times, &prot)?;
        let mut g = Group {
            name,
            keep: Vec::new(),
            remove: Vec::new(),
        };
        // Newest first, as restic prints them.
        for (r, d) in dated.iter().zip(decisions).rev() {
            let v = Verdict {
                path: r.path.clone(),
                date: r.date.clone(),
                reasons: d.reasons,
            };
            if d.keep {
                g.keep.push(v);
            } else {
                doomed.push(r.entry.clone());
                g.remove.push(v);
            }
        }
        for r in undated {
            g.keep.push(Verdict {
                path: r.path.clone(),
                date: r.date.clone(),
                reasons: vec!["undated".into()],
            });
        }
        report.kept += g.keep.len();
        report.removed += g.remove.len();
        if !output::json() {
            print_group(&g, &dated, o.dry_run)?;
        }
        report.groups.push(g);
    }
    if !o.dry_run {
        for e in &doomed {
            crate::signals::check()?;
            store.remove_manifest(e)?;
        }
    }
    if o.prune {
        if o.dry_run {
            say!("--prune with --dry-run: gc reports what it would remove");
        }
        report.gc = Some(super::gc::collect(&*store, o.dry_run, true)?);
    }
    if output::json() {
        output::emit(&report)?;
    } else {
        let verb = if o.dry_run { "would remove" } else { "removed" };
        crate::outln!(
            "forget ({}): kept {}, {verb} {} dumps",
            report.policy,
            report.kept,
            report.removed
        )?;
        if let Some(gc) = &report.gc {
            gc.print()?;
        }
    }
    Ok(0)
}

fn print_group(g: &Group, rows: &[DumpRow], dry_run: bool) -> std::io::Result<()> {
    let date_of = |path: &str| {
        rows.iter()
            .find(|r| r.path == path)
            .map_or("?".to_string(), short_date)
    };
    crate::outln!(
        "{}: keep {}, {} {}",
        g.name,
        g.keep.len(),
        if dry_run { "would remove" } else { "remove" },
        g.remove.len()
    )?;
    for v in &g.keep {
        crate::outln!(
            "  keep    {:<16}  {}  ({})",
            date_of(&v.path),
            v.path,
            v.reasons.join(", ")
        )?;
    }
    for v in &g.remove {
        crate::outln!("  remove  {:<16}  {}", date_of(&v.path), v.path)?;
    }
    Ok(())
}

/// The dumps named by paths (not by dump name: deleting "the newest dump
/// of NAME" by a typo is too easy).
fn entries_by_path(store: &dyn Store, args: &[String]) -> Result<Vec<ManifestEntry>> {
    let mut out = Vec::new();
    for a in args {
        let r = resolve(store, a)?;
        match r.entry {
            Some(e) if e.rel == a.trim_start_matches("./") || a.ends_with(".manifest") => {
                out.push(e)
            }
            Some(_) => bail!(
                "{a:?} is a dump name; give the manifest path (`diskdump list {a}` shows them)"
            ),
            None => bail!("{a} is not a manifest in store {}", store.describe()),
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct Changed {
    paths: Vec<String>,
}

pub fn delete(store_dir: &Path, args: &[String]) -> Result<u8> {
    let store = open_store(store_dir)?;
    let entries = entries_by_path(&*store, args)?;
    // Check every one first, so a protected dump stops the command before any removal.
    for e in &entries {
        if store.is_protected(e)? {
            bail!(
                "{} is protected; `diskdump unprotect {}` first",
                e.rel,
                e.rel
            );
        }
    }
    for e in &entries {
        store.remove_manifest(e)?;
        if !output::json() {
            crate::outln!("removed {}", e.rel)?;
        }
    }
    if output::json() {
        output::emit(&Changed {
            paths: entries.into_iter().map(|e| e.rel).collect(),
        })?;
    } else {
        crate::outln!("its blocks are freed by the next `diskdump gc`")?;
    }
    Ok(0)
}

pub fn protect(store_dir: &Path, args: &[String], on: bool) -> Result<u8> {
    let store = open_store(store_dir)?;
    let mut paths = Vec::new();
    for a in args {
        let e = resolve(&*store, a)?
            .entry
            .ok_or_else(|| anyhow::anyhow!("{a} is not a manifest in the store"))?;
        store.set_protected(&e, on)?;
        if !output::json() {
            crate::outln!("{} {}", if on { "protected" } else { "unprotected" }, e.rel)?;
        }
        paths.push(e.rel);
    }
    if output::json() {
        output::emit(&Changed { paths })?;
    }
    Ok(0)
}
