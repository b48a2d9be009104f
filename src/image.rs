//! The one read path (docs/DESIGN.md §4): `ImageReader::read_at` maps offsets to
//! blocks, serves zero blocks from memory, and fetches the rest through a
//! shared, byte-bounded LRU of decompressed, verified blocks. Concurrent misses
//! on one block load it once; sequential access decompresses ahead on a pool
//! of worker threads. `restore` and `mount` both read through it.

use crate::digest::Digest;
use crate::manifest::Manifest;
use crate::store::{decode_block, get_block, BlockError, Store};
use lru::LruCache;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};

/// A decompressed, verified block.
pub type BlockBytes = Arc<Vec<u8>>;

type LoadResult = Result<BlockBytes, BlockError>;

struct Loading {
    result: Mutex<Option<LoadResult>>,
    done: Condvar,
}

struct CacheState {
    lru: LruCache<Digest, BlockBytes>,
    bytes: usize,
    loading: HashMap<Digest, Arc<Loading>>,
}

/// Decompressed blocks shared by every reader of a store, bounded in bytes.
pub struct BlockCache {
    state: Mutex<CacheState>,
    capacity: usize,
    /// Buffers of evicted blocks nobody held any more, for the next loads:
    /// a fresh 128 KiB buffer costs page faults and a memset, a reused one
    /// neither (together ~10% of a miss's CPU).
    spare: Mutex<Vec<Vec<u8>>>,
    /// Blocks whose SHA-256 this cache has checked, with a fingerprint
    /// (xxh3-64) of the frame that was checked: an evicted block read back
    /// as the same frame decodes to the same bytes, so only the fingerprint
    /// is compared (a few µs against ~85 µs of SHA-256 per 128 KiB; random
    /// reads through the mount reload evicted blocks all the time). A frame
    /// that differs in any byte is checked in full again. Bounded.
    checked: Mutex<LruCache<Digest, u64>>,
}

/// One remembered check per this many bytes of cache (~80 bytes each:
/// 256 MiB of cache remember 131,072 blocks, 16 GiB of image, in ~10 MiB).
const BYTES_PER_CHECKED: usize = 2048;

/// Evicted buffers kept for reuse, at most (8 MiB of 128 KiB blocks).
const MAX_SPARE: usize = 64;

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Arc<BlockCache> {
        Arc::new(BlockCache {
            state: Mutex::new(CacheState {
                lru: LruCache::unbounded(),
                bytes: 0,
                loading: HashMap::new(),
            }),
            capacity: capacity_bytes,
            spare: Mutex::new(Vec::new()),
            checked: Mutex::new(LruCache::new(
                NonZeroUsize::new((capacity_bytes / BYTES_PER_CHECKED).max(64)).expect("not zero"),
            )),
        })
    }

    /// Whether `frame` is the very frame of `d` that was checked before.
    fn was_checked(&self, d: &Digest, fingerprint: u64) -> bool {
        let mut c = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        c.get(d) == Some(&fingerprint)
    }

    fn remember_checked(&self, d: &Digest, fingerprint: u64) {
        let mut c = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        c.put(*d, fingerprint);
    }

    /// How many checked blocks are remembered (tests).
    #[cfg(test)]
    fn checked_len(&self) -> usize {
        self.checked.lock().unwrap().len()
    }

    /// An empty buffer for a block of up to `len` bytes, reused if one is spare.
    fn buffer(&self, len: usize) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match spare {
            Some(b) if b.capacity() >= len => b,
            _ => Vec::with_capacity(len),
        }
    }

    /// Keeps an evicted block's buffer for reuse if no reader holds it.
    fn recycle(&self, evicted: Vec<BlockBytes>) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        for b in evicted {
            if spare.len() >= MAX_SPARE {
                break;
            }
            if let Ok(v) = Arc::try_unwrap(b) {
                spare.push(v);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding the map leaves it consistent (no partial edits).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True if the block is cached or being loaded (no need to prefetch it).
    pub fn has(&self, d: &Digest) -> bool {
        let s = self.lock();
        s.lru.contains(d) || s.loading.contains_key(d)
    }

    /// Returns the cached block or loads it; callers that miss on a block
    /// another thread is loading wait for that load instead of repeating it.
    /// The lock is held only around the map, never during a load.
    pub fn get_or_load(&self, d: &Digest, load: impl FnOnce() -> LoadResult) -> LoadResult {
        let slot = {
            let mut s = self.lock();
            if let Some(b) = s.lru.get(d) {
                return Ok(b.clone());
            }
            match s.loading.get(d) {
                Some(l) => Some(l.clone()),
                None => {
                    s.loading.insert(
                        *d,
                        Arc::new(Loading {
                            result: Mutex::new(None),
                            done: Condvar::new(),
                        }),
                    );
                    None
                }
            }
        };
        if let Some(l) = slot {
            let mut r = l.result.lock().unwrap_or_else(|p| p.into_inner());
            while r.is_none() {
                r = l.done.wait(r).unwrap_or_else(|p| p.into_inner());
            }
            return r.clone().expect("set before notify");
        }
        let result = load();
        let mut s = self.lock();
        let l = s.loading.remove(d).expect("inserted above");
        let mut evicted = Vec::new();
        if let Ok(b) = &result {
            s.bytes += b.len();
            if let Some(old) = s.lru.put(*d, b.clone()) {
                s.bytes -= old.len();
            }
            while s.bytes > self.capacity {
                match s.lru.pop_lru() {
                    Some((_, old)) => {
                        s.bytes -= old.len();
                        evicted.push(old);
                    }
                    None => break,
                }
            }
        }
        drop(s);
        self.recycle(evicted);
        *l.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
        l.done.notify_all();
        result
    }
}

thread_local! {
    static FRAME_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads, decodes and verifies one block from the store.
pub fn load_block(store: &dyn Store, d: &Digest) -> LoadResult {
    FRAME_BUF.with(|f| {
        let mut out = Vec::with_capacity(store.block_size());
        get_block(store, d, &mut f.borrow_mut(), &mut out)?;
        Ok(Arc::new(out))
    })
}

/// Like `load_block`, into a buffer `cache` had spare, and with the SHA-256
/// check skipped when the frame is one the cache checked before.
fn load_into_spare(store: &dyn Store, cache: &BlockCache, d: &Digest) -> LoadResult {
    FRAME_BUF.with(|f| {
        let frame = &mut *f.borrow_mut();
        store.get_frame(d, frame)?;
        let fingerprint = twox_hash::XxHash3_64::oneshot(frame);
        let known = cache.was_checked(d, fingerprint);
        let mut out = cache.buffer(store.block_size());
        decode_block(d, frame, store.block_size(), &mut out, !known)?;
        if !known {
            cache.remember_checked(d, fingerprint);
        }
        Ok(Arc::new(out))
    })
}

type LoadRequest = (Arc<dyn Store>, Arc<BlockCache>, Digest);

/// Worker threads that load blocks into a cache ahead of the reader.
pub struct Prefetcher {
    tx: SyncSender<LoadRequest>,
}

impl Prefetcher {
    pub fn new(threads: usize) -> Arc<Prefetcher> {
        let (tx, rx) = sync_channel::<LoadRequest>(threads * 64);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("prefetch-{i}"))
                .spawn(move || prefetch_worker(&rx))
                .expect("spawning a prefetch thread");
        }
        Arc::new(Prefetcher { tx })
    }

    /// Queues a load unless the queue is full (prefetching is only a hint).
    fn hint(&self, job: LoadRequest) {
        if let Err(TrySendError::Disconnected(_)) = self.tx.try_send(job) {
            unreachable!("prefetch workers live as long as the sender");
        }
    }
}

fn prefetch_worker(rx: &Mutex<Receiver<LoadRequest>>) {
    loop {
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((store, cache, d)) = job else { return };
        // Errors are not cached: the real read reports them.
        let _ = cache.get_or_load(&d, || load_into_spare(&*store, &cache, &d));
    }
}

/// A read that failed: which block, where it starts in the image, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub index: usize,
    pub offset: u64,
    pub source: BlockError,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {} at image offset {}: {}",
            self.index, self.offset, self.source
        )
    }
}

impl std::error::Error for ReadError {}

/// How far from the previous read's end a read may start and still count as
/// sequential: two blocks, or four requests of its length.
fn ahead_tolerance(block_size: u64, len: u64) -> u64 {
    (2 * block_size).max(4 * len)
}

/// Blocks to read ahead after `run` sequential reads in a row, at most `max`.
fn ahead_window(run: usize, max: usize) -> usize {
    (4usize << run.min(20)).min(max)
}

/// Random-access reads of one dump's image.
pub struct ImageReader {
    manifest: Arc<Manifest>,
    store: Arc<dyn Store>,
    cache: Arc<BlockCache>,
    zero: Digest,
    prefetch: Option<(Arc<Prefetcher>, usize)>,
    last_end: AtomicU64,
    ahead_until: AtomicUsize,
    /// Reads in a row that followed the previous one (read-ahead ramps up with it).
    run: AtomicUsize,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl ImageReader {
    pub fn new(
        manifest: Arc<Manifest>,
        store: Arc<dyn Store>,
        cache: Arc<BlockCache>,
    ) -> ImageReader {
        let zero = manifest.zero_digest();
        ImageReader {
            manifest,
            store,
            cache,
            zero,
            prefetch: None,
            last_end: AtomicU64::new(0),
            ahead_until: AtomicUsize::new(0),
            run: AtomicUsize::new(0),
        }
    }

    /// Enables read-ahead of `blocks` blocks on sequential access.
    pub fn with_prefetch(mut self, p: Arc<Prefetcher>, blocks: usize) -> ImageReader {
        self.prefetch = Some((p, blocks));
        self
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn size(&self) -> u64 {
        self.manifest.total_size
    }

    /// True once a read happened and the last one did not continue the
    /// one before (a random reader; read-ahead is off for it).
    pub fn reading_randomly(&self) -> bool {
        self.last_end.load(Ordering::Relaxed) != 0 && self.run.load(Ordering::Relaxed) == 0
    }

    /// True if block `idx` is a full all-zero block (served without I/O).
    pub fn is_zero(&self, idx: usize) -> bool {
        self.manifest.blocks[idx] == self.zero
            && self.manifest.block_len(idx) == self.manifest.block_size
    }

    fn err(&self, index: usize, source: BlockError) -> ReadError {
        ReadError {
            index,
            offset: index as u64 * self.manifest.block_size as u64,
            source,
        }
    }

    /// Block `idx`'s bytes; None for a zero block.
    pub fn block(&self, idx: usize) -> Result<Option<BlockBytes>, ReadError> {
        if self.is_zero(idx) {
            return Ok(None);
        }
        let d = self.manifest.blocks[idx];
        let (store, cache) = (&*self.store, &*self.cache);
        self.cache
            .get_or_load(&d, || load_into_spare(store, cache, &d))
            .map(Some)
            .map_err(|e| self.err(idx, e))
    }

    /// Block `idx` for a reader going through the image in order: like
    /// `block`, and loads the blocks after it ahead.
    pub fn next_block(&self, idx: usize) -> Result<Option<BlockBytes>, ReadError> {
        let bs = self.manifest.block_size as u64;
        let offset = idx as u64 * bs;
        self.read_ahead(offset, offset + self.manifest.block_len(idx) as u64, idx);
        self.block(idx)
    }

    /// The error for block `idx` decoding to fewer bytes than the manifest
    /// needs (an old manifest without total_size, cut short).
    pub fn short_block(&self, idx: usize, got: usize) -> ReadError {
        let reason = format!(
            "block is {got} bytes, the manifest needs {}",
            self.manifest.block_len(idx)
        );
        let digest = self.manifest.blocks[idx];
        self.err(idx, BlockError::Corrupt { digest, reason })
    }

    /// Schedules the blocks after `idx` when access looks sequential: the
    /// read starts near where the previous one ended (concurrent requests of
    /// one sequential reader arrive slightly out of order). The window ramps
    /// up from 8 blocks, doubling per read in a row, to `n`, so that the
    /// rare random read that lands near the previous one costs a few block
    /// loads, not a full window (each load is a whole block's decode and
    /// SHA-256: with a fixed 16 MiB window, random 4 KiB reads on a 2 GiB
    /// image spent more CPU on read-ahead than on the reads themselves).
    fn read_ahead(&self, offset: u64, end: u64, idx: usize) {
        let Some((p, n)) = &self.prefetch else { return };
        let bs = self.manifest.block_size as u64;
        let near = ahead_tolerance(bs, end - offset);
        let last = self.last_end.swap(end, Ordering::Relaxed);
        if offset.abs_diff(last) > near {
            self.run.store(0, Ordering::Relaxed);
            self.ahead_until.store(idx + 1, Ordering::Relaxed);
            return; // a random read: no read-ahead
        }
        let run = self.run.fetch_add(1, Ordering::Relaxed) + 1;
        let window = ahead_window(run, *n);
        let want = (idx + 1 + window).min(self.manifest.blocks.len());
        let from = self
            .ahead_until
            .fetch_max(want, Ordering::Relaxed)
            .max(idx + 1);
        for i in from..want {
            let d = self.manifest.blocks[i];
            if !self.is_zero(i) && !self.cache.has(&d) {
                p.hint((self.store.clone(), self.cache.clone(), d));
            }
        }
    }

    /// Fills `buf` from `offset`; returns the bytes read (short only at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, ReadError> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len().min((size - offset) as usize);
        let (first, _) = self.manifest.locate(offset).expect("offset < size");
        self.read_ahead(offset, offset + len as u64, first);
        let bs = self.manifest.block_size as u64;
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let idx = (pos / bs) as usize;
            let within = (pos % bs) as usize;
            let n = (self.manifest.block_len(idx) - within).min(len - done);
            let dst = &mut buf[done..done + n];
            match self.block(idx)? {
                // A verified block shorter than the manifest says (an old
                // manifest without total_size, cut short): fail, never panic.
                Some(b) if b.len() < within + n => return Err(self.short_block(idx, b.len())),
                Some(b) => dst.copy_from_slice(&b[within..within + n]),
                None => dst
                    .chunks_mut(ZEROS.len())
                    .for_each(|c| c.copy_from_slice(&ZEROS[..c.len()])),
            }
            done += n;
        }
        Ok(len)
    }

    /// SEEK_DATA: the first offset ≥ `offset` not inside a zero block.
    pub fn seek_data(&self, offset: u64) -> Option<u64> {
        let (idx, _) = self.manifest.locate(offset)?;
        let bs = self.manifest.block_size as u64;
        (idx..self.manifest.blocks.len())
            .find(|&i| !self.is_zero(i))
            .map(|i| (i as u64 * bs).max(offset))
    }

    /// SEEK_HOLE: the first offset ≥ `offset` inside a zero block, or the end.
    pub fn seek_hole(&self, offset: u64) -> Option<u64> {
        let (idx, _) = self.manifest.locate(offset)?;
        let bs = self.manifest.block_size as u64;
        Some(
            (idx..self.manifest.blocks.len())
                .find(|&i| self.is_zero(i))
                .map_or(self.size(), |i| (i as u64 * bs).max(offset)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::is_zero;
    use crate::store::LocalStore;
    use crate::testutil::{image, manifest, BS};

    /// A store holding `data` as one image; returns the reader's parts.
    fn setup(data: &[u8]) -> (tempfile::TempDir, Arc<dyn Store>, Arc<Manifest>) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Some(BS)).unwrap();
        let m = manifest(&store, "2026-01-01T00:00:00+00:00", data);
        (dir, Arc::new(store), Arc::new(m))
    }

    #[test]
    fn reads_at_odd_offsets_and_lengths() {
        let data = image();
        let (_d, store, m) = setup(&data);
        let r = ImageReader::new(m, store, BlockCache::new(1 << 20))
            .with_prefetch(Prefetcher::new(2), 4);
        let size = data.len() as u64;
        assert_eq!(r.size(), size);
        for (off, len) in [
            (0, 1),
            (0, BS),
            (BS - 1, 2),
            (100, 3 * BS),
            (5 * BS, 1000),
            (5 * BS + 999, 5),
            (0, data.len() + 100),
            (3, 5 * BS + 7),
        ] {
            let mut buf = vec![0xAAu8; len];
            let n = r.read_at(off as u64, &mut buf).unwrap();
            let want = &data[off.min(data.len())..(off + len).min(data.len())];
            assert_eq!(n, want.len(), "off {off} len {len}");
            assert_eq!(&buf[..n], want, "off {off} len {len}");
        }
        let mut buf = [0u8; 10];
        assert_eq!(r.read_at(size, &mut buf).unwrap(), 0);
        assert_eq!(r.read_at(size + 5000, &mut buf).unwrap(), 0);
        assert!(r.is_zero(1) && r.is_zero(3) && !r.is_zero(5));
        assert!(r.block(1).unwrap().is_none());
    }

    #[test]
    fn zero_ragged_tail_is_data_not_a_hole() {
        let mut data = vec![0u8; BS];
        data.extend(vec![0u8; 10]);
        let (_d, store, m) = setup(&data);
        let r = ImageReader::new(m, store, BlockCache::new(1 << 20));
        assert!(r.is_zero(0) && !r.is_zero(1));
        let mut buf = vec![1u8; 20];
        assert_eq!(r.read_at(BS as u64 - 10, &mut buf).unwrap(), 20);
        assert!(is_zero(&buf));
    }

    #[test]
    fn short_block_is_an_error_not_a_panic() {
        let data = image();
        let (_d, store, m) = setup(&data);
        // Claim the 1000-byte tail is a full block.
        let m = Manifest {
            total_size: 6 * BS as u64,
            ..(*m).clone()
        };
        let r = ImageReader::new(Arc::new(m), store, BlockCache::new(1 << 20));
        let mut buf = vec![0u8; 2000];
        let e = r.read_at(5 * BS as u64 + 500, &mut buf).unwrap_err();
        assert!(e.to_string().contains("block is 1000 bytes"), "{e}");
        assert_eq!(r.read_at(5 * BS as u64, &mut buf[..1000]).unwrap(), 1000);
    }

    #[test]
    fn holes_and_data() {
        let data = image();
        let (_d, store, m) = setup(&data);
        let r = ImageReader::new(m, store, BlockCache::new(1 << 20));
        let bs = BS as u64;
        assert_eq!(r.seek_data(0), Some(0));
        assert_eq!(r.seek_data(bs), Some(2 * bs));
        assert_eq!(r.seek_data(bs + 7), Some(2 * bs));
        assert_eq!(r.seek_data(2 * bs + 7), Some(2 * bs + 7));
        assert_eq!(r.seek_hole(0), Some(bs));
        assert_eq!(r.seek_hole(bs + 3), Some(bs + 3));
        assert_eq!(r.seek_hole(4 * bs), Some(data.len() as u64));
        assert_eq!(r.seek_data(data.len() as u64), None);
        assert_eq!(r.seek_hole(data.len() as u64), None);
    }

    #[test]
    fn corrupt_block_fails_only_its_range() {
        let data = image();
        let (dir, store, m) = setup(&data);
        let victim = m.blocks[2];
        let path = LocalStore::open(dir.path()).unwrap().block_path(&victim);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        let r = ImageReader::new(m, store, BlockCache::new(1 << 20));
        let mut buf = vec![0u8; 100];
        let e = r.read_at(2 * BS as u64 + 50, &mut buf).unwrap_err();
        assert_eq!((e.index, e.offset), (2, 2 * BS as u64));
        assert!(
            matches!(e.source, BlockError::Corrupt { digest, .. } if digest == victim),
            "{e}"
        );
        assert_eq!(r.read_at(0, &mut buf).unwrap(), 100);
        assert_eq!(&buf[..], &data[..100]);
        std::fs::remove_file(&path).unwrap();
        let e = r.read_at(2 * BS as u64, &mut buf).unwrap_err();
        assert_eq!(e.source, BlockError::Missing(victim));
    }

    /// An evicted block read back skips SHA-256 only if its frame is byte
    /// for byte the one checked: a block file replaced since (here by
    /// another block's valid frame) is checked again and fails.
    #[test]
    fn a_remembered_check_holds_only_for_the_same_frame() {
        let data = image();
        let (dir, store, m) = setup(&data);
        let (victim, other) = (m.blocks[2], m.blocks[4]);
        let local = LocalStore::open(dir.path()).unwrap();
        let (path, other_path) = (local.block_path(&victim), local.block_path(&other));
        let original = std::fs::read(&path).unwrap();
        // Room for one block: every read of another block evicts the last.
        let cache = BlockCache::new(BS);
        let r = ImageReader::new(m, store, cache.clone());
        let mut buf = vec![0u8; BS];
        r.read_at(2 * BS as u64, &mut buf).unwrap();
        assert_eq!(buf, data[2 * BS..3 * BS]);
        assert_eq!(cache.checked_len(), 1);
        r.read_at(4 * BS as u64, &mut buf).unwrap(); // evicts block 2
        std::fs::copy(&other_path, &path).unwrap();
        let e = r.read_at(2 * BS as u64, &mut buf).unwrap_err();
        assert!(
            matches!(&e.source, BlockError::Corrupt { digest, reason }
                if *digest == victim && reason.contains("hashes to")),
            "{e}"
        );
        // The right frame again: read, and the bytes are right.
        std::fs::write(&path, &original).unwrap();
        r.read_at(2 * BS as u64, &mut buf).unwrap();
        assert_eq!(buf, data[2 * BS..3 * BS]);
    }

    /// The remembered checks are bounded like the cache they belong to.
    #[test]
    fn remembered_checks_are_bounded() {
        let data: Vec<u8> = (0..200 * BS)
            .map(|i| (i / BS) as u8 ^ (i % 7) as u8)
            .collect();
        let (_d, store, m) = setup(&data);
        let cache = BlockCache::new(BS);
        let r = ImageReader::new(m, store, cache.clone());
        let mut buf = vec![0u8; BS];
        for i in 0..200u64 {
            r.read_at(i * BS as u64, &mut buf).unwrap();
        }
        assert_eq!(cache.checked_len(), 64);
    }

    #[test]
    fn read_ahead_ramps_up_and_skips_random_reads() {
        assert_eq!(ahead_tolerance(128 << 10, 4096), 256 << 10);
        assert_eq!(ahead_tolerance(128 << 10, 1 << 20), 4 << 20);
        let w: Vec<usize> = (1..=7).map(|r| ahead_window(r, 128)).collect();
        assert_eq!(w, [8, 16, 32, 64, 128, 128, 128]);
        assert_eq!(ahead_window(usize::MAX, 3), 3);
        // A random read near the previous one queues 8 blocks, not the
        // window; a read far from it queues nothing.
        let data: Vec<u8> = (0..40 * BS).map(|i| (i / 7 % 251) as u8 + 1).collect();
        let (_d, store, m) = setup(&data);
        let cache = BlockCache::new(64 * BS);
        let r = ImageReader::new(m, store, cache.clone()).with_prefetch(Prefetcher::new(1), 32);
        let ahead = |from: usize, to: usize| {
            (from..to)
                .filter(|i| cache.has(&r.manifest().blocks[*i]))
                .count()
        };
        // Waits for the loader threads (polling: the machine may be slow).
        let settle = |from: usize, to: usize, want: usize| {
            for _ in 0..500 {
                if ahead(from, to) >= want {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
            ahead(from, to)
        };
        let mut buf = [0u8; 4096];
        r.read_at(20 * BS as u64, &mut buf).unwrap();
        assert_eq!(settle(21, 40, 0), 0, "a first read loads only its block");
        r.read_at(20 * BS as u64 + 100, &mut buf).unwrap();
        assert_eq!(
            settle(21, 40, 8),
            8,
            "a second read in a row loads 8 blocks ahead"
        );
        r.read_at(2 * BS as u64, &mut buf).unwrap();
        assert_eq!(settle(3, 20, 0), 0, "a far read loads nothing ahead");
    }

    #[test]
    fn concurrent_misses_load_once_and_cache_is_bounded() {
        let cache = BlockCache::new(3 * BS);
        let loads = AtomicUsize::new(0);
        let d = Digest::of(b"x");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let b = cache
                        .get_or_load(&d, || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Arc::new(vec![7u8; BS]))
                        })
                        .unwrap();
                    assert_eq!(b.len(), BS);
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        for i in 0..10u8 {
            let _ = cache.get_or_load(&Digest([i; 32]), || Ok(Arc::new(vec![i; BS])));
        }
        assert!(cache.lock().bytes <= 3 * BS);
        let spare = cache.spare.lock().unwrap().len();
        assert_eq!(spare, 8, "evicted buffers nobody holds are kept for reuse");
        assert!(cache.has(&Digest([9; 32])) && !cache.has(&Digest([0; 32])));
        // A failed load is reported, not cached: the next read tries again.
        let bad = Digest([42; 32]);
        let e = cache.get_or_load(&bad, || Err(BlockError::Missing(bad)));
        assert_eq!(e.unwrap_err(), BlockError::Missing(bad));
        assert!(!cache.has(&bad));
        assert!(cache.get_or_load(&bad, || Ok(Arc::new(vec![1]))).is_ok());
    }
}
