//! Test data shared by the crate's unit tests: a small image whose blocks
//! cover every case (text, zero, random, a ragged tail) and a store holding it.

use crate::digest::Digest;
use crate::manifest::Manifest;
use crate::store::{put_block, Store};
use diskdump_agent::blockfmt::Encoder;

pub const BS: usize = 4096;

/// text, zero, random, zero, other text, ragged tail of 1000 bytes
pub fn image() -> Vec<u8> {
    let mut v: Vec<u8> = (0..BS).map(|i| b"hello world "[i % 12]).collect();
    v.extend(vec![0u8; BS]);
    v.extend(diskdump_agent::testdata::noise(BS, 12345));
    v.extend(vec![0u8; BS]);
    v.extend((0..BS).map(|i| b"other text "[i % 11]));
    v.extend((0..1000).map(|i| i as u8));
    v
}

/// Stores `data`'s blocks; returns their digests in order.
pub fn put_blocks(store: &dyn Store, data: &[u8]) -> Vec<Digest> {
    let (mut enc, mut buf) = (Encoder::default(), Vec::new());
    data.chunks(BS)
        .map(|c| {
            let d = Digest::of(c);
            put_block(store, &d, c, &mut enc, &mut buf).unwrap();
            d
        })
        .collect()
}

/// A manifest of `data`, its blocks put into `store`.
pub fn manifest(store: &dyn Store, date: &str, data: &[u8]) -> Manifest {
    Manifest {
        source: "h:/dev/x".into(),
        date: date.into(),
        block_size: BS,
        total_size: data.len() as u64,
        blocks: put_blocks(store, data),
        new_blocks: None,
    }
}
