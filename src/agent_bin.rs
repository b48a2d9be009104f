//! The remote agent, built static by `build.rs` and embedded here, so `dump`
//! can upload it to any x86_64 Linux host (docs/DESIGN.md §3.1).

use crate::digest::Digest;
use std::sync::OnceLock;

/// The static `diskdump-agent` executable for x86_64 Linux.
pub static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/diskdump-agent"));

/// SHA-256 of `AGENT` in hex: names the uploaded copy on remote hosts, so a
/// cached agent is reused exactly when it is this one.
pub fn agent_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| Digest::of(AGENT).to_hex()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_a_static_x86_64_elf() {
        assert_eq!(&AGENT[..4], b"\x7fELF");
        assert_eq!(AGENT[4], 2, "ELF64");
        assert_eq!(u16::from_le_bytes([AGENT[18], AGENT[19]]), 62, "x86-64");
        // Static: no program header is PT_INTERP (build.rs checks the same).
        let phoff = u64::from_le_bytes(AGENT[0x20..0x28].try_into().unwrap()) as usize;
        let size = u16::from_le_bytes([AGENT[0x36], AGENT[0x37]]) as usize;
        let count = u16::from_le_bytes([AGENT[0x38], AGENT[0x39]]) as usize;
        for i in 0..count {
            let at = phoff + i * size;
            assert_ne!(u32::from_le_bytes(AGENT[at..at + 4].try_into().unwrap()), 3);
        }
    }

    #[test]
    fn hash_is_the_sha256_of_the_built_agent_file() {
        // Checked against coreutils' sha256sum of the file build.rs left,
        // so a hash of anything but exactly the embedded bytes fails.
        let path = concat!(env!("OUT_DIR"), "/diskdump-agent");
        assert_eq!(std::fs::read(path).unwrap(), AGENT, "embedded = built");
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(agent_hash(), text.split_whitespace().next().unwrap());
    }
}
