//! Deterministic test images: random, zero, repeated and compressible blocks.

use std::path::Path;

/// Incompressible and reproducible (the crates' one generator).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    diskdump_agent::testdata::noise(len, seed)
}

/// Text-like bytes (compress well, but each block distinct).
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "disk ",
        "dump ",
        "block ",
        "store ",
        "manifest ",
        "agent ",
        "hash ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(words[(i % 7) as usize].as_bytes());
        if i.is_multiple_of(97) {
            out.extend_from_slice(format!("{i}\n").as_bytes());
        }
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 3;
    }
    out.truncate(len);
    out
}

/// An image of `blocks` blocks of `bs` bytes mixing random, zero, repeated and
/// compressible blocks, plus a ragged tail of `tail` bytes.
pub fn mixed(bs: usize, blocks: usize, tail: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(bs * blocks + tail);
    for i in 0..blocks {
        match i % 6 {
            0 | 3 => v.extend(random_bytes(bs, seed * 1000 + i as u64)),
            1 => v.extend(vec![0u8; bs]),
            2 => v.extend(text_bytes(bs, seed * 1000 + i as u64)),
            4 => v.extend(random_bytes(bs, seed * 1000)), // repeats block 0
            _ => {
                let mut b = vec![0u8; bs];
                b[bs / 2] = 1; // almost zero: must not be taken for a zero block
                v.extend(b);
            }
        }
    }
    v.extend(random_bytes(tail, seed + 7));
    v
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write image");
}

/// Sets the file's length: a long sparse tail keeps a dump busy (the agent
/// zero-fills holes without reading them), and cutting it makes a re-run quick.
pub fn set_len(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Extends the file to `size` with one byte every 4 MiB: an import must read
/// and hash all of it (no 4 MiB chunk is a hole), on little disk.
pub fn slow_tail(path: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let start = f.metadata().unwrap().len().next_multiple_of(4 << 20);
    f.set_len(size).unwrap();
    for off in (start..size).step_by(4 << 20) {
        f.write_all_at(&[1], off).unwrap();
    }
}
