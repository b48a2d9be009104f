//! The receiver's worker pool: each received block is decompressed with a
//! bound of the block size, hashed, compared with what the agent announced,
//! and only then stored. With `lz4` the received frame is stored as it came.

use super::inflight::InFlight;
use crate::digest::Digest;
use crate::store::{max_stored_frame, Store};
use anyhow::{anyhow, bail, Context, Result};
use diskdump_agent::blockfmt;
use diskdump_agent::proto::Compression;
use flate2::{Decompress, FlushDecompress, Status};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;

/// One received block to check: `len` is the length of its place in the image.
pub(super) struct Arrived {
    pub digest: Digest,
    pub len: usize,
    pub data: Vec<u8>,
}

/// What the workers add to the dump's statistics.
#[derive(Default)]
pub(super) struct Counters {
    pub blocks_new: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Verified blocks that another writer had stored meanwhile.
    pub blocks_raced: AtomicU64,
}

/// The first error any worker hit; the dump fails with it.
#[derive(Default)]
pub(super) struct FirstError {
    failed: AtomicBool,
    error: Mutex<Option<anyhow::Error>>,
}

impl FirstError {
    pub fn is_set(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn set(&self, e: anyhow::Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
            self.failed.store(true, Ordering::Release);
        }
    }

    pub fn take(&self) -> Option<anyhow::Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub(super) struct Checker<'a> {
    pub store: &'a dyn Store,
    pub inflight: &'a InFlight,
    pub owner: u64,
    pub mode: Compression,
    pub counters: &'a Counters,
    pub failure: &'a FirstError,
}

/// Per-worker buffers and codec state, reused across blocks.
struct Scratch {
    raw: Vec<u8>,
    frame: Vec<u8>,
    encoder: blockfmt::Encoder,
    zlib: Decompress,
}

impl Checker<'_> {
    /// Works until the arrived channel closes. After a failure the remaining arrivals
    /// are drained unchecked, so the reading thread never blocks on a send.
    pub fn run(&self, arrivals: &Mutex<Receiver<Arrived>>) {
        let mut s = Scratch {
            raw: Vec::new(),
            frame: Vec::new(),
            encoder: blockfmt::Encoder::default(),
            zlib: Decompress::new(true),
        };
        loop {
            let arrived = match arrivals.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(arrived) => arrived,
                Err(_) => return,
            };
            if self.failure.is_set() {
                continue;
            }
            if let Err(e) = self.check_and_store(&mut s, arrived) {
                self.failure.set(e);
            }
        }
    }

    fn check_and_store(&self, s: &mut Scratch, arrived: Arrived) -> Result<()> {
        let (d, bs) = (arrived.digest, self.store.block_size());
        let raw: &[u8] = match self.mode {
            Compression::Lz4 => {
                blockfmt::decode(&arrived.data, bs, &mut s.raw)
                    .map_err(|e| undecodable(&d, bs, e))?;
                &s.raw
            }
            Compression::Zlib => {
                inflate(&mut s.zlib, &arrived.data, bs, &mut s.raw)
                    .map_err(|e| undecodable(&d, bs, e))?;
                &s.raw
            }
            Compression::None => {
                if arrived.data.len() > bs {
                    bail!("block {d} from the agent has {} bytes, more than the block size ({bs} bytes)", arrived.data.len());
                }
                &arrived.data
            }
        };
        if raw.len() != arrived.len {
            bail!(
                "block {d} from the agent has {} bytes, but its place in the image has {}",
                raw.len(),
                arrived.len
            );
        }
        let actual = Digest::of(raw);
        if actual != d {
            bail!("block {d} from the agent hashes to {actual}: wrong data, refused");
        }
        // An LZ4 frame shaped like ours is exactly what the store keeps; any
        // other (checksums we do not verify, a skippable prefix, a size past
        // the store's bound, or simply zlib/none on the wire) is re-encoded.
        let frame: &[u8] = if self.mode == Compression::Lz4
            && blockfmt::is_plain(&arrived.data)
            && arrived.data.len() <= max_stored_frame(bs)
        {
            &arrived.data
        } else {
            s.frame.clear();
            s.encoder.encode(raw, &mut s.frame);
            &s.frame
        };
        let new = self
            .store
            .put_frame(&d, frame)
            .with_context(|| format!("cannot store block {d} in {}", self.store.describe()))?;
        self.inflight.finish(&d, self.owner);
        let c = self.counters;
        if new {
            c.blocks_new.fetch_add(1, Ordering::Relaxed);
            c.bytes_new.fetch_add(raw.len() as u64, Ordering::Relaxed);
            c.bytes_written
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
        } else {
            c.blocks_raced.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn undecodable(d: &Digest, bs: usize, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("block {d} from the agent does not decode within the block size ({bs} bytes): {e}")
}

/// Inflates a zlib stream into `out`, refusing more than `limit` bytes:
/// the output buffer is never given room for more than that.
fn inflate(z: &mut Decompress, data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), String> {
    z.reset(true);
    out.clear();
    out.reserve_exact(limit + 1);
    let status = z
        .decompress_vec(data, out, FlushDecompress::Finish)
        .map_err(|e| format!("corrupt zlib data: {e}"))?;
    if out.len() > limit || (status != Status::StreamEnd && out.len() == out.capacity()) {
        return Err(format!("zlib data inflates to more than {limit} bytes"));
    }
    if status != Status::StreamEnd {
        return Err("truncated zlib stream".into());
    }
    if z.total_in() as usize != data.len() {
        return Err("trailing bytes after the zlib stream".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::ZlibEncoder;
    use std::io::Write;

    fn zlib(raw: &[u8]) -> Vec<u8> {
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(raw).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn inflate_is_bounded_and_strict() {
        let mut z = Decompress::new(true);
        let mut out = Vec::new();
        let raw = vec![3u8; 4096];
        inflate(&mut z, &zlib(&raw), 4096, &mut out).unwrap();
        assert_eq!(out, raw);
        let bomb = zlib(&vec![0u8; 1 << 20]);
        let err = inflate(&mut z, &bomb, 4096, &mut out).unwrap_err();
        assert!(err.contains("more than 4096"), "{err}");
        assert!(out.len() <= out.capacity() && out.capacity() < 1 << 20);
        let err = inflate(&mut z, &zlib(&[1u8; 4097]), 4096, &mut out).unwrap_err();
        assert!(err.contains("more than 4096"), "{err}");
        let full = zlib(&raw);
        assert!(inflate(&mut z, &full[..full.len() - 3], 4096, &mut out).is_err());
        let mut trailing = full.clone();
        trailing.push(0);
        let err = inflate(&mut z, &trailing, 4096, &mut out).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
        assert!(inflate(&mut z, b"garbage!", 4096, &mut out).is_err());
    }
}
