//! The wire protocol between the agent and the receiver (docs/DESIGN.md §3.2). Pure:
//! messages to bytes and back; I/O is the caller's, except `read_frame`, a
//! blocking convenience over any `Read`.
//!
//! A frame is `u32 LE length | u8 type | payload`, where the length counts the
//! type byte and the payload. The length is checked against a cap derived
//! from the block size before anything is allocated, and the type before the
//! payload is read. Integers are little-endian; strings are `u16 length | UTF-8`.
//!
//! | type | message | direction        | payload |
//! |------|---------|------------------|---------|
//! | 1    | Hello   | agent → storage  | version u32, block_size u32, batch_size u32, window u32, compression u8, size u64, hostname str, source str |
//! | 2    | Batch   | agent → storage  | seq u64, count u32, count × (0 = zero block \| 1 + 32-byte SHA-256) |
//! | 3    | Block   | agent → storage  | SHA-256 [32], the block compressed as negotiated (rest of the frame) |
//! | 4    | Done    | agent → storage  | blocks u64, size u64 |
//! | 5    | Error   | agent → storage  | message str |
//! | 6    | Need    | storage → agent  | seq u64, count u32, bitmap of ceil(count/8) bytes (bit i = entry i, LSB first) |
//!
//! `version` comes first in Hello so a peer of another version is named as
//! such, whatever the rest of its Hello looks like.

use crate::digest::Digest;
use std::fmt;
use std::io;
use std::str::FromStr;

mod codec;
pub use codec::{block_header, read_frame, HEADER_LEN};

pub const PROTOCOL_VERSION: u32 = 1;
/// Blocks larger than this are refused by both ends (the store's maximum too).
pub const MAX_BLOCK_SIZE: usize = 16 << 20;
/// Keeps a Batch frame (33 bytes per entry) far below the smallest frame cap.
pub const MAX_BATCH_SIZE: usize = 4096;
pub const MAX_WINDOW: usize = 64;
pub const DEFAULT_BATCH_SIZE: usize = 80;
pub const DEFAULT_WINDOW: usize = 8;
/// Longest hostname, source path or error message carried.
pub const MAX_TEXT: usize = 4096;

const HELLO: u8 = 1;
const BATCH: u8 = 2;
const BLOCK: u8 = 3;
const DONE: u8 = 4;
const ERROR: u8 = 5;
const NEED: u8 = 6;

/// The largest frame either end accepts for a given block size: a block that
/// did not compress, plus framing and compression overhead, at least 1 MiB.
pub fn max_frame_len(block_size: usize) -> usize {
    (block_size + block_size / 64 + (64 << 10)).max(1 << 20)
}

/// Checks the parameters both ends must agree on, with a message for a human.
pub fn check_params(block_size: usize, batch_size: usize, window: usize) -> Result<(), String> {
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(format!(
            "block size {block_size} is not between 1 and {MAX_BLOCK_SIZE}"
        ));
    }
    if batch_size == 0 || batch_size > MAX_BATCH_SIZE {
        return Err(format!(
            "batch size {batch_size} is not between 1 and {MAX_BATCH_SIZE}"
        ));
    }
    if window == 0 || window > MAX_WINDOW {
        return Err(format!("window {window} is not between 1 and {MAX_WINDOW}"));
    }
    Ok(())
}

/// How Block frames carry their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// One LZ4 frame per block (`blockfmt`), exactly the bytes the store keeps.
    Lz4,
    /// zlib (level 1) of the raw block: smaller on thin links, re-encoded by the receiver.
    Zlib,
    None,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::Lz4 => 0,
            Compression::Zlib => 1,
            Compression::None => 2,
        }
    }

    fn from_code(c: u8) -> Option<Compression> {
        [Compression::Lz4, Compression::Zlib, Compression::None]
            .into_iter()
            .find(|m| m.code() == c)
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zlib => "zlib",
            Compression::None => "none",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Compression, String> {
        match s {
            "lz4" => Ok(Compression::Lz4),
            "zlib" => Ok(Compression::Zlib),
            "none" => Ok(Compression::None),
            _ => Err(format!("unknown compression {s:?} (use lz4, zlib or none)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub hostname: String,
    /// The SOURCE argument as the agent saw it.
    pub source: String,
    /// Bytes the agent will read: the source's size when it started.
    pub size: u64,
    pub block_size: u32,
    /// Blocks per Batch (all but the last batch are full).
    pub batch_size: u32,
    /// Most batches the agent has announced and not yet finished sending.
    pub window: u32,
    pub compression: Compression,
}

/// One block of a batch, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A full-size all-zero block: flagged, never hashed, never sent.
    Zero,
    Hash(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Batches are numbered from 0; batch `seq` starts at block `seq * batch_size`.
    pub seq: u64,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub digest: Digest,
    /// The block compressed as the Hello said.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub blocks: u64,
    pub size: u64,
}

/// The entries of batch `seq` (which has `count` entries) the agent must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub seq: u64,
    pub count: u32,
    /// Ascending, each below `count`.
    pub indices: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Batch(Batch),
    Block(Block),
    Done(Done),
    Error(String),
    Need(Need),
}

/// Why bytes on the wire are not a valid frame or message.
#[derive(Debug)]
pub enum ProtocolError {
    Io(io::Error),
    FrameTooLarge {
        len: u64,
        max: usize,
    },
    EmptyFrame,
    UnknownType(u8),
    /// The stream ended inside a frame.
    Truncated,
    /// The payload ends before the message's fields do.
    ShortPayload(&'static str),
    TrailingBytes(&'static str),
    /// The peer speaks another protocol version.
    Version(u32),
    Invalid(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            Io(e) => write!(f, "{e}"),
            FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            EmptyFrame => f.write_str("frame of length 0 (no type byte)"),
            UnknownType(t) => write!(f, "unknown frame type {t}"),
            Truncated => f.write_str("stream ended in the middle of a frame (truncated)"),
            ShortPayload(m) => write!(f, "{m} frame is shorter than its fields (truncated payload)"),
            TrailingBytes(m) => write!(f, "{m} frame has trailing bytes after its fields"),
            Version(v) => write!(
                f,
                "protocol version {v} is not supported (this side speaks version {PROTOCOL_VERSION})"
            ),
            Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

fn known_type(t: u8) -> bool {
    (HELLO..=NEED).contains(&t)
}

fn type_name(t: u8) -> &'static str {
    ["?", "Hello", "Batch", "Block", "Done", "Error", "Need"]
        .get(t as usize)
        .copied()
        .unwrap_or("?")
}

#[cfg(test)]
mod tests;
