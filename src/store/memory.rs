//! The store in memory: the same interface and rules as the real backends,
//! for unit tests of everything above the store (docs/DESIGN.md §5).

use super::{
    BlockError, LiveSet, ManifestEntry, ManifestInfo, Store, SweepStats, WalkItem, WriteSession,
};
use crate::digest::Digest;
use crate::manifest::{Manifest, ManifestHeader};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Blocks carry the epoch they were last stored or found present in; a
/// writer's session carries the epoch it began in. gc keeps what was used
/// at or after the oldest running session's start: the local store's mtime
/// rule with a counter for a clock.
pub struct MemoryStore {
    block_size: usize,
    blocks: Mutex<HashMap<Digest, (Vec<u8>, u64)>>,
    /// rel → (text, protected)
    manifests: Mutex<BTreeMap<String, (Vec<u8>, bool)>>,
    epoch: AtomicU64,
    sessions: Mutex<BTreeMap<u64, usize>>,
}

struct Session(u64);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    pub fn new(block_size: usize) -> MemoryStore {
        MemoryStore {
            block_size,
            blocks: Mutex::new(HashMap::new()),
            manifests: Mutex::new(BTreeMap::new()),
            epoch: AtomicU64::new(1),
            sessions: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replaces a block's stored bytes (tests of damage).
    pub fn damage(&self, d: &Digest, frame: Vec<u8>) {
        if let Some(b) = lock(&self.blocks).get_mut(d) {
            b.0 = frame;
        }
    }

    fn now(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn entry(rel: &str) -> ManifestEntry {
        let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
        ManifestEntry {
            rel: rel.to_string(),
            name: file.trim_end_matches(".manifest").to_string(),
            day: Some(dir.to_string()),
            id: None,
        }
    }

    fn text(&self, entry: &ManifestEntry) -> Result<Vec<u8>> {
        match lock(&self.manifests).get(&entry.rel) {
            Some((t, _)) => Ok(t.clone()),
            None => Err(anyhow::Error::new(io::Error::from(io::ErrorKind::NotFound))
                .context(format!("cannot read manifest {}", entry.rel))),
        }
    }
}

impl Store for MemoryStore {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn contains(&self, d: &Digest) -> io::Result<bool> {
        let now = self.now();
        Ok(lock(&self.blocks).get_mut(d).map(|b| b.1 = now).is_some())
    }

    fn stored_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        Ok(lock(&self.blocks).get(d).map(|b| b.0.len() as u64))
    }

    fn put_frame(&self, d: &Digest, frame: &[u8]) -> io::Result<bool> {
        let now = self.now();
        let mut blocks = lock(&self.blocks);
        if let Some(b) = blocks.get_mut(d) {
            b.1 = now;
            return Ok(false);
        }
        blocks.insert(*d, (frame.to_vec(), now));
        Ok(true)
    }

    fn get_frame(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<(), BlockError> {
        let blocks = lock(&self.blocks);
        let b = blocks.get(d).ok_or(BlockError::Missing(*d))?;
        buf.clear();
        buf.extend_from_slice(&b.0);
        Ok(())
    }

    fn block_location(&self, d: &Digest) -> String {
        format!("memory block {d}")
    }

    fn walk(&self, f: &mut dyn FnMut(WalkItem) -> Result<()>) -> Result<()> {
        let mut all: Vec<_> = lock(&self.blocks)
            .iter()
            .map(|(d, b)| (*d, b.0.len() as u64))
            .collect();
        all.sort();
        for (d, n) in all {
            f(WalkItem::Block(d, n))?;
        }
        Ok(())
    }

    fn quarantine(&self, d: &Digest) -> io::Result<String> {
        lock(&self.blocks).remove(d);
        Ok(format!("memory block {d} (dropped)"))
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn begin_writes(&self) -> Result<WriteSession> {
        let start = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.sessions).entry(start).or_default() += 1;
        Ok(WriteSession::new(Session(start)))
    }

    fn end_writes(&self, session: WriteSession) -> Result<()> {
        let Session(start) = session.into_inner().expect("a session of this store");
        let mut s = lock(&self.sessions);
        if let Some(n) = s.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                s.remove(&start);
            }
        }
        Ok(())
    }

    fn collect_garbage(&self, live: LiveSet<'_>, dry_run: bool, _wait: bool) -> Result<SweepStats> {
        let t0 = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let cutoff = lock(&self.sessions)
            .keys()
            .next()
            .copied()
            .unwrap_or(t0)
            .min(t0);
        let running_writers = lock(&self.sessions).values().sum();
        let live = live()?;
        let mut st = SweepStats {
            running_writers,
            ..SweepStats::default()
        };
        lock(&self.blocks).retain(|d, (frame, used)| {
            if live.blocks.contains(d) {
                st.live_blocks += 1;
                true
            } else if *used >= cutoff {
                st.young_blocks += 1;
                true
            } else {
                st.removed_blocks += 1;
                st.removed_bytes += frame.len() as u64;
                dry_run
            }
        });
        Ok(st)
    }

    fn manifests(&self) -> Result<Vec<ManifestEntry>> {
        Ok(lock(&self.manifests)
            .keys()
            .map(|k| MemoryStore::entry(k))
            .collect())
    }

    fn read_manifest(&self, entry: &ManifestEntry) -> Result<Manifest> {
        super::local::parse_manifest_bytes(self.text(entry)?, &entry.rel)
    }

    fn manifest_header(&self, entry: &ManifestEntry) -> Result<ManifestHeader> {
        let head = super::local::read_header(&self.text(entry)?[..])?;
        Ok(ManifestHeader::parse(
            &String::from_utf8_lossy(&head),
            &entry.rel,
        )?)
    }

    fn manifest_info(&self, entry: &ManifestEntry) -> Result<ManifestInfo> {
        Ok(ManifestInfo::of(&self.read_manifest(entry)?, None))
    }

    fn write_manifest(&self, name: &str, m: &Manifest) -> Result<ManifestEntry> {
        let day = super::manifest_day(name, m)?;
        let mut all = lock(&self.manifests);
        let rel = (1..)
            .map(|seq| super::manifest_key(&day, name, seq))
            .find(|k| !all.contains_key(k))
            .expect("a free sequence number");
        all.insert(rel.clone(), (m.render().into_bytes(), false));
        Ok(MemoryStore::entry(&rel))
    }

    fn remove_manifest(&self, entry: &ManifestEntry) -> Result<()> {
        let mut all = lock(&self.manifests);
        match all.get(&entry.rel) {
            None => bail!("cannot remove {}: no such manifest", entry.rel),
            Some((_, true)) => Err(super::protected_error(entry)),
            Some(_) => {
                all.remove(&entry.rel);
                Ok(())
            }
        }
    }

    fn is_protected(&self, entry: &ManifestEntry) -> Result<bool> {
        Ok(lock(&self.manifests).get(&entry.rel).is_some_and(|m| m.1))
    }

    fn set_protected(&self, entry: &ManifestEntry, on: bool) -> Result<()> {
        match lock(&self.manifests).get_mut(&entry.rel) {
            Some(m) => {
                m.1 = on;
                Ok(())
            }
            None => bail!("cannot change {}: no such manifest", entry.rel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::get_block;
    use crate::testutil::{image, manifest, BS};

    #[test]
    fn gc_keeps_what_a_running_writer_was_told_is_present() {
        let store = MemoryStore::new(BS);
        let data = image();
        let m = manifest(&store, "2026-04-24", &data);
        let e = store.write_manifest("a", &m).unwrap();
        let n = store.manifests().unwrap().len();
        assert_eq!(n, 1);
        // The dump goes; a writer that started before the gc found block 0
        // present and will name it in its manifest.
        store.remove_manifest(&e).unwrap();
        let w = store.begin_writes().unwrap();
        assert!(store.contains(&m.blocks[0]).unwrap());
        let st = store
            .collect_garbage(&mut || Ok(Default::default()), false, true)
            .unwrap();
        assert_eq!(st.running_writers, 1);
        assert!(store.contains(&m.blocks[0]).unwrap(), "{st:?}");
        store.end_writes(w).unwrap();
        // With no writer left, everything unreferenced goes.
        let st = store
            .collect_garbage(&mut || Ok(Default::default()), false, true)
            .unwrap();
        assert!(st.removed_blocks >= 1, "{st:?}");
        assert!(!store.contains(&m.blocks[0]).unwrap());
    }

    #[test]
    fn same_day_names_get_a_sequence_and_protection_holds() {
        let store = MemoryStore::new(BS);
        let m = manifest(&store, "2026-04-24", &image());
        let a = store.write_manifest("web", &m).unwrap();
        let b = store.write_manifest("web", &m).unwrap();
        assert_eq!(a.rel, "2026/04/24/web.manifest");
        assert_eq!(b.rel, "2026/04/24/web+2.manifest");
        store.set_protected(&b, true).unwrap();
        assert!(store.remove_manifest(&b).is_err());
        let (mut frame, mut raw) = (Vec::new(), Vec::new());
        let back = store.read_manifest(&b).unwrap();
        for (i, d) in back.blocks.iter().enumerate() {
            get_block(&store, d, &mut frame, &mut raw).unwrap();
            assert_eq!(raw.len(), back.block_len(i));
        }
        assert_eq!(store.manifest_header(&a).unwrap().source, m.source);
    }
}
