//! The learned predictor in the codec: a window coded with a model through one backend decodes
//! through the other bit for bit (rule 2 of DESIGN.md), lossless and under every bound, for every
//! pixel type and odd frame sizes; the blob names its model (container version 6) and cannot be
//! decoded without it; damage to a model blob is caught.

use std::sync::Arc;
use tezipfs::codec::container::{Blob, BlobError};
use tezipfs::codec::predict::{hash_hex, Model, ModelHandle, ModelHash, ModelSource, OneModel, Playback, PredictError};
use tezipfs::codec::window::{decode_window_with, encode_window};
use tezipfs::codec::{Bound, DType, FormatSpec, Options, PredictorChoice, RawSpec};
use tezipfs::fixtures::{generate_means, generate_raw, SequenceSpec};
use tezipfs::model::file;
use tezipfs::model::reference::ReferenceModel;
use tezipfs::model::torch::TorchModel;
use tezipfs::model::{Arch, LayerArch, Size};

/// A source that has exactly one model.
fn backends(dtype: DType, seed: u64, arch: &Arch) -> (Arc<dyn Model>, Arc<dyn Model>, Vec<u8>) {
    backends_of(&file::random(arch, dtype, seed))
}

fn backends_of(m: &tezipfs::model::IntModel) -> (Arc<dyn Model>, Arc<dyn Model>, Vec<u8>) {
    let bytes = file::to_bytes(m);
    let torch: Arc<dyn Model> = Arc::new(TorchModel::from_bytes(&bytes, tch::Device::Cpu).unwrap());
    let reference: Arc<dyn Model> = Arc::new(ReferenceModel::from_bytes(&bytes).unwrap());
    assert_eq!(torch.hash(), reference.hash());
    (torch, reference, bytes)
}

fn frames(dtype: DType, w: u32, h: u32, n: usize, seed: u64) -> Vec<Vec<u8>> {
    generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(w, h, n, seed) })
}

fn opts(dtype: DType, w: u32, h: u32, bound: Bound, model: &Arc<dyn Model>, predictor: PredictorChoice) -> Options {
    Options {
        format: FormatSpec::Raw(RawSpec { width: w, height: h, dtype, skip: 0 }),
        bound,
        predictor,
        model: Some(ModelHandle(model.clone())),
        // (Plain headers: the tests read the versions a model's features need and edit the
        // header; a compressed one, version 14, is tested in codec_roundtrip.)
        compact_header: false,
        ..Options::default()
    }
}

/// Values of a frame of `dtype` (for the error-bound check).
fn values(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    let mut img = Vec::new();
    dtype.decode_pixels(bytes, false, &mut img);
    img.iter().map(|&v| dtype.value(v)).collect()
}

#[test]
fn a_window_coded_through_one_backend_decodes_through_the_other() {
    let two = Arch { layers: vec![LayerArch { a: 1, r: 4, k_lstm: 3, k_ahat: 3, k_a: 3 }, LayerArch { a: 4, r: 6, k_lstm: 3, k_ahat: 1, k_a: 3 }] };
    let cases = [(DType::U8, 37, 23), (DType::U16, 64, 48), (DType::U32, 20, 9), (DType::I16, 33, 17), (DType::F32, 24, 16)];
    for (k, &(dtype, w, h)) in cases.iter().enumerate() {
        let arch = if k % 2 == 0 { Size::Small.arch() } else { two.clone() };
        let files = frames(dtype, w, h, 6, 20 + k as u64);
        // The model with and without a noise scale (model file versions 2 and 1).
        let m = file::random(&arch, dtype, 10 + k as u64);
        for m in [file::toggle_scale(&m, k as u64), m] {
            let (torch, reference, _) = backends_of(&m);
            let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
            let bounds: Vec<Bound> = if dtype.is_float() {
                vec![Bound::Lossless, Bound::Abs(0.5)]
            } else {
                vec![Bound::Lossless, Bound::Abs(1.0), Bound::Abs(2.0), Bound::Abs(4.0), Bound::Rel(0.01)]
            };
            for bound in bounds {
                for (enc, dec, way) in [(&torch, &reference, "torch -> reference"), (&reference, &torch, "reference -> torch")] {
                    let e = encode_window(&refs, &opts(dtype, w, h, bound, enc, PredictorChoice::Prednet)).unwrap();
                    assert_eq!(e.model, Some(enc.hash()), "{dtype} {bound}: the model must be used under prednet");
                    // (Version 8 where, under a bound, the adaptive stage also weighs the intensity;
                    // 12 where, lossless, frames take the tree stage, 13 with its exact levels on
                    // 8-bit pixels or under a bound: decoded fused with the model's predictions,
                    // through either backend below.)
                    let version = u16::from_le_bytes([e.blob[8], e.blob[9]]);
                    let lossless = bound == Bound::Lossless;
                    assert!(
                        version == 6 || (version == 8 && !lossless) || (version == 12 && lossless) || version == 13,
                        "a blob with a model is version 6 (8, 12, 13): {version}"
                    );
                    let other =
                        decode_window_with(&e.blob, Arc::new(OneModel::of(dec.clone()))).unwrap_or_else(|err| panic!("{dtype} {w}x{h} {bound} {way}: {err}"));
                    let same = decode_window_with(&e.blob, Arc::new(OneModel::of(enc.clone()))).unwrap();
                    assert_eq!(other, same, "{dtype} {w}x{h} {bound} {way}: the backends decode differently");
                    for (i, (o, d)) in files.iter().zip(&other).enumerate() {
                        if bound == Bound::Lossless {
                            assert!(o == d, "{dtype} {w}x{h} {way}: frame {i} is not bit-exact");
                        } else if let Bound::Abs(eb) = bound {
                            let worst = values(dtype, o).iter().zip(values(dtype, d)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                            assert!(worst <= eb, "{dtype} {way} frame {i}: error {worst} over {bound}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn auto_keeps_the_model_only_where_it_codes_smaller() {
    // A random model predicts badly: auto must code exactly as without a model, lossless and
    // under bounds (it codes the window both ways and keeps the smaller).
    let (torch, _, _) = backends(DType::U16, 3, &Size::Small.arch());
    let files = frames(DType::U16, 64, 48, 8, 4);
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    for bound in [Bound::Lossless, Bound::Abs(2.0), Bound::Abs(8.0)] {
        let with = encode_window(&refs, &opts(DType::U16, 64, 48, bound, &torch, PredictorChoice::Auto)).unwrap();
        let without = encode_window(&refs, &Options { model: None, ..opts(DType::U16, 64, 48, bound, &torch, PredictorChoice::Auto) }).unwrap();
        assert_eq!(with.model, None, "{bound}: a random model should lose to the classical predictors");
        assert!(with.blob == without.blob, "{bound}: {} vs {} bytes", with.blob.len(), without.blob.len());
    }
}

#[test]
fn auto_keeps_a_model_that_codes_smaller_and_the_blob_decodes_with_it() {
    let spec = SequenceSpec { dtype: DType::U16, ..SequenceSpec::detector_u16(64, 48, 8, 5) };
    let files = generate_raw(&spec);
    let means: Vec<Vec<u32>> = generate_means(&spec).iter().map(|m| m.iter().map(|&v| v.round().clamp(0.0, 65535.0) as u32).collect()).collect();
    // A "model" that knows the noise-free frames: a prediction better than any classical one.
    let oracle: Arc<dyn Model> = Arc::new(Playback::new([7; 32], means));
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    for bound in [Bound::Lossless, Bound::Abs(2.0), Bound::Abs(8.0)] {
        let with = encode_window(&refs, &opts(DType::U16, 64, 48, bound, &oracle, PredictorChoice::Auto)).unwrap();
        let without = encode_window(&refs, &Options { model: None, ..opts(DType::U16, 64, 48, bound, &oracle, PredictorChoice::Auto) }).unwrap();
        assert_eq!(with.model, Some([7; 32]), "{bound}: the noise-free frames predict better than any classical predictor");
        assert!(with.blob.len() < without.blob.len(), "{bound}: {} vs {} bytes", with.blob.len(), without.blob.len());
        let back = decode_window_with(&with.blob, Arc::new(OneModel::of(oracle.clone()))).unwrap();
        for (k, (a, b)) in files.iter().zip(&back).enumerate() {
            let (a, b) = (values(DType::U16, a), values(DType::U16, b));
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            let e = match bound {
                Bound::Abs(e) => e,
                _ => 0.0,
            };
            assert!(err <= e, "{bound}: frame {k} is off by {err}");
        }
    }
}

#[test]
fn a_blob_that_names_a_model_needs_it() {
    let (torch, _, _) = backends(DType::U16, 5, &Size::Small.arch());
    let (other, _, _) = backends(DType::U16, 6, &Size::Small.arch());
    let files = frames(DType::U16, 64, 48, 4, 7);
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let e = encode_window(&refs, &opts(DType::U16, 64, 48, Bound::Lossless, &torch, PredictorChoice::Prednet)).unwrap();
    // No model, or another model: an error that names the model, never wrong bytes.
    let err = tezipfs::codec::decode_window(&e.blob).unwrap_err().to_string();
    assert!(err.contains(&hash_hex(&torch.hash())) && err.contains("not available"), "{err}");
    let err = decode_window_with(&e.blob, Arc::new(OneModel::of(other))).unwrap_err().to_string();
    assert!(err.contains(&hash_hex(&torch.hash())), "{err}");
    // A model made for another pixel type is refused when the frames are decoded.
    let (u8_model, _, _) = backends(DType::U8, 5, &Size::Small.arch());
    struct Liar(Arc<dyn Model>, ModelHash);
    impl ModelSource for Liar {
        fn model(&self, _: &ModelHash) -> Result<Arc<dyn Model>, PredictError> {
            let _ = self.1;
            Ok(self.0.clone())
        }
    }
    let err = decode_window_with(&e.blob, Arc::new(Liar(u8_model, torch.hash()))).unwrap_err().to_string();
    assert!(err.contains("entry 0"), "{err}");
    // A version-6 blob read as version 5 (a flipped version bit) is refused, as is a model
    // hash moved onto a predictor that cannot take one.
    let mut v5 = e.blob.clone();
    v5[8] = 5;
    assert!(Blob::parse(&v5).is_err());
    let header_len = u32::from_le_bytes(e.blob[12..16].try_into().unwrap()) as usize;
    let mut motion = e.blob.clone();
    motion[16 + 9] = 7; // predictor id `motion`
    let crc = crc32c::crc32c(&motion[16..16 + header_len]);
    motion[16 + header_len..20 + header_len].copy_from_slice(&crc.to_le_bytes());
    match Blob::parse(&motion) {
        Err(BlobError::Malformed(m)) => assert!(m.contains("learned model"), "{m}"),
        other => panic!("a model on `motion` must be malformed, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn every_bit_flip_of_a_model_blob_is_caught() {
    let (torch, _, _) = backends(DType::U8, 8, &Size::Small.arch());
    let files = frames(DType::U8, 24, 16, 3, 9);
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let e = encode_window(&refs, &opts(DType::U8, 24, 16, Bound::Lossless, &torch, PredictorChoice::Prednet)).unwrap();
    let source = Arc::new(OneModel::of(torch.clone()));
    assert_eq!(decode_window_with(&e.blob, source.clone()).unwrap(), files);
    for i in (0..e.blob.len() * 8).step_by(3) {
        let mut b = e.blob.clone();
        b[i / 8] ^= 1 << (i % 8);
        if let Ok(d) = decode_window_with(&b, source.clone()) {
            panic!("bit {i} flipped and the blob still decoded ({} files)", d.len());
        }
    }
}

/// A window in slices (container version 7) with the model in every slice: each slice blob names
/// it, the outer header names it once, and both backends decode the same bytes.
#[test]
fn sliced_windows_carry_the_model_in_their_slices() {
    let (torch, reference, _) = backends(DType::U16, 31, &Size::Small.arch());
    let (w, h) = (40, 50);
    let files = frames(DType::U16, w, h, 4, 32);
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    for bound in [Bound::Lossless, Bound::Abs(2.0)] {
        let o = Options { slice_pixels: 40 * 16, ..opts(DType::U16, w, h, bound, &reference, PredictorChoice::Prednet) };
        let e = encode_window(&refs, &o).unwrap();
        assert_eq!(e.blob[8], 7, "{bound}: sliced");
        assert_eq!(e.model, Some(reference.hash()), "{bound}");
        let b = Blob::parse(&e.blob).unwrap();
        assert_eq!(b.header.params.as_ref().unwrap().model, reference.hash(), "{bound}: the outer header names the model");
        let one = decode_window_with(&e.blob, Arc::new(OneModel::of(torch.clone()))).unwrap_or_else(|err| panic!("{bound}: {err}"));
        assert_eq!(one, decode_window_with(&e.blob, Arc::new(OneModel::of(reference.clone()))).unwrap(), "{bound}: backends differ");
        if bound == Bound::Lossless {
            assert_eq!(one, files);
        }
        let other: Arc<dyn Model> = backends(DType::U16, 99, &Size::Small.arch()).1;
        assert!(matches!(decode_window_with(&e.blob, Arc::new(OneModel::of(other))), Err(BlobError::Decode { .. })), "{bound}: needs its model");
    }
}

/// The causal stage (predictor `causal`, container version 10, model file version 3): a window
/// coded through one backend's model decodes bit-exact through the other's, lossless and under
/// bounds, for every pixel type, and the model file keeps the stage as it was.
#[test]
fn a_window_coded_by_the_causal_stage_decodes_through_either_backend() {
    use tezipfs::codec::predict::{causal, PredictorId};
    let cases = [(DType::U8, 37, 23), (DType::U16, 64, 48), (DType::U32, 20, 9), (DType::I16, 33, 17), (DType::F32, 24, 16)];
    for (k, &(dtype, w, h)) in cases.iter().enumerate() {
        let files = frames(dtype, w, h, 6, 40 + k as u64);
        let base = file::random(&Size::Small.arch(), dtype, 30 + k as u64);
        let net = causal::CausalNet { shift_px: (k % 3) as u8, shift_mean: (k % 2) as u8 * 3, ..causal::random(k as u64) };
        let m = tezipfs::model::IntModel { causal: Some(net), ..base };
        let (torch, reference, bytes) = backends_of(&m);
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 3, "a model with a causal stage is version 3");
        assert_eq!(file::from_bytes(&bytes).unwrap(), m, "the file keeps the stage");
        let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
        let bounds: Vec<Bound> =
            if dtype.is_float() { vec![Bound::Lossless, Bound::Abs(0.5)] } else { vec![Bound::Lossless, Bound::Abs(1.0), Bound::Abs(4.0)] };
        for bound in bounds {
            for (enc, dec) in [(&torch, &reference), (&reference, &torch)] {
                let e = encode_window(&refs, &opts(dtype, w, h, bound, enc, PredictorChoice::Fixed(PredictorId::Causal))).unwrap();
                assert_eq!((e.predictor, e.model), (Some(PredictorId::Causal), Some(enc.hash())), "{dtype} {bound}");
                // (12 where, lossless, frames take the tree stage; 13 with its exact levels on
                // 8-bit pixels or under a bound.)
                let version = u16::from_le_bytes([e.blob[8], e.blob[9]]);
                assert!(
                    version == 10 || (version == 12 && bound == Bound::Lossless) || version == 13,
                    "{dtype} {bound}: the causal predictor is version 10 (12, 13): {version}"
                );
                let back = decode_window_with(&e.blob, Arc::new(OneModel::of(dec.clone()))).unwrap_or_else(|err| panic!("{dtype} {bound}: {err}"));
                for (i, (o, d)) in files.iter().zip(&back).enumerate() {
                    if bound == Bound::Lossless {
                        assert!(o == d, "{dtype} {w}x{h}: frame {i} is not bit-exact");
                    } else if let Bound::Abs(eb) = bound {
                        let worst = values(dtype, o).iter().zip(values(dtype, d)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                        assert!(worst <= eb, "{dtype} frame {i}: error {worst} over {bound}");
                    }
                }
                // Without the model the blob does not decode, and says which model it needs.
                let err = decode_window_with(&e.blob, Arc::new(OneModel::of(Arc::new(Playback::new([1; 32], Vec::new()))))).unwrap_err();
                assert!(err.to_string().contains(&hash_hex(&enc.hash())), "{err}");
            }
        }
        // A model without the stage: `causal` falls back to `linear`.
        let (plain, _, _) = backends(dtype, 50 + k as u64, &Size::Small.arch());
        let e = encode_window(&refs, &opts(dtype, w, h, Bound::Lossless, &plain, PredictorChoice::Fixed(PredictorId::Causal))).unwrap();
        assert_eq!((e.predictor, e.model), (Some(PredictorId::Linear), None), "{dtype}");
    }
}

/// A model file's causal stage is checked like the rest: a weight out of range, or a header that
/// claims another shape, is refused with a message that names it.
#[test]
fn a_model_files_causal_stage_is_validated() {
    use tezipfs::codec::predict::causal;
    let m = tezipfs::model::IntModel { causal: Some(causal::random(9)), ..file::random(&Size::Small.arch(), DType::U8, 9) };
    let bytes = file::to_bytes(&m);
    // The last tensors: output weights (16 x i16), bias (i32), shift (u8), then the CRC.
    let mut bad = bytes.clone();
    let shift_at = bad.len() - 4 - 1;
    bad[shift_at] = causal::MAX_SHIFT + 1;
    let err = file::from_bytes(&file::reseal(&bad).unwrap()).unwrap_err();
    assert!(err.to_string().contains("causal stage: output shift"), "{err}");
    let mut bad = bytes.clone();
    let w_at = bad.len() - 4 - 1 - 4 - 2 * causal::H2;
    bad[w_at..w_at + 2].copy_from_slice(&(causal::MAX_W as i16 + 1).to_le_bytes());
    let err = file::from_bytes(&file::reseal(&bad).unwrap()).unwrap_err();
    assert!(err.to_string().contains("output weight 0"), "{err}");
    // Truncated inside the stage.
    assert!(file::from_bytes(&bytes[..bytes.len() - 10]).is_err());
    // Every model without the stage keeps its version (1 or 2).
    assert!(u16::from_le_bytes([file::to_bytes(&tezipfs::model::IntModel { causal: None, ..m })[8], 0]) <= 2);
}
