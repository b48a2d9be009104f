//! `.blockstore/config.json`: the store's fixed parameters.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// The parameters a store is created with and every writer must follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub block_size: usize,
    /// The group a shared store gives read access to (`"group": <gid>`);
    /// None (no field, as in every Python 0.1.5 store) is a private store.
    pub group: Option<u32>,
}

/// The smallest block a store takes (O_DIRECT reads need 4 KiB multiples).
pub const MIN_BLOCK_SIZE: usize = 4096;
/// The largest: one limit for the store and the protocol (a block must fit
/// one frame), defined by the protocol.
pub use diskdump_agent::proto::MAX_BLOCK_SIZE;

pub fn check_block_size(bs: usize) -> Result<()> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_multiple_of(4096) {
        bail!("block size {bs} is not a multiple of 4096 between 4 KiB and 16 MiB");
    }
    Ok(())
}

impl StoreConfig {
    /// Parses config.json; unknown keys are allowed (later versions may add some).
    pub fn parse(text: &str, path: &Path) -> Result<StoreConfig> {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let obj = v
            .as_object()
            .with_context(|| format!("{} is not a JSON object", path.display()))?;
        let version = obj.get("version").and_then(Value::as_u64);
        if version != Some(1) {
            bail!(
                "{}: unsupported store version {:?} (this diskdump reads version 1)",
                path.display(),
                obj.get("version")
            );
        }
        match obj.get("hash_algo").and_then(Value::as_str) {
            Some("sha256") | None => {}
            Some(other) => bail!("{}: unsupported hash_algo {other:?}", path.display()),
        }
        let bs = obj
            .get("block_size")
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: missing or invalid block_size", path.display()))?;
        check_block_size(bs as usize).with_context(|| path.display().to_string())?;
        let group = match obj.get("group") {
            None | Some(Value::Null) => None,
            Some(g) => Some(
                g.as_u64()
                    .and_then(|g| u32::try_from(g).ok())
                    .with_context(|| format!("{}: group must be a numeric gid", path.display()))?,
            ),
        };
        Ok(StoreConfig {
            block_size: bs as usize,
            group,
        })
    }

    pub fn render(&self) -> String {
        let mut m = Map::new();
        m.insert("version".into(), 1.into());
        m.insert("block_size".into(), self.block_size.into());
        m.insert("hash_algo".into(), "sha256".into());
        if let Some(g) = self.group {
            m.insert("group".into(), g.into());
        }
        let mut s = serde_json::to_string_pretty(&Value::Object(m)).expect("plain JSON");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_config_and_rejects_garbage() {
        let p = Path::new("config.json");
        let c = StoreConfig::parse(
            r#"{"block_size": 131072, "hash_algo": "sha256", "version": 1}"#,
            p,
        )
        .unwrap();
        assert_eq!((c.block_size, c.group), (131072, None));
        assert_eq!(StoreConfig::parse(&c.render(), p).unwrap(), c);
        assert!(
            !c.render().contains("group"),
            "private stores look as before"
        );
        let shared = StoreConfig {
            group: Some(1234),
            ..c
        };
        assert!(shared.render().contains("\"group\": 1234"));
        assert_eq!(StoreConfig::parse(&shared.render(), p).unwrap(), shared);
        for bad in [
            "",
            "[]",
            "{\"version\": 2, \"block_size\": 131072}",
            "{\"version\": 1}",
            "{\"version\": 1, \"block_size\": 1000}",
            "{\"version\": 1, \"block_size\": 131072, \"hash_algo\": \"md5\"}",
            "{\"version\": 1, \"block_size\": 131072, \"group\": \"staff\"}",
            "{\"version\": 1, \"block_size\": 131072, \"group\": -1}",
        ] {
            assert!(StoreConfig::parse(bad, p).is_err(), "{bad}");
        }
    }
}
