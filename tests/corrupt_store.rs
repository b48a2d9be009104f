//! A damaged store: each kind of damage to a block file is named by `verify`
//! (file and reason, exit 1); a garbage `config.json` or a manifest with
//! absurd header values is a one-line error from every command, never a panic.

mod common;

use common::{block_files, diskdump, images, sha256_hex};
use std::fs;
use std::path::{Path, PathBuf};

const BS: usize = 131072;

fn block_path(store: &Path, hex: &str) -> PathBuf {
    store
        .join(".blockstore")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(format!("{hex}.lz4"))
}

/// A store with one dump "d" of 6 distinct random blocks; returns the
/// store, the image and the data.
fn setup(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let data = images::random_bytes(6 * BS, 80);
    let img = dir.join("d.img");
    images::write(&img, &data);
    let store = dir.join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    (store, img, data)
}

/// Damages block 2's file with `damage`; `verify` must fail naming the file
/// and `reason`, and `restore` must fail naming block 2 and its offset.
fn damaged(damage: impl FnOnce(&Path, &Path), reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, data) = setup(dir.path());
    let hex = sha256_hex(&data[2 * BS..3 * BS]);
    let path = block_path(&store, &hex);
    damage(&path, &store);
    let r = diskdump(&store, &["verify"]).fails();
    assert_eq!(r.code, 1);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM:") && l.contains(&hex))
        .unwrap_or_else(|| panic!("verify names {hex}: {}", r.stdout));
    assert!(line.contains(reason), "{reason:?} in {line}");
    let out = dir.path().join("out.img");
    let r = diskdump(&store, &["restore", "d", "-o", out.to_str().unwrap()]).fails();
    assert!(
        r.stderr
            .contains(&format!("block 2 at image offset {}", 2 * BS)),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

#[test]
fn verify_names_a_truncated_block_file() {
    damaged(
        |p, _| {
            let len = fs::metadata(p).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        },
        "truncated",
    );
}

#[test]
fn verify_names_a_zero_length_block_file() {
    damaged(|p, _| fs::write(p, b"").unwrap(), "empty");
}

#[test]
fn verify_names_a_block_file_with_bytes_appended() {
    damaged(
        |p, _| {
            let mut b = fs::read(p).unwrap();
            b.extend_from_slice(b"junk");
            fs::write(p, b).unwrap();
        },
        "trailing bytes",
    );
}

#[test]
fn verify_names_an_oversized_block_file() {
    damaged(
        |p, _| fs::write(p, images::random_bytes(2 * BS, 81)).unwrap(),
        "larger than",
    );
}

#[test]
fn verify_names_a_block_stored_under_another_name() {
    // Block 3's file put in place of block 2's: a valid frame, wrong content.
    let mut other = String::new();
    damaged(
        |p, store| {
            let frames: Vec<PathBuf> = block_files(store).into_iter().filter(|f| f != p).collect();
            let src = &frames[0];
            other = src.file_stem().unwrap().to_string_lossy().into_owned();
            fs::copy(src, p).unwrap();
        },
        "content hashes to",
    );
    assert_eq!(other.len(), 64);
}

/// Checks a failed run: non-zero, one line, no panic, mentioning `want`.
fn one_line_error(r: &common::Run, what: &str, want: &str) {
    assert_ne!(r.code, 0, "{what}: {}", r.stdout);
    assert_ne!(r.code, 101, "{what} panicked: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{what}: {}", r.stderr);
    assert!(r.stderr.contains(want), "{what}: {want:?} in {}", r.stderr);
}

#[test]
fn garbage_config_json_is_a_clear_error_from_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (store, img, _) = setup(dir.path());
    let cfg = store.join(".blockstore/config.json");
    let img = img.to_str().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["info", "d"],
        vec!["verify"],
        vec!["verify", "--repair"],
        vec!["gc"],
        vec!["restore", "d"],
        vec!["import", img, "--as", "again"],
        vec!["dump", "nosuchhost.invalid:/dev/sda"],
    ];
    let garbage: [&[u8]; 7] = [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe\x00garbage",
        br#"{"version": 1, "block_size": "big"}"#,
        br#"{"version": 1, "block_size": 1e300}"#,
        br#"{"version": 1, "block_size": 18446744073709551615}"#,
    ];
    for g in garbage {
        fs::write(&cfg, g).unwrap();
        for args in &commands {
            let r = diskdump(&store, args);
            one_line_error(
                &r,
                &format!("{args:?} with {:?}", String::from_utf8_lossy(g)),
                "config.json",
            );
        }
        // mount checks the store before it mounts anything.
        let r = common::diskdump(
            &store,
            &["mount", store.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        one_line_error(&r, "mount", "config.json");
    }
    assert!(common::all_manifests(&store).len() == 1, "nothing written");
}

#[test]
fn absurd_manifest_headers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, data) = setup(dir.path());
    let h = sha256_hex(&data[..BS]);
    let day = store.join("2026/01/01");
    fs::create_dir_all(&day).unwrap();
    let cases = [
        (
            "huge-size",
            format!(
                "# block_size: {BS}\n# total_blocks: 1\n# total_size: 18446744073709551615\n{h}\n"
            ),
            "total_size",
        ),
        (
            "huge-count",
            format!("# block_size: {BS}\n# total_blocks: 18446744073709551615\n{h}\n"),
            "total_blocks",
        ),
        (
            "huge-bs",
            format!("# block_size: 18446744073709551615\n# total_blocks: 1\n{h}\n"),
            "block_size",
        ),
        (
            "bs-overflow",
            format!("# block_size: 99999999999999999999999\n{h}\n"),
            "block_size",
        ),
        (
            "size-no-hashes",
            "# block_size: 131072\n# total_blocks: 0\n# total_size: 1099511627776\n".to_string(),
            "total_size",
        ),
    ];
    for (name, body, want) in &cases {
        let text = format!(
            "# diskdump manifest v1\n# source: x:/y\n# date: 2026-01-01T00:00:00+00:00\n{body}"
        );
        fs::write(day.join(format!("{name}.manifest")), text).unwrap();
        for cmd in ["info", "restore", "verify"] {
            let r = diskdump(&store, &[cmd, name]);
            let what = format!("{cmd} {name}");
            if cmd == "verify" {
                // verify reports it as a problem on stdout and exits 1.
                assert_eq!(r.code, 1, "{what}: {}{}", r.stdout, r.stderr);
                assert!(
                    r.stdout.contains(want) || r.stderr.contains(want),
                    "{what}: {}{}",
                    r.stdout,
                    r.stderr
                );
            } else {
                one_line_error(&r, &what, want);
            }
        }
    }
    let r = diskdump(&store, &["gc"]).fails();
    assert!(
        r.stderr.contains("gc stopped before deleting anything"),
        "{}",
        r.stderr
    );
}

#[test]
fn left_over_temp_files_are_reported_by_verify_and_removed_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, data) = setup(dir.path());
    let hex = sha256_hex(&data[..BS]);
    // What a writer killed mid-way leaves: a partial block under a temp name,
    // and a manifest written but never renamed into place.
    let block_tmp = block_path(&store, &hex).with_extension("lz4.tmp.4242.0");
    fs::write(&block_tmp, b"partial").unwrap();
    let m = common::only_manifest(&store);
    let manifest_tmp = m.with_file_name("d.manifest.tmp.4242.0");
    fs::write(&manifest_tmp, &fs::read(&m).unwrap()[..100]).unwrap();
    // Left-overs are not damage: notes, and verify still passes.
    let r = diskdump(&store, &["verify"]).ok();
    for (p, why) in [
        (&block_tmp, "temp file of an interrupted write"),
        (&manifest_tmp, "unfinished manifest"),
    ] {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with("note: ") && l.contains(name) && l.contains(why)),
            "{name}: {}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("no problems"), "{}", r.stdout);
    // Neither is a dump: status, restore and gc's marking ignore them.
    let r = diskdump(&store, &["status"]).ok();
    assert!(!r.stdout.contains(".tmp."), "{}", r.stdout);
    common::age_store(&store);
    let r = diskdump(&store, &["gc"]).ok();
    assert!(r.stdout.contains("and 2 temp files"), "{}", r.stdout);
    assert!(!block_tmp.exists() && !manifest_tmp.exists());
    let r = diskdump(&store, &["verify"]).ok();
    assert!(!r.stdout.contains("note:"), "{}", r.stdout);
    let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(bytes == data);
}

/// Runs `diskdump ARGS` and fails the test if it has not ended within
/// `secs` (it is killed): for damage that could make a command wait forever.
fn within(secs: u64, store: &Path, args: &[&str]) -> common::Run {
    let mut c = common::spawn_diskdump(store, args);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while c.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > end {
            let _ = c.kill();
            panic!("diskdump {args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = c.wait_with_output().unwrap();
    common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {p:?}"
    );
}

/// A FIFO where a block file belongs (opening one for reading waits for a
/// writer forever): verify and restore name it instead of hanging, and the
/// next import of that data moves it aside and stores the block again.
#[test]
fn a_fifo_in_place_of_a_block_is_named_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let (store, img, data) = setup(dir.path());
    let hex = sha256_hex(&data[2 * BS..3 * BS]);
    let path = block_path(&store, &hex);
    fs::remove_file(&path).unwrap();
    mkfifo(&path);
    let r = within(30, &store, &["verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.lines().any(|l| l.starts_with("PROBLEM:")
            && l.contains(&hex)
            && l.contains("not a regular file")),
        "{}",
        r.stdout
    );
    let out = dir.path().join("out.img");
    let r = within(30, &store, &["restore", "d", "-o", out.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("block 2 at image offset {}", 2 * BS))
            && r.stderr.contains("not a regular file"),
        "{}",
        r.stderr
    );
    // Storing the data again repairs it (the index is dropped so the block
    // is looked at on disk, as after a crash).
    common::drop_index(&store);
    let r = within(30, &store, &["import", img.to_str().unwrap(), "--as", "d2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    let r = within(30, &store, &["restore", "d", "-o", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(fs::read(&out).unwrap() == data);
}

/// A FIFO named like a manifest: `list` names it unreadable, gc and verify
/// fail naming it (gc removes nothing it cannot rule out); none waits.
#[test]
fn a_fifo_named_like_a_manifest_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, data) = setup(dir.path());
    let day = common::only_manifest(&store)
        .parent()
        .unwrap()
        .to_path_buf();
    let fifo = day.join("x.manifest");
    mkfifo(&fifo);
    let before = block_files(&store).len();
    common::age_store(&store);
    // `list` shows it as unreadable among the others; gc and verify fail.
    for (args, fails) in [(&["list"][..], false), (&["gc"], true), (&["verify"], true)] {
        let r = within(30, &store, args);
        assert_eq!(r.code != 0, fails, "{args:?}: {}{}", r.stdout, r.stderr);
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(
            all.lines()
                .any(|l| l.contains("x.manifest") && l.contains("not a regular file")),
            "{args:?}: {all}"
        );
    }
    assert_eq!(block_files(&store).len(), before, "gc removed blocks");
    let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(bytes == data);
}
