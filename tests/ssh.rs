//! Both transports (the system's OpenSSH client and libssh2) against real, throwaway sshds
//! (see tests/common/sshd.rs): streams, exit status, kill, host keys, and the ssh_config and
//! known_hosts features OpenSSH honours and libssh2 refuses (never silently differs).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::sshd::{keygen, Sshd, SshdOptions};
use diskdump::ssh::{Libssh2, SshOptions};
use diskdump::transport::openssh::{find_ssh, OpenSsh, OpenSshOptions};
use diskdump::transport::{self, Transport};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    OpenSsh,
    Libssh2,
}

const BOTH: [Via; 2] = [Via::OpenSsh, Via::Libssh2];

fn libssh2_opts(s: &Sshd) -> SshOptions {
    SshOptions {
        ssh_config: Some(s.ssh_config()),
        home: Some(s.home()),
        ..Default::default()
    }
}

/// A transport to `dest` with `config` (and accept-new if asked).
fn open_with(
    via: Via,
    dest: &str,
    config: &Path,
    home: &Path,
    accept_new: bool,
) -> anyhow::Result<Box<dyn Transport>> {
    match via {
        Via::OpenSsh => {
            let o = OpenSshOptions {
                config: Some(config.to_path_buf()),
                accept_new_host_key: accept_new,
                ..Default::default()
            };
            let ssh = find_ssh().expect("an ssh client on PATH");
            Ok(Box::new(OpenSsh::new(ssh, dest, &o)))
        }
        Via::Libssh2 => {
            let o = SshOptions {
                ssh_config: Some(config.to_path_buf()),
                home: Some(home.to_path_buf()),
                accept_new_host_key: accept_new,
                ..Default::default()
            };
            Ok(Box::new(Libssh2::connect(dest, &o)?))
        }
    }
}

fn open(via: Via, s: &Sshd) -> Box<dyn Transport> {
    open_with(via, s.host_alias(), &s.ssh_config(), &s.home(), false)
        .unwrap_or_else(|e| panic!("{via:?}: {e:#}\nsshd log:\n{}", s.log()))
}

/// Runs `cmd`; Ok(stdout) when it exits 0, else Err(one line: status and stderr).
fn run_on(t: &dyn Transport, cmd: &str) -> Result<Vec<u8>, String> {
    let out = transport::run(t, cmd, b"", 1 << 20, Duration::from_secs(30))
        .map_err(|e| format!("{e:#}"))?;
    if out.exit.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "status {}: {}",
            out.exit.status,
            out.exit.stderr.replace('\n', " | ")
        ))
    }
}

/// Connects and runs `true`: the error a user would see, whichever step fails.
fn try_true(
    via: Via,
    dest: &str,
    config: &Path,
    home: &Path,
    accept_new: bool,
) -> Result<(), String> {
    let t = open_with(via, dest, config, home, accept_new).map_err(|e| format!("{e:#}"))?;
    run_on(&*t, "true").map(drop)
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
    for via in BOTH {
        let t = open(via, &s);
        assert_eq!(t.label(), format!("root@127.0.0.1:{}", s.port()), "{via:?}");
        let out = transport::run(
            &*t,
            "echo hello; echo oops >&2; exit 3",
            b"",
            1000,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            (
                out.exit.status,
                out.stdout.as_slice(),
                out.exit.stderr.as_str()
            ),
            (3, &b"hello\n"[..], "oops\n"),
            "{via:?}"
        );
        // More stderr than the channel window, before any stdout: no deadlock, tail kept.
        let out = transport::run(
            &*t,
            "head -c 3000000 /dev/zero >&2; echo done",
            b"",
            1000,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            (
                out.exit.status,
                out.stdout.as_slice(),
                out.exit.stderr.len()
            ),
            (0, &b"done\n"[..], transport::STDERR_TAIL),
            "{via:?}"
        );
        // stdin reaches the command.
        let out = transport::run(&*t, "wc -c", &[7u8; 100_000], 1000, Duration::ZERO).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "100000",
            "{via:?}"
        );
        // Killed by a signal: libssh2 says so; OpenSSH's client exits 255.
        let out = transport::run(&*t, "kill -9 $$", b"", 1000, Duration::ZERO).unwrap();
        assert!(!out.exit.success(), "{via:?}: {:?}", out.exit);
        // user@host overrides the config's User: no such user on the server.
        let e = try_true(
            via,
            &format!("nosuchuser@{}", s.host_alias()),
            &s.ssh_config(),
            &s.home(),
            false,
        )
        .unwrap_err();
        eprintln!("{via:?} expected error: {e}");
        assert!(
            e.to_lowercase().contains("authentication") || e.contains("Permission denied"),
            "{via:?}: {e}"
        );
    }
}

/// Echoes `size` bytes through remote `cat` while reading them back at the same time.
fn echo_through_cat(t: &dyn Transport, size: usize) {
    let (mut out, mut inp, handle) = t.exec("cat").unwrap().split();
    let data = std::sync::Arc::new(common::images::random_bytes(size, 42));
    let (tx_data, rx_data) = (data.clone(), data.clone());
    let writer = std::thread::spawn(move || {
        for chunk in tx_data.chunks(1 << 20) {
            inp.write_all(chunk).unwrap();
        }
    });
    let got = within(Duration::from_secs(300), move || {
        let mut got = Vec::with_capacity(rx_data.len());
        out.read_to_end(&mut got).unwrap();
        got
    });
    writer.join().unwrap();
    assert!(
        got == *data,
        "echoed bytes differ (got {} of {size})",
        got.len()
    );
    let exit = handle.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn streams_64_mib_both_ways() {
    let s = Sshd::start();
    for via in BOTH {
        echo_through_cat(&*open(via, &s), 64 << 20);
    }
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn exit_status_stderr_and_kill() {
    let s = Sshd::start();
    for via in BOTH {
        let t = open(via, &s);
        let (mut out, inp, handle) = t.exec("echo out; echo err >&2; exit 5").unwrap().split();
        drop(inp);
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(text, "out\n");
        let exit = handle.wait().unwrap();
        assert_eq!((exit.status, exit.stderr.as_str()), (5, "err\n"), "{via:?}");

        // A command that never ends by itself; kill() must make it see EOF and exit.
        let marker = s.remote_home().join(format!("killed-{via:?}"));
        let cmd = format!("echo started; cat; touch {}", marker.display());
        let (mut out, _inp, handle) = t.exec(&cmd).unwrap().split();
        let mut started = [0u8; 8];
        out.read_exact(&mut started).unwrap();
        handle.kill();
        let exit = within(Duration::from_secs(10), move || handle.wait());
        assert!(exit.map_or(true, |x| !x.success()), "{via:?}");
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
        common::wait_until(10, "remote cat to exit after kill()", || marker.exists());

        // A remote that never exits: wait_for gives up and cuts it.
        let (_out, _inp, handle) = t.exec("exec sleep 60").unwrap().split();
        let t0 = Instant::now();
        assert_eq!(handle.wait_for(Duration::from_millis(500)).unwrap(), None);
        assert!(t0.elapsed() < Duration::from_secs(10), "{via:?}");

        // The remote reads stdin after closing its stdout: all input must arrive.
        let dest = s.remote_home().join(format!("sink-{via:?}"));
        let cmd = format!("exec >/dev/null; cat > {}", dest.display());
        let (_out, mut inp, handle) = t.exec(&cmd).unwrap().split();
        let data = common::images::random_bytes(8 << 20, 3);
        inp.write_all(&data).unwrap();
        drop(inp);
        assert!(handle.wait().unwrap().success());
        assert_eq!(fs::read(&dest).unwrap(), data, "{via:?}");
    }
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn unknown_host_key_is_refused_and_accept_new_records_it() {
    let s = Sshd::start();
    for via in BOTH {
        fs::write(s.known_hosts(), "").unwrap();
        let e = try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), false).unwrap_err();
        eprintln!("{via:?} expected error: {e}");
        match via {
            Via::Libssh2 => assert!(
                e.contains("unknown host key")
                    && e.contains(&s.fingerprint("ed25519"))
                    && e.contains("ssh-keyscan"),
                "{e}"
            ),
            Via::OpenSsh => assert!(e.contains("Host key verification failed"), "{e}"),
        }
        assert_eq!(fs::read_to_string(s.known_hosts()).unwrap(), "");
        try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), true).unwrap();
        let recorded = fs::read_to_string(s.known_hosts()).unwrap();
        assert!(
            recorded.contains(
                s.known_hosts_line("ed25519")
                    .split_whitespace()
                    .nth(2)
                    .unwrap()
            ),
            "{via:?}: {recorded}"
        );
        try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), false).unwrap();
    }
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn changed_host_key_is_refused_even_with_accept_new() {
    let s = Sshd::start();
    let other = s.dir().join("other_ed25519");
    keygen(&other, "ed25519", "");
    let public = fs::read_to_string(other.with_extension("pub")).unwrap();
    let line = format!("[127.0.0.1]:{} {}", s.port(), public);
    for via in BOTH {
        fs::write(s.known_hosts(), &line).unwrap();
        for accept_new in [false, true] {
            let e =
                try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), accept_new).unwrap_err();
            assert!(
                (e.contains("HOST KEY CHANGED") || e.contains("has changed"))
                    && e.contains(&s.fingerprint("ed25519")),
                "{via:?}: {e}"
            );
        }
        assert_eq!(
            fs::read_to_string(s.known_hosts()).unwrap(),
            line,
            "known_hosts must not change"
        );
    }
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn known_rsa_key_is_used_when_server_also_has_ed25519() {
    let s = Sshd::start_with(SshdOptions {
        rsa_host_key: true,
        ..Default::default()
    });
    for via in BOTH {
        fs::write(s.known_hosts(), s.known_hosts_line("rsa")).unwrap();
        try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), false).unwrap();
        // The same with a hashed name.
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
        try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), false).unwrap();
        // Only an RSA key on record and accept-new: the server's ed25519 key is not added.
        let other = s.dir().join("other_rsa");
        keygen(&other, "rsa", "");
        let public = fs::read_to_string(other.with_extension("pub")).unwrap();
        let line = format!("[127.0.0.1]:{} {}", s.port(), public);
        fs::write(s.known_hosts(), &line).unwrap();
        let e = try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), true).unwrap_err();
        assert!(e.contains(&s.fingerprint("rsa")), "{via:?}: {e}");
        assert_eq!(
            fs::read_to_string(s.known_hosts()).unwrap(),
            line,
            "{via:?}"
        );
    }
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn wildcard_known_hosts_lines() {
    let s = Sshd::start();
    let key = s.known_hosts_line("ed25519");
    let key = key.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    let other = s.dir().join("other_ed25519");
    keygen(&other, "ed25519", "");
    let wrong = fs::read_to_string(other.with_extension("pub")).unwrap();
    let wrong = wrong
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    for via in BOTH {
        // A wildcard line with the right key verifies the host.
        fs::write(s.known_hosts(), format!("[127.0.0.?]:* {key}\n")).unwrap();
        try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), false)
            .unwrap_or_else(|e| panic!("{via:?}: {e}"));
        // A wildcard line with another key is a key on record: accept-new adds nothing.
        let text = format!("[127.0.0.*]:*,!example.org {wrong}\n");
        fs::write(s.known_hosts(), &text).unwrap();
        let e = try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), true).unwrap_err();
        assert!(
            e.contains("CHANGED") || e.contains("has changed"),
            "{via:?}: {e}"
        );
        assert_eq!(
            fs::read_to_string(s.known_hosts()).unwrap(),
            text,
            "{via:?}"
        );
        // A negated pattern excludes the host: its key is unknown, and recorded with accept-new.
        let text = format!("*,![127.0.0.1]:{} {wrong}\n", s.port());
        fs::write(s.known_hosts(), &text).unwrap();
        try_true(via, s.host_alias(), &s.ssh_config(), &s.home(), true)
            .unwrap_or_else(|e| panic!("{via:?}: {e}"));
        assert!(
            fs::read_to_string(s.known_hosts()).unwrap().len() > text.len(),
            "{via:?}"
        );
    }
}

/// The config's known_hosts: a key that is not the server's, for `host_field`.
fn wrong_key_line(s: &Sshd, host_field: &str) -> String {
    let other = s.dir().join("wrong_ed25519");
    if !other.exists() {
        keygen(&other, "ed25519", "");
    }
    let public = fs::read_to_string(other.with_extension("pub")).unwrap();
    let key = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{host_field} {key}\n")
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn a_match_block_for_other_hosts_does_not_apply() {
    let s = Sshd::start();
    // The host's key has changed; a Match block for *other* hosts turns checking off.
    fs::write(
        s.known_hosts(),
        wrong_key_line(&s, &format!("[127.0.0.1]:{}", s.port())),
    )
    .unwrap();
    let cfg = fs::read_to_string(s.ssh_config()).unwrap();
    let cfg = format!(
        "{cfg}Match host lab-*\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n"
    );
    fs::write(s.ssh_config(), cfg).unwrap();
    let e = try_true(
        Via::OpenSsh,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        false,
    )
    .unwrap_err();
    assert!(
        e.contains("has changed") || e.contains("verification failed"),
        "{e}"
    );
    let e = try_true(
        Via::Libssh2,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        false,
    )
    .unwrap_err();
    let line = cfg_line(&s.ssh_config(), "Match");
    assert!(
        e.contains(&format!(
            "{}:{line}: the libssh2 transport does not support `Match`",
            s.ssh_config().display()
        )) && e.contains("--transport openssh"),
        "{e}"
    );
    // With the right key OpenSSH connects: the Match block is simply not for this host.
    fs::write(s.known_hosts(), s.known_hosts_line("ed25519")).unwrap();
    try_true(
        Via::OpenSsh,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        false,
    )
    .unwrap();
}

/// The 1-based line of `file` that starts with `keyword`.
fn cfg_line(file: &Path, keyword: &str) -> usize {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.trim_start().starts_with(keyword))
        .unwrap()
        + 1
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn an_included_file_applies() {
    let s = Sshd::start();
    let included = s.home().join(".ssh/testhost.conf");
    fs::rename(s.ssh_config(), &included).unwrap();
    fs::write(s.ssh_config(), format!("Include {}\n", included.display())).unwrap();
    let t = open(Via::OpenSsh, &s);
    assert_eq!(run_on(&*t, "echo included").unwrap(), b"included\n");
    let e = try_true(
        Via::Libssh2,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        false,
    )
    .unwrap_err();
    assert!(
        e.contains(":1: the libssh2 transport does not support `Include`"),
        "{e}"
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn proxyjump_goes_through_the_jump_host() {
    let target = Sshd::start();
    let jump = Sshd::start_with(SshdOptions {
        extra_config: vec!["LogLevel DEBUG1".into()],
        ..Default::default()
    });
    // The jump host accepts the target's client key; one known_hosts has both hosts.
    fs::copy(
        target.client_key().with_extension("pub"),
        jump.dir().join("authorized_keys"),
    )
    .unwrap();
    let kh = format!(
        "{}{}",
        target.known_hosts_line("ed25519"),
        jump.known_hosts_line("ed25519")
    );
    fs::write(target.known_hosts(), kh).unwrap();
    let cfg = fs::read_to_string(target.ssh_config()).unwrap();
    let cfg = format!(
        "{cfg}    ProxyJump bastion\nHost bastion\n    HostName 127.0.0.1\n    Port {}\n    User root\n    IdentityFile {}\n    UserKnownHostsFile {}\n",
        jump.port(),
        target.client_key().display(),
        target.known_hosts().display()
    );
    fs::write(target.ssh_config(), cfg).unwrap();
    let t = open(Via::OpenSsh, &target);
    assert_eq!(run_on(&*t, "echo through").unwrap(), b"through\n");
    let log = jump.log();
    assert!(
        log.contains("direct-tcpip") && log.contains(&format!("port {}", target.port())),
        "the jump host forwarded the connection to the target:\n{log}"
    );
    let e = try_true(
        Via::Libssh2,
        target.host_alias(),
        &target.ssh_config(),
        &target.home(),
        false,
    )
    .unwrap_err();
    let line = cfg_line(&target.ssh_config(), "ProxyJump");
    assert!(
        e.contains(&format!(
            ":{line}: the libssh2 transport does not support `ProxyJump`"
        )),
        "{e}"
    );
}

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn host_certificate_with_cert_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("host_ca");
    keygen(&ca, "ed25519", "");
    let s = Sshd::start_with(SshdOptions {
        host_ca: Some(ca.clone()),
        ..Default::default()
    });
    // known_hosts trusts only the CA, not the host key itself.
    let ca_pub = fs::read_to_string(ca.with_extension("pub")).unwrap();
    let ca_key = ca_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    fs::write(
        s.known_hosts(),
        format!("@cert-authority [127.0.0.1]:{} {ca_key}\n", s.port()),
    )
    .unwrap();
    let t = open(Via::OpenSsh, &s);
    assert_eq!(run_on(&*t, "echo certified").unwrap(), b"certified\n");
    let e = try_true(
        Via::Libssh2,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        true,
    )
    .unwrap_err();
    assert!(
        e.contains(&format!(
            "{}:1: the libssh2 transport cannot verify host certificates",
            s.known_hosts().display()
        )) && e.contains("--transport openssh"),
        "{e}"
    );
    // A CA line for other hosts does not stop libssh2.
    fs::write(
        s.known_hosts(),
        format!(
            "@cert-authority *.example.org {ca_key}\n{}",
            s.known_hosts_line("ed25519")
        ),
    )
    .unwrap();
    try_true(
        Via::Libssh2,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        false,
    )
    .unwrap();
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
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        panic!("SSH_AUTH_SOCK is set; an agent could log in: unset it for this test");
    }
    let e = match Libssh2::connect(s.host_alias(), &libssh2_opts(&s)) {
        Ok(_) => panic!("connect should have failed"),
        Err(e) => format!("{e:#}"),
    };
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
    // OpenSSH in batch mode does not prompt: a clear refusal.
    let e = try_true(
        Via::OpenSsh,
        s.host_alias(),
        &s.ssh_config(),
        &s.home(),
        false,
    )
    .unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
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
        format!(
            "Host mute\n  HostName 127.0.0.1\n  Port {port}\n  User someone\n  ConnectTimeout 1\n"
        ),
    )
    .unwrap();
    let start = Instant::now();
    let e = try_true(Via::Libssh2, "mute", &cfg, home.path(), false).unwrap_err();
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
    let start = Instant::now();
    let e = try_true(Via::OpenSsh, "mute", &cfg, home.path(), false).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(e.contains("timed out"), "{e}");
    drop(listener);
}

#[test]
fn closed_port_gives_a_clear_error() {
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
    for via in BOTH {
        let e = try_true(via, "closed", &cfg, home.path(), false).unwrap_err();
        assert!(e.contains("refused"), "{via:?}: {e}");
    }
}

#[test]
fn aes_gcm_first_only_when_nobody_chose_the_ciphers() {
    let Some(ssh) = find_ssh() else {
        panic!("no ssh client on PATH");
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    fs::write(&cfg, "Host chosen\n  Ciphers aes256-ctr\n").unwrap();
    let o = OpenSshOptions {
        config: Some(cfg),
        ..Default::default()
    };
    let ciphers = |dest: &str, o: &OpenSshOptions| {
        OpenSsh::new(ssh.clone(), dest, o)
            .options()
            .into_iter()
            .filter(|a| a.starts_with("Ciphers="))
            .collect::<Vec<_>>()
    };
    assert!(
        ciphers("chosen", &o).is_empty(),
        "the config's choice stands"
    );
    let with_o = OpenSshOptions {
        options: vec!["Ciphers=aes128-ctr".into()],
        ..o.clone()
    };
    assert_eq!(
        ciphers("other", &with_o),
        ["Ciphers=aes128-ctr"],
        "-o stands"
    );
    let aes = fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .contains(" aes ");
    let other = ciphers("other", &o);
    if aes {
        assert_eq!(other.len(), 1, "{other:?}");
        assert!(
            other[0].starts_with("Ciphers=aes128-gcm@openssh.com,"),
            "{other:?}"
        );
        assert!(
            other[0].contains("chacha20-poly1305@openssh.com"),
            "the same set: {other:?}"
        );
    } else {
        assert!(other.is_empty());
    }
}
