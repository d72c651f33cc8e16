//! The metadata index: inodes, directory entries, xattrs, blob records, counters.
//!
//! [`MetaStore`] is the small key-value interface the rest of the code needs (one atomic batch
//! per filesystem operation, prefix scans, flush); [`SledStore`] implements it on sled 0.34.7.
//! [`Index`] gives it types. Key layout and record encodings are in `docs/INDEX.md`
//! (schema version [`SCHEMA_VERSION`]).

pub mod keys;
pub mod records;

pub use records::{Blob, Data, Inode, Kind, Timestamp};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Version of the key layout and record encodings; stored under [`keys::SCHEMA`].
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index store: {0}")]
    Store(String),
    #[error("index record {key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error("index schema version {found} is not supported by this build (supports {SCHEMA_VERSION})")]
    Schema { found: u32 },
    #[error("index I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sled::Error> for IndexError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => IndexError::Io(io),
            other => IndexError::Store(other.to_string()),
        }
    }
}

/// One atomic update: puts and deletes applied together or not at all.
#[derive(Default, Debug)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What the index needs from a key-value store.
/// A key and its value, as read from the index.
pub type KeyValue = (Vec<u8>, Vec<u8>);
/// A model's SHA-256.
type ModelHash = [u8; 32];

pub trait MetaStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, IndexError>;
    /// Up to `limit` entries with keys starting with `prefix` and greater than `after`.
    fn scan_after(&self, prefix: &[u8], after: &[u8], limit: usize) -> Result<Vec<KeyValue>, IndexError>;
    fn apply(&self, batch: Batch) -> Result<(), IndexError>;
    /// Make every applied batch durable.
    fn flush(&self) -> Result<(), IndexError>;
    fn size_on_disk(&self) -> Result<u64, IndexError>;
}

/// How long an applied batch waits at most for the periodic flush to make it durable.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// sled 0.34.7, one tree, typed key prefixes.
///
/// sled's own timer flush is off: it writes whenever it likes, also on a disk that a writer
/// outside the daemon filled since the last index change, and sled does not recover from a
/// write that failed with ENOSPC. A thread of ours flushes every [`FLUSH_EVERY`] instead, and
/// every flush (that one, the explicit ones, the one at drop) first calls the `keep_room` given
/// at open, which makes room for the index on a full disk ([`crate::store::Store::room_for_index`]).
pub struct SledStore {
    shared: Arc<Shared>,
    /// The periodic flush (none under power-cut simulation): dropping the sender stops it.
    flusher: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// What [`SledStore`] shares with its periodic flush.
struct Shared {
    db: sled::Db,
    dir: std::path::PathBuf,
    /// Under power-cut simulation (`store::disk::powercut`), the copy of the index taken at a
    /// flush holds this exclusively, so that no batch is written into the middle of it.
    copying: std::sync::RwLock<()>,
    /// Called before every flush.
    keep_room: Box<dyn Fn() + Send + Sync>,
    /// A batch was applied since the last flush began: the periodic flush has work (without
    /// any, it neither writes nor calls `keep_room`).
    dirty: AtomicBool,
}

impl Shared {
    fn flush(&self) -> Result<(), IndexError> {
        // Cleared before sled is asked to write: a batch applied after this is left for the
        // next flush. (AcqRel: this flush then sees every batch whose flag it clears.)
        self.dirty.swap(false, Ordering::AcqRel);
        (self.keep_room)();
        {
            let _g = self.copying.read().unwrap_or_else(|e| e.into_inner());
            self.db.flush()?;
        }
        if crate::store::disk::powercut::on() {
            let _g = self.copying.write().unwrap_or_else(|e| e.into_inner());
            crate::store::disk::powercut::index_flushed(&self.dir);
        }
        Ok(())
    }
}

impl SledStore {
    /// [`SledStore::open_keeping_room`] with nothing to call before a flush (a store without
    /// a reserve: offline tools, tests).
    pub fn open(dir: &Path) -> Result<SledStore, IndexError> {
        SledStore::open_keeping_room(dir, || {})
    }

    /// Open (or create) the database in `dir`; `keep_room` is called before every flush. First
    /// removes the partial snapshot files that a crash inside `sled::open` can leave
    /// (`snap.*.generating`, upstream issue #1527): sled would otherwise take such a file as the
    /// newest snapshot and refuse to open for good. A snapshot only becomes real when it is
    /// renamed, so these files never hold needed data.
    pub fn open_keeping_room(dir: &Path, keep_room: impl Fn() + Send + Sync + 'static) -> Result<SledStore, IndexError> {
        SledStore::open_inner(dir, None, keep_room)
    }

    /// [`SledStore::open_keeping_room`] with sled's page cache at most `cache_bytes` (its own
    /// default is 1 GiB; offline tools keep that).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64, keep_room: impl Fn() + Send + Sync + 'static) -> Result<SledStore, IndexError> {
        SledStore::open_inner(dir, Some(cache_bytes), keep_room)
    }

    fn open_inner(dir: &Path, cache_bytes: Option<u64>, keep_room: impl Fn() + Send + Sync + 'static) -> Result<SledStore, IndexError> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let s = name.to_string_lossy();
            if s.starts_with("snap.") && s.ends_with(".generating") {
                let p = dir.join(&name);
                std::fs::remove_file(&p)?;
                tracing::warn!(file = %p.display(), "removed a partial sled snapshot left by a crash");
            }
        }
        let db = open_sled(dir, cache_bytes)?;
        let shared = Arc::new(Shared { db, dir: dir.to_path_buf(), copying: Default::default(), keep_room: Box::new(keep_room), dirty: false.into() });
        // Under power-cut simulation only explicit flushes make the index durable (they are
        // where its copy is taken): no periodic flush.
        let flusher = if crate::store::disk::powercut::on() {
            None
        } else {
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let s = shared.clone();
            let thread = std::thread::Builder::new().name("index-flush".into()).spawn(move || {
                // Until the sender goes (the store is dropped).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                    if s.dirty.load(Ordering::Acquire) {
                        if let Err(e) = s.flush() {
                            tracing::error!(error = %e, "periodic flush of the index failed");
                        }
                    }
                }
            })?;
            Some((stop, thread))
        };
        Ok(SledStore { shared, flusher })
    }
}

/// `sled::open`, waiting up to 2 s for sled's file lock when it is held: the lock of a
/// database this process has just closed is released only when the last of sled's I/O threads
/// lets go of it, a moment after the close (another process holding a store is refused earlier,
/// by the store's own lock file).
fn open_sled(dir: &Path, cache_bytes: Option<u64>) -> Result<sled::Db, IndexError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let mut config = sled::Config::new().path(dir).flush_every_ms(None);
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes);
        }
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

impl Drop for SledStore {
    /// Stops the periodic flush. sled flushes what is left when the database is dropped, right
    /// after this: room is made for that write first.
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.flusher.take() {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the index's periodic flush thread panicked");
            }
        }
        if self.shared.dirty.load(Ordering::Acquire) {
            (self.shared.keep_room)();
        }
    }
}

impl MetaStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self.shared.db.get(key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, IndexError> {
        self.shared.db.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into)).collect()
    }

    fn scan_after(&self, prefix: &[u8], after: &[u8], limit: usize) -> Result<Vec<KeyValue>, IndexError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let start = if after.is_empty() { Included(prefix.to_vec()) } else { Excluded(after.to_vec()) };
        let mut out = Vec::new();
        for r in self.shared.db.range::<Vec<u8>, _>((start, Unbounded)) {
            let (k, v) = r?;
            if !k.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, mut batch: Batch) -> Result<(), IndexError> {
        let _g = self.shared.copying.read().unwrap_or_else(|e| e.into_inner());
        // One key is atomic by itself: it goes in without a sled batch, because every
        // `apply_batch` writes sled's log buffer out at once (`pin_log` rolls it, and each buffer
        // write is a pwrite + synchronous sync_file_range), where a single insert waits in the
        // buffer for the next flush like any other change. A file written through passthrough
        // changes only its inode at open, flush and release: three disk writes fewer per file.
        let applied = if batch.ops.len() == 1 {
            let (k, v) = batch.ops.remove(0);
            match v {
                Some(v) => self.shared.db.insert(k, v).map(|_| ()),
                None => self.shared.db.remove(k).map(|_| ()),
            }
        } else {
            let mut b = sled::Batch::default();
            for (k, v) in batch.ops {
                match v {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
            }
            self.shared.db.apply_batch(b)
        };
        self.shared.dirty.store(true, Ordering::Release);
        Ok(applied?)
    }

    fn flush(&self) -> Result<(), IndexError> {
        self.shared.flush()
    }

    fn size_on_disk(&self) -> Result<u64, IndexError> {
        Ok(self.shared.db.size_on_disk()?)
    }
}

/// The typed index over a [`MetaStore`].
pub struct Index {
    store: Box<dyn MetaStore>,
    /// Keys of records found corrupt, each logged once (`stats` counts them).
    corrupt: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, IndexError> {
    postcard::from_bytes(bytes).map_err(|e| IndexError::Corrupt { key: keys::describe(key), why: e.to_string() })
}

pub fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("index records always serialise")
}

impl Index {
    /// Open the index, creating the schema record on a new store and refusing an unknown one.
    pub fn open(store: Box<dyn MetaStore>) -> Result<Index, IndexError> {
        let idx = Index { store, corrupt: Default::default() };
        match idx.store.get(keys::SCHEMA)? {
            Some(v) => {
                let found: u32 = decode(keys::SCHEMA, &v)?;
                if found == 1 {
                    // Version 2 only adds key kinds (models); a version-1 index is one already,
                    // so only its number changes (and builds that know only version 1 then refuse
                    // it, rather than miss the models its blobs need).
                    tracing::info!("index schema upgraded from version 1 to 2 (model keys)");
                    let mut b = Batch::default();
                    b.put(keys::SCHEMA.to_vec(), encode(&SCHEMA_VERSION));
                    idx.store.apply(b)?;
                    idx.store.flush()?;
                } else if found != SCHEMA_VERSION {
                    return Err(IndexError::Schema { found });
                }
            }
            None => {
                let mut b = Batch::default();
                b.put(keys::SCHEMA.to_vec(), encode(&SCHEMA_VERSION));
                idx.store.apply(b)?;
                idx.store.flush()?;
            }
        }
        Ok(idx)
    }

    pub fn store(&self) -> &dyn MetaStore {
        &*self.store
    }

    pub fn apply(&self, batch: Batch) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.store.apply(batch)
    }

    pub fn flush(&self) -> Result<(), IndexError> {
        self.store.flush()
    }

    pub fn inode(&self, ino: u64) -> Result<Option<Inode>, IndexError> {
        let k = keys::inode(ino);
        self.store.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    pub fn put_inode(b: &mut Batch, inode: &Inode) {
        b.put(keys::inode(inode.ino), encode(inode));
    }

    /// The child `name` of directory `parent`: (ino, kind).
    pub fn dirent(&self, parent: u64, name: &[u8]) -> Result<Option<(u64, Kind)>, IndexError> {
        let k = keys::dirent(parent, name);
        self.store.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    pub fn put_dirent(b: &mut Batch, parent: u64, name: &[u8], ino: u64, kind: Kind) {
        b.put(keys::dirent(parent, name), encode(&(ino, kind)));
    }

    pub fn delete_dirent(b: &mut Batch, parent: u64, name: &[u8]) {
        b.delete(keys::dirent(parent, name));
    }

    /// Entries of a directory, in name order.
    pub fn dirents(&self, parent: u64) -> Result<Vec<(Vec<u8>, u64, Kind)>, IndexError> {
        let prefix = keys::dirent_prefix(parent);
        self.store
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, v)| {
                let (ino, kind): (u64, Kind) = decode(&k, &v)?;
                Ok((k[prefix.len()..].to_vec(), ino, kind))
            })
            .collect()
    }

    pub fn has_dirents(&self, parent: u64) -> Result<bool, IndexError> {
        Ok(!self.store.scan_after(&keys::dirent_prefix(parent), &[], 1)?.is_empty())
    }

    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.store.get(&keys::xattr(ino, name))
    }

    pub fn xattrs(&self, ino: u64) -> Result<Vec<KeyValue>, IndexError> {
        let prefix = keys::xattr_prefix(ino);
        Ok(self.store.scan_prefix(&prefix)?.into_iter().map(|(k, v)| (k[prefix.len()..].to_vec(), v)).collect())
    }

    /// Delete everything stored under an inode (record and xattrs).
    pub fn delete_inode(&self, b: &mut Batch, ino: u64) -> Result<(), IndexError> {
        b.delete(keys::inode(ino));
        for (k, _) in self.store.scan_prefix(&keys::xattr_prefix(ino))? {
            b.delete(k);
        }
        Ok(())
    }

    pub fn blob(&self, id: u64) -> Result<Option<Blob>, IndexError> {
        let k = keys::blob(id);
        self.store.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    pub fn blobs(&self) -> Result<Vec<Blob>, IndexError> {
        self.store.scan_prefix(keys::BLOB)?.iter().map(|(k, v)| decode(k, v)).collect()
    }

    pub fn put_blob(b: &mut Batch, blob: &Blob) {
        b.put(keys::blob(blob.id), encode(blob));
    }

    /// Every inode whose record decodes (for scans at start-up and for the engine). A corrupt
    /// record is logged once and left out: one bad record must not stop the mount or the
    /// compression of every other file ([`Index::inodes_checked`] names them).
    pub fn inodes(&self) -> Result<Vec<Inode>, IndexError> {
        Ok(self.inodes_checked()?.0)
    }

    /// Every inode whose record decodes, and the inode numbers of the records that do not.
    pub fn inodes_checked(&self) -> Result<(Vec<Inode>, Vec<u64>), IndexError> {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (k, v) in self.store.scan_prefix(keys::INODE)? {
            match decode(&k, &v) {
                Ok(i) => good.push(i),
                Err(e) => {
                    self.note_corrupt(&k, &e);
                    bad.push(k.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0));
                }
            }
        }
        Ok((good, bad))
    }

    /// Remember a record found corrupt; the first time, log it.
    pub fn note_corrupt(&self, key: &[u8], e: &IndexError) {
        if self.corrupt.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_vec()) {
            tracing::error!(error = %e, "a corrupt index record: the file it describes reads EIO, the others are unaffected (run fsck)");
        }
    }

    /// How many distinct corrupt records were met since the index was opened.
    pub fn corrupt_records(&self) -> usize {
        self.corrupt.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Inode numbers whose record does not decode (`tezipfs fsck`, start-up).
    pub fn corrupt_inodes(&self) -> Result<Vec<u64>, IndexError> {
        Ok(self.inodes_checked()?.1)
    }

    /// A 32-byte model hash stored under `key`.
    fn hash_at(&self, key: &[u8]) -> Result<Option<[u8; 32]>, IndexError> {
        match self.store.get(key)? {
            Some(v) => Ok(Some(
                v.as_slice().try_into().map_err(|_| IndexError::Corrupt { key: keys::describe(key), why: format!("{} bytes, not a model hash", v.len()) })?,
            )),
            None => Ok(None),
        }
    }

    /// The model a blob was coded with, if any.
    pub fn blob_model(&self, id: u64) -> Result<Option<[u8; 32]>, IndexError> {
        self.hash_at(&keys::blob_model(id))
    }

    /// How many blobs need a model.
    pub fn model_refs(&self, hash: &[u8; 32]) -> Result<u64, IndexError> {
        self.counter(&keys::model_refs(hash))
    }

    pub fn model_by_name(&self, name: &[u8]) -> Result<Option<[u8; 32]>, IndexError> {
        self.hash_at(&keys::model_name(name))
    }

    /// Every model name, in name order.
    pub fn model_names(&self) -> Result<Vec<(Vec<u8>, ModelHash)>, IndexError> {
        let p = keys::MODEL_NAME;
        self.store
            .scan_prefix(p)?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    k[p.len()..].to_vec(),
                    v.as_slice().try_into().map_err(|_| IndexError::Corrupt { key: keys::describe(&k), why: "not a model hash".into() })?,
                ))
            })
            .collect()
    }

    /// The model trained for a directory under `model=auto`.
    pub fn dir_model(&self, dir: u64) -> Result<Option<[u8; 32]>, IndexError> {
        self.hash_at(&keys::dir_model(dir))
    }

    /// Every (directory, trained model).
    pub fn dir_models(&self) -> Result<Vec<(u64, [u8; 32])>, IndexError> {
        let p = keys::DIR_MODEL;
        self.store
            .scan_prefix(p)?
            .into_iter()
            .map(|(k, v)| {
                let bad = || IndexError::Corrupt { key: keys::describe(&k), why: "not a directory's model".into() };
                let dir = u64::from_be_bytes(k.get(1..9).and_then(|s| s.try_into().ok()).ok_or_else(bad)?);
                Ok((dir, v.as_slice().try_into().map_err(|_| bad())?))
            })
            .collect()
    }

    pub fn counter(&self, key: &[u8]) -> Result<u64, IndexError> {
        Ok(match self.store.get(key)? {
            Some(v) => decode(key, &v)?,
            None => 0,
        })
    }

    pub fn put_counter(b: &mut Batch, key: &[u8], v: u64) {
        b.put(key.to_vec(), encode(&v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_snapshot_is_removed_and_data_survives() {
        let dir = tempfile::tempdir().unwrap();
        {
            let idx = Index::open(Box::new(SledStore::open(dir.path()).unwrap())).unwrap();
            let mut b = Batch::default();
            Index::put_dirent(&mut b, 1, b"frame_1", 7, Kind::File);
            idx.apply(b).unwrap();
            idx.flush().unwrap();
        }
        let planted = dir.path().join("snap.00000000000FFFFF.generating");
        std::fs::write(&planted, b"partial snapshot: crc will not match").unwrap();
        let idx = Index::open(Box::new(SledStore::open(dir.path()).unwrap())).unwrap();
        assert!(!planted.exists());
        assert_eq!(idx.dirent(1, b"frame_1").unwrap(), Some((7, Kind::File)));
    }

    /// A one-key change (applied without a sled batch) and a batch of several keys both read
    /// back at once and survive a flush and a reopen; a one-key delete too.
    #[test]
    fn one_key_changes_and_batches_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(b"a".to_vec(), b"1".to_vec());
            b.put(b"b".to_vec(), b"2".to_vec());
            s.apply(b).unwrap();
            let mut one = Batch::default();
            one.put(b"c".to_vec(), b"3".to_vec());
            s.apply(one).unwrap();
            let mut gone = Batch::default();
            gone.delete(b"a".to_vec());
            s.apply(gone).unwrap();
            assert_eq!(s.get(b"c").unwrap(), Some(b"3".to_vec()));
            assert_eq!(s.get(b"a").unwrap(), None);
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.get(b"c").unwrap(), Some(b"3".to_vec()));
    }

    /// The periodic flush runs when a batch waits (and only then), makes room first, writes the
    /// batch to disk, and stops with the store: the database opens again (sled locks it while
    /// it is open).
    #[test]
    fn periodic_flush_makes_room_first_and_stops_with_the_store() {
        use std::sync::atomic::AtomicUsize;
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let s = SledStore::open_keeping_room(dir.path(), move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        std::thread::sleep(FLUSH_EVERY * 3);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing to flush, no room made");
        let value = b"made durable by the periodic flush".to_vec();
        let mut b = Batch::default();
        b.put(b"k".to_vec(), value.clone());
        s.apply(b).unwrap();
        // Within FLUSH_EVERY; a loaded machine gets 10 s. Then no second one: nothing new.
        let t0 = std::time::Instant::now();
        while calls.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(FLUSH_EVERY * 2);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one periodic flush, room made first");
        let log = std::fs::read(dir.path().join("db")).unwrap();
        assert!(log.windows(value.len()).any(|w| w == value), "the batch is in sled's file");
        s.flush().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "an explicit flush makes room first too");
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(value));
    }

    #[test]
    fn unknown_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(keys::SCHEMA.to_vec(), encode(&99u32));
        s.apply(b).unwrap();
        assert!(matches!(Index::open(Box::new(s)), Err(IndexError::Schema { found: 99 })));
    }
}
