//! Reading a source image once, fast: holes (SEEK_DATA/SEEK_HOLE) are
//! zero-filled instead of read, and data is read with O_DIRECT into aligned
//! buffers where the filesystem allows it. A cold buffered read of the 2 GiB
//! benchmark image cost 2.4 to 4.3 s of kernel CPU on this kind of VM (page
//! cache allocation and the copy out of it); O_DIRECT cost 0.15 s and was
//! faster. Direct reads see dirty cached data too: the kernel writes the
//! range back before it reads. Used by the agent and by `import`.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of O_DIRECT reads (offset, length and memory): a page, which
/// covers 512- and 4096-byte logical sectors.
pub const ALIGN: usize = 4096;

/// Long reads are made as consecutive reads of this size (a multiple of
/// `ALIGN`): this disk serves a 1 MiB direct read in about a tenth of the
/// time of a 10 MiB one, and callers keep several ranges in flight
/// themselves (the agent's and import's readers, DESIGN §3.4).
const PIECE: usize = 1 << 20;

/// A byte buffer whose start is `ALIGN`-aligned. Resizing keeps the
/// allocation when it is big enough; contents are then unspecified.
#[derive(Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn with_len(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::default();
        b.set_len(len);
        b
    }

    /// Makes the buffer `len` bytes long (contents unspecified).
    pub fn set_len(&mut self, len: usize) {
        if self.raw.len() - self.start < len || self.raw.is_empty() {
            self.raw = vec![0u8; len + ALIGN];
            self.start = self.raw.as_ptr().align_offset(ALIGN);
        }
        self.len = len;
    }
}

impl From<&[u8]> for AlignedBuf {
    fn from(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::with_len(data.len());
        b.copy_from_slice(data);
        b
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// An open source file or block device.
pub struct Source {
    file: File,
    /// The same file opened with O_DIRECT, if the filesystem supports it.
    direct: Option<File>,
    direct_ok: AtomicBool,
    /// Read what the page cache holds from there first (`cached_first`).
    cached_first: bool,
    /// The file mapped only to ask `mincore` which pages are cached.
    map: Option<Map>,
    /// False once `preadv2(RWF_NOWAIT)` proved unsupported.
    nowait_ok: AtomicBool,
    name: String,
}

impl Source {
    pub fn new(file: File, path: &Path) -> Source {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Source {
            direct_ok: AtomicBool::new(direct.is_some()),
            file,
            direct,
            cached_first: false,
            map: None,
            nowait_ok: AtomicBool::new(true),
            name: path.display().to_string(),
        }
    }

    /// Serves pages already in the page cache from memory, the rest still
    /// with O_DIRECT. `mincore` over a mapping of the file (never touched)
    /// tells which pages are cached; cached runs are copied with
    /// `preadv2(RWF_NOWAIT)`, which never waits for the disk, and the rest
    /// is read directly. Asking `RWF_NOWAIT` about a page that is *not*
    /// cached is avoided: on this kernel the refusal still starts read-ahead,
    /// so a cold import used to pull the whole image through the page cache
    /// (DESIGN §3.4). Without a mapping (a file that cannot be mapped)
    /// `RWF_NOWAIT` alone decides, as before. For `import` of an image just
    /// written or read; the agent does not use it, so a dump changes nothing
    /// in a server's page cache.
    pub fn cached_first(mut self) -> Source {
        self.cached_first = true;
        self.map = Map::new(&self.file);
        self
    }

    /// One buffered read that never waits for the disk: the bytes at `pos`
    /// that are cached (up to the first page that is not), or None.
    fn read_cached(&self, dst: &mut [u8], pos: u64) -> Option<usize> {
        if !self.nowait_ok.load(Ordering::Relaxed) {
            return None;
        }
        let iov = libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: dst.len(),
        };
        // SAFETY: one iovec over `dst`, which outlives the call.
        let n = unsafe {
            libc::preadv2(
                self.file.as_raw_fd(),
                &iov,
                1,
                pos as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n > 0 {
            return Some(n as usize);
        }
        let e = io::Error::last_os_error().raw_os_error();
        if n < 0
            && matches!(
                e,
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)
            )
        {
            self.nowait_ok.store(false, Ordering::Relaxed);
        }
        None // EAGAIN (not cached), end of file, or an error the real read reports
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The next stretch of data in `pos..end`: `(data, hole)` with
    /// `pos <= data <= hole <= end`; `data == end` if only a hole is left.
    /// Where SEEK_DATA is unsupported (or on a device) all of it is data.
    pub fn data_range(&self, pos: u64, end: u64) -> (u64, u64) {
        let fd = self.file.as_raw_fd();
        let seek = |from: u64, whence| {
            // SAFETY: lseek on a descriptor we own has no memory effects; all
            // reads are positioned, so the file offset does not matter.
            let r = unsafe { libc::lseek(fd, from as libc::off_t, whence) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as u64)
            }
        };
        match seek(pos, libc::SEEK_DATA) {
            Ok(data) if data >= end => (end, end),
            Ok(data) => {
                let hole = seek(data, libc::SEEK_HOLE).map_or(end, |h| h.clamp(data + 1, end));
                (data, hole)
            }
            // ENXIO: no data after `pos`. A trailing hole if the file still
            // reaches `end`; if it shrank, reading reports the short file.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => match self.file.metadata() {
                Ok(m) if m.len() >= end => (end, end),
                _ => (pos, end),
            },
            Err(_) => (pos, end),
        }
    }

    /// Fills `buf` with the source from `offset`, zero-filling holes.
    /// Errors name the source and the byte offset.
    pub fn fill(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        self.fill_blocks(buf, offset, usize::MAX).map(drop)
    }

    /// Like `fill`, for a buffer of `block`-byte blocks: a full block that
    /// lies wholly in a hole is neither read nor written (its bytes in `buf`
    /// are left as they were) and is flagged in the result, one flag per
    /// block, so that a sparse image costs no memset and no zero check.
    pub fn fill_blocks(
        &self,
        buf: &mut [u8],
        offset: u64,
        block: usize,
    ) -> Result<Vec<bool>, String> {
        let mut in_hole = vec![false; buf.len().div_ceil(block)];
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (data, hole) = self.data_range(pos, end);
            let (from, to) = ((pos - offset) as usize, (data - offset) as usize);
            // The whole blocks inside the hole [from, to); its ragged edges are zero-filled.
            let first = from.div_ceil(block);
            let last = to / block; // exclusive; a short last block is never whole
            if first < last && last * block <= buf.len() {
                buf[from..first * block].fill(0);
                in_hole[first..last].fill(true);
                buf[last * block..to].fill(0);
            } else {
                buf[from..to].fill(0);
            }
            self.read_range(
                &mut buf[(data - offset) as usize..(hole - offset) as usize],
                data,
            )?;
            pos = hole;
        }
        Ok(in_hole)
    }

    /// Reads exactly `dst.len()` bytes at `at`, `PIECE` bytes at a time.
    fn read_range(&self, dst: &mut [u8], at: u64) -> Result<(), String> {
        dst.chunks_mut(PIECE)
            .enumerate()
            .try_for_each(|(i, piece)| self.read_exact(piece, at + (i * PIECE) as u64))
    }

    fn read_exact(&self, dst: &mut [u8], at: u64) -> Result<(), String> {
        let mut done = 0;
        while done < dst.len() {
            let pos = at + done as u64;
            let rest = &mut dst[done..];
            match self.read_some(rest, pos) {
                Ok(0) => {
                    return Err(format!(
                        "{} ended at byte {pos}, before its size when the read started",
                        self.name
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read {} at byte {pos}: {e}", self.name)),
            }
        }
        Ok(())
    }

    /// One read: direct for the aligned part when possible, else buffered.
    /// With `cached_first`, a run of cached pages is copied from the page
    /// cache and a run of uncached ones read directly, one run per call.
    fn read_some(&self, mut dst: &mut [u8], pos: u64) -> io::Result<usize> {
        if self.cached_first {
            match self.map.as_ref().and_then(|m| m.run(pos, dst.len())) {
                Some((true, run)) => {
                    if let Some(n) = self.read_cached(&mut dst[..run], pos) {
                        return Ok(n);
                    }
                }
                Some((false, run)) => dst = &mut dst[..run],
                None => {
                    if let Some(n) = self.read_cached(dst, pos) {
                        return Ok(n);
                    }
                }
            }
        }
        let aligned = dst.len() / ALIGN * ALIGN;
        if let Some(direct) = &self.direct {
            if aligned > 0
                && pos.is_multiple_of(ALIGN as u64)
                && dst.as_ptr().align_offset(ALIGN) == 0
                && self.direct_ok.load(Ordering::Relaxed)
            {
                match direct.read_at(&mut dst[..aligned], pos) {
                    // Some filesystems refuse O_DIRECT only at read time.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.direct_ok.store(false, Ordering::Relaxed);
                    }
                    r => return r,
                }
            }
        }
        self.file.read_at(dst, pos)
    }
}

/// A read-only shared mapping of a whole file, never read through: only
/// `mincore` looks at it, to learn which pages the page cache holds.
struct Map {
    ptr: *mut libc::c_void,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is never dereferenced, only passed to mincore(2),
// which is safe from any thread; munmap happens once, in drop.
unsafe impl Send for Map {}
unsafe impl Sync for Map {}

impl Map {
    fn new(file: &File) -> Option<Map> {
        let fd = file.as_raw_fd();
        // SAFETY: lseek on a descriptor we own; it only moves our offset,
        // which nothing here uses (reads are positional).
        let len = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        // SAFETY: a new read-only mapping chosen by the kernel; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(ALIGN);
        (ptr != libc::MAP_FAILED).then_some(Map { ptr, len, page })
    }

    /// Whether the page holding `pos` is cached, and how many bytes from
    /// `pos` (at most `len`) share that state. None if `pos` is outside the
    /// mapping (the file grew) or mincore fails: then the caller guesses.
    fn run(&self, pos: u64, len: usize) -> Option<(bool, usize)> {
        let pos = usize::try_from(pos).ok()?;
        if len == 0 || pos >= self.len {
            return None;
        }
        let page = self.page;
        let first = pos / page;
        let last = (pos + len - 1).min(self.len - 1) / page;
        let mut pages = vec![0u8; last - first + 1];
        // SAFETY: the range lies inside our mapping, starts on a page
        // boundary as mincore requires, and `pages` has a byte per page.
        let rc = unsafe {
            libc::mincore(
                self.ptr.cast::<u8>().add(first * page).cast(),
                (last - first + 1) * page,
                pages.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return None;
        }
        let cached = pages[0] & 1 == 1;
        let same = pages
            .iter()
            .take_while(|&&p| (p & 1 == 1) == cached)
            .count();
        Some((cached, ((first + same) * page - pos).min(len)))
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::noise;

    #[test]
    fn aligned_buf_is_aligned_and_reuses_its_allocation() {
        let mut b = AlignedBuf::with_len(10_000);
        assert_eq!(b.as_ptr().align_offset(ALIGN), 0);
        assert_eq!(b.len(), 10_000);
        let p = b.as_ptr();
        b.set_len(5000);
        assert_eq!((b.as_ptr(), b.len()), (p, 5000));
        b.set_len(1 << 20);
        assert_eq!(b.as_ptr().align_offset(ALIGN), 0);
        assert_eq!(b.len(), 1 << 20);
        assert_eq!(AlignedBuf::default().len(), 0);
    }

    #[test]
    fn long_reads_are_made_in_pieces_and_reassembled_in_order() {
        let path = std::env::temp_dir().join(format!("agent-long-{}", std::process::id()));
        let want = noise((5 << 20) + 3 * ALIGN + 17, 1);
        std::fs::write(&path, &want).unwrap();
        let src = Source::new(File::open(&path).unwrap(), &path);
        let mut buf = AlignedBuf::with_len(want.len());
        src.fill(&mut buf, 0).unwrap();
        assert!(buf[..] == want[..]);
        let mut buf = AlignedBuf::with_len(want.len() - 2 * PIECE);
        src.fill(&mut buf, (2 * PIECE) as u64).unwrap();
        assert!(buf[..] == want[2 * PIECE..]);
        // Past the end: the piece that hits it reports where.
        let mut buf = AlignedBuf::with_len(want.len());
        let e = src.fill(&mut buf, ALIGN as u64).unwrap_err();
        assert!(e.contains("ended at byte"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn cached_first_serves_cached_pages_and_reads_the_rest_directly() {
        let path = std::env::temp_dir().join(format!("agent-cached-{}", std::process::id()));
        let want = noise((3 << 20) + 5000, 7);
        std::fs::write(&path, &want).unwrap();
        let src = Source::new(File::open(&path).unwrap(), &path).cached_first();
        let mut buf = AlignedBuf::with_len(8192);
        // Just written: in the page cache, so a read that never waits gets it.
        assert_eq!(src.read_cached(&mut buf, 4096), Some(8192));
        assert!(buf[..] == want[4096..4096 + 8192]);
        // Written back and evicted: not cached, so not read that way.
        let f = src.file();
        f.sync_all().unwrap();
        // SAFETY: an advisory call on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        // (tmpfs keeps every page: nothing to evict there.)
        // SAFETY: statfs is plain old data (all zero is valid); fstatfs
        // fills the struct we own.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        let on_tmpfs =
            unsafe { libc::fstatfs(f.as_raw_fd(), &mut fs) } == 0 && fs.f_type == libc::TMPFS_MAGIC;
        let map = src.map.as_ref().expect("a regular file can be mapped");
        if !on_tmpfs {
            assert_eq!(map.run(4096, 1 << 20), Some((false, 1 << 20)));
        }
        // Every byte comes back right, cached or not...
        let mut all = AlignedBuf::with_len(want.len());
        src.fill(&mut all, 0).unwrap();
        assert!(all[..] == want[..]);
        // ...and a cold read leaves the page cache as it was (but for the
        // ragged tail, read buffered): uncached runs are read directly,
        // never probed with RWF_NOWAIT, which would start read-ahead.
        if !on_tmpfs && src.direct_ok.load(Ordering::Relaxed) {
            assert_eq!(map.run(0, 3 << 20), Some((false, 3 << 20)));
        }
        if src.nowait_ok.load(Ordering::Relaxed) && !on_tmpfs {
            assert_eq!(src.read_cached(&mut buf, 1 << 20), None);
        }
        // A page read into the cache by someone else (read-ahead may add
        // more) is copied from there.
        let mut page = [0u8; 4096];
        f.read_at(&mut page, 8192).unwrap();
        let (cached, run) = map.run(8192, 8192).unwrap();
        assert!(cached && run >= 4096, "{cached} {run}");
        assert_eq!(map.run(8192 + 100, 10), Some((true, 10)));
        let mut copy = AlignedBuf::with_len(4096);
        src.fill(&mut copy, 8192).unwrap();
        assert!(copy[..] == want[8192..8192 + 4096]);
        let mut some = vec![0u8; 70000];
        src.fill(&mut some, 12345).unwrap();
        assert!(some[..] == want[12345..12345 + 70000]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn fill_blocks_flags_whole_blocks_in_holes_and_leaves_them_untouched() {
        let path = std::env::temp_dir().join(format!("agent-holes-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let bs = 64 << 10;
        // Data in block 1 (a few bytes), blocks 5-6 and a ragged tail block 9.
        let mut want = vec![0u8; 9 * bs + 1000];
        for (at, len) in [(bs + 10, 5), (5 * bs, 2 * bs), (9 * bs, 1000)] {
            let data = noise(len, 3);
            want[at..at + len].copy_from_slice(&data);
            f.write_all_at(&data, at as u64).unwrap();
        }
        drop(f);
        let src = Source::new(File::open(&path).unwrap(), &path);
        let holes_seen = src.data_range(2 * bs as u64, want.len() as u64).0 >= (5 * bs) as u64;
        let mut buf = AlignedBuf::with_len(want.len());
        buf.fill(0xAA);
        let in_hole = src.fill_blocks(&mut buf, 0, bs).unwrap();
        assert_eq!(in_hole.len(), 10);
        for (i, &h) in in_hole.iter().enumerate() {
            let r = i * bs..((i + 1) * bs).min(want.len());
            if h {
                // Only whole blocks the data never touches, left as they were.
                assert!(want[r.clone()].iter().all(|&b| b == 0), "block {i}");
                assert!(buf[r].iter().all(|&b| b == 0xAA), "block {i}");
            } else {
                assert!(buf[r.clone()] == want[r], "block {i}");
            }
        }
        // Where the filesystem reports holes, blocks 2-4 and 7-8 are holes; the
        // partly written block 1 and the short tail never are.
        if holes_seen {
            let flagged: Vec<usize> = (0..10).filter(|&i| in_hole[i]).collect();
            assert!(
                flagged == [0, 2, 3, 4, 7, 8] || flagged == [2, 3, 4, 7, 8],
                "{flagged:?}"
            );
        }
        // From an offset inside a hole, and with blocks that do not divide the buffer.
        let mut buf = AlignedBuf::with_len(want.len() - 3 * bs);
        let in_hole = src.fill_blocks(&mut buf, 3 * bs as u64, 2 * bs).unwrap();
        for (i, &h) in in_hole.iter().enumerate() {
            let r = i * 2 * bs..((i + 1) * 2 * bs).min(buf.len());
            let w = &want[3 * bs + r.start..3 * bs + r.end];
            if !h {
                assert!(buf[r] == *w, "block {i}");
            } else {
                assert!(w.iter().all(|&b| b == 0) && r.len() == 2 * bs, "block {i}");
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn fill_zero_fills_holes_and_reads_data_at_any_alignment() {
        let path = std::env::temp_dir().join(format!("agent-source-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let mut want = vec![0u8; (3 << 20) + 777];
        for (at, len) in [(0usize, 4096usize), (1 << 20, 100), ((2 << 20) + 5, 70000)] {
            let data = noise(len, 1);
            want[at..at + len].copy_from_slice(&data);
            f.write_all_at(&data, at as u64).unwrap();
        }
        f.set_len(want.len() as u64).unwrap();
        drop(f);
        let src = Source::new(File::open(&path).unwrap(), &path);
        // Where the filesystem reports holes, the first hole is skipped.
        let (data, hole) = src.data_range(4096, want.len() as u64);
        assert!(data == 4096 || data >= 1 << 20, "{data}");
        assert!(hole > data && hole <= want.len() as u64);
        let mut buf = AlignedBuf::default();
        for (off, len) in [
            (0u64, want.len()),
            (4096, 9000),
            ((1 << 20) + 50, 2 << 20),
            (3, 8192),
            ((3 << 20) - 4096, 4096 + 777),
        ] {
            buf.set_len(len);
            buf.fill(0xAA);
            src.fill(&mut buf, off).unwrap();
            assert!(buf[..] == want[off as usize..off as usize + len], "{off}");
            // Unaligned memory takes the buffered path.
            let mut v = vec![0xAAu8; len + 1];
            src.fill(&mut v[1..], off).unwrap();
            assert!(v[1..] == want[off as usize..off as usize + len], "{off}");
        }
        let mut past = vec![0u8; 10];
        let e = src.fill(&mut past, want.len() as u64 - 5).unwrap_err();
        assert!(e.contains("ended at byte"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
