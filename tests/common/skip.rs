//! Skipped tests, counted as skipped: a test that cannot run here calls [`skip`] and returns.
//! The skip is written to the skip log (`$TEZIPFS_SKIP_LOG`, which `scripts/test` sets and
//! counts), so the test command reports "N passed, N failed, N skipped" and a skip is never a pass.
//!
//! On a machine where FUSE and root tests must run (CI: `.ci/run` sets `TEZIPFS_REQUIRE_FUSE=1`)
//! a skip for want of FUSE, root or a system tool fails the test instead. A skip for want of the
//! shared data sets (`../shared/data`, not part of a clone) or of a host property (systemd as
//! PID 1) is only reported.
#![allow(dead_code)]

use std::io::Write;

/// What a skipped test lacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lack {
    /// /dev/fuse or fusermount3.
    Fuse,
    /// Root (mounting a tmpfs, acting as another user, pjdfstest).
    Root,
    /// A system tool the test drives (systemd-analyze, chromium).
    Tool,
    /// Data that is not part of the repository.
    Data,
    /// A property of the machine the tests cannot set up (systemd as PID 1 in a container).
    Host,
}

/// Record that the running test is skipped because of `lack` (`why` says what exactly), or panic
/// when `TEZIPFS_REQUIRE_FUSE=1` and the lack is one a CI machine must not have.
pub fn skip(lack: Lack, why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let required = std::env::var("TEZIPFS_REQUIRE_FUSE").is_ok_and(|v| v == "1");
    if required && !matches!(lack, Lack::Data | Lack::Host) {
        panic!("{test} cannot run here ({why}), and TEZIPFS_REQUIRE_FUSE=1 says it must: a skip is a failure on this machine");
    }
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(log) = std::env::var("TEZIPFS_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
            // One line per skip, written whole (O_APPEND), so parallel tests do not interleave.
            let _ = f.write_all(format!("{} {test}: {why}\n", env!("CARGO_CRATE_NAME")).as_bytes());
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skip (see [`skip`]) unless running as root; `what` says what needs it.
pub fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(Lack::Root, &format!("{what} needs root"));
    false
}
