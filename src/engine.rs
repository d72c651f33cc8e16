//! Background compression. The engine takes the directories that are due from the work queue
//! ([`queue`]: events of the mount put them there; it never scans the index in steady state),
//! finds their eligible files (closed, staged, not written for the quiet period), groups them
//! into windows in natural name order, and hands each window to the blocking pool (sized to the
//! cores): encode, verify by decoding, write the blob durably, then one index batch switches the
//! window's files to the blob. The index is the durable record of the work (every staged file is
//! pending): at mount the engine scans it once, so a restart resumes.

pub mod autotrain;
pub mod carry;
pub mod priority;
pub mod queue;

use crate::codec::container::Body;
use crate::codec::window::{encode_window, EntryReport};
use crate::codec::{decode_window_with, Bound};
use crate::index::{Blob, Data, Inode, Kind};
use crate::vfs::{FsError, FsResult, ModelPolicy, Vfs};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Housekeeping (staging budget, backlog sample, model re-coding, the store's reserve) runs this
/// often; work itself is event-driven.
const HOUSEKEEPING: Duration = Duration::from_secs(crate::vfs::stats::BACKLOG_SAMPLE_SECS);
/// Files smaller than this stay as written: a blob's own overhead would outweigh the gain.
pub const MIN_COMPRESS_BYTES: u64 = 4096;
/// How long a window waits for its model's share of the memory budget before it is coded
/// without its model.
const MODEL_MEMORY_WAIT: Duration = Duration::from_secs(10);
/// A window that failed is retried after `--retry-ms` (default 60 s), doubled at each further
/// failure of the same file up to [`RETRY_MAX`].
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// At most this many failed files are remembered (the oldest are forgotten first: they are
/// then retried sooner, nothing else).
const FAILED_MAX: usize = 100_000;

/// A file whose window failed: when, and how many times in a row.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    pub at: Instant,
    pub attempts: u32,
}

impl Failure {
    /// When the file may be tried again, `first` after its first failure.
    pub fn retry_at(&self, first: Duration) -> Instant {
        self.at + first.saturating_mul(1 << self.attempts.saturating_sub(1).min(6)).min(RETRY_MAX.max(first))
    }
}

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
    /// Threads that may code the slices of the window's frames (`codec::slices`; 0: one per
    /// core). Set as the window starts: the engine's workers that no other window holds then.
    pub threads: usize,
    /// Bytes a pixel of its frames takes (for its memory charge): from a raw format policy, or
    /// from the first file of the directory's staged files parsed (TIFF, `auto`); `None` when
    /// not known (counted as bytes, the most pixels a file can hold).
    pub pixel_bytes: Option<usize>,
}

impl Job {
    /// Bytes its compression holds (`memory::window_bytes`).
    fn memory_bytes(&self, sizes: &[u64]) -> u64 {
        crate::memory::window_bytes(sizes, self.pixel_bytes, self.lossless())
    }

    fn lossless(&self) -> bool {
        self.policy.bound == crate::codec::Bound::Lossless
    }

    fn sizes(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.size).collect()
    }
}

struct Shared {
    vfs: Arc<Vfs>,
    trainer: Arc<autotrain::Trainer>,
    in_flight: Mutex<HashSet<u64>>,
    failed: Mutex<HashMap<u64, Failure>>,
    choices: carry::Choices,
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
            // Ingest first: the engine runs at nice 10 and encodes under SCHED_IDLE (`priority`).
            .on_thread_start(priority::background)
            .enable_time()
            .build()?;
        let s = stop.clone();
        let shared = Arc::new(Shared {
            vfs,
            trainer: Default::default(),
            in_flight: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            choices: Default::default(),
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
        self.shared.vfs.work.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>, threads: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(threads));
    let mut tasks = tokio::task::JoinSet::new();
    let queue = shared.vfs.work.clone();
    // Recovery: one look at every directory with staged files.
    queue.rescan();
    let mut last_housekeeping = Instant::now() - Duration::from_secs(3600);
    let mut rescan_at: Option<Instant> = None;
    // When each directory may be planned again: a directory being written to is planned at most
    // once per `spacing` (half the quiet period, at most 250 ms) however many closes it sees,
    // and, since planning reads all its entries, a large one at most a tenth of the time (a plan
    // that took 300 ms waits 3 s).
    let spacing = (shared.vfs.config.quiet_period / 2).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut not_before: HashMap<u64, Instant> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        shared.vfs.counters.engine_heartbeat_ms.store(shared.vfs.started().elapsed().as_millis() as u64, Ordering::Relaxed);
        if last_housekeeping.elapsed() >= HOUSEKEEPING {
            last_housekeeping = Instant::now();
            housekeeping(&shared);
            let now = Instant::now();
            not_before.retain(|_, t| *t > now);
        }
        let due = queue.take_due(Instant::now());
        let mut dirs = due.dirs;
        if due.rescan || rescan_at.is_some_and(|t| t <= Instant::now()) {
            rescan_at = None;
            match staged_dirs(&shared.vfs) {
                Ok(d) => dirs.extend(d),
                Err(e) => {
                    tracing::error!(error = %e, "cannot find the directories with staged files; looking again later");
                    rescan_at = Some(Instant::now() + shared.vfs.config.retry_after);
                }
            }
            dirs.sort_unstable();
            dirs.dedup();
        }
        let mut jobs = Vec::new();
        if !dirs.is_empty() {
            let in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let failed = shared.failed.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let now = Instant::now();
            dirs.retain(|d| match not_before.get(d) {
                Some(t) if now < *t => {
                    queue.at(*d, *t);
                    false
                }
                _ => true,
            });
            shared.vfs.counters.dirs_planned.fetch_add(dirs.len() as u64, Ordering::Relaxed);
            for dir in dirs {
                let started = Instant::now();
                let planned = plan_dir(&shared.vfs, dir, &in_flight, &failed, SystemTime::now());
                not_before.insert(dir, started + spacing.max(started.elapsed() * 10));
                match planned {
                    Ok(p) => {
                        jobs.extend(p.jobs);
                        if let Some(t) = p.next {
                            queue.at(dir, t);
                        }
                    }
                    Err(e) => {
                        tracing::error!(dir, error = %e, "cannot plan the compression of a directory; looking again later");
                        queue.at(dir, Instant::now() + shared.vfs.config.retry_after);
                    }
                }
            }
        }
        // Admission: a window waits for its working set to fit in the memory budget; one that
        // can never fit is split into windows that do.
        let room = shared.vfs.memory.total();
        let jobs: Vec<Job> = jobs.into_iter().flat_map(|job| split_job(job, room)).collect();
        for mut job in jobs {
            // A stop takes no new window, however many the plans made (a plan of a large
            // backlog holds thousands: an unmount that ran them all took hours); their files
            // stay staged and the next mount's recovery finds them.
            if stop.load(Ordering::SeqCst) {
                break;
            }
            shared.vfs.counters.engine_waiting.store(true, Ordering::Relaxed);
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            if stop.load(Ordering::SeqCst) {
                shared.vfs.counters.engine_waiting.store(false, Ordering::Relaxed);
                break;
            }
            // A window's slices take its own worker and those idle as it starts (a simple rule:
            // at most twice the workers' threads run at once, when windows start while others
            // run alone).
            job.threads = permits.available_permits() + 1;
            let need = job.memory_bytes(&job.sizes());
            let vfs = shared.vfs.clone();
            let grant = tokio::task::block_in_place(|| vfs.reserve_memory(need));
            shared.vfs.counters.engine_waiting.store(false, Ordering::Relaxed);
            {
                let mut f = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                f.extend(job.members.iter().map(|m| m.ino));
            }
            let sh = shared.clone();
            tasks.spawn_blocking(move || {
                let inos: Vec<u64> = job.members.iter().map(|m| m.ino).collect();
                let dir = job.dir;
                let invalidate = sh.invalidate.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let t0 = Instant::now();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    compress(&sh.vfs, job, invalidate.as_ref(), Some(&sh.trainer), Some(&sh.choices))
                }));
                sh.vfs.counters.compress_seconds.observe(t0.elapsed());
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
                    sh.vfs.counters.compress_errors.fetch_add(1, Ordering::Relaxed);
                }
                note_outcome(&mut sh.failed.lock().unwrap_or_else(|e| e.into_inner()), &inos, failed, Instant::now());
                let mut f = sh.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for i in inos {
                    f.remove(&i);
                }
                drop(f);
                drop(grant);
                drop(permit);
                // Files of the directory that waited for this window (or its retry) are looked at
                // again; a failed window's files come due when they may be retried.
                sh.vfs.work.touch(dir);
            });
        }
        while tasks.try_join_next().is_some() {}
        if stop.load(Ordering::SeqCst) {
            break; // (its wake-up may have come while the windows above were handed out)
        }
        let q = queue.clone();
        tokio::task::block_in_place(|| q.wait(HOUSEKEEPING));
    }
    while tasks.join_next().await.is_some() {}
}

/// `job` as windows whose working set fits in `room` bytes (itself when it fits).
fn split_job(job: Job, room: u64) -> Vec<Job> {
    let sizes = job.sizes();
    let runs = crate::memory::split_window(&sizes, job.pixel_bytes, job.lossless(), room);
    if runs.len() <= 1 {
        return vec![job];
    }
    tracing::info!(dir = job.dir, files = sizes.len(), windows = runs.len(), "a window too large for the memory budget is split");
    runs.into_iter()
        .map(|r| Job { dir: job.dir, members: job.members[r].to_vec(), policy: job.policy.clone(), threads: job.threads, pixel_bytes: job.pixel_bytes })
        .collect()
}

/// What runs every [`HOUSEKEEPING`]: the staging budget's warning, the backlog sample, model
/// re-coding when idle, the store's reserve.
fn housekeeping(shared: &Shared) {
    let (staged_files, staging) = shared.vfs.store.staging_usage_recent(HOUSEKEEPING);
    let unix_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    shared.vfs.counters.backlog.record(crate::vfs::stats::BacklogSample { unix_secs, files: staged_files, bytes: staging });
    if staging > shared.vfs.config.staging_budget {
        tracing::warn!(
            staging_bytes = staging,
            budget = shared.vfs.config.staging_budget,
            "staging is over its budget: compression is behind ingest (writes go on)"
        );
    }
    shared.trainer.recode_if_idle(&shared.vfs);
    shared.vfs.store.restore_reserve();
}

/// Record how a window of `inos` ended: a success forgets their failures, a failure counts one
/// more. The record stays bounded ([`FAILED_MAX`]).
fn note_outcome(failed: &mut HashMap<u64, Failure>, inos: &[u64], was_failure: bool, now: Instant) {
    for i in inos {
        if was_failure {
            let attempts = failed.get(i).map_or(1, |f| f.attempts.saturating_add(1));
            failed.insert(*i, Failure { at: now, attempts });
        } else {
            failed.remove(i);
        }
    }
    if failed.len() > FAILED_MAX {
        let mut by_age: Vec<(Instant, u64)> = failed.iter().map(|(i, f)| (f.at, *i)).collect();
        by_age.sort_unstable();
        for (_, i) in by_age.into_iter().take(failed.len() - FAILED_MAX / 2) {
            failed.remove(&i);
        }
    }
}

fn report(vfs: &Vfs, msg: String) {
    tracing::error!("{msg}");
    vfs.counters.errors.fetch_add(1, Ordering::Relaxed);
    *vfs.counters.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
}

fn age(t: crate::index::Timestamp, now: SystemTime) -> Duration {
    now.duration_since(SystemTime::from(t)).unwrap_or(Duration::ZERO)
}

/// The directories that hold staged files big enough to compress: one listing of `staging/`
/// with a lookup of each staged inode, at mount (recovery) and after a root policy change.
pub fn staged_dirs(vfs: &Vfs) -> FsResult<Vec<u64>> {
    // From `staging/` (a staged file's bytes are `staging/<ino>`), not from every inode: the
    // work is the backlog's, whatever the store holds (a million compressed files cost the
    // scan of every inode 2.3 s at each mount). A corrupt inode record is noted (it reads EIO)
    // and its file left out; the others are planned as usual.
    let mut dirs = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(vfs.store.staging_dir())?.flatten() {
        let Some(ino) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        let i = match vfs.index.inode(ino) {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(e @ crate::index::IndexError::Corrupt { .. }) => {
                vfs.index.note_corrupt(&crate::index::keys::inode(ino), &e);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if i.kind == Kind::File && i.data == Data::Staged && i.nlink > 0 && i.size >= MIN_COMPRESS_BYTES {
            dirs.insert(i.parent);
        }
    }
    Ok(dirs.into_iter().collect())
}

/// A directory's windows that are ready now, and when to look at it again (`None`: not before
/// an event of the mount, a close or a finished window, puts it back on the queue).
#[derive(Default)]
pub struct DirPlan {
    pub jobs: Vec<Job>,
    pub next: Option<Instant>,
}

/// Plan the compression of the staged files of `dir` (those it is the parent of).
pub fn plan_dir(vfs: &Vfs, dir: u64, in_flight: &HashSet<u64>, failed: &HashMap<u64, Failure>, now: SystemTime) -> FsResult<DirPlan> {
    let quiet = vfs.config.quiet_period;
    let start = Instant::now();
    let mut plan = DirPlan::default();
    let mut later = |t: Instant| plan.next = Some(plan.next.map_or(t, |n: Instant| n.min(t)));
    // A directory removed meanwhile (its files live on under other links) has nothing to do;
    // nor has one whose policy cannot be read (logged).
    let entries = vfs.index.dirents(dir)?;
    let mut staged: Vec<(Vec<u8>, Inode)> = Vec::new();
    for (name, ino, kind) in entries {
        if kind != Kind::File {
            continue;
        }
        if let Some(i) = vfs.index.inode(ino)? {
            if i.data == Data::Staged && i.nlink > 0 && i.size >= MIN_COMPRESS_BYTES && i.parent == dir {
                staged.push((name, i));
            }
        }
    }
    if staged.is_empty() {
        return Ok(plan);
    }
    let newest = staged.iter().map(|(_, i)| age(i.mtime, now)).min().unwrap_or(Duration::ZERO);
    let mut eligible: Vec<(Vec<u8>, Inode)> = Vec::new();
    for (name, i) in staged {
        if in_flight.contains(&i.ino) || vfs.is_open(i.ino) {
            continue; // the window's end, or the last close, puts the directory back
        }
        let age = age(i.mtime, now);
        if age < quiet {
            later(start + (quiet - age));
            continue;
        }
        if let Some(f) = failed.get(&i.ino) {
            let retry = f.retry_at(vfs.config.retry_after);
            if retry > start {
                later(retry);
                continue;
            }
        }
        eligible.push((name, i));
    }
    if eligible.is_empty() {
        return Ok(plan);
    }
    let policy = match vfs.policy(dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(dir, error = %e, "no policy for a directory of staged files; they stay staged");
            return Ok(plan);
        }
    };
    // Frame order: natural order of the names in the directory.
    eligible.sort_by(|a, b| crate::sortname::natural_cmp(&a.0, &b.0));
    eligible.dedup_by_key(|(_, i)| i.ino);
    let idle = newest >= vfs.config.tail_idle;
    // Read (a file of a non-raw format) only once a window is ready, not at every look.
    let mut pixel_bytes: Option<Option<usize>> = None;
    for chunk in eligible.chunks(policy.window) {
        if chunk.len() < policy.window && !idle {
            // A short tail waits for the directory to go idle.
            later(start + (vfs.config.tail_idle - newest));
            break;
        }
        plan.jobs.push(Job {
            dir,
            members: chunk.iter().map(|(_, i)| i.clone()).collect(),
            policy: policy.clone(),
            threads: 0,
            pixel_bytes: *pixel_bytes.get_or_insert_with(|| pixel_bytes_of(vfs, &policy.format, &chunk[0].1)),
        });
    }
    Ok(plan)
}

/// The bytes of a pixel of the frames a directory holds under `format`: the format's, or those
/// of `first` (a staged file) as the codec will parse it. `None` when it is not a frame or cannot
/// be read now.
fn pixel_bytes_of(vfs: &Vfs, format: &crate::codec::FormatSpec, first: &Inode) -> Option<usize> {
    match format {
        crate::codec::FormatSpec::Raw(r) => Some(r.dtype.bytes()),
        _ => match crate::codec::analyze(&vfs.read_staged(first).ok()?, format) {
            crate::codec::Analysis::Frame(l) => Some(l.dtype.bytes()),
            crate::codec::Analysis::Opaque(_) => None,
        },
    }
}

/// Compress one window: encode, verify, write the blob, commit. Files whose bytes change (lossy
/// frames) are handed to `invalidate` just before the commit (dropping the pages cached by their
/// writes) and again just after it (pages read while it was being made).
/// `trainer`: where a directory under `model=auto` without a model gets one trained; `choices`:
/// where the choice of the directory's last window is kept for its next one ([`carry`]).
pub fn compress(
    vfs: &Arc<Vfs>,
    job: Job,
    invalidate: Option<&Invalidate>,
    trainer: Option<&Arc<autotrain::Trainer>>,
    choices: Option<&carry::Choices>,
) -> FsResult<()> {
    let start = Instant::now();
    let window_bytes = job.memory_bytes(&job.sizes());
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
    opts.threads = job.threads;
    opts.write_at_most(vfs.config.write_version);
    let model_policy = ModelPolicy::of(job.policy.model.as_deref());
    opts.model = vfs.model_for(job.dir, &model_policy);
    if let (ModelPolicy::Auto, None, Some(t)) = (&model_policy, &opts.model, trainer) {
        t.maybe_start(vfs, job.dir, &files, &job.policy, &vfs.config.auto_train);
    }
    // A model is slower than the classical predictors: when compression is behind, the window
    // is coded without it (a lossless one is re-coded with it once the engine is idle).
    if opts.model.is_some() && vfs.store.staging_bytes_recent() > vfs.config.model_backlog {
        opts.model = None;
        vfs.counters.model_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(dir = job.dir, "backlog over its limit: window coded without its model");
        if let (Some(t), Bound::Lossless) = (trainer, job.policy.bound) {
            t.recode_later(job.dir);
        }
    }
    // The model's states are charged apart from the window's classical working set (admitted
    // before the model was known): a window whose model does not fit beside what is held is
    // coded without it, as above.
    // A sliced window runs a state of the model per stripe, as many stripes at once as it has
    // threads: it gets as many threads as the budget holds stripes beside its working set (at
    // least one: then its stripes run one after another, with the model).
    let mut _model_grant = None;
    if let Some(m) = &opts.model {
        let largest = files.iter().max_by_key(|f| f.len());
        let (stripe_pixels, stripes) = match largest.map(|f| crate::codec::analyze(f, &opts.format)) {
            Some(crate::codec::Analysis::Frame(l)) => crate::codec::slices::stripes(l.width, l.height, &opts),
            _ => (largest.map_or(0, |f| f.len() as u64) / job.pixel_bytes.unwrap_or(1).max(1) as u64, 1),
        };
        let per_stripe = crate::codec::window::model_window_bytes(&*m.0, stripe_pixels, files.len() as u64, job.policy.bound == Bound::Lossless);
        let threads = crate::codec::slices::threads(opts.threads) as u64;
        let mut at_once = threads.min(stripes).max(1);
        while at_once > 1 && per_stripe.saturating_mul(at_once).saturating_add(window_bytes) > vfs.memory.total() {
            at_once -= 1;
        }
        if at_once < threads.min(stripes) {
            tracing::debug!(dir = job.dir, stripes, at_once, "the model's states of every stripe do not fit at once: fewer stripes coded at a time");
            opts.threads = at_once as usize;
        }
        let need = per_stripe.saturating_mul(at_once);
        let fits = need.saturating_add(window_bytes) <= vfs.memory.total();
        match if fits { vfs.reserve_memory_within(need, MODEL_MEMORY_WAIT) } else { None } {
            Some(g) => _model_grant = Some(g),
            None => {
                opts.model = None;
                vfs.counters.model_skipped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(dir = job.dir, bytes = need, "the model's states do not fit in the memory budget: window coded without its model");
                if let (Some(t), Bound::Lossless) = (trainer, job.policy.bound) {
                    t.recode_later(job.dir);
                }
            }
        }
    }
    // The CPU-heavy part (encoding, and decoding to verify it before anything is committed: rule
    // 1 of DESIGN.md) runs on idle CPU only while the backlog is small (at nice 10 above it, so
    // that busy CPUs cannot stop compression); the commit below runs at nice 10.
    let choices = choices.filter(|_| vfs.config.carry_choices);
    opts.carry = choices.and_then(|c| c.get(job.dir));
    let how = priority::Encoding::for_backlog(vfs.store.staging_bytes_recent(), vfs.config.idle_backlog);
    if how == priority::Encoding::Nice {
        vfs.counters.encoded_not_idle.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(dir = job.dir, "backlog over idle_backlog: window encoded at nice 10");
    }
    let (enc, decoded) = priority::run_encoding(how, || -> FsResult<_> {
        let enc = encode_window(&refs, &opts).map_err(|e| FsError::Corrupt { what: "window".into(), why: e.to_string() })?;
        let decoded = decode_window_with(&enc.blob, vfs.models.clone())
            .map_err(|e| FsError::Corrupt { what: "fresh blob".into(), why: format!("does not decode: {e}") })?;
        Ok((enc, decoded))
    })?;
    for (k, (d, f)) in decoded.iter().zip(&files).enumerate() {
        let lossless = opts.bound == Bound::Lossless || matches!(enc.entries[k], EntryReport::Opaque { .. });
        if d.len() != f.len() || (lossless && d != f) {
            return Err(FsError::Corrupt { what: "fresh blob".into(), why: format!("entry {k} decodes to different bytes") });
        }
    }
    if let Some(c) = &enc.choice {
        tracing::debug!(dir = job.dir, choice = %c, carried = c.carried(), "window's choice");
        if c.carried() > 0 {
            vfs.counters.carried_windows.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(c) = choices {
        c.put(job.dir, enc.choice.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_and_their_record_stays_bounded() {
        let t0 = Instant::now();
        let mut failed = HashMap::new();
        note_outcome(&mut failed, &[1, 2], true, t0);
        let first = Duration::from_secs(60);
        assert_eq!(failed[&1].retry_at(first), t0 + first);
        note_outcome(&mut failed, &[1], true, t0);
        note_outcome(&mut failed, &[1], true, t0);
        assert_eq!(failed[&1].attempts, 3);
        assert_eq!(failed[&1].retry_at(first), t0 + 4 * first, "doubled at each failure");
        for _ in 0..20 {
            note_outcome(&mut failed, &[1], true, t0);
        }
        assert_eq!(failed[&1].retry_at(first), t0 + RETRY_MAX, "capped");
        note_outcome(&mut failed, &[1], false, t0);
        assert!(!failed.contains_key(&1) && failed.contains_key(&2), "a success forgets");
        let many: Vec<u64> = (10..10 + FAILED_MAX as u64 + 1).collect();
        note_outcome(&mut failed, &many, true, t0 + Duration::from_secs(1));
        assert!(failed.len() <= FAILED_MAX, "{}", failed.len());
        assert!(!failed.contains_key(&2), "the oldest failure is forgotten first");
    }
}
