//! Blocks in pack objects on an object store, with a local index that says
//! where each block is without a request per block (docs/DESIGN.md §8).
//!
//! - `put_frame` appends to an open pack in memory; a full pack is sealed
//!   and uploaded by a background thread (at most `MAX_UPLOADS` at once) as
//!   `packs/<sha256 of the pack>.pack`, a name derived from the content, so
//!   two hosts uploading the same pack write the same object. Blocks of
//!   sealed packs stay readable and "present" from memory until their upload
//!   returns. `flush` waits for every upload and uploads what is open: a
//!   manifest is written only after it returns (the durability rule).
//! - `contains` answers from the index of uploaded packs and the packs in
//!   memory. A crash loses what is in memory, and with it nothing a manifest
//!   refers to.
//! - The index lives in memory and in an append-only cache file; `refresh`
//!   lists the packs and reads the trailers of those it does not know (other
//!   hosts' uploads, or a lost cache), and forgets packs that are gone.
//! - Packs a gc is about to delete can be excluded: their blocks then count
//!   as absent unless another pack holds them (see `store::s3`).

use super::pack::{self, PackBuilder, PackEntry, TRAILER_LEN};
use super::{ErrorKind, ObjectError, ObjectStore};
use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

pub const PACK_PREFIX: &str = "packs/";
/// Packs of tens of MiB: few objects per disk, and a PUT rate far below what
/// object stores allow (Garage: ~15 small PUTs/s per connection).
pub const DEFAULT_PACK_TARGET: usize = 32 << 20;
/// Sealed packs uploading at once: the next fills while these upload;
/// bounds memory to about (MAX_UPLOADS + 1) × the target size.
const MAX_UPLOADS: usize = 2;
/// One cache record: the pack's digest and one entry.
const RECORD_LEN: usize = 32 + pack::ENTRY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: Digest,
    pub offset: u64,
    pub len: u32,
}

/// The entries (sorted by offset) that start in window `k` of `span` bytes.
fn window_bounds(entries: &[PackEntry], k: u64, span: u64) -> (usize, usize) {
    let lo = entries.partition_point(|e| e.offset < k * span);
    let hi = entries.partition_point(|e| e.offset < (k + 1) * span);
    (lo, hi)
}

/// One uploaded pack: its size and entries, sorted by offset.
#[derive(Debug, Clone)]
pub struct PackInfo {
    pub size: u64,
    pub entries: Arc<Vec<PackEntry>>,
}

#[derive(Default)]
struct Index {
    blocks: HashMap<Digest, Location>,
    packs: HashMap<Digest, PackInfo>,
    /// Packs a gc is deleting: never answered from.
    excluded: HashSet<Digest>,
    /// (block, pack) copies found damaged: never answered from.
    bad: HashSet<(Digest, Digest)>,
}

impl Index {
    fn add_pack(&mut self, id: Digest, size: u64, mut entries: Vec<PackEntry>) {
        entries.sort_by_key(|e| e.offset);
        if !self.excluded.contains(&id) {
            for e in &entries {
                if self.bad.contains(&(e.digest, id)) {
                    continue;
                }
                self.blocks.entry(e.digest).or_insert(Location {
                    pack: id,
                    offset: e.offset,
                    len: e.len,
                });
            }
        }
        self.packs.insert(
            id,
            PackInfo {
                size,
                entries: Arc::new(entries),
            },
        );
    }

    /// Rebuilds the block map from the packs that are not excluded.
    fn reindex(&mut self) {
        self.blocks.clear();
        for (id, p) in &self.packs {
            if self.excluded.contains(id) {
                continue;
            }
            for e in p.entries.iter() {
                if self.bad.contains(&(e.digest, *id)) {
                    continue;
                }
                self.blocks.entry(e.digest).or_insert(Location {
                    pack: *id,
                    offset: e.offset,
                    len: e.len,
                });
            }
        }
    }
}

/// Frames in memory: the open pack, or a sealed one being uploaded.
#[derive(Default)]
struct MemPack {
    builder: PackBuilder,
    /// Digest → (offset, len) within the builder's frames.
    frames: HashMap<Digest, (usize, usize)>,
}

impl MemPack {
    fn push(&mut self, d: Digest, frame: &[u8]) {
        let at = self.builder.frames_len();
        self.builder.push(d, frame);
        self.frames.insert(d, (at, frame.len()));
    }
    fn frame(&self, d: &Digest) -> Option<&[u8]> {
        let &(at, len) = self.frames.get(d)?;
        Some(&self.builder.frames()[at..at + len])
    }
}

#[derive(Default)]
struct Uploads {
    /// Sealed packs not yet stored, oldest first.
    sealed: Vec<Arc<MemPack>>,
    running: usize,
    /// The first upload that failed (after the object layer's retries).
    failed: Option<ObjectError>,
}

pub struct PackedBlocks {
    objects: Arc<dyn ObjectStore>,
    index: RwLock<Index>,
    open: Mutex<MemPack>,
    uploads: Mutex<Uploads>,
    uploaded: Condvar,
    target: usize,
    cache: Option<PathBuf>,
}

pub fn pack_key(id: &Digest) -> String {
    format!("{PACK_PREFIX}{}.pack", id.to_hex())
}

pub fn pack_id(key: &str) -> Option<Digest> {
    let hex = key.strip_prefix(PACK_PREFIX)?.strip_suffix(".pack")?;
    Digest::from_hex(hex)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PackedBlocks {
    /// Opens the blocks under `objects`: loads the cache file if there is
    /// one, then refreshes the index from the packs.
    pub fn open(
        objects: Arc<dyn ObjectStore>,
        cache: Option<PathBuf>,
        target: usize,
    ) -> Result<Arc<PackedBlocks>, ObjectError> {
        let blocks = Arc::new(PackedBlocks {
            objects,
            index: RwLock::new(Index::default()),
            open: Mutex::new(MemPack::default()),
            uploads: Mutex::new(Uploads::default()),
            uploaded: Condvar::new(),
            target,
            cache,
        });
        blocks.load_cache();
        blocks.refresh()?;
        Ok(blocks)
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    fn load_cache(&self) {
        let Some(path) = &self.cache else { return };
        let mut data = Vec::new();
        if File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .is_err()
        {
            return;
        }
        let mut packs: HashMap<Digest, Vec<PackEntry>> = HashMap::new();
        // A record cut by a crash is ignored; refresh re-reads its pack.
        for r in data.chunks_exact(RECORD_LEN) {
            let pack = Digest(r[..32].try_into().expect("32 bytes"));
            let e = &r[32..];
            packs.entry(pack).or_default().push(PackEntry {
                digest: Digest(e[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
                len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
            });
        }
        let mut index = self.index.write().expect("index lock");
        for (id, entries) in packs {
            // The size is learnt again from the listing in refresh.
            index.add_pack(id, 0, entries);
        }
    }

    fn append_cache(&self, pack: &Digest, entries: &[PackEntry]) {
        let Some(path) = &self.cache else { return };
        let mut out = Vec::with_capacity(entries.len() * RECORD_LEN);
        for e in entries {
            out.extend_from_slice(&pack.0);
            out.extend_from_slice(&e.digest.0);
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
        }
        // The cache is an optimisation: failing to write it costs a refresh.
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(&out));
    }

    fn rewrite_cache(&self) {
        let Some(path) = &self.cache else { return };
        let _ = std::fs::remove_file(path);
        let packs: Vec<(Digest, PackInfo)> = {
            let index = self.index.read().expect("index lock");
            index.packs.iter().map(|(id, p)| (*id, p.clone())).collect()
        };
        for (id, p) in packs {
            self.append_cache(&id, &p.entries);
        }
    }

    /// Lists the packs; reads the index of each one not known yet and
    /// forgets packs that no longer exist. Returns how many packs are new.
    pub fn refresh(&self) -> Result<usize, ObjectError> {
        let listed = self.objects.list(PACK_PREFIX)?;
        let present: HashMap<Digest, u64> = listed
            .iter()
            .filter_map(|o| Some((pack_id(&o.key)?, o.size)))
            .collect();
        let (gone, new): (Vec<Digest>, Vec<(Digest, u64)>) = {
            let mut index = self.index.write().expect("index lock");
            for (id, size) in &present {
                if let Some(p) = index.packs.get_mut(id) {
                    p.size = *size;
                }
            }
            let gone: Vec<Digest> = index
                .packs
                .keys()
                .filter(|p| !present.contains_key(p))
                .copied()
                .collect();
            let new = present
                .iter()
                .filter(|(id, _)| !index.packs.contains_key(id))
                .map(|(id, size)| (*id, *size))
                .collect();
            (gone, new)
        };
        if !gone.is_empty() {
            let mut index = self.index.write().expect("index lock");
            for id in &gone {
                index.packs.remove(id);
            }
            index.reindex();
        }
        for (id, size) in &new {
            let entries = self.read_pack_index(id, *size)?;
            if gone.is_empty() {
                self.append_cache(id, &entries);
            }
            self.index
                .write()
                .expect("index lock")
                .add_pack(*id, *size, entries);
        }
        if !gone.is_empty() {
            self.rewrite_cache();
        }
        Ok(new.len())
    }

    /// Never answers from these packs again (a gc is deleting them): their
    /// blocks count as absent unless another pack holds them.
    pub fn exclude(&self, packs: &HashSet<Digest>) {
        let mut index = self.index.write().expect("index lock");
        index.excluded.extend(packs.iter().copied());
        index.reindex();
    }

    /// Never answers with these (block, pack) copies again (found damaged):
    /// the block counts as absent unless another pack holds it.
    pub fn mark_bad(&self, copies: &[(Digest, Digest)]) {
        let mut index = self.index.write().expect("index lock");
        index.bad.extend(copies.iter().copied());
        index.reindex();
    }

    /// A pack's index from two ranged GETs of its end.
    pub fn read_pack_index(&self, id: &Digest, size: u64) -> Result<Vec<PackEntry>, ObjectError> {
        let key = pack_key(id);
        let bad = |e: pack::PackError| ObjectError {
            op: "GET",
            what: format!("{}{key}", self.objects.describe()),
            kind: ErrorKind::Other,
            detail: e.to_string(),
        };
        let t = TRAILER_LEN as u64;
        let trailer = self.objects.get_range(&key, size.saturating_sub(t), t)?;
        let need = pack::tail_len(&trailer, size).map_err(bad)?;
        let tail = self.objects.get_range(&key, size - need, need)?;
        pack::read_index(&tail, size).map_err(bad)
    }

    /// A frame still in memory (open or uploading), if it is there.
    pub fn get_in_memory(&self, d: &Digest, buf: &mut Vec<u8>) -> bool {
        self.in_memory(d, |f| {
            buf.clear();
            buf.extend_from_slice(f);
        })
        .is_some()
    }

    fn in_memory<T>(&self, d: &Digest, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        if let Some(frame) = lock(&self.open).frame(d) {
            return Some(f(frame));
        }
        // Looked up under the lock: at most MAX_UPLOADS + 1 packs, and this
        // runs for every block a writer asks about.
        lock(&self.uploads)
            .sealed
            .iter()
            .find_map(|p| p.frame(d))
            .map(f)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.index
            .read()
            .expect("index lock")
            .blocks
            .contains_key(d)
            || self.in_memory(d, |_| ()).is_some()
    }

    /// Where an uploaded block is.
    pub fn location(&self, d: &Digest) -> Option<Location> {
        self.index
            .read()
            .expect("index lock")
            .blocks
            .get(d)
            .copied()
    }

    /// Adds a verified frame; false if the block is already there. A pack
    /// that reaches the target size is handed to a background upload.
    pub fn put_frame(self: &Arc<Self>, d: &Digest, frame: &[u8]) -> Result<bool, ObjectError> {
        if let Some(e) = &lock(&self.uploads).failed {
            return Err(e.clone());
        }
        if self.contains(d) {
            return Ok(false);
        }
        let mut open = lock(&self.open);
        if open.frames.contains_key(d) {
            return Ok(false);
        }
        open.push(*d, frame);
        if open.builder.frames_len() >= self.target {
            // Sealed while the open pack is still locked: its frames are
            // never in neither place, so nobody stores them twice.
            let full = std::mem::take(&mut *open);
            self.seal(full);
        }
        Ok(true)
    }

    /// Queues a full pack for upload, waiting while `MAX_UPLOADS` run (the
    /// caller holds the open pack's lock: writers wait for the uploads).
    fn seal(self: &Arc<Self>, pack: MemPack) {
        let pack = Arc::new(pack);
        let mut u = lock(&self.uploads);
        u.sealed.push(pack.clone());
        while u.running >= MAX_UPLOADS {
            u = self.uploaded.wait(u).unwrap_or_else(|p| p.into_inner());
        }
        u.running += 1;
        drop(u);
        let me = self.clone();
        std::thread::spawn(move || {
            let r = me.upload(&pack);
            let mut u = lock(&me.uploads);
            u.running -= 1;
            match r {
                Ok(()) => u.sealed.retain(|p| !Arc::ptr_eq(p, &pack)),
                Err(e) => {
                    u.failed.get_or_insert(e);
                }
            }
            me.uploaded.notify_all();
        });
    }

    /// Stores one pack and adds it to the index.
    fn upload(&self, pack: &MemPack) -> Result<(), ObjectError> {
        let (bytes, entries) = pack.builder.to_pack();
        let id = Digest::of(&bytes);
        self.objects.put(&pack_key(&id), &bytes)?;
        self.append_cache(&id, &entries);
        self.index
            .write()
            .expect("index lock")
            .add_pack(id, bytes.len() as u64, entries);
        Ok(())
    }

    /// Waits for every upload and uploads the open pack: every block put so
    /// far is then stored. A failed upload is retried here once more.
    pub fn flush(&self) -> Result<(), ObjectError> {
        let open = std::mem::take(&mut *lock(&self.open));
        let mut u = lock(&self.uploads);
        while u.running > 0 {
            u = self.uploaded.wait(u).unwrap_or_else(|p| p.into_inner());
        }
        let retry: Vec<Arc<MemPack>> = u.sealed.clone();
        drop(u);
        for p in &retry {
            self.upload(p)?;
            lock(&self.uploads).sealed.retain(|q| !Arc::ptr_eq(q, p));
        }
        lock(&self.uploads).failed = None;
        if open.builder.count() > 0 {
            if let Err(e) = self.upload(&open) {
                // Keep the frames: a later flush retries them.
                lock(&self.uploads).sealed.push(Arc::new(open));
                return Err(e);
            }
        }
        Ok(())
    }

    /// A block's frame: from memory, or one ranged GET. The caller decodes
    /// and checks it against `d`, as for a local block file.
    pub fn get_frame(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<bool, ObjectError> {
        let found = self.in_memory(d, |f| {
            buf.clear();
            buf.extend_from_slice(f);
        });
        if found.is_some() {
            return Ok(true);
        }
        let Some(l) = self.location(d) else {
            return Ok(false);
        };
        *buf = self
            .objects
            .get_range(&pack_key(&l.pack), l.offset, u64::from(l.len))?;
        Ok(true)
    }

    /// Where `d` is, the number of the window of `span` bytes of its pack
    /// that holds it (windows are fixed, so concurrent readers of
    /// neighbouring blocks ask for the same one: one ranged GET for many
    /// blocks, which sit in a pack in the order they were written), and
    /// whether `d` is that window's first block. None if the block is in no
    /// uploaded pack. Allocates nothing: asked on every cached read.
    pub fn window_of(&self, d: &Digest, span: u64) -> Option<(Location, u64, bool)> {
        let index = self.index.read().expect("index lock");
        let l = *index.blocks.get(d)?;
        let k = l.offset / span.max(1);
        let entries = &index.packs.get(&l.pack)?.entries;
        let (lo, _) = window_bounds(entries, k, span);
        Some((l, k, entries.get(lo).is_some_and(|e| e.digest == *d)))
    }

    /// The entries of window `k` of `pack` (see `window_of`); empty past its end.
    pub fn window_at(&self, pack: &Digest, k: u64, span: u64) -> Vec<PackEntry> {
        let index = self.index.read().expect("index lock");
        let Some(p) = index.packs.get(pack) else {
            return Vec::new();
        };
        let (lo, hi) = window_bounds(&p.entries, k, span);
        p.entries[lo..hi].to_vec()
    }

    /// Reads `entries` (consecutive in `pack`) with one ranged GET.
    pub fn read_entries(
        &self,
        pack: &Digest,
        entries: &[PackEntry],
    ) -> Result<Vec<(Digest, Vec<u8>)>, ObjectError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(Vec::new());
        };
        let end = last.offset + u64::from(last.len);
        let data = self
            .objects
            .get_range(&pack_key(pack), first.offset, end - first.offset)?;
        Ok(entries
            .iter()
            .filter_map(|e| {
                let s = (e.offset - first.offset) as usize;
                let frame = data.get(s..s + e.len as usize)?;
                Some((e.digest, frame.to_vec()))
            })
            .collect())
    }

    /// Every uploaded block and its stored size.
    pub fn blocks(&self) -> Vec<(Digest, u32)> {
        let index = self.index.read().expect("index lock");
        index.blocks.iter().map(|(d, l)| (*d, l.len)).collect()
    }

    /// Every known pack (excluded ones too) with its entries.
    pub fn packs(&self) -> Vec<(Digest, PackInfo)> {
        let index = self.index.read().expect("index lock");
        index.packs.iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    /// Forgets a pack deleted by this process (a gc).
    pub fn forget_pack(&self, id: &Digest) {
        let mut index = self.index.write().expect("index lock");
        if index.packs.remove(id).is_some() {
            index.reindex();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemoryObjects;
    use super::*;

    fn frame(i: u64) -> (Digest, Vec<u8>) {
        let f = diskdump_agent::testdata::noise(1000 + (i as usize % 7) * 100, i);
        (Digest::of(&f), f)
    }

    #[test]
    fn blocks_go_into_few_packs_and_read_back() {
        let objects = Arc::new(MemoryObjects::new());
        let b = PackedBlocks::open(objects.clone(), None, 64 << 10).unwrap();
        for i in 0..500 {
            let (d, f) = frame(i);
            assert!(b.put_frame(&d, &f).unwrap());
            assert!(b.contains(&d), "present at once, from the open pack");
            assert!(!b.put_frame(&d, &f).unwrap(), "stored once");
        }
        b.flush().unwrap();
        let packs = objects.list(PACK_PREFIX).unwrap();
        assert!((5..=12).contains(&packs.len()), "{} packs", packs.len());
        let mut buf = Vec::new();
        for i in 0..500 {
            let (d, f) = frame(i);
            assert!(b.get_frame(&d, &mut buf).unwrap());
            assert_eq!(buf, f);
        }
        assert!(!b.get_frame(&Digest::of(b"nope"), &mut buf).unwrap());
    }

    #[test]
    fn a_lost_cache_is_rebuilt_and_other_writers_are_seen() {
        let objects = Arc::new(MemoryObjects::new());
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("index");
        let a = PackedBlocks::open(objects.clone(), Some(cache.clone()), 16 << 10).unwrap();
        let b = PackedBlocks::open(objects.clone(), None, 16 << 10).unwrap();
        for i in 0..100 {
            let (d, f) = frame(i);
            a.put_frame(&d, &f).unwrap();
        }
        a.flush().unwrap();
        // A second host sees the first's blocks after a refresh.
        let (d0, f0) = frame(0);
        assert!(!b.contains(&d0));
        assert!(b.refresh().unwrap() > 0);
        assert!(b.contains(&d0));
        assert!(!b.put_frame(&d0, &f0).unwrap());
        // From the cache file alone (no new pack to read) ...
        let c = PackedBlocks::open(objects.clone(), Some(cache.clone()), 16 << 10).unwrap();
        assert_eq!(c.blocks().len(), 100);
        // ... and from the packs alone.
        std::fs::remove_file(&cache).unwrap();
        let c = PackedBlocks::open(objects.clone(), Some(cache), 16 << 10).unwrap();
        assert_eq!(c.blocks().len(), 100);
        let mut buf = Vec::new();
        assert!(c.get_frame(&d0, &mut buf).unwrap());
        assert_eq!(buf, f0);
        // A pack deleted elsewhere is forgotten.
        let first = objects.list(PACK_PREFIX).unwrap()[0].key.clone();
        objects.delete(&first).unwrap();
        c.refresh().unwrap();
        assert!(c.blocks().len() < 100);
    }
}
