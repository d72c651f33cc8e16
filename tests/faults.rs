//! Disk faults injected into a live mount through the store's disk-call layer (`TEZIPFS_FAULTS`,
//! src/store/disk.rs): EIO on a blob read, ENOSPC and EIO at every step of compressing and
//! committing a window, a short blob write, a disk filling during ingest, a model that cannot be
//! read, and a corrupt index record. Each test checks that no acknowledged byte was lost: every
//! file closed before reads back bit-exact (bytes and CRC) afterwards, also across a remount.
//!
//! Writers are served by the daemon (`--no-passthrough`): passthrough writes go from the kernel
//! to the staging file without a disk call of the daemon, out of reach of the layer.

mod common;

use common::{assert_files, raw_frames, set_policy, stats, wait_compressed, wait_for, write_frames, xattr_get, xattr_set, Fs, Opts, BIN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FORMAT: &str = "raw:64x48:u16";

/// A mount whose daemon reads its fault rules from `rules` (empty: no fault).
struct Faulty {
    fs: Fs,
    rules: PathBuf,
}

impl Faulty {
    fn new(extra: &[&str]) -> Faulty {
        let tmp = tempfile::Builder::new().prefix("tezipfs-rules-").tempdir().unwrap().keep();
        let rules = tmp.join("rules");
        std::fs::write(&rules, "").unwrap();
        let opts = Opts {
            passthrough: false,
            extra: ["--retry-ms", "300"].iter().chain(extra).map(|s| s.to_string()).collect(),
            env: vec![("TEZIPFS_FAULTS".into(), rules.display().to_string())],
            ..Opts::default()
        };
        Faulty { fs: Fs::with(opts), rules }
    }

    /// Replace the rules (atomically: the daemon rereads them at its next disk call).
    fn arm(&self, text: &str) {
        let tmp = self.rules.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.rules).unwrap();
    }

    fn disarm(&self) {
        self.arm("");
    }

    /// A directory of 64x48 u16 frames, windows of `window`.
    fn dir(&self, name: &str, window: usize) -> PathBuf {
        let d = self.fs.path(name);
        std::fs::create_dir(&d).unwrap();
        set_policy(&d, Some(FORMAT), None, Some(window));
        d
    }

    fn errors(&self) -> u64 {
        stats(&self.fs.mnt)["errors"].as_u64().unwrap()
    }
}

fn frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
    raw_frames(64, 48, n, seed)
}

fn state(p: &Path) -> String {
    common::state(p)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

#[test]
fn eio_reading_one_blob_fails_its_readers_only_and_is_counted() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let (a, b) = (f.dir("a", 4), f.dir("b", 4));
    let in_a = write_frames(&a, &frames(4, 1), "raw");
    wait_compressed(&in_a.keys().cloned().collect::<Vec<_>>());
    let blob_a = f.fs.blobs();
    assert_eq!(blob_a.len(), 1, "{blob_a:?}");
    let in_b = write_frames(&b, &frames(4, 2), "raw");
    wait_compressed(&in_b.keys().cloned().collect::<Vec<_>>());
    // No decoded frame cached by the daemon or the kernel.
    f.fs.remount();
    let name = blob_a[0].file_name().unwrap().to_string_lossy().into_owned();
    f.arm(&format!("read kind=blob path=*/blobs/{name} error=EIO\n"));
    let before = f.errors();
    for p in in_a.keys() {
        let e = std::fs::read(p).expect_err("a file of the failing blob");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", p.display());
    }
    assert_files(&in_b);
    let after = f.errors();
    assert!(after - before >= in_a.len() as u64, "each failed read is counted: {before} -> {after}");
    let log = f.fs.log_text();
    assert!(log.contains("fault injected") && log.contains("cannot read a compressed file") && log.contains(&name), "{log}");
    // The disk is well again: nothing was lost.
    f.disarm();
    assert_files(&in_a);
    f.fs.remount();
    assert_files(&in_a);
    assert_files(&in_b);
}

/// Each step of making and committing a blob fails in turn (ENOSPC or EIO): the window's files
/// stay staged and read back exactly, no blob or temp file is left, the error is counted and
/// logged, and once the fault is gone the window is retried and commits.
#[test]
fn disk_errors_while_compressing_and_committing_keep_files_staged_and_retry() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let cases: [(&str, &str); 10] = [
        ("read kind=staging error=EIO count=1", "Input/output error"),
        ("create kind=tmp error=ENOSPC", "No space left"),
        ("write kind=tmp error=ENOSPC", "No space left"),
        ("write kind=tmp error=EIO", "Input/output error"),
        ("write kind=tmp short error=ENOSPC", "No space left"),
        ("write kind=tmp short", "reads back"),
        ("fsync kind=tmp error=EIO", "Input/output error"),
        ("read kind=tmp error=EIO", "Input/output error"),
        ("rename kind=blob error=ENOSPC", "No space left"),
        ("fsync kind=dir path=*/blobs error=EIO", "Input/output error"),
    ];
    let mut all = BTreeMap::new();
    for (k, (rule, says)) in cases.iter().enumerate() {
        let d = f.dir(&format!("case{k}"), 4);
        let errors = f.errors();
        f.arm(&format!("{rule}\n"));
        let files = write_frames(&d, &frames(4, 10 + k as u64), "raw");
        let paths: Vec<PathBuf> = files.keys().cloned().collect();
        wait_for(&format!("the failure of case {k} ({rule})"), Duration::from_secs(20), || f.errors() > errors);
        // Still staged, readable, nothing half-made left in the store. (The count=1 fault on
        // the engine's read of the staged input is gone already: its retry may have committed.)
        if !rule.contains("count=1") {
            for p in &paths {
                assert_eq!(state(p), "staged", "{rule}: {}", p.display());
            }
            assert_files(&files);
        }
        assert!(f.fs.blobs().len() <= k + rule.contains("count=1") as usize, "{rule}: a blob of a failed window is left: {:?}", f.fs.blobs());
        // The engine retries (and fails again) meanwhile, each attempt making a temp file and
        // removing it: between attempts none is left.
        wait_for(&format!("{rule}: no temp file left"), Duration::from_secs(10), || files_in(&f.fs.store.join("tmp")).is_empty());
        let last = stats(&f.fs.mnt)["last_error"].as_str().unwrap_or_default().to_string();
        assert!(last.contains("stay staged") && last.contains(says), "{rule}: last_error {last:?}");
        f.disarm();
        wait_compressed(&paths);
        assert_files(&files);
        all.extend(files);
    }
    // The staging files cannot be deleted after the commit: the window is compressed all the
    // same (it was reported failed, and its staging files kept, before), the leftovers are
    // logged, and they go at the next start.
    let d = f.dir("unlink", 4);
    let errors = f.errors();
    f.arm("unlink kind=staging error=EIO\n");
    let files = write_frames(&d, &frames(4, 30), "raw");
    wait_compressed(&files.keys().cloned().collect::<Vec<_>>());
    assert_files(&files);
    assert!(f.errors() > errors);
    assert_eq!(f.fs.staging().len(), 4, "{:?}", f.fs.staging());
    assert!(f.fs.log_text().contains("a file no longer needed could not be deleted"));
    f.disarm();
    all.extend(files);
    f.fs.remount();
    // (No clean mark at that unmount: the leftovers are the next start's recovery scan's.)
    assert!(f.fs.log_text().contains("the next mount reads every inode to recover"), "{}", f.fs.log_text());
    assert!(f.fs.staging().is_empty(), "{:?}", f.fs.staging());
    assert_files(&all);
    let text = f.fs.log_text();
    assert!(text.contains("fault injected") && text.contains("its files stay staged"), "{text}");
}

/// A blob write that the disk reports whole but stores short is caught by the read-back before
/// the blob is renamed into place: it never gets committed (before the check it was, and the
/// window's files read EIO once their staging files were gone).
#[test]
fn a_short_blob_write_is_never_committed() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let d = f.dir("run", 4);
    f.arm("write kind=tmp short count=1\n");
    let files = write_frames(&d, &frames(4, 3), "raw");
    let paths: Vec<PathBuf> = files.keys().cloned().collect();
    // count=1: the retry writes the blob whole. (Without the read-back the short blob was
    // committed, and these files read EIO.)
    wait_compressed(&paths);
    assert_files(&files);
    assert!(f.fs.log_text().contains("reads back"), "the short write was not caught:\n{}", f.fs.log_text());
    assert_eq!(f.fs.blobs().len(), 1, "only the good blob: {:?}", f.fs.blobs());
    f.fs.remount();
    assert_files(&files);
}

/// The store's disk fills during ingest (every write and create of the store fails with ENOSPC):
/// writers get ENOSPC, nothing closed before is lost, the mount keeps serving reads and
/// metadata, compression waits; when space returns, writes work and everything compresses.
#[test]
fn the_disk_filling_during_ingest_gives_enospc_and_loses_nothing() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let d = f.dir("run", 4);
    let all = frames(16, 4);
    let mut acked = write_frames(&d, &all[..6], "raw");
    // Full: the first 6 closed (one window may be compressing).
    f.arm("write error=ENOSPC\ncreate error=ENOSPC\n");
    let late = d.join("late.raw");
    let e = std::fs::write(&late, &all[6]).expect_err("a write to a full disk");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert_files(&acked);
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::rename(d.join("sub"), d.join("sub2")).unwrap();
    std::fs::remove_dir(d.join("sub2")).unwrap();
    // The tail window (2 files) waits for the directory to be idle, then fails to compress.
    std::thread::sleep(Duration::from_millis(2500));
    assert_files(&acked);
    // Room again.
    f.disarm();
    std::fs::write(&late, &all[6]).unwrap();
    acked.insert(late, all[6].clone());
    for (k, fr) in all.iter().enumerate().skip(7) {
        let p = d.join(format!("more_{k:02}.raw"));
        std::fs::write(&p, fr).unwrap();
        acked.insert(p, fr.clone());
    }
    wait_compressed(&acked.keys().cloned().collect::<Vec<_>>());
    f.fs.remount();
    assert_files(&acked);
}

/// A model that cannot be read (EIO on its file): the frames coded with it read EIO with a log
/// line naming it; new frames of the directory are coded classically; once the disk is well
/// again every frame reads back. (A corrupt or deleted model file: tests/model_mount.rs.)
#[test]
fn a_model_that_cannot_be_read_is_refused_and_nothing_is_lost() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let bytes = tezipfs::model::file::to_bytes(&tezipfs::model::file::random(&tezipfs::model::Size::Small.arch(), tezipfs::codec::DType::U16, 5));
    let model = f.fs.tmp.path().join("m.tzm");
    std::fs::write(&model, &bytes).unwrap();
    let hash = tezipfs::codec::predict::hash_hex(&tezipfs::model::file::hash(&bytes));
    let out = std::process::Command::new(BIN).args(["model", "import", f.fs.mnt.to_str().unwrap(), model.to_str().unwrap(), "--name", "m"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = f.dir("run", 4);
    xattr_set(&d, "user.tezip.predictor", b"prednet").unwrap();
    xattr_set(&d, "user.tezip.model", b"m").unwrap();
    let coded = write_frames(&d, &frames(4, 6), "raw");
    wait_compressed(&coded.keys().cloned().collect::<Vec<_>>());
    f.fs.remount(); // the daemon has not loaded the model since
    f.arm("read kind=model error=EIO\n");
    for p in coded.keys() {
        assert_eq!(std::fs::read(p).unwrap_err().raw_os_error(), Some(libc::EIO), "{}", p.display());
    }
    let later: BTreeMap<PathBuf, Vec<u8>> = frames(4, 7).into_iter().enumerate().map(|(i, b)| (d.join(format!("later_{i}.raw")), b)).collect();
    for (p, b) in &later {
        std::fs::write(p, b).unwrap();
    }
    wait_compressed(&later.keys().cloned().collect::<Vec<_>>());
    for p in later.keys() {
        let pred = String::from_utf8_lossy(&xattr_get(p, "user.tezip.predictor").unwrap()).into_owned();
        assert!(!pred.starts_with("prednet"), "{}: {pred}", p.display());
    }
    assert_files(&later);
    let log = f.fs.log_text();
    assert!(log.contains(&hash) && log.contains("cannot read its file") && log.contains("coding its frames classically"), "{log}");
    f.disarm();
    assert_files(&coded);
}

/// One inode record of the index is corrupted (through sled, daemon stopped): the daemon still
/// mounts, says which record is bad (log and `stats`), that file reads EIO, its staging file is
/// kept, and every other file reads back and the engine goes on compressing.
#[test]
fn a_corrupt_index_record_is_reported_and_other_files_are_unaffected() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let d = f.dir("run", 4);
    let mut good = write_frames(&d, &frames(4, 8), "raw");
    wait_compressed(&good.keys().cloned().collect::<Vec<_>>());
    // Small files stay staged; one of them is the victim.
    let victim = d.join("victim.txt");
    std::fs::write(&victim, b"a small staged file").unwrap();
    std::fs::write(d.join("other.txt"), b"another small file").unwrap();
    good.insert(d.join("other.txt"), b"another small file".to_vec());
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&victim).unwrap());
    f.fs.stop();
    {
        let sled = tezipfs::index::SledStore::open(&f.fs.store.join("index")).unwrap();
        let key = tezipfs::index::keys::inode(ino);
        assert!(tezipfs::index::MetaStore::get(&sled, &key).unwrap().is_some(), "inode {ino} in the index");
        let mut b = tezipfs::index::Batch::default();
        b.put(key, vec![0xff, 0xff, 0xff]);
        tezipfs::index::MetaStore::apply(&sled, b).unwrap();
        tezipfs::index::MetaStore::flush(&sled).unwrap();
    }
    f.fs.start();
    let e = std::fs::read(&victim).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_files(&good);
    assert!(f.fs.store.join("staging").join(ino.to_string()).exists(), "the corrupt file's staging file was deleted");
    let s = stats(&f.fs.mnt);
    assert_eq!(s["corrupt_index_records"], 1, "{s}");
    let log = f.fs.log_text();
    assert!(log.contains(&format!("index record I:{ino} is corrupt")), "{log}");
    // The engine still compresses the rest.
    let more = write_frames(&f.dir("more", 4), &frames(4, 9), "raw");
    wait_compressed(&more.keys().cloned().collect::<Vec<_>>());
    assert_files(&more);
    let names = common::names(&d);
    assert!(names.contains(&"victim.txt".to_string()) && names.len() == 6, "{names:?}");
}

/// A slow disk (`delay=`): a close waits for the staging file's fdatasync, so it takes at least
/// the delay; the file is whole, and without the rule closes are quick again.
#[test]
fn a_slow_fsync_slows_the_close_and_loses_nothing() {
    require_fuse!();
    let f = Faulty::new(&[]);
    let d = f.dir("run", 4);
    let bytes = frames(1, 11).remove(0);
    f.arm("fsync kind=staging delay=600\n");
    let t0 = std::time::Instant::now();
    std::fs::write(d.join("slow.raw"), &bytes).unwrap();
    let slow = t0.elapsed();
    assert!(slow >= Duration::from_millis(600), "close took {slow:?} under a 600 ms fsync");
    f.disarm();
    let t0 = std::time::Instant::now();
    std::fs::write(d.join("quick.raw"), &bytes).unwrap();
    assert!(t0.elapsed() < Duration::from_millis(600), "close took {:?} without the rule", t0.elapsed());
    assert_files(&[(d.join("slow.raw"), bytes.clone()), (d.join("quick.raw"), bytes)].into_iter().collect());
}

/// A slow disk call of one file does not stall the others: while an fsync(2), or a truncation
/// (durable at once, S14), of one file waits 3 s on its staging file's sync, a stat, a read and a
/// listing of another file return at once (no disk call is made under the namespace lock).
#[test]
fn a_slow_fsync_of_one_file_does_not_delay_other_files() {
    require_fuse!();
    let f = Faulty::new(&[]);
    let d = f.dir("run", 4);
    let other = d.join("other.raw");
    let bytes = frames(1, 12).remove(0);
    std::fs::write(&other, &bytes).unwrap();
    let slow = d.join("slow.raw");
    std::fs::write(&slow, &bytes).unwrap();
    f.arm("fsync kind=staging delay=3000\n");
    for (what, op) in [("fsync", 0), ("ftruncate", 1)] {
        let path = slow.clone();
        let started = std::time::Instant::now();
        let t = std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            if op == 0 {
                use std::io::Write;
                (&file).write_all(b"more").unwrap();
                file.sync_all().unwrap();
            } else {
                file.set_len(100).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        assert_eq!(std::fs::metadata(&other).unwrap().len(), bytes.len() as u64);
        assert!(std::fs::read(&other).unwrap() == bytes);
        assert!(common::names(&d).contains(&"other.raw".to_string()));
        let took = t0.elapsed();
        t.join().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(3000), "the {what} was not slowed: the rule did not fire");
        assert!(took < Duration::from_millis(1500), "stat, read and readdir of another file took {took:?} during a slow {what}");
    }
    f.disarm();
}

/// A staged file whose staging file is gone (deleted by hand, or lost with a disk): it reads
/// EIO with a log line that names the missing file, not ENOENT for a name that `ls` shows; the
/// other files are unaffected.
#[test]
fn a_missing_staging_file_reads_eio_with_a_log_line() {
    require_fuse!();
    let mut f = Faulty::new(&[]);
    let (gone, kept) = (f.fs.path("gone.txt"), f.fs.path("kept.txt"));
    std::fs::write(&gone, b"small files stay staged").unwrap();
    std::fs::write(&kept, b"this one stays").unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&gone).unwrap());
    f.fs.stop();
    std::fs::remove_file(f.fs.store.join("staging").join(ino.to_string())).unwrap();
    f.fs.start();
    assert!(common::names(&f.fs.mnt).contains(&"gone.txt".to_string()));
    let e = std::fs::read(&gone).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    common::assert_file(&kept, b"this one stays");
    assert!(f.fs.log_text().contains(&format!("its staging file {} is missing", f.fs.store.join("staging").join(ino.to_string()).display())));
}
