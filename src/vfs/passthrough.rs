//! Files written through FUSE passthrough: the kernel writes their staging files itself, so no
//! WRITE request tells us their new size or mtime. This module reads them back from the staging
//! file and maps them onto the file's attributes.
//!
//! The mapping keeps timestamps ordered. The kernel stamps a write with its coarse clock (one
//! tick, a few milliseconds), the daemon stamps everything else with the precise clock, so a
//! write right after a create or a chmod can carry an earlier time than they did. A change seen
//! in the staging file therefore moves mtime and ctime strictly forward from what was shown
//! before, taking the kernel's time whenever that is later.

use crate::index::{Inode, Timestamp};
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// Size and times of a file written through passthrough, as `stat` should show them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Current {
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// 512-byte blocks of the staging file.
    pub blocks: u64,
}

/// What the staging file looked like when last seen, and the attributes shown for it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    len: u64,
    raw_mtime: Timestamp,
    mtime: Timestamp,
    ctime: Timestamp,
}

struct Entry {
    file: Arc<File>,
    seen: Seen,
}

/// The staging files of inodes with passthrough writers. Lock order: the namespace lock first.
#[derive(Default)]
pub(super) struct WrittenBehind {
    files: Mutex<HashMap<u64, Entry>>,
}

fn mtime_of(md: &Metadata) -> Timestamp {
    Timestamp { secs: md.mtime(), nsecs: md.mtime_nsec() as u32 }
}

fn ctime_of(md: &Metadata) -> Timestamp {
    Timestamp { secs: md.ctime(), nsecs: md.ctime_nsec() as u32 }
}

/// One nanosecond later.
fn after(t: Timestamp) -> Timestamp {
    if t.nsecs >= 999_999_999 {
        Timestamp { secs: t.secs + 1, nsecs: 0 }
    } else {
        Timestamp { secs: t.secs, nsecs: t.nsecs + 1 }
    }
}

fn baseline(md: &Metadata, i: &Inode) -> Seen {
    Seen { len: md.len(), raw_mtime: mtime_of(md), mtime: i.mtime, ctime: i.ctime }
}

impl WrittenBehind {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start following `file` (the staging file of `i`); its present state is what the index says.
    pub fn follow(&self, i: &Inode, file: Arc<File>) -> std::io::Result<()> {
        let mut m = self.lock();
        if m.contains_key(&i.ino) {
            return Ok(());
        }
        let seen = baseline(&file.metadata()?, i);
        m.insert(i.ino, Entry { file, seen });
        Ok(())
    }

    pub fn forget(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    /// The daemon itself changed the staging file and the index together (truncate, utimens):
    /// the present state is again what the index says.
    pub fn rebaseline(&self, i: &Inode) -> std::io::Result<()> {
        if let Some(e) = self.lock().get_mut(&i.ino) {
            e.seen = baseline(&e.file.metadata()?, i);
        }
        Ok(())
    }

    /// The current size and times of `i` if it is followed (`None` otherwise).
    pub fn current(&self, i: &Inode, now: Timestamp) -> std::io::Result<Option<Current>> {
        let mut m = self.lock();
        let Some(e) = m.get_mut(&i.ino) else { return Ok(None) };
        let md = e.file.metadata()?;
        let raw_mtime = mtime_of(&md);
        let prev = e.seen;
        if (md.len(), raw_mtime) != (prev.len, prev.raw_mtime) {
            // Written since last seen. A file whose mtime was set into the future gets the
            // write's time, as a local filesystem does.
            let mtime = if raw_mtime > prev.mtime || prev.mtime > now { raw_mtime } else { after(prev.mtime) };
            let ctime = ctime_of(&md).max(after(prev.ctime.max(i.ctime))).max(mtime);
            e.seen = Seen { len: md.len(), raw_mtime, mtime, ctime };
        }
        Ok(Some(Current { size: md.len(), mtime: e.seen.mtime, ctime: e.seen.ctime.max(i.ctime), blocks: md.blocks() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Data, Kind};
    use std::os::unix::fs::FileExt;

    fn inode(ino: u64, t: Timestamp) -> Inode {
        Inode { data: Data::Staged, ..Inode::new(ino, Kind::File, 0o644, (0, 0), 1, t) }
    }

    #[test]
    fn writes_move_times_strictly_forward_and_nothing_moves_without_writes() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("s")).unwrap());
        // The index's times lie a little ahead of the kernel's coarse clock.
        let t0 = Timestamp::now();
        let ahead = Timestamp { secs: t0.secs + 1, nsecs: t0.nsecs };
        let i = inode(7, ahead);
        let wb = WrittenBehind::default();
        wb.follow(&i, f.clone()).unwrap();
        let now = Timestamp { secs: ahead.secs + 10, nsecs: 0 };
        let c0 = wb.current(&i, now).unwrap().unwrap();
        assert_eq!((c0.size, c0.mtime, c0.ctime), (0, ahead, ahead), "no write yet: the index's values");
        f.write_all_at(b"hello", 0).unwrap();
        let c1 = wb.current(&i, now).unwrap().unwrap();
        assert_eq!(c1.size, 5);
        assert!(c1.mtime > ahead && c1.ctime > ahead && c1.ctime >= c1.mtime, "{c1:?}");
        assert_eq!(wb.current(&i, now).unwrap().unwrap(), c1, "stable while nothing is written");
        f.write_all_at(b"!", 5).unwrap();
        let c2 = wb.current(&i, now).unwrap().unwrap();
        assert!(c2.size == 6 && c2.mtime > c1.mtime && c2.ctime > c1.ctime, "{c2:?}");
        // An mtime set into the future is replaced by the write's own time.
        let future = inode(7, Timestamp { secs: now.secs + 1000, nsecs: 0 });
        wb.rebaseline(&future).unwrap();
        f.write_all_at(b"?", 6).unwrap();
        let c3 = wb.current(&future, now).unwrap().unwrap();
        assert!(c3.mtime < future.mtime && c3.mtime.secs >= t0.secs - 1, "{c3:?}");
        wb.forget(7);
        assert!(wb.current(&i, now).unwrap().is_none());
    }
}
