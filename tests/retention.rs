//! forget, delete, protect, list and diff against the real binary: 40 daily
//! dumps pruned as restic would, with the kept ones restoring identical.

mod common;

use common::{block_files, images, Run};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

const BS: usize = 4096;

/// `diskdump --store STORE ARGS` in UTC, so calendar periods are fixed.
fn ddz(store: &Path, args: &[&str]) -> Run {
    common::ensure_store(store, args);
    let o = Command::new(common::bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn json(r: Run) -> Value {
    let r = r.ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

/// Day `i`'s image: 16 blocks shared by every day, one block only that day has.
fn day_image(i: u64) -> Vec<u8> {
    let mut data = images::random_bytes(16 * BS, 7);
    data.extend(images::random_bytes(BS, 1000 + i));
    data
}

/// The date of day `i`: 2026-01-01 (a Thursday) + i days, 03:00 UTC.
fn day(i: u64) -> String {
    let d = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(i);
    format!("{d}T03:00:00Z")
}

fn import_days(store: &Path, dir: &Path, name: &str, days: std::ops::Range<u64>) {
    for i in days {
        let img = dir.join(format!("{name}-{i}.img"));
        // Each name's days have their own blocks, except "web-sda" and "a".
        let seed = i + if name == "db-sda" { 500 } else { 0 };
        images::write(&img, &day_image(seed));
        let bs = BS.to_string();
        ddz(
            store,
            &[
                "import",
                img.to_str().unwrap(),
                "--as",
                name,
                "--date",
                &day(i),
                "--block-size",
                &bs,
            ],
        )
        .ok();
    }
}

fn dates_of(list: &Value, name: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == name)
        .map(|d| d["date"].as_str().unwrap()[..10].to_string())
        .collect()
}

#[test]
fn forty_daily_dumps_forget_keeps_what_restic_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import_days(&store, dir.path(), "web-sda", 0..40);
    import_days(&store, dir.path(), "db-sda", 0..3);
    let before = ddz(&store, &["list", "--json"]);
    let before = json(before);
    assert_eq!(dates_of(&before, "web-sda").len(), 40);
    let blocks_before = block_files(&store).len();

    // --dry-run reports and changes nothing.
    let keep = ["--keep-daily", "7", "--keep-weekly", "4"];
    let mut args = vec!["forget", "web-sda", "--dry-run", "--json"];
    args.extend(keep);
    let dry = json(ddz(&store, &args));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (dry["kept"].as_u64(), dry["removed"].as_u64()),
        (Some(9), Some(31))
    );
    assert_eq!(json(ddz(&store, &["list", "--json"])), before);

    // As in real life, the dumps being forgotten were written long ago
    // (gc leaves blocks younger than a minute for the next run).
    common::age_store(&store);
    let mut args = vec!["forget", "web-sda", "--prune"];
    args.extend(keep);
    let r = ddz(&store, &args).ok();
    // The text report names each kept dump with the rule that keeps it.
    assert!(
        r.stdout
            .contains("2026/02/08/web-sda.manifest  (daily, weekly)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("2026/01/25/web-sda.manifest  (weekly)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("remove  2026-01-24 03:00  2026/01/24/web-sda.manifest"),
        "{}",
        r.stdout
    );
    // restic's answer: daily Feb 3..9; weekly the newest of ISO weeks 7, 6, 5, 4
    // (Mon Feb 9, Sun Feb 8, Sun Feb 1, Sun Jan 25).
    let after = json(ddz(&store, &["list", "--json"]));
    let mut want = vec!["2026-01-25".to_string(), "2026-02-01".into()];
    want.extend((3..=9).map(|d| format!("2026-02-{d:02}")));
    assert_eq!(dates_of(&after, "web-sda"), want);
    // Other names are untouched.
    assert_eq!(dates_of(&after, "db-sda"), dates_of(&before, "db-sda"));
    // gc freed the 31 blocks only the removed days had (and the zero block
    // import stores, which none of these images uses).
    assert_eq!(block_files(&store).len(), blocks_before - 31 - 1);
    // The kept dumps restore identical.
    for d in after.as_array().unwrap() {
        let path = d["path"].as_str().unwrap();
        let i = (chrono::NaiveDate::parse_from_str(&d["date"].as_str().unwrap()[..10], "%Y-%m-%d")
            .unwrap()
            - chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap())
        .num_days() as u64;
        let i = i + if d["name"] == "db-sda" { 500 } else { 0 };
        let out = dir.path().join("out.img");
        ddz(
            &store,
            &["restore", path, "-o", out.to_str().unwrap(), "--force"],
        )
        .ok();
        assert!(std::fs::read(&out).unwrap() == day_image(i), "{path}");
    }
    ddz(&store, &["verify"]).ok();
}

#[test]
fn protected_dumps_survive_forget_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import_days(&store, dir.path(), "h-sda", 0..4);
    let oldest = "2026/01/01/h-sda.manifest";
    ddz(&store, &["protect", oldest]).ok();
    let r = ddz(&store, &["delete", oldest, "2026/01/02/h-sda.manifest"]).fails();
    assert!(
        r.stderr.contains("protected") && r.stderr.contains("unprotect"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // Nothing was removed: the check comes before any removal.
    assert_eq!(
        dates_of(&json(ddz(&store, &["list", "--json"])), "h-sda").len(),
        4
    );
    let f = json(ddz(&store, &["forget", "--keep-last", "1", "--json"]));
    assert_eq!(f["removed"], 2);
    let list = json(ddz(&store, &["list", "--json"]));
    assert_eq!(dates_of(&list, "h-sda"), ["2026-01-01", "2026-01-04"]);
    assert_eq!(list[0]["protected"], true);
    // A dump name is not a manifest path: delete refuses it.
    let r = ddz(&store, &["delete", "h-sda"]).fails();
    assert!(r.stderr.contains("dump name"), "{}", r.stderr);
    ddz(&store, &["unprotect", oldest]).ok();
    let d = json(ddz(&store, &["delete", oldest, "--json"]));
    assert_eq!(d["paths"][0], oldest);
    assert_eq!(
        dates_of(&json(ddz(&store, &["list", "--json"])), "h-sda"),
        ["2026-01-04"]
    );
    // No rule: refused, nothing removed.
    let r = ddz(&store, &["forget"]).fails();
    assert!(r.stderr.contains("no retention rule"), "{}", r.stderr);
    let r = ddz(&store, &["forget", "nosuch", "--keep-last", "1"]).fails();
    assert!(r.stderr.contains("no dumps named"), "{}", r.stderr);
}

#[test]
fn list_filters_and_diff_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import_days(&store, dir.path(), "a", 0..3);
    let img = dir.path().join("b.img");
    images::write(&img, &day_image(5));
    ddz(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "otherhost:/dev/vdb",
            "--date",
            &day(1),
        ],
    )
    .ok();
    let l = json(ddz(
        &store,
        &[
            "list",
            "--json",
            "--since",
            "2026-01-02",
            "--until",
            "2026-01-02",
        ],
    ));
    assert_eq!(l.as_array().unwrap().len(), 2, "{l}");
    for d in l.as_array().unwrap() {
        for f in ["name", "date", "source", "size", "path", "new_blocks"] {
            assert!(!d[f].is_null(), "{f} in {d}");
        }
    }
    let l = json(ddz(&store, &["list", "--json", "--host", "otherhost"]));
    assert_eq!(l[0]["name"], "otherhost-vdb");
    assert_eq!(l[0]["source"], "otherhost:/dev/vdb");
    assert_eq!(l[0]["size"], 17 * BS);
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(
        json(ddz(&store, &["list", "--json", "a"]))
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // First import: 17 new blocks (plus nothing zero); the next days 1 each.
    let a = json(ddz(&store, &["list", "--json", "a"]));
    assert_eq!(
        (a[0]["new_blocks"].as_u64(), a[1]["new_blocks"].as_u64()),
        (Some(17), Some(1))
    );
    let text = ddz(&store, &["list"]).ok().stdout;
    assert!(text.lines().next().unwrap().starts_with("DATE"), "{text}");
    assert!(text.contains("2026/01/02/otherhost-vdb.manifest"), "{text}");

    // diff: the one differing block is the last one, at 16 * BS.
    let d = json(ddz(
        &store,
        &["diff", "--json", "2026/01/01/a.manifest", "a"],
    ));
    assert_eq!(d["changed_blocks"], 1);
    assert_eq!(d["changed_bytes"], BS);
    assert_eq!(d["ranges"][0]["offset"], 16 * BS);
    assert_eq!(d["ranges"][0]["length"], BS);
    assert_eq!(d["a"]["path"], "2026/01/01/a.manifest");
    let t = ddz(&store, &["diff", "a", "a"]).ok().stdout;
    assert!(t.contains("changed: 0 of 17 blocks"), "{t}");
}

#[test]
fn init_makes_the_only_stores_and_everything_else_refuses_a_non_store() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    images::write(&img, &day_image(1));
    let typo = dir.path().join("stroe");
    // dump and import no longer create a store: a mistyped --store is an error.
    for args in [
        vec!["import", img.to_str().unwrap(), "--as", "a"],
        vec!["dump", "h:/dev/sda"],
        vec!["list"],
        vec!["gc"],
        vec!["forget", "--keep-last", "1"],
    ] {
        let o = Command::new(common::bin())
            .arg("--store")
            .arg(&typo)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains("diskdump init"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!typo.exists(), "{args:?} created {typo:?}");
    }
    // init DIR, or --store DIR init; a second init and a non-empty dir are refused.
    let a = dir.path().join("a");
    let r = json(ddz(&a, &["init", "--block-size", "64K", "--json"]));
    assert_eq!(r["block_size"], 65536);
    let r = ddz(&a, &["init"]).fails();
    assert!(r.stderr.contains("already"), "{}", r.stderr);
    let b = dir.path().join("b");
    let o = Command::new(common::bin())
        .args(["init", b.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let r = ddz(
        &dir.path().join("b"),
        &["import", img.to_str().unwrap(), "--as", "a"],
    )
    .ok();
    assert!(r.stdout.contains("imported"), "{}", r.stdout);
    let r = ddz(dir.path(), &["init"]).fails();
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    // A block size that differs from the store's is refused.
    let r = ddz(
        &a,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "a",
            "--block-size",
            "128K",
        ],
    )
    .fails();
    assert!(r.stderr.contains("block size 65536"), "{}", r.stderr);
    // A Python 0.1.5 store (just its config.json) is a store.
    let py = dir.path().join("py");
    std::fs::create_dir_all(py.join(".blockstore")).unwrap();
    std::fs::write(
        py.join(".blockstore/config.json"),
        r#"{"block_size": 131072, "hash_algo": "sha256", "version": 1}"#,
    )
    .unwrap();
    assert_eq!(json(ddz(&py, &["list", "--json"])), serde_json::json!([]));
}
