//! The parts of diskdump that run on both ends of a dump: block digests, the
//! block codec (one LZ4 frame per block, the store's on-disk format), the wire
//! protocol, and the agent loop that runs on the remote host. Kept to std,
//! libc, sha2, lz4_flex and flate2 so the agent builds as a small static binary.

pub mod agent;
pub mod args;
pub mod blockfmt;
pub mod digest;
mod pipeline;
pub mod proto;
pub mod source;

pub use digest::{is_zero, Digest, DEFAULT_BLOCK_SIZE};

/// The one pseudo-random generator for test data, in this crate so that
/// both crates' unit and integration tests share it (xorshift64: fast,
/// incompressible, reproducible from its seed). Not used by the agent itself.
#[doc(hidden)]
pub mod testdata {
    pub fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }
}
