//! Open files and directories of the mount: handles, the bounded cache of
//! parsed manifests (as `ImageReader`s), reads, seeks, and error reporting.

use super::warm::{Touch, WarmToken, Warmer};
use super::{lock, DirEntry, Errno, FsOptions, FsResult, Ino, Whence};
use crate::image::{BlockCache, ImageReader, Prefetcher};
use crate::store::{ManifestEntry, Store};
use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Distinct failures remembered for "log once"; past this, new ones are
/// not logged (the reads still fail), so a dead store cannot grow memory.
const MAX_REPORTED: usize = 65536;
/// Marks a manifest failure (rather than a block index) in `reported`.
const MANIFEST: usize = usize::MAX;

pub(super) fn log(msg: &str) {
    use std::io::Write;
    // Not eprintln!: a closed stderr must not panic a FUSE thread.
    let _ = writeln!(io::stderr(), "diskdump mount: {msg}");
}

struct OpenImage {
    ino: Ino,
    path: String,
    reader: Arc<ImageReader>,
    /// Keeps the image's metadata warming going while the handle is open.
    _warm: Option<Arc<WarmToken>>,
}

enum Handle {
    Dir(Arc<Vec<DirEntry>>),
    Image(Arc<OpenImage>),
}

/// Parsed manifests of recently used images, bounded by their hash lists'
/// size. Open handles hold their own reference, so eviction only frees
/// images nobody has open.
struct Readers {
    lru: LruCache<Ino, Arc<ImageReader>>,
    bytes: usize,
}

pub(super) struct OpenFiles {
    cache: Arc<BlockCache>,
    prefetch: Arc<Prefetcher>,
    read_ahead: usize,
    manifest_bytes: usize,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    readers: Mutex<Readers>,
    reported: Mutex<HashSet<(Ino, usize)>>,
    warmer: Option<Warmer>,
    /// The warming token of each image with open handles.
    warming: Mutex<HashMap<Ino, Weak<WarmToken>>>,
}

/// The image's bytes outside zero blocks (a pass over its hash list).
pub(super) fn data_bytes(r: &ImageReader) -> u64 {
    let m = r.manifest();
    let zero = (0..m.blocks.len()).filter(|&i| r.is_zero(i)).count();
    m.total_size - zero as u64 * m.block_size as u64
}

fn reader_bytes(r: &ImageReader) -> usize {
    r.manifest().blocks.len() * std::mem::size_of::<crate::digest::Digest>()
}

impl OpenFiles {
    pub(super) fn new(opts: &FsOptions) -> OpenFiles {
        OpenFiles {
            cache: BlockCache::new(opts.cache_bytes),
            prefetch: Prefetcher::new(opts.prefetch_threads),
            read_ahead: opts.read_ahead_blocks,
            manifest_bytes: opts.manifest_bytes,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            readers: Mutex::new(Readers {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            reported: Mutex::new(HashSet::new()),
            warmer: (opts.warm_threads > 0).then(|| Warmer::new(opts.warm_threads)),
            warming: Mutex::new(HashMap::new()),
        }
    }

    /// The image's warming token, starting its warming on a first open
    /// (local stores only: a stat of a block file caches its directory
    /// entries and inode; an object store has neither).
    fn warm(
        &self,
        store: &Arc<dyn Store>,
        ino: Ino,
        reader: &Arc<ImageReader>,
    ) -> Option<Arc<WarmToken>> {
        let warmer = self.warmer.as_ref()?;
        store.local_root()?;
        let mut warming = lock(&self.warming);
        if let Some(t) = warming.get(&ino).and_then(Weak::upgrade) {
            return Some(t);
        }
        warming.retain(|_, t| t.strong_count() > 0);
        let token = Arc::new(WarmToken);
        warming.insert(ino, Arc::downgrade(&token));
        drop(warming);
        let s = store.clone();
        // The block's file, as the store names it (its location).
        let touch: Touch = Arc::new(move |d| {
            let _ = std::fs::symlink_metadata(s.block_location(d));
        });
        warmer.start(reader.clone(), &token, touch);
        Some(token)
    }

    /// Logs a failure once per (image, block); later repeats stay quiet.
    fn report(&self, ino: Ino, what: usize, msg: impl FnOnce() -> String) {
        let mut seen = lock(&self.reported);
        if seen.len() >= MAX_REPORTED {
            return;
        }
        if seen.insert((ino, what)) {
            log(&msg());
            if seen.len() == MAX_REPORTED {
                log("too many distinct read errors; not logging further ones");
            }
        }
    }

    /// Maps a failure to read a manifest to an errno: gone is ENOENT,
    /// anything else (damage, I/O) is EIO and logged.
    pub(super) fn manifest_error(&self, ino: Ino, path: &str, e: &anyhow::Error) -> Errno {
        let not_found = e.chain().any(|c| {
            c.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
        });
        if not_found {
            return Errno::ENOENT;
        }
        if e.chain().any(|c| c.is::<crate::store::ManifestReplaced>()) {
            return Errno::ESTALE;
        }
        self.report(ino, MANIFEST, || format!("{path}: {e:#}"));
        Errno::EIO
    }

    fn insert(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    pub(super) fn close(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    pub(super) fn open_dir(&self, list: Vec<DirEntry>) -> u64 {
        self.insert(Handle::Dir(Arc::new(list)))
    }

    pub(super) fn dir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Dir(list)) => Ok(list.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    fn image(&self, fh: u64) -> FsResult<Arc<OpenImage>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle::Image(img)) => Ok(img.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    /// Opens an image; returns the handle and the image's reader.
    pub(super) fn open(
        &self,
        store: &Arc<dyn Store>,
        ino: Ino,
        path: &str,
        entry: &ManifestEntry,
    ) -> FsResult<(u64, Arc<ImageReader>)> {
        let reader = self.reader(store, ino, path, entry)?;
        let img = OpenImage {
            ino,
            path: path.to_string(),
            reader: reader.clone(),
            _warm: self.warm(store, ino, &reader),
        };
        Ok((self.insert(Handle::Image(Arc::new(img))), reader))
    }

    fn reader(
        &self,
        store: &Arc<dyn Store>,
        ino: Ino,
        path: &str,
        entry: &ManifestEntry,
    ) -> FsResult<Arc<ImageReader>> {
        if let Some(r) = lock(&self.readers).lru.get(&ino) {
            return Ok(r.clone());
        }
        // Parsed outside the lock: a big manifest must not stall other opens.
        let m = store
            .read_manifest(entry)
            .map_err(|e| self.manifest_error(ino, path, &e))?;
        if m.block_size != store.block_size() {
            self.report(ino, MANIFEST, || {
                format!(
                    "{path}: the manifest's block size {} differs from the store's {}",
                    m.block_size,
                    store.block_size()
                )
            });
            return Err(Errno::EIO);
        }
        let reader = ImageReader::new(Arc::new(m), store.clone(), self.cache.clone())
            .with_prefetch(self.prefetch.clone(), self.read_ahead);
        let reader = Arc::new(reader);
        let mut rs = lock(&self.readers);
        if let Some(r) = rs.lru.get(&ino) {
            return Ok(r.clone()); // another thread parsed it meanwhile
        }
        rs.bytes += reader_bytes(&reader);
        rs.lru.put(ino, reader.clone());
        // Keep at least the one just opened, whatever its size.
        while rs.bytes > self.manifest_bytes && rs.lru.len() > 1 {
            match rs.lru.pop_lru() {
                Some((_, old)) => rs.bytes -= reader_bytes(&old),
                None => break,
            }
        }
        Ok(reader)
    }

    /// Drops a vanished image's parsed manifest (open handles keep theirs).
    pub(super) fn forget_reader(&self, ino: Ino) {
        let mut rs = lock(&self.readers);
        if let Some(old) = rs.lru.pop(&ino) {
            rs.bytes -= reader_bytes(&old);
        }
    }

    pub(super) fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let img = self.image(fh)?;
        img.reader.read_at(offset, buf).map_err(|e| {
            self.report(img.ino, e.index, || {
                format!("{}: read error in {e}", img.path)
            });
            Errno::EIO
        })
    }

    pub(super) fn seek(&self, fh: u64, offset: i64, whence: Whence) -> FsResult<u64> {
        let img = self.image(fh)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let found = match whence {
            Whence::Data => img.reader.seek_data(offset),
            Whence::Hole => img.reader.seek_hole(offset),
        };
        found.ok_or(Errno::ENXIO)
    }
}

#[cfg(test)]
impl OpenFiles {
    pub(super) fn reported_count(&self) -> usize {
        lock(&self.reported).len()
    }

    /// (parsed manifests cached, their hash-list bytes)
    pub(super) fn cached_manifests(&self) -> (usize, usize) {
        let rs = lock(&self.readers);
        (rs.lru.len(), rs.bytes)
    }
}
