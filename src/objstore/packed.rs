//! Blocks in pack objects on an object store, with a local index that says
//! where each block is without a request per block (docs/DESIGN.md §8).
//!
//! - `put_frame` appends to an open pack in memory; a pack that reaches the
//!   target size is uploaded as `packs/<sha256 of the pack>.pack` (a name
//!   derived from the content, so two hosts uploading the same pack write the
//!   same object). `flush` uploads what is open: a manifest must be written
//!   only after it returns, which is the durability rule of the store.
//! - `contains` answers from the index of uploaded packs and the open pack.
//!   A crash loses the open pack, and with it nothing a manifest refers to.
//! - The index lives in memory and in an append-only cache file; `refresh`
//!   lists the packs and reads the trailers of those it does not know (other
//!   hosts' uploads, or a lost cache), and forgets packs that are gone.

use super::pack::{self, PackBuilder, PackEntry, TRAILER_LEN};
use super::{ErrorKind, ObjectError, ObjectStore};
use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

pub const PACK_PREFIX: &str = "packs/";
/// Packs of tens of MiB: few objects per disk, and a PUT rate far below what
/// object stores allow (Garage: ~15 small PUTs/s per connection).
pub const DEFAULT_PACK_TARGET: usize = 32 << 20;
/// One cache record: the pack's digest and one entry.
const RECORD_LEN: usize = 32 + pack::ENTRY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: Digest,
    pub offset: u64,
    pub len: u32,
}

pub struct PackedBlocks {
    objects: Arc<dyn ObjectStore>,
    index: RwLock<HashMap<Digest, Location>>,
    open: Mutex<OpenPack>,
    target: usize,
    cache: Option<PathBuf>,
}

#[derive(Default)]
struct OpenPack {
    builder: PackBuilder,
    /// Digest → (offset, len) within the builder's frames.
    frames: HashMap<Digest, (usize, usize)>,
    bytes: Vec<u8>,
}

pub fn pack_key(id: &Digest) -> String {
    format!("{PACK_PREFIX}{}.pack", id.to_hex())
}

fn pack_id(key: &str) -> Option<Digest> {
    let hex = key.strip_prefix(PACK_PREFIX)?.strip_suffix(".pack")?;
    Digest::from_hex(hex)
}

impl PackedBlocks {
    /// Opens the blocks under `objects`: loads the cache file if there is
    /// one, then refreshes the index from the packs.
    pub fn open(
        objects: Arc<dyn ObjectStore>,
        cache: Option<PathBuf>,
        target: usize,
    ) -> Result<PackedBlocks, ObjectError> {
        let blocks = PackedBlocks {
            objects,
            index: RwLock::new(HashMap::new()),
            open: Mutex::new(OpenPack::default()),
            target,
            cache,
        };
        blocks.load_cache();
        blocks.refresh()?;
        Ok(blocks)
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
        let mut index = self.index.write().expect("index lock");
        // A record cut by a crash is ignored; refresh re-reads its pack.
        for r in data.chunks_exact(RECORD_LEN) {
            let pack = Digest(r[..32].try_into().expect("32 bytes"));
            let e = &r[32..];
            let d = Digest(e[..32].try_into().expect("32 bytes"));
            let offset = u64::from_le_bytes(e[32..40].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(e[40..44].try_into().expect("4 bytes"));
            index.insert(d, Location { pack, offset, len });
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
        let mut by_pack: HashMap<Digest, Vec<PackEntry>> = HashMap::new();
        for (d, l) in self.index.read().expect("index lock").iter() {
            by_pack.entry(l.pack).or_default().push(PackEntry {
                digest: *d,
                offset: l.offset,
                len: l.len,
            });
        }
        for (pack, entries) in by_pack {
            self.append_cache(&pack, &entries);
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
        let known: HashSet<Digest> = {
            let index = self.index.read().expect("index lock");
            index.values().map(|l| l.pack).collect()
        };
        let gone: HashSet<&Digest> = known.iter().filter(|p| !present.contains_key(p)).collect();
        if !gone.is_empty() {
            let mut index = self.index.write().expect("index lock");
            index.retain(|_, l| !gone.contains(&l.pack));
        }
        let mut new = 0;
        for (id, size) in &present {
            if known.contains(id) {
                continue;
            }
            let entries = self.read_pack_index(id, *size)?;
            {
                let mut index = self.index.write().expect("index lock");
                for e in &entries {
                    index.entry(e.digest).or_insert(Location {
                        pack: *id,
                        offset: e.offset,
                        len: e.len,
                    });
                }
            }
            if gone.is_empty() {
                self.append_cache(id, &entries);
            }
            new += 1;
        }
        if !gone.is_empty() {
            self.rewrite_cache();
        }
        Ok(new)
    }

    /// A pack's index from two ranged GETs of its end.
    fn read_pack_index(&self, id: &Digest, size: u64) -> Result<Vec<PackEntry>, ObjectError> {
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

    pub fn contains(&self, d: &Digest) -> bool {
        self.index.read().expect("index lock").contains_key(d)
            || self
                .open
                .lock()
                .expect("open pack lock")
                .frames
                .contains_key(d)
    }

    /// Where an uploaded block is.
    pub fn location(&self, d: &Digest) -> Option<Location> {
        self.index.read().expect("index lock").get(d).copied()
    }

    /// Adds a verified frame; false if the block is already there. Uploads
    /// the open pack once it reaches the target size.
    pub fn put_frame(&self, d: &Digest, frame: &[u8]) -> Result<bool, ObjectError> {
        if self.index.read().expect("index lock").contains_key(d) {
            return Ok(false);
        }
        let mut open = self.open.lock().expect("open pack lock");
        if open.frames.contains_key(d) {
            return Ok(false);
        }
        let at = open.builder.frames_len();
        open.builder.push(*d, frame);
        open.bytes.extend_from_slice(frame);
        open.frames.insert(*d, (at, frame.len()));
        if open.builder.frames_len() >= self.target {
            self.upload(&mut open)?;
        }
        Ok(true)
    }

    /// Uploads the open pack, if any: every block put so far is then stored.
    pub fn flush(&self) -> Result<(), ObjectError> {
        let mut open = self.open.lock().expect("open pack lock");
        self.upload(&mut open)
    }

    fn upload(&self, open: &mut OpenPack) -> Result<(), ObjectError> {
        if open.builder.count() == 0 {
            return Ok(());
        }
        let (bytes, entries) = std::mem::take(&mut open.builder).finish();
        let id = Digest::of(&bytes);
        if let Err(e) = self.objects.put(&pack_key(&id), &bytes) {
            // Keep the frames: a later flush retries them.
            let mut b = PackBuilder::new();
            for e in &entries {
                let s = e.offset as usize;
                b.push(e.digest, &bytes[s..s + e.len as usize]);
            }
            open.builder = b;
            return Err(e);
        }
        {
            let mut index = self.index.write().expect("index lock");
            for e in &entries {
                index.insert(
                    e.digest,
                    Location {
                        pack: id,
                        offset: e.offset,
                        len: e.len,
                    },
                );
            }
        }
        self.append_cache(&id, &entries);
        open.frames.clear();
        open.bytes.clear();
        Ok(())
    }

    /// A block's frame: from the open pack, or one ranged GET. The caller
    /// decodes and checks it against `d`, as for a local block file.
    pub fn get_frame(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<bool, ObjectError> {
        {
            let open = self.open.lock().expect("open pack lock");
            if let Some(&(at, len)) = open.frames.get(d) {
                buf.clear();
                buf.extend_from_slice(&open.bytes[at..at + len]);
                return Ok(true);
            }
        }
        let Some(l) = self.location(d) else {
            return Ok(false);
        };
        *buf = self
            .objects
            .get_range(&pack_key(&l.pack), l.offset, u64::from(l.len))?;
        Ok(true)
    }

    /// Every uploaded block and its stored size.
    pub fn blocks(&self) -> Vec<(Digest, u32)> {
        let index = self.index.read().expect("index lock");
        index.iter().map(|(d, l)| (*d, l.len)).collect()
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
