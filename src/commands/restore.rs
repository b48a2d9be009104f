//! `restore MANIFEST [-o FILE]`: a sequential read of the image through
//! `ImageReader` (the same read path as `mount`), decompressing ahead on
//! several threads. To a regular file zero blocks become holes; to a device
//! or stdout they are written.

use super::{loader_threads, open_store, resolve};
use crate::digest::is_zero;
use crate::image::{BlockCache, ImageReader, Prefetcher};
use crate::progress;
use crate::store::Store;
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Blocks decompressed ahead of the writer.
const READ_AHEAD: usize = 128;

pub fn run(store_dir: &Path, arg: &str, output: Option<&Path>) -> Result<u8> {
    let store = open_store(store_dir)?;
    let r = resolve(&store, arg)?;
    let label = r.label.clone();
    let bs = store.block_size();
    if r.manifest.block_size != bs {
        anyhow::bail!(
            "{label} uses block size {}, the store {bs}",
            r.manifest.block_size
        );
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let cache = BlockCache::new(READ_AHEAD * bs * 4);
    let reader = ImageReader::new(Arc::new(r.manifest), store, cache)
        .with_prefetch(Prefetcher::new(loader_threads()), READ_AHEAD);
    let started = Instant::now();
    let size = reader.size();
    match output {
        None => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            write_image(&reader, &mut Sink::Stream(&mut out))
                .with_context(|| format!("cannot restore {label}"))?;
            out.flush()?;
        }
        Some(path) => {
            restore_to_path(&reader, path)
                .with_context(|| format!("cannot restore {label} to {}", path.display()))?;
            let took = started.elapsed();
            eprintln!(
                "restored {label} to {}: {} in {} ({})",
                path.display(),
                indicatif::HumanBytes(size),
                progress::secs(took),
                progress::rate(size, took)
            );
        }
    }
    Ok(0)
}

/// Granularity of holes in a restored file: a filesystem page, so zero
/// pages inside non-zero blocks stay unallocated as they were in the source.
const PAGE: usize = 4096;

/// The runs `(from, to)` of `buf` holding non-zero `page`-sized pieces (the
/// last one may be shorter); all-zero pieces between them are left out.
fn data_runs(buf: &[u8], page: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, piece) in buf.chunks(page).enumerate() {
        if is_zero(piece) {
            continue;
        }
        let (from, to) = (i * page, i * page + piece.len());
        match runs.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => runs.push((from, to)),
        }
    }
    runs
}

/// Where the bytes go: a file we may leave holes in, or anything else.
enum Sink<'a> {
    Sparse(&'a File),
    Stream(&'a mut dyn Write),
}

fn restore_to_path(reader: &ImageReader, path: &Path) -> Result<()> {
    let is_device = fs::metadata(path)
        .map(|m| m.file_type().is_block_device() || m.file_type().is_char_device());
    if let Ok(true) = is_device {
        // A device keeps its old contents under holes: write every byte.
        let mut dev = OpenOptions::new().write(true).open(path)?;
        write_image(reader, &mut Sink::Stream(&mut dev))?;
        dev.sync_all()?;
        return Ok(());
    }
    // Write beside the target and rename, so a failure leaves no partial file
    // and never destroys an existing one.
    let tmp = tmp_path(path);
    let result = (|| -> Result<()> {
        let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        write_image(reader, &mut Sink::Sparse(&f))?;
        f.set_len(reader.size())?;
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".diskdump-partial.{}", std::process::id()));
    PathBuf::from(s)
}

fn write_image(reader: &ImageReader, sink: &mut Sink) -> Result<()> {
    let m = reader.manifest();
    let bar = progress::bytes_bar(reader.size(), "restore");
    let zeros = vec![0u8; m.block_size];
    let mut offset = 0u64;
    for idx in 0..m.blocks.len() {
        crate::signals::check()?;
        let len = m.block_len(idx);
        // Written straight from the cached block: no copy through a buffer.
        let data = match reader.next_block(idx)? {
            Some(b) if b.len() < len => {
                return Err(reader.short_block(idx, b.len()).into());
            }
            Some(b) => Some(b),
            None => None,
        };
        match (&mut *sink, &data) {
            (Sink::Sparse(f), Some(b)) => {
                for (from, to) in data_runs(&b[..len], PAGE) {
                    f.write_all_at(&b[from..to], offset + from as u64)?;
                }
            }
            (Sink::Sparse(_), None) => {}
            (Sink::Stream(w), Some(b)) => w.write_all(&b[..len])?,
            (Sink::Stream(w), None) => w.write_all(&zeros[..len])?,
        }
        offset += len as u64;
        bar.inc(len as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::data_runs;

    #[test]
    fn data_runs_skip_zero_pages_and_merge_neighbours() {
        let mut b = vec![0u8; 10 * 8 + 3];
        assert!(data_runs(&b, 8).is_empty());
        b[0] = 1; // page 0
        b[17] = 1; // page 2
        b[31] = 1; // page 3, merged with 2
        b[80] = 1; // the short last piece
        assert_eq!(data_runs(&b, 8), vec![(0, 8), (16, 32), (80, 83)]);
        assert_eq!(data_runs(&[5u8; 20], 8), vec![(0, 20)]);
    }
}
