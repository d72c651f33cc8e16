//! Every disk call of the store's own files (staging files, blobs, tmp files, models, and the
//! fsyncs of their directories) goes through this module, so that tests can make them fail.
//!
//! Off (the default, and in production) each call is the plain `std` call after one check of a
//! process-wide setting. Two testing tools turn it on, from the environment of the daemon:
//!
//! - `TEZIPFS_FAULTS=FILE`: inject faults by the rules in FILE ([`rules`] has the syntax), reread
//!   whenever the file changes, so a test arms and disarms faults on a live mount;
//! - `TEZIPFS_POWERCUT=DIR`: track which writes are durable ([`powercut`]); a `powercut` rule
//!   then writes to DIR the store as a power loss at that call would leave it, and kills the
//!   daemon.
//!
//! The sled index does its own file I/O and is out of reach; [`powercut`] copies it at each
//! flush instead. Neither tool is for production: see docs/ADMIN.md "Fault injection".

pub mod powercut;
pub mod rules;

pub use rules::{Kind, Op};

use rules::{Action, Rule};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The environment variable naming the rules file.
pub const FAULTS_ENV: &str = "TEZIPFS_FAULTS";

struct Faults {
    file: PathBuf,
    state: Mutex<FaultState>,
}

struct FaultState {
    /// (mtime, mtime nsec, size, inode) of the rules file when last read.
    stamp: Option<(i64, i64, u64, u64)>,
    rules: Vec<Rule>,
    rng: u64,
}

static FAULTS: OnceLock<Option<Faults>> = OnceLock::new();

fn faults() -> Option<&'static Faults> {
    FAULTS
        .get_or_init(|| {
            let file = PathBuf::from(std::env::var_os(FAULTS_ENV).filter(|v| !v.is_empty())?);
            tracing::warn!(rules = %file.display(), "fault injection is on ({FAULTS_ENV}): a testing tool, not for production");
            let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
            Some(Faults { file, state: Mutex::new(FaultState { stamp: None, rules: Vec::new(), rng: seed }) })
        })
        .as_ref()
}

/// Whether a disk call may be altered at all (faults or power-cut tracking on).
pub fn active() -> bool {
    faults().is_some() || powercut::on()
}

impl Faults {
    /// The action of the first rule that fires on this call, rereading the rules if they changed.
    fn fire(&self, op: Op, kind: Kind, path: &Path) -> Option<Action> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(&self.file).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()));
        if stamp != st.stamp {
            st.stamp = stamp;
            st.rules = match std::fs::read_to_string(&self.file) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    tracing::error!(rules = %self.file.display(), error = %e, "cannot read the fault rules: none armed");
                    Vec::new()
                }
                Ok(text) => match rules::parse(&text) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(rules = %self.file.display(), error = %e, "bad fault rules: none armed");
                        Vec::new()
                    }
                },
            };
            tracing::info!(rules = st.rules.len(), file = %self.file.display(), "fault rules (re)read");
        }
        // xorshift64: enough for `prob=`.
        let mut x = st.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        st.rng = x;
        let coin = (x >> 11) as f64 / (1u64 << 53) as f64;
        st.rules.iter_mut().filter(|r| r.matches(op, kind, path)).find_map(|r| r.fire(coin).then(|| r.action.clone()))
    }
}

/// What to do with a call that passed the fault rules.
enum Plan {
    Run,
    /// Store half of a write, then succeed (`None`) or fail.
    Short(Option<i32>),
}

fn injected(op: Op, path: &Path, errno: i32) -> io::Error {
    let e = io::Error::from_raw_os_error(errno);
    tracing::warn!(?op, path = %path.display(), error = %e, "fault injected ({FAULTS_ENV})");
    e
}

/// Run the fault rules on a call about to be made.
fn check(op: Op, kind: Kind, path: &Path) -> io::Result<Plan> {
    powercut::gate();
    let Some(f) = faults() else { return Ok(Plan::Run) };
    match f.fire(op, kind, path) {
        None => Ok(Plan::Run),
        Some(Action::Error(e)) => Err(injected(op, path, e)),
        Some(Action::Delay(d)) => {
            tracing::info!(?op, path = %path.display(), delay_ms = d.as_millis() as u64, "fault injected: delay");
            std::thread::sleep(d);
            Ok(Plan::Run)
        }
        Some(Action::Short(e)) if op == Op::Write => Ok(Plan::Short(e)),
        Some(Action::Short(_)) => Ok(Plan::Run),
        Some(Action::PowerCut { tear }) => {
            powercut::cut(tear, op, path);
            Ok(Plan::Run)
        }
    }
}

/// Create (or truncate) a file for writing.
pub fn create(path: &Path) -> io::Result<File> {
    check(Op::Create, Kind::of_file(path), path)?;
    let f = File::create(path)?;
    powercut::opened(path, &f, true);
    Ok(f)
}

/// Open a file for reading, and for writing if `write`; create it if `create`.
pub fn open(path: &Path, write: bool, create: bool) -> io::Result<File> {
    check(if create { Op::Create } else { Op::Open }, Kind::of_file(path), path)?;
    let f = std::fs::OpenOptions::new().read(true).write(write).create(create).truncate(false).open(path)?;
    powercut::opened(path, &f, false);
    Ok(f)
}

/// Read a whole file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    check(Op::Read, Kind::of_file(path), path)?;
    let mut f = File::open(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// pread of a file opened through this module (`path` is its name, for the rules).
pub fn read_at(f: &File, path: &Path, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    check(Op::Read, Kind::of_file(path), path)?;
    f.read_at(buf, offset)
}

fn half(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len() / 2]
}

/// Write all of `bytes` at the file's position.
pub fn write_all(f: &File, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let plan = check(Op::Write, Kind::of_file(path), path)?;
    let mut w = f;
    let offset = if powercut::on() { w.stream_position()? } else { 0 };
    match plan {
        Plan::Run => {
            w.write_all(bytes)?;
            powercut::wrote(f, offset, bytes);
            Ok(())
        }
        Plan::Short(e) => {
            w.write_all(half(bytes))?;
            powercut::wrote(f, offset, half(bytes));
            short_result(path, e)
        }
    }
}

/// pwrite all of `bytes` at `offset`.
pub fn write_all_at(f: &File, path: &Path, bytes: &[u8], offset: u64) -> io::Result<()> {
    match check(Op::Write, Kind::of_file(path), path)? {
        Plan::Run => {
            f.write_all_at(bytes, offset)?;
            powercut::wrote(f, offset, bytes);
            Ok(())
        }
        Plan::Short(e) => {
            f.write_all_at(half(bytes), offset)?;
            powercut::wrote(f, offset, half(bytes));
            short_result(path, e)
        }
    }
}

fn short_result(path: &Path, errno: Option<i32>) -> io::Result<()> {
    match errno {
        Some(e) => Err(injected(Op::Write, path, e)),
        None => {
            tracing::warn!(path = %path.display(), "fault injected: a short write reported as whole ({FAULTS_ENV})");
            Ok(())
        }
    }
}

/// ftruncate (a write, for the rules).
pub fn set_len(f: &File, path: &Path, len: u64) -> io::Result<()> {
    check(Op::Write, Kind::of_file(path), path)?;
    f.set_len(len)?;
    powercut::truncated(f, len);
    Ok(())
}

/// fsync.
pub fn sync_all(f: &File, path: &Path) -> io::Result<()> {
    check(Op::Fsync, Kind::of_file(path), path)?;
    f.sync_all()?;
    powercut::synced(f);
    Ok(())
}

/// fdatasync.
pub fn sync_data(f: &File, path: &Path) -> io::Result<()> {
    check(Op::Fsync, Kind::of_file(path), path)?;
    f.sync_data()?;
    powercut::synced(f);
    Ok(())
}

/// rename(2); the rules see the destination (`tmp/7.tzb` to `blobs/7.tzb` is a blob's rename).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    check(Op::Rename, Kind::of_file(to), to)?;
    std::fs::rename(from, to)?;
    powercut::renamed(from, to);
    Ok(())
}

/// unlink(2).
pub fn remove_file(path: &Path) -> io::Result<()> {
    check(Op::Unlink, Kind::of_file(path), path)?;
    std::fs::remove_file(path)?;
    powercut::unlinked(path);
    Ok(())
}

/// fsync of a directory: what was created, renamed or removed in it is durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    check(Op::Fsync, Kind::Dir, path)?;
    File::open(path)?.sync_all()?;
    powercut::dir_synced(path);
    Ok(())
}
