//! One block as an LZ4 frame: the exact bytes a block file holds and the `lz4`
//! wire compression carries, so the storage side never recompresses.
//!
//! Written frames: independent blocks, content size, no checksums (the SHA-256
//! name already covers the content). Read frames: any valid LZ4 frame,
//! including Python's linked 64 KiB blocks, bounded by the store's block size.
//! Hand-framed over `lz4_flex::block` because a `FrameEncoder`/`FrameDecoder`
//! per block spends more time allocating buffers than compressing.

use lz4_flex::block::{
    compress_into_with_table, decompress_into_with_dict, get_maximum_output_size, CompressTable,
};
use std::fmt;
use twox_hash::XxHash32;

const MAGIC: u32 = 0x184D_2204;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE: u32 = 0x184D_2A50;
const MAX_FRAME_BLOCK: usize = 4 << 20;
/// FLG of the frames `Encoder` writes: version 01, independent blocks,
/// content size present, no checksums, no dictionary.
const PLAIN_FLG: u8 = 0b0110_1000;

/// Why a block file or wire block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad LZ4 frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

fn bad<T>(msg: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError(msg.into()))
}

/// Reusable compression state (the LZ4 hash table and scratch space), one per thread.
pub struct Encoder {
    table: CompressTable,
    scratch: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: CompressTable::large(),
            scratch: Vec::new(),
        }
    }
}

impl Encoder {
    /// Appends `raw` as a complete LZ4 frame to `out`.
    pub fn encode(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let (bd, max_block) = block_max_for(raw.len());
        let start = out.len();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(PLAIN_FLG);
        out.push(bd << 4);
        out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        let hc = (XxHash32::oneshot(0, &out[start + 4..]) >> 8) as u8;
        out.push(hc);
        for chunk in raw.chunks(max_block) {
            self.scratch.resize(get_maximum_output_size(chunk.len()), 0);
            let n = compress_into_with_table(chunk, &mut self.scratch, &mut self.table)
                .expect("output sized by get_maximum_output_size");
            if n < chunk.len() {
                out.extend_from_slice(&(n as u32).to_le_bytes());
                out.extend_from_slice(&self.scratch[..n]);
            } else {
                // Incompressible: store as is, flagged by the high bit.
                out.extend_from_slice(&(chunk.len() as u32 | 1 << 31).to_le_bytes());
                out.extend_from_slice(chunk);
            }
        }
        out.extend_from_slice(&0u32.to_le_bytes());
    }
}

/// Compresses one block into a new frame (convenience for tests and cold paths).
pub fn encode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 2 + 64);
    Encoder::default().encode(raw, &mut out);
    out
}

/// True if `frame` opens the way `Encoder`'s frames do: the LZ4 magic at once
/// (no skippable frame before it) and no checksums. Such a frame, once it
/// decodes to the right content, can be stored exactly as received: any LZ4
/// reader accepts it, and no checksum in it can disagree with that content.
pub fn is_plain(frame: &[u8]) -> bool {
    frame.len() > 4 && frame[..4] == MAGIC.to_le_bytes() && frame[4] == PLAIN_FLG
}

/// The frame descriptor's block-maximum code and size for a block of `len` bytes.
fn block_max_for(len: usize) -> (u8, usize) {
    match len {
        0..=0x1_0000 => (4, 0x1_0000),
        0x1_0001..=0x4_0000 => (5, 0x4_0000),
        0x4_0001..=0x10_0000 => (6, 0x10_0000),
        _ => (7, MAX_FRAME_BLOCK),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() - self.pos < n {
            return bad("truncated");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

/// A frame descriptor's fields that matter here.
struct Header {
    independent: bool,
    block_checksums: bool,
    content_checksum: bool,
    max_block: usize,
    content_size: Option<usize>,
}

/// Reads a frame descriptor (after the magic) and checks its checksum; the
/// one header parser for `decode` and `check_shape`.
fn read_header(r: &mut Reader, limit: usize) -> Result<Header, FrameError> {
    let desc_start = r.pos;
    let flg = r.take(1)?[0];
    let bd = r.take(1)?[0];
    if flg >> 6 != 1 {
        return bad("unsupported frame version");
    }
    if flg & 0b10 != 0 || bd & 0b1000_1111 != 0 {
        return bad("reserved bits set");
    }
    let max_block = match bd >> 4 {
        4 => 0x1_0000,
        5 => 0x4_0000,
        6 => 0x10_0000,
        7 => MAX_FRAME_BLOCK,
        _ => return bad("invalid block maximum size"),
    };
    let mut content_size = None;
    if flg & 0b1000 != 0 {
        let cs = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        if cs > limit as u64 {
            return bad(format!("content size {cs} exceeds the limit of {limit}"));
        }
        content_size = Some(cs as usize);
    }
    if flg & 1 != 0 {
        return bad("dictionary frames are not used by diskdump");
    }
    let hc = r.take(1)?[0];
    if hc != (XxHash32::oneshot(0, &r.buf[desc_start..r.pos - 1]) >> 8) as u8 {
        return bad("header checksum mismatch");
    }
    Ok(Header {
        independent: flg & 0b10_0000 != 0,
        block_checksums: flg & 0b1_0000 != 0,
        content_checksum: flg & 0b100 != 0,
        max_block,
        content_size,
    })
}

/// Decodes one LZ4 frame into `out` (replacing its content), refusing more
/// than `limit` bytes of output before writing them. Trailing data after the
/// frame is an error. On an error `out` holds unspecified bytes.
pub fn decode(frame: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut r = Reader { buf: frame, pos: 0 };
    let mut magic = r.u32()?;
    while magic & SKIPPABLE_MASK == SKIPPABLE {
        let n = r.u32()? as usize;
        r.take(n)?;
        magic = r.u32()?;
    }
    if magic != MAGIC {
        return bad("wrong magic number");
    }
    let Header {
        independent,
        block_checksums,
        content_checksum,
        max_block,
        content_size,
    } = read_header(&mut r, limit)?;
    // Not cleared first: every byte up to the final length is written
    // below, so a reused buffer of the right size costs no memset.
    out.resize(content_size.unwrap_or(limit).min(limit), 0);
    let mut len = 0usize;
    loop {
        let word = r.u32()?;
        if word == 0 {
            break;
        }
        let size = (word & 0x7FFF_FFFF) as usize;
        if size > max_block {
            return bad("block larger than the frame's maximum");
        }
        let data = r.take(size)?;
        if block_checksums {
            r.take(4)?;
        }
        if word & (1 << 31) != 0 {
            if len + size > out.len() {
                return bad(format!("decompresses to more than {limit} bytes"));
            }
            out[len..len + size].copy_from_slice(data);
            len += size;
        } else {
            // Linked blocks may refer back up to 64 KiB into earlier output.
            let (prev, rest) = out.split_at_mut(len);
            let dict = if independent {
                &[][..]
            } else {
                &prev[len.saturating_sub(0x1_0000)..]
            };
            let n = decompress_into_with_dict(data, rest, dict).map_err(|e| {
                if rest.len() < max_block {
                    FrameError(format!("decompresses to more than {limit} bytes ({e})"))
                } else {
                    FrameError(format!("corrupt block data: {e}"))
                }
            })?;
            len += n;
        }
    }
    if content_checksum {
        r.take(4)?;
    }
    if r.pos != frame.len() {
        return bad("trailing bytes after the frame");
    }
    if let Some(cs) = content_size {
        if cs != len {
            return bad(format!("content size says {cs} bytes, frame holds {len}"));
        }
    }
    out.truncate(len);
    Ok(())
}

/// Checks that a stored frame of `len` bytes is whole without reading its
/// data: the header (magic, flags, header checksum, content size within
/// `limit`), then every block's size word, chained from block to block until
/// the end mark, which must sit exactly at the end of the file (`len`).
/// `read_at(offset, buf)` fills as much of `buf` as the file has from
/// `offset` and returns how much. A frame written by `Encoder` (one block)
/// costs one read of its first bytes; the end mark itself is not read, its
/// position is what counts. Catches an empty, truncated, extended or
/// overwritten-at-the-start file (what a crash or a full disk leaves); it
/// cannot see damage inside the compressed data, which only decoding finds.
pub fn check_shape(
    len: u64,
    limit: usize,
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
) -> Result<(), FrameError> {
    let io = |e: std::io::Error| FrameError(format!("cannot read: {e}"));
    if len == 0 {
        return bad("empty file");
    }
    let mut head = [0u8; 32];
    let n = read_at(0, &mut head).map_err(io)?;
    let mut r = Reader {
        buf: &head[..n],
        pos: 0,
    };
    if r.u32()? != MAGIC {
        return bad("wrong magic number");
    }
    let h = read_header(&mut r, limit)?;
    let (block_checksums, max_block) = (h.block_checksums, h.max_block);
    let tail = if h.content_checksum { 4 } else { 0 };
    // Each block holds at most `max_block` bytes of content, so a frame of
    // `limit` bytes has a bounded number of them.
    let max_blocks = limit / max_block.min(limit.max(1)) + 2;
    let mut pos = r.pos as u64;
    let mut word = [0u8; 4];
    for _ in 0..=max_blocks {
        if pos + 4 + tail == len {
            // Where the end mark must be. (Its bytes are not read: a file of
            // exactly this length with another word there would need a block
            // size word that also chains to here, and decoding finds it.)
            return Ok(());
        }
        if pos + 4 + tail > len {
            return bad("truncated");
        }
        let got = if pos + 4 <= n as u64 {
            word.copy_from_slice(&head[pos as usize..pos as usize + 4]);
            4
        } else {
            read_at(pos, &mut word).map_err(io)?
        };
        if got < 4 {
            return bad("truncated");
        }
        let w = u32::from_le_bytes(word);
        if w == 0 {
            return bad("trailing bytes after the frame");
        }
        let size = (w & 0x7FFF_FFFF) as u64;
        if size as usize > max_block {
            return bad("block larger than the frame's maximum");
        }
        pos += 4 + size + if block_checksums { 4 } else { 0 };
    }
    bad("more blocks than the content size allows")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize, seed: u32) -> Vec<u8> {
        // Half text-like (compressible), half pseudo-random.
        let noise = crate::testdata::noise(len, seed.into());
        (0..len)
            .map(|i| match (i / 4096) % 2 {
                0 => b"diskdump block "[i % 15],
                _ => noise[i],
            })
            .collect()
    }

    fn shape(file: &[u8], limit: usize) -> Result<(), FrameError> {
        check_shape(file.len() as u64, limit, &mut |off, buf| {
            let start = (off as usize).min(file.len());
            let n = buf.len().min(file.len() - start);
            buf[..n].copy_from_slice(&file[start..start + n]);
            Ok(n)
        })
    }

    #[test]
    fn shape_check_finds_empty_truncated_and_extended_frames() {
        for len in [0, 1, 100, 65536, 131072, 300_000] {
            let raw = sample(len, 7 + len as u32);
            let frame = encode(&raw);
            shape(&frame, 1 << 20).unwrap();
            assert!(shape(&[], 1 << 20).is_err());
            for cut in [1, 4, 7, frame.len() / 2, frame.len() - 1] {
                assert!(shape(&frame[..cut], 1 << 20).is_err(), "{len} cut at {cut}");
            }
            let mut longer = frame.clone();
            longer.push(0);
            assert!(shape(&longer, 1 << 20).is_err(), "{len} + 1 byte");
            let mut garbled = frame.clone();
            garbled[..8].copy_from_slice(&[0; 8]);
            assert!(shape(&garbled, 1 << 20).is_err());
        }
        // Content beyond the store's block size is refused from the header.
        assert!(shape(&encode(&sample(300_000, 1)), 131072).is_err());
        // Python's frames (linked 64 KiB blocks, content checksum) pass.
        let raw = sample(131072, 3);
        let mut py = Vec::new();
        let mut info = lz4_flex::frame::FrameInfo::new();
        info.block_mode = lz4_flex::frame::BlockMode::Linked;
        info.content_checksum = true;
        let mut w = lz4_flex::frame::FrameEncoder::with_frame_info(info, &mut py);
        std::io::Write::write_all(&mut w, &raw).unwrap();
        w.finish().unwrap();
        shape(&py, 131072).unwrap();
        assert!(shape(&py[..py.len() - 2], 131072).is_err());
    }

    #[test]
    fn round_trips_through_lz4_flex_frame_decoder() {
        for len in [0, 1, 100, 65536, 65537, 131072, 300_000, 5 << 20] {
            let raw = sample(len, len as u32);
            let frame = encode(&raw);
            let mut theirs = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&frame[..])
                .read_to_end(&mut theirs)
                .unwrap();
            assert_eq!(theirs, raw, "len {len}");
            let mut ours = Vec::new();
            decode(&frame, len.max(1), &mut ours).unwrap();
            assert_eq!(ours, raw);
            // A reused buffer, longer or shorter, with other bytes in it.
            for stale in [len + 100, len / 2] {
                let mut reused = vec![0xEE; stale];
                decode(&frame, len.max(1), &mut reused).unwrap();
                assert_eq!(reused, raw, "len {len}, reused {stale}");
            }
        }
    }

    #[test]
    fn reads_linked_frames_with_checksums() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
        use std::io::Write;
        let raw = sample(131072, 7);
        let info = FrameInfo::new()
            .block_mode(BlockMode::Linked)
            .block_size(BlockSize::Max64KB)
            .block_checksums(true)
            .content_checksum(true);
        let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(&raw).unwrap();
        let frame = enc.finish().unwrap();
        let mut out = Vec::new();
        decode(&frame, 131072, &mut out).unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn refuses_output_beyond_limit() {
        let raw = vec![7u8; 131073];
        let frame = encode(&raw);
        let mut out = Vec::new();
        let err = decode(&frame, 131072, &mut out).unwrap_err();
        assert!(err.0.contains("exceeds the limit"), "{err}");
        // Without a content size the bound still holds.
        use lz4_flex::frame::FrameEncoder;
        use std::io::Write;
        let mut enc = FrameEncoder::new(Vec::new());
        enc.write_all(&raw).unwrap();
        let frame = enc.finish().unwrap();
        let err = decode(&frame, 131072, &mut out).unwrap_err();
        assert!(err.0.contains("more than 131072"), "{err}");
    }

    #[test]
    fn plain_frames_are_ours() {
        use lz4_flex::frame::{FrameEncoder, FrameInfo};
        use std::io::Write;
        assert!(is_plain(&encode(b"abc")));
        assert!(is_plain(&encode(&[])));
        let mut enc =
            FrameEncoder::with_frame_info(FrameInfo::new().content_checksum(true), Vec::new());
        enc.write_all(b"abc").unwrap();
        assert!(!is_plain(&enc.finish().unwrap()));
        let mut skippable = vec![0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0];
        skippable.extend(encode(b"abc"));
        assert!(!is_plain(&skippable));
        assert!(!is_plain(b"\x04\x22"));
    }

    #[test]
    fn rejects_damage() {
        let raw = sample(131072, 3);
        let frame = encode(&raw);
        let mut out = Vec::new();
        for cut in [0, 3, 5, 14, frame.len() / 2, frame.len() - 1] {
            assert!(
                decode(&frame[..cut], 131072, &mut out).is_err(),
                "cut {cut}"
            );
        }
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(decode(&trailing, 131072, &mut out).is_err());
        let mut hdr = frame.clone();
        hdr[6] ^= 1;
        assert!(decode(&hdr, 131072, &mut out).is_err());
        // Flipping a byte in the payload either fails or yields other bytes;
        // callers catch the latter with the SHA-256 check.
        let mut body = frame.clone();
        let mid = body.len() / 2;
        body[mid] ^= 0x55;
        if decode(&body, 131072, &mut out).is_ok() {
            assert_ne!(out, raw);
        }
    }
}
