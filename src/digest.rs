//! Block digests. Defined in the agent crate so both ends of a dump share one
//! implementation; re-exported here for the storage side.

pub use diskdump_agent::digest::{is_zero, BadDigest, Digest, DEFAULT_BLOCK_SIZE};
