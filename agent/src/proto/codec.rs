//! Framing: the header check, a streaming decoder (bytes in any split) and a
//! blocking reader. The length is checked against the cap as soon as the
//! header is there, before any buffer is sized for the payload.

use super::{known_type, read_full, Message, ProtocolError, BLOCK};
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

/// A push-style decoder: `feed` bytes as they arrive, in any split, then
/// `poll` until it returns `None`. Call `poll` after every `feed`: that is
/// where an oversized length is refused, before its payload is buffered.
/// After an error the stream is unusable.
pub struct Decoder {
    max: usize,
    buf: Vec<u8>,
    /// Start of the first undecoded byte in `buf`.
    pos: usize,
}

impl Decoder {
    pub fn new(max_frame: usize) -> Decoder {
        Decoder {
            max: max_frame,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        // Drop decoded bytes once they are most of the buffer, so it does not
        // grow with the stream, and compaction stays amortized O(1) per byte.
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one has arrived.
    pub fn poll(&mut self) -> Result<Option<Message>, ProtocolError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let (typ, len) = parse_header(avail, self.max)?;
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = Message::decode(typ, &avail[HEADER_LEN..HEADER_LEN + len])?;
        self.pos += HEADER_LEN + len;
        Ok(Some(msg))
    }

    /// Bytes received but not yet decoded: non-zero at end of stream means
    /// the stream was cut inside a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}
