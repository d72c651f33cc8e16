//! The process's resident set, for tests that measure what libtorch allocates (invisible to a
//! counting allocator): `/proc/self/status` fields and the peak (`VmHWM`) reset through
//! `/proc/self/clear_refs`; and smooth frames for a model to run on.

use tezipfs::codec::predict::Geometry;
use tezipfs::model::file;

/// A field of `/proc/self/status`, in bytes.
pub fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap() * 1024
}

/// Frees what the allocator holds and resets the peak resident set; returns the resident set.
pub fn reset_peak() -> u64 {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    let before = status_bytes("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs resets VmHWM (Linux 4.0 or later)");
    before
}

/// `n` smooth frames of `geom` with a little noise.
pub fn frames(geom: Geometry, n: usize) -> Vec<Vec<u32>> {
    let mut rng = file::Rng(3);
    let max = geom.mask() as f64;
    (0..n)
        .map(|t| {
            (0..geom.pixels())
                .map(|i| ((max * 0.4 + max * 0.1 * ((i % geom.width) as f64 * 0.05 + t as f64).sin() + max / 50.0 * rng.unit()).clamp(0.0, max)) as u32)
                .collect()
        })
        .collect()
}
