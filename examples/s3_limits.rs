//! The object store's own speed on this machine, without diskdump's work:
//! PUT `COUNT` objects of `SIZE` bytes with `THREADS` at once, then GET them
//! back in 4 MiB ranges with `THREADS` at once (what a restore asks for).
//! The "limits" rows of examples/bench-s3.sh.
//!
//!     cargo run --release --example s3_limits -- s3://BUCKET/PREFIX COUNT SIZE THREADS
//!
//! Credentials and endpoint from the AWS_* variables, as diskdump.

use anyhow::{anyhow, Result};
use diskdump::objstore::{ObjectStore, S3Config, S3Location, S3Objects};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [url, count, size, threads] = a.as_slice() else {
        return Err(anyhow!(
            "usage: s3_limits s3://BUCKET/PREFIX COUNT SIZE THREADS"
        ));
    };
    let loc = S3Location::parse(url)
        .ok_or_else(|| anyhow!("not an s3:// URL"))?
        .map_err(anyhow::Error::msg)?;
    let s3 = S3Objects::new(loc, &S3Config::from_env().map_err(anyhow::Error::msg)?)
        .map_err(anyhow::Error::msg)?;
    let (count, size, threads): (usize, usize, usize) = (
        count.parse()?,
        diskdump::cli::parse_size(size).map_err(anyhow::Error::msg)?,
        threads.parse()?,
    );
    // Incompressible, like LZ4 frames, and different in every object:
    // Garage stores a block it already has only once, so PUTting the same
    // bytes again would measure its dedup, not its write path.
    let data: Vec<Vec<u8>> = (0..count)
        .map(|i| diskdump_agent::testdata::noise(size, 7 + i as u64))
        .collect();
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                s3.put(&format!("limits/{i}"), &data[i]).expect("PUT");
            });
        }
    });
    let put = t.elapsed().as_secs_f64();
    let keys: Vec<String> = s3.list("limits/")?.into_iter().map(|o| o.key).collect();
    let ranges: Vec<(String, u64)> = keys
        .iter()
        .flat_map(|k| {
            (0..size as u64)
                .step_by(4 << 20)
                .map(move |o| (k.clone(), o))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while let Some((k, o)) = ranges.get(next.fetch_add(1, Ordering::Relaxed)) {
                    s3.get_range(k, *o, 4 << 20).expect("GET");
                }
            });
        }
    });
    let get = t.elapsed().as_secs_f64();
    let total = (keys.len() * size) as f64 / 1e6;
    println!(
        "PUT {} x {} B with {threads} threads: {put:.2} s ({:.0} MB/s); GET in 4 MiB ranges: {get:.2} s ({:.0} MB/s)",
        keys.len(),
        size,
        total / put,
        total / get
    );
    for k in keys {
        s3.delete(&k)?;
    }
    Ok(())
}
