//! CPU priority of the engine's threads: ingest and reads first, compression on what is left.
//!
//! The engine's threads run at nice 10 ([`background`]). The CPU-heavy part of a window (encoding
//! and the verifying decode) runs on a thread of its own under `SCHED_IDLE` ([`run_idle`]): a
//! foreground thread that wakes (a FUSE request, a writer returning from one) takes the core at
//! once instead of waiting for a nice-10 slice to end. Beside a compressing engine, a writer of
//! 2000 small files waited 37-261 ms for a core where it waited 109-372 ms at nice 10 (three
//! rounds each, `docs/results/issue12-ingest.txt`). A window's commit (index batch and flush,
//! which hold locks that requests wait for) stays at nice 10, so it cannot starve behind busy
//! foreground threads; encoding holds no lock a request needs.
//!
//! Threads an encoding spawns (the codec's slice threads) inherit its policy.
//!
//! `SCHED_IDLE` never gets a core that a normal thread wants: on a node whose CPUs other work
//! keeps busy, an idle encoding would never run and staging would only grow (seen: two
//! normal-priority processes on two cores stopped a mount's compression entirely). So the engine
//! encodes idle only while the backlog is small (`Config::idle_backlog`); above it, at nice 10
//! ([`Encoding::Nice`]), which still yields most of a busy core to foreground work but always
//! progresses.

/// How a window's encoding is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Under `SCHED_IDLE`: only on CPU nothing else wants (the backlog is small).
    Idle,
    /// At the engine's nice value, competing for CPU (the backlog is over its limit).
    Nice,
}

impl Encoding {
    /// The scheduling for a backlog of `staged` bytes against a limit of `idle_backlog`.
    pub fn for_backlog(staged: u64, idle_backlog: u64) -> Encoding {
        if staged <= idle_backlog {
            Encoding::Idle
        } else {
            Encoding::Nice
        }
    }
}

/// Nice value of the engine's threads outside [`run_idle`].
pub const BACKGROUND_NICE: i32 = 10;

/// Lower the calling thread to nice [`BACKGROUND_NICE`] (best effort: a failure is logged).
pub fn background() {
    // SAFETY: setpriority on the calling thread only (Linux nice values are per thread).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the priority of an engine thread");
    }
}

/// `f` scheduled as `how` says: [`Encoding::Nice`] on the calling thread, [`Encoding::Idle`]
/// through [`run_idle`].
pub fn run_encoding<R: Send>(how: Encoding, f: impl FnOnce() -> R + Send) -> R {
    match how {
        Encoding::Idle => run_idle(f),
        Encoding::Nice => f(),
    }
}

/// `f` on a thread of its own under `SCHED_IDLE` (best effort: where the policy cannot be set,
/// at the caller's priority), its result returned. A thread of its own, because an unprivileged
/// thread may not leave `SCHED_IDLE` again (`sched_setscheduler(2)`: RLIMIT_NICE).
pub fn run_idle<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let f = std::sync::Mutex::new(Some(f));
    let take = || f.lock().unwrap_or_else(|e| e.into_inner()).take();
    // The encoding's log lines keep the caller's span (its window, its directory).
    let span = tracing::Span::current();
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new().name("tezipfs-encode".into()).spawn_scoped(s, || {
            let _span = span.enter();
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the calling thread.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "could not run an encoding under SCHED_IDLE");
            }
            take().map(|f| f())
        });
        let done = match worker {
            Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            Err(e) => {
                tracing::debug!(error = %e, "could not start an encoding thread; encoding on the caller's");
                None
            }
        };
        // No thread could be had: the closure has not run; it runs here, at the caller's priority.
        match (done, take()) {
            (Some(r), _) => r,
            (None, Some(f)) => f(),
            (None, None) => unreachable!("the encoding thread took the closure and returned nothing"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: pid 0 is the calling thread; no pointers.
        unsafe { libc::sched_getscheduler(0) }
    }

    fn nice() -> i32 {
        // SAFETY: getpriority of the calling thread; no pointers.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn encoding_runs_under_sched_idle_and_the_threads_it_starts_inherit_it() {
        std::thread::spawn(|| {
            background();
            assert_eq!(nice(), BACKGROUND_NICE);
            let (inside, child) = run_idle(|| (policy(), std::thread::spawn(policy).join().unwrap()));
            assert_eq!(inside, libc::SCHED_IDLE, "the encoding's thread");
            assert_eq!(child, libc::SCHED_IDLE, "a thread the encoding starts");
            assert_eq!(policy(), libc::SCHED_OTHER, "the caller keeps its policy");
            assert_eq!(nice(), BACKGROUND_NICE, "and its nice value");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn over_its_backlog_limit_encoding_runs_at_nice_10_not_idle() {
        assert_eq!(Encoding::for_backlog(0, 0), Encoding::Idle);
        assert_eq!(Encoding::for_backlog(100, 100), Encoding::Idle);
        assert_eq!(Encoding::for_backlog(101, 100), Encoding::Nice);
        std::thread::spawn(|| {
            background();
            let (inside, inside_nice) = run_encoding(Encoding::Nice, || (policy(), nice()));
            assert_eq!(inside, libc::SCHED_OTHER);
            assert_eq!(inside_nice, BACKGROUND_NICE);
            assert_eq!(run_encoding(Encoding::Idle, policy), libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_panic_in_an_idle_encoding_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| run_idle(|| -> u8 { panic!("boom") }));
        assert!(r.is_err());
        assert_eq!(run_idle(|| 7), 7);
    }
}
