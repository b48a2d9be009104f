//! The parts of diskdump that run on both ends of a dump: block digests, the
//! block codec (one LZ4 frame per block, the store's on-disk format), the wire
//! protocol, and the agent loop that runs on the remote host. Kept to std,
//! libc, sha2, lz4_flex and flate2 so the agent builds as a small static binary.

pub mod agent;
pub mod args;
pub mod blockfmt;
pub mod digest;
pub mod proto;
pub mod source;
mod work;

pub use digest::{is_zero, Digest, DEFAULT_BLOCK_SIZE};

/// Deterministic incompressible bytes for tests.
#[cfg(test)]
mod testdata {
    pub fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }
}
