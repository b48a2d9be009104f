//! `restore MANIFEST [-o FILE]`: a sequential read of the image through
//! `ImageReader` (the same read path as `mount`), decompressing ahead on
//! several threads. To a regular file zero blocks become holes; to a device
//! or stdout they are written. Nothing is destroyed unless asked: an existing
//! file needs `--force`, a block device `--force` and an exclusive open (so
//! never a mounted one), and a terminal is no place for an image.

use super::{loader_threads, open_store, resolve, usage};
use crate::image::{BlockCache, ImageReader, Prefetcher};
use crate::progress;
use crate::store::{rename_noreplace, Store};
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

pub fn run(store_dir: &Path, arg: &str, output: Option<&Path>, force: bool) -> Result<u8> {
    let target = choose_target(output, force)?;
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
    let path = match &target {
        Target::Stdout => None,
        Target::File { path, .. }
        | Target::BlockDevice { path, .. }
        | Target::Stream { path, .. } => Some(path.clone()),
    };
    let ctx = || match &path {
        Some(p) => format!("cannot restore {label} to {}", p.display()),
        None => format!("cannot restore {label}"),
    };
    match target {
        Target::Stdout => {
            let stdout = io::stdout();
            let mut out = stdout.lock();
            write_image(&reader, &mut Destination::Stream(&mut out)).with_context(ctx)?;
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
            write_image(&reader, &mut Destination::Stream(&mut dev)).with_context(ctx)?;
            dev.sync_all().with_context(ctx)?;
        }
        Target::Stream { mut dev, .. } => {
            write_image(&reader, &mut Destination::Stream(&mut dev)).with_context(ctx)?;
            dev.flush().with_context(ctx)?;
        }
        Target::File { path, replace } => {
            restore_to_file(&reader, &path, replace).with_context(ctx)?;
        }
    }
    if let Some(p) = path {
        let took = started.elapsed();
        eprintln!(
            "restored {label} to {}: {} in {} ({})",
            p.display(),
            indicatif::HumanBytes(size),
            progress::secs(took),
            progress::rate(size, took)
        );
    }
    Ok(0)
}

/// Where the bytes go: a file we may leave holes in, or anything else.
enum Destination<'a> {
    Sparse(&'a File),
    Stream(&'a mut dyn Write),
}

/// Writes beside the target and renames, so a failure leaves no partial
/// file and never destroys an existing one; the file is 0600 (a disk image
/// holds everything on the disk), whatever the umask.
fn restore_to_file(reader: &ImageReader, path: &Path, replace: bool) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| -> Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        write_image(reader, &mut Destination::Sparse(&f))?;
        f.set_len(reader.size())?;
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

fn write_image(reader: &ImageReader, dest: &mut Destination) -> Result<()> {
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
        match (&mut *dest, &data) {
            (Destination::Sparse(f), Some(b)) => f.write_all_at(&b[..len], offset)?,
            (Destination::Sparse(_), None) => {}
            (Destination::Stream(w), Some(b)) => w.write_all(&b[..len])?,
            (Destination::Stream(w), None) => w.write_all(&zeros[..len])?,
        }
        offset += len as u64;
        bar.inc(len as u64);
    }
    bar.finish_and_clear();
    Ok(())
}
