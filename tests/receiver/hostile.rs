//! A hand-written agent that misbehaves. Every case must fail the dump with
//! a message naming the reason, leave only verified blocks in the store, and
//! release its in-flight claims.

use crate::support::*;
use diskdump::digest::Digest;
use diskdump::receiver::{receive, InFlight, NoProgress, ReceiveOptions};
use diskdump::store::{LocalStore, Store};
use diskdump_agent::blockfmt;
use diskdump_agent::proto::{Batch, Block, Compression, Done, Entry, Message};
use std::io::Write;

fn hello(size: u64, mode: Compression) -> Message {
    Message::Hello(fake_hello(size, mode))
}

/// The size of the source most cases announce: three full blocks.
const SIZE: u64 = 3 * BS as u64;

/// Three distinct blocks, announced as batch 0 of a 3-block source.
fn blocks() -> [Vec<u8>; 3] {
    [noise(BS, 1), noise(BS, 2), noise(BS, 3)]
}

fn batch0() -> Message {
    let entries = blocks()
        .iter()
        .map(|b| Entry::Hash(Digest::of(b)))
        .collect();
    Message::Batch(Batch { seq: 0, entries })
}

/// Hello + batch 0 (all three needed by an empty store).
fn start(f: &mut FakeAgent, mode: Compression) {
    f.send(hello(3 * BS as u64, mode));
    f.send(batch0());
    assert_eq!(f.need().indices, vec![0, 1, 2]);
}

/// Runs `script` as the agent against a receiver on a fresh store; returns
/// the error (the dump must fail) and the store.
fn run_hostile(
    script: impl FnOnce(&mut FakeAgent, &LocalStore) + Send,
) -> (String, tempfile::TempDir, LocalStore) {
    let (dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let (mut fake, from_agent, to_agent) = FakeAgent::new();
    let store_ref = &store;
    let err = std::thread::scope(|s| {
        s.spawn(move || {
            script(&mut fake, store_ref);
            // Like a live agent, close the output but keep reading Needs
            // until the receiver hangs up.
            drop(fake.out);
            let _ = std::io::copy(&mut fake.needs, &mut std::io::sink());
        });
        let opts = ReceiveOptions {
            store: &store,
            inflight: &inflight,
            source: "evil:/dev/evil",
            progress: &NoProgress,
            max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
        };
        match receive(&opts, from_agent, to_agent) {
            Ok(r) => panic!("a hostile agent's dump succeeded: {:?}", r.stats),
            Err(e) => format!("{e:#}"),
        }
    });
    assert!(inflight.is_empty(), "claims left behind after: {err}");
    verify_all(&store);
    (err, dir, store)
}

fn assert_mentions(err: &str, words: &[&str]) {
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

#[test]
fn a_wrong_hash_fails_and_verified_blocks_stay() {
    let [a, b, c] = blocks();
    let (err, _d, store) = run_hostile(|f, store| {
        start(f, Compression::Lz4);
        f.block(&a);
        wait_stored(store, &a);
        f.block_as(Digest::of(&b), blockfmt::encode(&c));
        f.block(&c);
        f.send(Message::Done(Done {
            blocks: 3,
            size: 3 * BS as u64,
        }));
    });
    assert_mentions(&err, &[&Digest::of(&b).to_hex(), "hashes to", "wrong data"]);
    assert!(store.contains(&Digest::of(&a)).unwrap());
    assert!(!store.contains(&Digest::of(&b)).unwrap());
}

#[test]
fn a_block_larger_than_the_block_size_fails_in_every_mode() {
    let big = noise(2 * BS, 9);
    for mode in [Compression::Lz4, Compression::Zlib, Compression::None] {
        let data = match mode {
            Compression::Lz4 => blockfmt::encode(&big),
            Compression::Zlib => {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&big).unwrap();
                z.finish().unwrap()
            }
            Compression::None => big.clone(),
        };
        let (err, _d, _s) = run_hostile(|f, _| {
            start(f, mode);
            f.block_as(Digest::of(&blocks()[0]), data);
        });
        assert_mentions(&err, &["block size", "4096"]);
    }
}

#[test]
fn a_block_nobody_asked_for_fails() {
    let (err, _d, _s) = run_hostile(|f, _| {
        start(f, Compression::Lz4);
        f.block(&noise(BS, 42));
    });
    assert_mentions(
        &err,
        &["not requested", &Digest::of(&noise(BS, 42)).to_hex()],
    );
}

#[test]
fn a_duplicate_block_fails() {
    let (err, _d, store) = run_hostile(|f, store| {
        start(f, Compression::Lz4);
        f.block(&blocks()[0]);
        wait_stored(store, &blocks()[0]);
        f.block(&blocks()[0]);
    });
    assert_mentions(&err, &["duplicate block"]);
    assert!(store.contains(&Digest::of(&blocks()[0])).unwrap());
}

#[test]
fn a_truncated_stream_fails() {
    // Cut inside a frame, and cleanly between frames before Done.
    let (err, _d, _s) = run_hostile(|f, _| {
        start(f, Compression::Lz4);
        let mut frame = Vec::new();
        let raw = &blocks()[0];
        Message::Block(Block {
            digest: Digest::of(raw),
            data: blockfmt::encode(raw),
        })
        .encode(&mut frame);
        f.raw(&frame[..frame.len() / 2]);
    });
    assert_mentions(&err, &["truncated"]);
    let (err, _d, _s) = run_hostile(|f, _| {
        start(f, Compression::Lz4);
        f.block(&blocks()[0]);
    });
    assert_mentions(&err, &["ended before Done", "truncated"]);
}

#[test]
fn garbage_fails_before_and_after_the_hello() {
    let (err, _d, _s) = run_hostile(|f, _| f.raw(b"Welcome to Ubuntu 22.04 LTS\n"));
    assert_mentions(
        &err,
        &["does not start with a diskdump Hello", "Welcome to Ubuntu"],
    );
    let (err, _d, _s) = run_hostile(|f, _| {
        start(f, Compression::Lz4);
        f.raw(&[1, 0, 0, 0, 0xee, 1, 2, 3]);
    });
    assert_mentions(&err, &["bad data from the agent", "unknown frame type 238"]);
}

#[test]
fn a_frame_claiming_4_gib_fails_before_allocating() {
    let (err, _d, _s) = run_hostile(|f, _| {
        start(f, Compression::Lz4);
        f.raw(&[0xff, 0xff, 0xff, 0xff, 3]);
    });
    assert_mentions(&err, &["4294967295 bytes exceeds the limit"]);
}

#[test]
fn another_protocol_version_fails() {
    let (err, _d, _s) = run_hostile(|f, _| {
        let mut h = fake_hello(0, Compression::Lz4);
        h.version = 2;
        f.send(Message::Hello(h));
    });
    assert_mentions(&err, &["protocol version 2 is not supported"]);
}

#[test]
fn an_agent_error_is_reported() {
    let (err, _d, _s) = run_hostile(|f, _| {
        start(f, Compression::Lz4);
        f.send(Message::Error(
            "cannot read /dev/evil at byte 4096: Input/output error".into(),
        ));
    });
    assert_mentions(&err, &["the agent failed", "Input/output error"]);
}

#[test]
fn an_agent_that_dies_explains_why_even_if_needs_cannot_be_sent() {
    let (dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let (mut fake, from_agent, to_agent) = FakeAgent::new();
    // Everything the agent writes before dying, with nobody reading Needs.
    fake.send(hello(3 * BS as u64, Compression::Lz4));
    fake.send(batch0());
    fake.send(Message::Error(
        "cannot read /dev/evil at byte 0: Input/output error".into(),
    ));
    drop(fake);
    let opts = ReceiveOptions {
        store: &store,
        inflight: &inflight,
        source: "evil:/dev/evil",
        progress: &NoProgress,
        max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
    };
    let err = format!("{:#}", receive(&opts, from_agent, to_agent).unwrap_err());
    assert_mentions(&err, &["the agent failed", "Input/output error"]);
    drop(dir);
}

#[test]
fn protocol_violations_fail() {
    type Script = Box<dyn FnOnce(&mut FakeAgent, &LocalStore) + Send>;
    let cases: Vec<(&str, Script)> = vec![
        (
            "expected batch 0",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(SIZE, Compression::Lz4));
                f.send(Message::Batch(Batch {
                    seq: 1,
                    entries: vec![Entry::Zero; 3],
                }));
            }),
        ),
        (
            "the source's size implies 3",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(SIZE, Compression::Lz4));
                f.send(Message::Batch(Batch {
                    seq: 0,
                    entries: vec![Entry::Zero; 4],
                }));
            }),
        ),
        (
            "not a full block",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(SIZE - 1, Compression::Lz4));
                f.send(Message::Batch(Batch {
                    seq: 0,
                    entries: vec![Entry::Zero; 3],
                }));
            }),
        ),
        (
            "Done after 0 of 1 batches",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(SIZE, Compression::Lz4));
                f.send(Message::Done(Done {
                    blocks: 3,
                    size: SIZE,
                }));
            }),
        ),
        (
            "never came",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                start(f, Compression::Lz4);
                f.send(Message::Done(Done {
                    blocks: 3,
                    size: SIZE,
                }));
            }),
        ),
        (
            "its Hello 3",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(SIZE, Compression::Lz4));
                f.send(Message::Batch(Batch {
                    seq: 0,
                    entries: vec![Entry::Zero; 3],
                }));
                f.send(Message::Done(Done {
                    blocks: 4,
                    size: SIZE,
                }));
            }),
        ),
        (
            "second Hello",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(SIZE, Compression::Lz4));
                f.send(hello(SIZE, Compression::Lz4));
            }),
        ),
        (
            "window of 2",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                f.send(hello(12 * BS as u64, Compression::Lz4));
                for seq in 0..3 {
                    let entries = (0..4)
                        .map(|i| Entry::Hash(Digest::of(&noise(BS, seq * 4 + i))))
                        .collect();
                    f.send(Message::Batch(Batch { seq, entries }));
                }
            }),
        ),
        (
            "the agent's Hello: window 0",
            Box::new(|f: &mut FakeAgent, _: &LocalStore| {
                let mut h = fake_hello(SIZE, Compression::Lz4);
                h.window = 0;
                f.send(Message::Hello(h));
            }),
        ),
    ];
    for (expected, script) in cases {
        let (err, _d, _s) = run_hostile(script);
        assert_mentions(&err, &[expected]);
    }
}

/// Not hostile, merely unusual: content is verified, and what the store
/// keeps is its own plain frame, not checksums nobody verified.
#[test]
fn a_valid_but_unusual_lz4_frame_is_stored_in_the_stores_format() {
    use lz4_flex::frame::{BlockMode, FrameEncoder, FrameInfo};
    let raw = b"unusual ".repeat(BS / 8);
    let info = FrameInfo::new()
        .block_mode(BlockMode::Linked)
        .block_checksums(true)
        .content_checksum(true);
    let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(&raw).unwrap();
    let odd = enc.finish().unwrap();
    assert!(!blockfmt::is_plain(&odd));
    let (dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let (mut fake, from_agent, to_agent) = FakeAgent::new();
    fake.send(hello(BS as u64, Compression::Lz4));
    let d = Digest::of(&raw);
    fake.send(Message::Batch(Batch {
        seq: 0,
        entries: vec![Entry::Hash(d)],
    }));
    fake.block_as(d, odd);
    fake.send(Message::Done(Done {
        blocks: 1,
        size: BS as u64,
    }));
    let opts = ReceiveOptions {
        store: &store,
        inflight: &inflight,
        source: "odd:/dev/odd",
        progress: &NoProgress,
        max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
    };
    let got = receive(&opts, from_agent, to_agent).unwrap();
    assert_eq!(got.stats.blocks_new, 1);
    let stored = std::fs::read(store.block_path(&d)).unwrap();
    assert_eq!(stored, blockfmt::encode(&raw));
    drop(dir);
}

#[test]
fn an_agent_that_stalls_is_cut_off_after_the_idle_timeout() {
    use diskdump::idle::IdleTimeout;
    use std::time::{Duration, Instant};
    let (dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let [a, _, _] = blocks();
    // Stalls before its Hello, then after a Hello, then mid-batch.
    type Script = Box<dyn FnOnce(&mut FakeAgent) + Send>;
    let cases: Vec<(&str, Script)> = vec![
        ("before Hello", Box::new(|_: &mut FakeAgent| {})),
        (
            "after Hello",
            Box::new(|f: &mut FakeAgent| f.send(hello(SIZE, Compression::Lz4))),
        ),
        (
            "with blocks owed",
            Box::new(move |f: &mut FakeAgent| {
                start(f, Compression::Lz4);
                f.block(&a);
            }),
        ),
    ];
    for (case, script) in cases {
        let (mut fake, from_agent, to_agent) = FakeAgent::new();
        let t0 = Instant::now();
        let err = std::thread::scope(|s| {
            let stalled = s.spawn(move || {
                script(&mut fake);
                // Alive but silent, pipes open, for longer than the limit.
                std::thread::sleep(Duration::from_secs(3));
                drop(fake);
            });
            let opts = ReceiveOptions {
                store: &store,
                inflight: &inflight,
                source: "stall:/dev/stall",
                progress: &NoProgress,
                max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
            };
            let input = IdleTimeout::new(from_agent, Duration::from_secs(1));
            let r = receive(&opts, input, to_agent);
            let took = t0.elapsed();
            assert!(took < Duration::from_millis(2500), "{case}: took {took:?}");
            let _ = stalled.join();
            format!("{:#}", r.expect_err(case))
        });
        assert_mentions(&err, &["no data from the agent for 1 s"]);
        assert!(inflight.is_empty(), "{case}: claims left behind");
    }
    verify_all(&store);
    drop(dir);
}
