//! The object layer of the S3 store against a real 3-node Garage cluster on
//! 127.0.0.1: the same contract as the in-memory store, clear one-line
//! errors for wrong credentials, a missing bucket and an unreachable
//! endpoint, and reads and writes that go on with one node killed.

mod common;

use common::garage::Garage;
use diskdump::objstore::{check_contract, ErrorKind, ObjectStore, S3Location, S3Objects};
use std::net::TcpListener;

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn s3_objects_keep_the_object_store_contract_on_garage() {
    let g = Garage::start();
    let objects = g.objects("contract");
    objects.check().unwrap();
    check_contract(&objects, "");
    // The prefix isolates stores sharing a bucket.
    assert!(g.objects("other").list("").unwrap().is_empty());
    assert_eq!(objects.describe(), format!("s3://{}/contract/", g.bucket()));
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn wrong_credentials_missing_bucket_and_dead_endpoint_are_clear_errors() {
    let g = Garage::start();
    let mut bad = g.config();
    bad.secret = "0".repeat(64);
    let loc = S3Location::parse(&format!("s3://{}/p", g.bucket()))
        .unwrap()
        .unwrap();
    let e = S3Objects::new(loc.clone(), &bad)
        .unwrap()
        .put("k", b"x")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Denied, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("PUT s3://{}/p/k: access denied", g.bucket())),
        "{e}"
    );
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
    let missing = S3Location::parse("s3://no-such-bucket/p").unwrap().unwrap();
    let e = S3Objects::new(missing, &g.config())
        .unwrap()
        .check()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("no-such-bucket"), "{e}");
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dead = g.config();
    dead.endpoint = format!("http://127.0.0.1:{port}");
    let e = S3Objects::new(loc, &dead).unwrap().get("k").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("attempts"), "{e}");
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn with_one_node_killed_reads_and_writes_go_on() {
    let g = Garage::start();
    let objects = g.objects("ha");
    let data = diskdump_agent::testdata::noise(4 << 20, 3);
    objects.put("before", &data).unwrap();
    g.kill_node(3);
    assert_eq!(objects.get("before").unwrap(), data);
    objects.put("after", &data[..1000]).unwrap();
    assert_eq!(objects.get_range("after", 10, 20).unwrap(), data[10..30]);
    assert_eq!(objects.list("").unwrap().len(), 2);
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn packed_blocks_on_garage_are_few_objects_shared_by_two_writers() {
    use diskdump::digest::Digest;
    use diskdump::objstore::packed::{PackedBlocks, PACK_PREFIX};
    use std::sync::Arc;
    let g = Garage::start();
    let frames: Vec<(Digest, Vec<u8>)> = (0..2000u64)
        .map(|i| {
            let f = diskdump_agent::testdata::noise(16 << 10, i);
            (Digest::of(&f), f)
        })
        .collect();
    let objects: Arc<dyn ObjectStore> = Arc::new(g.objects("packed"));
    let a = PackedBlocks::open(objects.clone(), None, 4 << 20).unwrap();
    let b = PackedBlocks::open(Arc::new(g.objects("packed")), None, 4 << 20).unwrap();
    // Two writers at once, each with half of its own blocks and all of the
    // shared ones (the first 400): nothing is lost either way.
    std::thread::scope(|s| {
        s.spawn(|| {
            for (d, f) in frames[..1200].iter() {
                a.put_frame(d, f).unwrap();
            }
            a.flush().unwrap();
        });
        s.spawn(|| {
            for (d, f) in frames[..400].iter().chain(&frames[1200..]) {
                b.put_frame(d, f).unwrap();
            }
            b.flush().unwrap();
        });
    });
    let packs = objects.list(PACK_PREFIX).unwrap();
    assert!(
        (8..=20).contains(&packs.len()),
        "32 MiB in 4 MiB packs: {} objects",
        packs.len()
    );
    // A third view, from the packs alone, with one node down.
    g.kill_node(3);
    let c = PackedBlocks::open(objects, None, 4 << 20).unwrap();
    assert_eq!(
        c.blocks().len(),
        frames.len(),
        "every block once in the index"
    );
    let mut buf = Vec::new();
    for (d, f) in frames.iter().step_by(37) {
        assert!(c.get_frame(d, &mut buf).unwrap(), "{d}");
        assert_eq!(&buf, f);
    }
}
