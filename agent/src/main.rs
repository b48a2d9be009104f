//! `diskdump-agent`: the remote side of a dump. Speaks the protocol on
//! stdin/stdout; messages for humans go to stderr.

use diskdump_agent::args::{Args, USAGE};
use diskdump_agent::proto::PROTOCOL_VERSION;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    match argv.first().and_then(|a| a.to_str()) {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version") => {
            let v = env!("CARGO_PKG_VERSION");
            println!("diskdump-agent {v} (protocol {PROTOCOL_VERSION})");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("diskdump-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match raw_stdio().and_then(|(i, o)| diskdump_agent::agent::run(&args, i, o)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diskdump-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stdin and stdout as plain files: std's `Stdout` is line-buffered, which
/// would flush at every newline byte of binary frames.
fn raw_stdio() -> Result<(File, File), String> {
    let dup = |fd: std::os::fd::BorrowedFd| {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|e| format!("cannot use stdin/stdout: {e}"))
    };
    Ok((dup(io::stdin().as_fd())?, dup(io::stdout().as_fd())?))
}
