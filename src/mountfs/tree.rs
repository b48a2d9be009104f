//! The mount's directory tree, a pure function of the store's manifest list:
//! `YYYY/MM/DD/<name>.img` for `YYYY/MM/DD/<name>.manifest`, and
//! `legacy/<name>/<n>.img` for Python-era `.blockstore/manifests/<name>/<n>.manifest`
//! (a top-level name that can never be a four-digit year). Plus the inode
//! table that gives each path one number for the life of the mount.

use crate::store::ManifestEntry;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

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

/// Every directory of the tree and its sorted children, as listed at `built`.
#[derive(Debug)]
pub struct Snapshot {
    dirs: HashMap<String, BTreeMap<String, Kind>>,
    pub built: Instant,
    pub images: usize,
}

impl Snapshot {
    /// `built` is when the listing started: the snapshot shows at least every
    /// dump that existed then.
    pub fn build(entries: Vec<ManifestEntry>, built: Instant) -> Snapshot {
        let mut dirs: HashMap<String, BTreeMap<String, Kind>> = HashMap::new();
        dirs.insert(String::new(), BTreeMap::new());
        let images = entries.len();
        for e in entries {
            let path = image_path(&e);
            let mut parts = path.split('/').peekable();
            let mut dir = String::new();
            while let Some(part) = parts.next() {
                let kind = if parts.peek().is_none() {
                    Kind::Image(e.clone())
                } else {
                    Kind::Dir
                };
                let child = join(&dir, part);
                dirs.entry(dir).or_default().insert(part.to_string(), kind);
                dir = child;
            }
        }
        Snapshot {
            dirs,
            built,
            images,
        }
    }

    pub fn children(&self, dir: &str) -> Option<&BTreeMap<String, Kind>> {
        self.dirs.get(dir)
    }

    pub fn child(&self, dir: &str, name: &str) -> Option<&Kind> {
        self.dirs.get(dir)?.get(name)
    }

    pub fn contains(&self, path: &str) -> bool {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        self.child(dir, name).is_some()
    }
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

    /// Retires every known image `snap` no longer has; returns their numbers.
    pub fn retire_missing(&mut self, snap: &Snapshot) -> Vec<Ino> {
        let gone: Vec<(String, Ino)> = self
            .by_path
            .iter()
            .filter(|(path, &ino)| {
                matches!(self.nodes[ino as usize - 1].kind, Kind::Image(_)) && !snap.contains(path)
            })
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (path, _) in &gone {
            self.by_path.remove(path);
        }
        gone.into_iter().map(|(_, ino)| ino).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rel: &str, name: &str, day: Option<&str>) -> ManifestEntry {
        ManifestEntry {
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
        let s = Snapshot::build(vec![d.clone(), l], Instant::now());
        assert_eq!(s.images, 2);
        let root: Vec<_> = s.children("").unwrap().keys().collect();
        assert_eq!(root, ["2026", "legacy"]);
        assert_eq!(s.child("2026/04/24", "a.2.img"), Some(&Kind::Image(d)));
        assert!(s.contains("legacy/box") && s.contains("2026") && !s.contains("2026/05"));
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
        let img = Kind::Image(d.clone());
        let mut ino = Inodes::default();
        let year = ino.ino_for(ROOT, "", "2026", &Kind::Dir);
        let a = ino.ino_for(9, "2026/04/24", "a.img", &img);
        assert_eq!(ino.ino_for(9, "2026/04/24", "a.img", &img), a);
        assert_eq!(ino.get(a).unwrap().path, "2026/04/24/a.img");
        assert_eq!(
            (ino.get(ROOT).unwrap().path.as_str(), ino.get(0).is_none()),
            ("", true)
        );
        let with = Snapshot::build(vec![d], Instant::now());
        assert!(ino.retire_missing(&with).is_empty());
        let without = Snapshot::build(vec![], Instant::now());
        assert_eq!(ino.retire_missing(&without), [a]);
        assert!(ino.get(a).is_some(), "the kernel may still ask about it");
        assert_ne!(ino.ino_for(9, "2026/04/24", "a.img", &img), a);
        assert_eq!(
            ino.ino_for(ROOT, "", "2026", &Kind::Dir),
            year,
            "directories stay"
        );
    }
}
