//! Blocks are durable before the manifest that references them is visible,
//! and the manifest's rename is made durable: checked on the real binary's
//! system calls with strace.

mod common;

use common::images;
use std::process::Command;

#[test]
fn import_syncs_blocks_then_writes_manifest_then_syncs_its_directory() {
    if !common::require(common::have("strace"), "strace (apt-get install strace)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    images::write(&img, &images::mixed(131072, 24, 100, 31));
    let store = dir.path().join("store");
    let trace = dir.path().join("trace");
    let st = Command::new("strace")
        .args([
            "-f",
            "-o",
            trace.to_str().unwrap(),
            "-e",
            "trace=fsync,fdatasync,syncfs,renameat2,rename,openat",
        ])
        .arg(common::bin())
        .args([
            "--store",
            store.to_str().unwrap(),
            "import",
            img.to_str().unwrap(),
            "--as",
            "dur",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
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
        .find(|&i| lines[i].contains(&format!("fsync({fd})")))
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
