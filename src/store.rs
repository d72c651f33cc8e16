//! The store directory: staging files, blob files, the index, and the lock that keeps two
//! daemons off one store.
//!
//! ```text
//! <store>/LOCK            flock()ed by the running daemon; holds its pid
//! <store>/index/          the sled database
//! <store>/staging/<ino>   raw bytes of files not yet compressed
//! <store>/blobs/<id>.tzb  immutable blobs (docs/FORMAT.md)
//! <store>/models/<hash>   learned models, named by their SHA-256 (docs/MODEL.md)
//! <store>/tmp/            blobs being written
//! <store>/reserve         RESERVE bytes of allocated space, given up for the index when the
//!                         disk fills (see [`Store::keep_room_for_index`])
//! ```
//! A blob is written to `tmp/`, fsynced, read back and compared, renamed into `blobs/`, and
//! `blobs/` is fsynced: it is either absent or whole.
//!
//! Every disk call on staging files, blobs, tmp files and models, and the fsyncs of their
//! directories, goes through [`disk`] (where tests inject faults and power cuts).

pub mod disk;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} is in use by another tezipfs daemon{pid} (lock file {path}/LOCK)")]
    Locked { path: String, pid: String },
    #[error("store {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Free space kept for the index and for deletions on a nearly full store.
pub const RESERVE: u64 = 16 << 20;

/// The file that holds [`RESERVE`] bytes of the disk for the index.
const RESERVE_FILE: &str = "reserve";

/// Free space below which the reserve is given up before the index writes: room for what the
/// index writes between two such checks, and small, because a passthrough writer may still be
/// writing while the disk is this full, and eats a reserve given up under it (an index change
/// can come in mid-write: an fsync, or the FUSE flush of a copy of its descriptor closed by
/// another thread's fork and exec).
const INDEX_ROOM: u64 = 1 << 20;

/// The reserve file, shared by the store and the index's periodic flush
/// ([`Store::room_for_index`]).
struct Reserve {
    root: PathBuf,
    /// Whether `reserve` exists (it is given up when the disk fills, made again when there is
    /// room).
    held: std::sync::atomic::AtomicBool,
    /// sled's log file (opened on first use) and the end of the blocks last allocated for it
    /// ([`Reserve::preallocate_index`]; 0: none known).
    index_log: std::sync::Mutex<(Option<File>, u64)>,
}

/// Blocks allocated past the end of sled's log file (`fallocate`, keeping its size): sled writes
/// its next segments into them without asking the disk for room, so a writer that fills the disk
/// between our room check and sled's write cannot make that write fail.
const INDEX_PREALLOCATED: u64 = 8 << 20;

pub struct Store {
    root: PathBuf,
    _lock: File,
    reserve: std::sync::Arc<Reserve>,
    /// Staging files created so far (counted once each create has returned).
    staging_created: std::sync::atomic::AtomicU64,
    /// How many of them the last completed fsync of `staging/` covers. Held across that fsync,
    /// so that a caller whose file it covers waits for it to complete rather than return early.
    staging_synced: std::sync::Mutex<u64>,
    /// The last walk of `staging/` ([`Store::staging_usage`]), for the decisions taken at every
    /// window ([`Store::staging_bytes_recent`]).
    staging_sample: std::sync::Mutex<StagingSample>,
    /// The files and bytes of that walk, for callers that find it being taken.
    staging_sampled_files: std::sync::atomic::AtomicU64,
    staging_sampled_bytes: std::sync::atomic::AtomicU64,
    /// Walks of `staging/` so far.
    staging_walks: std::sync::atomic::AtomicU64,
    /// Whether the store carried the clean mark ([`CLEAN_MARK`]) when it was opened (the mark
    /// is removed at open).
    opened_clean: bool,
}

/// The file a clean unmount leaves in the store's root ([`Store::mark_clean`]): the index and
/// `staging/` agree and no file is unlinked-but-open, so the next start may skip its recovery
/// scan (a read of every inode: seconds at a million files). Every open removes it first.
pub const CLEAN_MARK: &str = "CLEAN";

/// When `staging/` was last walked and what the walk took and found.
#[derive(Default)]
struct StagingSample {
    at: Option<std::time::Instant>,
    took: std::time::Duration,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

impl Store {
    /// Create the layout if needed and take the lock.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in ["", "staging", "blobs", "tmp", "index", "models"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        let lock = Store::lock(root)?;
        disk::powercut::attach(root);
        // Blobs that never made it out of tmp/ are garbage.
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp).map_err(io_at(&tmp))?.flatten() {
            let _ = disk::remove_file(&e.path());
        }
        let opened_clean = Store::forget_clean_mark(root)?;
        let reserve = Reserve { root: root.to_path_buf(), held: root.join(RESERVE_FILE).exists().into(), index_log: Default::default() };
        let store = Store {
            root: root.to_path_buf(),
            _lock: lock,
            reserve: reserve.into(),
            staging_created: 0.into(),
            staging_synced: 0.into(),
            staging_sample: Default::default(),
            staging_sampled_files: 0.into(),
            staging_sampled_bytes: 0.into(),
            staging_walks: 0.into(),
            opened_clean,
        };
        store.restore_reserve();
        Ok(store)
    }

    /// Remove the clean mark of the store at `root`, durably (before anything changes the
    /// store: a crash later must find no mark). Returns whether there was one. Offline tools
    /// that may change the store (fsck) call it too.
    pub fn forget_clean_mark(root: &Path) -> Result<bool, StoreError> {
        let mark = root.join(CLEAN_MARK);
        match std::fs::symlink_metadata(&mark) {
            Ok(_) => {
                disk::remove_file(&mark).map_err(io_at(&mark))?;
                disk::fsync_dir(root).map_err(io_at(root))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_at(&mark)(e)),
        }
    }

    /// Whether the store carried the clean mark when it was opened.
    pub fn opened_clean(&self) -> bool {
        self.opened_clean
    }

    /// Leave the clean mark, durably: the caller has made the index and `staging/` agree (the
    /// engine stopped, the index flushed) and no file is open.
    pub fn mark_clean(&self) -> io::Result<()> {
        let mark = self.root.join(CLEAN_MARK);
        let f = disk::create(&mark)?;
        disk::write_all(&f, &mark, b"the last unmount was clean: the next start skips its recovery scan\n")?;
        disk::sync_all(&f, &mark)?;
        disk::fsync_dir(&self.root)
    }

    /// Take the store's lock (`LOCK`, holding our pid) and nothing else: no layout made, no
    /// file removed. The daemon takes it through [`Store::open`]; `tezipfs fsck` takes it alone,
    /// so that it never checks a store a daemon is changing.
    pub fn lock(root: &Path) -> Result<File, StoreError> {
        let lock_path = root.join("LOCK");
        let mut lock = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(io_at(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let pid = std::fs::read_to_string(&lock_path).map(|s| format!(" (pid {})", s.trim())).unwrap_or_default();
            return Err(StoreError::Locked { path: root.display().to_string(), pid });
        }
        lock.set_len(0).map_err(io_at(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io_at(&lock_path))?;
        Ok(lock)
    }

    fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.root)
    }

    /// Called before every index change (and, by the index itself, before every flush: see
    /// [`Store::room_for_index`]). Writers through FUSE passthrough write the disk without
    /// asking us, so they can fill it; sled cannot recover from a write that failed with ENOSPC
    /// without a restart. When less than [`INDEX_ROOM`] is free, the reserve file goes, and the
    /// index has room again.
    pub fn keep_room_for_index(&self) {
        self.reserve.keep_room_for_index();
    }

    /// [`Store::keep_room_for_index`] for the index to call before it flushes, from any thread
    /// and for as long as it lives.
    pub fn room_for_index(&self) -> impl Fn() + Send + Sync + 'static {
        let reserve = self.reserve.clone();
        move || reserve.keep_room_for_index()
    }

    /// Whether a new writer may bypass the daemon (FUSE passthrough): only while the reserve is
    /// held and the disk has at least `min_free` bytes free. Writers through the daemon are
    /// refused before the reserve is touched ([`Store::ensure_room`]); passthrough writers are
    /// not, so they are kept to a disk with room.
    pub fn passthrough_room(&self, min_free: u64) -> bool {
        self.reserve.held.load(std::sync::atomic::Ordering::Relaxed) && self.free_bytes().is_ok_and(|f| f >= min_free)
    }

    /// Make the reserve file again once the disk has room (at open, and after a full disk).
    pub fn restore_reserve(&self) {
        use std::sync::atomic::Ordering;
        if self.reserve.held.load(Ordering::Relaxed) || !self.free_bytes().is_ok_and(|f| f > 2 * RESERVE) {
            return;
        }
        let tmp = self.root.join("tmp").join(RESERVE_FILE);
        let made = (|| -> io::Result<()> {
            let f = File::create(&tmp)?;
            // SAFETY: fallocate on a descriptor we own, for a range within i64.
            if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, RESERVE as i64) } != 0 {
                // Filesystems without fallocate: real zeros.
                let zeros = vec![0u8; 1 << 20];
                let mut w = &f;
                for _ in 0..RESERVE >> 20 {
                    w.write_all(&zeros)?;
                }
            }
            f.sync_all()?;
            std::fs::rename(&tmp, self.root.join(RESERVE_FILE))
        })();
        match made {
            Ok(()) => self.reserve.held.store(true, Ordering::Relaxed),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(store = %self.root.display(), error = %e, "cannot make the store's reserve file");
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index_dir(&self) -> PathBuf {
        index_dir(&self.root)
    }

    /// Learned models, by hash (`crate::model::registry`).
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    pub fn staging_path(&self, ino: u64) -> PathBuf {
        self.root.join("staging").join(ino.to_string())
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Open the staging file of `ino` for reading and writing, creating it if `create`. A new
    /// file's directory entry becomes durable at the next [`Store::sync_staging_dir`].
    pub fn open_staging(&self, ino: u64, create: bool) -> io::Result<File> {
        let f = disk::open(&self.staging_path(ino), true, create)?;
        if create {
            // After the create: an fsync of the directory that reads this count covers the file.
            self.staging_created.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(f)
    }

    /// pread of the staging file of `ino` (opened by [`Store::open_staging`]).
    pub fn read_staging_at(&self, f: &File, ino: u64, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        disk::read_at(f, &self.staging_path(ino), buf, offset)
    }

    /// pwrite of all of `data` into the staging file of `ino`.
    pub fn write_staging_at(&self, f: &File, ino: u64, data: &[u8], offset: u64) -> io::Result<()> {
        disk::write_all_at(f, &self.staging_path(ino), data, offset)
    }

    /// ftruncate of the staging file of `ino`.
    pub fn set_staging_len(&self, f: &File, ino: u64, len: u64) -> io::Result<()> {
        disk::set_len(f, &self.staging_path(ino), len)
    }

    /// fdatasync of the staging file of `ino`.
    pub fn sync_staging(&self, f: &File, ino: u64) -> io::Result<()> {
        disk::sync_data(f, &self.staging_path(ino))
    }

    /// The whole staging file of `ino`.
    pub fn read_staging(&self, ino: u64) -> io::Result<Vec<u8>> {
        disk::read(&self.staging_path(ino))
    }

    /// fsync `staging/` unless a completed fsync already covers every staging file created
    /// before this call: with the file's own fdatasync, this makes a new file survive a power
    /// cut (its name is in the directory). Returns only once such an fsync has completed: a
    /// caller never returns while another thread's fsync that covers its file is in flight (a
    /// close would then be acknowledged before its file's name is durable).
    pub fn sync_staging_dir(&self) -> io::Result<()> {
        use std::sync::atomic::Ordering::Acquire;
        let want = self.staging_created.load(Acquire);
        let mut synced = self.staging_synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced >= want {
            return Ok(());
        }
        let now = self.staging_created.load(Acquire);
        fsync_dir(&self.staging_dir())?;
        *synced = now;
        Ok(())
    }

    /// Whether a staging file was created since the last fsync of `staging/` that completed.
    #[cfg(test)]
    fn staging_dir_pending(&self) -> bool {
        *self.staging_synced.lock().unwrap_or_else(|e| e.into_inner()) < self.staging_created.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn blob_path(&self, id: u64) -> PathBuf {
        self.root.join("blobs").join(format!("{id}.tzb"))
    }

    /// Write a blob durably: temp file, fsync, read back and compared (a write the disk
    /// reported whole but stored short or wrong is caught here, before anything refers to the
    /// blob), rename, fsync of the directory. On any failure nothing is left behind: no temp
    /// file, and no blob that the index might not know of.
    pub fn write_blob(&self, id: u64, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.root.join("tmp").join(format!("{id}.tzb"));
        let dest = self.blob_path(id);
        let written = (|| {
            let f = disk::create(&tmp)?;
            disk::write_all(&f, &tmp, bytes)?;
            disk::sync_all(&f, &tmp)?;
            drop(f);
            let back = disk::read(&tmp)?;
            if back != bytes {
                return Err(io::Error::other(format!(
                    "blob {id} reads back {} bytes (crc32c {:08x}) after its write of {} (crc32c {:08x})",
                    back.len(),
                    crc32c::crc32c(&back),
                    bytes.len(),
                    crc32c::crc32c(bytes)
                )));
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = disk::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = disk::rename(&tmp, &dest) {
            let _ = disk::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fsync_dir(&self.root.join("blobs")) {
            // Not known to be durable: the window is not committed, so the blob goes.
            let _ = disk::remove_file(&dest);
            return Err(e);
        }
        Ok(())
    }

    pub fn read_blob(&self, id: u64) -> io::Result<Vec<u8>> {
        disk::read(&self.blob_path(id))
    }

    pub fn delete_blob(&self, id: u64) -> io::Result<()> {
        remove_if_there(&self.blob_path(id))
    }

    pub fn delete_staging(&self, ino: u64) -> io::Result<()> {
        remove_if_there(&self.staging_path(ino))
    }

    /// statvfs(2) of the filesystem the store lives on.
    pub fn statvfs(&self) -> io::Result<libc::statvfs> {
        statvfs(&self.root)
    }

    /// Refuse a write of `len` bytes with ENOSPC while it would leave less than [`RESERVE`]
    /// free: the index must always find room to record changes (sled cannot recover from a
    /// full disk without a restart), and deleting files must keep working on a full store.
    pub fn ensure_room(&self, len: u64) -> io::Result<()> {
        let free = self.free_bytes()?;
        if free < len.saturating_add(RESERVE) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Files in `staging/` and the space they take (the backlog, for `stats` and the engine's
    /// housekeeping): a stat of every staged file. The figure is kept for
    /// [`Store::staging_bytes_recent`].
    pub fn staging_usage(&self) -> (u64, u64) {
        let mut sample = self.staging_sample.lock().unwrap_or_else(|e| e.into_inner());
        self.walk_staging(&mut sample)
    }

    fn walk_staging(&self, sample: &mut StagingSample) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let start = std::time::Instant::now();
        let mut usage = (0, 0);
        if let Ok(rd) = std::fs::read_dir(self.staging_dir()) {
            for m in rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()) {
                usage.0 += 1;
                usage.1 += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
            }
        }
        *sample = StagingSample { at: Some(std::time::Instant::now()), took: start.elapsed() };
        self.staging_sampled_files.store(usage.0, Ordering::Relaxed);
        self.staging_sampled_bytes.store(usage.1, Ordering::Relaxed);
        self.staging_walks.fetch_add(1, Ordering::Relaxed);
        usage
    }

    /// The bytes in `staging/`, walked again unless the last walk is younger than ten times what
    /// it took: the engine asks at every window (its encoding priority, whether a model may
    /// run), and a walk is a stat of every staged file, so walking each time made a window's
    /// cost grow with the backlog (a million-file store whose compression fell behind ingest
    /// then fell further behind: 668,000 staged files, about a second a window of 32). A small
    /// staging directory is walked each time (the figure is exact, as a window's priority
    /// needs: a window started under `SCHED_IDLE` on busy cores never ends); a large one at
    /// most a tenth of the time. A caller that finds a walk under way takes the last figure.
    pub fn staging_bytes_recent(&self) -> u64 {
        self.staging_usage_recent(std::time::Duration::ZERO).1
    }

    /// [`Store::staging_usage`] as of a walk at most `max_age` old, or ten times what the last
    /// walk took if that is longer ([`Store::staging_bytes_recent`] with an age): the engine's
    /// housekeeping samples the backlog so, and a backlog of hundreds of thousands of files then
    /// costs it a walk of about a second every ten, not every housekeeping round.
    pub fn staging_usage_recent(&self, max_age: std::time::Duration) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        if let Ok(mut sample) = self.staging_sample.try_lock() {
            if sample.at.is_none_or(|t| t.elapsed() >= max_age.max(sample.took * 10)) {
                return self.walk_staging(&mut sample);
            }
        }
        (self.staging_sampled_files.load(Ordering::Relaxed), self.staging_sampled_bytes.load(Ordering::Relaxed))
    }

    /// Walks of `staging/` made so far ([`Store::staging_usage`]).
    pub fn staging_walks(&self) -> u64 {
        self.staging_walks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes used by a directory tree of the store (for `stats`).
    pub fn bytes_in(&self, sub: &str) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.root.join(sub))
    }
}

impl Reserve {
    /// [`Store::keep_room_for_index`].
    fn keep_room_for_index(&self) {
        use std::sync::atomic::Ordering;
        self.preallocate_index();
        if !self.held.load(Ordering::Relaxed) || free_bytes(&self.root).is_ok_and(|f| f >= INDEX_ROOM) {
            return;
        }
        if self.held.swap(false, Ordering::Relaxed) {
            let path = self.root.join(RESERVE_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    // Blocks of a deleted file are free once the journal commits it.
                    let _ = File::open(&self.root).and_then(|d| d.sync_all());
                    tracing::warn!(store = %self.root.display(), "the store's disk is full: gave up the {} MiB reserve so that the index can still record changes", RESERVE >> 20);
                    self.preallocate_index();
                }
                Err(e) => tracing::error!(file = %path.display(), error = %e, "cannot delete the reserve file of a full store"),
            }
        }
    }

    /// Make sure at least half of [`INDEX_PREALLOCATED`] past the end of sled's log file is
    /// allocated, topping it up to the whole when less is left (a log that grows by a batch at a
    /// time costs a fallocate(2) every few MiB, not at every index change). Fails quietly (no
    /// such file yet, a full disk, a filesystem without `fallocate`): the reserve file is the
    /// fallback, and the next index change tries again.
    fn preallocate_index(&self) {
        use std::os::fd::AsRawFd;
        let mut g = self.index_log.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.is_none() {
            // (`db` is sled 0.34's log file.)
            g.0 = File::options().write(true).open(index_dir(&self.root).join("db")).ok();
            g.1 = 0;
        }
        let Some(f) = g.0.as_ref() else { return };
        let Ok(len) = f.metadata().map(|m| m.len()) else { return };
        if len + INDEX_PREALLOCATED / 2 <= g.1 {
            return;
        }
        // SAFETY: fallocate(2) on a descriptor we own; KEEP_SIZE leaves the file's size (and so
        // what sled reads) unchanged.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, len as libc::off_t, INDEX_PREALLOCATED as libc::off_t) };
        g.1 = if r == 0 { len + INDEX_PREALLOCATED } else { 0 };
    }
}

/// Where a store at `root` keeps its index.
fn index_dir(root: &Path) -> PathBuf {
    root.join("index")
}

/// statvfs(2) of the filesystem `path` is on.
fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a valid C string.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut sv) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sv)
}

/// Bytes free to us on the filesystem `path` is on.
fn free_bytes(path: &Path) -> io::Result<u64> {
    let sv = statvfs(path)?;
    Ok(sv.f_bavail * sv.f_frsize)
}

pub fn fsync_dir(path: &Path) -> io::Result<()> {
    disk::fsync_dir(path)
}

/// unlink(2), a missing file being no error.
pub fn remove_if_there(path: &Path) -> io::Result<()> {
    match disk::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backlog figure of the engine's housekeeping walks `staging/` once per `max_age`, not
    /// at every call; `staging_usage` (stats) walks at once and refreshes it; the per-window
    /// figure walks unless the last walk is younger than ten times what it took.
    #[test]
    fn staging_bytes_recent_walks_at_most_once_per_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let stage = |ino: u64| store.write_staging_at(&store.open_staging(ino, true).unwrap(), ino, &[7u8; 8192], 0).unwrap();
        stage(1);
        let hour = std::time::Duration::from_secs(3600);
        let first = store.staging_usage_recent(hour);
        assert!(first.0 == 1 && first.1 >= 8192, "{first:?}");
        assert_eq!(store.staging_walks(), 1);
        for ino in 2..50 {
            stage(ino);
            assert_eq!(store.staging_usage_recent(hour), first, "a figure younger than max_age is kept");
        }
        assert_eq!(store.staging_walks(), 1, "no walk per call");
        let (files, bytes) = store.staging_usage();
        assert_eq!((files, store.staging_walks()), (49, 2));
        assert!(bytes >= 49 * 8192, "{bytes}");
        assert_eq!(store.staging_usage_recent(hour), (49, bytes), "the walk of staging_usage is the new figure");
        stage(50);
        // The per-window figure: once ten times the last walk's duration has passed, the first
        // call walks again; the calls before it walk not at all.
        let start = std::time::Instant::now();
        while store.staging_bytes_recent() == bytes {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "an expired figure is walked again");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(store.staging_walks(), 3);
    }

    /// Before an index change the blocks past the end of sled's log are allocated (its size
    /// unchanged), and again after the log grew: sled's next writes need no room from the disk.
    #[test]
    fn room_for_index_allocates_blocks_past_the_end_of_its_log() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = crate::index::SledStore::open_keeping_room(&store.index_dir(), store.room_for_index()).unwrap();
        let log = store.index_dir().join("db");
        let allocated = || {
            let m = std::fs::metadata(&log).unwrap();
            (m.len(), m.blocks() * 512)
        };
        let (len0, _) = allocated();
        store.keep_room_for_index();
        let (len, blocks) = allocated();
        assert_eq!(len, len0, "the log's size is sled's");
        assert!(blocks >= len + INDEX_PREALLOCATED, "{blocks} bytes allocated for a log of {len}");
        use crate::index::MetaStore;
        for k in 0..64u32 {
            let mut b = crate::index::Batch::default();
            b.put(k.to_be_bytes().to_vec(), vec![k as u8; 64 << 10]);
            index.apply(b).unwrap();
        }
        index.flush().unwrap();
        store.keep_room_for_index();
        let (grown, blocks) = allocated();
        assert!(grown > len, "the log grew: {grown}");
        assert!(blocks >= grown + INDEX_PREALLOCATED / 2, "{blocks} bytes allocated for a log of {grown}");
    }

    #[test]
    fn a_created_staging_file_marks_the_directory_for_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.staging_dir_pending());
        store.open_staging(5, false).unwrap_err(); // opening without create creates nothing
        assert!(!store.staging_dir_pending());
        store.open_staging(5, true).unwrap();
        assert!(store.staging_path(5).exists());
        assert!(store.staging_dir_pending());
        store.sync_staging_dir().unwrap();
        assert!(!store.staging_dir_pending());
    }

    #[test]
    fn second_open_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let _a = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).err().expect("locked");
        let msg = e.to_string();
        assert!(msg.contains("in use by another tezipfs daemon") && msg.contains(&std::process::id().to_string()), "{msg}");
    }

    #[test]
    fn blobs_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.write_blob(3, b"abc").unwrap();
        assert_eq!(s.read_blob(3).unwrap(), b"abc");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        s.delete_blob(3).unwrap();
        s.delete_blob(3).unwrap();
    }
}
