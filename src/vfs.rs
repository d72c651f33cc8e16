//! Every filesystem operation over the index and the store, as plain functions with plain types:
//! no FUSE types here, so all of it is testable without a mount (`fs.rs` is the thin adapter).
//!
//! Concurrency: namespace changes and attribute updates hold one mutex (`state`) for the few
//! index reads and the one index batch each does. Data operations of a file (write, truncate,
//! rehydrate, the compression commit) hold that file's data lock (`data_lock`, one of 64 shared
//! by inode number) across their disk calls and syncs, and `state` only for their index update:
//! a slow disk call of one file stalls no other file. Lock order: data locks (ascending) before
//! `state`. Reads and decoding take neither across their disk calls. (Namespace changes that
//! free a file still flush the index under `state`.)

mod data;
mod decoders;
mod error;
mod models;
mod namespace;
mod passthrough;
mod readahead;
pub mod scrub;
pub mod stats;
mod xattr;

pub use data::{OpenFlags, Opened};
pub use error::{FsError, FsResult};
pub use models::ModelPolicy;
pub use namespace::{NewNode, Statfs};
pub use scrub::Scrubber;
pub use stats::{DirStats, Stats};

use crate::cache::Cache;
use crate::index::{keys, Batch, Data, Index, Inode, Kind, Timestamp};
use crate::policy::Policy;
use crate::store::Store;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub const ROOT: u64 = 1;
pub const NAME_MAX: usize = 255;
pub const LINK_MAX: u32 = 65000;
pub const BLOCK: u32 = 4096;

/// Who asks: the caller's credentials (from the FUSE request).
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
}

/// Attributes as `stat` shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks actually stored (compressed size for compressed files).
    pub blocks: u64,
    pub rdev: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// The content can no longer change without an open for writing (compressed files).
    pub immutable: bool,
}

/// Changes asked by `setattr`; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Settings of a mounted filesystem.
#[derive(Clone, Debug)]
pub struct Config {
    /// A closed file becomes eligible for compression after this long without writes.
    pub quiet_period: Duration,
    /// A directory's last frames (fewer than a window) are compressed after this long idle.
    pub tail_idle: Duration,
    pub cache_bytes: u64,
    /// The daemon's memory budget: the cache, windows being compressed, decoders (see
    /// `crate::memory`).
    pub memory_budget: u64,
    /// Staging above this many bytes is reported (writes go on until the disk is full).
    pub staging_budget: u64,
    /// Root policy (defaults from the config file).
    pub root_policy: Policy,
    /// Writers use FUSE passthrough only while the store's disk has this much free.
    pub passthrough_min_free: u64,
    /// What runs the learned models (`--device`).
    pub model_backend: crate::model::Backend,
    /// Training under `user.tezip.model=auto`.
    pub auto_train: crate::engine::autotrain::AutoTrain,
    /// Above this many staged bytes, windows are coded without their model (it is slower) and
    /// lossless ones are re-coded with it later.
    pub model_backlog: u64,
    /// Encoding runs under `SCHED_IDLE` (on CPU nothing else wants) while staging holds at most
    /// this many bytes; above it at nice 10, so that compression still progresses on a node
    /// whose CPUs other work keeps busy (`crate::engine::priority`).
    pub idle_backlog: u64,
    /// A window whose compression failed (a disk error, say) is tried again after this long.
    pub retry_after: Duration,
    /// Blobs are written in this blob format version or an older one
    /// ([`crate::codec::Options::write_at_most`]; checked by
    /// [`crate::codec::window::check_write_version`]).
    pub write_version: u16,
    /// A directory's windows carry the choice of predictor and entropy stage of the window
    /// before (`engine::carry`); off: every window chooses.
    pub carry_choices: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            quiet_period: Duration::from_secs(2),
            tail_idle: Duration::from_secs(20),
            cache_bytes: 1 << 30,
            memory_budget: 4 << 30,
            staging_budget: 100 << 30,
            root_policy: Policy::default(),
            passthrough_min_free: 1 << 30,
            model_backend: crate::model::Backend::Torch(crate::model::DeviceChoice::Auto),
            auto_train: Default::default(),
            model_backlog: 1 << 30,
            idle_backlog: 256 << 20,
            retry_after: Duration::from_secs(60),
            write_version: crate::codec::container::VERSION,
            carry_choices: true,
        }
    }
}

/// An open file or directory.
#[derive(Debug)]
enum Handle {
    /// `passthrough`: the kernel reads and writes the staging file itself (FUSE passthrough), so
    /// no READ or WRITE reaches us; size and mtime are taken from the staging file.
    File {
        ino: u64,
        write: bool,
        append: bool,
        dirty: bool,
        passthrough: bool,
    },
    Dir {
        entries: Arc<Vec<DirEntry>>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// State under the namespace lock.
struct State {
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Open handles per inode (files only).
    open: HashMap<u64, OpenCount>,
    /// Staging files opened for I/O, shared by the handles of an inode.
    staging: HashMap<u64, Arc<File>>,
}

#[derive(Default, Clone, Copy, Debug)]
struct OpenCount {
    handles: u32,
    writers: u32,
    /// Handles in passthrough mode. The kernel refuses to mix them with cached handles on one
    /// inode, so while this is non-zero every new open is passthrough too, and while cached
    /// handles are open none is.
    passthrough: u32,
    passthrough_writers: u32,
}

/// Counters for `stats`.
#[derive(Default)]
pub struct Counters {
    pub compressed_files: AtomicU64,
    pub compressed_in: AtomicU64,
    pub compressed_out: AtomicU64,
    pub compress_nanos: AtomicU64,
    pub errors: AtomicU64,
    pub rehydrated: AtomicU64,
    pub passthrough_opens: AtomicU64,
    /// Files made durable by a close or an fsync (staging file, its directory, the index).
    pub file_syncs: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Windows coded without their model because the backlog was over its limit or its
    /// states did not fit in the memory budget.
    pub model_skipped: AtomicU64,
    /// Windows encoded at nice 10 instead of `SCHED_IDLE` (staging was over `idle_backlog`).
    pub encoded_not_idle: AtomicU64,
    /// Windows coded with the choice (predictor, entropy stage) of their directory's window
    /// before, without a probe (`engine::carry`).
    pub carried_windows: AtomicU64,
    /// Directories whose model is being trained (or whose training failed): (dir, status).
    pub model_training: Mutex<Vec<(u64, String)>>,
    /// The backlog over the last hour, sampled by the engine.
    pub backlog: stats::BacklogHistory,
    /// Directories the engine planned (each time it looked at one).
    pub dirs_planned: AtomicU64,
    /// When the engine's loop last ran (milliseconds since the mount; the watchdog checks it).
    pub engine_heartbeat_ms: AtomicU64,
    /// The engine's loop is waiting for its workers (a window being compressed) or for memory.
    pub engine_waiting: std::sync::atomic::AtomicBool,
    /// Bytes written into files (passthrough writers: what their files grew by).
    pub ingested_bytes: AtomicU64,
    /// Bytes read, by source.
    pub read_staged_bytes: AtomicU64,
    pub read_cache_bytes: AtomicU64,
    pub read_decoded_bytes: AtomicU64,
    /// Errors of the two kinds the metrics tell apart (all are in `errors` too).
    pub compress_errors: AtomicU64,
    pub read_errors: AtomicU64,
    pub compress_seconds: crate::metrics::Histogram,
    pub read_seconds: crate::metrics::Histogram,
}

pub struct Vfs {
    pub(crate) index: Index,
    pub(crate) store: Store,
    pub(crate) cache: Cache,
    pub(crate) config: Config,
    /// The store's learned models (what the decoders find a blob's model in).
    pub(crate) models: Arc<crate::model::registry::Registry>,
    state: Mutex<State>,
    /// Per-file locks of data operations (see [`Vfs::data_lock`]).
    data_locks: [Mutex<()>; DATA_LOCKS],
    /// Decoders positioned in a blob's chain, so that reading a window in order decodes each
    /// frame once.
    decoders: decoders::Decoders,
    /// The daemon's memory budget, less the cache's share (see `crate::memory`).
    pub(crate) memory: Arc<crate::memory::Budget>,
    /// Whether opens may use FUSE passthrough (the adapter turns it off when the kernel cannot).
    passthrough: std::sync::atomic::AtomicBool,
    /// Staging files of inodes with passthrough writers: their size and mtime are read from
    /// here, since the writes never reach us. Lock order: `state` before this.
    written_behind: passthrough::WrittenBehind,
    pub counters: Counters,
    /// When the filesystem was opened.
    started: std::time::Instant,
    /// The root policy (the config file's `[defaults]`), replaced by a reload.
    root_policy: std::sync::RwLock<Policy>,
    /// The directories the engine must look at (see `engine::queue`).
    pub work: Arc<crate::engine::queue::WorkQueue>,
    /// Frames decoded ahead of their readers (see `readahead.rs`).
    readahead: readahead::ReadAhead,
    /// The online scrub's status and requests (`user.tezip.scrub`).
    scrub: scrub::Scrub,
    /// Something is left that the next start's recovery scan removes (a freed staging file that
    /// could not be deleted, an unlinked file whose last release failed): no clean mark then
    /// ([`Vfs::mark_clean`]).
    needs_recovery: std::sync::atomic::AtomicBool,
}

/// Files an applied transaction freed: deleted once it is durable ([`Vfs::finish`]).
#[must_use]
struct Freed {
    blobs: Vec<u64>,
    staging: Vec<u64>,
}

/// Data locks, shared by inode number modulo this.
const DATA_LOCKS: usize = 64;

fn now() -> Timestamp {
    Timestamp::now()
}

impl Vfs {
    /// Put the directory of file `ino` on the engine's queue: something happened that can make
    /// the file compressible (see `engine::queue`).
    pub(crate) fn queue_file(&self, ino: u64) {
        if let Ok(Some(i)) = self.index.inode(ino) {
            if i.kind == Kind::File {
                self.work.touch(i.parent);
            }
        }
    }

    /// Open a store (taking its lock) and its index; create the root directory on a new store.
    pub fn new(store: Store, index: Index, config: Config) -> FsResult<Vfs> {
        let memory = crate::memory::Budget::new(config.memory_budget.saturating_sub(config.cache_bytes));
        let root_policy = config.root_policy.clone();
        let models = Arc::new(crate::model::registry::Registry::open(&store.models_dir(), config.model_backend)?);
        let vfs = Vfs {
            index,
            models,
            store,
            cache: Cache::borrowing(config.cache_bytes, &memory),
            config,
            state: Mutex::new(State { handles: HashMap::new(), next_fh: 1, open: HashMap::new(), staging: HashMap::new() }),
            data_locks: std::array::from_fn(|_| Mutex::new(())),
            decoders: Default::default(),
            memory,
            passthrough: std::sync::atomic::AtomicBool::new(false),
            written_behind: passthrough::WrittenBehind::default(),
            counters: Counters::default(),
            started: std::time::Instant::now(),
            root_policy: std::sync::RwLock::new(root_policy),
            work: Default::default(),
            readahead: Default::default(),
            scrub: Default::default(),
            needs_recovery: Default::default(),
        };
        if vfs.index.inode(ROOT)?.is_none() {
            let t = now();
            // SAFETY: getuid/getgid have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let root = Inode::new(ROOT, Kind::Dir, 0o755, (uid, gid), ROOT, t);
            let mut b = Batch::default();
            Index::put_inode(&mut b, &root);
            Index::put_counter(&mut b, keys::NEXT_INO, ROOT + 1);
            vfs.index.apply(b)?;
            vfs.index.flush()?;
        }
        vfs.recover()?;
        Ok(vfs)
    }

    /// After a restart: files unlinked while open are deleted now; staging files that no inode
    /// needs any more (a crash between commit and cleanup) are removed.
    /// Skipped after a clean unmount ([`Vfs::mark_clean`]), when there is nothing to do.
    fn recover(&self) -> FsResult<()> {
        if self.store.opened_clean() {
            tracing::info!("the last unmount was clean: no recovery scan");
            return Ok(());
        }
        let (inodes, corrupt) = self.index.inodes_checked()?;
        let mut t = Txn::default();
        // A corrupt record's staging file is kept: fsck may still rebuild the file from it.
        let mut staged: std::collections::HashSet<String> = corrupt.iter().map(|i| i.to_string()).collect();
        for i in &inodes {
            if i.nlink == 0 && i.ino != ROOT {
                tracing::info!(ino = i.ino, "removing a file that was unlinked while open before the restart");
                self.release_data(&mut t, i)?;
                self.index.delete_inode(&mut t.batch, i.ino)?;
            } else if i.data == Data::Staged {
                staged.insert(i.ino.to_string());
            }
        }
        self.commit(t)?;
        self.index.flush()?;
        for e in std::fs::read_dir(self.store.staging_dir())?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !staged.contains(&name) {
                tracing::info!(file = %e.path().display(), "removing a staging file no inode refers to");
                let _ = crate::store::disk::remove_file(&e.path());
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data lock of file `ino` (one of [`DATA_LOCKS`], by inode number): held across the
    /// disk calls of a write, truncation or rehydration, so they are ordered per file while
    /// other files go on. Lock order: a data lock before the namespace lock, never after.
    fn data_lock(&self, ino: u64) -> MutexGuard<'_, ()> {
        self.data_locks[(ino % DATA_LOCKS as u64) as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data locks of several files, taken in one order (so two callers cannot deadlock).
    fn data_locks_of(&self, inos: impl Iterator<Item = u64>) -> Vec<MutexGuard<'_, ()>> {
        let mut shards: Vec<usize> = inos.map(|i| (i % DATA_LOCKS as u64) as usize).collect();
        shards.sort_unstable();
        shards.dedup();
        shards.into_iter().map(|s| self.data_locks[s].lock().unwrap_or_else(|e| e.into_inner())).collect()
    }

    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// The root policy every directory inherits (the config file's `[defaults]`).
    pub fn root_policy(&self) -> Policy {
        self.root_policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the root policy (a reload of the config file): frames compressed from now on follow
    /// it, and the engine looks at every directory with staged files again.
    pub fn set_root_policy(&self, p: Policy) {
        *self.root_policy.write().unwrap_or_else(|e| e.into_inner()) = p;
        self.work.rescan();
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Make every index change durable (unmount, fsyncdir).
    pub fn flush_index(&self) -> FsResult<()> {
        Ok(self.index.flush()?)
    }

    /// At the end of a clean unmount, once nothing else changes the store (the engine, the
    /// read-ahead and the scrub stopped): with no handle open and nothing left for recovery,
    /// flush the index and leave the store's clean mark, so that the next start skips the
    /// recovery scan. A file still open may be unlinked-but-open (its inode is deleted at its
    /// last release, or by the next start's scan), and a freed staging file whose deletion
    /// failed goes at the next start's scan: then no mark. Returns whether the mark was left.
    pub fn mark_clean(&self) -> FsResult<bool> {
        let st = self.lock();
        if !st.open.is_empty() || !st.handles.is_empty() || self.needs_recovery.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        self.index.flush()?;
        self.store.mark_clean()?;
        Ok(true)
    }

    pub(crate) fn inode(&self, ino: u64) -> FsResult<Inode> {
        self.index.inode(ino)?.ok_or(FsError::NotFound)
    }

    fn attr(&self, i: &Inode) -> Attr {
        match self.written_behind.current(i, now()) {
            // Written through passthrough: size and times come from the staging file.
            Ok(Some(c)) => Attr { size: c.size, mtime: c.mtime, ctime: c.ctime, blocks: c.blocks, ..self.index_attr(i) },
            Ok(None) => self.index_attr(i),
            Err(e) => {
                tracing::warn!(ino = i.ino, error = %e, "cannot stat a staging file written through passthrough");
                self.index_attr(i)
            }
        }
    }

    fn index_attr(&self, i: &Inode) -> Attr {
        let blocks = match &i.data {
            Data::Compressed { stored, .. } => stored.div_ceil(512),
            Data::Staged => {
                std::fs::metadata(self.store.staging_path(i.ino)).map(|m| std::os::unix::fs::MetadataExt::blocks(&m)).unwrap_or(i.size.div_ceil(512))
            }
            Data::None => 0,
        };
        Attr {
            ino: i.ino,
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: if i.kind == Kind::Symlink { i.target.len() as u64 } else { i.size },
            blocks,
            rdev: i.rdev,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            immutable: matches!(i.data, Data::Compressed { .. }),
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        Ok(self.attr(&self.inode(ino)?))
    }

    /// Allocate an inode number (inside the caller's batch).
    fn next_ino(&self, b: &mut Batch) -> FsResult<u64> {
        // The counter is read and bumped under the namespace lock, so two creates never race.
        let n = self.index.counter(keys::NEXT_INO)?.max(ROOT + 1);
        Index::put_counter(b, keys::NEXT_INO, n + 1);
        Ok(n)
    }

    /// Give up the stored bytes of an inode that is being deleted or whose content is replaced:
    /// the index changes go into the transaction, the files go after it commits.
    fn release_data(&self, t: &mut Txn, i: &Inode) -> FsResult<()> {
        match &i.data {
            Data::Staged => t.staging.push(i.ino),
            Data::Compressed { blob, .. } => self.unref_blob(t, *blob)?,
            Data::None => {}
        }
        Ok(())
    }

    /// One file no longer points into `blob`; the blob goes when no file does.
    fn unref_blob(&self, t: &mut Txn, blob: u64) -> FsResult<()> {
        let rec = match t.blobs.get(&blob) {
            Some(r) => Some(r.clone()),
            None => self.index.blob(blob)?,
        };
        let Some(mut rec) = rec else {
            tracing::warn!(blob, "a file pointed into a blob the index does not know");
            return Ok(());
        };
        rec.live = rec.live.saturating_sub(1);
        t.blobs.insert(blob, rec);
        Ok(())
    }

    /// Apply a transaction: one index batch, then (once it is durable) the file deletions.
    fn commit(&self, t: Txn) -> FsResult<()> {
        let freed = self.apply(t)?;
        self.finish(freed)
    }

    /// The first half of [`Vfs::commit`]: the index batch, applied (visible, not yet durable).
    /// Returns what it freed, for [`Vfs::finish`].
    fn apply(&self, mut t: Txn) -> FsResult<Freed> {
        let mut dead = Vec::new();
        // Blobs that die give up their model's reference (summed per model: several may share it).
        let mut released: HashMap<[u8; 32], u64> = HashMap::new();
        for (id, rec) in std::mem::take(&mut t.blobs) {
            if rec.live == 0 {
                t.batch.delete(keys::blob(id));
                if let Some(h) = self.index.blob_model(id)? {
                    t.batch.delete(keys::blob_model(id));
                    *released.entry(h).or_default() += 1;
                }
                dead.push(id);
            } else {
                Index::put_blob(&mut t.batch, &rec);
            }
        }
        for (h, n) in released {
            let left = self.index.model_refs(&h)?.saturating_sub(n);
            if left == 0 {
                t.batch.delete(keys::model_refs(&h));
            } else {
                Index::put_counter(&mut t.batch, &keys::model_refs(&h), left);
            }
        }
        self.store.keep_room_for_index();
        self.index.apply(t.batch)?;
        Ok(Freed { blobs: dead, staging: t.staging })
    }

    /// The second half of [`Vfs::commit`]: make the batch durable if it freed files, then
    /// delete them.
    fn finish(&self, freed: Freed) -> FsResult<()> {
        let Freed { blobs: dead, staging } = freed;
        if dead.is_empty() && staging.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.index.flush() {
            // The freed files stay: once a later flush makes the change durable, they are the
            // next start's recovery scan's (no clean mark).
            self.needs_recovery.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e.into());
        }
        // The change is made and durable: a file it freed that cannot be deleted is garbage
        // (logged and counted; a staging file goes at the next start), not a failed operation.
        let leftover = |what: String, e: std::io::Error| {
            tracing::error!(file = %what, error = %e, "committed, but a file no longer needed could not be deleted");
            self.counters.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.needs_recovery.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        for id in dead {
            self.cache.forget_blob(id);
            self.decoders.forget(id);
            if let Err(e) = self.store.delete_blob(id) {
                leftover(self.store.blob_path(id).display().to_string(), e);
            }
        }
        for ino in staging {
            if let Err(e) = self.store.delete_staging(ino) {
                leftover(self.store.staging_path(ino).display().to_string(), e);
            }
        }
        // Space was freed: a reserve given up on a full disk is made again now (cheap when it is
        // held), so that passthrough writers come back at once.
        self.store.restore_reserve();
        Ok(())
    }
}

/// One filesystem operation's changes: an index batch plus the store files to delete after it.
#[derive(Default)]
pub(crate) struct Txn {
    pub batch: Batch,
    /// Blob records touched (live counts), written or deleted at commit.
    blobs: HashMap<u64, crate::index::Blob>,
    /// Staging files to delete after the commit.
    staging: Vec<u64>,
    /// Directory records already updated in this transaction (rename touches one twice).
    dirs: HashMap<u64, Inode>,
}
