//! `diskdump dump` end to end: the real binary, a real sshd on 127.0.0.1, the
//! embedded agent deployed over SCP, a store in a temp dir.

mod common;

use common::output_text as text;

use common::pagecache::{cache_drops, cache_prefix, evict, resident_pages};
use common::sshd::Sshd;
use common::{images, walk};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BS: usize = 131072;

fn run(sshd: &Sshd, store: &Path, args: &[&str]) -> Output {
    run_via(sshd, store, "openssh", args)
}

/// Runs diskdump with `DISKDUMP_TRANSPORT=transport`.
fn run_via(sshd: &Sshd, store: &Path, transport: &str, args: &[&str]) -> Output {
    common::ensure_store(store, args);
    Command::new(common::bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .envs(sshd.env())
        .env("DISKDUMP_TRANSPORT", transport)
        .output()
        .expect("run diskdump")
}

fn manifests(store: &Path) -> Vec<PathBuf> {
    walk(store)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "manifest"))
        .collect()
}

fn restore(store: &Path, name: &str) -> Vec<u8> {
    let (code, bytes, err) = common::diskdump_bytes(store, &["restore", name]);
    assert_eq!(code, 0, "{err}");
    bytes
}

/// Starts `diskdump dump TARGET --as NAME` in the background, output captured.
fn spawn_dump(sshd: &Sshd, store: &Path, target: &str, name: &str) -> Child {
    common::ensure_store(store, &["dump"]);
    Command::new(common::bin())
        .args(["--store", store.to_str().unwrap(), "dump", target])
        .args(["--as", name])
        .envs(sshd.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until no process has `source` on its command line: the agent that
/// read it has exited.
fn wait_agent_gone(source: &Path) {
    common::wait_until(10, "the agent to exit", || {
        let ps = Command::new("pgrep")
            .args(["-f", source.to_str().unwrap()])
            .output()
            .unwrap();
        ps.stdout.is_empty()
    });
}

/// The summary row of a target: NEW and WIRE columns.
fn summary(o: &Output, target: &str) -> (u64, String) {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    for l in &lines {
        assert!(l.chars().count() <= 80, "wider than 80 columns: {l:?}");
    }
    let i = lines
        .iter()
        .position(|l| l.starts_with(target))
        .unwrap_or_else(|| panic!("no row for {target}: {out}"));
    // A long target has a line of its own; its numbers follow.
    let mut cols: Vec<&str> = lines[i].split_whitespace().collect();
    if cols.len() == 1 {
        cols = std::iter::once(target)
            .chain(lines[i + 1].split_whitespace())
            .collect();
    }
    (cols[1].parse().unwrap(), cols[4].to_string())
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn dump_restores_byte_identical_and_a_redump_moves_almost_nothing() {
    dump_and_redump("openssh");
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn dump_and_redump_over_libssh2() {
    dump_and_redump("libssh2");
}

fn dump_and_redump(transport: &str) {
    let sshd = Sshd::start();
    let run = |sshd: &Sshd, store: &Path, args: &[&str]| run_via(sshd, store, transport, args);
    let dir = tempfile::tempdir().unwrap();
    let data = images::mixed(BS, 300, 4321, 41); // ~37.5 MiB
    let img = dir.path().join("disk.img");
    images::write(&img, &data);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let o = run(&sshd, &store, &["dump", &target, "--as", "disk1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(restore(&store, "disk1") == data, "restored bytes differ");
    common::diskdump(&store, &["verify"]).ok();
    let blocks_before = common::block_files(&store);
    let o = run(&sshd, &store, &["dump", &target, "--as", "disk1"]);
    assert!(o.status.success(), "{}", text(&o));
    let (new, wire) = summary(&o, &target);
    assert_eq!(new, 0, "{}", text(&o));
    assert_eq!(
        common::block_files(&store),
        blocks_before,
        "no new block stored"
    );
    // Under 1% of the image: only hashes and framing cross the wire.
    assert!(
        wire.ends_with("KiB")
            && wire.trim_end_matches("KiB").parse::<f64>().unwrap()
                < data.len() as f64 / 100.0 / 1024.0,
        "wire {wire}"
    );
    assert_eq!(manifests(&store).len(), 2);
    assert!(restore(&store, "disk1") == data);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn two_targets_in_parallel_each_with_its_own_flags() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (images::mixed(BS, 40, 0, 42), images::mixed(BS, 50, 99, 43));
    let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&ia, &a);
    images::write(&ib, &b);
    let store = dir.path().join("store");
    let h = sshd.host_alias();
    let (ta, tb) = (
        format!("{h}:{}", ia.display()),
        format!("root@{h}:{}", ib.display()),
    );
    let o = run(
        &sshd,
        &store,
        &[
            "dump",
            &ta,
            "--as",
            "alpha",
            &tb,
            "--sudo",
            "--as",
            "beta",
            "--compress",
            "zlib",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(restore(&store, "alpha") == a);
    assert!(restore(&store, "beta") == b);
    common::diskdump(&store, &["verify"]).ok();
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn one_failing_target_does_not_stop_the_others() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let a = images::mixed(BS, 20, 5, 44);
    let ia = dir.path().join("a.img");
    images::write(&ia, &a);
    let store = dir.path().join("store");
    let h = sshd.host_alias();
    let good = format!("{h}:{}", ia.display());
    let missing = format!("{h}:/no/such/disk.img");
    let o = run(
        &sshd,
        &store,
        &["dump", &missing, "--as", "gone", &good, "--as", "ok"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/no/such/disk.img") && err.contains(h),
        "names host and path: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("FAILED"),
        "{}",
        text(&o)
    );
    let names: Vec<String> = manifests(&store)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["ok.manifest".to_string()]);
    assert!(restore(&store, "ok") == a);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn unknown_and_changed_host_keys_are_refused() {
    host_keys_refused("openssh");
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn unknown_and_changed_host_keys_are_refused_over_libssh2() {
    host_keys_refused("libssh2");
}

fn host_keys_refused(transport: &str) {
    let sshd = Sshd::start();
    let run = |sshd: &Sshd, store: &Path, args: &[&str]| run_via(sshd, store, transport, args);
    let dir = tempfile::tempdir().unwrap();
    let ia = dir.path().join("a.img");
    images::write(&ia, &images::mixed(BS, 4, 0, 45));
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), ia.display());
    let kh = sshd.known_hosts();
    let good = fs::read_to_string(&kh).unwrap();
    fs::write(&kh, "").unwrap();
    let o = run(&sshd, &store, &["dump", &target, "--as", "x"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    // libssh2 says "unknown host key ... SHA256:...", OpenSSH "No ED25519 host key is known".
    let lower = err.to_lowercase();
    assert!(
        lower.contains("host key") && (lower.contains("unknown") || lower.contains("is known")),
        "{}",
        text(&o)
    );
    // Some other host's key recorded for this host: a changed key.
    let other = dir.path().join("other_key");
    common::sshd::keygen(&other, "ed25519", "");
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let host_field = good.split_whitespace().next().unwrap();
    let fake = other_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    fs::write(&kh, format!("{host_field} {fake}\n")).unwrap();
    let o = run(
        &sshd,
        &store,
        &["dump", &target, "--as", "x", "--accept-new-host-key"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(
        err.contains("changed") || err.contains("mismatch") || err.contains("does not match"),
        "{}",
        text(&o)
    );
    assert!(manifests(&store).is_empty());
    // accept-new records an unknown key and proceeds.
    fs::write(&kh, "").unwrap();
    let o = run(
        &sshd,
        &store,
        &["dump", &target, "--as", "x", "--accept-new-host-key"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!fs::read_to_string(&kh).unwrap().trim().is_empty());
}

#[test]
fn bad_targets_and_flags_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (args, want) in [
        (vec!["dump", "--sudo", "h:/x"], "must follow"),
        (vec!["dump", "nocolon"], "invalid target"),
        (
            vec!["dump", "h:/dev/sda", "--as", "../x"],
            "invalid dump name",
        ),
        (vec!["dump", "h:/x", "--batch-size", "0"], "batch"),
    ] {
        let r = common::diskdump(&store, &args).fails();
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    assert!(manifests(&store).is_empty() && common::block_files(&store).is_empty());
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn ctrl_c_stops_the_agent_writes_no_manifest_and_the_rerun_resends_nothing() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    // 16 MiB of data up front, then a long sparse tail the agent is still
    // reading when Ctrl-C arrives.
    images::write(&img, &images::random_bytes(128 * BS, 46));
    images::set_len(&img, 48 << 30);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let child = spawn_dump(&sshd, &store, &target, "big");
    common::wait_until(60, "the data blocks", || {
        common::block_files(&store).len() >= 128
    });
    common::signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("interrupted"),
        "{}",
        text(&o)
    );
    assert!(manifests(&store).is_empty());
    common::diskdump(&store, &["verify"]).ok();
    // The agent exits once its session is cut.
    wait_agent_gone(&img);
    // Shrink the tail so the re-run is quick; the data blocks are all there.
    images::set_len(&img, 256 * BS as u64);
    let o = run(&sshd, &store, &["dump", &target, "--as", "big"]);
    assert!(o.status.success(), "{}", text(&o));
    let (new, _) = summary(&o, &target);
    assert_eq!(
        new,
        0,
        "blocks that arrived before Ctrl-C are not sent again: {}",
        text(&o)
    );
    assert_eq!(manifests(&store).len(), 1);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn agent_is_deployed_once_and_redeployed_when_damaged() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let data = images::mixed(BS, 20, 1000, 43);
    let img = dir.path().join("disk.img");
    images::write(&img, &data);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let cache = sshd.remote_home().join(".cache/diskdump");
    let _ = fs::remove_dir_all(&cache);
    let agent = || {
        let files: Vec<PathBuf> = walk(&cache);
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    };
    let o = run(&sshd, &store, &["dump", &target, "--as", "a"]);
    assert!(o.status.success(), "{}", text(&o));
    let path = agent();
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let first = ino(&path);
    // Cached: started in one round trip, not uploaded again.
    let o = run(&sshd, &store, &["dump", &target, "--as", "a"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(ino(&agent()), first, "the cached agent was uploaded again");
    // A damaged cached agent is never run: it is replaced, and the dump works.
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();
    let o = run(&sshd, &store, &["dump", &target, "--as", "a"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        fs::read(agent()).unwrap(),
        bytes,
        "the damaged agent stayed"
    );
    assert!(restore(&store, "a") == data);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn kill_9_of_the_storage_side_leaves_whole_blocks_and_the_rerun_sends_only_the_rest() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.img");
    // 32 MiB of distinct random blocks, then a long sparse tail the agent is
    // still reading when the kill comes.
    let data = images::random_bytes(256 * BS, 47);
    images::write(&img, &data);
    images::set_len(&img, 48 << 30);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    // Kill while blocks arrive, then again after they all did.
    for min_blocks in [8, 256] {
        let child = spawn_dump(&sshd, &store, &target, "big");
        common::wait_until(60, "blocks arriving", || {
            common::block_files(&store).len() >= min_blocks
        });
        common::signal(&child, libc::SIGKILL);
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&o.status),
            Some(libc::SIGKILL),
            "{}",
            text(&o)
        );
        assert!(manifests(&store).is_empty());
        common::whole_blocks_and_temps(&store, BS);
        // The agent notices its session is gone and exits.
        wait_agent_gone(&img);
    }
    let (present, _) = common::whole_blocks_and_temps(&store, BS);
    images::set_len(&img, data.len() as u64);
    // Present: the 256 data blocks (some maybe not yet) and perhaps the zero block.
    let zero_present = common::block_files(&store).iter().any(|p| {
        p.to_string_lossy()
            .contains(&common::sha256_hex(&vec![0; BS]))
    });
    let data_present = present - usize::from(zero_present);
    let o = run(&sshd, &store, &["dump", &target, "--as", "big"]);
    assert!(o.status.success(), "{}", text(&o));
    let (new, _) = summary(&o, &target);
    assert_eq!(new as usize, 256 - data_present, "{}", text(&o));
    let r = common::diskdump(&store, &["gc"]).ok();
    assert!(r.stdout.contains("removed 0 unreferenced"), "{}", r.stdout);
    assert!(common::whole_blocks_and_temps(&store, BS).1.is_empty());
    common::diskdump(&store, &["verify"]).ok();
    assert!(restore(&store, "big") == data);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn a_stalled_agent_fails_its_target_after_the_idle_timeout() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    // A FIFO nobody writes to: the agent blocks opening it and says nothing.
    let fifo = dir.path().join("stall.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), fifo.display());
    common::ensure_store(&store, &["dump"]);
    let mut child = Command::new(common::bin())
        .args(["--store", store.to_str().unwrap(), "dump", &target])
        .envs(sshd.env())
        .env("DISKDUMP_IDLE_TIMEOUT", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut status = None;
    common::wait_until(30, "the stalled dump to give up", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed().as_secs() >= 2, "{:?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sent nothing for 2 s") && err.contains("no manifest written"),
        "{}",
        text(&o)
    );
    assert!(manifests(&store).is_empty());
    // Release the agent (it is still blocked in open) and see it go.
    drop(fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    wait_agent_gone(&fifo);
}

/// A sudoers rule for the test user, removed on drop.
struct SudoersRule(PathBuf);

impl Drop for SudoersRule {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
#[cfg_attr(
    not(all(have_sshd, have_sudo)),
    ignore = "needs root and sshd; root, sudo and useradd"
)]
fn sudo_that_wants_a_password_is_a_clear_error() {
    let sshd = Sshd::start();
    common::need(common::have("sudo"), "sudo (apt-get install sudo)");
    let user = "diskdump-test";
    sshd.login_as(user);
    // The user may use sudo, but only with its password (no NOPASSWD).
    let rule = SudoersRule(PathBuf::from("/etc/sudoers.d/diskdump-test"));
    fs::write(&rule.0, format!("{user} ALL=(ALL) ALL\n")).unwrap();
    fs::set_permissions(&rule.0, std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    images::write(&img, &images::mixed(BS, 4, 0, 48));
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let o = run(&sshd, &store, &["dump", &target, "--sudo", "--as", "s"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains(&target))
        .unwrap_or_else(|| panic!("a line for the target: {}", text(&o)));
    assert!(
        line.contains("sudo on the remote host wants a password") && line.contains("NOPASSWD"),
        "{}",
        text(&o)
    );
    assert!(manifests(&store).is_empty());
    // Without --sudo the same user dumps a file it can read.
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = run(&sshd, &store, &["dump", &target, "--as", "s"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn kill_9_of_the_agent_fails_the_dump_clearly_and_the_rerun_sends_only_the_rest() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("agent-kill.img");
    let data = images::random_bytes(256 * BS, 49);
    images::write(&img, &data);
    images::set_len(&img, 48 << 30);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let child = spawn_dump(&sshd, &store, &target, "big");
    common::wait_until(60, "blocks arriving", || {
        common::block_files(&store).len() >= 16
    });
    // The agent: the process whose command line ends with this test's image.
    let ps = Command::new("pgrep")
        .args(["-f", &format!("compress .* {}$", img.display())])
        .output()
        .unwrap();
    let pids: Vec<i32> = String::from_utf8_lossy(&ps.stdout)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "one agent: {pids:?}");
    // SAFETY: kill(2) of the agent found above.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no manifest written") && err.contains("agent"),
        "{}",
        text(&o)
    );
    assert!(manifests(&store).is_empty());
    let (present, temps) = common::whole_blocks_and_temps(&store, BS);
    assert!(temps.is_empty(), "{temps:?}");
    common::diskdump(&store, &["verify"]).ok();
    images::set_len(&img, data.len() as u64);
    let o = run(&sshd, &store, &["dump", &target, "--as", "big"]);
    assert!(o.status.success(), "{}", text(&o));
    let (new, _) = summary(&o, &target);
    assert_eq!(new as usize, 256 - present, "{}", text(&o));
    assert!(restore(&store, "big") == data);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn gc_during_a_dump_runs_at_once_and_keeps_the_blocks_the_dump_was_told_are_present() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let data = images::random_bytes(64 * BS, 51);
    let first = dir.path().join("first.img");
    images::write(&first, &data[..32 * BS]);
    common::diskdump(
        &store,
        &["import", first.to_str().unwrap(), "--as", "first"],
    )
    .ok();
    // Orphan those blocks, long ago: the dump is told the store has them,
    // and only its refreshing them keeps gc from taking them.
    for m in manifests(&store) {
        fs::remove_file(m).unwrap();
    }
    common::age_store(&store);
    let img = dir.path().join("big.img");
    images::write(&img, &data);
    // A long sparse tail keeps the dump running while gc is tried.
    images::set_len(&img, 32 << 30);
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let dump = spawn_dump(&sshd, &store, &target, "big");
    // 32 orphaned + the zero block import keeps + 32 new from the dump.
    common::wait_until(60, "the dump's new blocks", || {
        common::block_files(&store).len() >= 65
    });
    // All but the zero block, which the dump asks about only at its end
    // (and stores again then).
    common::gc_beside_a_writer(&store, 1);
    let o = dump.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    common::diskdump(&store, &["verify"]).ok();
    let out = dir.path().join("r.img");
    common::diskdump(&store, &["restore", "big", "-o", out.to_str().unwrap()]).ok();
    let restored = fs::File::open(&out).unwrap();
    let mut head = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut &restored, &mut head).unwrap();
    assert!(
        head == data,
        "the blocks the dump was told about are intact"
    );
    assert_eq!(restored.metadata().unwrap().len(), 32 << 30);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn sigterm_stops_a_dump_like_ctrl_c() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("term.img");
    images::write(&img, &images::random_bytes(64 * BS, 52));
    images::set_len(&img, 48 << 30);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let child = spawn_dump(&sshd, &store, &target, "term");
    common::wait_until(60, "the data blocks", || {
        common::block_files(&store).len() >= 64
    });
    common::signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("interrupted"),
        "{}",
        text(&o)
    );
    assert!(manifests(&store).is_empty());
    common::whole_blocks_and_temps(&store, BS);
    common::diskdump(&store, &["verify"]).ok();
    wait_agent_gone(&img);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn a_broken_block_is_stored_again_by_the_next_dump() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let data = images::mixed(BS, 24, 4242, 4);
    let img = dir.path().join("disk.img");
    images::write(&img, &data);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let o = run(&sshd, &store, &["dump", &target, "--as", "b"]);
    assert!(o.status.success(), "{}", text(&o));
    let block = data.chunks(BS).find(|b| b.iter().any(|&x| x != 0)).unwrap();
    let hex = common::sha256_hex(block);
    for cut in [0usize, 100] {
        // Emptied (a crash before the data reached the disk) or truncated.
        let victim = common::block_files(&store)
            .into_iter()
            .find(|p| p.to_string_lossy().contains(&hex))
            .unwrap();
        let bytes = fs::read(&victim).unwrap();
        // A block no index vouches for (see tests/safety.rs).
        common::drop_index(&store);
        fs::write(&victim, &bytes[..cut]).unwrap();
        let o = run(&sshd, &store, &["dump", &target, "--as", "b"]);
        assert!(o.status.success(), "{}", text(&o));
        let (new, _) = summary(&o, &target);
        assert_eq!(new, 1, "cut to {cut}: {}", text(&o));
        assert!(restore(&store, "b") == data, "cut to {cut}");
        common::diskdump(&store, &["verify"]).ok();
    }
}

/// Removes the system agent `deploy --sudo` installs (tests that install it run as root).
struct SystemAgent;

impl Drop for SystemAgent {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all("/usr/local/lib/diskdump");
    }
}

#[test]
#[cfg_attr(
    not(all(have_sshd, have_sudo)),
    ignore = "needs root and sshd; root, sudo and useradd"
)]
fn deploy_sudo_installs_a_root_owned_agent_that_a_sudoers_rule_for_that_file_runs() {
    let sshd = Sshd::start();
    common::need(common::have("sudo"), "sudo (apt-get install sudo)");
    let _cleanup = SystemAgent;
    let user = "diskdump-test-d"; // its own user: sudoers rules of parallel tests differ
    sshd.login_as(user);
    // The exact line deploy prints, for exactly that file; nothing else is allowed.
    let o = run(
        &sshd,
        Path::new("/nonexistent"),
        &["deploy", &format!("root@{}", sshd.host_alias()), "--sudo"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let agent = Path::new("/usr/local/lib/diskdump/diskdump-agent");
    let rule_line = "root ALL=(root) NOPASSWD: /usr/local/lib/diskdump/diskdump-agent";
    assert!(out.contains(rule_line), "{out}");
    let meta = fs::metadata(agent).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
    assert_eq!(fs::read(agent).unwrap(), diskdump::agent_bin::AGENT);
    let rule = SudoersRule(PathBuf::from("/etc/sudoers.d/diskdump-test-d"));
    fs::write(
        &rule.0,
        format!("{user} ALL=(root) NOPASSWD: {}\n", agent.display()),
    )
    .unwrap();
    fs::set_permissions(&rule.0, std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
    // An image only root may read.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let img = dir.path().join("root-only.img");
    let data = images::mixed(BS, 12, 0, 61);
    images::write(&img, &data);
    fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let o = run(
        &sshd,
        &store,
        &["dump", &target, "--sudo", "--as", "rootonly"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(restore(&store, "rootonly") == data);
    // The user's own cache was never needed.
    assert!(!sshd.remote_home().join(".cache/diskdump").exists());
    // Another version of the system agent: the rule does not allow `sh`: a clear error.
    fs::write(agent, b"#!/bin/sh\nexit 0\n").unwrap();
    let o = run(
        &sshd,
        &store,
        &["dump", &target, "--sudo", "--as", "rootonly"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("diskdump deploy HOST --sudo") && err.contains("NOPASSWD"),
        "{}",
        text(&o)
    );
}

#[test]
#[cfg_attr(
    not(all(have_sshd, have_sudo)),
    ignore = "needs root and sshd; root, sudo and useradd"
)]
fn with_sudo_a_swapped_agent_file_never_runs_as_root() {
    let sshd = Sshd::start();
    common::need(common::have("sudo"), "sudo (apt-get install sudo)");
    let user = "diskdump-test-s";
    sshd.login_as(user);
    let rule = SudoersRule(PathBuf::from("/etc/sudoers.d/diskdump-test-s"));
    fs::write(&rule.0, format!("{user} ALL=(ALL) NOPASSWD: ALL\n")).unwrap();
    fs::set_permissions(&rule.0, std::os::unix::fs::PermissionsExt::from_mode(0o440)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let img = dir.path().join("swap.img");
    let data = images::mixed(BS, 8, 0, 62);
    images::write(&img, &data);
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    // Deploy the agent into the user's cache first.
    let o = run(&sshd, &store, &["dump", &target, "--as", "swap"]);
    assert!(o.status.success(), "{}", text(&o));
    let hash = diskdump::agent_bin::agent_hash();
    let cached = sshd
        .remote_home()
        .join(format!(".cache/diskdump/agent-{}", &hash[..16]));
    // The user (here: a loop as that user) swaps the file for one that leaves a mark if it
    // ever runs as root, and back, as fast as it can.
    let pwned = dir.path().join("pwned");
    let evil = sshd.remote_home().join("evil");
    fs::write(
        &evil,
        format!(
            "#!/bin/sh\n[ \"$(id -u)\" = 0 ] && touch {}\nexit 0\n",
            pwned.display()
        ),
    )
    .unwrap();
    let good = sshd.remote_home().join("good");
    fs::copy(&cached, &good).unwrap();
    for f in [&evil, &good] {
        fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    }
    Command::new("chown")
        .args(["-R", user])
        .arg(sshd.remote_home())
        .status()
        .unwrap();
    let swap = format!(
        "while :; do cp -f {e} {c}.x && mv -f {c}.x {c}; cp -f {g} {c}.y && mv -f {c}.y {c}; done",
        e = evil.display(),
        g = good.display(),
        c = cached.display()
    );
    let mut swapper = Command::new("su")
        .args(["-s", "/bin/sh", "-c", &swap, user])
        .spawn()
        .unwrap();
    let mut outcomes = Vec::new();
    for i in 0..6 {
        let o = run(
            &sshd,
            &store,
            &["dump", &target, "--sudo", "--as", &format!("swap{i}")],
        );
        outcomes.push(o.status.success());
        if !o.status.success() {
            // A failure must be clear: one line per target naming it.
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.lines().any(|l| l.starts_with(&target)), "{}", text(&o));
        }
    }
    let _ = swapper.kill();
    let _ = swapper.wait();
    let _ = Command::new("pkill")
        .args(["-u", user, "-f", "while :; do cp"])
        .status();
    assert!(!pwned.exists(), "the swapped file ran as root");
    assert!(
        outcomes.iter().any(|&ok| ok),
        "some dumps get through: {outcomes:?}"
    );
    common::diskdump(&store, &["verify"]).ok();
    drop(rule);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn a_config_group_is_dumped_and_pruned_by_name_like_a_nightly_job() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&a, &images::random_bytes(8 * BS, 130));
    images::write(&b, &images::random_bytes(4 * BS, 131));
    let store = dir.path().join("store");
    common::diskdump(&store, &["init"]).ok();
    let cfg = dir.path().join("config.toml");
    let h = sshd.host_alias();
    fs::write(
        &cfg,
        format!(
            "store = \"{}\"\n[defaults]\njobs = 1\n[groups.nightly]\nretention = {{ keep-last = 1 }}\n\
             targets = [\n  {{ target = \"{h}:{}\", as = \"web-sda\" }},\n  {{ target = \"{h}:{}\" }},\n]\n",
            store.display(),
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    // No --store: the config names it.
    let nightly = |args: &[&str]| {
        Command::new(common::bin())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .envs(sshd.env())
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let o = nightly(&["dump", "--group", "nightly", "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["failed"], 0, "{v}");
        assert_eq!(v["targets"][0]["name"], "web-sda");
        assert_eq!(v["targets"][1]["name"], format!("{h}-b.img"));
    }
    assert_eq!(manifests(&store).len(), 4);
    let o = nightly(&["forget", "--group", "nightly", "--prune"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(manifests(&store).len(), 2, "{}", text(&o));
    assert!(restore(&store, "web-sda") == fs::read(&a).unwrap());
    let o = nightly(&["dump", "--group", "weekly"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no group \"weekly\""),
        "{}",
        text(&o)
    );
    // A config error names the file and line, and exits 2.
    fs::write(
        &cfg,
        "store = \"/x\"\n[groups.nightly]\ntargets = [ { target = \"h:/x\", sudo = \"yes\" } ]\n",
    )
    .unwrap();
    let o = nightly(&["dump", "--group", "nightly"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{} line 3:", cfg.display())), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn without_an_ssh_client_on_path_libssh2_is_used_with_one_notice() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    images::write(&a, &images::mixed(BS, 6, 0, 81));
    images::write(&b, &images::mixed(BS, 6, 3, 82));
    let store = dir.path().join("store");
    common::ensure_store(&store, &["dump"]);
    let ta = format!("{}:{}", sshd.host_alias(), a.display());
    let tb = format!("{}:{}", sshd.host_alias(), b.display());
    let o = Command::new(common::bin())
        .arg("--store")
        .arg(&store)
        .args(["dump", &ta, "--as", "a", &tb, "--as", "b"])
        .envs(sshd.env())
        .env("PATH", dir.path()) // no ssh there
        .env_remove("DISKDUMP_TRANSPORT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("no `ssh` client on PATH: using the built-in libssh2")
            .count(),
        1,
        "{}",
        text(&o)
    );
    // Asking for OpenSSH without a client is a clear error.
    let o = Command::new(common::bin())
        .arg("--store")
        .arg(&store)
        .args(["dump", &ta, "--transport", "openssh"])
        .envs(sshd.env())
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no `ssh` client on PATH"),
        "{}",
        text(&o)
    );
    // -o is for OpenSSH only.
    let o = run_via(
        &sshd,
        &store,
        "libssh2",
        &["dump", &ta, "-o", "Ciphers=aes128-ctr"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("use --transport openssh"),
        "{}",
        text(&o)
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn deploy_puts_the_agent_in_the_cache_ahead_of_the_dump() {
    let sshd = Sshd::start();
    let hash = diskdump::agent_bin::agent_hash();
    let cached = sshd
        .remote_home()
        .join(format!(".cache/diskdump/agent-{}", &hash[..16]));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for transport in ["openssh", "libssh2"] {
        let _ = fs::remove_file(&cached);
        let o = run_via(&sshd, &store, transport, &["deploy", sshd.host_alias()]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("uploaded the agent"),
            "{}",
            text(&o)
        );
        assert_eq!(fs::read(&cached).unwrap(), diskdump::agent_bin::AGENT);
    }
    assert!(!store.exists(), "deploy does not touch the store");
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn a_dump_neither_fills_nor_empties_the_servers_page_cache() {
    let sshd = Sshd::start();
    // On a disk filesystem (a tmpfs keeps every page cached, which would prove nothing).
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let data = images::mixed(BS, 192, 0, 77); // 24 MiB
    let img = dir.path().join("disk.img");
    images::write(&img, &data);
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    for transport in ["openssh", "libssh2"] {
        let mut tries = 0;
        let (dropped, added) = loop {
            tries += 1;
            assert!(
                tries <= 5,
                "the page cache was dropped by someone else 5 times in a row"
            );
            let drops = cache_drops();
            evict(&img);
            let before = resident_pages(&img);
            common::need(
                !before.iter().any(|&r| r),
                "a filesystem under /var/tmp whose pages posix_fadvise(DONTNEED) drops",
            );
            // The first third is read by someone else and stays cached.
            let third = data.len() / 3;
            cache_prefix(&img, third);
            let page = data.len() / before.len();
            let cached = resident_pages(&img);
            assert!(cached[..third / page].iter().all(|&r| r));
            assert!(
                !cached[third.div_ceil(page)..].iter().any(|&r| r),
                "read-ahead went on"
            );
            let store = dir.path().join(format!("store-{transport}-{tries}"));
            let o = run_via(&sshd, &store, transport, &["dump", &target, "--as", "disk"]);
            assert!(o.status.success(), "{}", text(&o));
            let after = resident_pages(&img);
            if cache_drops() != drops {
                continue;
            }
            assert!(
                restore(&store, "disk") == data,
                "{transport}: restored bytes differ"
            );
            let dropped = (0..after.len()).filter(|&i| cached[i] && !after[i]).count();
            let added = (0..after.len()).filter(|&i| !cached[i] && after[i]).count();
            break (dropped as f64 / (third / page) as f64, added);
        };
        assert_eq!(
            added, 0,
            "{transport}: the dump read the source into the page cache"
        );
        // Reading the source evicting it would drop every page; a few may go to
        // the machine's own reclaim meanwhile (this VM runs DAMON pageout).
        assert!(
            dropped < 0.25,
            "{transport}: {:.0}% of the source's cached pages were evicted during the dump",
            dropped * 100.0
        );
    }
}
