use super::eval::{agreement, previous_references, references};
use super::net::{self, QConv, TLuts};
use super::*;
use crate::fixtures::{generate_images, SequenceSpec};
use crate::model::reference::{self, Planes, ReferenceModel};
use crate::model::LayerArch;
use std::sync::Arc;

fn tiny(dtype: DType, n: usize) -> (Vec<Vec<u32>>, Geometry) {
    let spec = SequenceSpec { dtype, spots: 6, ..SequenceSpec::detector_u16(40, 32, n, 3) };
    (generate_images(&spec), Geometry::of(40, 32, dtype))
}

fn quick(bound: Bound, steps: u64) -> TrainOptions {
    TrainOptions {
        bound,
        max_steps: Some(steps),
        minutes: 10.0,
        device: DeviceChoice::Cpu,
        threads: Some(1),
        hyper: Hyper { crop: 24, seq: 4, batch: 4, ..Hyper::default() },
        causal: Some(super::causal::CausalOptions { steps: 20, batch: 256, samples: 1 << 14, ..Default::default() }),
        ..TrainOptions::default()
    }
}

#[test]
fn fixed_point_is_close_and_in_range() {
    for r in [1e-9, 0.003, 0.5, 1.0, 7.25, 16384.0 / 127.5, 3e6] {
        let (m, s) = fixed_point(r, 1 << 30);
        assert!((1..=1 << 30).contains(&m) && (1..=62).contains(&s), "{r}: {m} {s}");
        let got = m as f64 / 2f64.powi(s as i32);
        assert!((got / r - 1.0).abs() < 1e-6, "{r}: {got}");
    }
}

#[test]
fn noise_is_estimated_from_frame_differences() {
    // Poisson(3) background: sigma about sqrt(3 * 1.25) (the generator's gradient).
    let spec = SequenceSpec { spots: 2, ..SequenceSpec::detector_u16(128, 128, 4, 9) };
    let s = noise_sigma(&generate_images(&spec));
    assert!((1.6..2.3).contains(&s), "{s}");
    // Constant frames: never zero.
    assert_eq!(noise_sigma(&[vec![7; 100], vec![7; 100]]), 0.5);
}

#[test]
fn photon_counts_get_a_noise_scale_and_constant_noise_does_not() {
    // Poisson counts: the variance is the mean (a gain of 1).
    let spec = SequenceSpec { spots: 12, ..SequenceSpec::detector_u16(128, 128, 6, 9) };
    let frames = generate_images(&spec);
    let hi = frames.iter().flatten().copied().max().unwrap() as f64;
    let (a, g) = noise_profile(&frames, 0.0, hi);
    assert!((0.7..1.4).contains(&g) && a < 10.0, "a {a} g {g}");
    let lossless = Degrade::new(Bound::Lossless, DType::U16).unwrap();
    let norm = choose_norm(&frames, lossless, 16.0, true);
    let sc = norm.scale.as_ref().expect("a scale");
    // Bright pixels get larger units (smaller error multipliers), dark ones finer.
    let (dark, bright) = (Norm::bucket(norm.intensity(3)), Norm::bucket(norm.intensity(2000)));
    assert!(sc.err_mult[dark] > 8 * sc.err_mult[bright], "{} {}", sc.err_mult[dark], sc.err_mult[bright]);
    assert!(sc.out_mult[dark] * 8 < sc.out_mult[bright]);
    // About `units` per standard deviation: 4 sigma at 2000 (sqrt(2000) each) is about 64
    // units, at 200 as well; with the global unit it was 127 (saturated) at both.
    for v in [200u32, 2000] {
        let four = (4.0 * (v as f64).sqrt()).round() as i64;
        let u = norm.error(four, v);
        assert!((48..=80).contains(&u), "{v}: {u} units");
        assert_eq!(Norm { scale: None, ..norm.clone() }.error(four, v), 127);
    }
    assert!(file::validate(&IntModel { norm: norm.clone(), ..file::random(&Size::Small.arch(), DType::U16, 1) }).is_ok());
    // The stabilised intensity rises like sqrt(v): a grey level moves it about sqrt(2000 / 30)
    // times further at 30 than at 2000, and it spans about the i16 range over the values.
    let slope = |v: u32| (norm.net_intensity(v + 20) - norm.net_intensity(v)) as f64;
    let r = slope(30) / slope(2000);
    assert!((4.0..12.0).contains(&r), "slope ratio {r}");
    let hi_v = frames.iter().flatten().copied().max().unwrap();
    assert!(norm.net_intensity(0) < -15000 && norm.net_intensity(hi_v) > 15000, "{} {}", norm.net_intensity(0), norm.net_intensity(hi_v));
    // Under a coarse bound too: the decision is the frames' noise, the bound's only widens the
    // units (a dark pixel's unit now covers its quantisation noise as well).
    let abs4 = choose_norm(&frames, Degrade::new(Bound::Abs(4.0), DType::U16).unwrap(), 16.0, true);
    assert!(abs4.scale.is_some(), "a scale under abs:4");
    let four = (4.0 * 2000f64.sqrt()).round() as i64;
    assert!((48..=80).contains(&abs4.error(four, 2000)), "{}", abs4.error(four, 2000));
    assert!(abs4.error(6, 3) < norm.error(6, 3), "{} {}", abs4.error(6, 3), norm.error(6, 3));
    // Not asked for: none.
    assert!(choose_norm(&frames, lossless, 16.0, false).scale.is_none());
    // Noise of one standard deviation at every level: no scale.
    let mut rng = crate::fixtures::Rng::new(4);
    let flat: Vec<Vec<u32>> =
        (0..6).map(|_| (0..128 * 128).map(|i| ((i % 128) as f64 * 300.0 + 5.0 * rng.normal()).round().max(0.0) as u32).collect()).collect();
    let (_, g) = noise_profile(&flat, 0.0, 128.0 * 300.0);
    assert!(g < 0.01, "g {g}");
    assert!(choose_norm(&flat, lossless, 16.0, true).scale.is_none());
}

#[test]
fn bounds_are_checked() {
    assert_eq!(Degrade::new(Bound::Abs(2.7), DType::U16).unwrap().e, 2.0);
    assert_eq!(Degrade::new(Bound::Abs(0.5), DType::U8).unwrap().e, 0.0);
    assert!(matches!(Degrade::new(Bound::Rel(0.01), DType::U8), Err(TrainError::Bound(_))));
    assert!(matches!(Degrade::new(Bound::PwRel(0.01), DType::U8), Err(TrainError::Bound(_))));
    let d = Degrade::new(Bound::Abs(2.0), DType::U8).unwrap();
    let mut rng = Rng::new(1);
    let mut seen = [false; 5];
    for _ in 0..1000 {
        let r = d.apply(100, &mut rng) as i64 - 100;
        assert!((-2..=2).contains(&r));
        seen[(r + 2) as usize] = true;
        assert!(d.apply(254, &mut rng) <= 255);
    }
    assert!(seen.iter().all(|&s| s));
}

/// The float cell is the integer cell ([`Luts::lstm_cell`]) exactly, over every pre-activation
/// and cells spread over their whole range.
#[test]
fn float_cell_is_the_integer_cell() {
    let luts = Luts::standard();
    let tl = TLuts::new(&luts, Device::Cpu);
    let mut rng = Rng::new(5);
    let n = 4096;
    let mut z = vec![0f32; 4 * n];
    let mut s = vec![0f32; n];
    let mut want_h = vec![0f32; n];
    let mut want_s = vec![0f32; n];
    for j in 0..n {
        let zz: [i32; 4] = std::array::from_fn(|_| (rng.next_u64() % 256) as i32 - 128);
        let mut cell = (rng.next_u64() % 65535) as i32 - 32767;
        s[j] = cell as f32;
        for g in 0..4 {
            z[g * n + j] = zz[g] as f32;
        }
        want_h[j] = luts.lstm_cell(zz, &mut cell) as f32;
        want_s[j] = cell as f32;
    }
    // One "pixel" row of n cells: [1][4][1][n] with gates as channels.
    let zt = Tensor::from_slice(&z).view([1, 4, 1, n as i64]);
    let st = Tensor::from_slice(&s).view([1, 1, 1, n as i64]);
    let (h, s2) = net::lstm_cell(&tl, &zt, &st, 1);
    assert_eq!(Vec::<f32>::try_from(&h.view([-1])).unwrap(), want_h);
    assert_eq!(Vec::<f32>::try_from(&s2.view([-1])).unwrap(), want_s);
}

/// A fake-quantised convolution and its export compute the same integers (up to float rounding
/// at a few .5 boundaries).
#[test]
fn exported_conv_matches_the_float_conv() {
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    for int32 in [true, false] {
        let mut q = QConv::new(
            &vs.root(),
            &format!("c{int32}"),
            12,
            3,
            &[(2, 1.0 / 16.0, net::XMAX_I8), (5, 1.0 / 128.0, net::XMAX_I8), (1, 1.0 / 16384.0, net::XMAX_I16)],
            16.0,
            (-128, 127),
            net::Init::Default,
            int32,
        );
        tch::no_grad(|| {
            let _ = q.bias.uniform_(-1.0, 1.0);
        });
        let conv = export_conv(&q);
        let fits = (0..conv.cout).all(|o| file::requant_bound(&conv, o, Some(2)) < 1 << 31);
        assert_eq!(fits, int32, "the i32 plan fits, the i64 one (30-bit multipliers) does not");
        let (h, w) = (9usize, 11usize);
        let mut rng = Rng::new(8);
        let mut planes = vec![];
        let mut tensors = vec![];
        for (cin, lo, hi) in [(2usize, 0i64, 127i64), (5, -127, 127), (1, -32768, 32767)] {
            let v: Vec<i32> = (0..cin * h * w).map(|_| rng.next_u64() as i64 % (hi - lo + 1)).map(|x| (x.abs() + lo) as i32).collect();
            tensors.push(Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<f32>>()).view([1, cin as i64, h as i64, w as i64]));
            planes.push(Planes { c: cin, h, w, v });
        }
        let want = reference::conv(&conv, &planes.iter().collect::<Vec<_>>());
        let got = tch::no_grad(|| q.forward(&tensors.iter().collect::<Vec<_>>()));
        let got: Vec<f32> = Vec::try_from(&got.view([-1])).unwrap();
        let differ = got.iter().zip(&want.v).filter(|(a, b)| **a as i32 != **b).count();
        let max = got.iter().zip(&want.v).map(|(a, b)| (*a as i32 - b).abs()).max().unwrap();
        assert!(differ * 100 <= got.len() && max <= 1, "{differ} of {} differ, by up to {max}", got.len());
    }
}

/// An untrained model (its bottom `ahat` is zero) predicts exactly the previous frame, in the
/// integer backend.
#[test]
fn untrained_model_predicts_the_previous_frame() {
    for dtype in [DType::U8, DType::U16] {
        let (frames, geom) = tiny(dtype, 5);
        let m = train(&frames, geom, &quick(Bound::Lossless, 0), &mut |_| {}).unwrap();
        assert_eq!(m.meta.steps, 0);
        assert!(m.layers[0].ahat.groups[0].weight.iter().all(|&w| w == 0));
        let r = ReferenceModel::new(Arc::new(m)).unwrap();
        let refs = references(&r, geom, &frames, 32).unwrap();
        assert_eq!(refs, previous_references(&frames, 32));
    }
}

/// A few steps on a tiny sequence lower the loss; the export loads back from its file, and its
/// integer references agree with the float network's.
#[test]
fn short_training_learns_and_exports_a_matching_model() {
    let (frames, geom) = tiny(DType::U16, 8);
    let arch = Arch { layers: vec![LayerArch { a: 1, r: 4, k_lstm: 3, k_ahat: 3, k_a: 3 }, LayerArch { a: 2, r: 4, k_lstm: 3, k_ahat: 3, k_a: 3 }] };
    let opts = TrainOptions { arch: Some(arch), ..quick(Bound::Abs(1.0), 100) };
    let mut losses = vec![];
    let trained = train_float(&frames, geom, &opts, &mut |p| losses.push(p.step_loss)).unwrap();
    assert_eq!(losses.len(), 100);
    let first = losses[..20].iter().sum::<f64>() / 20.0;
    let last = losses[80..].iter().sum::<f64>() / 20.0;
    eprintln!("loss {first} -> {last}");
    assert!(last < 0.9 * first, "loss {first} -> {last}");
    let m = trained.export().unwrap();
    assert_eq!((m.meta.steps, m.meta.frames, m.meta.bound.as_str(), m.meta.size.as_str()), (100, 8, "abs:1", "custom"));
    assert_eq!(m.meta.fingerprint, fingerprint(&frames, DType::U16));
    let bytes = file::to_bytes(&m);
    let back = file::from_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    let int = ReferenceModel::from_bytes(&bytes).unwrap();
    let float = trained.float_model();
    let obs = eval::observed(&frames, Degrade::new(Bound::Abs(1.0), DType::U16).unwrap(), 2);
    let ri = references(&int, geom, &obs, 32).unwrap();
    let rf = references(&float, geom, &obs, 32).unwrap();
    let a = agreement(&ri, &rf);
    assert!(a.differ < 0.01 && a.max_abs <= 2, "{a:?}");
    assert!(ri != previous_references(&obs, 32), "the trained model changes the reference");
}

#[test]
fn bad_input_is_refused() {
    let (frames, geom) = tiny(DType::U8, 3);
    let none = &mut |_: &Progress| {};
    assert!(matches!(train(&frames[..1], geom, &quick(Bound::Lossless, 1), none), Err(TrainError::TooFewFrames(1))));
    assert!(matches!(train(&frames, Geometry::of(41, 32, DType::U8), &quick(Bound::Lossless, 1), none), Err(TrainError::Geometry { index: 0, .. })));
    assert!(matches!(train(&frames, geom, &quick(Bound::Rel(0.1), 1), none), Err(TrainError::Bound(_))));
    let bad = Arch { layers: vec![LayerArch { a: 2, r: 4, k_lstm: 3, k_ahat: 3, k_a: 3 }] };
    assert!(matches!(train(&frames, geom, &TrainOptions { arch: Some(bad), ..quick(Bound::Lossless, 1) }, none), Err(TrainError::Arch(_))));
}

/// Closed loop without a model is the previous reconstruction, and it keeps the bound.
#[test]
fn closed_loop_reconstructs_within_the_bound() {
    let (frames, geom) = tiny(DType::U8, 6);
    let d = Degrade::new(Bound::Abs(2.0), DType::U8).unwrap();
    let refs = eval::closed_loop(None, &frames, geom, d, 1, 4).unwrap();
    assert_eq!(refs.iter().filter(|r| r.is_none()).count(), 2, "key frames at 0 and 4");
    // The reference of frame 2 is frame 1's reconstruction: within 2 of the original.
    let r2 = refs[2].as_ref().unwrap();
    assert!(r2.iter().zip(&frames[1]).all(|(&r, &x)| (r as i64 - x as i64).abs() <= 2));
    let lossless = eval::closed_loop(None, &frames, geom, Degrade::new(Bound::Lossless, DType::U8).unwrap(), 1, 32).unwrap();
    assert_eq!(lossless, previous_references(&frames, 32));
}

/// Closed-loop training (reconstructions quantised against the network's own predictions) runs
/// and learns.
#[test]
fn closed_loop_training_learns() {
    let (frames, geom) = tiny(DType::U8, 8);
    let arch = Arch { layers: vec![LayerArch { a: 1, r: 4, k_lstm: 3, k_ahat: 3, k_a: 3 }] };
    let mut opts = TrainOptions { arch: Some(arch), ..quick(Bound::Abs(2.0), 100) };
    opts.hyper.closed_loop = true;
    let mut losses = vec![];
    let trained = train_float(&frames, geom, &opts, &mut |p| losses.push(p.step_loss)).unwrap();
    let first = losses[..20].iter().sum::<f64>() / 20.0;
    let last = losses[80..].iter().sum::<f64>() / 20.0;
    assert!(last < 0.95 * first, "loss {first} -> {last}");
    trained.export().unwrap();
}

/// The causal stage learns: on moving spots with noise, its integer export predicts the training
/// pixels better than the previous frame does, stays close to its float network, and chooses
/// whether to use the running means on held-out frames; the model file keeps it.
#[test]
fn the_causal_stage_learns_and_exports_a_matching_stage() {
    let (frames, geom) = tiny(DType::U16, 12);
    for bound in [Bound::Lossless, Bound::Abs(2.0)] {
        let opts = causal::CausalOptions { steps: 300, batch: 512, samples: 1 << 14, ..Default::default() };
        let (net, r) = causal::train_causal(&frames, geom, Degrade::new(bound, DType::U16).unwrap(), &opts).unwrap();
        net.validate().unwrap();
        assert!(r.rmse_int < 0.8 * r.rmse_previous, "{bound}: {r:?}");
        assert!(r.rmse_int < 1.1 * r.rmse_float + 0.5, "{bound}: the integer stage strays from the float one: {r:?}");
        let (with, without) = r.held_out.expect("12 frames: the means are decided on held-out frames");
        assert_eq!(r.means, with < without, "{r:?}");
    }
    let none = &mut |_: &Progress| {};
    let m = train(&frames, geom, &quick(Bound::Abs(2.0), 2), none).unwrap();
    assert!(m.causal.is_some(), "training adds the stage by default");
    assert_eq!(file::from_bytes(&file::to_bytes(&m)).unwrap(), m);
    assert!(train(&frames, geom, &TrainOptions { causal: None, ..quick(Bound::Abs(2.0), 2) }, none).unwrap().causal.is_none());
}
