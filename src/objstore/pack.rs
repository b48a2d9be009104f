//! Pack objects: many block frames in one object, so an object store sees
//! tens of objects per disk instead of tens of thousands (docs/DESIGN.md §8).
//! Pure: bytes in, bytes out; the store above decides names and uploads.
//!
//! ```text
//! pack    := frame* index trailer
//! frame   := one block's LZ4 frame, exactly the bytes a local block file holds
//! index   := count × (SHA-256 of the raw block [32] | offset u64 LE | length u32 LE)
//! trailer := SHA-256 of index [32] | count u32 LE | "DDPACK01"
//! ```
//!
//! The index at the end lets a reader fetch it with one ranged GET of the
//! last `TRAILER_LEN + count × ENTRY_LEN` bytes and rebuild a lost local
//! index from the packs alone; its checksum makes a damaged index an error
//! rather than wrong offsets. Frames are still checked by SHA-256 on read.

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::fmt;

pub const MAGIC: &[u8; 8] = b"DDPACK01";
pub const ENTRY_LEN: usize = 32 + 8 + 4;
pub const TRAILER_LEN: usize = 32 + 4 + 8;
/// More entries than this in one pack is a damaged or hostile trailer.
pub const MAX_ENTRIES: u32 = 1 << 20;

/// Where one block's frame is in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub digest: Digest,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    TooShort(u64),
    BadMagic,
    TooManyEntries(u32),
    IndexChecksum,
    /// An entry that points outside the frames or overlaps another.
    BadEntry(usize),
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::TooShort(n) => write!(f, "{n} bytes is too short for a pack"),
            PackError::BadMagic => write!(f, "not a diskdump pack (no DDPACK01 trailer)"),
            PackError::TooManyEntries(n) => write!(f, "the trailer claims {n} blocks"),
            PackError::IndexChecksum => write!(f, "the pack index does not match its checksum"),
            PackError::BadEntry(i) => write!(f, "index entry {i} points outside the frames"),
        }
    }
}

impl std::error::Error for PackError {}

/// Collects frames for one pack.
#[derive(Default)]
pub struct PackBuilder {
    data: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        PackBuilder::default()
    }

    /// Appends one block's frame. The caller keeps digests unique per pack.
    pub fn push(&mut self, digest: Digest, frame: &[u8]) {
        self.entries.push(PackEntry {
            digest,
            offset: self.data.len() as u64,
            len: frame.len() as u32,
        });
        self.data.extend_from_slice(frame);
    }

    /// Bytes of frames so far (what decides when a pack is full).
    pub fn frames_len(&self) -> usize {
        self.data.len()
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// The frames so far, back to back.
    pub fn frames(&self) -> &[u8] {
        &self.data
    }

    /// The whole pack object as it would be now, leaving the builder as is
    /// (its frames stay readable while the copy uploads).
    pub fn to_pack(&self) -> (Vec<u8>, Vec<PackEntry>) {
        let mut b = PackBuilder {
            data: Vec::with_capacity(self.data.len() + self.entries.len() * ENTRY_LEN + 64),
            entries: self.entries.clone(),
        };
        b.data.extend_from_slice(&self.data);
        b.finish()
    }

    /// The whole pack object and its entries.
    pub fn finish(mut self) -> (Vec<u8>, Vec<PackEntry>) {
        let index = encode_index(&self.entries);
        let sum = Sha256::digest(&index);
        self.data.extend_from_slice(&index);
        self.data.extend_from_slice(&sum);
        self.data
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.data.extend_from_slice(MAGIC);
        (self.data, self.entries)
    }
}

fn encode_index(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.extend_from_slice(&e.digest.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

/// From the last `TRAILER_LEN` bytes: how many bytes at the end of the pack
/// (index and trailer) the reader must fetch for `read_index`.
pub fn tail_len(trailer: &[u8], pack_len: u64) -> Result<u64, PackError> {
    if trailer.len() < TRAILER_LEN || pack_len < TRAILER_LEN as u64 {
        return Err(PackError::TooShort(pack_len.min(trailer.len() as u64)));
    }
    let t = &trailer[trailer.len() - TRAILER_LEN..];
    if &t[36..] != MAGIC {
        return Err(PackError::BadMagic);
    }
    let count = u32::from_le_bytes(t[32..36].try_into().expect("4 bytes"));
    if count > MAX_ENTRIES {
        return Err(PackError::TooManyEntries(count));
    }
    let need = TRAILER_LEN as u64 + u64::from(count) * ENTRY_LEN as u64;
    if need > pack_len {
        return Err(PackError::TooShort(pack_len));
    }
    Ok(need)
}

/// Parses the index from the pack's last `tail_len` bytes (`tail`), checking
/// its checksum and that every entry lies within the frames, in order,
/// without overlap.
pub fn read_index(tail: &[u8], pack_len: u64) -> Result<Vec<PackEntry>, PackError> {
    let need = tail_len(tail, pack_len)? as usize;
    let tail = &tail[tail.len() - need..];
    let (index, trailer) = tail.split_at(need - TRAILER_LEN);
    if Sha256::digest(index).as_slice() != &trailer[..32] {
        return Err(PackError::IndexChecksum);
    }
    let frames_end = pack_len - need as u64;
    let mut entries = Vec::with_capacity(index.len() / ENTRY_LEN);
    let mut next = 0u64;
    for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
        let entry = PackEntry {
            digest: Digest(e[..32].try_into().expect("32 bytes")),
            offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
        };
        let end = entry.offset.checked_add(u64::from(entry.len));
        if entry.offset < next || end.is_none_or(|end| end > frames_end) {
            return Err(PackError::BadEntry(i));
        }
        next = entry.offset + u64::from(entry.len);
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: usize) -> (Vec<u8>, Vec<PackEntry>, Vec<Vec<u8>>) {
        let mut b = PackBuilder::new();
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| diskdump_agent::testdata::noise(100 + i * 37, i as u64))
            .collect();
        for f in &frames {
            b.push(Digest::of(f), f);
        }
        let (bytes, entries) = b.finish();
        (bytes, entries, frames)
    }

    #[test]
    fn frames_and_index_round_trip() {
        for n in [0, 1, 5, 300] {
            let (bytes, entries, frames) = pack(n);
            let len = bytes.len() as u64;
            let need = tail_len(&bytes[bytes.len() - TRAILER_LEN..], len).unwrap();
            assert_eq!(need as usize, TRAILER_LEN + n * ENTRY_LEN);
            let got = read_index(&bytes[bytes.len() - need as usize..], len).unwrap();
            assert_eq!(got, entries);
            for (e, f) in got.iter().zip(&frames) {
                let at = e.offset as usize;
                assert_eq!(&bytes[at..at + e.len as usize], &f[..]);
                assert_eq!(e.digest, Digest::of(f));
            }
            // A longer tail than needed works too.
            assert_eq!(read_index(&bytes, len).unwrap(), entries);
        }
    }

    #[test]
    fn damage_is_an_error_not_wrong_offsets() {
        let (bytes, _, _) = pack(10);
        let len = bytes.len() as u64;
        let mut flipped = bytes.clone();
        let at = bytes.len() - TRAILER_LEN - 3; // inside the index
        flipped[at] ^= 1;
        assert_eq!(read_index(&flipped, len), Err(PackError::IndexChecksum));
        let mut magic = bytes.clone();
        let last = magic.len() - 1;
        magic[last] = b'X';
        assert_eq!(read_index(&magic, len), Err(PackError::BadMagic));
        assert!(matches!(
            read_index(&bytes[..20], 20),
            Err(PackError::TooShort(_))
        ));
        // A trailer claiming more entries than the pack can hold.
        let mut huge = bytes.clone();
        let c = huge.len() - 12;
        huge[c..c + 4].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(read_index(&huge, len), Err(PackError::TooShort(len)));
        huge[c..c + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            read_index(&huge, len),
            Err(PackError::TooManyEntries(u32::MAX))
        );
    }

    #[test]
    fn an_entry_outside_the_frames_is_refused_even_with_a_valid_checksum() {
        let mut b = PackBuilder::new();
        b.push(Digest::of(b"a"), b"aaaa");
        let (mut bytes, mut entries) = b.finish();
        entries[0].len = 1000;
        // Rebuild index and checksum around the bad entry.
        let index = encode_index(&entries);
        let start = bytes.len() - TRAILER_LEN - ENTRY_LEN;
        bytes.splice(start..start + ENTRY_LEN, index.iter().copied());
        let sum = Sha256::digest(&index);
        let s = bytes.len() - TRAILER_LEN;
        bytes[s..s + 32].copy_from_slice(&sum);
        let len = bytes.len() as u64;
        assert_eq!(read_index(&bytes, len), Err(PackError::BadEntry(0)));
    }
}
