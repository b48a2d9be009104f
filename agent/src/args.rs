//! The agent's command line (built by `commands/dump.rs` on the storage
//! side). Tiny and parsed by hand: no argument-parsing crate in the agent.

use crate::proto::{check_params, Compression, DEFAULT_BATCH_SIZE, DEFAULT_WINDOW};
use crate::DEFAULT_BLOCK_SIZE;
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "usage: diskdump-agent [--block-size N] [--batch-size N] \
[--compress lz4|zlib|none] [--window N] SOURCE

Reads SOURCE (a file or block device) once and speaks diskdump's dump
protocol on stdin/stdout. Started by `diskdump dump`, not by hand.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub source: PathBuf,
    pub block_size: usize,
    /// Blocks per batch.
    pub batch_size: usize,
    /// Batches read ahead while earlier ones are not finished.
    pub window: usize,
    pub compression: Compression,
}

impl Args {
    /// The defaults for `source`.
    pub fn new(source: impl Into<PathBuf>) -> Args {
        Args {
            source: source.into(),
            block_size: DEFAULT_BLOCK_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
            window: DEFAULT_WINDOW,
            compression: Compression::Lz4,
        }
    }

    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
        let mut it = args.into_iter();
        let mut parsed = Args::new("");
        let mut source = None;
        while let Some(arg) = it.next() {
            let text = arg.to_string_lossy().into_owned();
            let (flag, inline) = match text.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (text.clone(), None),
            };
            if !flag.starts_with("--") || flag == "--" {
                let path = if flag == "--" { it.next() } else { Some(arg) };
                let path = path.ok_or("-- must be followed by SOURCE")?;
                if source.replace(PathBuf::from(path)).is_some() {
                    return Err("only one SOURCE may be given".into());
                }
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value"))?
                    .to_string_lossy()
                    .into_owned(),
            };
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{flag}: {value:?} is not a number"))
            };
            match flag.as_str() {
                "--block-size" => parsed.block_size = number()?,
                "--batch-size" => parsed.batch_size = number()?,
                "--window" => parsed.window = number()?,
                "--compress" => parsed.compression = value.parse()?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        parsed.source = source.ok_or("SOURCE is missing")?;
        check_params(parsed.block_size, parsed.batch_size, parsed.window)?;
        Ok(parsed)
    }
}

/// This host's name, read from the kernel: no DNS, no NSS (a static binary
/// must not load NSS modules).
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn defaults_options_and_round_trip() {
        assert_eq!(parse(&["/dev/sda"]).unwrap(), Args::new("/dev/sda"));
        let a = parse(&[
            "--block-size",
            "65536",
            "--batch-size=10",
            "--compress",
            "zlib",
            "--window",
            "2",
            "img",
        ])
        .unwrap();
        assert_eq!(
            (a.block_size, a.batch_size, a.compression, a.window),
            (65536, 10, Compression::Zlib, 2)
        );
        // A source that looks like an option goes after `--`.
        assert_eq!(parse(&["--", "--weird"]).unwrap(), Args::new("--weird"));
    }

    #[test]
    fn rejects_bad_arguments() {
        for (args, msg) in [
            (&[][..], "SOURCE is missing"),
            (&["a", "b"][..], "only one SOURCE"),
            (&["--block-size"][..], "needs a value"),
            (&["--block-size", "x", "a"][..], "not a number"),
            (&["--compress", "gzip", "a"][..], "unknown compression"),
            (&["--window", "0", "a"][..], "window"),
            (&["--frobnicate", "1", "a"][..], "unknown option"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(msg), "{args:?}: {err}");
        }
    }

    #[test]
    fn hostname_comes_from_the_kernel() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname(), kernel.trim());
    }
}
