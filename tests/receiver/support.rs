//! Shared helpers: stores, images, the embedded agent on disk, dumps.

use anyhow::Result;
use diskdump::agent_bin::{agent_hash, AGENT};
use diskdump::digest::Digest;
use diskdump::receiver::{receive, InFlight, NoProgress, Progress, ReceiveOptions, Received};
use diskdump::store::{get_block, LocalStore, Store, WalkItem};
use diskdump_agent::blockfmt;
use diskdump_agent::proto::{
    read_frame, Block, Compression, Hello, Message, Need, PROTOCOL_VERSION,
};
use std::io::{pipe, PipeReader, PipeWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use tempfile::TempDir;

pub const BS: usize = 4096;

/// The embedded static agent on disk, named by its hash under cargo's
/// per-target temp dir. Written (temp file, then rename) before any test
/// spawns it, so no child can inherit it open for writing (exec would fail
/// with ETXTBSY).
pub fn agent_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("diskdump-agent-{}", agent_hash()));
        if std::fs::read(&path).ok().as_deref() != Some(AGENT) {
            let tmp = dir.join(format!("diskdump-agent.tmp.{}", std::process::id()));
            std::fs::write(&tmp, AGENT).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    })
}

pub fn new_store(bs: usize) -> (TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open_or_create(dir.path(), Some(bs)).unwrap();
    (dir, store)
}

/// Deterministic pseudo-random bytes (incompressible).
pub use diskdump_agent::testdata::noise;

/// `blocks` blocks of `bs` bytes mixing random, zero, repeated (within and
/// across batches) and compressible ones, then a ragged tail of `tail` bytes.
pub fn image(bs: usize, blocks: usize, tail: usize) -> Vec<u8> {
    let mut img = Vec::with_capacity(bs * blocks + tail);
    for i in 0..blocks {
        match i % 6 {
            0 | 3 => img.extend(noise(bs, i as u64)),
            1 => img.resize(img.len() + bs, 0),
            2 => img.extend(noise(bs, 0)), // block 0 again
            4 => img.extend(b"compressible ".repeat(bs / 13 + 1)[..bs].to_vec()),
            _ => img.extend(noise(bs, 1000 + (i as u64 % 4))), // two blocks, alternating
        }
    }
    img.extend(noise(tail, 7777));
    img
}

/// Runs the real agent on `path` and the receiver against it, over pipes.
/// Returns the receive result and the agent's exit status and stderr.
pub fn dump(
    store: &dyn Store,
    inflight: &InFlight,
    path: &Path,
    args: &[&str],
) -> (Result<Received>, std::process::ExitStatus, String) {
    dump_with_progress(store, inflight, path, args, &NoProgress)
}

pub fn dump_with_progress(
    store: &dyn Store,
    inflight: &InFlight,
    path: &Path,
    args: &[&str],
    progress: &dyn Progress,
) -> (Result<Received>, std::process::ExitStatus, String) {
    let mut cmd = Command::new(agent_path());
    cmd.args(args).arg("--").arg(path);
    dump_command(store, inflight, cmd, progress)
}

/// Runs `cmd` (an agent, however started) against the receiver over pipes.
pub fn dump_command(
    store: &dyn Store,
    inflight: &InFlight,
    mut cmd: Command,
    progress: &dyn Progress,
) -> (Result<Received>, std::process::ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let opts = ReceiveOptions {
        store,
        inflight,
        source: "testhost:/dev/test",
        progress,
        max_size: diskdump::receiver::DEFAULT_MAX_SIZE,
    };
    let result = receive(&opts, stdout, stdin);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (result, status, err)
}

/// Reads every block in the store through the verifying path; returns how
/// many there are. Panics on any block that does not verify.
pub fn verify_all(store: &dyn Store) -> usize {
    let mut digests = Vec::new();
    store
        .walk(&mut |item| {
            match item {
                WalkItem::Block(d, _) => digests.push(d),
                WalkItem::Stray(s) => panic!("stray file {s}"),
            }
            Ok(())
        })
        .unwrap();
    let (mut frame, mut raw) = (Vec::new(), Vec::new());
    for d in &digests {
        get_block(store, d, &mut frame, &mut raw).unwrap_or_else(|e| panic!("{e}"));
    }
    digests.len()
}

/// Rebuilds the image a manifest describes from the store.
pub fn restore(store: &dyn Store, blocks: &[Digest]) -> Vec<u8> {
    let (mut frame, mut raw, mut out) = (Vec::new(), Vec::new(), Vec::new());
    for d in blocks {
        get_block(store, d, &mut frame, &mut raw).unwrap();
        out.extend_from_slice(&raw);
    }
    out
}

/// An agent written by hand, for scripted and hostile cases: its ends of the
/// two pipes. Write errors are ignored: the receiver hangs up as soon as it
/// has seen enough.
pub struct FakeAgent {
    pub out: PipeWriter,
    pub needs: PipeReader,
}

impl FakeAgent {
    /// A fake agent and the receiver's ends (its input, its output).
    pub fn new() -> (FakeAgent, PipeReader, PipeWriter) {
        let (from_agent, out) = pipe().unwrap();
        let (needs, to_agent) = pipe().unwrap();
        (FakeAgent { out, needs }, from_agent, to_agent)
    }
    pub fn send(&mut self, m: Message) {
        let mut buf = Vec::new();
        m.encode(&mut buf);
        self.raw(&buf);
    }
    pub fn raw(&mut self, bytes: &[u8]) {
        let _ = self.out.write_all(bytes);
    }
    pub fn need(&mut self) -> Need {
        match read_frame(&mut self.needs, 1 << 20).unwrap() {
            Some(Message::Need(n)) => n,
            other => panic!("expected a Need, got {other:?}"),
        }
    }
    /// Sends `raw` as a correct lz4 Block.
    pub fn block(&mut self, raw: &[u8]) {
        self.block_as(Digest::of(raw), blockfmt::encode(raw));
    }
    pub fn block_as(&mut self, digest: Digest, data: Vec<u8>) {
        self.send(Message::Block(Block { digest, data }));
    }
}

/// A Hello for a source of `size` bytes in blocks of `BS`, batches of 4,
/// a window of 2.
pub fn fake_hello(size: u64, mode: Compression) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        hostname: "fake".into(),
        source: "/dev/fake".into(),
        size,
        block_size: BS as u32,
        batch_size: 4,
        window: 2,
        compression: mode,
    }
}

/// Waits until a receiver has verified and stored `raw`.
pub fn wait_stored(store: &dyn Store, raw: &[u8]) {
    let d = Digest::of(raw);
    for _ in 0..1000 {
        if store.contains(&d).unwrap() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("block {d} was never stored");
}
