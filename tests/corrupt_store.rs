//! A damaged store: each kind of damage to a block file is named by `verify`
//! (file and reason, exit 1); a garbage `config.json` or a manifest with
//! absurd header values is a one-line error from every command, never a panic.

mod common;

use common::{block_files, dd, images, sha256_hex};
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
    dd(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
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
    let r = dd(&store, &["verify"]).fails();
    assert_eq!(r.code, 1);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM:") && l.contains(&hex))
        .unwrap_or_else(|| panic!("verify names {hex}: {}", r.stdout));
    assert!(line.contains(reason), "{reason:?} in {line}");
    let out = dir.path().join("out.img");
    let r = dd(&store, &["restore", "d", "-o", out.to_str().unwrap()]).fails();
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
