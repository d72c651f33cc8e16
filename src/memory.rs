//! The daemon's memory budget (`tezipfs mount --memory-mib`): one count of the bytes that the
//! big users hold, enforced by admission. The decoded-frame cache has its share (its own byte
//! budget, carved out of this one); a window waits for its estimated working set before it is
//! compressed, and a window too large for the budget is split; a decoder kept between reads
//! (its blob and frame buffers) is kept only while it fits. A window coded with a learned model
//! is charged its model's states apart, once the model is known (`codec::window::
//! model_window_bytes`, reserved in `engine::compress`; coded without the model when they do not
//! fit). What is not counted is fixed: the
//! program, libtorch and the index's cache (about 0.5 GiB, measured by `scripts/bench-mount`).

use std::sync::{Arc, Condvar, Mutex};

/// What a window's compression holds besides its files, measured (one and two threads; u8,
/// u16, f32; 8 to 24 frames; sliced and not: `tests/decoder_memory.rs`): per pixel of each frame,
/// its planes (32-bit pixels, reconstruction, codes, the decoded copy that verifies the blob):
/// 7-9 B; per pixel of one frame, the probe's candidates: 43-54 B lossless, 229 B under a bound
/// (about 310 since each bounded candidate also keeps the tree stage's image of its frames).
/// The probe of a sliced frame looks at one slice, so at most `slices::DEFAULT_SLICE_PIXELS`.
const WINDOW_BYTES_PER_FRAME_PIXEL: u64 = 10;
const PROBE_BYTES_PER_PIXEL_LOSSLESS: u64 = 64;
const PROBE_BYTES_PER_PIXEL_BOUNDED: u64 = 336;

/// Bytes a window of files of `sizes` bytes holds while it is compressed, when its pixels are
/// `pixel_bytes` bytes each (`None`: not known before the files are parsed; counted as bytes,
/// the most pixels a file can hold).
pub fn window_bytes(sizes: &[u64], pixel_bytes: Option<usize>, lossless: bool) -> u64 {
    let px = pixel_bytes.unwrap_or(1).max(1) as u64;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let probe = if lossless { PROBE_BYTES_PER_PIXEL_LOSSLESS } else { PROBE_BYTES_PER_PIXEL_BOUNDED };
    let frames: u64 = sizes.iter().map(|&s| s.saturating_add((s / px).saturating_mul(WINDOW_BYTES_PER_FRAME_PIXEL))).fold(0, u64::saturating_add);
    frames.saturating_add((largest / px).min(crate::codec::slices::DEFAULT_SLICE_PIXELS as u64).saturating_mul(probe))
}

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

    /// `bytes` more now, if they fit (never waits).
    pub fn try_grow(&mut self, bytes: u64) -> bool {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        if *used + bytes > self.budget.total {
            return false;
        }
        *used += bytes;
        self.bytes += bytes;
        true
    }

    /// Give `bytes` of it back (at most all of it).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= bytes;
        self.bytes -= bytes;
        drop(used);
        self.budget.freed.notify_all();
    }
}

impl Budget {
    /// A grant of nothing, to grow later ([`Grant::try_grow`]).
    pub fn empty_grant(self: &Arc<Self>) -> Grant {
        Grant { budget: self.clone(), bytes: 0 }
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
/// working set ([`window_bytes`]) fits in `room`: the whole window when it fits, otherwise the
/// longest runs that do (a file too large alone is a run of its own; it waits for the whole
/// budget).
pub fn split_window(sizes: &[u64], pixel_bytes: Option<usize>, lossless: bool, room: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 0..sizes.len() {
        if i > start && window_bytes(&sizes[start..=i], pixel_bytes, lossless) > room {
            runs.push(start..i);
            start = i;
        }
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
    fn window_bytes_follow_the_pixels_and_the_bound() {
        // 8 frames of 1000 u16 pixels: 8 x (2000 + 10 x 1000) + 64 x 1000 lossless.
        assert_eq!(window_bytes(&[2000; 8], Some(2), true), 8 * 12_000 + 64_000);
        assert_eq!(window_bytes(&[2000; 8], Some(2), false), 8 * 12_000 + 336_000);
        assert_eq!(window_bytes(&[2000; 8], None, true), window_bytes(&[2000; 8], Some(1), true), "unknown pixels count as bytes");
        // The probe of a frame larger than a slice looks at one slice.
        let big = 4 * crate::codec::slices::DEFAULT_SLICE_PIXELS as u64;
        assert_eq!(window_bytes(&[big], Some(1), true), big * 11 + 64 * big / 4);
        assert_eq!(window_bytes(&[], Some(1), true), 0);
    }

    #[test]
    fn grants_grow_and_shrink_within_the_budget() {
        let b = Budget::new(100);
        let mut g = b.empty_grant();
        assert!(g.try_grow(70));
        assert!(!g.try_grow(40), "beyond the budget");
        assert_eq!(b.used(), 70);
        g.shrink(50);
        assert_eq!((g.bytes(), b.used()), (20, 20));
        g.shrink(1000);
        assert_eq!((g.bytes(), b.used()), (0, 0));
    }

    #[test]
    fn windows_are_split_to_fit() {
        // A file of 10 u8 pixels costs 110 B, the probe 640 B lossless.
        assert_eq!(split_window(&[10; 8], Some(1), true, 8 * 110 + 640), vec![0..8]);
        assert_eq!(split_window(&[10; 8], Some(1), true, 3 * 110 + 640), vec![0..3, 3..6, 6..8]);
        assert_eq!(split_window(&[10, 100, 10], Some(1), true, 2 * 110 + 640), vec![0..1, 1..2, 2..3], "a file too large alone is a run of its own");
        assert_eq!(split_window(&[], Some(1), true, 100), Vec::<std::ops::Range<usize>>::new());
    }
}
