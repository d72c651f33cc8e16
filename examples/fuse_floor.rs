//! The floor of FUSE ingest on this machine: the least a FUSE filesystem can do to take files
//! with FUSE passthrough, measured so `scripts/bench-mount` can print tezipfs's ingest next to
//! it (issue 12: "ingest >= 0.9x a plain write" asks for more than FUSE itself may allow).
//!
//! One flat directory over a backing directory: lookup, getattr, create, open, write (the kernel
//! writes the backing file itself: passthrough), flush, fsync, release, setattr (size), readdir,
//! and getxattr answered at once with "no attribute" (the kernel asks for `security.capability`
//! at every passthrough write). No index, no staging rules, no durability beyond what is asked:
//! with `--sync-close` a close fdatasyncs the file (what a plain write + fsync does), without it
//! a close syncs nothing (a plain write). The session is set up as `tezipfs mount` sets its own
//! (the same capabilities, 4 threads, passthrough with stack depth 2).
//!
//!   cargo run --release --example fuse_floor -- BACKING_DIR MOUNTPOINT [--sync-close]
//!
//! It runs until unmounted (`fusermount3 -u MOUNTPOINT`) or killed.
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyCreate, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Tables {
    names: HashMap<OsString, u64>,
    inos: HashMap<u64, OsString>,
    next_ino: u64,
    /// Open handles: the backing file and the kernel's id for it (one per inode, shared).
    handles: HashMap<u64, (Arc<File>, Arc<BackingId>)>,
    backing: HashMap<u64, std::sync::Weak<BackingId>>,
    next_fh: u64,
}

struct Floor {
    dir: PathBuf,
    sync_close: bool,
    t: Mutex<Tables>,
}

impl Floor {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.t.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ino_of(&self, name: &OsStr) -> u64 {
        let mut t = self.tables();
        if let Some(&i) = t.names.get(name) {
            return i;
        }
        t.next_ino += 1;
        let i = t.next_ino + 1; // from 2: inode 1 is the root
        t.names.insert(name.to_owned(), i);
        t.inos.insert(i, name.to_owned());
        i
    }

    fn path(&self, ino: u64) -> Option<PathBuf> {
        if ino == 1 {
            return Some(self.dir.clone());
        }
        self.tables().inos.get(&ino).map(|n| self.dir.join(n))
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let p = self.path(ino).ok_or(Errno::ENOENT)?;
        let m = std::fs::symlink_metadata(&p).map_err(errno)?;
        let t = |s: i64, ns: i64| UNIX_EPOCH + Duration::new(s.max(0) as u64, ns as u32);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: m.size(),
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: t(m.ctime(), m.ctime_nsec()),
            kind: if m.is_dir() { FileType::Directory } else { FileType::RegularFile },
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    /// A handle on the backing file of `ino`, with the kernel's id for it.
    fn open_handle(&self, ino: u64, file: File, new_id: impl FnOnce(&File) -> std::io::Result<BackingId>) -> std::io::Result<(u64, Arc<BackingId>)> {
        let file = Arc::new(file);
        let mut t = self.tables();
        let id = match t.backing.get(&ino).and_then(|w| w.upgrade()) {
            Some(id) => id,
            None => {
                let id = Arc::new(new_id(&file)?);
                t.backing.insert(ino, Arc::downgrade(&id));
                id
            }
        };
        t.next_fh += 1;
        let fh = t.next_fh;
        t.handles.insert(fh, (file, id.clone()));
        Ok((fh, id))
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    let acc = flags & libc::O_ACCMODE;
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR).write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    o.custom_flags(flags & (libc::O_APPEND | libc::O_TRUNC));
    o
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        for cap in [InitFlags::FUSE_ATOMIC_O_TRUNC, InitFlags::FUSE_BIG_WRITES, InitFlags::FUSE_MAX_PAGES] {
            let _ = config.add_capabilities(cap);
        }
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_err() || config.set_max_stack_depth(2).is_err() {
            return Err(std::io::Error::other("the kernel offers no FUSE passthrough"));
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 || !self.dir.join(name).exists() {
            return reply.error(Errno::ENOENT);
        }
        match self.attr(self.ino_of(name)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let (Some(size), Some(p)) = (size, self.path(ino.0)) {
            if let Err(e) = OpenOptions::new().write(true).open(p).and_then(|f| f.set_len(size)) {
                return reply.error(errno(e));
            }
        }
        self.getattr(_req, ino, None, reply)
    }

    fn create(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        if parent.0 != 1 {
            return reply.error(Errno::ENOENT);
        }
        let file = match open_options(flags).create(true).mode(mode & !umask).open(self.dir.join(name)) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let ino = self.ino_of(name);
        let attr = match self.attr(ino) {
            Ok(a) => a,
            Err(e) => return reply.error(e),
        };
        match self.open_handle(ino, file, |f| reply.open_backing(f)) {
            Ok((fh, id)) => reply.created_passthrough(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty(), &id),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(p) = self.path(ino.0) else { return reply.error(Errno::ENOENT) };
        let file = match open_options(flags.0).open(p) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        match self.open_handle(ino.0, file, |f| reply.open_backing(f)) {
            Ok((fh, id)) => reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        let file = self.tables().handles.get(&fh.0).map(|(f, _)| f.clone());
        match file {
            Some(f) if self.sync_close => match f.sync_data() {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            },
            Some(_) => reply.ok(),
            None => reply.error(Errno::EBADF),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let file = self.tables().handles.get(&fh.0).map(|(f, _)| f.clone());
        match file.map(|f| f.sync_data()) {
            Some(Ok(())) => reply.ok(),
            Some(Err(e)) => reply.error(errno(e)),
            None => reply.error(Errno::EBADF),
        }
    }

    fn release(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, _lock: Option<LockOwner>, _flush: bool, reply: ReplyEmpty) {
        self.tables().handles.remove(&fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != 1 {
            return reply.error(Errno::ENOTDIR);
        }
        let mut names: Vec<OsString> = match std::fs::read_dir(&self.dir) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => return reply.error(errno(e)),
        };
        names.sort();
        for (k, n) in names.iter().enumerate().skip(offset as usize) {
            let i = self.ino_of(n);
            if reply.add(INodeNo(i), (k + 1) as u64, FileType::RegularFile, OsStr::from_bytes(n.as_bytes())) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sync_close = args.iter().any(|a| a == "--sync-close");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [dir, mnt] = paths[..] else {
        eprintln!("usage: fuse_floor BACKING_DIR MOUNTPOINT [--sync-close]");
        std::process::exit(2);
    };
    let fs = Floor { dir: PathBuf::from(dir), sync_close, t: Mutex::new(Tables::default()) };
    let mut cfg = fuser::Config::default();
    cfg.mount_options.extend([MountOption::FSName("fuse-floor".into()), MountOption::AutoUnmount, MountOption::DefaultPermissions]);
    cfg.acl = fuser::SessionACL::RootAndOwner;
    cfg.n_threads = Some(4);
    if let Err(e) = fuser::mount(fs, mnt, &cfg) {
        eprintln!("fuse_floor: cannot mount on {mnt}: {e}");
        std::process::exit(1);
    }
}
