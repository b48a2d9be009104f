//! Login through ssh-agent. Its own test binary: it sets SSH_AUTH_SOCK for the whole process.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sshd::{keygen, Sshd};
use diskdump::ssh::{Libssh2, SshOptions};
use diskdump::transport::openssh::{find_ssh, OpenSsh, OpenSshOptions};
use diskdump::transport::{self, Transport};

#[test]
#[cfg_attr(not(have_sshd), ignore = "needs root and sshd")]
fn logs_in_with_a_key_held_by_ssh_agent() {
    let s = Sshd::start();
    let sock = s.dir().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(s.client_key())
        .env("SSH_AUTH_SOCK", &sock)
        .status()
        .unwrap();
    assert!(added.success());
    // The config names only a passphrase-protected key: the agent must be what logs in.
    let locked = s.dir().join("locked_ed25519");
    keygen(&locked, "ed25519", "secret passphrase");
    let cfg = fs::read_to_string(s.ssh_config()).unwrap();
    fs::write(
        s.ssh_config(),
        cfg.replace(
            &s.client_key().display().to_string(),
            &locked.display().to_string(),
        ),
    )
    .unwrap();
    std::env::set_var("SSH_AUTH_SOCK", &sock);
    let o = SshOptions {
        ssh_config: Some(s.ssh_config()),
        home: Some(s.home()),
        ..Default::default()
    };
    let echo = |t: &dyn Transport| {
        transport::run(t, "echo via-agent", b"", 1000, Duration::from_secs(30))
            .map(|o| (o.exit.status, o.stdout))
    };
    let libssh2 = Libssh2::connect(s.host_alias(), &o).and_then(|t| echo(&t));
    let so = OpenSshOptions {
        config: Some(s.ssh_config()),
        ..Default::default()
    };
    let openssh = echo(&OpenSsh::new(find_ssh().unwrap(), s.host_alias(), &so));
    // IdentitiesOnly: the agent's key is not the configured identity file: neither transport
    // offers it, so neither logs in.
    let cfg = fs::read_to_string(s.ssh_config()).unwrap();
    fs::write(s.ssh_config(), format!("{cfg}    IdentitiesOnly yes\n")).unwrap();
    let only_libssh2 = Libssh2::connect(s.host_alias(), &o).and_then(|t| echo(&t));
    let only_openssh = echo(&OpenSsh::new(find_ssh().unwrap(), s.host_alias(), &so));
    let _ = agent.kill();
    let _ = agent.wait();
    for res in [libssh2, openssh] {
        assert_eq!(
            res.unwrap_or_else(|e| panic!("{e:#}")),
            (0, b"via-agent\n".to_vec())
        );
    }
    let e = format!("{:#}", only_libssh2.unwrap_err());
    assert!(e.contains("passphrase-protected"), "{e}");
    assert_eq!(only_openssh.unwrap().0, 255, "OpenSSH refuses too");
}
