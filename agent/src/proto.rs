//! The wire protocol between the agent and the receiver (DESIGN §2). Pure:
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
use std::io::{self, Read};
use std::str::FromStr;

mod codec;
pub use codec::{block_header, read_frame, Decoder, HEADER_LEN};

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

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

impl Message {
    fn type_code(&self) -> u8 {
        match self {
            Message::Hello(_) => HELLO,
            Message::Batch(_) => BATCH,
            Message::Block(_) => BLOCK,
            Message::Done(_) => DONE,
            Message::Error(_) => ERROR,
            Message::Need(_) => NEED,
        }
    }

    /// Appends this message as one complete frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(self.type_code());
        match self {
            Message::Hello(h) => {
                for v in [h.version, h.block_size, h.batch_size, h.window] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.push(h.compression.code());
                out.extend_from_slice(&h.size.to_le_bytes());
                put_str(out, &h.hostname);
                put_str(out, &h.source);
            }
            Message::Batch(b) => {
                out.extend_from_slice(&b.seq.to_le_bytes());
                out.extend_from_slice(&(b.entries.len() as u32).to_le_bytes());
                for e in &b.entries {
                    match e {
                        Entry::Zero => out.push(0),
                        Entry::Hash(d) => {
                            out.push(1);
                            out.extend_from_slice(&d.0);
                        }
                    }
                }
            }
            Message::Block(b) => {
                out.extend_from_slice(&b.digest.0);
                out.extend_from_slice(&b.data);
            }
            Message::Done(d) => {
                out.extend_from_slice(&d.blocks.to_le_bytes());
                out.extend_from_slice(&d.size.to_le_bytes());
            }
            Message::Error(m) => put_str(out, m),
            Message::Need(n) => {
                out.extend_from_slice(&n.seq.to_le_bytes());
                out.extend_from_slice(&n.count.to_le_bytes());
                let bitmap_start = out.len();
                out.resize(bitmap_start + (n.count as usize).div_ceil(8), 0);
                for &i in &n.indices {
                    out[bitmap_start + i as usize / 8] |= 1 << (i % 8);
                }
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes the payload of a frame of type `typ`.
    pub fn decode(typ: u8, payload: &[u8]) -> Result<Message, ProtocolError> {
        let name = type_name(typ);
        let mut r = Fields { buf: payload, name };
        let msg = match typ {
            HELLO => Message::Hello(decode_hello(&mut r)?),
            BATCH => Message::Batch(decode_batch(&mut r)?),
            BLOCK => Message::Block(Block {
                digest: Digest(r.array()?),
                data: r.take(r.buf.len())?.to_vec(),
            }),
            DONE => Message::Done(Done {
                blocks: r.u64()?,
                size: r.u64()?,
            }),
            ERROR => Message::Error(r.string()?),
            NEED => Message::Need(decode_need(&mut r)?),
            t => return Err(ProtocolError::UnknownType(t)),
        };
        if !r.buf.is_empty() {
            return Err(ProtocolError::TrailingBytes(name));
        }
        Ok(msg)
    }
}

fn decode_hello(r: &mut Fields) -> Result<Hello, ProtocolError> {
    let version = r.u32()?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(version));
    }
    let (block_size, batch_size, window) = (r.u32()?, r.u32()?, r.u32()?);
    let code = r.array::<1>()?[0];
    let compression = Compression::from_code(code)
        .ok_or_else(|| ProtocolError::Invalid(format!("unknown compression code {code}")))?;
    Ok(Hello {
        version,
        block_size,
        batch_size,
        window,
        compression,
        size: r.u64()?,
        hostname: r.string()?,
        source: r.string()?,
    })
}

fn decode_batch(r: &mut Fields) -> Result<Batch, ProtocolError> {
    let seq = r.u64()?;
    let count = r.u32()? as usize;
    if count > MAX_BATCH_SIZE {
        return Err(ProtocolError::Invalid(format!(
            "Batch of {count} entries exceeds the maximum of {MAX_BATCH_SIZE}"
        )));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        match r.array::<1>()?[0] {
            0 => entries.push(Entry::Zero),
            1 => entries.push(Entry::Hash(Digest(r.array()?))),
            t => {
                return Err(ProtocolError::Invalid(format!(
                    "unknown Batch entry tag {t}"
                )))
            }
        }
    }
    Ok(Batch { seq, entries })
}

fn decode_need(r: &mut Fields) -> Result<Need, ProtocolError> {
    let seq = r.u64()?;
    let count = r.u32()?;
    let bitmap = r.take((count as usize).div_ceil(8))?;
    let mut indices = Vec::new();
    for (byte_idx, &byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                indices.push((byte_idx * 8 + bit) as u32);
            }
        }
    }
    if indices.last().is_some_and(|&i| i >= count) {
        return Err(ProtocolError::Invalid(format!(
            "Need for batch {seq} sets bits beyond its {count} entries"
        )));
    }
    Ok(Need {
        seq,
        count,
        indices,
    })
}

/// A cursor over a payload that names the message in its errors.
struct Fields<'a> {
    buf: &'a [u8],
    name: &'static str,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::ShortPayload(self.name));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, ProtocolError> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        if len > MAX_TEXT {
            return Err(ProtocolError::Invalid(format!(
                "{} frame carries a string of {len} bytes (limit {MAX_TEXT})",
                self.name
            )));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ProtocolError::Invalid(format!("{} frame carries invalid UTF-8", self.name))
        })
    }
}

/// Reads exactly `buf.len()` bytes; an early end of stream is `Truncated`.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ProtocolError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
        _ => ProtocolError::Io(e),
    })
}

#[cfg(test)]
mod tests;
