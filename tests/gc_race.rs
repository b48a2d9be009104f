//! Dumps (imports) and gc racing in a loop, with gcs killed half-way: no
//! import waits for gc, no gc waits for imports, and nothing is lost.

mod common;

use common::{diskdump, images};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BS: usize = 4096;
const TAIL: u64 = 512 << 20;

/// Round `r`, importer `k`: 24 blocks from a pool of 48 shared by all
/// rounds (so imports keep finding blocks "present" that gc may be
/// sweeping) and 4 of its own.
fn image(r: u64, k: u64) -> Vec<u8> {
    let pool = images::random_bytes(48 * BS, 77);
    let mut out = Vec::new();
    for i in 0..24u64 {
        let j = ((r * 7 + k * 13 + i * 5) % 48) as usize;
        out.extend_from_slice(&pool[j * BS..(j + 1) * BS]);
    }
    out.extend(images::random_bytes(4 * BS, 1000 + r * 10 + k));
    out
}

fn manifest_of(store: &Path, name: &str) -> PathBuf {
    common::all_manifests(store)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == format!("{name}.manifest"))
        .unwrap_or_else(|| panic!("no manifest {name}"))
}

fn restores_to(store: &Path, dir: &Path, name: &str, data: &[u8]) {
    let out = dir.join("restored.img");
    let r = diskdump(
        store,
        &["restore", name, "-o", out.to_str().unwrap(), "--force"],
    );
    assert_eq!(r.code, 0, "{name} does not restore: {}", r.stderr);
    let f = std::fs::File::open(&out).unwrap();
    let mut head = vec![0u8; data.len()];
    std::io::Read::read_exact(&mut &f, &mut head).unwrap();
    assert!(head == *data, "{name} restores different bytes");
    assert_eq!(f.metadata().unwrap().len(), TAIL);
}

/// Runs a gc and kills it after a while that varies with `i`; returns how
/// many blocks it left set aside (`.lz4.gc`).
fn killed_gc(store: &Path, i: u64) -> usize {
    let mut c = common::spawn_diskdump(store, &["gc"]);
    std::thread::sleep(Duration::from_millis(100 + (i * 137) % 900));
    common::signal(&c, libc::SIGKILL);
    c.wait().unwrap();
    common::walk(store)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".lz4.gc"))
        .count()
}

#[test]
fn imports_and_gc_race_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let seed = dir.path().join("seed.img");
    images::write(&seed, &image(0, 9));
    diskdump(
        &store,
        &[
            "import",
            seed.to_str().unwrap(),
            "--as",
            "seed",
            "--block-size",
            "4096",
        ],
    )
    .ok();
    const ROUNDS: u64 = 16;
    let done = AtomicBool::new(false);
    // Ageing the store pretends an hour passed; that must not happen in the
    // middle of a gc (its clock would see blocks from "before" it started).
    let quiet = Mutex::new(());
    let (mut import_max, mut gc_max) = (Duration::ZERO, Duration::ZERO);
    let (mut gcs, mut killed, mut removed, mut set_aside) = (0, 0, 0u64, 0);
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    let mut between_rounds = (0, 0);
    /// Stops the gc loop however the import loop ends (a panic included).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let (mut max, mut n, mut k, mut rm) = (Duration::ZERO, 0, 0, 0u64);
            let mut set_aside = 0;
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                i += 1;
                // Start at varying points of the imports' runs.
                std::thread::sleep(Duration::from_millis((i * 211) % 700));
                let _q = quiet.lock().unwrap();
                if i.is_multiple_of(4) {
                    k += 1;
                    set_aside += killed_gc(&store, i);
                    continue;
                }
                let t0 = Instant::now();
                let r = diskdump(&store, &["gc", "--json"]).ok();
                max = max.max(t0.elapsed());
                assert!(!r.stderr.contains("waiting"), "gc waited: {}", r.stderr);
                let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                rm += v["removed_blocks"].as_u64().unwrap();
                n += 1;
            }
            (max, n, k, rm, set_aside)
        });
        let stop = StopOnDrop(&done);
        for r in 0..ROUNDS {
            {
                let _q = quiet.lock().unwrap();
                common::age_store(&store);
                // With no import running (none to defer to), a gc killed
                // while it sets the last round's blocks aside or settles.
                if r % 3 == 1 {
                    between_rounds.0 += 1;
                    between_rounds.1 += killed_gc(&store, r);
                }
            }
            let mut children = Vec::new();
            for k in 0..2 {
                let img = dir.path().join(format!("r{r}-{k}.img"));
                images::write(&img, &image(r, k));
                // A long tail keeps the import running after it was told
                // which pool blocks are present, while gcs come and go.
                images::slow_tail(&img, TAIL);
                let name = format!("r{r}-{k}");
                let t0 = Instant::now();
                let c = common::spawn_diskdump(
                    &store,
                    &["import", img.to_str().unwrap(), "--as", &name],
                );
                children.push((name, c, t0, image(r, k)));
            }
            for (name, c, t0, data) in children {
                let o = c.wait_with_output().unwrap();
                import_max = import_max.max(t0.elapsed());
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(o.status.success(), "{name}: {err}");
                assert!(!err.contains("waiting"), "{name} waited: {err}");
                // Every dump restores to its bytes, read while gcs go on.
                restores_to(&store, dir.path(), &name, &data);
                // Then it is forgotten: the pool blocks it used are
                // unreferenced (and, after the next ageing, old), and the
                // next round's imports are told they are present while gc
                // sweeps. The last round's dumps stay.
                if r + 1 < ROUNDS {
                    std::fs::remove_file(manifest_of(&store, &name)).unwrap();
                } else {
                    kept.push((name, data));
                }
            }
            if r == 0 {
                std::fs::remove_file(manifest_of(&store, "seed")).unwrap();
            }
        }
        drop(stop);
        (gc_max, gcs, killed, removed, set_aside) = gc.join().unwrap();
    });
    let (killed, set_aside) = (killed + between_rounds.0, set_aside + between_rounds.1);
    assert!(gcs > 0 && killed > 0, "{gcs} gcs, {killed} killed");
    assert!(removed > 0, "the gcs removed something");
    // Some gc was killed with blocks set aside (the case worth testing).
    assert!(set_aside > 0, "no killed gc left .gc files");
    // A last gc puts back what a killed one set aside; everything verifies
    // and every surviving dump restores to its bytes.
    let leftovers = common::walk(&store)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".lz4.gc"))
        .count();
    diskdump(&store, &["gc"]).ok();
    diskdump(&store, &["verify"]).ok();
    for (name, data) in &kept {
        restores_to(&store, dir.path(), name, data);
    }
    eprintln!(
        "race: {ROUNDS} rounds of 2 imports; {gcs} gcs ({removed} blocks removed), {killed} killed \
         ({set_aside} .gc files left by them, {leftovers} at the end); longest import {import_max:?}, longest gc {gc_max:?}"
    );
}
