//! The daemon as an administrator runs it: unmount by fusermount3, `--daemon`, the mount(8)
//! helper, the staging budget, a full disk, `policy` and `recompress` from the CLI.

mod common;

use common::{is_mounted, wait_for, wait_states, Fs, BIN};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tezipfs::fixtures::{generate_raw, SequenceSpec};

fn tezipfs(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("run tezipfs")
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).map(|s| common::strip_ansi(&s).contains(needle)).unwrap_or(false)
}

#[test]
fn fusermount_unmount_ends_the_daemon_cleanly() {
    require_fuse!();
    let fs = Fs::new();
    std::fs::write(fs.path("a"), vec![7u8; 10_000]).unwrap();
    let st = Command::new("fusermount3").arg("-u").arg(&fs.mnt).status().unwrap();
    assert!(st.success());
    wait_for("the daemon to say it unmounted cleanly", Duration::from_secs(20), || log_has(&fs.log, "unmounted cleanly"));
    assert!(!is_mounted(&fs.mnt));
}

#[test]
fn daemon_mode_detaches_and_logs_to_the_store() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let out = tezipfs(&["mount", "--daemon", "--store", store.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mounted"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(is_mounted(&mnt));
    std::fs::write(mnt.join("x"), b"daemon").unwrap();
    assert_eq!(std::fs::read(mnt.join("x")).unwrap(), b"daemon");
    assert!(Command::new("fusermount3").arg("-u").arg(&mnt).status().unwrap().success());
    let log = store.join("tezipfs.log");
    wait_for("the detached daemon to unmount", Duration::from_secs(20), || log_has(&log, "unmounted cleanly"));
}

#[test]
fn mount_helper_accepts_fstab_options() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let helper = concat!(env!("CARGO_MANIFEST_DIR"), "/mount/mount.tezipfs");
    let out = Command::new(helper)
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "rw,defaults,nofail,quiet_ms=300,cache_mib=64,threads=1"])
        .env("TEZIPFS_BIN", BIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(is_mounted(&mnt));
    assert!(Command::new("fusermount3").arg("-u").arg(&mnt).status().unwrap().success());
    wait_for("the helper-started daemon to unmount", Duration::from_secs(20), || log_has(&store.join("tezipfs.log"), "unmounted cleanly"));
    let bad = Command::new(helper).arg(&store).arg(&mnt).args(["-o", "frobnicate=1"]).env("TEZIPFS_BIN", BIN).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown option frobnicate=1"));
}

#[test]
fn staging_over_budget_is_reported_and_writes_go_on() {
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let log = tmp.path().join("log");
    let mut child = Command::new(BIN)
        .args(["mount", "--store", store.to_str().unwrap(), mnt.to_str().unwrap(), "--staging-budget-mib", "1", "--quiet-ms", "600000"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("mount", Duration::from_secs(10), || is_mounted(&mnt));
    for i in 0..3 {
        std::fs::write(mnt.join(format!("f{i}")), vec![i as u8; 1 << 20]).unwrap();
    }
    let out = tezipfs(&["stats", mnt.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["staging_over_budget"], true, "{v}");
    assert_eq!(v["backlog_files"], 3);
    let human = String::from_utf8_lossy(&tezipfs(&["stats", mnt.to_str().unwrap()]).stdout).into_owned();
    assert!(human.contains("OVER BUDGET"), "{human}");
    wait_for("the budget warning in the log", Duration::from_secs(15), || log_has(&log, "over its budget"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// A full disk: writes fail with ENOSPC, nothing closed before is lost, the mount keeps serving.
#[test]
fn full_disk_gives_enospc_and_keeps_earlier_files() {
    require_fuse!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs for the store needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&small).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&small).status().unwrap().success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _guard = Unmount(&small);
    let store = small.join("store");
    let log = tmp.path().join("log");
    let mut child = Command::new(BIN)
        .args(["mount", "--store", store.to_str().unwrap(), mnt.to_str().unwrap(), "--quiet-ms", "600000"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("mount", Duration::from_secs(10), || is_mounted(&mnt));
    let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let mut written = Vec::new();
    let mut enospc = false;
    for i in 0..200 {
        let p = mnt.join(format!("f{i}"));
        let r = std::fs::write(&p, &chunk);
        match r {
            Ok(()) => written.push(p),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "a full disk must be ENOSPC, got {e}");
                enospc = true;
                break;
            }
        }
    }
    assert!(enospc, "48 MiB of store never filled up");
    assert!(written.len() > 5);
    for p in &written {
        assert_eq!(std::fs::read(p).unwrap(), chunk, "{} changed after the disk filled", p.display());
    }
    // Room again: writes work again.
    std::fs::remove_file(&written[0]).unwrap();
    std::fs::remove_file(&written[1]).unwrap();
    std::fs::write(mnt.join("after"), b"room again").unwrap();
    assert_eq!(std::fs::read(mnt.join("after")).unwrap(), b"room again");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn policy_cli_and_recompress_apply_a_new_bound() {
    require_fuse!();
    let fs = Fs::new();
    let dir = fs.path("run");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let out = tezipfs(&["policy", "set", d, "format=raw:128x96:u16", "window=4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let get = String::from_utf8_lossy(&tezipfs(&["policy", "get", d]).stdout).into_owned();
    assert!(get.contains("user.tezip.format=raw:128x96:u16") && get.contains("user.tezip.window=4") && get.contains("user.tezip.bound=lossless"), "{get}");
    let bad = tezipfs(&["policy", "set", d, "bound=abs:-2"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid value"), "{}", String::from_utf8_lossy(&bad.stderr));

    let frames = generate_raw(&SequenceSpec::detector_u16(128, 96, 8, 5));
    let paths: Vec<_> = (0..frames.len()).map(|i| dir.join(format!("f{i}.raw"))).collect();
    for (p, f) in paths.iter().zip(&frames) {
        std::fs::write(p, f).unwrap();
    }
    wait_states(&paths, &["compressed"]);
    for (p, f) in paths.iter().zip(&frames) {
        assert_eq!(&std::fs::read(p).unwrap(), f);
    }
    let before = fs.stats(&dir)["directories"][0]["stored_bytes"].as_u64().unwrap();

    assert!(tezipfs(&["policy", "set", d, "bound=abs:8"]).status.success());
    let out = tezipfs(&["recompress", d]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Recompressed under abs:8: every pixel within 8, some changed, smaller than before.
    wait_states(&paths, &["compressed"]);
    let mut changed = false;
    for (p, f) in paths.iter().zip(&frames) {
        let got = std::fs::read(p).unwrap();
        assert_eq!(got.len(), f.len());
        for (a, b) in got.chunks_exact(2).zip(f.chunks_exact(2)) {
            let (x, y) = (u16::from_le_bytes([a[0], a[1]]) as i32, u16::from_le_bytes([b[0], b[1]]) as i32);
            assert!((x - y).abs() <= 8, "{}: {x} vs {y}", p.display());
            changed |= x != y;
        }
    }
    assert!(changed, "abs:8 changed no pixel");
    let after = fs.stats(&dir)["directories"][0]["stored_bytes"].as_u64().unwrap();
    assert!(after < before, "recompressed {after} >= lossless {before}");
}

/// The systemd unit parses (systemd-analyze verify), apart from the binary not being installed
/// at /usr/local/bin on a build machine.
#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("tezipfs@check.service");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tezipfs@.service"), &unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let problems: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.contains("/usr/local/bin/tezipfs is not executable")).collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {problems:#?}");
}
