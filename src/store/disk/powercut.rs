//! Power-cut simulation (`TEZIPFS_POWERCUT=DIR`, a testing tool in the manner of CrashMonkey and
//! LazyFS, at the store's disk-call layer).
//!
//! While on, every call of [`super`] is recorded in a model of what a power loss would keep:
//!
//! - a file's **content** is durable as of its last fsync/fdatasync through this layer (the
//!   whole file is read back through its descriptor then, so writes by the kernel for FUSE
//!   passthrough are covered too); writes after it are pending;
//! - a directory's **entries** (creates, renames, unlinks) are durable as of its last fsync
//!   through this layer;
//! - the **index** (sled, which does its own I/O) is durable as of its last explicit flush: its
//!   directory is copied whole then (sled's own timer flush is off in this mode, and index
//!   batches wait while the copy is taken, see `index::SledStore`).
//!
//! Everything in the store when the daemon opened it counts as durable. A `powercut` rule
//! (`rules`) cuts the power just before the call it fires on: this module stops every other
//! disk call and index flush (they block), writes DIR (the store as the model says it survives:
//! durable entries with durable content; with `tear`, each file also keeps a random prefix of its
//! pending writes, the last one possibly cut short), and SIGKILLs the daemon.
//!
//! Not simulated: files the daemon writes outside this layer (LOCK, a `--daemon` log), sled's
//! torn writes (its copy is taken whole), reordering of pending directory operations (all are
//! dropped), and a late fsync through the descriptor of a file deleted after its inode number
//! was reused (credited to the new file).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub const ENV: &str = "TEZIPFS_POWERCUT";
/// Seed of the random tears (default: the clock).
pub const SEED_ENV: &str = "TEZIPFS_POWERCUT_SEED";
/// The directories of a store this module follows (relative to its root).
const DIRS: [&str; 5] = ["", "staging", "blobs", "tmp", "models"];
/// What the image says about the cut.
pub const SUMMARY: &str = "POWERCUT";

enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

struct Tracked {
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

type Entries = BTreeMap<OsString, usize>;

#[derive(Default)]
struct State {
    root: Option<PathBuf>,
    files: Vec<Tracked>,
    by_ino: HashMap<u64, usize>,
    current: BTreeMap<String, Entries>,
    durable: BTreeMap<String, Entries>,
    /// The index directory at its last flush: relative path, bytes.
    index: Vec<(PathBuf, Vec<u8>)>,
    rng: u64,
}

struct PowerCut {
    image: PathBuf,
    cut: AtomicBool,
    state: Mutex<State>,
}

static PC: OnceLock<Option<PowerCut>> = OnceLock::new();

fn pc() -> Option<&'static PowerCut> {
    PC.get_or_init(|| {
        let image = PathBuf::from(std::env::var_os(ENV).filter(|v| !v.is_empty())?);
        tracing::warn!(image = %image.display(), "power-cut simulation is on ({ENV}): a testing tool, not for production");
        let rng = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1))
            | 1;
        Some(PowerCut { image, cut: AtomicBool::new(false), state: Mutex::new(State { rng, ..Default::default() }) })
    })
    .as_ref()
}

/// Whether power-cut tracking is on.
pub fn on() -> bool {
    pc().is_some()
}

fn block_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Stop here for good once the power is cut (the process is about to die).
pub fn gate() {
    if pc().is_some_and(|p| p.cut.load(Ordering::SeqCst)) {
        block_forever();
    }
}

/// The model, locked; `None` when off. Blocks for good after a cut.
fn state() -> Option<MutexGuard<'static, State>> {
    let p = pc()?;
    let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
    if p.cut.load(Ordering::SeqCst) {
        drop(st);
        block_forever();
    }
    Some(st)
}

fn read_dir_files(dir: &Path) -> Vec<(OsString, PathBuf)> {
    let mut v: Vec<(OsString, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).map(|e| (e.file_name(), e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file below `dir`, relative to it, with its bytes.
fn copy_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(base, &p, out),
                Ok(t) if t.is_file() => {
                    if let (Ok(bytes), Ok(rel)) = (std::fs::read(&p), p.strip_prefix(base)) {
                        out.push((rel.to_path_buf(), bytes));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Start following the store at `root`: what it holds now is durable.
pub fn attach(root: &Path) {
    let Some(mut st) = state() else { return };
    let rng = st.rng;
    *st = State { root: Some(root.to_path_buf()), rng, ..Default::default() };
    for d in DIRS {
        let mut entries = Entries::new();
        // The lock and the reserve (zeros) are not store data and are not followed.
        for (name, path) in read_dir_files(&root.join(d)).into_iter().filter(|(n, _)| !d.is_empty() || (n != "LOCK" && n != "reserve")) {
            let (Ok(md), Ok(bytes)) = (std::fs::metadata(&path), std::fs::read(&path)) else { continue };
            let fid = st.files.len();
            st.files.push(Tracked { durable: bytes, pending: Vec::new() });
            st.by_ino.insert(md.ino(), fid);
            entries.insert(name, fid);
        }
        st.current.insert(d.to_string(), entries.clone());
        st.durable.insert(d.to_string(), entries);
    }
    st.index = copy_tree(&root.join("index"));
    tracing::info!(store = %root.display(), files = st.files.len(), "power-cut simulation follows the store");
}

impl State {
    /// (directory relative to the root, name) of a followed path.
    fn place(&self, path: &Path) -> Option<(String, OsString)> {
        let rel = path.parent()?.strip_prefix(self.root.as_ref()?).ok()?.to_str()?.to_string();
        self.current.contains_key(&rel).then(|| (rel, path.file_name().unwrap_or_default().to_os_string()))
    }

    fn fid(&self, f: &File) -> Option<usize> {
        self.by_ino.get(&f.metadata().ok()?.ino()).copied()
    }

    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// A file was opened (created if `truncate` or if new).
pub fn opened(path: &Path, f: &File, truncate: bool) {
    let Some(mut st) = state() else { return };
    let Ok(ino) = f.metadata().map(|m| m.ino()) else { return };
    let Some((dir, name)) = st.place(path) else { return };
    let known = st.by_ino.get(&ino).copied().filter(|fid| st.current.get(&dir).and_then(|e| e.get(&name)) == Some(fid));
    match known {
        Some(fid) if truncate => st.files[fid].pending.push(Pending::SetLen(0)),
        Some(_) => {}
        None => {
            let fid = st.files.len();
            st.files.push(Tracked { durable: Vec::new(), pending: Vec::new() });
            st.by_ino.insert(ino, fid);
            st.current.entry(dir).or_default().insert(name, fid);
        }
    }
}

pub fn wrote(f: &File, offset: u64, data: &[u8]) {
    let Some(mut st) = state() else { return };
    if let Some(fid) = st.fid(f) {
        st.files[fid].pending.push(Pending::Write { offset, data: data.to_vec() });
    }
}

pub fn truncated(f: &File, len: u64) {
    let Some(mut st) = state() else { return };
    if let Some(fid) = st.fid(f) {
        st.files[fid].pending.push(Pending::SetLen(len));
    }
}

/// fsync/fdatasync: the file's content as it is now is durable.
pub fn synced(f: &File) {
    let Some(mut st) = state() else { return };
    let Some(fid) = st.fid(f) else { return };
    // Through /proc, so that a descriptor opened write-only can be read too.
    match std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())) {
        Ok(bytes) => st.files[fid] = Tracked { durable: bytes, pending: Vec::new() },
        Err(e) => tracing::error!(error = %e, "power-cut simulation cannot read back a synced file"),
    }
}

pub fn renamed(from: &Path, to: &Path) {
    let Some(mut st) = state() else { return };
    let fid = match st.place(from) {
        Some((d, n)) => st.current.get_mut(&d).and_then(|e| e.remove(&n)),
        None => None,
    };
    let fid = fid.or_else(|| std::fs::metadata(to).ok().and_then(|m| st.by_ino.get(&m.ino()).copied()));
    if let (Some(fid), Some((d, n))) = (fid, st.place(to)) {
        st.current.entry(d).or_default().insert(n, fid);
    }
}

pub fn unlinked(path: &Path) {
    let Some(mut st) = state() else { return };
    let Some((d, n)) = st.place(path) else { return };
    if let Some(fid) = st.current.get_mut(&d).and_then(|e| e.remove(&n)) {
        st.by_ino.retain(|_, v| *v != fid);
    }
}

/// fsync of a directory: its entries as they are now are durable.
pub fn dir_synced(dir: &Path) {
    let Some(mut st) = state() else { return };
    let Some(rel) = st.root.as_ref().and_then(|r| dir.strip_prefix(r).ok()).and_then(|p| p.to_str()).map(str::to_string) else { return };
    if let Some(e) = st.current.get(&rel).cloned() {
        st.durable.insert(rel, e);
    }
}

/// The index was flushed: its directory as it is now is durable. The caller keeps sled from
/// writing while this runs.
pub fn index_flushed(dir: &Path) {
    let Some(mut st) = state() else { return };
    st.index = copy_tree(dir);
}

/// What the file `fid` holds after the cut: its durable bytes, and with `tear` a random prefix
/// of its pending writes. Returns the bytes and whether anything pending was kept.
fn survivor(st: &mut State, fid: usize, tear: bool) -> (Vec<u8>, bool) {
    let mut bytes = st.files[fid].durable.clone();
    let n = st.files[fid].pending.len();
    if !tear || n == 0 {
        return (bytes, false);
    }
    let keep = (st.next() % (n as u64 + 1)) as usize;
    let cut_len = st.next();
    for (k, p) in st.files[fid].pending.iter().enumerate().take(keep + 1) {
        match p {
            Pending::SetLen(len) if k < keep => bytes.resize(*len as usize, 0),
            Pending::Write { offset, data } => {
                // The write after the kept ones lands partly (possibly not at all).
                let len = if k < keep { data.len() } else { (cut_len % (data.len() as u64 + 1)) as usize };
                if len == 0 {
                    continue;
                }
                let end = *offset as usize + len;
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[*offset as usize..end].copy_from_slice(&data[..len]);
            }
            Pending::SetLen(_) => {}
        }
    }
    (bytes, keep > 0)
}

/// Cut the power just before `op` on `path`: write the image, then SIGKILL this process. Logs
/// and returns when the simulation is off.
pub fn cut(tear: bool, op: super::Op, path: &Path) {
    let Some(p) = pc() else {
        tracing::error!("a powercut fault rule fired, but {ENV} is not set: ignored");
        return;
    };
    let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
    if p.cut.swap(true, Ordering::SeqCst) {
        drop(st);
        block_forever();
    }
    let tmp = p.image.with_extension("partial");
    let made = (|| -> std::io::Result<String> {
        let _ = std::fs::remove_dir_all(&tmp);
        for d in DIRS.iter().chain(&["index"]) {
            std::fs::create_dir_all(tmp.join(d))?;
        }
        let (mut files, mut dropped, mut torn) = (0, 0, 0);
        let durable = st.durable.clone();
        for (d, entries) in &durable {
            for (name, &fid) in entries {
                let (bytes, kept) = survivor(&mut st, fid, tear);
                dropped += st.files[fid].pending.len();
                torn += kept as usize;
                files += 1;
                std::fs::write(tmp.join(d).join(name), bytes)?;
            }
        }
        let lost_entries: usize = st.current.iter().map(|(d, e)| e.keys().filter(|n| durable.get(d).is_none_or(|de| !de.contains_key(*n))).count()).sum();
        for (rel, bytes) in &st.index {
            let to = tmp.join("index").join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(to, bytes)?;
        }
        let summary = format!(
            "op={op:?}\npath={}\nmode={}\nfiles={files}\npending_writes={dropped}\ntorn_files={torn}\nnew_entries_lost={lost_entries}\nindex_files={}\n",
            path.display(),
            if tear { "tear" } else { "drop" },
            st.index.len()
        );
        std::fs::write(tmp.join(SUMMARY), &summary)?;
        let _ = std::fs::remove_dir_all(&p.image);
        std::fs::rename(&tmp, &p.image)?;
        Ok(summary)
    })();
    match made {
        Ok(s) => tracing::warn!(image = %p.image.display(), summary = %s.replace('\n', " "), "power cut simulated: killing the daemon"),
        Err(e) => tracing::error!(image = %p.image.display(), error = %e, "power cut simulated, but its image could not be written: killing the daemon"),
    }
    // SAFETY: kill(2) of this very process; nothing after it runs.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    block_forever();
}
