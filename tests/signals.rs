//! SIGINT and SIGTERM during restore and gc: the exit code says which signal
//! (130, 143), the message says "interrupted", no partial output is left and
//! the store still verifies.

mod common;

use common::{diskdump, images, signal, spawn_diskdump, wait_until};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BS: usize = 131072;

/// A store with one dump of 2 GiB made of a single non-zero block repeated:
/// restoring it writes every byte (no holes) and takes a while.
fn store_with_a_long_dump(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store");
    let img = dir.join("one.img");
    let block = images::random_bytes(BS, 70);
    images::write(&img, &block);
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "one"]).ok();
    let h = common::sha256_hex(&block);
    let n = 16384;
    let mut text = format!(
        "# diskdump manifest v1\n# source: t:/x\n# date: 2026-01-01T00:00:00+00:00\n\
         # block_size: {BS}\n# total_blocks: {n}\n# total_size: {}\n",
        n * BS
    );
    for _ in 0..n {
        text.push_str(&h);
        text.push('\n');
    }
    fs::create_dir_all(store.join("2026/01/01")).unwrap();
    fs::write(store.join("2026/01/01/long.manifest"), text).unwrap();
    store
}

fn interrupted_restore(sig: i32, code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_a_long_dump(dir.path());
    let outdir = dir.path().join("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("long.img");
    let child = spawn_diskdump(&store, &["restore", "long", "-o", out.to_str().unwrap()]);
    // Signal once the restore is writing its (temp) output.
    wait_until(30, "restore to start writing", || {
        fs::read_dir(&outdir).unwrap().any(|e| {
            e.unwrap()
                .metadata()
                .is_ok_and(|m| m.len() > 0 || m.blocks() > 0)
        })
    });
    signal(&child, sig);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let left: Vec<_> = fs::read_dir(&outdir).unwrap().collect();
    assert!(left.is_empty(), "partial output left: {left:?}");
    diskdump(&store, &["verify"]).ok();
}

use std::os::unix::fs::MetadataExt;

#[test]
fn sigint_during_restore_leaves_no_output() {
    interrupted_restore(libc::SIGINT, 130);
}

#[test]
fn sigterm_during_restore_leaves_no_output() {
    interrupted_restore(libc::SIGTERM, 143);
}

/// A gc waiting for another gc stops at once on a signal.
fn interrupted_while_waiting(args: &[&str], sig: i32, code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    images::write(&img, &images::mixed(BS, 6, 0, 71));
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "a"]).ok();
    // An exclusive holder (as a running gc) makes another gc wait.
    let mut holder = Command::new("flock")
        // -o: the lock is flock's own, so killing it releases the lock.
        .args(["-x", "-o", store.join(".blockstore/lock").to_str().unwrap()])
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = common::walk(&store);
    let mut args = args.to_vec();
    let img_arg = img.to_str().unwrap();
    for a in args.iter_mut() {
        if *a == "IMG" {
            *a = img_arg;
        }
    }
    let mut child = spawn_diskdump(&store, &args);
    let mut stderr = child.stderr.take().unwrap();
    let mut said = String::new();
    wait_until(10, "the waiting message", || {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stderr, &mut buf).unwrap();
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
        said.contains("waiting for")
    });
    let t0 = Instant::now();
    signal(&child, sig);
    let status = child.wait().unwrap();
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(status.code(), Some(code), "{args:?}: {said}");
    assert!(said.contains("interrupted"), "{said}");
    assert_eq!(common::walk(&store), before, "nothing changed");
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn sigterm_stops_a_gc_waiting_for_the_lock() {
    interrupted_while_waiting(&["gc"], libc::SIGTERM, 143);
}

#[test]
fn sigint_stops_a_gc_waiting_for_the_lock() {
    interrupted_while_waiting(&["gc"], libc::SIGINT, 130);
}

#[test]
fn sigterm_during_import_leaves_no_manifest_and_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    // Random blocks, then a long sparse tail with a byte every 4 MiB: busy
    // for a while, on little disk.
    images::write(&img, &images::random_bytes(64 * BS, 72));
    images::slow_tail(&img, 32 << 30);
    let store = dir.path().join("store");
    let child = spawn_diskdump(&store, &["import", img.to_str().unwrap(), "--as", "big"]);
    wait_until(30, "blocks being stored", || {
        common::block_files(&store).len() >= 8
    });
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("no manifest"),
        "{err}"
    );
    assert!(common::all_manifests(&store).is_empty());
    let (_, temps) = common::whole_blocks_and_temps(&store, BS);
    assert!(temps.is_empty(), "{temps:?}");
    diskdump(&store, &["verify"]).ok();
}
