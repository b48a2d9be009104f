//! `list [NAME...] [--since D] [--until D] [--host H]`: dumps sorted by date.

use super::catalog::{dumps, short_date, DumpRow};
use super::open_store;
use crate::manifest::parse_date;
use crate::output;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use indicatif::HumanBytes;
use std::path::Path;

#[derive(Debug, Default)]
pub struct ListOptions {
    pub names: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub host: Option<String>,
}

/// `--until 2026-04-24` includes that whole day; a date-time is exact.
fn bound(arg: &Option<String>, end_of_day: bool, flag: &str) -> Result<Option<DateTime<Utc>>> {
    let Some(s) = arg else { return Ok(None) };
    let t = parse_date(s).with_context(|| format!("--{flag}"))?;
    let plain_day = s.trim().len() == 10;
    Ok(Some(if end_of_day && plain_day {
        t + chrono::Duration::days(1) - chrono::Duration::nanoseconds(1)
    } else {
        t
    }))
}

pub fn select(rows: Vec<DumpRow>, o: &ListOptions) -> Result<Vec<DumpRow>> {
    let since = bound(&o.since, false, "since")?;
    let until = bound(&o.until, true, "until")?;
    Ok(rows
        .into_iter()
        .filter(|r| o.names.is_empty() || o.names.contains(&r.name))
        .filter(|r| o.host.as_ref().is_none_or(|h| r.host() == h))
        .filter(|r| since.is_none_or(|s| r.time.is_some_and(|t| t >= s)))
        .filter(|r| until.is_none_or(|u| r.time.is_some_and(|t| t <= u)))
        .collect())
}

pub fn run(store_dir: &Path, o: &ListOptions) -> Result<u8> {
    let store = open_store(store_dir)?;
    let rows = select(dumps(&*store)?, o)?;
    if output::json() {
        output::emit(&rows)?;
        return Ok(0);
    }
    // Column widths come from the cells themselves, so no value (a size of
    // "256.00 MiB", a long source) can push the columns after it out of line.
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let mut path = r.path.clone();
            if r.protected {
                path.push_str(" (protected)");
            }
            if let Some(e) = &r.error {
                path = format!("{path}: UNREADABLE: {e}");
            }
            [
                short_date(r),
                r.name.clone(),
                shorten(&r.source, 40),
                r.size.map_or("?".into(), |s| HumanBytes(s).to_string()),
                r.new_blocks.map_or("-".into(), |n| n.to_string()),
                path,
            ]
        })
        .collect();
    let header = ["DATE", "NAME", "SOURCE", "SIZE", "NEW", "MANIFEST"];
    let w: Vec<usize> = (0..5)
        .map(|i| {
            let data = cells.iter().map(|c| c[i].chars().count());
            data.max().unwrap_or(0).max(header[i].len())
        })
        .collect();
    let line = |c: [&str; 6]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        )
    };
    crate::outln!("{}", line(header))?;
    for c in &cells {
        crate::outln!("{}", line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]))?;
    }
    Ok(0)
}

/// `s` cut to `max` characters with an ellipsis in the middle, so both the
/// host and the end of the path stay visible.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn long_sources_keep_their_host_and_end() {
        assert_eq!(shorten("web:/dev/sda", 40), "web:/dev/sda");
        let s = shorten(
            "server01.example.org:/srv/images/very/long/path/disk.img",
            20,
        );
        assert_eq!(s.chars().count(), 20);
        assert!(s.starts_with("server01.") && s.ends_with("disk.img"), "{s}");
    }
}
