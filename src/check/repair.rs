//! Applying the fixes of a check: every index change in one batch, made durable, and only then
//! the files that nothing refers to are deleted (the daemon's own order, so a crash during a
//! repair leaves at worst what a crash of the daemon leaves).

use super::scan::Snapshot;
use super::{CheckError, Fix, Problem};
use crate::index::{keys, Batch, Inode, Kind, MetaStore, Timestamp};
use crate::vfs::ROOT;
use std::path::{Path, PathBuf};

pub const LOST_FOUND: &[u8] = b"lost+found";

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records encode")
}

pub fn apply(root: &Path, index: &dyn MetaStore, s: &Snapshot, problems: &[&Problem]) -> Result<(), CheckError> {
    let mut b = Batch::default();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut lost: Vec<u64> = Vec::new();
    for fix in problems.iter().flat_map(|p| &p.fixes) {
        match fix {
            Fix::DeleteKey(k) => b.delete(k.clone()),
            Fix::Put(k, v) => b.put(k.clone(), v.clone()),
            Fix::DeleteInode(ino) => {
                b.delete(keys::inode(*ino));
                b.delete(keys::dir_model(*ino));
                for k in s.xattr_keys.get(ino).into_iter().flatten() {
                    b.delete(k.clone());
                }
            }
            Fix::DeleteBlob(id) => {
                b.delete(keys::blob(*id));
                b.delete(keys::blob_model(*id));
                files.push(root.join("blobs").join(format!("{id}.tzb")));
            }
            Fix::DeleteFile(p) => files.push(p.clone()),
            Fix::LostFound(ino) => lost.push(*ino),
        }
    }
    if !lost.is_empty() {
        link_lost(index, s, &lost, &mut b)?;
    }
    index.apply(b)?;
    index.flush()?;
    for p in files {
        tracing::info!(file = %p.display(), "fsck: deleting a file nothing refers to");
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(CheckError::Io { path: p.display().to_string(), source: e }),
            _ => {}
        }
    }
    for d in ["blobs", "staging", "tmp", "models"] {
        let _ = crate::store::fsync_dir(&root.join(d));
    }
    Ok(())
}

/// Link inodes no directory names into `/lost+found` (made if needed) as `#<ino>`.
fn link_lost(index: &dyn MetaStore, s: &Snapshot, lost: &[u64], b: &mut Batch) -> Result<(), CheckError> {
    let existing = s.dirents.iter().find(|d| d.parent == ROOT && d.name == LOST_FOUND).and_then(|d| d.child);
    let mut lf = match existing.and_then(|(ino, _)| s.inodes.get(&ino)).filter(|i| i.kind == Kind::Dir) {
        Some(i) => i.clone(),
        None => {
            let next = s.next_ino.flatten().unwrap_or(ROOT + 1).max(s.inodes.keys().chain(s.bad_inodes.keys()).max().copied().unwrap_or(ROOT) + 1);
            b.put(keys::NEXT_INO.to_vec(), enc(&(next + 1)));
            let t = Timestamp::now();
            let root = s.inodes.get(&ROOT);
            let name_taken = existing.is_some();
            let i = Inode::new(next, Kind::Dir, 0o700, root.map_or((0, 0), |r| (r.uid, r.gid)), ROOT, t);
            if name_taken {
                return Err(CheckError::Io {
                    path: "/lost+found".into(),
                    source: std::io::Error::other("the name /lost+found is taken by something that is not a directory: rename it, then repair again"),
                });
            }
            b.put(keys::dirent(ROOT, LOST_FOUND), enc(&(next, Kind::Dir)));
            if let Some(r) = root {
                let mut r = r.clone();
                r.nlink += 1;
                b.put(keys::inode(ROOT), enc(&r));
            }
            i
        }
    };
    for ino in lost {
        let Some(mut i) = index.get(&keys::inode(*ino))?.and_then(|v| postcard::from_bytes::<Inode>(&v).ok()) else { continue };
        let name = format!("#{ino}");
        b.put(keys::dirent(lf.ino, name.as_bytes()), enc(&(i.ino, i.kind)));
        if i.kind == Kind::Dir {
            lf.nlink += 1;
        } else {
            i.nlink = 1;
        }
        i.parent = lf.ino;
        b.put(keys::inode(i.ino), enc(&i));
        tracing::warn!(ino, "fsck: linked an inode no directory named into /lost+found/{name}");
    }
    b.put(keys::inode(lf.ino), enc(&lf));
    Ok(())
}
