//! Property tests (bounded, for CI): the frame decoder and the LZ4 block
//! decoder never panic on arbitrary input and round-trip every valid value.

use diskdump_agent::blockfmt;
use diskdump_agent::proto::{
    read_frame, Batch, Block, Compression, Done, Entry, Hello, Message, Need, ProtocolError,
    MAX_TEXT, PROTOCOL_VERSION,
};
use diskdump_agent::Digest;
use proptest::prelude::*;

const MAX_FRAME: usize = 1 << 20;

/// Hands out its bytes in two reads cut at `split` (mod the length), each
/// read as short as the cut makes it: input may arrive in any split.
struct Split<'a> {
    data: &'a [u8],
    cut: usize,
    pos: usize,
}

impl<'a> Split<'a> {
    fn new(data: &'a [u8], split: usize) -> Split<'a> {
        let cut = split % (data.len() + 1);
        Split { data, cut, pos: 0 }
    }
}

impl std::io::Read for Split<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let end = if self.pos < self.cut {
            self.cut
        } else {
            self.data.len()
        };
        let n = (end - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect())
}

fn message() -> impl Strategy<Value = Message> {
    let compression = prop_oneof![
        Just(Compression::Lz4),
        Just(Compression::Zlib),
        Just(Compression::None)
    ];
    let hello = (any::<[u32; 3]>(), compression, any::<u64>(), text(), text()).prop_map(
        |([block_size, batch_size, window], compression, size, h, s)| {
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                hostname: h,
                source: s,
                size,
                block_size,
                batch_size,
                window,
                compression,
            })
        },
    );
    let entry = prop_oneof![Just(Entry::Zero), digest().prop_map(Entry::Hash)];
    let batch = (any::<u64>(), proptest::collection::vec(entry, 0..50))
        .prop_map(|(seq, entries)| Message::Batch(Batch { seq, entries }));
    let block = (digest(), proptest::collection::vec(any::<u8>(), 0..2000))
        .prop_map(|(digest, data)| Message::Block(Block { digest, data }));
    let done = any::<(u64, u64)>().prop_map(|(blocks, size)| Message::Done(Done { blocks, size }));
    let need = (any::<u64>(), 0u32..300, any::<u64>()).prop_map(|(seq, count, bits)| {
        // A pseudo-random ascending subset of 0..count.
        let indices = (0..count)
            .filter(|i| bits.rotate_left(*i) & 1 == 1)
            .collect();
        Message::Need(Need {
            seq,
            count,
            indices,
        })
    });
    prop_oneof![
        hello,
        batch,
        block,
        done,
        text().prop_map(Message::Error),
        need
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn read_frame_survives_arbitrary_bytes_in_any_split(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        split in any::<usize>(),
    ) {
        let mut r = Split::new(&bytes, split);
        while let Ok(Some(_)) = read_frame(&mut r, MAX_FRAME) {}
        prop_assert!(r.pos <= bytes.len());
    }

    #[test]
    fn read_frame_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut r = &bytes[..];
        while let Ok(Some(_)) = read_frame(&mut r, MAX_FRAME) {}
    }

    #[test]
    fn message_decode_survives_arbitrary_payloads(
        typ in 0u8..10,
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = Message::decode(typ, &payload);
    }

    #[test]
    fn a_huge_length_is_refused_before_its_payload(len in (MAX_FRAME as u32 + 1).., typ in 1u8..7) {
        let mut h = len.to_le_bytes().to_vec();
        h.push(typ);
        let mut r = &h[..];
        let refused = matches!(read_frame(&mut r, MAX_FRAME), Err(ProtocolError::FrameTooLarge { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn messages_round_trip_in_any_split(
        msgs in proptest::collection::vec(message(), 1..6),
        split in any::<usize>(),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            m.encode(&mut wire);
        }
        let mut r = &wire[..];
        for m in &msgs {
            let got = read_frame(&mut r, MAX_FRAME).unwrap();
            prop_assert_eq!(got.as_ref(), Some(m));
        }
        prop_assert!(read_frame(&mut r, MAX_FRAME).unwrap().is_none());
        let mut r = Split::new(&wire, split);
        let mut got = Vec::new();
        while let Some(m) = read_frame(&mut r, MAX_FRAME).unwrap() {
            got.push(m);
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn long_strings_are_cut_to_the_limit_not_corrupted(s in text(), n in 0usize..6000) {
        let long: String = s.chars().chain(Some('x')).cycle().take(n).collect();
        let mut wire = Vec::new();
        Message::Error(long.clone()).encode(&mut wire);
        match read_frame(&mut &wire[..], MAX_FRAME).unwrap() {
            Some(Message::Error(got)) => {
                prop_assert!(got.len() <= MAX_TEXT && long.starts_with(&got));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

/// Bytes in 0..len, compressible when `rep` is small.
fn block_data() -> impl Strategy<Value = Vec<u8>> {
    (0usize..70_000, 1u8..=255, any::<u64>()).prop_map(|(len, rep, seed)| {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 512) % 2 == 0 {
                    (i % rep as usize) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lz4_decode_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        limit in 0usize..200_000,
    ) {
        let mut out = Vec::new();
        if blockfmt::decode(&bytes, limit, &mut out).is_ok() {
            prop_assert!(out.len() <= limit);
        }
    }

    #[test]
    fn lz4_decode_survives_damaged_frames(
        raw in block_data(),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
        limit in 0usize..140_000,
    ) {
        let mut frame = blockfmt::encode(&raw);
        for (at, x) in flips {
            let i = at % frame.len();
            frame[i] ^= x;
        }
        if cut % 3 == 0 {
            frame.truncate(cut % (frame.len() + 1)); // a third of the cases: cut short too
        }
        let mut out = Vec::new();
        if blockfmt::decode(&frame, limit, &mut out).is_ok() {
            prop_assert!(out.len() <= limit);
        }
    }

    #[test]
    fn lz4_frames_round_trip_within_the_limit(raw in block_data(), slack in 0usize..100) {
        let frame = blockfmt::encode(&raw);
        let mut out = Vec::new();
        blockfmt::decode(&frame, raw.len() + slack, &mut out).unwrap();
        prop_assert!(out == raw);
        if !raw.is_empty() {
            prop_assert!(blockfmt::decode(&frame, raw.len() - 1, &mut out).is_err());
        }
        // Frames other writers make (linked blocks, checksums) decode too.
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut enc, &raw).unwrap();
        let theirs = enc.finish().unwrap();
        blockfmt::decode(&theirs, raw.len(), &mut out).unwrap();
        prop_assert!(out == raw);
    }
}
