//! The float PredNet that training optimises: the integer network of `docs/MODEL.md`, step for
//! step, with fake quantisation.
//!
//! Every activation here holds the *integers* of the integer network, as floats: gate
//! pre-activations in 1/16, cells in Q12, `H` in Q7, errors and `Ahat` in their units, the
//! intensity as the i16 of [`crate::model::Norm::intensity`]. Rounding, flooring, clamping and
//! table lookups are done exactly as the integer network does them in the forward pass, with
//! straight-through gradients (the rounding is skipped in the backward pass, the tables are
//! differentiated as the smooth function they tabulate). Weights are rounded per output channel
//! and input group to `-127..=127` times a scale, which is exactly what the export stores; the
//! only difference left between this network and the exported one is the rounding of the
//! multipliers (relative 2^-23) and float rounding in the convolution sums, so the two agree on
//! all but a few pixels (measured by `eval`).
//!
//! The trainable weights live in natural units (inputs and outputs of about unit size) so that
//! one learning rate suits every group: a group reading a tensor in integer units `x` sees
//! `x * in_scale`, and a convolution's output in integer units is `out_scale` times the float
//! sum. The export folds `in_scale * out_scale` and the weight scale into the multipliers.

use crate::model::{Arch, Luts};
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
}

/// How a convolution's weights start.
#[derive(Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `+-1/sqrt(fan_in)` (fan-in over all groups), bias zero.
    Default,
    /// All zero: the bottom `ahat`, so an untrained model predicts `P' = R[t-1]`.
    Zero,
}

impl QConv {
    #[allow(clippy::too_many_arguments)]
    pub fn new(path: &nn::Path, name: &str, cout: usize, k: usize, groups: &[(usize, f64)], out_scale: f64, (lo, hi): (i32, i32), init: Init) -> QConv {
        let fan_in: usize = groups.iter().map(|&(cin, _)| cin * k * k).sum();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let (k, cout) = (k as i64, cout as i64);
        let groups = groups
            .iter()
            .enumerate()
            .map(|(g, &(cin, in_scale))| {
                let dims = [cout, cin as i64, k, k];
                let weight = match init {
                    Init::Default => path.var(&format!("{name}_w{g}"), &dims, nn::Init::Uniform { lo: -bound, up: bound }),
                    Init::Zero => path.zeros(&format!("{name}_w{g}"), &dims),
                };
                QGroup { cin: cin as i64, weight, in_scale }
            })
            .collect();
        let bias = path.zeros(&format!("{name}_b"), &[cout]);
        QConv { cout, k, groups, bias, out_scale, lo: lo as f64, hi: hi as f64 }
    }

    /// Per output channel scale of a weight tensor: its largest magnitude maps to 127. A channel
    /// of zeros gets a tiny scale (its weights stay zero).
    pub fn weight_scale(w: &Tensor) -> Tensor {
        (w.detach().abs().amax([1i64, 2, 3], true).clamp_min(1e-12)) / 127.0
    }

    /// The weights as the export rounds them: `round(w / scale) * scale`, identity backward.
    fn quantised(w: &Tensor) -> Tensor {
        let s = Self::weight_scale(w);
        let q = (w.detach() / &s).round().clamp(-127.0, 127.0) * &s;
        w + (q - w.detach())
    }

    /// The integer output for integer inputs (one per group, `[B][cin][H][W]`).
    pub fn forward(&self, inputs: &[&Tensor]) -> Tensor {
        debug_assert_eq!(inputs.len(), self.groups.len());
        // One convolution over the concatenated groups: the same sums, fewer kernel launches.
        let weights: Vec<Tensor> = self.groups.iter().map(|g| Self::quantised(&g.weight) * (g.in_scale * self.out_scale)).collect();
        let w = Tensor::cat(&weights, 1);
        let x = if inputs.len() == 1 { inputs[0].shallow_clone() } else { Tensor::cat(inputs, 1) };
        let pad = self.k / 2;
        let sum = x.conv2d(&w, Some(&self.bias * self.out_scale), [1i64, 1], [pad, pad], [1i64, 1], 1);
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
    pub fn new(arch: &Arch, luts: &Luts, units: f64, device: Device) -> FloatNet {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let nl = arch.layers.len();
        let mut layers = Vec::with_capacity(nl);
        for (l, la) in arch.layers.iter().enumerate() {
            let p = &root / format!("l{l}");
            let err_units = if l == 0 { units } else { UNITS_UPPER };
            let mut groups = vec![(2 * la.a, 1.0 / err_units), (la.r, 1.0 / UNITS_Q7)];
            if l + 1 < nl {
                groups.push((arch.layers[l + 1].r, 1.0 / UNITS_Q7));
            }
            if l == 0 {
                groups.push((1, 1.0 / UNITS_INTENSITY));
            }
            let lstm = QConv::new(&p, "lstm", 4 * la.r, la.k_lstm, &groups, UNITS_GATE, (-128, 127), Init::Default);
            // Forget gates start leaning open (bias 1), the usual LSTM start.
            tch::no_grad(|| {
                let _ = lstm.bias.narrow(0, la.r as i64, la.r as i64).fill_(1.0);
            });
            let (ahat, a) = if l == 0 {
                (QConv::new(&p, "ahat", la.a, la.k_ahat, &[(la.r, 1.0 / UNITS_Q7)], units, (-128, 127), Init::Zero), None)
            } else {
                let below = arch.layers[l - 1].a;
                let below_units = if l == 1 { units } else { UNITS_UPPER };
                (
                    QConv::new(&p, "ahat", la.a, la.k_ahat, &[(la.r, 1.0 / UNITS_Q7)], UNITS_UPPER, (0, 127), Init::Default),
                    Some(QConv::new(&p, "a", la.a, la.k_a, &[(2 * below, 1.0 / below_units)], UNITS_UPPER, (0, 127), Init::Default)),
                )
            };
            layers.push(FLayer { lstm, ahat, a });
        }
        FloatNet { luts: TLuts::new(luts, device), vs, arch: arch.clone(), layers }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
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
