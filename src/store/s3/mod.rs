//! The store on an S3 bucket (docs/DESIGN.md §8): blocks in pack objects
//! (`objstore::packed`), manifests as objects in the same text format, a
//! local index and a bounded disk cache on the storage host.
//!
//! ```text
//! s3://BUCKET/PREFIX/config.json            block size (as a local store's)
//!                    packs/<sha256>.pack    frames + index + trailer
//!                    manifests/YYYY/MM/DD/<name>[+N].manifest
//!                    protected/<manifest key>   protect markers (empty)
//!                    writers/<id>           running imports and dumps
//!                    gc/lock-<id>, gc/pending-<id>, bad/<block>-<pack>
//! ```
//!
//! Nothing here trusts a host's clock: ages come from the service's
//! LastModified times; writers and gcs prove they are alive by rewriting
//! their object every `HEARTBEAT`.

use super::diskcache::DiskCache;
use super::{
    BlockError, FileId, LiveSet, ManifestEntry, ManifestInfo, Store, StoreConfig, SweepStats,
    WalkItem, WriteSession, LEGACY_PREFIX,
};
use crate::digest::Digest;
use crate::manifest::{Manifest, ManifestHeader, SpooledHashes};
use crate::objstore::pack::PackEntry;
use crate::objstore::packed::{PackedBlocks, DEFAULT_PACK_TARGET};
use crate::objstore::{
    Counted, Counts, ObjectError, ObjectInfo, ObjectStore, S3Config, S3Location, S3Objects,
};
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

mod gc;

const CONFIG: &str = "config.json";
const MANIFESTS: &str = "manifests/";
const PROTECTED: &str = "protected/";
const WRITERS: &str = "writers/";
const BAD: &str = "bad/";
/// How often a running writer or gc rewrites its object.
const HEARTBEAT: Duration = Duration::from_secs(60);
/// A writer or gc object not rewritten for this long belongs to a process
/// that died (kill -9, a lost host).
const STALE: Duration = Duration::from_secs(600);
/// Reads fetch this much of a pack at once: blocks sit in a pack in the
/// order they were written, so a sequential reader needs the neighbours.
const WINDOW: u64 = 4 << 20;
/// A window and the ones read ahead after it (one GET each, in parallel).
const AHEAD_WINDOWS: u64 = 6;
/// Default bound of the disk cache of fetched frames.
const DEFAULT_CACHE: u64 = 4 << 30;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(e: ObjectError) -> io::Error {
    let kind = match e.kind {
        crate::objstore::ErrorKind::NotFound => io::ErrorKind::NotFound,
        crate::objstore::ErrorKind::Denied => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// A window of a pack being fetched by one thread; others wait for it.
type Fetch = Arc<(Mutex<bool>, Condvar)>;

pub struct S3Store {
    objects: Arc<dyn ObjectStore>,
    location: S3Location,
    config: StoreConfig,
    cache_dir: PathBuf,
    blocks: Mutex<Option<Arc<PackedBlocks>>>,
    disk: Option<Arc<DiskCache>>,
    fetching: Arc<Mutex<HashMap<(Digest, u64), Fetch>>>,
    protected: Mutex<Option<HashSet<String>>>,
    counts: Arc<Counts>,
    pack_target: usize,
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if std::env::var_os("DISKDUMP_S3_STATS").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("diskdump: s3 requests: {}", self.counts);
        }
    }
}

/// A process's object (writer registration, gc lock) rewritten every
/// `HEARTBEAT` until dropped.
struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(objects: Arc<dyn ObjectStore>, key: String, body: String) -> Heartbeat {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(HEARTBEAT) {
                // A missed beat only makes the process look older; the next one fixes it.
                let _ = objects.put(&key, body.as_bytes());
            }
        });
        Heartbeat {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A unique id for this process's objects: host, pid and time.
fn process_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect::<String>();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{}-{nanos:x}", std::process::id())
}

struct Session {
    key: String,
    _beat: Heartbeat,
}

impl S3Store {
    fn connect(loc: &S3Location) -> Result<(Arc<dyn ObjectStore>, Arc<Counts>)> {
        let config = S3Config::from_env().map_err(anyhow::Error::msg)?;
        let s3 = S3Objects::new(loc.clone(), &config).map_err(anyhow::Error::msg)?;
        let counts = Arc::new(Counts::default());
        let objects: Arc<dyn ObjectStore> = Arc::new(Counted {
            inner: s3,
            counts: counts.clone(),
        });
        Ok((objects, counts))
    }

    /// Opens the store at `loc`; a bucket or prefix without one is a clear error.
    pub fn open(loc: &S3Location) -> Result<S3Store> {
        let (objects, counts) = S3Store::connect(loc)?;
        S3Store::open_with(objects, counts, loc, None)
    }

    /// Opens a store on any object store (an in-memory one in unit tests).
    pub fn open_with(
        objects: Arc<dyn ObjectStore>,
        counts: Arc<Counts>,
        loc: &S3Location,
        cache_dir: Option<PathBuf>,
    ) -> Result<S3Store> {
        let text = match objects.get(CONFIG) {
            Ok(t) => t,
            Err(e) if e.is_not_found() && e.detail.contains("bucket") => return Err(e.into()),
            Err(e) if e.is_not_found() => bail!(
                "{loc} is not a diskdump store (no {CONFIG}); create one with `diskdump init {loc}`"
            ),
            Err(e) => return Err(e.into()),
        };
        let origin = PathBuf::from(format!("{loc}{CONFIG}"));
        let config = StoreConfig::parse(&String::from_utf8_lossy(&text), &origin)?;
        let cache_dir = cache_dir.unwrap_or_else(|| default_cache_dir(&objects.describe()));
        let limit = match std::env::var("DISKDUMP_S3_CACHE_SIZE") {
            Ok(v) => crate::cli::parse_size_u64(&v)
                .map_err(|e| anyhow::anyhow!("DISKDUMP_S3_CACHE_SIZE: {e}"))?,
            Err(_) => DEFAULT_CACHE,
        };
        let disk = match limit {
            0 => None,
            n => Some(Arc::new(
                DiskCache::open(&cache_dir.join("blocks"), n).with_context(|| {
                    format!("cannot open the block cache {}", cache_dir.display())
                })?,
            )),
        };
        let pack_target = std::env::var("DISKDUMP_S3_PACK_SIZE")
            .ok()
            .and_then(|v| crate::cli::parse_size(&v).ok())
            .unwrap_or(DEFAULT_PACK_TARGET);
        Ok(S3Store {
            objects,
            location: loc.clone(),
            config,
            cache_dir,
            blocks: Mutex::new(None),
            disk,
            fetching: Arc::new(Mutex::new(HashMap::new())),
            protected: Mutex::new(None),
            counts,
            pack_target,
        })
    }

    /// Creates a store at `loc` (the bucket must exist); fails if there is one.
    pub fn create(loc: &S3Location, block_size: usize) -> Result<S3Store> {
        super::check_block_size(block_size)?;
        let (objects, counts) = S3Store::connect(loc)?;
        objects.check()?;
        match objects.get(CONFIG) {
            Ok(_) => bail!("store {loc} already exists"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        if !objects.list("")?.is_empty() {
            bail!("{loc} is not empty; a store needs a prefix of its own");
        }
        let text = StoreConfig {
            block_size,
            group: None,
        }
        .render();
        objects.put(CONFIG, text.as_bytes())?;
        S3Store::open_with(objects, counts, loc, None)
    }

    /// The packed blocks, opened (index loaded and refreshed) on first use:
    /// `list` and `info` need none of it.
    fn blocks(&self) -> io::Result<Arc<PackedBlocks>> {
        let mut b = lock(&self.blocks);
        if let Some(b) = &*b {
            return Ok(b.clone());
        }
        std::fs::create_dir_all(&self.cache_dir)?;
        let opened = PackedBlocks::open(
            self.objects.clone(),
            Some(self.cache_dir.join("index")),
            self.pack_target,
        )
        .map_err(io_err)?;
        let bad = self.bad_copies().map_err(io_err)?;
        if !bad.is_empty() {
            opened.mark_bad(&bad);
        }
        *b = Some(opened.clone());
        Ok(opened)
    }

    fn bad_copies(&self) -> Result<Vec<(Digest, Digest)>, ObjectError> {
        Ok(self
            .objects
            .list(BAD)?
            .iter()
            .filter_map(|o| {
                let (d, p) = o.key.strip_prefix(BAD)?.split_once('-')?;
                Some((Digest::from_hex(d)?, Digest::from_hex(p)?))
            })
            .collect())
    }

    /// The service's clock now: the LastModified of an object just written.
    fn server_now(&self, key: &str, body: &str) -> Result<SystemTime> {
        self.objects.put(key, body.as_bytes())?;
        let listed = self.objects.list(key)?;
        listed
            .iter()
            .find(|o| o.key == key)
            .and_then(|o| o.modified)
            .with_context(|| format!("{}: the listing has no time for {key}", self.describe()))
    }

    fn entry_of(&self, o: &ObjectInfo) -> Option<ManifestEntry> {
        let rel = o.key.strip_prefix(MANIFESTS)?;
        let file = rel.rsplit('/').next()?;
        let base = file.strip_suffix(".manifest")?;
        let id = o.modified.map(|t| FileId {
            ino: 0,
            mtime_ns: t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128),
            len: o.size,
        });
        if let Some(legacy) = rel.strip_prefix(LEGACY_PREFIX) {
            let (name, _) = legacy.split_once('/')?;
            return Some(ManifestEntry {
                rel: rel.to_string(),
                name: format!("{name}/{base}"),
                day: None,
                id,
            });
        }
        let day = rel.strip_suffix(file)?.trim_end_matches('/');
        Some(ManifestEntry {
            rel: rel.to_string(),
            name: base.to_string(),
            day: Some(day.to_string()),
            id,
        })
    }

    fn manifest_bytes(&self, entry: &ManifestEntry) -> Result<Vec<u8>> {
        self.objects
            .get(&format!("{MANIFESTS}{}", entry.rel))
            // A removed manifest reads as io NotFound: callers tell
            // "removed since listed" from damage by that kind.
            .map_err(|e| anyhow::Error::new(io_err(e)))
            .with_context(|| format!("cannot read manifest {}", entry.rel))
    }

    fn protected_set(&self) -> Result<HashSet<String>> {
        let mut p = lock(&self.protected);
        if let Some(s) = &*p {
            return Ok(s.clone());
        }
        let set: HashSet<String> = self
            .objects
            .list(PROTECTED)?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(PROTECTED).map(str::to_string))
            .collect();
        *p = Some(set.clone());
        Ok(set)
    }

    /// Reads a block's frame through the disk cache. On a miss, the whole
    /// window of its pack is fetched once (other threads wanting a block of
    /// the same window wait for that fetch) and kept in the cache. Entering
    /// a window (a miss, or a hit on its first block) also starts fetching
    /// the pack's next windows in the background, so a reader moving
    /// through an image finds them cached instead of stalling per batch.
    fn fetch(&self, blocks: &Arc<PackedBlocks>, d: &Digest, buf: &mut Vec<u8>) -> io::Result<bool> {
        let Some(disk) = &self.disk else {
            if blocks.location(d).is_none() {
                return Ok(false);
            }
            return blocks.get_frame(d, buf).map_err(io_err);
        };
        if disk.get(d, buf) {
            if let Some((l, k, true)) = blocks.window_of(d, WINDOW) {
                self.read_ahead(blocks, disk, l.pack, k);
            }
            return Ok(true);
        }
        let Some((l, k, _)) = blocks.window_of(d, WINDOW) else {
            return Ok(false);
        };
        let entries = blocks.window_at(&l.pack, k, WINDOW);
        self.read_ahead(blocks, disk, l.pack, k);
        let Some(fetch) = claim(&self.fetching, l.pack, k) else {
            // Another thread is fetching this window: wait for it.
            let fetch = lock(&self.fetching).get(&(l.pack, k)).cloned();
            if let Some(fetch) = fetch {
                let mut done = lock(&fetch.0);
                while !*done {
                    done = fetch.1.wait(done).unwrap_or_else(|p| p.into_inner());
                }
            }
            if disk.get(d, buf) {
                return Ok(true);
            }
            return blocks.get_frame(d, buf).map_err(io_err);
        };
        match fetch_window(
            blocks,
            disk,
            &self.fetching,
            l.pack,
            k,
            &entries,
            fetch,
            Some(d),
        ) {
            Ok(Some(frame)) => {
                *buf = frame;
                Ok(true)
            }
            Ok(None) => blocks.get_frame(d, buf).map_err(io_err),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Starts background fetches of the `AHEAD_WINDOWS - 1` windows after
    /// window `k` of `pack` that are neither cached nor being fetched.
    fn read_ahead(&self, blocks: &Arc<PackedBlocks>, disk: &Arc<DiskCache>, pack: Digest, k: u64) {
        for next in k + 1..k + AHEAD_WINDOWS {
            let e = blocks.window_at(&pack, next, WINDOW);
            if e.is_empty() {
                break;
            }
            if e.first().is_some_and(|f| disk.has(&f.digest)) {
                continue;
            }
            let Some(fetch) = claim(&self.fetching, pack, next) else {
                continue;
            };
            let (blocks, disk, fetching) = (blocks.clone(), disk.clone(), self.fetching.clone());
            // A failed read-ahead costs nothing: the reader fetches the
            // window itself and reports the error.
            std::thread::spawn(move || {
                let _ = fetch_window(&blocks, &disk, &fetching, pack, next, &e, fetch, None);
            });
        }
    }
}

type Fetching = Mutex<HashMap<(Digest, u64), Fetch>>;

/// Marks window `k` of `pack` as being fetched, unless someone already is.
fn claim(fetching: &Fetching, pack: Digest, k: u64) -> Option<Fetch> {
    let mut f = lock(fetching);
    if f.contains_key(&(pack, k)) {
        return None;
    }
    let x: Fetch = Arc::new((Mutex::new(false), Condvar::new()));
    f.insert((pack, k), x.clone());
    Some(x)
}

/// Fetches one window (one ranged GET) into the disk cache, then wakes
/// whoever waits for it; returns the frame of `want` if the window has it.
#[allow(clippy::too_many_arguments)]
fn fetch_window(
    blocks: &PackedBlocks,
    disk: &DiskCache,
    fetching: &Fetching,
    pack: Digest,
    k: u64,
    entries: &[PackEntry],
    fetch: Fetch,
    want: Option<&Digest>,
) -> Result<Option<Vec<u8>>, ObjectError> {
    let got = blocks.read_entries(&pack, entries).map(|frames| {
        let mut mine = None;
        for (fd, frame) in frames {
            disk.put(&fd, &frame);
            if Some(&fd) == want {
                mine = Some(frame);
            }
        }
        mine
    });
    *lock(&fetch.0) = true;
    fetch.1.notify_all();
    lock(fetching).remove(&(pack, k));
    got
}

impl S3Store {
    /// Uploads the blocks first (the durability rule), then the manifest's
    /// text (from `write`, through an anonymous temp file, streamed to the
    /// PUT) at the first free `+N` key. S3 has no create-if-absent that
    /// every service honours (Garage ignores If-None-Match), so the object
    /// is checked after the PUT (its size and its header, which names the
    /// dump's date to the microsecond): if another writer's PUT landed on the
    /// same key, ours takes the next one.
    fn write_manifest_object(
        &self,
        name: &str,
        m: &Manifest,
        write: &mut dyn FnMut(&mut std::io::BufWriter<&std::fs::File>) -> io::Result<()>,
    ) -> Result<ManifestEntry> {
        use std::io::Write as _;
        use std::os::unix::fs::FileExt;
        let day = super::manifest_day(name, m)?;
        self.sync().context("cannot upload the dump's blocks")?;
        let file = crate::manifest::anonymous_file(&std::env::temp_dir())
            .context("cannot create a temp file for the manifest")?;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
            write(&mut w)
                .and_then(|_| w.flush())
                .context("cannot write the manifest to its temp file")?;
        }
        let len = file.metadata()?.len();
        let mut head = vec![0u8; len.min(64 * 1024) as usize];
        file.read_exact_at(&mut head, 0)?;
        let mut seq = 1;
        for _ in 0..100 {
            let taken: HashSet<String> = self
                .objects
                .list(&format!("{MANIFESTS}{day}/"))?
                .into_iter()
                .map(|o| o.key)
                .collect();
            while taken.contains(&format!(
                "{MANIFESTS}{}",
                super::manifest_key(&day, name, seq)
            )) {
                seq += 1;
            }
            let rel = super::manifest_key(&day, name, seq);
            let key = format!("{MANIFESTS}{rel}");
            self.objects.put_file(&key, &file, len)?;
            let listed = self.objects.list(&key)?;
            let o = listed.iter().find(|o| o.key == key);
            let ours = o.is_some_and(|o| o.size == len)
                && self.objects.get_range(&key, 0, head.len() as u64)? == head;
            if ours {
                return Ok(o.and_then(|o| self.entry_of(o)).unwrap_or(ManifestEntry {
                    name: rel
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches(".manifest")
                        .to_string(),
                    rel,
                    day: Some(day),
                    id: None,
                }));
            }
            seq += 1;
        }
        bail!(
            "cannot find a free name for {name} on {day} in {}",
            self.describe()
        )
    }
}

/// `$XDG_CACHE_HOME/diskdump/s3/<hash of the location>`: the index and the
/// frames cache of one store on this host.
fn default_cache_dir(what: &str) -> PathBuf {
    let base = std::env::var_os("DISKDUMP_S3_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("diskdump")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/diskdump")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/diskdump"));
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_default();
    let id = Digest::of(format!("{endpoint}\n{what}").as_bytes()).to_hex();
    base.join("s3").join(&id[..16])
}

impl Store for S3Store {
    fn block_size(&self) -> usize {
        self.config.block_size
    }

    fn describe(&self) -> String {
        self.location.to_string()
    }

    fn contains(&self, d: &Digest) -> io::Result<bool> {
        Ok(self.blocks()?.contains(d))
    }

    fn stored_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        let b = self.blocks()?;
        if let Some(l) = b.location(d) {
            return Ok(Some(u64::from(l.len)));
        }
        let mut buf = Vec::new();
        Ok(b.get_in_memory(d, &mut buf).then_some(buf.len() as u64))
    }

    fn put_frame(&self, d: &Digest, frame: &[u8]) -> io::Result<bool> {
        self.blocks()?.put_frame(d, frame).map_err(io_err)
    }

    fn get_frame(&self, d: &Digest, buf: &mut Vec<u8>) -> Result<(), BlockError> {
        let fail = |e: io::Error| BlockError::Io {
            digest: *d,
            reason: e.to_string(),
        };
        let blocks = self.blocks().map_err(fail)?;
        if blocks.get_in_memory(d, buf) {
            return Ok(());
        }
        match self.fetch(&blocks, d, buf) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            Err(_) => {}
        }
        // Not where the index said (a gc repacked it) or not known yet
        // (another host's upload): list the packs again, once.
        blocks.refresh().map_err(|e| fail(io_err(e)))?;
        match self.fetch(&blocks, d, buf) {
            Ok(true) => Ok(()),
            Ok(false) => Err(BlockError::Missing(*d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlockError::Missing(*d)),
            Err(e) => Err(fail(e)),
        }
    }

    fn block_location(&self, d: &Digest) -> String {
        match self.blocks().ok().and_then(|b| b.location(d)) {
            Some(l) => format!(
                "{}{} at {}+{}",
                self.location,
                crate::objstore::packed::pack_key(&l.pack),
                l.offset,
                l.len
            ),
            None => format!("block {d}"),
        }
    }

    fn walk(&self, f: &mut dyn FnMut(WalkItem) -> Result<()>) -> Result<()> {
        let mut all = self.blocks()?.blocks();
        all.sort();
        for (d, n) in all {
            f(WalkItem::Block(d, u64::from(n)))?;
        }
        Ok(())
    }

    /// Packs are immutable: the damaged copy is recorded (`bad/`), never
    /// served again, and dropped by the next gc that rewrites its pack.
    fn quarantine(&self, d: &Digest) -> io::Result<String> {
        let b = self.blocks()?;
        let Some(l) = b.location(d) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("block {d} is not in the store"),
            ));
        };
        let key = format!("{BAD}{}-{}", d.to_hex(), l.pack.to_hex());
        self.objects.put(&key, b"").map_err(io_err)?;
        b.mark_bad(&[(*d, l.pack)]);
        Ok(format!("{}{key}", self.location))
    }

    fn sync(&self) -> io::Result<()> {
        match &*lock(&self.blocks) {
            Some(b) => b.flush().map_err(io_err),
            None => Ok(()),
        }
    }

    /// Registers the writer (`writers/<id>`, rewritten every HEARTBEAT), then
    /// stops answering from packs a gc is deleting, then lists the packs:
    /// see `gc` for why this order makes "present" safe.
    fn begin_writes(&self) -> Result<WriteSession> {
        let key = format!("{WRITERS}{}", process_id());
        let body = "running\n".to_string();
        self.objects.put(&key, body.as_bytes())?;
        let beat = Heartbeat::start(self.objects.clone(), key.clone(), body);
        let blocks = self.blocks()?;
        let doomed = gc::pending_packs(self.objects.as_ref())?;
        if !doomed.is_empty() {
            blocks.exclude(&doomed);
        }
        blocks.refresh()?;
        Ok(WriteSession::new(Session { key, _beat: beat }))
    }

    /// Every block is uploaded, then the registration says "ended" (gc
    /// removes it once it is older than any gc that could have missed it).
    fn end_writes(&self, session: WriteSession) -> Result<()> {
        let s: Session = session.into_inner().expect("a session of this store");
        let flushed = self.sync();
        drop(s._beat);
        self.objects.put(&s.key, b"ended\n")?;
        flushed.context("cannot upload the last pack")
    }

    fn collect_garbage(&self, live: LiveSet<'_>, dry_run: bool, wait: bool) -> Result<SweepStats> {
        gc::collect(self, live, dry_run, wait)
    }

    fn manifests(&self) -> Result<Vec<ManifestEntry>> {
        self.manifests_under("")
    }

    fn manifests_under(&self, prefix: &str) -> Result<Vec<ManifestEntry>> {
        let mut out: Vec<ManifestEntry> = self
            .objects
            .list(&format!("{MANIFESTS}{prefix}"))?
            .iter()
            .filter_map(|o| self.entry_of(o))
            .collect();
        // Dated first (as a local store lists them), then the Python era's.
        out.sort_by(|a, b| a.is_legacy().cmp(&b.is_legacy()).then(a.rel.cmp(&b.rel)));
        Ok(out)
    }

    fn read_manifest(&self, entry: &ManifestEntry) -> Result<Manifest> {
        super::local::parse_manifest_bytes(self.manifest_bytes(entry)?, &entry.rel)
    }

    fn manifest_header(&self, entry: &ManifestEntry) -> Result<ManifestHeader> {
        let key = format!("{MANIFESTS}{}", entry.rel);
        let head = self
            .objects
            .get_range(&key, 0, 64 * 1024)
            .with_context(|| format!("cannot read manifest {}", entry.rel))?;
        let head = super::local::read_header(&head[..])?;
        Ok(ManifestHeader::parse(
            &String::from_utf8_lossy(&head),
            &entry.rel,
        )?)
    }

    fn manifest_info(&self, entry: &ManifestEntry) -> Result<ManifestInfo> {
        let h = self.manifest_header(entry)?;
        let modified = entry
            .id
            .map(|id| SystemTime::UNIX_EPOCH + Duration::from_nanos(id.mtime_ns.max(0) as u64));
        match ManifestInfo::from_header(&h, modified) {
            Some(info) => Ok(info),
            None => Ok(ManifestInfo::of(&self.read_manifest(entry)?, modified)),
        }
    }

    /// See `write_manifest_object`.
    fn write_manifest(&self, name: &str, m: &Manifest) -> Result<ManifestEntry> {
        self.write_manifest_object(name, m, &mut |w| m.write_to(w))
    }

    fn write_manifest_spooled(
        &self,
        name: &str,
        m: &Manifest,
        hashes: &SpooledHashes,
    ) -> Result<ManifestEntry> {
        self.write_manifest_object(name, m, &mut |w| m.write_spooled(w, hashes))
    }

    fn remove_manifest(&self, entry: &ManifestEntry) -> Result<()> {
        if self.is_protected(entry)? {
            return Err(super::protected_error(entry));
        }
        self.objects.delete(&format!("{MANIFESTS}{}", entry.rel))?;
        Ok(())
    }

    fn is_protected(&self, entry: &ManifestEntry) -> Result<bool> {
        Ok(self.protected_set()?.contains(&entry.rel))
    }

    fn set_protected(&self, entry: &ManifestEntry, on: bool) -> Result<()> {
        let key = format!("{PROTECTED}{}", entry.rel);
        if on {
            self.objects.put(&key, b"")?;
        } else {
            self.objects.delete(&key)?;
        }
        *lock(&self.protected) = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
