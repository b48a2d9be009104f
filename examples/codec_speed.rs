//! Per-core speed of the per-block work on a real image: SHA-256, LZ4 frame
//! encode, LZ4 frame decode (what import/dump/restore/mount do per block).
//! Best of several passes, to see through a busy machine.
//!
//!     cargo run --release --example codec_speed -- IMAGE [MiB, default 256]

use diskdump_agent::blockfmt::{decode, Encoder};
use diskdump_agent::{is_zero, Digest};
use std::io::Read;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: codec_speed IMAGE [MiB]");
    let mib: usize = args.next().map_or(256, |s| s.parse().expect("MiB"));
    let mut data = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .take((mib as u64) << 20)
        .read_to_end(&mut data)
        .unwrap();
    let blocks: Vec<&[u8]> = data.chunks(131072).filter(|b| !is_zero(b)).collect();
    let bytes: usize = blocks.iter().map(|b| b.len()).sum();
    let (mut enc, mut frames, mut out) = (Encoder::default(), Vec::new(), Vec::new());
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let rate = |d: Duration| format!("{:7.0} MB/s", bytes as f64 / d.as_secs_f64() / 1e6);
    let sha = best(&mut || {
        for b in &blocks {
            std::hint::black_box(Digest::of(b));
        }
    });
    let mut packed = 0;
    let lz = best(&mut || {
        frames.clear();
        packed = 0;
        for b in &blocks {
            let mut f = Vec::with_capacity(b.len() / 2);
            enc.encode(b, &mut f);
            packed += f.len();
            frames.push(f);
        }
    });
    let un = best(&mut || {
        for f in &frames {
            decode(f, 131072, &mut out).unwrap();
        }
    });
    println!(
        "{} non-zero blocks, {:.1} MiB, lz4 ratio {:.2}",
        blocks.len(),
        bytes as f64 / 1048576.0,
        bytes as f64 / packed as f64
    );
    println!("sha256     {}", rate(sha));
    println!("lz4 encode {}", rate(lz));
    println!("lz4 decode {}", rate(un));
}
