//! diskdump: deduplicated disk-image backup. See docs/DESIGN.md for the formats and architecture;
//! in short:
//!
//! - **One store interface** (`store::Store`, opened by `store::open` from a
//!   directory or an `s3://BUCKET/PREFIX` URL): every command, the receiver,
//!   `ImageReader` and the mount use only it. Backends: the directory store
//!   (below), the S3 store (`store::s3`: blocks in 32 MiB pack objects with a
//!   local index and disk cache, manifests as objects, gc by repacking;
//!   objects through `objstore`), and `MemoryStore` for unit tests.
//! - **Store** (`store`): every unique block once, `.blockstore/ab/cd/<sha256>.lz4`
//!   (one LZ4 frame), created with a fixed `block_size` (`config.json`). Puts
//!   are atomic (temp + no-replace rename) and idempotent; reads decode with a
//!   bound of `block_size` and check the SHA-256 against the name. A block is
//!   "present" if the index of present blocks lists it (`store::index`:
//!   sorted digest files a writer adds to after its final `syncfs`; blocks
//!   leave it before they leave the store), else only if its file is a whole
//!   frame (`blockfmt::check_shape`); a broken one is moved aside and stored
//!   again. Writers mark their run in
//!   `.blockstore/dirty/` until their `syncfs`; a run that finds a dead
//!   marker checks every block written since before trusting any (`store::dirty`).
//!   Private by default (0700/0600 through the umask), or shared read-only
//!   with the group config.json names (`store::modes`).
//! - **Manifest** (`manifest`): `YYYY/MM/DD/<name>.manifest`, one hash per
//!   line; a same-day repeat is `<name>+N.manifest` (`+` is not a name
//!   character). Made visible only after its blocks are durable; never
//!   overwritten. Python 0.1.5 manifests under `.blockstore/manifests/` are
//!   read too.
//! - **Locking** (`store::lock`, `store::gc`): dumps and imports never wait
//!   for gc nor gc for them. Writers register (a flocked file whose mtime is
//!   their start) and refresh the mtime of every block they find present on
//!   disk; gc deletes only unreferenced blocks older than
//!   `min(its start, oldest writer's start) - GRACE`, in two phases (set
//!   aside as `.gc`, re-checked, unlinked), nothing while a writer that
//!   answers from the index runs (`gc-active` orders the two), and nothing
//!   if any manifest fails to parse. Only gc excludes gc (`.blockstore/lock`).
//!
//! | operation      | waits for   | may run with      |
//! |----------------|-------------|-------------------|
//! | dump, import   | nothing     | everything        |
//! | gc             | another gc  | dumps, imports, reads |
//! | restore, info, status, verify, mount | nothing | everything (a reader finds set-aside blocks too) |
//!
//! - **Dump** (`receiver`, `agent_bin`, protocol in `diskdump_agent::proto`):
//!   the static agent embedded in this binary reads the source once, hashes
//!   on all cores and announces batches of hashes, a window of them ahead;
//!   the receiver answers each batch with the blocks the store lacks, then
//!   decompresses each one within the block size, checks its SHA-256 and
//!   stores it (`lz4` frames as received). A shared `InFlight` makes a block
//!   announced by several dumps at once cross the wire once. The hash list
//!   goes to a temp file (`manifest::HashSpool`), not memory.
//! - **Reaching hosts** (`transport`, `deploy`, `untrusted`): one small trait runs a
//!   remote command with byte streams and an exit status; the system's OpenSSH client
//!   (`transport::openssh`, default: the user's ssh setup applies exactly) and libssh2
//!   (`ssh`, refusing ssh_config features it cannot honour) implement it. `deploy` starts
//!   the cached agent in one remote command (checked and executed through one descriptor;
//!   `--sudo` runs a root-owned system agent or a root-made copy), uploads it through stdin
//!   when missing, and explains sudo's refusals. Remote text is escaped and capped
//!   (`untrusted`) before it reaches a terminal or the report.
//! - **Reading** (`image`): `ImageReader::read_at` over a manifest, through a
//!   bounded LRU of decompressed blocks; restore and mount share it.
//! - **Mounting** (`mountfs`, `fuse`): `MountFs` is the read-only tree of
//!   images (`YYYY/MM/DD/<name>.img`, `legacy/<name>/<n>.img`) with its
//!   lookups, attributes, reads and hole seeks, tested without the kernel;
//!   `fuse` is the only user of `fuser` and only translates requests.

pub mod agent_bin;
pub mod cli;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod digest;
pub mod fuse;
pub mod idle;
pub mod image;
pub mod manifest;
pub mod mountfs;
pub mod objstore;
pub mod output;
pub mod progress;
pub mod receiver;
pub mod retention;
pub mod signals;
pub mod ssh;
pub mod store;
pub mod target;
#[cfg(test)]
mod testutil;
pub mod transport;
pub mod untrusted;
