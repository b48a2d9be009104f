//! A store (or a restore target) on a small filesystem that fills up: a clear
//! "no space" error, no manifest, a store that still verifies, and success
//! once space is freed. Needs root to mount a size-limited tmpfs.

mod common;

use common::{all_manifests, diskdump, images, whole_blocks_and_temps};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const BS: usize = 131072;

/// A tmpfs of `size` bytes mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: u64) -> Tmpfs {
        common::need(common::is_root(), "root (to mount a tmpfs)");
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        common::need(ok, "mount -t tmpfs");
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem holding `path` completely with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0xAAu8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    // Then byte by byte into the last partial chunk.
    while f.write_all(&[0xAA]).is_ok() {}
    p
}

/// The error of a failed run: one line that says the disk is full.
fn assert_no_space(r: &common::Run) {
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{}", r.stderr);
    assert!(
        line.to_lowercase().contains("no space"),
        "says the disk is full: {line}"
    );
}

#[test]
#[cfg_attr(not(have_root), ignore = "needs root")]
fn import_into_a_full_store_fails_clearly_and_succeeds_after_space_is_freed() {
    let fs_ = Tmpfs::new(24 << 20);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = images::random_bytes(128 * BS, 90); // 16 MiB, incompressible
    images::write(&img, &data);
    let store = fs_.path().join("store");
    // Only ~4 MiB left for the store.
    fs::write(fs_.path().join("filler"), vec![1u8; 20 << 20]).unwrap();
    let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).fails();
    assert_no_space(&r);
    assert!(all_manifests(&store).is_empty());
    let (_, temps) = whole_blocks_and_temps(&store, BS);
    assert!(temps.is_empty(), "temp files left: {temps:?}");
    diskdump(&store, &["verify"]).ok();
    fs::remove_file(fs_.path().join("filler")).unwrap();
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(bytes == data);
    diskdump(&store, &["verify"]).ok();
}

#[test]
#[cfg_attr(not(have_root), ignore = "needs root")]
fn a_manifest_that_does_not_fit_leaves_no_file_behind() {
    let fs_ = Tmpfs::new(8 << 20);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = images::random_bytes(8 * BS, 91);
    images::write(&img, &data);
    let store = fs_.path().join("store");
    // The blocks are there already; only the manifest needs space.
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    let first = common::only_manifest(&store);
    let before = common::walk(&store);
    let filler = fill(fs_.path());
    let r = diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).fails();
    assert_no_space(&r);
    assert_eq!(common::walk(&store), before, "no partial manifest left");
    assert_eq!(all_manifests(&store), vec![first]);
    fs::remove_file(filler).unwrap();
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    assert_eq!(all_manifests(&store).len(), 2);
    diskdump(&store, &["verify"]).ok();
}

#[test]
#[cfg_attr(not(have_root), ignore = "needs root")]
fn restore_onto_a_full_filesystem_fails_clearly_and_removes_its_output() {
    let fs_ = Tmpfs::new(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    images::write(&img, &images::random_bytes(64 * BS, 92)); // 8 MiB
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    let out = fs_.path().join("out.img");
    let r = diskdump(&store, &["restore", "d", "-o", out.to_str().unwrap()]).fails();
    assert_no_space(&r);
    assert!(
        r.stderr.contains("out.img"),
        "names the output: {}",
        r.stderr
    );
    let left: Vec<_> = common::walk(fs_.path());
    assert!(left.is_empty(), "partial output left: {left:?}");
}

#[test]
#[cfg_attr(not(all(have_sshd, have_root)), ignore = "needs root and sshd; root")]
fn dump_into_a_full_store_fails_clearly_and_succeeds_after_space_is_freed() {
    let sshd = common::sshd::Sshd::start();
    let fs_ = Tmpfs::new(24 << 20);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = images::random_bytes(128 * BS, 93);
    images::write(&img, &data);
    let store = fs_.path().join("store");
    fs::write(fs_.path().join("filler"), vec![1u8; 20 << 20]).unwrap();
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let dump = || {
        common::ensure_store(&store, &["dump"]);
        let o = Command::new(common::bin())
            .args(["--store", store.to_str().unwrap(), "dump", &target])
            .args(["--as", "d"])
            .envs(sshd.env())
            .output()
            .unwrap();
        common::Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    let r = dump().fails();
    assert!(
        r.stdout.contains("FAILED") && !r.stdout.to_lowercase().contains("no space"),
        "{}",
        r.stdout
    );
    // One line for the target, then the count of failed targets.
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("no manifest written") && l.contains("No space")),
        "{}",
        r.stderr
    );
    // Each error once: the target's line, then only a count.
    assert_eq!(r.stderr.matches("No space").count(), 1, "{}", r.stderr);
    assert_eq!(r.code, 1);
    assert!(all_manifests(&store).is_empty());
    assert!(whole_blocks_and_temps(&store, BS).1.is_empty());
    diskdump(&store, &["verify"]).ok();
    fs::remove_file(fs_.path().join("filler")).unwrap();
    dump().ok();
    let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(bytes == data);
}
