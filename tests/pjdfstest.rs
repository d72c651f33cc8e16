//! POSIX conformance: runs `scripts/pjdfstest` (pjdfstest inside a fresh mount) and requires
//! that nothing fails. The skipped tests and why are listed in docs/SEMANTICS.md. Needs root
//! (pjdfstest switches users) and /dev/fuse; otherwise it is counted as skipped (tests/common/skip.rs).

#[path = "common/skip.rs"]
mod skip;

use std::path::Path;
use std::process::Command;

/// Run the suite on a fresh mount made with `mount_args`; panics unless nothing failed.
fn run_suite(name: &str, mount_args: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pjdfstest-{name}.log"));
    // The binary cargo built for this test run: the script must not run cargo build itself
    // (cargo holds the build directory while tests run).
    let out = Command::new(root.join("scripts/pjdfstest"))
        .env("TEZIPFS_BIN", env!("CARGO_BIN_EXE_tezipfs"))
        .env("TEZIPFS_MOUNT_ARGS", mount_args)
        .env("PJDFSTEST_LOG", &log)
        .output()
        .expect("run scripts/pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("[{name}]\n{stderr}{stdout}");
    assert!(out.status.success(), "scripts/pjdfstest ({name}) failed ({}); full output in {}", out.status, log.display());
    let summary = stdout.lines().find(|l| l.starts_with("Summary:")).expect("a summary line");
    assert!(summary.starts_with("Summary: 0 failed,"), "{name}: {summary}");
}

fn can_run() -> bool {
    if !skip::root_or_skip("pjdfstest (it runs parts of the suite as other users)") {
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip::skip(skip::Lack::Fuse, "/dev/fuse is missing: FUSE is not available here");
        return false;
    }
    true
}

/// The default mount: writers go through FUSE passthrough where the kernel allows it.
#[test]
fn pjdfstest_passes() {
    if can_run() {
        run_suite("passthrough", "");
    }
}

/// The daemon's own read and write path, which serves when passthrough is not available.
#[test]
fn pjdfstest_passes_without_passthrough() {
    if can_run() {
        run_suite("daemon-io", "--no-passthrough");
    }
}
