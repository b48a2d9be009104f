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
