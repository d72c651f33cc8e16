//! Read-ahead of compressed frames. A window decodes in order (frame k needs frame k-1), so one
//! reader going through a directory keeps one core busy at most. When a reader gets a frame of
//! a window, the workers here decode the rest of that window into the cache, and when it starts
//! a window, the next windows of the same directory too: as many as there are workers (one per
//! core), so that while the reader copies one window every core decodes one of the windows it
//! will read next, as long as they fit in half the cache and workers are free (always the next
//! one, as before: readers of several directories share the workers and the cache). With
//! the next window alone, a reader that reads faster than one core decodes kept one window in
//! flight: 1.45 cores busy on 2 (`scripts/bench-mount`, 1 GiB of 2048x2048 frames). A reader that
//! asks for a frame being decoded in the background waits for it rather than decoding the
//! window a second time. Errors are left to the reader's own decode (which logs and counts
//! them): read-ahead only ever fills the cache.

use super::Vfs;
use crate::index::{Data, Kind};
use std::collections::HashSet;
use std::sync::{mpsc, Arc, Condvar, Mutex, Weak};

/// Decode entries `from..` of `blob`.
struct Task {
    blob: u64,
    from: u32,
}

#[derive(Default)]
pub struct ReadAhead {
    tx: Mutex<Option<mpsc::Sender<Task>>>,
    /// Blobs being decoded in the background (queued or running).
    busy: Mutex<HashSet<u64>>,
    /// Signalled when a frame lands in the cache or a blob's task ends.
    progress: Condvar,
    /// Workers started: how many windows ahead of a reader are decoded at once.
    workers: std::sync::atomic::AtomicUsize,
    /// The last directories listed, most recent first (see [`Listing`]).
    listings: Mutex<Vec<Arc<Listing>>>,
}

/// A directory's files in natural name order, as read-ahead listed them, valid while the
/// directory's mtime and ctime are unchanged (every create, unlink and rename in it sets both;
/// a user may set the mtime back, not the ctime). Finding the next windows then costs a pass over
/// a list of inode numbers (8 bytes a file), not a scan of the index and a sort of the names at
/// every window a reader starts (a directory of 40,000 frames read at 669 files/s, now 2944-3396:
/// `docs/results/readahead-listing.txt`). A stale listing could only make read-ahead decode
/// the wrong window: it never changes what a reader reads.
struct Listing {
    parent: u64,
    times: (crate::index::Timestamp, crate::index::Timestamp),
    files: Vec<u64>,
}

/// Directories whose listings are kept.
const LISTINGS: usize = 4;

impl ReadAhead {
    fn busy(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a task unless the blob is being read ahead already (or read-ahead is off).
    fn submit(&self, blob: u64, from: u32) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        if !self.busy().insert(blob) {
            return;
        }
        if tx.send(Task { blob, from }).is_err() {
            self.busy().remove(&blob);
        }
    }

    /// Wait while `blob` is being decoded in the background and `ready()` is false.
    pub(super) fn wait_for(&self, blob: u64, ready: impl Fn() -> bool) {
        let mut busy = self.busy();
        while busy.contains(&blob) && !ready() {
            busy = self.progress.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn done(&self, blob: u64) {
        self.busy().remove(&blob);
        self.progress.notify_all();
    }
}

impl Vfs {
    /// Start `threads` read-ahead workers (none: read-ahead stays off).
    pub fn start_readahead(self: &Arc<Self>, threads: usize) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads {
            let (rx, vfs): (_, Weak<Vfs>) = (rx.clone(), Arc::downgrade(self));
            std::thread::Builder::new().name(format!("tezipfs-readahead-{n}")).spawn(move || loop {
                let task = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    Ok(t) => t,
                    Err(_) => return, // the filesystem is gone
                };
                let Some(vfs) = vfs.upgrade() else { return };
                vfs.read_ahead(&task);
                vfs.readahead.done(task.blob);
            })?;
        }
        self.readahead.workers.store(threads, std::sync::atomic::Ordering::Relaxed);
        *self.readahead.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(())
    }

    /// Stop the workers (they end once the queue is empty).
    pub fn stop_readahead(&self) {
        self.readahead.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A reader got entry `slot` of `blob` (file `ino`): read the rest of the window ahead, and
    /// when it starts a window, the next windows of its directory too (see the module's note).
    pub(super) fn after_read(&self, ino: u64, blob: u64, slot: u32) {
        self.readahead.submit(blob, slot + 1);
        if slot == 0 {
            let depth = self.readahead.workers.load(std::sync::atomic::Ordering::Relaxed).max(1);
            for (j, next) in self.next_blobs(ino, blob, depth, self.cache.budget() / 2).into_iter().enumerate() {
                // (Past the next window, only while workers would otherwise be idle: readers of
                // several directories share the workers and the cache. The reader's own window
                // is one of the tasks.)
                if j > 0 && self.readahead.busy().len() > depth {
                    break;
                }
                self.readahead.submit(next, 0);
            }
        }
    }

    /// The blobs of the files after the files of `blob`, in the natural name order of the
    /// directory of `ino` (the next windows a reader going through the directory will need), up
    /// to `depth` of them and, past the first, while their files come to at most `bytes`; they
    /// end at a staged file (nothing to decode).
    fn next_blobs(&self, ino: u64, blob: u64, depth: usize, bytes: u64) -> Vec<u64> {
        let mut next = Vec::new();
        let Some(parent) = self.index.inode(ino).ok().flatten().map(|i| i.parent) else { return next };
        let Some(listing) = self.listing(parent) else { return next };
        let Some(at) = listing.files.iter().position(|&i| i == ino) else { return next };
        let (mut last, mut ahead) = (blob, 0u64);
        for i in &listing.files[at + 1..] {
            let Some(inode) = self.index.inode(*i).ok().flatten() else { break };
            let Data::Compressed { blob: b, .. } = inode.data else { break };
            if b == blob {
                continue; // the rest of the reader's own window
            }
            if b != last {
                if next.len() == depth {
                    break;
                }
                next.push(b);
                last = b;
            }
            ahead += inode.size;
            if ahead > bytes && next.len() > 1 {
                // (This window would not fit beside the ones before it: its frames would push
                // out frames decoded ahead before the reader gets them.)
                next.pop();
                break;
            }
        }
        next
    }

    /// The files of directory `parent` in natural name order: the kept listing while the
    /// directory's mtime and ctime are unchanged, else listed again (and kept).
    fn listing(&self, parent: u64) -> Option<Arc<Listing>> {
        let times = self.index.inode(parent).ok()?.map(|d| (d.mtime, d.ctime))?;
        let mut kept = self.readahead.listings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = kept.iter().position(|l| l.parent == parent) {
            let l = kept.remove(j);
            if l.times == times {
                kept.insert(0, l.clone());
                return Some(l);
            }
        }
        drop(kept);
        let mut entries: Vec<(Vec<u8>, u64)> =
            self.index.dirents(parent).ok()?.into_iter().filter(|(_, _, k)| *k == Kind::File).map(|(name, ino, _)| (name, ino)).collect();
        entries.sort_by(|a, b| crate::sortname::natural_cmp(&a.0, &b.0));
        let files: Vec<u64> = entries.into_iter().map(|(_, i)| i).collect();
        let l = Arc::new(Listing { parent, times, files });
        let mut kept = self.readahead.listings.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|k| k.parent != parent);
        kept.insert(0, l.clone());
        kept.truncate(LISTINGS);
        Some(l)
    }

    /// Decode entries `task.from..` of a blob into the cache, from a kept decoder when one is
    /// positioned before them.
    fn read_ahead(&self, task: &Task) {
        let blob = task.blob;
        let Ok(Some(rec)) = self.index.blob(blob) else { return };
        let last = rec.entries.saturating_sub(1) as usize;
        if task.from as usize > last || (task.from as usize..=last).all(|i| self.cache.contains((blob, i as u32))) {
            return;
        }
        let mut kept = match self.decoders.take(blob) {
            Some(k) if k.reaches(last) => k,
            _ => match self.new_decoder(blob) {
                Ok(k) => k,
                Err(_) => return,
            },
        };
        let cache = &self.cache;
        let r = kept.dec.decode(last, |i, bytes| {
            cache.put((blob, i as u32), Arc::new(bytes));
            // Under the lock a waiting reader checks the cache with: it either sees this frame
            // or is already waiting when the signal comes.
            let _busy = self.readahead.busy();
            self.readahead.progress.notify_all();
        });
        if let Ok(bytes) = r {
            self.cache.put((blob, last as u32), Arc::new(bytes));
            self.decoders.keep(blob, kept);
        }
    }
}
