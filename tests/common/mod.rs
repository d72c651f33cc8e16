//! Harness for tests that run the real `tezipfs` binary as a FUSE mount: start it on a store in a
//! temporary directory, wait for the mount, stop it (SIGTERM) or kill it (SIGKILL), remount, and
//! helpers for extended attributes, compression states, frames and byte-exact checks.
//!
//! Every test owns one [`Fs`]: its own temporary directory with `store/`, `mnt/` and the daemon
//! log (`daemon.log`, printed when the test fails). Dropping the `Fs` stops the daemon and
//! unmounts (lazily with `fusermount3 -u -z` if the daemon could not).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod resident;
pub mod skip;
pub use skip::{skip, Lack};

pub const BIN: &str = env!("CARGO_BIN_EXE_tezipfs");
/// Limit for the mount to appear.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for a file to reach a compression state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// Whether FUSE mounts can run here; records a skip saying why not (the caller then returns).
pub fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        skip(Lack::Fuse, "/dev/fuse is missing, so FUSE mount tests cannot run on this machine");
        return false;
    }
    if Command::new("fusermount3").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        skip(Lack::Fuse, "fusermount3 is not installed (apt-get install fuse3), so FUSE mount tests cannot run");
        return false;
    }
    true
}

/// Return from the test (a skip, with a printed reason) when FUSE is not available.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if !common::fuse_available() {
            return;
        }
    };
}

/// Daemon settings (the test defaults are short, so tests stay quick).
#[derive(Clone, Debug)]
pub struct Opts {
    pub quiet_ms: u64,
    pub tail_idle_ms: u64,
    pub threads: Option<usize>,
    /// FUSE passthrough for writers (the daemon's default); false mounts with --no-passthrough.
    pub passthrough: bool,
    /// More `tezipfs mount` arguments.
    pub extra: Vec<String>,
    /// More environment variables of the daemon (e.g. TEZIPFS_FAULTS).
    pub env: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { quiet_ms: 200, tail_idle_ms: 1500, threads: None, passthrough: true, extra: Vec::new(), env: Vec::new() }
    }
}

/// One store, one mount point, at most one daemon at a time.
pub struct Fs {
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub log: PathBuf,
    pub opts: Opts,
    child: Option<Child>,
    /// Kept last: removed after the daemon is gone.
    pub tmp: tempfile::TempDir,
}

/// Whether `path` is a mount point now (from /proc/self/mounts).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts").map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str()))).unwrap_or(false)
}

fn lazy_unmount(path: &Path) {
    let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(path).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

impl Fs {
    /// A new store in a new temporary directory, mounted with the default test settings.
    pub fn new() -> Fs {
        Fs::with(Opts::default())
    }

    pub fn with(opts: Opts) -> Fs {
        let tmp = tempfile::Builder::new().prefix("tezipfs-mount-").tempdir().expect("temp dir");
        let store = tmp.path().join("store");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        let log = tmp.path().join("daemon.log");
        let mut fs = Fs { store, mnt, log, opts, child: None, tmp };
        fs.start();
        fs
    }

    /// A path below the mount point.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The arguments of `tezipfs mount` for this store and mount point.
    pub fn mount_args(&self, mnt: &Path) -> Vec<String> {
        let mut a = vec![
            "mount".to_string(),
            "--store".into(),
            self.store.display().to_string(),
            mnt.display().to_string(),
            "--quiet-ms".into(),
            self.opts.quiet_ms.to_string(),
            "--tail-idle-ms".into(),
            self.opts.tail_idle_ms.to_string(),
        ];
        if let Some(t) = self.opts.threads {
            a.push("--threads".into());
            a.push(t.to_string());
        }
        if !self.opts.passthrough {
            a.push("--no-passthrough".into());
        }
        a.extend(self.opts.extra.iter().cloned());
        a
    }

    /// Start the daemon (foreground child, stderr appended to the log) and wait for the mount.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        assert!(!is_mounted(&self.mnt), "{} is still mounted", self.mnt.display());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut child = Command::new(BIN)
            .args(self.mount_args(&self.mnt))
            .env("NO_COLOR", "1")
            .env("TEZIPFS_LOG", "info")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start tezipfs mount");
        let t0 = Instant::now();
        loop {
            if is_mounted(&self.mnt) {
                break;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("tezipfs mount exited ({status}) before mounting; log:\n{}", self.log_text());
            }
            if t0.elapsed() > MOUNT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not appear in /proc/self/mounts within {MOUNT_TIMEOUT:?}; log:\n{}", self.mnt.display(), self.log_text());
            }
            std::thread::sleep(POLL);
        }
        self.child = Some(child);
    }

    /// SIGTERM the daemon and wait for it (SIGKILL after 30 s); make sure nothing stays
    /// mounted. Returns the daemon's exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let status = self.child.take().map(|mut c| {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            loop {
                if let Some(s) = c.try_wait().expect("try_wait") {
                    break s;
                }
                if t0.elapsed() > Duration::from_secs(30) {
                    eprintln!("tezipfs did not exit within 30 s of SIGTERM: killing it");
                    let _ = c.kill();
                    break c.wait().expect("wait");
                }
                std::thread::sleep(POLL);
            }
        });
        if is_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        status
    }

    /// `kill -9` the daemon and wait for it, leaving its dead mount in place (calls on it fail
    /// with ENOTCONN until [`Fs::kill9`] or a lazy unmount removes it).
    pub fn kill9_keep_mount(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// `kill -9` the daemon (no unmount by it), then `fusermount3 -u -z` the dead mount.
    pub fn kill9(&mut self) {
        self.kill9_keep_mount();
        lazy_unmount(&self.mnt);
        wait_for("the dead mount to go away", MOUNT_TIMEOUT, || !is_mounted(&self.mnt));
    }

    /// Stop and start again on the same store (drops every cache of the daemon and kernel).
    pub fn remount(&mut self) {
        let st = self.stop();
        assert!(st.is_some_and(|s| s.success()), "daemon exit status at unmount: {st:?}; log:\n{}", self.log_text());
        self.start();
    }

    /// The daemon log so far, without terminal colour codes.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The log has no ERROR line and no panic. One line is expected, not an error: fuser's
    /// "Failed to send FUSE reply" while a daemon unmounts (between its "Unmounting" line and its
    /// exit), when a request the kernel sent just before (an asynchronous RELEASE of a file the
    /// test closed) is answered after the unmount aborted the connection.
    pub fn assert_log_clean(&self) {
        let log = self.log_text();
        let mut unmounting = false;
        let mut bad = Vec::new();
        for l in log.lines() {
            if l.contains("fuser::mnt: Unmounting") {
                unmounting = true;
            } else if l.contains("fuser::session: Mounting") {
                unmounting = false;
            }
            let aborted_reply = unmounting && l.contains("fuser::reply: Failed to send FUSE reply");
            if (l.contains(" ERROR ") && !aborted_reply) || l.contains("panicked") {
                bad.push(l);
            }
        }
        assert!(bad.is_empty(), "the daemon logged errors:\n{}", bad.join("\n"));
    }

    /// `tezipfs stats DIR --json`.
    pub fn stats(&self, dir: &Path) -> serde_json::Value {
        stats(dir)
    }

    /// Files (by name) in the store's `blobs/`.
    pub fn blobs(&self) -> Vec<PathBuf> {
        list(&self.store.join("blobs"))
    }

    /// Files in the store's `staging/`.
    pub fn staging(&self) -> Vec<PathBuf> {
        list(&self.store.join("staging"))
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

impl Drop for Fs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- tezipfs daemon log ({}) -----\n{}\n----- end of daemon log -----", self.log.display(), self.log_text());
        }
        self.stop();
    }
}

/// `tezipfs stats --json` of a directory in a mount.
pub fn stats(dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN).arg("stats").arg(dir).arg("--json").env("NO_COLOR", "1").output().expect("run tezipfs stats");
    assert!(out.status.success(), "tezipfs stats failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stats is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Poll `cond` until it holds; panic after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
}

// ----- extended attributes (libc, so the errno is visible) -----

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn xattr_get(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    // SAFETY: valid C strings and a value buffer of the given length.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Set the directory policy: format, bound, window (each optional).
pub fn set_policy(dir: &Path, format: Option<&str>, bound: Option<&str>, window: Option<usize>) {
    if let Some(f) = format {
        xattr_set(dir, "user.tezip.format", f.as_bytes()).unwrap_or_else(|e| panic!("set format {f} on {}: {e}", dir.display()));
    }
    if let Some(b) = bound {
        xattr_set(dir, "user.tezip.bound", b.as_bytes()).unwrap_or_else(|e| panic!("set bound {b} on {}: {e}", dir.display()));
    }
    if let Some(w) = window {
        xattr_set(dir, "user.tezip.window", w.to_string().as_bytes()).unwrap_or_else(|e| panic!("set window {w} on {}: {e}", dir.display()));
    }
}

/// `user.tezip.state` of a file (`staged`, `compressed`, `stored`), or the error text.
pub fn state(path: &Path) -> String {
    match xattr_get(path, "user.tezip.state") {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(e) => format!("<error: {e}>"),
    }
}

/// Wait until every file is in one of the `want` states (30 s limit); the panic lists the
/// files that are not.
pub fn wait_states(paths: &[PathBuf], want: &[&str]) {
    wait_states_within(paths, want, STATE_TIMEOUT)
}

/// [`wait_states`] with a limit of `limit` (for windows a learned model codes on the CPU).
pub fn wait_states_within(paths: &[PathBuf], want: &[&str], limit: Duration) {
    let t0 = Instant::now();
    loop {
        let behind: Vec<(String, String)> = paths.iter().map(|p| (p.display().to_string(), state(p))).filter(|(_, s)| !want.contains(&s.as_str())).collect();
        if behind.is_empty() {
            return;
        }
        if t0.elapsed() > limit {
            panic!("after {limit:?}, {} file(s) are not {want:?}: {behind:?}", behind.len());
        }
        std::thread::sleep(POLL);
    }
}

pub fn wait_compressed(paths: &[PathBuf]) {
    wait_states(paths, &["compressed"]);
}

// ----- content -----

pub fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// Compare bytes, with a useful message (length, CRC, first difference).
pub fn check_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want && crc(got) == crc(want) {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    Err(format!(
        "{what}: content differs: {} bytes (crc32c {:08x}) read, {} bytes (crc32c {:08x}) expected; first difference at byte {first}",
        got.len(),
        crc(got),
        want.len(),
        crc(want)
    ))
}

/// Read a file through the mount and require exactly `want`.
pub fn assert_file(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    if let Err(m) = check_bytes(&path.display().to_string(), &got, want) {
        panic!("{m}");
    }
}

/// Require every file of `expected` (path -> bytes) to read back exactly, and `st_size` to be
/// the length.
pub fn assert_files(expected: &BTreeMap<PathBuf, Vec<u8>>) {
    for (p, want) in expected {
        assert_file(p, want);
        let len = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).len();
        assert_eq!(len, want.len() as u64, "st_size of {}", p.display());
    }
}

/// Write a file in one go (open O_CREAT|O_TRUNC, write, close).
pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// (logical bytes, stored bytes = sum of st_blocks * 512) of some files.
pub fn usage(paths: &[PathBuf]) -> (u64, u64) {
    paths.iter().fold((0, 0), |(l, s), p| {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        (l + m.len(), s + m.blocks() * 512)
    })
}

/// Names of the entries of a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ----- frames -----

/// `n` raw little-endian u16 detector frames of `w`x`h`.
pub fn raw_frames(w: u32, h: u32, n: usize, seed: u64) -> Vec<Vec<u8>> {
    tezipfs::fixtures::generate_raw(&tezipfs::fixtures::SequenceSpec::detector_u16(w, h, n, seed))
}

/// `n` u16 detector images of `w`x`h` (pixel values).
pub fn images(w: u32, h: u32, n: usize, seed: u64) -> Vec<Vec<u32>> {
    tezipfs::fixtures::generate_images(&tezipfs::fixtures::SequenceSpec::detector_u16(w, h, n, seed))
}

/// Baseline TIFF files of u16 images; byte order, strip size and strip order vary with `k`
/// when `vary` is set.
pub fn tiff_files(w: u32, h: u32, imgs: &[Vec<u32>], vary: bool) -> Vec<Vec<u8>> {
    use tezipfs::codec::format::tiff;
    imgs.iter()
        .enumerate()
        .map(|(k, img)| {
            if vary {
                let rows = [16, 1, h, 7][k % 4];
                tiff::write(w, h, tezipfs::codec::DType::U16, k % 2 == 1, rows, k % 3 == 2, img)
            } else {
                tiff::write(w, h, tezipfs::codec::DType::U16, false, 16, false, img)
            }
        })
        .collect()
}

/// Frame file name `frame_NNNNN.EXT`.
pub fn frame_name(i: usize, ext: &str) -> String {
    format!("frame_{i:05}.{ext}")
}

/// Write frames `frames` into `dir` as `frame_NNNNN.EXT`; returns path -> bytes.
pub fn write_frames(dir: &Path, frames: &[Vec<u8>], ext: &str) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (i, f) in frames.iter().enumerate() {
        let p = dir.join(frame_name(i, ext));
        write_file(&p, f);
        m.insert(p, f.clone());
    }
    m
}

/// Little-endian u16 samples of a raw frame.
pub fn u16s(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}
