//! The loop against a scripted storage side over pipes, in process. The real
//! binary against the real receiver is tested in the main crate.

use super::*;
use crate::blockfmt;
use crate::proto::Compression;
use crate::testdata::noise;
use std::io::{pipe, PipeReader, PipeWriter};
use std::path::PathBuf;

const BS: usize = 4096;

/// A file in the temp dir, removed on drop (no tempfile crate in the agent).
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, data: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("diskdump-agent-{tag}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Blocks: noise, zero, the same noise again, compressible, then a ragged tail.
fn image() -> Vec<u8> {
    let a = noise(BS, 1);
    let mut v = a.clone();
    v.extend(vec![0u8; BS]);
    v.extend(&a);
    v.extend(b"text ".repeat(BS / 5 + 1)[..BS].to_vec());
    v.extend(&noise(BS + 100, 1)[..100]);
    v
}

struct Peer {
    to_agent: PipeWriter,
    from_agent: PipeReader,
}

impl Peer {
    fn start(args: Args) -> (Peer, thread::JoinHandle<Result<Outcome, String>>) {
        let (agent_in, to_agent) = pipe().unwrap();
        let (from_agent, agent_out) = pipe().unwrap();
        let h = thread::spawn(move || run(&args, agent_in, agent_out));
        (
            Peer {
                to_agent,
                from_agent,
            },
            h,
        )
    }

    fn recv(&mut self) -> Message {
        read_frame(&mut self.from_agent, max_frame_len(BS))
            .unwrap()
            .unwrap()
    }

    fn send(&mut self, m: Message) {
        let mut buf = Vec::new();
        m.encode(&mut buf);
        self.to_agent.write_all(&buf).unwrap();
    }
}

fn args(path: &Path, mode: Compression) -> Args {
    Args {
        block_size: BS,
        batch_size: 2,
        window: 2,
        compression: mode,
        ..Args::new(path)
    }
}

#[test]
fn sends_hashes_then_the_needed_blocks_in_every_mode() {
    let img = image();
    let file = TempFile::new("modes", &img);
    for mode in [Compression::Lz4, Compression::Zlib, Compression::None] {
        let (mut peer, agent) = Peer::start(args(&file.0, mode));
        let Message::Hello(h) = peer.recv() else {
            panic!("no Hello")
        };
        assert_eq!(
            (h.size, h.block_size, h.compression),
            (img.len() as u64, BS as u32, mode)
        );
        let mut entries = Vec::new();
        let mut blocks = HashMap::new();
        loop {
            match peer.recv() {
                Message::Batch(b) => {
                    let idx: Vec<u32> = (0..b.entries.len() as u32)
                        .filter(|&i| matches!(b.entries[i as usize], Entry::Hash(_)))
                        .collect();
                    let count = b.entries.len() as u32;
                    entries.extend(b.entries);
                    peer.send(Message::Need(Need {
                        seq: b.seq,
                        count,
                        indices: idx,
                    }));
                }
                Message::Block(b) => {
                    blocks.insert(b.digest, b.data);
                }
                Message::Done(d) => {
                    assert_eq!((d.blocks, d.size), (5, img.len() as u64));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(agent.join().unwrap(), Ok(Outcome::Done));
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1], Entry::Zero);
        for (i, e) in entries.iter().enumerate() {
            let raw = &img[i * BS..((i + 1) * BS).min(img.len())];
            match e {
                Entry::Zero => assert!(raw.iter().all(|&b| b == 0)),
                Entry::Hash(d) => {
                    assert_eq!(*d, Digest::of(raw));
                    let mut back = Vec::new();
                    match mode {
                        Compression::Lz4 => blockfmt::decode(&blocks[d], BS, &mut back).unwrap(),
                        Compression::Zlib => {
                            flate2::read::ZlibDecoder::new(&blocks[d][..])
                                .read_to_end(&mut back)
                                .unwrap();
                        }
                        Compression::None => back = blocks[d].clone(),
                    }
                    assert!(back == raw, "block {i} in {mode}");
                }
            }
        }
    }
}

#[test]
fn stops_when_the_storage_side_closes() {
    let file = TempFile::new("stop", &image());
    let (mut peer, agent) = Peer::start(args(&file.0, Compression::Lz4));
    assert!(matches!(peer.recv(), Message::Hello(_)));
    assert!(matches!(peer.recv(), Message::Batch(_)));
    drop(peer.to_agent);
    assert_eq!(agent.join().unwrap(), Ok(Outcome::Stopped));
}

#[test]
fn a_bad_need_is_an_error_frame() {
    let file = TempFile::new("badneed", &image());
    let (mut peer, agent) = Peer::start(args(&file.0, Compression::Lz4));
    assert!(matches!(peer.recv(), Message::Hello(_)));
    assert!(matches!(peer.recv(), Message::Batch(_)));
    peer.send(Message::Need(Need {
        seq: 0,
        count: 2,
        indices: vec![1],
    }));
    let mut last = None;
    while let Some(m) = read_frame(&mut peer.from_agent, max_frame_len(BS)).unwrap() {
        last = Some(m);
    }
    let Some(Message::Error(msg)) = last else {
        panic!("{last:?}")
    };
    assert!(msg.contains("zero block 1 of batch 0"), "{msg}");
    assert_eq!(agent.join().unwrap(), Err(msg));
}

#[test]
fn a_missing_source_is_an_error_frame_naming_it() {
    let (mut peer, agent) = Peer::start(args(Path::new("/nonexistent/disk"), Compression::Lz4));
    let Message::Error(msg) = peer.recv() else {
        panic!("no Error")
    };
    assert!(msg.contains("cannot open /nonexistent/disk"), "{msg}");
    assert_eq!(agent.join().unwrap(), Err(msg));
    let (mut peer, agent) = Peer::start(args(Path::new("/dev/null"), Compression::Lz4));
    let Message::Error(msg) = peer.recv() else {
        panic!("no Error")
    };
    assert!(msg.contains("not a regular file or block device"), "{msg}");
    assert!(agent.join().unwrap().is_err());
}

#[test]
fn an_empty_source_is_just_hello_and_done() {
    let file = TempFile::new("empty", b"");
    let (mut peer, agent) = Peer::start(args(&file.0, Compression::Lz4));
    assert!(matches!(peer.recv(), Message::Hello(Hello { size: 0, .. })));
    assert_eq!(peer.recv(), Message::Done(Done { blocks: 0, size: 0 }));
    assert_eq!(agent.join().unwrap(), Ok(Outcome::Done));
}
