//! Messages to bytes and back, and framing: the header check and a blocking
//! reader that takes its bytes in any split. The length is checked
//! against the cap as soon as the header is there, before any buffer is sized
//! for the payload.

use super::*;
use crate::digest::Digest;
use std::io::{self, Read};

/// Length (4) and type (1).
pub const HEADER_LEN: usize = 5;

/// Checks a frame header; returns the type and the payload length.
fn parse_header(h: &[u8], max: usize) -> Result<(u8, usize), ProtocolError> {
    let len = u32::from_le_bytes(h[..4].try_into().expect("4-byte length")) as usize;
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > max {
        return Err(ProtocolError::FrameTooLarge {
            len: len as u64,
            max,
        });
    }
    if !known_type(h[4]) {
        return Err(ProtocolError::UnknownType(h[4]));
    }
    Ok((h[4], len - 1))
}

/// The header of a Block frame carrying `data_len` bytes, so a writer can send
/// the data from where it already is instead of copying it into a message.
pub fn block_header(digest: &Digest, data_len: usize) -> [u8; HEADER_LEN + 32] {
    let mut h = [0u8; HEADER_LEN + 32];
    let len = (1 + 32 + data_len) as u32;
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4] = BLOCK;
    h[5..].copy_from_slice(&digest.0);
    h
}

/// Reads one message, blocking. `Ok(None)` is a clean end of stream (at a
/// frame boundary); an end inside a frame is `Truncated`. Block data is read
/// straight into its own buffer.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Message>, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (typ, len) = parse_header(&header, max)?;
    if typ == BLOCK {
        if len < 32 {
            return Err(ProtocolError::ShortPayload("Block"));
        }
        let mut digest = [0u8; 32];
        read_full(r, &mut digest)?;
        let mut data = vec![0u8; len - 32];
        read_full(r, &mut data)?;
        return Ok(Some(Message::Block(super::Block {
            digest: Digest(digest),
            data,
        })));
    }
    let mut payload = vec![0u8; len];
    read_full(r, &mut payload)?;
    Message::decode(typ, &payload).map(Some)
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
