//! The embedded agent is static: it runs on an old distribution. A Debian 11
//! (bullseye) root made by debootstrap, the agent run in it with chroot, and
//! the receiver on this side over pipes.

use crate::support::*;
use diskdump::receiver::{InFlight, NoProgress};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A cached bullseye root, or None when the Debian archive cannot be reached
/// (said in the output; the only reason this test may skip, even in CI).
fn bullseye_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bullseye-root");
    if root.join("usr/bin/env").exists() {
        return Some(root);
    }
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    let have = Command::new("sh")
        .args(["-c", "command -v debootstrap"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !root_user || !have {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but debootstrap or root is missing");
        }
        eprintln!("SKIP: needs root and debootstrap");
        return None;
    }
    let _ = fs::remove_dir_all(&root);
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bullseye"])
        .arg(&root)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run debootstrap");
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let unreachable = [
            "Failed getting release file",
            "Temporary failure resolving",
            "Could not resolve",
            "unable to fetch",
        ];
        if unreachable.iter().any(|m| log.contains(m)) {
            eprintln!(
                "SKIP: the Debian archive cannot be reached from here, so no bullseye root: {}",
                log.lines().last().unwrap_or("")
            );
            return None;
        }
        panic!("debootstrap failed: {log}");
    }
    Some(root)
}

#[test]
fn the_embedded_agent_runs_in_a_debian_bullseye_chroot() {
    let Some(root) = bullseye_root() else { return };
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
        restore(&store, &got.manifest.blocks)[..img.len()] == img[..],
        "restored bytes differ"
    );
}
