//! Records of the index (schema version 1), encoded with postcard. Fields are only ever added
//! at the end, with a schema version bump.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nsecs: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nsecs: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp { secs: -(d.as_secs() as i64), nsecs: 0 }
                } else {
                    Timestamp { secs: -(d.as_secs() as i64) - 1, nsecs: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(t.secs as u64, t.nsecs)
        } else {
            UNIX_EPOCH - std::time::Duration::new(t.secs.unsigned_abs(), 0) + std::time::Duration::new(0, t.nsecs)
        }
    }
}

/// Where a regular file's bytes are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Data {
    /// Not a regular file, or an empty one never written.
    None,
    /// Raw bytes in `store/staging/<ino>`.
    Staged,
    /// Entry `slot` of blob `blob`; `stored` bytes of the blob are this file's share;
    /// `frame` says whether it was coded as a frame (else stored whole).
    Compressed { blob: u64, slot: u32, stored: u64, frame: bool },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits (07777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Logical size in bytes (the original size of a compressed file).
    pub size: u64,
    pub rdev: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// The directory the inode was last linked into (policy and frame order come from it).
    pub parent: u64,
    pub data: Data,
    /// Bumped by every change of the content; a compression of an older generation is dropped.
    pub generation: u64,
    /// Target of a symlink.
    pub target: Vec<u8>,
    /// Why the file is stored whole or staged after a failure (for `stats`), if it is.
    pub note: Option<String>,
}

impl Inode {
    /// A new, empty inode made at `t` (nlink 2 for a directory, else 1; no data, no device,
    /// no symlink target: set those after).
    pub fn new(ino: u64, kind: Kind, perm: u32, (uid, gid): (u32, u32), parent: u64, t: Timestamp) -> Inode {
        Inode {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            rdev: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            parent,
            data: Data::None,
            generation: 0,
            target: Vec::new(),
            note: None,
        }
    }
}

/// A blob file and how many files still point into it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    pub id: u64,
    pub entries: u32,
    /// Entries still referenced by a file; at 0 the blob is deleted.
    pub live: u32,
    pub bytes: u64,
}
