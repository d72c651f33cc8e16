//! The float PredNet that training optimises: the integer network of `docs/MODEL.md`, step for
//! step, with fake quantisation.
//!
//! Every activation here holds the *integers* of the integer network, as floats: gate
//! pre-activations in 1/16, cells in Q12, `H` in Q7, errors and `Ahat` in their units, the
//! intensity as the i16 of [`crate::model::Norm::intensity`]. Rounding, flooring, clamping and
//! table lookups are done exactly as the integer network does them in the forward pass, with
//! straight-through gradients (the rounding is skipped in the backward pass, the tables are
//! differentiated as the smooth function they tabulate). Weights are rounded per output channel
//! and input group to `-127..=127` times a scale and the scales folded into rounded fixed-point
//! multipliers ([`Plan`]), which is exactly what the export stores; the only difference left
//! between this network and the exported one is float rounding in the convolution sums, so the
//! two agree on all but a few pixels (measured by `eval`).
//!
//! The trainable weights live in natural units (inputs and outputs of about unit size) so that
//! one learning rate suits every group: a group reading a tensor in integer units `x` sees
//! `x * in_scale`, and a convolution's output in integer units is `out_scale` times the float
//! sum. The export folds `in_scale * out_scale` and the weight scale into the multipliers.

use crate::model::{Arch, Luts};
use std::cell::RefCell;
use tch::{nn, Device, Kind, Tensor};

/// `floor(x + 0.5)` (the integer network's round-half-up) forward, identity backward.
pub fn round_ste(x: &Tensor) -> Tensor {
    x + ((x + 0.5).floor() - x).detach()
}

/// `floor(x)` forward, identity backward.
pub fn floor_ste(x: &Tensor) -> Tensor {
    x + (x.floor() - x).detach()
}

/// Integer units of the tensors a convolution reads, as the float network scales them.
pub const UNITS_GATE: f64 = 16.0;
pub const UNITS_Q7: f64 = 128.0;
/// Error units of the tensors above layer 0 (`A_l`, `Ahat_l`, `E_l`, `l >= 1`).
pub const UNITS_UPPER: f64 = 16.0;
/// The largest input magnitudes [`crate::model::file::requant_bound`] assumes.
pub const XMAX_I8: f64 = 128.0;
pub const XMAX_I16: f64 = 33024.0;
/// The intensity's integer units per unit of the float network (the normalisation maps the
/// training frames' robust range onto about +-16384).
pub const UNITS_INTENSITY: f64 = 16384.0;

/// One input group of a [`QConv`].
pub struct QGroup {
    pub cin: i64,
    /// `[cout][cin][k][k]`, natural units.
    pub weight: Tensor,
    /// Multiplies the group's integer input before the (float) weights.
    pub in_scale: f64,
    /// The largest magnitude of the group's integer input as `file::requant_bound` counts it
    /// (128 for i8 tensors, 32896 for the intensity).
    pub xmax: f64,
}

/// A convolution with fake-quantised weights and an integer output (`docs/MODEL.md`).
pub struct QConv {
    pub cout: i64,
    pub k: i64,
    pub groups: Vec<QGroup>,
    /// `[cout]`, natural units (times `out_scale` in integer units).
    pub bias: Tensor,
    pub out_scale: f64,
    pub lo: f64,
    pub hi: f64,
    /// Choose shifts so that the requantisation provably fits in i32 (see [`Plan`]).
    pub int32: bool,
    /// The effective weights and bias of the current step ([`QConv::prepare`]).
    prepared: RefCell<Option<(Tensor, Tensor)>>,
}

/// How a convolution's weights start.
#[derive(Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `+-1/sqrt(fan_in)` (fan-in over all groups), bias zero.
    Default,
    /// All zero: the bottom `ahat`, so an untrained model predicts `P' = R[t-1]`.
    Zero,
}

/// The integers of a convolution for its current weights: exactly what the export writes, and
/// what the forward pass computes with (so the float and integer networks differ only by float
/// rounding in the sums).
///
/// Per output channel `c` and group `g`: the weights rounded to `-127..=127` times a scale
/// (their largest magnitude maps to 127); the group's real multiplier `scale * in_scale *
/// out_scale` as `mult / 2^shift`, one shift per channel. With `int32`, the shift is the largest
/// that keeps [`crate::model::file::requant_bound`] below 2^31 (so the torch backend requantises
/// in i32, about 4 times cheaper), which leaves a multiplier as many bits as its group's share of
/// the worst case allows (about 7 for the intensity, 10 or more for the others); without it, the
/// largest that keeps multipliers within 2^30 (i64 requantisation). Training sees the rounded
/// multipliers, so it adapts to them.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Per group and channel: the weight scale.
    pub scale: Vec<Vec<f32>>,
    /// Per group: `[cout][cin][k][k]`.
    pub wint: Vec<Vec<i8>>,
    /// Per group and channel.
    pub mult: Vec<Vec<i64>>,
    pub shift: Vec<u8>,
    pub bias: Vec<i64>,
}

/// A float tensor's values (any device) as f32.
fn floats(t: &Tensor) -> Vec<f32> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&t).unwrap_or_default()
}

impl QConv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        path: &nn::Path,
        name: &str,
        cout: usize,
        k: usize,
        groups: &[(usize, f64, f64)],
        out_scale: f64,
        (lo, hi): (i32, i32),
        init: Init,
        int32: bool,
    ) -> QConv {
        let fan_in: usize = groups.iter().map(|&(cin, _, _)| cin * k * k).sum();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let (k, cout) = (k as i64, cout as i64);
        let groups = groups
            .iter()
            .enumerate()
            .map(|(g, &(cin, in_scale, xmax))| {
                let dims = [cout, cin as i64, k, k];
                let weight = match init {
                    Init::Default => path.var(&format!("{name}_w{g}"), &dims, nn::Init::Uniform { lo: -bound, up: bound }),
                    Init::Zero => path.zeros(&format!("{name}_w{g}"), &dims),
                };
                QGroup { cin: cin as i64, weight, in_scale, xmax }
            })
            .collect();
        let bias = path.zeros(&format!("{name}_b"), &[cout]);
        QConv { cout, k, groups, bias, out_scale, lo: lo as f64, hi: hi as f64, int32, prepared: RefCell::new(None) }
    }

    /// The integers of the current weights.
    pub fn plan(&self) -> Plan {
        let (cout, kk) = (self.cout as usize, (self.k * self.k) as usize);
        let ws: Vec<Vec<f32>> = self.groups.iter().map(|g| floats(&g.weight)).collect();
        let bias = floats(&self.bias);
        let mut scale = vec![vec![0f32; cout]; ws.len()];
        let mut wint: Vec<Vec<i8>> = ws.iter().map(|w| vec![0i8; w.len()]).collect();
        let mut mult = vec![vec![0i64; cout]; ws.len()];
        let (mut shift, mut biases) = (vec![0u8; cout], vec![0i64; cout]);
        for c in 0..cout {
            // Per group: the real multiplier (0 when every weight rounds to 0) and sum |wint|.
            let mut eff = vec![0f64; ws.len()];
            let mut abs = vec![0f64; ws.len()];
            for (g, w) in ws.iter().enumerate() {
                let n = self.groups[g].cin as usize * kk;
                let row = &w[c * n..(c + 1) * n];
                let s = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) / 127.0;
                scale[g][c] = s;
                for (q, &v) in wint[g][c * n..(c + 1) * n].iter_mut().zip(row) {
                    *q = (v / s).round().clamp(-127.0, 127.0) as i8;
                }
                abs[g] = wint[g][c * n..(c + 1) * n].iter().map(|&q| (q as f64).abs()).sum();
                if abs[g] > 0.0 {
                    eff[g] = s as f64 * self.groups[g].in_scale * self.out_scale;
                }
            }
            let b = bias[c] as f64 * self.out_scale;
            let largest = eff.iter().cloned().fold(0.0, f64::max);
            let mut s = 62.0f64;
            if largest > 0.0 {
                s = s.min((2f64.powi(30) / largest).log2().floor());
            }
            if b != 0.0 {
                s = s.min((2f64.powi(60) / b.abs()).log2().floor());
            }
            if self.int32 {
                // 2^s * z + 0.5 + r < 2^31 bounds every partial sum, rounding of the
                // multipliers and bias included.
                let r: f64 = (0..ws.len()).map(|g| 0.5 * abs[g] * self.groups[g].xmax).sum();
                let z: f64 = b.abs() + 0.5 + (0..ws.len()).map(|g| abs[g] * self.groups[g].xmax * eff[g]).sum::<f64>();
                s = s.min(((2f64.powi(31) - 2.0 - r) / z).log2().floor());
            }
            let mut s = s.clamp(1.0, 62.0) as i32;
            loop {
                let p = 2f64.powi(s);
                for g in 0..ws.len() {
                    mult[g][c] = (eff[g] * p).round() as i64;
                }
                biases[c] = (b * p).round() as i64;
                let bound: f64 =
                    biases[c].unsigned_abs() as f64 + p / 2.0 + (0..ws.len()).map(|g| abs[g] * self.groups[g].xmax * mult[g][c] as f64).sum::<f64>();
                if !self.int32 || bound < 2f64.powi(31) - 1.0 || s == 1 {
                    break;
                }
                s -= 1;
            }
            shift[c] = s as u8;
        }
        Plan { scale, wint, mult, shift, bias: biases }
    }

    /// Computes the step's effective weights from the current parameters: the rounded weights
    /// times the rounded multipliers forward, the float weights' (straight-through) gradient
    /// backward.
    pub fn prepare(&self) {
        let plan = self.plan();
        let dev = self.bias.device();
        let cout = self.cout;
        let mut weights = Vec::with_capacity(self.groups.len());
        for (g, grp) in self.groups.iter().enumerate() {
            // Backward: the float weight times its nominal scale (a weight whose multiplier
            // rounds to zero, or the zero-initialised bottom `ahat`, still learns).
            let eff = Tensor::from_slice(&(0..cout as usize).map(|c| (plan.mult[g][c] as f64 / 2f64.powi(plan.shift[c] as i32)) as f32).collect::<Vec<f32>>())
                .view([cout, 1, 1, 1])
                .to_device(dev);
            let wint = Tensor::from_slice(&plan.wint[g].iter().map(|&q| q as f32).collect::<Vec<f32>>()).view_as(&grp.weight).to_device(dev);
            let nominal = &grp.weight * (grp.in_scale * self.out_scale);
            weights.push(&nominal + (wint * eff - nominal.detach()));
        }
        let bq: Vec<f32> = (0..cout as usize).map(|c| (plan.bias[c] as f64 / 2f64.powi(plan.shift[c] as i32)) as f32).collect();
        let b = &self.bias * self.out_scale;
        let bias = &b + (Tensor::from_slice(&bq).to_device(dev) - b.detach());
        *self.prepared.borrow_mut() = Some((Tensor::cat(&weights, 1), bias));
    }

    /// The integer output for integer inputs (one per group, `[B][cin][H][W]`), with the weights
    /// of the last [`QConv::prepare`] (prepared now if never).
    pub fn forward(&self, inputs: &[&Tensor]) -> Tensor {
        debug_assert_eq!(inputs.len(), self.groups.len());
        if self.prepared.borrow().is_none() {
            self.prepare();
        }
        let prepared = self.prepared.borrow();
        let (w, b) = prepared.as_ref().expect("prepared above");
        // One convolution over the concatenated groups: the same sums, fewer kernel launches.
        let x = if inputs.len() == 1 { inputs[0].shallow_clone() } else { Tensor::cat(inputs, 1) };
        let pad = self.k / 2;
        let sum = x.conv2d(w, Some(b), [1i64, 1], [pad, pad], [1i64, 1], 1);
        round_ste(&sum).clamp(self.lo, self.hi)
    }
}

/// The lookup tables on the device, as floats.
pub struct TLuts {
    sigmoid: Tensor,
    tanh: Tensor,
    tanh_cell: Tensor,
}

impl TLuts {
    pub fn new(luts: &Luts, device: Device) -> TLuts {
        let t = |v: &[i16]| Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<f32>>()).to_device(device);
        TLuts { sigmoid: t(&luts.sigmoid), tanh: t(&luts.tanh), tanh_cell: t(&luts.tanh_cell) }
    }
}

/// `table[index]` forward (exactly the integer network's lookup), the gradient of `smooth`
/// backward.
fn lookup(table: &Tensor, index: &Tensor, smooth: Tensor) -> Tensor {
    let idx = index.detach().to_kind(Kind::Int64);
    let exact = table.index_select(0, &idx.flatten(0, -1)).view_as(index);
    &smooth + (exact - smooth.detach())
}

/// One LSTM cell step in Q7/Q12 ([`Luts::lstm_cell`]) over gate pre-activations `z`
/// (`[B][4R][H][W]`, gates i, f, o, g) and the cell `s`; returns `(H, S)`.
pub fn lstm_cell(luts: &TLuts, z: &Tensor, s: &Tensor, r: i64) -> (Tensor, Tensor) {
    let gate = |j: i64| z.narrow(1, j * r, r);
    let sig = |z: Tensor| lookup(&luts.sigmoid, &(&z + 128.0), (&z / 16.0).sigmoid() * 128.0);
    let (i, f, o) = (sig(gate(0)), sig(gate(1)), sig(gate(2)));
    let zg = gate(3);
    let g = lookup(&luts.tanh, &(&zg + 128.0), (&zg / 16.0).tanh() * 128.0);
    // Exact in f32: |f * S| <= 128 * 32767 and |32 i g| <= 2^19, both below 2^24.
    let s = floor_ste(&((f * s + i * g * 32.0) / 128.0)).clamp(-32767.0, 32767.0);
    let index = (s.detach() / 32.0).floor().clamp(-1024.0, 1023.0) + 1024.0;
    let t = lookup(&luts.tanh_cell, &index, (&s / 4096.0).tanh() * 128.0);
    let h = floor_ste(&(o * t / 128.0)).clamp(-127.0, 127.0);
    (h, s)
}

/// `up(T)`: each element repeated into a 2 x 2 block, cropped to `h` x `w`.
pub fn up(t: &Tensor, h: i64, w: i64) -> Tensor {
    let (th, tw) = (t.size()[2], t.size()[3]);
    t.upsample_nearest2d([2 * th, 2 * tw], None, None).narrow(2, 0, h).narrow(3, 0, w)
}

/// `pool(T)`: the maximum of each 2 x 2 block (overhanging blocks use the elements they have).
pub fn pool(t: &Tensor) -> Tensor {
    t.max_pool2d([2i64, 2], [2i64, 2], [0i64, 0], [1i64, 1], true)
}

/// `[clamp(a - ahat, 0, 127), clamp(ahat - a, 0, 127)]`.
fn errors(a: &Tensor, ahat: &Tensor) -> Tensor {
    Tensor::cat(&[(a - ahat).clamp(0.0, 127.0), (ahat - a).clamp(0.0, 127.0)], 1)
}

/// Weights of one layer.
pub struct FLayer {
    pub lstm: QConv,
    pub ahat: QConv,
    pub a: Option<QConv>,
}

/// The float network.
pub struct FloatNet {
    pub vs: nn::VarStore,
    pub arch: Arch,
    pub layers: Vec<FLayer>,
    luts: TLuts,
}

/// A batch of windows' state: per layer `H`, `S`, `E`, `Ahat`.
pub struct FState {
    pub h: Vec<Tensor>,
    pub s: Vec<Tensor>,
    pub e: Vec<Tensor>,
    pub ahat: Vec<Tensor>,
}

impl FState {
    pub fn copy(&self) -> FState {
        let c = |v: &[Tensor]| v.iter().map(|t| t.copy()).collect();
        FState { h: c(&self.h), s: c(&self.s), e: c(&self.e), ahat: c(&self.ahat) }
    }
}

impl FloatNet {
    /// A fresh network (weights drawn from libtorch's generator: seed it first). `units` is the
    /// number of error units per noise standard deviation (the scale of the bottom layer's errors
    /// and correction).
    pub fn new(arch: &Arch, luts: &Luts, units: f64, int32: bool, device: Device) -> FloatNet {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let nl = arch.layers.len();
        let mut layers = Vec::with_capacity(nl);
        for (l, la) in arch.layers.iter().enumerate() {
            let p = &root / format!("l{l}");
            let err_units = if l == 0 { units } else { UNITS_UPPER };
            let mut groups = vec![(2 * la.a, 1.0 / err_units, XMAX_I8), (la.r, 1.0 / UNITS_Q7, XMAX_I8)];
            if l + 1 < nl {
                groups.push((arch.layers[l + 1].r, 1.0 / UNITS_Q7, XMAX_I8));
            }
            if l == 0 {
                groups.push((1, 1.0 / UNITS_INTENSITY, XMAX_I16));
            }
            let lstm = QConv::new(&p, "lstm", 4 * la.r, la.k_lstm, &groups, UNITS_GATE, (-128, 127), Init::Default, int32);
            // Forget gates start leaning open (bias 1), the usual LSTM start.
            tch::no_grad(|| {
                let _ = lstm.bias.narrow(0, la.r as i64, la.r as i64).fill_(1.0);
            });
            let (ahat, a) = if l == 0 {
                (QConv::new(&p, "ahat", la.a, la.k_ahat, &[(la.r, 1.0 / UNITS_Q7, XMAX_I8)], units, (-128, 127), Init::Zero, int32), None)
            } else {
                let below = arch.layers[l - 1].a;
                let below_units = if l == 1 { units } else { UNITS_UPPER };
                (
                    QConv::new(&p, "ahat", la.a, la.k_ahat, &[(la.r, 1.0 / UNITS_Q7, XMAX_I8)], UNITS_UPPER, (0, 127), Init::Default, int32),
                    Some(QConv::new(&p, "a", la.a, la.k_a, &[(2 * below, 1.0 / below_units, XMAX_I8)], UNITS_UPPER, (0, 127), Init::Default, int32)),
                )
            };
            layers.push(FLayer { lstm, ahat, a });
        }
        FloatNet { luts: TLuts::new(luts, device), vs, arch: arch.clone(), layers }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Every convolution's effective weights for the next forward passes (after each optimiser
    /// step).
    pub fn prepare(&self) {
        for l in &self.layers {
            l.lstm.prepare();
            l.ahat.prepare();
            if let Some(a) = &l.a {
                a.prepare();
            }
        }
    }

    /// The state of `batch` windows of `h` x `w` frames before their key frame.
    pub fn zero_state(&self, batch: i64, h: usize, w: usize) -> FState {
        let dev = self.device();
        let mut st = FState { h: vec![], s: vec![], e: vec![], ahat: vec![] };
        for (l, la) in self.arch.layers.iter().enumerate() {
            let (lh, lw) = crate::model::layer_size(h, w, l);
            let z = |c: usize| Tensor::zeros([batch, c as i64, lh as i64, lw as i64], (Kind::Float, dev));
            st.h.push(z(la.r));
            st.s.push(z(la.r));
            st.e.push(z(2 * la.a));
            st.ahat.push(z(la.a));
        }
        st
    }

    /// `predict`: every layer top-down, given the intensity `I(b)` (`[B][1][H][W]`); returns
    /// `Ahat_0` (error units).
    pub fn predict(&self, st: &mut FState, intensity: &Tensor) -> Tensor {
        let nl = self.layers.len();
        for l in (0..nl).rev() {
            let (lh, lw) = (st.h[l].size()[2], st.h[l].size()[3]);
            let upper = (l + 1 < nl).then(|| up(&st.h[l + 1], lh, lw));
            let mut inputs = vec![&st.e[l], &st.h[l]];
            if let Some(u) = &upper {
                inputs.push(u);
            }
            if l == 0 {
                inputs.push(intensity);
            }
            let z = self.layers[l].lstm.forward(&inputs);
            let (h, s) = lstm_cell(&self.luts, &z, &st.s[l], self.arch.layers[l].r as i64);
            st.ahat[l] = self.layers[l].ahat.forward(&[&h]);
            st.h[l] = h;
            st.s[l] = s;
        }
        st.ahat[0].shallow_clone()
    }

    /// `observe` after a prediction, given `A_0 = U(R[t] - b)` (`[B][1][H][W]`). (After the key
    /// frame there is nothing to do: the errors stay zero.)
    pub fn observe(&self, st: &mut FState, a0: &Tensor) {
        st.e[0] = errors(a0, &st.ahat[0]);
        for l in 1..self.layers.len() {
            let conv = self.layers[l].a.as_ref().expect("layers above 0 have `a`");
            let a = pool(&conv.forward(&[&st.e[l - 1]]));
            st.e[l] = errors(&a, &st.ahat[l]);
        }
    }
}
