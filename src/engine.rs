//! Background compression. A tokio task looks for eligible files (closed, staged, not written
//! for the quiet period), groups them per directory into windows in natural name order, and
//! hands each window to the blocking pool (sized to the cores): encode, verify by decoding,
//! write the blob durably, then one index batch switches the window's files to the blob.
//! The queue is the index itself (every staged file is pending), so a restart resumes it.

pub mod autotrain;

use crate::codec::container::Body;
use crate::codec::window::{encode_window, EntryReport};
use crate::codec::{decode_window_with, Bound};
use crate::index::{Blob, Data, Inode, Kind};
use crate::vfs::{FsError, FsResult, ModelPolicy, Vfs};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the engine looks for work.
const TICK: Duration = Duration::from_millis(200);
/// Files smaller than this stay as written: a blob's own overhead would outweigh the gain.
pub const MIN_COMPRESS_BYTES: u64 = 4096;

pub struct Engine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// Told the inodes whose bytes just changed under the kernel's page cache: files of a lossy
/// window, which now read back as the decoded (within-bound) bytes rather than the bytes
/// written. The mount drops their cached pages, so every reader sees the same content.
pub type Invalidate = Arc<dyn Fn(&[u64]) + Send + Sync>;

/// One window to compress.
pub struct Job {
    pub dir: u64,
    pub members: Vec<Inode>,
    pub policy: crate::policy::Policy,
}

struct Shared {
    vfs: Arc<Vfs>,
    trainer: Arc<autotrain::Trainer>,
    in_flight: Mutex<HashSet<u64>>,
    failed: Mutex<HashMap<u64, Instant>>,
    invalidate: Mutex<Option<Invalidate>>,
}

impl Engine {
    /// Start the engine on its own runtime with `threads` codec workers.
    pub fn start(vfs: Arc<Vfs>, threads: usize) -> std::io::Result<Engine> {
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(threads.max(1))
            .thread_name("tezipfs-engine")
            // Ingest first: compression runs at nice 10, so FUSE requests win the cores.
            // SAFETY: setpriority on the calling thread only (Linux nice values are per thread).
            .on_thread_start(|| unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            })
            .enable_time()
            .build()?;
        let s = stop.clone();
        let shared = Arc::new(Shared {
            vfs,
            trainer: Default::default(),
            in_flight: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            invalidate: Mutex::new(None),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new().name("tezipfs-engine".into()).spawn(move || {
            rt.block_on(run(sh, s, threads.max(1)));
        })?;
        Ok(Engine { stop, thread: Some(thread), shared })
    }

    /// Set what to call when committed files read back different bytes than were written.
    pub fn set_invalidate(&self, f: Invalidate) {
        *self.shared.invalidate.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Stop taking new work and wait for the windows in progress.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>, threads: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(threads));
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_budget_check = Instant::now() - Duration::from_secs(3600);
    while !stop.load(Ordering::SeqCst) {
        if last_budget_check.elapsed() > Duration::from_secs(10) {
            last_budget_check = Instant::now();
            let staging = shared.vfs.store.bytes_in("staging");
            if staging > shared.vfs.config.staging_budget {
                tracing::warn!(
                    staging_bytes = staging,
                    budget = shared.vfs.config.staging_budget,
                    "staging is over its budget: compression is behind ingest (writes go on)"
                );
            }
            shared.trainer.recode_if_idle(&shared.vfs);
        }
        let jobs = {
            let in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let failed = shared.failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match plan(&shared.vfs, &in_flight, &failed, SystemTime::now()) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!(error = %e, "cannot plan compression");
                    Vec::new()
                }
            }
        };
        for job in jobs {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            {
                let mut f = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                f.extend(job.members.iter().map(|m| m.ino));
            }
            let sh = shared.clone();
            tasks.spawn_blocking(move || {
                let inos: Vec<u64> = job.members.iter().map(|m| m.ino).collect();
                let dir = job.dir;
                let invalidate = sh.invalidate.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compress(&sh.vfs, job, invalidate.as_ref(), Some(&sh.trainer))));
                let failed = match r {
                    Ok(Ok(())) => false,
                    Ok(Err(e)) => {
                        report(&sh.vfs, format!("compressing a window of directory {dir} failed: {e}; its files stay staged"));
                        true
                    }
                    Err(_) => {
                        report(&sh.vfs, format!("compressing a window of directory {dir} panicked; its files stay staged"));
                        true
                    }
                };
                if failed {
                    let mut f = sh.failed.lock().unwrap_or_else(|e| e.into_inner());
                    for i in &inos {
                        f.insert(*i, Instant::now());
                    }
                }
                let mut f = sh.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for i in inos {
                    f.remove(&i);
                }
                drop(permit);
            });
        }
        while tasks.try_join_next().is_some() {}
        shared.vfs.store.restore_reserve();
        tokio::time::sleep(TICK).await;
    }
    while tasks.join_next().await.is_some() {}
}

fn report(vfs: &Vfs, msg: String) {
    tracing::error!("{msg}");
    vfs.counters.errors.fetch_add(1, Ordering::Relaxed);
    *vfs.counters.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
}

fn age(t: crate::index::Timestamp, now: SystemTime) -> Duration {
    now.duration_since(SystemTime::from(t)).unwrap_or(Duration::ZERO)
}

/// The windows ready to compress now.
pub fn plan(vfs: &Vfs, in_flight: &HashSet<u64>, failed: &HashMap<u64, Instant>, now: SystemTime) -> FsResult<Vec<Job>> {
    let quiet = vfs.config.quiet_period;
    // Staged files per directory.
    let mut per_dir: BTreeMap<u64, Vec<Inode>> = BTreeMap::new();
    for i in vfs.index.inodes()? {
        if i.kind == Kind::File && i.data == Data::Staged && i.nlink > 0 && i.size >= MIN_COMPRESS_BYTES {
            per_dir.entry(i.parent).or_default().push(i);
        }
    }
    let mut jobs = Vec::new();
    for (dir, staged) in per_dir {
        let newest = staged.iter().map(|i| age(i.mtime, now)).min().unwrap_or(Duration::ZERO);
        let eligible: HashMap<u64, Inode> = staged
            .into_iter()
            .filter(|i| {
                !in_flight.contains(&i.ino)
                    && !vfs.is_open(i.ino)
                    && age(i.mtime, now) >= quiet
                    && failed.get(&i.ino).is_none_or(|t| t.elapsed() > vfs.config.retry_after)
            })
            .map(|i| (i.ino, i))
            .collect();
        if eligible.is_empty() {
            continue;
        }
        // A directory removed meanwhile (its files live on under other links) is skipped; one
        // such directory must not stop the planning of all the others.
        let (policy, entries) = match (vfs.policy(dir), vfs.index.dirents(dir)) {
            (Ok(p), Ok(e)) => (p, e),
            (Err(e), _) => {
                tracing::debug!(dir, error = %e, "no policy for a directory of staged files; they stay staged");
                continue;
            }
            (_, Err(e)) => return Err(e.into()),
        };
        // Frame order: natural order of the names in the directory.
        let mut ordered: Vec<(Vec<u8>, Inode)> = entries.into_iter().filter_map(|(name, ino, _)| eligible.get(&ino).map(|i| (name, i.clone()))).collect();
        ordered.sort_by(|a, b| crate::sortname::natural_cmp(&a.0, &b.0));
        ordered.dedup_by_key(|(_, i)| i.ino);
        let idle = newest >= vfs.config.tail_idle;
        for chunk in ordered.chunks(policy.window) {
            if chunk.len() < policy.window && !idle {
                break; // a short tail waits for the directory to go idle
            }
            jobs.push(Job { dir, members: chunk.iter().map(|(_, i)| i.clone()).collect(), policy: policy.clone() });
        }
    }
    Ok(jobs)
}

/// Compress one window: encode, verify, write the blob, commit. Files whose bytes change (lossy
/// frames) are handed to `invalidate` just before the commit (dropping the pages cached by their
/// writes) and again just after it (pages read while it was being made).
/// `trainer`: where a directory under `model=auto` without a model gets one trained.
pub fn compress(vfs: &Arc<Vfs>, job: Job, invalidate: Option<&Invalidate>, trainer: Option<&Arc<autotrain::Trainer>>) -> FsResult<()> {
    let start = Instant::now();
    let mut members = Vec::with_capacity(job.members.len());
    let mut files = Vec::with_capacity(job.members.len());
    for m in job.members {
        match vfs.read_staged(&m) {
            Ok(b) => {
                files.push(b);
                members.push(m);
            }
            Err(FsError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {} // gone meanwhile
            Err(e) => return Err(e),
        }
    }
    if files.is_empty() {
        return Ok(());
    }
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let mut opts = job.policy.codec_options();
    let model_policy = ModelPolicy::of(job.policy.model.as_deref());
    opts.model = vfs.model_for(job.dir, &model_policy);
    if let (ModelPolicy::Auto, None, Some(t)) = (&model_policy, &opts.model, trainer) {
        t.maybe_start(vfs, job.dir, &files, &job.policy, &vfs.config.auto_train);
    }
    // A model is slower than the classical predictors: when compression is behind, the window
    // is coded without it (a lossless one is re-coded with it once the engine is idle).
    if opts.model.is_some() && vfs.store.bytes_in("staging") > vfs.config.model_backlog {
        opts.model = None;
        vfs.counters.model_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(dir = job.dir, "backlog over its limit: window coded without its model");
        if let (Some(t), Bound::Lossless) = (trainer, job.policy.bound) {
            t.recode_later(job.dir);
        }
    }
    let enc = encode_window(&refs, &opts).map_err(|e| FsError::Corrupt { what: "window".into(), why: e.to_string() })?;
    // Verify by decoding before anything is committed (rule 1 of DESIGN.md).
    let decoded =
        decode_window_with(&enc.blob, vfs.models.clone()).map_err(|e| FsError::Corrupt { what: "fresh blob".into(), why: format!("does not decode: {e}") })?;
    for (k, (d, f)) in decoded.iter().zip(&files).enumerate() {
        let lossless = opts.bound == Bound::Lossless || matches!(enc.entries[k], EntryReport::Opaque { .. });
        if d.len() != f.len() || (lossless && d != f) {
            return Err(FsError::Corrupt { what: "fresh blob".into(), why: format!("entry {k} decodes to different bytes") });
        }
    }
    for (m, rep) in members.iter().zip(&enc.entries) {
        if let EntryReport::Opaque { reason } = rep {
            tracing::debug!(ino = m.ino, %reason, "stored whole");
        }
    }
    let shares = entry_shares(&enc.blob)?;
    let id = vfs.alloc_blob_id()?;
    vfs.store.write_blob(id, &enc.blob)?;
    let rec = Blob { id, entries: members.len() as u32, live: 0, bytes: enc.blob.len() as u64 };
    let plan: Vec<(Inode, u32, u64, bool)> =
        members.iter().enumerate().map(|(k, m)| (m.clone(), k as u32, shares[k], matches!(enc.entries[k], EntryReport::Frame { .. }))).collect();
    let changed: Vec<u64> = members.iter().zip(decoded.iter().zip(&files)).filter(|(_, (d, f))| d != f).map(|(m, _)| m.ino).collect();
    if let (Some(f), false) = (invalidate, changed.is_empty()) {
        f(&changed);
    }
    let switched = vfs.commit_compressed(rec, &plan, enc.model)?;
    if let (Some(f), false) = (invalidate, changed.is_empty()) {
        f(&changed.iter().copied().filter(|i| switched.contains(i)).collect::<Vec<u64>>());
    }
    let input: u64 = members.iter().filter(|m| switched.contains(&m.ino)).map(|m| m.size).sum();
    let c = &vfs.counters;
    c.compressed_files.fetch_add(switched.len() as u64, Ordering::Relaxed);
    c.compressed_in.fetch_add(input, Ordering::Relaxed);
    c.compressed_out.fetch_add(enc.blob.len() as u64, Ordering::Relaxed);
    c.compress_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    tracing::info!(dir = job.dir, blob = id, files = switched.len(), skipped = members.len() - switched.len(), bytes_in = input, bytes_out = enc.blob.len(), predictor = ?enc.predictor, model = enc.model.map(|h| vfs.model_label(&h)), "compressed a window");
    Ok(())
}

/// Bytes of a blob that each entry accounts for: its sections plus an equal share of the header.
fn entry_shares(blob: &[u8]) -> FsResult<Vec<u64>> {
    let b = crate::codec::container::Blob::parse(blob).map_err(|e| FsError::Corrupt { what: "fresh blob".into(), why: e.to_string() })?;
    let n = b.header.entries.len().max(1) as u64;
    let sections: Vec<u64> = b
        .header
        .entries
        .iter()
        .map(|e| match &e.body {
            Body::Frame(f) => f.skeleton.len + f.codes.len + f.escapes.len,
            Body::Opaque { data, .. } => data.len,
        })
        .collect();
    let overhead = (blob.len() as u64).saturating_sub(sections.iter().sum::<u64>());
    Ok(sections.iter().map(|s| s + overhead / n).collect())
}
