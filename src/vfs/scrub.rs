//! Online scrub: the running daemon re-reads every blob, checks it ([`crate::check::blobs`],
//! every checksum and a full decode), at a limited rate, in blob id order, remembering the next
//! blob in the index (`Cscrub`) so that a scrub stopped by a restart resumes where it was.
//!
//! Interface (docs/ADMIN.md): the attribute `user.tezip.scrub` of the mount's root directory.
//! Setting it to `start [rate=MB/s]` resumes the scrub where it was (or starts it), `restart
//! [rate=MB/s]` starts it from the first blob, `stop` pauses it (the position stays). Reading it
//! gives the status as JSON: state, position, progress and the problems found, by path.
//!
//! The scrub reads blob files and decodes them with its own decoder: it takes no lock that a
//! reader or the engine waits for.

use super::{FsError, FsResult, Vfs};
use crate::check::blobs::{self, Level};
use crate::index::{keys, Batch, Data, Index};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const SCRUB: &str = "user.tezip.scrub";
/// Rate when none is asked (MB/s of blob bytes).
pub const DEFAULT_RATE: f64 = 50.0;

#[derive(Clone, Debug, Serialize, Default)]
pub struct ScrubProblem {
    pub blob: u64,
    pub error: String,
    /// Paths of the files that cannot be read because of it.
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// `idle` (never asked since the daemon started), `running`, `stopped`, `done`.
    pub state: &'static str,
    /// Runs started since the daemon started (a client sees its request taken when it grows).
    pub run: u64,
    pub rate_mb_s: f64,
    /// The blob id the scrub started from (this run), and the next one it checks.
    pub started_at: u64,
    pub next_blob: u64,
    pub blobs_done: u64,
    pub blobs_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub problems: Vec<ScrubProblem>,
    /// Why the scrub itself failed (cannot read the index), if it did.
    pub error: Option<String>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: "idle",
            run: 0,
            rate_mb_s: DEFAULT_RATE,
            started_at: 0,
            next_blob: 0,
            blobs_done: 0,
            blobs_total: 0,
            bytes_done: 0,
            bytes_total: 0,
            problems: Vec::new(),
            error: None,
        }
    }
}

enum Request {
    Start { restart: bool, rate: f64 },
    Stop,
}

/// The scrub's state, shared by the attribute handlers and the scrub thread.
#[derive(Default)]
pub struct Scrub {
    status: Mutex<Status>,
    request: Mutex<Option<Request>>,
    wake: Condvar,
}

fn parse(value: &[u8]) -> FsResult<Request> {
    let text = std::str::from_utf8(value).map_err(|_| FsError::Invalid(format!("{SCRUB}: not UTF-8")))?;
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or("");
    let mut rate = DEFAULT_RATE;
    for w in words {
        match w.strip_prefix("rate=").map(str::parse::<f64>) {
            Some(Ok(r)) if r > 0.0 && r.is_finite() => rate = r,
            _ => return Err(FsError::Invalid(format!("{SCRUB}: {w:?} is not rate=MB/s (a number above 0)"))),
        }
    }
    match verb {
        "start" | "resume" => Ok(Request::Start { restart: false, rate }),
        "restart" => Ok(Request::Start { restart: true, rate }),
        "stop" => Ok(Request::Stop),
        _ => Err(FsError::Invalid(format!("{SCRUB}: {verb:?} is not start, restart or stop"))),
    }
}

impl Vfs {
    /// `setxattr user.tezip.scrub` on the root.
    pub(crate) fn scrub_request(&self, ino: u64, value: &[u8]) -> FsResult<()> {
        if ino != super::ROOT {
            return Err(FsError::Invalid(format!("{SCRUB} applies to the mount's root directory")));
        }
        let r = parse(value)?;
        tracing::info!(request = %String::from_utf8_lossy(value), "scrub requested");
        *self.scrub.request.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.scrub.wake.notify_all();
        Ok(())
    }

    /// `getxattr user.tezip.scrub` on the root: the status as JSON.
    pub(crate) fn scrub_status(&self) -> FsResult<Vec<u8>> {
        let st = self.scrub.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::to_vec_pretty(&st).map_err(|e| FsError::Invalid(e.to_string()))
    }

    fn scrub_set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.scrub.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn take_request(&self, wait: Duration) -> Option<Request> {
        let g = self.scrub.request.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self.scrub.wake.wait_timeout_while(g, wait, |r| r.is_none()).unwrap_or_else(|e| e.into_inner());
        g.take()
    }

    /// One scrub run from the stored position (or the first blob): returns when done, stopped,
    /// or asked to start again (the request is handed back).
    fn scrub_run(&self, restart: bool, rate: f64, quit: &AtomicBool) -> FsResult<Option<Request>> {
        let from = if restart { 0 } else { self.index.counter(keys::SCRUB_NEXT)? };
        let todo: Vec<crate::index::Blob> = self.index.blobs()?.into_iter().filter(|b| b.id >= from).collect();
        let bytes_total = todo.iter().map(|b| b.bytes).sum();
        let (problems, run) = {
            let s = self.scrub.status.lock().unwrap_or_else(|e| e.into_inner());
            (if restart { Vec::new() } else { s.problems.clone() }, s.run + 1)
        };
        self.scrub_set(|s| {
            *s = Status {
                state: "running",
                run,
                rate_mb_s: rate,
                started_at: from,
                next_blob: todo.first().map_or(from, |b| b.id),
                blobs_total: todo.len() as u64,
                bytes_total,
                problems,
                ..Default::default()
            }
        });
        tracing::info!(from, blobs = todo.len(), bytes = bytes_total, rate_mb_s = rate, "scrub started");
        let t0 = Instant::now();
        let mut done_bytes = 0u64;
        for b in todo {
            if quit.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(r) = self.scrub.request.lock().unwrap_or_else(|e| e.into_inner()).take() {
                if let Request::Stop = r {
                    self.scrub_set(|s| s.state = "stopped");
                    tracing::info!(next_blob = b.id, "scrub stopped");
                    return Ok(None);
                }
                return Ok(Some(r));
            }
            if let Some(p) = self.scrub_blob(b.id)? {
                tracing::error!(blob = p.blob, error = %p.error, paths = ?p.paths, "scrub: a blob is damaged; its files read EIO");
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.scrub_set(|s| s.problems.push(p));
            }
            done_bytes += b.bytes;
            let mut batch = Batch::default();
            Index::put_counter(&mut batch, keys::SCRUB_NEXT, b.id + 1);
            self.store.keep_room_for_index();
            self.index.apply(batch)?;
            self.scrub_set(|s| {
                s.next_blob = b.id + 1;
                s.blobs_done += 1;
                s.bytes_done = done_bytes;
            });
            // Throttle: never ahead of `rate` MB/s since the start.
            let due = Duration::from_secs_f64(done_bytes as f64 / (rate * 1e6));
            let ahead = due.saturating_sub(t0.elapsed());
            if !ahead.is_zero() {
                if let Some(r) = self.take_request(ahead) {
                    *self.scrub.request.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            }
        }
        let mut batch = Batch::default();
        batch.delete(keys::SCRUB_NEXT.to_vec());
        self.store.keep_room_for_index();
        self.index.apply(batch)?;
        self.index.flush()?;
        let n = self.scrub.status.lock().unwrap_or_else(|e| e.into_inner()).problems.len();
        self.scrub_set(|s| s.state = "done");
        tracing::info!(problems = n, seconds = t0.elapsed().as_secs_f64(), "scrub done");
        Ok(None)
    }

    /// Check one blob; a problem when a file that refers to it cannot be read.
    fn scrub_blob(&self, id: u64) -> FsResult<Option<ScrubProblem>> {
        let bytes = match self.store.read_blob(id) {
            Ok(b) => Some(b),
            // Deleted since the list was made (its last file went): nothing to check.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.index.blob(id)?.is_none() => return Ok(None),
            Err(_) => None,
        };
        let check = match &bytes {
            Some(b) => blobs::check(b, Level::Decode, Some(self.models.clone())),
            None => {
                blobs::BlobCheck { whole: Some(format!("blob file {} is missing or unreadable", self.store.blob_path(id).display())), ..Default::default() }
            }
        };
        if check.is_ok() {
            return Ok(None);
        }
        // The files in it that cannot be read, by path.
        let mut hit = Vec::new();
        let mut error = check.whole.clone();
        for i in self.index.inodes()? {
            if let Data::Compressed { blob, slot, .. } = i.data {
                if blob == id {
                    if let Some(why) = check.entry_problem(slot) {
                        error.get_or_insert(why);
                        hit.push(i.ino);
                    }
                }
            }
        }
        if hit.is_empty() {
            return Ok(None); // only entries of deleted files are damaged
        }
        let dirents: Vec<crate::check::scan::Dirent> = self
            .index
            .store()
            .scan_prefix(b"D")?
            .into_iter()
            .filter(|(k, _)| k.len() > 9)
            .map(|(k, v)| crate::check::scan::Dirent {
                parent: u64::from_be_bytes(k[1..9].try_into().expect("8 bytes")),
                name: k[9..].to_vec(),
                child: postcard::from_bytes(&v).ok(),
            })
            .collect();
        let paths = crate::check::Paths::new(&dirents);
        Ok(Some(ScrubProblem { blob: id, error: error.unwrap_or_default(), paths: hit.into_iter().flat_map(|i| paths.of(i)).collect() }))
    }
}

/// The scrub thread of a mount: waits for requests, runs the scrub.
pub struct Scrubber {
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    vfs: Arc<Vfs>,
}

impl Scrubber {
    pub fn start(vfs: Arc<Vfs>) -> std::io::Result<Scrubber> {
        let quit = Arc::new(AtomicBool::new(false));
        let (q, v) = (quit.clone(), vfs.clone());
        let thread = std::thread::Builder::new().name("tezipfs-scrub".into()).spawn(move || {
            let mut next = None;
            while !q.load(Ordering::Relaxed) {
                let r = next.take().or_else(|| v.take_request(Duration::from_millis(500)));
                match r {
                    Some(Request::Start { restart, rate }) => match v.scrub_run(restart, rate, &q) {
                        Ok(again) => next = again,
                        Err(e) => {
                            tracing::error!(error = %e, "scrub failed");
                            v.scrub_set(|s| {
                                s.state = "stopped";
                                s.error = Some(e.to_string());
                            });
                        }
                    },
                    Some(Request::Stop) => v.scrub_set(|s| {
                        if s.state == "running" {
                            s.state = "stopped"
                        }
                    }),
                    None => {}
                }
            }
        })?;
        Ok(Scrubber { quit, thread: Some(thread), vfs })
    }

    pub fn stop(mut self) {
        self.quit.store(true, Ordering::Relaxed);
        self.vfs.scrub.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
