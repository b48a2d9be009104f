use diskdump::cli::exit;
use diskdump::commands::UsageError;
use diskdump::store::StoreBusy;
use std::io::ErrorKind;
use std::process::ExitCode;

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own arena (up to 8 per
    // core), and memory freed into one arena is not reused by the others:
    // the mount daemon (~26 threads, blocks loaded and evicted on different
    // threads) peaked at 590 MiB with a 256 MiB block cache under fio with
    // 16 jobs, 348 MiB with two arenas, 287 MiB with one, at the same IOPS
    // (allocations are per 128 KiB block, rare next to the work on them).
    // Set before any thread starts. See docs/DESIGN.md, memory.
    // A MALLOC_ARENA_MAX in the environment is the user's choice and wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
    match diskdump::cli::run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A closed pipe (status | head) is the reader's choice, not an
            // error: end quietly with success, as `rg | head` does.
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("diskdump: error: {e:#}");
            // Interrupted runs exit like the shell reports a signal: 128 + n.
            if let Some(sig) = diskdump::signals::received() {
                return ExitCode::from(128 + sig as u8);
            }
            let is = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(f);
            if is(&|c| c.is::<UsageError>()) {
                ExitCode::from(exit::USAGE)
            } else if is(&|c| c.is::<StoreBusy>()) {
                ExitCode::from(exit::LOCKED)
            } else {
                ExitCode::from(exit::FAILURE)
            }
        }
    }
}
