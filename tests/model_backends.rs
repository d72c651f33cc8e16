//! The two backends of the integer PredNet (`docs/MODEL.md`) give the same integers: random
//! models of several architectures (1 to 4 layers, kernels 1 to 7), every pixel type, odd frame
//! sizes, random frame sequences with saturating values; torch at 1 and 2 threads, batched and
//! one by one, in bands of any size. Also the identities the codec relies on (an untrained bottom
//! layer predicts the previous frame exactly) and the refusals of misuse.

use std::sync::Arc;
use tezipfs::codec::predict::{Geometry, Model, ModelState};
use tezipfs::codec::DType;
use tezipfs::model::file::{self, Rng};
use tezipfs::model::reference::ReferenceModel;
use tezipfs::model::torch::TorchModel;
use tezipfs::model::{Arch, IntModel, LayerArch, Size};

fn l(a: usize, r: usize, k_lstm: usize, k_ahat: usize, k_a: usize) -> LayerArch {
    LayerArch { a, r, k_lstm, k_ahat, k_a }
}

/// Architectures covering 1 to 4 layers and kernels 1, 3, 5, 7 in every position.
fn archs() -> Vec<Arch> {
    vec![
        Arch { layers: vec![l(1, 3, 3, 3, 3)] },
        Arch { layers: vec![l(1, 4, 5, 1, 3), l(3, 5, 3, 5, 1)] },
        Arch { layers: vec![l(1, 2, 1, 3, 1), l(2, 3, 3, 1, 5), l(4, 2, 5, 7, 3)] },
        Arch { layers: vec![l(1, 2, 3, 3, 3), l(2, 2, 7, 3, 3), l(2, 3, 1, 1, 1), l(3, 2, 3, 5, 7)] },
        Size::Small.arch(),
    ]
}

/// A sequence of `n` frames over the type's whole integer-image range: a moving smooth pattern,
/// noise of about 1/50 of the range, saturated pixels (0 and the largest value), and a jump of a
/// quarter of the range at frame 2 (errors saturate).
fn frames(geom: Geometry, n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng(seed);
    let max = geom.mask() as f64;
    (0..n)
        .map(|t| {
            let tf = t as f64;
            let jump = if t >= 2 { max / 4.0 } else { 0.0 };
            (0..geom.pixels())
                .map(|i| {
                    let (y, x) = ((i / geom.width) as f64, (i % geom.width) as f64);
                    if rng.chance(0.03) {
                        return if rng.chance(0.5) { 0 } else { geom.mask() };
                    }
                    let v = max * 0.45 + max * 0.3 * (x * 0.3 + tf * 0.7).sin() * (y * 0.2 - tf * 0.3).cos() + max / 50.0 * (rng.unit() - 0.5) * 2.0 + jump;
                    v.clamp(0.0, max) as u32
                })
                .collect()
        })
        .collect()
}

/// The references a model gives a sequence: the key frame observed, every later frame predicted
/// then observed.
fn run(model: &dyn Model, geom: Geometry, seq: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut s = model.start(geom).unwrap();
    model.observe_batch(&mut [s.as_mut()], &[&seq[0]]).unwrap();
    let mut preds = Vec::new();
    for f in &seq[1..] {
        let mut out = vec![0u32; geom.pixels()];
        model.predict_batch(&mut [s.as_mut()], &mut [&mut out]).unwrap();
        model.observe_batch(&mut [s.as_mut()], &[f]).unwrap();
        preds.push(out);
    }
    preds
}

fn backends(m: &IntModel) -> (ReferenceModel, TorchModel) {
    let m = Arc::new(m.clone());
    (ReferenceModel::new(m.clone()).unwrap(), TorchModel::new(m, tch::Device::Cpu).unwrap())
}

/// Compares the backends on one sequence, torch with its CPU kernels and on the
/// device-generic path CUDA runs; returns how many predicted pixels differ from the previous
/// frame (so the caller can check that the model did something).
fn compare(m: &IntModel, geom: Geometry, seq: &[Vec<u32>], what: &str) -> usize {
    let (r, mut t) = backends(m);
    assert_eq!(r.hash(), t.hash());
    let pr = run(&r, geom, seq);
    for cpu_kernels in [true, false] {
        t.set_cpu_kernels(cpu_kernels);
        let pt = run(&t, geom, seq);
        for (step, (a, b)) in pr.iter().zip(&pt).enumerate() {
            if a != b {
                let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
                panic!("{what}: step {step}: pixel {i} reference {} torch (CPU kernels {cpu_kernels}) {}", a[i], b[i]);
            }
        }
    }
    pr.iter().zip(seq).map(|(a, f)| a.iter().zip(f).filter(|(p, b)| p != b).count()).sum()
}

/// Random models as they are (multipliers up to 2^31: the torch backend requantises in int64),
/// shrunk so that every requantisation fits in int32 (the torch backend's int32 path), and with
/// one multiplier per output channel for all i8 groups (the torch backend merges them into one
/// product).
fn models(arch: &Arch, dtype: DType, seed: u64) -> [IntModel; 6] {
    let m = file::random(arch, dtype, seed);
    let mut small = m.clone();
    file::shrink_multipliers(&mut small);
    let mut shared = m.clone();
    file::share_multipliers(&mut shared);
    let (_, t) = backends(&m);
    let (n32, n) = t.int32_convs();
    assert!(n32 < n, "random models take the int64 path ({n32} of {n} convolutions in int32)");
    let products = t.products();
    let (_, t) = backends(&small);
    let (n32, n) = t.int32_convs();
    assert_eq!(n32, n, "shrunk models take the int32 path");
    let (_, t) = backends(&shared);
    assert!(t.products() < products, "groups with equal multipliers share a product");
    // Each with and without a noise scale (model file versions 2 and 1).
    [m, small, shared].into_iter().enumerate().flat_map(|(i, m)| [file::toggle_scale(&m, i as u64), m]).collect::<Vec<_>>().try_into().expect("six models")
}

#[test]
fn backends_agree_on_every_arch_dtype_and_odd_size() {
    tch::set_num_threads(1);
    let sizes = [(37, 23), (1, 17), (13, 1), (1, 1), (2, 3)];
    for (ai, arch) in archs().iter().enumerate() {
        for dtype in DType::ALL {
            for m in models(arch, dtype, 1000 + ai as u64 * 10 + dtype.id() as u64) {
                let mut changed = 0;
                for (si, &(w, h)) in sizes.iter().enumerate() {
                    let geom = Geometry::of(w, h, dtype);
                    // The first size runs long enough for cells and H to reach their limits.
                    let seq = frames(geom, if si == 0 { 14 } else { 6 }, (ai * 100 + si) as u64 + dtype.id() as u64);
                    changed += compare(&m, geom, &seq, &format!("arch {ai} {dtype} {w}x{h}"));
                }
                assert!(changed > 0, "arch {ai} {dtype}: the model never changed the reference");
            }
        }
    }
}

#[test]
fn backends_agree_at_one_and_two_threads() {
    // Large enough that libtorch splits its operations between threads.
    let geom = Geometry::of(301, 203, DType::U16);
    let seq = frames(geom, 4, 5);
    for m in models(&Size::Small.arch(), DType::U16, 77) {
        let (r, mut t) = backends(&m);
        let want = run(&r, geom, &seq);
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            for cpu_kernels in [true, false] {
                t.set_cpu_kernels(cpu_kernels);
                assert!(run(&t, geom, &seq) == want, "{threads} threads, CPU kernels {cpu_kernels}");
            }
        }
    }
    tch::set_num_threads(1);
}

/// Several windows in one call (two geometries mixed, a key frame among predicted frames) give
/// what each gives alone; so do bands of any size, and cloned states.
#[test]
fn batched_banded_and_cloned_states_agree() {
    tch::set_num_threads(1);
    let arch = Arch { layers: vec![l(1, 3, 3, 5, 3), l(2, 3, 3, 3, 3), l(2, 2, 3, 1, 3)] };
    let m = file::random(&arch, DType::U8, 9);
    let (r, mut t) = backends(&m);
    let geoms = [Geometry::of(37, 23, DType::U8), Geometry::of(37, 23, DType::U8), Geometry::of(19, 5, DType::U8), Geometry::of(37, 23, DType::U8)];
    let seqs: Vec<Vec<Vec<u32>>> = geoms.iter().enumerate().map(|(i, &g)| frames(g, 5, 40 + i as u64)).collect();
    let want: Vec<Vec<Vec<u32>>> = geoms.iter().zip(&seqs).map(|(&g, s)| run(&r, g, s)).collect();
    // Band sizes: two rows of one image, a few rows, whole images two by two, everything at
    // once; with the CPU kernels and on the device-generic path.
    for (band, cpu_kernels) in [1, 2_000, 200_000, 1 << 40].into_iter().flat_map(|b| [(b, true), (b, false)]) {
        t.set_band_bytes(band);
        t.set_cpu_kernels(cpu_kernels);
        let mut states: Vec<Box<dyn ModelState>> = geoms.iter().map(|&g| t.start(g).unwrap()).collect();
        // The last window starts one frame late: its key frame is observed with the others'
        // predicted frames.
        {
            let mut refs: Vec<&mut dyn ModelState> = states[..3].iter_mut().map(|s| s.as_mut()).collect();
            t.observe_batch(&mut refs, &[&seqs[0][0], &seqs[1][0], &seqs[2][0]]).unwrap();
        }
        for step in 1..5 {
            let active = if step == 1 { 3 } else { 4 };
            let mut outs: Vec<Vec<u32>> = geoms[..active].iter().map(|g| vec![0; g.pixels()]).collect();
            {
                let mut refs: Vec<&mut dyn ModelState> = states[..active].iter_mut().map(|s| s.as_mut()).collect();
                let mut o: Vec<&mut [u32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                t.predict_batch(&mut refs, &mut o).unwrap();
            }
            for (i, out) in outs.iter().enumerate() {
                let k = if i == 3 { step - 2 } else { step - 1 };
                assert!(*out == want[i][k], "band {band} CPU kernels {cpu_kernels} step {step} window {i}");
            }
            let mut refs: Vec<&mut dyn ModelState> = states.iter_mut().map(|s| s.as_mut()).collect();
            let recons: Vec<&[u32]> = (0..4).map(|i| if i == 3 { &seqs[3][step - 1][..] } else { &seqs[i][step][..] }).collect();
            t.observe_batch(&mut refs, &recons).unwrap();
        }
    }
    // A clone continues like the original, and the original is not changed by the clone (the
    // CPU kernels update the cell in place).
    t.set_cpu_kernels(true);
    let g = geoms[0];
    let mut s = t.start(g).unwrap();
    t.observe_batch(&mut [s.as_mut()], &[&seqs[0][0]]).unwrap();
    let mut out = vec![0; g.pixels()];
    t.predict_batch(&mut [s.as_mut()], &mut [&mut out]).unwrap();
    t.observe_batch(&mut [s.as_mut()], &[&seqs[0][1]]).unwrap();
    let mut c = s.clone_box();
    for step in 2..5 {
        let (mut o1, mut o2) = (vec![0; g.pixels()], vec![0; g.pixels()]);
        t.predict_batch(&mut [c.as_mut()], &mut [&mut o2]).unwrap();
        t.observe_batch(&mut [c.as_mut()], &[&seqs[0][step]]).unwrap();
        t.predict_batch(&mut [s.as_mut()], &mut [&mut o1]).unwrap();
        t.observe_batch(&mut [s.as_mut()], &[&seqs[0][step]]).unwrap();
        assert!(o1 == want[0][step - 1] && o2 == want[0][step - 1], "clone, step {step}");
    }
}

/// An untrained model (bottom prediction weights and bias zero) predicts the previous frame.
#[test]
fn zero_bottom_layer_predicts_the_previous_frame() {
    tch::set_num_threads(1);
    for dtype in [DType::U8, DType::I16, DType::F32, DType::U32] {
        let mut m = file::random(&Size::Small.arch(), dtype, 3);
        let ahat = &mut m.layers[0].ahat;
        ahat.groups.iter_mut().for_each(|g| g.weight.fill(0));
        ahat.bias.fill(0);
        let geom = Geometry::of(29, 7, dtype);
        let seq = frames(geom, 4, 1);
        let (r, t) = backends(&m);
        for model in [&r as &dyn Model, &t] {
            let preds = run(model, geom, &seq);
            for (k, p) in preds.iter().enumerate() {
                assert!(*p == seq[k], "{dtype}: step {k}");
            }
        }
    }
}

#[test]
fn misuse_is_refused_not_a_panic() {
    let m = file::random(&Size::Small.arch(), DType::U16, 1);
    let other = file::random(&Size::Small.arch(), DType::U16, 2);
    let (r, t) = backends(&m);
    let (r2, t2) = backends(&other);
    let geom = Geometry::of(8, 5, DType::U16);
    for (model, same_other, other_backend) in [(&r as &dyn Model, &r2 as &dyn Model, &t as &dyn Model), (&t, &t2, &r)] {
        assert!(model.start(Geometry::of(8, 5, DType::U8)).is_err(), "another pixel type");
        assert!(model.start(Geometry::of(0, 5, DType::U16)).is_err(), "empty frames");
        assert!(model.start(Geometry::of(1 << 40, 1 << 40, DType::U16)).is_err(), "overflowing size");
        assert!(model.start(Geometry::of(1 << 20, 1 << 20, DType::U16)).is_err(), "absurd size");
        let mut s = model.start(geom).unwrap();
        let mut out = vec![0; 40];
        assert!(model.predict_batch(&mut [s.as_mut()], &mut [&mut out]).is_err(), "predict before observe");
        assert!(model.observe_batch(&mut [s.as_mut()], &[&[0; 39]]).is_err(), "short frame");
        model.observe_batch(&mut [s.as_mut()], &[&[7; 40]]).unwrap();
        let mut short = vec![0; 41];
        assert!(model.predict_batch(&mut [s.as_mut()], &mut [&mut short]).is_err(), "long output");
        assert!(model.predict_batch(&mut [s.as_mut()], &mut []).is_err(), "no output");
        assert!(same_other.predict_batch(&mut [s.as_mut()], &mut [&mut out]).is_err(), "another model's state");
        assert!(other_backend.predict_batch(&mut [s.as_mut()], &mut [&mut out]).is_err(), "another backend's state");
        model.predict_batch(&mut [s.as_mut()], &mut [&mut out]).unwrap();
    }
    // Models that fail validation are refused by both constructors.
    let mut bad = m.clone();
    bad.layers[0].lstm.shift[0] = 0;
    assert!(ReferenceModel::new(Arc::new(bad.clone())).is_err());
    assert!(TorchModel::new(Arc::new(bad), tch::Device::Cpu).is_err());
    // And from a file: the hash is the file's.
    let bytes = file::to_bytes(&m);
    assert_eq!(ReferenceModel::from_bytes(&bytes).unwrap().hash(), file::hash(&bytes));
    assert_eq!(TorchModel::from_bytes(&bytes, tch::Device::Cpu).unwrap().hash(), file::hash(&bytes));
}

/// Observing twice without a prediction between (a frame coded without the model) clears the
/// errors, as on a key frame, in both backends.
#[test]
fn observe_without_prediction_clears_errors() {
    tch::set_num_threads(1);
    let m = file::random(&Size::Small.arch(), DType::U16, 12);
    let (r, t) = backends(&m);
    let geom = Geometry::of(23, 11, DType::U16);
    let seq = frames(geom, 8, 3);
    let mut results = Vec::new();
    for model in [&r as &dyn Model, &t] {
        let mut s = model.start(geom).unwrap();
        let mut preds = Vec::new();
        // o o p o o p o p o : frames 0 1 . 2 3 . 4 . 5
        let mut next = 0;
        for op in "oopoopopo".chars() {
            if op == 'o' {
                model.observe_batch(&mut [s.as_mut()], &[&seq[next]]).unwrap();
                next += 1;
            } else {
                let mut out = vec![0; geom.pixels()];
                model.predict_batch(&mut [s.as_mut()], &mut [&mut out]).unwrap();
                preds.push(out);
            }
        }
        results.push(preds);
    }
    assert!(results[0] == results[1]);
}
