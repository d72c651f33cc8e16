//! Reading a store as it is, for the check: every index record decoded one by one (a record
//! that does not decode is kept as such, it does not stop the scan), and the files of
//! `blobs/`, `staging/`, `models/` and `tmp/`.

use crate::index::{keys, Blob, Inode, Kind, MetaStore};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A directory entry as stored: `child` is `None` when its value does not decode.
#[derive(Clone, Debug)]
pub struct Dirent {
    pub parent: u64,
    pub name: Vec<u8>,
    pub child: Option<(u64, Kind)>,
}

/// A 32-byte model hash value, or `None` when the stored value is not one.
pub type HashValue = Option<[u8; 32]>;

#[derive(Default, Debug)]
pub struct Snapshot {
    pub schema: Option<Vec<u8>>,
    pub inodes: BTreeMap<u64, Inode>,
    /// Inode records that do not decode: ino -> why.
    pub bad_inodes: BTreeMap<u64, String>,
    pub dirents: Vec<Dirent>,
    /// Inodes that have `X` keys, with those keys.
    pub xattr_keys: BTreeMap<u64, Vec<Vec<u8>>>,
    pub blobs: BTreeMap<u64, Blob>,
    pub bad_blobs: BTreeMap<u64, String>,
    pub blob_models: BTreeMap<u64, HashValue>,
    /// `R` counters: hash -> count (`None`: does not decode).
    pub model_refs: BTreeMap<[u8; 32], Option<u64>>,
    /// `R` keys whose hash part is not 32 bytes.
    pub bad_keys: Vec<(Vec<u8>, String)>,
    pub model_names: Vec<(Vec<u8>, HashValue)>,
    pub dir_models: Vec<(u64, HashValue)>,
    pub next_ino: Option<Option<u64>>,
    pub next_blob: Option<Option<u64>>,
    /// `blobs/<id>.tzb` files: id -> size.
    pub blob_files: BTreeMap<u64, u64>,
    /// Other files in `blobs/`.
    pub stray_blob_files: Vec<PathBuf>,
    /// `staging/` file names -> size.
    pub staging_files: BTreeMap<String, u64>,
    /// `models/` file names.
    pub model_files: BTreeSet<String>,
    pub tmp_files: Vec<PathBuf>,
}

fn u64_at(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

fn hash_value(v: &[u8]) -> HashValue {
    v.try_into().ok()
}

fn files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, u64)>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((e.file_name().to_string_lossy().into_owned(), e.path(), len));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Read everything. Only an error reading the index or listing a directory is an error.
pub fn scan(root: &Path, index: &dyn MetaStore) -> Result<Snapshot, super::CheckError> {
    let mut s = Snapshot::default();
    for (k, v) in index.scan_prefix(b"")? {
        let bad = |why: &str| (k.clone(), why.to_string());
        match k.first() {
            Some(b'S') if k == keys::SCHEMA => s.schema = Some(v),
            Some(b'C') if k == keys::NEXT_INO => s.next_ino = Some(postcard::from_bytes(&v).ok()),
            Some(b'C') if k == keys::NEXT_BLOB => s.next_blob = Some(postcard::from_bytes(&v).ok()),
            Some(b'C') if k == keys::SCRUB_NEXT => {}
            Some(b'I') if k.len() == 9 => {
                let ino = u64_at(&k).expect("9-byte key");
                match postcard::from_bytes::<Inode>(&v) {
                    Ok(i) if i.ino == ino => {
                        s.inodes.insert(ino, i);
                    }
                    Ok(i) => {
                        s.bad_inodes.insert(ino, format!("the record says inode {}", i.ino));
                    }
                    Err(e) => {
                        s.bad_inodes.insert(ino, e.to_string());
                    }
                }
            }
            Some(b'D') if k.len() > 9 => {
                let parent = u64_at(&k).expect("9+ byte key");
                s.dirents.push(Dirent { parent, name: k[9..].to_vec(), child: postcard::from_bytes(&v).ok() });
            }
            Some(b'X') if k.len() > 9 => s.xattr_keys.entry(u64_at(&k).expect("9+ byte key")).or_default().push(k.clone()),
            Some(b'B') if k.len() == 9 => {
                let id = u64_at(&k).expect("9-byte key");
                match postcard::from_bytes::<Blob>(&v) {
                    Ok(b) if b.id == id => {
                        s.blobs.insert(id, b);
                    }
                    Ok(b) => {
                        s.bad_blobs.insert(id, format!("the record says blob {}", b.id));
                    }
                    Err(e) => {
                        s.bad_blobs.insert(id, e.to_string());
                    }
                }
            }
            Some(b'M') if k.len() == 9 => {
                s.blob_models.insert(u64_at(&k).expect("9-byte key"), hash_value(&v));
            }
            Some(b'R') if k.len() == 33 => {
                s.model_refs.insert(k[1..].try_into().expect("32 bytes"), postcard::from_bytes(&v).ok());
            }
            Some(b'N') => s.model_names.push((k[1..].to_vec(), hash_value(&v))),
            Some(b'A') if k.len() == 9 => s.dir_models.push((u64_at(&k).expect("9-byte key"), hash_value(&v))),
            _ => s.bad_keys.push(bad("a key of no known kind")),
        }
    }
    for (name, path, len) in files(&root.join("blobs"))? {
        match name.strip_suffix(".tzb").and_then(|n| n.parse::<u64>().ok()) {
            Some(id) if name == format!("{id}.tzb") => {
                s.blob_files.insert(id, len);
            }
            _ => s.stray_blob_files.push(path),
        }
    }
    for (name, _, len) in files(&root.join("staging"))? {
        s.staging_files.insert(name, len);
    }
    s.model_files = files(&root.join("models"))?.into_iter().map(|(n, _, _)| n).collect();
    s.tmp_files = files(&root.join("tmp"))?.into_iter().map(|(_, p, _)| p).collect();
    Ok(s)
}
