//! Byte-for-byte compatibility with the original Python diskdump 0.1.5, both
//! ways, on one mixed store (installed from PyPI into a venv once per target dir).

mod common;

use common::{diskdump, diskdump_bytes, images};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const BS: usize = 131072;

/// A venv with diskdump 0.1.5 (PyPI, so the tests using it need the network).
fn python_diskdump() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pyseed-0.1.5");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import diskdump.cli, lz4.frame"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&py) {
        let _ = fs::remove_dir_all(&venv);
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "diskdump==0.1.5",
                ])
                .status()
                .is_ok_and(|s| s.success());
        common::need(
            made && ready(&py),
            "Python diskdump 0.1.5 (python3 -m venv + pip install diskdump==0.1.5)",
        );
    }
    py
}

fn py_run(py: &Path, store: &Path, args: &[&str]) {
    let out = Command::new(py)
        .arg("-m")
        .arg("diskdump")
        .args(args)
        .env("DISKDUMP_BASE", store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python diskdump {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(
    not(have_network),
    ignore = "needs the network for pip (set DISKDUMP_TEST_NETWORK=1)"
)]
fn python_and_rust_read_each_others_dumps_and_gc_keeps_both() {
    let py = python_diskdump();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    fs::create_dir(&store).unwrap();
    let theirs = images::mixed(BS, 30, 5000, 21);
    let ours = images::mixed(BS, 30, 777, 22);
    let (ti, oi) = (dir.path().join("theirs.img"), dir.path().join("ours.img"));
    images::write(&ti, &theirs);
    images::write(&oi, &ours);

    // Their import → our restore, by Python-era name and by path.
    py_run(
        &py,
        &store,
        &["import", ti.to_str().unwrap(), "--as", "oldhost:/dev/sdb"],
    );
    assert!(store
        .join(".blockstore/manifests/oldhost.sdb/0.manifest")
        .is_file());
    for arg in [
        "oldhost.sdb",
        "oldhost.sdb/0",
        ".blockstore/manifests/oldhost.sdb/0.manifest",
    ] {
        let (code, bytes, err) = diskdump_bytes(&store, &["restore", arg]);
        assert_eq!(code, 0, "{arg}: {err}");
        assert!(bytes == theirs, "{arg}: restored bytes differ");
    }
    diskdump(&store, &["verify"]).ok();

    // Our import → their restore.
    diskdump(
        &store,
        &["import", oi.to_str().unwrap(), "--as", "newhost:/dev/sda"],
    )
    .ok();
    let rel = common::only_manifest(&store)
        .strip_prefix(&store)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = dir.path().join("py-restored.img");
    py_run(&py, &store, &["restore", &rel, "-o", out.to_str().unwrap()]);
    assert!(
        fs::read(&out).unwrap() == ours,
        "Python's restore of our dump differs"
    );

    // Our gc on the mixed store: orphan our blocks, keep both dumps.
    let junk = dir.path().join("junk.img");
    images::write(&junk, &images::random_bytes(4 * BS, 99));
    diskdump(&store, &["import", junk.to_str().unwrap(), "--as", "junk"]).ok();
    let junk_manifest = fs::read_dir(store.join(&rel).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("junk.manifest"))
        .unwrap();
    fs::remove_file(junk_manifest).unwrap();
    common::age_store(&store);
    let r = diskdump(&store, &["gc"]).ok();
    assert!(r.stdout.contains("removed 4 unreferenced"), "{}", r.stdout);
    let r = diskdump(&store, &["status"]).ok();
    assert!(
        r.stdout.contains("oldhost.sdb/0.manifest") && r.stdout.contains("newhost-sda.manifest"),
        "{}",
        r.stdout
    );
    let (_, bytes, _) = diskdump_bytes(&store, &["restore", "oldhost.sdb"]);
    assert!(bytes == theirs);
    let out2 = dir.path().join("py-restored-2.img");
    py_run(
        &py,
        &store,
        &[
            "restore",
            "oldhost.sdb/0.manifest",
            "-o",
            out2.to_str().unwrap(),
        ],
    );
    assert!(
        fs::read(&out2).unwrap() == theirs,
        "their dump survives our gc, for them too"
    );
    let r = diskdump(&store, &["info", "oldhost.sdb"]).ok();
    assert!(r.stdout.contains("Missing:       0 blocks"), "{}", r.stdout);
}
