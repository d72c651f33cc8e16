//! File contents: open, read, write, truncate, fsync, release, and the switch of a file between
//! its two homes (a staging file while it is written, a blob entry once compressed).

use super::{now, Attr, Ctx, FsError, FsResult, Handle, State, Txn, Vfs};
use crate::index::{Data, Index, Inode, Kind};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Flags of an open, reduced to what the filesystem needs.
#[derive(Clone, Copy, Debug)]
pub struct OpenFlags {
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
    /// O_DIRECT: kept off passthrough, where the backing filesystem would demand aligned buffers.
    pub direct: bool,
}

impl OpenFlags {
    pub fn from_raw(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
            direct: flags & libc::O_DIRECT != 0,
        }
    }
}

/// New content of a staged file: its size and times, and a new generation (so that a
/// compression of the old content does not commit).
fn note_write(i: &mut Inode, size: u64, mtime: crate::index::Timestamp, ctime: crate::index::Timestamp) {
    (i.size, i.mtime, i.ctime) = (size, mtime, ctime);
    i.generation += 1;
    i.data = Data::Staged;
    i.note = None;
}

/// An opened file: its handle, and for a passthrough handle the file the kernel should use.
pub struct Opened {
    pub fh: u64,
    pub passthrough: Option<Arc<File>>,
    /// Compressed: the content cannot change while this handle is open without a reopen for
    /// writing, so the kernel may keep its page cache.
    pub immutable: bool,
}

impl Vfs {
    /// Open a file. Opening a compressed file for writing brings its bytes back to staging
    /// first (rehydration), unless it is truncated anyway.
    ///
    /// An open for writing may get a passthrough handle (see the rules below and S48):
    /// [`Opened::passthrough`] is then the staging file the kernel reads and writes directly.
    pub fn open(&self, ino: u64, flags: OpenFlags) -> FsResult<Opened> {
        let i = self.inode(ino)?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        // O_TRUNC empties the file even with O_RDONLY, as Linux local filesystems do (the
        // kernel has checked write permission for it). With FUSE's atomic O_TRUNC the kernel
        // checks that an O_RDONLY|O_TRUNC file is not being executed only after this open has
        // truncated it, and it cannot tell us: such opens of a file with an execute bit are
        // refused (S4), so a running program is never cut short.
        if flags.truncate && !flags.write && i.perm & 0o111 != 0 {
            return Err(FsError::TextBusy("O_RDONLY|O_TRUNC of an executable file"));
        }
        if flags.truncate {
            self.truncate(ino, 0, None)?;
        } else if flags.write && matches!(i.data, Data::Compressed { .. }) {
            self.rehydrate(ino)?;
        }
        let mut st = self.lock();
        let mut i = self.inode(ino)?;
        let c = st.open.get(&ino).copied().unwrap_or_default();
        // Passthrough for writers only: readers of staged files stay with the daemon, so they
        // never hold up a compression (S21). A reader joins the
        // passthrough of an inode that already has such handles: the kernel wants one mode.
        let passthrough = i.kind == Kind::File
            && (c.passthrough > 0
                || (self.passthrough.load(Ordering::Relaxed)
                    && c.handles == 0
                    && flags.write
                    && !flags.direct
                    && !matches!(i.data, Data::Compressed { .. })
                    && self.store.passthrough_room(self.config.passthrough_min_free)));
        let mut file = None;
        if passthrough {
            let f = self.staging_file_locked(&mut st, ino, true)?;
            if flags.write {
                // Writes will not reach us: the file is staged from now on, and a compression
                // of it already under way must not commit (its generation moves on).
                i.data = Data::Staged;
                i.generation += 1;
                let mut t = Txn::default();
                Index::put_inode(&mut t.batch, &i);
                self.commit(t)?;
                self.written_behind.follow(&i, f.clone())?;
                self.counters.passthrough_opens.fetch_add(1, Ordering::Relaxed);
            }
            file = Some(f);
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, Handle::File { ino, write: flags.write, append: flags.append, dirty: false, passthrough });
        let c = st.open.entry(ino).or_default();
        c.handles += 1;
        if flags.write {
            c.writers += 1;
        }
        if passthrough {
            c.passthrough += 1;
            if flags.write {
                c.passthrough_writers += 1;
            }
        }
        Ok(Opened { fh, passthrough: file, immutable: matches!(i.data, Data::Compressed { .. }) })
    }

    /// The kernel would not take a passthrough handle (no CAP_SYS_ADMIN, an old kernel, a
    /// backing filesystem it cannot stack on): turn passthrough off and make `fh` a plain
    /// handle, served by [`Vfs::read`] and [`Vfs::write`].
    pub fn passthrough_refused(&self, fh: u64) {
        self.passthrough.store(false, Ordering::Relaxed);
        let mut st = self.lock();
        let Some(Handle::File { ino, write, passthrough, .. }) = st.handles.get_mut(&fh) else { return };
        if !std::mem::replace(passthrough, false) {
            return;
        }
        let (ino, write) = (*ino, *write);
        if let Some(c) = st.open.get_mut(&ino) {
            c.passthrough = c.passthrough.saturating_sub(1);
            if write {
                c.passthrough_writers = c.passthrough_writers.saturating_sub(1);
                if c.passthrough_writers == 0 {
                    self.written_behind.forget(ino);
                }
                self.counters.passthrough_opens.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Allow passthrough opens (the adapter calls this once the kernel has agreed to it).
    pub fn enable_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// Take what passthrough writers did to the staging file (size, times) into the index.
    /// (Set-ID bits need nothing here: the kernel clears them with a setattr, as for any write.)
    /// Returns whether anything changed.
    fn absorb(&self, ino: u64) -> FsResult<bool> {
        let _st = self.lock();
        let mut i = self.inode(ino)?;
        if !self.fold_written_behind(&mut i)? {
            return Ok(false);
        }
        self.put(&i)?;
        Ok(true)
    }

    /// Fold what passthrough writers did to the staging file of `i` into `i` (not yet into the
    /// index). Returns whether anything changed.
    pub(super) fn fold_written_behind(&self, i: &mut Inode) -> FsResult<bool> {
        let Some(c) = self.written_behind.current(i, now())? else { return Ok(false) };
        if (c.size, c.mtime, c.ctime) == (i.size, i.mtime, i.ctime) {
            return Ok(false);
        }
        self.counters.ingested_bytes.fetch_add(c.size.saturating_sub(i.size), Ordering::Relaxed);
        note_write(i, c.size, c.mtime, c.ctime);
        Ok(true)
    }

    /// Write one inode record (one index batch).
    fn put(&self, i: &Inode) -> FsResult<()> {
        let mut t = Txn::default();
        Index::put_inode(&mut t.batch, i);
        self.commit(t)
    }

    /// create(2): a new regular file, opened.
    pub fn create(&self, ctx: Ctx, parent: u64, name: &[u8], mode: u32, umask: u32, flags: OpenFlags) -> FsResult<(Attr, Opened)> {
        let attr = self.create_node(ctx, parent, name, super::NewNode::File, mode, umask)?;
        let opened = self.open(attr.ino, OpenFlags { truncate: false, ..flags })?;
        Ok((attr, opened))
    }

    fn handle_ino(&self, fh: u64) -> FsResult<(u64, bool, bool)> {
        match self.lock().handles.get(&fh) {
            Some(Handle::File { ino, write, append, .. }) => Ok((*ino, *write, *append)),
            _ => Err(FsError::BadHandle),
        }
    }

    /// The staging file of an inode, opened once and shared by its handles.
    fn staging_file(&self, ino: u64, create: bool) -> FsResult<Arc<File>> {
        self.staging_file_locked(&mut self.lock(), ino, create)
    }

    fn staging_file_locked(&self, st: &mut State, ino: u64, create: bool) -> FsResult<Arc<File>> {
        if let Some(f) = st.staging.get(&ino) {
            return Ok(f.clone());
        }
        let f = Arc::new(self.store.open_staging(ino, create)?);
        st.staging.insert(ino, f.clone());
        Ok(f)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let t0 = std::time::Instant::now();
        let r = self.read_at(fh, offset, size);
        self.counters.read_seconds.observe(t0.elapsed());
        r
    }

    fn read_at(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (ino, _, _) = self.handle_ino(fh)?;
        let i = self.inode(ino)?;
        if offset >= i.size {
            return Ok(Vec::new());
        }
        let len = (size as u64).min(i.size - offset) as usize;
        match i.data {
            Data::None => Ok(vec![0; len]),
            Data::Staged => {
                let f = match self.staging_file(ino, false) {
                    Ok(f) => f,
                    // Compressed (its staging file deleted) between the inode read above and
                    // the open: read it from where it lives now.
                    Err(FsError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound && self.inode(ino)?.data != Data::Staged => {
                        return self.read(fh, offset, size)
                    }
                    // Staged, yet its bytes are gone (lost in a crash, deleted by hand): EIO with
                    // a log line, not ENOENT for a name that lists.
                    Err(FsError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        let e = FsError::Corrupt {
                            what: format!("inode {ino}"),
                            why: format!("its staging file {} is missing", self.store.staging_path(ino).display()),
                        };
                        tracing::error!(ino, error = %e, "cannot read a staged file");
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        self.counters.read_errors.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                let mut buf = vec![0u8; len];
                let mut done = 0;
                while done < len {
                    let n = self.store.read_staging_at(&f, ino, &mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        break; // a hole at the end of a sparse file reads as zeros
                    }
                    done += n;
                }
                self.counters.read_staged_bytes.fetch_add(done as u64, Ordering::Relaxed);
                Ok(buf)
            }
            Data::Compressed { blob, slot, .. } => {
                let source = if self.cache.contains((blob, slot)) { &self.counters.read_cache_bytes } else { &self.counters.read_decoded_bytes };
                let bytes = self.frame(ino, blob, slot)?;
                if offset == 0 {
                    self.after_read(ino, blob, slot);
                }
                let end = (offset as usize + len).min(bytes.len());
                let out = bytes.get(offset as usize..end).map(|s| s.to_vec()).unwrap_or_default();
                source.fetch_add(out.len() as u64, Ordering::Relaxed);
                Ok(out)
            }
        }
    }

    /// The whole content of entry `slot` of `blob`, from the cache or decoded (with the frames
    /// before it in its window, which are cached too).
    pub(crate) fn frame(&self, ino: u64, blob: u64, slot: u32) -> FsResult<Arc<Vec<u8>>> {
        if let Some(b) = self.cache.get((blob, slot)) {
            return Ok(b);
        }
        // Being decoded in the background: wait for it rather than decode the window twice.
        self.readahead.wait_for(blob, || self.cache.contains((blob, slot)));
        if let Some(b) = self.cache.get((blob, slot)) {
            return Ok(b);
        }
        let corrupt = |why: String| {
            let e = FsError::Corrupt { what: format!("inode {ino} (blob {blob}, entry {slot})"), why };
            tracing::error!(ino, blob, slot, error = %e, "cannot read a compressed file");
            self.counters.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.counters.read_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            e
        };
        // Reuse a decoder positioned in this blob when it has not passed the frame yet.
        let mut kept = match self.decoders.take(blob) {
            Some(k) if k.reaches(slot as usize) => k,
            _ => self.new_decoder(blob).map_err(|e| corrupt(e.to_string()))?,
        };
        let cache = &self.cache;
        let out = kept.dec.decode(slot as usize, |i, bytes| cache.put((blob, i as u32), Arc::new(bytes))).map_err(|e| corrupt(e.to_string()))?;
        let out = Arc::new(out);
        self.cache.put((blob, slot), out.clone());
        self.decoders.keep(blob, kept);
        Ok(out)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let (ino, write, append) = self.handle_ino(fh)?;
        if !write {
            return Err(FsError::BadHandle);
        }
        // The file's data lock orders this write with other writes and truncations of the file;
        // the namespace lock is held only to update the inode, never across the disk call.
        let d = self.data_lock(ino);
        let f = self.staging_file(ino, true)?;
        let i = self.inode(ino)?;
        if matches!(i.data, Data::Compressed { .. }) {
            // compressed since the open (only possible without writers; defensive)
            drop(d);
            self.rehydrate(ino)?;
            return self.write(fh, offset, data);
        }
        let at = if append { i.size } else { offset };
        self.store.ensure_room(data.len() as u64)?;
        self.store.write_staging_at(&f, ino, data, at)?;
        self.counters.ingested_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let g = self.lock();
        let mut i = self.inode(ino)?;
        let ts = now();
        let size = i.size.max(at + data.len() as u64);
        note_write(&mut i, size, ts, ts);
        self.put(&i)?;
        drop(g);
        drop(d);
        if let Some(Handle::File { dirty, .. }) = self.lock().handles.get_mut(&fh) {
            *dirty = true;
        }
        Ok(data.len())
    }

    /// Set the size of a file (truncate or extend with zeros).
    pub fn truncate(&self, ino: u64, size: u64, _fh: Option<u64>) -> FsResult<()> {
        let i = self.inode(ino)?;
        match i.kind {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::File => {}
            _ => return Err(FsError::Invalid("truncate of a special file".into())),
        }
        if size != 0 && matches!(i.data, Data::Compressed { .. }) {
            self.rehydrate(ino)?;
        }
        // The data lock orders this with the file's writes; the namespace lock is held only for
        // the index update, not across the cut and its sync.
        let _d = self.data_lock(ino);
        let f = self.store.open_staging(ino, true)?;
        self.store.set_staging_len(&f, ino, size)?;
        let g = self.lock();
        let mut i = self.inode(ino)?;
        let mut t = Txn::default();
        if size == 0 {
            if let Data::Compressed { blob, .. } = i.data {
                self.unref_blob(&mut t, blob)?;
            }
        }
        let ts = now();
        i.size = size;
        i.data = Data::Staged;
        i.generation += 1;
        i.mtime = ts;
        i.ctime = ts;
        Index::put_inode(&mut t.batch, &i);
        self.commit(t)?;
        self.written_behind.rebaseline(&i)?;
        drop(g);
        // The staging file is cut at once, so the new size must be durable at once too: otherwise
        // a crash before the next index flush brings the old size back over zeros.
        self.store.sync_staging(&f, ino)?;
        self.store.sync_staging_dir()?;
        self.index.flush()?;
        Ok(())
    }

    /// Bring a compressed file back to staging: decode it, write the staging file durably, and
    /// switch the inode (its other window-mates stay where they are).
    pub fn rehydrate(&self, ino: u64) -> FsResult<()> {
        // The staging file is written under the file's data lock, once the file is known to be
        // still compressed: a concurrent rehydration must not truncate it under a writer that
        // already wrote to it. The namespace lock is held only for the index update.
        let _d = self.data_lock(ino);
        let i = self.inode(ino)?;
        let Data::Compressed { blob, slot, .. } = i.data else { return Ok(()) };
        let bytes = self.frame(ino, blob, slot)?;
        self.store.ensure_room(bytes.len() as u64)?;
        {
            let f = self.store.open_staging(ino, true)?;
            self.store.set_staging_len(&f, ino, 0)?;
            self.store.write_staging_at(&f, ino, &bytes, 0)?;
            self.store.sync_staging(&f, ino)?;
            self.store.sync_staging_dir()?;
        }
        let mut st = self.lock();
        let mut now_i = match self.inode(ino) {
            Ok(n) if n.data == i.data => n,
            // Deleted meanwhile (nothing else changes a compressed file's data while its data
            // lock is held): the staging file goes with it.
            other => {
                drop(st);
                let _ = self.store.delete_staging(ino);
                return other.map(|_| ());
            }
        };
        // A descriptor cached for an earlier staging file of this inode is not this file.
        st.staging.remove(&ino);
        let mut t = Txn::default();
        self.unref_blob(&mut t, blob)?;
        now_i.data = Data::Staged;
        now_i.generation += 1;
        Index::put_inode(&mut t.batch, &now_i);
        self.commit(t)?;
        drop(st);
        self.index.flush()?;
        self.counters.rehydrated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queue_file(ino);
        tracing::debug!(ino, blob, slot, "rehydrated a compressed file for writing");
        Ok(())
    }

    /// close(2) of one descriptor: what was written through it becomes durable (staging file
    /// and index), so a closed file survives a crash.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let (ino, dirty, behind) = match self.lock().handles.get_mut(&fh) {
            Some(Handle::File { ino, dirty, passthrough, write, .. }) => (*ino, std::mem::replace(dirty, false), *passthrough && *write),
            _ => return Err(FsError::BadHandle),
        };
        if behind {
            self.absorb(ino)?;
        }
        if (dirty || behind) && self.sync_on_close(ino)? {
            self.sync_file(ino)?;
        }
        if dirty || behind {
            self.queue_file(ino);
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, _, _) = self.handle_ino(fh)?;
        self.absorb(ino)?;
        self.sync_file(ino)?;
        self.queue_file(ino);
        Ok(())
    }

    /// Whether a close after a write makes the file durable: the `sync` setting of its
    /// directory (S13, S50).
    fn sync_on_close(&self, ino: u64) -> FsResult<bool> {
        let parent = self.inode(ino)?.parent;
        Ok(self.policy(parent)?.sync == crate::policy::SyncMode::Close)
    }

    fn sync_file(&self, ino: u64) -> FsResult<()> {
        self.counters.file_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = self.lock().staging.get(&ino).cloned();
        if let Some(f) = f {
            self.store.sync_staging(&f, ino)?;
        }
        self.store.sync_staging_dir()?;
        self.index.flush()?;
        Ok(())
    }

    /// The last close of a handle. A file unlinked while open goes now. Returns whether the
    /// handle was a passthrough one (the adapter then lets go of the kernel's backing file);
    /// an unknown handle is the only error.
    pub fn release(&self, fh: u64) -> FsResult<bool> {
        let (ino, write, dirty, passthrough) = match self.lock().handles.get(&fh) {
            Some(Handle::File { ino, write, dirty, passthrough, .. }) => (*ino, *write, *dirty, *passthrough),
            _ => return Err(FsError::BadHandle),
        };
        // The handle goes whatever fails below: the kernel ignores errors of a release (close(2)
        // has returned already), so they are logged and counted instead.
        let absorbed = if passthrough && write { self.absorb(ino).map(|_| ()) } else { Ok(()) };
        let mut st = self.lock();
        st.handles.remove(&fh);
        let c = st.open.entry(ino).or_default();
        c.handles = c.handles.saturating_sub(1);
        if write {
            c.writers = c.writers.saturating_sub(1);
        }
        if passthrough {
            c.passthrough = c.passthrough.saturating_sub(1);
            if write {
                c.passthrough_writers = c.passthrough_writers.saturating_sub(1);
                if c.passthrough_writers == 0 {
                    self.written_behind.forget(ino);
                }
            }
        }
        let last = c.handles == 0;
        if last {
            st.open.remove(&ino);
            st.staging.remove(&ino);
        }
        drop(st);
        let rest = absorbed.and_then(|()| {
            if dirty && self.sync_on_close(ino)? {
                self.sync_file(ino)?;
            }
            if last {
                if let Some(i) = self.index.inode(ino)? {
                    if i.nlink == 0 {
                        let mut t = Txn::default();
                        self.release_data(&mut t, &i)?;
                        self.index.delete_inode(&mut t.batch, ino)?;
                        self.commit(t)?;
                    } else if i.kind == Kind::File {
                        // Open files wait: the last close lets the engine look at it.
                        self.work.touch(i.parent);
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = rest {
            tracing::error!(ino, error = %e, "release of a file handle failed");
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            if last {
                // (An unlinked file's inode may be left: the next start's scan removes it.)
                self.needs_recovery.store(true, Ordering::SeqCst);
            }
        }
        Ok(passthrough)
    }

    /// Whether an inode has open handles (the engine waits for the last close).
    pub(crate) fn is_open(&self, ino: u64) -> bool {
        self.lock().open.contains_key(&ino)
    }

    /// A new blob id (the counter is bumped under the namespace lock).
    pub(crate) fn alloc_blob_id(&self) -> FsResult<u64> {
        let _g = self.lock();
        let id = self.index.counter(crate::index::keys::NEXT_BLOB)?.max(1);
        let mut t = Txn::default();
        Index::put_counter(&mut t.batch, crate::index::keys::NEXT_BLOB, id + 1);
        self.commit(t)?;
        Ok(id)
    }

    /// Replace staged files by blob entries, in one index batch, for each file that is still
    /// staged at the generation that was compressed and has no writer. Returns the inodes
    /// switched. Their staging files are deleted after the batch is durable.
    ///
    /// The namespace lock is held until the batch is applied: a writer must not open and write a
    /// file between the check and the switch (its write would be overwritten by the switch), and
    /// a reader must not cache a descriptor of a staging file about to be deleted (a later
    /// writer would write into the deleted file). The files' data locks are held until the batch
    /// is durable and the staging files deleted: a write or truncation of one of them waits, and
    /// so does reading its `user.tezip.state` (S35), while other files go on.
    /// Switch the window's files that are still as they were read to the new blob, in one
    /// batch; `model` is the model the blob was coded with (the blob then holds a reference to
    /// it, so that the model is kept while the blob lives).
    pub(crate) fn commit_compressed(&self, blob: crate::index::Blob, members: &[(Inode, u32, u64, bool)], model: Option<[u8; 32]>) -> FsResult<Vec<u64>> {
        let _d = self.data_locks_of(members.iter().map(|m| m.0.ino));
        let mut st = self.lock();
        let mut t = Txn::default();
        let mut switched = Vec::new();
        for (seen, slot, stored, frame) in members {
            let Some(mut cur) = self.index.inode(seen.ino)? else { continue };
            // Writers, and passthrough readers (whose kernel handle must keep the staging file).
            let writers = st.open.get(&seen.ino).is_some_and(|c| c.writers > 0 || c.passthrough > 0);
            if cur.data != Data::Staged || cur.generation != seen.generation || writers || cur.nlink == 0 {
                continue;
            }
            cur.data = Data::Compressed { blob: blob.id, slot: *slot, stored: *stored, frame: *frame };
            cur.note = None;
            Index::put_inode(&mut t.batch, &cur);
            t.staging.push(cur.ino);
            switched.push(cur.ino);
        }
        let mut rec = blob;
        rec.live = switched.len() as u32;
        if let (Some(h), true) = (model, rec.live > 0) {
            t.batch.put(crate::index::keys::blob_model(rec.id), h.to_vec());
            Index::put_counter(&mut t.batch, &crate::index::keys::model_refs(&h), self.index.model_refs(&h)? + 1);
        }
        t.blobs.insert(rec.id, rec);
        for ino in &switched {
            st.staging.remove(ino);
        }
        let freed = self.apply(t)?;
        drop(st);
        self.finish(freed)?;
        Ok(switched)
    }

    /// Read a staged file whole (the engine's input).
    pub(crate) fn read_staged(&self, i: &Inode) -> FsResult<Vec<u8>> {
        let mut bytes = self.store.read_staging(i.ino)?;
        bytes.resize(i.size as usize, 0);
        Ok(bytes)
    }
}
