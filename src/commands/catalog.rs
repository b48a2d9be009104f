//! Every dump in the store with what `list` and `forget` need, read from the
//! manifests' headers only (no hash lists), sorted by date.

use crate::store::{ManifestEntry, Store};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// One dump as `list` shows it (and `--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct DumpRow {
    /// The dump name its dumps are grouped by (`server01-sda`).
    pub name: String,
    /// ISO 8601 date as recorded in the manifest.
    pub date: String,
    /// `host:device` the dump was read from.
    pub source: String,
    /// Image size in bytes.
    pub size: Option<u64>,
    /// Blocks new to the store when the dump was written (newer manifests).
    pub new_blocks: Option<u64>,
    /// Manifest path relative to the store.
    pub path: String,
    pub protected: bool,
    /// Python-era dump (under `.blockstore/manifests/`).
    pub legacy: bool,
    /// Why the manifest could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub entry: ManifestEntry,
    #[serde(skip)]
    pub time: Option<DateTime<Utc>>,
}

impl DumpRow {
    pub fn host(&self) -> &str {
        self.source.split_once(':').map_or("", |(h, _)| h)
    }
}

/// The group a dump belongs to: its name without the same-day suffix or
/// the Python era's version number.
pub fn group_name(e: &ManifestEntry) -> String {
    e.base_name().to_string()
}

pub fn dumps(store: &dyn Store) -> Result<Vec<DumpRow>> {
    let mut rows = Vec::new();
    for e in store.manifests()? {
        let protected = store.is_protected(&e)?;
        let mut row = DumpRow {
            name: group_name(&e),
            date: String::new(),
            source: String::new(),
            size: None,
            new_blocks: None,
            path: e.rel.clone(),
            protected,
            legacy: e.is_legacy(),
            error: None,
            time: None,
            entry: e,
        };
        match store.manifest_header(&row.entry) {
            Ok(h) => {
                row.time = h.datetime();
                row.size = h.size();
                row.new_blocks = h.new_blocks;
                row.date = h.date;
                row.source = h.source;
            }
            // Removed since the listing (a concurrent forget): not a dump any more.
            Err(err)
                if err
                    .root_cause()
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(err) => row.error = Some(format!("{err:#}")),
        }
        rows.push(row);
    }
    // Undated (unreadable) dumps first, then by date; the path breaks ties.
    rows.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.path.cmp(&b.path)));
    Ok(rows)
}

/// `2026-04-24 03:00` in local time, or the recorded text if it does not parse.
pub fn short_date(row: &DumpRow) -> String {
    match row.time {
        Some(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
        None if row.date.is_empty() => "?".into(),
        None => row.date.clone(),
    }
}
