//! Background warming of an open image's block-file metadata (local stores).
//!
//! A cold random read through the mount costs several dependent disk reads
//! where the raw image file costs one: the block file's directory entries
//! and inode, then its data. While an image is open, a few threads `stat`
//! its block files in image order, many at once, so the kernel caches the
//! directory entries and inodes and a later cold read waits for the data
//! alone (measured in docs/DESIGN.md §4). Only metadata is touched, never
//! block data, so the disk traffic is small next to the image (an inode
//! table block serves 16 files). It runs only while the image's reads are
//! random: a sequential reader's read-ahead opens the files anyway, and
//! warming beside it cost a cold `dd` 5-18% (CPU and disk on 2 cores). The
//! threads run in the idle I/O class. Warming stops when the image's last
//! handle closes, when the mount ends, and after `MAX_BLOCKS` blocks.

use super::lock;
use crate::digest::Digest;
use crate::image::ImageReader;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

/// Blocks claimed by one thread at a time.
const CHUNK: usize = 64;
/// How often paused images are looked at again (by one thread).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Per image at most this many blocks are warmed (32 GiB of 128 KiB
/// blocks): the kernel keeps ~1 KiB of dentry and inode per block file,
/// and warming a huge image's every file would push other caches out.
pub(super) const MAX_BLOCKS: usize = 1 << 18;

/// What warming one block does (a `stat` of its file, in the mount).
pub(super) type Touch = Arc<dyn Fn(&Digest) + Send + Sync>;

/// Held by every open handle of an image: when the last one is dropped,
/// the image's warming stops at its next chunk.
pub(super) struct WarmToken;

struct Job {
    reader: Arc<ImageReader>,
    next: AtomicUsize,
    end: usize,
    token: Weak<WarmToken>,
    touch: Touch,
}

impl Job {
    fn live(&self) -> bool {
        self.token.strong_count() > 0
    }
}

struct Shared {
    jobs: Mutex<VecDeque<Arc<Job>>>,
    wake: Condvar,
    stop: AtomicBool,
    /// One thread polls paused images; the others sleep until woken.
    poller: AtomicBool,
}

/// The warming threads of one mount.
pub(super) struct Warmer {
    shared: Arc<Shared>,
}

impl Warmer {
    pub(super) fn new(threads: usize) -> Warmer {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            poller: AtomicBool::new(false),
        });
        for i in 0..threads {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("warm-{i}"))
                .spawn(move || worker(&s))
                .expect("spawning a warming thread");
        }
        Warmer { shared }
    }

    /// Starts warming `reader`'s blocks; it goes on while `token` lives.
    pub(super) fn start(&self, reader: Arc<ImageReader>, token: &Arc<WarmToken>, touch: Touch) {
        let end = reader.manifest().blocks.len().min(MAX_BLOCKS);
        let job = Arc::new(Job {
            reader,
            next: AtomicUsize::new(0),
            end,
            token: Arc::downgrade(token),
            touch,
        });
        lock(&self.shared.jobs).push_back(job);
        self.shared.wake.notify_all();
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        lock(&self.shared.jobs).clear();
        self.shared.wake.notify_all();
    }
}

/// Lowest I/O priority for this thread: a reader's requests go first
/// (honoured by the bfq and mq-deadline schedulers; advice, so errors are ignored).
fn idle_io_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: ioprio_set on the calling thread (who = 0) changes only its I/O priority.
    unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        )
    };
}

fn worker(s: &Shared) {
    idle_io_priority();
    loop {
        // The oldest image read randomly with blocks left, and a chunk of it.
        let (job, from) = {
            let mut jobs = lock(&s.jobs);
            let mut polling = false;
            loop {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                jobs.retain(|j| j.live() && j.next.load(Ordering::Relaxed) < j.end);
                let claim = jobs
                    .iter()
                    .find(|j| j.reader.reading_randomly())
                    .and_then(|j| {
                        let from = j.next.fetch_add(CHUNK, Ordering::Relaxed);
                        (from < j.end).then(|| (j.clone(), from))
                    });
                if let Some(c) = claim {
                    if polling {
                        // Work again: the threads waiting without a timeout join in.
                        s.poller.store(false, Ordering::Relaxed);
                        s.wake.notify_all();
                    }
                    break c;
                }
                let poll = !jobs.is_empty() && (polling || !s.poller.swap(true, Ordering::Relaxed));
                if polling && !poll {
                    s.poller.store(false, Ordering::Relaxed);
                }
                polling = poll;
                jobs = if poll {
                    // Images read sequentially (or not yet): one thread looks again soon.
                    s.wake
                        .wait_timeout(jobs, PAUSE)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                } else {
                    s.wake.wait(jobs).unwrap_or_else(|p| p.into_inner())
                };
            }
        };
        let m = job.reader.manifest();
        for i in from..(from + CHUNK).min(job.end) {
            if !job.live() || s.stop.load(Ordering::Relaxed) {
                break;
            }
            if !job.reader.is_zero(i) {
                (job.touch)(&m.blocks[i]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{BlockCache, Prefetcher};
    use crate::store::{LocalStore, Store};
    use crate::testutil::{image, manifest};
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    fn reader(data: &[u8]) -> (tempfile::TempDir, Arc<ImageReader>) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Some(crate::testutil::BS)).unwrap();
        let m = manifest(&store, "2026-01-01T00:00:00+00:00", data);
        let store: Arc<dyn Store> = Arc::new(store);
        let r = ImageReader::new(Arc::new(m), store, BlockCache::new(1 << 20))
            .with_prefetch(Prefetcher::new(1), 4);
        (dir, Arc::new(r))
    }

    /// `blocks` blocks of data, none of them zero.
    fn distinct_blocks(blocks: usize) -> Vec<u8> {
        (0..blocks * crate::testutil::BS)
            .map(|i| (i / 4096 % 251) as u8 + 1)
            .collect()
    }

    /// A touch that counts and takes 2 ms, so warming an image takes a while.
    fn slow_counting_touch() -> (Arc<AtomicUsize>, Touch) {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        let touch: Touch = Arc::new(move |_: &Digest| {
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
        });
        (n, touch)
    }

    /// A read that does not continue the one before (as fio's are).
    fn random_read(r: &ImageReader, block: u64) {
        let mut buf = [0u8; 512];
        r.read_at(block * crate::testutil::BS as u64 + 100, &mut buf)
            .unwrap();
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn touches_every_data_block_of_an_open_image_once() {
        let (_d, r) = reader(&image());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let touch: Touch = Arc::new(move |d: &Digest| lock(&s).push(*d));
        let w = Warmer::new(3);
        let token = Arc::new(WarmToken);
        w.start(r.clone(), &token, touch);
        std::thread::sleep(Duration::from_millis(200));
        assert!(lock(&seen).is_empty(), "nothing before the first read");
        random_read(&r, 4);
        let m = r.manifest();
        let data: Vec<usize> = (0..m.blocks.len()).filter(|&i| !r.is_zero(i)).collect();
        assert!(!data.is_empty() && data.len() < m.blocks.len());
        wait_until("all data blocks touched", || {
            lock(&seen).len() >= data.len()
        });
        std::thread::sleep(Duration::from_millis(50));
        let got = lock(&seen).clone();
        assert_eq!(
            got.len(),
            data.len(),
            "each data block once, zero blocks never"
        );
        let want: HashSet<Digest> = data.iter().map(|&i| m.blocks[i]).collect();
        assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
    }

    #[test]
    fn a_local_stores_block_location_is_its_file() {
        // The mount's touch stats `block_location`: it must name the file.
        let (dir, r) = reader(&image());
        let m = r.manifest();
        let i = (0..m.blocks.len()).find(|&i| !r.is_zero(i)).unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let meta = std::fs::symlink_metadata(store.block_location(&m.blocks[i])).unwrap();
        assert!(meta.is_file() && meta.len() > 0);
    }

    #[test]
    fn pauses_while_the_image_is_read_sequentially() {
        let (_d, r) = reader(&distinct_blocks(300));
        let (n, touch) = slow_counting_touch();
        let w = Warmer::new(2);
        let token = Arc::new(WarmToken);
        let bs = crate::testutil::BS as u64;
        let mut buf = vec![0u8; 4096];
        r.read_at(0, &mut buf).unwrap();
        r.read_at(4096, &mut buf).unwrap();
        w.start(r.clone(), &token, touch);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            n.load(Ordering::SeqCst),
            0,
            "a sequential reader is not warmed for"
        );
        random_read(&r, 200);
        wait_until("warming after a random read", || {
            n.load(Ordering::SeqCst) > 0
        });
        // Sequential again: the threads stop at their chunks' ends.
        r.read_at(200 * bs + 4096, &mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(2 * CHUNK as u64 * 2 + 200));
        let paused = n.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(n.load(Ordering::SeqCst), paused, "paused while sequential");
        assert!(paused < 300, "{paused}");
    }

    #[test]
    fn stops_when_the_last_handle_closes() {
        // Enough blocks that warming them at 2 ms each takes seconds.
        let (_d, r) = reader(&distinct_blocks(600));
        let (n, touch) = slow_counting_touch();
        let w = Warmer::new(2);
        let token = Arc::new(WarmToken);
        random_read(&r, 300);
        w.start(r.clone(), &token, touch.clone());
        wait_until("warming started", || n.load(Ordering::SeqCst) > 0);
        drop(token);
        // Each thread finishes at most the block it is on.
        std::thread::sleep(Duration::from_millis(100));
        let after = n.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(n.load(Ordering::SeqCst), after, "no block after the close");
        assert!(after < 100, "stopped early: {after} of 600 blocks");
        // A new open warms again; a dropped Warmer stops its threads.
        let token = Arc::new(WarmToken);
        w.start(r, &token, touch);
        wait_until("warming again", || n.load(Ordering::SeqCst) > after);
        drop(w);
        std::thread::sleep(Duration::from_millis(100));
        let end = n.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            n.load(Ordering::SeqCst),
            end,
            "no block after the mount ends"
        );
    }
}
