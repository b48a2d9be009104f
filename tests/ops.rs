//! Running it every night: restore --salvage, --json of every reporting
//! command, mount's store from --store, completions and man pages.

mod common;

use common::{diskdump, images, sha256_hex};
use serde_json::Value;
use std::path::{Path, PathBuf};

const BS: usize = 131072;

fn block_path(store: &Path, data: &[u8]) -> PathBuf {
    let hex = sha256_hex(data);
    store
        .join(".blockstore")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(format!("{hex}.lz4"))
}

fn json(store: &Path, args: &[&str]) -> (i32, Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let r = diskdump(store, &a);
    let v = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", r.stdout));
    (r.code, v)
}

#[test]
fn salvage_writes_zeros_for_unreadable_blocks_and_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = images::random_bytes(8 * BS, 120);
    let img = dir.path().join("d.img");
    images::write(&img, &data);
    let store = dir.path().join("store");
    diskdump(&store, &["import", img.to_str().unwrap(), "--as", "d"]).ok();
    // Blocks 2 and 3 corrupt, block 6 gone.
    for i in [2, 3] {
        std::fs::write(block_path(&store, &data[i * BS..(i + 1) * BS]), b"garbage").unwrap();
    }
    std::fs::remove_file(block_path(&store, &data[6 * BS..7 * BS])).unwrap();
    let out = dir.path().join("out.img");
    // The default stays strict: an error, no output file.
    let r = diskdump(&store, &["restore", "d", "-o", out.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("block 2"), "{}", r.stderr);
    assert!(!out.exists());
    let r = diskdump(
        &store,
        &["restore", "d", "-o", out.to_str().unwrap(), "--salvage"],
    );
    assert_eq!(r.code, 1, "the damage code: {}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("bad range"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    assert!(
        lines[0].contains(&format!("offset {} length {} (blocks 2-3)", 2 * BS, 2 * BS)),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("(blocks 6-6)") && lines[1].contains("missing"),
        "{}",
        lines[1]
    );
    let mut want = data.clone();
    for i in [2, 3, 6] {
        want[i * BS..(i + 1) * BS].fill(0);
    }
    assert!(
        std::fs::read(&out).unwrap() == want,
        "zeros exactly where blocks were bad"
    );
    let out2 = dir.path().join("out2.img");
    let (code, v) = json(
        &store,
        &["restore", "d", "-o", out2.to_str().unwrap(), "--salvage"],
    );
    assert_eq!(code, 1);
    assert_eq!(v["bad_ranges"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["bad_ranges"][1]["block"], 6);
    assert_eq!(v["bad_ranges"][1]["length"], BS);
    assert_eq!(v["size"], 8 * BS);
    // --json without -o would mix the image into the document: refused.
    let r = diskdump(&store, &["--json", "restore", "d", "--salvage"]).fails();
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn every_reporting_command_prints_one_json_document_with_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (code, v) = json(&store, &["init"]);
    assert_eq!(code, 0);
    for f in ["store", "block_size", "group"] {
        assert!(v.get(f).is_some(), "init: {f} in {v}");
    }
    let img = dir.path().join("a.img");
    images::write(&img, &images::mixed(BS, 6, 100, 121));
    let (_, v) = json(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "h:sda",
            "--date",
            "2026-01-01",
        ],
    );
    for f in [
        "image",
        "manifest",
        "name",
        "size",
        "blocks",
        "blocks_new",
        "blocks_present",
        "blocks_zero",
        "bytes_written",
        "seconds",
    ] {
        assert!(v.get(f).is_some(), "import: {f} in {v}");
    }
    assert_eq!(v["name"], "h-sda");
    json(
        &store,
        &[
            "import",
            img.to_str().unwrap(),
            "--as",
            "h:sda",
            "--date",
            "2026-01-02",
        ],
    );
    let checks: &[(&[&str], &[&str])] = &[
        (
            &["info", "h-sda"],
            &[
                "path",
                "source",
                "date",
                "size",
                "block_size",
                "blocks",
                "unique_blocks",
                "zero_blocks",
                "new_blocks",
                "stored_bytes",
                "shared_bytes",
                "missing_blocks",
            ],
        ),
        (
            &["status"],
            &[
                "store",
                "block_size",
                "group",
                "blocks",
                "stored_bytes",
                "stray_files",
                "dumps",
                "unreadable_dumps",
                "logical_bytes",
                "dedup_ratio",
                "index_blocks",
                "index_files",
                "manifests",
            ],
        ),
        (
            &["verify"],
            &[
                "blocks",
                "stored_bytes",
                "manifests",
                "ok",
                "problems",
                "notes",
            ],
        ),
        (
            &["gc", "--dry-run"],
            &[
                "dry_run",
                "manifests",
                "live_blocks",
                "removed_blocks",
                "removed_bytes",
                "removed_temp_files",
                "young_blocks",
                "running_writers",
                "recovered_blocks",
            ],
        ),
        (
            &["diff", "2026/01/01/h-sda.manifest", "h-sda"],
            &[
                "a",
                "b",
                "block_size",
                "changed_blocks",
                "changed_bytes",
                "ranges",
            ],
        ),
        (
            &["forget", "--keep-last", "5", "--dry-run"],
            &["dry_run", "policy", "groups", "kept", "removed"],
        ),
        (&["protect", "h-sda"], &["paths"]),
    ];
    for (args, fields) in checks {
        let (code, v) = json(&store, args);
        assert_eq!(code, 0, "{args:?}: {v}");
        for f in *fields {
            assert!(v.get(*f).is_some(), "{args:?}: {f} in {v}");
        }
    }
    let (_, v) = json(&store, &["list"]);
    assert_eq!(v.as_array().unwrap().len(), 2);
    for f in [
        "name",
        "date",
        "source",
        "size",
        "path",
        "new_blocks",
        "protected",
        "legacy",
    ] {
        assert!(v[0].get(f).is_some(), "list: {f} in {v}");
    }
    assert_eq!(v[0]["date"], "2026-01-01T00:00:00.000000+00:00");
    let out = dir.path().join("r.img");
    let (_, v) = json(&store, &["restore", "h-sda", "-o", out.to_str().unwrap()]);
    for f in ["manifest", "output", "size", "seconds", "bad_ranges"] {
        assert!(v.get(f).is_some(), "restore: {f} in {v}");
    }
    // Errors stay on stderr: stdout is empty, not half a document.
    let r = diskdump(&store, &["--json", "info", "nosuch"]).fails();
    assert!(
        r.stdout.is_empty() && r.stderr.contains("nosuch"),
        "{}",
        r.stdout
    );
}

#[test]
#[cfg_attr(
    not(have_systemd_analyze),
    ignore = "needs systemd-analyze (Debian: systemd)"
)]
fn the_systemd_units_verify() {
    common::need(common::have("systemd-analyze"), "systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let mut paths = Vec::new();
    for kind in ["service", "timer"] {
        let text = std::fs::read_to_string(units.join(format!("diskdump-dump@.{kind}"))).unwrap();
        if kind == "timer" {
            for key in ["Persistent=true", "RandomizedDelaySec=", "OnCalendar="] {
                assert!(text.contains(key), "{key}");
            }
        } else {
            for key in [
                "Nice=",
                "IOSchedulingClass=",
                "dump --group %i",
                "forget --group %i --prune",
            ] {
                assert!(text.contains(key), "{key}");
            }
        }
        // An instance (the group "nightly") of the template, run by this build.
        let text = text.replace("/usr/local/bin/diskdump", common::bin().to_str().unwrap());
        let p = dir.path().join(format!("diskdump-dump@nightly.{kind}"));
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Warnings (an unknown key, a typo) fail too.
    assert!(err.trim().is_empty(), "{err}");
    // The example config parses and its group resolves.
    let store = dir.path().join("store");
    diskdump(&store, &["init"]).ok();
    let cfg = units.join("config.toml");
    let r = diskdump(
        &store,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "forget",
            "--group",
            "nightly",
            "--dry-run",
        ],
    )
    .ok();
    assert!(
        r.stdout
            .contains("--keep-daily 7 --keep-weekly 4 --keep-monthly 12"),
        "{}",
        r.stdout
    );
}

#[test]
fn completions_man_pages_and_mounts_store_from_store_flag() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef diskdump"),
        ("fish", "complete -c diskdump"),
    ] {
        let r = diskdump(&store, &["completions", shell]).ok();
        assert!(
            r.stdout.contains(marker),
            "{shell}: {}",
            &r.stdout[..200.min(r.stdout.len())]
        );
        assert!(
            r.stdout.contains("forget") && r.stdout.contains("keep-daily"),
            "{shell}"
        );
    }
    let man = dir.path().join("man1");
    let r = diskdump(&store, &["manpages", man.to_str().unwrap()]).ok();
    for page in [
        "diskdump.1",
        "diskdump-forget.1",
        "diskdump-list.1",
        "diskdump-init.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
        assert!(r.stdout.contains(page), "{}", r.stdout);
    }
    assert!(std::fs::read_to_string(man.join("diskdump-forget.1"))
        .unwrap()
        .contains("keep\\-weekly"));
    // mount takes its store from --store (or $DISKDUMP_STORE) like every command.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let r = diskdump(&store, &["mount", mnt.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains(store.to_str().unwrap()) && r.stderr.contains("diskdump init"),
        "{}",
        r.stderr
    );
}
