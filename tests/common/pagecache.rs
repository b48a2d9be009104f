//! The page cache as tests see it: which pages of a file are cached, and
//! dropping them. For the property that dumps and cold imports leave a
//! machine's page cache as it was.

use std::fs;
use std::path::Path;

/// Which pages of `path` are in the page cache (mincore of a mapping that is
/// never touched, so asking reads nothing in).
pub fn resident_pages(path: &Path) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a fresh read-only shared mapping of a file we hold open; it is only
    // passed to mincore (never dereferenced) and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap {}", path.display());
        assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0, "mincore");
        libc::munmap(p, len);
    }
    vec.iter().map(|&b| b & 1 == 1).collect()
}

/// Writes back and drops `path`'s cached pages.
pub fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: advice on a descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise DONTNEED");
}

/// How many times anyone wrote to /proc/sys/vm/drop_caches (another job's
/// cold-cache benchmark empties our pages too).
pub fn cache_drops() -> u64 {
    let vmstat = fs::read_to_string("/proc/vmstat").unwrap();
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("drop_pagecache "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Caches the first `len` bytes of `path` by reading them buffered without
/// read-ahead (which would go on caching pages in the background).
pub fn cache_prefix(path: &Path, len: usize) {
    let mut f = fs::File::open(path).unwrap();
    // SAFETY: advice on a descriptor we own.
    let r = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_RANDOM,
        )
    };
    assert_eq!(r, 0, "fadvise RANDOM");
    std::io::Read::read_exact(&mut f, &mut vec![0u8; len]).unwrap();
}
