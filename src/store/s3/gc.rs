//! gc of an S3 store: packs whose dead fraction is high are rewritten with
//! their live blocks only, then deleted (docs/DESIGN.md §8). The guarantee
//! is the local store's: a block a running writer was told is present is
//! never deleted. How, with no lock shared with writers:
//!
//! - A writer registers (`writers/<id>`, rewritten every HEARTBEAT, "ended"
//!   when done) before it asks about any block, then reads `gc/pending-*`
//!   and stops answering from the packs listed there, then lists the packs.
//! - gc writes the new packs, then `gc/pending-<id>` naming the packs it
//!   will delete, waits SETTLE, and lists the writers. It deletes only if no
//!   writer is running and none ended since just before this gc started
//!   (its manifest could name a block gc counted dead). Otherwise the old
//!   packs stay for a later gc (the new ones merely duplicate them).
//! - A writer that registered after that listing read the pending object
//!   first (the service is read-after-write consistent), so it never counts
//!   a doomed pack's blocks as present.
//!
//! Ages (stale writers, young packs) come from LastModified times: the
//! service's clock, never a host's.

use super::{process_id, Heartbeat, S3Store, STALE};
use crate::digest::Digest;
use crate::objstore::pack::PackBuilder;
use crate::objstore::packed::{pack_id, pack_key, PACK_PREFIX};
use crate::objstore::ObjectStore;
use crate::store::{LiveSet, Store, StoreBusy, SweepStats, GRACE};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

const LOCKS: &str = "gc/lock-";
const PENDING: &str = "gc/pending-";
/// A pack with at least this fraction of dead bytes is rewritten.
const REPACK_DEAD_FRACTION: f64 = 0.2;
/// Between writing the pending list and listing the writers.
const SETTLE: Duration = Duration::from_secs(1);

/// The margin for the service's clock and listings: packs younger than this
/// are left alone, and writers that ended this shortly before gc began count
/// as running. `DISKDUMP_S3_GC_GRACE` (seconds) changes it: the tests race
/// gc against imports within seconds.
fn grace() -> Duration {
    std::env::var("DISKDUMP_S3_GC_GRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(GRACE, Duration::from_secs)
}

/// The packs that gcs are about to delete.
pub(super) fn pending_packs(objects: &dyn ObjectStore) -> Result<HashSet<Digest>> {
    let mut out = HashSet::new();
    for o in objects.list(PENDING)? {
        let text = match objects.get(&o.key) {
            Ok(t) => t,
            Err(e) if e.is_not_found() => continue, // finished meanwhile
            Err(e) => return Err(e.into()),
        };
        out.extend(
            String::from_utf8_lossy(&text)
                .lines()
                .filter_map(Digest::from_hex),
        );
    }
    Ok(out)
}

/// Deletes our gc lock when the gc ends, however it ends.
struct LockObject<'a> {
    objects: &'a dyn ObjectStore,
    key: String,
    _beat: Heartbeat,
}

impl Drop for LockObject<'_> {
    fn drop(&mut self) {
        let _ = self.objects.delete(&self.key);
    }
}

fn is_fresh(t: Option<SystemTime>, now: SystemTime, within: Duration) -> bool {
    t.is_some_and(|t| t + within > now)
}

/// Takes the gc lock: the oldest fresh `gc/lock-*` object wins. Returns the
/// lock and the gc's start by the service's clock.
fn take_lock<'a>(store: &'a S3Store, wait: bool) -> Result<(LockObject<'a>, SystemTime)> {
    let objects = store.objects.as_ref();
    let key = format!("{LOCKS}{}", process_id());
    loop {
        let t0 = store.server_now(&key, "gc\n")?;
        let held = LockObject {
            objects,
            key: key.clone(),
            _beat: Heartbeat::start(store.objects.clone(), key.clone(), "gc\n".into()),
        };
        let mut fresh: Vec<(SystemTime, String)> = objects
            .list(LOCKS)?
            .into_iter()
            .filter(|o| is_fresh(o.modified, t0, STALE))
            .map(|o| (o.modified.expect("fresh has a time"), o.key))
            .collect();
        fresh.sort();
        match fresh.first() {
            Some((_, first)) if *first != key => {
                drop(held);
                if !wait {
                    return Err(StoreBusy(format!(
                        "another gc is running on {} ({first}); try again later or leave out --no-wait",
                        store.describe()
                    ))
                    .into());
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            _ => return Ok((held, t0)),
        }
    }
}

/// A writer's state, read from its registration.
struct Writer {
    key: String,
    modified: Option<SystemTime>,
    ended: bool,
}

fn writers(objects: &dyn ObjectStore) -> Result<Vec<Writer>> {
    let mut out = Vec::new();
    for o in objects.list(super::WRITERS)? {
        let ended = match objects.get(&o.key) {
            Ok(b) => b.starts_with(b"ended"),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(Writer {
            key: o.key,
            modified: o.modified,
            ended,
        });
    }
    Ok(out)
}

/// A writer that may hold "present" answers this gc did not account for:
/// one still running, or one that ended since just before `t0`.
fn blocks_deletion(w: &Writer, t0: SystemTime, now: SystemTime) -> bool {
    if w.ended {
        w.modified.is_none_or(|m| m + grace() > t0)
    } else {
        is_fresh(w.modified, now, STALE)
    }
}

pub(super) fn collect(
    store: &S3Store,
    live: LiveSet<'_>,
    dry_run: bool,
    wait: bool,
) -> Result<SweepStats> {
    let objects = store.objects.as_ref();
    let (_lock, t0) = take_lock(store, wait)?;
    let mut st = SweepStats::default();
    // Registrations of writers that ended well before this gc, or died, go.
    for w in writers(objects)? {
        if blocks_deletion(&w, t0, t0) {
            st.running_writers += usize::from(!w.ended);
        } else if !dry_run {
            objects.delete(&w.key)?;
        }
    }
    if !dry_run {
        // An earlier gc's pending list that it did not act on: recomputed here.
        for o in objects.list(PENDING)? {
            objects.delete(&o.key)?;
        }
    }
    let blocks = store.blocks()?;
    blocks.refresh()?;
    let live = live()?.blocks;
    let listed: HashMap<Digest, (u64, Option<SystemTime>)> = objects
        .list(PACK_PREFIX)?
        .into_iter()
        .filter_map(|o| Some((pack_id(&o.key)?, (o.size, o.modified))))
        .collect();
    let bad: HashSet<(Digest, Digest)> = store.bad_copies()?.into_iter().collect();
    // Which packs to rewrite: old enough, and enough of them dead. Counts
    // are of distinct blocks (a block two hosts uploaded is in two packs).
    let mut candidates: Vec<Digest> = Vec::new();
    let (mut live_seen, mut young, mut removed) = (HashSet::new(), HashSet::new(), HashSet::new());
    let packs = blocks.packs();
    for (id, p) in &packs {
        let Some((size, modified)) = listed.get(id) else {
            continue; // deleted meanwhile
        };
        let old = modified.is_some_and(|m| m + grace() <= t0);
        let (mut dead, mut dead_blocks, mut live_blocks) = (0u64, 0u64, 0u64);
        for e in p.entries.iter() {
            if live.contains(&e.digest) && !bad.contains(&(e.digest, *id)) {
                live_blocks += 1;
                live_seen.insert(e.digest);
            } else {
                dead += u64::from(e.len);
                dead_blocks += 1;
            }
        }
        let dead_digests = p
            .entries
            .iter()
            .filter(|e| !live.contains(&e.digest))
            .map(|e| e.digest);
        if !old {
            young.extend(dead_digests);
            continue;
        }
        if dead_blocks > 0
            && (live_blocks == 0 || dead as f64 >= REPACK_DEAD_FRACTION * *size as f64)
        {
            candidates.push(*id);
            removed.extend(dead_digests);
            st.removed_bytes += dead;
            st.packs_deleted += 1;
            st.packs_rewritten += u64::from(live_blocks > 0);
        }
    }
    st.live_blocks = live_seen.len() as u64;
    st.removed_blocks = removed.len() as u64;
    st.young_blocks = young.difference(&removed).count() as u64;
    if dry_run || candidates.is_empty() {
        return Ok(st);
    }
    // Live blocks of the candidates that no other pack holds are copied.
    let doomed: HashSet<Digest> = candidates.iter().copied().collect();
    let mut kept: HashSet<Digest> = HashSet::new();
    for (id, p) in &packs {
        if !doomed.contains(id) && listed.contains_key(id) {
            kept.extend(
                p.entries
                    .iter()
                    .filter(|e| !bad.contains(&(e.digest, *id)))
                    .map(|e| e.digest),
            );
        }
    }
    let by_id: HashMap<Digest, &crate::objstore::packed::PackInfo> =
        packs.iter().map(|(id, p)| (*id, p)).collect();
    let mut builder = PackBuilder::new();
    let mut keep_packs: HashSet<Digest> = HashSet::new();
    let (mut raw, bs) = (Vec::new(), store.config.block_size);
    for id in &candidates {
        crate::signals::check()?;
        let p = by_id[id];
        let wanted: Vec<_> = p
            .entries
            .iter()
            .filter(|e| live.contains(&e.digest) && !kept.contains(&e.digest))
            .filter(|e| !bad.contains(&(e.digest, *id)))
            .copied()
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let data = objects.get(&pack_key(id))?;
        for e in wanted {
            let s = e.offset as usize;
            let Some(frame) = data.get(s..s + e.len as usize) else {
                keep_packs.insert(*id);
                st.damaged_blocks += 1;
                continue;
            };
            // Copy only what checks out: a damaged block is not spread, and
            // its pack stays (the only copy, for inspection or salvage).
            let ok = diskdump_agent::blockfmt::decode(frame, bs, &mut raw).is_ok()
                && Digest::of(&raw) == e.digest;
            if !ok {
                keep_packs.insert(*id);
                st.damaged_blocks += 1;
                continue;
            }
            builder.push(e.digest, frame);
            kept.insert(e.digest);
            if builder.frames_len() >= store.pack_target {
                upload(objects, std::mem::take(&mut builder))?;
            }
        }
    }
    upload(objects, builder)?;
    let doomed: Vec<Digest> = candidates
        .into_iter()
        .filter(|id| !keep_packs.contains(id))
        .collect();
    st.packs_deleted = doomed.len() as u64;
    let pending_key = format!("{PENDING}{}", process_id());
    let list: String = doomed.iter().map(|d| d.to_hex() + "\n").collect();
    store.server_now(&pending_key, &list)?;
    std::thread::sleep(SETTLE);
    let now = store.server_now(&pending_key, &list)?;
    let running = writers(objects)?
        .iter()
        .filter(|w| blocks_deletion(w, t0, now))
        .count();
    if running > 0 {
        objects.delete(&pending_key)?;
        st.running_writers = st.running_writers.max(running);
        st.packs_deferred = st.packs_deleted;
        st.packs_deleted = 0;
        st.removed_blocks = 0;
        st.removed_bytes = 0;
        return Ok(st);
    }
    for id in &doomed {
        crate::signals::check()?;
        objects
            .delete(&pack_key(id))
            .with_context(|| format!("cannot delete pack {id}"))?;
        blocks.forget_pack(id);
    }
    objects.delete(&pending_key)?;
    // Damage records of packs that are gone are done with.
    for (d, p) in &bad {
        if doomed.contains(p) {
            objects.delete(&format!("{}{}-{}", super::BAD, d.to_hex(), p.to_hex()))?;
        }
    }
    blocks.refresh()?;
    Ok(st)
}

fn upload(objects: &dyn ObjectStore, builder: PackBuilder) -> Result<()> {
    if builder.count() == 0 {
        return Ok(());
    }
    let (bytes, _) = builder.finish();
    objects.put(&pack_key(&Digest::of(&bytes)), &bytes)?;
    Ok(())
}
