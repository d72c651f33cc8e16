//! The daemon as an administrator runs it: unmount by fusermount3, `--daemon`, the mount(8)
//! helper, the staging budget, a full disk, `policy` and `recompress` from the CLI.

mod common;

use common::{is_mounted, stats, wait_for, wait_states, Fs, BIN};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tezipfs::fixtures::{generate_raw, SequenceSpec};

fn tezipfs(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("run tezipfs")
}

/// `fusermount3 -u`, as an administrator runs it: retried a few times while the mount is busy.
/// Most likely cause of a busy mount here: another test thread's fork+exec holds a copy of every
/// descriptor this test has open (a file just written) until the child execs, and on a loaded
/// machine that can outlast the write; the unmount then fails with EBUSY for a moment (seen
/// once in 12 runs of this binary).
fn unmount(mnt: &Path) -> bool {
    for _ in 0..10 {
        let out = Command::new("fusermount3").arg("-u").arg(mnt).output().unwrap();
        if out.status.success() {
            return true;
        }
        if !String::from_utf8_lossy(&out.stderr).contains("busy") {
            eprintln!("fusermount3 -u: {}", String::from_utf8_lossy(&out.stderr));
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).map(|s| common::strip_ansi(&s).contains(needle)).unwrap_or(false)
}

#[test]
fn fusermount_unmount_ends_the_daemon_cleanly() {
    require_fuse!();
    let fs = Fs::new();
    std::fs::write(fs.path("a"), vec![7u8; 10_000]).unwrap();
    assert!(unmount(&fs.mnt));
    wait_for("the daemon to say it unmounted cleanly", Duration::from_secs(20), || log_has(&fs.log, "unmounted cleanly"));
    assert!(!is_mounted(&fs.mnt));
}

/// A clean unmount leaves the store's clean mark and the next mount skips its recovery scan (a
/// read of every inode: seconds at a million files), removing the mark first; a daemon killed
/// with -9 leaves none and its next mount scans; `fsck --repair` removes the mark, a check
/// alone keeps it. Every file reads back throughout.
#[test]
fn a_clean_unmount_lets_the_next_mount_skip_its_recovery_scan() {
    require_fuse!();
    let mut fs = Fs::new();
    let mark = fs.store.join("CLEAN");
    let a: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    common::write_file(&fs.path("a"), &a);
    let skipped = |fs: &Fs| common::strip_ansi(&fs.log_text()).matches("the last unmount was clean: no recovery scan").count();
    assert_eq!(fs.stop().map(|s| s.success()), Some(true));
    assert!(mark.exists() && log_has(&fs.log, "clean mark left"), "{}", fs.log_text());
    fs.start();
    assert!(!mark.exists(), "a mount removes the mark before anything else");
    assert_eq!(skipped(&fs), 1);
    common::assert_file(&fs.path("a"), &a);
    // A daemon killed leaves no mark: its next mount reads every inode.
    fs.kill9();
    assert!(!mark.exists());
    fs.start();
    assert_eq!(skipped(&fs), 1, "no skip after a kill");
    common::assert_file(&fs.path("a"), &a);
    assert_eq!(fs.stop().map(|s| s.success()), Some(true));
    assert!(mark.exists());
    // fsck: a check keeps the mark, a repair removes it.
    let fsck = |more: &[&str]| Command::new(BIN).arg("fsck").arg(&fs.store).args(more).output().unwrap().status.code();
    assert_eq!(fsck(&[]), Some(0));
    assert!(mark.exists(), "a check alone changes nothing");
    assert_eq!(fsck(&["--repair"]), Some(0));
    assert!(!mark.exists(), "a repair removes the mark");
    fs.start();
    assert_eq!(skipped(&fs), 1, "no skip after a repair");
    common::assert_file(&fs.path("a"), &a);
    assert_no_daemon_errors(&fs);
}

/// No error of the daemon's own and no panic in its log. (Not `assert_log_clean`: around a
/// stop that follows reads closely, the kernel may abort a request the daemon then answers,
/// which fuser logs as an error before its "Unmounting" line; seen in CI in both tests here.)
fn assert_no_daemon_errors(fs: &Fs) {
    let log = common::strip_ansi(&fs.log_text());
    let bad: Vec<&str> =
        log.lines().filter(|l| (l.contains(" ERROR ") && !l.contains("fuser::reply: Failed to send FUSE reply")) || l.contains("panicked")).collect();
    assert!(bad.is_empty(), "the daemon logged errors:\n{}", bad.join("\n"));
}

/// A stop (SIGTERM, or an unmount) ends the windows in progress and starts no other, however
/// many the engine has planned: their files stay staged, the next mount finds and compresses
/// them, and every file reads back as written. (An engine that ran every planned window first
/// took hours to stop on a store with a large backlog.)
#[test]
fn a_stop_starts_no_new_window_of_a_large_backlog() {
    require_fuse!();
    // Written under a quiet period no file reaches, so that nothing is compressed yet; the
    // second mount (one worker) then plans all 60 windows at once, at recovery.
    let mut fs = Fs::with(common::Opts { quiet_ms: 600_000, threads: Some(1), ..Default::default() });
    let dir = fs.path("frames");
    std::fs::create_dir(&dir).unwrap();
    common::set_policy(&dir, Some("raw:256x256:u16"), None, Some(8));
    let frames = generate_raw(&SequenceSpec::detector_u16(256, 256, 480, 3));
    let mut files = std::collections::BTreeMap::new();
    for (i, f) in frames.iter().enumerate() {
        let p = dir.join(format!("frame_{i:05}.raw"));
        common::write_file(&p, f);
        files.insert(p, f.clone());
    }
    assert_eq!(fs.stop().map(|s| s.success()), Some(true));
    assert_eq!(fs.staging().len(), 480, "nothing compressed under the long quiet period");
    fs.opts.quiet_ms = 200;
    fs.start();
    let windows = |fs: &Fs| common::strip_ansi(&fs.log_text()).matches("compressed a window").count();
    wait_for("the first window", Duration::from_secs(60), || windows(&fs) >= 1);
    assert_eq!(fs.stop().map(|s| s.success()), Some(true));
    let done = windows(&fs);
    let staged = fs.staging().len();
    assert!(done < 20 && staged >= 480 - 8 * done, "{done} windows compressed after the stop, {staged} files staged");
    fs.start();
    common::assert_files(&files);
    common::wait_compressed(&files.keys().cloned().collect::<Vec<_>>());
    common::assert_files(&files);
    assert_no_daemon_errors(&fs);
}

/// The daemon maps libtorch's CUDA half (and cuDNN, cuBLAS, NCCL behind it) only where a GPU
/// driver is (`tezipfs::model::cuda`): on a machine without one it carries the CPU half alone,
/// and `tezipfs info` says why.
#[test]
fn the_daemon_loads_libtorchs_cuda_half_only_with_a_gpu_driver() {
    require_fuse!();
    let fs = Fs::new();
    std::fs::write(fs.path("a"), vec![7u8; 10_000]).unwrap();
    let pid = fs.pid().expect("the daemon runs");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let info = tezipfs(&["info"]);
    assert!(info.status.success());
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(maps.contains("libtorch_cpu.so"), "the CPU half is linked");
    let c = std::ffi::CString::new("libcuda.so.1").unwrap();
    // SAFETY: a NUL-terminated name; the driver library, if present, is what CUDA programs load.
    let driver = !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) }.is_null();
    if driver {
        assert!(info.contains("CUDA half libtorch_cuda.so loaded") == maps.contains("libtorch_cuda.so"), "{info}");
    } else {
        assert!(!maps.contains("libtorch_cuda.so") && !maps.contains("libcudnn"), "CUDA libraries mapped without a driver");
        assert!(info.contains("CUDA half not loaded: no NVIDIA driver (libcuda.so.1 not found)"), "{info}");
    }
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
    assert!(unmount(&mnt));
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
    assert!(unmount(&mnt));
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

/// A small tmpfs holding a store, unmounted (lazily) when dropped.
struct SmallDisk {
    _tmp: tempfile::TempDir,
    disk: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
}

impl SmallDisk {
    fn new(mib: u32) -> SmallDisk {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("small");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        assert!(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(&disk).status().unwrap().success());
        let log = tmp.path().join("log");
        SmallDisk { _tmp: tmp, disk, mnt, log }
    }

    fn mount(&self, extra: &[&str]) -> std::process::Child {
        let store = self.disk.join("store");
        let child = Command::new(BIN)
            .args(["mount", "--store", store.to_str().unwrap(), self.mnt.to_str().unwrap(), "--quiet-ms", "600000"])
            .args(extra)
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        wait_for("mount", Duration::from_secs(10), || is_mounted(&self.mnt));
        child
    }

    fn stop(&self, mut child: std::process::Child) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    /// The disk is full, yet the index still records changes: metadata operations and a
    /// directory fsync work.
    fn metadata_still_works(&self, files: &[PathBuf]) {
        for k in 0..20 {
            let d = self.mnt.join(format!("dir{k}"));
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir on a full disk: {e}"));
            let f = &files[k % files.len()];
            std::fs::rename(f, d.join("moved")).unwrap_or_else(|e| panic!("rename on a full disk: {e}"));
            std::fs::rename(d.join("moved"), f).unwrap();
            std::fs::remove_dir(&d).unwrap();
        }
        std::fs::File::open(&self.mnt).unwrap().sync_all().unwrap_or_else(|e| panic!("fsync of a directory on a full disk: {e}"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("umount").arg("-l").arg(&self.disk).status();
    }
}

fn root_or_skip() -> bool {
    common::skip::root_or_skip("mounting a small tmpfs for the store")
}

/// A full disk, writers served by the daemon (passthrough needs 1 GiB free by default): writes
/// fail with ENOSPC while 16 MiB are still free, nothing closed before is lost, the mount keeps
/// serving.
#[test]
fn full_disk_gives_enospc_and_keeps_earlier_files() {
    require_fuse!();
    if !root_or_skip() {
        return;
    }
    let disk = SmallDisk::new(48);
    let child = disk.mount(&[]);
    let chunk: Vec<u8> = (0..(1 << 20)).map(|i| (i * 31 % 251) as u8).collect();
    let mut written = Vec::new();
    let mut enospc = false;
    for i in 0..200 {
        let p = disk.mnt.join(format!("f{i}"));
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
    disk.metadata_still_works(&written);
    // Room again: writes work again.
    std::fs::remove_file(&written[0]).unwrap();
    std::fs::remove_file(&written[1]).unwrap();
    std::fs::write(disk.mnt.join("after"), b"room again").unwrap();
    assert_eq!(std::fs::read(disk.mnt.join("after")).unwrap(), b"room again");
    disk.stop(child);
}

/// A writer through passthrough fills the disk to the last block (the daemon cannot refuse its
/// writes): it gets ENOSPC, the store gives up its reserve file so the index goes on recording
/// changes, later writers are served by the daemon, and once there is room the reserve comes
/// back and passthrough with it.
#[test]
fn passthrough_writer_filling_the_disk_leaves_the_index_working() {
    require_fuse!();
    if !root_or_skip() {
        return;
    }
    let disk = SmallDisk::new(48);
    let child = disk.mount(&["--passthrough-min-free-mib", "20"]);
    let reserve = disk.disk.join("store/reserve");
    assert!(reserve.exists(), "the store holds a reserve file");
    let small: Vec<PathBuf> = (0..3).map(|i| disk.mnt.join(format!("small{i}"))).collect();
    for p in &small {
        std::fs::write(p, vec![7u8; 100_000]).unwrap();
    }
    // One writer, opened while the disk had room, writes until the disk is full.
    let big = disk.mnt.join("big");
    let mut f = std::fs::File::create(&big).unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    let mut written = 0u64;
    let mut closed_a_copy = false;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
        // A copy of its descriptor closed in mid-write, with a few MiB left (what a fork and exec
        // in another thread of the writer does): the daemon gets a FUSE flush, an index change,
        // and must not give up the reserve then, or the writer eats it.
        if !closed_a_copy && free_bytes(&disk.disk) < 4 << 20 {
            drop(f.try_clone().unwrap());
            closed_a_copy = true;
            assert!(reserve.exists(), "the reserve was given up while the disk still had room");
        }
        assert!(written < 64 << 20, "a 48 MiB disk took 64 MiB");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    assert_eq!(std::fs::metadata(&big).unwrap().len(), written);
    assert!(!reserve.exists(), "the reserve was given up for the index");
    disk.metadata_still_works(&small);
    let opens = stats(&disk.mnt)["passthrough_opens"].as_u64().unwrap();
    // A new writer now goes through the daemon, which refuses to eat into the index's room.
    let e = std::fs::write(disk.mnt.join("more"), vec![1u8; 4 << 20]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_eq!(stats(&disk.mnt)["passthrough_opens"].as_u64().unwrap(), opens, "no passthrough on a full disk");
    for p in &small {
        assert_eq!(std::fs::read(p).unwrap(), vec![7u8; 100_000]);
    }
    // Room again: the reserve comes back, then passthrough.
    std::fs::remove_file(&big).unwrap();
    wait_for("the reserve file", Duration::from_secs(10), || reserve.exists());
    // The file shows a moment before the daemon counts it as held: write until a writer is
    // served by passthrough again.
    wait_for("passthrough again", Duration::from_secs(10), || {
        std::fs::write(disk.mnt.join("after"), b"room again").unwrap();
        stats(&disk.mnt)["passthrough_opens"].as_u64().unwrap() > opens
    });
    assert_eq!(std::fs::read(disk.mnt.join("after")).unwrap(), b"room again");
    disk.stop(child);
}

/// Free bytes of the filesystem at `p`.
fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut sv) }, 0, "statvfs {}", p.display());
    sv.f_bavail * sv.f_frsize
}

/// An index change is left for the periodic flush, then another program fills the disk: that
/// flush gives up the reserve before it writes (sled does not recover from a write that failed
/// with ENOSPC), and the index goes on recording changes.
#[test]
fn periodic_index_flush_on_a_filled_disk_gives_up_the_reserve_first() {
    if !root_or_skip() {
        return;
    }
    let disk = SmallDisk::new(48);
    let store = tezipfs::store::Store::open(&disk.disk.join("store")).unwrap();
    let sled = tezipfs::index::SledStore::open_keeping_room(&store.index_dir(), store.room_for_index()).unwrap();
    let index = tezipfs::index::Index::open(Box::new(sled)).unwrap();
    let reserve = disk.disk.join("store/reserve");
    assert!(reserve.exists());
    // A change large enough that writing it needs new blocks, left pending (as a metadata
    // operation leaves its change for the periodic flush).
    let mut b = tezipfs::index::Batch::default();
    b.put(b"pending".to_vec(), vec![5u8; 64 << 10]);
    store.keep_room_for_index();
    index.apply(b).unwrap();
    // Another program fills the disk to the last block.
    let mut filler = std::fs::File::create(disk.disk.join("filler")).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while filler.write(&chunk).is_ok_and(|n| n > 0) {}
    assert!(free_bytes(&disk.disk) < 1 << 20);
    // The periodic flush comes within 0.5 s; a loaded machine gets 10 s.
    let t0 = std::time::Instant::now();
    while reserve.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!reserve.exists(), "the periodic flush gave up the reserve before it wrote");
    // The index still records changes, and what was pending is there.
    let mut b = tezipfs::index::Batch::default();
    b.put(b"after".to_vec(), b"full".to_vec());
    store.keep_room_for_index();
    index.apply(b).unwrap_or_else(|e| panic!("index change on a full disk: {e}"));
    index.flush().unwrap_or_else(|e| panic!("index flush on a full disk: {e}"));
    assert_eq!(index.store().get(b"pending").unwrap().map(|v| v.len()), Some(64 << 10));
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

/// `stats --html`: a page that a real browser draws with one bar per directory at the ratio
/// the JSON gives, and the backlog history as points.
#[test]
fn stats_html_plots_directories_and_the_backlog() {
    require_fuse!();
    let fs = Fs::new();
    let mut paths = Vec::new();
    for (d, seed) in [("a", 1), ("b", 2)] {
        let dir = fs.path(d);
        std::fs::create_dir(&dir).unwrap();
        common::set_policy(&dir, Some("raw:128x96:u16"), None, Some(4));
        for (i, f) in generate_raw(&SequenceSpec::detector_u16(128, 96, 8, seed)).iter().enumerate() {
            let p = dir.join(format!("f{i}.raw"));
            std::fs::write(&p, f).unwrap();
            paths.push(p);
        }
    }
    wait_states(&paths, &["compressed"]);
    let out_dir = tempfile::tempdir().unwrap();
    let html = out_dir.path().join("stats.html");
    let mnt = fs.path("");
    let out = tezipfs(&["stats", mnt.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = stats(&mnt);
    let dirs = v["directories"].as_array().unwrap();
    assert_eq!(dirs.len(), 3, "/, /a, /b: {dirs:?}");
    let history = v["backlog_history"].as_array().unwrap();
    assert!(!history.is_empty(), "the engine samples the backlog when it starts");
    let Some(dom) = common::browser::dump_dom(&html) else { return };
    let bars = common::browser::marks(&dom, "bar");
    for d in dirs {
        let (path, ratio) = (d["path"].as_str().unwrap(), d["ratio"].as_f64().unwrap());
        assert!(ratio > 1.5, "{d}");
        assert!(bars.iter().any(|(s, l, y)| s == "ratio" && l == path && (y - ratio).abs() < 1e-9 * ratio), "no bar for {path} at {ratio}: {bars:?}");
    }
    assert_eq!(bars.iter().filter(|b| b.0 == "ratio").count(), 3);
    assert_eq!(bars.len(), 9, "ratio, logical and stored bars: {bars:?}");
    let points = common::browser::marks(&dom, "point");
    assert_eq!(points.len(), 2 * history.len(), "files and MB per sample: {points:?}");
}

/// A store of many directories: their stats outgrow one attribute value (64 KiB), so the
/// smallest subtrees are left out and counted, and `tezipfs stats` still answers (it failed with
/// E2BIG on a store of 900 directories).
#[test]
fn stats_of_a_store_with_thousands_of_directories_fit_in_one_attribute() {
    require_fuse!();
    let fs = Fs::new();
    let mnt = fs.path("");
    for i in 0..2000 {
        let d = fs.path(&format!("run-{i:04}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("f"), vec![i as u8; 100 + i]).unwrap();
    }
    let big = fs.path("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("f"), vec![7u8; 1 << 20]).unwrap();
    let raw = common::xattr_get(&mnt, "user.tezip.stats").unwrap();
    assert!(raw.len() <= 65536, "{} bytes", raw.len());
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let dirs = v["directories"].as_array().unwrap();
    assert_eq!(dirs.len() as u64 + v["directories_omitted"].as_u64().unwrap(), 2002, "/, 2000 runs and big");
    assert!(v["directories_omitted"].as_u64().unwrap() > 0);
    assert_eq!(dirs[0]["path"], "/");
    assert_eq!(dirs[0]["files"], 2001, "the root's totals still count every file");
    assert!(dirs.iter().any(|d| d["path"] == "/big"), "the largest subtree is listed");
    let out = tezipfs(&["stats", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("smaller directories not listed"));
}

/// The systemd unit parses (systemd-analyze verify), apart from the binary not being installed
/// at /usr/local/bin on a build machine.
#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        common::skip(common::Lack::Tool, "systemd-analyze is not installed");
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

/// Under systemd (`Type=notify`, `WatchdogSec=`, `ExecReload=`): READY=1 comes once the mount
/// answers, WATCHDOG=1 comes while it is healthy, SIGHUP rereads the config file's `[defaults]`
/// (RELOADING=1 then READY=1; a file that does not parse changes nothing), SIGTERM says
/// STOPPING=1. systemd's side is played by a socket of the test's own.
#[test]
fn systemd_notify_watchdog_and_reload() {
    require_fuse!();
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt, cfg, sock) = (tmp.path().join("store"), tmp.path().join("mnt"), tmp.path().join("tezipfs.toml"), tmp.path().join("notify"));
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(&cfg, "[defaults]\nbound = \"lossless\"\n").unwrap();
    let listener = UnixDatagram::bind(&sock).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let log = std::fs::File::create(tmp.path().join("daemon.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["mount", "--store", store.to_str().unwrap(), mnt.to_str().unwrap(), "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "600000")
        .stderr(log)
        .spawn()
        .unwrap();
    struct Guard<'a>(&'a mut std::process::Child, &'a Path);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(self.1).stderr(std::process::Stdio::null()).status();
        }
    }
    let pid = child.id() as i32;
    let guard = Guard(&mut child, &mnt);
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = listener.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1"), "{first}");
    // Ready means answering: the mount is there and serves the root's policy.
    assert!(is_mounted(&mnt));
    let policy = || String::from_utf8(common::xattr_get(&mnt, "user.tezip.policy").unwrap()).unwrap();
    assert!(policy().contains("user.tezip.bound=lossless"));
    // WATCHDOG_USEC 0.6 s: a ping every 0.2 s.
    let t0 = std::time::Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        if next() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(pings >= 4, "{pings} watchdog pings in 2 s");
    let until = |want: &str, next: &mut dyn FnMut() -> String| {
        for _ in 0..100 {
            if next() == want {
                return;
            }
        }
        panic!("no {want}");
    };
    std::fs::write(&cfg, "[defaults]\nbound = \"abs:2\"\n").unwrap();
    // SAFETY: kill(2) on the child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    until("RELOADING=1", &mut next);
    until("READY=1", &mut next);
    assert!(policy().contains("user.tezip.bound=abs:2"), "{}", policy());
    std::fs::write(&cfg, "[defaults]\nbound = \"abs:-1\"\n").unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    until("READY=1", &mut next);
    assert!(policy().contains("user.tezip.bound=abs:2"), "a bad file changes nothing: {}", policy());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    until("STOPPING=1", &mut next);
    let status = guard.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap();
    assert!(log.contains("configuration reloaded") && log.contains("configuration reload failed"), "{log}");
}

/// The unit started by a real systemd, where systemd is PID 1 (not in a container like CI's).
#[test]
fn systemd_starts_the_unit_for_real() {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if init.trim() != "systemd" {
        common::skip(common::Lack::Host, &format!("PID 1 is {:?}, not systemd: the unit cannot be started for real here", init.trim()));
        return;
    }
    require_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tezipfs@.service")).unwrap();
    let unit = unit
        .replace("EnvironmentFile=/etc/tezipfs/%i.env", &format!("Environment=STORE={} MOUNTPOINT={} TEZIPFS_OPTS=", store.display(), mnt.display()))
        .replace("/usr/local/bin/tezipfs", BIN);
    std::fs::write("/run/systemd/system/tezipfs-test@.service", unit).unwrap();
    let ctl = |args: &[&str]| Command::new("systemctl").args(args).status().unwrap().success();
    assert!(ctl(&["daemon-reload"]));
    assert!(ctl(&["start", "tezipfs-test@t.service"]), "systemctl start");
    assert!(ctl(&["is-active", "--quiet", "tezipfs-test@t.service"]));
    assert!(is_mounted(&mnt));
    assert!(ctl(&["reload", "tezipfs-test@t.service"]));
    assert!(ctl(&["stop", "tezipfs-test@t.service"]));
    let _ = std::fs::remove_file("/run/systemd/system/tezipfs-test@.service");
    ctl(&["daemon-reload"]);
}
