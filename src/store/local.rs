//! The store as a directory tree (docs/DESIGN.md §1): `.blockstore/ab/cd/<hash>.lz4`,
//! dated manifests under the root, Python-era manifests under
//! `.blockstore/manifests/`.

use super::dirty::{self, DirtyMarker};
use super::index::{self, Additions, IndexView};
use super::lock::{LockKind, StoreLock};
use super::{
    modes, BlockError, FileId, LiveSet, ManifestEntry, ManifestInfo, ManifestReplaced, Store,
    StoreConfig, SweepStats, WalkItem, WriteSession,
};
use crate::digest::Digest;
use crate::manifest::{Manifest, ManifestHeader, SpooledHashes};
use anyhow::{bail, Context, Result};
use diskdump_agent::blockfmt;
use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

pub struct LocalStore {
    root: PathBuf,
    blocks: PathBuf,
    config: StoreConfig,
    tmp_seq: AtomicU64,
    /// Counts the blocks a sync must cover, each once it is in place (by
    /// `index_add`: a block file written, or one found whole on disk);
    /// `synced` is the count the last finished `sync` covered. Equal:
    /// nothing to sync (see `end_writes`).
    unsynced: AtomicU64,
    synced: AtomicU64,
    /// Set once this process registered as a writer: blocks it finds present
    /// get an mtime at least this, so a gc keeps them (see `store::gc`).
    writer_since: Mutex<Option<SystemTime>>,
    /// The index of present blocks, for writers (see `store::index`).
    index: IndexUse,
}

/// How this process's writers use the index.
#[derive(Default)]
struct IndexUse {
    view: std::sync::RwLock<IndexState>,
    /// Blocks stored or found whole since the last commit.
    added: Mutex<Option<Additions>>,
}

#[derive(Default)]
enum IndexState {
    /// No writer registered yet.
    #[default]
    Unloaded,
    /// Loaded when the first writer registered with no gc running.
    Using(IndexView),
    /// For good: a writer of this process found a gc running, so one of
    /// its registrations may lack the `.index` mark.
    Disabled,
}

const CONFIG: &str = "config.json";
pub(super) const WRITERS: &str = "writers";
/// Flocked by a running gc; writers test it (see `store::index`).
const GC_ACTIVE: &str = "gc-active";
/// How often a writer re-makes a block directory that a gc's tidy removed
/// under it before giving up (one tidy can take it at most twice).
const DIR_RACE_TRIES: u32 = 20;

impl LocalStore {
    /// Opens an existing store; a directory without one is a clear error.
    /// Sets the process umask for the store's modes (see `modes`).
    pub fn open(root: &Path) -> Result<LocalStore> {
        let blocks = root.join(".blockstore");
        let cfg_path = blocks.join(CONFIG);
        let text = match fs::read_to_string(&cfg_path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let what = if root.is_dir() {
                    "is not a diskdump store (no .blockstore/config.json)"
                } else {
                    "does not exist"
                };
                bail!(
                    "{} {what}; create a store with `diskdump init {}` or give --store",
                    root.display(),
                    root.display()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", cfg_path.display())),
        };
        let config = StoreConfig::parse(&text, &cfg_path)?;
        modes::apply_umask(config.group);
        Ok(LocalStore {
            root: root.to_path_buf(),
            blocks,
            config,
            tmp_seq: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
            synced: AtomicU64::new(u64::MAX),
            writer_since: Mutex::new(None),
            index: IndexUse::default(),
        })
    }

    /// Creates a store: private (0700/0600), or shared read-only with
    /// `group` (0750/0640, set-group-ID directories), recorded in
    /// config.json. Fails if there is one already.
    pub fn create(root: &Path, block_size: usize, group: Option<u32>) -> Result<LocalStore> {
        super::check_block_size(block_size)?;
        let cfg_path = root.join(".blockstore").join(CONFIG);
        modes::apply_umask(group);
        let ctx = || format!("cannot create store {}", root.display());
        if !root.exists() {
            fs::create_dir_all(root).with_context(ctx)?;
            modes::own_dir(root, group).with_context(ctx)?;
        }
        let blocks = root.join(".blockstore");
        match fs::create_dir(&blocks) {
            Ok(()) => modes::own_dir(&blocks, group).with_context(ctx)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(ctx),
        }
        let text = StoreConfig { block_size, group }.render();
        write_new_durably(&cfg_path, text.as_bytes()).map_err(|e| {
            let exists = e.kind() == ErrorKind::AlreadyExists;
            anyhow::Error::new(e).context(if exists {
                format!("store {} already exists", root.display())
            } else {
                format!("cannot create {}", cfg_path.display())
            })
        })?;
        fsync_dir(&blocks).with_context(ctx)?;
        LocalStore::open(root)
    }

    /// Opens the store, creating it with `block_size` (default 128 KiB) if
    /// absent. An explicit size that differs from the store's is an error,
    /// never a silent mix of block sizes.
    pub fn open_or_create(root: &Path, block_size: Option<usize>) -> Result<LocalStore> {
        LocalStore::open_or_create_in_group(root, block_size, None)
    }

    /// `open_or_create`, where a new store is shared with `group`; an
    /// existing store must already have made that choice.
    pub fn open_or_create_in_group(
        root: &Path,
        block_size: Option<usize>,
        group: Option<u32>,
    ) -> Result<LocalStore> {
        let cfg_path = root.join(".blockstore").join(CONFIG);
        if !cfg_path.exists() {
            let bs = block_size.unwrap_or(diskdump_agent::DEFAULT_BLOCK_SIZE);
            match LocalStore::create(root, bs, group) {
                Ok(s) => return Ok(s),
                // Another process created it first: theirs stands.
                Err(_) if cfg_path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        LocalStore::open_for_writing(root, block_size, group)
    }

    /// Opens an existing store for a dump or import: `block_size` and
    /// `group`, when given, must be the store's (fixed by `init`).
    pub fn open_for_writing(
        root: &Path,
        block_size: Option<usize>,
        group: Option<u32>,
    ) -> Result<LocalStore> {
        let store = LocalStore::open_with_block_size(root, block_size)?;
        if group.is_some() && group != store.config.group {
            bail!(
                "store {} is {}; --group applies only when a store is created (`diskdump init --group`)",
                root.display(),
                match store.config.group {
                    None => "private".to_string(),
                    Some(g) => format!("shared with group {g}"),
                }
            );
        }
        Ok(store)
    }

    /// Opens an existing store for writing blocks of `block_size`, if given:
    /// a size that differs from the store's is an error, never a silent mix.
    pub fn open_with_block_size(root: &Path, block_size: Option<usize>) -> Result<LocalStore> {
        let store = LocalStore::open(root)?;
        if let Some(bs) = block_size {
            if bs != store.config.block_size {
                bail!(
                    "store {} uses block size {}, not {bs}; drop --block-size or use another store",
                    root.display(),
                    store.config.block_size
                );
            }
        }
        Ok(store)
    }

    /// Creates `dir` (below the root) and its missing parents with the
    /// store's modes and group. A gc's tidy may remove an empty parent (or
    /// the new directory itself) meanwhile: then it starts over. Each tidy
    /// is one pass, so a few rounds always win.
    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        let mut tries = 0;
        loop {
            if dir.is_dir() {
                return Ok(());
            }
            if let Some(parent) = dir.parent().filter(|p| p.starts_with(&self.root)) {
                self.make_dirs(parent)?;
            }
            let made = fs::create_dir(dir).and_then(|()| modes::own_dir(dir, self.config.group));
            match made {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound && tries < DIR_RACE_TRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `.blockstore`, where blocks, the lock and the writers' registrations live.
    pub fn blocks_dir(&self) -> &Path {
        &self.blocks
    }

    /// Where a block goes while a gc decides its fate (`store::gc`).
    pub(super) fn doomed_path(&self, d: &Digest) -> PathBuf {
        let mut p = self.block_path(d).into_os_string();
        p.push(".gc");
        PathBuf::from(p)
    }

    /// A writer found a block older than its registration: refresh its
    /// mtime, and count it present only if that worked (a gc may be taking
    /// it; then it is stored again).
    fn refresh(&self, path: &Path) -> io::Result<bool> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
        ];
        // SAFETY: a valid NUL-terminated path and a two-element times array.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(e)
        }
    }

    pub fn block_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.blocks
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(hex + ".lz4")
    }

    fn tmp_name(&self, base: &Path) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let mut s = base.as_os_str().to_owned();
        s.push(format!(".tmp.{}.{n}", std::process::id()));
        PathBuf::from(s)
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(f: &File, mut off: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Opens a store file for reading without blocking on what is not a
/// regular file: a FIFO or a device put in the store would hang every
/// reader, gc included. See `regular` for the check that must follow.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// `f`'s metadata if it is a regular file (then back to blocking reads, which
/// a network file system may otherwise honour the flag for); None if not.
fn regular(f: &File) -> io::Result<Option<fs::Metadata>> {
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fd = f.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(Some(meta))
}

/// Opens a store file for reading, refusing anything but a regular file
/// (without waiting on it: `open_nonblocking`).
pub(super) fn open_regular(path: &Path) -> io::Result<File> {
    let f = open_nonblocking(path)?;
    match regular(&f)? {
        Some(_) => Ok(f),
        None => Err(io::Error::new(ErrorKind::InvalidData, "not a regular file")),
    }
}

/// Creates `path` with `data`, fsynced, failing if it exists.
fn write_new_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    write_new_durably_with(path, |f| f.write_all(data))
}

/// Like [`write_new_durably`], the content written by `write` through a buffer.
fn write_new_durably_with(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640) // less by the store's umask (modes.rs)
        .open(path)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, &f);
    write(&mut w)?;
    w.flush()?;
    drop(w);
    f.sync_all()
}

/// rename(2) that never replaces an existing file; falls back to link+unlink on
/// filesystems without RENAME_NOREPLACE.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let a = CString::new(from.as_os_str().as_bytes())?;
    let b = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(err),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

fn is_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_digit())
}

/// Sorted directory entries (name, is_dir); a missing directory is empty.
pub(super) fn list_dir(dir: &Path) -> Result<Vec<(String, bool)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push((e.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort();
    Ok(out)
}

impl LocalStore {
    /// The index answers "present" (a writer with no gc running at its start).
    fn indexed(&self, d: &Digest) -> bool {
        let v = self.index.view.read().unwrap_or_else(|p| p.into_inner());
        matches!(&*v, IndexState::Using(v) if v.contains(d))
    }

    /// Notes a block that is durably whole once the next sync is done.
    fn index_add(&self, d: &Digest) -> io::Result<()> {
        self.unsynced.fetch_add(1, Ordering::SeqCst);
        let mut a = self.index.added.lock().unwrap_or_else(|p| p.into_inner());
        match a.as_mut() {
            Some(a) => a.push(*d),
            None => Ok(()), // not a writer: nothing to commit to
        }
    }

    /// A writer registered: it may answer from the index unless a gc is
    /// running now (that gc may not have seen the registration). Returns
    /// whether this process now answers from the index.
    fn start_index_use(&self) -> bool {
        let gc = super::lock::gc_running(&self.blocks.join(GC_ACTIVE));
        let mut v = self.index.view.write().unwrap_or_else(|p| p.into_inner());
        if gc {
            *v = IndexState::Disabled;
        } else if matches!(*v, IndexState::Unloaded) {
            *v = IndexState::Using(IndexView::load(&self.index_dir()));
        }
        let using = matches!(*v, IndexState::Using(_));
        drop(v);
        let mut a = self.index.added.lock().unwrap_or_else(|p| p.into_inner());
        if a.is_none() {
            *a = Some(Additions::new(&self.index_dir(), self.file_mode()));
        }
        using
    }

    /// Merges the index's files, under its own lock; a writer (`wait` =
    /// false) leaves it to whoever holds that lock.
    fn compact_index(&self, wait: bool) -> io::Result<()> {
        let dir = self.index_dir();
        if !dir.is_dir() {
            return Ok(());
        }
        let f = super::lock::open_lock_file(&dir.join("lock"))?;
        // Compactions are short: a gc polls for a writer's without a message.
        while !super::lock::try_lock_exclusive(&f)? {
            if !wait {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        index::compact(&dir).map(|_| ())
    }

    /// What the umask makes of a new store file's 0640.
    fn file_mode(&self) -> u32 {
        0o640 & !modes::umask_for(self.config.group)
    }

    fn index_dir(&self) -> PathBuf {
        self.blocks.join("index")
    }

    /// Before a block leaves the store: the index stops answering for it.
    pub(super) fn index_remove(&self, ds: &[Digest]) -> io::Result<()> {
        index::remove(&self.index_dir(), ds)
    }

    /// The check on disk (no index): present only if the file is a whole
    /// frame (see `blockfmt::check_shape`); a damaged one is moved aside
    /// and reported absent, so the caller stores the block again.
    fn contains_on_disk(&self, d: &Digest) -> io::Result<bool> {
        let f = match open_nonblocking(&self.block_path(d)) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let limit = self.config.block_size;
        let Some(meta) = regular(&f)? else {
            self.move_damaged(d, &f, "not a regular file")?;
            return Ok(false);
        };
        let shape = blockfmt::check_shape(meta.len(), limit, &mut |off, buf| {
            read_full_at(&f, off, buf)
        });
        if let Err(e) = shape {
            self.move_damaged(d, &f, &e.to_string())?;
            return Ok(false);
        }
        let since = *self.writer_since.lock().unwrap_or_else(|p| p.into_inner());
        match since {
            Some(t) if meta.modified()? < t => self.refresh(&self.block_path(d)),
            _ => Ok(true),
        }
    }
}

impl Store for LocalStore {
    fn block_size(&self) -> usize {
        self.config.block_size
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// Present only if the file is a whole frame (see `blockfmt::check_shape`):
    /// a damaged one is moved aside and reported absent, so the caller
    /// stores the block again.
    fn contains(&self, d: &Digest) -> io::Result<bool> {
        if self.indexed(d) {
            return Ok(true);
        }
        let present = self.contains_on_disk(d)?;
        if present {
            self.index_add(d)?;
        }
        Ok(present)
    }

    /// Asks the kernel for the page the shape check reads (the frame's
    /// start) without waiting for it: on a cold cache that is one random
    /// read per present block, now many in flight at once. Blocks the
    /// index answers for are not touched.
    fn prefetch(&self, ds: &[Digest]) {
        for d in ds {
            if self.indexed(d) {
                continue;
            }
            let Ok(f) = open_regular(&self.block_path(d)) else {
                continue;
            };
            // SAFETY: advice on a valid descriptor; it reads nothing into our memory.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 64, libc::POSIX_FADV_WILLNEED) };
        }
    }
    fn stored_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        match fs::symlink_metadata(self.block_path(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_frame(&self, d: &Digest, frame: &[u8]) -> io::Result<bool> {
        let path = self.block_path(d);
        let tmp = self.tmp_name(&path);
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(&tmp)
        };
        let mut tries = 0;
        let mut f = loop {
            match open() {
                // A gc's tidy may remove an empty directory between our
                // mkdir and our create: make it again (once the temp file
                // is in, the directory is not empty and stays).
                Err(e) if e.kind() == ErrorKind::NotFound && tries < DIR_RACE_TRIES => {
                    tries += 1;
                    self.make_dirs(path.parent().expect("block paths have a parent"))?;
                }
                r => break r?,
            }
        };
        let written = f.write_all(frame).and_then(|_| {
            drop(f);
            rename_noreplace(&tmp, &path)
        });
        match written {
            Ok(()) => {
                self.index_add(d)?;
                Ok(true)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                if e.kind() != ErrorKind::AlreadyExists {
                    return Err(e);
                }
                // Someone stored it first: present, unless a gc is taking
                // that copy away right now; then ours goes in after all.
                if self.contains(d)? {
                    Ok(false)
                } else {
                    self.put_frame(d, frame)
                }
            }
        }
    }

    fn get_frame(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<(), BlockError> {
        let io_err = |e: io::Error| {
            if e.kind() == ErrorKind::NotFound {
                BlockError::Missing(*d)
            } else {
                BlockError::Io {
                    digest: *d,
                    reason: e.to_string(),
                }
            }
        };
        let f = match open_regular(&self.block_path(d)) {
            // A gc may be deciding about it (or was killed doing so): still readable.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                open_regular(&self.doomed_path(d)).map_err(|_| io_err(e))?
            }
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return Err(BlockError::Corrupt {
                    digest: *d,
                    reason: format!("block file is {e}"),
                })
            }
            r => r.map_err(io_err)?,
        };
        let limit = super::max_stored_frame(self.config.block_size) as u64;
        buf.clear();
        f.take(limit + 1).read_to_end(buf).map_err(io_err)?;
        if buf.len() as u64 > limit {
            return Err(BlockError::Corrupt {
                digest: *d,
                reason: format!("block file is larger than {limit} bytes"),
            });
        }
        if buf.is_empty() {
            // Say so plainly: a crash or a full disk, not a codec problem.
            return Err(BlockError::Corrupt {
                digest: *d,
                reason: "block file is empty (0 bytes)".into(),
            });
        }
        Ok(())
    }

    fn walk(&self, f: &mut dyn FnMut(WalkItem) -> Result<()>) -> Result<()> {
        for (l1, d1) in list_dir(&self.blocks)? {
            if !d1 || !is_hex(&l1, 2) {
                continue; // manifests/, config.json, lock, Python's blocks.db
            }
            for (l2, d2) in list_dir(&self.blocks.join(&l1))? {
                let dir = self.blocks.join(&l1).join(&l2);
                if !d2 || !is_hex(&l2, 2) {
                    f(WalkItem::Stray(self.rel(&dir)))?;
                    continue;
                }
                for (name, is_dir) in list_dir(&dir)? {
                    let hex = name.strip_suffix(".lz4").unwrap_or("");
                    let ok = !is_dir && is_hex(hex, 64) && hex[..2] == l1 && hex[2..4] == l2;
                    let path = dir.join(&name);
                    if !ok {
                        f(WalkItem::Stray(self.rel(&path)))?;
                        continue;
                    }
                    let size = match fs::symlink_metadata(&path) {
                        Ok(m) => m.len(),
                        Err(e) if e.kind() == ErrorKind::NotFound => continue, // raced with gc
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("cannot stat {}", path.display()))
                        }
                    };
                    let d = Digest::from_hex(hex).expect("checked hex");
                    f(WalkItem::Block(d, size))?;
                }
            }
        }
        Ok(())
    }

    /// Sound beside writers and gcs: a digest is reported only if the index
    /// listed it after the walk, its file is still missing, and a view
    /// loaded after that still lists it (gc writes its `del` first).
    fn audit_index(&self, present: &HashSet<Digest>, repair: bool) -> Result<Vec<Digest>> {
        let mut suspects = Vec::new();
        IndexView::load(&self.index_dir()).for_each(&mut |d| {
            if !present.contains(&d) {
                suspects.push(d);
            }
        });
        suspects.sort_unstable();
        suspects.dedup();
        suspects.retain(|d| fs::symlink_metadata(self.block_path(d)).is_err());
        let fresh = IndexView::load(&self.index_dir());
        suspects.retain(|d| fresh.contains(d));
        if repair {
            self.index_remove(&suspects)
                .context("cannot update the block index")?;
        }
        Ok(suspects)
    }

    fn index_summary(&self) -> Option<(u64, usize)> {
        let dir = self.index_dir();
        Some((IndexView::load(&dir).len() as u64, index::file_count(&dir)))
    }

    fn quarantine(&self, d: &Digest) -> io::Result<String> {
        self.index_remove(&[*d])?;
        let path = self.block_path(d);
        let mut bad = path.as_os_str().to_owned();
        bad.push(".bad");
        fs::rename(&path, &bad)?;
        Ok(self.rel(Path::new(&bad)))
    }

    fn sync(&self) -> io::Result<()> {
        // Read before: a block is counted once its file is in place, so
        // whatever is counted by now is covered by the syncfs below.
        let covers = self.unsynced.load(Ordering::SeqCst);
        let dir = File::open(&self.blocks)?;
        // SAFETY: syncfs on an open directory descriptor.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.synced.store(covers, Ordering::SeqCst);
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn group(&self) -> Option<u32> {
        self.config.group
    }

    fn warnings(&self) -> Vec<String> {
        modes::warning(&self.root, self.config.group)
            .into_iter()
            .collect()
    }

    fn block_location(&self, d: &Digest) -> String {
        self.block_path(d).display().to_string()
    }

    /// Registers the writer (see `store::gc`), then checks what interrupted
    /// runs left (see `dirty`) and marks this one.
    fn begin_writes(&self) -> Result<WriteSession> {
        let mut lock = self.lock(LockKind::Shared, true)?;
        let (marker, rec) = dirty::begin(&self.blocks, &mut |since| self.check_since(since))?;
        // After the recovery: what it moved aside is out of the index.
        if !self.start_index_use() {
            lock.drop_index_mark()?;
        }
        if rec.markers > 0 {
            eprintln!(
                "diskdump: {} earlier run(s) stopped before syncing their blocks (a crash or kill -9): \
                 checked the {} blocks written since, {} damaged (moved aside; stored again when needed)",
                rec.markers,
                rec.checked,
                rec.damaged.len()
            );
        }
        Ok(WriteSession::new((marker, lock)))
    }

    /// Every block the run wrote is synced, then its marker goes (the
    /// registration goes with the session).
    fn end_writes(&self, session: WriteSession) -> Result<()> {
        let (marker, _lock) = session
            .into_inner::<(DirtyMarker, StoreLock)>()
            .expect("a session of this store");
        // Taken before the sync: everything in it was written (or found
        // whole) before, so the sync makes it durable.
        let added = self
            .index
            .added
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Additions::new(&self.index_dir(), self.file_mode()));
        // Usually the sync before the manifest already covered every block;
        // a second syncfs would wait on whatever else is dirty on the
        // store's file system (other dumps' blocks).
        if self.synced.load(Ordering::SeqCst) != self.unsynced.load(Ordering::SeqCst) {
            self.sync()
                .context("cannot sync the store's blocks to disk")?;
        }
        fs::remove_file(marker.path())
            .with_context(|| format!("cannot remove {}", marker.path().display()))?;
        // The index is only a cache: failing to extend it costs speed.
        if let Some(a) = added {
            if let Err(e) = a.commit() {
                eprintln!("diskdump: warning: cannot extend the block index: {e}");
            } else if index::file_count(&self.index_dir()) > index::COMPACT_AT {
                if let Err(e) = self.compact_index(false) {
                    eprintln!("diskdump: warning: cannot compact the block index: {e}");
                }
            }
        }
        Ok(())
    }

    fn collect_garbage(&self, live: LiveSet<'_>, dry_run: bool, wait: bool) -> Result<SweepStats> {
        let _lock = self.lock(LockKind::Exclusive, wait)?;
        // Before the writers are listed (see `store::index`).
        let _active = super::lock::hold_gc_active(&self.blocks.join(GC_ACTIVE))?;
        let start = self.gc_begin()?;
        let live = live()?;
        let st = self.gc_sweep(&start, &live.blocks, dry_run)?;
        if !dry_run {
            self.compact_index(true)
                .context("cannot compact the block index")?;
        }
        Ok(st)
    }

    fn find_manifest(&self, rel: &str) -> Result<Option<ManifestEntry>> {
        if !self.root.join(rel).is_file() {
            return Ok(None);
        }
        // List only the manifest's own directory, not the whole store.
        let dir = rel.rfind('/').map_or("", |i| &rel[..=i]);
        Ok(self
            .manifests_under(dir)?
            .into_iter()
            .find(|e| e.rel == rel))
    }

    fn leftovers(&self) -> Result<Vec<String>> {
        self.manifest_temps()
    }

    fn manifest_header(&self, entry: &ManifestEntry) -> Result<ManifestHeader> {
        let path = self.root.join(&entry.rel);
        let file = open_regular(&path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let head = read_header(file)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        Ok(ManifestHeader::parse(
            &String::from_utf8_lossy(&head),
            &entry.rel,
        )?)
    }

    fn manifests(&self) -> Result<Vec<ManifestEntry>> {
        self.manifests_under("")
    }

    fn manifests_under(&self, prefix: &str) -> Result<Vec<ManifestEntry>> {
        let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
        let dated = parts.len() <= 3 && parts.iter().zip([4, 2, 2]).all(|(p, w)| is_digits(p, w));
        let mut out = Vec::new();
        if !(prefix.is_empty() || prefix.ends_with('/')) {
            // Not a directory of the tree: filter the whole list.
            out = self.manifests_under("")?;
        } else if dated {
            self.dated_manifests(&parts, &mut out)?;
            if parts.is_empty() {
                self.legacy_manifests(None, &mut out)?;
            }
        } else if let [".blockstore", "manifests", rest @ ..] = parts.as_slice() {
            match rest {
                [] => self.legacy_manifests(None, &mut out)?,
                [name] => self.legacy_manifests(Some(name), &mut out)?,
                _ => {}
            }
        }
        out.retain(|e| e.rel.starts_with(prefix));
        Ok(out)
    }

    fn read_manifest(&self, entry: &ManifestEntry) -> Result<Manifest> {
        let mut bytes = Vec::new();
        self.open_entry(entry)?
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read manifest {}", entry.rel))?;
        parse_manifest_bytes(bytes, &entry.rel)
    }

    fn manifest_info(&self, entry: &ManifestEntry) -> Result<ManifestInfo> {
        let path = self.root.join(&entry.rel);
        let ctx = || format!("cannot read manifest {}", path.display());
        let file = self.open_entry(entry)?;
        let modified = file.metadata().and_then(|m| m.modified()).ok();
        let head = read_header(file).with_context(ctx)?;
        let h = ManifestHeader::parse(&String::from_utf8_lossy(&head), &entry.rel)?;
        match ManifestInfo::from_header(&h, modified) {
            Some(info) => Ok(info),
            None => Ok(ManifestInfo::of(&self.read_manifest(entry)?, modified)),
        }
    }

    fn write_manifest(&self, name: &str, m: &Manifest) -> Result<ManifestEntry> {
        self.write_manifest_text(name, m, &mut |w| m.write_to(w))
    }

    fn write_manifest_spooled(
        &self,
        name: &str,
        m: &Manifest,
        hashes: &SpooledHashes,
    ) -> Result<ManifestEntry> {
        self.write_manifest_text(name, m, &mut |w| m.write_spooled(w, hashes))
    }

    fn remove_manifest(&self, entry: &ManifestEntry) -> Result<()> {
        if self.is_protected(entry)? {
            return Err(super::protected_error(entry));
        }
        let path = self.root.join(&entry.rel);
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let dir = path.parent().expect("manifests live in a directory");
        fsync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))
    }

    fn is_protected(&self, entry: &ManifestEntry) -> Result<bool> {
        let p = self.protect_marker(entry);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot check {}", p.display())),
        }
    }

    fn set_protected(&self, entry: &ManifestEntry, on: bool) -> Result<()> {
        let p = self.protect_marker(entry);
        let r = if on {
            match write_new_durably(&p, b"") {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                r => r,
            }
        } else {
            match fs::remove_file(&p) {
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        r.with_context(|| format!("cannot change {}", p.display()))?;
        let dir = p.parent().expect("markers live beside manifests");
        fsync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))
    }
}

impl LocalStore {
    /// Writes a manifest's text (from `write`) durably under its day,
    /// after every block is durable; never overwrites (`+N` names).
    fn write_manifest_text(
        &self,
        name: &str,
        m: &Manifest,
        write: &mut dyn FnMut(&mut io::BufWriter<&File>) -> io::Result<()>,
    ) -> Result<ManifestEntry> {
        let day = super::manifest_day(name, m)?;
        let dir = self.root.join(&day);
        self.make_dirs(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Every block the manifest names must be durable before it is visible.
        self.sync()
            .context("cannot sync the store's blocks to disk")?;
        let tmp = self.tmp_name(&dir.join(format!("{name}.manifest")));
        if let Err(e) = write_new_durably_with(&tmp, |w| write(w)) {
            // A full disk must not leave a partial manifest behind.
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", tmp.display()));
        }
        let mut seq = 1;
        let result = loop {
            let file = format!("{}.manifest", crate::manifest::seq_file_name(name, seq));
            match rename_noreplace(&tmp, &dir.join(&file)) {
                Ok(()) => {
                    break Ok(ManifestEntry {
                        rel: format!("{day}/{file}"),
                        name: file.trim_end_matches(".manifest").to_string(),
                        day: Some(day.clone()),
                        id: None,
                    })
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && seq < 10_000 => seq += 1,
                Err(e) => {
                    break Err(e)
                        .with_context(|| format!("cannot create a manifest in {}", dir.display()))
                }
            }
        };
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let entry = result?;
        // Make the new name (and any new date directories) durable.
        let mut d = dir.as_path();
        while d != self.root && d.starts_with(&self.root) {
            fsync_dir(d).with_context(|| format!("cannot sync {}", d.display()))?;
            d = d.parent().expect("below root");
        }
        fsync_dir(&self.root).with_context(|| format!("cannot sync {}", self.root.display()))?;
        Ok(entry)
    }

    /// Removes the block directories a sweep left empty.
    pub(super) fn tidy(&self) -> Result<()> {
        for (l1, d1) in list_dir(&self.blocks)? {
            if !d1 || !is_hex(&l1, 2) {
                continue;
            }
            let top = self.blocks.join(&l1);
            for (l2, d2) in list_dir(&top)? {
                if d2 && is_hex(&l2, 2) {
                    let _ = fs::remove_dir(top.join(l2)); // fails if not empty: fine
                }
            }
            let _ = fs::remove_dir(&top);
        }
        Ok(())
    }

    /// Registers a writer (Shared) or takes the gc lock (Exclusive).
    pub(super) fn lock(&self, kind: LockKind, wait: bool) -> Result<StoreLock> {
        match kind {
            LockKind::Exclusive => StoreLock::acquire(&self.blocks.join("lock"), wait),
            LockKind::Shared => {
                let (lock, since) = StoreLock::register_writer(&self.blocks.join(WRITERS))?;
                let mut s = self.writer_since.lock().unwrap_or_else(|p| p.into_inner());
                *s = Some(s.map_or(since, |t| t.min(since)));
                Ok(lock)
            }
        }
    }

    /// Decodes and hashes every block modified at or after `since` (found
    /// through the block directories' times), moving damaged ones aside.
    fn check_since(&self, since: SystemTime) -> Result<(usize, Vec<String>)> {
        let recent = |p: &Path| {
            fs::symlink_metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        };
        let mut todo = Vec::new();
        for (l1, d1) in list_dir(&self.blocks)? {
            if !d1 || !is_hex(&l1, 2) {
                continue;
            }
            for (l2, d2) in list_dir(&self.blocks.join(&l1))? {
                let dir = self.blocks.join(&l1).join(&l2);
                if !d2 || !recent(&dir) {
                    continue;
                }
                for (name, _) in list_dir(&dir)? {
                    let Some(d) = name.strip_suffix(".lz4").and_then(Digest::from_hex) else {
                        continue;
                    };
                    if recent(&dir.join(&name)) {
                        todo.push(d);
                    }
                }
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let damaged = std::sync::Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::thread::scope(|s| -> Result<()> {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let (mut frame, mut raw) = (Vec::new(), Vec::new());
                        loop {
                            let Some(d) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                return Ok(());
                            };
                            let Ok(f) = open_nonblocking(&self.block_path(d)) else {
                                continue; // gone meanwhile
                            };
                            if let Err(e) = super::get_block(self, d, &mut frame, &mut raw) {
                                if !matches!(e, BlockError::Missing(_)) {
                                    self.move_damaged(d, &f, &e.to_string())?;
                                    damaged
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push(d.to_hex());
                                }
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("block checkers do not panic")?;
            }
            Ok(())
        })?;
        let damaged = damaged.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok((todo.len(), damaged))
    }

    /// Moves the damaged block file `f` (opened from the block's path) aside
    /// as `<hash>.lz4.bad`. If another run replaced it with a good copy
    /// meanwhile, that copy is put back.
    fn move_damaged(&self, d: &Digest, f: &File, reason: &str) -> io::Result<()> {
        let path = self.block_path(d);
        let mut bad = path.as_os_str().to_owned();
        bad.push(".bad");
        let bad = PathBuf::from(bad);
        self.index_remove(&[*d])?;
        match fs::rename(&path, &bad) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()), // someone else did
            r => r?,
        }
        if fs::symlink_metadata(&bad)?.ino() != f.metadata()?.ino() {
            return match rename_noreplace(&bad, &path) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => fs::remove_file(&bad),
                r => r,
            };
        }
        eprintln!(
            "diskdump: block {d} is damaged ({reason}): moved aside to {}; it is stored again when needed",
            self.rel(&bad)
        );
        Ok(())
    }

    /// The identity of a file below the root; None if it is gone.
    fn file_id(&self, rel: &str) -> Result<Option<FileId>> {
        match fs::symlink_metadata(self.root.join(rel)) {
            Ok(m) => Ok(Some(FileId::of(&m))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot stat {rel}")),
        }
    }

    /// Opens a listed manifest, refusing a file that replaced it since.
    fn open_entry(&self, entry: &ManifestEntry) -> Result<File> {
        let path = self.root.join(&entry.rel);
        let file = open_regular(&path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        if let Some(id) = entry.id {
            let now = file
                .metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if FileId::of(&now) != id {
                return Err(ManifestReplaced(entry.rel.clone()).into());
            }
        }
        Ok(file)
    }

    fn protect_marker(&self, entry: &ManifestEntry) -> PathBuf {
        self.root.join(format!("{}.protected", entry.rel))
    }

    /// Dated manifests, sorted; `filter` fixes the leading YYYY, MM, DD.
    fn dated_manifests(&self, filter: &[&str], out: &mut Vec<ManifestEntry>) -> Result<()> {
        for day in self.day_dirs(filter)? {
            for (f, fd) in list_dir(&self.root.join(&day))? {
                if let (false, Some(name)) = (fd, f.strip_suffix(".manifest")) {
                    let rel = format!("{day}/{f}");
                    let Some(id) = self.file_id(&rel)? else {
                        continue; // removed since listed
                    };
                    out.push(ManifestEntry {
                        rel,
                        name: name.to_string(),
                        day: Some(day.clone()),
                        id: Some(id),
                    });
                }
            }
        }
        Ok(())
    }

    /// Manifest temp files (`<name>.manifest.tmp.<pid>.<n>`) in the dated
    /// tree, relative to the root: left by a writer killed between writing a
    /// manifest and renaming it. Only gc (holding the lock exclusively) may
    /// take them for left-overs.
    pub fn manifest_temps(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for day in self.day_dirs(&[])? {
            for (f, fd) in list_dir(&self.root.join(&day))? {
                if !fd && f.contains(".manifest.tmp.") {
                    out.push(format!("{day}/{f}"));
                }
            }
        }
        Ok(out)
    }

    /// The `YYYY/MM/DD` directories, sorted; `filter` fixes the leading parts.
    fn day_dirs(&self, filter: &[&str]) -> Result<Vec<String>> {
        let mut dirs = vec![String::new()];
        for (level, width) in [4, 2, 2].into_iter().enumerate() {
            let mut next = Vec::new();
            for dir in &dirs {
                let join = |n: &str| {
                    if dir.is_empty() {
                        n.to_string()
                    } else {
                        format!("{dir}/{n}")
                    }
                };
                match filter.get(level) {
                    Some(f) if self.root.join(join(f)).is_dir() => next.push(join(f)),
                    Some(_) => {}
                    None => next.extend(
                        list_dir(&self.root.join(dir))?
                            .into_iter()
                            .filter(|(n, is_dir)| *is_dir && is_digits(n, width))
                            .map(|(n, _)| join(&n)),
                    ),
                }
            }
            dirs = next;
        }
        Ok(dirs)
    }

    /// Python-era manifests, sorted; all, or those of one dump name.
    fn legacy_manifests(&self, only: Option<&str>, out: &mut Vec<ManifestEntry>) -> Result<()> {
        let legacy = self.blocks.join("manifests");
        let names: Vec<String> = match only {
            Some(n) if legacy.join(n).is_dir() => vec![n.to_string()],
            Some(_) => Vec::new(),
            None => list_dir(&legacy)?
                .into_iter()
                .filter(|(_, is_dir)| *is_dir)
                .map(|(n, _)| n)
                .collect(),
        };
        for name in names {
            for (f, fd) in list_dir(&legacy.join(&name))? {
                if let (false, Some(n)) = (fd, f.strip_suffix(".manifest")) {
                    let rel = format!(".blockstore/manifests/{name}/{f}");
                    let Some(id) = self.file_id(&rel)? else {
                        continue;
                    };
                    out.push(ManifestEntry {
                        rel,
                        name: format!("{name}/{n}"),
                        day: None,
                        id: Some(id),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The comment lines at the top of a manifest, up to and including the first
/// other line; capped so a damaged file cannot make us read it all.
pub(super) fn read_header(file: impl Read) -> io::Result<Vec<u8>> {
    const CAP: u64 = 64 * 1024;
    let mut r = BufReader::new(file).take(CAP);
    let mut head = Vec::new();
    loop {
        let start = head.len();
        if r.read_until(b'\n', &mut head)? == 0 {
            return Ok(head);
        }
        let line = &head[start..];
        if !line.starts_with(b"#") && !line.trim_ascii().is_empty() {
            return Ok(head);
        }
    }
}

/// Reads and parses a manifest file, naming `origin` in errors.
pub fn read_manifest_file(path: &Path, origin: &str) -> Result<Manifest> {
    let mut bytes = Vec::new();
    open_regular(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    parse_manifest_bytes(bytes, origin)
}

pub(super) fn parse_manifest_bytes(bytes: Vec<u8>, origin: &str) -> Result<Manifest> {
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{origin}: not a text manifest (invalid UTF-8 at byte {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(Manifest::parse(&text, origin)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_under_a_prefix_lists_only_that_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Some(4096)).unwrap();
        let m = |date: &str| Manifest {
            source: "h:/x".into(),
            date: date.into(),
            block_size: 4096,
            total_size: 0,
            blocks: vec![],
            new_blocks: None,
        };
        for (name, date) in [
            ("a", "2026-04-24"),
            ("a", "2026-04-24"),
            ("b", "2026-05-01"),
            ("c", "2025-12-31"),
        ] {
            store.write_manifest(name, &m(date)).unwrap();
        }
        for (name, n) in [("old", 1), ("old", 2), ("other", 1)] {
            let d = dir.path().join(".blockstore/manifests").join(name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("{n}.manifest")), m("2020-01-01").render()).unwrap();
        }
        fs::create_dir_all(dir.path().join("2027")).unwrap(); // empty year
        fs::write(dir.path().join("2026/04/notes.txt"), "x").unwrap();
        let all = store.manifests().unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(all[0].rel, "2025/12/31/c.manifest");
        assert_eq!(all[6].name, "other/1");
        for prefix in [
            "",
            "2026/",
            "2026/04/",
            "2026/04/24/",
            "2026/05/01/",
            "2027/",
            "2024/",
            "2026/04/25/",
            ".blockstore/manifests/",
            ".blockstore/manifests/old/",
            ".blockstore/manifests/none/",
            "2026/04/24/a.2",
            "junk/",
        ] {
            let want: Vec<_> = all
                .iter()
                .filter(|e| e.rel.starts_with(prefix))
                .cloned()
                .collect();
            assert_eq!(store.manifests_under(prefix).unwrap(), want, "{prefix:?}");
        }
        assert_eq!(store.manifests_under("2026/04/24/").unwrap().len(), 2);
    }

    /// A gc's tidy removes empty block directories while writers create
    /// them: a writer that loses the race (its `ab/cd` or even `ab` gone
    /// between its mkdir and its create) makes them again instead of failing.
    #[test]
    fn block_writes_survive_a_concurrent_tidy() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Some(4096)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    store.tidy().unwrap();
                }
            });
            for i in 0..3000u32 {
                let data = i.to_le_bytes().repeat(8);
                let d = Digest::of(&data);
                // The store writes what it is given; the frame's shape is not checked here.
                let r = store.put_frame(&d, &data);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                assert!(r.unwrap(), "block {i} was new");
                // Removed right away, so its directories are empty again
                // for the tidy to take.
                fs::remove_file(store.block_path(&d)).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
