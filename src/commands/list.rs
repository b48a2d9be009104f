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
    let rows = select(dumps(&store)?, o)?;
    if output::json() {
        output::emit(&rows)?;
        return Ok(0);
    }
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let src_w = rows
        .iter()
        .map(|r| r.source.len())
        .max()
        .unwrap_or(6)
        .clamp(6, 30);
    crate::outln!(
        "{:<16}  {:<name_w$}  {:<src_w$}  {:>9}  {:>7}  MANIFEST",
        "DATE",
        "NAME",
        "SOURCE",
        "SIZE",
        "NEW"
    )?;
    for r in &rows {
        let size = r.size.map_or("?".into(), |s| HumanBytes(s).to_string());
        let new = r.new_blocks.map_or("-".into(), |n| n.to_string());
        let mut path = r.path.clone();
        if r.protected {
            path.push_str(" (protected)");
        }
        if let Some(e) = &r.error {
            path = format!("{path}: UNREADABLE: {e}");
        }
        crate::outln!(
            "{:<16}  {:<name_w$}  {:<src_w$}  {size:>9}  {new:>7}  {path}",
            short_date(r),
            r.name,
            r.source
        )?;
    }
    Ok(0)
}
