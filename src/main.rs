use std::io::ErrorKind;
use std::process::ExitCode;

fn main() -> ExitCode {
    match diskdump::cli::run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // A closed pipe (restore | head) is the reader's choice, not an error.
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("diskdump: error: {e:#}");
            // Interrupted runs exit like the shell reports a signal: 128 + n.
            match diskdump::signals::received() {
                Some(sig) => ExitCode::from(128 + sig as u8),
                None => ExitCode::from(1),
            }
        }
    }
}
