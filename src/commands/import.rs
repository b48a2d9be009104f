//! `import IMAGE --as NAME`: a local raw image into the store, hashing and
//! compressing on all cores; zero blocks cost a memory compare.

use super::{as_usage, cores, usage};
use crate::digest::{is_zero, Digest};
use crate::manifest::{self, Manifest};
use crate::progress;
use crate::store::{check_block_size, put_block, resolve_group, Store};
use anyhow::{Context, Result};
use diskdump_agent::blockfmt::Encoder;
use diskdump_agent::source::{AlignedBuf, Source};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A worker's answer for one chunk: its index, digests, counts, and the buffer back.
type ChunkDone = Result<(usize, Vec<Digest>, ImportStats, AlignedBuf)>;

/// Blocks read and handed to a worker at once.
const CHUNK_BLOCKS: usize = 32;

/// Chunks read at once, each as 1 MiB direct reads one after another. One
/// reader splitting each chunk into parallel pieces left the disk idle
/// between chunks: a cold next-day import of the 2 GiB benchmark image
/// took 1.82-1.92 s with it, 1.53-1.60 s with four (DESIGN §3.4).
const READERS: usize = 4;

#[derive(Default, Debug, Clone, Copy)]
pub struct ImportStats {
    pub new: u64,
    pub present: u64,
    pub zero: u64,
    pub bytes_written: u64,
    /// Image bytes these counts cover (for progress).
    pub bytes: u64,
}

impl ImportStats {
    fn add(&mut self, o: &ImportStats) {
        self.new += o.new;
        self.present += o.present;
        self.zero += o.zero;
        self.bytes_written += o.bytes_written;
        self.bytes += o.bytes;
    }
}

pub struct ImportOptions {
    pub image: PathBuf,
    pub name: String,
    pub date: Option<String>,
    pub block_size: Option<usize>,
    pub group: Option<String>,
}

pub fn run(store_dir: &Path, o: &ImportOptions) -> Result<u8> {
    let (image, as_name) = (o.image.as_path(), o.name.as_str());
    // Everything the user could have got wrong is checked before any work.
    let name = manifest::name_from_as(as_name).map_err(as_usage)?;
    let date = match &o.date {
        Some(d) => manifest::format_date(manifest::parse_date(d).map_err(as_usage)?),
        None => manifest::now_string(),
    };
    if let Some(bs) = o.block_size {
        check_block_size(bs).map_err(as_usage)?;
    }
    let group = o
        .group
        .as_deref()
        .map(resolve_group)
        .transpose()
        .map_err(as_usage)?;
    let mut file =
        File::open(image).with_context(|| format!("cannot open image {}", image.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {}", image.display()))?;
    if meta.is_dir() {
        return Err(usage(format!(
            "{} is a directory, not an image",
            image.display()
        )));
    }
    // Block devices report size 0 in metadata; seeking to the end works for both.
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|s| file.seek(SeekFrom::Start(0)).map(|_| s))
        .with_context(|| format!("cannot get the size of {}", image.display()))?;
    let source = if as_name.contains(':') {
        as_name.to_string()
    } else {
        format!(
            "localhost:{}",
            image
                .canonicalize()
                .unwrap_or(image.to_path_buf())
                .display()
        )
    };
    manifest::validate_source(&source).map_err(as_usage)?;
    let store = crate::store::open_for_writing(store_dir, o.block_size, group)?;
    let session = store.begin_writes()?;
    let bs = store.block_size();
    let started = Instant::now();
    let bar = progress::bytes_bar(size, "import");
    // A local image: what the page cache holds is read from memory.
    let file = Source::new(file, image).cached_first();
    let written = import_blocks(store.as_ref(), &file, size, &|n| bar.inc(n))
        .with_context(|| {
            format!(
                "import of {} failed; no manifest was written",
                image.display()
            )
        })
        .and_then(|(blocks, stats)| {
            bar.finish_and_clear();
            let m = Manifest {
                source,
                date,
                block_size: bs,
                total_size: size,
                blocks,
                new_blocks: Some(stats.new),
            };
            Ok((store.write_manifest(&name, &m)?, m, stats))
        });
    // Synced and unmarked on failure too: what was stored is good.
    let ended = store.end_writes(session);
    let (entry, m, stats) = written?;
    ended?;
    let took = started.elapsed();
    if crate::output::json() {
        crate::output::emit(&serde_json::json!({
            "image": image.display().to_string(),
            "manifest": entry.rel,
            "name": name,
            "size": size,
            "blocks": m.blocks.len(),
            "blocks_new": stats.new,
            "blocks_present": stats.present,
            "blocks_zero": stats.zero,
            "bytes_written": stats.bytes_written,
            "seconds": took.as_secs_f64(),
        }))?;
        return Ok(0);
    }
    crate::outln!(
        "imported {} as {}: {} blocks ({} new, {} already present, {} zero), read {} in {} ({}), wrote {}",
        image.display(),
        entry.rel,
        m.blocks.len(),
        stats.new,
        stats.present,
        stats.zero,
        indicatif::HumanBytes(size),
        progress::secs(took),
        progress::rate(size, took),
        indicatif::HumanBytes(stats.bytes_written),
    )?;
    Ok(0)
}

/// Reads `size` bytes of `src` once, a few chunks at a time, and stores its blocks;
/// returns the block list in order. Memory: a few chunks per worker.
pub fn import_blocks(
    store: &dyn Store,
    src: &Source,
    size: u64,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<Digest>, ImportStats)> {
    let bs = store.block_size();
    let zero = Digest::zero_block(bs);
    let mut stats = ImportStats::default();
    // Python-era readers read the zero block from disk; it costs one file.
    let zero_frame = diskdump_agent::blockfmt::encode(&vec![0u8; bs]);
    if !store.contains(&zero)? && store.put_frame(&zero, &zero_frame)? {
        stats.bytes_written += zero_frame.len() as u64;
    }
    let chunk = bs * CHUNK_BLOCKS;
    let nchunks = size.div_ceil(chunk as u64) as usize;
    let workers = cores();
    let (work_tx, work_rx) = sync_channel::<(usize, AlignedBuf)>(4);
    let (done_tx, done_rx) = sync_channel::<ChunkDone>(workers * 2);
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(workers + 8);
    // Shared by the workers only: when the last one exits the reader's send fails.
    let work_rx = Arc::new(Mutex::new(work_rx));
    let mut blocks = vec![zero; size.div_ceil(bs as u64) as usize];
    // Several readers, each claiming the next chunk: one reader left the disk
    // idle while it handed a chunk over (as the agent's did, DESIGN §3.4).
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let free_rx = Mutex::new(free_rx);
    let read_chunks =
        |work_tx: SyncSender<(usize, AlignedBuf)>, holes_tx: SyncSender<ChunkDone>| -> Result<()> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= nchunks || failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let off = (i * chunk) as u64;
                let len = (size - off).min(chunk as u64) as usize;
                crate::signals::check()?;
                // A chunk of whole blocks with no data in it (a hole of a
                // sparse file) is zero blocks: no need to read it.
                let end = off + len as u64;
                if len.is_multiple_of(bs) && src.data_range(off, end).0 >= end {
                    let n = len / bs;
                    let st = ImportStats {
                        zero: n as u64,
                        bytes: len as u64,
                        ..Default::default()
                    };
                    if holes_tx
                        .send(Ok((i, vec![zero; n], st, AlignedBuf::default())))
                        .is_err()
                    {
                        return Ok(());
                    }
                    continue;
                }
                let free = free_rx.lock().unwrap_or_else(|p| p.into_inner()).try_recv();
                let mut buf = free.unwrap_or_default();
                buf.set_len(len);
                src.fill(&mut buf, off).map_err(anyhow::Error::msg)?;
                if work_tx.send((i, buf)).is_err() {
                    return Ok(()); // a worker failed; its error is reported
                }
            }
        };
    std::thread::scope(|s| -> Result<()> {
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (work_tx, holes_tx) = (work_tx.clone(), done_tx.clone());
                let (read_chunks, failed) = (&read_chunks, &failed);
                s.spawn(move || {
                    let r = read_chunks(work_tx, holes_tx);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        drop(work_tx);
        for _ in 0..workers {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            s.spawn(move || {
                let (mut enc, mut out) = (Encoder::default(), Vec::new());
                loop {
                    let job = work_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((i, buf)) = job else { return };
                    let r = hash_and_store(store, &buf, bs, &zero, &mut enc, &mut out);
                    let failed = r.is_err();
                    if done_tx.send(r.map(|(d, st)| (i, d, st, buf))).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop((done_tx, work_rx));
        collect(
            done_rx,
            &free_tx,
            &mut blocks,
            &mut stats,
            CHUNK_BLOCKS,
            on_progress,
        )?;
        // Every reader has ended (collect saw all senders go); the first
        // error in chunk order is not tracked: any one names its offset.
        readers
            .into_iter()
            .try_for_each(|r| r.join().expect("reader thread does not panic"))
    })?;
    Ok((blocks, stats))
}

fn collect(
    done: Receiver<ChunkDone>,
    free: &std::sync::mpsc::SyncSender<AlignedBuf>,
    blocks: &mut [Digest],
    stats: &mut ImportStats,
    per_chunk: usize,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<()> {
    // Returning early drops the receiver, which stops workers and the reader.
    for r in done {
        let (i, ds, st, buf) = r?;
        blocks[i * per_chunk..i * per_chunk + ds.len()].copy_from_slice(&ds);
        stats.add(&st);
        on_progress(st.bytes);
        if !buf.is_empty() {
            let _ = free.try_send(buf);
        }
    }
    Ok(())
}

fn hash_and_store(
    store: &dyn Store,
    buf: &[u8],
    bs: usize,
    zero: &Digest,
    enc: &mut Encoder,
    out: &mut Vec<u8>,
) -> Result<(Vec<Digest>, ImportStats)> {
    let mut st = ImportStats {
        bytes: buf.len() as u64,
        ..Default::default()
    };
    // Hash the chunk first, so the existence checks of its blocks can be
    // started together (`Store::prefetch`) and their disk reads overlap.
    let mut ds = Vec::with_capacity(buf.len().div_ceil(bs));
    for block in buf.chunks(bs) {
        if block.len() == bs && is_zero(block) {
            st.zero += 1;
            ds.push(*zero);
        } else {
            ds.push(Digest::of(block));
        }
    }
    let data: Vec<Digest> = ds.iter().copied().filter(|d| d != zero).collect();
    store.prefetch(&data);
    for (block, d) in buf.chunks(bs).zip(&ds) {
        if block.len() == bs && d == zero {
            continue; // counted above (a full block hashing to the zero digest is zero)
        }
        match put_block(store, d, block, enc, out)
            .with_context(|| format!("cannot store block {d}"))?
        {
            Some(n) => {
                st.new += 1;
                st.bytes_written += n as u64;
            }
            None => st.present += 1,
        }
    }
    Ok((ds, st))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const BS: usize = 4096;

    fn source_of(dir: &Path, data: &[u8]) -> Source {
        let p = dir.join("img");
        std::fs::write(&p, data).unwrap();
        Source::new(File::open(&p).unwrap(), &p).cached_first()
    }

    #[test]
    fn several_readers_list_every_block_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = BS * CHUNK_BLOCKS;
        let mut data = diskdump_agent::testdata::noise(chunk * 9 + 3 * BS, 5);
        data[chunk * 2..chunk * 3].fill(0); // a zero chunk among data
        let src = source_of(dir.path(), &data);
        let store = MemoryStore::new(BS);
        let (blocks, stats) = import_blocks(&store, &src, data.len() as u64, &|_| {}).unwrap();
        let want: Vec<Digest> = data.chunks(BS).map(Digest::of).collect();
        assert!(blocks == want, "the block list is the image's, in order");
        assert_eq!(stats.zero, CHUNK_BLOCKS as u64);
    }

    #[test]
    fn a_source_shorter_than_its_size_fails_naming_where_it_ended() {
        // 3.5 chunks on disk, 8 claimed: several readers fail at once, the
        // import fails, with a read error, whichever reader reports it.
        let dir = tempfile::tempdir().unwrap();
        let chunk = BS * CHUNK_BLOCKS;
        let data = diskdump_agent::testdata::noise(chunk * 3 + chunk / 2, 6);
        let src = source_of(dir.path(), &data);
        let store = MemoryStore::new(BS);
        for _ in 0..10 {
            let e = import_blocks(&store, &src, (chunk * 8) as u64, &|_| {})
                .expect_err("a short source fails the import");
            assert!(format!("{e:#}").contains("ended at byte"), "{e:#}");
        }
    }
}
