//! The receiving loop of one dump: checks each frame against what the Hello
//! and the earlier frames allow, answers batches with Needs, hands blocks to
//! the verifiers, and at the end makes sure everything the manifest names is
//! in the store.

use super::check::{Arrived, Counters, FirstError};
use super::inflight::InFlight;
use super::{Progress, ReceiveOptions, ReceiveStats, Received, Wire};
use crate::digest::Digest;
use crate::manifest::{block_len, HashSpool, Manifest};
use crate::store::{put_block, Store};
use anyhow::{anyhow, bail, Context, Result};
use diskdump_agent::blockfmt;
use diskdump_agent::proto::{read_frame, Batch, Block, Done, Entry, Hello, Message, Need};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

/// A requested block not yet received, or received while its batch is open.
struct Want {
    seq: u64,
    len: usize,
    received: bool,
}

/// A batch with requested blocks still to come.
struct OpenBatch {
    requested: Vec<Digest>,
    outstanding: usize,
}

pub(super) struct Exchange<'a> {
    store: &'a dyn Store,
    inflight: &'a InFlight,
    source: &'a str,
    progress: &'a dyn Progress,
    owner: u64,
    counters: &'a Counters,
    failure: &'a FirstError,
    hello: Hello,
    zero: Digest,
    total_blocks: u64,
    total_batches: u64,
    next_seq: u64,
    /// The hash list so far, on disk (see `manifest::spool`).
    blocks: HashSpool,
    open: HashMap<u64, OpenBatch>,
    wanted: HashMap<Digest, Want>,
    /// New blocks this dump relies on but did not request: another fetch of
    /// them (this dump's or another's) was under way.
    borrowed: HashSet<Digest>,
    stats: ReceiveStats,
    /// Set when a Need could not be sent: the agent is gone or going, and
    /// what it still says (an Error frame) explains why better than EPIPE.
    send_error: Option<io::Error>,
}

enum Class {
    Present,
    Borrowed,
    Claimed,
}

impl<'a> Exchange<'a> {
    pub fn new(
        opts: &ReceiveOptions<'a>,
        hello: &Hello,
        owner: u64,
        counters: &'a Counters,
        failure: &'a FirstError,
        hashes: HashSpool,
    ) -> Exchange<'a> {
        let bs = opts.store.block_size() as u64;
        let total_blocks = hello.size.div_ceil(bs);
        Exchange {
            store: opts.store,
            inflight: opts.inflight,
            source: opts.source,
            progress: opts.progress,
            owner,
            counters,
            failure,
            hello: hello.clone(),
            zero: Digest::zero_block(bs as usize),
            total_blocks,
            total_batches: total_blocks.div_ceil(hello.batch_size as u64),
            next_seq: 0,
            blocks: hashes,
            open: HashMap::new(),
            wanted: HashMap::new(),
            borrowed: HashSet::new(),
            stats: ReceiveStats {
                size: hello.size,
                ..ReceiveStats::default()
            },
            send_error: None,
        }
    }

    /// Reads frames until Done (Ok) or any violation (Err).
    pub fn run<R: Read, W: Write>(
        &mut self,
        input: &mut BufReader<Wire<R>>,
        output: &mut W,
        max_frame: usize,
        arrivals: SyncSender<Arrived>,
    ) -> Result<()> {
        loop {
            if self.failure.is_set() {
                bail!("a received block failed verification");
            }
            let msg = match read_frame(input, max_frame) {
                Ok(Some(msg)) => msg,
                Ok(None) | Err(_) if self.send_error.is_some() => return self.send_failed(),
                Ok(None) => bail!(
                    "the agent's output ended before Done (truncated after {} of {} batches)",
                    self.next_seq,
                    self.total_batches
                ),
                Err(e) => bail!("bad data from the agent: {e}"),
            };
            match msg {
                Message::Batch(b) => {
                    self.batch(b, output)?;
                    self.stats.wire_bytes = input.get_ref().count;
                    self.progress.update(&self.snapshot());
                }
                Message::Block(b) => self.block(b, &arrivals)?,
                Message::Done(_) if self.send_error.is_some() => return self.send_failed(),
                Message::Done(d) => return self.done(d),
                Message::Error(m) => bail!("the agent failed: {}", crate::untrusted::escape(&m)),
                Message::Hello(_) => bail!("protocol violation: the agent sent a second Hello"),
                Message::Need(_) => bail!("protocol violation: the agent sent a Need"),
            }
        }
    }

    fn batch<W: Write>(&mut self, b: Batch, output: &mut W) -> Result<()> {
        let (seq, first) = self.check_batch(&b)?;
        let requested = self.classify_entries(&b, first)?;
        self.send_need(output, seq, b.entries.len(), &requested);
        if !requested.is_empty() {
            let requested: Vec<Digest> = requested.into_iter().map(|(_, d)| d).collect();
            let outstanding = requested.len();
            let open = OpenBatch {
                requested,
                outstanding,
            };
            self.open.insert(seq, open);
            if self.open.len() > self.hello.window as usize {
                bail!(
                    "protocol violation: the agent has more than its window of {} batches \
                     with blocks unsent",
                    self.hello.window
                );
            }
        }
        self.next_seq += 1;
        let end = first + b.entries.len() as u64;
        self.stats.blocks = end;
        self.stats.bytes_read = (end * self.store.block_size() as u64).min(self.hello.size);
        Ok(())
    }

    /// Checks that `b` is the next batch and has the entries the source's
    /// size implies; returns its number and the index of its first block.
    fn check_batch(&self, b: &Batch) -> Result<(u64, u64)> {
        let seq = b.seq;
        if seq != self.next_seq || seq >= self.total_batches {
            bail!(
                "protocol violation: the agent sent batch {seq}; expected batch {} of {}",
                self.next_seq,
                self.total_batches
            );
        }
        let first = seq * self.hello.batch_size as u64;
        let expected = (self.total_blocks - first).min(self.hello.batch_size as u64);
        if b.entries.len() as u64 != expected {
            bail!(
                "protocol violation: batch {seq} has {} entries; the source's size implies {expected}",
                b.entries.len()
            );
        }
        Ok((seq, first))
    }

    /// Adds the batch's blocks to the manifest and returns the ones this dump
    /// must fetch (index in the batch, digest), now claimed and wanted.
    fn classify_entries(&mut self, b: &Batch, first: u64) -> Result<Vec<(u32, Digest)>> {
        let bs = self.store.block_size();
        let mut requested = Vec::new();
        let hashes: Vec<Digest> = b
            .entries
            .iter()
            .filter_map(|e| match *e {
                Entry::Hash(d) if d != self.zero => Some(d),
                _ => None,
            })
            .collect();
        self.store.prefetch(&hashes);
        for (i, entry) in b.entries.iter().enumerate() {
            let index = first + i as u64;
            let len = block_len(self.hello.size, bs, index as usize);
            let d = match *entry {
                Entry::Zero if len != bs => bail!(
                    "protocol violation: block {index} is flagged all-zero \
                     but is {len} bytes, not a full block"
                ),
                Entry::Zero => self.zero,
                Entry::Hash(d) => d,
            };
            self.blocks
                .push(&d)
                .context("cannot write the hash list to its temp file")?;
            // Announced by its hash or flagged, the zero block never travels.
            if d == self.zero && len == bs {
                self.stats.blocks_zero += 1;
                continue;
            }
            match self.classify(d)? {
                Class::Present => self.stats.blocks_present += 1,
                Class::Borrowed => self.stats.blocks_deduped += 1,
                Class::Claimed => {
                    requested.push((i as u32, d));
                    let received = false;
                    self.wanted.insert(
                        d,
                        Want {
                            seq: b.seq,
                            len,
                            received,
                        },
                    );
                }
            }
        }
        Ok(requested)
    }

    /// Sends the Need for batch `seq`. A failure is kept, not returned: the
    /// agent's remaining output may explain it (see `send_error`).
    fn send_need<W: Write>(
        &mut self,
        output: &mut W,
        seq: u64,
        count: usize,
        req: &[(u32, Digest)],
    ) {
        if self.send_error.is_some() {
            return;
        }
        let need = Message::Need(Need {
            seq,
            count: count as u32,
            indices: req.iter().map(|&(i, _)| i).collect(),
        });
        let mut frame = Vec::new();
        need.encode(&mut frame);
        self.send_error = output.write_all(&frame).and_then(|_| output.flush()).err();
    }

    /// Decides who fetches `d`: nobody (the store has it), another fetch
    /// already under way, or this dump (which then claims it).
    fn classify(&mut self, d: Digest) -> Result<Class> {
        if self.inflight.is_busy(&d) {
            self.borrowed.insert(d);
            return Ok(Class::Borrowed);
        }
        let present = self
            .store
            .contains(&d)
            .with_context(|| format!("cannot check block {d} in {}", self.store.describe()))?;
        if present {
            return Ok(Class::Present);
        }
        if self.inflight.try_claim(d, self.owner) {
            return Ok(Class::Claimed);
        }
        self.borrowed.insert(d);
        Ok(Class::Borrowed)
    }

    fn send_failed(&mut self) -> Result<()> {
        let e = self
            .send_error
            .take()
            .expect("called only after a failed send");
        Err(anyhow::Error::new(e).context("cannot send to the agent"))
    }

    fn block(&mut self, b: Block, arrivals: &SyncSender<Arrived>) -> Result<()> {
        let d = b.digest;
        let Some(want) = self.wanted.get_mut(&d) else {
            bail!("protocol violation: the agent sent block {d}, which was not requested (or was already received)");
        };
        if want.received {
            bail!("protocol violation: the agent sent block {d} twice (duplicate block)");
        }
        want.received = true;
        let (seq, len) = (want.seq, want.len);
        arrivals
            .send(Arrived {
                digest: d,
                len,
                data: b.data,
            })
            .map_err(|_| anyhow!("internal error: the verifiers stopped"))?;
        // Every wanted digest belongs to an open batch until that batch closes.
        let open = self
            .open
            .get_mut(&seq)
            .expect("wanted blocks have an open batch");
        open.outstanding -= 1;
        if open.outstanding == 0 {
            for d in self.open.remove(&seq).expect("just seen").requested {
                self.wanted.remove(&d);
            }
        }
        Ok(())
    }

    fn done(&mut self, d: Done) -> Result<()> {
        if self.next_seq != self.total_batches {
            bail!(
                "protocol violation: the agent said Done after {} of {} batches",
                self.next_seq,
                self.total_batches
            );
        }
        if (d.blocks, d.size) != (self.total_blocks, self.hello.size) {
            bail!(
                "protocol violation: the agent's Done says {} blocks / {} bytes, its Hello {} / {}",
                d.blocks,
                d.size,
                self.total_blocks,
                self.hello.size
            );
        }
        if let Some(missing) = self.wanted.iter().find(|(_, w)| !w.received) {
            bail!(
                "protocol violation: the agent said Done, but requested block {} never came",
                missing.0
            );
        }
        Ok(())
    }

    fn snapshot(&self) -> ReceiveStats {
        let c = self.counters;
        ReceiveStats {
            blocks_new: c.blocks_new.load(Ordering::Relaxed),
            bytes_new: c.bytes_new.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            // Stored by someone else between our check and our write: present.
            blocks_present: self.stats.blocks_present + c.blocks_raced.load(Ordering::Relaxed),
            ..self.stats.clone()
        }
    }

    /// After every verifier is done: the zero block and every block fetched
    /// by someone else must now be in the store; then the manifest is ready.
    pub fn finish(mut self, date: String, wire_bytes: u64) -> Result<Received> {
        let store = self.store;
        let bs = store.block_size();
        let ctx = || format!("cannot check the store {}", store.describe());
        if self.stats.blocks_zero > 0 && !store.contains(&self.zero).with_context(ctx)? {
            let (mut enc, mut buf) = (blockfmt::Encoder::default(), Vec::new());
            put_block(store, &self.zero, &vec![0u8; bs], &mut enc, &mut buf)
                .with_context(|| format!("cannot store the zero block in {}", store.describe()))?;
        }
        for d in &self.borrowed {
            self.inflight.wait_idle(d);
            if !store.contains(d).with_context(ctx)? {
                bail!(
                    "block {d} was being fetched by another dump, which did not store it \
                     (it failed); run this dump again"
                );
            }
        }
        self.stats.wire_bytes = wire_bytes;
        let stats = self.snapshot();
        self.progress.update(&stats);
        let manifest = Manifest {
            source: self.source.to_string(),
            date,
            block_size: bs,
            total_size: self.hello.size,
            blocks: Vec::new(),
            new_blocks: Some(stats.blocks_new),
        };
        Ok(Received {
            manifest,
            hashes: self
                .blocks
                .finish()
                .context("cannot write the hash list to its temp file")?,
            stats,
            hello: self.hello,
        })
    }
}
