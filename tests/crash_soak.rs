//! The kill -9 crash soak (`scripts/crash-soak N` runs it with `TEZIPFS_SOAK_CYCLES=N`; the
//! test command runs 4 cycles).
//!
//! One store, kept across cycles. Each cycle: mount; a worker thread runs a random mix of
//! ingest (write + close; write + fsync with the descriptor left open), rehydration (rewrite or
//! append to files the engine may have compressed), deletion and renames (each followed by an
//! fsync of the directory, which makes it durable), while the engine compresses in the
//! background (quiet period 200 ms); the daemon is killed with SIGKILL at a random moment;
//! `tezipfs fsck --repair` runs on the crashed store and may only find what the design leaves
//! behind after a crash (orphan blobs and staging files, tmp/ leftovers, a blob counter behind an
//! orphan blob, inodes unlinked while
//! open); the store is mounted again and every file whose close or fsync (or durable rename)
//! returned before the kill must read back with the SHA-256 recorded then, and every durably
//! deleted file must stay deleted.

mod common;

use common::{set_policy, Fs, Opts, BIN};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// What the soak may rely on after a crash.
#[derive(Default)]
struct Manifest {
    /// Path (relative to the mount) -> (SHA-256, length) of content acknowledged by a close,
    /// an fsync or a durable rename.
    acked: BTreeMap<String, ([u8; 32], u64)>,
    /// Paths durably deleted (unlink + fsync of the directory) and not created again.
    deleted: BTreeSet<String>,
}

const DIRS: [&str; 3] = ["frames", "frames8", "misc"];

/// Content for a new or rewritten file of `dir`.
fn content(dir: &str, pool: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    if dir == "misc" {
        let n = 1000 + rng.below(20_000) as usize;
        let mut v: Vec<u8> = (0..n).map(|i| b"abcdefgh ijk\n"[(i + rng.below(3) as usize) % 13]).collect();
        v[0] = rng.next() as u8;
        v
    } else {
        let mut f = pool[rng.below(pool.len() as u64) as usize].clone();
        // Vary a few pixels so files differ.
        for _ in 0..4 {
            let i = rng.below(f.len() as u64) as usize;
            f[i] = rng.next() as u8;
        }
        f
    }
}

/// One worker run: random operations until an operation fails (the daemon was killed) or `stop`.
fn worker(mnt: PathBuf, manifest: Arc<Mutex<Manifest>>, pool: Arc<Vec<Vec<u8>>>, seed: u64, stop: Arc<AtomicBool>, next_name: Arc<Mutex<u64>>) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut open_fsynced: Vec<std::fs::File> = Vec::new();
    let mut ops = 0u64;
    let fresh = |dir: &str| -> String {
        let mut n = next_name.lock().unwrap();
        *n += 1;
        if dir == "misc" {
            format!("{dir}/note_{:06}.txt", *n)
        } else {
            format!("{dir}/frame_{:06}.raw", *n)
        }
    };
    let fsync_dir = |p: &Path| -> std::io::Result<()> { std::fs::File::open(p)?.sync_all() };
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        let r: std::io::Result<()> = (|| {
            let dir = DIRS[rng.below(3) as usize];
            let live: Vec<String> = manifest.lock().unwrap().acked.keys().filter(|k| k.starts_with(dir)).cloned().collect();
            let crowded = manifest.lock().unwrap().acked.len() > 120;
            match rng.below(100) {
                // Ingest: create, write (in pieces), close.
                0..=39 => {
                    let rel = fresh(dir);
                    let bytes = content(dir, &pool, &mut rng);
                    manifest.lock().unwrap().deleted.remove(&rel);
                    let mut f = std::fs::File::create(mnt.join(&rel))?;
                    for chunk in bytes.chunks(4096) {
                        f.write_all(chunk)?;
                    }
                    // close(2) reports the daemon's flush: drop() would hide its error.
                    close(f)?;
                    manifest.lock().unwrap().acked.insert(rel, (sha(&bytes), bytes.len() as u64));
                }
                // Ingest with fsync and no close (closed some time later).
                40..=49 => {
                    let rel = fresh(dir);
                    let bytes = content(dir, &pool, &mut rng);
                    manifest.lock().unwrap().deleted.remove(&rel);
                    let mut f = std::fs::File::create(mnt.join(&rel))?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                    manifest.lock().unwrap().acked.insert(rel, (sha(&bytes), bytes.len() as u64));
                    open_fsynced.push(f);
                    if open_fsynced.len() > 3 {
                        close(open_fsynced.remove(0))?;
                    }
                }
                // Rehydration: rewrite a file (maybe compressed by now) or append to it.
                50..=64 if !live.is_empty() => {
                    let rel = live[rng.below(live.len() as u64) as usize].clone();
                    let p = mnt.join(&rel);
                    if rng.below(2) == 0 {
                        let bytes = content(dir, &pool, &mut rng);
                        manifest.lock().unwrap().acked.remove(&rel);
                        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&p)?;
                        f.write_all(&bytes)?;
                        close(f)?;
                        manifest.lock().unwrap().acked.insert(rel, (sha(&bytes), bytes.len() as u64));
                    } else {
                        let old = std::fs::read(&p)?;
                        let extra: Vec<u8> = (0..1 + rng.below(3000)).map(|_| rng.next() as u8).collect();
                        manifest.lock().unwrap().acked.remove(&rel);
                        let mut f = std::fs::OpenOptions::new().append(true).open(&p)?;
                        f.write_all(&extra)?;
                        close(f)?;
                        let mut all = old;
                        all.extend_from_slice(&extra);
                        manifest.lock().unwrap().acked.insert(rel, (sha(&all), all.len() as u64));
                    }
                }
                // Deletion, made durable.
                65..=79 if !live.is_empty() && (crowded || rng.below(2) == 0) => {
                    let rel = live[rng.below(live.len() as u64) as usize].clone();
                    manifest.lock().unwrap().acked.remove(&rel);
                    std::fs::remove_file(mnt.join(&rel))?;
                    fsync_dir(&mnt.join(dir))?;
                    manifest.lock().unwrap().deleted.insert(rel);
                }
                // Rename within the directory, made durable.
                80..=87 if !live.is_empty() => {
                    let rel = live[rng.below(live.len() as u64) as usize].clone();
                    let to = fresh(dir);
                    let entry = manifest.lock().unwrap().acked.remove(&rel);
                    manifest.lock().unwrap().deleted.remove(&to);
                    std::fs::rename(mnt.join(&rel), mnt.join(&to))?;
                    fsync_dir(&mnt.join(dir))?;
                    let mut m = manifest.lock().unwrap();
                    if let Some(e) = entry {
                        m.acked.insert(to, e);
                    }
                    m.deleted.insert(rel);
                }
                // Let the engine work (quiet period 200 ms).
                _ => std::thread::sleep(Duration::from_millis(rng.below(300))),
            }
            Ok(())
        })();
        if r.is_err() {
            break; // the daemon is gone
        }
    }
    // Descriptors left open: closing them fails on a dead mount, which is expected.
    for f in open_fsynced {
        let _ = close(f);
    }
    ops
}

/// close(2) with its error (the daemon's flush of the written bytes).
fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::unix::io::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: we own `fd` (taken from the File, which no longer closes it).
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    cycles: u64,
    ops: u64,
    files_checked: u64,
    bytes_checked: u64,
    bytes_lost: u64,
    files_lost: Vec<String>,
    resurrected: Vec<String>,
    failed_to_open: u64,
    fsck_clean: u64,
    fsck_repaired: u64,
    fsck_damaged: u64,
    /// Cycles whose store a second fsck (after the repair) found clean.
    fsck_clean_after: u64,
    /// Problems repaired after crashes, by code.
    repaired_kinds: BTreeMap<String, u64>,
    unexpected: Vec<String>,
}

fn fsck(store: &Path, repair: bool) -> (i32, serde_json::Value) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("fsck").arg(store).arg("--json");
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.env("NO_COLOR", "1").output().expect("run tezipfs fsck");
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
}

#[test]
fn crash_soak() {
    require_fuse!();
    let cycles: u64 = std::env::var("TEZIPFS_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let seed: u64 = std::env::var("TEZIPFS_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    println!("crash-soak: {cycles} cycles, seed {seed} (TEZIPFS_SOAK_SEED={seed} repeats it)");
    let t0 = Instant::now();
    let mut rng = Rng(seed | 1);
    let pool = Arc::new(tezipfs::fixtures::generate_raw(&tezipfs::fixtures::SequenceSpec::detector_u16(64, 48, 32, seed % 1000)));
    let mut fs = Fs::with(Opts { quiet_ms: 200, tail_idle_ms: 800, ..Opts::default() });
    for d in DIRS {
        std::fs::create_dir(fs.path(d)).unwrap();
    }
    set_policy(&fs.path("frames"), Some("raw:64x48:u16"), None, Some(4));
    set_policy(&fs.path("frames8"), Some("raw:64x48:u16"), Some("lossless"), Some(8));
    std::fs::File::open(&fs.mnt).and_then(|d| d.sync_all()).unwrap();
    let manifest = Arc::new(Mutex::new(Manifest::default()));
    let next_name = Arc::new(Mutex::new(0u64));
    let mut tot = Totals::default();
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let w = {
            let (mnt, m, p, s, n) = (fs.mnt.clone(), manifest.clone(), pool.clone(), stop.clone(), next_name.clone());
            let wseed = rng.next();
            std::thread::spawn(move || worker(mnt, m, p, wseed, s, n))
        };
        // Kill at a random moment: during ingest, a compression, a rehydration, a deletion.
        std::thread::sleep(Duration::from_millis(150 + rng.below(2500)));
        fs.kill9_keep_mount();
        stop.store(true, Ordering::Relaxed);
        tot.ops += w.join().expect("worker");
        fs.kill9(); // the dead mount goes
        tot.cycles += 1;

        // fsck on the crashed store: only what a crash may leave.
        let (code, r) = fsck(&fs.store, true);
        match code {
            0 => tot.fsck_clean += 1,
            1 => tot.fsck_repaired += 1,
            _ => tot.fsck_damaged += 1,
        }
        for p in r["problems"].as_array().into_iter().flatten() {
            let c = p["code"].as_str().unwrap_or("?").to_string();
            if p["after_crash"] == true {
                *tot.repaired_kinds.entry(c).or_default() += 1;
            } else {
                tot.unexpected.push(format!("cycle {cycle}: {c}: {} {:?}", p["detail"], p["paths"]));
            }
        }
        if code > 1 {
            tot.unexpected.push(format!("cycle {cycle}: fsck exit {code}: {r:#}"));
        }
        // Every cycle ends with a clean store: a repair leaves nothing for a second fsck.
        let (again, r2) = if code == 0 { (0, r) } else { fsck(&fs.store, false) };
        if again == 0 {
            tot.fsck_clean_after += 1;
        } else {
            tot.unexpected.push(format!("cycle {cycle}: fsck after the repair: exit {again}: {r2:#}"));
        }

        // Remount and check every acknowledged file.
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fs.start()));
        if started.is_err() {
            tot.failed_to_open += 1;
            break;
        }
        let m = manifest.lock().unwrap();
        for (rel, (want, len)) in &m.acked {
            tot.files_checked += 1;
            tot.bytes_checked += len;
            match std::fs::read(fs.mnt.join(rel)) {
                Ok(b) if sha(&b) == *want => {}
                Ok(b) => {
                    tot.bytes_lost += len;
                    tot.files_lost.push(format!("cycle {cycle}: {rel}: {} bytes read, {len} acknowledged, SHA-256 differs", b.len()));
                }
                Err(e) => {
                    tot.bytes_lost += len;
                    tot.files_lost.push(format!("cycle {cycle}: {rel}: {e}"));
                }
            }
        }
        for rel in &m.deleted {
            if fs.mnt.join(rel).exists() {
                tot.resurrected.push(format!("cycle {cycle}: {rel}"));
            }
        }
        drop(m);
        if !tot.files_lost.is_empty() {
            break; // keep the store as it is for a look
        }
        eprintln!("cycle {}/{cycles}: fsck exit {code}, {} files acknowledged", cycle + 1, manifest.lock().unwrap().acked.len());
    }
    // At the end: a clean unmount leaves a clean store.
    let st = fs.stop();
    let (final_code, final_report) = fsck(&fs.store, false);
    let mut kinds: Vec<String> = tot.repaired_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if kinds.is_empty() {
        kinds.push("none".into());
    }
    println!("crash-soak: cycles {}, operations {}, seconds {:.0}", tot.cycles, tot.ops, t0.elapsed().as_secs_f64());
    println!(
        "crash-soak: files checked {} ({:.1} MB), bytes lost {}, deleted files back {}",
        tot.files_checked,
        tot.bytes_checked as f64 / 1e6,
        tot.bytes_lost,
        tot.resurrected.len()
    );
    println!("crash-soak: stores failed to open {}", tot.failed_to_open);
    println!(
        "crash-soak: fsck after each kill: clean {}, repaired {} (only crash leftovers: {}), damaged {}, unexpected problems {}",
        tot.fsck_clean,
        tot.fsck_repaired,
        kinds.join(", "),
        tot.fsck_damaged,
        tot.unexpected.len()
    );
    println!("crash-soak: fsck clean after each kill (after the repair where one was needed): {} of {}", tot.fsck_clean_after, tot.cycles);
    println!("crash-soak: fsck after the last clean unmount: exit {final_code}");
    for l in tot.files_lost.iter().chain(&tot.resurrected).chain(&tot.unexpected) {
        println!("  {l}");
    }
    assert!(st.is_some_and(|s| s.success()), "the last unmount failed:\n{}", fs.log_text());
    assert_eq!(tot.failed_to_open, 0, "a store failed to open:\n{}", fs.log_text());
    assert_eq!(tot.bytes_lost, 0, "acknowledged bytes lost: {:#?}\nstore kept at {}", tot.files_lost, fs.store.display());
    assert!(tot.resurrected.is_empty(), "durably deleted files came back: {:?}", tot.resurrected);
    assert!(tot.unexpected.is_empty(), "fsck found problems a crash must not leave: {:#?}", tot.unexpected);
    assert_eq!(final_code, 0, "fsck after a clean unmount: {final_report:#}");
}
