//! What a decoder holds is what the mount charges for it (`Decoder::memory_bytes`, counted
//! against `--memory-mib` by `vfs::decoders`): the peak of the heap while a decoder is made and
//! decodes a window, in order, on one and two threads, measured by a counting allocator, stays
//! within the charge, and the charge is not more than twice the peak (memory the budget holds back
//! for nothing). Windows of every kind the decoder treats differently: u8, u16, f32, unsliced
//! and sliced (container version 7), lossless and bounded, with motion and without.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use tezipfs::codec::predict::{Model, ModelHandle, OneModel};
use tezipfs::codec::{encode_window, Bound, DType, Decoder, FormatSpec, Options, PredictorChoice, RawSpec};
use tezipfs::fixtures::{generate_images, SequenceSpec};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's layout unchanged; the
// counters are plain atomics touched after the allocation succeeded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as the new block allocated before the old one is freed (what realloc may do).
            let now = LIVE.fetch_add(new_size, Ordering::SeqCst) + new_size;
            PEAK.fetch_max(now, Ordering::SeqCst);
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counters are global: one test at a time (each holds this through all it does, since
/// another test's allocations would count in its peak).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn raw(width: u32, height: u32, dtype: DType) -> FormatSpec {
    FormatSpec::Raw(RawSpec { width, height, dtype, skip: 0 })
}

fn frames(width: u32, height: u32, n: usize, dtype: DType) -> Vec<Vec<u8>> {
    let spec = SequenceSpec { dtype, ..SequenceSpec::detector_u16(width, height, n, 5) };
    generate_images(&spec)
        .iter()
        .map(|img| {
            let mut out = Vec::new();
            dtype.encode_pixels(img, false, &mut out);
            out
        })
        .collect()
}

/// Peak heap bytes above what was live before, while a decoder of `blob` is made and decodes
/// every entry in order on `threads` (each decoded file dropped at once, as the mount hands it
/// to its cache, which has its own budget); and the decoder's charge.
fn measure(blob: &[u8], threads: usize) -> (usize, u64) {
    let shared: std::sync::Arc<[u8]> = blob.into();
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let mut dec = Decoder::from_shared(shared).expect("decoder");
    dec.set_threads(threads);
    let charge = dec.memory_bytes();
    for i in 0..dec.len() {
        let out = dec.decode(i, |_, _| {}).expect("decode");
        drop(out);
    }
    // What the mount's kept decoders rely on to drop a spent decoder at once.
    assert_eq!(dec.position(), dec.frame_count(), "a decoder that decoded every frame is at the end of its chain");
    drop(dec);
    (PEAK.load(Ordering::SeqCst) - base, charge)
}

/// A peak above its charge (the budget would not hold), or a charge above twice the peak (the
/// budget would hold back memory for nothing).
fn verdict(what: &str, peak: usize, charge: u64) -> Option<String> {
    if peak as u64 > charge {
        return Some(format!("{what}: the peak {peak} B is more than the charge {charge} B"));
    }
    (charge > 2 * peak as u64).then(|| format!("{what}: the charge {charge} B is more than twice the peak {peak} B"))
}

/// Every case's figures are printed; the failures are returned (all cases run before the test fails).
fn check(what: &str, width: u32, height: u32, dtype: DType, bound: Bound, slice_pixels: usize) -> Vec<String> {
    let mut failures = Vec::new();
    let files = frames(width, height, 4, dtype);
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let opts = Options { format: raw(width, height, dtype), bound, slice_pixels, threads: 1, ..Options::default() };
    let enc = encode_window(&refs, &opts).unwrap_or_else(|e| panic!("{what}: encode: {e}"));
    let pixels = width as f64 * height as f64;
    for threads in [1, 2] {
        let (peak, charge) = measure(&enc.blob, threads);
        println!("{what}, {threads} thread(s): peak {peak} B ({:.1} B/pixel), charge {charge} B ({:.1} B/pixel)", peak as f64 / pixels, charge as f64 / pixels);
        failures.extend(verdict(&format!("{what} on {threads} thread(s)"), peak, charge));
    }
    failures
}

#[test]
fn unsliced_decoders_stay_within_their_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = check("u16 512x512 lossless", 512, 512, DType::U16, Bound::Lossless, 0);
    failures.extend(check("u16 512x512 abs:2", 512, 512, DType::U16, Bound::Abs(2.0), 0));
    failures.extend(check("u8 640x480 lossless", 640, 480, DType::U8, Bound::Lossless, 0));
    failures.extend(check("u8 640x480 abs:2", 640, 480, DType::U8, Bound::Abs(2.0), 0));
    failures.extend(check("u16 640x480 abs:2", 640, 480, DType::U16, Bound::Abs(2.0), 0));
    failures.extend(check("u8 640x480 abs:4", 640, 480, DType::U8, Bound::Abs(4.0), 0));
    // (Four row slices of the adaptive stage.)
    failures.extend(check("u8 1024x512 abs:2", 1024, 512, DType::U8, Bound::Abs(2.0), 0));
    failures.extend(check("f32 256x256 lossless", 256, 256, DType::F32, Bound::Lossless, 0));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A decoder of the tree stage (entropy stage 7: its tables and a frame's section besides the
/// chain's planes; `linear`, lossless, u8 and u16).
#[test]
fn a_tree_decoder_stays_within_its_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = Vec::new();
    for (dtype, w, h) in [(DType::U16, 512u32, 512u32), (DType::U8, 640, 480)] {
        let what = format!("{dtype} {w}x{h} tree");
        let files = frames(w, h, 4, dtype);
        let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
        let opts = Options {
            format: raw(w, h, dtype),
            predictor: PredictorChoice::Fixed(tezipfs::codec::PredictorId::Linear),
            stage: Some(tezipfs::codec::entropy::Stage::Tree),
            threads: 1,
            ..Options::default()
        };
        let enc = encode_window(&refs, &opts).unwrap_or_else(|e| panic!("{what}: encode: {e}"));
        for threads in [1, 2] {
            let (peak, charge) = measure(&enc.blob, threads);
            println!("{what}, {threads} thread(s): peak {peak} B, charge {charge} B");
            failures.extend(verdict(&format!("{what} on {threads} thread(s)"), peak, charge));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A decoder of photon counts coded as counts (entropy stage 6 holds a rate estimate and the
/// frame's counts, 12 B per pixel, besides the chain's planes).
#[test]
fn a_counts_decoder_stays_within_its_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let spec = SequenceSpec::of_scene(tezipfs::fixtures::Scene::Speckle { mean: 1.0, frames: 30.0 }, DType::U16, 512, 512, 4, 5);
    let files = tezipfs::fixtures::generate_raw(&spec);
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let opts = Options { format: raw(512, 512, DType::U16), threads: 1, entropy: tezipfs::codec::entropy::EntropyChoice::Best, ..Options::default() };
    let enc = encode_window(&refs, &opts).expect("encode");
    assert_eq!(enc.blob[8], 8, "coded as counts (container version 8)");
    let mut failures = Vec::new();
    for threads in [1, 2] {
        let (peak, charge) = measure(&enc.blob, threads);
        println!("u16 512x512 photon counts, {threads} thread(s): peak {peak} B ({:.1} B/pixel), charge {charge} B", peak as f64 / (512.0 * 512.0));
        failures.extend(verdict(&format!("counts on {threads} thread(s)"), peak, charge));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sliced_decoders_stay_within_their_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 2048x1024: two slices at the default 1 Mpixel; smaller slices cut it into eight.
    let mut failures = check("u16 2048x1024 sliced lossless", 2048, 1024, DType::U16, Bound::Lossless, 1 << 20);
    failures.extend(check("u16 2048x1024 eight slices abs:2", 2048, 1024, DType::U16, Bound::Abs(2.0), 1 << 18));
    failures.extend(check("u8 2048x1024 sliced lossless", 2048, 1024, DType::U8, Bound::Lossless, 1 << 20));
    failures.extend(check("u8 2048x1024 sliced abs:2", 2048, 1024, DType::U8, Bound::Abs(2.0), 1 << 20));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Peak heap above what was live before while a window of `files` is compressed as the engine
/// does it (`engine::compress`): the files held, `encode_window` on `threads`, then the blob
/// decoded whole to verify it.
fn measure_window(files: &[Vec<u8>], opts: &Options) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let held: Vec<Vec<u8>> = files.to_vec();
    let refs: Vec<&[u8]> = held.iter().map(|f| &f[..]).collect();
    let enc = encode_window(&refs, opts).expect("encode");
    let decoded = tezipfs::codec::decode_window(&enc.blob).expect("decode");
    assert_eq!(decoded.len(), held.len());
    drop((decoded, enc, refs));
    drop(held);
    PEAK.load(Ordering::SeqCst) - base
}

fn check_window(what: &str, width: u32, height: u32, frames_n: usize, dtype: DType, bound: Bound) -> Vec<String> {
    let files = frames(width, height, frames_n, dtype);
    let sizes: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
    let raw_bytes: u64 = sizes.iter().sum();
    let mut failures = Vec::new();
    for threads in [1, 2] {
        let opts = Options { format: raw(width, height, dtype), bound, threads, ..Options::default() };
        let peak = measure_window(&files, &opts);
        let charge = tezipfs::memory::window_bytes(&sizes, Some(dtype.bytes()), bound == Bound::Lossless);
        println!("{what}, {threads} thread(s): peak {peak} B ({:.1}x the raw bytes), charge {charge} B", peak as f64 / raw_bytes as f64);
        failures.extend(verdict(&format!("{what} on {threads} thread(s)"), peak, charge));
    }
    failures
}

#[test]
fn windows_in_compression_stay_within_their_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = check_window("u16 512x512 x 8 lossless", 512, 512, 8, DType::U16, Bound::Lossless);
    failures.extend(check_window("u16 512x512 x 8 abs:2", 512, 512, 8, DType::U16, Bound::Abs(2.0)));
    failures.extend(check_window("u8 640x480 x 8 lossless", 640, 480, 8, DType::U8, Bound::Lossless));
    failures.extend(check_window("u8 640x480 x 8 abs:2", 640, 480, 8, DType::U8, Bound::Abs(2.0)));
    failures.extend(check_window("u16 2048x1024 x 4 sliced lossless", 2048, 1024, 4, DType::U16, Bound::Lossless));
    failures.extend(check_window("u8 2048x1024 x 4 sliced abs:2", 2048, 1024, 4, DType::U8, Bound::Abs(2.0)));
    failures.extend(check_window("u8 640x480 x 24 abs:2", 640, 480, 24, DType::U8, Bound::Abs(2.0)));
    failures.extend(check_window("u8 640x480 x 24 lossless", 640, 480, 24, DType::U8, Bound::Lossless));
    failures.extend(check_window("u16 512x512 x 24 abs:2", 512, 512, 24, DType::U16, Bound::Abs(2.0)));
    failures.extend(check_window("u16 512x512 x 24 lossless", 512, 512, 24, DType::U16, Bound::Lossless));
    failures.extend(check_window("u8 2048x1024 x 12 sliced abs:2", 2048, 1024, 12, DType::U8, Bound::Abs(2.0)));
    failures.extend(check_window("f32 256x256 x 8 abs:0.5", 256, 256, 8, DType::F32, Bound::Abs(0.5)));
    failures.extend(check_window("f32 256x256 x 8 lossless", 256, 256, 8, DType::F32, Bound::Lossless));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A window coded with a learned model holds the model's states besides the classical working
/// set: the probe's warmed state, its forks, the causal stage, the replay of the originals. The
/// plain-Rust backend's allocations are the ones this allocator sees (libtorch allocates on its
/// own; its states are of the same shapes in narrower types: `Model::state_bytes`). The charge
/// `window_bytes + model_window_bytes` holds the peak, and the classical share alone would not.
#[test]
fn a_window_coded_with_a_model_stays_within_its_charge() {
    use tezipfs::model::{file, reference::ReferenceModel, Size};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (w, h, n) = (256u32, 256u32, 8usize);
    let model: Arc<dyn Model> = Arc::new(ReferenceModel::new(Arc::new(file::random(&Size::Small.arch(), DType::U16, 3))).expect("a model"));
    let files = frames(w, h, n, DType::U16);
    let sizes: Vec<u64> = files.iter().map(|f| f.len() as u64).collect();
    let mut failures = Vec::new();
    // (`prednet` forced as well: a random model's window is then coded with it, whatever it
    // predicts, and its decoder runs it.)
    for (bound, predictor) in [Bound::Lossless, Bound::Abs(2.0)].into_iter().flat_map(|b| [(b, PredictorChoice::Auto), (b, PredictorChoice::Prednet)]) {
        let model_share = tezipfs::codec::window::model_window_bytes(&*model, u64::from(w * h), n as u64, bound == Bound::Lossless);
        let opts = Options { format: raw(w, h, DType::U16), bound, predictor, threads: 1, model: Some(ModelHandle(model.clone())), ..Options::default() };
        let base = LIVE.load(Ordering::SeqCst);
        PEAK.store(base, Ordering::SeqCst);
        let held: Vec<Vec<u8>> = files.clone();
        let refs: Vec<&[u8]> = held.iter().map(|f| &f[..]).collect();
        let enc = encode_window(&refs, &opts).expect("encode");
        let decoded = tezipfs::codec::decode_window_with(&enc.blob, Arc::new(OneModel::of(model.clone()))).expect("decode");
        assert_eq!(decoded.len(), n);
        let blob = enc.blob.clone();
        drop((decoded, enc, refs));
        drop(held);
        let peak = PEAK.load(Ordering::SeqCst) - base;
        let classical = tezipfs::memory::window_bytes(&sizes, Some(2), bound == Bound::Lossless);
        println!("u16 {w}x{h} x {n} {bound} {predictor:?} with a model: peak {peak} B, charge {classical} + {model_share} B");
        if peak as u64 <= classical {
            failures.push(format!("{bound}: the peak {peak} B fits the classical charge {classical} B: the model's share is not needed"));
        }
        failures.extend(verdict(&format!("{bound} with a model"), peak, classical + model_share));
        // Its decoder, as the mount keeps one, charged the model's state besides the chain's.
        for threads in [1, 2] {
            let base = LIVE.load(Ordering::SeqCst);
            PEAK.store(base, Ordering::SeqCst);
            let mut dec = Decoder::with_models(blob.clone().into(), Arc::new(OneModel::of(model.clone()))).expect("decoder");
            dec.set_threads(threads);
            let charge = dec.memory_bytes();
            for i in 0..dec.len() {
                drop(dec.decode(i, |_, _| {}).expect("decode"));
            }
            drop(dec);
            let peak = PEAK.load(Ordering::SeqCst) - base;
            println!("  its decoder on {threads} thread(s): peak {peak} B, charge {charge} B");
            failures.extend(verdict(&format!("{bound} decoder with a model on {threads} thread(s)"), peak, charge));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
