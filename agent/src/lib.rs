//! The parts of diskdump that run on both ends of a dump: block digests, the
//! block codec (one LZ4 frame per block, the store's on-disk format), the wire
//! protocol, and the agent loop that runs on the remote host. Kept to std,
//! sha2, lz4_flex and flate2 so the agent builds as a small static binary.

pub mod blockfmt;
pub mod digest;

pub use digest::{is_zero, Digest, DEFAULT_BLOCK_SIZE};
