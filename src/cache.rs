//! Decoded-frame cache: an LRU of whole files keyed by (blob, slot), bounded by bytes.
//!
//! It has a budget of its own (`--cache-mib`) and may borrow what the daemon's memory budget
//! has idle (`crate::memory`): a reader going again through more frames than its own share
//! holds finds them decoded while no window or decoder needs that memory. Whoever needs it
//! takes it back ([`Cache::give_back`], from `Vfs::reserve_memory`): the least recently used
//! frames beyond the cache's own budget go first.

use crate::memory::{Budget, Grant};
use lru::LruCache;
use std::sync::{Arc, Mutex};

pub type Key = (u64, u32);

pub struct Cache {
    inner: Mutex<Inner>,
    budget: u64,
}

struct Inner {
    lru: LruCache<Key, Arc<Vec<u8>>>,
    bytes: u64,
    hits: u64,
    misses: u64,
    /// What the cache holds beyond `budget`, granted by the daemon's memory budget (none: it
    /// does not borrow).
    borrowed: Option<Grant>,
}

/// What [`Cache::usage`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of decoded files held.
    pub bytes: u64,
    /// The cache's own budget.
    pub budget: u64,
    /// Bytes held beyond it, borrowed from the memory budget (counted there).
    pub borrowed: u64,
    pub hits: u64,
    pub misses: u64,
}

impl Cache {
    /// A cache of `budget` bytes that never holds more.
    pub fn new(budget: u64) -> Cache {
        Cache { inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0, hits: 0, misses: 0, borrowed: None }), budget }
    }

    /// A cache of `budget` bytes that may also hold what `memory` has idle.
    pub fn borrowing(budget: u64, memory: &Arc<Budget>) -> Cache {
        let c = Cache::new(budget);
        c.lock().borrowed = Some(memory.empty_grant());
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: Key) -> Option<Arc<Vec<u8>>> {
        let mut g = self.lock();
        let r = g.lru.get(&key).cloned();
        if r.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        r
    }

    /// The cache's own budget in bytes (what it holds whatever the memory budget has idle).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether `key` is cached (not counted as a hit or a miss, not made more recent).
    pub fn contains(&self, key: Key) -> bool {
        self.lock().lru.contains(&key)
    }

    /// Insert, evicting least recently used entries beyond the budget (and what could be
    /// borrowed). An entry larger than the cache's own budget is not kept.
    pub fn put(&self, key: Key, value: Arc<Vec<u8>>) {
        let len = value.len() as u64;
        if len > self.budget {
            return;
        }
        let mut g = self.lock();
        if let Some(old) = g.lru.put(key, value) {
            g.bytes -= old.len() as u64;
        }
        g.bytes += len;
        let over = g.bytes.saturating_sub(self.budget);
        let lent = g.borrowed.as_ref().map_or(0, Grant::bytes);
        if over > lent {
            if let Some(b) = g.borrowed.as_mut() {
                b.try_grow(over - lent);
            }
        }
        self.trim(&mut g, 0);
    }

    /// Evict least recently used entries until what is held fits the budget plus what is
    /// borrowed less `less`; then give back what is borrowed and no longer held. Returns the bytes
    /// given back.
    fn trim(&self, g: &mut Inner, less: u64) -> u64 {
        let lent = g.borrowed.as_ref().map_or(0, Grant::bytes);
        let limit = self.budget + lent.saturating_sub(less);
        while g.bytes > limit {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len() as u64,
                None => break,
            }
        }
        let over = g.bytes.saturating_sub(self.budget);
        match g.borrowed.as_mut() {
            Some(b) if b.bytes() > over => {
                let back = b.bytes() - over;
                b.shrink(back);
                back
            }
            _ => 0,
        }
    }

    /// Give back up to `bytes` of what the cache borrowed (its least recently used entries
    /// beyond its own budget go); the bytes given back (0: it holds nothing borrowed).
    pub fn give_back(&self, bytes: u64) -> u64 {
        let mut g = self.lock();
        self.trim(&mut g, bytes)
    }

    /// Drop every entry of a blob (it was deleted).
    pub fn forget_blob(&self, blob: u64) {
        let mut g = self.lock();
        let keys: Vec<Key> = g.lru.iter().filter(|(k, _)| k.0 == blob).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(v) = g.lru.pop(&k) {
                g.bytes -= v.len() as u64;
            }
        }
        self.trim(&mut g, 0);
    }

    pub fn usage(&self) -> Usage {
        let g = self.lock();
        Usage { bytes: g.bytes, budget: self.budget, borrowed: g.borrowed.as_ref().map_or(0, Grant::bytes), hits: g.hits, misses: g.misses }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_bytes() {
        let c = Cache::new(10);
        c.put((1, 0), Arc::new(vec![0; 4]));
        c.put((1, 1), Arc::new(vec![0; 4]));
        assert!(c.get((1, 0)).is_some());
        c.put((1, 2), Arc::new(vec![0; 4])); // evicts (1, 1), the least recently used
        assert!(c.get((1, 1)).is_none());
        assert!(c.get((1, 0)).is_some() && c.get((1, 2)).is_some());
        c.put((2, 0), Arc::new(vec![0; 11]));
        assert!(c.get((2, 0)).is_none());
        c.forget_blob(1);
        assert_eq!(c.usage().bytes, 0);
    }

    #[test]
    fn borrows_idle_memory_and_gives_it_back() {
        let memory = Budget::new(20);
        let c = Cache::borrowing(10, &memory);
        for slot in 0..7 {
            c.put((1, slot), Arc::new(vec![0; 4]));
        }
        // 28 bytes: 10 of its own, 18 borrowed.
        assert_eq!((c.usage().bytes, c.usage().borrowed, memory.used()), (28, 18, 18));
        // The memory budget has 2 left: the next entry evicts the oldest instead of borrowing more.
        c.put((1, 7), Arc::new(vec![0; 4]));
        assert!(c.get((1, 0)).is_none() && c.get((1, 7)).is_some());
        assert!(memory.used() <= 20 && c.usage().bytes <= 30);
        // Someone needs 12 bytes: the least recently used entries go.
        let before = c.usage().borrowed;
        let back = c.give_back(12);
        assert!(back >= 12 && c.usage().borrowed == before - back, "{back} of {before}");
        assert!(memory.try_acquire(12).is_some());
        assert!(c.get((1, 7)).is_some(), "the most recent entry stays");
        // Everything borrowed goes back when the entries are forgotten.
        c.forget_blob(1);
        assert_eq!((c.usage().bytes, c.usage().borrowed, memory.used()), (0, 0, 0));
    }
}
