//! Namespace operations: lookup, create, link, unlink, rename, setattr, directories.
//! Each operation is one index batch under the namespace lock. Permission checks are the
//! kernel's (`default_permissions`); this code keeps POSIX link counts, times and the
//! set-group-ID inheritance.

use super::{now, Attr, Ctx, DirEntry, FsError, FsResult, Handle, SetAttr, TimeSet, Txn, Vfs, LINK_MAX, NAME_MAX, ROOT};
use crate::index::{Index, Inode, Kind};
use std::sync::Arc;

/// What to create.
pub enum NewNode<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    Special { kind: Kind, rdev: u32 },
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid(format!("bad file name {:?}", String::from_utf8_lossy(name))));
    }
    Ok(())
}

impl Vfs {
    fn dir(&self, ino: u64) -> FsResult<Inode> {
        let d = self.inode(ino)?;
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        self.dir(parent)?;
        let (ino, _) = self.index.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        self.getattr(ino)
    }

    /// mknod, mkdir, symlink and the create half of create(2). `mode` carries the permission
    /// bits (the type comes from `node`); `umask` is applied here.
    pub fn create_node(&self, ctx: Ctx, parent: u64, name: &[u8], node: NewNode, mode: u32, umask: u32) -> FsResult<Attr> {
        check_name(name)?;
        if let NewNode::Symlink(target) = node {
            if target.len() >= libc::PATH_MAX as usize {
                return Err(FsError::NameTooLong);
            }
        }
        let _g = self.lock();
        let mut dir = self.dir(parent)?;
        if dir.nlink == 0 {
            return Err(FsError::NotFound); // removed directory
        }
        if self.index.dirent(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let mut t = Txn::default();
        let ino = self.next_ino(&mut t.batch)?;
        let ts = now();
        let (kind, rdev, target) = match node {
            NewNode::File => (Kind::File, 0, Vec::new()),
            NewNode::Dir => (Kind::Dir, 0, Vec::new()),
            NewNode::Symlink(target) => (Kind::Symlink, 0, target.to_vec()),
            NewNode::Special { kind, rdev } => (kind, rdev, Vec::new()),
        };
        let mut perm = if kind == Kind::Symlink { 0o777 } else { mode & 0o7777 & !umask };
        // Set-group-ID directories: new entries take the directory's group, new directories
        // keep the bit.
        let gid = if dir.perm & libc::S_ISGID != 0 {
            if kind == Kind::Dir {
                perm |= libc::S_ISGID;
            }
            dir.gid
        } else {
            ctx.gid
        };
        if kind == Kind::Dir {
            if dir.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            dir.nlink += 1;
        }
        let inode = Inode { rdev, target, ..Inode::new(ino, kind, perm, (ctx.uid, gid), parent, ts) };
        dir.mtime = ts;
        dir.ctime = ts;
        Index::put_inode(&mut t.batch, &inode);
        Index::put_inode(&mut t.batch, &dir);
        Index::put_dirent(&mut t.batch, parent, name, ino, kind);
        self.commit(t)?;
        Ok(self.attr(&inode))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symbolic link".into()));
        }
        Ok(i.target)
    }

    /// Drop one link of `child` (already removed from its directory in `t`).
    fn drop_link(&self, t: &mut Txn, child: &mut Inode, open: bool) -> FsResult<()> {
        child.nlink = child.nlink.saturating_sub(if child.kind == Kind::Dir { child.nlink } else { 1 });
        child.ctime = now();
        if child.nlink == 0 && !open {
            self.release_data(t, child)?;
            self.index.delete_inode(&mut t.batch, child.ino)?;
        } else {
            // Still linked elsewhere, or open: the last release deletes it.
            Index::put_inode(&mut t.batch, child);
        }
        Ok(())
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        let st = self.lock();
        let mut dir = self.dir(parent)?;
        let (ino, kind) = self.index.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let mut child = self.inode(ino)?;
        let mut t = Txn::default();
        Index::delete_dirent(&mut t.batch, parent, name);
        let ts = now();
        dir.mtime = ts;
        dir.ctime = ts;
        Index::put_inode(&mut t.batch, &dir);
        let open = st.open.get(&ino).is_some_and(|o| o.handles > 0);
        self.drop_link(&mut t, &mut child, open)?;
        drop(st);
        self.commit(t)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::Invalid("rmdir of .".into()));
        }
        let _g = self.lock();
        let mut dir = self.dir(parent)?;
        let (ino, kind) = self.index.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if self.index.has_dirents(ino)? {
            return Err(FsError::NotEmpty);
        }
        let mut child = self.inode(ino)?;
        let mut t = Txn::default();
        Index::delete_dirent(&mut t.batch, parent, name);
        let ts = now();
        dir.nlink = dir.nlink.saturating_sub(1);
        dir.mtime = ts;
        dir.ctime = ts;
        Index::put_inode(&mut t.batch, &dir);
        self.drop_link(&mut t, &mut child, false)?;
        self.commit(t)
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> FsResult<Attr> {
        check_name(newname)?;
        let _g = self.lock();
        let mut i = self.inode(ino)?;
        if i.kind == Kind::Dir {
            return Err(FsError::NotPermitted("hard links to directories"));
        }
        let mut dir = self.dir(newparent)?;
        if self.index.dirent(newparent, newname)?.is_some() {
            return Err(FsError::Exists);
        }
        if i.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let ts = now();
        i.nlink += 1;
        i.ctime = ts;
        dir.mtime = ts;
        dir.ctime = ts;
        let mut t = Txn::default();
        Index::put_dirent(&mut t.batch, newparent, newname, ino, i.kind);
        Index::put_inode(&mut t.batch, &i);
        Index::put_inode(&mut t.batch, &dir);
        self.commit(t)?;
        self.work.touch(newparent);
        Ok(self.attr(&i))
    }

    /// rename(2) and renameat2(2) with `RENAME_NOREPLACE` / `RENAME_EXCHANGE` in `flags`.
    pub fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> FsResult<()> {
        self.rename_entry(parent, name, newparent, newname, flags)?;
        // A file moved into a directory joins its windows (frame order is by name too).
        self.work.touch(parent);
        self.work.touch(newparent);
        Ok(())
    }

    fn rename_entry(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> FsResult<()> {
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange) {
            return Err(FsError::Invalid(format!("rename flags {flags:#x}")));
        }
        let st = self.lock();
        self.dir(parent)?;
        self.dir(newparent)?;
        let (ino, kind) = self.index.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        let target = self.index.dirent(newparent, newname)?;
        if kind == Kind::Dir && self.is_ancestor(ino, newparent)? {
            return Err(FsError::Invalid("a directory cannot move into itself".into()));
        }
        let ts = now();
        let mut t = Txn::default();
        if exchange {
            let (tino, tkind) = target.ok_or(FsError::NotFound)?;
            if tkind == Kind::Dir && self.is_ancestor(tino, parent)? {
                return Err(FsError::Invalid("a directory cannot move into itself".into()));
            }
            Index::put_dirent(&mut t.batch, parent, name, tino, tkind);
            Index::put_dirent(&mut t.batch, newparent, newname, ino, kind);
            for (i, new_parent) in [(ino, newparent), (tino, parent)] {
                let mut n = self.inode(i)?;
                n.parent = new_parent;
                n.ctime = ts;
                Index::put_inode(&mut t.batch, &n);
            }
            if parent != newparent && (kind == Kind::Dir) != (tkind == Kind::Dir) {
                // a directory moved one way and a non-directory the other: link counts move
                let (gain, lose) = if kind == Kind::Dir { (newparent, parent) } else { (parent, newparent) };
                self.adjust_dir(&mut t, gain, 1, ts)?;
                self.adjust_dir(&mut t, lose, -1, ts)?;
            } else {
                self.adjust_dir(&mut t, parent, 0, ts)?;
                if parent != newparent {
                    self.adjust_dir(&mut t, newparent, 0, ts)?;
                }
            }
            drop(st);
            return self.commit(t);
        }
        let mut nlink_new_parent = 0i32;
        if let Some((tino, tkind)) = target {
            if tino == ino {
                return Ok(()); // two links of one file: POSIX says do nothing
            }
            if noreplace {
                return Err(FsError::Exists);
            }
            match (kind == Kind::Dir, tkind == Kind::Dir) {
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) if self.index.has_dirents(tino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            let mut victim = self.inode(tino)?;
            if tkind == Kind::Dir {
                nlink_new_parent -= 1;
            }
            let open = st.open.get(&tino).is_some_and(|o| o.handles > 0);
            self.drop_link(&mut t, &mut victim, open)?;
        }
        Index::delete_dirent(&mut t.batch, parent, name);
        Index::put_dirent(&mut t.batch, newparent, newname, ino, kind);
        let mut moved = self.inode(ino)?;
        moved.ctime = ts;
        moved.parent = newparent;
        Index::put_inode(&mut t.batch, &moved);
        if kind == Kind::Dir && parent != newparent {
            nlink_new_parent += 1;
            self.adjust_dir(&mut t, parent, -1, ts)?;
        } else if parent != newparent {
            self.adjust_dir(&mut t, parent, 0, ts)?;
        }
        self.adjust_dir(&mut t, newparent, nlink_new_parent, ts)?;
        drop(st);
        self.commit(t)
    }

    /// Change a directory's link count by `delta` and set its mtime/ctime, merging with any
    /// update already in the transaction for it.
    fn adjust_dir(&self, t: &mut Txn, dir: u64, delta: i32, ts: crate::index::Timestamp) -> FsResult<()> {
        let mut d = self.dir(dir)?;
        if let Some(prev) = t.dirs.get(&dir) {
            d = prev.clone();
        }
        d.nlink = (d.nlink as i64 + delta as i64).max(1) as u32;
        d.mtime = ts;
        d.ctime = ts;
        Index::put_inode(&mut t.batch, &d);
        t.dirs.insert(dir, d);
        Ok(())
    }

    /// Whether directory `dir` is `ino` or lies below it.
    fn is_ancestor(&self, ino: u64, mut dir: u64) -> FsResult<bool> {
        for _ in 0..4096 {
            if dir == ino {
                return Ok(true);
            }
            if dir == ROOT {
                return Ok(false);
            }
            dir = self.inode(dir)?.parent;
        }
        Err(FsError::Corrupt { what: "directory tree".into(), why: "parent chain longer than 4096".into() })
    }

    pub fn setattr(&self, ino: u64, set: SetAttr, fh: Option<u64>) -> FsResult<Attr> {
        if let Some(size) = set.size {
            self.truncate(ino, size, fh)?;
        }
        let _g = self.lock();
        let mut i = self.inode(ino)?;
        let ts = now();
        // Writes through passthrough not yet in the index go in first, so that this change
        // starts from them.
        self.fold_written_behind(&mut i)?;
        let mut changed = set.size.is_some();
        if let Some(mode) = set.mode {
            i.perm = mode & 0o7777;
            changed = true;
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
            changed = true;
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
            changed = true;
        }
        let resolve = |s: TimeSet| match s {
            TimeSet::Now => ts,
            TimeSet::At(t) => t,
        };
        if let Some(a) = set.atime {
            i.atime = resolve(a);
            changed = true;
        }
        if let Some(m) = set.mtime {
            i.mtime = resolve(m);
            changed = true;
        }
        if changed {
            i.ctime = set.ctime.unwrap_or(ts);
        }
        let mut t = Txn::default();
        Index::put_inode(&mut t.batch, &i);
        self.commit(t)?;
        // A file written through passthrough: from here on, changes of its staging file are
        // measured against what was just set.
        self.written_behind.rebaseline(&i)?;
        if set.size.is_some() || set.mtime.is_some() {
            self.queue_file(ino);
        }
        Ok(self.attr(&i))
    }

    /// Open a directory. Its listing is taken when reading starts (see [`Vfs::readdir`]).
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        self.dir(ino)?;
        let mut st = self.lock();
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(fh, Handle::Dir { entries: Arc::new(Vec::new()) });
        Ok(fh)
    }

    /// Entries of an open directory (the caller skips to `offset`). The listing is a snapshot
    /// taken whenever reading starts at offset 0: at the first readdir after opendir, and again
    /// after rewinddir, which POSIX says shows the directory's current state.
    pub fn readdir(&self, ino: u64, fh: u64, offset: usize) -> FsResult<Arc<Vec<DirEntry>>> {
        if offset == 0 {
            let d = self.dir(ino)?;
            let mut entries = vec![DirEntry { ino, kind: Kind::Dir, name: b".".to_vec() }, DirEntry { ino: d.parent, kind: Kind::Dir, name: b"..".to_vec() }];
            for (name, child, kind) in self.index.dirents(ino)? {
                entries.push(DirEntry { ino: child, kind, name });
            }
            let entries = Arc::new(entries);
            return match self.lock().handles.get_mut(&fh) {
                Some(Handle::Dir { entries: e }) => {
                    *e = entries.clone();
                    Ok(entries)
                }
                _ => Err(FsError::BadHandle),
            };
        }
        match self.lock().handles.get(&fh) {
            Some(Handle::Dir { entries }) => Ok(entries.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.lock().handles.remove(&fh);
    }

    pub fn statfs(&self) -> FsResult<Statfs> {
        let sv = self.store.statvfs()?;
        let files = self.index.counter(crate::index::keys::NEXT_INO)?;
        Ok(Statfs {
            blocks: sv.f_blocks * sv.f_frsize / super::BLOCK as u64,
            bfree: sv.f_bfree * sv.f_frsize / super::BLOCK as u64,
            bavail: sv.f_bavail * sv.f_frsize / super::BLOCK as u64,
            files: files.max(sv.f_files),
            ffree: sv.f_ffree,
            bsize: super::BLOCK,
            namelen: NAME_MAX as u32,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}
