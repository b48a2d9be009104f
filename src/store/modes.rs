//! Who may read a store (docs/DESIGN.md §1, privacy). A store holds whole disks, so
//! it is private: directories 0700, files 0600, whatever the caller's umask.
//! A store shared with a group (chosen at creation, `"group"` in
//! config.json) is 0750/0640 with that group, and its directories carry the
//! set-group-ID bit so everything created below them gets the group without
//! a `chown` per file.
//!
//! The modes come from the process umask, set once when a store is opened
//! (077 or 027): every `create`/`mkdir` in the process then gets them, with
//! no extra system call per block file.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The umask for a private (None) or group-shared store.
pub fn umask_for(group: Option<u32>) -> u32 {
    match group {
        None => 0o077,
        Some(_) => 0o027,
    }
}

/// Sets the process umask for this store's files.
pub fn apply_umask(group: Option<u32>) {
    // SAFETY: umask only sets the calling process's file mode creation mask.
    unsafe { libc::umask(umask_for(group) as libc::mode_t) };
}

/// Gives a directory this store created to the store's group, set-group-ID
/// (so what is created below inherits the group) and 02750 whatever the
/// umask. Private stores need nothing: the umask made it 0700.
pub fn own_dir(dir: &Path, group: Option<u32>) -> io::Result<()> {
    let Some(gid) = group else { return Ok(()) };
    chown_group(dir, gid)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o2750))
}

fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; uid -1 leaves the owner alone.
    if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resolves `--group NAME` (or a numeric gid) to a gid.
pub fn resolve_group(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    if name.is_empty() || name.contains('\0') {
        bail!("invalid group name {name:?}");
    }
    let c = CString::new(name).context("invalid group name")?;
    // SAFETY: getgrnam returns a pointer into static storage or NULL; it is
    // read at once, before any other call could reuse that storage.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!("no such group {name:?} (see /etc/group)");
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}

/// The permission bits a store path may have beyond its owner's: none for a
/// private store, group read (and search) for a shared one.
pub fn too_wide(mode: u32, group: Option<u32>) -> bool {
    let allowed = match group {
        None => 0,
        Some(_) => 0o050,
    };
    mode & 0o077 & !allowed != 0
}

/// The first store path whose mode lets more users in than the store's
/// choice, with its mode: the directories that guard everything (the block
/// area, every year of dumps) and the two files at the top. Checked by
/// `status` and `verify`, which warn; nothing is changed.
pub fn first_too_wide(root: &Path, group: Option<u32>) -> Option<(String, u32)> {
    let mut paths = vec![
        ".blockstore".to_string(),
        ".blockstore/config.json".into(),
        ".blockstore/lock".into(),
    ];
    if let Ok(rd) = fs::read_dir(root) {
        let mut years: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        years.sort();
        paths.extend(years);
    }
    paths.into_iter().find_map(|rel| {
        let mode = fs::symlink_metadata(root.join(&rel))
            .ok()?
            .permissions()
            .mode();
        too_wide(mode, group).then_some((rel, mode & 0o7777))
    })
}

/// The one-line warning for a store with wider modes, and how to fix it.
pub fn warning(root: &Path, group: Option<u32>) -> Option<String> {
    let (rel, mode) = first_too_wide(root, group)?;
    let r = root.display();
    let fix = match group {
        None => format!("chmod -R go-rwx {r}"),
        Some(_) => format!("chmod -R g-w,o-rwx {r}"),
    };
    let who = match group {
        None => "other users",
        Some(_) => "users outside its group",
    };
    Some(format!(
        "warning: store {r} is open to {who} ({rel} is {mode:04o}); fix it with `{fix}` (README: Privacy)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_group_masks() {
        assert!(!too_wide(0o40700, None));
        assert!(!too_wide(0o100600, None));
        assert!(too_wide(0o40755, None));
        assert!(too_wide(0o100640, None));
        assert!(!too_wide(0o42750, Some(5)));
        assert!(!too_wide(0o100640, Some(5)));
        assert!(too_wide(0o100660, Some(5)), "group write");
        assert!(too_wide(0o100644, Some(5)));
        assert_eq!(umask_for(None), 0o077);
        assert_eq!(umask_for(Some(0)), 0o027);
    }

    #[test]
    fn finds_the_first_wide_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join(".blockstore")).unwrap();
        fs::create_dir_all(root.join("2026/01/01")).unwrap();
        let set = |p: &str, m: u32| {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap()
        };
        set(".blockstore", 0o700);
        set("2026", 0o700);
        assert_eq!(first_too_wide(root, None), None);
        set("2026", 0o755);
        assert_eq!(first_too_wide(root, None), Some(("2026".into(), 0o755)));
        let w = warning(root, None).unwrap();
        assert!(
            w.contains("2026 is 0755") && w.contains("chmod -R go-rwx"),
            "{w}"
        );
        set("2026", 0o750);
        assert_eq!(first_too_wide(root, Some(1)), None);
        assert!(resolve_group("0").unwrap() == 0 && resolve_group("root").unwrap() == 0);
        assert!(resolve_group("no-such-group-here").is_err());
    }
}
