//! Which directories the engine looks at, and when: the engine never scans the index in steady
//! state. An event that can make a file compressible (a close after a write, the last close of
//! a file, fsync, a rename or link into a directory, an mtime or size change, a re-compression
//! request) puts the file's directory on the queue, due now; the engine plans that directory
//! alone and, if some of its files are not ready yet (quiet period, short tail, a failed window
//! backing off), puts it back, due when the first of them will be. A policy change, and the
//! mount's recovery, ask for one scan of every directory with staged files.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// (due time, directory), and each queued directory's due time.
    due: BTreeSet<(Instant, u64)>,
    when: HashMap<u64, Instant>,
    /// Look at every directory that has staged files.
    rescan: bool,
    /// Bumped by every change, so a waiter knows it missed none.
    seq: u64,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    changed: Condvar,
}

/// What the engine takes from the queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub rescan: bool,
    pub dirs: Vec<u64>,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Look at `dir` now.
    pub fn touch(&self, dir: u64) {
        self.at(dir, Instant::now());
    }

    /// Look at `dir` at `when` (or earlier, if it is due earlier already).
    pub fn at(&self, dir: u64, when: Instant) {
        let mut s = self.lock();
        match s.when.get(&dir).copied() {
            Some(t) if t <= when => return,
            Some(t) => {
                s.due.remove(&(t, dir));
            }
            None => {}
        }
        s.due.insert((when, dir));
        s.when.insert(dir, when);
        s.seq += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Look at every directory with staged files (mount recovery, a policy change).
    pub fn rescan(&self) {
        let mut s = self.lock();
        s.rescan = true;
        s.seq += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Wake a waiter without queueing anything (to stop it).
    pub fn wake(&self) {
        self.lock().seq += 1;
        self.changed.notify_all();
    }

    /// Take what is due at `now`.
    pub fn take_due(&self, now: Instant) -> Due {
        let mut s = self.lock();
        let mut due = Due { rescan: std::mem::take(&mut s.rescan), dirs: Vec::new() };
        while let Some(&(t, dir)) = s.due.first() {
            if t > now {
                break;
            }
            s.due.pop_first();
            s.when.remove(&dir);
            due.dirs.push(dir);
        }
        due
    }

    /// Directories waiting (for `stats`).
    pub fn len(&self) -> usize {
        self.lock().when.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until something is due, something changes, or `limit` passes.
    pub fn wait(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        let seq = s.seq;
        loop {
            let now = Instant::now();
            let until = s.due.first().map_or(deadline, |&(t, _)| t.min(deadline));
            if s.rescan || s.seq != seq || until <= now {
                return;
            }
            s = self.changed.wait_timeout(s, until - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_come_due_in_time_order_once_each() {
        let q = WorkQueue::default();
        let t0 = Instant::now();
        q.at(1, t0 + Duration::from_secs(10));
        q.at(2, t0 + Duration::from_secs(5));
        q.at(1, t0 + Duration::from_secs(20)); // later than queued: no change
        q.at(3, t0 + Duration::from_secs(30));
        q.at(3, t0 + Duration::from_secs(1)); // earlier: moved up
        assert_eq!(q.len(), 3);
        assert_eq!(q.take_due(t0), Due::default());
        assert_eq!(q.take_due(t0 + Duration::from_secs(6)).dirs, vec![3, 2]);
        assert_eq!(q.take_due(t0 + Duration::from_secs(60)).dirs, vec![1]);
        assert!(q.is_empty());
        q.rescan();
        assert_eq!(q.take_due(t0), Due { rescan: true, dirs: vec![] });
        assert_eq!(q.take_due(t0), Due::default());
    }

    #[test]
    fn a_waiter_wakes_for_a_touch_and_for_a_due_time() {
        let q = std::sync::Arc::new(WorkQueue::default());
        let t = Instant::now();
        q.wait(Duration::from_millis(30)); // nothing queued: waits out the limit
        assert!(t.elapsed() >= Duration::from_millis(30));
        let q2 = q.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q2.touch(7);
        });
        let t = Instant::now();
        q.wait(Duration::from_secs(60));
        assert!(t.elapsed() < Duration::from_secs(30), "woken by the touch");
        h.join().unwrap();
        assert_eq!(q.take_due(Instant::now()).dirs, vec![7]);
        q.at(8, Instant::now() + Duration::from_millis(20));
        let t = Instant::now();
        q.wait(Duration::from_secs(60));
        assert!(t.elapsed() < Duration::from_secs(30), "woken at the due time");
    }
}
