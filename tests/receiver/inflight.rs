//! Two dumps into one store, sharing an `InFlight`, announcing the same new
//! block: it crosses the wire once.

use crate::support::*;
use diskdump::digest::Digest;
use diskdump::receiver::{receive, InFlight, NoProgress, ReceiveOptions, Received};
use diskdump::store::{LocalStore, Store};
use diskdump_agent::blockfmt;
use diskdump_agent::proto::{
    read_frame, Batch, Block, Compression, Done, Entry, Hello, Message, Need, PROTOCOL_VERSION,
};
use std::io::{pipe, PipeReader, PipeWriter, Write};
use std::sync::mpsc;

/// A scripted one-block agent for the store's receiver number `n`.
struct Agent {
    out: PipeWriter,
    needs: PipeReader,
}

impl Agent {
    fn send(&mut self, m: Message) {
        let mut buf = Vec::new();
        m.encode(&mut buf);
        let _ = self.out.write_all(&buf);
    }
    fn announce(&mut self, raw: &[u8]) -> Need {
        self.send(Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            hostname: "h".into(),
            source: "/dev/x".into(),
            size: raw.len() as u64,
            block_size: BS as u32,
            batch_size: 4,
            window: 2,
            compression: Compression::Lz4,
        }));
        let entries = vec![Entry::Hash(Digest::of(raw))];
        self.send(Message::Batch(Batch { seq: 0, entries }));
        match read_frame(&mut self.needs, 1 << 20).unwrap() {
            Some(Message::Need(n)) => n,
            other => panic!("{other:?}"),
        }
    }
    fn finish(&mut self, raw: &[u8], send_block: bool) {
        if send_block {
            let data = blockfmt::encode(raw);
            self.send(Message::Block(Block {
                digest: Digest::of(raw),
                data,
            }));
        }
        self.send(Message::Done(Done {
            blocks: 1,
            size: raw.len() as u64,
        }));
    }
}

/// Starts a receiver on its own thread; returns its agent end and result.
fn start<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    store: &'s LocalStore,
    inflight: &'s InFlight,
) -> (
    Agent,
    std::thread::ScopedJoinHandle<'s, anyhow::Result<Received>>,
) {
    let (from_agent, out) = pipe().unwrap();
    let (needs, to_agent) = pipe().unwrap();
    let h = s.spawn(move || {
        let opts = ReceiveOptions {
            store,
            inflight,
            source: "h:/dev/x",
            progress: &NoProgress,
        };
        receive(&opts, from_agent, to_agent)
    });
    (Agent { out, needs }, h)
}

#[test]
fn two_dumps_fetch_a_shared_new_block_once() {
    let (_dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let raw = noise(BS, 5);
    std::thread::scope(|s| {
        let (mut a, ha) = start(s, &store, &inflight);
        let (mut b, hb) = start(s, &store, &inflight);
        assert_eq!(
            a.announce(&raw).indices,
            vec![0],
            "the first dump fetches it"
        );
        assert_eq!(
            b.announce(&raw).indices,
            Vec::<u32>::new(),
            "the second does not"
        );
        // B is done first, but must wait for A's copy to land before succeeding.
        b.finish(&raw, false);
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(hb.join().unwrap()).unwrap());
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        a.finish(&raw, true);
        let ra = ha.join().unwrap().unwrap();
        let rb = rx.recv().unwrap().unwrap();
        assert_eq!((ra.stats.blocks_new, ra.stats.blocks_deduped), (1, 0));
        assert_eq!((rb.stats.blocks_new, rb.stats.blocks_deduped), (0, 1));
        assert_eq!(ra.manifest.blocks, rb.manifest.blocks);
    });
    assert!(store.contains(&Digest::of(&raw)).unwrap());
    assert!(inflight.is_empty());
}

#[test]
fn a_dump_relying_on_a_failed_fetch_fails_clearly() {
    let (_dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let raw = noise(BS, 6);
    std::thread::scope(|s| {
        let (mut a, ha) = start(s, &store, &inflight);
        let (mut b, hb) = start(s, &store, &inflight);
        assert_eq!(a.announce(&raw).indices, vec![0]);
        assert_eq!(b.announce(&raw).indices, Vec::<u32>::new());
        b.finish(&raw, false);
        drop(a); // A's agent dies without sending the block
        assert!(ha.join().unwrap().is_err());
        let err = format!("{:#}", hb.join().unwrap().unwrap_err());
        assert!(
            err.contains("another dump, which did not store it"),
            "{err}"
        );
    });
    assert!(!store.contains(&Digest::of(&raw)).unwrap());
    assert!(inflight.is_empty());
}

#[test]
fn a_block_repeated_within_one_dump_is_fetched_once() {
    let (_dir, store) = new_store(BS);
    let inflight = InFlight::new();
    let raw = noise(BS, 7);
    let img = [raw.clone(), raw.clone(), raw.clone()].concat();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &img).unwrap();
    let args = ["--block-size", "4096", "--batch-size", "2", "--window", "2"];
    let (r, _, stderr) = dump(&store, &inflight, file.path(), &args);
    let s = r.unwrap_or_else(|e| panic!("{e:#} {stderr}")).stats;
    // The second copy is announced in the same batch, so surely in flight;
    // the third may find the first already stored.
    assert_eq!(
        (s.blocks_new, s.blocks_deduped + s.blocks_present),
        (1, 2),
        "{s:?}"
    );
    assert!(s.blocks_deduped >= 1, "{s:?}");
}
