//! Every command on an S3 store on a real 3-node Garage cluster (127.0.0.1,
//! replication 3): init, import, dump over SSH, restore, mount and a loop
//! mount, info, list, status, verify, diff, protect, forget, delete, gc,
//! copy; a node killed during an import, diskdump killed mid-pack, two
//! importing processes at once, gc racing imports, and clear errors.

mod common;

use common::garage::Garage;
use common::images;
use common::mount::{is_mounted, loop_missing, make_ext4, run, MountProc};
use common::sshd::Sshd;
use common::{need_none, Run};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BS: usize = 128 << 10;

/// One storage host: its own cache directory (index and block cache), the
/// cluster's credentials.
struct Host {
    env: Vec<(String, String)>,
    _cache: tempfile::TempDir,
}

impl Host {
    fn new(g: &Garage) -> Host {
        let cache = tempfile::tempdir().unwrap();
        let mut env = g.env.clone();
        env.push((
            "DISKDUMP_S3_CACHE".into(),
            cache.path().display().to_string(),
        ));
        Host { env, _cache: cache }
    }

    fn cmd(&self, store: &str, args: &[&str]) -> Command {
        let mut c = Command::new(common::bin());
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--store")
            .arg(store)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, store: &str, args: &[&str]) -> Run {
        let o = self.cmd(store, args).output().expect("run diskdump");
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn spawn(&self, store: &str, args: &[&str]) -> Child {
        self.cmd(store, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start diskdump")
    }

    fn restore(&self, store: &str, name: &str) -> Vec<u8> {
        let o = self
            .cmd(store, &["restore", name])
            .output()
            .expect("restore");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }
}

fn store_url(g: &Garage, name: &str) -> String {
    format!("s3://{}/{name}", g.bucket())
}

fn objects(g: &Garage, prefix: &str) -> Vec<String> {
    use diskdump::objstore::ObjectStore;
    g.objects(prefix)
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// The pack objects under a store's prefix.
fn packs(g: &Garage, prefix: &str) -> Vec<String> {
    objects(g, prefix)
        .into_iter()
        .filter(|k| k.starts_with("packs/"))
        .collect()
}

/// Waits (up to a minute) until `n` packs are stored: a run is mid-import.
fn wait_for_packs(g: &Garage, prefix: &str, n: usize) {
    let start = Instant::now();
    while packs(g, prefix).len() < n && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn every_command_works_on_an_s3_store() {
    let g = Garage::start();
    let h = Host::new(&g);
    let s = store_url(&g, "main");
    let dir = tempfile::tempdir().unwrap();
    let data = images::mixed(BS, 160, 777, 5); // 20 MiB of text, zeros, noise
    let img = dir.path().join("a.img");
    images::write(&img, &data);
    // init refuses nothing silently: a second init is an error.
    h.run(&s, &["init"]).ok();
    let again = h.run(&s, &["init"]).fails();
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let imp = h.run(
        &s,
        &[
            "--json",
            "import",
            img.to_str().unwrap(),
            "--as",
            "web:/dev/sda",
            "--date",
            "2026-04-24",
        ],
    );
    let imp = json(&imp.ok());
    assert!(imp["blocks_new"].as_u64().unwrap() > 50, "{imp}");
    // Packs and manifests: tens of objects, not one per block.
    let keys = objects(&g, "main");
    let packs = keys.iter().filter(|k| k.starts_with("packs/")).count();
    assert!((1..=4).contains(&packs), "{keys:?}");
    assert!(
        keys.contains(&"manifests/2026/04/24/web-sda.manifest".to_string()),
        "{keys:?}"
    );
    // The same data again: nothing new, and a second same-day dump.
    let second = json(
        &h.run(
            &s,
            &[
                "--json",
                "import",
                img.to_str().unwrap(),
                "--as",
                "web:/dev/sda",
                "--date",
                "2026-04-24",
            ],
        )
        .ok(),
    );
    assert_eq!(second["blocks_new"], 0, "{second}");
    assert!(h.restore(&s, "web-sda") == data, "restore differs");
    assert!(h.restore(&s, "2026/04/24/web-sda.manifest") == data);
    let out = dir.path().join("out.img");
    h.run(&s, &["restore", "web-sda", "-o", out.to_str().unwrap()])
        .ok();
    assert!(std::fs::read(&out).unwrap() == data);
    // A second host (no index, no cache) reads it too.
    let h2 = Host::new(&g);
    assert!(
        h2.restore(&s, "web-sda+2") == data,
        "restore on a fresh host"
    );
    let list = json(&h.run(&s, &["--json", "list"]).ok());
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let info = h.run(&s, &["info", "web-sda"]).ok();
    assert!(info.stdout.contains("web:/dev/sda"), "{}", info.stdout);
    let status = json(&h.run(&s, &["--json", "status"]).ok());
    assert!(
        status["store"].as_str().unwrap().starts_with(&s),
        "{status}"
    );
    assert_eq!(status["dumps"], 2);
    let verify = h.run(&s, &["verify"]).ok();
    assert!(verify.stdout.contains("no problems"), "{}", verify.stdout);
    // A changed image: diff sees exactly the changed block.
    let mut changed = data.clone();
    changed[5 * BS + 17] ^= 0xff;
    let img2 = dir.path().join("b.img");
    images::write(&img2, &changed);
    h.run(
        &s,
        &[
            "import",
            img2.to_str().unwrap(),
            "--as",
            "web:/dev/sda",
            "--date",
            "2026-04-25",
        ],
    )
    .ok();
    let diff = json(
        &h.run(
            &s,
            &["--json", "diff", "2026/04/24/web-sda.manifest", "web-sda"],
        )
        .ok(),
    );
    assert_eq!(diff["changed_blocks"], 1, "{diff}");
    // protect, forget, delete, gc.
    h.run(&s, &["protect", "2026/04/24/web-sda.manifest"]).ok();
    let del = h
        .run(&s, &["delete", "2026/04/24/web-sda.manifest"])
        .fails();
    assert!(del.stderr.contains("protected"), "{}", del.stderr);
    h.run(&s, &["unprotect", "2026/04/24/web-sda.manifest"])
        .ok();
    h.run(
        &s,
        &[
            "delete",
            "2026/04/24/web-sda.manifest",
            "2026/04/24/web-sda+2.manifest",
        ],
    )
    .ok();
    let dry = json(&h.run(&s, &["--json", "gc", "--dry-run"]).ok());
    assert_eq!(dry["manifests"], 1, "{dry}");
    let left = json(&h.run(&s, &["--json", "list"]).ok());
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert!(h.restore(&s, "web-sda") == changed);
    // A wrong name is a clear error, not a crash.
    let r = h.run(&s, &["restore", "nope"]).fails();
    assert!(r.stderr.contains("no dump named"), "{}", r.stderr);
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn gc_on_s3_rewrites_packs_and_frees_what_forget_dropped() {
    let g = Garage::start();
    let mut h = Host::new(&g);
    // Every pack counts as old enough: this test does not wait a minute.
    h.env.push(("DISKDUMP_S3_GC_GRACE".into(), "0".into()));
    h.env.push(("DISKDUMP_S3_PACK_SIZE".into(), "2M".into()));
    let s = store_url(&g, "gc");
    let dir = tempfile::tempdir().unwrap();
    h.run(&s, &["init"]).ok();
    let a = images::random_bytes(64 * BS, 1);
    let b = images::random_bytes(64 * BS, 2);
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&ia, &a);
    images::write(&ib, &b);
    h.run(
        &s,
        &[
            "import",
            ia.to_str().unwrap(),
            "--as",
            "a",
            "--date",
            "2026-01-01",
        ],
    )
    .ok();
    h.run(
        &s,
        &[
            "import",
            ib.to_str().unwrap(),
            "--as",
            "b",
            "--date",
            "2026-01-02",
        ],
    )
    .ok();
    let before = packs(&g, "gc").len();
    h.run(&s, &["delete", "2026/01/01/a.manifest"]).ok();
    // a's 64 blocks and the zero block every import stores (for Python
    // 0.1.5's readers), which no manifest names here.
    let dry = json(&h.run(&s, &["--json", "gc", "--dry-run"]).ok());
    assert_eq!(dry["removed_blocks"], 65, "{dry}");
    let st = json(&h.run(&s, &["--json", "gc"]).ok());
    assert_eq!(st["removed_blocks"], 65, "{st}");
    let after = packs(&g, "gc").len();
    assert!(after < before, "{before} packs before, {after} after");
    assert!(h.restore(&s, "b") == b);
    // From the packs alone, on a new host.
    let h2 = Host::new(&g);
    assert!(h2.restore(&s, "b") == b);
    h2.run(&s, &["verify"]).ok();
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn a_storage_node_killed_during_an_import_loses_nothing() {
    let g = Garage::start();
    let mut h = Host::new(&g);
    h.env.push(("DISKDUMP_S3_PACK_SIZE".into(), "2M".into()));
    let s = store_url(&g, "ha");
    h.run(&s, &["init"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let data = images::random_bytes(256 * BS, 9); // 32 MiB, 16 packs
    let img = dir.path().join("a.img");
    images::write(&img, &data);
    let child = h.spawn(&s, &["import", img.to_str().unwrap(), "--as", "a"]);
    // Kill node 3 once the first packs are in.
    wait_for_packs(&g, "ha", 2);
    g.kill_node(3);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
    assert!(h.restore(&s, "a") == data);
    let v = h.run(&s, &["verify"]).ok();
    assert!(v.stdout.contains("no problems"), "{}", v.stdout);
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn diskdump_killed_mid_pack_leaves_no_manifest_with_a_missing_block() {
    let g = Garage::start();
    let mut h = Host::new(&g);
    h.env.push(("DISKDUMP_S3_PACK_SIZE".into(), "1M".into()));
    let s = store_url(&g, "crash");
    h.run(&s, &["init"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let data = images::random_bytes(400 * BS, 11);
    let img = dir.path().join("a.img");
    images::write(&img, &data);
    let mut child = h.spawn(&s, &["import", img.to_str().unwrap(), "--as", "a"]);
    wait_for_packs(&g, "crash", 3);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let keys = objects(&g, "crash");
    assert!(
        !keys.iter().any(|k| k.starts_with("manifests/")),
        "killed before the end, yet a manifest: {keys:?}"
    );
    // The rerun completes and stores only what is missing.
    let again = json(
        &h.run(
            &s,
            &["--json", "import", img.to_str().unwrap(), "--as", "a"],
        )
        .ok(),
    );
    assert!(again["blocks_new"].as_u64().unwrap() < 400, "{again}");
    assert!(h.restore(&s, "a") == data);
    let v = h.run(&s, &["verify"]).ok();
    assert!(v.stdout.contains("no problems"), "{}", v.stdout);
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn two_storage_hosts_import_at_once_and_dedup_across_hosts() {
    let g = Garage::start();
    let (h1, h2) = (Host::new(&g), Host::new(&g));
    let s = store_url(&g, "two");
    h1.run(&s, &["init"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let shared = images::random_bytes(96 * BS, 21);
    let mut a = shared.clone();
    a.extend(images::random_bytes(32 * BS, 22));
    let mut b = shared.clone();
    b.extend(images::random_bytes(32 * BS, 23));
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&ia, &a);
    images::write(&ib, &b);
    let ca = h1.spawn(&s, &["import", ia.to_str().unwrap(), "--as", "a"]);
    let cb = h2.spawn(&s, &["import", ib.to_str().unwrap(), "--as", "b"]);
    for c in [ca, cb] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", common::output_text(&o));
    }
    assert!(h2.restore(&s, "a") == a);
    assert!(h1.restore(&s, "b") == b);
    // Committed blocks of one host are "present" for the other.
    let mut c = shared.clone();
    c.extend(images::random_bytes(8 * BS, 24));
    let ic = dir.path().join("c.img");
    images::write(&ic, &c);
    let r = json(
        &h2.run(&s, &["--json", "import", ic.to_str().unwrap(), "--as", "c"])
            .ok(),
    );
    assert_eq!(r["blocks_new"], 8, "{r}");
    h1.run(&s, &["verify"]).ok();
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn gc_racing_imports_on_s3_loses_nothing() {
    let g = Garage::start();
    let mut h = Host::new(&g);
    h.env.push(("DISKDUMP_S3_GC_GRACE".into(), "0".into()));
    h.env.push(("DISKDUMP_S3_PACK_SIZE".into(), "512K".into()));
    let s = store_url(&g, "race");
    h.run(&s, &["init"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let pool = images::random_bytes(48 * BS, 31);
    let image = |r: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..16 {
            let j = (r * 7 + i * 5) % 48;
            out.extend_from_slice(&pool[j * BS..(j + 1) * BS]);
        }
        out.extend(images::random_bytes(2 * BS, 100 + r as u64));
        out
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let gcs = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = h.run(&s, &["gc"]);
                assert!(r.code == 0 || r.code == 3, "{}", r.stderr);
                gcs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        for r in 0..8 {
            let data = image(r);
            let p = dir.path().join(format!("{r}.img"));
            images::write(&p, &data);
            let name = format!("r{r}");
            h.run(
                &s,
                &[
                    "import",
                    p.to_str().unwrap(),
                    "--as",
                    &name,
                    "--date",
                    "2026-03-01",
                ],
            )
            .ok();
            assert!(h.restore(&s, &name) == data, "{name}");
            // The previous round's dump goes: its blocks become garbage
            // while the next import may find them present.
            if r > 0 {
                h.run(&s, &["delete", &format!("2026/03/01/r{}.manifest", r - 1)])
                    .ok();
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(gcs.load(std::sync::atomic::Ordering::Relaxed) > 2);
    let last = image(7);
    assert!(Host::new(&g).restore(&s, "r7") == last);
    h.run(&s, &["verify"]).ok();
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn s3_errors_are_one_line_and_write_nothing() {
    let g = Garage::start();
    let h = Host::new(&g);
    let r = h
        .run(&format!("s3://{}/none", g.bucket()), &["list"])
        .fails();
    assert!(r.stderr.contains("is not a diskdump store"), "{}", r.stderr);
    assert!(r.stderr.contains("diskdump init s3://"), "{}", r.stderr);
    let r = h.run("s3://no-such-bucket/x", &["init"]).fails();
    assert!(r.stderr.contains("no-such-bucket"), "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    let mut bad = Host::new(&g);
    for (k, v) in bad.env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "0".repeat(64);
        }
    }
    let s = store_url(&g, "errs");
    h.run(&s, &["init"]).ok();
    let r = bad.run(&s, &["list"]).fails();
    assert!(r.stderr.contains("access denied"), "{}", r.stderr);
    let r = h.run("s3://Bad_Bucket/x", &["list"]).fails();
    assert!(r.stderr.contains("not a bucket name"), "{}", r.stderr);
    let stderr_lines = r.stderr.trim().lines().count();
    assert_eq!(stderr_lines, 1, "{}", r.stderr);
    // Nothing written by the failed commands.
    assert!(objects(&g, "none").is_empty());
}

#[test]
#[cfg_attr(
    not(all(have_garage, have_loop)),
    ignore = "needs garage, root, /dev/fuse and loop devices"
)]
fn mount_and_loop_mount_an_image_from_s3() {
    need_none(loop_missing());
    let g = Garage::start();
    let h = Host::new(&g);
    let s = store_url(&g, "mnt");
    h.run(&s, &["init"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let payload = images::random_bytes(3 << 20, 41);
    std::fs::write(files.join("data.bin"), &payload).unwrap();
    std::fs::write(files.join("hello.txt"), b"hello from s3\n").unwrap();
    let image = dir.path().join("fs.img");
    make_ext4(&files, &image, "32M");
    h.run(
        &s,
        &[
            "import",
            image.to_str().unwrap(),
            "--as",
            "vm:/dev/vda",
            "--date",
            "2026-04-26",
        ],
    )
    .ok();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = MountProc::start_with_env(
        Path::new(&s),
        &mnt,
        &[],
        &dir.path().join("mount.log"),
        &h.env,
    );
    let img = m.mnt.join("2026/04/26/vm-vda.img");
    assert!(std::fs::read(&img).unwrap() == std::fs::read(&image).unwrap());
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&img)
        .arg(&inner));
    let hello = std::fs::read(inner.join("hello.txt"));
    let data = std::fs::read(inner.join("data.bin"));
    let _ = Command::new("umount").arg(&inner).status();
    assert_eq!(hello.unwrap(), b"hello from s3\n");
    assert!(data.unwrap() == payload);
    assert!(!is_mounted(&inner));
    m.stop();
}

#[test]
#[cfg_attr(
    not(all(have_garage, have_sshd)),
    ignore = "needs garage, root and sshd"
)]
fn dump_over_ssh_into_an_s3_store() {
    let g = Garage::start();
    let sshd = Sshd::start();
    let mut h = Host::new(&g);
    h.env.extend(
        sshd.env()
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned())),
    );
    let s = store_url(&g, "dump");
    h.run(&s, &["init"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let data = images::mixed(BS, 120, 999, 51);
    let img = dir.path().join("disk.img");
    images::write(&img, &data);
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let r = h.run(&s, &["dump", &target, "--as", "disk"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(h.restore(&s, "disk") == data);
    // The next day: nothing new crosses into the bucket.
    let before: Vec<String> = packs(&g, "dump");
    let r = h.run(&s, &["--json", "dump", &target, "--as", "disk"]).ok();
    let v = json(&r);
    let new: u64 = v["targets"][0]["blocks_new"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(new, 0, "{v}");
    let after: Vec<String> = packs(&g, "dump");
    assert_eq!(before, after);
    h.run(&s, &["verify"]).ok();
}

#[test]
#[cfg_attr(
    not(have_garage),
    ignore = "needs a garage binary (.ci/run builds one)"
)]
fn copy_moves_a_local_store_to_s3_and_back_each_block_once() {
    let g = Garage::start();
    let h = Host::new(&g);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let local_s = local.to_str().unwrap();
    h.run(local_s, &["init"]).ok();
    let a = images::mixed(BS, 40, 100, 61);
    let mut b = a.clone();
    b[3 * BS] ^= 1;
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&ia, &a);
    images::write(&ib, &b);
    for (img, date) in [(&ia, "2026-05-01"), (&ib, "2026-05-02")] {
        h.run(
            local_s,
            &[
                "import",
                img.to_str().unwrap(),
                "--as",
                "db",
                "--date",
                date,
            ],
        )
        .ok();
    }
    let s = store_url(&g, "copy");
    h.run(&s, &["init"]).ok();
    let r = json(&h.run(local_s, &["--json", "copy", "--to", &s]).ok());
    assert_eq!(r["dumps"].as_array().unwrap().len(), 2, "{r}");
    let stored = json(&h.run(local_s, &["--json", "status"]).ok())["blocks"]
        .as_u64()
        .unwrap();
    assert_eq!(
        r["blocks_copied"].as_u64().unwrap(),
        stored,
        "each block once: {r}"
    );
    assert!(h.restore(&s, "2026/05/01/db.manifest") == a);
    assert!(h.restore(&s, "db") == b);
    // Again: nothing to do.
    let again = json(&h.run(local_s, &["--json", "copy", "--to", &s]).ok());
    assert_eq!(again["blocks_copied"], 0, "{again}");
    assert!(again["dumps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["skipped"] == true));
    // And back, one name, into a new local store.
    let back = dir.path().join("back");
    h.run(back.to_str().unwrap(), &["init"]).ok();
    h.run(&s, &["copy", "db", "--to", back.to_str().unwrap()])
        .ok();
    assert!(h.restore(back.to_str().unwrap(), "db") == b);
    h.run(back.to_str().unwrap(), &["verify"]).ok();
    // Different block sizes cannot share blocks.
    let small = dir.path().join("small");
    h.run(small.to_str().unwrap(), &["init", "--block-size", "64K"])
        .ok();
    let e = h.run(&s, &["copy", "--to", small.to_str().unwrap()]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(e.stderr.contains("block size"), "{}", e.stderr);
}
