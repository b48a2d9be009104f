//! `diskdump::ssh` against a real, throwaway sshd (see tests/common/sshd.rs).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sshd::{keygen, Sshd, SshdOptions};
use diskdump::ssh::{Remote, SshOptions};
use sha2::{Digest, Sha256};

fn opts(s: &Sshd) -> SshOptions {
    SshOptions {
        ssh_config: Some(s.ssh_config()),
        home: Some(s.home()),
        ..Default::default()
    }
}

fn connect(s: &Sshd) -> Remote {
    Remote::connect(s.host_alias(), &opts(s))
        .unwrap_or_else(|e| panic!("{e:#}\nsshd log:\n{}", s.log()))
}

fn connect_err(s: &Sshd, o: &SshOptions) -> String {
    match Remote::connect(s.host_alias(), o) {
        Ok(_) => panic!("connect should have failed"),
        Err(e) => {
            eprintln!("expected error: {e:#}"); // visible with --nocapture
            format!("{e:#}")
        }
    }
}

/// Runs `f` on a thread and fails (instead of hanging) if it takes longer than `limit`.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no result within {limit:?}: deadlock?"))
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn runs_commands_and_reports_status() {
    let s = Sshd::start();
    let r = connect(&s);
    assert_eq!(r.label(), format!("root@127.0.0.1:{}", s.port()));
    let (status, out, err) = r.run("echo hello; echo oops >&2; exit 3").unwrap();
    assert_eq!(
        (status, out.as_slice(), err.as_slice()),
        (3, &b"hello\n"[..], &b"oops\n"[..])
    );
    // More stderr than the channel window, before any stdout: must not deadlock.
    let (status, out, err) = r.run("head -c 3000000 /dev/zero >&2; echo done").unwrap();
    assert_eq!(
        (status, out.as_slice(), err.len()),
        (0, &b"done\n"[..], 64 * 1024)
    );
    assert_eq!(r.run("kill -9 $$").unwrap().0, -1);
    let e = r.run_ok("false").unwrap_err().to_string();
    assert!(e.contains("status 1") && e.contains("127.0.0.1"), "{e}");
    // user@host overrides the config's User: no such user on the server.
    let e = format!(
        "{:#}",
        Remote::connect(&format!("nosuchuser@{}", s.host_alias()), &opts(&s))
            .err()
            .unwrap()
    );
    eprintln!("expected error: {e}");
    assert!(
        e.contains(&format!("nosuchuser@127.0.0.1:{}", s.port())) && e.contains("authentication"),
        "{e}"
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn upload_and_ensure_agent() {
    let s = Sshd::start();
    let r = connect(&s);
    let dest = s.remote_home().join("up.bin");
    let data = common::images::random_bytes(3 << 20, 7);
    r.upload(dest.to_str().unwrap(), &data, 0o640).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    assert_eq!(
        r.run_ok(&format!("stat -c %a {}", dest.display())).unwrap(),
        b"640\n"
    );
    let leftovers: Vec<_> = fs::read_dir(s.remote_home())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["up.bin"], "no temp files left behind");

    let agent = common::images::random_bytes(1 << 20, 9);
    let hash = hex(&Sha256::digest(&agent));
    let path = r.ensure_agent(&agent, &hash).unwrap();
    let want = s
        .remote_home()
        .join(format!(".cache/diskdump/agent-{}", &hash[..16]));
    assert_eq!(path, want.to_str().unwrap());
    assert_eq!(fs::read(&want).unwrap(), agent);
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions())
    };
    assert_eq!(mode(want.parent().unwrap()) & 0o777, 0o700);
    assert_eq!(mode(&want) & 0o777, 0o700);
    let first = inode(&want);
    // Same content: no upload (an upload renames a new file into place: a new inode).
    assert_eq!(r.ensure_agent(&agent, &hash).unwrap(), path);
    assert_eq!(inode(&want), first, "second ensure_agent uploaded again");
    // Corrupted cache: uploaded again.
    fs::write(&want, b"garbage").unwrap();
    r.ensure_agent(&agent, &hash).unwrap();
    assert_eq!(fs::read(&want).unwrap(), agent);
    assert!(r.ensure_agent(&agent, "nothex").is_err());
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn ensure_agent_refuses_other_architectures() {
    // A fake `uname` first in the remote PATH.
    let bin = tempfile::tempdir().unwrap();
    let uname = bin.path().join("uname");
    fs::write(&uname, "#!/bin/sh\necho Linux aarch64\n").unwrap();
    fs::set_permissions(&uname, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("PATH={}:/usr/bin:/bin", bin.path().display());
    let s = Sshd::start_with(SshdOptions {
        set_env: vec![path],
        ..Default::default()
    });
    let e = format!(
        "{:#}",
        connect(&s)
            .ensure_agent(b"agent", &"ab".repeat(32))
            .unwrap_err()
    );
    assert!(
        e.contains("\"Linux aarch64\"") && e.contains("x86_64") && e.contains("127.0.0.1"),
        "{e}"
    );
    assert!(
        !s.remote_home().join(".cache").exists(),
        "nothing is created on a refused remote"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Echoes `size` bytes through remote `cat` while reading them back at the same time.
fn echo_through_cat(s: &Sshd, size: usize) {
    let r = connect(s);
    let (mut out, mut inp, handle) = r.exec_stream("cat").unwrap().split();
    let data = std::sync::Arc::new(common::images::random_bytes(size, 42));
    let (tx_data, rx_data) = (data.clone(), data.clone());
    let writer = std::thread::spawn(move || {
        for chunk in tx_data.chunks(1 << 20) {
            inp.write_all(chunk).unwrap();
        }
        // dropping `inp` sends EOF
    });
    let got = within(Duration::from_secs(300), move || {
        let mut got = Vec::with_capacity(rx_data.len());
        out.read_to_end(&mut got).unwrap();
        got
    });
    writer.join().unwrap();
    assert!(
        got == *data,
        "echoed bytes differ (got {} of {} bytes)",
        got.len(),
        size
    );
    let exit = handle.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn exec_stream_echoes_64_mib_both_ways() {
    let s = Sshd::start();
    echo_through_cat(&s, 64 << 20);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn exec_stream_exit_status_stderr_and_kill() {
    let s = Sshd::start();
    let (mut out, inp, handle) = connect(&s)
        .exec_stream("echo out; echo err >&2; exit 5")
        .unwrap()
        .split();
    drop(inp);
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    assert_eq!(text, "out\n");
    let exit = handle.wait().unwrap();
    assert_eq!((exit.status, exit.stderr.as_str()), (5, "err\n"));

    // A command that never ends by itself; kill() must make it see EOF and exit.
    let marker = s.remote_home().join("killed");
    let cmd = format!("cat; touch {}", marker.display());
    let (mut out, _inp, handle) = connect(&s).exec_stream(&cmd).unwrap().split();
    handle.kill();
    assert!(within(Duration::from_secs(10), move || handle.wait()).is_err());
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "remote cat did not exit after kill()"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The remote reads stdin after closing its stdout (`cat > file`): all input must arrive.
    let dest = s.remote_home().join("sink");
    let cmd = format!("exec >/dev/null; cat > {}", dest.display());
    let (_out, mut inp, handle) = connect(&s).exec_stream(&cmd).unwrap().split();
    let data = common::images::random_bytes(8 << 20, 3);
    inp.write_all(&data).unwrap();
    drop(inp);
    assert!(handle.wait().unwrap().success());
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn unknown_host_key_is_refused_with_fingerprint_and_accept_new_records_it() {
    let s = Sshd::start();
    fs::write(s.known_hosts(), "").unwrap();
    let e = connect_err(&s, &opts(&s));
    let fp = s.fingerprint("ed25519");
    assert!(e.contains("unknown host key") && e.contains(&fp), "{e}");
    assert!(
        e.contains(&format!("[127.0.0.1]:{}", s.port())) && e.contains("ssh-keyscan"),
        "{e}"
    );

    let o = SshOptions {
        accept_new_host_key: true,
        ..opts(&s)
    };
    Remote::connect(s.host_alias(), &o).unwrap();
    assert_eq!(
        fs::read_to_string(s.known_hosts()).unwrap(),
        s.known_hosts_line("ed25519")
    );
    connect(&s); // now known, without accept-new
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn accept_new_from_ssh_config() {
    let s = Sshd::start();
    fs::remove_file(s.known_hosts()).unwrap();
    let mut cfg = fs::read_to_string(s.ssh_config()).unwrap();
    cfg.push_str("    StrictHostKeyChecking accept-new\n");
    fs::write(s.ssh_config(), cfg).unwrap();
    connect(&s);
    assert_eq!(
        fs::read_to_string(s.known_hosts()).unwrap(),
        s.known_hosts_line("ed25519")
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn changed_host_key_is_refused_even_with_accept_new() {
    let s = Sshd::start();
    let other = s.dir().join("other_ed25519");
    keygen(&other, "ed25519", "");
    let public = fs::read_to_string(other.with_extension("pub")).unwrap();
    let line = format!("[127.0.0.1]:{} {}", s.port(), public);
    fs::write(s.known_hosts(), &line).unwrap();
    for accept_new in [false, true] {
        let e = connect_err(
            &s,
            &SshOptions {
                accept_new_host_key: accept_new,
                ..opts(&s)
            },
        );
        assert!(
            e.contains("HOST KEY CHANGED") && e.contains(&s.fingerprint("ed25519")),
            "{e}"
        );
    }
    assert_eq!(
        fs::read_to_string(s.known_hosts()).unwrap(),
        line,
        "known_hosts must not change"
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn known_rsa_key_is_used_when_server_also_has_ed25519() {
    let s = Sshd::start_with(SshdOptions {
        rsa_host_key: true,
        ..Default::default()
    });
    // Without steering, the server would show its ed25519 key and libssh2 would call that a
    // mismatch with the recorded RSA key.
    fs::write(s.known_hosts(), s.known_hosts_line("rsa")).unwrap();
    connect(&s).run_ok("true").unwrap();
    // The same with a hashed name: the key types for the host are found through libssh2.
    assert!(Command::new("ssh-keygen")
        .arg("-Hf")
        .arg(s.known_hosts())
        .output()
        .unwrap()
        .status
        .success());
    assert!(fs::read_to_string(s.known_hosts())
        .unwrap()
        .starts_with("|1|"));
    connect(&s).run_ok("true").unwrap();
    // A different RSA key on record is still a changed key.
    let other = s.dir().join("other_rsa");
    keygen(&other, "rsa", "");
    let public = fs::read_to_string(other.with_extension("pub")).unwrap();
    fs::write(
        s.known_hosts(),
        format!("[127.0.0.1]:{} {}", s.port(), public),
    )
    .unwrap();
    let e = connect_err(&s, &opts(&s));
    assert!(
        e.contains("HOST KEY CHANGED") && e.contains(&s.fingerprint("rsa")),
        "{e}"
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn hashed_known_hosts_entry_works() {
    let s = Sshd::start();
    let other = s.dir().join("unrelated_ed25519");
    keygen(&other, "ed25519", "");
    let unrelated = fs::read_to_string(other.with_extension("pub")).unwrap();
    let text = format!("example.org {unrelated}{}", s.known_hosts_line("ed25519"));
    fs::write(s.known_hosts(), text).unwrap();
    let status = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(s.known_hosts())
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    let hashed = fs::read_to_string(s.known_hosts()).unwrap();
    assert!(
        hashed.starts_with("|1|") && !hashed.contains("127.0.0.1"),
        "{hashed}"
    );
    connect(&s).run_ok("true").unwrap();
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn passphrase_protected_key_gives_a_clear_error() {
    let s = Sshd::start();
    let key = s.dir().join("locked_ed25519");
    keygen(&key, "ed25519", "secret passphrase");
    let cfg = fs::read_to_string(s.ssh_config()).unwrap();
    let cfg = cfg.replace(
        &s.client_key().display().to_string(),
        &key.display().to_string(),
    );
    fs::write(s.ssh_config(), cfg).unwrap();
    let o = opts(&s);
    let e = connect_err(&s, &o);
    assert!(
        e.contains(&format!(
            "identity file {} is passphrase-protected",
            key.display()
        )),
        "{e}"
    );
    assert!(
        e.contains("ssh-agent") && e.contains(&format!("root@127.0.0.1:{}", s.port())),
        "{e}"
    );
}

#[test]
fn silent_server_times_out_clearly() {
    // Accepts TCP (the kernel's backlog does) but never speaks SSH.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("config");
    fs::write(
        &cfg,
        format!("Host mute\n  HostName 127.0.0.1\n  Port {port}\n  User someone\n"),
    )
    .unwrap();
    let o = SshOptions {
        ssh_config: Some(cfg),
        home: Some(home.path().into()),
        connect_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let start = Instant::now();
    let e = format!("{:#}", Remote::connect("mute", &o).err().unwrap());
    eprintln!("expected error: {e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        e.contains(&format!("someone@127.0.0.1:{port}"))
            && e.contains("no SSH handshake within 1s"),
        "{e}"
    );
    drop(listener);
}

#[test]
fn closed_port_gives_a_clear_error() {
    // No sshd needed: a port that was free a moment ago.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("config");
    fs::write(
        &cfg,
        format!("Host closed\n  HostName 127.0.0.1\n  Port {port}\n  User someone\n"),
    )
    .unwrap();
    let o = SshOptions {
        ssh_config: Some(cfg),
        home: Some(home.path().into()),
        ..Default::default()
    };
    let e = format!("{:#}", Remote::connect("closed", &o).err().unwrap());
    eprintln!("expected error: {e}");
    assert!(
        e.contains(&format!("someone@127.0.0.1:{port}")) && e.contains("refused"),
        "{e}"
    );
}
