//! The local store's index of present blocks (docs/DESIGN.md §1.7): sorted
//! files of digests under `.blockstore/index/` that answer "present?" for a
//! dump or import without touching the block's file.
//!
//! It is a positive cache only: a digest it lacks is checked on disk as
//! before, so any file that is missing, damaged or unreadable here costs
//! speed, never data. What may enter it, and when:
//! - `seg-*.idx`: blocks a writer stored or found whole, written by that
//!   writer only after its final `syncfs` (so every block listed is durably
//!   whole: the crash rule of §1.5 holds without reading the file again).
//! - `del-*.idx`: blocks taken out of the store (gc, a damaged block moved
//!   aside), written durably *before* the block goes. A digest in any `del`
//!   is absent, whatever the segments say ("del wins"; a block stored again
//!   later is found on disk and indexed again after the next compaction).
//!
//! Compaction merges everything into one segment minus the dels it read,
//! then removes what it merged, segments before dels (a reader that still
//! lists a del's victims' segment finds it gone and loads again).
//!
//! File format: `DDIDX001` | count u64 LE | count × 32-byte digests, sorted.

use crate::digest::Digest;
use memmap2::Mmap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

const MAGIC: &[u8; 8] = b"DDIDX001";
const HEAD: usize = 16;
/// Digests a writer keeps in memory before it sorts them into a run on disk
/// (32 MiB), so a 10 TiB first dump's 80 M blocks never sit in memory.
const RUN: usize = 1 << 20;
/// More files than this make the next writer compact.
pub const COMPACT_AT: usize = 8;

/// One file of sorted digests (a view of its bytes; empty files have no map).
struct Sorted {
    map: Option<Mmap>,
    count: usize,
}

impl Sorted {
    fn open(path: &Path) -> io::Result<Sorted> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        let bad = || {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("{}: not an index file", path.display()),
            )
        };
        if len < HEAD as u64 {
            return Err(bad());
        }
        // SAFETY: index files are never modified in place (written to a
        // temp name, fsynced, renamed; removed as a whole), so the mapping
        // stays what it was at open.
        let map = unsafe { Mmap::map(&f)? };
        let count = parse_head(&map[..HEAD], len).ok_or_else(bad)?;
        Ok(Sorted {
            map: Some(map),
            count,
        })
    }

    fn digests(&self) -> &[u8] {
        self.map
            .as_deref()
            .map_or(&[], |m| &m[HEAD..HEAD + self.count * 32])
    }

    fn contains(&self, d: &Digest) -> bool {
        contains_sorted(self.digests(), d)
    }
}

/// The count, if `head` starts a file of `len` bytes in this format.
fn parse_head(head: &[u8], len: u64) -> Option<usize> {
    if head.len() < HEAD || &head[..8] != MAGIC {
        return None;
    }
    let count = u64::from_le_bytes(head[8..16].try_into().ok()?);
    (count.checked_mul(32)?.checked_add(HEAD as u64)? == len).then_some(count as usize)
}

/// Binary search of 32-byte records sorted bytewise.
fn contains_sorted(records: &[u8], d: &Digest) -> bool {
    let (mut lo, mut hi) = (0, records.len() / 32);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match records[mid * 32..mid * 32 + 32].cmp(&d.0[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// What a writer loaded at its start.
#[derive(Default)]
pub struct IndexView {
    segs: Vec<Sorted>,
    dels: Vec<Sorted>,
}

impl IndexView {
    /// Loads `dir`; a file that vanished meanwhile (a compaction) means load
    /// again; an unreadable directory is an empty view (everything checked
    /// on disk). Damaged files are skipped: they only lose speed.
    pub fn load(dir: &Path) -> IndexView {
        for _ in 0..5 {
            match IndexView::try_load(dir) {
                Ok(v) => return v,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(_) => break,
            }
        }
        IndexView::default()
    }

    fn try_load(dir: &Path) -> io::Result<IndexView> {
        let mut v = IndexView::default();
        let names = match list(dir) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(e),
        };
        for (kind, name) in names {
            match Sorted::open(&dir.join(&name)) {
                Ok(s) if kind == Kind::Seg => v.segs.push(s),
                Ok(s) => v.dels.push(s),
                Err(e) if e.kind() == ErrorKind::InvalidData && kind == Kind::Seg => {}
                // A del that cannot be read must not be ignored: no index.
                Err(e) if e.kind() == ErrorKind::InvalidData => return Err(io::Error::other(e)),
                Err(e) => return Err(e),
            }
        }
        Ok(v)
    }

    /// Every digest the view vouches for (once per file that lists it).
    pub fn for_each(&self, f: &mut dyn FnMut(Digest)) {
        for s in &self.segs {
            for rec in s.digests().chunks_exact(32) {
                let d = Digest(rec.try_into().expect("32 bytes"));
                if !self.dels.iter().any(|x| x.contains(&d)) {
                    f(d);
                }
            }
        }
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.segs.iter().any(|s| s.contains(d)) && !self.dels.iter().any(|s| s.contains(d))
    }

    /// Entries of its segments (a digest in two segments counts twice).
    pub fn len(&self) -> usize {
        self.segs.iter().map(|s| s.count).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Seg,
    Del,
}

/// The index files in `dir`, by kind (temp and other files left out).
fn list(dir: &Path) -> io::Result<Vec<(Kind, String)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".idx") {
            continue;
        }
        if name.starts_with("seg-") {
            out.push((Kind::Seg, name));
        } else if name.starts_with("del-") {
            out.push((Kind::Del, name));
        }
    }
    out.sort();
    Ok(out)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique_name(kind: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{kind}-{nanos:x}-{}-{}.idx",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes the header and the records `fill` produces to `f`, then sets the
/// header's count to how many it wrote (so a merge runs once, not once to
/// count and once to write). Returns that count.
fn write_records(
    f: &File,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<u64>,
) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(MAGIC)?;
    w.write_all(&0u64.to_le_bytes())?;
    let n = fill(&mut w)?;
    w.flush()?;
    drop(w);
    f.write_all_at(&n.to_le_bytes(), 8)?;
    Ok(n)
}

/// Writes the sorted, deduplicated records `fill` produces as
/// `dir/<kind>-*.idx`: a temp name, fsync, rename, directory fsync.
fn write_file(
    dir: &Path,
    kind: &str,
    fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<u64>,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let name = unique_name(kind);
    let tmp = dir.join(format!(".{name}.tmp"));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640) // less by the store's umask, like every store file
        .open(&tmp)?;
    let written = write_records(&f, fill)
        .and_then(|_| f.sync_all())
        .and_then(|_| fs::rename(&tmp, dir.join(&name)))
        .and_then(|_| File::open(dir)?.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes `v`'s digests as 32-byte records.
fn put_digests(w: &mut dyn Write, v: &[Digest]) -> io::Result<u64> {
    for d in v {
        w.write_all(&d.0)?;
    }
    Ok(v.len() as u64)
}

/// Sorts and deduplicates in place.
fn sort_dedup(v: &mut Vec<Digest>) {
    v.sort_unstable();
    v.dedup();
}

/// Records that `digests` leave the store; durable before the caller
/// removes or moves any of them.
pub fn remove(dir: &Path, digests: &[Digest]) -> io::Result<()> {
    if digests.is_empty() {
        return Ok(());
    }
    let mut v = digests.to_vec();
    sort_dedup(&mut v);
    write_file(dir, "del", &mut |w| put_digests(w, &v))
}

/// The digests one writer stored or found whole, committed after its sync.
pub struct Additions {
    dir: PathBuf,
    /// The store's file mode (0600, or 0640 in a group-shared store).
    mode: u32,
    buf: Vec<Digest>,
    /// Sorted runs spilled to anonymous files, linked in at commit.
    runs: Vec<File>,
}

impl Additions {
    pub fn new(dir: &Path, mode: u32) -> Additions {
        Additions {
            dir: dir.to_path_buf(),
            mode,
            buf: Vec::new(),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Digest) -> io::Result<()> {
        self.buf.push(d);
        if self.buf.len() >= RUN {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts the buffer into an anonymous file (fsynced at commit).
    fn spill(&mut self) -> io::Result<()> {
        sort_dedup(&mut self.buf);
        fs::create_dir_all(&self.dir)?;
        let f = crate::manifest::anonymous_file(&self.dir)?;
        write_records(&f, &mut |w| put_digests(w, &self.buf))?;
        self.runs.push(f);
        self.buf.clear();
        Ok(())
    }

    /// Makes every digest pushed part of the index. Call only after the
    /// blocks are durable (`syncfs`).
    pub fn commit(mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            sort_dedup(&mut self.buf);
            write_file(&self.dir, "seg", &mut |w| put_digests(w, &self.buf))?;
        }
        for f in std::mem::take(&mut self.runs) {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(self.mode))?;
            f.sync_all()?;
            let name = unique_name("seg");
            link_anonymous(&f, &self.dir, &name)?;
        }
        File::open(&self.dir)?.sync_all()
    }
}

/// Gives an O_TMPFILE file a name (the fallback of `anonymous_file`, an
/// unlinked file, cannot be linked: its run is then written again).
fn link_anonymous(f: &File, dir: &Path, name: &str) -> io::Result<()> {
    let src = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    let dst = std::ffi::CString::new(dir.join(name).into_os_string().into_encoded_bytes())?;
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Copy it instead.
    let len = f.metadata()?.len();
    // SAFETY: the run file is ours and no longer written.
    let map = unsafe { Mmap::map(f)? };
    let count = parse_head(&map[..HEAD.min(map.len())], len)
        .ok_or_else(|| io::Error::other("index run damaged"))?;
    write_file(dir, "seg", &mut |w| {
        w.write_all(&map[HEAD..])?;
        Ok(count as u64)
    })
}

/// What a compaction did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub files_merged: usize,
    pub digests: u64,
}

/// Merges every segment, minus every del, into one segment, then removes
/// the merged files (segments first). The caller holds the index lock.
/// Also removes temp files older than a day (a writer killed mid-write).
pub fn compact(dir: &Path) -> io::Result<Compacted> {
    let names = match list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Compacted::default()),
        Err(e) => return Err(e),
    };
    let (mut segs, mut dels, mut merged) = (Vec::new(), Vec::new(), Vec::new());
    for (kind, name) in &names {
        match Sorted::open(&dir.join(name)) {
            Ok(s) if *kind == Kind::Seg => segs.push(s),
            Ok(s) => dels.push(s),
            // A damaged segment only loses its entries; a damaged del
            // cannot be applied, so nothing is merged this time.
            Err(e) if e.kind() == ErrorKind::InvalidData && *kind == Kind::Seg => {}
            Err(e) => return Err(e),
        }
        merged.push((*kind, name.clone()));
    }
    let mut count = segs.iter().map(|s| s.count as u64).sum();
    if merged.len() > 1 || !dels.is_empty() {
        write_file(dir, "seg", &mut |w| {
            count = merge_minus(&segs, &dels, &mut |d| w.write_all(d))?;
            Ok(count)
        })?;
        for kind in [Kind::Seg, Kind::Del] {
            for (_, name) in merged.iter().filter(|(k, _)| *k == kind) {
                match fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        File::open(dir)?.sync_all()?;
    }
    remove_old_temps(dir)?;
    Ok(Compacted {
        files_merged: merged.len(),
        digests: count,
    })
}

fn remove_old_temps(dir: &Path) -> io::Result<()> {
    let day = SystemTime::now() - Duration::from_secs(86_400);
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < day);
        if name.starts_with('.') && name.ends_with(".tmp") && old {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Streams the sorted union of `segs` minus every digest in `dels` to
/// `out`, each once; returns how many.
fn merge_minus(
    segs: &[Sorted],
    dels: &[Sorted],
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let runs: Vec<&[u8]> = segs.iter().map(|s| s.digests()).collect();
    let dels: Vec<&[u8]> = dels.iter().map(|s| s.digests()).collect();
    merge_runs(&runs, &dels, out)
}

/// The pure part of `merge_minus`: k-way merge of sorted 32-byte records.
fn merge_runs(
    runs: &[&[u8]],
    dels: &[&[u8]],
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut pos = vec![0usize; runs.len()];
    let mut del_pos = vec![0usize; dels.len()];
    let mut last: Option<[u8; 32]> = None;
    let mut n = 0;
    loop {
        let mut best: Option<(usize, &[u8])> = None;
        for (i, r) in runs.iter().enumerate() {
            if let Some(rec) = r.get(pos[i]..pos[i] + 32) {
                if best.is_none_or(|(_, b)| rec < b) {
                    best = Some((i, rec));
                }
            }
        }
        let Some((i, rec)) = best else {
            return Ok(n);
        };
        pos[i] += 32;
        if last.is_some_and(|l| l[..] == *rec) {
            continue;
        }
        last = Some(rec.try_into().expect("32 bytes"));
        let deleted = dels.iter().zip(del_pos.iter_mut()).any(|(d, p)| {
            while d.get(*p..*p + 32).is_some_and(|x| x < rec) {
                *p += 32;
            }
            d.get(*p..*p + 32) == Some(rec)
        });
        if !deleted {
            out(rec)?;
            n += 1;
        }
    }
}

/// How many index files `dir` holds (a writer compacts above `COMPACT_AT`).
pub fn file_count(dir: &Path) -> usize {
    list(dir).map_or(0, |v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u32) -> Digest {
        Digest::of(&i.to_le_bytes())
    }

    #[test]
    fn merge_is_sorted_union_minus_dels() {
        let mut a: Vec<Digest> = (0..50).map(d).collect();
        let mut b: Vec<Digest> = (25..100).map(d).collect();
        let mut x: Vec<Digest> = (40..60).map(d).collect();
        for v in [&mut a, &mut b, &mut x] {
            sort_dedup(v);
        }
        let flat = |v: &[Digest]| v.iter().flat_map(|d| d.0).collect::<Vec<u8>>();
        let (fa, fb, fx) = (flat(&a), flat(&b), flat(&x));
        let mut out = Vec::new();
        let n = merge_runs(&[&fa, &fb], &[&fx], &mut |r| {
            out.extend_from_slice(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 80);
        let mut want: Vec<Digest> = (0..40).chain(60..100).map(d).collect();
        sort_dedup(&mut want);
        assert_eq!(out, flat(&want));
        for i in 0..100 {
            assert_eq!(contains_sorted(&out, &d(i)), !(40..60).contains(&i), "{i}");
        }
        assert!(!contains_sorted(&[], &d(1)));
    }

    #[test]
    fn head_must_match_the_length() {
        let mut h = MAGIC.to_vec();
        h.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(parse_head(&h, 16 + 96), Some(3));
        assert_eq!(parse_head(&h, 16 + 95), None);
        h[0] = b'X';
        assert_eq!(parse_head(&h, 16 + 96), None);
    }

    #[test]
    fn additions_dels_and_compaction_on_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("index");
        assert!(IndexView::load(&dir).is_empty(), "no directory: empty view");
        let mut add = Additions::new(&dir, 0o600);
        for i in 0..1000 {
            add.push(d(i)).unwrap();
        }
        add.spill().unwrap(); // one run through an anonymous file
        for i in 500..1500 {
            add.push(d(i)).unwrap();
        }
        add.commit().unwrap();
        assert_eq!(file_count(&dir), 2);
        remove(&dir, &[d(7), d(1200)]).unwrap();
        let v = IndexView::load(&dir);
        assert!(v.contains(&d(0)) && v.contains(&d(1499)) && v.contains(&d(999)));
        assert!(!v.contains(&d(7)) && !v.contains(&d(1200)) && !v.contains(&d(1500)));
        let c = compact(&dir).unwrap();
        assert_eq!(
            c,
            Compacted {
                files_merged: 3,
                digests: 1498
            }
        );
        assert_eq!(file_count(&dir), 1);
        let v = IndexView::load(&dir);
        assert_eq!(v.len(), 1498);
        assert!(v.contains(&d(8)) && !v.contains(&d(7)));
        // A damaged segment is skipped (speed only); a damaged del refuses
        // the whole index.
        fs::write(dir.join("seg-0-bad.idx"), b"DDIDX001garbage").unwrap();
        assert_eq!(IndexView::load(&dir).len(), 1498);
        fs::write(dir.join("del-0-bad.idx"), b"DDIDX001garbage").unwrap();
        assert!(IndexView::load(&dir).is_empty());
        assert!(compact(&dir).is_err(), "nothing merged past a damaged del");
    }
}
