//! Objects in a bucket: the dumb layer under a store that lives on an object
//! store (docs/DESIGN.md §8). Keys and bytes only: put, ranged get, list,
//! delete. Packing, indexes and manifests live above it; the S3 client and
//! an in-memory twin for unit tests live below.

mod location;
mod memory;
pub mod pack;
pub mod packed;
mod s3;

pub use location::S3Location;
#[doc(hidden)]
pub use memory::check_contract;
pub use memory::MemoryObjects;
pub use s3::{S3Config, S3Objects};

use std::fmt;

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key relative to the store's prefix.
    pub key: String,
    pub size: u64,
    /// When it was written, by the service's clock (what gc compares ages
    /// with: no host's clock is trusted).
    pub modified: Option<std::time::SystemTime>,
}

/// What went wrong, naming the operation, bucket and key, so an operator can
/// tell a missing object from a network failure from a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub op: &'static str,
    /// `s3://bucket/prefix/key` (or the bucket alone).
    pub what: String,
    pub kind: ErrorKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object (or the bucket) does not exist.
    NotFound,
    /// Credentials refused or not allowed.
    Denied,
    /// The service could not be reached or kept failing (after retries).
    Unavailable,
    /// Anything else the service answered (a bad request, a malformed answer).
    Other,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.what, self.detail)
    }
}

impl std::error::Error for ObjectError {}

impl ObjectError {
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

/// A flat namespace of immutable-once-written objects. Implementations are
/// blocking and safe to share between threads.
pub trait ObjectStore: Send + Sync {
    /// `s3://bucket/prefix` or similar, for messages.
    fn describe(&self) -> String;
    /// Checks that the bucket is there and the credentials work.
    fn check(&self) -> Result<(), ObjectError>;
    /// Writes the whole object; returns once the service has stored it.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError>;
    /// Writes the first `len` bytes of `file` as the object, streamed where
    /// the service allows (a large manifest is never held in memory).
    fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> Result<(), ObjectError> {
        use std::os::unix::fs::FileExt;
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0).map_err(|e| ObjectError {
            op: "PUT",
            what: key.to_string(),
            kind: ErrorKind::Other,
            detail: format!("cannot read the local file: {e}"),
        })?;
        self.put(key, &data)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError>;
    /// `len` bytes from `offset`; fewer only if the object ends first.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError>;
    /// Removes the object; removing a missing one is not an error.
    fn delete(&self, key: &str) -> Result<(), ObjectError>;
}

/// Requests and bytes an object store was asked for: what a store costs in
/// requests (printed with `DISKDUMP_S3_STATS=1`, reported by the benchmark).
#[derive(Debug, Default)]
pub struct Counts {
    pub puts: std::sync::atomic::AtomicU64,
    pub put_bytes: std::sync::atomic::AtomicU64,
    pub gets: std::sync::atomic::AtomicU64,
    pub get_bytes: std::sync::atomic::AtomicU64,
    pub lists: std::sync::atomic::AtomicU64,
    pub deletes: std::sync::atomic::AtomicU64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        write!(
            f,
            "{} PUT ({} bytes), {} GET ({} bytes), {} LIST, {} DELETE",
            self.puts.load(Relaxed),
            self.put_bytes.load(Relaxed),
            self.gets.load(Relaxed),
            self.get_bytes.load(Relaxed),
            self.lists.load(Relaxed),
            self.deletes.load(Relaxed)
        )
    }
}

/// Counts what passes through to `inner`.
pub struct Counted<S> {
    pub inner: S,
    pub counts: std::sync::Arc<Counts>,
}

impl<S: ObjectStore> ObjectStore for Counted<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn check(&self) -> Result<(), ObjectError> {
        self.counts
            .lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.check()
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.puts.fetch_add(1, Relaxed);
        self.counts.put_bytes.fetch_add(data.len() as u64, Relaxed);
        self.inner.put(key, data)
    }
    fn put_file(&self, key: &str, file: &std::fs::File, len: u64) -> Result<(), ObjectError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.puts.fetch_add(1, Relaxed);
        self.counts.put_bytes.fetch_add(len, Relaxed);
        self.inner.put_file(key, file, len)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.gets.fetch_add(1, Relaxed);
        let r = self.inner.get(key)?;
        self.counts.get_bytes.fetch_add(r.len() as u64, Relaxed);
        Ok(r)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.counts.gets.fetch_add(1, Relaxed);
        let r = self.inner.get_range(key, offset, len)?;
        self.counts.get_bytes.fetch_add(r.len() as u64, Relaxed);
        Ok(r)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        self.counts
            .lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.counts
            .deletes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.delete(key)
    }
}
