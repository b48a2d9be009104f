//! The manifest (docs/DESIGN.md §1.3, text v1): one dump's header and block list, its
//! file name, and the offset arithmetic every reader uses.

use crate::digest::Digest;
use anyhow::{bail, Result};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use std::fmt;

mod spool;
pub(crate) use spool::anonymous_file;
pub use spool::{HashSpool, SpooledHashes};

pub const MAGIC: &str = "# diskdump manifest v1";

/// A parsed manifest. `blocks[i]` names the block at `i * block_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub source: String,
    pub date: String,
    pub block_size: usize,
    pub total_size: u64,
    pub blocks: Vec<Digest>,
    /// Blocks new to the store when this dump was written (`# new_blocks:`;
    /// an optional comment, absent from older manifests).
    pub new_blocks: Option<u64>,
}

/// A manifest that does not parse: names the file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub origin: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.msg)
        } else {
            write!(f, "{} line {}: {}", self.origin, self.line, self.msg)
        }
    }
}

impl std::error::Error for ManifestError {}

impl Manifest {
    /// Parses text v1. `origin` (usually the path) is named in every error.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let err = |line: usize, msg: String| ManifestError {
            origin: origin.to_string(),
            line,
            msg,
        };
        let header = ManifestHeader::parse(text, origin)?;
        if !text.ends_with('\n') {
            return Err(err(
                text.lines().count(),
                "truncated: no final newline".into(),
            ));
        }
        // The hash list: comment lines among hashes are allowed (and ignored:
        // the header's fields come from the header alone).
        let mut blocks = Vec::new();
        for (i, raw) in text.lines().enumerate().skip(1) {
            let line = raw.trim_end_matches('\r');
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let d = Digest::from_hex(line).ok_or_else(|| {
                err(
                    i + 1,
                    format!("{:?} is not a SHA-256 hash (64 hex digits)", trunc(line)),
                )
            })?;
            blocks.push(d);
        }
        let block_size = header.block_size as u64;
        let total_blocks = header.total_blocks;
        let count = blocks.len() as u64;
        if let Some(tb) = total_blocks {
            if tb != count {
                return Err(err(
                    0,
                    format!("total_blocks says {tb} but it lists {count} hashes"),
                ));
            }
        }
        let max = count * block_size;
        let total_size = header.total_size.unwrap_or(max);
        let min = count.saturating_sub(1) * block_size + u64::from(count > 0);
        if total_size > max || total_size < min {
            return Err(err(
                0,
                format!(
                    "total_size {total_size} does not fit {count} blocks of {block_size} bytes"
                ),
            ));
        }
        Ok(Manifest {
            source: header.source,
            date: header.date,
            block_size: header.block_size,
            total_size,
            blocks,
            new_blocks: header.new_blocks,
        })
    }

    pub fn render(&self) -> String {
        let mut v = Vec::with_capacity(200 + self.blocks.len() * 65);
        self.write_to(&mut v).expect("writing to memory");
        String::from_utf8(v).expect("a manifest is ASCII")
    }

    /// Writes the manifest's text to `w` as it goes: a dump of a large disk does not hold
    /// the whole text (65 bytes per block) in memory at once.
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        self.write_header(w, self.blocks.len() as u64)?;
        for b in &self.blocks {
            writeln!(w, "{b}")?;
        }
        Ok(())
    }

    /// The header lines alone, for a manifest of `total_blocks` hashes that
    /// the caller writes after it (one per line).
    pub fn write_header(
        &self,
        w: &mut impl std::io::Write,
        total_blocks: u64,
    ) -> std::io::Result<()> {
        writeln!(w, "{MAGIC}")?;
        writeln!(w, "# source: {}", self.source)?;
        writeln!(w, "# date: {}", self.date)?;
        writeln!(w, "# block_size: {}", self.block_size)?;
        writeln!(w, "# total_blocks: {total_blocks}")?;
        writeln!(w, "# total_size: {}", self.total_size)?;
        if let Some(n) = self.new_blocks {
            writeln!(w, "# new_blocks: {n}")?;
        }
        Ok(())
    }

    /// The whole text with the hashes from `hashes` (this manifest's own
    /// `blocks` are not used), streamed to `w`.
    pub fn write_spooled(
        &self,
        w: &mut impl std::io::Write,
        hashes: &SpooledHashes,
    ) -> std::io::Result<()> {
        self.write_header(w, hashes.len())?;
        for d in hashes.iter()? {
            writeln!(w, "{}", d?)?;
        }
        Ok(())
    }

    /// Length of block `idx`: `block_size` except for a ragged last block.
    pub fn block_len(&self, idx: usize) -> usize {
        block_len(self.total_size, self.block_size, idx)
    }

    /// The block holding byte `offset` and the offset inside it; None past the end.
    pub fn locate(&self, offset: u64) -> Option<(usize, usize)> {
        locate(self.total_size, self.block_size, offset)
    }

    /// The digest that marks an all-zero full block in this manifest.
    pub fn zero_digest(&self) -> Digest {
        Digest::zero_block(self.block_size)
    }

    /// Parsed date, if it is one (Python-era `--date` values may be free text).
    pub fn datetime(&self) -> Option<DateTime<Utc>> {
        parse_date(&self.date).ok()
    }
}

/// The comment lines before the hash list: enough for a dump's size and date
/// without reading (or holding) its hashes, which is what `mount` needs to
/// stat many dumps cheaply. The one header parser: `Manifest::parse` uses it,
/// then validates the hash list against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHeader {
    pub source: String,
    pub date: String,
    pub block_size: usize,
    pub total_blocks: Option<u64>,
    pub total_size: Option<u64>,
    pub new_blocks: Option<u64>,
}

impl ManifestHeader {
    /// Parses the header of `text`, which may be the whole manifest or any
    /// prefix of it that ends after the header (a partial last line is ignored).
    pub fn parse(text: &str, origin: &str) -> Result<ManifestHeader, ManifestError> {
        let err = |line: usize, msg: String| ManifestError {
            origin: origin.to_string(),
            line,
            msg,
        };
        let mut lines = text.split_inclusive('\n').enumerate();
        match lines.next() {
            Some((_, l)) if l.trim_end() == MAGIC => {}
            _ => {
                return Err(err(
                    1,
                    format!("not a diskdump manifest (expected {MAGIC:?})"),
                ))
            }
        }
        let mut h = ManifestHeader {
            source: String::new(),
            date: String::new(),
            block_size: 131072, // Python 0.1.5's default, as in Manifest::parse
            total_blocks: None,
            total_size: None,
            new_blocks: None,
        };
        for (i, raw) in lines {
            let Some(line) = raw.strip_suffix('\n') else {
                break; // a prefix cut mid-line
            };
            let line = line.trim_end_matches('\r');
            let Some(c) = line.strip_prefix('#') else {
                if line.trim().is_empty() {
                    continue;
                }
                break; // the first hash: the header is over
            };
            let Some((key, value)) = c.trim_start().split_once(':') else {
                continue;
            };
            let value = value.trim();
            let num = || {
                value
                    .parse::<u64>()
                    .map_err(|_| err(i + 1, format!("{key}: {value:?} is not a number")))
            };
            match key {
                "source" => h.source = value.to_string(),
                "date" => h.date = value.to_string(),
                "block_size" => h.block_size = num()? as usize,
                "total_blocks" => h.total_blocks = Some(num()?),
                "total_size" => h.total_size = Some(num()?),
                "new_blocks" => h.new_blocks = value.parse().ok(),
                _ => {}
            }
        }
        if h.block_size == 0 || h.block_size > crate::store::MAX_BLOCK_SIZE {
            return Err(err(
                0,
                format!("block_size {} is out of range", h.block_size),
            ));
        }
        Ok(h)
    }

    /// The image size, if the header alone says it (as `Manifest::parse`
    /// would compute it); None means counting the hashes.
    pub fn size(&self) -> Option<u64> {
        self.total_size
            .or_else(|| self.total_blocks?.checked_mul(self.block_size as u64))
    }

    pub fn datetime(&self) -> Option<DateTime<Utc>> {
        parse_date(&self.date).ok()
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Block math, pure so it can be tested at every edge.
pub fn locate(total_size: u64, block_size: usize, offset: u64) -> Option<(usize, usize)> {
    if offset >= total_size {
        return None;
    }
    let bs = block_size as u64;
    Some(((offset / bs) as usize, (offset % bs) as usize))
}

pub fn block_len(total_size: u64, block_size: usize, idx: usize) -> usize {
    let start = idx as u64 * block_size as u64;
    total_size.saturating_sub(start).min(block_size as u64) as usize
}

/// A dump name: 1–128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if !ok {
        bail!(
            "invalid dump name {:?}: use 1-128 characters of A-Z a-z 0-9 . _ - not starting with '.'",
            trunc(name)
        );
    }
    Ok(())
}

/// Separates a dump name from its same-day sequence number in a manifest's
/// file name (`web+2.manifest`): names cannot contain it, so no name can
/// produce another name's second dump.
pub const SEQ_SEP: char = '+';

/// The file name (without `.manifest`) of the `seq`-th dump of `name` on one day.
pub fn seq_file_name(name: &str, seq: u32) -> String {
    if seq <= 1 {
        name.to_string()
    } else {
        format!("{name}{SEQ_SEP}{seq}")
    }
}

/// Splits `web+2` into (`web`, 2); a plain name is its day's first dump.
pub fn split_seq(file_name: &str) -> (&str, u32) {
    match file_name.rsplit_once(SEQ_SEP) {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (base, n.parse().unwrap_or(u32::MAX))
        }
        _ => (file_name, 1),
    }
}

/// A manifest's `# source:` (a target path, `HOST:PATH`, an image path): any
/// text a header line can carry, so no control character (a newline would
/// end the line and leave a manifest that does not parse).
pub fn validate_source(source: &str) -> Result<()> {
    if let Some(c) = source.chars().find(|c| c.is_control()) {
        bail!(
            "refusing {:?}: it contains the control character {:?}, which a manifest cannot record",
            trunc(source),
            c
        );
    }
    Ok(())
}

/// `server01` + `/dev/sda` → `server01-sda`; checked like any name.
pub fn default_name(host: &str, path: &str) -> Result<String> {
    let base = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path);
    let name = format!("{host}-{base}");
    validate_name(&name).map_err(|e| e.context("choose a name with --as NAME"))?;
    Ok(name)
}

/// The name part of `--as`: `HOST:DEVICE` becomes `HOST-<device basename>`.
pub fn name_from_as(value: &str) -> Result<String> {
    match value.split_once(':') {
        Some((host, dev)) => {
            validate_source(value)?;
            default_name(host, dev)
        }
        None => {
            validate_name(value)?;
            Ok(value.to_string())
        }
    }
}

/// Now, formatted as manifests carry it (Python's `isoformat()`).
pub fn now_string() -> String {
    format_date(Utc::now())
}

pub fn format_date(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Accepts RFC 3339 (`2026-04-24T03:00:12.345678+00:00`), a naive date-time
/// (taken as UTC), or a plain date, in the years 1000-9999 (a dump is filed
/// under a four-digit `YYYY/`).
pub fn parse_date(s: &str) -> Result<DateTime<Utc>> {
    let d = parse_any_date(s)?;
    if !(1000..=9999).contains(&d.year()) {
        bail!("invalid date {s:?}: the year must have four digits (1000-9999)");
    }
    Ok(d)
}

fn parse_any_date(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(d.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    bail!("invalid date {s:?}: use ISO 8601, e.g. 2026-04-24 or 2026-04-24T03:00:00Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Digest {
        Digest([i; 32])
    }

    fn sample() -> Manifest {
        Manifest {
            source: "server01:/dev/sda".into(),
            date: "2026-04-24T03:00:12.345678+00:00".into(),
            block_size: 4096,
            total_size: 4096 * 2 + 100,
            blocks: vec![d(1), d(2), d(3)],
            new_blocks: None,
        }
    }

    #[test]
    fn render_parse_round_trip() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.render(), "x").unwrap(), m);
        let counted = Manifest {
            new_blocks: Some(2),
            ..sample()
        };
        assert_eq!(Manifest::parse(&counted.render(), "x").unwrap(), counted);
        let h = ManifestHeader::parse(&counted.render(), "x").unwrap();
        assert_eq!(h.new_blocks, Some(2));
        let empty = Manifest {
            total_size: 0,
            blocks: vec![],
            ..sample()
        };
        assert_eq!(Manifest::parse(&empty.render(), "x").unwrap(), empty);
    }

    #[test]
    fn rejects_malformed_naming_file_and_line() {
        let good = sample().render();
        let bad_hex = good.replace(&d(2).to_hex(), &"x".repeat(64));
        let e = Manifest::parse(&bad_hex, "a.manifest").unwrap_err();
        assert_eq!((e.line, e.origin.as_str()), (8, "a.manifest"));
        assert!(e.to_string().starts_with("a.manifest line 8:"), "{e}");
        let short = good.replace(&d(2).to_hex(), &d(2).to_hex()[..63]);
        assert_eq!(Manifest::parse(&short, "a").unwrap_err().line, 8);
        let count = good.replace("total_blocks: 3", "total_blocks: 4");
        assert!(Manifest::parse(&count, "a")
            .unwrap_err()
            .msg
            .contains("total_blocks"));
        let big = good.replace("total_size: 8292", "total_size: 999999999999");
        assert!(Manifest::parse(&big, "a")
            .unwrap_err()
            .msg
            .contains("total_size"));
        let small = good.replace("total_size: 8292", "total_size: 8192");
        assert!(Manifest::parse(&small, "a").is_err());
        let truncated = &good[..good.len() - 10];
        assert!(Manifest::parse(truncated, "a").is_err());
        assert!(Manifest::parse("", "a").is_err());
        assert!(Manifest::parse("hello\n", "a").is_err());
        let nonnum = good.replace("block_size: 4096", "block_size: lots");
        assert_eq!(Manifest::parse(&nonnum, "a").unwrap_err().line, 4);
    }

    #[test]
    fn ignores_unknown_comments_and_reads_python_defaults() {
        let mut text = sample().render();
        text.insert_str(MAGIC.len() + 1, "# hostname: web1\n# free text\n");
        assert_eq!(Manifest::parse(&text, "x").unwrap(), sample());
        let py = format!("{MAGIC}\n# source: a:b\n# date: 2026-01-01\n{}\n", d(9));
        let m = Manifest::parse(&py, "x").unwrap();
        assert_eq!(
            (m.block_size, m.total_size, m.blocks.len()),
            (131072, 131072, 1)
        );
    }

    #[test]
    fn header_alone_gives_size_and_date() {
        let text = sample().render();
        let cut = text.find(&d(1).to_hex()).unwrap();
        for prefix in [&text[..], &text[..cut], &text[..cut + 10]] {
            let h = ManifestHeader::parse(prefix, "x").unwrap();
            assert_eq!((h.block_size, h.size()), (4096, Some(4096 * 2 + 100)));
            assert_eq!(h.total_blocks, Some(3));
            assert_eq!(h.datetime(), sample().datetime());
            assert_eq!(h.source, "server01:/dev/sda");
        }
        // Python-era: no total_size; total_blocks decides, else only a count can.
        let py = format!("{MAGIC}\n# date: 2026-01-01\n# total_blocks: 2\n{}\n", d(9));
        assert_eq!(
            ManifestHeader::parse(&py, "x").unwrap().size(),
            Some(2 * 131072)
        );
        let bare = format!("{MAGIC}\n# date: someday\n{}\n", d(9));
        let h = ManifestHeader::parse(&bare, "x").unwrap();
        assert_eq!((h.size(), h.datetime()), (None, None));
        assert_eq!(ManifestHeader::parse("nope\n", "x").unwrap_err().line, 1);
        let bad = text.replace("total_size: 8292", "total_size: big");
        assert_eq!(ManifestHeader::parse(&bad, "x").unwrap_err().line, 6);
    }

    #[test]
    fn offset_arithmetic_at_the_edges() {
        let (ts, bs) = (4096 * 2 + 100, 4096);
        assert_eq!(locate(ts, bs, 0), Some((0, 0)));
        assert_eq!(locate(ts, bs, 4095), Some((0, 4095)));
        assert_eq!(locate(ts, bs, 4096), Some((1, 0)));
        assert_eq!(locate(ts, bs, 8192), Some((2, 0)));
        assert_eq!(locate(ts, bs, 8291), Some((2, 99)));
        assert_eq!(locate(ts, bs, 8292), None);
        assert_eq!(locate(0, bs, 0), None);
        assert_eq!(block_len(ts, bs, 0), 4096);
        assert_eq!(block_len(ts, bs, 2), 100);
        assert_eq!(block_len(ts, bs, 3), 0);
        assert_eq!(block_len(8192, bs, 1), 4096);
        // Offsets beyond 4 GiB do not overflow.
        assert_eq!(
            locate(u64::MAX, bs, u64::MAX - 1),
            Some((((u64::MAX - 1) / 4096) as usize, 4094))
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "server01-sda", "x.2_y", &"n".repeat(128)] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "a\nb",
            "a\0b",
            &"n".repeat(129),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            default_name("server01", "/dev/sda").unwrap(),
            "server01-sda"
        );
        assert_eq!(name_from_as("web:/dev/nvme0n1").unwrap(), "web-nvme0n1");
        assert_eq!(name_from_as("plain").unwrap(), "plain");
        assert!(name_from_as("../evil").is_err());
    }

    #[test]
    fn dates() {
        let d = parse_date("2026-04-24T03:00:12.345678+00:00").unwrap();
        assert_eq!(format_date(d), "2026-04-24T03:00:12.345678+00:00");
        assert_eq!(
            parse_date("2026-04-24").unwrap().to_rfc3339(),
            "2026-04-24T00:00:00+00:00"
        );
        assert!(parse_date("2026-04-24T05:00:00+02:00")
            .unwrap()
            .to_rfc3339()
            .starts_with("2026-04-24T03"));
        assert!(parse_date("yesterday").is_err());
        for far in [
            "+12026-01-01",
            "12026-01-01",
            "0999-12-31",
            "+12026-01-01T00:00:00Z",
        ] {
            assert!(parse_date(far).is_err(), "{far}");
        }
    }

    #[test]
    fn same_day_names_cannot_collide_with_names() {
        assert_eq!(seq_file_name("web", 1), "web");
        assert_eq!(seq_file_name("web", 2), "web+2");
        assert_eq!(split_seq("web+2"), ("web", 2));
        assert_eq!(split_seq("web.2"), ("web.2", 1));
        assert_eq!(split_seq("web+"), ("web+", 1));
        // No valid name is another name's same-day file name.
        assert!(validate_name(&seq_file_name("web", 2)).is_err());
        for ok in ["localhost:/tmp/a b.img", "h:/dev/sda", "é:ü"] {
            validate_source(ok).unwrap();
        }
        for bad in [
            "h:/a\nb",
            "h:/a\rb",
            "h:/a\tb",
            "h:\u{7f}",
            "h:\u{85}x",
            "a\0",
        ] {
            let e = validate_source(bad).unwrap_err().to_string();
            assert!(e.contains("control character"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        assert!(name_from_as("web:/dev/sd\na").is_err());
    }
}
