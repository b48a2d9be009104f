//! The configuration file (TOML): the store, default dump options, and named
//! target groups with their per-target options and retention policy, so a
//! nightly job is `diskdump dump --group nightly && diskdump forget --group
//! nightly --prune`. Pure: parsing and lookups, no I/O beyond reading the
//! file; every error names the file and line.
//!
//! ```toml
//! store = "/backup"
//!
//! [defaults]                 # dump options for every group
//! user = "backup"
//! jobs = 4
//!
//! [groups.nightly]
//! compress = "zlib"          # overrides [defaults] for this group
//! retention = { keep-daily = 7, keep-weekly = 4, keep-monthly = 12 }
//! targets = [
//!   { target = "server01:/dev/sda", sudo = true, as = "server01-sda" },
//!   { target = "db1:/var/lib/images/vm.img" },
//! ]
//! ```

use crate::retention::Policy;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Dump options a config may set (for all groups, or one group).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DumpOptions {
    pub user: Option<String>,
    pub jobs: Option<usize>,
    pub compress: Option<String>,
    pub idle_timeout: Option<u64>,
    pub transport: Option<String>,
    pub ssh_config: Option<PathBuf>,
    pub accept_new_host_key: Option<bool>,
}

impl DumpOptions {
    /// `self`, with what it leaves unset taken from `base`.
    fn or(&self, base: &DumpOptions) -> DumpOptions {
        DumpOptions {
            user: self.user.clone().or_else(|| base.user.clone()),
            jobs: self.jobs.or(base.jobs),
            compress: self.compress.clone().or_else(|| base.compress.clone()),
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            transport: self.transport.clone().or_else(|| base.transport.clone()),
            ssh_config: self.ssh_config.clone().or_else(|| base.ssh_config.clone()),
            accept_new_host_key: self.accept_new_host_key.or(base.accept_new_host_key),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    pub target: Spanned<String>,
    #[serde(default)]
    pub sudo: bool,
    #[serde(rename = "as")]
    pub name: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GroupFile {
    #[serde(default)]
    targets: Vec<TargetEntry>,
    retention: Option<Spanned<Policy>>,
    user: Option<String>,
    jobs: Option<usize>,
    compress: Option<String>,
    idle_timeout: Option<u64>,
    transport: Option<String>,
    ssh_config: Option<PathBuf>,
    accept_new_host_key: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    store: Option<PathBuf>,
    #[serde(default)]
    defaults: DumpOptions,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<GroupFile>>,
}

/// A loaded config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    text: String,
    file: ConfigFile,
}

/// One group, resolved: its targets (checked) and options.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    /// (target, sudo, dump name) in file order.
    pub targets: Vec<(String, bool, String)>,
    pub options: DumpOptions,
    pub retention: Option<Policy>,
}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

impl Config {
    /// Parses `text` read from `path`; errors are `PATH line N: message`.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            anyhow!("{} line {line}: {}", path.display(), e.message().trim())
        })?;
        Ok(Config {
            path: path.to_path_buf(),
            text: text.to_string(),
            file,
        })
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// `--config FILE`, else `$XDG_CONFIG_HOME/diskdump/config.toml` (or
    /// `~/.config/...`), else `/etc/diskdump/config.toml`: the first that
    /// exists (an explicit one must). One file is read, never merged.
    pub fn find(explicit: Option<&Path>) -> Result<Option<Config>> {
        if let Some(p) = explicit {
            return Config::load(p).map(Some);
        }
        let user_dir = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let mut candidates: Vec<PathBuf> = user_dir
            .map(|d| d.join("diskdump/config.toml"))
            .into_iter()
            .collect();
        candidates.push(PathBuf::from("/etc/diskdump/config.toml"));
        for c in candidates {
            if c.is_file() {
                return Config::load(&c).map(Some);
            }
        }
        Ok(None)
    }

    pub fn store(&self) -> Option<&Path> {
        self.file.store.as_deref()
    }

    pub fn defaults(&self) -> &DumpOptions {
        &self.file.defaults
    }

    fn at(&self, span: std::ops::Range<usize>) -> String {
        format!(
            "{} line {}",
            self.path.display(),
            line_of(&self.text, span.start)
        )
    }

    /// The group `name`, its targets parsed and named as `dump` would.
    pub fn group(&self, name: &str) -> Result<Group> {
        let Some(g) = self.file.groups.get(name) else {
            let known: Vec<&str> = self.file.groups.keys().map(String::as_str).collect();
            bail!(
                "no group {name:?} in {} (groups: {})",
                self.path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        };
        let span = g.span();
        let g = g.get_ref();
        if g.targets.is_empty() {
            bail!("{}: group {name:?} has no targets", self.at(span));
        }
        let mut targets = Vec::new();
        for t in &g.targets {
            let parsed = crate::target::Target::parse(t.target.get_ref())
                .map_err(|e| anyhow!("{}: {e:#}", self.at(t.target.span())))?;
            let dump_name = match &t.name {
                Some(n) => {
                    crate::manifest::validate_name(n.get_ref())
                        .map_err(|e| anyhow!("{}: {e:#}", self.at(n.span())))?;
                    n.get_ref().clone()
                }
                None => crate::manifest::default_name(&parsed.host, &parsed.path)
                    .map_err(|e| anyhow!("{}: {e:#}", self.at(t.target.span())))?,
            };
            targets.push((t.target.get_ref().clone(), t.sudo, dump_name));
        }
        let own = DumpOptions {
            user: g.user.clone(),
            jobs: g.jobs,
            compress: g.compress.clone(),
            idle_timeout: g.idle_timeout,
            transport: g.transport.clone(),
            ssh_config: g.ssh_config.clone(),
            accept_new_host_key: g.accept_new_host_key,
        };
        if let Some(c) = &own.compress.clone().or(self.file.defaults.compress.clone()) {
            if !["lz4", "zlib", "none"].contains(&c.as_str()) {
                bail!("{}: compress {c:?} is not lz4, zlib or none", self.at(span));
            }
        }
        let retention = match &g.retention {
            Some(p) if p.get_ref().is_empty() => {
                bail!(
                    "{}: group {name:?} has an empty retention policy",
                    self.at(p.span())
                )
            }
            Some(p) => Some(p.get_ref().clone()),
            None => None,
        };
        Ok(Group {
            name: name.to_string(),
            targets,
            options: own.or(&self.file.defaults),
            retention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::Count;

    const GOOD: &str = r#"
store = "/backup"

[defaults]
user = "backup"
jobs = 4

[groups.nightly]
compress = "zlib"
retention = { keep-daily = 7, keep-weekly = 4 }
targets = [
  { target = "server01:/dev/sda", sudo = true, as = "server01-sda" },
  { target = "db1:/var/lib/images/vm.img" },
]

[groups.empty]
"#;

    #[test]
    fn groups_resolve_with_defaults_names_and_retention() {
        let c = Config::parse(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(c.store(), Some(Path::new("/backup")));
        let g = c.group("nightly").unwrap();
        assert_eq!(
            g.targets,
            [
                (
                    "server01:/dev/sda".to_string(),
                    true,
                    "server01-sda".to_string()
                ),
                (
                    "db1:/var/lib/images/vm.img".to_string(),
                    false,
                    "db1-vm.img".to_string()
                )
            ]
        );
        assert_eq!(g.options.user.as_deref(), Some("backup"));
        assert_eq!(g.options.jobs, Some(4));
        assert_eq!(g.options.compress.as_deref(), Some("zlib"));
        let r = g.retention.unwrap();
        assert_eq!(
            (r.keep_daily, r.keep_weekly),
            (Some(Count::N(7)), Some(Count::N(4)))
        );
        let e = c.group("nope").unwrap_err().to_string();
        assert!(
            e.contains("no group \"nope\"") && e.contains("empty, nightly"),
            "{e}"
        );
        let e = c.group("empty").unwrap_err().to_string();
        assert!(
            e.starts_with("c.toml line 16:") && e.contains("no targets"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            ("store = \"/b\"\nbogus = 1\n", "line 2", "unknown field"),
            (
                "[groups.a]\ntargets = [ { target = \"h:/x\", sudo = \"yes\" } ]\n",
                "line 2",
                "bool",
            ),
            (
                "[groups.a]\nretention = { keep-daily = \"x\" }\n",
                "line 2",
                "",
            ),
            (
                "[groups.a]\nretention = { keep-fortnightly = 1 }\n",
                "line 2",
                "unknown field",
            ),
            ("[defaults\n", "line 1", ""),
        ];
        for (text, line, what) in cases {
            let e = Config::parse(text, Path::new("/etc/diskdump/config.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("/etc/diskdump/config.toml {line}:")),
                "{text:?}: {e}"
            );
            assert!(e.contains(what), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // Checked when the group is used: a bad target or name, with its line.
        let c = Config::parse(
            "[groups.a]\ntargets = [\n  { target = \"nocolon\" },\n]\n[groups.b]\ntargets = [\n  { target = \"h:/x\", as = \"../evil\" },\n]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let e = c.group("a").unwrap_err().to_string();
        assert!(e.starts_with("c.toml line 3:"), "{e}");
        let e = c.group("b").unwrap_err().to_string();
        assert!(
            e.starts_with("c.toml line 7:") && e.contains("invalid dump name"),
            "{e}"
        );
    }
}
