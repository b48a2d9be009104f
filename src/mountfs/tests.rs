//! MountFs without the kernel: a real store in a temp dir, calls as FUSE
//! would make them.

use super::*;
use crate::digest::Digest;
use crate::manifest::MAGIC;
use crate::store::LocalStore;
use crate::testutil::{image, manifest, BS};
use std::path::Path;

fn dated(root: &Path, name: &str, date: &str, data: &[u8]) {
    let store = LocalStore::open(root).unwrap();
    store
        .write_manifest(name, &manifest(&store, date, data))
        .unwrap();
}

/// A Python-era manifest written by hand; `bare` leaves out the counts and
/// the date, as the oldest ones did.
fn legacy(root: &Path, name: &str, n: u32, data: &[u8], bare: bool) -> std::path::PathBuf {
    let store = LocalStore::open(root).unwrap();
    let m = manifest(&store, "2025-12-31T23:00:00", data);
    let text = if bare {
        let hashes: String = m.blocks.iter().map(|d| format!("{d}\n")).collect();
        format!("{MAGIC}\n# source: old:/dev/sdb\n# block_size: {BS}\n{hashes}")
    } else {
        m.render()
    };
    let dir = root.join(".blockstore/manifests").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{n}.manifest"));
    std::fs::write(&path, text).unwrap();
    path
}

fn setup() -> (tempfile::TempDir, MountFs) {
    let dir = tempfile::tempdir().unwrap();
    LocalStore::open_or_create(dir.path(), Some(BS)).unwrap();
    let data = image();
    dated(dir.path(), "web-sda", "2026-04-24T03:00:12+00:00", &data);
    dated(
        dir.path(),
        "web-sda",
        "2026-04-24T09:00:00+00:00",
        &data[..BS * 2],
    );
    dated(
        dir.path(),
        "db-sdb",
        "2026-05-01T00:00:00+00:00",
        &data[BS..],
    );
    legacy(dir.path(), "oldbox", 1, &data, false);
    let store = LocalStore::open(dir.path()).unwrap();
    let opts = FsOptions {
        cache_bytes: 1 << 20,
        ..FsOptions::default()
    };
    (dir, MountFs::new(Arc::new(store), &opts).unwrap())
}

/// Walks `path` from the root as the kernel does, one lookup per name.
fn resolve(fs: &MountFs, path: &str) -> FsResult<Attr> {
    let mut a = fs.getattr(ROOT)?;
    for name in path.split('/').filter(|n| !n.is_empty()) {
        a = fs.lookup(a.ino, name)?;
    }
    Ok(a)
}

fn list(fs: &MountFs, path: &str) -> Vec<String> {
    let ino = resolve(fs, path).unwrap().ino;
    let fh = fs.opendir(ino).unwrap();
    let names = fs
        .readdir(fh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    fs.releasedir(fh);
    names
}

fn open(fs: &MountFs, path: &str) -> u64 {
    fs.open(resolve(fs, path).unwrap().ino, false).unwrap()
}

#[test]
fn tree_mirrors_dated_and_python_era_manifests() {
    let (_d, fs) = setup();
    assert_eq!(fs.image_count(), 4);
    assert_eq!(list(&fs, ""), [".", "..", "2026", "legacy"]);
    assert_eq!(list(&fs, "2026"), [".", "..", "04", "05"]);
    assert_eq!(
        list(&fs, "2026/04/24"),
        [".", "..", "web-sda+2.img", "web-sda.img"]
    );
    assert_eq!(list(&fs, "legacy"), [".", "..", "oldbox"]);
    assert_eq!(list(&fs, "legacy/oldbox"), [".", "..", "1.img"]);
    // Inode numbers: the same from lookups and listings, stable over time.
    let a = resolve(&fs, "2026/04/24/web-sda.img").unwrap();
    let fh = fs.opendir(resolve(&fs, "2026/04/24").unwrap().ino).unwrap();
    let listed = fs.readdir(fh).unwrap();
    assert_eq!(
        listed.iter().find(|e| e.name == "web-sda.img").unwrap().ino,
        a.ino
    );
    assert_eq!(listed[1].ino, resolve(&fs, "2026/04").unwrap().ino); // ".."
    assert_eq!(resolve(&fs, "2026/04/24/web-sda.img").unwrap().ino, a.ino);
    // Misses, and names that cannot exist.
    for missing in [
        "2027",
        "2026/04/25",
        "2026/04/24/x.img",
        "2026/04/24/web-sda.manifest",
        ".git",
    ] {
        assert_eq!(resolve(&fs, missing), Err(Errno::ENOENT), "{missing}");
    }
    assert_eq!(fs.lookup(a.ino, "x"), Err(Errno::ENOTDIR));
    assert_eq!(fs.opendir(a.ino), Err(Errno::ENOTDIR));
    assert_eq!(fs.getattr(9999), Err(Errno::ENOENT));
}

#[test]
fn attributes_come_from_the_header_and_dates() {
    let (dir, fs) = setup();
    let data = image();
    let a = resolve(&fs, "2026/04/24/web-sda.img").unwrap();
    assert_eq!(
        (a.kind, a.size, a.perm, a.nlink),
        (FileKind::Image, data.len() as u64, 0o400, 1)
    );
    assert_eq!(a.blksize as usize, BS);
    let date = chrono::DateTime::parse_from_rfc3339("2026-04-24T03:00:12Z").unwrap();
    assert_eq!(a.time, SystemTime::from(date));
    assert_eq!(a.blocks, 0, "unknown until the manifest is read");
    let fh = fs.open(a.ino, false).unwrap();
    let data_bytes = data.len() - 2 * BS; // two zero blocks
    assert_eq!(
        fs.getattr(a.ino).unwrap().blocks,
        (data_bytes as u64).div_ceil(512)
    );
    fs.release(fh);
    let d = resolve(&fs, "2026/04/24").unwrap();
    assert_eq!((d.kind, d.perm, d.nlink), (FileKind::Dir, 0o500, 2));
    let day = chrono::DateTime::parse_from_rfc3339("2026-04-24T00:00:00Z").unwrap();
    assert_eq!(d.time, SystemTime::from(day));
    assert_eq!(resolve(&fs, "2026").unwrap().nlink, 4); // two month dirs
                                                        // A bare Python-era manifest: size by counting hashes, time from mtime.
    let p = legacy(dir.path(), "bare", 7, &data[..BS * 3 - 5], true);
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let b = resolve(&fs, "legacy/bare/7.img").unwrap();
    assert_eq!((b.size, b.time), (3 * BS as u64, mtime));
    // Its last block is shorter than the manifest claims: EIO, not a panic.
    let fh = fs.open(b.ino, false).unwrap();
    let mut buf = vec![0u8; BS];
    assert_eq!(fs.read(fh, 0, &mut buf), Ok(BS));
    assert_eq!(fs.read(fh, 2 * BS as u64, &mut buf), Err(Errno::EIO));
}

#[test]
fn reads_at_odd_offsets_across_blocks_and_the_tail() {
    let (_d, fs) = setup();
    let data = image();
    let fh = open(&fs, "2026/04/24/web-sda.img");
    for (off, len) in [
        (0, 1),
        (BS - 1, 2),
        (BS - 3, BS + 7),
        (100, 3 * BS),
        (2 * BS + 1, 2 * BS),
        (5 * BS, 1000),
        (5 * BS + 999, 5),
        (5 * BS - 1, 4000),
        (3, data.len()),
        (0, 1 << 20),
    ] {
        let mut buf = vec![0xAA; len];
        let n = fs.read(fh, off as u64, &mut buf).unwrap();
        let want = &data[off..(off + len).min(data.len())];
        assert_eq!(&buf[..n], want, "off {off} len {len}");
    }
    let mut buf = [7u8; 10];
    assert_eq!(fs.read(fh, data.len() as u64, &mut buf), Ok(0));
    assert_eq!(fs.read(fh, 1 << 40, &mut buf), Ok(0));
    fs.release(fh);
    assert_eq!(fs.read(fh, 0, &mut buf), Err(Errno::EBADF));
    // The legacy copy is the same image.
    let fh = open(&fs, "legacy/oldbox/1.img");
    let mut all = vec![0; data.len()];
    assert_eq!(fs.read(fh, 0, &mut all), Ok(data.len()));
    assert_eq!(all, data);
}

#[test]
fn zero_blocks_are_holes() {
    let (_d, fs) = setup();
    let size = image().len() as u64;
    let bs = BS as u64;
    let fh = open(&fs, "2026/04/24/web-sda.img");
    let seek = |off: i64, w| fs.seek(fh, off, w);
    assert_eq!(seek(0, Whence::Data), Ok(0));
    assert_eq!(seek(0, Whence::Hole), Ok(bs));
    assert_eq!(seek(bs as i64 + 5, Whence::Data), Ok(2 * bs));
    assert_eq!(seek(bs as i64 + 5, Whence::Hole), Ok(bs + 5));
    assert_eq!(seek(3 * bs as i64, Whence::Data), Ok(4 * bs));
    assert_eq!(
        seek(4 * bs as i64, Whence::Hole),
        Ok(size),
        "the end is a hole"
    );
    assert_eq!(seek(size as i64 - 1, Whence::Data), Ok(size - 1));
    assert_eq!(seek(size as i64, Whence::Data), Err(Errno::ENXIO));
    assert_eq!(seek(size as i64, Whence::Hole), Err(Errno::ENXIO));
    assert_eq!(seek(-1, Whence::Data), Err(Errno::ENXIO));
}

#[test]
fn a_bad_block_fails_only_the_reads_that_touch_it() {
    let (dir, fs) = setup();
    let data = image();
    let store = LocalStore::open(dir.path()).unwrap();
    let victim = store.block_path(&Digest::of(&data[2 * BS..3 * BS]));
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let fh = open(&fs, "2026/04/24/web-sda.img");
    let mut buf = vec![0u8; 300];
    for off in [2 * BS, 2 * BS + 100, BS * 2 - 100, 3 * BS - 1] {
        assert_eq!(fs.read(fh, off as u64, &mut buf), Err(Errno::EIO), "{off}");
    }
    assert_eq!(fs.files.reported_count(), 1, "logged once per block");
    for off in [0, BS - 300, 3 * BS, 4 * BS + 10, data.len() - 300] {
        assert_eq!(fs.read(fh, off as u64, &mut buf), Ok(300));
        assert_eq!(buf, &data[off..off + 300]);
    }
    std::fs::remove_file(&victim).unwrap();
    assert_eq!(fs.read(fh, 2 * BS as u64, &mut buf), Err(Errno::EIO));
    // A damaged manifest: EIO for stat and open, not a crash or wrong size.
    let m = dir.path().join("2026/05/01/db-sdb.manifest");
    std::fs::write(&m, "garbage\n").unwrap();
    assert_eq!(resolve(&fs, "2026/05/01/db-sdb.img"), Err(Errno::EIO));
}

#[test]
fn dumps_written_or_removed_while_mounted_show_up() {
    let (dir, fs) = setup();
    let data = image();
    let before = resolve(&fs, "2026/04/24/web-sda.img").unwrap().ino;
    assert_eq!(resolve(&fs, "2026/06/02/new.img"), Err(Errno::ENOENT));
    dated(dir.path(), "new", "2026-06-02T00:00:00Z", &data);
    // The very next lookup sees it, without waiting for any TTL.
    let a = resolve(&fs, "2026/06/02/new.img").unwrap();
    assert_eq!(a.size, data.len() as u64);
    assert_eq!(list(&fs, "2026"), [".", "..", "04", "05", "06"]);
    legacy(dir.path(), "oldbox", 2, &data, false);
    assert_eq!(list(&fs, "legacy/oldbox"), [".", "..", "1.img", "2.img"]);
    // Removed: gone from the next listing and lookup; the same name
    // written again is a new file with a new inode number.
    let m = dir.path().join("2026/06/02/new.manifest");
    std::fs::remove_file(&m).unwrap();
    assert_eq!(list(&fs, "2026/06/02"), [".", ".."]);
    assert_eq!(resolve(&fs, "2026/06/02/new.img"), Err(Errno::ENOENT));
    dated(dir.path(), "new", "2026-06-02T00:00:00Z", &data[..100]);
    let again = resolve(&fs, "2026/06/02/new.img").unwrap();
    assert_ne!(again.ino, a.ino);
    assert_eq!(again.size, 100);
    assert_eq!(resolve(&fs, "2026/04/24/web-sda.img").unwrap().ino, before);
}

#[test]
fn read_only_and_kinds() {
    let (_d, fs) = setup();
    let img = resolve(&fs, "2026/04/24/web-sda.img").unwrap().ino;
    assert_eq!(fs.open(img, true), Err(Errno::EROFS));
    assert_eq!(fs.open(ROOT, false), Err(Errno::EISDIR));
    let dh = fs.opendir(ROOT).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(fs.read(dh, 0, &mut buf), Err(Errno::EBADF));
    let fh = fs.open(img, false).unwrap();
    assert_eq!(fs.readdir(fh), Err(Errno::EBADF));
}

#[test]
fn parsed_manifests_are_bounded() {
    let (dir, _) = setup();
    let data = image();
    for i in 0..6 {
        dated(dir.path(), &format!("m{i}"), "2026-07-01T00:00:00Z", &data);
    }
    let store = LocalStore::open(dir.path()).unwrap();
    let per = 6 * std::mem::size_of::<Digest>(); // six blocks each
    let opts = FsOptions {
        manifest_bytes: 2 * per,
        ..FsOptions::default()
    };
    let fs = MountFs::new(Arc::new(store), &opts).unwrap();
    for i in 0..6 {
        let fh = open(&fs, &format!("2026/07/01/m{i}.img"));
        fs.release(fh);
        assert!(fs.files.cached_manifests() <= (2, 2 * per));
    }
}

#[test]
fn a_manifest_replaced_at_the_same_path_is_a_new_image() {
    let (d, fs) = setup();
    let path = "2026/05/01/db-sdb.img";
    let old = resolve(&fs, path).unwrap();
    let fh = open(&fs, path);
    let data = image();
    let mut buf = vec![0u8; BS];
    assert_eq!(fs.read(fh, 0, &mut buf).unwrap(), BS);
    assert_eq!(buf, data[BS..BS * 2]);
    // Deleted and written again, other data, same path (what retention does).
    let file = d.path().join("2026/05/01/db-sdb.manifest");
    std::fs::remove_file(&file).unwrap();
    dated(
        d.path(),
        "db-sdb",
        "2026-05-01T00:00:00+00:00",
        &data[..BS * 3],
    );
    assert!(file.exists());
    // Within the listing's TTL the old inode may still be looked up: it is
    // the old image throughout (its parsed manifest is kept), or ESTALE,
    // after which the kernel looks the name up again ...
    if let Ok(a) = fs.lookup(resolve(&fs, "2026/05/01").unwrap().ino, "db-sdb.img") {
        if a.ino == old.ino {
            match fs.open(a.ino, false) {
                Ok(h) => {
                    fs.read(h, 0, &mut buf).unwrap();
                    assert_eq!(buf, data[BS..BS * 2]);
                    fs.release(h);
                }
                Err(e) => assert_eq!(e, Errno::ESTALE),
            }
        }
    }
    // ... and from then on the path is the new image under a new inode.
    std::thread::sleep(DIR_TTL);
    let new = resolve(&fs, path).unwrap();
    assert_ne!(new.ino, old.ino);
    assert_eq!(new.size, (BS * 3) as u64);
    let fh2 = fs.open(new.ino, false).unwrap();
    assert_eq!(fs.read(fh2, 0, &mut buf).unwrap(), BS);
    assert_eq!(buf, data[..BS]);
    // The handle opened before keeps reading the old image, consistently.
    assert_eq!(fs.read(fh, BS as u64, &mut buf).unwrap(), BS);
    assert_eq!(buf, data[BS * 2..BS * 3]);
    assert_eq!(fs.getattr(old.ino).unwrap().size, old.size);
}
