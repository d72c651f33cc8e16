//! A decoder of a sliced window coded with a torch model stays within `Decoder::memory_bytes`,
//! measured by the process's peak resident set (libtorch's allocations are invisible to a
//! counting allocator). One test in its own binary, as `tests/model_step_memory.rs`: nothing
//! else allocates meanwhile. Run with `--nocapture` for its figures.

mod common;

use common::resident::{frames, reset_peak, status_bytes};
use std::sync::Arc;
use tezipfs::codec::predict::{Geometry, Model, ModelHandle, OneModel};
use tezipfs::codec::{encode_window, Bound, DType, Decoder, FormatSpec, Options, PredictorChoice, RawSpec};
use tezipfs::model::file;
use tezipfs::model::torch::TorchModel;
use tezipfs::model::Size;

/// A decoder of a sliced window coded with a torch model (each stripe its own recurrent state,
/// the stripes decoded side by side on the decoder's threads, each model call with its own
/// scratch) stays within `Decoder::memory_bytes` on one and two threads.
#[test]
fn a_sliced_torch_decoder_stays_within_its_charge() {
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
