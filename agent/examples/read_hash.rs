//! How fast the agent reads and hashes a source when the storage side needs
//! nothing (an unchanged next-day dump): `cargo run --release -p
//! diskdump-agent --example read_hash -- IMAGE`. Prints wall seconds and MB/s;
//! drop the page cache first for a cold figure. Used to tune the reader.

use diskdump_agent::agent::run;
use diskdump_agent::args::Args;
use diskdump_agent::proto::{max_frame_len, read_frame, Message, Need};
use std::io::{pipe, Write};
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).expect("usage: read_hash IMAGE");
    let args = Args::new(path);
    let max = max_frame_len(args.block_size);
    let (agent_in, mut to_agent) = pipe().unwrap();
    let (mut from_agent, agent_out) = pipe().unwrap();
    let start = Instant::now();
    let agent = std::thread::spawn(move || run(&args, agent_in, agent_out));
    let mut size = 0;
    while let Some(msg) = read_frame(&mut from_agent, max).expect("a valid frame") {
        match msg {
            Message::Hello(h) => size = h.size,
            Message::Batch(b) => {
                let need = Message::Need(Need {
                    seq: b.seq,
                    count: b.entries.len() as u32,
                    indices: Vec::new(),
                });
                let mut buf = Vec::new();
                need.encode(&mut buf);
                to_agent.write_all(&buf).unwrap();
            }
            Message::Done(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    agent.join().unwrap().expect("the agent succeeds");
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.3} s, {:.0} MB/s", size as f64 / secs / 1e6);
}
