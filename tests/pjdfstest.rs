//! POSIX conformance: runs `scripts/pjdfstest` (pjdfstest inside a fresh mount) and requires
//! that nothing fails. The skipped tests and why are listed in docs/SEMANTICS.md. Needs root
//! (pjdfstest switches users) and /dev/fuse; otherwise it says why and passes.

use std::path::Path;
use std::process::Command;

#[test]
fn pjdfstest_passes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED pjdfstest: needs root (pjdfstest runs parts of the suite as other users)");
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED pjdfstest: /dev/fuse is missing: FUSE is not available here");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pjdfstest.log");
    // The binary cargo built for this test run: the script must not run cargo build itself
    // (cargo holds the build directory while tests run).
    let out = Command::new(root.join("scripts/pjdfstest")).env("TEZIPFS_BIN", env!("CARGO_BIN_EXE_tezipfs")).env("PJDFSTEST_LOG", &log).output().expect("run scripts/pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}{stdout}");
    assert!(out.status.success(), "scripts/pjdfstest failed ({}); full output in {}", out.status, log.display());
    let summary = stdout.lines().find(|l| l.starts_with("Summary:")).expect("a summary line");
    assert!(summary.starts_with("Summary: 0 failed,"), "{summary}");
}
