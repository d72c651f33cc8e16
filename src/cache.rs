//! Decoded-frame cache: an LRU of whole files keyed by (blob, slot), bounded by bytes.

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
}

impl Cache {
    pub fn new(budget: u64) -> Cache {
        Cache { inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0, hits: 0, misses: 0 }), budget }
    }

    pub fn get(&self, key: Key) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = g.lru.get(&key).cloned();
        if r.is_some() {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        r
    }

    /// Whether `key` is cached (not counted as a hit or a miss, not made more recent).
    pub fn contains(&self, key: Key) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).lru.contains(&key)
    }

    /// Insert, evicting least recently used entries beyond the budget. An entry larger than the
    /// whole budget is not kept.
    pub fn put(&self, key: Key, value: Arc<Vec<u8>>) {
        let len = value.len() as u64;
        if len > self.budget {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = g.lru.put(key, value) {
            g.bytes -= old.len() as u64;
        }
        g.bytes += len;
        while g.bytes > self.budget {
            match g.lru.pop_lru() {
                Some((_, v)) => g.bytes -= v.len() as u64,
                None => break,
            }
        }
    }

    /// Drop every entry of a blob (it was deleted).
    pub fn forget_blob(&self, blob: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<Key> = g.lru.iter().filter(|(k, _)| k.0 == blob).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some(v) = g.lru.pop(&k) {
                g.bytes -= v.len() as u64;
            }
        }
    }

    /// (bytes held, budget, hits, misses)
    pub fn usage(&self) -> (u64, u64, u64, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.bytes, self.budget, g.hits, g.misses)
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
        assert_eq!(c.usage().0, 0);
    }
}
