//! Blocks being fetched right now, shared by every receiver writing into one
//! store: a new block announced by several dumps (or twice by one) is
//! requested from one agent only; the others wait for it to land.

use crate::digest::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Which dump is fetching which block. Share one (e.g. in an `Arc`) between
/// all receivers of a store; entries live only while a block is on its way.
#[derive(Default)]
pub struct InFlight {
    fetching: Mutex<HashMap<Digest, u64>>,
    /// Signalled whenever blocks leave `fetching`.
    landed: Condvar,
    next_owner: AtomicU64,
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// Blocks currently being fetched (by any dump).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Digest, u64>> {
        // The map stays consistent even if a holder panicked: each operation
        // is a single insert or remove.
        self.fetching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh identity for one dump's claims.
    pub(super) fn new_owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn is_busy(&self, d: &Digest) -> bool {
        self.map().contains_key(d)
    }

    /// Claims `d` for `owner`; false if some dump (maybe `owner`) already has.
    pub(super) fn try_claim(&self, d: Digest, owner: u64) -> bool {
        let mut map = self.map();
        if map.contains_key(&d) {
            return false;
        }
        map.insert(d, owner);
        true
    }

    /// `owner` has stored `d`.
    pub(super) fn finish(&self, d: &Digest, owner: u64) {
        let mut map = self.map();
        if map.get(d) == Some(&owner) {
            map.remove(d);
            drop(map);
            self.landed.notify_all();
        }
    }

    /// Drops every claim `owner` still holds (its dump ended, maybe failed).
    pub(super) fn release_all(&self, owner: u64) {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, o| *o != owner);
        if map.len() != before {
            drop(map);
            self.landed.notify_all();
        }
    }

    /// Waits until nobody is fetching `d`: it has landed, or its fetch failed.
    pub(super) fn wait_idle(&self, d: &Digest) {
        let mut map = self.map();
        while map.contains_key(d) {
            map = self.landed.wait(map).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Releases a dump's remaining claims when it ends, however it ends.
pub(super) struct Claims<'a> {
    pub inflight: &'a InFlight,
    pub owner: u64,
}

impl<'a> Claims<'a> {
    pub fn new(inflight: &'a InFlight) -> Claims<'a> {
        Claims {
            inflight,
            owner: inflight.new_owner(),
        }
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        self.inflight.release_all(self.owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn claims_are_exclusive_and_released() {
        let f = InFlight::new();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let one = Claims::new(&f);
        let two = Claims::new(&f);
        assert!(f.try_claim(a, one.owner));
        assert!(!f.try_claim(a, two.owner));
        assert!(!f.try_claim(a, one.owner));
        assert!(f.try_claim(b, one.owner));
        f.finish(&a, two.owner); // not the owner: no effect
        assert!(f.is_busy(&a));
        f.finish(&a, one.owner);
        assert!(!f.is_busy(&a));
        drop(one);
        assert!(f.is_empty());
        drop(two);
    }

    #[test]
    fn waiters_wake_when_the_block_lands_or_the_owner_gives_up() {
        let f = InFlight::new();
        let d = Digest::of(b"x");
        for finish in [true, false] {
            let owner = Claims::new(&f);
            assert!(f.try_claim(d, owner.owner));
            std::thread::scope(|s| {
                let waiter = s.spawn(|| f.wait_idle(&d));
                std::thread::sleep(Duration::from_millis(20));
                assert!(!waiter.is_finished());
                if finish {
                    f.finish(&d, owner.owner);
                } else {
                    f.release_all(owner.owner);
                }
                waiter.join().unwrap();
            });
        }
    }
}
