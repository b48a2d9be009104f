//! The mount's directory tree, a pure function of the store's manifest list:
//! `YYYY/MM/DD/<name>.img` for `YYYY/MM/DD/<name>.manifest`, and
//! `legacy/<name>/<n>.img` for Python-era `.blockstore/manifests/<name>/<n>.manifest`
//! (a top-level name that can never be a four-digit year). Plus the inode
//! table that gives each path one number for the life of the mount.

use crate::store::{ManifestEntry, LEGACY_PREFIX};
use std::collections::{BTreeMap, HashMap};

/// Top-level folder of the Python-era dumps.
pub const LEGACY_DIR: &str = "legacy";

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// What a path in the mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Image(ManifestEntry),
}

/// The mount path (no leading `/`) of a dump's image.
pub fn image_path(e: &ManifestEntry) -> String {
    match &e.day {
        Some(day) => format!("{day}/{}.img", e.name),
        None => format!("{LEGACY_DIR}/{}.img", e.name),
    }
}

pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Whether `name` could exist in `dir` at all, judged by shape alone. A
/// lookup that misses re-reads the store only for such names, so probes for
/// `.git`, `autorun.inf` and the like cost nothing.
pub fn plausible(dir: &str, name: &str) -> bool {
    let digits = |n: usize| name.len() == n && name.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    match parts.as_slice() {
        [] => digits(4) || name == LEGACY_DIR,
        [LEGACY_DIR] => !name.is_empty(),
        [LEGACY_DIR, _] => name.ends_with(".img"),
        [_] | [_, _] => digits(2),
        [_, _, _] => name.ends_with(".img"),
        _ => false,
    }
}

/// Where the manifests behind mount directory `dir` live in the store, as a
/// `Store::manifests_under` prefix.
pub fn store_prefix(dir: &str) -> String {
    match dir.strip_prefix(LEGACY_DIR) {
        _ if dir.is_empty() => String::new(),
        Some("") => LEGACY_PREFIX.into(),
        Some(rest) if rest.starts_with('/') => format!("{LEGACY_PREFIX}{}/", &rest[1..]),
        _ => format!("{dir}/"),
    }
}

/// The sorted children of mount directory `dir`, given (at least) the
/// manifests under its `store_prefix`.
pub fn children(entries: &[ManifestEntry], dir: &str) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    for e in entries {
        let path = image_path(e);
        let rest = match dir {
            "" => Some(path.as_str()),
            _ => path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')),
        };
        let Some(rest) = rest else { continue };
        match rest.split_once('/') {
            Some((sub, _)) => out.insert(sub.to_string(), Kind::Dir),
            None => out.insert(rest.to_string(), Kind::Image(e.clone())),
        };
    }
    out
}

#[derive(Debug, Clone)]
pub struct Node {
    pub path: String,
    pub parent: Ino,
    pub kind: Kind,
}

/// Inode numbers: handed out in order, never reused, so a path keeps its
/// number while it exists. An image that vanishes is retired: if a dump of
/// that name is written again it is another file and gets a new number (the
/// kernel keeps cached pages per inode, which must never show old bytes).
#[derive(Debug)]
pub struct Inodes {
    nodes: Vec<Node>,
    by_path: HashMap<String, Ino>,
}

impl Default for Inodes {
    fn default() -> Self {
        let root = Node {
            path: String::new(),
            parent: ROOT,
            kind: Kind::Dir,
        };
        Inodes {
            nodes: vec![root],
            by_path: HashMap::from([(String::new(), ROOT)]),
        }
    }
}

impl Inodes {
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }

    /// The number of `dir/name`, assigned on first sight.
    pub fn ino_for(&mut self, parent: Ino, dir: &str, name: &str, kind: &Kind) -> Ino {
        let path = join(dir, name);
        if let Some(&ino) = self.by_path.get(&path) {
            return ino;
        }
        self.nodes.push(Node {
            path: path.clone(),
            parent,
            kind: kind.clone(),
        });
        let ino = self.nodes.len() as Ino;
        self.by_path.insert(path, ino);
        ino
    }

    /// Forgets `path`'s number (its dump is gone); returns it.
    pub fn retire(&mut self, path: &str) -> Option<Ino> {
        self.by_path.remove(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rel: &str, name: &str, day: Option<&str>) -> ManifestEntry {
        ManifestEntry {
            id: None,
            rel: rel.into(),
            name: name.into(),
            day: day.map(String::from),
        }
    }

    #[test]
    fn paths_and_shapes() {
        let d = entry("2026/04/24/a.2.manifest", "a.2", Some("2026/04/24"));
        let l = entry(".blockstore/manifests/box/3.manifest", "box/3", None);
        assert_eq!(image_path(&d), "2026/04/24/a.2.img");
        assert_eq!(image_path(&l), "legacy/box/3.img");
        let all = [d.clone(), l];
        let names = |dir| children(&all, dir).into_keys().collect::<Vec<_>>();
        assert_eq!(names(""), ["2026", "legacy"]);
        assert_eq!(names("2026/04"), ["24"]);
        assert_eq!(names("legacy"), ["box"]);
        assert_eq!(names("legacy/box"), ["3.img"]);
        assert!(names("2026/05").is_empty() && names("2026/04/2").is_empty());
        assert_eq!(children(&all, "2026/04/24")["a.2.img"], Kind::Image(d));
        assert_eq!(children(&all, "2026")["04"], Kind::Dir);
        for (dir, prefix) in [
            ("", ""),
            ("2026", "2026/"),
            ("2026/04/24", "2026/04/24/"),
            ("legacy", ".blockstore/manifests/"),
            ("legacy/box", ".blockstore/manifests/box/"),
        ] {
            assert_eq!(store_prefix(dir), prefix);
        }
        for (dir, name, ok) in [
            ("", "2027", true),
            ("", "legacy", true),
            ("", ".git", false),
            ("", "202", false),
            ("2026", "05", true),
            ("2026", "5", false),
            ("2026/05", "01", true),
            ("2026/05/01", "x.img", true),
            ("2026/05/01", "x.manifest", false),
            ("2026/05/01/x.img", "y", false),
            ("legacy", "anything", true),
            ("legacy/box", "4.img", true),
            ("legacy/box", "4", false),
        ] {
            assert_eq!(plausible(dir, name), ok, "{dir:?} {name:?}");
        }
    }

    #[test]
    fn inode_numbers_are_stable_and_retired_images_not_reused() {
        let d = entry("2026/04/24/a.manifest", "a", Some("2026/04/24"));
        let img = Kind::Image(d);
        let mut ino = Inodes::default();
        let year = ino.ino_for(ROOT, "", "2026", &Kind::Dir);
        let a = ino.ino_for(9, "2026/04/24", "a.img", &img);
        assert_eq!(ino.ino_for(9, "2026/04/24", "a.img", &img), a);
        assert_eq!(ino.get(a).unwrap().path, "2026/04/24/a.img");
        assert_eq!(
            (ino.get(ROOT).unwrap().path.as_str(), ino.get(0).is_none()),
            ("", true)
        );
        assert_eq!(ino.retire("2026/04/24/a.img"), Some(a));
        assert!(ino.get(a).is_some(), "the kernel may still ask about it");
        assert_ne!(ino.ino_for(9, "2026/04/24", "a.img", &img), a);
        assert_eq!(ino.ino_for(ROOT, "", "2026", &Kind::Dir), year);
    }
}
