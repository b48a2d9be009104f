//! A bounded on-disk cache of block frames fetched from an object store, so
//! an image read again (a mounted disk, a second restore) does not go back
//! to the network. Frames are content-named and checked by SHA-256 on every
//! read like any stored block, so a damaged cache file is an error the
//! caller recovers from by fetching again, never wrong data.
//!
//! Eviction: when the files exceed the bound, the least recently used (by
//! mtime, which a hit refreshes) go until 90% of the bound is left.

use crate::digest::Digest;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

fn crc(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    used: AtomicU64,
    evicting: Mutex<()>,
    seq: AtomicU64,
}

impl DiskCache {
    /// Opens (creating, 0700) the cache in `dir`, bounded to `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut used = 0;
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().contains(".tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            used += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            limit,
            used: AtomicU64::new(used),
            evicting: Mutex::new(()),
            seq: AtomicU64::new(0),
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.to_hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// The cached frame of `d`, if any (unverified: the caller hashes it).
    pub fn get(&self, d: &Digest, buf: &mut Vec<u8>) -> bool {
        let Ok(mut f) = File::open(self.path(d)) else {
            return false;
        };
        buf.clear();
        if f.read_to_end(buf).is_err() || buf.len() < 5 {
            return false;
        }
        let n = buf.len() - 4;
        if crc(&buf[..n]).to_le_bytes() != buf[n..] {
            self.remove(d);
            return false;
        }
        buf.truncate(n);
        // Recently used: evicted last.
        let _ = f.set_modified(SystemTime::now());
        true
    }

    /// Forgets a damaged file.
    fn remove(&self, d: &Digest) {
        if let Ok(m) = fs::metadata(self.path(d)) {
            if fs::remove_file(self.path(d)).is_ok() {
                self.used
                    .fetch_sub(m.len().min(self.used()), Ordering::Relaxed);
            }
        }
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Keeps a frame (best effort: a full disk only costs a fetch later).
    pub fn put(&self, d: &Digest, frame: &[u8]) {
        if self.limit == 0 || frame.len() as u64 > self.limit / 4 {
            return;
        }
        let path = self.path(d);
        if path.exists() {
            return;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{}.tmp.{}.{n}", d.to_hex(), std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(frame)?;
                f.write_all(&crc(frame).to_le_bytes())
            })
            .and_then(|_| fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        if self.used.fetch_add(frame.len() as u64, Ordering::Relaxed) + frame.len() as u64
            > self.limit
        {
            self.evict();
        }
    }

    fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else {
            return; // another thread is at it
        };
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut used: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let goal = self.limit / 10 * 9;
        for (_, len, p) in files {
            if used <= goal {
                break;
            }
            match fs::remove_file(&p) {
                Ok(()) => used -= len,
                Err(e) if e.kind() == ErrorKind::NotFound => used -= len,
                Err(_) => {}
            }
        }
        self.used.store(used, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 40_000).unwrap();
        let mut buf = Vec::new();
        let frames: Vec<(Digest, Vec<u8>)> = (0..20u8)
            .map(|i| {
                let f = vec![i; 5000];
                (Digest::of(&f), f)
            })
            .collect();
        for (d, f) in &frames {
            c.put(d, f);
            assert!(c.get(d, &mut buf));
            assert_eq!(&buf, f);
        }
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 40_000, "{on_disk}");
        assert!(c.get(&frames[19].0, &mut buf), "the newest stays");
        // A damaged file is a miss, and goes.
        let p = dir.path().join(frames[19].0.to_hex());
        let mut bytes = fs::read(&p).unwrap();
        bytes[100] ^= 1;
        fs::write(&p, bytes).unwrap();
        assert!(!c.get(&frames[19].0, &mut buf));
        assert!(!p.exists());
    }
}
