//! The fuser adapter: turns FUSE requests into [`Vfs`] calls and results into replies. No
//! filesystem logic lives here. Each request runs in a tracing span and under `catch_unwind`:
//! a panic in one request is answered with EIO and the mount lives on.

use crate::index::{Kind, Timestamp};
use crate::vfs::{Attr, Ctx, FsError, FsResult, NewNode, OpenFlags, Opened, SetAttr, TimeSet, Vfs};
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Attribute and entry lifetime in the kernel's cache.
const TTL: Duration = Duration::from_secs(1);
/// Compressed files only change through this filesystem, which the kernel sees.
const TTL_IMMUTABLE: Duration = Duration::from_secs(30);
/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

pub struct FuseFs {
    vfs: Arc<Vfs>,
    /// Ask the kernel for FUSE passthrough (staged files read and written by the kernel itself).
    want_passthrough: bool,
    /// The kernel's reference to each inode's staging file while passthrough handles are open,
    /// with their count: all handles of an inode must share one.
    backing: Mutex<HashMap<u64, (BackingId, u32)>>,
}

impl FuseFs {
    pub fn new(vfs: Arc<Vfs>, passthrough: bool) -> FuseFs {
        FuseFs { vfs, want_passthrough: passthrough, backing: Mutex::new(HashMap::new()) }
    }

    /// Answer an open or create. A passthrough handle gets the inode's backing file (shared by
    /// all its open handles, as the kernel requires); if the kernel refuses one, passthrough is
    /// turned off and the handle becomes a plain one.
    fn reply_opened(&self, ino: u64, opened: Opened, reply: impl OpenReply) {
        let flags = if opened.immutable { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
        let Some(file) = opened.passthrough else { return reply.send(opened.fh, flags, None) };
        let mut b = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        let (id, n) = match b.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match reply.open_backing(&file) {
                Ok(id) => v.insert((id, 0)),
                Err(e) => {
                    tracing::warn!(ino, error = %e, "the kernel refused FUSE passthrough; the daemon serves reads and writes from now on");
                    self.vfs.passthrough_refused(opened.fh);
                    return reply.send(opened.fh, flags, None);
                }
            },
        };
        *n += 1;
        reply.send(opened.fh, flags, Some(id));
    }

    fn drop_backing(&self, ino: u64) {
        let mut b = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = b.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                b.remove(&ino);
            }
        }
    }
}

/// The two replies that open a file (open and create), for [`FuseFs::reply_opened`].
trait OpenReply {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId>;
    fn send(self, fh: u64, flags: FopenFlags, backing: Option<&BackingId>);
}

impl OpenReply for ReplyOpen {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        ReplyOpen::open_backing(self, file)
    }
    fn send(self, fh: u64, flags: FopenFlags, backing: Option<&BackingId>) {
        match backing {
            Some(id) => self.opened_passthrough(FileHandle(fh), flags, id),
            None => self.opened(FileHandle(fh), flags),
        }
    }
}

impl OpenReply for (ReplyCreate, Attr) {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        self.0.open_backing(file)
    }
    fn send(self, fh: u64, flags: FopenFlags, backing: Option<&BackingId>) {
        let (reply, a) = self;
        match backing {
            Some(id) => reply.created_passthrough(&ttl(&a), &fuse_attr(&a), Generation(0), FileHandle(fh), flags, id),
            None => reply.created(&ttl(&a), &fuse_attr(&a), Generation(0), FileHandle(fh), flags),
        }
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: crate::vfs::BLOCK,
        flags: 0,
    }
}

fn ttl(a: &Attr) -> Duration {
    if a.immutable {
        TTL_IMMUTABLE
    } else {
        TTL
    }
}

/// Attributes shown for an inode whose record cannot be read (never cached: TTL 0).
fn unreadable_attr(ino: u64, kind: Kind) -> Attr {
    let t = Timestamp::default();
    Attr { ino, kind, perm: 0, nlink: 1, uid: 0, gid: 0, size: 0, blocks: 0, rdev: 0, atime: t, mtime: t, ctime: t, crtime: t, immutable: false }
}

fn ctx(req: &Request) -> Ctx {
    Ctx { uid: req.uid(), gid: req.gid() }
}

/// Run one request: in a span, with panics turned into EIO and errors logged by severity.
fn run<T>(op: &'static str, ino: u64, f: impl FnOnce() -> FsResult<T>) -> Result<T, Errno> {
    let span = tracing::debug_span!("fuse", op, ino);
    let _e = span.enter();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if e.is_expected() {
                tracing::debug!(error = %e, "request failed");
            } else {
                tracing::error!(error = %e, "request failed");
            }
            Err(Errno::from_i32(e.errno()))
        }
        Err(panic) => {
            let msg = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            tracing::error!(panic = %msg, "request panicked; answered EIO");
            Err(Errno::EIO)
        }
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(Timestamp::from(s)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        for cap in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            if let Err(e) = config.add_capabilities(cap) {
                tracing::debug!(?e, "kernel lacks a FUSE capability");
            }
        }
        // Passthrough: the kernel reads and writes staging files itself (Linux 6.9+, and the
        // daemon needs CAP_SYS_ADMIN). Depth 2 lets the store sit on a stacked filesystem such as
        // overlayfs; the price is that nothing can stack on top of this mount.
        if self.want_passthrough {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(2).is_ok();
            tracing::info!(passthrough = ok, "FUSE passthrough for staged files");
            self.vfs.enable_passthrough(ok);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.vfs.flush_index() {
            tracing::error!(error = %e, "index flush at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match run("lookup", parent.0, || self.vfs.lookup(parent.0, name.as_bytes())) {
            Ok(a) => reply.entry(&ttl(&a), &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match run("getattr", ino.0, || self.vfs.getattr(ino.0)) {
            Ok(a) => reply.attr(&ttl(&a), &fuse_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr { mode, uid, gid, size, atime: atime.map(time_set), mtime: mtime.map(time_set), ctime: ctime.map(Timestamp::from) };
        match run("setattr", ino.0, || self.vfs.setattr(ino.0, set, fh.map(|f| f.0))) {
            Ok(a) => reply.attr(&ttl(&a), &fuse_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match run("readlink", ino.0, || self.vfs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let r = run("mknod", parent.0, || {
            let node = match Kind::from_mode(mode) {
                Some(Kind::File) | None if mode & libc::S_IFMT == 0 || mode & libc::S_IFMT == libc::S_IFREG => NewNode::File,
                Some(Kind::Dir) => NewNode::Dir,
                Some(kind) if kind != Kind::Symlink => NewNode::Special { kind, rdev },
                _ => return Err(FsError::Invalid(format!("mknod of mode {mode:o}"))),
            };
            self.vfs.create_node(ctx(req), parent.0, name.as_bytes(), node, mode, umask)
        });
        match r {
            Ok(a) => reply.entry(&ttl(&a), &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match run("mkdir", parent.0, || self.vfs.create_node(ctx(req), parent.0, name.as_bytes(), NewNode::Dir, mode, umask)) {
            Ok(a) => reply.entry(&ttl(&a), &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match run("unlink", parent.0, || self.vfs.unlink(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match run("rmdir", parent.0, || self.vfs.rmdir(parent.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        match run("symlink", parent.0, || {
            self.vfs.create_node(ctx(req), parent.0, link_name.as_bytes(), NewNode::Symlink(target.as_os_str().as_bytes()), 0o777, 0)
        }) {
            Ok(a) => reply.entry(&ttl(&a), &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        match run("rename", parent.0, || self.vfs.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), flags.bits())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        match run("link", ino.0, || self.vfs.link(ino.0, newparent.0, newname.as_bytes())) {
            Ok(a) => reply.entry(&ttl(&a), &fuse_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        match run("open", ino.0, || self.vfs.open(ino.0, OpenFlags::from_raw(flags.0))) {
            Ok(opened) => self.reply_opened(ino.0, opened, reply),
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        match run("create", parent.0, || self.vfs.create(ctx(req), parent.0, name.as_bytes(), mode, umask, OpenFlags::from_raw(flags))) {
            Ok((a, opened)) => self.reply_opened(a.ino, opened, (reply, a)),
            Err(e) => reply.error(e),
        }
    }

    fn read(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, size: u32, _flags: fuser::OpenFlags, _lock: Option<LockOwner>, reply: ReplyData) {
        match run("read", ino.0, || self.vfs.read(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: fuser::OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match run("write", ino.0, || self.vfs.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        match run("flush", ino.0, || self.vfs.flush(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: fuser::OpenFlags, _lock: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        let r = run("release", ino.0, || self.vfs.release(fh.0));
        if matches!(r, Ok(true)) {
            self.drop_backing(ino.0);
        }
        match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match run("fsync", ino.0, || self.vfs.fsync(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        match run("opendir", ino.0, || self.vfs.opendir(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match run("readdir", ino.0, || self.vfs.readdir(ino.0, fh.0, offset as usize)) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match run("readdirplus", ino.0, || self.vfs.readdir(ino.0, fh.0, offset as usize)) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    // An inode whose attributes cannot be read (a corrupt record) is still listed,
                    // with placeholder attributes the kernel must not keep: a lookup then gets EIO.
                    let (a, t) = match self.vfs.getattr(e.ino) {
                        Ok(a) => {
                            let t = ttl(&a);
                            (a, t)
                        }
                        Err(_) => (unreadable_attr(e.ino, e.kind), Duration::ZERO),
                    };
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, OsStr::from_bytes(&e.name), &t, &fuse_attr(&a), Generation(0)) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: fuser::OpenFlags, reply: ReplyEmpty) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match run("fsyncdir", ino.0, || self.vfs.flush_index()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match run("statfs", ino.0, || self.vfs.statfs()) {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        match run("setxattr", ino.0, || self.vfs.setxattr(ino.0, name.as_bytes(), value, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match run("getxattr", ino.0, || self.vfs.getxattr(ino.0, name.as_bytes())) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match run("listxattr", ino.0, || self.vfs.listxattr(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(Errno::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match run("removexattr", ino.0, || self.vfs.removexattr(ino.0, name.as_bytes())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); existence is ours.
        match run("access", ino.0, || self.vfs.getattr(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_request_is_answered_eio() {
        let r: Result<(), Errno> = run("test", 1, || panic!("boom"));
        assert_eq!(r.unwrap_err(), Errno::EIO);
        let r: Result<(), Errno> = run("test", 1, || Err(FsError::NotFound));
        assert_eq!(r.unwrap_err(), Errno::ENOENT);
        assert_eq!(run("test", 1, || Ok(5)).unwrap(), 5);
    }
}
