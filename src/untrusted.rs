//! Text from a remote host (agent error frames, stderr, deploy replies) on its way to a
//! terminal, a log or the summary: control characters escaped (no escape sequences, no forged
//! lines) and the length capped, so a hostile remote can neither drive the operator's terminal
//! nor fake rows of the report.

/// Longest remote text shown in one message, in characters (longer text keeps its start).
pub const MAX_SHOWN: usize = 300;

/// `s` with every control character (C0, DEL, C1, and the Unicode bidi/line controls that
/// reorder or break what a terminal shows) escaped as `\n`, `\x1b`, `\u{202e}`..., then capped
/// at [`MAX_SHOWN`] characters with `...` marking the cut.
pub fn escape(s: &str) -> String {
    escape_capped(s, MAX_SHOWN)
}

pub fn escape_capped(s: &str, max: usize) -> String {
    escape_with(s, max, true)
}

/// `backslash`: escape `\` too (remote text); our own lines that may contain already escaped
/// remote text leave it, so it is not escaped twice.
fn escape_with(s: &str, max: usize, backslash: bool) -> String {
    let mut out = String::with_capacity(s.len().min(max + 16));
    for (shown, c) in s.chars().enumerate() {
        if shown >= max {
            out.push_str("...");
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' if backslash => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if is_format_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Unicode characters that change how the rest of a line is displayed.
fn is_format_control(c: char) -> bool {
    matches!(c as u32, 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2069 | 0xfeff)
}

/// Bytes from the remote, as text (invalid UTF-8 replaced), escaped and capped.
pub fn escape_bytes(b: &[u8]) -> String {
    let cut = &b[..b.len().min(MAX_SHOWN * 4)];
    escape(&String::from_utf8_lossy(cut))
}

/// The last non-empty line of remote stderr, escaped and capped.
pub fn last_line(stderr: &str) -> String {
    escape(stderr.trim().lines().last().unwrap_or("").trim())
}

/// The last `n` meaningful lines of remote stderr (not empty, not a banner of `@`), joined
/// with ` | `, escaped and capped.
pub fn last_lines(stderr: &str, n: usize) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('@'))
        .collect();
    escape_capped(
        &lines[lines.len().saturating_sub(n)..].join(" | "),
        2 * MAX_SHOWN,
    )
}

/// One line of our own report that may contain remote text somewhere in an error chain: the
/// same escaping, with a larger cap for our own words around it.
pub fn line(s: &str) -> String {
    escape_with(s, 4 * MAX_SHOWN, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain text: ok"), "plain text: ok");
        assert_eq!(
            escape("a\x1b[2J\x1b]0;title\x07b\nOK row\r\u{9b}31m"),
            "a\\x1b[2J\\x1b]0;title\\x07b\\nOK row\\r\\x9b31m"
        );
        assert_eq!(escape("x\u{202e}y\\"), "x\\u{202e}y\\\\");
        assert_eq!(escape_bytes(b"\xff\x00z"), "\u{fffd}\\x00z");
        assert!(!escape("a\nb").contains('\n'));
    }

    #[test]
    fn length_is_capped() {
        let long = "x".repeat(10_000);
        let e = escape(&long);
        assert_eq!(e.len(), MAX_SHOWN + 3);
        assert!(e.ends_with("..."));
        assert_eq!(line(&long).len(), 4 * MAX_SHOWN + 3);
        assert_eq!(line(&escape("a\x1bb")), "a\\x1bb", "not escaped twice");
        assert_eq!(line("a\x1bb\nc"), "a\\x1bb\\nc");
        assert_eq!(last_line("first\nlast one\n\n"), "last one");
        assert_eq!(last_line(""), "");
        assert_eq!(last_lines("@@@\nWARNING\n@@@\na\n\nb\n", 2), "a | b");
    }
}
