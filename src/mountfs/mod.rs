//! What `diskdump mount` serves, free of FUSE types so it is tested without
//! the kernel; `src/fuse.rs` only translates requests into these calls.
//!
//! - The tree mirrors the manifests (see `tree`). Each directory is listed
//!   from the store on its own (`Store::manifests_under`): on every
//!   `opendir`, on a lookup miss of a plausible name, and for lookups when
//!   its last listing is older than `DIR_TTL`. So dumps written or removed
//!   while mounted appear and vanish without a remount, and a `find` over
//!   the mount lists each store directory about once.
//! - A dump's size and date come from its manifest header (`manifest_info`),
//!   cached per image (they are immutable). The hash list is parsed only when
//!   an image is opened, and parsed manifests are kept in a bounded LRU.
//! - Reads go through `ImageReader` (the read path `restore` uses) with one
//!   shared block cache and prefetcher; a block that cannot be read fails
//!   the reads that touch it with EIO, logged once per block.
//! - While an image is open on a local store, `warm` stats its block files
//!   in the background, so cold random reads wait for block data only.

mod files;
#[cfg(test)]
mod tests;
mod tree;
mod warm;

pub use tree::{image_path, Ino, LEGACY_DIR, ROOT};

use crate::store::{ManifestEntry, Store};
use chrono::NaiveDate;
use files::OpenFiles;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tree::{Inodes, Kind};

/// How long the kernel may trust a directory's attributes and entries, and
/// an image's name: new and removed dumps show within this.
pub const DIR_TTL: Duration = Duration::from_secs(1);
/// Images never change, so their attributes can be cached for long.
pub const IMAGE_ATTR_TTL: Duration = Duration::from_secs(3600);

/// An error for the kernel: a positive errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// The manifest behind an inode was replaced: the kernel looks the
    /// name up again and finds the new image under a new inode.
    pub const ESTALE: Errno = Errno(libc::ESTALE);
}

pub type FsResult<T> = Result<T, Errno>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    Image,
}

/// A file's attributes, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub size: u64,
    /// 512-byte units of non-zero data once the manifest has been read
    /// (0 before): `du` shows the data, and `cp` sees a sparse file and asks
    /// SEEK_DATA / SEEK_HOLE for the zero blocks.
    pub blocks: u64,
    pub time: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub blksize: u32,
}

impl Attr {
    /// How long the kernel may cache these attributes.
    pub fn ttl(&self) -> Duration {
        match self.kind {
            FileKind::Dir => DIR_TTL,
            FileKind::Image => IMAGE_ATTR_TTL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: FileKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

/// Tuning of the read path.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Bytes of decompressed blocks kept in memory.
    pub cache_bytes: usize,
    /// Threads decompressing ahead of sequential readers.
    pub prefetch_threads: usize,
    /// Blocks decompressed ahead on sequential access.
    pub read_ahead_blocks: usize,
    /// Bytes of parsed hash lists kept for images no longer open.
    pub manifest_bytes: usize,
    /// Permission bits of the images (read bits only); directories get the
    /// search bit wherever the read bit is set.
    pub image_mode: u16,
    /// Threads warming open images' block-file metadata on local stores
    /// (see `warm`); 0 turns warming off.
    pub warm_threads: usize,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            cache_bytes: 256 << 20,
            prefetch_threads: 2,
            read_ahead_blocks: 128,
            manifest_bytes: 128 << 20,
            image_mode: 0o400,
            warm_threads: 8,
        }
    }
}

/// Per image, from its header: immutable, so cached for the mount's life.
#[derive(Debug, Clone, Copy)]
struct ImageInfo {
    size: u64,
    time: SystemTime,
    block_size: usize,
    data_bytes: Option<u64>,
}

/// One directory's children as listed from the store at `built`.
struct Listing {
    built: Instant,
    /// Set when a manifest in it was found replaced: list again at once.
    expired: AtomicBool,
    children: BTreeMap<String, Kind>,
}

struct Tree {
    /// The latest listing of each directory seen: a few names per store
    /// directory, kept for the mount's life.
    listings: HashMap<String, Arc<Listing>>,
    inodes: Inodes,
    infos: HashMap<Ino, ImageInfo>,
}

pub struct MountFs {
    store: Arc<dyn Store>,
    image_mode: u16,
    started: SystemTime,
    dumps_at_start: usize,
    tree: Mutex<Tree>,
    /// Serializes re-listings so a burst of misses lists the store once.
    refreshing: Mutex<()>,
    files: OpenFiles,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent; a panic elsewhere
    // must not take the whole mount down with poisoned locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MountFs {
    /// Lists the store once: to fail early on an unreadable one, and to say
    /// how many dumps there are.
    pub fn new(store: Arc<dyn Store>, opts: &FsOptions) -> anyhow::Result<MountFs> {
        let dumps_at_start = store.manifests()?.len();
        Ok(MountFs {
            image_mode: opts.image_mode & 0o444,
            files: OpenFiles::new(opts),
            store,
            started: SystemTime::now(),
            dumps_at_start,
            tree: Mutex::new(Tree {
                listings: HashMap::new(),
                inodes: Inodes::default(),
                infos: HashMap::new(),
            }),
            refreshing: Mutex::new(()),
        })
    }

    /// Number of dumps when mounted.
    pub fn image_count(&self) -> usize {
        self.dumps_at_start
    }

    /// `dir`'s children as listed at most `max_age` ago (listing it again
    /// if older). An image gone from a new listing has its inode retired.
    fn listing(&self, dir: &str, max_age: Duration) -> FsResult<Arc<Listing>> {
        let asked = Instant::now();
        let fresh = |l: &Listing| {
            !l.expired.load(Ordering::Relaxed) && (l.built >= asked || asked - l.built <= max_age)
        };
        let cached = |t: &Tree| t.listings.get(dir).cloned();
        if let Some(l) = cached(&lock(&self.tree)).filter(|l| fresh(l)) {
            return Ok(l);
        }
        let _one_at_a_time = lock(&self.refreshing);
        if let Some(l) = cached(&lock(&self.tree)).filter(|l| l.built >= asked) {
            return Ok(l); // another thread listed it while we waited
        }
        let built = Instant::now();
        let entries = self
            .store
            .manifests_under(&tree::store_prefix(dir))
            .map_err(|e| {
                files::log(&format!("cannot list the dumps: {e:#}"));
                Errno::EIO
            })?;
        let new = Arc::new(Listing {
            built,
            expired: AtomicBool::new(false),
            children: tree::children(&entries, dir),
        });
        let mut t = lock(&self.tree);
        if let Some(old) = t.listings.insert(dir.to_string(), new.clone()) {
            for (name, kind) in &old.children {
                // Gone, or another manifest at the same path (its identity
                // differs): the old image keeps its inode for open handles,
                // the path gets a new one, so no cached page is reused.
                if matches!(kind, Kind::Image(_)) && new.children.get(name) != Some(kind) {
                    // Its attributes stay (a few bytes): open handles still stat it.
                    if let Some(ino) = t.inodes.retire(&tree::join(dir, name)) {
                        self.files.forget_reader(ino);
                    }
                }
            }
        }
        Ok(new)
    }

    /// After ESTALE on an image: its directory is listed again on next use.
    fn expire_listing(&self, image_path: &str, e: Errno) -> Errno {
        if e == Errno::ESTALE {
            let dir = image_path.rsplit_once('/').map_or("", |(d, _)| d);
            if let Some(l) = lock(&self.tree).listings.get(dir) {
                l.expired.store(true, Ordering::Relaxed);
            }
        }
        e
    }

    fn node(&self, ino: Ino) -> FsResult<tree::Node> {
        lock(&self.tree)
            .inodes
            .get(ino)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn dir_path(&self, ino: Ino) -> FsResult<String> {
        let n = self.node(ino)?;
        match n.kind {
            Kind::Dir => Ok(n.path),
            Kind::Image(_) => Err(Errno::ENOTDIR),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let dir = self.dir_path(parent)?;
        let mut listing = self.listing(&dir, DIR_TTL)?;
        if !listing.children.contains_key(name) && tree::plausible(&dir, name) {
            listing = self.listing(&dir, Duration::ZERO)?; // maybe written just now
        }
        let kind = listing.children.get(name).ok_or(Errno::ENOENT)?;
        let ino = lock(&self.tree).inodes.ino_for(parent, &dir, name, kind);
        self.getattr(ino)
    }

    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let node = self.node(ino)?;
        match &node.kind {
            Kind::Dir => Ok(self.dir_attr(ino, &node.path)),
            Kind::Image(entry) => {
                let info = self
                    .image_info(ino, &node.path, entry)
                    .map_err(|e| self.expire_listing(&node.path, e))?;
                Ok(Attr {
                    ino,
                    kind: FileKind::Image,
                    size: info.size,
                    blocks: info.data_bytes.unwrap_or(0).div_ceil(512),
                    time: info.time,
                    perm: self.image_mode,
                    nlink: 1,
                    blksize: info.block_size as u32,
                })
            }
        }
    }

    fn dir_attr(&self, ino: Ino, path: &str) -> Attr {
        // From the last listing, if any (a stat must not list the store).
        let subdirs = lock(&self.tree).listings.get(path).map_or(0, |l| {
            l.children
                .values()
                .filter(|k| matches!(k, Kind::Dir))
                .count()
        });
        Attr {
            ino,
            kind: FileKind::Dir,
            size: 0,
            blocks: 0,
            time: dated_dir_time(path).unwrap_or(self.started),
            perm: self.image_mode | (self.image_mode >> 2),
            nlink: 2 + subdirs as u32,
            blksize: 4096,
        }
    }

    fn image_info(&self, ino: Ino, path: &str, entry: &ManifestEntry) -> FsResult<ImageInfo> {
        if let Some(i) = lock(&self.tree).infos.get(&ino) {
            return Ok(*i);
        }
        let mi = self
            .store
            .manifest_info(entry)
            .map_err(|e| self.files.manifest_error(ino, path, &e))?;
        let time = mi.date.map(SystemTime::from).or(mi.modified);
        let info = ImageInfo {
            size: mi.total_size,
            time: time.unwrap_or(self.started),
            block_size: mi.block_size,
            data_bytes: None,
        };
        Ok(*lock(&self.tree).infos.entry(ino).or_insert(info))
    }

    /// Opens an image for reading, parsing its manifest if not cached.
    pub fn open(&self, ino: Ino, write: bool) -> FsResult<u64> {
        let node = self.node(ino)?;
        let Kind::Image(entry) = &node.kind else {
            return Err(Errno::EISDIR);
        };
        if write {
            return Err(Errno::EROFS);
        }
        let (fh, reader) = self
            .files
            .open(&self.store, ino, &node.path, entry)
            .map_err(|e| self.expire_listing(&node.path, e))?;
        let known = |t: &Tree| t.infos.get(&ino).is_some_and(|i| i.data_bytes.is_some());
        if !known(&lock(&self.tree)) {
            let data = files::data_bytes(&reader); // outside the lock: O(blocks)
            if let Some(i) = lock(&self.tree).infos.get_mut(&ino) {
                i.data_bytes = Some(data);
            }
        }
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        self.files.read(fh, offset, buf)
    }

    /// SEEK_DATA / SEEK_HOLE: zero blocks are holes.
    pub fn seek(&self, fh: u64, offset: i64, whence: Whence) -> FsResult<u64> {
        self.files.seek(fh, offset, whence)
    }

    pub fn release(&self, fh: u64) {
        self.files.close(fh);
    }

    /// Lists a directory as it is now; later `readdir`s page through it.
    pub fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let node = self.node(ino)?;
        if !matches!(node.kind, Kind::Dir) {
            return Err(Errno::ENOTDIR);
        }
        let listing = self.listing(&node.path, Duration::ZERO)?;
        let mut list = vec![
            DirEntry {
                ino,
                kind: FileKind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: node.parent,
                kind: FileKind::Dir,
                name: "..".into(),
            },
        ];
        let mut t = lock(&self.tree);
        for (name, kind) in &listing.children {
            list.push(DirEntry {
                ino: t.inodes.ino_for(ino, &node.path, name, kind),
                kind: match kind {
                    Kind::Dir => FileKind::Dir,
                    Kind::Image(_) => FileKind::Image,
                },
                name: name.clone(),
            });
        }
        drop(t);
        Ok(self.files.open_dir(list))
    }

    /// The listing `opendir` took; the caller pages through it by offset.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.files.dir(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.files.close(fh);
    }
}

/// `2026/04` → 2026-04-01 00:00 UTC, for the dated directories.
fn dated_dir_time(path: &str) -> Option<SystemTime> {
    let mut parts = path.split('/').map(|p| p.parse::<u32>().ok());
    let y = parts.next()??;
    let m = parts.next().unwrap_or(Some(1))?;
    let d = parts.next().unwrap_or(Some(1))?;
    let date = NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d)?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().into())
}
