//! One thread moves bytes between a remote command's channel (non-blocking) and two OS pipes,
//! whose other ends the caller uses as ordinary blocking `Read`/`Write` from any thread.
//!
//! Why: libssh2 holds one session lock through each call, so a blocking read on a channel
//! stops a concurrent write on it, and reading and writing one channel from two threads
//! deadlocks. Here a single thread loops: input to the channel, channel stdout and stderr out,
//! and `poll()` when nothing moved. The pipes' capacity bounds memory in both directions, and a
//! slow reader holds back the SSH window and through it the remote command.
//!
//! The channel is behind [`Duplex`], so this file does not depend on `ssh2` and its logic is
//! tested with a fake channel.

use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::transport::{keep_tail, ExitInfo, Handle, RemoteProcess, STDERR_TAIL};

/// Largest read or write the pump does at once, and about the most it holds per direction.
const CHUNK: usize = 256 * 1024;
/// Bigger pipes than the 64 KiB default mean fewer wake-ups per MiB.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A remote command's channel in non-blocking mode: calls return at once, `WouldBlock` meaning
/// "again". Like libssh2, an implementation may refuse to send anything else until a call that
/// returned `WouldBlock` is repeated with the same bytes; the pump always repeats it.
pub(super) trait Duplex {
    /// Writes to the command's stdin.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Reads its stdout; `Ok(0)` when nothing is there.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn read_stderr(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Signals the end of its input.
    fn send_eof(&mut self) -> io::Result<()>;
    /// The remote ended its output, and all of it was read.
    fn eof(&self) -> bool;
    /// `Ok` once the remote closed the channel; only called after [`Duplex::eof`].
    fn wait_close(&mut self) -> io::Result<()>;
    /// What to `poll()` when nothing moved: a descriptor and events.
    fn poll_fd(&self) -> (RawFd, libc::c_short);
    /// Exit status and signal name, once closed.
    fn exit(&self) -> io::Result<(i32, Option<String>)>;
    /// Drops the connection now; the remote command then sees EOF.
    fn abort(&mut self);
}

/// Where the pump's bytes come from and go to.
pub(super) struct PumpIo {
    /// The caller's input; `None` once it ended (or when there is none, as for `run`).
    stdin: Option<PipeReader>,
    stdout: StdoutPipe,
    /// Readable when [`Handle::kill`] wants attention.
    wake: Option<PipeReader>,
    kill: Option<Arc<AtomicBool>>,
}

enum StdoutPipe {
    /// `None` once the caller dropped its reader: later output is discarded.
    Pipe(Option<PipeWriter>),
}

pub(super) struct Finished {
    pub status: i32,
    pub signal: Option<String>,
    pub stderr: Vec<u8>,
}

/// Creates the pipes, then runs `pump` (which drives a channel with the `PumpIo` it is given
/// and cleans up after it) on a thread of its own.
pub(super) fn spawn<F>(label: String, pump: F) -> Result<RemoteProcess>
where
    F: FnOnce(&mut PumpIo) -> Result<Finished> + Send + 'static,
{
    let ((out_r, out_w), (in_r, in_w), (wake_r, wake_w)) = (io::pipe()?, io::pipe()?, io::pipe()?);
    // The pump's ends never block it; the caller's ends stay blocking.
    for fd in [out_w.as_raw_fd(), in_r.as_raw_fd(), wake_r.as_raw_fd()] {
        set_nonblocking(fd)?;
    }
    for fd in [out_w.as_raw_fd(), in_r.as_raw_fd()] {
        // SAFETY: fcntl on a pipe we own. Best effort: a smaller pipe costs only wake-ups.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    let flag = Arc::new(AtomicBool::new(false));
    let mut io = PumpIo {
        stdin: Some(in_r),
        stdout: StdoutPipe::Pipe(Some(out_w)),
        wake: Some(wake_r),
        kill: Some(flag.clone()),
    };
    let kill = flag;
    let name = label.clone();
    let thread = std::thread::Builder::new()
        .name(format!("ssh {label}"))
        .spawn(move || {
            let done = pump(&mut io).with_context(|| format!("ssh {name}: remote command"))?;
            let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
            Ok(ExitInfo {
                status: done.status,
                signal: done.signal,
                stderr,
            })
        })?;
    let kill = Arc::new(move || {
        kill.store(true, Ordering::SeqCst);
        let _ = (&wake_w).write(&[1]);
    });
    let handle = Handle::new(thread, kill, label);
    Ok(RemoteProcess {
        stdout: out_r,
        stdin: in_w,
        handle,
    })
}

/// Bytes taken from one side and not yet given to the other.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    pos: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.is_empty() {
            self.clear();
        }
    }
    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }
}

/// Moves bytes until the remote closes the channel, then returns how the command ended.
pub(super) fn drive(ch: &mut impl Duplex, io: &mut PumpIo) -> Result<Finished> {
    let (mut input, mut output) = (Pending::default(), Pending::default());
    let (mut stderr, mut scratch, mut eof_sent) = (Vec::new(), vec![0u8; CHUNK], false);
    loop {
        if io.kill.as_ref().is_some_and(|k| k.load(Ordering::SeqCst)) {
            ch.abort();
            bail!(
                "killed; remote stderr: {}",
                crate::untrusted::last_line(&String::from_utf8_lossy(&stderr))
            );
        }
        let mut progress = false;
        // New input only once the last chunk is fully written: a write that would block is
        // repeated with the same bytes.
        if let (true, Some(r)) = (input.is_empty(), io.stdin.as_mut()) {
            input.buf.resize(CHUNK, 0);
            match nb(r.read(&mut input.buf)) {
                Ok(Some(n)) if n > 0 => input.buf.truncate(n),
                Ok(None) => input.clear(),
                _ => {
                    io.stdin = None; // the caller closed its end
                    input.clear();
                }
            }
            progress |= !input.is_empty() || io.stdin.is_none();
        }
        if !input.is_empty() {
            match nb(ch.write(input.bytes())) {
                Ok(Some(n)) => {
                    input.consume(n);
                    progress |= n > 0;
                }
                Ok(None) => {}
                Err(_) => {
                    // The remote takes no more input: drop it; the caller's writes now fail.
                    io.stdin = None;
                    input.clear();
                    eof_sent = true;
                }
            }
        }
        if io.stdin.is_none() && input.is_empty() && !eof_sent {
            match nb(ch.send_eof()) {
                Ok(None) => {}
                // Sent, or the channel is already closed: nothing left to tell either way.
                Ok(Some(())) | Err(_) => (eof_sent, progress) = (true, true),
            }
        }
        // Read stdout only while there is room, so a slow caller holds back the remote.
        if output.buf.len() < CHUNK {
            let n = nb(ch.read(&mut scratch)).context("reading the remote stdout")?;
            if let Some(n) = n.filter(|&n| n > 0) {
                output.buf.extend_from_slice(&scratch[..n]);
                progress = true;
            }
        }
        // Always drain stderr: unread stderr would keep the channel from reaching EOF.
        let n = nb(ch.read_stderr(&mut scratch)).context("reading the remote stderr")?;
        if let Some(n) = n.filter(|&n| n > 0) {
            keep_tail(&mut stderr, &scratch[..n], STDERR_TAIL);
            progress = true;
        }
        progress |= flush_output(&mut output, &mut io.stdout);
        if output.is_empty() && ch.eof() {
            let StdoutPipe::Pipe(w) = &mut io.stdout;
            *w = None; // the caller's reader sees EOF now
                       // The remote may still read input after closing its stdout: end on its close.
            match nb(ch.wait_close()) {
                Ok(Some(())) => break,
                Ok(None) => {}
                Err(e) => return Err(e).context("waiting for the remote command to finish"),
            }
        }
        if !progress {
            wait_ready(ch.poll_fd(), io, input.is_empty(), !output.is_empty())?;
        }
    }
    if stderr.len() > STDERR_TAIL {
        stderr.drain(..stderr.len() - STDERR_TAIL);
    }
    let (status, signal) = ch.exit().context("reading the exit status")?;
    Ok(Finished {
        status,
        signal,
        stderr,
    })
}

/// Gives pending output to the sink; returns whether anything moved.
fn flush_output(out: &mut Pending, sink: &mut StdoutPipe) -> bool {
    if out.is_empty() {
        return false;
    }
    match sink {
        StdoutPipe::Pipe(Some(w)) => match nb(w.write(out.bytes())) {
            Ok(Some(n)) => {
                out.consume(n);
                return n > 0;
            }
            Ok(None) => return false,
            Err(_) => *sink = StdoutPipe::Pipe(None), // the caller dropped its reader
        },
        StdoutPipe::Pipe(None) => {}
    }
    out.clear();
    true
}

/// Sleeps until the channel can move, the caller's input is readable, its output pipe has
/// room, or a kill arrives; at most 1 s.
fn wait_ready(
    (fd, events): (RawFd, libc::c_short),
    io: &mut PumpIo,
    want_input: bool,
    have_output: bool,
) -> Result<()> {
    let pfd = |fd, events| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let mut fds = vec![pfd(fd, events)];
    if let (true, Some(r)) = (want_input, &io.stdin) {
        fds.push(pfd(r.as_raw_fd(), libc::POLLIN));
    }
    if let (true, StdoutPipe::Pipe(Some(w))) = (have_output, &io.stdout) {
        fds.push(pfd(w.as_raw_fd(), libc::POLLOUT));
    }
    if let Some(w) = &io.wake {
        fds.push(pfd(w.as_raw_fd(), libc::POLLIN));
    }
    // SAFETY: `fds` is a live array of initialized pollfd of the length given.
    if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).context("poll");
        }
    }
    let woken = fds.last().is_some_and(|f| f.revents != 0);
    if let Some(w) = io.wake.as_mut().filter(|_| woken) {
        // A byte means "look at the kill flag"; EOF means the Handle is gone: stop watching.
        if matches!(nb(w.read(&mut [0u8; 16])), Ok(Some(0)) | Err(_)) {
            io.wake = None;
        }
    }
    Ok(())
}

/// Maps "would block" (and EINTR) to `None`.
fn nb<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// An in-memory remote `cat` with a small window, which answers `WouldBlock` to every third
    /// call, and, like libssh2, sends nothing else until a blocked write is repeated with the
    /// same bytes (it asserts that).
    struct FakeCat {
        calls: usize,
        queue: VecDeque<u8>,
        blocked_write: Option<Vec<u8>>,
        stdin_eof: bool,
        stderr: Vec<u8>,
        never_ends: bool,
        refuses_input: bool,
        aborted: Arc<AtomicBool>,
        always_ready: (PipeReader, PipeWriter),
    }

    const WINDOW: usize = 64 * 1024;

    impl FakeCat {
        fn new() -> FakeCat {
            let (r, mut w) = io::pipe().unwrap();
            w.write_all(b"x").unwrap(); // poll() never sleeps: tests spin instead of waiting
            FakeCat {
                calls: 0,
                queue: VecDeque::new(),
                blocked_write: None,
                stdin_eof: false,
                stderr: Vec::new(),
                never_ends: false,
                refuses_input: false,
                aborted: Arc::new(AtomicBool::new(false)),
                always_ready: (r, w),
            }
        }
        fn again(&mut self) -> bool {
            self.calls += 1;
            self.calls.is_multiple_of(3)
        }
    }

    fn would_block<T>() -> io::Result<T> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    impl Duplex for FakeCat {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.refuses_input {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if let Some(prev) = self.blocked_write.take() {
                assert_eq!(
                    prev, buf,
                    "a blocked write must be repeated with the same bytes"
                );
            }
            if self.again() || self.queue.len() >= WINDOW {
                self.blocked_write = Some(buf.to_vec());
                return would_block();
            }
            let n = buf.len().min(WINDOW - self.queue.len()).min(32 * 1024);
            self.queue.extend(&buf[..n]);
            Ok(n)
        }
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.again() {
                return would_block();
            }
            let n = buf.len().min(self.queue.len());
            for (b, q) in buf.iter_mut().zip(self.queue.drain(..n)) {
                *b = q;
            }
            Ok(n)
        }
        fn read_stderr(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.stderr.len()).min(1000);
            buf[..n].copy_from_slice(&self.stderr[..n]);
            self.stderr.drain(..n);
            Ok(n)
        }
        fn send_eof(&mut self) -> io::Result<()> {
            if self.blocked_write.is_some() || self.again() {
                return would_block();
            }
            self.stdin_eof = true;
            Ok(())
        }
        fn eof(&self) -> bool {
            let input_done = self.stdin_eof || self.refuses_input;
            !self.never_ends && input_done && self.queue.is_empty() && self.stderr.is_empty()
        }
        fn wait_close(&mut self) -> io::Result<()> {
            if self.again() {
                return would_block();
            }
            Ok(())
        }
        fn poll_fd(&self) -> (RawFd, libc::c_short) {
            (self.always_ready.0.as_raw_fd(), libc::POLLIN)
        }
        fn exit(&self) -> io::Result<(i32, Option<String>)> {
            Ok((7, None))
        }
        fn abort(&mut self) {
            self.aborted.store(true, Ordering::SeqCst);
        }
    }

    fn start(mut fake: FakeCat) -> RemoteProcess {
        spawn("fake@host:22".into(), move |io| drive(&mut fake, io)).unwrap()
    }

    fn noise(len: usize) -> Vec<u8> {
        diskdump_agent::testdata::noise(len, 1)
    }

    #[test]
    fn echoes_both_ways_and_keeps_the_stderr_tail() {
        let mut fake = FakeCat::new();
        let text: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        fake.stderr = text.clone();
        let (mut out, mut inp, handle) = start(fake).split();
        let data = noise(4 << 20);
        let sent = data.clone();
        let writer = std::thread::spawn(move || inp.write_all(&sent).unwrap());
        let mut got = Vec::new();
        out.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(
            got == data,
            "echo differs ({} of {} bytes)",
            got.len(),
            data.len()
        );
        let exit = handle.wait().unwrap();
        assert_eq!(exit.status, 7);
        assert_eq!(exit.stderr.as_bytes(), &text[text.len() - STDERR_TAIL..]);
    }

    #[test]
    fn kill_aborts_the_connection() {
        let mut fake = FakeCat::new();
        fake.never_ends = true;
        let aborted = fake.aborted.clone();
        let (_out, _inp, handle) = start(fake).split();
        std::thread::sleep(Duration::from_millis(20));
        handle.kill();
        let e = handle.wait().unwrap_err();
        assert!(
            format!("{e:#}").contains("fake@host:22") && format!("{e:#}").contains("killed"),
            "{e:#}"
        );
        assert!(aborted.load(Ordering::SeqCst));
    }

    #[test]
    fn a_dropped_reader_discards_output() {
        let (out, mut inp, handle) = start(FakeCat::new()).split();
        drop(out);
        inp.write_all(&noise(1 << 20)).unwrap();
        drop(inp);
        assert_eq!(handle.wait().unwrap().status, 7);
    }

    #[test]
    fn input_the_remote_refuses_fails_the_callers_writes() {
        let mut fake = FakeCat::new();
        fake.refuses_input = true;
        let (_out, mut inp, handle) = start(fake).split();
        let e = (0..64)
            .try_for_each(|_| inp.write_all(&noise(1 << 20)))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(handle.wait().unwrap().status, 7);
    }

    #[test]
    fn pending_buffer() {
        let mut p = Pending {
            buf: b"abcdef".to_vec(),
            pos: 0,
        };
        p.consume(2);
        assert_eq!(p.bytes(), b"cdef");
        p.consume(4);
        assert!(p.is_empty() && p.buf.is_empty());
    }
}
