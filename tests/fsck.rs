//! `tezipfs fsck` and `tezipfs scrub` on real stores made by the daemon (real sled index, real
//! mounts): a clean store is clean; each kind of damage is found, reported by path, repaired
//! where it can be (exit 1, then 0) or reported as damage (exit 4); after every repair and a
//! remount, every file that read before reads back byte-exact, and a file that cannot be read
//! reads EIO, never short or made-up bytes.

mod common;

use common::{set_policy, wait_compressed, wait_for, write_file, write_frames, xattr_set, Fs, BIN};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tezipfs::index::{keys, Batch, Data, Inode};

/// `tezipfs fsck STORE --json [more]`: (exit status, report).
fn fsck(store: &Path, more: &[&str]) -> (i32, Value) {
    let out = Command::new(BIN).arg("fsck").arg(store).arg("--json").args(more).env("NO_COLOR", "1").output().expect("run tezipfs fsck");
    let code = out.status.code().expect("exit status");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (code, report)
}

fn fsck_text(store: &Path, more: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("fsck").arg(store).args(more).env("NO_COLOR", "1").output().expect("run tezipfs fsck");
    (out.status.code().expect("exit status"), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The problems of a report with this code.
fn problems<'a>(r: &'a Value, code: &str) -> Vec<&'a Value> {
    r["problems"].as_array().into_iter().flatten().filter(|p| p["code"] == code).collect()
}

fn paths_of(p: &Value) -> Vec<String> {
    p["paths"].as_array().into_iter().flatten().map(|s| s.as_str().unwrap_or("").to_string()).collect()
}

/// A store made by the daemon: `/run` with 8 raw frames in windows of 4 (two blobs),
/// `/docs/notes.txt` (stored whole, zstd), a hard link `/docs/notes-link`, and a small staged
/// file `/small.txt`. Returns the stopped mount and mount path -> bytes.
fn populated() -> (Fs, BTreeMap<PathBuf, Vec<u8>>) {
    let fs = Fs::new();
    let run = fs.path("run");
    std::fs::create_dir(&run).unwrap();
    set_policy(&run, Some("raw:64x48:u16"), None, Some(4));
    let frames = tezipfs::fixtures::generate_raw(&tezipfs::fixtures::SequenceSpec::detector_u16(64, 48, 8, 5));
    let mut files = write_frames(&run, &frames, "raw");
    std::fs::create_dir(fs.path("docs")).unwrap();
    let notes: Vec<u8> = (0..20_000u32).flat_map(|i| format!("line {i} of the notes\n").into_bytes()).take(20_000).collect();
    write_file(&fs.path("docs/notes.txt"), &notes);
    std::fs::hard_link(fs.path("docs/notes.txt"), fs.path("docs/notes-link")).unwrap();
    write_file(&fs.path("small.txt"), b"a file too small to compress\n");
    files.insert(fs.path("docs/notes.txt"), notes.clone());
    files.insert(fs.path("docs/notes-link"), notes);
    files.insert(fs.path("small.txt"), b"a file too small to compress\n".to_vec());
    let big: Vec<PathBuf> = files.keys().filter(|p| !p.ends_with("small.txt")).cloned().collect();
    wait_compressed(&big.iter().filter(|p| p.extension().is_some_and(|e| e == "raw")).cloned().collect::<Vec<_>>());
    common::wait_states(&[fs.path("docs/notes.txt")], &["stored", "compressed"]);
    (fs, files)
}

/// Stop the daemon of `fs` (clean unmount).
fn stop(fs: &mut Fs) {
    let st = fs.stop();
    assert!(st.is_some_and(|s| s.success()), "daemon exit: {st:?}\n{}", fs.log_text());
}

/// Mount again and require every file of `files` to read back exactly, except `lost`, which
/// must read EIO.
fn remount_and_check(fs: &mut Fs, files: &BTreeMap<PathBuf, Vec<u8>>, lost: &[PathBuf]) {
    fs.start();
    for (p, want) in files {
        if lost.contains(p) {
            let e = std::fs::read(p).expect_err(&format!("{} should not read", p.display()));
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", p.display());
        } else {
            common::assert_file(p, want);
        }
    }
}

/// The inode record of the file at `rel` (looked up through the index).
fn inode_of(store: &Path, rel: &str) -> Inode {
    let idx = tezipfs::check::open_index(store).unwrap();
    let mut ino = 1u64;
    for part in rel.split('/') {
        let v = idx.get(&keys::dirent(ino, part.as_bytes())).unwrap().unwrap_or_else(|| panic!("no entry {part} in {rel}"));
        let (child, _): (u64, tezipfs::index::Kind) = postcard::from_bytes(&v).unwrap();
        ino = child;
    }
    postcard::from_bytes(&idx.get(&keys::inode(ino)).unwrap().unwrap()).unwrap()
}

fn put_raw(store: &Path, key: Vec<u8>, value: Vec<u8>) {
    let idx = tezipfs::check::open_index(store).unwrap();
    let mut b = Batch::default();
    b.put(key, value);
    idx.apply(b).unwrap();
    idx.flush().unwrap();
}

fn blob_of(store: &Path, rel: &str) -> (u64, u32) {
    match inode_of(store, rel).data {
        Data::Compressed { blob, slot, .. } => (blob, slot),
        d => panic!("{rel} is not compressed: {d:?}"),
    }
}

/// Repair, then check again: (first exit, first report); the second run must be clean.
fn repair_then_clean(store: &Path) -> (i32, Value) {
    let (code, r) = fsck(store, &["--repair"]);
    let (again, r2) = fsck(store, &[]);
    assert_eq!(again, 0, "fsck after --repair is not clean: {r2:#}\n(repair said {r:#})");
    (code, r)
}

#[test]
fn a_clean_store_is_clean_at_both_levels() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let (code, r) = fsck(&fs.store, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["status"], "clean");
    assert!(r["blobs_checked"].as_u64().unwrap() >= 3, "{r:#}");
    let (code, r) = fsck(&fs.store, &["--deep"]);
    assert_eq!((code, &r["level"]), (0, &Value::from("decode")), "{r:#}");
    // --repair on a clean store changes nothing.
    let (code, _) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 0);
    let (code, out, _) = fsck_text(&fs.store, &[]);
    assert!(code == 0 && out.contains("clean"), "{out}");
    remount_and_check(&mut fs, &files, &[]);
}

#[test]
fn a_store_in_use_or_not_a_store_is_an_operational_error() {
    require_fuse!();
    let (fs, _) = populated();
    let (code, _, err) = fsck_text(&fs.store, &[]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("in use by another tezipfs daemon"), "{err}");
    let (code, _, err) = fsck_text(&fs.tmp.path().join("nothing-here"), &[]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("not a tezipfs store"), "{err}");
}

#[test]
fn corrupt_blob_bytes_are_found_by_path_left_in_place_and_read_eio() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let (blob, _) = blob_of(&fs.store, "run/frame_00001.raw");
    // Flip a byte near the end: the last section of the last frame of the window.
    let path = fs.store.join("blobs").join(format!("{blob}.tzb"));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (code, r) = fsck(&fs.store, &[]);
    assert_eq!(code, 4, "{r:#}");
    let p = problems(&r, "blob-corrupt");
    assert_eq!(p.len(), 1, "{r:#}");
    let hit = paths_of(p[0]);
    assert!(!hit.is_empty() && hit.iter().all(|h| h.starts_with("/run/frame_0000")), "{hit:?}");
    assert_eq!(p[0]["loss"], true);
    // Repair cannot bring the bytes back: it says so, and keeps the files.
    let (code, r2) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 4, "{r2:#}");
    assert!(path.exists());
    let (code, _) = fsck(&fs.store, &[]);
    assert_eq!(code, 4);
    let lost: Vec<PathBuf> = hit.iter().map(|h| fs.mnt.join(h.trim_start_matches('/'))).collect();
    remount_and_check(&mut fs, &files, &lost);
    assert!(fs.log_text().contains(&format!("blob={blob}")) || fs.log_text().contains(&format!("blob {blob}")), "no log line names the blob");
    // The files stay in the namespace.
    for l in &lost {
        assert!(std::fs::metadata(l).is_ok(), "{} is gone", l.display());
    }
}

#[test]
fn a_missing_blob_is_damage_by_path_and_its_files_read_eio() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let (blob, _) = blob_of(&fs.store, "run/frame_00005.raw");
    std::fs::remove_file(fs.store.join("blobs").join(format!("{blob}.tzb"))).unwrap();
    let (code, r) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 4, "{r:#}");
    let p = problems(&r, "blob-missing");
    assert_eq!(p.len(), 1, "{r:#}");
    let mut hit = paths_of(p[0]);
    hit.sort();
    assert_eq!(hit, vec!["/run/frame_00004.raw", "/run/frame_00005.raw", "/run/frame_00006.raw", "/run/frame_00007.raw"]);
    let lost: Vec<PathBuf> = hit.iter().map(|h| fs.mnt.join(h.trim_start_matches('/'))).collect();
    remount_and_check(&mut fs, &files, &lost);
}

#[test]
fn orphans_and_leftovers_are_removed_and_nothing_else_changes() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let (blob, _) = blob_of(&fs.store, "run/frame_00000.raw");
    // An orphan blob (a crash between writing a blob and committing it), an orphan staging
    // file, a leftover in tmp/ and a model file never completed.
    std::fs::copy(fs.store.join("blobs").join(format!("{blob}.tzb")), fs.store.join("blobs/999.tzb")).unwrap();
    std::fs::write(fs.store.join("staging/4242"), b"staging bytes of no inode").unwrap();
    std::fs::write(fs.store.join("tmp/17.tzb"), b"half a blob").unwrap();
    std::fs::write(fs.store.join("models/abc.partial"), b"half a model").unwrap();
    let (code, r) = fsck(&fs.store, &[]);
    assert_eq!(code, 4, "{r:#}");
    for c in ["blob-orphan", "staging-orphan", "tmp-leftover", "model-partial", "counter"] {
        assert_eq!(problems(&r, c).len(), 1, "{c}: {r:#}");
    }
    assert!(problems(&r, "blob-orphan")[0]["after_crash"] == true);
    // Only an orphan blob is at or above the blob counter: what a kill -9 can leave.
    assert!(problems(&r, "counter")[0]["after_crash"] == true, "{r:#}");
    let (code, r) = repair_then_clean(&fs.store);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "repaired");
    assert!(!fs.store.join("blobs/999.tzb").exists() && !fs.store.join("staging/4242").exists() && !fs.store.join("tmp/17.tzb").exists());
    assert!(fs.store.join("blobs").join(format!("{blob}.tzb")).exists());
    remount_and_check(&mut fs, &files, &[]);
}

#[test]
fn a_staged_file_without_its_staging_file_is_reported_and_reads_eio() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let small = inode_of(&fs.store, "small.txt");
    assert_eq!(small.data, Data::Staged);
    std::fs::remove_file(fs.store.join("staging").join(small.ino.to_string())).unwrap();
    let (code, r) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 4, "{r:#}");
    let p = problems(&r, "staging-missing");
    assert_eq!(p.len(), 1);
    assert_eq!(paths_of(p[0]), vec!["/small.txt"]);
    let lost = [fs.path("small.txt")];
    remount_and_check(&mut fs, &files, &lost);
    assert!(fs.log_text().contains("staging file"), "no log line");
}

#[test]
fn wrong_link_counts_and_dangling_entries_are_repaired() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let mut notes = inode_of(&fs.store, "docs/notes.txt");
    assert_eq!(notes.nlink, 2);
    notes.nlink = 7;
    put_raw(&fs.store, keys::inode(notes.ino), postcard::to_allocvec(&notes).unwrap());
    let mut run = inode_of(&fs.store, "run");
    run.nlink = 1;
    put_raw(&fs.store, keys::inode(run.ino), postcard::to_allocvec(&run).unwrap());
    // An entry naming an inode that does not exist, and attributes of one.
    put_raw(&fs.store, keys::dirent(1, b"ghost"), postcard::to_allocvec(&(987_654u64, tezipfs::index::Kind::File)).unwrap());
    put_raw(&fs.store, keys::xattr(987_654, b"user.note"), b"x".to_vec());
    let (code, r) = fsck(&fs.store, &[]);
    assert_eq!(code, 4, "{r:#}");
    let links = problems(&r, "inode-links");
    assert_eq!(links.len(), 2, "{r:#}");
    let mut p: Vec<String> = links.iter().flat_map(|p| paths_of(p)).collect();
    p.sort();
    assert_eq!(p, vec!["/docs/notes-link", "/docs/notes.txt", "/run"]);
    assert_eq!(paths_of(problems(&r, "dirent-dangling")[0]), vec!["/ghost"]);
    assert_eq!(problems(&r, "xattr-orphan").len(), 1);
    let (code, _) = repair_then_clean(&fs.store);
    assert_eq!(code, 1);
    assert_eq!(inode_of(&fs.store, "docs/notes.txt").nlink, 2);
    assert_eq!(inode_of(&fs.store, "run").nlink, 2);
    remount_and_check(&mut fs, &files, &[]);
    assert!(!fs.path("ghost").exists());
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(fs.path("docs/notes.txt")).unwrap()), 2);
}

#[test]
fn corrupt_index_records_are_rebuilt_from_the_blobs_and_the_keys() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    // The inode record of a compressed frame, the directory entry of another, and a blob record.
    let f2 = inode_of(&fs.store, "run/frame_00002.raw");
    put_raw(&fs.store, keys::inode(f2.ino), vec![0xff; 5]);
    let run = inode_of(&fs.store, "run");
    put_raw(&fs.store, keys::dirent(run.ino, b"frame_00006.raw"), vec![0xee; 3]);
    let (blob, _) = blob_of(&fs.store, "run/frame_00000.raw");
    put_raw(&fs.store, keys::blob(blob), vec![1, 2]);
    let (code, r) = fsck(&fs.store, &[]);
    assert_eq!(code, 4, "{r:#}");
    assert_eq!(paths_of(problems(&r, "inode-corrupt")[0]), vec!["/run/frame_00002.raw"]);
    assert_eq!(paths_of(problems(&r, "dirent-corrupt")[0]), vec!["/run/frame_00006.raw"]);
    assert_eq!(problems(&r, "blob-record").len(), 1, "{r:#}");
    let (code, r) = repair_then_clean(&fs.store);
    assert_eq!(code, 1, "{r:#}");
    remount_and_check(&mut fs, &files, &[]);
}

#[test]
fn an_inode_no_directory_names_goes_to_lost_and_found() {
    require_fuse!();
    let (mut fs, files) = populated();
    stop(&mut fs);
    let small = inode_of(&fs.store, "small.txt");
    let idx = tezipfs::check::open_index(&fs.store).unwrap();
    let mut b = Batch::default();
    b.delete(keys::dirent(1, b"small.txt"));
    idx.apply(b).unwrap();
    idx.flush().unwrap();
    drop(idx);
    let (code, r) = fsck(&fs.store, &[]);
    assert_eq!(code, 4, "{r:#}");
    assert_eq!(problems(&r, "inode-unreachable").len(), 1, "{r:#}");
    let (code, _) = repair_then_clean(&fs.store);
    assert_eq!(code, 1);
    let mut files = files;
    let bytes = files.remove(&fs.path("small.txt")).unwrap();
    files.insert(fs.path(&format!("lost+found/#{}", small.ino)), bytes);
    remount_and_check(&mut fs, &files, &[]);
}

#[test]
fn a_missing_model_is_damage_named_by_path() {
    require_fuse!();
    use tezipfs::model::{file, Size};
    let mut fs = Fs::new();
    let bytes = file::to_bytes(&file::random(&Size::Small.arch(), tezipfs::codec::DType::U16, 3));
    let mpath = fs.tmp.path().join("m.tzm");
    std::fs::write(&mpath, &bytes).unwrap();
    let hash = tezipfs::codec::predict::hash_hex(&file::hash(&bytes));
    let out = Command::new(BIN).args(["model", "import"]).arg(&fs.mnt).arg(&mpath).args(["--name", "beam"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = fs.path("m");
    std::fs::create_dir(&d).unwrap();
    set_policy(&d, Some("raw:64x48:u16"), None, Some(4));
    xattr_set(&d, "user.tezip.predictor", b"prednet").unwrap();
    xattr_set(&d, "user.tezip.model", b"beam").unwrap();
    let frames = tezipfs::fixtures::generate_raw(&tezipfs::fixtures::SequenceSpec::detector_u16(64, 48, 4, 9));
    let files = write_frames(&d, &frames, "raw");
    wait_compressed(&files.keys().cloned().collect::<Vec<_>>());
    stop(&mut fs);
    assert_eq!(fsck(&fs.store, &["--deep"]).0, 0);
    std::fs::remove_file(fs.store.join("models").join(&hash)).unwrap();
    let (code, r) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 4, "{r:#}");
    let p = problems(&r, "model-missing");
    assert_eq!(p.len(), 1, "{r:#}");
    assert_eq!(paths_of(p[0]).len(), 4);
    assert!(p[0]["detail"].as_str().unwrap().contains(&hash));
    let lost: Vec<PathBuf> = files.keys().cloned().collect();
    remount_and_check(&mut fs, &files, &lost);
    // A corrupt model file (its bytes no longer hash to its name): damage, named by path.
    stop(&mut fs);
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(fs.store.join("models").join(&hash), &bad).unwrap();
    let (code, r) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 4, "{r:#}");
    assert_eq!(paths_of(problems(&r, "model-corrupt")[0]).len(), 4, "{r:#}");
    // The model imported again: everything reads, and the store is clean.
    std::fs::write(fs.store.join("models").join(&hash), &bytes).unwrap();
    let (code, r) = fsck(&fs.store, &["--repair", "--deep"]);
    assert!(code == 0 || code == 1, "{r:#}");
    assert_eq!(fsck(&fs.store, &[]).0, 0);
    remount_and_check(&mut fs, &files, &[]);
}

/// `tezipfs scrub MNT [more]`: (exit status, final status JSON).
fn scrub(mnt: &Path, more: &[&str]) -> (i32, Value) {
    let out = Command::new(BIN).arg("scrub").arg(mnt).arg("--json").args(more).env("NO_COLOR", "1").output().expect("run tezipfs scrub");
    (out.status.code().expect("exit status"), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

#[test]
fn scrub_finds_a_corrupt_blob_on_a_live_mount_by_path() {
    require_fuse!();
    let (fs, _) = populated();
    let (code, st) = scrub(&fs.mnt, &["--rate", "100"]);
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["state"], "done");
    let blob = a_frame_blob(&fs);
    let path = fs.store.join("blobs").join(format!("{blob}.tzb"));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (code, st) = scrub(&fs.mnt, &["--rate", "100", "--restart"]);
    assert_eq!(code, 4, "{st:#}");
    let p = st["problems"].as_array().unwrap();
    assert_eq!(p.len(), 1, "{st:#}");
    assert_eq!(p[0]["blob"], blob);
    assert!(paths_of(&p[0]).iter().all(|x| x.starts_with("/run/frame_0000")), "{st:#}");
    assert!(fs.log_text().contains("scrub: a blob is damaged"));
}

/// A blob of frames (the daemon holds the index, so the blob files are read).
fn a_frame_blob(fs: &Fs) -> u64 {
    let mut ids: Vec<u64> = fs.blobs().iter().filter_map(|p| p.file_stem()?.to_str()?.parse().ok()).collect();
    ids.sort();
    ids.into_iter()
        .find(|id| {
            let b = std::fs::read(fs.store.join("blobs").join(format!("{id}.tzb"))).unwrap();
            tezipfs::codec::container::Blob::parse(&b).is_ok_and(|p| p.header.params.is_some())
        })
        .expect("a blob of frames")
}

#[test]
fn scrub_resumes_after_a_restart_and_can_restart_from_the_start() {
    require_fuse!();
    let (mut fs, _) = populated();
    // More blobs: 6 more windows of 4 frames.
    let more = fs.path("more");
    std::fs::create_dir(&more).unwrap();
    set_policy(&more, Some("raw:64x48:u16"), None, Some(4));
    let frames = tezipfs::fixtures::generate_raw(&tezipfs::fixtures::SequenceSpec::detector_u16(64, 48, 24, 6));
    let files = write_frames(&more, &frames, "raw");
    wait_compressed(&files.keys().cloned().collect::<Vec<_>>());
    let total = fs.blobs().len() as u64;
    assert!(total >= 8, "{total} blobs");
    // Slow: about 1 blob a second.
    let bytes: u64 = fs.blobs().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    let rate = format!("{}", bytes as f64 / total as f64 / 1e6);
    let (code, st) = scrub(&fs.mnt, &["--rate", &rate, "--no-wait"]);
    assert_eq!(code, 0, "{st:#}");
    let status = |fs: &Fs| -> Value { serde_json::from_slice(&common::xattr_get(&fs.mnt, "user.tezip.scrub").unwrap()).unwrap() };
    wait_for("the scrub to check 3 blobs", Duration::from_secs(20), || status(&fs)["blobs_done"].as_u64().unwrap() >= 3);
    // Readers are not held up by the scrub: every file reads back, quickly, while it runs.
    let t = std::time::Instant::now();
    common::assert_files(&files);
    assert!(t.elapsed() < Duration::from_secs(5), "reads took {:?} during a scrub", t.elapsed());
    assert_eq!(status(&fs)["state"], "running");
    let at = status(&fs)["next_blob"].as_u64().unwrap();
    // A restart (kill -9: the position is in the index, flushed by sled within 500 ms).
    std::thread::sleep(Duration::from_millis(700));
    fs.kill9();
    fs.start();
    let (code, st) = scrub(&fs.mnt, &["--rate", "100"]);
    assert_eq!(code, 0, "{st:#}");
    let from = st["started_at"].as_u64().unwrap();
    assert!(from >= at.saturating_sub(1) && from > 1, "resumed at blob {from}, had reached {at}: {st:#}");
    assert!(st["blobs_done"].as_u64().unwrap() < total, "{st:#}");
    // --restart checks every blob again.
    let (code, st) = scrub(&fs.mnt, &["--rate", "100", "--restart"]);
    assert_eq!(code, 0, "{st:#}");
    assert_eq!(st["blobs_done"].as_u64().unwrap(), total, "{st:#}");
}

#[test]
fn an_inode_record_that_cannot_be_rebuilt_stays_and_reads_eio_and_the_store_mounts() {
    require_fuse!();
    let (mut fs, files) = populated();
    std::os::unix::fs::symlink("docs/notes.txt", fs.path("link")).unwrap();
    stop(&mut fs);
    let link = inode_of(&fs.store, "link");
    put_raw(&fs.store, keys::inode(link.ino), vec![0xff; 4]);
    let (code, r) = fsck(&fs.store, &["--repair"]);
    assert_eq!(code, 4, "{r:#}");
    let p = problems(&r, "inode-corrupt");
    assert_eq!(p.len(), 1, "{r:#}");
    assert_eq!(paths_of(p[0]), vec!["/link"]);
    assert_eq!(p[0]["loss"], true);
    // The daemon starts on it, every other file reads, and the damaged one is EIO, not gone.
    remount_and_check(&mut fs, &files, &[]);
    let e = std::fs::symlink_metadata(fs.path("link")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(common::names(&fs.mnt).contains(&"link".to_string()));
    assert!(fs.log_text().contains(&format!("index record I:{} is corrupt", link.ino)), "{}", fs.log_text());
}
