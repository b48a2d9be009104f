//! A dump's hash list on disk while it arrives: 32 bytes a block in an
//! unlinked temp file, so a 10 TiB disk's 80 M hashes (2.5 GiB) never sit in
//! the storage host's memory; the manifest is then written from it.

use crate::digest::Digest;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Hashes being appended.
pub struct HashSpool {
    out: BufWriter<File>,
    count: u64,
}

/// A finished list, read back as often as needed.
#[derive(Debug)]
pub struct SpooledHashes {
    file: File,
    count: u64,
}

/// An anonymous file in `dir` (O_TMPFILE where the filesystem has it, else
/// created 0600 and unlinked at once): nothing is left behind by a crash.
pub(crate) fn anonymous_file(dir: &Path) -> io::Result<File> {
    let tmpfile = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    if let Ok(f) = tmpfile {
        return Ok(f);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!(".diskdump-hashes.{}.{nanos}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

impl HashSpool {
    /// A new spool in `$TMPDIR` (or /tmp).
    pub fn new() -> io::Result<HashSpool> {
        HashSpool::new_in(&std::env::temp_dir())
    }

    pub fn new_in(dir: &Path) -> io::Result<HashSpool> {
        Ok(HashSpool {
            out: BufWriter::with_capacity(1 << 20, anonymous_file(dir)?),
            count: 0,
        })
    }

    pub fn push(&mut self, d: &Digest) -> io::Result<()> {
        self.out.write_all(&d.0)?;
        self.count += 1;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(self) -> io::Result<SpooledHashes> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(SpooledHashes {
            file,
            count: self.count,
        })
    }
}

impl SpooledHashes {
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The hashes in order, read from the start.
    pub fn iter(&self) -> io::Result<impl Iterator<Item = io::Result<Digest>> + '_> {
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut left = self.count;
        Ok(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let mut d = [0u8; 32];
            Some(r.read_exact(&mut d).map(|_| Digest(d)))
        }))
    }

    /// All of them in memory (for what needs the list as a whole).
    pub fn to_vec(&self) -> io::Result<Vec<Digest>> {
        self.iter()?.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn spooled_hashes_come_back_in_order_and_render_as_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = HashSpool::new_in(dir.path()).unwrap();
        let ds: Vec<Digest> = (0..100_000u32)
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect();
        for d in &ds {
            s.push(d).unwrap();
        }
        let h = s.finish().unwrap();
        assert_eq!(h.len(), ds.len() as u64);
        assert_eq!(h.to_vec().unwrap(), ds);
        assert_eq!(h.to_vec().unwrap(), ds, "read twice");
        // Nothing visible in the directory: the file is anonymous.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut m = Manifest {
            source: "h:/dev/x".into(),
            date: "2026-04-24T00:00:00Z".into(),
            block_size: 4096,
            total_size: ds.len() as u64 * 4096,
            blocks: Vec::new(),
            new_blocks: Some(3),
        };
        let mut streamed = Vec::new();
        m.write_spooled(&mut streamed, &h).unwrap();
        m.blocks = ds;
        assert_eq!(String::from_utf8(streamed).unwrap(), m.render());
    }
}
