//! The agent's pieces of work: a batch read from the source, the tasks workers
//! run on it (hash one block, compress one block), the queue that hands tasks
//! out with compression first, so needed blocks leave (and window slots free
//! up) before more read-ahead is hashed, and the reader that makes batches.

use crate::blockfmt;
use crate::digest::{is_zero, Digest};
use crate::proto::{Compression, Entry};
use crate::source::AlignedBuf;
use crate::source::Source;
use flate2::{Compress, FlushCompress, Status};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// One batch of consecutive blocks, read once. Its buffer goes back to the
/// reader when the last reference drops, which is what bounds memory to
/// `window` batches.
pub struct ReadBatch {
    pub seq: u64,
    data: AlignedBuf,
    block_size: usize,
    /// Blocks that lie wholly in a hole of the source: zero, never read or looked at.
    in_hole: Vec<bool>,
    entries: Vec<OnceLock<Entry>>,
    unhashed: AtomicUsize,
    recycle: Sender<AlignedBuf>,
}

impl ReadBatch {
    /// `in_hole` flags the blocks known to be zero without looking (empty: none).
    pub fn new(
        seq: u64,
        data: AlignedBuf,
        block_size: usize,
        in_hole: Vec<bool>,
        recycle: Sender<AlignedBuf>,
    ) -> ReadBatch {
        let n = data.len().div_ceil(block_size);
        ReadBatch {
            seq,
            data,
            block_size,
            in_hole,
            entries: (0..n).map(|_| OnceLock::new()).collect(),
            unhashed: AtomicUsize::new(n),
            recycle,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn block(&self, i: usize) -> &[u8] {
        let start = i * self.block_size;
        &self.data[start..(start + self.block_size).min(self.data.len())]
    }

    /// The announced entry of block `i`; None until it is hashed.
    pub fn entry(&self, i: usize) -> Option<Entry> {
        self.entries[i].get().copied()
    }

    /// All entries, once every block is hashed.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .iter()
            .map(|e| {
                *e.get()
                    .expect("a batch is announced only when fully hashed")
            })
            .collect()
    }

    /// Hashes block `i`; true if it was the batch's last unhashed block.
    pub fn hash(&self, i: usize) -> bool {
        let block = self.block(i);
        // Only full-size zero blocks are flagged: a short last block is hashed
        // at its real length like any other (and is never flagged in_hole).
        let entry = if self.in_hole.get(i) == Some(&true)
            || (block.len() == self.block_size && is_zero(block))
        {
            Entry::Zero
        } else {
            Entry::Hash(Digest::of(block))
        };
        // Each block is hashed by exactly one task, so the cell is empty.
        let _ = self.entries[i].set(entry);
        self.unhashed.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

impl Drop for ReadBatch {
    fn drop(&mut self) {
        // The reader may have stopped; then the buffer is simply freed.
        let _ = self.recycle.send(std::mem::take(&mut self.data));
    }
}

pub enum Task {
    Hash(Arc<ReadBatch>, usize),
    Compress(Arc<ReadBatch>, usize),
}

#[derive(Default)]
struct Tasks {
    urgent: VecDeque<Task>,
    background: VecDeque<Task>,
    closed: bool,
}

/// A two-level FIFO shared by the workers.
#[derive(Default)]
pub struct Queue {
    tasks: Mutex<Tasks>,
    ready: Condvar,
}

impl Queue {
    pub fn push(&self, tasks: impl IntoIterator<Item = Task>, urgent: bool) {
        let mut q = self.tasks.lock().expect("queue lock");
        if q.closed {
            return;
        }
        let list = if urgent {
            &mut q.urgent
        } else {
            &mut q.background
        };
        list.extend(tasks);
        drop(q);
        self.ready.notify_all();
    }

    /// The next task, urgent ones first; None once closed.
    pub fn pop(&self) -> Option<Task> {
        let mut q = self.tasks.lock().expect("queue lock");
        loop {
            if q.closed {
                return None;
            }
            if let Some(task) = q.urgent.pop_front().or_else(|| q.background.pop_front()) {
                return Some(task);
            }
            q = self.ready.wait(q).expect("queue lock");
        }
    }

    /// Drops every queued task and makes `pop` return None.
    pub fn close(&self) {
        let mut q = self.tasks.lock().expect("queue lock");
        q.closed = true;
        let dropped = (
            std::mem::take(&mut q.urgent),
            std::mem::take(&mut q.background),
        );
        drop(q);
        drop(dropped); // outside the lock: dropping batches recycles buffers
        self.ready.notify_all();
    }
}

/// Per-worker compression state, reused across blocks.
pub struct Compressor {
    mode: Compression,
    lz4: blockfmt::Encoder,
    zlib: Compress,
    /// Level 0 (stored blocks), for what level 1 would make larger.
    zlib_stored: Compress,
}

impl Compressor {
    pub fn new(mode: Compression) -> Compressor {
        Compressor {
            mode,
            lz4: blockfmt::Encoder::default(),
            zlib: Compress::new(flate2::Compression::fast(), true),
            zlib_stored: Compress::new(flate2::Compression::none(), true),
        }
    }

    /// Compresses one block for the wire into `out` (cleared first).
    pub fn compress(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self.mode {
            Compression::Lz4 => self.lz4.encode(raw, out),
            Compression::None => out.extend_from_slice(raw),
            Compression::Zlib => {
                deflate(&mut self.zlib, raw, out);
                // zlib-rs level 1 codes incompressible data with fixed Huffman
                // codes (~6% larger): stored blocks are smaller and keep every
                // frame within the protocol's cap.
                if out.len() > raw.len() {
                    deflate(&mut self.zlib_stored, raw, out);
                }
            }
        }
    }
}

fn deflate(z: &mut Compress, raw: &[u8], out: &mut Vec<u8>) {
    z.reset();
    out.clear();
    out.reserve(raw.len() + raw.len() / 16 + 64);
    loop {
        let consumed = z.total_in() as usize;
        // In-memory deflate of a complete input cannot fail.
        let status = z
            .compress_vec(&raw[consumed..], out, FlushCompress::Finish)
            .expect("deflate into memory");
        if status == Status::StreamEnd {
            return;
        }
        out.reserve(64 << 10);
    }
}

/// Reads the source once, in batch-sized pieces, several batches at a time.
pub struct Reader<'a> {
    pub source: &'a Source,
    pub size: u64,
    pub batch_bytes: u64,
    pub block_size: usize,
    pub queue: &'a Queue,
    pub stop: &'a AtomicBool,
}

/// Batches read at once, each as 1 MiB direct reads one after another. One
/// reader splitting each batch into parallel pieces left the disk idle
/// between batches and the hashing cores waiting (2 GiB image, cold, two
/// cores: 1.43-1.55 s with one reader, 1.01-1.16 s with three; DESIGN §3.4).
pub const READERS: usize = 3;

/// The free buffers and the next batch to read, handed out together so that
/// buffers go to batches in file order: the earliest unread batch always
/// gets one, and the writer, which announces in order, never waits on a
/// batch that cannot be read.
struct Claims {
    free: Receiver<AlignedBuf>,
    next: u64,
}

impl Reader<'_> {
    /// Reads batch after batch into `window` recycled buffers and queues their
    /// blocks for hashing; waits for a buffer when the window is full. Stops
    /// early, without error, when `stop` is set. On a read error the other
    /// readers stop too, and the error of the earliest failed batch is
    /// returned (the one a single sequential reader would have met).
    pub fn run(self, window: usize) -> Result<(), String> {
        let (recycle, free) = mpsc::channel();
        for _ in 0..window {
            let _ = recycle.send(AlignedBuf::default());
        }
        let claims = Mutex::new(Claims { free, next: 0 });
        let failed = AtomicBool::new(false);
        let errors: Vec<(u64, String)> = std::thread::scope(|s| {
            let readers: Vec<_> = (0..READERS.clamp(1, window))
                .map(|_| s.spawn(|| self.read_batches(&claims, &recycle, &failed)))
                .collect();
            readers
                .into_iter()
                .filter_map(|r| r.join().expect("a reader does not panic").err())
                .collect()
        });
        match errors.into_iter().min_by_key(|(seq, _)| *seq) {
            Some((_, msg)) => Err(msg),
            None => Ok(()),
        }
    }

    fn read_batches(
        &self,
        claims: &Mutex<Claims>,
        recycle: &Sender<AlignedBuf>,
        failed: &AtomicBool,
    ) -> Result<(), (u64, String)> {
        loop {
            let (mut buf, seq, offset) = {
                let mut c = claims.lock().expect("reader lock");
                let seq = c.next;
                let offset = seq.saturating_mul(self.batch_bytes);
                if offset >= self.size {
                    return Ok(());
                }
                let Some(buf) = self.next_buffer(&c.free, failed) else {
                    return Ok(());
                };
                c.next += 1;
                (buf, seq, offset)
            };
            let len = (self.size - offset).min(self.batch_bytes) as usize;
            buf.set_len(len);
            let in_hole = self
                .source
                .fill_blocks(&mut buf, offset, self.block_size)
                .map_err(|msg| {
                    failed.store(true, Ordering::Relaxed);
                    (seq, msg)
                })?;
            let batch = Arc::new(ReadBatch::new(
                seq,
                buf,
                self.block_size,
                in_hole,
                recycle.clone(),
            ));
            let tasks = (0..batch.len()).map(|i| Task::Hash(batch.clone(), i));
            self.queue.push(tasks, false);
        }
    }

    fn next_buffer(&self, free: &Receiver<AlignedBuf>, failed: &AtomicBool) -> Option<AlignedBuf> {
        while !self.stop.load(Ordering::Relaxed) && !failed.load(Ordering::Relaxed) {
            match free.recv_timeout(Duration::from_millis(100)) {
                Ok(buf) => return Some(buf),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::max_frame_len;
    use crate::testdata::noise;
    use flate2::read::ZlibDecoder;
    use std::io::Read;

    #[test]
    fn every_mode_round_trips_and_fits_a_frame() {
        // Overhead grows linearly with the block size (LZ4's is checked up to
        // the largest block in proto's tests), so small sizes keep this fast.
        for bs in [4096, 131072] {
            for raw in [noise(bs, 1), vec![7u8; bs], noise(bs / 2 + 1, 1)] {
                for mode in [Compression::Lz4, Compression::Zlib, Compression::None] {
                    let mut out = Vec::new();
                    Compressor::new(mode).compress(&raw, &mut out);
                    assert!(
                        out.len() <= raw.len() + raw.len() / 1024 + 32,
                        "{mode} {bs}"
                    );
                    assert!(1 + 32 + out.len() <= max_frame_len(bs), "{mode} {bs}");
                    let mut back = Vec::new();
                    match mode {
                        Compression::Lz4 => blockfmt::decode(&out, bs, &mut back).unwrap(),
                        Compression::Zlib => {
                            ZlibDecoder::new(&out[..]).read_to_end(&mut back).unwrap();
                        }
                        Compression::None => back = out.clone(),
                    }
                    assert!(back == raw, "{mode} {bs}");
                }
            }
        }
    }

    #[test]
    fn batches_flag_only_full_zero_blocks_and_recycle_their_buffer() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut data = vec![0u8; 4096 * 2 + 100];
        data[4096] = 1;
        let b = ReadBatch::new(3, AlignedBuf::from(&data[..]), 4096, Vec::new(), tx);
        assert_eq!(b.len(), 3);
        assert!(!b.hash(0) && !b.hash(2) && b.hash(1));
        let e = b.entries();
        assert_eq!(e[0], Entry::Zero);
        assert_eq!(e[1], Entry::Hash(Digest::of(b.block(1))));
        assert_eq!(e[2], Entry::Hash(Digest::of(&[0u8; 100])));
        drop(b);
        assert_eq!(rx.recv().unwrap().len(), 4096 * 2 + 100);
    }

    #[test]
    fn blocks_in_holes_are_zero_without_being_looked_at() {
        let (tx, _rx) = std::sync::mpsc::channel();
        // Garbage where the source had holes: the flags, not the bytes, decide.
        let data = noise(4096 * 3, 5);
        let b = ReadBatch::new(
            0,
            AlignedBuf::from(&data[..]),
            4096,
            vec![false, true, false],
            tx,
        );
        for i in 0..3 {
            b.hash(i);
        }
        assert_eq!(
            b.entries(),
            vec![
                Entry::Hash(Digest::of(b.block(0))),
                Entry::Zero,
                Entry::Hash(Digest::of(b.block(2)))
            ]
        );
    }

    #[test]
    fn queue_serves_urgent_tasks_first_and_closes() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let b = Arc::new(ReadBatch::new(
            0,
            AlignedBuf::from(&[1u8; 10][..]),
            4096,
            Vec::new(),
            tx,
        ));
        let q = Queue::default();
        q.push([Task::Hash(b.clone(), 0)], false);
        q.push([Task::Compress(b.clone(), 0)], true);
        assert!(matches!(q.pop(), Some(Task::Compress(..))));
        assert!(matches!(q.pop(), Some(Task::Hash(..))));
        q.push([Task::Hash(b.clone(), 0)], false);
        q.close();
        assert!(q.pop().is_none());
        assert_eq!(Arc::strong_count(&b), 1);
    }

    /// A temp file removed on drop (no tempfile crate in the agent).
    struct Temp(std::path::PathBuf);
    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn temp(tag: &str, data: &[u8]) -> Temp {
        let p = std::env::temp_dir().join(format!("dd-pipeline-{tag}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        Temp(p)
    }

    /// Each queued batch's sequence number and bytes, in order.
    type Batches = Vec<(u64, Vec<u8>)>;

    /// Runs a Reader over `path` claiming `size` bytes; returns its result and
    /// the batches queued, by sequence number. Hash tasks are consumed as
    /// they come, so the window's buffers come back as a real run's would;
    /// on success a marker queued after the last task ends the collection,
    /// on failure closing the queue does (what was still queued is dropped).
    fn read_all(path: &std::path::Path, size: u64, batch: u64) -> (Result<(), String>, Batches) {
        let source = Source::new(std::fs::File::open(path).unwrap(), path);
        let queue = Queue::default();
        let stop = AtomicBool::new(false);
        let reader = Reader {
            source: &source,
            size,
            batch_bytes: batch,
            block_size: 4096,
            queue: &queue,
            stop: &stop,
        };
        std::thread::scope(|s| {
            let collect = s.spawn(|| {
                let mut seen = std::collections::BTreeMap::new();
                while let Some(Task::Hash(b, i)) = queue.pop() {
                    b.hash(i);
                    seen.entry(b.seq).or_insert_with(|| b.data.to_vec());
                }
                seen.into_iter().collect::<Vec<_>>()
            });
            let result = reader.run(2);
            if result.is_ok() {
                let (tx, _rx) = mpsc::channel();
                let end = ReadBatch::new(u64::MAX, AlignedBuf::default(), 4096, Vec::new(), tx);
                queue.push([Task::Compress(Arc::new(end), 0)], false);
            } else {
                queue.close();
            }
            (result, collect.join().unwrap())
        })
    }

    #[test]
    fn several_readers_queue_every_batch_once_with_its_own_bytes() {
        let batch = 4 * 4096u64;
        let data = noise(batch as usize * 9 + 1000, 9);
        let f = temp("all", &data);
        let (result, batches) = read_all(&f.0, data.len() as u64, batch);
        result.unwrap();
        assert_eq!(batches.len(), 10);
        for (k, (seq, bytes)) in batches.iter().enumerate() {
            assert_eq!(*seq, k as u64);
            let at = k * batch as usize;
            assert!(
                bytes[..] == data[at..(at + batch as usize).min(data.len())],
                "batch {k}"
            );
        }
    }

    #[test]
    fn a_short_source_fails_at_the_first_missing_byte_whichever_reader_sees_it() {
        // The file holds 3.5 batches of the 8 the reader is told to read:
        // batches 3 to 7 all fail, and the report is batch 3's.
        let batch = 4 * 4096u64;
        let data = noise(batch as usize * 3 + batch as usize / 2, 3);
        let f = temp("short", &data);
        for _ in 0..20 {
            let (result, batches) = read_all(&f.0, batch * 8, batch);
            let err = result.unwrap_err();
            assert!(
                err.contains(&format!("ended at byte {}", data.len())),
                "{err}"
            );
            assert!(batches.iter().all(|(seq, _)| *seq < 3));
        }
    }
}
