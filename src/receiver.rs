//! The storage side of one dump (docs/DESIGN.md §3), over any `Read` + `Write` pair
//! (an SSH channel, or pipes to a local agent in tests).
//!
//! It trusts nothing the agent says: the Hello must match the store, batches
//! must arrive in order with exactly the entries the announced size implies,
//! only requested blocks may come and each once, and every block is
//! decompressed with a bound of the block size and its SHA-256 checked before
//! it is stored. Any violation fails the dump with the reason; blocks already
//! verified and stored stay, and the caller writes no manifest.
//!
//! Per announced block: one existence check (or none, when another dump is
//! already fetching it). Per new block: one decompress, one SHA-256, one
//! write; with `lz4` on the wire, the received frame is what is written.

mod check;
mod exchange;
mod inflight;

pub use inflight::InFlight;

use crate::manifest::{now_string, HashSpool, Manifest, SpooledHashes};
use crate::store::Store;
use crate::untrusted;
use anyhow::{bail, Context, Result};
use check::{Checker, Counters, FirstError};
use diskdump_agent::proto::{self, check_params, Hello, Message, ProtocolError};
use exchange::Exchange;
use inflight::Claims;
use std::io::{BufReader, Read, Write};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::thread;

/// Counts of one dump, reported while it runs and at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// The source's size, from the agent's Hello.
    pub size: u64,
    /// Bytes the agent has read and announced so far.
    pub bytes_read: u64,
    /// Blocks announced so far.
    pub blocks: u64,
    /// Blocks received, verified and stored by this dump.
    pub blocks_new: u64,
    /// Blocks the store already had.
    pub blocks_present: u64,
    /// All-zero blocks (never transferred).
    pub blocks_zero: u64,
    /// Blocks already on their way (earlier in this dump or in another one):
    /// requested once, not again.
    pub blocks_deduped: u64,
    /// Raw bytes of the new blocks.
    pub bytes_new: u64,
    /// Bytes received from the agent, framing included.
    pub wire_bytes: u64,
    /// Bytes written to the store for the new blocks.
    pub bytes_written: u64,
}

/// Receives progress; called from the receiving thread after each batch.
pub trait Progress: Sync {
    fn update(&self, stats: &ReceiveStats);
}

impl<F: Fn(&ReceiveStats) + Sync> Progress for F {
    fn update(&self, stats: &ReceiveStats) {
        self(stats)
    }
}

/// No progress reporting.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: &ReceiveStats) {}
}

/// What one dump goes into.
pub struct ReceiveOptions<'a> {
    pub store: &'a dyn Store,
    /// Shared by every receiver writing into `store`.
    pub inflight: &'a InFlight,
    /// `host:path`, recorded as the manifest's source.
    pub source: &'a str,
    pub progress: &'a dyn Progress,
    /// Largest source size accepted from the agent's Hello: the storage side keeps 32 bytes
    /// per block of the image while it runs, so this bounds its memory, not the remote's claim.
    pub max_size: u64,
}

/// Default of [`ReceiveOptions::max_size`] (`dump --max-size`): 16 TiB, about 4 GiB of
/// block hashes on the storage side.
pub const DEFAULT_MAX_SIZE: u64 = 16 << 40;

/// A successful dump: the manifest to write (the caller writes it, with
/// `Store::write_manifest_spooled`), its statistics, and the agent's Hello.
#[derive(Debug)]
pub struct Received {
    /// The header; its hash list is `hashes` (on disk, not in `blocks`).
    pub manifest: Manifest,
    pub hashes: SpooledHashes,
    pub stats: ReceiveStats,
    pub hello: Hello,
}

impl Received {
    /// The manifest with its hash list loaded into memory (for tools and
    /// tests; `dump` writes from the spool instead).
    pub fn full_manifest(&self) -> std::io::Result<Manifest> {
        Ok(Manifest {
            blocks: self.hashes.to_vec()?,
            ..self.manifest.clone()
        })
    }
}

/// Runs the storage side of one dump: `input` carries the agent's frames,
/// `output` the Needs back to it. Returns once the agent said Done and every
/// block the manifest names is in the store.
pub fn receive(
    opts: &ReceiveOptions,
    input: impl Read,
    mut output: impl Write,
) -> Result<Received> {
    let date = now_string();
    let store = opts.store;
    let max_frame = proto::max_frame_len(store.block_size());
    let mut input = BufReader::with_capacity(256 << 10, Wire::new(input));
    let hello = read_hello(&mut input, max_frame, store)?;
    if hello.size > opts.max_size {
        bail!(
            "the agent announces a source of {} bytes, more than --max-size ({} bytes); \
             raise --max-size for a disk that large (the storage side keeps 32 bytes per block)",
            hello.size,
            opts.max_size
        );
    }
    let claims = Claims::new(opts.inflight);
    let counters = Counters::default();
    let failure = FirstError::default();
    let checker = Checker {
        store,
        inflight: opts.inflight,
        owner: claims.owner,
        mode: hello.compression,
        counters: &counters,
        failure: &failure,
    };
    let hashes = HashSpool::new().context("cannot create a temp file for the hash list")?;
    let mut exchange = Exchange::new(opts, &hello, claims.owner, &counters, &failure, hashes);
    let workers = thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let (arrivals_tx, arrivals_rx) = sync_channel(workers * 2);
    let arrivals_rx = Mutex::new(arrivals_rx);
    let received = thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| checker.run(&arrivals_rx));
        }
        exchange.run(&mut input, &mut output, max_frame, arrivals_tx)
    });
    // A worker's error is the root cause of whatever the reading loop saw
    // afterwards (often just the agent being cut off).
    if let Some(e) = failure.take() {
        return Err(e);
    }
    received?;
    drop(output); // the agent may exit now
    exchange.finish(date, input.get_ref().count)
}

fn read_hello<R: Read>(
    input: &mut BufReader<Wire<R>>,
    max: usize,
    store: &dyn Store,
) -> Result<Hello> {
    let hello = match proto::read_frame(input, max) {
        Ok(Some(Message::Hello(h))) => h,
        Ok(Some(Message::Error(m))) => bail!("the agent failed: {}", untrusted::escape(&m)),
        Ok(Some(other)) => bail!("the agent's first frame is not a Hello: {other:?}"),
        Ok(None) => bail!("the agent closed its output without a word (did it start?)"),
        Err(e @ ProtocolError::Version(_)) => bail!("the agent's Hello: {e}"),
        Err(e) => bail!(
            "the agent's output does not start with a diskdump Hello ({e}); it begins with \"{}\"",
            untrusted::escape_bytes(&input.get_ref().head)
        ),
    };
    let bs = store.block_size();
    if hello.block_size as usize != bs {
        bail!(
            "the agent reads blocks of {} bytes, but store {} uses {bs}",
            hello.block_size,
            store.describe()
        );
    }
    check_params(bs, hello.batch_size as usize, hello.window as usize)
        .map_err(anyhow::Error::msg)
        .context("the agent's Hello")?;
    Ok(hello)
}

/// The agent's byte stream (below the buffering), counted, with its first
/// bytes kept so garbage (a shell banner, a sudo prompt) can be shown.
struct Wire<R> {
    inner: R,
    count: u64,
    head: Vec<u8>,
}

impl<R: Read> Wire<R> {
    fn new(inner: R) -> Wire<R> {
        Wire {
            inner,
            count: 0,
            head: Vec::new(),
        }
    }
}

impl<R: Read> Read for Wire<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.head.len() < 64 {
            let keep = n.min(64 - self.head.len());
            self.head.extend_from_slice(&buf[..keep]);
        }
        self.count += n as u64;
        Ok(n)
    }
}
