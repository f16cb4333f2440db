//! CONTROL PLANE: admin socket capacity. Read-only and admin peers draw from separate
//! limits, so no number of read-only connections can keep an admin out; when every admin
//! slot is taken, the oldest idle one that is not a `watch` is closed to make room. Peers
//! with no access never get a slot (the accept loop answers and closes them).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// The connections that hold a slot.
#[derive(Debug, Default)]
pub struct Slots {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    held: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    admin: bool,
    watch: bool,
    /// Since when the connection waits for its next command; `None` while one runs.
    idle_since: Option<Instant>,
    /// Cancelled to close the connection (it lost its slot to an admin).
    evict: CancellationToken,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot of the peer's level is busy (for admins: none idle to close).
    Full,
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    /// Cancelled when an admin needed this slot.
    pub evicted: CancellationToken,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a holder panicked between two plain assignments.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a peer of this level, or `Full`. `limit` is the level's limit
    /// (`admin.max_admin_clients` or `admin.max_clients`).
    pub fn acquire(self: &Arc<Self>, admin: bool, limit: usize) -> Result<Slot, Refusal> {
        let mut inner = self.lock();
        let taken = inner.held.iter().filter(|e| e.admin == admin).count();
        if taken >= limit {
            if !admin {
                return Err(Refusal::Full);
            }
            let oldest = inner
                .held
                .iter()
                .enumerate()
                .filter(|(_, e)| e.admin && !e.watch)
                .filter_map(|(i, e)| e.idle_since.map(|t| (i, t)))
                .min_by_key(|&(_, t)| t)
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                return Err(Refusal::Full);
            };
            let gone = inner.held.swap_remove(i);
            gone.evict.cancel();
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let evicted = CancellationToken::new();
        inner.held.push(Entry {
            id,
            admin,
            watch: false,
            idle_since: Some(Instant::now()),
            evict: evicted.clone(),
        });
        Ok(Slot {
            slots: self.clone(),
            id,
            evicted,
        })
    }

    /// How many slots of each level are held: (admin, read-only).
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        let admin = inner.held.iter().filter(|e| e.admin).count();
        (admin, inner.held.len() - admin)
    }

    fn with_entry(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().held.iter_mut().find(|e| e.id == id) {
            f(e);
        }
    }
}

impl Slot {
    /// Waiting for the next command: the slot may be taken for an admin.
    pub fn idle(&self) {
        self.slots
            .with_entry(self.id, |e| e.idle_since = Some(Instant::now()));
    }

    /// A command runs: the slot is not taken away meanwhile.
    pub fn busy(&self) {
        self.slots.with_entry(self.id, |e| e.idle_since = None);
    }

    /// The connection became a `watch` stream: never closed to make room.
    pub fn watching(&self) {
        self.slots.with_entry(self.id, |e| {
            e.watch = true;
            e.idle_since = None;
        });
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if let Some(i) = inner.held.iter().position(|e| e.id == self.id) {
            inner.held.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_peers_cannot_take_admin_slots() {
        let s = Arc::new(Slots::default());
        let ro: Vec<Slot> = (0..2).map(|_| s.acquire(false, 2).unwrap()).collect();
        assert_eq!(s.acquire(false, 2).unwrap_err(), Refusal::Full);
        let admin = s.acquire(true, 1).unwrap();
        assert_eq!(s.held(), (1, 2));
        assert!(ro.iter().all(|r| !r.evicted.is_cancelled()));
        drop(admin);
        assert_eq!(s.held(), (0, 2));
    }

    #[test]
    fn a_full_admin_level_closes_its_oldest_idle_non_watch_slot() {
        let s = Arc::new(Slots::default());
        let watch = s.acquire(true, 3).unwrap();
        watch.watching();
        let old = s.acquire(true, 3).unwrap();
        let newer = s.acquire(true, 3).unwrap();
        newer.idle();
        let third = s.acquire(true, 3).unwrap();
        assert!(old.evicted.is_cancelled(), "the oldest idle one goes");
        assert!(!watch.evicted.is_cancelled() && !newer.evicted.is_cancelled());
        assert_eq!(s.held(), (3, 0));
        drop(old);
        assert_eq!(s.held(), (3, 0), "an evicted slot was already freed");
        // Every admin slot busy or watching: nothing to close.
        newer.busy();
        third.busy();
        assert_eq!(s.acquire(true, 3).unwrap_err(), Refusal::Full);
    }
}
