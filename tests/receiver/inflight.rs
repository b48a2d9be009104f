//! Two dumps into one store, sharing an `InFlight`, announcing the same new
//! block: it crosses the wire once.

use crate::support::*;
use diskdump::digest::Digest;
use diskdump::receiver::{receive, InFlight, NoProgress, ReceiveOptions, Received};
use diskdump::store::{LocalStore, Store};
use diskdump_agent::proto::{Batch, Compression, Done, Entry, Message, Need};
use std::sync::mpsc;

/// Announces a one-block source holding `raw`; returns the receiver's Need.
fn announce(a: &mut FakeAgent, raw: &[u8]) -> Need {
    a.send(Message::Hello(fake_hello(
        raw.len() as u64,
        Compression::Lz4,
    )));
    let entries = vec![Entry::Hash(Digest::of(raw))];
    a.send(Message::Batch(Batch { seq: 0, entries }));
    a.need()
}

/// Sends the block (or not) and Done.
fn finish(a: &mut FakeAgent, raw: &[u8], send_block: bool) {
    if send_block {
        a.block(raw);
    }
    let size = raw.len() as u64;
    a.send(Message::Done(Done { blocks: 1, size }));
}

/// Starts a receiver on its own thread; returns its agent end and result.
fn start<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    store: &'s LocalStore,
    inflight: &'s InFlight,
) -> (
    FakeAgent,
    std::thread::ScopedJoinHandle<'s, anyhow::Result<Received>>,
) {
    let (agent, from_agent, to_agent) = FakeAgent::new();
    let h = s.spawn(move || {
        let opts = ReceiveOptions {
            store,
            inflight,
            source: "h:/dev/x",
            progress: &NoProgress,
            max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
        };
        receive(&opts, from_agent, to_agent)
    });
    (agent, h)
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
            announce(&mut a, &raw).indices,
            vec![0],
            "the first dump fetches it"
        );
        assert_eq!(
            announce(&mut b, &raw).indices,
            Vec::<u32>::new(),
            "the second does not"
        );
        // B is done first, but must wait for A's copy to land before succeeding.
        finish(&mut b, &raw, false);
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(hb.join().unwrap()).unwrap());
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        finish(&mut a, &raw, true);
        let ra = ha.join().unwrap().unwrap();
        let rb = rx.recv().unwrap().unwrap();
        assert_eq!((ra.stats.blocks_new, ra.stats.blocks_deduped), (1, 0));
        assert_eq!((rb.stats.blocks_new, rb.stats.blocks_deduped), (0, 1));
        assert_eq!(ra.hashes.to_vec().unwrap(), rb.hashes.to_vec().unwrap());
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
        assert_eq!(announce(&mut a, &raw).indices, vec![0]);
        assert_eq!(announce(&mut b, &raw).indices, Vec::<u32>::new());
        finish(&mut b, &raw, false);
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
