//! The stable fuzz runner (the long, coverage-guided runs are `cargo +nightly fuzz run NAME` in
//! `fuzz/`): every target of `tezipfs::fuzz` gets its committed corpus (`fuzz/corpus/<target>/`)
//! and a fixed number of seeded mutations of it, under two caps per input: memory (a counting
//! global allocator: the most bytes live at once while the input runs) and time. A panic, a cap
//! exceeded or a hang is a failure that names the input and saves it under
//! `target/fuzz-stable/` (add it to the corpus once fixed).
//!
//! Beside it, the untrusted lengths the hardening refuses, each checked to be refused with a
//! clear error before it allocates (the same allocator measures it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tezipfs::model::file::Rng;

// ---- the counting allocator ---------------------------------------------------------------------

/// Counts this thread's live bytes and their peak while [`measure`] runs; refuses (returns null,
/// which aborts the process with a message) any single request above [`HARD_CAP`] while it runs,
/// so that a length of 2^40 shows up as a failure, not as an out-of-memory kill.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The most bytes one input may have live at once.
const ALLOC_CAP: isize = 64 << 20;
/// A single request above this while an input runs aborts the test binary.
const HARD_CAP: usize = 1 << 30;
/// The longest one input may take.
const TIME_CAP: Duration = Duration::from_secs(3);

fn note(delta: isize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

fn too_big(size: usize) -> bool {
    size > HARD_CAP && ARMED.try_with(|a| a.get()).unwrap_or(false)
}

/// An allocation of `size` bytes made by `f`, refused above [`HARD_CAP`] while an input runs.
fn counted(size: usize, f: impl FnOnce() -> *mut u8) -> *mut u8 {
    if too_big(size) {
        refuse(size);
        return std::ptr::null_mut();
    }
    note(size as isize);
    f()
}

// SAFETY: every call is forwarded to `System` with the same layout and pointer; the counting
// only reads and writes thread-local cells of plain integers (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout (the caller upholds `alloc`'s contract).
        counted(layout.size(), || unsafe { System.alloc(layout) })
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        counted(layout.size(), || unsafe { System.alloc_zeroed(layout) })
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout` (through this allocator).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if too_big(new_size) {
            refuse(new_size);
            return std::ptr::null_mut();
        }
        note(new_size as isize - layout.size() as isize);
        // SAFETY: `ptr` and `layout` come from this allocator; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Says on stderr, without allocating, that an input asked for more than [`HARD_CAP`].
fn refuse(size: usize) {
    let mut msg = *b"fuzz: one allocation of more than 1 GiB asked for (0x0000000000000000 bytes)\n";
    let digits = b"0123456789abcdef";
    let at = msg.len() - 24; // the 16 zeros before " bytes)\n"
    for i in 0..16 {
        msg[at + i] = digits[(size >> (4 * (15 - i))) & 15];
    }
    // SAFETY: writes a stack buffer of known length to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`, returning its result and the most bytes it had live at once (on this thread).
fn measure<T>(f: impl FnOnce() -> T) -> (T, isize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, PEAK.with(|p| p.get()))
}

// ---- mutations -----------------------------------------------------------------------------------

/// Values that break length and offset arithmetic, and tokens that break text parsers.
const U32S: [u32; 9] = [0, 1, 0xff, 0xffff, 1 << 20, 1 << 28, 0x7fff_ffff, 0x8000_0000, u32::MAX];
const U64S: [u64; 7] = [0, 1, 1 << 32, 1 << 40, 1 << 62, i64::MAX as u64, u64::MAX];
const TOKENS: [&str; 20] = [
    "inf",
    "nan",
    "-1",
    "0",
    "18446744073709551616",
    "4294967295",
    "1e308",
    "[",
    "]",
    "\"",
    "=",
    "\n",
    "x",
    ":",
    "raw:",
    "skip=",
    "abs:",
    "rel:",
    "[mount]",
    "[[a]]",
];

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.range(1, 4) {
        // Half the edits land in the first 256 bytes, where the headers are.
        let span = if rng.chance(0.5) { b.len().min(256) } else { b.len() };
        let at = |rng: &mut Rng| if span == 0 { 0 } else { rng.range(0, span as i64 - 1) as usize };
        match rng.range(0, 8) {
            0 if !b.is_empty() => {
                let i = at(rng);
                b[i] ^= 1 << rng.range(0, 7);
            }
            1 if !b.is_empty() => {
                let i = at(rng);
                b[i] = [0, 1, 0x7f, 0x80, 0xff][rng.range(0, 4) as usize];
            }
            2 if b.len() >= 4 => {
                let i = at(rng).min(b.len() - 4);
                b[i..i + 4].copy_from_slice(&U32S[rng.range(0, U32S.len() as i64 - 1) as usize].to_le_bytes());
            }
            3 if b.len() >= 8 => {
                let i = at(rng).min(b.len() - 8);
                b[i..i + 8].copy_from_slice(&U64S[rng.range(0, U64S.len() as i64 - 1) as usize].to_le_bytes());
            }
            4 => b.truncate(rng.range(0, b.len() as i64) as usize),
            5 => {
                let i = at(rng);
                let junk: Vec<u8> = (0..rng.range(1, 16)).map(|_| rng.next_u64() as u8).collect();
                b.splice(i..i, junk);
            }
            6 if !b.is_empty() => {
                let i = at(rng);
                let n = rng.range(1, 32) as usize;
                b.drain(i..(i + n).min(b.len()));
            }
            7 if !other.is_empty() => {
                let (s, n) = (rng.range(0, other.len() as i64 - 1) as usize, rng.range(1, 64) as usize);
                let chunk = &other[s..(s + n).min(other.len())];
                let i = at(rng);
                b.splice(i..i, chunk.iter().copied());
            }
            _ => {
                let i = at(rng);
                let t = TOKENS[rng.range(0, TOKENS.len() as i64 - 1) as usize];
                b.splice(i..i, t.bytes());
            }
        }
    }
    b
}

// ---- the runner ----------------------------------------------------------------------------------

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("corpus entry").path();
            (p.file_name().expect("a file name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read a corpus file"))
        })
        .collect();
    files.sort();
    files
}

struct Stats {
    inputs: usize,
    peak: isize,
    slowest: Duration,
    failures: Vec<String>,
}

/// One input through `target`: a failure (panic, memory or time cap) is recorded and the input
/// saved.
fn run_one(target: &str, f: fn(&[u8]), label: &str, data: &[u8], stats: &mut Stats) {
    let start = Instant::now();
    let (result, peak) = measure(|| catch_unwind(AssertUnwindSafe(|| f(data))));
    let took = start.elapsed();
    stats.inputs += 1;
    stats.peak = stats.peak.max(peak);
    stats.slowest = stats.slowest.max(took);
    let why = match result {
        Err(_) => Some("panicked".to_string()),
        Ok(()) if peak > ALLOC_CAP => Some(format!("had {} MiB live (cap {} MiB)", peak >> 20, ALLOC_CAP >> 20)),
        Ok(()) if took > TIME_CAP => Some(format!("took {took:?} (cap {TIME_CAP:?})")),
        Ok(()) => None,
    };
    if let Some(why) = why {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-stable");
        let _ = std::fs::create_dir_all(&dir);
        let saved: PathBuf = dir.join(format!("{target}-{}", label.replace('/', "_")));
        let _ = std::fs::write(&saved, data);
        stats.failures.push(format!("{target} {label}: {why} (input saved as {})", saved.display()));
    }
}

/// The corpus of `target`, then `mutations` seeded mutations of it.
fn fuzz(target: &str, mutations: usize) {
    let (_, f) = *tezipfs::fuzz::TARGETS.iter().find(|(n, _)| *n == target).expect("a target");
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "{target}: empty corpus");
    let mut stats = Stats { inputs: 0, peak: 0, slowest: Duration::ZERO, failures: Vec::new() };
    let start = Instant::now();
    for (name, data) in &seeds {
        run_one(target, f, name, data, &mut stats);
    }
    let mut rng = Rng(0x7e21_f5a3 ^ target.len() as u64);
    for k in 0..mutations {
        let (name, base) = &seeds[k % seeds.len()];
        let other = &seeds[rng.range(0, seeds.len() as i64 - 1) as usize].1;
        let data = mutate(&mut rng, base, other);
        run_one(target, f, &format!("{name}-mutation-{k}"), &data, &mut stats);
    }
    eprintln!(
        "fuzz {target}: {} inputs ({} corpus, {mutations} mutations) in {:.2?}, slowest {:.2?}, peak {:.1} MiB live",
        stats.inputs,
        seeds.len(),
        start.elapsed(),
        stats.slowest,
        stats.peak as f64 / (1 << 20) as f64
    );
    assert!(stats.failures.is_empty(), "{} failures:\n{}", stats.failures.len(), stats.failures.join("\n"));
}

#[test]
fn fuzz_blob() {
    fuzz("blob", 16000);
}

#[test]
fn fuzz_tiff() {
    fuzz("tiff", 50000);
}

#[test]
fn fuzz_archive() {
    fuzz("archive", 10000);
}

#[test]
fn fuzz_model() {
    fuzz("model", 20000);
}

#[test]
fn fuzz_policy() {
    fuzz("policy", 50000);
}

#[test]
fn fuzz_config() {
    fuzz("config", 50000);
}

#[test]
fn every_target_has_a_corpus_and_a_cargo_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in tezipfs::fuzz::TARGETS {
        assert!(!corpus(name).is_empty(), "fuzz/corpus/{name} is empty");
        let src = root.join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        assert!(text.contains(&format!("tezipfs::fuzz::{name}(")), "{} does not call tezipfs::fuzz::{name}", src.display());
    }
}

/// The mutator is deterministic (a failure seen once is seen again) and changes its input.
#[test]
fn mutations_are_seeded() {
    let base = b"TZIPBLOB and some more bytes of a header and a payload".to_vec();
    let run = |seed| {
        let mut rng = Rng(seed);
        (0..50).map(|_| mutate(&mut rng, &base, b"other")).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    assert!(run(1).iter().filter(|m| **m != base).count() > 40);
}

// ---- untrusted lengths, refused before they allocate ------------------------------------------------

use tezipfs::codec::container::{reseal, BlobError};
use tezipfs::codec::{analyze, Analysis, Decoder, FormatSpec};

/// What refusing a length may allocate: its error message and the parser's small state.
const SMALL: isize = 1 << 20;

fn seed(target: &str, name: &str) -> Vec<u8> {
    corpus(target).into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("fuzz/corpus/{target}/{name}")).1
}

#[test]
fn a_blob_claiming_2_40_pixels_is_refused_before_allocating() {
    let blob = seed("blob", "seed-u16-none.blob");
    // Header: dtype (byte 16), width (17..21), height (21..25).
    for (w, h) in [(1u32 << 20, 1u32 << 20), (1 << 14, (1 << 14) + 1), (u32::MAX, u32::MAX)] {
        let mut b = blob.clone();
        b[17..21].copy_from_slice(&w.to_le_bytes());
        b[21..25].copy_from_slice(&h.to_le_bytes());
        let b = reseal(&b).expect("a blob");
        let (r, peak) = measure(|| Decoder::new(&b).map(|_| ()));
        match r {
            Err(BlobError::Malformed(why)) => assert!(why.contains("exceeds the limit of 2^28 pixels"), "{w}x{h}: {why}"),
            other => panic!("{w}x{h}: {other:?}"),
        }
        assert!(peak < SMALL, "{w}x{h}: {peak} bytes live while refusing");
    }
    // The limit itself is accepted by the parser (it then fails on the pixel ranges of this blob).
    let mut b = blob.clone();
    b[17..21].copy_from_slice(&(1u32 << 14).to_le_bytes());
    b[21..25].copy_from_slice(&(1u32 << 14).to_le_bytes());
    let e = Decoder::new(&reseal(&b).expect("a blob")).err().expect("the ranges no longer hold the frame");
    assert!(e.to_string().contains("pixel ranges hold"), "{e}");
}

#[test]
fn a_section_claiming_more_than_it_can_hold_is_refused_before_allocating() {
    let blob = seed("blob", "seed-opaque.blob");
    // No frame parameters (byte 16 is 0), entry count (17..21), then the entries: kind (1 byte),
    // original length (8), CRC (4), section (20). The second is compressed.
    let at = 21 + 33;
    assert_eq!((blob[16], blob[at]), (0, 1), "an opaque blob whose second entry is compressed");
    let real = u64::from_le_bytes(blob[at + 1..at + 9].try_into().unwrap());
    for claim in [1u64 << 40, u64::MAX, real + 1] {
        let mut b = blob.clone();
        b[at + 1..at + 9].copy_from_slice(&claim.to_le_bytes());
        let b = reseal(&b).expect("a blob");
        let (r, peak) = measure(|| Decoder::new(&b).expect("the header parses").decode(1, |_, _| {}).map(|_| ()));
        let why = r.expect_err("refused").to_string();
        assert!(why.contains("cannot hold") || why.contains("expected"), "claim {claim}: {why}");
        assert!(peak < SMALL, "claim {claim}: {peak} bytes live while refusing");
    }
}

#[test]
fn archive_lengths_are_refused_before_allocating() {
    let pre = |version: u16| {
        let mut a = b"TZIPARCH".to_vec();
        a.extend_from_slice(&version.to_le_bytes());
        a.extend_from_slice(&[0, 0]);
        a
    };
    // 2^24 names claimed, none there; then one more than the reader takes.
    for (n, want) in [(1u32 << 24, "truncated"), ((1 << 24) + 1, "CRC")] {
        let mut a = pre(1);
        a.extend_from_slice(&n.to_le_bytes());
        let (r, peak) = measure(|| tezipfs::archive::Reader::new(&a[..]).expect("an archive").next_record().map(|_| ()));
        let why = r.expect_err("refused").to_string();
        assert!(why.contains(want), "{n} names: {why}");
        assert!(peak < SMALL, "{n} names: {peak} bytes live while refusing");
    }
    // A model of 1 GiB claimed in a short archive (right length checksum), and one over the limit.
    for (len, want) in [(1u64 << 30, "truncated"), ((1 << 30) + 1, "bytes claimed")] {
        let mut a = pre(2);
        a.push(1);
        a.extend_from_slice(&len.to_le_bytes());
        a.extend_from_slice(&crc32c::crc32c(&len.to_le_bytes()).to_le_bytes());
        a.extend_from_slice(&[0; 100]);
        let (r, peak) = measure(|| tezipfs::archive::Reader::new(&a[..]).expect("an archive").next_record().map(|_| ()));
        let why = r.expect_err("refused").to_string();
        assert!(why.contains(want), "model of {len} bytes: {why}");
        assert!(peak < SMALL, "model of {len} bytes: {peak} bytes live while refusing");
    }
}

#[test]
fn tiff_lengths_are_refused_before_allocating() {
    let t = seed("tiff", "seed-u8-le-1.tif");
    let ifd = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
    // An IFD of 65535 entries in a short file.
    let mut b = t.clone();
    b[ifd..ifd + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    let (r, peak) = measure(|| tezipfs::codec::format::tiff::parse(&b));
    assert!(r.expect_err("refused").contains("IFD of 65535 entries"));
    assert!(peak < SMALL, "{peak} bytes live while refusing");
    // A frame of 2^20 x 2^20 pixels: refused by its geometry (stored whole, not coded).
    let mut b = t.clone();
    for e in 0..u16::from_le_bytes([t[ifd], t[ifd + 1]]) as usize {
        let at = ifd + 2 + 12 * e;
        if matches!(u16::from_le_bytes([t[at], t[at + 1]]), 256 | 257) {
            b[at + 8..at + 12].copy_from_slice(&(1u32 << 20).to_le_bytes());
        }
    }
    match analyze(&b, &FormatSpec::Tiff) {
        Analysis::Opaque(why) => assert!(why.contains("exceeds the limit of 2^28 pixels"), "{why}"),
        Analysis::Frame(l) => panic!("a 2^40-pixel frame taken: {l:?}"),
    }
}

#[test]
fn settings_and_config_refuse_what_does_not_fit() {
    use tezipfs::policy::{ConfigFile, Policy, FORMAT};
    for (v, want) in
        [("raw:65536x65536:u16", "exceeds the limit"), ("raw:4294967295x4294967295:u32", "exceeds the limit"), ("raw:4x4:u8:skip=1099511627776", "skip")]
    {
        let e = Policy::validate(FORMAT, v.as_bytes()).expect_err(v);
        assert!(e.contains(want), "{v}: {e}");
    }
    assert!(Policy::validate(FORMAT, b"raw:16384x16384:u32").is_ok(), "the limit itself is a frame");
    for (text, key) in [
        ("[mount]\nauto_train_minutes = inf\n", "auto_train_minutes"),
        ("[mount]\nauto_train_minutes = nan\n", "auto_train_minutes"),
        ("[mount]\nauto_train_minutes = -1.0\n", "auto_train_minutes"),
        ("[mount]\nthreads = 0\n", "threads"),
        ("[mount]\nauto_train_threads = 100000\n", "auto_train_threads"),
        ("[mount]\ncache_mib = 17592186044416\n", "cache_mib"),
        ("[mount]\nindex_cache_mib = 17592186044416\n", "index_cache_mib"),
        ("[mount]\nstaging_budget_mib = 18446744073709551615\n", "staging_budget_mib"),
        ("[mount]\ndevice = \"tpu\"\n", "device"),
        ("[mount]\nwrite_version = 9\n", "write_version"),
        ("[mount]\nwrite_version = 15\n", "write_version"),
        ("[defaults]\nformat = \"raw:65536x65536:u16\"\n", "format"),
    ] {
        let e = ConfigFile::parse(text).expect_err(text);
        assert!(e.contains(key), "{text:?}: {e}");
    }
    assert!(ConfigFile::parse("[mount]\ncache_mib = 17592186044415\nauto_train_minutes = 0.0\n").is_ok(), "the largest that fit");
    assert!(ConfigFile::parse("[mount]\nwrite_version = 10\n").is_ok(), "the version before row slices");
    assert!(ConfigFile::parse("[mount]\nwrite_version = 11\n").is_ok(), "the version before the tree stage");
    assert!(ConfigFile::parse("[mount]\nwrite_version = 12\n").is_ok(), "the version before the tree stage under a bound and exact levels");
    assert!(ConfigFile::parse("[mount]\nwrite_version = 13\n").is_ok(), "the version before compressed headers");
    assert!(ConfigFile::parse("[mount]\nchoose_every_window = true\n").is_ok());
    assert!(ConfigFile::parse("[mount]\nindex_cache_mib = 64\n").is_ok());
    assert!(ConfigFile::parse("[mount]\nchoose_every_window = 3\n").is_err(), "a number for a switch");
}
