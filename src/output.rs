//! Where reports go: human text, or with the global `--json` one JSON
//! document on stdout (progress and messages stay on stderr either way).

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether the command should print its report as JSON.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Prints the one JSON document of this run.
pub fn emit(v: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// A message for the operator: stdout in text mode, stderr with `--json`
/// (stdout then carries only the document).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        if $crate::output::json() {
            eprintln!($($arg)*);
        } else {
            // Not println!: a closed stdout must end the run quietly, not panic.
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), $($arg)*);
        }
    };
}
