//! A 3-node Garage cluster on 127.0.0.1 for one test, started and wiped by
//! the project's own script (examples/garage-cluster.sh). Tests that use it
//! carry `#[cfg_attr(not(have_garage), ignore = ...)]` (build.rs).
#![allow(dead_code)]

use diskdump::objstore::{S3Config, S3Location, S3Objects};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/garage-cluster.sh");

/// Clusters running at once in one test binary: each is three servers, and
/// ten at once on two cores made starts time out.
const MAX_CLUSTERS: usize = 3;
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A place among the `MAX_CLUSTERS`, given back on drop.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut n = RUNNING.0.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= MAX_CLUSTERS {
            n = RUNNING.1.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.0.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        RUNNING.1.notify_one();
    }
}

pub struct Garage {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The variables the script exported (AWS_*, DISKDUMP_TEST_BUCKET, ...).
    pub env: Vec<(String, String)>,
    /// Dropped after the cluster is stopped (fields drop after `drop`).
    _slot: Slot,
}

impl Garage {
    pub fn start() -> Garage {
        let slot = Slot::take();
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("cluster");
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .output()
            .expect("run garage-cluster.sh");
        super::need(
            out.status.success(),
            &format!(
                "a Garage cluster (examples/garage-cluster.sh start failed: {})",
                String::from_utf8_lossy(&out.stderr)
            ),
        );
        let env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Garage {
            _tmp: tmp,
            dir,
            env,
            _slot: slot,
        }
    }

    pub fn var(&self, key: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the cluster script exported no {key}"))
    }

    pub fn bucket(&self) -> String {
        self.var("DISKDUMP_TEST_BUCKET")
    }

    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: self.var("AWS_ENDPOINT_URL"),
            region: self.var("AWS_REGION"),
            key_id: self.var("AWS_ACCESS_KEY_ID"),
            secret: self.var("AWS_SECRET_ACCESS_KEY"),
            session_token: None,
        }
    }

    /// The test bucket under `prefix`, with the cluster's key.
    pub fn objects(&self, prefix: &str) -> S3Objects {
        let loc = S3Location::parse(&format!("s3://{}/{prefix}", self.bucket()))
            .expect("an s3 URL")
            .expect("a valid location");
        S3Objects::new(loc, &self.config()).expect("an S3 client")
    }

    /// kill -9 of node `n` (1..3; node 1 serves AWS_ENDPOINT_URL).
    pub fn kill_node(&self, n: u32) {
        let ok = Command::new("bash")
            .arg(SCRIPT)
            .arg("kill")
            .arg(&self.dir)
            .arg(n.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill node {n}");
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
