//! `stats`: logical and stored bytes per directory, files by state, backlog, throughput,
//! errors. Served as the `user.tezip.stats` attribute of a directory, so the CLI needs no
//! channel to the daemon but the mount itself.

use super::{FsResult, Vfs};
use crate::index::{Data, Kind};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// How long the backlog history reaches back.
pub const BACKLOG_KEEP_SECS: u64 = 3600;
/// The engine samples the backlog this often.
pub const BACKLOG_SAMPLE_SECS: u64 = 10;
/// The most bytes an extended attribute's value may have (Linux's XATTR_SIZE_MAX): what
/// `user.tezip.stats` must fit in, however many directories a store has.
pub const XATTR_SIZE_MAX: usize = 65536;

/// Files waiting in staging at one moment (staged files and the space they take).
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogSample {
    pub unix_secs: u64,
    pub files: u64,
    pub bytes: u64,
}

/// The backlog over the last [`BACKLOG_KEEP_SECS`], for `stats --html` (at most one sample per
/// [`BACKLOG_SAMPLE_SECS`]: 360 samples).
#[derive(Default)]
pub struct BacklogHistory(Mutex<VecDeque<BacklogSample>>);

impl BacklogHistory {
    pub fn record(&self, s: BacklogSample) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.back().is_some_and(|l| l.unix_secs + BACKLOG_SAMPLE_SECS > s.unix_secs) {
            h.pop_back();
        }
        h.push_back(s);
        while h.front().is_some_and(|f| f.unix_secs + BACKLOG_KEEP_SECS < s.unix_secs) {
            h.pop_front();
        }
    }

    pub fn samples(&self) -> Vec<BacklogSample> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct DirStats {
    pub path: String,
    pub files: u64,
    pub staged: u64,
    pub compressed: u64,
    pub stored_whole: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub ratio: f64,
}

#[derive(Serialize, Debug, Default)]
pub struct Stats {
    /// The directory asked about, and its subdirectories (each with its own subtree totals).
    pub directories: Vec<DirStats>,
    /// Subdirectories left out of `directories` so that the stats fit in one attribute value
    /// ([`XATTR_SIZE_MAX`]): the smallest subtrees go first; their bytes are still in the totals
    /// of the directories above them. Ask about a subdirectory to see its own.
    pub directories_omitted: u64,
    pub backlog_files: u64,
    pub backlog_bytes: u64,
    pub staging_bytes: u64,
    pub staging_budget: u64,
    pub staging_over_budget: bool,
    pub compressed_files: u64,
    pub compress_input_bytes: u64,
    pub compress_output_bytes: u64,
    pub compress_mb_per_s: f64,
    pub rehydrated_files: u64,
    /// Opens for writing served by FUSE passthrough since the mount.
    pub passthrough_opens: u64,
    /// Files made durable by a close or an fsync since the mount (S13, S50).
    pub file_syncs: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Index records found corrupt since the mount (their files read EIO; see the log).
    pub corrupt_index_records: u64,
    pub index_bytes_on_disk: u64,
    pub blob_bytes: u64,
    pub cache_bytes: u64,
    /// The cache's own budget (`--cache-mib`), and what it holds beyond it, borrowed from the
    /// idle memory budget (given back when windows or decoders need it).
    pub cache_budget: u64,
    pub cache_borrowed: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// The daemon's memory budget (`--memory-mib`) and what is held against it: the cache, the
    /// windows being compressed and the kept decoders.
    pub memory_budget: u64,
    pub memory_used: u64,
    /// Where learned models run.
    pub model_device: String,
    /// Windows coded without their model because the backlog was over its limit or its
    /// states did not fit in the memory budget.
    pub model_skipped_windows: u64,
    /// Windows encoded at nice 10 instead of idle priority because the backlog was over
    /// `idle_backlog_mib` (compression was behind).
    pub encoded_not_idle_windows: u64,
    /// Windows coded with the choice (predictor, entropy stage) of their directory's window
    /// before, without a probe.
    pub carried_windows: u64,
    /// Directories whose model is being trained (`model=auto`), or whose training failed.
    pub model_training: Vec<serde_json::Value>,
    /// Files in staging (and their space on disk) over the last hour, oldest first.
    pub backlog_history: Vec<BacklogSample>,
    /// Directories on the engine's queue (waiting for a quiet period, a short tail, a retry).
    pub engine_queued_dirs: u64,
    /// Times the engine planned a directory since the mount (it looks at a directory only when
    /// an event or a due time says so: this stays still on an idle mount).
    pub engine_dirs_planned: u64,
}

impl Stats {
    /// The stats as compact JSON of at most `max` bytes: subdirectories are left out, smallest
    /// subtree first (never the directory asked about), then the oldest backlog samples, until
    /// they fit.
    pub fn to_json_within(mut self, max: usize) -> Vec<u8> {
        let json = |s: &Stats| serde_json::to_vec(s).unwrap_or_default();
        let mut out = json(&self);
        if out.len() <= max {
            return out;
        }
        // What each subdirectory's entry takes (with its comma), and the room the count of
        // omitted ones may need.
        let sizes: Vec<usize> = self.directories.iter().map(|d| serde_json::to_vec(d).map_or(0, |v| v.len()) + 1).collect();
        let mut order: Vec<usize> = (1..self.directories.len()).collect();
        order.sort_by_key(|&i| (self.directories[i].logical_bytes, self.directories[i].files));
        let mut over = out.len() + 20 - max.min(out.len() + 20);
        let mut drop = vec![false; self.directories.len()];
        for i in order {
            if over == 0 {
                break;
            }
            drop[i] = true;
            over = over.saturating_sub(sizes[i]);
        }
        let omitted = drop.iter().filter(|&&d| d).count() as u64;
        let mut k = 0;
        self.directories.retain(|_| {
            k += 1;
            !drop[k - 1]
        });
        self.directories_omitted += omitted;
        out = json(&self);
        while out.len() > max && !self.backlog_history.is_empty() {
            let n = self.backlog_history.len().div_ceil(4);
            self.backlog_history.drain(..n);
            out = json(&self);
        }
        out
    }
}

impl Vfs {
    /// Totals of the subtree below `dir` (and of each directory in it).
    fn walk(&self, dir: u64, path: String, out: &mut Vec<DirStats>, backlog: &mut (u64, u64)) -> FsResult<DirStats> {
        let mut s = DirStats { path: path.clone(), ..Default::default() };
        let slot = out.len();
        out.push(DirStats::default());
        for (name, ino, kind) in self.index.dirents(dir)? {
            match kind {
                Kind::Dir => {
                    let sub = self.walk(ino, format!("{}/{}", path.trim_end_matches('/'), String::from_utf8_lossy(&name)), out, backlog)?;
                    s.files += sub.files;
                    s.staged += sub.staged;
                    s.compressed += sub.compressed;
                    s.stored_whole += sub.stored_whole;
                    s.logical_bytes += sub.logical_bytes;
                    s.stored_bytes += sub.stored_bytes;
                }
                Kind::File => {
                    let i = match self.index.inode(ino) {
                        Ok(Some(i)) => i,
                        Ok(None) => continue,
                        Err(e) => {
                            // Counted in `corrupt_index_records`; the other files are still reported.
                            self.index.note_corrupt(&crate::index::keys::inode(ino), &e);
                            continue;
                        }
                    };
                    s.files += 1;
                    s.logical_bytes += i.size;
                    match i.data {
                        Data::Compressed { stored, frame, .. } => {
                            s.stored_bytes += stored;
                            if frame {
                                s.compressed += 1
                            } else {
                                s.stored_whole += 1
                            }
                        }
                        _ => {
                            s.staged += 1;
                            s.stored_bytes += i.size;
                            backlog.0 += 1;
                            backlog.1 += i.size;
                        }
                    }
                }
                _ => {}
            }
        }
        s.ratio = if s.stored_bytes > 0 { s.logical_bytes as f64 / s.stored_bytes as f64 } else { 1.0 };
        out[slot] = s.clone();
        Ok(s)
    }

    pub fn stats(&self, dir: u64) -> FsResult<Stats> {
        let mut dirs = Vec::new();
        let mut backlog = (0, 0);
        self.walk(dir, "/".into(), &mut dirs, &mut backlog)?;
        let c = &self.counters;
        let nanos = c.compress_nanos.load(Ordering::Relaxed);
        let input = c.compressed_in.load(Ordering::Relaxed);
        let staging = self.store.staging_usage().1;
        let cache = self.cache.usage();
        Ok(Stats {
            directories: dirs,
            directories_omitted: 0,
            backlog_files: backlog.0,
            backlog_bytes: backlog.1,
            staging_bytes: staging,
            staging_budget: self.config.staging_budget,
            staging_over_budget: staging > self.config.staging_budget,
            compressed_files: c.compressed_files.load(Ordering::Relaxed),
            compress_input_bytes: input,
            compress_output_bytes: c.compressed_out.load(Ordering::Relaxed),
            compress_mb_per_s: if nanos > 0 { input as f64 / 1e6 / (nanos as f64 / 1e9) } else { 0.0 },
            rehydrated_files: c.rehydrated.load(Ordering::Relaxed),
            passthrough_opens: c.passthrough_opens.load(Ordering::Relaxed),
            file_syncs: c.file_syncs.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            last_error: c.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            corrupt_index_records: self.index.corrupt_records() as u64,
            index_bytes_on_disk: self.index.store().size_on_disk().unwrap_or(0),
            blob_bytes: self.store.bytes_in("blobs"),
            cache_bytes: cache.bytes,
            cache_budget: cache.budget,
            cache_borrowed: cache.borrowed,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            memory_budget: self.config.memory_budget,
            // What the cache borrowed is counted in the budget's use already.
            memory_used: self.memory.used() + cache.bytes.saturating_sub(cache.borrowed),
            model_device: match self.config.model_backend {
                crate::model::Backend::Torch(d) => d.device().map(|d| format!("{d:?}")).unwrap_or_else(|e| e),
                crate::model::Backend::Reference => "reference (CPU)".into(),
            },
            model_skipped_windows: c.model_skipped.load(Ordering::Relaxed),
            encoded_not_idle_windows: c.encoded_not_idle.load(Ordering::Relaxed),
            carried_windows: c.carried_windows.load(Ordering::Relaxed),
            model_training: c
                .model_training
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(d, s)| serde_json::json!({"dir": d, "status": s}))
                .collect(),
            backlog_history: c.backlog.samples(),
            engine_queued_dirs: self.work.len() as u64,
            engine_dirs_planned: c.dirs_planned.load(Ordering::Relaxed),
        })
    }

    /// Re-code the compressed files directly in `dir` (not below it: subdirectories have their
    /// own models) under today's policy.
    pub fn request_recompress_files(&self, dir: u64) -> FsResult<()> {
        let mut n = 0;
        for (_, ino, kind) in self.index.dirents(dir)? {
            if kind == Kind::File && self.index.inode(ino)?.is_some_and(|i| matches!(i.data, Data::Compressed { .. })) {
                self.rehydrate(ino)?;
                n += 1;
            }
        }
        tracing::info!(dir, files = n, "files returned to staging to be coded again with the directory's model");
        Ok(())
    }

    /// Re-code the compressed files below `dir` under today's policy: they go back to staging
    /// and the engine compresses them again.
    pub fn request_recompress(&self, dir: u64) -> FsResult<()> {
        let mut n = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for (_, ino, kind) in self.index.dirents(d)? {
                match kind {
                    Kind::Dir => stack.push(ino),
                    Kind::File => {
                        if let Some(i) = self.index.inode(ino)? {
                            if matches!(i.data, Data::Compressed { .. }) {
                                self.rehydrate(ino)?;
                                n += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        tracing::info!(dir, files = n, "recompress: files returned to staging for re-coding");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str, files: u64) -> DirStats {
        DirStats { path: path.into(), files, logical_bytes: files * 4608, stored_bytes: files * 1500, ratio: 3.07, ..Default::default() }
    }

    #[test]
    fn stats_of_many_directories_fit_in_one_attribute_value() {
        let h = BacklogHistory::default();
        for t in 0..=BACKLOG_KEEP_SECS / BACKLOG_SAMPLE_SECS {
            h.record(BacklogSample { unix_secs: 1_000_000 + t * BACKLOG_SAMPLE_SECS, files: 123_456, bytes: 987_654_321 });
        }
        let mut dirs = vec![dir("/", 1_000_000)];
        // 5,000 subdirectories: far more than 64 KiB of entries; the big one must stay.
        dirs.extend((0..5000).map(|i| dir(&format!("/run-{i:05}/frames"), 100 + i % 7)));
        dirs.push(dir("/big", 100_000));
        let n = dirs.len() as u64;
        let s = Stats { directories: dirs, backlog_history: h.samples(), ..Default::default() };
        let out = s.to_json_within(XATTR_SIZE_MAX);
        assert!(out.len() <= XATTR_SIZE_MAX, "{} bytes", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let listed = v["directories"].as_array().unwrap();
        assert_eq!(listed[0]["path"], "/", "the directory asked about stays first");
        assert!(listed.iter().any(|d| d["path"] == "/big"), "the largest subtree stays");
        assert_eq!(listed.len() as u64 + v["directories_omitted"].as_u64().unwrap(), n);
        assert!(listed.len() > 100, "as many as fit are kept: {}", listed.len());
        // Small stats are left whole.
        let small = Stats { directories: vec![dir("/", 3), dir("/a", 3)], ..Default::default() };
        let v: serde_json::Value = serde_json::from_slice(&small.to_json_within(XATTR_SIZE_MAX)).unwrap();
        assert_eq!(v["directories"].as_array().unwrap().len(), 2);
        assert_eq!(v["directories_omitted"], 0);
    }

    #[test]
    fn the_backlog_history_keeps_one_sample_per_period_for_an_hour() {
        let h = BacklogHistory::default();
        let at = |t: u64| BacklogSample { unix_secs: t, files: t, bytes: 2 * t };
        h.record(at(1000));
        h.record(at(1005)); // within the period: replaces the last sample
        assert_eq!(h.samples(), vec![at(1005)]);
        for t in (1015..=1005 + BACKLOG_KEEP_SECS + 20).step_by(10) {
            h.record(at(t));
        }
        let s = h.samples();
        let last = s.last().map(|x| x.unix_secs).unwrap_or(0);
        assert!(s.iter().all(|x| x.unix_secs + BACKLOG_KEEP_SECS >= last), "{:?}", s.first());
        assert_eq!(s.len() as u64, BACKLOG_KEEP_SECS / BACKLOG_SAMPLE_SECS + 1);
        assert!(s.windows(2).all(|w| w[1].unix_secs - w[0].unix_secs == BACKLOG_SAMPLE_SECS));
    }
}
