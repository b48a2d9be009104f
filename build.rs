//! Builds the remote agent as a static x86_64 Linux executable and leaves it
//! in `$OUT_DIR/diskdump-agent` for `src/agent_bin.rs` to embed.
//!
//! Static linking needs `-Ctarget-feature=+crt-static`, which must not reach
//! this crate's own build (proc-macros cannot be static) and which cargo
//! cannot set per package on stable. So a nested `cargo build` of the agent
//! crate alone, with its own target directory, and flags of its own: nothing
//! inherited from this build may change how it is compiled.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Inherited variables that would change the nested build: flags, wrappers
/// (clippy's driver), target directory and target selection, profiles, and
/// what cargo sets for this build script alone.
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_BUILD_",
    "CARGO_TARGET_",
    "CARGO_PROFILE_",
    "CARGO_ENCODED_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_CRATE_",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_LLVM_COV",
];

fn main() {
    println!("cargo:rerun-if-changed=agent");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    let host = env::var("HOST").unwrap_or_default();
    if host != TARGET {
        panic!(
            "diskdump embeds a static {TARGET} agent and must be built on {TARGET}; \
             this host is {host:?}"
        );
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let built = build_agent(&root, &out_dir.join("agent-target"));
    check_static(&built);
    copy_if_changed(&built, &out_dir.join("diskdump-agent"));
    probe_test_requirements();
}

/// What this machine offers the tests that need more than a temp dir, as
/// cfgs: such a test carries `#[cfg_attr(not(have_X), ignore = "...")]`, so
/// where X is missing cargo reports it as ignored rather than passed. Under
/// `CI` every cfg is set: a missing requirement then fails the test loudly
/// (tests/common/mod.rs `need`). One rule, docs/DESIGN.md "Tests".
fn probe_test_requirements() {
    const ALL: &[&str] = &[
        "have_root",
        "have_fuse",
        "have_loop",
        "have_sshd",
        "have_namespaces",
        "have_strace",
        "have_lz4",
        "have_sudo",
        "have_time",
        "have_garage",
        "have_network",
        "have_systemd_analyze",
    ];
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=DISKDUMP_TEST_NETWORK");
    println!("cargo:rerun-if-env-changed=GARAGE");
    // Installing a package changes these directories' contents.
    println!("cargo:rerun-if-changed=/usr/sbin");
    println!("cargo:rerun-if-changed=/usr/bin");
    let names = ALL.join(", ");
    println!("cargo::rustc-check-cfg=cfg({names})");
    let ci = env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let root = fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    let tool = |t: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists())
    };
    let fuse = root && Path::new("/dev/fuse").exists();
    let have = [
        ("have_root", root),
        ("have_fuse", fuse),
        (
            "have_loop",
            fuse && Path::new("/dev/loop-control").exists()
                && ["losetup", "mkfs.ext4", "mount", "umount"]
                    .iter()
                    .all(|t| tool(t)),
        ),
        ("have_sshd", root && tool("sshd") && tool("ssh-keygen")),
        (
            "have_namespaces",
            fuse && tool("unshare") && tool("setpriv") && tool("fusermount3"),
        ),
        ("have_strace", tool("strace")),
        ("have_lz4", tool("lz4")),
        ("have_sudo", root && tool("sudo") && tool("useradd")),
        ("have_time", Path::new("/usr/bin/time").exists()),
        ("have_systemd_analyze", tool("systemd-analyze")),
        // What examples/garage-cluster.sh runs: $GARAGE, PATH, or .ci/run's build.
        (
            "have_garage",
            env::var_os("GARAGE").is_some()
                || tool("garage")
                || env::var_os("HOME").is_some_and(|h| {
                    Path::new(&h)
                        .join(".cache/diskdump-ci/garage-2.5.0/bin/garage")
                        .exists()
                }),
        ),
        // Tests that fetch from a package registry (pip, debootstrap).
        (
            "have_network",
            root && env::var_os("DISKDUMP_TEST_NETWORK").is_some_and(|v| v == "1"),
        ),
    ];
    for (name, ok) in have {
        if ci || ok {
            println!("cargo:rustc-cfg={name}");
        }
    }
}

fn build_agent(root: &Path, target_dir: &Path) -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["-p", "diskdump-agent", "--bin", "diskdump-agent"])
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if REMOVED_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    // The workspace's release profile keeps debug info for diskdump itself;
    // the agent is shipped over the network, so it is built small.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the agent: {e}"));
    if !output.status.success() {
        panic!(
            "building the static agent failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target_dir
        .join(TARGET)
        .join("release")
        .join("diskdump-agent")
}

/// Refuses an agent that needs a dynamic loader: it would fail on older
/// distributions, which is the whole point of building it static. An ELF64
/// with no PT_INTERP program header is static (static-pie included).
fn check_static(path: &Path) {
    let elf = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let ok_header = elf.len() > 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1;
    assert!(
        ok_header,
        "{} is not a little-endian ELF64 file",
        path.display()
    );
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
        assert!(
            p_type != PT_INTERP,
            "{} is dynamically linked (it has a program interpreter); \
             the agent must be static",
            path.display()
        );
    }
}

/// Copies only when the bytes differ, so the main crate is not recompiled
/// (for `include_bytes!`) after a nested build that changed nothing.
fn copy_if_changed(from: &Path, to: &Path) {
    let new = fs::read(from).unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
    if fs::read(to).ok().as_deref() != Some(&new[..]) {
        fs::write(to, &new).unwrap_or_else(|e| panic!("cannot write {}: {e}", to.display()));
    }
}
