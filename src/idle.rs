//! Reads that give up after a stretch of silence: an agent that stalls (a
//! hung disk, a frozen host, a network that drops packets without a reset)
//! must fail its dump with a clear message, not hang it forever.
//!
//! The wait is measured only while the reader is starved: a caller busy with
//! what it already has is not waiting on the peer. Wrap the input below any
//! buffering, so that each `read` here is a wait for new bytes.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// A `Read` over a descriptor that fails with `TimedOut` when nothing arrives
/// for `limit`. `Duration::ZERO` means no limit.
pub struct IdleTimeout<R> {
    inner: R,
    limit: Duration,
    timed_out: bool,
}

impl<R: Read + AsFd> IdleTimeout<R> {
    pub fn new(inner: R, limit: Duration) -> IdleTimeout<R> {
        IdleTimeout {
            inner,
            limit,
            timed_out: false,
        }
    }

    /// Whether a read gave up: the peer went silent.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Waits until the descriptor is readable (or at EOF/error); false after
    /// `limit` (never, for zero). Wakes every 100 ms to notice Ctrl-C, which
    /// fails the read.
    fn wait_readable(&self) -> io::Result<bool> {
        let deadline = (!self.limit.is_zero()).then(|| Instant::now() + self.limit);
        loop {
            if let Some(sig) = crate::signals::received() {
                return Err(io::Error::other(format!("interrupted by signal {sig}")));
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Ok(false);
            }
            let ms = left.min(Duration::from_millis(100)).as_millis().max(1) as i32;
            let mut pfd = libc::pollfd {
                fd: self.inner.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live, initialized pollfd.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                0 => {}
                n if n > 0 => return Ok(true),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl<R: Read + AsFd> Read for IdleTimeout<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !buf.is_empty() && !self.wait_readable()? {
            self.timed_out = true;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no data from the agent for {} s", self.limit.as_secs()),
            ));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_what_arrives_and_times_out_on_silence() {
        let (r, mut w) = io::pipe().unwrap();
        let mut r = IdleTimeout::new(r, Duration::from_millis(200));
        w.write_all(b"abc").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let t0 = Instant::now();
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(r.timed_out());
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t0.elapsed()
        );
        drop(w);
        let mut r = IdleTimeout::new(r.inner, Duration::from_secs(5));
        assert_eq!(r.read(&mut buf).unwrap(), 0, "EOF is not a stall");
        assert!(!r.timed_out());
    }
}
