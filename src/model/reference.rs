//! The reference backend: the integer network of `docs/MODEL.md` in plain Rust loops.
//!
//! This is the definition the other backends are tested against, so it follows the
//! specification literally and shares nothing with them but the types of [`super`]: tensors
//! are `C x H x W` planes of `i32`, convolutions are direct loops (one pass over the image per
//! weight), every group has its own exact `i32` accumulator, and the requantisation, the LSTM
//! cell and the fixed-point maps are [`Conv::requant`], [`Luts::lstm_cell`] and [`Norm`]'s
//! methods. It is fast enough for tests and small frames, not for production.

use super::file::{self, ModelFileError};
use super::{layer_size, Conv, IntModel};
use crate::codec::predict::causal::CausalStage;
use crate::codec::predict::{hash_hex, Geometry, Model, ModelHash, ModelState, PredictError};
use std::sync::Arc;

/// A `C x H x W` tensor of integers, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<i32>,
}

impl Planes {
    pub fn zeros(c: usize, h: usize, w: usize) -> Planes {
        Planes { c, h, w, v: vec![0; c * h * w] }
    }
    fn plane(&self, j: usize) -> &[i32] {
        let hw = self.h * self.w;
        &self.v[j * hw..(j + 1) * hw]
    }
}

/// `conv` over `inputs` (one tensor per group, all of one size), zero padded so the output has
/// the input's size. Direct convolution: for each output channel, each group's accumulator is
/// built by adding `weight * shifted input plane` over the rows and columns where the shifted
/// plane lies inside the image, then [`Conv::requant`] combines the groups per pixel.
pub fn conv(conv: &Conv, inputs: &[&Planes]) -> Planes {
    let (h, w) = (inputs[0].h, inputs[0].w);
    let hw = h * w;
    let (k, p) = (conv.k, conv.k / 2);
    let ng = conv.groups.len();
    let mut out = Planes::zeros(conv.cout, h, w);
    let mut accs = vec![vec![0i32; hw]; ng];
    for c in 0..conv.cout {
        for (g, (grp, input)) in conv.groups.iter().zip(inputs).enumerate() {
            debug_assert_eq!((input.c, input.h, input.w), (grp.cin, h, w));
            let acc = &mut accs[g];
            acc.fill(0);
            for j in 0..grp.cin {
                let plane = input.plane(j);
                for dy in 0..k {
                    // Output rows y whose input row y + dy - p is inside the image.
                    let (y0, y1) = (p.saturating_sub(dy), (h + p).saturating_sub(dy).min(h));
                    for dx in 0..k {
                        let wt = grp.weight[((c * grp.cin + j) * k + dy) * k + dx] as i32;
                        let (x0, x1) = (p.saturating_sub(dx), (w + p).saturating_sub(dx).min(w));
                        if wt == 0 || x0 >= x1 {
                            continue;
                        }
                        for y in y0..y1 {
                            let sy = y + dy - p;
                            let src = &plane[sy * w + x0 + dx - p..sy * w + x1 + dx - p];
                            let dst = &mut acc[y * w + x0..y * w + x1];
                            for (d, &s) in dst.iter_mut().zip(src) {
                                *d += wt * s;
                            }
                        }
                    }
                }
            }
        }
        let o = &mut out.v[c * hw..(c + 1) * hw];
        let mut a = [0i32; 8];
        for (i, o) in o.iter_mut().enumerate() {
            for g in 0..ng {
                a[g] = accs[g][i];
            }
            *o = conv.requant(c, &a[..ng]);
        }
    }
    out
}

/// `up(T)`: every element repeated into a 2 x 2 block, cropped to `h x w`.
pub fn up(t: &Planes, h: usize, w: usize) -> Planes {
    let mut out = Planes::zeros(t.c, h, w);
    for j in 0..t.c {
        for y in 0..h {
            for x in 0..w {
                out.v[(j * h + y) * w + x] = t.v[(j * t.h + y / 2) * t.w + x / 2];
            }
        }
    }
    out
}

/// `pool(T)`: the maximum of each 2 x 2 block (the elements it has, at odd edges).
pub fn pool(t: &Planes) -> Planes {
    let (h, w) = (t.h.div_ceil(2), t.w.div_ceil(2));
    let mut out = Planes::zeros(t.c, h, w);
    for j in 0..t.c {
        for y in 0..h {
            for x in 0..w {
                let mut m = i32::MIN;
                for sy in 2 * y..(2 * y + 2).min(t.h) {
                    for sx in 2 * x..(2 * x + 2).min(t.w) {
                        m = m.max(t.v[(j * t.h + sy) * t.w + sx]);
                    }
                }
                out.v[(j * h + y) * w + x] = m;
            }
        }
    }
    out
}

/// `E = [clamp(A - Ahat, 0, 127), clamp(Ahat - A, 0, 127)]`.
fn errors(a: &Planes, ahat: &Planes) -> Planes {
    let mut e = Planes::zeros(2 * a.c, a.h, a.w);
    let n = a.v.len();
    for (i, (&a, &p)) in a.v.iter().zip(&ahat.v).enumerate() {
        e.v[i] = (a - p).clamp(0, 127);
        e.v[n + i] = (p - a).clamp(0, 127);
    }
    e
}

/// One layer's state: `H`, the cell `S`, `E` and the last `Ahat`.
#[derive(Clone, Debug)]
struct LayerState {
    hid: Planes,
    cell: Planes,
    err: Planes,
    ahat: Planes,
}

/// A window's state in the reference backend.
#[derive(Clone, Debug)]
pub struct ReferenceState {
    /// The model this state belongs to (a state is refused by any other).
    model: ModelHash,
    geom: Geometry,
    layers: Vec<LayerState>,
    /// The last reconstruction, once one was observed.
    b: Option<Vec<u32>>,
    /// Whether a prediction was made since the last observation.
    predicted: bool,
}

impl ModelState for ReferenceState {
    fn clone_box(&self) -> Box<dyn ModelState> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The reference backend of a model.
pub struct ReferenceModel {
    model: Arc<IntModel>,
    hash: ModelHash,
    /// The model's causal stage, laid out to run.
    stage: Option<CausalStage>,
}

impl ReferenceModel {
    /// A validated model (its hash is that of its file, [`file::to_bytes`]).
    pub fn new(model: Arc<IntModel>) -> Result<ReferenceModel, ModelFileError> {
        file::validate(&model)?;
        let hash = file::hash(&file::to_bytes(&model));
        Ok(ReferenceModel { stage: model.causal.clone().map(CausalStage::new), model, hash })
    }

    /// The model of a model file.
    pub fn from_bytes(bytes: &[u8]) -> Result<ReferenceModel, ModelFileError> {
        let model = file::from_bytes(bytes)?;
        Ok(ReferenceModel { stage: model.causal.clone().map(CausalStage::new), model: Arc::new(model), hash: file::hash(bytes) })
    }

    pub fn model(&self) -> &Arc<IntModel> {
        &self.model
    }

    fn err(&self, why: impl Into<String>) -> PredictError {
        PredictError::Model { model: hash_hex(&self.hash), why: why.into() }
    }

    fn state<'a>(&self, s: &'a mut dyn ModelState) -> Result<&'a mut ReferenceState, PredictError> {
        let s = s.as_any_mut().downcast_mut::<ReferenceState>().ok_or_else(|| self.err("the state belongs to another backend"))?;
        if s.model != self.hash {
            return Err(self.err("the state belongs to another model"));
        }
        Ok(s)
    }

    /// One prediction (`docs/MODEL.md`, predict).
    fn predict(&self, s: &mut ReferenceState, out: &mut [u32]) -> Result<(), PredictError> {
        let m = &*self.model;
        let geom = s.geom;
        if out.len() != geom.pixels() {
            return Err(self.err(format!("output of {} pixels for frames of {}", out.len(), geom.pixels())));
        }
        let b = s.b.as_ref().ok_or_else(|| self.err("predict before any frame was observed"))?;
        let mut intensity = Planes::zeros(1, geom.height, geom.width);
        for (i, &v) in intensity.v.iter_mut().zip(b) {
            *i = m.norm.net_intensity(v);
        }
        let nl = m.layers.len();
        for l in (0..nl).rev() {
            let upper = (l + 1 < nl).then(|| {
                let ls = &s.layers[l];
                up(&s.layers[l + 1].hid, ls.hid.h, ls.hid.w)
            });
            let ls = &mut s.layers[l];
            let mut inputs = vec![&ls.err, &ls.hid];
            if let Some(u) = &upper {
                inputs.push(u);
            }
            if l == 0 {
                inputs.push(&intensity);
            }
            let z = conv(&m.layers[l].lstm, &inputs);
            let r = m.arch.layers[l].r;
            let hw = ls.hid.h * ls.hid.w;
            for j in 0..r {
                for i in 0..hw {
                    let at = |gate: usize| z.v[(gate * r + j) * hw + i];
                    let cell = &mut ls.cell.v[j * hw + i];
                    ls.hid.v[j * hw + i] = m.luts.lstm_cell([at(0), at(1), at(2), at(3)], cell);
                }
            }
            ls.ahat = conv(&m.layers[l].ahat, &[&ls.hid]);
        }
        let mask = geom.mask();
        for ((o, &b), &u) in out.iter_mut().zip(b).zip(&s.layers[0].ahat.v) {
            *o = m.norm.corrected(b, u, mask);
        }
        s.predicted = true;
        Ok(())
    }

    /// One observation (`docs/MODEL.md`, observe).
    fn observe(&self, s: &mut ReferenceState, recon: &[u32]) -> Result<(), PredictError> {
        let m = &*self.model;
        let geom = s.geom;
        if recon.len() != geom.pixels() {
            return Err(self.err(format!("frame of {} pixels for frames of {}", recon.len(), geom.pixels())));
        }
        match (&s.b, s.predicted) {
            (Some(b), true) => {
                let mut a = Planes::zeros(1, geom.height, geom.width);
                for ((a, &r), &b) in a.v.iter_mut().zip(recon).zip(b) {
                    *a = m.norm.error(r as i64 - b as i64, b);
                }
                s.layers[0].err = errors(&a, &s.layers[0].ahat);
                for l in 1..m.layers.len() {
                    let conv_a = m.layers[l].a.as_ref().expect("validated: layers above 0 have `a`");
                    let a = pool(&conv(conv_a, &[&s.layers[l - 1].err]));
                    s.layers[l].err = errors(&a, &s.layers[l].ahat);
                }
            }
            // No prediction since the last observation (the key frame): no error to take in.
            _ => s.layers.iter_mut().for_each(|ls| ls.err.v.fill(0)),
        }
        match &mut s.b {
            Some(b) => b.copy_from_slice(recon),
            None => s.b = Some(recon.to_vec()),
        }
        s.predicted = false;
        Ok(())
    }
}

impl Model for ReferenceModel {
    fn hash(&self) -> ModelHash {
        self.hash
    }

    fn causal(&self) -> Option<&crate::codec::predict::causal::CausalStage> {
        self.stage.as_ref()
    }

    fn fits(&self, geom: Geometry) -> Result<(), PredictError> {
        file::check_frames(&self.model, &geom).map_err(|why| self.err(why))
    }

    fn state_bytes(&self, geom: Geometry) -> u64 {
        // i32 planes and a u32 reconstruction (`ReferenceState`).
        super::state_bytes(&self.model.arch, geom, &super::PlaneBytes { hid: 4, cell: 4, err: 4, ahat: 4, frame: 4 })
    }

    fn start(&self, geom: Geometry) -> Result<Box<dyn ModelState>, PredictError> {
        self.fits(geom)?;
        let layers = self
            .model
            .arch
            .layers
            .iter()
            .enumerate()
            .map(|(l, la)| {
                let (h, w) = layer_size(geom.height, geom.width, l);
                LayerState {
                    hid: Planes::zeros(la.r, h, w),
                    cell: Planes::zeros(la.r, h, w),
                    err: Planes::zeros(2 * la.a, h, w),
                    ahat: Planes::zeros(la.a, h, w),
                }
            })
            .collect();
        Ok(Box::new(ReferenceState { model: self.hash, geom, layers, b: None, predicted: false }))
    }

    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError> {
        if states.len() != outs.len() {
            return Err(self.err(format!("{} states and {} outputs", states.len(), outs.len())));
        }
        for (s, out) in states.iter_mut().zip(outs.iter_mut()) {
            let s = self.state(&mut **s)?;
            self.predict(s, out)?;
        }
        Ok(())
    }

    fn observe_batch(&self, states: &mut [&mut dyn ModelState], recons: &[&[u32]]) -> Result<(), PredictError> {
        if states.len() != recons.len() {
            return Err(self.err(format!("{} states and {} frames", states.len(), recons.len())));
        }
        for (s, recon) in states.iter_mut().zip(recons) {
            let s = self.state(&mut **s)?;
            self.observe(s, recon)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state_bytes` is what a state that observed a frame holds, on every layer's size (odd
    /// sizes round up at each halving).
    #[test]
    fn state_bytes_is_what_a_state_holds() {
        let m = ReferenceModel::new(Arc::new(file::random(&crate::model::Size::Prednet.arch(), crate::codec::DType::U16, 4))).unwrap();
        let geom = Geometry::of(37, 29, crate::codec::DType::U16);
        let mut st = m.start(geom).unwrap();
        m.observe_batch(&mut [&mut *st], &[&vec![1000u32; geom.pixels()]]).unwrap();
        let s = st.as_any().downcast_ref::<ReferenceState>().unwrap();
        let planes: usize = s.layers.iter().map(|l| l.hid.v.len() + l.cell.v.len() + l.err.v.len() + l.ahat.v.len()).sum();
        let held = 4 * (planes + s.b.as_ref().map_or(0, Vec::len));
        assert_eq!(m.state_bytes(geom), held as u64);
    }

    fn planes(c: usize, h: usize, w: usize, mut f: impl FnMut(usize, usize, usize) -> i32) -> Planes {
        let mut p = Planes::zeros(c, h, w);
        for j in 0..c {
            for y in 0..h {
                for x in 0..w {
                    p.v[(j * h + y) * w + x] = f(j, y, x);
                }
            }
        }
        p
    }

    /// The direct loops against the definition written as a sum with bounds checks.
    #[test]
    fn reference_conv_matches_the_formula() {
        let mut rng = file::Rng(11);
        for &(k, h, w) in &[(1, 3, 4), (3, 5, 7), (5, 2, 9), (7, 4, 3), (3, 1, 1), (5, 1, 6)] {
            let cins = [2usize, 3];
            let cout = 3;
            let groups = cins
                .iter()
                .map(|&cin| super::super::Group {
                    cin,
                    weight: (0..cout * cin * k * k).map(|_| rng.range(-127, 127) as i8).collect(),
                    mult: (0..cout).map(|_| rng.range(-1000, 1000) as i32).collect(),
                })
                .collect();
            let c = Conv {
                cout,
                k,
                groups,
                bias: (0..cout).map(|_| rng.range(-5000, 5000)).collect(),
                shift: (0..cout).map(|_| rng.range(1, 12) as u8).collect(),
                lo: -128,
                hi: 127,
            };
            let ins: Vec<Planes> = cins.iter().map(|&cin| planes(cin, h, w, |_, _, _| rng.range(-128, 127) as i32)).collect();
            let got = conv(&c, &[&ins[0], &ins[1]]);
            let p = (k / 2) as isize;
            for o in 0..cout {
                for y in 0..h {
                    for x in 0..w {
                        let mut accs = vec![];
                        for (g, grp) in c.groups.iter().enumerate() {
                            let mut acc = 0i64;
                            for j in 0..grp.cin {
                                for dy in 0..k {
                                    for dx in 0..k {
                                        let (sy, sx) = (y as isize + dy as isize - p, x as isize + dx as isize - p);
                                        if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                            acc += grp.weight[((o * grp.cin + j) * k + dy) * k + dx] as i64
                                                * ins[g].v[(j * h + sy as usize) * w + sx as usize] as i64;
                                        }
                                    }
                                }
                            }
                            accs.push(acc as i32);
                        }
                        assert_eq!(got.v[(o * h + y) * w + x], c.requant(o, &accs), "k {k} {h}x{w} at {o},{y},{x}");
                    }
                }
            }
        }
    }

    #[test]
    fn reference_pool_and_up_at_odd_sizes() {
        let t = planes(2, 3, 5, |j, y, x| (j * 100 + y * 10 + x) as i32);
        let p = pool(&t);
        assert_eq!((p.h, p.w), (2, 3));
        assert_eq!(p.v[..6], [11, 13, 14, 21, 23, 24]);
        let u = up(&p, 3, 5);
        assert_eq!(u.v[..15], [11, 11, 13, 13, 14, 11, 11, 13, 13, 14, 21, 21, 23, 23, 24]);
        assert_eq!(u.v[15], 111);
    }
}

#[cfg(test)]
mod activity {
    use super::*;
    use crate::codec::DType;
    use crate::model::{file, Size};

    /// Random models must make the network do something: hidden values spread and saturate, the
    /// correction varies, errors are taken in. Otherwise the backend tests prove little.
    #[test]
    fn random_models_exercise_the_ranges() {
        for dtype in [DType::U8, DType::U16, DType::F32] {
            // Without a noise scale: its random stabilised intensity (tested against the torch
            // backend in tests/model_backends.rs) moves the activity this test tunes for.
            let mut rm = file::random(&Size::Small.arch(), dtype, 5);
            rm.norm.scale = None;
            let m = ReferenceModel::new(Arc::new(rm)).unwrap();
            let geom = Geometry::of(40, 30, dtype);
            let mut s = m.start(geom).unwrap();
            let mut rng = file::Rng(3);
            let max = geom.mask() as f64;
            let mut frame: Vec<u32> = (0..geom.pixels()).map(|i| (max * (0.5 + 0.3 * ((i % 40) as f64 * 0.3).sin())) as u32).collect();
            let mut out = vec![0; geom.pixels()];
            m.observe_batch(&mut [s.as_mut()], &[&frame]).unwrap();
            let (mut h_sat, mut h_mid, mut h_n, mut corr, mut err_nz, mut err_n) = (0, 0, 0, std::collections::BTreeSet::new(), 0, 0);
            let (mut s_lo, mut s_hi, mut h_lo, mut h_hi) = (0, 0, 0, 0);
            for _ in 0..12 {
                m.predict_batch(&mut [s.as_mut()], &mut [&mut out]).unwrap();
                for v in frame.iter_mut() {
                    *v = (*v as f64 + max / 50.0 * (rng.unit() - 0.5)).clamp(0.0, max) as u32;
                }
                m.observe_batch(&mut [s.as_mut()], &[&frame]).unwrap();
                let st = s.as_any().downcast_ref::<ReferenceState>().unwrap();
                for ls in &st.layers {
                    h_n += ls.hid.v.len();
                    h_sat += ls.hid.v.iter().filter(|v| v.abs() >= 120).count();
                    h_mid += ls.hid.v.iter().filter(|v| v.abs() > 5 && v.abs() < 100).count();
                    s_lo += ls.cell.v.iter().filter(|&&v| v == -32767).count();
                    s_hi += ls.cell.v.iter().filter(|&&v| v == 32767).count();
                    h_lo += ls.hid.v.iter().filter(|&&v| v == -127).count();
                    h_hi += ls.hid.v.iter().filter(|&&v| v == 127).count();
                    err_n += ls.err.v.len();
                    err_nz += ls.err.v.iter().filter(|&&v| v != 0).count();
                }
                corr.extend(st.layers[0].ahat.v.iter().cloned());
            }
            eprintln!(
                "{dtype}: H saturated {:.3}, H mid {:.3}, distinct Ahat_0 {}, E nonzero {:.3}, S at -/+32767 {s_lo}/{s_hi}, H at -/+127 {h_lo}/{h_hi}",
                h_sat as f64 / h_n as f64,
                h_mid as f64 / h_n as f64,
                corr.len(),
                err_nz as f64 / err_n as f64
            );
            assert!(s_lo > 0 && s_hi > 0 && h_lo > 0 && h_hi > 0, "{dtype}: cells and H reach both limits");
            assert!(h_sat * 50 > h_n && h_mid * 5 > h_n, "{dtype}: H saturated {h_sat}, mid {h_mid} of {h_n}");
            assert!(corr.len() > 30, "{dtype}: {} distinct corrections", corr.len());
            assert!(err_nz * 5 > err_n, "{dtype}: {err_nz} of {err_n} errors non-zero");
        }
    }
}
