//! Prometheus metrics (`tezipfs mount --metrics ADDR`): the daemon's counters in the text
//! exposition format (version 0.0.4), families named `tezipfs_*`, served at `/metrics` by a small
//! HTTP/1.1 server on its own thread (`metrics/http.rs`). Off by default. Counters are the same
//! atomics `tezipfs stats` reads, so a scrape costs no more than a stats call without the walk
//! of the directory tree. docs/ADMIN.md lists the families; docs/grafana/tezipfs.json plots them.

pub mod http;

use crate::vfs::Vfs;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0];

/// A latency histogram: counts per bucket (not cumulative; summed when rendered), the sum and
/// the count, all atomics (cheap on the hot path).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    /// Sum of the observations in nanoseconds.
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// One family of one sample (no labels) or several (`labels` = `k="v"` text per sample).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Every family, as the text a scrape gets.
pub fn render(vfs: &Vfs) -> String {
    let c = &vfs.counters;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut out = String::with_capacity(8 << 10);
    let one = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| family(out, name, kind, help, &[("", v)]);
    one(
        &mut out,
        "tezipfs_ingested_bytes_total",
        "counter",
        "Bytes written into files (for passthrough writers, what their files grew by).",
        n(&c.ingested_bytes),
    );
    one(&mut out, "tezipfs_compressed_files_total", "counter", "Files compressed into blobs.", n(&c.compressed_files));
    one(&mut out, "tezipfs_compressed_input_bytes_total", "counter", "Bytes of the files compressed.", n(&c.compressed_in));
    one(&mut out, "tezipfs_compressed_output_bytes_total", "counter", "Bytes of the blobs written for them.", n(&c.compressed_out));
    family(
        &mut out,
        "tezipfs_read_bytes_total",
        "counter",
        "Bytes read, by where they came from: staged files, the decoded-frame cache, or decoding.",
        &[("source=\"staged\"", n(&c.read_staged_bytes)), ("source=\"cache\"", n(&c.read_cache_bytes)), ("source=\"decoded\"", n(&c.read_decoded_bytes))],
    );
    let backlog = c.backlog.samples().last().copied();
    one(&mut out, "tezipfs_backlog_files", "gauge", "Files in staging, not yet compressed (sampled every 10 s).", backlog.map_or(0.0, |b| b.files as f64));
    one(&mut out, "tezipfs_backlog_bytes", "gauge", "Space the staged files take (sampled every 10 s).", backlog.map_or(0.0, |b| b.bytes as f64));
    c.compress_seconds.render(&mut out, "tezipfs_compress_seconds", "Time to compress one window (encode, verify, write, commit).");
    c.read_seconds.render(&mut out, "tezipfs_read_seconds", "Time to serve one read request.");
    let cache = vfs.cache.usage();
    one(&mut out, "tezipfs_cache_hits_total", "counter", "Reads of a compressed file served from the decoded-frame cache.", cache.hits as f64);
    one(&mut out, "tezipfs_cache_misses_total", "counter", "Reads of a compressed file that had to decode.", cache.misses as f64);
    one(&mut out, "tezipfs_cache_bytes", "gauge", "Bytes held by the decoded-frame cache.", cache.bytes as f64);
    one(&mut out, "tezipfs_cache_budget_bytes", "gauge", "The decoded-frame cache's own budget (--cache-mib).", cache.budget as f64);
    one(&mut out, "tezipfs_cache_borrowed_bytes", "gauge", "Bytes the cache holds beyond its own budget, from the idle memory budget.", cache.borrowed as f64);
    one(
        &mut out,
        "tezipfs_memory_used_bytes",
        "gauge",
        "Memory held against the budget: the cache, windows being compressed, kept decoders.",
        (vfs.memory.used() + cache.bytes.saturating_sub(cache.borrowed)) as f64,
    );
    one(&mut out, "tezipfs_memory_budget_bytes", "gauge", "The daemon's memory budget (--memory-mib).", vfs.config().memory_budget as f64);
    let errors = n(&c.errors);
    let (compress, read) = (n(&c.compress_errors), n(&c.read_errors));
    family(
        &mut out,
        "tezipfs_errors_total",
        "counter",
        "Errors logged, by kind: a window that failed to compress, a compressed file that failed to read, anything else.",
        &[("kind=\"compress\"", compress), ("kind=\"read\"", read), ("kind=\"other\"", (errors - compress - read).max(0.0))],
    );
    one(&mut out, "tezipfs_corrupt_index_records", "gauge", "Index records found corrupt (their files read EIO).", vfs.index.corrupt_records() as f64);
    let training = c.model_training.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let failed = training.iter().filter(|(_, s)| s.starts_with("failed")).count() as f64;
    family(
        &mut out,
        "tezipfs_model_training_dirs",
        "gauge",
        "Directories under model=auto whose model is being trained, or whose training failed.",
        &[("state=\"training\"", training.len() as f64 - failed), ("state=\"failed\"", failed)],
    );
    one(
        &mut out,
        "tezipfs_carried_windows_total",
        "counter",
        "Windows coded with the choice of predictor and entropy stage of their directory's window before, without a probe.",
        n(&c.carried_windows),
    );
    one(
        &mut out,
        "tezipfs_model_skipped_windows_total",
        "counter",
        "Windows coded without their model because the backlog was over its limit or its states did not fit in the memory budget.",
        n(&c.model_skipped),
    );
    one(
        &mut out,
        "tezipfs_encoded_not_idle_windows_total",
        "counter",
        "Windows encoded at nice 10 instead of idle priority because the backlog was over idle_backlog_mib.",
        n(&c.encoded_not_idle),
    );
    one(&mut out, "tezipfs_rehydrated_files_total", "counter", "Compressed files brought back to staging to be written.", n(&c.rehydrated));
    one(&mut out, "tezipfs_file_syncs_total", "counter", "Files made durable by a close or an fsync.", n(&c.file_syncs));
    one(&mut out, "tezipfs_passthrough_opens_total", "counter", "Opens for writing served by FUSE passthrough.", n(&c.passthrough_opens));
    one(&mut out, "tezipfs_engine_dirs_planned_total", "counter", "Times the engine planned a directory.", n(&c.dirs_planned));
    one(&mut out, "tezipfs_engine_queued_dirs", "gauge", "Directories on the engine's queue.", vfs.work.len() as f64);
    one(&mut out, "tezipfs_uptime_seconds", "gauge", "Seconds since the mount.", vfs.started().elapsed().as_secs_f64());
    family(
        &mut out,
        "tezipfs_build_info",
        "gauge",
        "The build: version and blob format.",
        &[(&format!("version=\"{}\",blob_format=\"{}\"", env!("CARGO_PKG_VERSION"), crate::codec::container::VERSION), 1.0)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(500));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"120\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n") && out.contains("x_count 3\n"), "{out}");
    }
}
