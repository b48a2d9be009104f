//! The S3 store on an in-memory object store: the rules that do not need a
//! real service (tests/s3.rs runs every command on a Garage cluster).

use super::*;
use crate::objstore::MemoryObjects;
use crate::store::{get_block, LiveBlocks};
use crate::testutil::{image, manifest, BS};
use std::path::Path;

fn store(objects: &Arc<MemoryObjects>, cache: &Path) -> S3Store {
    let loc = S3Location::parse("s3://bucket/p").unwrap().unwrap();
    let objects: Arc<dyn ObjectStore> = objects.clone();
    objects
        .put(
            CONFIG,
            StoreConfig {
                block_size: BS,
                group: None,
            }
            .render()
            .as_bytes(),
        )
        .unwrap();
    let mut s = S3Store::open_with(objects, Arc::default(), &loc, Some(cache.into())).unwrap();
    s.pack_target = 8 * BS;
    s
}

fn live_of(s: &S3Store) -> LiveBlocks {
    let mut live = LiveBlocks::default();
    for e in s.manifests().unwrap() {
        live.blocks.extend(s.read_manifest(&e).unwrap().blocks);
        live.manifests += 1;
    }
    live
}

/// Makes every pack look older than the gc's grace period.
fn age(objects: &MemoryObjects) {
    objects.backdate(PACK_KEY_PREFIX, Duration::from_secs(3600));
}

const PACK_KEY_PREFIX: &str = crate::objstore::packed::PACK_PREFIX;

#[test]
fn manifests_round_trip_with_same_day_sequence_and_protection() {
    let objects = Arc::new(MemoryObjects::new());
    let dir = tempfile::tempdir().unwrap();
    let s = store(&objects, dir.path());
    let w = s.begin_writes().unwrap();
    let m = manifest(&s, "2026-04-24", &image());
    let a = s.write_manifest("web", &m).unwrap();
    let b = s.write_manifest("web", &m).unwrap();
    s.end_writes(w).unwrap();
    assert_eq!(a.rel, "2026/04/24/web.manifest");
    assert_eq!(b.rel, "2026/04/24/web+2.manifest");
    assert_eq!(s.manifests().unwrap().len(), 2);
    assert_eq!(s.manifests_under("2026/04/").unwrap().len(), 2);
    assert!(s.manifests_under("2026/05/").unwrap().is_empty());
    assert_eq!(s.find_manifest(&b.rel).unwrap().unwrap().name, "web+2");
    assert_eq!(s.read_manifest(&a).unwrap().blocks, m.blocks);
    assert_eq!(s.manifest_header(&a).unwrap().source, m.source);
    assert_eq!(s.manifest_info(&a).unwrap().total_size, m.total_size);
    s.set_protected(&a, true).unwrap();
    assert!(s.is_protected(&a).unwrap());
    assert!(s.remove_manifest(&a).is_err());
    s.remove_manifest(&b).unwrap();
    assert_eq!(s.manifests().unwrap().len(), 1);
    // Blocks are in packs, not one object each.
    let packs = objects.list(PACK_KEY_PREFIX).unwrap().len();
    assert!((1..=2).contains(&packs), "{packs} packs");
    // Another host opening the store reads everything back.
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = store(&objects, dir2.path());
    let (mut frame, mut raw) = (Vec::new(), Vec::new());
    for (i, d) in m.blocks.iter().enumerate() {
        get_block(&s2, d, &mut frame, &mut raw).unwrap();
        assert_eq!(raw.len(), m.block_len(i));
    }
}

#[test]
fn gc_rewrites_packs_and_keeps_every_live_block() {
    let objects = Arc::new(MemoryObjects::new());
    let dir = tempfile::tempdir().unwrap();
    let s = store(&objects, dir.path());
    let data: Vec<u8> = diskdump_agent::testdata::noise(40 * BS, 7);
    let w = s.begin_writes().unwrap();
    let keep = manifest(&s, "2026-04-24", &data[..20 * BS]);
    let drop_ = manifest(&s, "2026-04-25", &data[20 * BS..]);
    s.write_manifest("keep", &keep).unwrap();
    let gone = s.write_manifest("gone", &drop_).unwrap();
    s.end_writes(w).unwrap();
    s.remove_manifest(&gone).unwrap();
    age(&objects);
    objects.backdate(WRITERS, Duration::from_secs(3600));
    let dry = s
        .collect_garbage(&mut || Ok(live_of(&s)), true, true)
        .unwrap();
    assert_eq!(dry.removed_blocks, 20, "{dry:?}");
    assert!(objects.list(PACK_KEY_PREFIX).unwrap().len() >= 5);
    let before = objects.list(PACK_KEY_PREFIX).unwrap().len();
    let st = s
        .collect_garbage(&mut || Ok(live_of(&s)), false, true)
        .unwrap();
    assert_eq!(st.removed_blocks, 20, "{st:?}");
    assert!(st.packs_deleted > 0, "{st:?}");
    let after = objects.list(PACK_KEY_PREFIX).unwrap().len();
    assert!(after < before, "{before} → {after}");
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = store(&objects, dir2.path());
    let (mut frame, mut raw) = (Vec::new(), Vec::new());
    for d in &keep.blocks {
        get_block(&s2, d, &mut frame, &mut raw).unwrap();
    }
    for d in &drop_.blocks {
        assert!(!s2.contains(d).unwrap());
    }
}

#[test]
fn gc_deletes_nothing_while_a_writer_runs_and_writers_skip_doomed_packs() {
    let objects = Arc::new(MemoryObjects::new());
    let dir = tempfile::tempdir().unwrap();
    let s = store(&objects, dir.path());
    let data: Vec<u8> = diskdump_agent::testdata::noise(16 * BS, 9);
    let w = s.begin_writes().unwrap();
    let m = manifest(&s, "2026-04-24", &data);
    let e = s.write_manifest("a", &m).unwrap();
    s.end_writes(w).unwrap();
    s.remove_manifest(&e).unwrap();
    age(&objects);
    objects.backdate(WRITERS, Duration::from_secs(3600));
    // A second host is dumping (it may have been told these blocks are present).
    let dir2 = tempfile::tempdir().unwrap();
    let other = store(&objects, dir2.path());
    let w2 = other.begin_writes().unwrap();
    assert!(other.contains(&m.blocks[0]).unwrap());
    let st = s
        .collect_garbage(&mut || Ok(live_of(&s)), false, true)
        .unwrap();
    assert_eq!(st.packs_deleted, 0, "{st:?}");
    assert!(st.packs_deferred > 0, "{st:?}");
    let (mut frame, mut raw) = (Vec::new(), Vec::new());
    get_block(&other, &m.blocks[0], &mut frame, &mut raw).unwrap();
    other.write_manifest("b", &m).unwrap();
    other.end_writes(w2).unwrap();
    // A pending deletion makes a new writer store the blocks again.
    let pending: String = objects
        .list(PACK_KEY_PREFIX)
        .unwrap()
        .iter()
        .filter_map(|o| crate::objstore::packed::pack_id(&o.key))
        .map(|d| d.to_hex() + "\n")
        .collect();
    objects.put("gc/pending-x", pending.as_bytes()).unwrap();
    let dir3 = tempfile::tempdir().unwrap();
    let third = store(&objects, dir3.path());
    let w3 = third.begin_writes().unwrap();
    assert!(!third.contains(&m.blocks[0]).unwrap());
    third.end_writes(w3).unwrap();
}

#[test]
fn a_missing_config_or_bucket_is_a_clear_error() {
    let objects: Arc<dyn ObjectStore> = Arc::new(MemoryObjects::new());
    let loc = S3Location::parse("s3://bucket/p").unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = S3Store::open_with(objects, Arc::default(), &loc, Some(dir.path().into()))
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(msg.contains("is not a diskdump store"), "{msg}");
    assert!(msg.contains("diskdump init s3://bucket/p"), "{msg}");
}
