//! The command line (clap). Holds no logic beyond turning arguments into the
//! commands' option structs; `--sudo` and `--as` of `dump` attach to the
//! target they follow, found from clap's argument indices.

use crate::commands;
use crate::config::Config;
use anyhow::{bail, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;

/// Exit codes, documented in `--help` and the README.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// Damage found (verify, info, status) or a command that failed.
    pub const FAILURE: u8 = 1;
    /// A usage error: bad arguments, refused before any work.
    pub const USAGE: u8 = 2;
    /// The store lock is held and the command would not wait (`gc --no-wait`).
    pub const LOCKED: u8 = 3;
    // Interrupted by signal N: 128 + N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
}

const EXIT_CODES: &str = "Exit codes: 0 success; 1 failure or damage found; 2 usage error \
(refused before any work); 3 store locked (gc --no-wait); 128+N interrupted by signal N \
(130 Ctrl-C, 143 SIGTERM, 129 SIGHUP). A closed stdout (diskdump status | head) ends a \
command quietly with 0.";

#[derive(Parser, Debug)]
#[command(name = "diskdump", version, about = "Deduplicated disk-image backup over SSH", long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// Store directory [default: $DISKDUMP_STORE, else $DISKDUMP_BASE, else the current directory]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print the report as one JSON document on stdout (messages go to stderr)
    #[arg(long, global = true)]
    pub json: bool,
    /// Config file [default: ~/.config/diskdump/config.toml, else /etc/diskdump/config.toml]
    #[arg(long, global = true, value_name = "FILE", env = "DISKDUMP_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a store (every other command needs one)
    Init {
        /// Where [default: --store, $DISKDUMP_STORE, $DISKDUMP_BASE, else the current directory]
        dir: Option<PathBuf>,
        /// Block size of every dump in the store (K, M suffixes) [default: 128K]
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        block_size: Option<usize>,
        /// Share the store read-only with this group (0750/0640) instead of private (0700/0600)
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Dump remote block devices or image files over SSH into the store
    #[command(
        after_help = "TARGET is [user@]host:/path; host:sda means host:/dev/sda.\n\
        --sudo and --as apply to the target they follow:\n  \
        diskdump dump server01:/dev/sda --sudo --as server01-sda server02:sda"
    )]
    Dump(DumpArgs),
    /// Put the agent on a host ahead of time; with --sudo, install it root-owned for sudo
    #[command(
        after_help = "Without --sudo the agent goes into the login user's ~/.cache/diskdump (dump does this by itself).\n\
        With --sudo it is installed as /usr/local/lib/diskdump/diskdump-agent, owned by root (needs root@HOST or\n\
        a sudo that allows `sh` without a password, once), and the sudoers line that lets the login user run\n\
        exactly that file is printed."
    )]
    Deploy {
        /// [user@]host
        host: String,
        /// Install root-owned under /usr/local/lib/diskdump for `dump --sudo`
        #[arg(long)]
        sudo: bool,
        #[command(flatten)]
        ssh: SshArgs,
        /// Give up after this long without an answer (0: never)
        #[arg(
            long,
            value_name = "SECS",
            default_value_t = 60,
            env = "DISKDUMP_IDLE_TIMEOUT"
        )]
        idle_timeout: u64,
    },
    /// Write a dump's image to a file (holes for zero blocks) or to stdout
    Restore {
        /// Manifest path (relative to the store or absolute), or a dump name for its newest dump
        manifest: String,
        /// Output file or block device [default: stdout, if not a terminal]
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace an existing output file, or write over a block device
        #[arg(long)]
        force: bool,
        /// Disaster recovery: write zeros for unreadable blocks instead of
        /// stopping, list every bad range, exit 1 if there was any
        #[arg(long)]
        salvage: bool,
    },
    /// Import an existing raw image file into the store
    Import {
        /// The raw image file
        image: PathBuf,
        /// Dump name, or HOST:DEVICE (named HOST-<device>)
        #[arg(long = "as", value_name = "NAME")]
        name: String,
        /// File the dump under this date (ISO 8601) instead of now
        #[arg(long, value_name = "ISO")]
        date: Option<String>,
        /// Expected block size: an error if the store's differs (set by `init`)
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        block_size: Option<usize>,
        /// Expected sharing group: an error if the store's differs (set by `init --group`)
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Show one dump: source, date, sizes, blocks, sharing, missing blocks
    Info { manifest: String },
    /// Show the store: size, dedup ratio, and every dump
    Status,
    /// Check every block (decompress, rehash) and manifest; non-zero exit on any problem
    Verify {
        /// Only the blocks of these dumps [default: the whole store]
        manifests: Vec<String>,
        /// Move corrupt blocks aside as <hash>.lz4.bad so the next dump or import stores a good copy
        #[arg(long)]
        repair: bool,
    },
    /// Delete blocks no manifest references
    Gc {
        /// Report what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Fail at once if dumps are running instead of waiting for them
        #[arg(long)]
        no_wait: bool,
    },
    /// List dumps by date: date, name, source, size, new blocks, manifest
    List(ListArgs),
    /// Remove dumps by a retention policy, per dump name (restic's rules)
    #[command(
        after_help = "Each rule keeps the newest dump of each of its N most recent periods \
        (hours, days, ISO weeks, months, years, in local time) that have one; \
        a dump is kept if any rule keeps it. Protected dumps are always kept.\n\
        Example: diskdump forget --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --prune"
    )]
    Forget(ForgetArgs),
    /// Remove the given dumps (manifest paths); their blocks go at the next gc
    Delete {
        #[arg(required = true, value_name = "MANIFEST")]
        manifests: Vec<String>,
    },
    /// Mark dumps so that forget and delete never remove them
    Protect {
        #[arg(required = true, value_name = "MANIFEST")]
        manifests: Vec<String>,
    },
    /// Clear the protection of dumps
    Unprotect {
        #[arg(required = true, value_name = "MANIFEST")]
        manifests: Vec<String>,
    },
    /// Copy dumps to another store (local or s3://), each block once
    #[command(
        after_help = "Examples:\n  diskdump --store /srv/backup copy --to s3://backups/fleet\n  \
        diskdump --store s3://backups/fleet copy web-sda --to /srv/restore-store"
    )]
    Copy {
        /// Dumps to copy (names: every dump of that name; or manifest paths); all when none
        #[arg(value_name = "DUMP")]
        dumps: Vec<String>,
        /// The destination store (made beforehand with `diskdump init`)
        #[arg(long, value_name = "STORE")]
        to: PathBuf,
    },
    /// Show which blocks and byte ranges differ between two dumps
    Diff {
        /// The older dump (manifest path or dump name)
        a: String,
        /// The newer dump
        b: String,
    },
    /// Print a shell completion script (bash, zsh or fish)
    #[command(
        after_help = "Install: diskdump completions bash > /etc/bash_completion.d/diskdump\n\
        zsh: diskdump completions zsh > /usr/local/share/zsh/site-functions/_diskdump\n\
        fish: diskdump completions fish > ~/.config/fish/completions/diskdump.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (diskdump.1, diskdump-<command>.1) into DIR
    #[command(after_help = "Install: diskdump manpages /usr/local/share/man/man1 && mandb -q")]
    Manpages { dir: PathBuf },
    /// Mount every dump as a read-only raw image file (FUSE; foreground)
    #[command(override_usage = "diskdump mount [STORE] MOUNTPOINT [OPTIONS]")]
    Mount {
        /// [STORE] MOUNTPOINT: the store (default: --store, $DISKDUMP_STORE, ...)
        /// and an empty directory to mount on
        #[arg(required = true, num_args = 1..=2, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Bytes of decompressed blocks to keep in memory (suffixes K, M, G)
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        cache_size: usize,
        /// Let other users in (default: only the mounting user); what they may
        /// read is the images' mode and group: the store's (private: 0400;
        /// shared: 0440 with its group) unless --mode/--group say otherwise
        #[arg(long)]
        allow_other: bool,
        /// Group of the images and directories [default: the store's group, else yours]
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Mode of the images, octal (e.g. 0440, 0444); directories get x where r is set
        #[arg(long, value_name = "MODE", value_parser = parse_mode)]
        mode: Option<u16>,
        /// FUSE worker threads
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Bypass the kernel's page cache: faster single cold passes, much
        /// slower small reads
        #[arg(long)]
        direct_io: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// [user@]host:/path, each optionally followed by --sudo and --as NAME
    #[arg(required_unless_present = "group", value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Run the agent with sudo -n on the preceding target
    #[arg(long, action = clap::ArgAction::Count)]
    pub sudo: u8,
    /// Name the preceding target's dump (default <host>-<device basename>)
    #[arg(long = "as", value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub ssh: SshArgs,
    /// Expected block size: an error if the store's differs (set by `init`)
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub block_size: Option<usize>,
    /// Dump the targets of this group of the config file (with its options)
    #[arg(long, value_name = "NAME", conflicts_with = "targets")]
    pub group: Option<String>,
    /// Blocks per batch the agent hashes and announces at once
    #[arg(long, default_value_t = 80)]
    pub batch_size: usize,
    /// Batches in flight before the agent waits for answers; the agent's
    /// memory is about this times the batch (8 x 10 MiB by default)
    // 8 and 16 gave the same dump times over loopback SSH; 16 cost the agent
    // 175-223 MiB of RSS (benchmark, cgroup peak).
    #[arg(long, default_value_t = diskdump_agent::proto::DEFAULT_WINDOW)]
    pub window: usize,
    /// Compression of blocks on the wire
    #[arg(long, default_value = "lz4", value_parser = ["lz4", "zlib", "none"])]
    pub compress: String,
    /// Targets dumped at once [default: all]
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Refuse a source larger than this (suffixes K, M, G, T): the storage side holds 32
    /// bytes per block while dumping, so this bounds its memory
    #[arg(long, value_name = "BYTES", value_parser = parse_size_u64, default_value = "16T")]
    pub max_size: u64,
    /// Fail a target whose agent sends nothing for this long while its data is awaited (0: never)
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        env = "DISKDUMP_IDLE_TIMEOUT"
    )]
    pub idle_timeout: u64,
}

/// How to reach remote hosts (`dump`, `deploy`).
#[derive(clap::Args, Debug, Clone)]
pub struct SshArgs {
    /// SSH user for targets without user@ [default: from ssh_config, else the local user]
    #[arg(short, long)]
    pub user: Option<String>,
    /// SSH client: the system's OpenSSH `ssh` (default when on PATH) or the built-in libssh2
    #[arg(long, env = "DISKDUMP_TRANSPORT", value_parser = ["openssh", "libssh2"])]
    pub transport: Option<String>,
    /// ssh_config file instead of ~/.ssh/config (like ssh -F), for both transports
    #[arg(long, value_name = "FILE", env = "DISKDUMP_SSH_CONFIG")]
    pub ssh_config: Option<PathBuf>,
    /// An option for OpenSSH's ssh, as with ssh -o (repeatable)
    #[arg(short = 'o', long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,
    /// Record an unknown host key instead of refusing it (a changed key is always refused)
    #[arg(long)]
    pub accept_new_host_key: bool,
}

impl SshArgs {
    pub fn options(&self) -> Result<crate::transport::Options> {
        let o = crate::transport::Options {
            kind: crate::transport::Options::choose(self.transport.as_deref())?,
            config: self.ssh_config.clone(),
            ssh_options: self.ssh_options.clone(),
            user: self.user.clone(),
            accept_new_host_key: self.accept_new_host_key,
        };
        o.check()?;
        Ok(o)
    }
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only dumps of these names
    pub names: Vec<String>,
    /// Only dumps from this date on (ISO 8601: 2026-04-24 or 2026-04-24T03:00:00Z)
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only dumps up to this date (a plain date includes that whole day)
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
    /// Only dumps read from this host
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ForgetArgs {
    /// Only dumps of these names [default: every name]
    pub names: Vec<String>,
    /// Keep the N newest dumps (-1: all)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_last: Option<crate::retention::Count>,
    /// Keep the newest dump of each of the N most recent hours that have one
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_hourly: Option<crate::retention::Count>,
    /// ... days
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_daily: Option<crate::retention::Count>,
    /// ... ISO weeks
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_weekly: Option<crate::retention::Count>,
    /// ... months
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_monthly: Option<crate::retention::Count>,
    /// ... years
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_yearly: Option<crate::retention::Count>,
    /// Keep every dump within this duration of the name's newest dump (1y2m3d4h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<crate::retention::Within>,
    /// Show what would be kept and removed, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run gc afterwards, freeing the removed dumps' blocks
    #[arg(long)]
    pub prune: bool,
    /// The dump names and retention policy of this group of the config file
    /// (--keep-* flags, if any, replace the group's policy)
    #[arg(long, value_name = "NAME", conflicts_with = "names")]
    pub group: Option<String>,
}

impl ForgetArgs {
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within,
        }
    }
}

/// One target with the per-target options that followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub target: String,
    pub sudo: bool,
    pub name: Option<String>,
}

/// Attaches each --sudo / --as to the target before it, by argv position.
pub fn targets_from(m: &ArgMatches) -> Result<Vec<TargetSpec>> {
    let positions = |id: &str| -> Vec<usize> {
        // A default (the Count flag's 0) has an index too: only typed flags count.
        if m.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            return Vec::new();
        }
        m.indices_of(id).map(|i| i.collect()).unwrap_or_default()
    };
    let tpos = positions("targets");
    let targets: Vec<String> = m
        .get_many::<String>("targets")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut specs: Vec<TargetSpec> = targets
        .into_iter()
        .map(|target| TargetSpec {
            target,
            sudo: false,
            name: None,
        })
        .collect();
    let owner = |pos: usize, flag: &str| -> Result<usize> {
        match tpos.iter().rposition(|&t| t < pos) {
            Some(i) => Ok(i),
            None => bail!("{flag} must follow the target it applies to"),
        }
    };
    for pos in positions("sudo") {
        let i = owner(pos, "--sudo")?;
        specs[i].sudo = true;
    }
    let names: Vec<String> = m
        .get_many::<String>("names")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    for (pos, name) in positions("names").into_iter().zip(names) {
        let i = owner(pos, "--as")?;
        if specs[i].name.replace(name).is_some() {
            bail!("--as given twice for {}", specs[i].target);
        }
    }
    Ok(specs)
}

/// Like [`parse_size`], with `T` too, as a u64.
pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    match s.trim().strip_suffix(['T', 't']) {
        Some(n) => n
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << 40))
            .ok_or_else(|| format!("invalid size {s:?}")),
        None => parse_size(s).map(|n| n as u64),
    }
}

/// `256M`, `1G`, `131072`, `128K` → bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}"))
}

/// `0440` → 0o440: read bits only make sense for a read-only mount.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let m = u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("invalid mode {s:?}: use octal, e.g. 0440"))?;
    if m & !0o444 != 0 {
        return Err(format!(
            "invalid mode {s:?}: images are read-only, use read bits only (e.g. 0400, 0440, 0444)"
        ));
    }
    Ok(m)
}

/// Where the store is: --store, else $DISKDUMP_STORE, else the config
/// file's `store`, else $DISKDUMP_BASE, else cwd.
fn store_dir(flag: Option<PathBuf>, config: Option<&Config>) -> PathBuf {
    flag.or_else(|| std::env::var_os("DISKDUMP_STORE").map(PathBuf::from))
        .or_else(|| config.and_then(|c| c.store()).map(PathBuf::from))
        .or_else(|| std::env::var_os("DISKDUMP_BASE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Fills the dump options the command line left at their defaults from the
/// config (the group's, then `[defaults]`).
fn apply_config(a: &mut DumpArgs, m: &ArgMatches, o: &crate::config::DumpOptions) {
    let unset = |id: &str| m.value_source(id) != Some(clap::parser::ValueSource::CommandLine);
    if unset("user") && a.ssh.user.is_none() {
        a.ssh.user = o.user.clone();
    }
    if unset("jobs") && a.jobs.is_none() {
        a.jobs = o.jobs;
    }
    if let (true, Some(c)) = (unset("compress"), &o.compress) {
        a.compress = c.clone();
    }
    // The environment's value (DISKDUMP_IDLE_TIMEOUT) beats the config's.
    if let (None | Some(clap::parser::ValueSource::DefaultValue), Some(t)) =
        (m.value_source("idle_timeout"), o.idle_timeout)
    {
        a.idle_timeout = t;
    }
    if a.ssh.transport.is_none() {
        a.ssh.transport = o.transport.clone();
    }
    if a.ssh.ssh_config.is_none() {
        a.ssh.ssh_config = o.ssh_config.clone();
    }
    if unset("accept_new_host_key") && o.accept_new_host_key == Some(true) {
        a.ssh.accept_new_host_key = true;
    }
}

/// The config file, if one is given or found (an explicit one must exist).
fn config(explicit: Option<&std::path::Path>) -> Result<Option<Config>> {
    Config::find(explicit).map_err(commands::as_usage)
}

/// Parses the process arguments and runs the command; returns the exit code.
pub fn run() -> Result<u8> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Read only where it matters, so a broken config file does not stop a
    // restore that names its store.
    let store_given = cli.store.is_some() || std::env::var_os("DISKDUMP_STORE").is_some();
    let wanted = match &cli.command {
        Command::Dump(_) | Command::Forget(_) => true,
        Command::Completions { .. } | Command::Manpages { .. } => false,
        _ => !store_given,
    };
    let config = if wanted || cli.config.is_some() {
        config(cli.config.as_deref())?
    } else {
        None
    };
    let store = store_dir(cli.store, config.as_ref());
    crate::output::set_json(cli.json);
    crate::signals::install();
    match cli.command {
        Command::Init {
            dir,
            block_size,
            group,
        } => commands::init::run(
            dir.as_deref().unwrap_or(&store),
            block_size,
            group.as_deref(),
        ),
        Command::Dump(mut a) => {
            let sub = matches.subcommand_matches("dump").expect("dump subcommand");
            let targets = match &a.group {
                Some(name) => {
                    let c = config.as_ref().ok_or_else(|| {
                        commands::usage(format!(
                            "--group {name}: no config file (--config FILE, ~/.config/diskdump/config.toml or /etc/diskdump/config.toml)"
                        ))
                    })?;
                    let g = c.group(name).map_err(commands::as_usage)?;
                    apply_config(&mut a, sub, &g.options);
                    g.targets
                        .into_iter()
                        .map(|(target, sudo, name)| TargetSpec {
                            target,
                            sudo,
                            name: Some(name),
                        })
                        .collect()
                }
                None => {
                    if let Some(c) = &config {
                        apply_config(&mut a, sub, c.defaults());
                    }
                    targets_from(sub).map_err(commands::as_usage)?
                }
            };
            commands::dump::run(&store, targets, a)
        }
        Command::Deploy {
            host,
            sudo,
            ssh,
            idle_timeout,
        } => commands::deploy::run(&host, sudo, &ssh.options()?, idle_timeout),
        Command::Restore {
            manifest,
            output,
            force,
            salvage,
        } => commands::restore::run(&store, &manifest, output.as_deref(), force, salvage),
        Command::Import {
            image,
            name,
            date,
            block_size,
            group,
        } => commands::import::run(
            &store,
            &commands::import::ImportOptions {
                image,
                name,
                date,
                block_size,
                group,
            },
        ),
        Command::Info { manifest } => commands::info::run(&store, &manifest),
        Command::Status => commands::status::run(&store),
        Command::Verify { manifests, repair } => commands::verify::run(&store, &manifests, repair),
        Command::Gc { dry_run, no_wait } => commands::gc::run(&store, dry_run, !no_wait),
        Command::List(a) => commands::list::run(
            &store,
            &commands::list::ListOptions {
                names: a.names,
                since: a.since,
                until: a.until,
                host: a.host,
            },
        ),
        Command::Forget(a) => {
            let (mut names, mut policy) = (a.names.clone(), a.policy());
            if let Some(name) = &a.group {
                let c = config
                    .as_ref()
                    .ok_or_else(|| commands::usage(format!("--group {name}: no config file")))?;
                let g = c.group(name).map_err(commands::as_usage)?;
                names = g.targets.into_iter().map(|(_, _, n)| n).collect();
                if policy.is_empty() {
                    policy = g.retention.ok_or_else(|| {
                        commands::usage(format!(
                            "group {name:?} in {} has no retention policy (retention = {{ keep-daily = 7, ... }})",
                            c.path.display()
                        ))
                    })?;
                }
            }
            commands::forget::run(
                &store,
                &commands::forget::ForgetOptions {
                    policy,
                    names,
                    dry_run: a.dry_run,
                    prune: a.prune,
                    // A group's names may have no dumps yet (a new target).
                    allow_missing: a.group.is_some(),
                },
            )
        }
        Command::Delete { manifests } => commands::forget::delete(&store, &manifests),
        Command::Protect { manifests } => commands::forget::protect(&store, &manifests, true),
        Command::Unprotect { manifests } => commands::forget::protect(&store, &manifests, false),
        Command::Diff { a, b } => commands::diff::run(&store, &a, &b),
        Command::Copy { dumps, to } => commands::copy::run(&store, &to, &dumps),
        Command::Completions { shell } => commands::completions::completions(shell),
        Command::Manpages { dir } => commands::completions::manpages(&dir),
        Command::Mount {
            mut paths,
            cache_size,
            allow_other,
            group,
            mode,
            threads,
            direct_io,
        } => commands::mount::run(&commands::mount::MountOptions {
            mountpoint: paths.pop().expect("clap requires one"),
            store: paths.pop().unwrap_or(store),
            cache_size,
            allow_other,
            group,
            mode,
            threads,
            direct_io,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(args: &[&str]) -> Result<Vec<TargetSpec>> {
        let mut argv = vec!["diskdump", "dump"];
        argv.extend_from_slice(args);
        let m = Cli::command().try_get_matches_from(argv)?;
        targets_from(m.subcommand_matches("dump").unwrap())
    }

    #[test]
    fn per_target_flags_attach_to_the_preceding_target() {
        let s = specs(&[
            "a:/dev/sda",
            "--sudo",
            "--as",
            "x",
            "b:sdb",
            "-u",
            "bob",
            "c:/f.img",
            "--as=z",
        ])
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].sudo, s[0].name.as_deref()), (true, Some("x")));
        assert_eq!((s[1].sudo, s[1].name.as_deref()), (false, None));
        assert_eq!((s[2].sudo, s[2].name.as_deref()), (false, Some("z")));
        assert!(specs(&["--sudo", "a:/x"])
            .unwrap_err()
            .to_string()
            .contains("must follow"));
        assert!(specs(&["--as", "n", "a:/x"]).is_err());
        // No --sudo anywhere: no target runs sudo (a Count flag's default has an index).
        for args in [&["a:/x"][..], &["a:/x", "--as", "n"], &["a:/x", "b:/y"]] {
            assert!(specs(args).unwrap().iter().all(|s| !s.sudo), "{args:?}");
        }
        assert!(specs(&["a:/x", "--as", "n", "--as", "m"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("128k"), Ok(128 << 10));
        assert_eq!(parse_size("131072"), Ok(131072));
        assert!(parse_size("1T").is_err() && parse_size("x").is_err() && parse_size("").is_err());
        assert_eq!(parse_mode("0440"), Ok(0o440));
        assert_eq!(parse_mode("444"), Ok(0o444));
        assert!(parse_mode("0644").is_err() && parse_mode("9").is_err());
    }
}
