//! Dump targets as written on the command line: `[user@]host:/path`.

use anyhow::Result;

/// `[user@]host:/path` as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: Option<String>,
    pub host: String,
    pub path: String,
}

impl Target {
    /// `user@host` or `host`, as ssh takes it.
    pub fn dest(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// Parses `[user@]host:/path`; a bare device name (`host:sda`) means `/dev/sda`.
    /// An IPv6 address goes in brackets: `[::1]:/dev/sda`.
    pub fn parse(s: &str) -> Result<Target> {
        let bad = |why: &str| {
            anyhow::anyhow!(
                "invalid target {s:?}: {why} (expected [user@]host:/path or host:device)"
            )
        };
        // The separator is the first ':' outside brackets, so IPv6 addresses stay whole.
        let mut depth = 0i32;
        let colon = s.char_indices().find_map(|(i, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ':' if depth == 0 => return Some(i),
                _ => {}
            }
            None
        });
        let colon = colon.ok_or_else(|| bad("no ':' between host and path"))?;
        let (left, path) = (&s[..colon], &s[colon + 1..]);
        let (user, host) = match left.rsplit_once('@') {
            Some(("", h)) => return Err(bad(&format!("empty user before '@{h}'"))),
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, left),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("empty or malformed host"));
        }
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/dev/{path}")
        };
        Ok(Target {
            user,
            host: host.to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: Option<&str>, host: &str, path: &str) -> Target {
        Target {
            user: user.map(Into::into),
            host: host.into(),
            path: path.into(),
        }
    }

    #[test]
    fn target_forms() {
        assert_eq!(
            Target::parse("server01:/dev/sda").unwrap(),
            t(None, "server01", "/dev/sda")
        );
        assert_eq!(
            Target::parse("server01:sda").unwrap(),
            t(None, "server01", "/dev/sda")
        );
        assert_eq!(
            Target::parse("bob@h:nvme0n1").unwrap(),
            t(Some("bob"), "h", "/dev/nvme0n1")
        );
        assert_eq!(
            Target::parse("a@b@h:/x").unwrap(),
            t(Some("a@b"), "h", "/x")
        );
        assert_eq!(
            Target::parse("[::1]:/dev/vda").unwrap(),
            t(None, "::1", "/dev/vda")
        );
        assert_eq!(
            Target::parse("u@[fe80::1]:vdb").unwrap(),
            t(Some("u"), "fe80::1", "/dev/vdb")
        );
        assert_eq!(
            Target::parse("h:/dev/disk/by-id/a:b").unwrap(),
            t(None, "h", "/dev/disk/by-id/a:b")
        );
        for bad in [
            "server01",
            "server01:",
            ":/dev/sda",
            "@h:/x",
            "[]:/x",
            "a b:/x",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid target"), "{bad}: {e}");
        }
    }
}
