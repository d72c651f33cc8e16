//! Decoders kept between reads (reading a window in order decodes each frame once), each holding
//! its blob and frame buffers: counted against the daemon's memory budget (`crate::memory`).
//! Making a decoder waits until its bytes fit; at most [`KEEP`] are kept, least recently used
//! first out.

use super::{FsError, FsResult, Vfs};
use crate::codec::Decoder;
use crate::memory::Grant;
use std::sync::Mutex;

/// Decoders kept at most.
const KEEP: usize = 8;

/// A decoder and the memory it holds.
pub(super) struct Kept {
    pub dec: Decoder,
    /// Its blob's bytes.
    _blob: Grant,
    /// Its frame buffers (`Decoder::memory_bytes`).
    _state: Grant,
}

impl Kept {
    /// Whether the decoder can still decode entry `i` (it has not passed it in its chain).
    pub fn reaches(&self, i: usize) -> bool {
        self.dec.chain_position(i).is_none_or(|p| p >= self.dec.position())
    }
}

pub(super) struct Decoders(Mutex<lru::LruCache<u64, Kept>>);

impl Default for Decoders {
    fn default() -> Self {
        Decoders(Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(KEEP).expect("KEEP > 0"))))
    }
}

impl Decoders {
    fn lru(&self) -> std::sync::MutexGuard<'_, lru::LruCache<u64, Kept>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn take(&self, blob: u64) -> Option<Kept> {
        self.lru().pop(&blob)
    }

    /// Keep `kept` for the next read of `blob`, unless it has decoded the last frame of its chain
    /// (no read can use it then; its memory goes back to the budget at once).
    pub fn keep(&self, blob: u64, kept: Kept) {
        if kept.dec.position() >= kept.dec.frame_count() {
            return;
        }
        self.lru().put(blob, kept);
    }

    pub fn forget(&self, blob: u64) {
        self.lru().pop(&blob);
    }

    /// Drop the least recently used decoder (to make room); whether there was one.
    fn drop_oldest(&self) -> bool {
        self.lru().pop_lru().is_some()
    }
}

impl Vfs {
    /// `bytes` of the memory budget: the cache gives back what it borrowed and kept decoders
    /// are dropped to make room, then the caller waits for windows and other decoders to give
    /// theirs back.
    pub(crate) fn reserve_memory(&self, bytes: u64) -> Grant {
        loop {
            if let Some(g) = self.memory.try_acquire(bytes) {
                return g;
            }
            let short = (self.memory.used() + bytes.min(self.memory.total())).saturating_sub(self.memory.total());
            if self.cache.give_back(short.max(1)) > 0 {
                continue;
            }
            if self.decoders.drop_oldest() {
                continue;
            }
            // Decoders in use now may be kept when their reads end: look again soon.
            if let Some(g) = self.memory.acquire_within(bytes, std::time::Duration::from_millis(100)) {
                return g;
            }
        }
    }

    /// `bytes` of the memory budget, room made as [`Self::reserve_memory`] makes it, but waiting
    /// at most `wait`: `None` when they did not come free by then or never could (more than the
    /// whole budget); the caller then does without them.
    pub(crate) fn reserve_memory_within(&self, bytes: u64, wait: std::time::Duration) -> Option<Grant> {
        if bytes > self.memory.total() {
            return None;
        }
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(g) = self.memory.try_acquire(bytes) {
                return Some(g);
            }
            let short = (self.memory.used() + bytes).saturating_sub(self.memory.total());
            if self.cache.give_back(short.max(1)) > 0 || self.decoders.drop_oldest() {
                continue;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            if let Some(g) = self.memory.acquire_within(bytes, left.min(std::time::Duration::from_millis(100))) {
                return Some(g);
            }
        }
    }

    /// A new decoder of `blob`, once its memory fits in the budget (kept decoders are dropped
    /// first to make room): the blob's bytes before it is read, then the frame buffers its
    /// header implies before it decodes.
    pub(super) fn new_decoder(&self, blob: u64) -> FsResult<Kept> {
        let blob_bytes = self.index.blob(blob)?.map_or(0, |b| b.bytes);
        let blob_grant = self.reserve_memory(blob_bytes);
        let bytes = self.store.read_blob(blob)?;
        let dec = Decoder::with_models(bytes.into(), self.models.clone()).map_err(|e| FsError::Corrupt { what: format!("blob {blob}"), why: e.to_string() })?;
        // A decoder larger than the whole budget (a sliced window of huge frames with a learned
        // model's states) takes all of it beside its blob: it waits until nothing else holds
        // any, and does not wait forever for memory its own blob holds.
        let want = dec.memory_bytes();
        let room = self.memory.total().saturating_sub(blob_bytes);
        if want > room {
            tracing::warn!(
                blob,
                bytes = want,
                budget = self.memory.total(),
                "a decoder larger than the memory budget: it takes the whole budget while it decodes"
            );
        }
        let state = self.reserve_memory(want.min(room));
        Ok(Kept { dec, _blob: blob_grant, _state: state })
    }
}
