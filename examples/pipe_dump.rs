//! Dumps a local file or block device into a store through the embedded
//! static agent over pipes (no SSH): the throughput of the agent and the
//! receiver together, with nothing in between.
//!
//!     cargo run --release --example pipe_dump -- IMAGE STORE [AGENT ARGS...]
//!
//! e.g. `-- disk.img /tmp/store --compress zlib`. Writes the manifest too.
//! `PIPE_DUMP_AGENT=path` runs that agent binary instead of the embedded one.

use anyhow::{bail, Context, Result};
use diskdump::agent_bin::{agent_hash, AGENT};
use diskdump::receiver::{receive, InFlight, NoProgress, ReceiveOptions};
use diskdump::store::{LocalStore, Store};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(image), Some(store_dir)) = (args.next(), args.next()) else {
        bail!("usage: pipe_dump IMAGE STORE [AGENT ARGS...]");
    };
    let agent_args: Vec<String> = args.collect();
    let store = LocalStore::open_or_create(&PathBuf::from(&store_dir), None)?;
    let session = store.begin_writes()?;
    // PIPE_DUMP_AGENT runs another agent build, e.g. one with symbols for perf.
    let agent = match std::env::var_os("PIPE_DUMP_AGENT") {
        Some(path) => PathBuf::from(path),
        None => std::env::temp_dir().join(format!("diskdump-agent-{}", agent_hash())),
    };
    if !agent.exists() {
        let tmp = agent.with_extension("tmp");
        std::fs::write(&tmp, AGENT)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &agent)?;
    }
    let bs = store.block_size().to_string();
    let start = Instant::now();
    let mut child = Command::new(&agent)
        .args(["--block-size", &bs])
        .args(&agent_args)
        .arg("--")
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the agent")?;
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let opts = ReceiveOptions {
        store: &store,
        inflight: &InFlight::new(),
        source: &format!("localhost:{image}"),
        progress: &NoProgress,
        max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
    };
    let received = receive(&opts, stdout.expect("piped"), stdin.expect("piped"));
    let status = child.wait()?;
    let received = received?;
    let transfer = start.elapsed();
    let name = diskdump::manifest::default_name("localhost", &image)?;
    let entry = store.write_manifest_spooled(&name, &received.manifest, &received.hashes)?;
    store.end_writes(session)?;
    let total = start.elapsed();
    let s = &received.stats;
    let mb = |b: u64| b as f64 / 1e6;
    println!("agent exit: {status}; manifest {}", entry.rel);
    println!(
        "{:.0} MB in {:.2} s ({:.2} s with the manifest and sync): {:.0} MB/s",
        mb(s.size),
        transfer.as_secs_f64(),
        total.as_secs_f64(),
        mb(s.size) / transfer.as_secs_f64()
    );
    println!(
        "blocks: {} new, {} present, {} zero, {} deduped in flight",
        s.blocks_new, s.blocks_present, s.blocks_zero, s.blocks_deduped
    );
    println!(
        "wire {:.1} MB, new raw {:.1} MB, written {:.1} MB",
        mb(s.wire_bytes),
        mb(s.bytes_new),
        mb(s.bytes_written)
    );
    Ok(())
}
