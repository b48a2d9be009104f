//! `diff A B`: which blocks and byte ranges of two dumps differ.

use super::{open_store, resolve};
use crate::manifest::Manifest;
use crate::output;
use anyhow::{bail, Result};
use indicatif::HumanBytes;
use serde::Serialize;
use std::path::Path;

/// A run of changed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub offset: u64,
    pub length: u64,
    /// First block index of the run.
    pub block: usize,
    pub blocks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub changed_blocks: usize,
    pub changed_bytes: u64,
    pub ranges: Vec<Range>,
}

/// Compares block by block; a block past the end of one image counts as
/// changed. Adjacent changed blocks form one range. Same block size required.
pub fn compare(a: &Manifest, b: &Manifest) -> Difference {
    let n = a.blocks.len().max(b.blocks.len());
    let bs = a.block_size as u64;
    let mut d = Difference {
        changed_blocks: 0,
        changed_bytes: 0,
        ranges: Vec::new(),
    };
    for i in 0..n {
        let same = a.blocks.get(i).is_some()
            && a.blocks.get(i) == b.blocks.get(i)
            && a.block_len(i) == b.block_len(i);
        if same {
            continue;
        }
        let len = a.block_len(i).max(b.block_len(i)) as u64;
        d.changed_blocks += 1;
        d.changed_bytes += len;
        match d.ranges.last_mut() {
            Some(r) if r.block + r.blocks == i => {
                r.blocks += 1;
                r.length += len;
            }
            _ => d.ranges.push(Range {
                offset: i as u64 * bs,
                length: len,
                block: i,
                blocks: 1,
            }),
        }
    }
    d
}

#[derive(Serialize)]
struct Side {
    path: String,
    date: String,
    source: String,
    size: u64,
    blocks: usize,
}

#[derive(Serialize)]
struct DiffReport {
    a: Side,
    b: Side,
    block_size: usize,
    #[serde(flatten)]
    difference: Difference,
}

/// Ranges printed in text mode; `--json` has them all.
const SHOWN: usize = 200;

pub fn run(store_dir: &Path, a: &str, b: &str) -> Result<u8> {
    let store = open_store(store_dir)?;
    let (ra, rb) = (resolve(&*store, a)?, resolve(&*store, b)?);
    if ra.manifest.block_size != rb.manifest.block_size {
        bail!(
            "{} and {} have different block sizes ({} and {}): they cannot be compared block by block",
            ra.label,
            rb.label,
            ra.manifest.block_size,
            rb.manifest.block_size
        );
    }
    let difference = compare(&ra.manifest, &rb.manifest);
    let side = |r: &super::Resolved| Side {
        path: r.label.clone(),
        date: r.manifest.date.clone(),
        source: r.manifest.source.clone(),
        size: r.manifest.total_size,
        blocks: r.manifest.blocks.len(),
    };
    let report = DiffReport {
        a: side(&ra),
        b: side(&rb),
        block_size: ra.manifest.block_size,
        difference,
    };
    if output::json() {
        output::emit(&report)?;
        return Ok(0);
    }
    for (tag, s) in [("A", &report.a), ("B", &report.b)] {
        crate::outln!(
            "{tag}: {} ({}, {}, {})",
            s.path,
            s.source,
            s.date,
            HumanBytes(s.size)
        )?;
    }
    let d = &report.difference;
    let total = report.a.blocks.max(report.b.blocks);
    crate::outln!(
        "changed: {} of {total} blocks, {} in {} ranges",
        d.changed_blocks,
        HumanBytes(d.changed_bytes),
        d.ranges.len()
    )?;
    if !d.ranges.is_empty() {
        crate::outln!("{:>16} {:>14}  BLOCKS", "OFFSET", "LENGTH")?;
    }
    for r in d.ranges.iter().take(SHOWN) {
        let last = r.block + r.blocks - 1;
        crate::outln!("{:>16} {:>14}  {}-{last}", r.offset, r.length, r.block)?;
    }
    if d.ranges.len() > SHOWN {
        crate::outln!(
            "... {} more ranges (--json lists all)",
            d.ranges.len() - SHOWN
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn m(blocks: &[u8], total_size: u64) -> Manifest {
        Manifest {
            source: "h:/x".into(),
            date: "2026-04-24".into(),
            block_size: 4096,
            total_size,
            blocks: blocks.iter().map(|&i| Digest([i; 32])).collect(),
            new_blocks: None,
        }
    }

    #[test]
    fn coalesces_runs_and_counts_the_ragged_tail() {
        let a = m(&[1, 2, 3, 4, 5, 6], 6 * 4096);
        let b = m(&[1, 9, 9, 4, 5, 9], 6 * 4096);
        let d = compare(&a, &b);
        assert_eq!((d.changed_blocks, d.changed_bytes), (3, 3 * 4096));
        assert_eq!(
            d.ranges,
            [
                Range {
                    offset: 4096,
                    length: 8192,
                    block: 1,
                    blocks: 2
                },
                Range {
                    offset: 5 * 4096,
                    length: 4096,
                    block: 5,
                    blocks: 1
                }
            ]
        );
        assert_eq!(compare(&a, &a).changed_blocks, 0);
        // b grew by a block and a half: the old tail and the new blocks changed.
        let short = m(&[1, 2], 4096 + 100);
        let long = m(&[1, 2, 3], 2 * 4096 + 2048);
        let d = compare(&short, &long);
        assert_eq!(
            d.ranges,
            [Range {
                offset: 4096,
                length: 4096 + 2048,
                block: 1,
                blocks: 2
            }]
        );
        assert_eq!(compare(&long, &short), d);
        assert_eq!(compare(&m(&[], 0), &m(&[], 0)).ranges, []);
    }
}
