//! Property tests (bounded, for CI): the manifest parsers never panic on
//! arbitrary or damaged text, and every valid manifest round-trips.

use diskdump::digest::Digest;
use diskdump::manifest::{Manifest, ManifestHeader};
use proptest::prelude::*;

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        prop::sample::select(vec![4096usize, 65536, 131072, 1 << 20]),
        proptest::collection::vec(any::<[u8; 32]>(), 0..40),
        any::<u64>(),
        "[a-z0-9:/._-]{0,30}",
    )
        .prop_map(|(block_size, hashes, r, source)| {
            let n = hashes.len() as u64;
            // Any size the block count allows: the last block 1..=block_size bytes.
            let total_size = match n {
                0 => 0,
                _ => (n - 1) * block_size as u64 + 1 + r % block_size as u64,
            };
            Manifest {
                source,
                date: "2026-04-24T03:00:12.345678+00:00".into(),
                block_size,
                total_size,
                blocks: hashes.into_iter().map(Digest).collect(),
                new_blocks: None,
            }
        })
}

/// The parser's guarantees for anything it accepts.
fn check_accepted(m: &Manifest) -> Result<(), TestCaseError> {
    let n = m.blocks.len() as u64;
    let bs = m.block_size as u64;
    prop_assert!(bs > 0 && bs <= 16 << 20);
    prop_assert!(m.total_size <= n * bs);
    prop_assert!(n == 0 || m.total_size > (n - 1) * bs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_manifests_round_trip(m in manifest()) {
        let text = m.render();
        let back = Manifest::parse(&text, "m").unwrap();
        prop_assert_eq!(&back, &m);
        let h = ManifestHeader::parse(&text, "m").unwrap();
        prop_assert_eq!(h.size(), Some(m.total_size));
        prop_assert_eq!(h.block_size, m.block_size);
    }

    #[test]
    fn arbitrary_text_never_panics(body in proptest::collection::vec(any::<char>(), 0..600)) {
        let body: String = body.into_iter().collect();
        for text in [body.clone(), format!("# diskdump manifest v1\n{body}\n")] {
            if let Ok(m) = Manifest::parse(&text, "m") {
                check_accepted(&m)?;
            }
            let _ = ManifestHeader::parse(&text, "m");
        }
    }

    #[test]
    fn header_values_of_any_size_are_checked(
        block_size in any::<u64>(),
        total_blocks in any::<u64>(),
        total_size in any::<u64>(),
        hashes in 0usize..4,
    ) {
        let mut text = format!(
            "# diskdump manifest v1\n# block_size: {block_size}\n# total_blocks: {total_blocks}\n# total_size: {total_size}\n"
        );
        for i in 0..hashes {
            text.push_str(&format!("{}\n", Digest([i as u8; 32])));
        }
        if let Ok(m) = Manifest::parse(&text, "m") {
            check_accepted(&m)?;
        }
        if let Ok(h) = ManifestHeader::parse(&text, "m") {
            prop_assert!(h.block_size > 0 && h.block_size <= 16 << 20);
        }
    }

    #[test]
    fn damaged_manifests_never_panic(
        m in manifest(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = m.render().into_bytes();
        for (at, b) in edits {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        if cut % 4 == 0 {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(m) = Manifest::parse(&text, "m") {
            check_accepted(&m)?;
        }
        let _ = ManifestHeader::parse(&text, "m");
    }
}
