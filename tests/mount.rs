//! End-to-end tests of the mounted filesystem: the real `tezipfs mount` daemon on a store in a
//! temporary directory, used through ordinary file calls. Each test mounts its own filesystem.
//! Skipped (with a printed reason) where /dev/fuse or fusermount3 is missing.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const W: u32 = 256;
const H: u32 = 128;
const RAW_FORMAT: &str = "raw:256x128:u16";

fn mkdir(p: &Path) {
    std::fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// A directory of raw u16 frames with window `window`.
fn raw_dir(fs: &Fs, name: &str, window: usize) -> PathBuf {
    let d = fs.path(name);
    mkdir(&d);
    set_policy(&d, Some(RAW_FORMAT), None, Some(window));
    d
}

fn keys(m: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<PathBuf> {
    m.keys().cloned().collect()
}

/// 1. Raw and TIFF sequences are compressed, read back byte for byte, and take less space.
#[test]
fn sequences_compress_and_read_back_exactly() {
    require_fuse!();
    let fs = Fs::new();
    let raw = raw_dir(&fs, "raw", 8);
    let tif = fs.path("tiff");
    mkdir(&tif);
    set_policy(&tif, Some("auto"), None, Some(8));

    let mut want = write_frames(&raw, &raw_frames(W, H, 24, 1), "raw");
    want.append(&mut write_frames(&tif, &tiff_files(W, H, &images(W, H, 16, 2), false), "tif"));
    wait_compressed(&keys(&want));
    assert_files(&want);
    // Twice: the second read may come from the caches.
    assert_files(&want);

    for dir in [&raw, &tif] {
        let files: Vec<PathBuf> = want.keys().filter(|p| p.starts_with(dir)).cloned().collect();
        let (logical, stored) = usage(&files);
        let expect: u64 = files.iter().map(|p| want[p].len() as u64).sum();
        assert_eq!(logical, expect, "st_size sum of {}", dir.display());
        assert!(stored * 2 < logical, "{}: {stored} bytes stored for {logical} logical bytes: not well below", dir.display());
    }
    let s = fs.stats(&fs.mnt);
    let root = &s["directories"][0];
    assert_eq!(root["files"], 40, "stats: {s}");
    assert_eq!(root["compressed"], 40, "stats: {s}");
    assert_eq!(root["staged"], 0, "stats: {s}");
    assert_eq!(root["logical_bytes"].as_u64(), Some(want.values().map(|v| v.len() as u64).sum::<u64>()), "stats: {s}");
    assert!(fs.staging().is_empty(), "staging files left after compression: {:?}", fs.staging());
    fs.assert_log_clean();
}

/// What a directory should hold after the changes of test 2.
struct Model {
    files: BTreeMap<PathBuf, Vec<u8>>,
    gone: Vec<PathBuf>,
}

/// Rename, unlink, rewrite, overwrite in place and replace files of `dir` (24 frames) while its
/// windows are being compressed; `other` receives one file.
fn churn(dir: &Path, other: &Path, files: &mut Model, fresh: &[Vec<u8>]) {
    let p = |i: usize| dir.join(frame_name(i, "raw"));
    // O_TRUNC rewrite with new content, in two writes.
    {
        let mut f = OpenOptions::new().write(true).truncate(true).open(p(2)).expect("open O_TRUNC");
        f.write_all(&fresh[0][..10_000]).unwrap();
        f.write_all(&fresh[0][10_000..]).unwrap();
    }
    files.files.insert(p(2), fresh[0].clone());
    // rename within the directory
    std::fs::rename(p(5), dir.join("moved_5.raw")).expect("rename");
    let b = files.files.remove(&p(5)).unwrap();
    files.files.insert(dir.join("moved_5.raw"), b);
    files.gone.push(p(5));
    // unlink
    std::fs::remove_file(p(9)).expect("unlink");
    files.files.remove(&p(9));
    files.gone.push(p(9));
    // rename over an existing file (the victim goes)
    std::fs::rename(p(12), p(13)).expect("rename over");
    let b = files.files.remove(&p(12)).unwrap();
    files.files.insert(p(13), b);
    files.gone.push(p(12));
    // overwrite in place without truncation (compressed files come back to staging first)
    {
        let f = OpenOptions::new().write(true).open(p(15)).expect("open for write");
        f.write_all_at(&[0xEE; 300], 1000).unwrap();
    }
    files.files.get_mut(&p(15)).unwrap()[1000..1300].fill(0xEE);
    // unlink and create again under the same name
    std::fs::remove_file(p(17)).expect("unlink");
    write_file(&p(17), &fresh[1]);
    files.files.insert(p(17), fresh[1].clone());
    // O_TRUNC rewrite with a shorter content (a short file is never compressed)
    write_file(&p(20), &fresh[2][..3000]);
    files.files.insert(p(20), fresh[2][..3000].to_vec());
    // move to another directory
    let dst = other.join(format!("from_{}.raw", dir.file_name().unwrap().to_string_lossy()));
    std::fs::rename(p(22), &dst).expect("rename across directories");
    let b = files.files.remove(&p(22)).unwrap();
    files.files.insert(dst, b);
    files.gone.push(p(22));
    // truncate (not to zero) then extend by a write
    {
        let f = OpenOptions::new().write(true).open(p(23)).expect("open for write");
        f.set_len(40_000).unwrap();
        f.write_all_at(&fresh[3][..8000], 40_000).unwrap();
    }
    let e = files.files.get_mut(&p(23)).unwrap();
    e.truncate(40_000);
    e.extend_from_slice(&fresh[3][..8000]);
}

/// 2. Changes made while a window is being compressed: the last write wins, removed names are
///    gone, and everything ends compressed (or staged when small) and reads back exactly.
#[test]
fn changes_during_compression_keep_the_last_content() {
    require_fuse!();
    let fs = Fs::new();
    let other = fs.path("other");
    mkdir(&other);
    let mut model = Model { files: BTreeMap::new(), gone: Vec::new() };
    // Start the changes at different moments around the quiet period (200 ms; the engine
    // looks every 200 ms), so that some hit a window being encoded or committed.
    for (round, delay_ms) in [0u64, 150, 220, 300, 400, 550].into_iter().enumerate() {
        let dir = raw_dir(&fs, &format!("d{round}"), 8);
        let frames = raw_frames(W, H, 24, 10 + round as u64);
        let fresh = raw_frames(W, H, 4, 100 + round as u64);
        model.files.append(&mut write_frames(&dir, &frames, "raw"));
        std::thread::sleep(Duration::from_millis(delay_ms));
        churn(&dir, &other, &mut model, &fresh);
    }
    // Everything eventually settles: frames compressed, other big files stored whole (not
    // frames under the format), the short ones staged. Files moved to `other` keep the blob
    // they had (compressed) or are stored whole there (no raw format in `other`).
    let frame_len = (W * H * 2) as usize;
    let in_other = |p: &Path| p.parent() == Some(other.as_path());
    let pick = |f: &dyn Fn(&Path, usize) -> bool| -> Vec<PathBuf> { model.files.iter().filter(|(p, b)| f(p, b.len())).map(|(p, _)| p.clone()).collect() };
    let frames = pick(&|p, n| n == frame_len && !in_other(p));
    let whole = pick(&|p, n| n != frame_len && n >= 4096 && !in_other(p));
    let moved = pick(&|p, _| in_other(p));
    let small = pick(&|_, n| n < 4096);
    assert_eq!((frames.len(), whole.len(), moved.len(), small.len()), (6 * 19, 6, 6, 6));
    wait_compressed(&frames);
    wait_states(&whole, &["stored"]);
    wait_states(&moved, &["compressed", "stored"]);
    for p in &small {
        assert_eq!(state(p), "staged", "{}", p.display());
    }
    assert_files(&model.files);
    for p in &model.gone {
        match std::fs::metadata(p) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => panic!("{} should be gone: {other:?}", p.display()),
        }
    }
    // Directory listings are exactly the model.
    let mut dirs: Vec<PathBuf> = model.files.keys().map(|p| p.parent().unwrap().to_path_buf()).collect();
    dirs.dedup();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        let mut want: Vec<String> =
            model.files.keys().filter(|p| p.parent() == Some(d)).map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        want.sort();
        assert_eq!(names(d), want, "entries of {}", d.display());
    }
    // After a remount (no caches), the same.
    let mut fs = fs;
    fs.remount();
    assert_files(&model.files);
    // Staging holds exactly the staged (small) files; no blob or staging file leaks once
    // everything is removed.
    assert_eq!(fs.staging().len(), small.len(), "staging files: {:?}", fs.staging());
    for p in model.files.keys() {
        std::fs::remove_file(p).unwrap();
    }
    wait_for("blobs and staging files to be deleted with their files", Duration::from_secs(10), || fs.blobs().is_empty() && fs.staging().is_empty());
    fs.assert_log_clean();
}

/// 3. Writers and readers at once on different directories; readers re-read compressed files
///    and files that are being compressed. Everything is checked byte for byte.
#[test]
fn concurrent_writers_and_readers() {
    require_fuse!();
    let fs = Fs::new();
    // A compressed directory for the readers to start with.
    let pre = raw_dir(&fs, "pre", 8);
    let pre_files = write_frames(&pre, &raw_frames(W, H, 16, 31), "raw");
    wait_compressed(&keys(&pre_files));

    let published: Arc<Mutex<Vec<(PathBuf, Vec<u8>)>>> = Arc::new(Mutex::new(pre_files.iter().map(|(p, b)| (p.clone(), b.clone())).collect()));
    let done = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let dir = raw_dir(&fs, &format!("w{w}"), 8);
            let (published, errors) = (published.clone(), errors.clone());
            std::thread::spawn(move || {
                for (i, f) in raw_frames(W, H, 24, 40 + w).into_iter().enumerate() {
                    let p = dir.join(frame_name(i, "raw"));
                    if let Err(e) = std::fs::write(&p, &f) {
                        errors.lock().unwrap().push(format!("write {}: {e}", p.display()));
                        continue;
                    }
                    // read back at once (staged), and an earlier frame (maybe being compressed)
                    let earlier = published.lock().unwrap().iter().rev().find(|(q, _)| q.starts_with(&dir) && q != &p).cloned();
                    for (q, want) in std::iter::once((p.clone(), f.clone())).chain(earlier) {
                        match std::fs::read(&q) {
                            Ok(got) => {
                                if let Err(m) = check_bytes(&q.display().to_string(), &got, &want) {
                                    errors.lock().unwrap().push(m);
                                }
                            }
                            Err(e) => errors.lock().unwrap().push(format!("read {}: {e}", q.display())),
                        }
                    }
                    published.lock().unwrap().push((p, f));
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let (published, errors, done) = (published.clone(), errors.clone(), done.clone());
            std::thread::spawn(move || {
                let mut k = r as usize * 7;
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    // Half of the time one of the newest files: those are being compressed.
                    let pick = {
                        let v = published.lock().unwrap();
                        k = k.wrapping_mul(31).wrapping_add(17);
                        if k % 2 == 0 {
                            v[v.len() - 1 - (k / 2) % v.len().min(12)].clone()
                        } else {
                            v[k % v.len()].clone()
                        }
                    };
                    // Whole-file reads and a few small reads at odd offsets.
                    match std::fs::read(&pick.0) {
                        Ok(got) => {
                            if let Err(m) = check_bytes(&pick.0.display().to_string(), &got, &pick.1) {
                                errors.lock().unwrap().push(m);
                            }
                        }
                        Err(e) => errors.lock().unwrap().push(format!("read {}: {e}", pick.0.display())),
                    }
                    if let Ok(f) = std::fs::File::open(&pick.0) {
                        let off = (k * 997) % (pick.1.len() - 100);
                        let mut buf = [0u8; 100];
                        match f.read_exact_at(&mut buf, off as u64) {
                            Ok(()) if buf[..] == pick.1[off..off + 100] => {}
                            Ok(()) => errors.lock().unwrap().push(format!("{}: 100 bytes at {off} differ", pick.0.display())),
                            Err(e) => errors.lock().unwrap().push(format!("pread {}: {e}", pick.0.display())),
                        }
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    // Let the readers go on while the last windows are compressed.
    let all: Vec<PathBuf> = published.lock().unwrap().iter().map(|(p, _)| p.clone()).collect();
    wait_compressed(&all);
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader thread")).sum();
    {
        let e = errors.lock().unwrap();
        assert!(e.is_empty(), "{} errors, first ones:\n{}", e.len(), e.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    }
    assert!(reads > 50, "only {reads} reads happened");
    let want: BTreeMap<PathBuf, Vec<u8>> = published.lock().unwrap().iter().cloned().collect();
    assert_eq!(want.len(), 16 + 3 * 24);
    assert_files(&want);

    // Reads while a window is committed, then in-place writes of the same files (they come
    // back to staging) with reads going on: several rounds, every byte checked.
    let m = raw_dir(&fs, "m", 8);
    let mut model = write_frames(&m, &raw_frames(W, H, 8, 49), "raw");
    for round in 0..4u8 {
        let shared: Arc<Mutex<BTreeMap<PathBuf, Vec<u8>>>> = Arc::new(Mutex::new(model.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let hammer: Vec<_> = (0..2)
            .map(|_| {
                let (shared, stop, errors) = (shared.clone(), stop.clone(), errors.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let snapshot = shared.lock().unwrap().clone();
                        for (p, want) in snapshot {
                            match std::fs::read(&p) {
                                Ok(got) => {
                                    if let Err(msg) = check_bytes(&p.display().to_string(), &got, &want) {
                                        errors.lock().unwrap().push(msg);
                                    }
                                }
                                Err(e) => errors.lock().unwrap().push(format!("read {} (round {round}): {e}", p.display())),
                            }
                        }
                    }
                })
            })
            .collect();
        wait_compressed(&keys(&model));
        stop.store(true, Ordering::SeqCst);
        for h in hammer {
            h.join().expect("reader thread");
        }
        // In-place writes (rehydration) of every file.
        for (k, (p, b)) in model.iter_mut().enumerate() {
            let off = 1000 * (k + 1) + round as usize;
            let f = OpenOptions::new().write(true).open(p).expect("open for write");
            f.write_all_at(&[round ^ 0x5A; 64], off as u64).unwrap();
            b[off..off + 64].fill(round ^ 0x5A);
        }
        assert_files(&model);
    }
    wait_compressed(&keys(&model));
    assert_files(&model);
    {
        let e = errors.lock().unwrap();
        assert!(e.is_empty(), "{} errors, first ones:\n{}", e.len(), e.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    }
    let mut fs = fs;
    fs.remount();
    assert_files(&want);
    assert_files(&model);
    fs.assert_log_clean();
}

/// 4. Unmount and mount again: compressed files read back exactly, and files still staged at
///    the unmount survive and are compressed after the remount.
#[test]
fn remount_keeps_compressed_and_staged_files() {
    require_fuse!();
    // The first mount never compresses a short tail (idle time 10 minutes).
    let mut fs = Fs::with(Opts { tail_idle_ms: 600_000, ..Opts::default() });
    let a = raw_dir(&fs, "a", 8);
    let b = raw_dir(&fs, "b", 8);
    let a_files = write_frames(&a, &raw_frames(W, H, 16, 50), "raw");
    wait_compressed(&keys(&a_files));
    let b_files = write_frames(&b, &raw_frames(W, H, 5, 51), "raw"); // a tail of 5 < 8
    let small = fs.path("a/small.txt");
    write_file(&small, b"a small file stays staged\n");
    for p in b_files.keys() {
        assert_eq!(state(p), "staged", "{}", p.display());
    }
    let mut all = a_files.clone();
    all.extend(b_files.clone());
    all.insert(small.clone(), b"a small file stays staged\n".to_vec());
    assert_files(&all);

    fs.opts = Opts::default();
    fs.remount();
    for p in a_files.keys() {
        assert_eq!(state(p), "compressed", "{} after remount", p.display());
    }
    assert_files(&all);
    wait_compressed(&keys(&b_files));
    assert_files(&all);
    assert_eq!(state(&small), "staged");

    fs.remount();
    wait_compressed(&keys(&a_files));
    wait_compressed(&keys(&b_files));
    assert_files(&all);
    fs.assert_log_clean();
}

/// The index's page cache is bounded (`--index-cache-mib`; sled's own default is 1 GiB): with
/// 1 MiB of it, less than the metadata of these files, every file still reads back exactly,
/// before and after a remount, in name order and at random. (What the cap saves in resident
/// memory is measured by `scripts/bench-scale`, not here.)
#[test]
fn a_tiny_index_cache_keeps_every_file() {
    require_fuse!();
    let mut fs = Fs::with(Opts { extra: vec!["--index-cache-mib".into(), "1".into()], ..Opts::default() });
    // 6,000 frames of 4.5 KiB (the smallest files are not compressed): an index larger than
    // its cache (checked below).
    let (files, dirs) = (1500, 4);
    let mut all = BTreeMap::new();
    for d in 0..dirs {
        let dir = fs.path(&format!("d{d}"));
        mkdir(&dir);
        set_policy(&dir, Some("raw:48x48:u16"), None, Some(32));
        let frames: Vec<Vec<u8>> = raw_frames(48, 48, 64, 70 + d as u64).into_iter().cycle().take(files).collect();
        all.extend(write_frames(&dir, &frames, "raw"));
    }
    wait_states_within(&keys(&all), &["compressed"], Duration::from_secs(120));
    let st = fs.stats(&fs.mnt);
    assert!(st["index_bytes_on_disk"].as_u64().unwrap() > 2 << 20, "the index fits in its cache: {st}");
    assert_files(&all);
    fs.remount();
    // Every file's metadata again, out of order: the cache holds a small part of it.
    let mut paths: Vec<&PathBuf> = all.keys().collect();
    paths.sort_by_key(|p| crc(p.as_os_str().as_encoded_bytes()));
    for p in paths {
        assert_file(p, &all[p]);
    }
    for d in 0..dirs {
        assert_eq!(names(&fs.path(&format!("d{d}"))).len(), files);
    }
    fs.assert_log_clean();
}

/// 5. Appending to a compressed file brings it back to staging (rehydration) without touching
///    its window-mates; later it is compressed again.
#[test]
fn append_rehydrates_then_compresses_again() {
    require_fuse!();
    let fs = Fs::new();
    let d = raw_dir(&fs, "d", 8);
    let mut files = write_frames(&d, &raw_frames(W, H, 8, 60), "raw");
    wait_compressed(&keys(&files));
    assert_files(&files);
    let target = d.join(frame_name(3, "raw"));
    let extra: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    {
        let mut f = OpenOptions::new().append(true).open(&target).expect("open O_APPEND");
        f.write_all(&extra).unwrap();
    }
    files.get_mut(&target).unwrap().extend_from_slice(&extra);
    assert_eq!(state(&target), "staged", "state after append");
    assert_eq!(std::fs::metadata(&target).unwrap().len(), files[&target].len() as u64);
    assert_file(&target, &files[&target]);
    for (p, b) in &files {
        if p != &target {
            assert_eq!(state(p), "compressed", "window-mate {} after the append", p.display());
            assert_file(p, b);
        }
    }
    let s = fs.stats(&d);
    assert!(s["rehydrated_files"].as_u64().unwrap_or(0) >= 1, "stats: {s}");
    // No longer a frame of the directory's format: it is compressed again, whole.
    wait_states(std::slice::from_ref(&target), &["stored"]);
    assert_files(&files);

    // Two writers open the same compressed file at once (both rehydrate it) and write at
    // different places: both writes are kept. Several rounds.
    let others: Vec<PathBuf> = files.keys().filter(|p| **p != target).cloned().collect();
    for round in 0..3u8 {
        wait_compressed(&others);
        let barrier = Arc::new(std::sync::Barrier::new(2 * others.len()));
        let mut threads = Vec::new();
        for (k, p) in others.iter().enumerate() {
            for w in 0..2usize {
                let (p, barrier) = (p.clone(), barrier.clone());
                let off = 4096 * (2 * k + w + 1) + round as usize * 100;
                let byte = 0x10 * (w as u8 + 1) + round;
                files.get_mut(&p).unwrap()[off..off + 500].fill(byte);
                threads.push(std::thread::spawn(move || {
                    barrier.wait();
                    // The second writer comes a little later, while the first may still be
                    // bringing the file back to staging.
                    std::thread::sleep(Duration::from_micros((w * (500 + 700 * k + 300 * round as usize)) as u64));
                    let f = OpenOptions::new().write(true).open(&p).expect("open for write");
                    f.write_all_at(&[byte; 500], off as u64).expect("write");
                }));
            }
        }
        for t in threads {
            t.join().expect("writer");
        }
        assert_files(&files);
    }
    wait_compressed(&others);
    assert_files(&files);
    let mut fs = fs;
    fs.remount();
    assert_files(&files);
    fs.assert_log_clean();
}

/// 5b. Readers that keep a file open across the commit of its compression, then an append
/// while one of them still holds it: the appended bytes are kept (regression: a staging-file
/// descriptor cached by such a read, for the file that the commit deletes, took the appended
/// bytes, and the file was then compressed with zeros in their place).
#[test]
fn append_after_reads_across_the_commit_keeps_the_bytes() {
    require_fuse!();
    use std::os::unix::fs::OpenOptionsExt;
    let fs = Fs::with(Opts { quiet_ms: 50, tail_idle_ms: 100, ..Opts::default() });
    let d = fs.path("d");
    mkdir(&d);
    set_policy(&d, Some("raw:64x64:u16"), None, Some(1));
    let frames = raw_frames(64, 64, 36, 65);
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut want = BTreeMap::new();
    for (round, batch) in frames.chunks(3).enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for (j, orig) in batch.iter().enumerate() {
            let p = d.join(format!("f{round:02}_{j}.raw"));
            write_file(&p, orig);
            let (stop, errors, want) = (stop.clone(), errors.clone(), orig.clone());
            // Short opens with uncached (O_DIRECT) reads, so that some fall on the commit (the
            // engine takes only files nobody has open); the descriptor open when the file turns
            // compressed stays open until after the append.
            readers.push(std::thread::spawn(move || {
                let t_start = Instant::now();
                loop {
                    let f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&p).expect("open");
                    let t0 = Instant::now();
                    // O_DIRECT wants an aligned buffer, as on ext4: a reader that opens while a
                    // passthrough handle of the file is still open (the kernel releases the
                    // writer's asynchronously) reads the staging file directly (SEMANTICS S48).
                    let mut space = vec![0u8; want.len() + 4096];
                    let at = space.as_ptr().align_offset(4096);
                    let buf = &mut space[at..at + want.len()];
                    while t0.elapsed() < Duration::from_millis(2) {
                        match f.read_at(buf, 0) {
                            Ok(n) if buf[..n] == want[..n] => {}
                            Ok(_) => errors.lock().unwrap().push(format!("{}: wrong bytes", p.display())),
                            Err(e) => errors.lock().unwrap().push(format!("read {}: {e}", p.display())),
                        }
                    }
                    if state(&p) == "compressed" || stop.load(Ordering::SeqCst) {
                        break (p, f);
                    }
                    assert!(t_start.elapsed() < STATE_TIMEOUT, "{} not compressed in time", p.display());
                    drop(f);
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        let open: Vec<(PathBuf, std::fs::File)> = readers.into_iter().map(|r| r.join().expect("reader")).collect();
        stop.store(true, Ordering::SeqCst);
        for (k, (p, _)) in open.iter().enumerate() {
            let extra = vec![0xA0 + k as u8; 3000];
            OpenOptions::new().append(true).open(p).expect("open O_APPEND").write_all(&extra).expect("append");
            let mut b = batch[k].clone();
            b.extend_from_slice(&extra);
            want.insert(p.clone(), b);
        }
        drop(open);
    }
    wait_states(&keys(&want), &["stored"]);
    assert_files(&want);
    let e = errors.lock().unwrap();
    assert!(e.is_empty(), "{} errors, first ones:\n{}", e.len(), e.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    drop(e);
    let mut fs = fs;
    fs.remount();
    assert_files(&want);
    fs.assert_log_clean();
}

/// 6. An error-bounded directory: every pixel within the bound, same sizes, and really lossy.
#[test]
fn error_bounded_directory_stays_within_the_bound() {
    require_fuse!();
    let fs = Fs::new();
    let d = fs.path("lossy");
    mkdir(&d);
    set_policy(&d, Some(RAW_FORMAT), Some("abs:3"), Some(8));
    let files = write_frames(&d, &raw_frames(W, H, 16, 70), "raw");
    wait_compressed(&keys(&files));
    // Read at once (the kernel may still hold the pages written), then after a remount (no
    // cache anywhere): both within the bound, lossy, and the same bytes.
    let check = |when: &str| -> BTreeMap<PathBuf, Vec<u8>> {
        let (mut differ, mut max) = (0usize, 0i32);
        let mut read = BTreeMap::new();
        for (p, want) in &files {
            let got = std::fs::read(p).unwrap();
            assert_eq!(got.len(), want.len(), "size of {} {when}", p.display());
            assert_eq!(std::fs::metadata(p).unwrap().len(), want.len() as u64);
            for (a, b) in u16s(&got).iter().zip(u16s(want)) {
                let e = (*a as i32 - b as i32).abs();
                max = max.max(e);
                differ += (e != 0) as usize;
            }
            read.insert(p.clone(), got);
        }
        assert!(max <= 3, "{when}: a pixel is off by {max} > 3");
        assert!(differ > 0, "{when}: no pixel differs from what was written: not the lossy content");
        read
    };
    let first = check("right after compression");
    let mut fs = fs;
    fs.remount();
    let second = check("after a remount");
    for (p, b) in &first {
        check_bytes(&format!("{} (after remount vs right after compression)", p.display()), &second[p], b).unwrap();
    }
    let (logical, stored) = usage(&keys(&files));
    assert!(stored * 2 < logical, "{stored} bytes stored for {logical}");
    fs.assert_log_clean();
}

/// 7. A real TIFF reader decodes the TIFF frames read through the mount after compression.
#[test]
fn tiff_reader_reads_compressed_tiffs() {
    require_fuse!();
    let fs = Fs::new();
    let d = fs.path("tiff");
    mkdir(&d);
    set_policy(&d, None, None, Some(8));
    let imgs = images(W, H, 16, 80);
    let files = write_frames(&d, &tiff_files(W, H, &imgs, true), "tif");
    // Coded as frames (not stored whole).
    wait_compressed(&keys(&files));
    for (k, (p, bytes)) in files.iter().enumerate() {
        let got = std::fs::read(p).unwrap();
        check_bytes(&p.display().to_string(), &got, bytes).unwrap();
        let mut dec = tiff::decoder::Decoder::new(std::io::Cursor::new(got)).unwrap_or_else(|e| panic!("{}: not a TIFF: {e}", p.display()));
        assert_eq!(dec.dimensions().unwrap(), (W, H));
        match dec.read_image().unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
            tiff::decoder::DecodingResult::U16(px) => {
                let want: Vec<u16> = imgs[k].iter().map(|&v| v as u16).collect();
                assert!(px == want, "{}: pixels differ from the generated image", p.display());
            }
            _ => panic!("{}: not 16-bit", p.display()),
        }
    }
    fs.assert_log_clean();
}

/// 8. kill -9 of the daemon: every closed file survives, whether still staged, just
///    compressed, or in between.
#[test]
fn kill9_loses_no_closed_file() {
    require_fuse!();
    // Staged: nothing is compressed on this first mount.
    let mut fs = Fs::with(Opts { quiet_ms: 600_000, tail_idle_ms: 600_000, ..Opts::default() });
    let s = raw_dir(&fs, "staged", 8);
    let mut all = write_frames(&s, &raw_frames(W, H, 8, 90), "raw");
    for p in all.keys() {
        assert_eq!(state(p), "staged");
    }
    fs.kill9();
    fs.opts = Opts::default();
    fs.start();
    assert_files(&all);

    // Just compressed: kill the moment the last state flips.
    let c = raw_dir(&fs, "compressed", 8);
    let cf = write_frames(&c, &raw_frames(W, H, 8, 91), "raw");
    all.extend(cf.clone());
    let t0 = Instant::now();
    while !cf.keys().all(|p| state(p) == "compressed") {
        assert!(t0.elapsed() < STATE_TIMEOUT, "not compressed in time");
    }
    fs.kill9();
    fs.start();
    for p in cf.keys() {
        assert_eq!(state(p), "compressed", "{} after kill -9", p.display());
    }
    assert_files(&all);

    // In between: kill at several moments around the quiet period.
    for (k, delay) in [150u64, 250, 320].into_iter().enumerate() {
        let m = raw_dir(&fs, &format!("mid{k}"), 8);
        let mf = write_frames(&m, &raw_frames(W, H, 8, 92 + k as u64), "raw");
        all.extend(mf);
        std::thread::sleep(Duration::from_millis(delay));
        fs.kill9();
        fs.start();
        assert_files(&all);
    }
    wait_compressed(&keys(&all));
    assert_files(&all);
    fs.assert_log_clean();
}

/// 9. A corrupted blob: the files that depend on the damaged bytes fail with EIO (never wrong
///    bytes), the log names inode and blob, and files of other blobs read fine.
#[test]
fn corrupt_blob_reads_fail_with_eio() {
    require_fuse!();
    let mut fs = Fs::new();
    let a = raw_dir(&fs, "a", 8);
    let af = write_frames(&a, &raw_frames(W, H, 8, 110), "raw");
    wait_compressed(&keys(&af));
    let a_blobs = fs.blobs();
    assert_eq!(a_blobs.len(), 1, "one window, one blob: {a_blobs:?}");
    let b = raw_dir(&fs, "b", 8);
    let bf = write_frames(&b, &raw_frames(W, H, 8, 111), "raw");
    wait_compressed(&keys(&bf));
    assert_eq!(fs.blobs().len(), 2);

    let blob = &a_blobs[0];
    let blob_id: u64 = blob.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let mut bytes = std::fs::read(blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(blob, &bytes).unwrap();
    fs.remount();

    let mut failed = Vec::new();
    for (p, want) in &af {
        let mut buf = Vec::new();
        let r = std::fs::File::open(p).and_then(|mut f| f.read_to_end(&mut buf));
        match r {
            Ok(_) => check_bytes(&p.display().to_string(), &buf, want).unwrap_or_else(|m| panic!("wrong bytes instead of an error: {m}")),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: {e}", p.display());
                failed.push(std::fs::metadata(p).unwrap().ino());
            }
        }
    }
    assert!(!failed.is_empty(), "no file of the corrupted blob failed to read");
    let log = fs.log_text();
    for ino in &failed {
        let needle = format!("inode {ino} (blob {blob_id}");
        assert!(log.contains(&needle), "the log does not name {needle:?}:\n{log}");
    }
    assert_files(&bf);
}

fn errno_of(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// 10. Invalid policy values are refused with EINVAL (and not stored); the state of a file
///     cannot be set (EPERM).
#[test]
fn invalid_policy_values_are_refused() {
    require_fuse!();
    let fs = Fs::new();
    let d = fs.path("d");
    mkdir(&d);
    set_policy(&d, Some(RAW_FORMAT), Some("abs:2"), Some(4));
    for (name, value) in [
        ("user.tezip.bound", "abs:-1"),
        ("user.tezip.window", "0"),
        ("user.tezip.format", "raw:0x1:u8"),
        ("user.tezip.window", "x"),
        ("user.tezip.bound", "sideways"),
    ] {
        assert_eq!(errno_of(xattr_set(&d, name, value.as_bytes())), Some(libc::EINVAL), "{name}={value}");
    }
    assert_eq!(xattr_get(&d, "user.tezip.bound").unwrap(), b"abs:2");
    assert_eq!(xattr_get(&d, "user.tezip.window").unwrap(), b"4");
    assert_eq!(xattr_get(&d, "user.tezip.format").unwrap(), RAW_FORMAT.as_bytes());
    let f = d.join("f.raw");
    write_file(&f, &[1u8; 100]);
    assert_eq!(errno_of(xattr_set(&f, "user.tezip.state", b"compressed")), Some(libc::EPERM));
    assert_eq!(state(&f), "staged");
}

/// 11. A second daemon on the same store is refused, with a message naming the lock.
#[test]
fn second_daemon_on_the_same_store_is_refused() {
    require_fuse!();
    let fs = Fs::new();
    let mnt2 = fs.tmp.path().join("mnt2");
    mkdir(&mnt2);
    let mut child = std::process::Command::new(BIN)
        .args(fs.mount_args(&mnt2))
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            if is_mounted(&mnt2) {
                std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(&mnt2).status().unwrap();
            }
            panic!("a second daemon on the same store was still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(!status.success(), "second daemon exited successfully: {err}");
    assert!(!is_mounted(&mnt2), "second daemon mounted");
    assert!(err.contains("LOCK") && err.contains("in use"), "message does not name the lock: {err}");
    // The first daemon goes on.
    let p = fs.path("after.bin");
    write_file(&p, &[7u8; 10_000]);
    assert_file(&p, &[7u8; 10_000]);
}

/// 12. `du` shows the stored size: block-based usage below the apparent size.
#[test]
fn du_shows_real_usage() {
    require_fuse!();
    let fs = Fs::new();
    let d = raw_dir(&fs, "d", 8);
    let files = write_frames(&d, &raw_frames(W, H, 16, 120), "raw");
    wait_compressed(&keys(&files));
    let du = |apparent: bool| -> u64 {
        let mut c = std::process::Command::new("du");
        c.arg("-s").arg("-B1");
        if apparent {
            c.arg("--apparent-size");
        }
        let out = c.arg(&d).output().expect("run du");
        assert!(out.status.success(), "du: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
    };
    let (real, apparent) = (du(false), du(true));
    let logical: u64 = files.values().map(|b| b.len() as u64).sum();
    assert!(apparent >= logical, "du --apparent-size {apparent} < {logical} bytes written");
    assert!(real * 2 < apparent, "du {real} is not well below du --apparent-size {apparent}");
}

/// Writers are served by FUSE passthrough by default (the kernel writes the staging file), and by
/// the daemon with --no-passthrough; both give the same files, sizes and times: sizes seen while
/// the writer still has the file open, a header patched by seeking back, an extension by
/// ftruncate, appends, a reader opened beside the writer, utimens while open, and the bytes
/// after compression and a remount.
#[test]
fn writers_by_passthrough_and_by_the_daemon_agree() {
    require_fuse!();
    for passthrough in [true, false] {
        let mut fs = Fs::with(Opts { passthrough, ..Opts::default() });
        let d = fs.path("d");
        mkdir(&d);
        let p = d.join("frame.bin");
        let body: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut want = Vec::new();
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&p).expect("create");
        let created = std::fs::metadata(&p).unwrap();
        let mut last_mtime = (created.mtime(), created.mtime_nsec());
        let mut last_ctime = (created.ctime(), created.ctime_nsec());
        for chunk in body.chunks(100_000) {
            f.write_all_at(chunk, want.len() as u64).expect("write");
            want.extend_from_slice(chunk);
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!(m.len(), want.len() as u64, "size while open (passthrough {passthrough})");
            let (mt, ct) = ((m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()));
            assert!(
                mt > last_mtime && ct > last_ctime,
                "a write moves mtime and ctime forward (passthrough {passthrough}): {last_mtime:?} -> {mt:?}, {last_ctime:?} -> {ct:?}"
            );
            (last_mtime, last_ctime) = (mt, ct);
        }
        // A header written last, by seeking back; a reader opened beside the writer sees it.
        f.write_all_at(b"HEADER", 0).unwrap();
        want[..6].copy_from_slice(b"HEADER");
        let mut r = Vec::new();
        std::fs::File::open(&p).unwrap().read_to_end(&mut r).unwrap();
        assert!(r == want, "a reader beside the writer (passthrough {passthrough})");
        // Extension by ftruncate, then a write past it.
        f.set_len(want.len() as u64 + 5000).unwrap();
        want.resize(want.len() + 5000, 0);
        f.write_all_at(b"tail", want.len() as u64).unwrap();
        want.extend_from_slice(b"tail");
        // utimens while open: the time set shows until the next write.
        let past = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        f.set_times(std::fs::FileTimes::new().set_modified(past)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mtime(), 1_000_000_000, "utimens while open");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), want.len() as u64);
        f.write_all_at(b"!", 10).unwrap();
        want[10] = b'!';
        assert!(std::fs::metadata(&p).unwrap().mtime() > 1_000_000_000, "a write after utimens sets mtime");
        drop(f);
        assert_file(&p, &want);
        let extra = vec![0x5a; 777];
        OpenOptions::new().append(true).open(&p).unwrap().write_all(&extra).unwrap();
        want.extend_from_slice(&extra);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), want.len() as u64);
        let before = std::fs::metadata(&p).unwrap();
        wait_states(std::slice::from_ref(&p), &["stored"]);
        let after = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (after.len(), after.mtime(), after.mtime_nsec(), after.ino()),
            (before.len(), before.mtime(), before.mtime_nsec(), before.ino()),
            "compression changes no attribute"
        );
        assert_file(&p, &want);
        let opens = fs.stats(&d)["passthrough_opens"].as_u64().expect("passthrough_opens in stats");
        if passthrough {
            assert!(opens >= 2, "the writers went through passthrough: {opens} opens");
        } else {
            assert_eq!(opens, 0, "--no-passthrough");
        }
        fs.remount();
        assert_file(&p, &want);
        assert_eq!(std::fs::metadata(&p).unwrap().mtime(), before.mtime());
        fs.assert_log_clean();
    }
}

/// The engine is event-driven: an idle mount plans no directory at all (no periodic scan of
/// the index), and a close puts its directory on the queue at once.
#[test]
fn an_idle_mount_plans_nothing_and_a_close_wakes_the_engine() {
    require_fuse!();
    let fs = Fs::new();
    let mut paths = Vec::new();
    for d in ["a", "b", "c"] {
        let dir = fs.path(d);
        std::fs::create_dir(&dir).unwrap();
        set_policy(&dir, Some("raw:64x48:u16"), None, Some(4));
        for (i, f) in raw_frames(64, 48, 4, 3).iter().enumerate() {
            let p = dir.join(format!("f{i}.raw"));
            std::fs::write(&p, f).unwrap();
            paths.push(p);
        }
    }
    wait_states(&paths, &["compressed"]);
    let planned = |fs: &Fs| fs.stats(&fs.path(""))["engine_dirs_planned"].as_u64().unwrap();
    let queued = |fs: &Fs| fs.stats(&fs.path(""))["engine_queued_dirs"].as_u64().unwrap();
    wait_for("the engine's queue to empty", common::STATE_TIMEOUT, || queued(&fs) == 0);
    let before = planned(&fs);
    // The old engine scanned every inode 5 times a second; this one must not look at all.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(planned(&fs), before, "an idle engine planned directories");
    let more: Vec<PathBuf> = raw_frames(64, 48, 4, 4)
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let p = fs.path(&format!("b/g{i}.raw"));
            std::fs::write(&p, f).unwrap();
            p
        })
        .collect();
    wait_states(&more, &["compressed"]);
    assert!(planned(&fs) > before, "the closes put the directory on the queue");
    for (p, f) in more.iter().zip(raw_frames(64, 48, 4, 4)) {
        assert_file(p, &f);
    }
}

/// Read-ahead: a reader that opens the first frame of a window gets the rest of the window and
/// the next window of the directory decoded into the cache in the background; readers of two
/// directories at once both read back exactly.
#[test]
fn a_read_decodes_ahead_and_two_readers_read_at_once() {
    require_fuse!();
    let mut fs = Fs::new();
    let mut want = BTreeMap::new();
    for (d, seed) in [("a", 5), ("b", 6)] {
        let dir = fs.path(d);
        std::fs::create_dir(&dir).unwrap();
        set_policy(&dir, Some("raw:64x48:u16"), None, Some(4));
        want.extend(write_frames(&dir, &raw_frames(64, 48, 8, seed), "raw"));
    }
    let paths: Vec<PathBuf> = want.keys().cloned().collect();
    wait_states(&paths, &["compressed"]);
    fs.remount(); // an empty cache
    let cached = |fs: &Fs| fs.stats(&fs.path(""))["cache_bytes"].as_u64().unwrap();
    assert_eq!(cached(&fs), 0);
    let first = fs.path("a").join(frame_name(0, "raw"));
    assert_file(&first, &want[&first]);
    let frame = want[&first].len() as u64;
    // Frame 0 read, frames 1-3 read ahead, the next window (frames 4-7) read ahead.
    wait_for("the two windows of a/ to be decoded ahead", STATE_TIMEOUT, || cached(&fs) >= 8 * frame);
    let readers: Vec<_> = ["a", "b"]
        .iter()
        .map(|d| {
            let files: Vec<(PathBuf, Vec<u8>)> = want.iter().filter(|(p, _)| p.parent() == Some(&fs.path(d))).map(|(p, b)| (p.clone(), b.clone())).collect();
            std::thread::spawn(move || {
                for (p, b) in files {
                    assert_file(&p, &b);
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
}

/// Read-ahead depth: a reader starting a window gets as many next windows decoded at once as
/// the daemon has read-ahead workers (`--threads`), as long as they fit in half the cache; the
/// next one always.
#[test]
fn a_reader_gets_one_window_ahead_per_worker_while_they_fit_in_half_the_cache() {
    require_fuse!();
    let mut fs = Fs::with(Opts { threads: Some(3), extra: vec!["--cache-mib".into(), "2".into()], ..Opts::default() });
    let mut want = BTreeMap::new();
    // Four windows of four frames each: 6 KiB frames (every window ahead fits in 1 MiB) and
    // 128 KiB frames (two windows ahead fit, 1 MiB; the third would not).
    for (d, w, h, seed) in [("small", 64, 48, 11), ("big", 256, 256, 12)] {
        let dir = fs.path(d);
        std::fs::create_dir(&dir).unwrap();
        set_policy(&dir, Some(&format!("raw:{w}x{h}:u16")), None, Some(4));
        want.extend(write_frames(&dir, &raw_frames(w, h, 16, seed), "raw"));
    }
    let paths: Vec<PathBuf> = want.keys().cloned().collect();
    wait_states(&paths, &["compressed"]);
    fs.remount();
    let cached = |fs: &Fs| fs.stats(&fs.path(""))["cache_bytes"].as_u64().unwrap();
    let small = fs.path("small").join(frame_name(0, "raw"));
    assert_file(&small, &want[&small]);
    let frame = want[&small].len() as u64;
    // Frame 0 read, frames 1-3 and the three windows after read ahead (three workers).
    wait_for("every window of small/ to be decoded ahead", STATE_TIMEOUT, || cached(&fs) >= 16 * frame);
    let before = cached(&fs);
    let big = fs.path("big").join(frame_name(0, "raw"));
    assert_file(&big, &want[&big]);
    let big_frame = want[&big].len() as u64;
    wait_for("two windows of big/ to be decoded ahead", STATE_TIMEOUT, || cached(&fs) >= before + 12 * big_frame);
    // (The third window ahead is not decoded: give it the time the two before it took.)
    std::thread::sleep(Duration::from_millis(500));
    assert!(cached(&fs) < before + 16 * big_frame, "a window that does not fit in half the cache was read ahead");
    for (p, b) in &want {
        assert_file(p, b);
    }
}

/// Read-ahead keeps a directory's listing between windows (no scan and sort of the directory at
/// every window a reader starts) and lists it again when the directory changes: a window
/// written after the listing was made is read ahead like the others.
#[test]
fn read_ahead_sees_files_added_after_it_listed_the_directory() {
    require_fuse!();
    let mut fs = Fs::with(Opts { threads: Some(1), ..Opts::default() });
    let dir = fs.path("d");
    std::fs::create_dir(&dir).unwrap();
    set_policy(&dir, Some("raw:64x48:u16"), None, Some(4));
    let frames = raw_frames(64, 48, 12, 13);
    let mut want = write_frames(&dir, &frames[..8], "raw");
    let paths: Vec<PathBuf> = want.keys().cloned().collect();
    wait_states(&paths, &["compressed"]);
    fs.remount();
    let cached = |fs: &Fs| fs.stats(&fs.path(""))["cache_bytes"].as_u64().unwrap();
    let frame = frames[0].len() as u64;
    // Frame 0 read: the directory listed, the next window (4-7) read ahead.
    assert_file(&dir.join(frame_name(0, "raw")), &frames[0]);
    wait_for("the two windows to be decoded ahead", STATE_TIMEOUT, || cached(&fs) >= 8 * frame);
    // A third window, written now (frames 8-11: the directory's mtime changes).
    for (k, f) in frames.iter().enumerate().skip(8) {
        let p = dir.join(frame_name(k, "raw"));
        std::fs::write(&p, f).unwrap();
        want.insert(p, f.clone());
    }
    let paths: Vec<PathBuf> = want.keys().cloned().collect();
    wait_states(&paths, &["compressed"]);
    let before = cached(&fs);
    // Frame 4 starts the second window: the new third one is read ahead.
    assert_file(&dir.join(frame_name(4, "raw")), &frames[4]);
    wait_for("the window written after the listing to be decoded ahead", STATE_TIMEOUT, || cached(&fs) >= before + 4 * frame);
    for (p, b) in &want {
        assert_file(p, b);
    }
}

/// The memory budget: a window whose working set cannot fit in `--memory-mib` is split into
/// windows that do; everything reads back exactly and `stats` shows the budget and its use.
#[test]
fn a_window_too_large_for_the_memory_budget_is_split() {
    require_fuse!();
    let fs = Fs::with(Opts { extra: vec!["--memory-mib".into(), "120".into(), "--cache-mib".into(), "16".into()], ..Opts::default() });
    let dir = fs.path("big");
    std::fs::create_dir(&dir).unwrap();
    set_policy(&dir, Some("raw:1024x1024:u16"), None, Some(8));
    // 8 frames of 1 Mpixel: a window of n needs n x (2 + 10) MiB + the probe's 64 MiB lossless
    // (`memory::window_bytes`); 120 - 16 = 104 MiB are there, n = 3 fits, 4 does not.
    let want = write_frames(&dir, &raw_frames(1024, 1024, 8, 9), "raw");
    let paths: Vec<PathBuf> = want.keys().cloned().collect();
    wait_states(&paths, &["compressed"]);
    assert_files(&want);
    assert_eq!(fs.blobs().len(), 3, "split into windows of 3, 3 and 2 frames");
    assert!(fs.log_text().contains("a window too large for the memory budget is split"));
    let st = fs.stats(&dir);
    assert_eq!(st["memory_budget"].as_u64(), Some(120 << 20));
    assert!(st["memory_used"].as_u64().unwrap() <= 120 << 20, "{st}");
    // Every window was read to its end: no decoder is kept (a spent one gives its memory back),
    // what is held is the cache.
    wait_for("the spent decoders to give their memory back", STATE_TIMEOUT, || {
        let st = fs.stats(&dir);
        st["memory_used"] == st["cache_bytes"]
    });
}

/// Compression progresses while normal-priority work keeps every core busy: over
/// `--idle-backlog-mib` the engine encodes at nice 10, not under `SCHED_IDLE` (which a busy
/// core never serves), and `stats` counts such windows. (0 MiB: any staged file is over.)
#[test]
fn over_the_idle_backlog_busy_cores_do_not_stop_compression() {
    require_fuse!();
    let fs = Fs::with(Opts { extra: vec!["--idle-backlog-mib".into(), "0".into()], ..Opts::default() });
    let dir = fs.path("busy");
    std::fs::create_dir(&dir).unwrap();
    set_policy(&dir, Some("raw:1024x1024:u16"), None, Some(4));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let spinners: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let want = write_frames(&dir, &raw_frames(1024, 1024, 4, 31), "raw");
    let paths: Vec<PathBuf> = want.keys().cloned().collect();
    wait_states(&paths, &["compressed"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
    assert_files(&want);
    let st = fs.stats(&dir);
    assert!(st["encoded_not_idle_windows"].as_u64().unwrap_or(0) >= 1, "the window was not encoded at nice 10: {st}");
}

/// The decoded-frame cache borrows what the memory budget has idle: a reader going through more
/// frames than the cache's own share finds them decoded; a window that needs the memory later
/// takes it back (and is compressed, not kept waiting).
#[test]
fn the_cache_borrows_idle_memory_and_gives_it_back() {
    require_fuse!();
    let mut fs = Fs::with(Opts { extra: vec!["--memory-mib".into(), "64".into(), "--cache-mib".into(), "4".into()], ..Opts::default() });
    let (a, b) = (fs.path("a"), fs.path("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        // Windows of 4 frames of 0.5 Mpixel (1 MiB): 4 x (1 + 5) MiB + the probe's 32 MiB
        // (`memory::window_bytes`) of the 60 MiB left beside the cache's own 4.
        set_policy(d, Some("raw:512x1024:u16"), None, Some(4));
    }
    let want_a = write_frames(&a, &raw_frames(512, 1024, 16, 21), "raw");
    wait_states(&want_a.keys().cloned().collect::<Vec<_>>(), &["compressed"]);
    fs.remount(); // an empty cache
    assert_files(&want_a);
    let st = fs.stats(&a);
    let (cached, borrowed) = (st["cache_bytes"].as_u64().unwrap(), st["cache_borrowed"].as_u64().unwrap());
    assert!(cached >= 12 << 20 && borrowed == cached - (4 << 20), "16 MiB read through a 4 MiB cache: {st}");
    // A window of b/ needs 56 MiB: 60 - 12 borrowed do not hold it; the cache gives back.
    let want_b = write_frames(&b, &raw_frames(512, 1024, 4, 22), "raw");
    wait_states(&want_b.keys().cloned().collect::<Vec<_>>(), &["compressed"]);
    let st = fs.stats(&b);
    assert!(st["memory_used"].as_u64().unwrap() <= 64 << 20, "{st}");
    assert!(st["cache_borrowed"].as_u64().unwrap() <= 8 << 20, "the cache gave back what the window needed: {st}");
    assert_files(&want_b);
    assert_files(&want_a);
}

/// A window of TIFF files is charged for the pixels its files hold (u16: two bytes each, read
/// from the first file), not as if every byte were a pixel: with room for 4 u16 frames and their
/// probe it is one window; charged as bytes it would be split into one window per file.
#[test]
fn a_tiff_window_is_charged_for_its_pixel_type() {
    require_fuse!();
    let fs = Fs::with(Opts { extra: vec!["--memory-mib".into(), "64".into(), "--cache-mib".into(), "4".into()], ..Opts::default() });
    let dir = fs.path("tif");
    std::fs::create_dir(&dir).unwrap();
    // Format `auto` (the default): the pixel type is only in the files.
    set_policy(&dir, None, None, Some(4));
    // 4 u16 frames of 0.5 Mpixel: 4 x (1 + 5) MiB + the probe's 32 MiB = 56 of the 60 MiB room;
    // counted as bytes, 4 x (1 + 10) + 64 = 108, and one file alone 75: four windows.
    let want = write_frames(&dir, &tiff_files(512, 1024, &images(512, 1024, 4, 23), false), "tif");
    wait_states(&want.keys().cloned().collect::<Vec<_>>(), &["compressed"]);
    assert_eq!(fs.blobs().len(), 1, "one window of 4 TIFF frames");
    assert!(!fs.log_text().contains("a window too large for the memory budget is split"));
    assert_files(&want);
}

/// Frames above the slice size (1 Mpixel) are compressed by the engine into sliced blobs
/// (container version 7) and read back byte for byte, before and after a remount.
#[test]
fn large_frames_are_sliced_and_read_back() {
    require_fuse!();
    let mut fs = Fs::new();
    let d = fs.path("large");
    mkdir(&d);
    set_policy(&d, Some("raw:1100x1000:u16"), None, Some(4));
    let want = write_frames(&d, &raw_frames(1100, 1000, 5, 90), "raw");
    wait_compressed(&keys(&want));
    assert_files(&want);
    let blobs = fs.blobs();
    assert!(!blobs.is_empty());
    for b in &blobs {
        let bytes = std::fs::read(b).unwrap();
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 7, "{}: a sliced blob", b.display());
    }
    fs.remount();
    assert_files(&want);
    fs.assert_log_clean();
}

/// `--write-version 10` writes blobs that builds before row slices read (blob format version 10
/// or older), `--write-version 11` blobs that builds before the tree stage read and
/// `--write-version 12` blobs that builds before its exact levels read, where the default writes
/// version 13 for the same frames (u8 512x400 under `best`: the tree stage with exact levels),
/// and the files read back bit for bit every way; a version this build cannot write is refused
/// at mount, with the reason.
#[test]
fn write_version_keeps_blobs_readable_by_older_builds() {
    require_fuse!();
    use tezipfs::fixtures::{generate_raw, Scene, SequenceSpec};
    let frames = generate_raw(&SequenceSpec::of_scene(Scene::Detector, tezipfs::codec::DType::U8, 512, 400, 4, 31));
    let mut newest = Vec::new();
    for extra in [
        vec![],
        vec!["--write-version".to_string(), "12".to_string()],
        vec!["--write-version".to_string(), "11".to_string()],
        vec!["--write-version".to_string(), "10".to_string()],
    ] {
        let fs = Fs::with(Opts { extra: extra.clone(), ..Opts::default() });
        let dir = fs.path("frames");
        std::fs::create_dir(&dir).unwrap();
        set_policy(&dir, Some("raw:512x400:u8"), None, Some(4));
        // (`best`: the tree stage, or without it the adaptive stage, which `balanced` leaves for
        // context rANS on these frames.)
        xattr_set(&dir, "user.tezip.entropy", b"best").unwrap();
        let want = write_frames(&dir, &frames, "raw");
        wait_compressed(&want.keys().cloned().collect::<Vec<_>>());
        assert_files(&want);
        let versions: Vec<u16> = fs
            .blobs()
            .iter()
            .map(|p| {
                let b = std::fs::read(p).unwrap();
                assert_eq!(&b[..8], tezipfs::codec::container::MAGIC, "{}", p.display());
                u16::from_le_bytes([b[8], b[9]])
            })
            .collect();
        assert!(!versions.is_empty(), "{extra:?}: no blob written");
        newest.push(versions.into_iter().max().unwrap_or(0));
    }
    assert_eq!(newest[0], 13, "the default writes the tree stage with exact levels on these frames (the premise of the test)");
    assert_eq!(newest[1], 12, "--write-version 12: the tree stage, its version-12 levels");
    assert_eq!(newest[2], 11, "--write-version 11: row slices, no tree stage");
    assert!(newest[3] <= 10, "--write-version 10 wrote a version-{} blob", newest[3]);
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    for bad in ["9", "15", "x"] {
        let out = std::process::Command::new(BIN).args(["mount", "--store"]).arg(&store).arg(&mnt).args(["--write-version", bad]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--write-version"), "--write-version {bad}: {err}");
        assert!(!is_mounted(&mnt), "--write-version {bad} mounted");
    }
}

/// A directory's windows carry the choice (predictor, entropy stage) of the window before: the
/// second window of a directory is coded without a probe (`carried_windows` in `stats`), and
/// every file reads back exactly; a window under another bound chooses again.
#[test]
fn windows_of_a_directory_carry_their_choice() {
    require_fuse!();
    let fs = Fs::new();
    let d = raw_dir(&fs, "run", 4);
    let frames = raw_frames(W, H, 16, 130);
    let carried = || fs.stats(&fs.mnt)["carried_windows"].as_u64().expect("stats have carried_windows");
    let mut all = BTreeMap::new();
    for (k, batch) in frames[..12].chunks(4).enumerate() {
        for (i, f) in batch.iter().enumerate() {
            let p = d.join(frame_name(4 * k + i, "raw"));
            write_file(&p, f);
            all.insert(p, f.clone());
        }
        wait_compressed(&keys(&all));
        match k {
            0 => assert_eq!(carried(), 0, "the first window carried a choice"),
            1 => assert_eq!(carried(), 1, "the second window of the directory chose again"),
            _ => assert!(carried() >= 1),
        }
    }
    assert_files(&all);
    // Another bound: the next window chooses.
    let before = carried();
    set_policy(&d, None, Some("abs:2"), None);
    let lossy: Vec<PathBuf> = frames[12..]
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let p = d.join(frame_name(12 + i, "raw"));
            write_file(&p, f);
            p
        })
        .collect();
    wait_compressed(&lossy);
    assert_eq!(carried(), before, "a window under abs:2 carried the choice made under lossless");
    assert_files(&all);
    fs.assert_log_clean();
}

/// `--choose-every-window`: no window carries its directory's choice.
#[test]
fn choose_every_window_carries_nothing() {
    require_fuse!();
    let fs = Fs::with(Opts { extra: vec!["--choose-every-window".into()], ..Opts::default() });
    let d = raw_dir(&fs, "run", 4);
    let frames = raw_frames(W, H, 8, 130);
    let mut all = BTreeMap::new();
    for (k, batch) in frames.chunks(4).enumerate() {
        for (i, f) in batch.iter().enumerate() {
            let p = d.join(frame_name(4 * k + i, "raw"));
            write_file(&p, f);
            all.insert(p, f.clone());
        }
        wait_compressed(&keys(&all));
    }
    assert_eq!(fs.stats(&fs.mnt)["carried_windows"].as_u64(), Some(0));
    assert_files(&all);
    fs.assert_log_clean();
}
