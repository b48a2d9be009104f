//! The pure half of the SSH client: target syntax, `~/.ssh/config` resolution, `%` tokens,
//! known_hosts lines, private-key inspection, fingerprints. Nothing here talks to the network
//! or to `ssh2`, so all of it is unit-tested.
//!
//! Supported from ssh_config: `Host` (patterns, as `ssh2-config` matches them), `HostName`
//! (with `%h`), `Port`, `User`, `IdentityFile`, `UserKnownHostsFile` (several files; the first
//! one is where `accept-new` records keys), `StrictHostKeyChecking` (`yes`/`ask` refuse unknown
//! keys, `accept-new`/`no`/`off` record them; a changed key is refused whatever it says),
//! `ConnectTimeout`. Tokens `%h %d %u %r %p %n %%` and a leading `~` are expanded in
//! `IdentityFile` and `UserKnownHostsFile`. Keywords that would change where or how OpenSSH
//! connects or verifies (`Match`, `Include`, `ProxyJump`, `ProxyCommand`, `HostKeyAlias`,
//! `CertificateFile`, ...) are refused with file and line ([`refuse_unsupported`]). Only the
//! user's file (or `--ssh-config`) is read, not `/etc/ssh/ssh_config`.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use ssh2_config::{ParseRule, SshConfig};

/// How to reach hosts: what `dump` gets from its flags.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `--user`: overrides `User` from ssh_config; `user@host` overrides both.
    pub user: Option<String>,
    /// ssh_config file; default `$HOME/.ssh/config` (a missing default file is fine).
    pub ssh_config: Option<PathBuf>,
    /// known_hosts file; default `UserKnownHostsFile` from ssh_config, else `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Record an unknown host key instead of refusing it (like `StrictHostKeyChecking accept-new`).
    pub accept_new_host_key: bool,
    /// TCP connect and handshake timeout, unless ssh_config sets `ConnectTimeout`.
    pub connect_timeout: Duration,
    /// The local home directory; default `$HOME`. Tests set it instead of the process-wide variable.
    pub home: Option<PathBuf>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            user: None,
            ssh_config: None,
            known_hosts: None,
            accept_new_host_key: false,
            connect_timeout: Duration::from_secs(15),
            home: None,
        }
    }
}

/// Everything `connect` needs, after ssh_config and the flags are applied.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// (path, came from the config): default files that do not exist are skipped silently.
    pub identity_files: Vec<(PathBuf, bool)>,
    /// `IdentitiesOnly yes`: ssh-agent keys only when they are one of `identity_files`.
    pub identities_only: bool,
    pub known_hosts: Vec<PathBuf>,
    pub accept_new: bool,
    pub connect_timeout: Duration,
}

impl Resolved {
    /// How every error names the host.
    pub fn label(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// The name known_hosts files use: `host` on port 22, `[host]:port` elsewhere.
    pub fn known_host_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// Values for `%` tokens.
pub(crate) struct Tokens<'a> {
    pub alias: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub local_user: &'a str,
    pub remote_user: &'a str,
    pub home: &'a Path,
}

/// Expands a leading `~` or `~/` and the `%` tokens of ssh_config paths.
pub(crate) fn expand_tokens(s: &str, t: &Tokens) -> Result<String> {
    let home = t.home.display().to_string();
    let s = match s.strip_prefix('~') {
        Some("") => home.clone(),
        Some(rest) if rest.starts_with('/') => format!("{home}{rest}"),
        _ => s.to_string(),
    };
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(t.host),
            Some('n') => out.push_str(t.alias),
            Some('p') => out.push_str(&t.port.to_string()),
            Some('u') => out.push_str(t.local_user),
            Some('r') => out.push_str(t.remote_user),
            Some('d') => out.push_str(&home),
            Some(other) => bail!("unsupported token %{other} in {s:?}"),
            None => bail!("dangling '%' at the end of {s:?}"),
        }
    }
    Ok(out)
}

/// Applies `[user@]host`, the flags and ssh_config, in that order of precedence.
pub(crate) fn resolve(dest: &str, opts: &SshOptions) -> Result<Resolved> {
    let (dest_user, alias) = match dest.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, dest),
    };
    let alias = alias
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(alias);
    let home = match &opts.home {
        Some(h) => h.clone(),
        None => PathBuf::from(std::env::var_os("HOME").context("$HOME is not set")?),
    };
    let config = load_config(opts.ssh_config.as_deref(), &home, alias)?;
    let p = config.query(alias);
    let local_user = local_user();
    let host_name = p.host_name.clone().unwrap_or_else(|| alias.to_string());
    let host = host_name.replace("%h", alias);
    let port = p.port.unwrap_or(22);
    let user = dest_user
        .or_else(|| opts.user.clone())
        .or_else(|| p.user.clone())
        .unwrap_or_else(|| local_user.clone());
    let tokens = Tokens {
        alias,
        host: &host,
        port,
        local_user: &local_user,
        remote_user: &user,
        home: &home,
    };
    let expand = |s: &str| expand_tokens(s, &tokens).map(PathBuf::from);

    let mut identity_files = Vec::new();
    for f in p.identity_file.iter().flatten() {
        identity_files.push((expand(&f.to_string_lossy())?, true));
    }
    // As OpenSSH: the default files only when the config names none.
    if identity_files.is_empty() {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            identity_files.push((home.join(".ssh").join(name), false));
        }
    }
    let unsupported = |key: &str| p.unsupported_fields.get(key).cloned().unwrap_or_default();
    let identities_only = unsupported("identitiesonly")
        .first()
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let known_hosts = match &opts.known_hosts {
        Some(f) => vec![f.clone()],
        None => match unsupported("userknownhostsfile") {
            files if files.is_empty() => vec![home.join(".ssh/known_hosts")],
            files => files.iter().map(|f| expand(f)).collect::<Result<_>>()?,
        },
    };
    let strict = unsupported("stricthostkeychecking")
        .first()
        .map(|s| s.to_ascii_lowercase());
    let accept_new =
        opts.accept_new_host_key || matches!(strict.as_deref(), Some("accept-new" | "no" | "off"));
    let connect_timeout = p.connect_timeout.unwrap_or(opts.connect_timeout);
    Ok(Resolved {
        host,
        port,
        user,
        identity_files,
        identities_only,
        known_hosts,
        accept_new,
        connect_timeout,
    })
}

fn load_config(explicit: Option<&Path>, home: &Path, alias: &str) -> Result<SshConfig> {
    let path = explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home.join(".ssh/config"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok(SshConfig::default())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read ssh config {}", path.display()))
        }
    };
    refuse_unsupported(&text, &path, alias)?;
    // Unknown and unsupported keywords are kept, not fatal: we read two of the "unsupported"
    // ones (UserKnownHostsFile, StrictHostKeyChecking) ourselves.
    let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
    SshConfig::default()
        .home_dir(home)
        .parse(&mut BufReader::new(text.as_bytes()), rules)
        .with_context(|| format!("cannot parse ssh config {}", path.display()))
}

/// ssh_config keywords the libssh2 transport honours as OpenSSH does, or that cannot change
/// where it connects, how it verifies the host or what it runs (forwarding, keep-alives,
/// logging, multiplexing: OpenSSH-only comforts). Everything else, in a block that applies to
/// the host, is refused: libssh2 must never silently differ from `ssh HOST`.
const HONOURED: &[&str] = &[
    "host",
    "hostname",
    "identitiesonly",
    "port",
    "user",
    "identityfile",
    "userknownhostsfile",
    "stricthostkeychecking",
    "connecttimeout",
    "addkeystoagent",
    "batchmode",
    "challengeresponseauthentication",
    "checkhostip",
    "clearallforwardings",
    "compression",
    "connectionattempts",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dynamicforward",
    "escapechar",
    "exitonforwardfailure",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gssapiauthentication",
    "gssapidelegatecredentials",
    "hashknownhosts",
    "kbdinteractiveauthentication",
    "localforward",
    "loglevel",
    "numberofpasswordprompts",
    "passwordauthentication",
    "preferredauthentications",
    "pubkeyauthentication",
    "remoteforward",
    "requesttty",
    "sendenv",
    "serveralivecountmax",
    "serveraliveinterval",
    "setenv",
    "tcpkeepalive",
    "updatehostkeys",
    "usekeychain",
    "visualhostkey",
];

/// Refuses, before connecting, an ssh_config that uses for `alias` a keyword libssh2 does not
/// honour exactly (`Match` and `Include` anywhere: they cannot be evaluated here).
pub(crate) fn refuse_unsupported(text: &str, file: &Path, alias: &str) -> Result<()> {
    let mut applies = true; // lines before the first Host apply to every host
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
            Some((k, v)) => (
                k,
                v.trim_start_matches(|c: char| c.is_whitespace() || c == '='),
            ),
            None => (line, ""),
        };
        let key = key.to_ascii_lowercase();
        if key == "host" {
            applies = host_patterns_match(value, alias);
            continue;
        }
        if key == "match" || key == "include" || (applies && !HONOURED.contains(&key.as_str())) {
            let word = line.split_whitespace().next().unwrap_or(line);
            bail!(
                "{}:{}: the libssh2 transport does not support `{word}`; use --transport openssh \
                 (the system's ssh client) for this host",
                file.display(),
                n + 1
            );
        }
    }
    Ok(())
}

/// OpenSSH's pattern lists (`Host` lines, known_hosts names): comma- or space-separated
/// patterns with `*` and `?`, `!` negating; a negated match excludes the name whatever else
/// matches. Host names compare without case.
pub(crate) fn host_patterns_match(list: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for pat in list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let (neg, pat) = match pat.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pat),
        };
        if wildcard(pat.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if neg {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `*` (any run) and `?` (any one byte) glob match.
pub(crate) fn wildcard(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i, mut star, mut mark) = (0, 0, None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// The login name of this process: `$USER`, else the passwd entry of the real uid.
fn local_user() -> String {
    if let Some(u) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        return u;
    }
    let uid = unsafe { libc::getuid() };
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: every pointer refers to live, correctly sized storage; getpwuid_r is reentrant.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() {
        // SAFETY: on success pw_name points into `buf`, NUL-terminated.
        return unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned();
    }
    uid.to_string()
}

/// One known_hosts line, as far as we need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownLine {
    /// `revoked` or `cert-authority` for `@revoked` / `@cert-authority` lines.
    pub marker: Option<String>,
    /// The host names or patterns (`|1|...` when hashed).
    pub names: String,
    pub key_type: String,
    pub blob: Vec<u8>,
    /// The line without the marker, as libssh2 reads it.
    pub text: String,
}

pub(crate) fn parse_known_line(line: &str) -> Option<KnownLine> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (marker, rest) = match line.strip_prefix('@') {
        Some(m) => {
            let (m, rest) = m.split_once(char::is_whitespace)?;
            (Some(m.to_string()), rest.trim_start())
        }
        None => (None, line),
    };
    let mut fields = rest.split_whitespace();
    let (names, key_type, key) = (fields.next()?, fields.next()?, fields.next()?);
    let blob = base64_decode(key)?;
    Some(KnownLine {
        marker,
        names: names.to_string(),
        key_type: key_type.to_string(),
        blob,
        text: rest.to_string(),
    })
}

/// Host key algorithms to offer so that the server picks a key type known_hosts has for it.
/// libssh2 answers `Mismatch` (not "unknown type") when only another type is recorded, so the
/// negotiation must be steered before the handshake. Order: OpenSSH's preference.
pub(crate) fn hostkey_prefs<S: AsRef<str>>(known_types: &[S]) -> Vec<&'static str> {
    const ORDER: &[(&str, &[&str])] = &[
        ("ssh-ed25519", &["ssh-ed25519"]),
        ("ecdsa-sha2-nistp256", &["ecdsa-sha2-nistp256"]),
        ("ecdsa-sha2-nistp384", &["ecdsa-sha2-nistp384"]),
        ("ecdsa-sha2-nistp521", &["ecdsa-sha2-nistp521"]),
        ("ssh-rsa", &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]),
        ("ssh-dss", &["ssh-dss"]),
    ];
    let known = |t: &str| known_types.iter().any(|k| k.as_ref() == t);
    ORDER
        .iter()
        .filter(|(t, _)| known(t))
        .flat_map(|(_, algs)| algs.iter().copied())
        .collect()
}

/// The key type inside an SSH public key blob (its first string).
pub(crate) fn blob_key_type(blob: &[u8]) -> String {
    read_string(blob)
        .map(|(s, _)| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// `SHA256:<base64>` as `ssh-keygen -l` prints it.
pub(crate) fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", base64_encode(&Sha256::digest(blob), false))
}

/// The key blob of a public key line (`type base64 [comment]`, as in `id_ed25519.pub`).
pub(crate) fn public_key_blob(line: &str) -> Option<Vec<u8>> {
    base64_decode(line.split_whitespace().nth(1)?)
}

/// Whether a private key file needs a passphrase; `None` when the format is not recognized.
/// libssh2 reports an encrypted key as "Unable to extract public key from private key", so we
/// look for ourselves: OpenSSH format names its cipher ("none" when clear), PEM says
/// `Proc-Type: 4,ENCRYPTED`, PKCS#8 says `BEGIN ENCRYPTED PRIVATE KEY`.
pub(crate) fn key_file_encrypted(content: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(content).ok()?;
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let body: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let raw = base64_decode(&body)?;
        let (cipher, _) = read_string(raw.strip_prefix(b"openssh-key-v1\0")?)?;
        return Some(cipher != b"none");
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Some(true);
    }
    if text.contains("PRIVATE KEY-----") {
        return Some(text.contains("Proc-Type: 4,ENCRYPTED"));
    }
    None
}

/// Reads one SSH wire string (`u32` big-endian length, bytes).
fn read_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let s = b.get(4..4 + len)?;
    Some((s, &b[4 + len..]))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(data: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if pad {
            out.extend(std::iter::repeat_n('=', 3 - chunk.len()));
        }
    }
    out
}

/// Standard alphabet; padding optional, whitespace ignored; `None` on anything else.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let home = PathBuf::from("/home/me");
        let t = Tokens {
            alias: "web",
            host: "10.0.0.1",
            port: 2222,
            local_user: "me",
            remote_user: "root",
            home: &home,
        };
        assert_eq!(
            expand_tokens("~/.ssh/id_%h", &t).unwrap(),
            "/home/me/.ssh/id_10.0.0.1"
        );
        assert_eq!(expand_tokens("~", &t).unwrap(), "/home/me");
        assert_eq!(
            expand_tokens("%d/kh-%n-%p-%r-%u-%%", &t).unwrap(),
            "/home/me/kh-web-2222-root-me-%"
        );
        assert_eq!(expand_tokens("~other/x", &t).unwrap(), "~other/x");
        assert!(expand_tokens("%C", &t).is_err());
        assert!(expand_tokens("x%", &t).is_err());
    }

    #[test]
    fn resolve_precedence_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host web\n  HostName %h.example.org\n  Port 2200\n  User cfguser\n  IdentityFile ~/.ssh/web_%r\n  \
             UserKnownHostsFile %d/kh1 ~/kh2\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 3\n",
        )
        .unwrap();
        let opts = SshOptions {
            ssh_config: Some(cfg),
            home: Some(dir.path().into()),
            ..Default::default()
        };
        let r = resolve("web", &opts).unwrap();
        let home = dir.path().display().to_string();
        assert_eq!(
            (r.host.as_str(), r.port, r.user.as_str()),
            ("web.example.org", 2200, "cfguser")
        );
        assert_eq!(r.label(), "cfguser@web.example.org:2200");
        assert_eq!(r.known_host_name(), "[web.example.org]:2200");
        assert_eq!(
            r.identity_files[0],
            (PathBuf::from(format!("{home}/.ssh/web_cfguser")), true)
        );
        assert_eq!(
            r.identity_files.len(),
            1,
            "no defaults when the config names one"
        );
        assert!(!r.identities_only);
        assert_eq!(
            r.known_hosts,
            [
                PathBuf::from(format!("{home}/kh1")),
                PathBuf::from(format!("{home}/kh2"))
            ]
        );
        assert!(r.accept_new);
        assert_eq!(r.connect_timeout, Duration::from_secs(3));
        let r = resolve(
            "web",
            &SshOptions {
                user: Some("flag".into()),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(r.user, "flag");
        let r = resolve(
            "at@web",
            &SshOptions {
                user: Some("flag".into()),
                ..opts.clone()
            },
        )
        .unwrap();
        assert_eq!(r.user, "at");
        let r = resolve("other", &opts).unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.accept_new),
            ("other", 22, false)
        );
        assert_eq!(r.known_host_name(), "other");
        assert_eq!(r.known_hosts, [dir.path().join(".ssh/known_hosts")]);
        let missing = SshOptions {
            ssh_config: Some(dir.path().join("nope")),
            ..opts
        };
        assert!(
            resolve("web", &missing).is_err(),
            "an explicit config file must exist"
        );
    }

    #[test]
    fn known_host_type_selection() {
        assert_eq!(
            hostkey_prefs(&["ssh-rsa"]),
            ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        );
        assert_eq!(
            hostkey_prefs(&["ssh-rsa", "ssh-ed25519", "ssh-ed25519"]),
            ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        );
        assert_eq!(
            hostkey_prefs(&["ecdsa-sha2-nistp384"]),
            ["ecdsa-sha2-nistp384"]
        );
        assert!(hostkey_prefs::<&str>(&[]).is_empty());
        assert!(hostkey_prefs(&["sk-ssh-ed25519@openssh.com"]).is_empty());
    }

    // A real ed25519 public key (from ssh-keygen) and its fingerprint as `ssh-keygen -l` shows it.
    const PUB: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAS3eA1gw0tYn56O3XiQxrCzZCI6FbXy5hrFdun5v+Yq";

    #[test]
    fn known_lines() {
        let l =
            parse_known_line(&format!("  [127.0.0.1]:2222 ssh-ed25519 {PUB} comment\n")).unwrap();
        assert_eq!((l.marker, l.key_type.as_str()), (None, "ssh-ed25519"));
        assert_eq!(blob_key_type(&l.blob), "ssh-ed25519");
        assert_eq!(
            l.text,
            format!("[127.0.0.1]:2222 ssh-ed25519 {PUB} comment")
        );
        let l = parse_known_line(&format!("@revoked * ssh-ed25519 {PUB}")).unwrap();
        assert_eq!(l.marker.as_deref(), Some("revoked"));
        assert_eq!(l.text, format!("* ssh-ed25519 {PUB}"));
        assert!(parse_known_line("# comment").is_none());
        assert!(parse_known_line("").is_none());
        assert!(parse_known_line("host ssh-ed25519").is_none());
        assert!(parse_known_line("host ssh-ed25519 !!notbase64").is_none());
    }

    #[test]
    fn fingerprint_and_base64() {
        let blob = base64_decode(PUB).unwrap();
        assert_eq!(
            fingerprint(&blob),
            "SHA256:PKYWNuw4OWRqZDIV+zlPG5RE+nKKuHpHZem1kmz/9yQ"
        );
        assert_eq!(base64_encode(&blob, true), PUB);
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(base64_encode(raw.as_bytes(), true), enc);
            assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
            assert_eq!(
                base64_decode(enc.trim_end_matches('=')).unwrap(),
                raw.as_bytes()
            );
        }
    }

    #[test]
    fn encrypted_key_detection() {
        let openssh = |cipher: &str| {
            let mut raw = b"openssh-key-v1\0".to_vec();
            raw.extend((cipher.len() as u32).to_be_bytes());
            raw.extend(cipher.as_bytes());
            let b = base64_encode(&raw, true);
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{b}\n-----END OPENSSH PRIVATE KEY-----\n")
        };
        assert_eq!(key_file_encrypted(openssh("none").as_bytes()), Some(false));
        assert_eq!(
            key_file_encrypted(openssh("aes256-ctr").as_bytes()),
            Some(true)
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(key_file_encrypted(pem.as_bytes()), Some(true));
        assert_eq!(
            key_file_encrypted(
                b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
            ),
            Some(false)
        );
        assert_eq!(
            key_file_encrypted(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
            Some(true)
        );
        assert_eq!(key_file_encrypted(b"garbage"), None);
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(host_patterns_match("lab-* db", "lab-1"));
        assert!(host_patterns_match("lab-*,db", "DB"));
        assert!(!host_patterns_match("lab-*", "web"));
        assert!(!host_patterns_match("* !web", "web"));
        assert!(host_patterns_match("* !web", "db"));
        assert!(host_patterns_match("10.0.0.?", "10.0.0.7"));
        assert!(!host_patterns_match("10.0.0.?", "10.0.0.17"));
        assert!(wildcard(b"*a*b", b"xxaxxb") && !wildcard(b"*a*b", b"xxaxx"));
        assert!(!host_patterns_match("", "x"));
    }

    #[test]
    fn keywords_libssh2_cannot_honour_are_refused_with_file_and_line() {
        let f = Path::new("/cfg");
        let ok = "Host web\n  HostName w\n  Port 22\n  ServerAliveInterval 5\nHost lab-*\n  ProxyJump bastion\n";
        refuse_unsupported(ok, f, "web").unwrap();
        let e = refuse_unsupported(ok, f, "lab-3").unwrap_err().to_string();
        assert_eq!(
            e,
            "/cfg:6: the libssh2 transport does not support `ProxyJump`; use --transport openssh \
             (the system's ssh client) for this host"
        );
        // Match and Include cannot be evaluated: refused wherever they are.
        let e = refuse_unsupported(
            "Host a\n  User x\nMatch host lab-*\n  StrictHostKeyChecking no\n",
            f,
            "web",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/cfg:3:") && e.contains("`Match`"), "{e}");
        let e = refuse_unsupported("Include ~/.ssh/conf.d/*\n", f, "web")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/cfg:1:") && e.contains("`Include`"), "{e}");
        for kw in [
            "ProxyCommand nc %h %p",
            "HostKeyAlias x",
            "CertificateFile ~/.ssh/c",
            "Ciphers=aes128-ctr",
        ] {
            let text = format!("Host *\n  {kw}\n");
            let e = refuse_unsupported(&text, f, "web").unwrap_err().to_string();
            assert!(e.starts_with("/cfg:2:"), "{kw}: {e}");
        }
        // Before any Host line, everything applies.
        assert!(refuse_unsupported("ProxyJump b\nHost x\n", f, "web").is_err());
    }
}
