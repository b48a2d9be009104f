//! Helpers shared by the integration tests: run the real binary, make images,
//! and fail loudly when a requirement the build promised is missing (`need`).
#![allow(dead_code)]

pub mod garage;
pub mod images;
pub mod mount;
pub mod pagecache;
pub mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diskdump"))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "diskdump failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn fails(self) -> Run {
        assert_ne!(
            self.code, 0,
            "diskdump should have failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A finished process's status and output, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn finish(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Tests make stores as users do: `diskdump init` before the first import
/// or dump into a new one, with the `--block-size` (and import's `--group`)
/// that command names.
/// Best effort: a store path a test made invalid on purpose is left alone
/// for the command under test to refuse.
pub fn ensure_store(store: &Path, args: &[&str]) {
    let first = args.iter().find(|a| !a.starts_with('-'));
    if store.join(".blockstore").exists() || !first.is_some_and(|a| *a == "import" || *a == "dump")
    {
        return;
    }
    let mut init = vec!["init".to_string()];
    // import's --group (the store's sharing group) is init's; dump's names
    // a config group.
    let flags: &[&str] = match first {
        Some(&"import") => &["--block-size", "--group"],
        _ => &["--block-size"],
    };
    for (i, a) in args.iter().enumerate() {
        for flag in flags {
            if a == flag {
                init.extend([flag.to_string(), args[i + 1].to_string()]);
            } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                init.extend([flag.to_string(), v.to_string()]);
            }
        }
    }
    let _ = Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(&init)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `diskdump --store STORE ARGS...`.
pub fn diskdump(store: &Path, args: &[&str]) -> Run {
    ensure_store(store, args);
    let o = Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run diskdump");
    finish(o)
}

/// Runs `diskdump --store STORE --json ARGS...`, which must succeed, and
/// parses its report.
pub fn diskdump_json(store: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let r = diskdump(store, &all).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// Runs `diskdump --store STORE ARGS...` under `strace -f -e trace=CALLS`
/// (it must succeed); returns its stdout and the trace.
pub fn strace_diskdump(store: &Path, calls: &str, args: &[&str]) -> (Vec<u8>, String) {
    ensure_store(store, args);
    let trace = tempfile::NamedTempFile::new().unwrap();
    let o = Command::new("strace")
        .arg("-f")
        .arg("-o")
        .arg(trace.path())
        .arg("-e")
        .arg(format!("trace={calls}"))
        .arg(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (o.stdout, std::fs::read_to_string(trace.path()).unwrap())
}

/// Runs `diskdump --store STORE ARGS...` and returns its raw stdout.
pub fn diskdump_bytes(store: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    ensure_store(store, args);
    let o = Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run diskdump");
    (
        o.status.code().unwrap_or(-1),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Starts `diskdump --store STORE ARGS...` in the background, output captured.
pub fn spawn_diskdump(store: &Path, args: &[&str]) -> std::process::Child {
    ensure_store(store, args);
    Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start diskdump")
}

/// Fails the test when a requirement is missing. Tests that need root, FUSE,
/// sshd, loop devices, a tool or the network are gated by a cfg that
/// `build.rs` sets from what the machine has (all of them under `CI`):
/// `#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]`. So a test
/// that runs has been promised its requirement, and a missing one is a
/// failure, never a silent pass (docs/DESIGN.md, "Tests").
pub fn need(ok: bool, what: &str) {
    assert!(
        ok,
        "this test needs {what}, which is missing here \
         (under CI every requirement must be present; elsewhere build.rs marks \
         such tests ignored: see README, Testing)"
    );
}

/// `need` for a requirement found missing with a reason (None: present).
pub fn need_none(missing: Option<String>) {
    if let Some(why) = missing {
        need(false, &why);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The only manifest under a store's dated tree (panics if not exactly one).
pub fn only_manifest(store: &Path) -> PathBuf {
    let mut found = Vec::new();
    for e in walk(store) {
        if e.extension().is_some_and(|x| x == "manifest")
            && !e.starts_with(store.join(".blockstore"))
        {
            found.push(e);
        }
    }
    assert_eq!(found.len(), 1, "manifests: {found:?}");
    found.remove(0)
}

/// Every file below `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Block files (`.lz4`) in a store.
pub fn block_files(store: &Path) -> Vec<PathBuf> {
    walk(&store.join(".blockstore"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "lz4"))
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    diskdump::digest::Digest::of(data).to_hex()
}

/// Manifests anywhere in a store (dated tree and `.blockstore/manifests`).
pub fn all_manifests(store: &Path) -> Vec<PathBuf> {
    walk(store)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "manifest"))
        .collect()
}

/// What a store looks like after its writer died: checks that every `.lz4`
/// file is a whole block (an LZ4 frame decoding, within `bs`, to bytes whose
/// SHA-256 is its name), that every block the index lists is one of them,
/// and that no other file is there but temp files.
/// Returns the number of blocks and the temp files.
pub fn whole_blocks_and_temps(store: &Path, bs: usize) -> (usize, Vec<PathBuf>) {
    let (mut blocks, mut temps) = (0, Vec::new());
    let (mut whole, mut indexed) = (std::collections::HashSet::new(), Vec::new());
    let mut raw = Vec::new();
    for p in walk(&store.join(".blockstore")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".tmp.") {
            temps.push(p);
            continue;
        }
        if p.parent().is_some_and(|d| d.ends_with(".blockstore/dirty")) {
            continue; // a killed run's marker: the next run checks its blocks
        }
        if p.parent().is_some_and(|d| d.ends_with(".blockstore/index")) {
            if name.starts_with("seg-") {
                indexed.extend(index_digests(&p));
            }
            continue;
        }
        let Some(hex) = name.strip_suffix(".lz4") else {
            let registration = p.parent().is_some_and(|d| d.ends_with("writers"));
            assert!(
                ["config.json", "lock", "gc-start", "gc-active"].contains(&name.as_str())
                    || registration,
                "unexpected file {p:?}"
            );
            continue;
        };
        whole.insert(hex.to_string());
        let frame = std::fs::read(&p).unwrap();
        diskdump_agent::blockfmt::decode(&frame, bs, &mut raw)
            .unwrap_or_else(|e| panic!("partial or damaged block {p:?}: {e}"));
        assert_eq!(sha256_hex(&raw), hex, "{p:?} holds other data");
        blocks += 1;
    }
    for hex in indexed {
        assert!(
            whole.contains(&hex),
            "the index lists {hex}, which is not a whole block"
        );
    }
    (blocks, temps)
}

/// Removes the store's index of present blocks (a cache: every block is
/// then checked on disk, as in a store written by Python 0.1.5).
pub fn drop_index(store: &Path) {
    match std::fs::remove_dir_all(store.join(".blockstore/index")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
        _ => {}
    }
}

/// The digests (hex) of one index file (`.blockstore/index/seg-*.idx`:
/// `DDIDX001`, count u64 LE, sorted 32-byte digests).
pub fn index_digests(p: &Path) -> Vec<String> {
    let bytes = std::fs::read(p).unwrap();
    assert_eq!(&bytes[..8], b"DDIDX001", "{p:?}");
    let n = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 16 + 32 * n, "{p:?}");
    bytes[16..]
        .chunks(32)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

/// Sends `sig` to a child we started.
pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Polls `cond` every few milliseconds for up to `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed().as_secs() < secs, "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Waits until a writer (dump or import) has registered in the store.
pub fn wait_for_writer(store: &Path) {
    let writers = store.join(".blockstore/writers");
    wait_until(60, "a writer registers", || {
        std::fs::read_dir(&writers).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
        })
    });
}

/// A gc run while a dump or import is running: it does not wait for it,
/// sees it, and removes at most `max_removed` blocks (those the writer has
/// not asked about yet); returns gc's report.
pub fn gc_beside_a_writer(store: &Path, max_removed: u64) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    let r = diskdump(store, &["gc", "--no-wait", "--json"]).ok();
    assert!(!r.stderr.contains("waiting"), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["running_writers"], 1, "{v}");
    assert!(v["removed_blocks"].as_u64().unwrap() <= max_removed, "{v}");
    eprintln!("gc beside a writer took {:?}", t0.elapsed());
    v
}

/// A store whose only blocks are `data`'s, orphaned long ago: imported as
/// "first" from `dir/first.img`, its manifest removed, the store aged. A
/// next import of the same data finds them "already present" while a gc
/// would take them.
pub fn orphaned_store(store: &Path, dir: &Path, data: &[u8]) {
    let first = dir.join("first.img");
    images::write(&first, data);
    diskdump(store, &["import", first.to_str().unwrap(), "--as", "first"]).ok();
    std::fs::remove_file(only_manifest(store)).unwrap();
    age_store(store);
}

/// Makes every file in the store's block area an hour old, as if the
/// store had been left alone since: gc keeps unreferenced blocks younger
/// than its grace period (a minute), which tests that delete and then gc
/// at once would otherwise hit.
pub fn age_store(store: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for p in walk(&store.join(".blockstore")) {
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(old).unwrap();
    }
}
