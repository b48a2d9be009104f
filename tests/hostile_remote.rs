//! A hostile or broken remote cannot hurt the storage host: a real sshd whose `ForceCommand`
//! script stands in for the agent (escape sequences, forged report rows, a huge image claim,
//! floods on stderr and in deploy replies, a process that never exits after Done). Each fails
//! its target clearly or is contained, with diskdump's memory measured by `/usr/bin/time`.

mod common;

use common::output_text as text;

use common::sshd::{Sshd, SshdOptions};
use diskdump_agent::proto::{Compression, Hello, Message, PROTOCOL_VERSION};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

/// An sshd that runs `script` instead of every command (the command is `$SSH_ORIGINAL_COMMAND`).
fn sshd_with(dir: &Path, script: &str) -> Sshd {
    let path = dir.join("force.sh");
    fs::write(
        &path,
        format!("#!/bin/sh\nC=\"$SSH_ORIGINAL_COMMAND\"\n{script}"),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    Sshd::start_with(SshdOptions {
        extra_config: vec![format!("ForceCommand {}", path.display())],
        ..Default::default()
    })
}

/// `diskdump dump` under `/usr/bin/time`; returns the output and its peak RSS in KiB.
fn dump(sshd: &Sshd, store: &Path, target: &str, extra: &[&str]) -> (Output, u64) {
    let rss = store.with_extension("rss");
    common::ensure_store(store, &["dump"]);
    let o = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&rss)
        .args(["-f", "%M"])
        .arg(common::bin())
        .arg("--store")
        .arg(store)
        .args(["dump", target, "--as", "hostile"])
        .args(extra)
        .envs(sshd.env())
        .output()
        .unwrap();
    // The last line: time says "Command exited with non-zero status 1" before it.
    let report = fs::read_to_string(&rss).unwrap();
    let kib = report.lines().last().unwrap().trim().parse().unwrap();
    (o, kib)
}

fn hello(size: u64) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        hostname: "evil".into(),
        source: "/dev/evil".into(),
        size,
        block_size: 131072,
        batch_size: 80,
        window: 8,
        compression: Compression::Lz4,
    })
}

fn frames(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

fn require_time() {
    common::need(
        Path::new("/usr/bin/time").exists(),
        "/usr/bin/time (apt-get install time)",
    );
}

/// No raw control characters reach the terminal, and the report has one row per target.
fn assert_contained(o: &Output, target: &str) {
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        assert!(
            !bytes.iter().any(|&b| b < 0x20 && b != b'\n'),
            "raw control characters on {name}: {}",
            text(o)
        );
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row: {}", text(o));
    assert!(
        lines[1].starts_with(target) && lines[1].contains("FAILED"),
        "{}",
        text(o)
    );
    assert!(!out.contains("\nOK"), "{}", text(o));
}

#[test]
#[cfg_attr(
    not(all(have_time, have_sshd)),
    ignore = "needs /usr/bin/time; root and sshd"
)]
fn escape_sequences_and_forged_rows_are_escaped() {
    require_time();
    let dir = tempfile::tempdir().unwrap();
    let evil =
        "agent broke \x1b[2J\x1b]0;pwned\x07\nOK  2026/01/01/fake.manifest 0 0 0 0B 0.1s\r\u{202e}";
    fs::write(
        dir.path().join("frames"),
        frames(&[hello(1 << 20), Message::Error(evil.into())]),
    )
    .unwrap();
    let script = format!(
        "printf 'stderr \\033[31mred\\033[0m\\nOK forged\\n' >&2\ncat {}\nexit 1\n",
        dir.path().join("frames").display()
    );
    let sshd = sshd_with(dir.path(), &script);
    let store = dir.path().join("store");
    let target = format!("{}:/dev/evil", sshd.host_alias());
    let (o, _) = dump(&sshd, &store, &target, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_contained(&o, &target);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("agent broke \\x1b[2J\\x1b]0;pwned\\x07\\nOK"),
        "{}",
        text(&o)
    );
    assert!(err.contains("\\u{202e}"), "{}", text(&o));

    // Garbage instead of a Hello, with escapes: shown escaped too.
    fs::write(dir.path().join("frames"), b"\x1b[2Jlogin banner\r\n\x07").unwrap();
    let (o, _) = dump(&sshd, &store, &target, &[]);
    assert_contained(&o, &target);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\\x1b[2Jlogin banner"),
        "{}",
        text(&o)
    );
    assert!(
        !store.join("2026").exists()
            && common::walk(&store)
                .iter()
                .all(|p| p.extension().is_none_or(|x| x != "manifest"))
    );
}

#[test]
#[cfg_attr(
    not(all(have_time, have_sshd)),
    ignore = "needs /usr/bin/time; root and sshd"
)]
fn a_huge_image_claim_is_refused_by_configuration() {
    require_time();
    let dir = tempfile::tempdir().unwrap();
    // 655 GB announced, then zero-block batches as fast as the pipe takes them.
    let mut stream = frames(&[hello(655_000_000_000)]);
    let batch = |seq| {
        Message::Batch(diskdump_agent::proto::Batch {
            seq,
            entries: vec![diskdump_agent::proto::Entry::Zero; 80],
        })
    };
    for seq in 0..2000 {
        batch(seq).encode(&mut stream);
    }
    fs::write(dir.path().join("frames"), stream).unwrap();
    let script = format!(
        "cat {}\nexec sleep 30\n",
        dir.path().join("frames").display()
    );
    let sshd = sshd_with(dir.path(), &script);
    let store = dir.path().join("store");
    let target = format!("{}:/dev/evil", sshd.host_alias());
    let t0 = Instant::now();
    let (o, kib) = dump(
        &sshd,
        &store,
        &target,
        &["--max-size", "100G", "--idle-timeout", "5"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("655000000000 bytes, more than --max-size (107374182400 bytes)"),
        "{}",
        text(&o)
    );
    assert!(
        t0.elapsed().as_secs() < 20,
        "refused at the Hello, not after a wait: {:?}",
        t0.elapsed()
    );
    assert!(kib < 200 * 1024, "peak RSS {kib} KiB");
}

#[test]
#[cfg_attr(
    not(all(have_time, have_sshd)),
    ignore = "needs /usr/bin/time; root and sshd"
)]
fn floods_on_stderr_and_in_deploy_replies_are_capped() {
    require_time();
    let dir = tempfile::tempdir().unwrap();
    // The start command floods stderr with 300 MB of one line; the deploy script's reply
    // is 600 MB. Both must stay out of the storage side's memory.
    let script = "case \"$C\" in\n  *--compress*) [ -e \"$HOME/flooded\" ] && exit 97; touch \"$HOME/flooded\"; \
                  head -c 300000000 /dev/zero | tr '\\0' x >&2; exit 1 ;;\n  \
                  *) head -c 600000000 /dev/zero ;;\nesac\n";
    let sshd = sshd_with(dir.path(), script);
    let store = dir.path().join("store");
    let target = format!("{}:/dev/evil", sshd.host_alias());
    let (o, kib) = dump(&sshd, &store, &target, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().all(|l| l.len() < 2000), "{}", text(&o));
    assert!(err.contains("exited with status 1: xxxx"), "{}", text(&o));
    assert!(kib < 200 * 1024, "peak RSS {kib} KiB with a 300 MB stderr");
    // Second run: the agent is "missing", and the upload reply floods.
    let (o, kib) = dump(&sshd, &store, &target, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exceeded 65536 bytes"),
        "{}",
        text(&o)
    );
    assert!(
        kib < 200 * 1024,
        "peak RSS {kib} KiB with a 600 MB deploy reply"
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn a_remote_that_never_exits_after_done_is_cut_off_and_releases_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // The real agent, then a process that keeps the session open.
    let script = "case \"$C\" in\n  *--compress*) sh -c \"$C\"; rc=$?; [ $rc = 0 ] || exit $rc; exec sleep 300 ;;\n  \
                  *) exec sh -c \"$C\" ;;\nesac\n";
    let sshd = sshd_with(dir.path(), script);
    let img = dir.path().join("disk.img");
    common::images::write(&img, &common::images::mixed(131072, 16, 0, 71));
    let store = dir.path().join("store");
    let target = format!("{}:{}", sshd.host_alias(), img.display());
    let t0 = Instant::now();
    common::ensure_store(&store, &["dump"]);
    let o = Command::new(common::bin())
        .arg("--store")
        .arg(&store)
        .args(["dump", &target, "--as", "lingers", "--idle-timeout", "2"])
        .envs(sshd.env())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not exit within 2 s after finishing"),
        "{}",
        text(&o)
    );
    assert!(t0.elapsed().as_secs() < 60, "{:?}", t0.elapsed());
    // The store lock went with it: gc runs at once, and the blocks that came verify.
    common::diskdump(&store, &["gc", "--no-wait"]).ok();
    common::diskdump(&store, &["verify"]).ok();
}
