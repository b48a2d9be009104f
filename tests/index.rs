//! The local store's index of present blocks (docs/DESIGN.md §1.7): a next
//! import or dump answers "present?" from it without touching block files,
//! never while a gc runs, and nothing it says outlives the block (gc, a
//! damaged block moved aside).

mod common;

use common::{diskdump, images, only_manifest};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const BS: usize = 131072;

/// Runs an import under strace; returns how many system calls named a
/// block file (open, stat, utimensat) and the import's JSON report.
fn traced_import(store: &Path, img: &Path, name: &str) -> (usize, serde_json::Value) {
    let (stdout, text) = common::strace_diskdump(
        store,
        "openat,newfstatat,statx,utimensat",
        &["--json", "import", img.to_str().unwrap(), "--as", name],
    );
    let touches = text.lines().filter(|l| l.contains(".lz4\"")).count();
    (touches, serde_json::from_slice(&stdout).unwrap())
}

fn index_files(store: &Path) -> Vec<PathBuf> {
    let dir = store.join(".blockstore/index");
    common::walk(&dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect()
}

/// Holds `.blockstore/gc-active` as a running gc does (until dropped: the
/// file is held open for its flock).
struct FakeGc(#[allow(dead_code)] fs::File);

impl FakeGc {
    fn hold(store: &Path) -> FakeGc {
        let f = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(store.join(".blockstore/gc-active"))
            .unwrap();
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        FakeGc(f)
    }
}

#[test]
#[cfg_attr(not(have_strace), ignore = "needs strace")]
fn a_next_import_answers_from_the_index_but_not_while_a_gc_runs() {
    common::need(common::have("strace"), "strace (apt-get install strace)");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let data = images::mixed(BS, 40, 1000, 7);
    images::write(&img, &data);
    let store = dir.path().join("store");
    common::ensure_store(&store, &["import"]);
    let (_, first) = traced_import(&store, &img, "one");
    let new = first["blocks_new"].as_u64().unwrap();
    assert!(new > 20, "{first}");
    // Exactly the stored blocks are indexed.
    let mut indexed: Vec<String> = index_files(&store)
        .iter()
        .flat_map(|p| common::index_digests(p))
        .collect();
    indexed.sort();
    let mut blocks: Vec<String> = common::block_files(&store)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    blocks.sort();
    assert_eq!(indexed, blocks);

    // The next import: every block present, no block file touched.
    let (touches, again) = traced_import(&store, &img, "two");
    assert_eq!(again["blocks_new"], 0, "{again}");
    assert_eq!(touches, 0, "block files touched with the index: {again}");

    // A gc is running: the import must not trust the index (the gc may not
    // have seen it register), so it checks every block on disk.
    let gc = FakeGc::hold(&store);
    let (touches, during) = traced_import(&store, &img, "three");
    drop(gc);
    assert_eq!(during["blocks_new"], 0, "{during}");
    assert!(
        touches as u64 >= new,
        "{touches} block files touched, {new} blocks"
    );
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn gc_takes_blocks_out_of_the_index_before_it_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = dir.path().join("a.img");
    let a_data = images::random_bytes(16 * BS, 1);
    images::write(&a, &a_data);
    let b = dir.path().join("b.img");
    images::write(&b, &images::random_bytes(4 * BS, 2));
    diskdump(&store, &["import", a.to_str().unwrap(), "--as", "a"]).ok();
    let a_manifest = only_manifest(&store);
    diskdump(&store, &["import", b.to_str().unwrap(), "--as", "b"]).ok();
    diskdump(&store, &["delete", a_manifest.to_str().unwrap()]).ok();
    // a's 16 and the zero block (every import stores it once).
    let a_blocks = common::block_files(&store).len() as u64 - 4;
    assert_eq!(a_blocks, 17);
    common::age_store(&store);
    let v = common::diskdump_json(&store, &["gc"]);
    assert_eq!(v["removed_blocks"], a_blocks, "{v}");
    // gc compacted the index to what is left: b's blocks only.
    let files = index_files(&store);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(common::index_digests(&files[0]).len(), 4);
    let (blocks, _) = common::whole_blocks_and_temps(&store, BS);
    assert_eq!(blocks, 4);
    let v = common::diskdump_json(&store, &["status"]);
    assert_eq!(
        (&v["index_blocks"], &v["index_files"]),
        (&4.into(), &1.into()),
        "{v}"
    );
    // a again: every block stored again, not taken for present.
    let v = common::diskdump_json(&store, &["import", a.to_str().unwrap(), "--as", "a"]);
    assert_eq!(v["blocks_new"], 16, "{v}");
    let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(bytes == a_data);
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn a_damaged_block_moved_aside_is_stored_again_despite_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = dir.path().join("d.img");
    let data = images::random_bytes(8 * BS, 3);
    images::write(&img, &data);
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    // Damage inside the compressed data: the shape is whole, the content not.
    let victim = common::block_files(&store)[0].clone();
    let mut frame = fs::read(&victim).unwrap();
    let mid = frame.len() / 2;
    frame[mid] ^= 0xff;
    fs::write(&victim, &frame).unwrap();
    let r = diskdump(&store, &["verify", "--repair"]);
    assert_ne!(r.code, 0, "verify finds the damage: {}", r.stdout);
    assert!(!victim.exists(), "moved aside");
    let v = common::diskdump_json(&store, &["import", img.to_str().unwrap(), "--as", "d"]);
    assert_eq!(v["blocks_new"], 1, "{v}");
    assert!(victim.exists(), "stored again");
    let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(bytes == data);
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn gc_beside_an_index_writer_defers_and_the_next_gc_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let data = images::random_bytes(8 * BS, 50);
    common::orphaned_store(&store, dir.path(), &data);
    let big = dir.path().join("big.img");
    images::write(&big, &images::random_bytes(2 * BS, 51));
    images::slow_tail(&big, 6 << 30);
    let mut import =
        common::spawn_diskdump(&store, &["import", big.to_str().unwrap(), "--as", "big"]);
    common::wait_for_writer(&store);
    let v = common::gc_beside_a_writer(&store, 0);
    // The orphans may be what the import was told is present: kept.
    assert!(v["deferred_blocks"].as_u64().unwrap() >= 8, "{v}");
    common::signal(&import, libc::SIGINT);
    let _ = import.wait();
    common::age_store(&store);
    let v = common::diskdump_json(&store, &["gc"]);
    assert!(v["removed_blocks"].as_u64().unwrap() >= 8, "{v}");
    assert_eq!(v["deferred_blocks"], 0, "{v}");
    let (blocks, _) = common::whole_blocks_and_temps(&store, BS);
    assert_eq!(blocks, 0);
}

#[test]
fn an_import_that_started_during_a_gc_is_protected_by_mtimes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let data = images::random_bytes(8 * BS, 60);
    common::orphaned_store(&store, dir.path(), &data);
    let orphans = common::block_files(&store);
    // The same blocks again, then a long tail: the import finds the orphans
    // present early (refreshing them: a gc is running when it starts).
    let big = dir.path().join("big.img");
    images::write(&big, &data);
    images::slow_tail(&big, 6 << 30);
    let gc = FakeGc::hold(&store);
    let mut import =
        common::spawn_diskdump(&store, &["import", big.to_str().unwrap(), "--as", "big"]);
    let writers = store.join(".blockstore/writers");
    common::wait_until(10, "the import registers without the index mark", || {
        fs::read_dir(&writers).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                !n.starts_with('.') && !n.ends_with(".index")
            })
        })
    });
    // It found the orphans present on disk and refreshed their mtimes.
    common::wait_until(60, "the import refreshes the orphans", || {
        let recent = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        orphans.iter().all(|p| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > recent)
        })
    });
    drop(gc);
    // A gc now judges by mtimes: the refreshed orphans are young, kept.
    let v = common::gc_beside_a_writer(&store, 0);
    assert_eq!(v["deferred_blocks"], 0, "{v}");
    assert!(v["young_blocks"].as_u64().unwrap() >= 8, "{v}");
    common::signal(&import, libc::SIGINT);
    let _ = import.wait();
    for p in orphans {
        assert!(p.exists(), "{p:?} was relied on and removed");
    }
}

#[test]
fn verify_finds_an_indexed_block_that_is_gone_and_repair_takes_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let img = dir.path().join("d.img");
    let data = images::random_bytes(8 * BS, 4);
    images::write(&img, &data);
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    // Lost behind diskdump's back (a stray rm): no dump names it now, but
    // the index would make the next one take it for stored.
    diskdump(&store, &["delete", only_manifest(&store).to_str().unwrap()]).ok();
    let victim = common::block_files(&store)[0].clone();
    fs::remove_file(&victim).unwrap();
    let r = diskdump(&store, &["verify"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("index of present blocks lists block"),
        "{}",
        r.stdout
    );
    let r = diskdump(&store, &["verify", "--repair"]);
    assert!(r.stdout.contains("taken out of the index"), "{}", r.stdout);
    diskdump(&store, &["verify"]).ok();
    let v = common::diskdump_json(&store, &["import", img.to_str().unwrap(), "--as", "d"]);
    assert_eq!(v["blocks_new"], 1, "{v}");
    assert!(victim.exists());
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn writers_compact_the_index_and_it_still_lists_every_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for i in 0..12u64 {
        let img = dir.path().join(format!("{i}.img"));
        images::write(&img, &images::random_bytes(2 * BS, 100 + i));
        let name = format!("d{i}");
        diskdump(&store, &["import", img.to_str().unwrap(), "--as", &name]).ok();
    }
    // One segment per import until a writer finds more than 8 and merges.
    let files = index_files(&store);
    assert!(files.len() <= 8, "{} index files", files.len());
    let mut indexed: Vec<String> = files
        .iter()
        .flat_map(|p| common::index_digests(p))
        .collect();
    indexed.sort();
    indexed.dedup();
    assert_eq!(indexed.len(), common::block_files(&store).len());
    let v = common::diskdump_json(&store, &["status"]);
    assert_eq!(v["index_files"], files.len(), "{v}");
}
