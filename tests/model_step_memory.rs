//! What a running torch model state takes in memory is what the budget charges for it:
//! `MODEL_STEP_STATES` (3) x `Model::state_bytes` + `Model::scratch_bytes` (`codec::window`'s
//! `model_window_bytes` and `Decoder::memory_bytes`). libtorch's allocations are invisible to a
//! counting allocator (`tests/decoder_memory.rs` measures the plain-Rust backend that way), so
//! this measures the process's peak resident set (`VmHWM`, reset through
//! `/proc/self/clear_refs`) over a state's life: start, key frame, three predict + observe steps.
//! The tests of this binary run one at a time (`ONE_AT_A_TIME`): nothing else allocates
//! meanwhile. Run with `--nocapture` for the tables.

use std::sync::{Arc, Mutex};
use tezipfs::codec::predict::{Geometry, Model, ModelHandle, OneModel};
use tezipfs::codec::{encode_window, Bound, DType, Decoder, FormatSpec, Options, PredictorChoice, RawSpec};
use tezipfs::model::file;
use tezipfs::model::torch::TorchModel;
use tezipfs::model::Size;

/// The resident set is the process's: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Frees what the allocator holds and resets the peak resident set; returns the resident set.
fn reset_peak() -> u64 {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe { libc::malloc_trim(0) };
    let before = status_bytes("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs resets VmHWM (Linux 4.0 or later)");
    before
}

/// A field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap() * 1024
}

fn frames(geom: Geometry, n: usize) -> Vec<Vec<u32>> {
    let mut rng = file::Rng(3);
    let max = geom.mask() as f64;
    (0..n)
        .map(|t| {
            (0..geom.pixels())
                .map(|i| ((max * 0.4 + max * 0.1 * ((i % geom.width) as f64 * 0.05 + t as f64).sin() + max / 50.0 * rng.unit()).clamp(0.0, max)) as u32)
                .collect()
        })
        .collect()
}

/// The peak resident bytes of one state's life above the resident set before it (frames and
/// output made before; freed heap returned to the system first).
fn measure(model: &dyn Model, geom: Geometry, seq: &[Vec<u32>]) -> u64 {
    let mut out = vec![0u32; geom.pixels()];
    let before = reset_peak();
    {
        let mut s = model.start(geom).unwrap();
        model.observe_batch(&mut [s.as_mut()], &[&seq[0]]).unwrap();
        for f in &seq[1..] {
            model.predict_batch(&mut [s.as_mut()], &mut [&mut out]).unwrap();
            model.observe_batch(&mut [s.as_mut()], &[f]).unwrap();
        }
    }
    status_bytes("VmHWM").saturating_sub(before)
}

#[test]
fn a_torch_state_and_its_steps_stay_within_their_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    println!("{:<8} {:>14} {:>10} {:>10} {:>10} {:>7}", "model", "frame", "state MB", "peak MB", "charge MB", "states");
    let cases = [
        (Size::Small, 256, 256, DType::U8),
        (Size::Small, 1024, 1024, DType::U8),
        (Size::Small, 1024, 512, DType::U16),
        (Size::Prednet, 256, 256, DType::U8),
        (Size::Prednet, 512, 512, DType::U16),
    ];
    let mut failures = Vec::new();
    for (size, w, h, dtype) in cases {
        // A fresh model per case: its scratch grows for the first frames it sees.
        let model = TorchModel::new(Arc::new(file::random(&size.arch(), dtype, 1)), tch::Device::Cpu).unwrap();
        // libtorch's and oneDNN's first-use allocations are not the state's.
        let tiny = Geometry::of(40, 24, dtype);
        measure(&model, tiny, &frames(tiny, 3));
        let geom = Geometry::of(w, h, dtype);
        let peak = measure(&model, geom, &frames(geom, 4));
        let state = model.state_bytes(geom);
        let charge = 3 * state + model.scratch_bytes();
        println!(
            "{:<8} {:>14} {:>10.1} {:>10.1} {:>10.1} {:>7.2}",
            size.to_string(),
            format!("{w}x{h}:{dtype}"),
            state as f64 / 1e6,
            peak as f64 / 1e6,
            charge as f64 / 1e6,
            peak as f64 / state as f64
        );
        if peak > charge {
            failures.push(format!("{size} {w}x{h} {dtype}: peak {peak} above the charge {charge}"));
        }
        // At a megapixel the states, not the fixed scratch, make the charge: it must not hold
        // back much more than is used.
        if geom.pixels() >= 1 << 19 && charge > 2 * peak {
            failures.push(format!("{size} {w}x{h} {dtype}: the charge {charge} is more than twice the peak {peak}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A decoder of a sliced window coded with a torch model (each stripe its own recurrent state,
/// the stripes decoded side by side on the decoder's threads, each model call with its own
/// scratch) stays within `Decoder::memory_bytes` on one and two threads.
#[test]
fn a_sliced_torch_decoder_stays_within_its_charge() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    let (w, h, n, dtype) = (512usize, 512usize, 4usize, DType::U8);
    let geom = Geometry::of(w, h, dtype);
    let model: Arc<dyn Model> = Arc::new(TorchModel::new(Arc::new(file::random(&Size::Small.arch(), dtype, 1)), tch::Device::Cpu).unwrap());
    let files: Vec<Vec<u8>> = frames(geom, n).iter().map(|f| f.iter().map(|&v| v as u8).collect()).collect();
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let opts = Options {
        format: FormatSpec::Raw(RawSpec { width: w as u32, height: h as u32, dtype, skip: 0 }),
        bound: Bound::Lossless,
        // `prednet`: the random model codes the window whatever it predicts.
        predictor: PredictorChoice::Prednet,
        // Four stripes of 128 rows.
        slice_pixels: w * h / 4,
        threads: 2,
        model: Some(ModelHandle(model.clone())),
        ..Options::default()
    };
    let enc = encode_window(&refs, &opts).expect("encode");
    assert!(enc.model.is_some(), "the window was coded with the model");
    let blob: Arc<[u8]> = enc.blob.clone().into();
    drop(enc);
    let mut failures = Vec::new();
    for threads in [1, 2] {
        let mut dec = Decoder::with_models(blob.clone(), Arc::new(OneModel::of(model.clone()))).expect("decoder");
        assert_eq!(dec.slice_count(), 4);
        dec.set_threads(threads);
        let charge = dec.memory_bytes();
        let before = reset_peak();
        assert_eq!(dec.len(), n);
        for (i, file) in files.iter().enumerate() {
            let out = dec.decode(i, |_, _| {}).expect("decode");
            assert_eq!(&out, file, "frame {i} decodes bit-exact");
        }
        drop(dec);
        let peak = status_bytes("VmHWM").saturating_sub(before);
        println!("sliced {w}x{h}:{dtype} x {n}, 4 stripes, {threads} thread(s): peak {:.1} MB, charge {:.1} MB", peak as f64 / 1e6, charge as f64 / 1e6);
        if peak > charge {
            failures.push(format!("{threads} thread(s): peak {peak} above the charge {charge}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
