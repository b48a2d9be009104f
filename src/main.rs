use diskdump::cli::exit;
use diskdump::commands::UsageError;
use diskdump::store::StoreBusy;
use std::io::ErrorKind;
use std::process::ExitCode;

fn main() -> ExitCode {
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
