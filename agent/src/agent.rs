//! The agent loop (docs/DESIGN.md §3): read the source once, hash every block on all
//! cores, announce batches, and send the blocks the storage side asks for.
//!
//! Threads: readers (`READERS` batches read at once into at most `window`
//! batch buffers), a worker pool (hashing, and compressing needed blocks first), one
//! writer (this thread: the only one that touches the output, and the one that
//! decides what happens next), and one thread decoding the storage side's
//! Need frames. Reading ahead, hashing and compressing overlap; memory is
//! `window` batches plus the compressed blocks waiting for the writer.

use crate::args::{hostname, Args};
use crate::digest::Digest;
use crate::pipeline::{Compressor, Queue, ReadBatch, Reader, Task};
use crate::proto::{
    block_header, check_params, max_frame_len, read_frame, Done, Entry, Hello, Message, Need,
    PROTOCOL_VERSION,
};
use crate::source::Source;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread;

/// How a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every batch was announced and served, and Done sent.
    Done,
    /// The storage side closed its end: it wants nothing more.
    Stopped,
}

enum Event {
    Hashed(Arc<ReadBatch>),
    Compressed {
        seq: u64,
        digest: Digest,
        data: Vec<u8>,
    },
    Need(Need),
    InputClosed,
    /// A read error, or bad input from the storage side.
    Failed(String),
}

/// Runs one dump of `args.source` over `input`/`output` (stdin/stdout in the
/// binary). Errors are also sent as an Error frame when the output still works.
pub fn run<R, W>(args: &Args, input: R, output: W) -> Result<Outcome, String>
where
    R: Read + Send + 'static,
    W: Write,
{
    check_params(args.block_size, args.batch_size, args.window)?;
    let mut out = BufWriter::with_capacity(1 << 20, output);
    let (file, size) = match open_source(&args.source) {
        Ok(opened) => opened,
        Err(msg) => {
            let _ = send(&mut out, &Message::Error(msg.clone())).and_then(|_| flush(&mut out));
            return Err(msg);
        }
    };
    let source = Source::new(file, &args.source);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        hostname: hostname(),
        source: args.source.to_string_lossy().into_owned(),
        size,
        block_size: args.block_size as u32,
        batch_size: args.batch_size as u32,
        window: args.window as u32,
        compression: args.compression,
    };
    send(&mut out, &Message::Hello(hello))?;
    flush(&mut out)?;

    let (events_tx, events) = mpsc::channel();
    spawn_input_reader(input, max_frame_len(args.block_size), events_tx.clone());
    let batch_bytes = (args.block_size * args.batch_size) as u64;
    let queue = Queue::default();
    let stop = AtomicBool::new(false);
    let workers = thread::available_parallelism().map_or(2, |n| n.get());
    thread::scope(|s| {
        let reader = Reader {
            source: &source,
            size,
            batch_bytes,
            block_size: args.block_size,
            queue: &queue,
            stop: &stop,
        };
        let report = events_tx.clone();
        s.spawn(move || {
            if let Err(msg) = reader.run(args.window) {
                let _ = report.send(Event::Failed(msg));
            }
        });
        for _ in 0..workers {
            let events = events_tx.clone();
            let (queue, mode) = (&queue, args.compression);
            s.spawn(move || work(queue, Compressor::new(mode), events));
        }
        drop(events_tx);
        let result = Writer::new(out, &queue, size, args).run(&events);
        stop.store(true, Ordering::Relaxed);
        queue.close();
        result
    })
}

/// Opens a regular file or block device and finds its size by seeking, which
/// works for both without ioctls.
fn open_source(path: &Path) -> Result<(File, u64), String> {
    let name = path.display();
    let mut f = File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
    let kind = f
        .metadata()
        .map_err(|e| format!("cannot stat {name}: {e}"))?
        .file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(format!("{name} is not a regular file or block device"));
    }
    let size = f
        .seek(SeekFrom::End(0))
        .and_then(|n| f.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(|e| format!("cannot find the size of {name}: {e}"))?;
    Ok((f, size))
}

fn send<W: Write>(out: &mut W, msg: &Message) -> Result<(), String> {
    let mut buf = Vec::new();
    msg.encode(&mut buf);
    out.write_all(&buf).map_err(write_error)
}

fn flush<W: Write>(out: &mut W) -> Result<(), String> {
    out.flush().map_err(write_error)
}

fn write_error(e: io::Error) -> String {
    format!("cannot write to the storage side: {e}")
}

/// Decodes the storage side's frames on a detached thread: it may block on
/// input forever, and must not keep the agent alive once Done is sent.
fn spawn_input_reader<R: Read + Send + 'static>(input: R, max: usize, events: Sender<Event>) {
    thread::spawn(move || {
        let mut r = BufReader::new(input);
        loop {
            let event = match read_frame(&mut r, max) {
                Ok(Some(Message::Need(n))) => Event::Need(n),
                Ok(None) => Event::InputClosed,
                Ok(Some(other)) => Event::Failed(format!(
                    "the storage side sent an unexpected frame: {other:?}"
                )),
                Err(e) => Event::Failed(format!("bad input from the storage side: {e}")),
            };
            let last = !matches!(event, Event::Need(_));
            if events.send(event).is_err() || last {
                return;
            }
        }
    });
}

fn work(queue: &Queue, mut compressor: Compressor, events: Sender<Event>) {
    while let Some(job) = queue.pop() {
        // A send fails only once the writer has finished; then nobody cares.
        match job {
            Task::Hash(batch, i) => {
                if batch.hash(i) {
                    let _ = events.send(Event::Hashed(batch));
                }
            }
            Task::Compress(batch, i) => {
                // The writer queues only announced Hash entries.
                let Some(Entry::Hash(digest)) = batch.entry(i) else {
                    continue;
                };
                let mut data = Vec::new();
                compressor.compress(batch.block(i), &mut data);
                let seq = batch.seq;
                let _ = events.send(Event::Compressed { seq, digest, data });
            }
        }
    }
}

/// An announced batch: waiting for its Need, then for its blocks to be sent.
struct Open {
    batch: Arc<ReadBatch>,
    unsent: Option<usize>,
}

struct Writer<'a, W: Write> {
    out: BufWriter<W>,
    queue: &'a Queue,
    total: u64,
    next_announce: u64,
    /// Hashed batches waiting for their turn (batches are announced in order).
    hashed: BTreeMap<u64, Arc<ReadBatch>>,
    open: HashMap<u64, Open>,
    retired: u64,
    done: Done,
    scratch: Vec<u8>,
}

impl<'a, W: Write> Writer<'a, W> {
    fn new(out: BufWriter<W>, queue: &'a Queue, size: u64, args: &Args) -> Writer<'a, W> {
        let batch_bytes = (args.block_size * args.batch_size) as u64;
        Writer {
            out,
            queue,
            total: size.div_ceil(batch_bytes),
            next_announce: 0,
            hashed: BTreeMap::new(),
            open: HashMap::new(),
            retired: 0,
            done: Done {
                blocks: size.div_ceil(args.block_size as u64),
                size,
            },
            scratch: Vec::new(),
        }
    }

    fn run(&mut self, events: &Receiver<Event>) -> Result<Outcome, String> {
        while self.retired < self.total {
            let event = match events.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => {
                    // Nothing more to write right now: let the peer see it.
                    flush(&mut self.out)?;
                    events
                        .recv()
                        .map_err(|_| "internal error: event channel closed")?
                }
                Err(TryRecvError::Disconnected) => return Err("internal error: no events".into()),
            };
            let handled = match event {
                Event::Hashed(batch) => {
                    self.hashed.insert(batch.seq, batch);
                    self.announce_ready()
                }
                Event::Compressed { seq, digest, data } => self.send_block(seq, &digest, &data),
                Event::Need(need) => self.need(need),
                Event::InputClosed => return Ok(Outcome::Stopped),
                Event::Failed(msg) => Err(msg),
            };
            if let Err(msg) = handled {
                // Best effort: the output may be what failed.
                let _ = send(&mut self.out, &Message::Error(msg.clone()));
                let _ = self.out.flush();
                return Err(msg);
            }
        }
        send(&mut self.out, &Message::Done(self.done.clone()))?;
        flush(&mut self.out)?;
        Ok(Outcome::Done)
    }

    fn announce_ready(&mut self) -> Result<(), String> {
        while let Some(batch) = self.hashed.remove(&self.next_announce) {
            self.scratch.clear();
            let msg = Message::Batch(crate::proto::Batch {
                seq: batch.seq,
                entries: batch.entries(),
            });
            msg.encode(&mut self.scratch);
            self.out.write_all(&self.scratch).map_err(write_error)?;
            self.open.insert(
                batch.seq,
                Open {
                    batch,
                    unsent: None,
                },
            );
            self.next_announce += 1;
        }
        Ok(())
    }

    fn need(&mut self, need: Need) -> Result<(), String> {
        let seq = need.seq;
        let open = match self.open.get_mut(&seq) {
            Some(o) if o.unsent.is_none() => o,
            _ => {
                return Err(format!(
                    "the storage side sent a Need for batch {seq}, which awaits none"
                ))
            }
        };
        if need.count as usize != open.batch.len() {
            return Err(format!(
                "the storage side's Need for batch {seq} covers {} entries, not {}",
                need.count,
                open.batch.len()
            ));
        }
        for &i in &need.indices {
            if open.batch.entry(i as usize) == Some(Entry::Zero) {
                return Err(format!(
                    "the storage side asked for zero block {i} of batch {seq}"
                ));
            }
        }
        open.unsent = Some(need.indices.len());
        let jobs = need
            .indices
            .iter()
            .map(|&i| Task::Compress(open.batch.clone(), i as usize));
        self.queue.push(jobs, true);
        self.retire_if_sent(seq);
        Ok(())
    }

    fn send_block(&mut self, seq: u64, digest: &Digest, data: &[u8]) -> Result<(), String> {
        self.out
            .write_all(&block_header(digest, data.len()))
            .and_then(|_| self.out.write_all(data))
            .map_err(write_error)?;
        if let Some(Open {
            unsent: Some(n), ..
        }) = self.open.get_mut(&seq)
        {
            *n -= 1;
        }
        self.retire_if_sent(seq);
        Ok(())
    }

    /// Drops a batch whose blocks are all sent, returning its buffer to the reader.
    fn retire_if_sent(&mut self, seq: u64) {
        if let Some(Open {
            unsent: Some(0), ..
        }) = self.open.get(&seq)
        {
            self.open.remove(&seq);
            self.retired += 1;
        }
    }
}

#[cfg(test)]
mod tests;
