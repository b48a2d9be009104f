//! `diskdump mount` through the kernel: the real binary, real FUSE mounts,
//! loop devices on top. See tests/common/mount.rs for the helpers and for
//! how a missing or closed /dev/fuse is reported.

mod common;

use common::images::random_bytes;
use common::mount::*;
use common::need_none;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const BS: usize = 128 * 1024;

/// Random, zero and repetitive blocks, and a ragged tail.
fn sample(seed: u64) -> Vec<u8> {
    let mut v = random_bytes(24 * BS, seed);
    v.extend(vec![0u8; 16 * BS]);
    v.extend((0..8 * BS).map(|i| b"some text, again "[i % 17]));
    v.extend(random_bytes(4 * BS + 12345, seed + 1));
    v
}

fn cmp(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .is_ok_and(|s| s.success())
}

/// The file's bytes through a read-only shared mapping (reads bypass the
/// page cache where the kernel allows it, and mmap must still work).
fn mmapped(p: &Path) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let f = File::open(p).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: a fresh read-only mapping of `len` bytes, copied out and unmapped.
    unsafe {
        let a = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(a, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let v = std::slice::from_raw_parts(a as *const u8, len).to_vec();
        libc::munmap(a, len);
        v
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// (fstype, source, mount options) of the mount at `mnt`.
fn mount_info(mnt: &Path) -> (String, String, String) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = mnt.to_string_lossy();
    let line = text
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*mnt))
        .expect("in mountinfo");
    let opts = line.split(' ').nth(5).unwrap().to_string();
    let mut tail = line.split(" - ").nth(1).unwrap().split(' ');
    let (fstype, source) = (tail.next().unwrap(), tail.next().unwrap());
    (fstype.into(), source.into(), opts)
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn image_bytes_equal_the_source_and_the_mount_is_read_only() {
    need_none(fuse_missing());
    let env = Env::new();
    let data = sample(1);
    let src = env.file("a.img", &data);
    let rel = env.import(&src, "web:/dev/sda", "2026-04-24T03:00:12Z");
    assert_eq!(rel, "2026/04/24/web-sda.img");
    // The same dump as a Python-era manifest.
    let legacy = env.store.join(".blockstore/manifests/web-sda");
    fs::create_dir_all(&legacy).unwrap();
    fs::copy(
        env.store.join("2026/04/24/web-sda.manifest"),
        legacy.join("1.manifest"),
    )
    .unwrap();
    let m = env.mount(&[]);
    let img = m.mnt.join(&rel);
    assert!(cmp(&src, &img), "image differs from its source");
    assert!(cmp(&src, &m.mnt.join("legacy/web-sda/1.img")));
    assert!(mmapped(&img) == data, "mmap of the image differs");
    assert_eq!(names(&m.mnt), ["2026", "legacy"]);
    let meta = fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), data.len() as u64);
    // A private store's images are its owner's only.
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_776_999_612);
    assert_eq!(meta.modified().unwrap(), date, "2026-04-24T03:00:12Z");
    let (fstype, source, opts) = mount_info(&m.mnt);
    assert_eq!((fstype.as_str(), source.as_str()), ("fuse", "diskdump"));
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    // Read-only, whatever the attempt.
    assert_eq!(errno(File::create(m.mnt.join("new"))), Some(libc::EROFS));
    assert_eq!(
        errno(File::options().write(true).open(&img)),
        Some(libc::EROFS)
    );
    let perms = fs::Permissions::from_mode(0o666);
    assert_eq!(errno(fs::set_permissions(&img, perms)), Some(libc::EROFS));
    assert_eq!(errno(fs::remove_file(&img)), Some(libc::EROFS));
    assert_eq!(errno(fs::create_dir(m.mnt.join("d"))), Some(libc::EROFS));
    let log = m.stop();
    assert!(log.contains("unmounted"), "{log}");
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn eight_threads_reading_random_ranges_get_the_right_bytes() {
    need_none(fuse_missing());
    let env = Env::new();
    let mut data = sample(2);
    data.extend(sample(3));
    let src = env.file("b.img", &data);
    let rel = env.import(&src, "b", "2026-04-25");
    let m = env.mount(&["--cache-size", "2M", "--threads", "8"]);
    let img = m.mnt.join(rel);
    let data = Arc::new(data);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (img, data) = (&img, data.clone());
            s.spawn(move || {
                let f = File::open(img).unwrap();
                let rnd = random_bytes(300 * 16, 100 + t);
                for r in rnd.chunks(16) {
                    let n = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
                    let off = (n(0) % data.len() as u64) as usize;
                    let len = (n(8) % (3 * BS as u64)) as usize + 1;
                    let mut buf = vec![0u8; len];
                    let got = f.read_at(&mut buf, off as u64).unwrap();
                    let want = &data[off..(off + len).min(data.len())];
                    assert_eq!(&buf[..got], want, "thread {t} at {off}+{len}");
                }
            });
        }
    });
    m.stop();
}

/// Files of assorted sizes in nested directories.
fn populate(dir: &Path) -> Vec<PathBuf> {
    let files: [(&str, Vec<u8>); 6] = [
        ("a.bin", random_bytes(3 << 20, 7)),
        ("sub/b.txt", b"hello from ext4\n".repeat(1000)),
        ("sub/deep/c.bin", random_bytes((10 << 20) + 1, 8)),
        ("sub/deep/zeros", vec![0u8; 1 << 20]),
        ("empty", Vec::new()),
        ("odd size", random_bytes(4097, 9)),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let p = dir.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, bytes).unwrap();
            PathBuf::from(name)
        })
        .collect()
}

fn sha256(p: &Path) -> [u8; 32] {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (mut h, mut buf) = (Sha256::new(), vec![0u8; 1 << 16]);
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize().into();
        }
        h.update(&buf[..n]);
    }
}

/// A loop mount, unmounted on drop.
struct LoopMount(PathBuf);

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[cfg_attr(not(have_loop), ignore = "needs root, /dev/fuse and loop devices")]
fn ext4_image_loop_mounted_from_the_fuse_mount_has_the_original_files() {
    need_none(loop_missing());
    let env = Env::new();
    let files = env.path("files");
    let list = populate(&files);
    let image = env.path("fs.img");
    make_ext4(&files, &image, "64M");
    let rel = env.import(&image, "ext4host:/dev/vdb", "2026-04-26T12:00:00Z");
    let m = env.mount(&[]);
    let inner = env.path("inner");
    fs::create_dir(&inner).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(m.mnt.join(&rel))
        .arg(&inner));
    let lm = LoopMount(inner.clone());
    for f in &list {
        assert_eq!(
            sha256(&inner.join(f)),
            sha256(&files.join(f)),
            "{}",
            f.display()
        );
    }
    drop(lm);
    assert!(!is_mounted(&inner));
    m.stop();
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn a_dump_imported_while_mounted_shows_up() {
    need_none(fuse_missing());
    let env = Env::new();
    let data = sample(4);
    let first = env.import(&env.file("c.img", &data), "c", "2026-04-24");
    let m = env.mount(&[]);
    assert_eq!(names(&m.mnt.join("2026")), ["04"]);
    let src = env.file("d.img", &data[..5 * BS + 3]);
    let rel = env.import(&src, "d", "2026-05-02T10:00:00Z");
    // No waiting: the next lookup and the next listing see it.
    assert_eq!(
        fs::metadata(m.mnt.join(&rel)).unwrap().len(),
        5 * BS as u64 + 3
    );
    assert_eq!(names(&m.mnt.join("2026")), ["04", "05"]);
    assert_eq!(names(&m.mnt.join("2026/05/02")), ["d.img"]);
    assert!(cmp(&src, &m.mnt.join(&rel)));
    assert!(m.mnt.join(first).exists());
    m.stop_with(libc::SIGINT);
}

/// The store path of the block holding `data`.
fn block_file(store: &Path, data: &[u8]) -> PathBuf {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    store
        .join(".blockstore")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(format!("{hex}.lz4"))
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn a_flipped_byte_in_one_block_gives_eio_for_that_range_only() {
    need_none(fuse_missing());
    let env = Env::new();
    let data = sample(5);
    let rel = env.import(&env.file("e.img", &data), "e", "2026-04-27");
    let k = 5; // a random block
    let victim = block_file(&env.store, &data[k * BS..(k + 1) * BS]);
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&victim, bytes).unwrap();
    // Through the page cache (the default) and with --direct-io alike.
    for args in [&[][..], &["--direct-io"]] {
        flipped_block_reads(&env, &rel, &data, k, args);
    }
}

fn flipped_block_reads(env: &Env, rel: &str, data: &[u8], k: usize, args: &[&str]) {
    let m = env.mount(args);
    let f = File::open(m.mnt.join(rel)).unwrap();
    let mut buf = vec![0u8; 4096];
    for off in [k * BS, k * BS + 100, (k + 1) * BS - 4096] {
        let e = f.read_at(&mut buf, off as u64).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "at {off}: {e}");
    }
    // Everything else reads, right up to the bad block and right after it.
    let mut block = vec![0u8; BS];
    for i in (0..data.len().div_ceil(BS)).filter(|&i| i != k) {
        let want = &data[i * BS..((i + 1) * BS).min(data.len())];
        let n = f.read_at(&mut block, (i * BS) as u64).unwrap();
        assert_eq!(&block[..n], want, "block {i}");
    }
    let e = fs::read(m.mnt.join(rel)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(f);
    let log = m.stop();
    let needle = format!("read error in block {k} at image offset {}", k * BS);
    assert_eq!(log.matches(&needle).count(), 1, "logged once: {log}");
    assert!(log.contains(rel) && log.contains("corrupt"), "{log}");
}

/// Whether the page of `f` at `offset` is in the page cache (mincore).
fn resident(f: &File, offset: usize) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a private read-only mapping of one page of an open file, only
    // passed to mincore (never read through) and unmapped before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            offset as libc::off_t,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let mut vec = [0u8; 1];
        assert_eq!(libc::mincore(p, 4096, vec.as_mut_ptr()), 0);
        libc::munmap(p, 4096);
        vec[0] & 1 == 1
    }
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn small_reads_are_served_from_the_page_cache_unless_direct_io() {
    need_none(fuse_missing());
    let env = Env::new();
    let data = sample(9);
    let rel = env.import(&env.file("c.img", &data), "c", "2026-04-29");
    for (args, cached) in [(&[][..], true), (&["--direct-io"][..], false)] {
        let m = env.mount(args);
        let path = m.mnt.join(&rel);
        let at = 3 * BS + 100;
        let mut buf = [0u8; 32];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut buf, at as u64)
            .unwrap();
        assert_eq!(buf[..], data[at..at + 32]);
        // Still cached for the next open: its small reads never reach the daemon.
        let f = File::open(&path).unwrap();
        assert_eq!(resident(&f, 3 * BS), cached, "{args:?}");
        f.read_exact_at(&mut buf, 7).unwrap();
        assert_eq!(buf[..], data[7..39]);
        drop(f);
        m.stop();
    }
}

#[test]
#[cfg_attr(not(have_loop), ignore = "needs root, /dev/fuse and loop devices")]
fn sigterm_with_a_loop_device_attached_detaches_and_exits() {
    need_none(loop_missing());
    let env = Env::new();
    let data = sample(6);
    let rel = env.import(&env.file("f.img", &data), "f", "2026-04-28");
    let mut m = env.mount(&[]);
    let out = run(Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(m.mnt.join(&rel)));
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    m.signal(libc::SIGTERM);
    assert!(wait_for(10, || !is_mounted(&m.mnt)), "still mounted");
    // Detached from the tree, still serving the loop device.
    assert!(
        m.try_wait().is_none(),
        "exited under its user: {}",
        m.log_text()
    );
    assert_eq!(read_prefix(&dev, 4 << 20), &data[..4 << 20]);
    run(Command::new("losetup").arg("-d").arg(&dev));
    let status = m.wait(20);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        m.log_text()
    );
    assert!(m.log_text().contains("busy"), "{}", m.log_text());
    assert!(!is_mounted(&m.mnt));
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn cp_sparse_always_copies_zero_blocks_as_holes() {
    need_none(fuse_missing());
    let env = Env::new();
    let mut data = vec![0u8; 64 << 20];
    for (i, at) in [0, 100 * BS, 300 * BS + 7].into_iter().enumerate() {
        data[at..at + BS].copy_from_slice(&random_bytes(BS, i as u64));
    }
    data.extend(random_bytes(999, 50)); // a ragged tail
    let src = env.file("g.img", &data);
    let rel = env.import(&src, "g", "2026-04-29");
    let m = env.mount(&[]);
    let copy = env.path("copy.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(m.mnt.join(&rel))
        .arg(&copy));
    assert!(cmp(&src, &copy), "copy differs");
    let used = allocated(&copy);
    assert!(
        used < data.len() as u64 / 8,
        "not sparse: {used} bytes allocated"
    );
    // The mount says so too, once the manifest has been read.
    assert!(allocated(&m.mnt.join(&rel)) < data.len() as u64 / 8);
    m.stop();
}

/// Runs `diskdump ARGS` expecting failure (exit 1); returns its stderr.
fn fails(cmd: &mut Command) -> String {
    fails_with(cmd, 1)
}

/// Runs `diskdump ARGS` expecting exit `code`; returns its one-line stderr.
fn fails_with(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn mount_cmd(store: &Path, mnt: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("mount").arg(store).arg(mnt);
    c
}

#[test]
fn bad_arguments_give_clear_one_line_errors() {
    let env = Env::new();
    env.import(&env.file("h.img", &sample(7)[..BS]), "h", "2026-04-30");
    let not_store = env.path("plain");
    fs::create_dir(&not_store).unwrap();
    let err = fails(&mut mount_cmd(&not_store, &env.mnt));
    assert!(err.contains("is not a diskdump store"), "{err}");
    let err = fails(&mut mount_cmd(&env.path("nope"), &env.mnt));
    assert!(err.contains("does not exist"), "{err}");
    // A bad mountpoint or option is a usage error (exit 2).
    let err = fails_with(&mut mount_cmd(&env.store, &env.path("missing")), 2);
    assert!(
        err.contains("mountpoint") && err.contains("does not exist"),
        "{err}"
    );
    let err = fails_with(&mut mount_cmd(&env.store, &env.store), 2);
    assert!(err.contains("is not empty"), "{err}");
    let err = fails_with(&mut mount_cmd(&env.store, &env.path("h.img")), 2);
    assert!(err.contains("is not a directory"), "{err}");
    let err = fails_with(
        mount_cmd(&env.store, &env.mnt).args(["--group", "no-such-group-x"]),
        2,
    );
    assert!(err.contains("no such group"), "{err}");
    let out = mount_cmd(&env.store, &env.mnt)
        .args(["--mode", "0644"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("read-only"), "{err}");
}

/// Runs `script` as root in a private mount namespace whose `/dev` is a
/// fresh tmpfs holding only `null` and, if `fuse_mode` is given, a `fuse`
/// node with that mode: the test decides the device's mode whatever the
/// host's is (Debian's udev rule makes it 0666, some hosts keep 0600).
/// `$1` is diskdump, `$2` the store, `$3` the mountpoint.
fn in_private_dev(env: &Env, fuse_mode: Option<&str>, script: &str) -> std::process::Output {
    let fuse = fuse_mode
        .map(|m| format!("mknod -m {m} /dev/fuse c 10 229 && "))
        .unwrap_or_default();
    let setup = format!(
        "mount -t tmpfs -o mode=755 tmpfs /dev && mknod -m 666 /dev/null c 1 3 && {fuse}{script}"
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &setup, "sh"])
        .arg(BIN)
        .arg(&env.store)
        .arg(&env.mnt)
        .output()
        .unwrap()
}

/// A store and mountpoint owned by `nobody`, reachable through the temp dir.
fn env_for_nobody() -> Env {
    let env = Env::new();
    env.import(&env.file("i.img", &sample(8)[..BS]), "i", "2026-04-30");
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(
        env.dir.path().join("i.img"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    run(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&env.store)
        .arg(&env.mnt));
    env
}

const AS_NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";

fn one_line_failure(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
#[cfg_attr(
    not(have_namespaces),
    ignore = "needs root, /dev/fuse, unshare, setpriv and fusermount3"
)]
fn no_fuse_device_and_no_permission_give_clear_errors() {
    need_none(fuse_missing());
    let env = env_for_nobody();
    let mount = r#""$1" mount "$2" "$3""#;
    // No /dev/fuse at all.
    let out = in_private_dev(&env, None, &format!("exec {mount}"));
    assert!(one_line_failure(&out).contains("/dev/fuse does not exist"));
    // A 0600 device: an unprivileged user cannot open it.
    let out = in_private_dev(&env, Some("600"), &format!("exec {AS_NOBODY} {mount}"));
    let err = one_line_failure(&out);
    assert!(err.contains("not permitted to mount"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    // A 0666 device: fusermount3 mounts for users, but only on a mountpoint
    // they may write to.
    run(Command::new("chown").arg("0:0").arg(&env.mnt));
    let out = in_private_dev(&env, Some("666"), &format!("exec {AS_NOBODY} {mount}"));
    let err = one_line_failure(&out);
    assert!(err.contains("not permitted to mount"), "{err}");
    assert!(err.contains("no write access"), "{err}");
    assert!(!is_mounted(&env.mnt));
}

#[test]
#[cfg_attr(
    not(have_namespaces),
    ignore = "needs root, /dev/fuse, unshare, setpriv and fusermount3"
)]
fn a_user_mounts_through_fusermount3_where_dev_fuse_is_0666() {
    need_none(fuse_missing());
    let env = env_for_nobody();
    let src = env.dir.path().join("i.img");
    // Mount as nobody, read the image back as nobody (only the mounting user
    // may enter a FUSE mount without allow_other), then SIGTERM: it must
    // unmount through fusermount3 -u and exit 0.
    let script = format!(
        r#"{AS_NOBODY} "$1" mount "$2" "$3" 2>/dev/null & pid=$!
        i=0; until grep -q " $3 .* fuse" /proc/self/mountinfo; do
          i=$((i+1)); [ $i -gt 500 ] && {{ echo "never mounted"; exit 1; }}; sleep 0.01; done
        {AS_NOBODY} cmp {src} "$3/2026/04/30/i.img" && echo BYTES-EQUAL
        kill -TERM $pid; wait $pid; echo "exit=$?"
        grep -q " $3 .* fuse" /proc/self/mountinfo && echo STILL-MOUNTED; true"#,
        src = src.display()
    );
    let out = in_private_dev(&env, Some("666"), &script);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("BYTES-EQUAL"), "{text}{err}");
    assert!(text.contains("exit=0"), "{text}{err}");
    assert!(!text.contains("STILL-MOUNTED"), "{text}{err}");
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn many_dumps_mount_at_once_and_hash_lists_are_read_only_on_open() {
    need_none(fuse_missing());
    let env = Env::new();
    let data = sample(9);
    let rel = env.import(&env.file("j.img", &data), "j", "2026-01-01");
    // 400 dumps over 40 days whose headers are fine but whose hash lists
    // are garbage: mounting, listing and stat must not read past a header.
    let text = fs::read_to_string(env.store.join(rel.replace(".img", ".manifest"))).unwrap();
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let broken = format!("{header}this is not a hash\n");
    for i in 0..400 {
        let day = format!("2025/{:02}/{:02}", 1 + i % 10, 1 + i % 10 * 2 + i / 100);
        fs::create_dir_all(env.store.join(&day)).unwrap();
        fs::write(
            env.store.join(&day).join(format!("host{i}.manifest")),
            &broken,
        )
        .unwrap();
    }
    let started = std::time::Instant::now();
    let m = env.mount(&[]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "mount took {took:?}");
    assert!(
        m.log_text().contains("mounted 401 dump(s)"),
        "{}",
        m.log_text()
    );
    let day = m.mnt.join("2025/03/05");
    let listed = names(&day);
    assert_eq!(listed.len(), 10);
    for name in &listed {
        assert_eq!(
            fs::metadata(day.join(name)).unwrap().len(),
            data.len() as u64
        );
    }
    let e = File::open(day.join(&listed[0])).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(cmp(&env.path("j.img"), &m.mnt.join(&rel)));
    let log = m.stop();
    assert!(log.contains("is not a SHA-256 hash"), "{log}");
}

#[test]
#[cfg_attr(
    not(have_namespaces),
    ignore = "needs root, /dev/fuse, unshare, setpriv and fusermount3"
)]
fn allow_other_lets_other_users_read() {
    need_none(fuse_missing());
    let env = Env::new();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = sample(10);
    let src = env.file("k.img", &data);
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();
    let rel = env.import(&src, "k", "2026-04-30");
    let as_nobody = |m: &MountProc| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cmp"])
            .arg(&src)
            .arg(m.mnt.join(&rel))
            .output()
            .unwrap()
    };
    let m = env.mount(&[]);
    let out = as_nobody(&m);
    assert!(!out.status.success(), "only the owner may read by default");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    m.stop();
    // --allow-other alone does not open a private store's images to all.
    let m = env.mount(&["--allow-other"]);
    let out = as_nobody(&m);
    assert!(!out.status.success(), "a private store stays private");
    let meta = fs::metadata(m.mnt.join(&rel)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    let log = m.stop();
    assert!(log.contains("--allow-other lets nobody else read"), "{log}");
    // Asked for: a group (nobody's own), or a mode for everyone.
    for opts in [&["--group", "65534"][..], &["--mode", "0444"]] {
        let mut args = vec!["--allow-other"];
        args.extend_from_slice(opts);
        let m = env.mount(&args);
        let out = as_nobody(&m);
        assert!(
            out.status.success(),
            "{opts:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = fs::metadata(m.mnt.join(&rel)).unwrap();
        let want = if opts[0] == "--group" { 0o440 } else { 0o444 };
        assert_eq!(meta.permissions().mode() & 0o777, want, "{opts:?}");
        m.stop();
    }
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn a_manifest_replaced_under_a_live_mount_shows_the_new_image() {
    need_none(fuse_missing());
    let env = Env::new();
    let (a, b) = (sample(41), sample(42));
    let src_a = env.file("a.img", &a);
    let src_b = env.file("b.img", &b);
    let rel = env.import(&src_a, "r", "2026-04-30");
    let m = env.mount(&[]);
    let img = m.mnt.join(&rel);
    let old = File::open(&img).unwrap();
    let mut head = vec![0u8; BS];
    old.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, a[..BS]);
    assert!(cmp(&src_a, &img));
    // Retention deletes the dump; a new one is written at the same path.
    let manifest = env.store.join(rel.replace(".img", ".manifest"));
    fs::remove_file(&manifest).unwrap();
    assert_eq!(env.import(&src_b, "r", "2026-04-30"), rel);
    std::thread::sleep(Duration::from_millis(1500)); // the names' TTL
    assert!(cmp(&src_b, &img), "the path shows the new image");
    // The handle opened before reads the old image, all of it.
    let mut all = vec![0u8; a.len()];
    old.read_exact_at(&mut all, 0).unwrap();
    assert!(all == a, "an open handle keeps its image");
    drop(old);
    m.stop();
}

#[test]
#[cfg_attr(not(have_fuse), ignore = "needs root and /dev/fuse")]
fn forget_under_a_live_mount_removes_the_image_and_open_handles_keep_reading() {
    need_none(fuse_missing());
    let env = Env::new();
    let (a, b) = (sample(43), sample(44));
    let src_a = env.file("a.img", &a);
    let src_b = env.file("b.img", &b);
    let old_rel = env.import(&src_a, "f", "2026-05-01");
    let new_rel = env.import(&src_b, "f", "2026-05-02");
    let m = env.mount(&[]);
    let img = m.mnt.join(&old_rel);
    let old = File::open(&img).unwrap();
    let mut head = vec![0u8; BS];
    old.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, a[..BS]);
    // Retention removes the older dump while it is open.
    let o = Command::new(BIN)
        .arg("--store")
        .arg(&env.store)
        .args(["forget", "--keep-last", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(1500)); // the names' TTL
    assert!(!img.exists(), "the forgotten image is gone from the tree");
    assert!(cmp(&src_b, &m.mnt.join(&new_rel)), "the kept one is intact");
    // The handle opened before reads the whole old image (its blocks stay until a gc).
    let mut all = vec![0u8; a.len()];
    old.read_exact_at(&mut all, 0).unwrap();
    assert!(all == a, "an open handle keeps its image");
    drop(old);
    m.stop();
}
