//! The block store (docs/DESIGN.md §1): one small interface that commands, the
//! receiver and `ImageReader` use, and the local-directory backend.

mod config;
mod dirty;
mod diskcache;
mod gc;
mod index;
mod local;
mod lock;
mod memory;
mod modes;
mod s3;

pub use config::{check_block_size, StoreConfig, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
pub use dirty::DirtyMarker;
pub use gc::{SweepStats, GRACE};
pub use local::{read_manifest_file, rename_noreplace, LocalStore};
pub use lock::StoreBusy;
pub use memory::MemoryStore;
pub use modes::resolve_group;

use local::rename_noreplace as local_rename_noreplace;

use crate::digest::Digest;
use crate::manifest::{Manifest, ManifestHeader, SpooledHashes};
use anyhow::Result;
use chrono::{DateTime, Utc};
use diskdump_agent::blockfmt;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Opens the store at `location`, as given to `--store`: a directory, or
/// `s3://BUCKET/PREFIX` (docs/DESIGN.md §8). A location without a store is a
/// clear error naming `diskdump init`.
pub fn open(location: &Path) -> Result<Arc<dyn Store>> {
    open_for_writing(location, None, None)
}

/// Opens a store for a dump or import: `block_size` and `group`, when
/// given, must be the store's (fixed by `init`).
pub fn open_for_writing(
    location: &Path,
    block_size: Option<usize>,
    group: Option<u32>,
) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match s3_location(location)? {
        Some(loc) => Arc::new(s3::S3Store::open(&loc)?),
        None => Arc::new(LocalStore::open(location)?),
    };
    if let Some(bs) = block_size.filter(|bs| *bs != store.block_size()) {
        anyhow::bail!(
            "store {} uses block size {}, not {bs}; drop --block-size or use another store",
            store.describe(),
            store.block_size()
        );
    }
    if group.is_some() && group != store.group() {
        anyhow::bail!(
            "store {} is {}; --group applies only when a store is created (`diskdump init --group`)",
            store.describe(),
            match store.group() {
                None => "private".to_string(),
                Some(g) => format!("shared with group {g}"),
            }
        );
    }
    Ok(store)
}

/// Creates a store at `location`; fails if there is one already.
pub fn create(location: &Path, block_size: usize, group: Option<u32>) -> Result<Arc<dyn Store>> {
    Ok(match s3_location(location)? {
        Some(loc) => {
            if group.is_some() {
                anyhow::bail!(
                    "--group is for local stores; access to an S3 store is the bucket's policy"
                );
            }
            Arc::new(s3::S3Store::create(&loc, block_size)?)
        }
        None => Arc::new(LocalStore::create(location, block_size, group)?),
    })
}

/// The day directory of a new manifest (`YYYY/MM/DD`), after checking the
/// name and source a manifest may carry.
pub(crate) fn manifest_day(name: &str, m: &Manifest) -> Result<String> {
    crate::manifest::validate_name(name)?;
    crate::manifest::validate_source(&m.source)?;
    Ok(crate::manifest::parse_date(&m.date)?
        .format("%Y/%m/%d")
        .to_string())
}

/// `YYYY/MM/DD/<name>[+seq].manifest`: the key of a dated manifest.
pub(crate) fn manifest_key(day: &str, name: &str, seq: u32) -> String {
    format!(
        "{day}/{}.manifest",
        crate::manifest::seq_file_name(name, seq)
    )
}

/// `s3://…` locations; None for a directory.
pub fn s3_location(location: &Path) -> Result<Option<crate::objstore::S3Location>> {
    match location
        .to_str()
        .and_then(crate::objstore::S3Location::parse)
    {
        None => Ok(None),
        Some(r) => r.map(Some).map_err(anyhow::Error::msg),
    }
}

/// The key prefix of Python 0.1.5's manifests (`.blockstore/manifests/<name>/<n>.manifest`).
pub const LEGACY_PREFIX: &str = ".blockstore/manifests/";

/// Why a block could not be read. Cloneable so every reader waiting on one
/// load gets the same answer; FUSE maps all of them to EIO, verify counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    Missing(Digest),
    Corrupt { digest: Digest, reason: String },
    Io { digest: Digest, reason: String },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Missing(d) => write!(f, "block {d} is missing from the store"),
            BlockError::Corrupt { digest, reason } => {
                write!(f, "block {digest} is corrupt: {reason}")
            }
            BlockError::Io { digest, reason } => write!(f, "cannot read block {digest}: {reason}"),
        }
    }
}

impl std::error::Error for BlockError {}

/// One item found by walking the block area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkItem {
    /// A block file and its stored (compressed) size.
    Block(Digest, u64),
    /// A file that is not a block: left-over temp file, quarantined or foreign.
    Stray(String),
}

/// Where a manifest lives, relative to the store root, '/'-separated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestEntry {
    /// `2026/04/24/server01-sda.manifest` or `.blockstore/manifests/<name>/<n>.manifest`.
    pub rel: String,
    /// `server01-sda` (dated) or `<name>/<n>` (Python era).
    pub name: String,
    /// `2026/04/24` for dated manifests; None for Python-era ones.
    pub day: Option<String>,
    /// Which file it was when listed, if the backend knows: a manifest
    /// deleted and written again at the same path is another dump.
    pub id: Option<FileId>,
}

/// A file's identity: its inode and modification time (a new file at the
/// same path may reuse the inode, not also the time and size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub ino: u64,
    pub mtime_ns: i128,
    pub len: u64,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            len: m.len(),
        }
    }
}

/// The manifest changed between listing and reading (deleted and written
/// again at the same path): the caller should list again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestReplaced(pub String);

impl fmt::Display for ManifestReplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} was replaced since it was listed", self.0)
    }
}

impl std::error::Error for ManifestReplaced {}

impl ManifestEntry {
    pub fn is_legacy(&self) -> bool {
        self.day.is_none()
    }
    /// The dump's name without the `+2` same-day suffix or Python version
    /// number. (`web.2`, the same-day file name diskdump 0.2 wrote, is a
    /// name of its own: `web.2` may as well be a dump's real name.)
    pub fn base_name(&self) -> &str {
        if let Some((name, _)) = self.name.split_once('/') {
            return name;
        }
        crate::manifest::split_seq(&self.name).0
    }

    /// Orders the dumps of one name: day, then same-day sequence (or Python
    /// version number).
    pub fn newness(&self) -> (Option<&str>, u32) {
        let seq = match self.name.split_once('/') {
            Some((_, n)) => n.parse().unwrap_or(0),
            None => crate::manifest::split_seq(&self.name).1,
        };
        (self.day.as_deref(), seq)
    }
}

/// What `mount` shows for a dump, read without loading its hash list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub total_size: u64,
    pub block_size: usize,
    /// The dump's date, when the manifest's `# date:` parses.
    pub date: Option<DateTime<Utc>>,
    /// When the manifest was written, if the backend knows.
    pub modified: Option<SystemTime>,
}

impl ManifestInfo {
    /// From the header alone, when it has the sizes (only old Python
    /// manifests lack both counts; then the hashes decide).
    pub fn from_header(h: &ManifestHeader, modified: Option<SystemTime>) -> Option<ManifestInfo> {
        Some(ManifestInfo {
            total_size: h.size()?,
            block_size: h.block_size,
            date: h.datetime(),
            modified,
        })
    }

    pub fn of(m: &Manifest, modified: Option<SystemTime>) -> ManifestInfo {
        ManifestInfo {
            total_size: m.total_size,
            block_size: m.block_size,
            date: m.datetime(),
            modified,
        }
    }
}

/// A running import or dump, as the store knows it (opaque: a local store
/// holds its writer registration and dirty marker in it, an object store its
/// open pack's owner). End it with [`Store::end_writes`], on failure too.
pub struct WriteSession(#[allow(dead_code)] Box<dyn std::any::Any + Send>);

impl WriteSession {
    pub(crate) fn new(inner: impl std::any::Any + Send) -> WriteSession {
        WriteSession(Box::new(inner))
    }
    pub(crate) fn into_inner<T: 'static>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

/// What a gc needs from its caller: the blocks that stay, computed after the
/// store has fixed its cutoff (so a manifest written meanwhile names only
/// blocks the cutoff protects).
pub type LiveSet<'a> = &'a mut dyn FnMut() -> Result<LiveBlocks>;

/// The live blocks and how many manifests named them.
#[derive(Debug, Default)]
pub struct LiveBlocks {
    pub blocks: std::collections::HashSet<Digest>,
    pub manifests: usize,
}

/// The operations every store backend provides. Commands, the receiver,
/// `ImageReader` and the mount use only these (docs/DESIGN.md §5). Blocks
/// are handled as LZ4 frames (the on-disk and `lz4` wire format); decoding
/// and verification are backend-independent and live in the free functions
/// below. Manifests are identified by [`ManifestEntry::rel`], a logical key
/// (`YYYY/MM/DD/<name>.manifest`) that a local store also uses as its path.
pub trait Store: Send + Sync {
    fn block_size(&self) -> usize;
    /// A human name for messages: the root path or `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// The directory of a local store (manifests may be named by path).
    fn local_root(&self) -> Option<&Path> {
        None
    }
    /// The group the store is shared with (None: private).
    fn group(&self) -> Option<u32> {
        None
    }
    /// One-line warnings about the store's state (modes wider than its choice).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    fn contains(&self, d: &Digest) -> io::Result<bool>;
    /// Starts reading what `contains` will read for these blocks, so that
    /// the disk reads of a batch overlap instead of queueing one by one.
    /// Only a hint: errors are ignored.
    fn prefetch(&self, _ds: &[Digest]) {}
    /// The block's stored (compressed) size, None if absent.
    fn stored_size(&self, d: &Digest) -> io::Result<Option<u64>>;
    /// Stores a frame the caller has verified decodes to the data `d` names.
    /// Idempotent: returns false (and writes nothing) if the block exists.
    fn put_frame(&self, d: &Digest, frame: &[u8]) -> io::Result<bool>;
    /// Reads a block's stored bytes into `buf`.
    fn get_frame(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<(), BlockError>;
    /// Where a block is kept, for messages (a file path, a pack and offset).
    fn block_location(&self, d: &Digest) -> String;
    fn walk(&self, f: &mut dyn FnMut(WalkItem) -> Result<()>) -> Result<()>;
    /// Moves a damaged block aside (kept for inspection, never served, and
    /// no longer "present", so the next dump of that data stores it again).
    fn quarantine(&self, d: &Digest) -> io::Result<String>;
    /// For `verify` after a walk that found `present`: the blocks the
    /// store's index of present blocks vouches for that are not in the
    /// store (a dump would take them for stored); `repair` takes them out
    /// of the index. Stores without such an index have none.
    fn audit_index(
        &self,
        _present: &std::collections::HashSet<Digest>,
        _repair: bool,
    ) -> Result<Vec<Digest>> {
        Ok(Vec::new())
    }
    /// The index of present blocks, for `status`: (blocks it vouches for,
    /// files it is in). None for stores without one.
    fn index_summary(&self) -> Option<(u64, usize)> {
        None
    }
    /// Makes every block put so far durable.
    fn sync(&self) -> io::Result<()>;
    /// Starts an import or dump: registers it so that a concurrent gc keeps
    /// every block it is told is present, and recovers what a crashed
    /// writer left. Never waits for a gc.
    fn begin_writes(&self) -> Result<WriteSession>;
    /// Ends a writing run: every block it wrote is made durable.
    fn end_writes(&self, session: WriteSession) -> Result<()>;
    /// Removes every block `live` does not name, safely beside running
    /// writers (docs/DESIGN.md §2); waits for another gc only if `wait`
    /// (else fails with [`StoreBusy`]).
    fn collect_garbage(&self, live: LiveSet<'_>, dry_run: bool, wait: bool) -> Result<SweepStats>;
    fn manifests(&self) -> Result<Vec<ManifestEntry>>;
    /// The manifests whose `rel` starts with `prefix`: "" for all, or one
    /// directory of the manifest tree (`2026/`, `2026/04/24/`,
    /// `.blockstore/manifests/<name>/`). Backends should list only that part:
    /// `mount` asks for one directory per listing.
    fn manifests_under(&self, prefix: &str) -> Result<Vec<ManifestEntry>> {
        let mut all = self.manifests()?;
        all.retain(|e| e.rel.starts_with(prefix));
        Ok(all)
    }
    /// The manifest with this key, if there is one.
    fn find_manifest(&self, rel: &str) -> Result<Option<ManifestEntry>> {
        let dir = rel.rfind('/').map_or("", |i| &rel[..=i]);
        Ok(self
            .manifests_under(dir)?
            .into_iter()
            .find(|e| e.rel == rel))
    }
    fn read_manifest(&self, entry: &ManifestEntry) -> Result<Manifest>;
    /// A dump's header comments only (source, date, sizes), without its hashes.
    fn manifest_header(&self, entry: &ManifestEntry) -> Result<ManifestHeader>;
    /// A dump's size and dates. Backends that can read just the header
    /// should: `mount` stats every dump in a directory listing.
    fn manifest_info(&self, entry: &ManifestEntry) -> Result<ManifestInfo> {
        Ok(ManifestInfo::of(&self.read_manifest(entry)?, None))
    }
    /// Makes `m` visible as `<day>/<name>.manifest` after making its blocks
    /// durable; never overwrites (a same-day repeat becomes `<name>+2.manifest`).
    fn write_manifest(&self, name: &str, m: &Manifest) -> Result<ManifestEntry>;
    /// `write_manifest` with the hashes from `hashes` (`m.blocks` is not
    /// used): a dump's list goes from its spool to the manifest without
    /// being held in memory, where the backend can stream.
    fn write_manifest_spooled(
        &self,
        name: &str,
        m: &Manifest,
        hashes: &SpooledHashes,
    ) -> Result<ManifestEntry> {
        let full = Manifest {
            blocks: hashes.to_vec()?,
            ..m.clone()
        };
        self.write_manifest(name, &full)
    }
    /// Removes a dump, durably. Readers that already read the manifest (an
    /// open image in `mount`) keep their block list; its blocks stay until a
    /// gc. A protected dump is refused.
    fn remove_manifest(&self, entry: &ManifestEntry) -> Result<()>;
    fn is_protected(&self, entry: &ManifestEntry) -> Result<bool>;
    /// Marks a dump as one `forget` and `delete` never remove (or clears it).
    fn set_protected(&self, entry: &ManifestEntry, on: bool) -> Result<()>;
    /// Left-overs of interrupted writes that are not blocks (unfinished
    /// manifests), for `verify`'s notes; gc removes them.
    fn leftovers(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Why `remove_manifest` refuses a protected dump.
pub(crate) fn protected_error(entry: &ManifestEntry) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is protected; `diskdump unprotect {}` first",
        entry.rel,
        entry.rel
    )
}

/// The largest block file a store accepts for `block_size`: a frame can
/// exceed its content only by headers and incompressible-block markers;
/// anything much larger is damage, refused before it is read.
pub fn max_stored_frame(block_size: usize) -> usize {
    block_size + block_size / 64 + 4096
}

/// Reads, decodes (bounded by the block size) and verifies one block.
pub fn get_block(
    store: &dyn Store,
    d: &Digest,
    frame_buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), BlockError> {
    store.get_frame(d, frame_buf)?;
    decode_block(d, frame_buf, store.block_size(), out, true)
}

/// Decodes a block's frame into `out` (bounded by the block size) and, if
/// `check`, verifies that the content hashes to `d`.
pub fn decode_block(
    d: &Digest,
    frame: &[u8],
    block_size: usize,
    out: &mut Vec<u8>,
    check: bool,
) -> Result<(), BlockError> {
    blockfmt::decode(frame, block_size, out).map_err(|e| BlockError::Corrupt {
        digest: *d,
        reason: e.to_string(),
    })?;
    if !check {
        return Ok(());
    }
    let actual = Digest::of(out);
    if actual != *d {
        return Err(BlockError::Corrupt {
            digest: *d,
            reason: format!("content hashes to {actual}"),
        });
    }
    Ok(())
}

/// Compresses and stores a raw block unless present; returns (new, stored bytes).
pub fn put_block(
    store: &dyn Store,
    d: &Digest,
    raw: &[u8],
    enc: &mut blockfmt::Encoder,
    buf: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    if store.contains(d)? {
        return Ok(None);
    }
    buf.clear();
    enc.encode(raw, buf);
    Ok(store.put_frame(d, buf)?.then_some(buf.len()))
}
