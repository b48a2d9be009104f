//! The local commands against the real binary in temp dirs (issue: foundation).

mod common;

use common::{block_files, diskdump, diskdump_bytes, images, only_manifest, sha256_hex};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const BS: usize = 131072;

fn setup(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    images::write(&img, data);
    (dir, img)
}

#[test]
fn round_trip_to_file_and_stdout_with_holes() {
    let data = images::mixed(BS, 40, 12345, 1);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    let r = diskdump(
        &store,
        &["import", img.to_str().unwrap(), "--as", "web1:/dev/sda"],
    )
    .ok();
    assert!(
        r.stdout.contains("2026") || r.stdout.contains(".manifest"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("7 zero"),
        "zero blocks counted: {}",
        r.stdout
    );
    let m = only_manifest(&store);
    assert!(m.to_string_lossy().ends_with("/web1-sda.manifest"), "{m:?}");
    let out = dir.path().join("out.img");
    diskdump(
        &store,
        &["restore", "web1-sda", "-o", out.to_str().unwrap()],
    )
    .ok();
    assert_eq!(fs::read(&out).unwrap(), data);
    // Zero blocks are holes: fewer bytes allocated than the size.
    let meta = fs::metadata(&out).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len() - 5 * BS as u64,
        "{} blocks for {} bytes",
        meta.blocks(),
        meta.len()
    );
    let (code, bytes, err) = diskdump_bytes(&store, &["restore", m.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(bytes, data);
    let rel = m.strip_prefix(&store).unwrap();
    let (code, bytes, _) = diskdump_bytes(&store, &["restore", rel.to_str().unwrap()]);
    assert_eq!((code, bytes.len()), (0, data.len()));
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn empty_and_tiny_images() {
    for data in [vec![], vec![7u8], vec![0u8; 10]] {
        let (dir, img) = setup(&data);
        let store = dir.path().join("store");
        diskdump(&store, &["import", img.to_str().unwrap(), "--as", "t"]).ok();
        let (code, bytes, err) = diskdump_bytes(&store, &["restore", "t"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(bytes, data);
    }
}

#[test]
fn reimport_stores_nothing_new_and_gets_a_distinct_name() {
    let data = images::mixed(BS, 12, 0, 2);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "box"]).ok();
    let before = block_files(&store);
    let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", "box"]).ok();
    assert!(r.stdout.contains("(0 new"), "{}", r.stdout);
    assert_eq!(block_files(&store), before);
    let r = diskdump(&store, &["status"]).ok();
    assert!(
        r.stdout.contains("box.manifest") && r.stdout.contains("box+2.manifest"),
        "{}",
        r.stdout
    );
    // The bare name means the newest dump.
    let r = diskdump(&store, &["info", "box"]).ok();
    assert!(r.stdout.contains("box+2.manifest"), "{}", r.stdout);
}

#[test]
fn dated_import_files_under_its_day() {
    let (dir, img) = setup(&images::mixed(BS, 3, 0, 3));
    let store = dir.path().join("store");
    diskdump(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "old",
            "--date",
            "2024-02-29T10:00:00Z",
        ],
    )
    .ok();
    assert!(store.join("2024/02/29/old.manifest").is_file());
    let r = diskdump(&store, &["info", "2024/02/29/old.manifest"]).ok();
    assert!(r.stdout.contains("2024-02-29T10:00:00"), "{}", r.stdout);
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let (dir, img) = setup(&[1, 2, 3]);
    let store = dir.path().join("store");
    for name in ["../evil", ".hidden", "a/b", "x y", &"n".repeat(200)] {
        let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", name]).fails();
        assert!(
            r.stderr.contains("invalid dump name"),
            "{name}: {}",
            r.stderr
        );
        assert_eq!(r.code, 2, "a usage error");
    }
    let r = diskdump(&store, &["import", "/no/such/image", "--as", "x"]).fails();
    assert!(r.stderr.contains("/no/such/image"), "{}", r.stderr);
    let r = diskdump(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "x",
            "--date",
            "someday",
        ],
    )
    .fails();
    assert!(r.stderr.contains("invalid date"), "{}", r.stderr);
    assert_eq!(r.code, 2, "a usage error");
    assert!(
        common::all_manifests(&store).is_empty() && block_files(&store).is_empty(),
        "nothing was written"
    );
    let r = diskdump(&dir.path().join("nostore"), &["status"]).fails();
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    let r = diskdump(dir.path(), &["status"]).fails();
    assert!(r.stderr.contains("not a diskdump store"), "{}", r.stderr);
    // One line: the error and its causes.
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "x"]).ok();
    let r = diskdump(&store, &["restore", "../x.manifest"]).fails();
    assert!(
        r.stderr.contains("no manifest ../x.manifest"),
        "{}",
        r.stderr
    );
    let r = diskdump(&store, &["restore", "nosuch"]).fails();
    assert!(r.stderr.contains("no dump named"), "{}", r.stderr);
}

#[test]
fn block_size_is_the_stores() {
    let (dir, img) = setup(&images::mixed(4096, 20, 100, 4));
    let store = dir.path().join("store");
    diskdump(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "a",
            "--block-size",
            "4K",
        ],
    )
    .ok();
    let r = diskdump(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "b",
            "--block-size",
            "128K",
        ],
    )
    .fails();
    assert!(r.stderr.contains("uses block size 4096"), "{}", r.stderr);
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "b"]).ok();
    let (_, bytes, _) = diskdump_bytes(&store, &["restore", "b"]);
    assert_eq!(bytes, fs::read(&img).unwrap());
    assert!(fs::read_to_string(store.join(".blockstore/config.json"))
        .unwrap()
        .contains("4096"));
}

/// Flips one byte in the middle of the block file for `data`'s block `idx`.
fn corrupt_block(store: &Path, block: &[u8]) -> std::path::PathBuf {
    let h = sha256_hex(block);
    let p = store
        .join(".blockstore")
        .join(&h[..2])
        .join(&h[2..4])
        .join(format!("{h}.lz4"));
    let mut b = fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    fs::write(&p, b).unwrap();
    p
}

#[test]
fn flipped_byte_fails_verify_and_restore_loudly() {
    let data = images::mixed(BS, 12, 0, 5);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "v"]).ok();
    let bad = corrupt_block(&store, &data[2 * BS..3 * BS]);
    let r = diskdump(&store, &["verify"]).fails();
    assert!(
        r.stdout
            .contains(bad.file_name().unwrap().to_str().unwrap()),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("1 problems"), "{}", r.stdout);
    let out = dir.path().join("out.img");
    let r = diskdump(&store, &["restore", "v", "-o", out.to_str().unwrap()]).fails();
    assert!(
        r.stderr
            .contains(&format!("block 2 at image offset {}", 2 * BS)),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "partial output removed");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temp file left"
    );
    let (code, _, err) = diskdump_bytes(&store, &["restore", "v"]);
    assert_ne!(code, 0);
    assert!(err.contains("corrupt"), "{err}");
    let r = diskdump(&store, &["verify", "v"]).fails();
    assert!(r.stdout.contains("corrupt"), "{}", r.stdout);
}

#[test]
fn deleted_block_is_reported_missing() {
    let data = images::mixed(BS, 12, 0, 6);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "m"]).ok();
    let h = sha256_hex(&data[2 * BS..3 * BS]);
    fs::remove_file(
        store
            .join(".blockstore")
            .join(&h[..2])
            .join(&h[2..4])
            .join(format!("{h}.lz4")),
    )
    .unwrap();
    let r = diskdump(&store, &["verify"]).fails();
    assert!(
        r.stdout
            .contains(&format!("block 2 (offset {}) {h} is missing", 2 * BS)),
        "{}",
        r.stdout
    );
    let r = diskdump(&store, &["info", "m"]).fails();
    assert!(
        r.stdout.contains("Missing:       1 blocks") && r.stdout.contains(&h),
        "{}",
        r.stdout
    );
    let r = diskdump(
        &store,
        &["restore", "m", "-o", dir.path().join("o").to_str().unwrap()],
    )
    .fails();
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
}

#[test]
fn gc_deletes_exactly_the_unreferenced_blocks() {
    let a = images::mixed(BS, 12, 0, 7);
    let b = images::mixed(BS, 12, 999, 8);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&ia, &a);
    images::write(&ib, &b);
    diskdump(&store, &["import", ia.to_str().unwrap(), "--as", "a"]).ok();
    diskdump(&store, &["import", ib.to_str().unwrap(), "--as", "b"]).ok();
    let all = block_files(&store);
    let names = |data: &[u8]| -> HashSet<String> {
        data.chunks(BS)
            .map(|c| format!("{}.lz4", sha256_hex(c)))
            .collect()
    };
    let (na, nb) = (names(&a), names(&b));
    let only_b: HashSet<_> = nb.difference(&na).cloned().collect();
    assert!(!only_b.is_empty());
    let mb = store.join(only_manifest_named(&store, "b"));
    fs::remove_file(mb).unwrap();
    common::age_store(&store);
    let r = diskdump(&store, &["gc", "--dry-run"]).ok();
    assert!(
        r.stdout
            .contains(&format!("would remove {} unreferenced", only_b.len())),
        "{}",
        r.stdout
    );
    assert_eq!(block_files(&store), all, "dry run deletes nothing");
    let r = diskdump(&store, &["gc"]).ok();
    assert!(
        r.stdout
            .contains(&format!("removed {} unreferenced", only_b.len())),
        "{}",
        r.stdout
    );
    let left: HashSet<String> = block_files(&store)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: HashSet<String> = all
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| !only_b.contains(n))
        .collect();
    assert_eq!(left, expected);
    let (_, bytes, _) = diskdump_bytes(&store, &["restore", "a"]);
    assert_eq!(bytes, a);
    diskdump(&store, &["verify"]).ok();
}

/// A second, valid dump removed again, leaving orphan blocks for gc to find.
fn only_manifest_named_in_day(store: &Path) -> String {
    let img = store.join("orphan.img");
    images::write(&img, &images::random_bytes(3 * BS, 77));
    diskdump(store, &["import", img.to_str().unwrap(), "--as", "orphan"]).ok();
    fs::remove_file(&img).unwrap();
    let r = diskdump(store, &["status"]).fails();
    r.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|m| m.ends_with("/orphan.manifest"))
        .expect("orphan listed")
        .to_string()
}

fn only_manifest_named(store: &Path, name: &str) -> String {
    let r = diskdump(store, &["status"]).ok();
    r.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|m| m.ends_with(&format!("/{name}.manifest")))
        .unwrap_or_else(|| panic!("{name} in {}", r.stdout))
        .to_string()
}

#[test]
fn bad_manifest_line_is_rejected_and_stops_gc() {
    let data = images::mixed(BS, 6, 0, 9);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "g"]).ok();
    let m = only_manifest(&store);
    let text = fs::read_to_string(&m).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[8] = "not-a-hash";
    fs::write(&m, lines.join("\n") + "\n").unwrap();
    let r = diskdump(&store, &["restore", "g"]).fails();
    assert!(
        r.stderr.contains("g.manifest line 9") && r.stderr.contains("not-a-hash"),
        "{}",
        r.stderr
    );
    // A broken manifest: gc must delete nothing, not even its own garbage.
    fs::remove_file(store.join(only_manifest_named_in_day(&store))).ok();
    let before = block_files(&store);
    let r = diskdump(&store, &["gc"]).fails();
    assert!(
        r.stderr.contains("gc stopped before deleting anything"),
        "{}",
        r.stderr
    );
    assert_eq!(block_files(&store), before);
    let r = diskdump(&store, &["verify"]).fails();
    assert!(r.stdout.contains("unreadable manifest"), "{}", r.stdout);
}

#[test]
#[cfg_attr(not(have_lz4), ignore = "needs the lz4 command")]
fn block_files_are_lz4_frames_named_by_their_sha256() {
    common::need(common::have("lz4"), "the lz4 command (apt-get install lz4)");
    let data = images::mixed(BS, 6, 10, 10);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "z"]).ok();
    let files = block_files(&store);
    assert!(files.len() >= 5);
    for f in files {
        let out = Command::new("lz4").arg("-dc").arg(&f).output().unwrap();
        assert!(out.status.success(), "lz4 -dc {f:?}");
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        assert_eq!(sha256_hex(&out.stdout), name);
    }
}

#[test]
fn verify_repair_quarantines_and_the_next_import_heals() {
    let data = images::mixed(BS, 12, 0, 11);
    let (dir, img) = setup(&data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "r"]).ok();
    let bad = corrupt_block(&store, &data[3 * BS..4 * BS]);
    let r = diskdump(&store, &["verify", "--repair"]).fails();
    assert!(r.stdout.contains("moved aside"), "{}", r.stdout);
    assert!(!bad.exists());
    let mut aside = bad.clone().into_os_string();
    aside.push(".bad");
    assert!(Path::new(&aside).exists());
    // The quarantined block is no longer "present": re-importing stores it.
    let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", "r"]).ok();
    assert!(r.stdout.contains("(1 new"), "{}", r.stdout);
    assert!(bad.exists());
    let (_, bytes, _) = diskdump_bytes(&store, &["restore", "r"]);
    assert!(bytes == data);
    // The .bad file is a note, not damage: the store verifies.
    let r = diskdump(&store, &["verify"]).ok();
    assert!(
        r.stdout.contains(".lz4.bad: a damaged block moved aside")
            && r.stdout.contains("no problems"),
        "{}",
        r.stdout
    );
}

#[test]
fn ctrl_c_during_import_leaves_no_manifest_and_a_valid_store() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    // Random data up front, then a long sparse tail: the import is still busy
    // when the signal arrives.
    images::write(&img, &images::random_bytes(8 * BS, 5));
    images::slow_tail(&img, 64 << 30);
    let store = dir.path().join("store");
    let child = common::spawn_diskdump(&store, &["import", img.to_str().unwrap(), "--as", "big"]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("no manifest"),
        "{err}"
    );
    let manifests: Vec<_> = common::walk(&store)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "manifest"))
        .collect();
    assert!(manifests.is_empty(), "{manifests:?}");
    let strays: Vec<_> = common::walk(&store)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp."))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
    diskdump(&store, &["verify"]).ok();
}

#[test]
fn gc_runs_beside_an_import_and_never_sweeps_blocks_it_relies_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let data = images::random_bytes(8 * BS, 50);
    // The next import finds them "already present": gc must keep them
    // (it defers while an import that answers from the index runs).
    common::orphaned_store(&store, dir.path(), &data);
    let big = dir.path().join("big.img");
    images::write(&big, &data);
    images::slow_tail(&big, 6 << 30);
    let mut import =
        common::spawn_diskdump(&store, &["import", big.to_str().unwrap(), "--as", "big"]);
    // Registered: a gc now defers to it (it answers from the index).
    common::wait_for_writer(&store);
    common::gc_beside_a_writer(&store, 0);
    assert!(
        import.try_wait().unwrap().is_none(),
        "gc ran while the import did"
    );
    let imported = import.wait_with_output().unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    diskdump(&store, &["verify"]).ok();
    let (code, bytes, _) = diskdump_bytes(
        &store,
        &[
            "restore",
            "big",
            "-o",
            dir.path().join("r.img").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    let _ = bytes;
    let restored = fs::File::open(dir.path().join("r.img")).unwrap();
    let mut head = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut &restored, &mut head).unwrap();
    assert!(head == data);
    assert_eq!(restored.metadata().unwrap().len(), 6 << 30);
}

#[test]
fn a_second_gc_refuses_or_waits_clearly_and_imports_never_wait() {
    let (dir, img) = setup(&images::mixed(BS, 4, 0, 51));
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "x"]).ok();
    // Hold the lock exclusively the way a running gc does.
    let holder = Command::new("flock")
        .args([
            "-x",
            store.join(".blockstore/lock").to_str().unwrap(),
            "sleep",
            "4",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = diskdump(&store, &["gc", "--no-wait"]).fails();
    assert!(
        r.stderr.contains("busy") && r.stderr.contains("another gc"),
        "{}",
        r.stderr
    );
    let mut holder = holder;
    let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", "y"]).ok();
    assert!(!r.stderr.contains("waiting"), "{}", r.stderr);
    // Done while the "gc" still holds the lock: the import did not wait.
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the lock holder ended first"
    );
    let r = diskdump(&store, &["gc"]).ok();
    assert!(r.stderr.contains("waiting for another gc"), "{}", r.stderr);
    holder.wait().unwrap();
}

/// Import count of new blocks from its report: "(N new, ...".
fn new_count(stdout: &str) -> usize {
    let (_, rest) = stdout.split_once(" blocks (").expect("import report");
    rest.split_once(" new").unwrap().0.parse().unwrap()
}

#[test]
fn kill_9_during_import_leaves_whole_blocks_and_the_rerun_stores_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    // 24 MiB of random blocks (192 distinct), then a long sparse tail whose
    // only data is one byte every 4 MiB (one more distinct block); the store
    // also keeps the all-zero block, which import writes first.
    images::write(&img, &images::random_bytes(192 * BS, 60));
    images::slow_tail(&img, 16 << 30);
    let unique = 194;
    let store = dir.path().join("store");
    // Kill points: at the first block files, mid-way through the random
    // blocks, and later while the tail is being read.
    let points: [(usize, u64); 3] = [(2, 0), (48, 0), (2, 400)];
    for (min_blocks, extra_ms) in points {
        let child =
            common::spawn_diskdump(&store, &["import", img.to_str().unwrap(), "--as", "big"]);
        common::wait_until(60, "blocks being written", || {
            block_files(&store).len() >= min_blocks
        });
        std::thread::sleep(std::time::Duration::from_millis(extra_ms));
        common::signal(&child, libc::SIGKILL);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(libc::SIGKILL)
        );
        assert!(common::all_manifests(&store).is_empty());
        common::whole_blocks_and_temps(&store, BS);
    }
    let (present, _) = common::whole_blocks_and_temps(&store, BS);
    assert!(present > 0 && present <= unique, "{present}");
    // The re-run (of a shorter image: the same data, the tail's block, holes).
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", "big"]).ok();
    // Only what had not arrived (the zero block is never counted as new).
    assert_eq!(new_count(&r.stdout), unique - present, "{}", r.stdout);
    // Left-over temp files are gc's to remove; then the store verifies.
    let r = diskdump(&store, &["gc"]).ok();
    assert!(
        r.stdout.contains("removed 0 unreferenced blocks"),
        "{}",
        r.stdout
    );
    let (blocks, temps) = common::whole_blocks_and_temps(&store, BS);
    assert_eq!((blocks, temps), (unique, vec![]));
    diskdump(&store, &["verify"]).ok();
    let out = dir.path().join("r.img");
    diskdump(&store, &["restore", "big", "-o", out.to_str().unwrap()]).ok();
    assert!(fs::read(&out).unwrap() == fs::read(&img).unwrap());
}

#[test]
fn hostile_dump_names_are_refused_before_any_work() {
    let (dir, img) = setup(&[1, 2, 3]);
    let store = dir.path().join("store");
    let long = "n".repeat(129);
    let names = [
        "",
        "a\nb",
        "a\rb",
        "/etc/passwd",
        "..",
        "a/../../b",
        "a\tb",
        "é",
        &long,
    ];
    for name in names {
        let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", name]).fails();
        assert!(
            r.stderr.contains("invalid dump name"),
            "{name:?}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.trim().lines().count(), 1, "{name:?}: {}", r.stderr);
        let r = diskdump(&store, &["dump", "h:/dev/sda", "--as", name]).fails();
        assert!(
            r.stderr.contains("invalid dump name"),
            "{name:?}: {}",
            r.stderr
        );
    }
    assert!(
        common::all_manifests(&store).is_empty() && block_files(&store).is_empty(),
        "nothing was written"
    );
    // The longest valid name works.
    diskdump(
        &store,
        &["import", img.to_str().unwrap(), "--as", &"n".repeat(128)],
    )
    .ok();
}

#[test]
fn restore_leaves_zero_pages_inside_data_blocks_as_holes() {
    // Each block holds one 4 KiB page of data among zero pages, and the
    // source file has only those pages allocated, as a filesystem image has.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sparse.img");
    let f = fs::File::create(&img).unwrap();
    let mut data = vec![0u8; 8 * BS];
    for b in 0..8 {
        let at = b * BS + (b * 3 % 32) * 4096;
        let page = images::random_bytes(4096, b as u64);
        data[at..at + 4096].copy_from_slice(&page);
        std::os::unix::fs::FileExt::write_all_at(&f, &page, at as u64).unwrap();
    }
    f.set_len(data.len() as u64).unwrap();
    f.sync_all().unwrap();
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "pages"]).ok();
    let out = dir.path().join("out.img");
    diskdump(&store, &["restore", "pages", "-o", out.to_str().unwrap()]).ok();
    assert!(fs::read(&out).unwrap() == data);
    let (src, got) = (fs::metadata(&img).unwrap(), fs::metadata(&out).unwrap());
    assert!(
        got.blocks() <= src.blocks(),
        "restored file allocates {} sectors, the source {}",
        got.blocks(),
        src.blocks()
    );
}

/// An import reads what is not cached directly: it adds nothing to the page
/// cache (a large image would otherwise push everything else out), while
/// the part already cached is copied from there and stays cached.
#[test]
fn import_neither_fills_nor_empties_the_page_cache() {
    use common::pagecache::{cache_drops, cache_prefix, evict, resident_pages};
    // On a disk filesystem (a tmpfs keeps every page cached, which would prove nothing).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = images::mixed(BS, 192, 0, 78); // 24 MiB
    let img = dir.path().join("disk.img");
    images::write(&img, &data);
    let store = dir.path().join("store");
    for tries in 1.. {
        assert!(
            tries <= 5,
            "the page cache was dropped by someone else 5 times in a row"
        );
        let drops = cache_drops();
        evict(&img);
        common::need(
            !resident_pages(&img).iter().any(|&r| r),
            "a filesystem under /var/tmp whose pages posix_fadvise(DONTNEED) drops",
        );
        let third = data.len() / 3;
        cache_prefix(&img, third);
        let cached = resident_pages(&img);
        let page = data.len() / cached.len();
        assert!(cached[..third / page].iter().all(|&r| r));
        let name = format!("disk{tries}");
        diskdump(&store, &["import", img.to_str().unwrap(), "--as", &name]).ok();
        let after = resident_pages(&img);
        if cache_drops() != drops {
            continue;
        }
        let added = (0..after.len()).filter(|&i| !cached[i] && after[i]).count();
        assert_eq!(added, 0, "the import read the image into the page cache");
        let dropped = (0..after.len()).filter(|&i| cached[i] && !after[i]).count();
        // A few may go to the machine's own reclaim meanwhile (this VM runs DAMON pageout).
        assert!(
            dropped * 4 < third / page,
            "{dropped} of the image's cached pages were evicted by the import"
        );
        let (code, restored, err) = diskdump_bytes(&store, &["restore", &name]);
        assert_eq!(code, 0, "{err}");
        assert!(restored == data, "restored bytes differ");
        break;
    }
}
