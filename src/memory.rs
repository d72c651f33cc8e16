//! The daemon's memory budget (`tezipfs mount --memory-mib`): one count of the bytes that the
//! big users hold, enforced by admission. The decoded-frame cache has its share (its own byte
//! budget, carved out of this one); a window waits for its estimated working set before it is
//! compressed, and a window too large for the budget is split; a decoder kept between reads
//! (its blob and frame buffers) is kept only while it fits. What is not counted is fixed: the
//! program, libtorch and the index's cache (about 0.5 GiB, measured by `scripts/bench-mount`).

use std::sync::{Arc, Condvar, Mutex};

/// Bytes a window of `n` raw bytes holds while it is compressed: the files, their pixels as
/// 32-bit images, the predictions and residuals, the blob, and the decoded copy that verifies
/// it (measured: 5.8x for 32 frames of 2048x2048 u16 with `tezipfs compress --threads 1`).
pub const WINDOW_FACTOR: u64 = 7;

/// What a decoder holds besides its blob: its frame buffers (previous frames, reconstruction,
/// codes), in frames of the blob's size.
pub const DECODER_FRAMES: u64 = 6;

#[derive(Debug)]
pub struct Budget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes held against a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    pub fn new(total: u64) -> Arc<Budget> {
        Arc::new(Budget { total, used: Mutex::new(0), freed: Condvar::new() })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `bytes` now, if they fit.
    pub fn try_acquire(self: &Arc<Self>, bytes: u64) -> Option<Grant> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if *used + bytes > self.total {
            return None;
        }
        *used += bytes;
        Some(Grant { budget: self.clone(), bytes })
    }

    /// `bytes` if they fit within `wait` (more than the whole budget waits for all of it).
    pub fn acquire_within(self: &Arc<Self>, bytes: u64, wait: std::time::Duration) -> Option<Grant> {
        let bytes = bytes.min(self.total);
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let (mut used, _) = self.freed.wait_timeout_while(used, wait, |u| *u + bytes > self.total).unwrap_or_else(|e| e.into_inner());
        if *used + bytes > self.total {
            return None;
        }
        *used += bytes;
        Some(Grant { budget: self.clone(), bytes })
    }

    /// `bytes`, waiting until they fit; more than the whole budget waits for all of it.
    pub fn acquire(self: &Arc<Self>, bytes: u64) -> Grant {
        let bytes = bytes.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.total {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += bytes;
        Grant { budget: self.clone(), bytes }
    }
}

impl Grant {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        drop(used);
        self.budget.freed.notify_all();
    }
}

/// Split `sizes` (the raw bytes of a window's files, in order) into consecutive runs whose
/// working set ([`WINDOW_FACTOR`] x their bytes) fits in `room`: the whole window when it fits,
/// otherwise the longest runs that do (a file too large alone is a run of its own; it waits for
/// the whole budget).
pub fn split_window(sizes: &[u64], room: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &s) in sizes.iter().enumerate() {
        if i > start && (bytes + s).saturating_mul(WINDOW_FACTOR) > room {
            runs.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grants_are_bounded_and_given_back() {
        let b = Budget::new(100);
        let g = b.try_acquire(60).unwrap();
        assert!(b.try_acquire(50).is_none());
        let h = b.try_acquire(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(g);
        assert_eq!(b.used(), 40);
        // A waiter gets its bytes when another grant is dropped.
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.acquire(90).bytes());
        std::thread::sleep(Duration::from_millis(20));
        drop(h);
        assert_eq!(t.join().unwrap(), 90);
        assert_eq!(b.used(), 0);
        assert_eq!(b.acquire(1000).bytes(), 100, "more than the budget waits for all of it");
    }

    #[test]
    fn windows_are_split_to_fit() {
        assert_eq!(split_window(&[10; 8], 7 * 80), vec![0..8]);
        assert_eq!(split_window(&[10; 8], 7 * 30), vec![0..3, 3..6, 6..8]);
        assert_eq!(split_window(&[10, 100, 10], 7 * 30), vec![0..1, 1..2, 2..3], "a file too large alone is a run of its own");
        assert_eq!(split_window(&[], 100), Vec::<std::ops::Range<usize>>::new());
    }
}
