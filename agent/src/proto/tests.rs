use super::*;
use crate::testdata::noise;
use std::io::{self, Read};

const MAX: usize = 1 << 20;

fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            hostname: "server01".into(),
            source: "/dev/sda".into(),
            size: (5 << 30) + 17,
            block_size: 131072,
            batch_size: 80,
            window: 8,
            compression: Compression::Zlib,
        }),
        Message::Batch(Batch {
            seq: 7,
            entries: vec![
                Entry::Zero,
                Entry::Hash(Digest::of(b"a")),
                Entry::Zero,
                Entry::Hash(Digest::of(b"b")),
            ],
        }),
        Message::Batch(Batch {
            seq: 0,
            entries: vec![],
        }),
        Message::Block(Block {
            digest: Digest::of(b"x"),
            data: (0..5000u32).map(|i| i as u8).collect(),
        }),
        Message::Block(Block {
            digest: Digest::of(b""),
            data: vec![],
        }),
        Message::Done(Done {
            blocks: 40961,
            size: u64::MAX,
        }),
        Message::Error("cannot open /dev/sdz: No such file or directory".into()),
        Message::Need(Need {
            seq: 3,
            count: 80,
            indices: vec![0, 7, 8, 9, 79],
        }),
        Message::Need(Need {
            seq: 4,
            count: 9,
            indices: vec![],
        }),
    ]
}

fn frame(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    out
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        let bytes = frame(&m);
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len + 4, bytes.len());
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r, MAX).unwrap(), Some(m));
        assert_eq!(read_frame(&mut r, MAX).unwrap(), None);
    }
}

/// Hands out its bytes in two pieces cut at `cut`, or one byte per read
/// (`cut` None): how the input arrives must not matter to `read_frame`.
struct Trickle<'a> {
    data: &'a [u8],
    pos: usize,
    cut: Option<usize>,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let end = match self.cut {
            Some(c) if self.pos < c => c,
            Some(_) => self.data.len(),
            None => self.pos + 1,
        };
        let n = (end.min(self.data.len()) - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_all(mut r: impl Read) -> Vec<Message> {
    let mut got = Vec::new();
    while let Some(m) = read_frame(&mut r, MAX).unwrap() {
        got.push(m);
    }
    got
}

#[test]
fn a_stream_split_at_every_byte_decodes() {
    let stream: Vec<u8> = samples().iter().flat_map(frame).collect();
    for split in 0..=stream.len() {
        let r = Trickle {
            data: &stream,
            pos: 0,
            cut: Some(split),
        };
        assert_eq!(read_all(r), samples(), "split at {split}");
    }
    let r = Trickle {
        data: &stream,
        pos: 0,
        cut: None,
    };
    assert_eq!(read_all(r), samples(), "one byte at a time");
}

/// A reader that fails the test if anyone reads past the header.
struct HeaderOnly<'a>(&'a [u8]);

impl Read for HeaderOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        assert!(!self.0.is_empty(), "read past the header");
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn an_oversized_length_is_rejected_before_allocating() {
    for len in [u32::MAX, MAX as u32 + 1] {
        let mut h = len.to_le_bytes().to_vec();
        h.push(BLOCK);
        let err = read_frame(&mut HeaderOnly(&h), MAX).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }
    // Exactly the cap is fine.
    let m = Message::Block(Block {
        digest: Digest::of(b""),
        data: vec![1; MAX - 33],
    });
    assert_eq!(read_frame(&mut &frame(&m)[..], MAX).unwrap(), Some(m));
}

/// The agent's zlib output for incompressible data is tested where it is made
/// (`pipeline.rs`); the LZ4 frame and the largest Batch are checked here.
#[test]
fn the_cap_fits_an_incompressible_block_and_a_full_batch() {
    assert_eq!(max_frame_len(4096), 1 << 20);
    for bs in [4096, 131072, 4 << 20, MAX_BLOCK_SIZE] {
        let lz4 = crate::blockfmt::encode(&noise(bs, 1)).len();
        assert!(1 + 32 + lz4 <= max_frame_len(bs), "lz4 {bs}");
    }
    let batch = Batch {
        seq: u64::MAX,
        entries: vec![Entry::Hash(Digest::of(b"")); MAX_BATCH_SIZE],
    };
    assert!(frame(&Message::Batch(batch)).len() - 4 <= max_frame_len(4096));
}

#[test]
fn unknown_type_and_empty_frames_are_rejected() {
    let err = read_frame(&mut HeaderOnly(&[1, 0, 0, 0, 99]), MAX).unwrap_err();
    assert!(matches!(err, ProtocolError::UnknownType(99)));
    let err = read_frame(&mut HeaderOnly(&[1, 0, 0, 0, 0]), MAX).unwrap_err();
    assert_eq!(err.to_string(), "unknown frame type 0");
    let err = read_frame(&mut &[0u8, 0, 0, 0, 1][..], MAX).unwrap_err();
    assert!(matches!(err, ProtocolError::EmptyFrame));
}

#[test]
fn truncated_payloads_and_streams_are_rejected() {
    for m in samples() {
        let bytes = frame(&m);
        // The frame's length claims more than the stream holds.
        for cut in 1..bytes.len() {
            let err = read_frame(&mut &bytes[..cut], MAX).unwrap_err();
            assert!(
                matches!(err, ProtocolError::Truncated),
                "{m:?} cut {cut}: {err}"
            );
        }
        // A consistent length but a payload shorter than the message's fields.
        let payload = &bytes[HEADER_LEN..];
        for cut in 0..payload.len() {
            if matches!(m, Message::Block(_)) && cut >= 32 {
                continue; // any data length is a valid block
            }
            let r = Message::decode(bytes[4], &payload[..cut]);
            assert!(r.is_err(), "{m:?} payload cut at {cut} decoded");
        }
        let mut long = payload.to_vec();
        long.push(0);
        if !matches!(m, Message::Block(_)) {
            let err = Message::decode(bytes[4], &long).unwrap_err();
            assert!(matches!(err, ProtocolError::TrailingBytes(_)), "{err}");
        }
    }
}

#[test]
fn another_version_is_named_before_the_rest_is_parsed() {
    let mut bytes = frame(&samples()[0]);
    bytes[5..9].copy_from_slice(&2u32.to_le_bytes());
    bytes.truncate(9); // a v2 Hello may look like anything after its version
    bytes[..4].copy_from_slice(&5u32.to_le_bytes());
    let err = read_frame(&mut &bytes[..], MAX).unwrap_err();
    assert!(matches!(err, ProtocolError::Version(2)));
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn malformed_fields_are_rejected() {
    // Unknown entry tag, unknown compression, bits past a Need's count,
    // a string that is not UTF-8.
    let mut batch = frame(&samples()[1]);
    batch[HEADER_LEN + 12] = 2;
    assert!(read_frame(&mut &batch[..], MAX).is_err());
    let mut hello = frame(&samples()[0]);
    hello[HEADER_LEN + 16] = 9;
    assert!(read_frame(&mut &hello[..], MAX).is_err());
    let mut need = frame(&samples()[8]);
    let last = need.len() - 1;
    need[last] |= 0x80; // bit 15 of a 9-entry batch
    assert!(read_frame(&mut &need[..], MAX).is_err());
    let mut err = frame(&Message::Error("ab".into()));
    let last = err.len() - 1;
    err[last] = 0xff;
    assert!(read_frame(&mut &err[..], MAX).is_err());
    let huge = Batch {
        seq: 0,
        entries: vec![Entry::Zero; MAX_BATCH_SIZE + 1],
    };
    let bytes = frame(&Message::Batch(huge));
    assert!(read_frame(&mut &bytes[..], MAX).is_err());
}

#[test]
fn long_text_is_cut_at_a_char_boundary() {
    let long = "é".repeat(MAX_TEXT);
    let bytes = frame(&Message::Error(long));
    match read_frame(&mut &bytes[..], MAX).unwrap() {
        Some(Message::Error(s)) => assert_eq!(s.len(), MAX_TEXT),
        other => panic!("{other:?}"),
    }
}

#[test]
fn block_header_matches_the_encoder() {
    let b = Block {
        digest: Digest::of(b"q"),
        data: vec![9; 1234],
    };
    let bytes = frame(&Message::Block(b.clone()));
    assert_eq!(block_header(&b.digest, 1234)[..], bytes[..HEADER_LEN + 32]);
}

#[test]
fn parameters_and_compression_names() {
    assert!(check_params(131072, 80, 8).is_ok());
    assert!(check_params(0, 80, 8).is_err());
    assert!(check_params(MAX_BLOCK_SIZE + 1, 80, 8).is_err());
    assert!(check_params(131072, 0, 8).is_err());
    assert!(check_params(131072, MAX_BATCH_SIZE + 1, 8).is_err());
    assert!(check_params(131072, 80, 0).is_err());
    for c in [Compression::Lz4, Compression::Zlib, Compression::None] {
        assert_eq!(c.name().parse::<Compression>(), Ok(c));
        assert_eq!(Compression::from_code(c.code()), Some(c));
    }
    assert!("gzip".parse::<Compression>().is_err());
}
