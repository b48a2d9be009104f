//! `restore MANIFEST [-o FILE]`: a sequential read of the image through
//! `ImageReader` (the same read path as `mount`), decompressing ahead on
//! several threads. To a regular file zero blocks become holes; to a device
//! or stdout they are written. Nothing is destroyed unless asked: an existing
//! file needs `--force`, a block device `--force` and an exclusive open (so
//! never a mounted one), and a terminal is no place for an image.

use super::{loader_threads, open_store, resolve, usage};
use crate::digest::is_zero;
use crate::image::{BlockCache, ImageReader, Prefetcher};
use crate::progress;
use crate::store::rename_noreplace;
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Blocks decompressed ahead of the writer.
const READ_AHEAD: usize = 128;

/// Where the image goes, decided (and checked) before any work.
enum Target {
    /// stdout, which is not a terminal.
    Stdout,
    /// A regular file, new or (with --force) replaced: written to a temp
    /// name beside it and renamed.
    File { path: PathBuf, replace: bool },
    /// A block device, opened exclusively (with --force).
    BlockDevice { path: PathBuf, dev: File },
    /// A character device or FIFO (`/dev/null`, a named pipe): written as a stream.
    Stream { path: PathBuf, dev: File },
}

fn choose_target(output: Option<&Path>, force: bool) -> Result<Target> {
    let Some(path) = output else {
        // SAFETY: isatty on fd 1 has no preconditions.
        if unsafe { libc::isatty(1) } == 1 {
            return Err(usage(
                "stdout is a terminal: use -o FILE or a pipe (diskdump restore NAME | ...)",
            ));
        }
        return Ok(Target::Stdout);
    };
    let d = path.display();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Target::File {
                path: path.to_path_buf(),
                replace: false,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot use {d}")),
    };
    let ft = meta.file_type();
    if ft.is_block_device() {
        if !force {
            return Err(usage(format!(
                "{d} is a block device: writing the image destroys what is on it; pass --force to do so"
            )));
        }
        // O_EXCL on a block device: refused (EBUSY) while it is mounted or
        // held by anyone else who opened it exclusively.
        let dev = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => anyhow::anyhow!(
                    "{d} is in use (mounted, or part of a RAID, LVM or another exclusive user); refusing to write over it"
                ),
                _ => anyhow::Error::new(e).context(format!("cannot open {d}")),
            })?;
        return Ok(Target::BlockDevice {
            path: path.to_path_buf(),
            dev,
        });
    }
    if ft.is_char_device() || ft.is_fifo() {
        let dev = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {d}"))?;
        return Ok(Target::Stream {
            path: path.to_path_buf(),
            dev,
        });
    }
    if meta.is_dir() {
        return Err(usage(format!("{d} is a directory; give a file name")));
    }
    if !force {
        return Err(usage(format!("{d} exists; pass --force to replace it")));
    }
    Ok(Target::File {
        path: path.to_path_buf(),
        replace: true,
    })
}

/// A run of unreadable blocks `--salvage` wrote as zeros.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadRange {
    pub offset: u64,
    pub length: u64,
    /// First block of the run, and how many.
    pub block: usize,
    pub blocks: usize,
    /// Why the first block could not be read.
    pub error: String,
}

pub fn run(
    store_dir: &Path,
    arg: &str,
    output: Option<&Path>,
    force: bool,
    salvage: bool,
) -> Result<u8> {
    if crate::output::json() && output.is_none() {
        return Err(usage(
            "--json needs -o FILE: without it stdout carries the image",
        ));
    }
    let target = choose_target(output, force)?;
    let store = open_store(store_dir)?;
    let r = resolve(&*store, arg)?;
    let label = r.label.clone();
    let bs = store.block_size();
    if r.manifest.block_size != bs {
        anyhow::bail!(
            "{label} uses block size {}, the store {bs}",
            r.manifest.block_size
        );
    }
    let cache = BlockCache::new(READ_AHEAD * bs * 4);
    let reader = ImageReader::new(Arc::new(r.manifest), store, cache)
        .with_prefetch(Prefetcher::new(loader_threads()), READ_AHEAD);
    let started = Instant::now();
    let size = reader.size();
    let path = match &target {
        Target::Stdout => None,
        Target::File { path, .. }
        | Target::BlockDevice { path, .. }
        | Target::Stream { path, .. } => Some(path.clone()),
    };
    // Some(list) with --salvage: unreadable blocks become zeros, listed here.
    let mut bad: Option<Vec<BadRange>> = salvage.then(Vec::new);
    let ctx = || match &path {
        Some(p) => format!("cannot restore {label} to {}", p.display()),
        None => format!("cannot restore {label}"),
    };
    match target {
        Target::Stdout => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            write_image(&reader, &mut Destination::Stream(&mut out), &mut bad).with_context(ctx)?;
            out.flush()?;
        }
        Target::BlockDevice { mut dev, .. } => {
            let room = dev.seek(SeekFrom::End(0)).with_context(ctx)?;
            if room < size {
                return Err(anyhow::anyhow!(
                    "the device holds {room} bytes, the image {size}"
                ))
                .with_context(ctx);
            }
            dev.seek(SeekFrom::Start(0)).with_context(ctx)?;
            // A device keeps its old contents under holes: write every byte.
            write_image(&reader, &mut Destination::Stream(&mut dev), &mut bad).with_context(ctx)?;
            dev.sync_all().with_context(ctx)?;
        }
        Target::Stream { mut dev, .. } => {
            write_image(&reader, &mut Destination::Stream(&mut dev), &mut bad).with_context(ctx)?;
            dev.flush().with_context(ctx)?;
        }
        Target::File { path, replace } => {
            restore_to_file(&reader, &path, replace, &mut bad).with_context(ctx)?;
        }
    }
    let took = started.elapsed();
    let bad = bad.unwrap_or_default();
    for r in &bad {
        eprintln!(
            "diskdump: bad range: offset {} length {} (blocks {}-{}), written as zeros: {}",
            r.offset,
            r.length,
            r.block,
            r.block + r.blocks - 1,
            r.error
        );
    }
    if crate::output::json() {
        crate::output::emit(&serde_json::json!({
            "manifest": label,
            "output": path.as_ref().map(|p| p.display().to_string()),
            "size": size,
            "seconds": took.as_secs_f64(),
            "bad_ranges": bad,
        }))?;
    } else if let Some(p) = &path {
        eprintln!(
            "restored {label} to {}: {} in {} ({})",
            p.display(),
            indicatif::HumanBytes(size),
            progress::secs(took),
            progress::rate(size, took)
        );
    }
    if bad.is_empty() {
        return Ok(crate::cli::exit::SUCCESS);
    }
    let blocks: usize = bad.iter().map(|r| r.blocks).sum();
    eprintln!(
        "diskdump: {label}: {blocks} unreadable blocks in {} ranges were written as zeros",
        bad.len()
    );
    Ok(crate::cli::exit::FAILURE)
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
enum Destination<'a> {
    Sparse(&'a File),
    Stream(&'a mut dyn Write),
}

/// Writes beside the target and renames, so a failure leaves no partial
/// file and never destroys an existing one; the file is 0600 (a disk image
/// holds everything on the disk), whatever the umask.
fn restore_to_file(
    reader: &ImageReader,
    path: &Path,
    replace: bool,
    bad: &mut Option<Vec<BadRange>>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| -> Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        write_image(reader, &mut Destination::Sparse(&f), bad)?;
        f.set_len(reader.size())?;
        // On disk before it takes the name: a crash leaves the old file or
        // the whole new one, never a renamed file with missing data.
        f.sync_all()?;
        if replace {
            fs::rename(&tmp, path)?;
        } else {
            // Created by someone else meanwhile: still not ours to replace.
            rename_noreplace(&tmp, path).map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => usage(format!(
                    "{} exists; pass --force to replace it",
                    path.display()
                )),
                _ => e.into(),
            })?;
        }
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

/// Writes every block in order. With `bad` (salvage), a block that cannot
/// be read is zeros and joins the list instead of stopping the restore.
fn write_image(
    reader: &ImageReader,
    dest: &mut Destination,
    bad: &mut Option<Vec<BadRange>>,
) -> Result<()> {
    let m = reader.manifest();
    let bar = progress::bytes_bar(reader.size(), "restore");
    let zeros = vec![0u8; m.block_size];
    let mut offset = 0u64;
    // Write-out started up to `started`, finished up to `done`.
    let (mut done, mut started) = (0u64, 0u64);
    for idx in 0..m.blocks.len() {
        crate::signals::check()?;
        let len = m.block_len(idx);
        // Written straight from the cached block: no copy through a buffer.
        let got = match reader.next_block(idx) {
            Ok(Some(b)) if b.len() < len => Err(reader.short_block(idx, b.len())),
            r => r,
        };
        let data = match (got, bad.as_mut()) {
            (Ok(d), _) => d,
            (Err(e), None) => return Err(e.into()),
            (Err(e), Some(list)) => {
                note_bad(list, idx, offset, len as u64, e.to_string());
                None // zeros: a hole in a file, written to a stream
            }
        };
        match (&mut *dest, &data) {
            (Destination::Sparse(f), Some(b)) => {
                for (from, to) in data_runs(&b[..len], PAGE) {
                    f.write_all_at(&b[from..to], offset + from as u64)?;
                }
            }
            (Destination::Sparse(_), None) => {}
            (Destination::Stream(w), Some(b)) => w.write_all(&b[..len])?,
            (Destination::Stream(w), None) => w.write_all(&zeros[..len])?,
        }
        offset += len as u64;
        bar.inc(len as u64);
        if let Destination::Sparse(f) = dest {
            if offset - started >= WRITE_BEHIND {
                write_behind(f, done, started, offset);
                (done, started) = (started, offset);
            }
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// How much of a restored file is written before its write-out starts.
const WRITE_BEHIND: u64 = 32 << 20;

/// Starts writing `from..to` of `f` to disk and waits for the window
/// before it (`prev..from`): the disk works while blocks are decoded, the
/// final fsync has little left, and dirty pages stay bounded (~2 windows)
/// instead of piling up to the kernel's thresholds (10% of memory). A
/// hint: errors are left to the fsync at the end.
fn write_behind(f: &File, prev: u64, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: plain syscalls on a file descriptor we own, no memory passed.
    unsafe {
        libc::sync_file_range(
            fd,
            from as i64,
            (to - from) as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
        if from > prev {
            libc::sync_file_range(
                fd,
                prev as i64,
                (from - prev) as i64,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
    }
}

/// Adds block `idx` to the bad ranges, extending the last one if adjacent.
fn note_bad(list: &mut Vec<BadRange>, idx: usize, offset: u64, len: u64, error: String) {
    if let Some(r) = list.last_mut() {
        if r.block + r.blocks == idx {
            r.blocks += 1;
            r.length += len;
            return;
        }
    }
    list.push(BadRange {
        offset,
        length: len,
        block: idx,
        blocks: 1,
        error,
    });
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
