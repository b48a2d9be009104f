//! An object store in memory, for unit tests of what sits above the object
//! layer (and for its own contract tests, which the S3 client passes too).

use super::{ErrorKind, ObjectError, ObjectInfo, ObjectStore};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Default)]
pub struct MemoryObjects {
    objects: Mutex<BTreeMap<String, (Vec<u8>, SystemTime)>>,
}

impl MemoryObjects {
    pub fn new() -> MemoryObjects {
        MemoryObjects::default()
    }

    /// Makes the objects under `prefix` look `by` older (tests of ages).
    pub fn backdate(&self, prefix: &str, by: std::time::Duration) {
        let mut objects = self.objects.lock().expect("objects lock");
        for (k, v) in objects.iter_mut() {
            if k.starts_with(prefix) {
                v.1 -= by;
            }
        }
    }

    fn not_found(op: &'static str, key: &str) -> ObjectError {
        ObjectError {
            op,
            what: format!("mem://{key}"),
            kind: ErrorKind::NotFound,
            detail: "no such object".into(),
        }
    }
}

impl ObjectStore for MemoryObjects {
    fn describe(&self) -> String {
        "mem://".into()
    }

    fn check(&self) -> Result<(), ObjectError> {
        Ok(())
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        let mut objects = self.objects.lock().expect("objects lock");
        objects.insert(key.to_string(), (data.to_vec(), SystemTime::now()));
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let objects = self.objects.lock().expect("objects lock");
        objects
            .get(key)
            .map(|o| o.0.clone())
            .ok_or_else(|| Self::not_found("GET", key))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        let objects = self.objects.lock().expect("objects lock");
        let data = &objects
            .get(key)
            .ok_or_else(|| Self::not_found("GET", key))?
            .0;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        let objects = self.objects.lock().expect("objects lock");
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.0.len() as u64,
                modified: Some(v.1),
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.objects.lock().expect("objects lock").remove(key);
        Ok(())
    }
}

/// The contract every `ObjectStore` keeps; run against memory here and
/// against a real Garage cluster in tests/s3.rs.
pub fn check_contract(s: &dyn ObjectStore, prefix: &str) {
    let k = |n: &str| format!("{prefix}{n}");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    s.put(&k("a/1"), &data).unwrap();
    s.put(&k("a/2"), b"two").unwrap();
    s.put(&k("b/1"), b"").unwrap();
    assert_eq!(s.get(&k("a/1")).unwrap(), data);
    assert_eq!(s.get(&k("b/1")).unwrap(), b"");
    assert_eq!(
        s.get_range(&k("a/1"), 1000, 5000).unwrap(),
        data[1000..6000]
    );
    assert_eq!(
        s.get_range(&k("a/1"), 299_990, 100).unwrap(),
        data[299_990..],
        "a range past the end is cut at the end"
    );
    let listed = s.list(&k("a/")).unwrap();
    let keys: Vec<_> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, [k("a/1"), k("a/2")]);
    assert_eq!(listed[0].size, data.len() as u64);
    let e = s.get(&k("missing")).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    s.put(&k("a/2"), b"replaced").unwrap();
    assert_eq!(s.get(&k("a/2")).unwrap(), b"replaced");
    s.delete(&k("a/2")).unwrap();
    s.delete(&k("a/2")).unwrap(); // idempotent
    assert!(s.get(&k("a/2")).unwrap_err().is_not_found());
    assert_eq!(s.list(&k("")).unwrap().len(), 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_keeps_the_object_store_contract() {
        check_contract(&MemoryObjects::new(), "p/");
    }
}
