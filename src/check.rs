//! `tezipfs fsck`: check a store offline, and repair what can be repaired without losing or
//! hiding anything (`docs/ADMIN.md`, "Checking and repairing a store").
//!
//! The check reads the whole index record by record ([`scan`]), checks every blob file
//! ([`blobs`]), every model file (its SHA-256 against its name), and every reference between
//! them ([`analyze`]). Each problem names the paths of the files it affects and, when it can be
//! repaired, the repair ([`Fix`]). `--repair` applies the fixes ([`repair`]) and checks again, until
//! nothing repairable is left (a repair can uncover another problem: a deleted inode leaves its
//! blob without a reference). A file whose bytes cannot be read is never removed: it stays in
//! the namespace and reads EIO.
//!
//! Exit status, as e2fsck: 0 clean, 1 errors corrected, 4 errors left uncorrected, 8
//! operational error (the store cannot be opened, or a daemon holds it).

mod analyze;
pub mod blobs;
mod repair;
pub mod scan;

pub use blobs::Level;

use crate::index::{IndexError, MetaStore, SledStore};
use crate::store::{Store, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Exit statuses (e2fsck's).
pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_CORRECTED: i32 = 1;
pub const EXIT_UNCORRECTED: i32 = 4;
pub const EXIT_OPERATIONAL: i32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} is not a tezipfs store (it has no index/ directory)")]
    NotAStore(String),
    #[error("index schema {0} is not one this build checks (it knows versions 1 and {v})", v = crate::index::SCHEMA_VERSION)]
    Schema(String),
}

impl From<std::io::Error> for CheckError {
    fn from(source: std::io::Error) -> Self {
        CheckError::Io { path: "store".into(), source }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub repair: bool,
    pub level: Level,
}

/// A change that repairs a problem.
#[derive(Clone, Debug, PartialEq)]
pub enum Fix {
    /// Delete an index key.
    DeleteKey(Vec<u8>),
    /// Write an index record.
    Put(Vec<u8>, Vec<u8>),
    /// Delete an inode's record, its xattrs and its trained-model key (an inode with no links).
    DeleteInode(u64),
    /// Delete a blob: its records, then (once they are durable) its file.
    DeleteBlob(u64),
    /// Delete a file of the store that nothing refers to.
    DeleteFile(PathBuf),
    /// Link an inode that no directory names into `/lost+found` as `#<ino>`.
    LostFound(u64),
}

/// One thing wrong with the store.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// What kind of problem (`blob-corrupt`, `staging-orphan`, ...; docs/ADMIN.md lists them).
    pub code: &'static str,
    pub detail: String,
    /// Paths (in the mount) of the files affected.
    pub paths: Vec<String>,
    /// Files whose content cannot be read: they stay in the namespace and read EIO.
    pub loss: bool,
    /// The design leaves this behind after a crash (kill -9) and the daemon copes with it.
    pub after_crash: bool,
    /// What `--repair` does about it (or why it cannot).
    pub repair: String,
    pub repaired: bool,
    #[serde(skip)]
    pub fixes: Vec<Fix>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub level: Level,
    pub repair: bool,
    pub inodes: usize,
    pub blobs_checked: usize,
    pub blob_bytes_checked: u64,
    pub problems: Vec<Problem>,
    /// `clean`, `repaired` or `damaged`.
    pub status: &'static str,
    pub exit: i32,
}

impl Report {
    /// The problems a kill -9 cannot leave behind (the crash soak requires none).
    pub fn unexpected_after_crash(&self) -> Vec<&Problem> {
        self.problems.iter().filter(|p| !p.after_crash).collect()
    }

    /// The report for people: one paragraph per problem, paths indented.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for p in &self.problems {
            let state = if p.repaired {
                "repaired"
            } else if self.repair {
                "NOT repaired"
            } else {
                "found"
            };
            s += &format!("{} [{}]: {}\n", p.code, state, p.detail);
            for path in &p.paths {
                s += &format!("    {path}\n");
            }
            s += &format!("    repair: {}{}\n", p.repair, if p.loss { " (files unreadable: they read EIO)" } else { "" });
        }
        s += &format!(
            "{}: {} inodes, {} blobs ({} bytes) checked at level {:?}; {} problem(s); {}\n",
            self.store,
            self.inodes,
            self.blobs_checked,
            self.blob_bytes_checked,
            self.level,
            self.problems.len(),
            self.status
        );
        s
    }
}

/// Check the store at `root` (taking its lock), repairing if asked.
pub fn run(root: &Path, opts: Options) -> Result<Report, CheckError> {
    if !root.join("index").is_dir() {
        return Err(CheckError::NotAStore(root.display().to_string()));
    }
    let _lock = Store::lock(root)?;
    // (A repair may change what a clean unmount left: the next mount scans. A check alone
    // changes nothing, the mark included.)
    if opts.repair {
        Store::forget_clean_mark(root)?;
    }
    let index = SledStore::open(&root.join("index"))?;
    let models: std::sync::Arc<dyn crate::codec::predict::ModelSource + Send + Sync> =
        std::sync::Arc::new(crate::model::registry::Registry::at(&root.join("models"), crate::model::Backend::Torch(crate::model::DeviceChoice::Cpu)));
    let mut cache = analyze::Cache::default();
    let mut problems: Vec<Problem> = Vec::new();
    let mut last: Vec<Problem>;
    let mut pass = 0;
    let mut snap;
    loop {
        snap = scan::scan(root, &index)?;
        check_schema(&snap)?;
        last = analyze::analyze(root, &snap, opts.level, &models, &mut cache)?;
        for p in &last {
            if !problems.iter().any(|q| q.code == p.code && q.detail == p.detail) {
                problems.push(p.clone());
            }
        }
        pass += 1;
        let fixes: Vec<&Problem> = last.iter().filter(|p| !p.fixes.is_empty()).collect();
        if !opts.repair || fixes.is_empty() || pass > 4 {
            break;
        }
        repair::apply(root, &index, &snap, &fixes)?;
        for p in fixes {
            if let Some(q) = problems.iter_mut().find(|q| q.code == p.code && q.detail == p.detail) {
                q.repaired = true;
            }
        }
    }
    // What the last check still finds is not repaired, whatever an earlier pass did.
    for q in problems.iter_mut() {
        if last.iter().any(|p| p.code == q.code && p.detail == q.detail) {
            q.repaired = false;
        }
    }
    let (status, exit) = if problems.is_empty() {
        ("clean", EXIT_CLEAN)
    } else if opts.repair && last.is_empty() {
        ("repaired", EXIT_CORRECTED)
    } else {
        ("damaged", EXIT_UNCORRECTED)
    };
    for p in &problems {
        if p.loss {
            tracing::error!(code = p.code, detail = %p.detail, paths = ?p.paths, "files that cannot be read");
        }
    }
    Ok(Report {
        store: root.display().to_string(),
        level: opts.level,
        repair: opts.repair,
        inodes: snap.inodes.len() + snap.bad_inodes.len(),
        blobs_checked: cache.checked(),
        blob_bytes_checked: cache.bytes(),
        problems,
        status,
        exit,
    })
}

fn check_schema(s: &scan::Snapshot) -> Result<(), CheckError> {
    match &s.schema {
        None => Ok(()), // reported (and repaired) as a problem
        Some(v) => match postcard::from_bytes::<u32>(v) {
            Ok(1) | Ok(crate::index::SCHEMA_VERSION) => Ok(()),
            Ok(n) => Err(CheckError::Schema(n.to_string())),
            Err(_) => Ok(()),
        },
    }
}

/// Paths of inodes in the mount, from the directory entries.
pub struct Paths {
    links: BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
}

impl Paths {
    pub fn new(dirents: &[scan::Dirent]) -> Paths {
        let mut links: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for d in dirents {
            if let Some((ino, _)) = d.child {
                links.entry(ino).or_default().push((d.parent, d.name.clone()));
            }
        }
        Paths { links }
    }

    /// Every path of `ino` (one per hard link), or `<inode N: no name>`.
    pub fn of(&self, ino: u64) -> Vec<String> {
        if ino == crate::vfs::ROOT {
            return vec!["/".into()];
        }
        match self.links.get(&ino) {
            Some(l) => l.iter().map(|(parent, name)| self.join(*parent, name)).collect(),
            None => vec![format!("<inode {ino}: no name>")],
        }
    }

    /// The path of entry `name` of directory `parent`.
    pub fn join(&self, parent: u64, name: &[u8]) -> String {
        let mut parts = vec![String::from_utf8_lossy(name).into_owned()];
        let mut cur = parent;
        for _ in 0..4096 {
            if cur == crate::vfs::ROOT {
                parts.reverse();
                return format!("/{}", parts.join("/"));
            }
            match self.links.get(&cur).and_then(|l| l.first()) {
                Some((p, n)) => {
                    parts.push(String::from_utf8_lossy(n).into_owned());
                    cur = *p;
                }
                None => break,
            }
        }
        parts.reverse();
        format!("<inode {cur}: no name>/{}", parts.join("/"))
    }
}

/// The index of a store opened without a daemon (for tests that damage a store on purpose).
pub fn open_index(root: &Path) -> Result<Box<dyn MetaStore>, CheckError> {
    Ok(Box::new(SledStore::open(&root.join("index"))?))
}
