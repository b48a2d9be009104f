//! The embedded agent is static: it runs on an old distribution. A Debian 11
//! (bullseye) root made by debootstrap, the agent run in it with chroot, and
//! the receiver on this side over pipes.

use crate::support::*;
use diskdump::receiver::{InFlight, NoProgress};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A cached bullseye root under cargo's per-target temp dir (about 30 s and
/// 250 MB the first time; `cargo clean` removes it).
fn bullseye_root() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bullseye-root");
    if root.join("usr/bin/env").exists() {
        return root;
    }
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    let have = Command::new("sh")
        .args(["-c", "command -v debootstrap"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        root_user && have,
        "this test needs root and debootstrap (apt-get install debootstrap)"
    );
    let _ = fs::remove_dir_all(&root);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bullseye"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap failed (it needs the Debian archive): {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    root
}

#[test]
#[cfg_attr(
    not(all(have_root, have_network)),
    ignore = "needs root, debootstrap and the network (set DISKDUMP_TEST_NETWORK=1)"
)]
fn the_embedded_agent_runs_in_a_debian_bullseye_chroot() {
    let root = bullseye_root();
    let glibc = Command::new("chroot")
        .arg(&root)
        .args(["/usr/bin/ldd", "--version"])
        .output()
        .unwrap();
    let glibc = String::from_utf8_lossy(&glibc.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(glibc.contains("2.31"), "bullseye ships glibc 2.31: {glibc}");
    fs::write(root.join("diskdump-agent"), diskdump::agent_bin::AGENT).unwrap();
    let img = image(BS, 40, 333);
    fs::write(root.join("disk.img"), &img).unwrap();
    let mut chroot = Command::new("chroot");
    chroot.arg(&root).args([
        "/bin/sh",
        "-c",
        "chmod 755 /diskdump-agent && exec /diskdump-agent --block-size 4096 /disk.img",
    ]);
    let (_dir, store) = new_store(BS);
    let (got, status, stderr) = dump_command(&store, &InFlight::new(), chroot, &NoProgress);
    let got = got.unwrap_or_else(|e| panic!("{e:#}; agent stderr: {stderr}"));
    assert!(status.success());
    assert!(!got.hello.hostname.is_empty());
    assert!(
        restore(&store, &got.hashes.to_vec().unwrap())[..img.len()] == img[..],
        "restored bytes differ"
    );
}
