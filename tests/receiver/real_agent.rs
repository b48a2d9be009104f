//! The real static agent (the bytes `diskdump` embeds) against `receive()`.

use crate::support::*;
use diskdump::digest::Digest;
use diskdump::receiver::{InFlight, ReceiveStats};
use std::io::Write;
use std::sync::Mutex;

const ARGS: [&str; 6] = ["--block-size", "4096", "--batch-size", "4", "--window", "3"];

fn write_image(data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    f
}

#[test]
fn round_trip_in_every_compression_then_a_redump_requests_nothing() {
    let img = image(BS, 61, 1000);
    let file = write_image(&img);
    for mode in ["lz4", "zlib", "none"] {
        let (_dir, store) = new_store(BS);
        let inflight = InFlight::new();
        let args = [&ARGS[..], &["--compress", mode]].concat();
        let (r, status, stderr) = dump(&store, &inflight, file.path(), &args);
        let got = r.unwrap_or_else(|e| panic!("{mode}: {e:#}\nagent: {stderr}"));
        assert!(status.success(), "{mode}: agent {status}: {stderr}");
        let m = &got.full_manifest().unwrap();
        assert_eq!(
            (m.block_size, m.total_size, m.blocks.len()),
            (BS, img.len() as u64, 62)
        );
        assert_eq!(m.source, "testhost:/dev/test");
        assert_eq!(restore(&store, &m.blocks), img, "{mode}");
        let zero = Digest::zero_block(BS);
        assert_eq!(m.blocks.iter().filter(|d| **d == zero).count(), 10);
        let s = &got.stats;
        let unique = verify_all(&store);
        // Every distinct non-zero block was fetched once, plus the zero block
        // the receiver stored itself.
        assert_eq!(s.blocks_new as usize + 1, unique, "{mode}: {s:?}");
        // Repeats count as deduped while their first copy is on its way, as
        // present once it has landed.
        let repeats = s.blocks_deduped + s.blocks_present;
        assert_eq!(
            (s.blocks_zero, repeats, s.blocks_new),
            (10, 27, 25),
            "{mode}: {s:?}"
        );
        assert_eq!(
            (s.size, s.bytes_read, s.blocks),
            (img.len() as u64, img.len() as u64, 62)
        );
        assert!(s.wire_bytes > 0 && s.bytes_written > 0);
        assert!(inflight.is_empty());

        let (r, status, _) = dump(&store, &inflight, file.path(), &args);
        let again = r.unwrap();
        assert!(status.success());
        assert_eq!(again.full_manifest().unwrap().blocks, m.blocks);
        let s = &again.stats;
        assert_eq!(
            (s.blocks_new, s.blocks_deduped, s.bytes_written),
            (0, 0, 0),
            "{mode}"
        );
        assert_eq!(s.blocks_present + s.blocks_zero, 62);
        // Hello, 16 batches of hashes and Done: about 40 bytes per block.
        assert!(
            s.wire_bytes < 62 * 40 + 500,
            "{mode}: {} bytes",
            s.wire_bytes
        );
    }
}

#[test]
fn default_block_size_and_a_ragged_zero_tail() {
    let bs = 131072;
    let mut img = image(bs, 9, 0);
    img.extend(vec![0u8; 5000]); // a short all-zero block is hashed, not flagged
    let file = write_image(&img);
    let (_dir, store) = new_store(bs);
    let (r, status, stderr) = dump(&store, &InFlight::new(), file.path(), &[]);
    let got = r.unwrap_or_else(|e| panic!("{e:#}\nagent: {stderr}"));
    assert!(status.success());
    assert_eq!(got.hello.block_size as usize, bs);
    let m = got.full_manifest().unwrap();
    assert_eq!(m.blocks.len(), 10);
    assert_eq!(m.blocks[9], Digest::of(&[0u8; 5000]));
    assert_eq!(restore(&store, &m.blocks), img);
    verify_all(&store);
}

#[test]
fn an_empty_source_gives_an_empty_manifest() {
    let file = write_image(b"");
    let (_dir, store) = new_store(BS);
    let (r, status, _) = dump(&store, &InFlight::new(), file.path(), &ARGS);
    let got = r.unwrap();
    assert!(status.success());
    assert_eq!((got.manifest.total_size, got.hashes.len()), (0, 0));
}

#[test]
fn a_missing_source_is_an_error_naming_it() {
    let (_dir, store) = new_store(BS);
    let path = std::path::Path::new("/nonexistent/dev/sdz");
    let (r, status, stderr) = dump(&store, &InFlight::new(), path, &ARGS);
    let err = format!("{:#}", r.unwrap_err());
    assert!(
        err.contains("/nonexistent/dev/sdz") && err.contains("agent"),
        "{err}"
    );
    assert!(!status.success());
    assert!(stderr.contains("/nonexistent/dev/sdz"), "{stderr}");
    assert_eq!(verify_all(&store), 0);
}

#[test]
fn a_block_size_other_than_the_stores_is_refused() {
    let file = write_image(&image(BS, 4, 0));
    let (_dir, store) = new_store(2 * BS);
    let (r, _, _) = dump(&store, &InFlight::new(), file.path(), &ARGS);
    let err = format!("{:#}", r.unwrap_err());
    assert!(
        err.contains("blocks of 4096 bytes") && err.contains("8192"),
        "{err}"
    );
}

#[test]
fn progress_is_reported_per_batch_and_at_the_end() {
    let img = image(BS, 21, 0);
    let file = write_image(&img);
    let (_dir, store) = new_store(BS);
    let seen = Mutex::new(Vec::<ReceiveStats>::new());
    let progress = |s: &ReceiveStats| seen.lock().unwrap().push(s.clone());
    let (r, _, _) = dump_with_progress(&store, &InFlight::new(), file.path(), &ARGS, &progress);
    let got = r.unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 6 + 1, "6 batches of 4, then the final report");
    assert_eq!(seen.last(), Some(&got.stats));
    let read: Vec<u64> = seen.iter().map(|s| s.bytes_read).collect();
    assert!(read.windows(2).all(|w| w[0] <= w[1]), "{read:?}");
    assert_eq!(read[0], 4 * BS as u64);
    assert_eq!(got.stats.bytes_read, img.len() as u64);
}
