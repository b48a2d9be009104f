//! Blocks are durable before the manifest that references them is visible,
//! and the manifest's rename is made durable: checked on the real binary's
//! system calls with strace.

mod common;

use common::images;
use std::process::Command;

#[test]
#[cfg_attr(not(have_strace), ignore = "needs strace")]
fn import_syncs_blocks_then_writes_manifest_then_syncs_its_directory() {
    common::need(common::have("strace"), "strace (apt-get install strace)");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    images::write(&img, &images::mixed(131072, 24, 100, 31));
    let store = dir.path().join("store");
    let img_arg = img.to_str().unwrap();
    let (_, text) = common::strace_diskdump(
        &store,
        "fsync,fdatasync,syncfs,renameat2,rename,openat",
        &["import", img_arg, "--as", "dur"],
    );
    let lines: Vec<&str> = text.lines().collect();
    let pos = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));
    let last_block_rename = lines
        .iter()
        .rposition(|l| l.contains("renameat2(") && l.contains(".lz4\"") && l.contains("= 0"))
        .expect("blocks were renamed into place");
    let syncfs = pos(&|l| l.contains("syncfs(") && !l.contains("resumed")).expect("syncfs called");
    let manifest_rename =
        pos(&|l| l.contains("renameat2(") && l.contains("dur.manifest\", RENAME_NOREPLACE) = 0"))
            .expect("manifest renamed");
    let tmp_open = pos(&|l| l.contains("openat(") && l.contains("dur.manifest.tmp."))
        .expect("manifest temp written");
    let fd = lines[tmp_open].rsplit("= ").next().unwrap().trim();
    let manifest_fsync = (tmp_open..manifest_rename)
        // strace -f prints a call another thread interrupted as `fsync(N <unfinished ...>`.
        .find(|&i| {
            lines[i].contains(&format!("fsync({fd})"))
                || lines[i].contains(&format!("fsync({fd} <unfinished"))
        })
        .expect("manifest temp file fsynced before its rename");
    let dir_fsync = (manifest_rename..lines.len())
        .find(|&i| lines[i].contains("fsync(") && !lines[i].contains("syncfs"))
        .expect("directory fsynced after the rename");
    assert!(
        last_block_rename < syncfs,
        "every block is in place before syncfs"
    );
    assert!(
        syncfs < tmp_open
            && tmp_open < manifest_fsync
            && manifest_fsync < manifest_rename
            && manifest_rename < dir_fsync
    );
    // The fsync after the rename is of the manifest's directory.
    let dir_open = (manifest_rename..dir_fsync)
        .rev()
        .find(|&i| lines[i].contains("openat("))
        .expect("dir opened");
    assert!(
        lines[dir_open].contains(&format!("{}/", store.display()))
            && !lines[dir_open].contains(".manifest"),
        "{}",
        lines[dir_open]
    );
}

/// One `syncfs` makes a run durable: the one before the manifest covers
/// every block, so the run's dirty marker goes after it without a second.
/// (A run that ends without a manifest syncs before its marker goes: the
/// Ctrl-C and kill tests check what such runs leave.)
#[test]
#[cfg_attr(not(have_strace), ignore = "needs strace")]
fn a_run_syncs_once_before_its_manifest_and_drops_its_marker_after() {
    common::need(common::have("strace"), "strace (apt-get install strace)");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    images::write(&img, &images::mixed(131072, 24, 100, 33));
    let store = dir.path().join("store");
    let (_, text) = common::strace_diskdump(
        &store,
        "syncfs,unlink,unlinkat,renameat2",
        &["import", img.to_str().unwrap(), "--as", "once"],
    );
    let lines: Vec<&str> = text.lines().collect();
    let syncfs: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("syncfs(") && !lines[i].contains("resumed"))
        .collect();
    assert_eq!(syncfs.len(), 1, "{text}");
    let manifest_rename = lines
        .iter()
        .position(|l| {
            l.contains("renameat2(") && l.contains("once.manifest\", RENAME_NOREPLACE) = 0")
        })
        .expect("manifest renamed");
    let marker_gone = lines
        .iter()
        .position(|l| l.contains("unlink") && l.contains("/dirty/") && l.contains("= 0"))
        .expect("the dirty marker removed");
    assert!(
        syncfs[0] < manifest_rename && manifest_rename < marker_gone,
        "{text}"
    );
}

/// Runs `import` under strace, which kills it (SIGKILL) on the `when`-th
/// call of `syscall`: a crash at an exact point of the manifest write.
fn import_killed_at(store: &std::path::Path, img: &std::path::Path, syscall: &str, when: u32) {
    common::ensure_store(store, &["import"]);
    let st = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-e", &format!("trace={syscall}")])
        .args(["-e", &format!("inject={syscall}:signal=KILL:when={when}")])
        .arg(common::bin())
        .args(["--store", store.to_str().unwrap(), "import"])
        .args([img.to_str().unwrap(), "--as", "crash"])
        .output()
        .unwrap();
    assert!(
        !st.status.success(),
        "import was not killed at {syscall}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
#[cfg_attr(not(have_strace), ignore = "needs strace")]
fn kill_9_just_before_and_during_the_manifest_write_loses_nothing() {
    common::need(common::have("strace"), "strace (apt-get install strace)");
    let bs = 131072;
    let dir = tempfile::tempdir().unwrap();
    let data = images::mixed(bs, 40, 777, 32);
    let img = dir.path().join("d.img");
    images::write(&img, &data);
    // The syncfs before the manifest; the fsync of its temp file (blocks are
    // made durable by syncfs; the first two fsyncs are the run's dirty
    // marker and its directory, so the third is the manifest's).
    for (syscall, when) in [("syncfs", 1), ("fsync", 3)] {
        let store = dir.path().join(format!("store-{syscall}"));
        // The store exists first (creating it fsyncs config.json): import the
        // image's first block, then drop that manifest.
        let seed = dir.path().join("seed.img");
        images::write(&seed, &data[..bs]);
        let r = common::diskdump(&store, &["import", seed.to_str().unwrap(), "--as", "seed"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        for m in common::all_manifests(&store) {
            std::fs::remove_file(m).unwrap();
        }
        import_killed_at(&store, &img, syscall, when);
        assert!(
            common::all_manifests(&store).is_empty(),
            "killed at {syscall}: a manifest is visible"
        );
        let (blocks, _temps) = common::whole_blocks_and_temps(&store, bs);
        assert!(blocks > 0, "killed at {syscall}: blocks were stored first");
        // Every block was in place before the kill: the re-run stores none.
        let r = common::diskdump(&store, &["import", img.to_str().unwrap(), "--as", "crash"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains(" (0 new, "), "{syscall}: {}", r.stdout);
        assert_eq!(common::all_manifests(&store).len(), 1);
        let (code, bytes, err) = common::diskdump_bytes(&store, &["restore", "crash"]);
        assert_eq!(code, 0, "{err}");
        assert!(bytes == data, "killed at {syscall}: restore differs");
        // gc sweeps what the crash left (a manifest temp); the store verifies.
        let r = common::diskdump(&store, &["gc"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (after, temps) = common::whole_blocks_and_temps(&store, bs);
        assert!(temps.is_empty(), "gc left {temps:?}");
        assert_eq!(after, blocks, "gc kept every referenced block");
        assert!(common::walk(&store)
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp.")));
        let r = common::diskdump(&store, &["verify"]);
        assert_eq!(r.code, 0, "killed at {syscall}: {}{}", r.stdout, r.stderr);
    }
}

#[test]
#[cfg_attr(not(have_strace), ignore = "needs strace")]
fn restore_writes_behind_and_syncs_the_file_before_its_rename() {
    common::need(common::have("strace"), "strace (apt-get install strace)");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    // 48 MiB: more than one 32 MiB write-behind window.
    let data = images::mixed(131072, 384, 0, 5);
    images::write(&img, &data);
    let store = dir.path().join("store");
    common::diskdump(&store, &["import", img.to_str().unwrap(), "--as", "r"]).ok();
    let out = dir.path().join("out.img");
    let (_, text) = common::strace_diskdump(
        &store,
        "openat,fsync,sync_file_range,rename,renameat2",
        &["restore", "r", "-o", out.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&out).unwrap() == data,
        "restored bytes differ"
    );
    let lines: Vec<&str> = text.lines().collect();
    let open = lines
        .iter()
        .position(|l| l.contains("openat(") && l.contains(".diskdump-partial."))
        .expect("temp output opened");
    let fd = lines[open].rsplit("= ").next().unwrap().trim();
    let rename = lines
        .iter()
        .position(|l| l.contains("rename") && l.contains("out.img\"") && l.contains("= 0"))
        .expect("output renamed into place");
    let fsync = (open..rename)
        .find(|&i| {
            lines[i].contains(&format!("fsync({fd})"))
                || lines[i].contains(&format!("fsync({fd} <unfinished"))
        })
        .expect("output fsynced before its rename");
    let behind = (open..fsync)
        .filter(|&i| lines[i].contains(&format!("sync_file_range({fd},")))
        .count();
    assert!(behind >= 1, "write-out started during the restore");
}
