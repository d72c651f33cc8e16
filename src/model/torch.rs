//! The libtorch backend: the integer network of `docs/MODEL.md` with int8 matrix products, on
//! CPU or CUDA.
//!
//! It computes exactly what [`super::reference`] computes (tested), by other means:
//!
//! - Tensors are laid out `C x N x H x W` ("CNHW"): channel-major, so that the im2col matrix of
//!   a convolution is built by copying whole shifted rows of each channel plane (memcpy speed),
//!   and the batch dimension `N` (several windows' states stacked) sits inside the pixel
//!   dimension of the product.
//! - A convolution group is one `torch._int_mm` (int8 x int8 -> int32, exact):
//!   `acc[cout, pixels] = W[cout, k*k*cin] @ B[k*k*cin, pixels]`, `B` row `tap * cin + j` the
//!   input channel `j` shifted by the tap. CUDA's int8 product needs more than 16 rows and both
//!   other dimensions multiples of 8; the rows, `K` and the pixel count are padded with zeros
//!   on every device, so CPU and CUDA run one code path.
//! - The i16 intensity group is two int8 products: after zero padding, every value `v` is
//!   `256 * (v >> 8) + ((v & 255) - 128) + 128` with both parts in -128..=127, so
//!   `acc = 256 * acc_hi + acc_lo + 128 * sum(w)`; the constant goes into the bias.
//! - Requantisation is int64 tensor arithmetic (`addcmul` per group, an arithmetic right shift,
//!   a clamp); the gate nonlinearities are one `index_select` into a per-channel table, the cell
//!   nonlinearity one into a table indexed by the cell value itself, `C(u)` one into a 256-entry
//!   table.
//! - A convolution runs in bands of rows (or of whole small images) of about
//!   [`CPU_BAND_PIXELS`] pixels, so that its int32/int64 intermediates stay in the CPU's cache;
//!   each band's output is consumed at once (LSTM cell, store). On CUDA the band is the batch.

use super::file::{self, ModelFileError};
use super::{layer_size, Conv, IntModel, CELL_LUT};
use crate::codec::predict::{hash_hex, Geometry, Model, ModelHash, ModelState, PredictError};
use std::sync::Arc;
use tch::{Device, Kind, TchError, Tensor};

/// Pixels per band on the CPU: the int64 sums of a 32-channel band of this size (8 MB) stay in
/// the last-level cache, and torch's per-operation overhead is small against the band's work.
pub const CPU_BAND_PIXELS: i64 = 1 << 15;
/// On CUDA the whole batch is one band (memory permitting).
pub const CUDA_BAND_PIXELS: i64 = 1 << 24;

/// Why a torch model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TorchModelError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

fn pad8(n: i64) -> i64 {
    (n + 7) / 8 * 8
}

/// Rows of a weight matrix: more than 16 (CUDA's int8 product), a multiple of 8.
fn rows_pad(n: i64) -> i64 {
    pad8(n.max(17))
}

/// One input group of a convolution as a weight matrix.
struct TGroup {
    /// Channels of the group's `B` matrix (2 for the intensity: high and low bytes).
    c: i64,
    intensity: bool,
    /// `k * k * c` and its padding to a multiple of 8.
    k_rows: i64,
    k_pad: i64,
    /// `[rows_pad, k_pad]` int8: row `o`, column `tap * c + j` is `w[o][j][tap]`; for the
    /// intensity rows `0..cout` read the high bytes, rows `cout..2 cout` the low bytes.
    weight: Tensor,
    /// `[cout, 1, 1, 1]` int64.
    mult: Tensor,
}

struct TConv {
    cout: i64,
    k: i64,
    lo: i64,
    hi: i64,
    groups: Vec<TGroup>,
    /// `[cout, 1, 1, 1]` int64: `bias + 2^(shift - 1)`, plus `128 * sum(w) * mult` of the
    /// intensity group.
    bias: Tensor,
    /// `[cout, 1, 1, 1]` int64.
    shift: Tensor,
}

impl TConv {
    /// `intensity`: the index of the i16 group, if any.
    fn new(conv: &Conv, intensity: Option<usize>, dev: Device) -> Result<TConv, TchError> {
        let cout = conv.cout;
        let kk = conv.k * conv.k;
        let mut bias: Vec<i64> = (0..cout).map(|o| conv.bias[o] + (1i64 << (conv.shift[o] - 1))).collect();
        let mut groups = Vec::new();
        for (g, grp) in conv.groups.iter().enumerate() {
            let is_i = intensity == Some(g);
            let c = if is_i { 2 } else { grp.cin };
            let k_rows = (kk * c) as i64;
            let k_pad = pad8(k_rows);
            let rows = if is_i { 2 * cout } else { cout };
            let rpad = rows_pad(rows as i64);
            let mut w = vec![0i8; rpad as usize * k_pad as usize];
            let kp = k_pad as usize;
            for o in 0..cout {
                for j in 0..grp.cin {
                    for tap in 0..kk {
                        let v = grp.weight[(o * grp.cin + j) * kk + tap];
                        if is_i {
                            w[o * kp + tap * 2] = v;
                            w[(cout + o) * kp + tap * 2 + 1] = v;
                        } else {
                            w[o * kp + tap * c + j] = v;
                        }
                    }
                }
                if is_i {
                    let wsum: i64 = grp.weight[o * kk..(o + 1) * kk].iter().map(|&v| v as i64).sum();
                    bias[o] += 128 * wsum * grp.mult[o] as i64;
                }
            }
            let weight = Tensor::f_from_slice(&w)?.f_view([rpad, k_pad])?.f_to_device(dev)?;
            let mult: Vec<i64> = grp.mult.iter().map(|&m| m as i64).collect();
            let mult = Tensor::f_from_slice(&mult)?.f_view([cout as i64, 1, 1, 1])?.f_to_device(dev)?;
            groups.push(TGroup { c: c as i64, intensity: is_i, k_rows, k_pad, weight, mult });
        }
        let shift: Vec<i64> = conv.shift.iter().map(|&s| s as i64).collect();
        Ok(TConv {
            cout: cout as i64,
            k: conv.k as i64,
            lo: conv.lo as i64,
            hi: conv.hi as i64,
            groups,
            bias: Tensor::f_from_slice(&bias)?.f_view([cout as i64, 1, 1, 1])?.f_to_device(dev)?,
            shift: Tensor::f_from_slice(&shift)?.f_view([cout as i64, 1, 1, 1])?.f_to_device(dev)?,
        })
    }
}

struct TLayer {
    r: i64,
    lstm: TConv,
    ahat: TConv,
    a: Option<TConv>,
    /// int32 `[4 R * 256]`: entry `c * 256 + z + 128` is `SIG[z]` for the i, f, o channels and
    /// `32 * TANH[z]` for the g channels (so that `i * g` is already `(i * g) << 5`).
    gates: Tensor,
    /// int32 `[4 R, 1, 1, 1]`: `c * 256 + 128`.
    gate_offset: Tensor,
}

/// A band of a convolution's output: images `n0 .. n0 + nb`, rows `y0 .. y0 + bh`.
#[derive(Clone, Copy, Debug)]
struct Band {
    n0: i64,
    nb: i64,
    y0: i64,
    bh: i64,
}

impl Band {
    /// This band of a `[C, N, H, W]` tensor (a view).
    fn of(&self, t: &Tensor) -> Result<Tensor, TchError> {
        t.f_narrow(1, self.n0, self.nb)?.f_narrow(2, self.y0, self.bh)
    }
}

/// Bands of about `target` pixels: rows of one image, or whole images.
fn bands(n: i64, h: i64, w: i64, target: i64) -> Vec<Band> {
    let mut v = Vec::new();
    if h * w >= target {
        let rows = (target / w).max(1);
        for n0 in 0..n {
            let mut y0 = 0;
            while y0 < h {
                let bh = rows.min(h - y0);
                v.push(Band { n0, nb: 1, y0, bh });
                y0 += bh;
            }
        }
    } else {
        let per = (target / (h * w)).max(1);
        let mut n0 = 0;
        while n0 < n {
            let nb = per.min(n - n0);
            v.push(Band { n0, nb, y0: 0, bh: h });
            n0 += nb;
        }
    }
    v
}

/// A layer's state: `[C, N, H, W]` tensors.
struct TLayerState {
    /// int8 `[R, ..]`.
    h: Tensor,
    /// int32 `[R, ..]`.
    s: Tensor,
    /// int8 `[2 A, ..]`.
    e: Tensor,
    /// int32 `[A, ..]`.
    ahat: Tensor,
}

impl TLayerState {
    fn deep_copy(&self) -> TLayerState {
        TLayerState { h: self.h.copy(), s: self.s.copy(), e: self.e.copy(), ahat: self.ahat.copy() }
    }
}

/// A window's state in the torch backend (tensors on the model's device, `N = 1`).
pub struct TorchState {
    model: ModelHash,
    geom: Geometry,
    layers: Vec<TLayerState>,
    /// The last reconstruction, int64 `[1, 1, H, W]`.
    b: Option<Tensor>,
    /// Whether a prediction was made since the last observation.
    predicted: bool,
}

impl ModelState for TorchState {
    fn clone_box(&self) -> Box<dyn ModelState> {
        // Deep copies: the cell state is updated in place.
        Box::new(TorchState { model: self.model, geom: self.geom, layers: self.layers.iter().map(TLayerState::deep_copy).collect(), b: self.b.as_ref().map(Tensor::copy), predicted: self.predicted })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The libtorch backend of a model.
pub struct TorchModel {
    model: Arc<IntModel>,
    hash: ModelHash,
    device: Device,
    layers: Vec<TLayer>,
    /// int64 `[256]`: `C(u)` at `u + 128`.
    correction: Tensor,
    /// int32 `[65535]`: `TANHC[clamp(s >> 5, -1024, 1023) + 1024]` at `s + 32767`.
    cell_tanh: Tensor,
    band: i64,
}

// SAFETY: the model's tensors are created once in `new` and afterwards only read (used as
// operands of libtorch operations, which do not modify them); libtorch tensors may be read from
// several threads at once.
unsafe impl Sync for TorchModel {}

/// In-place libtorch operations return another handle to the tensor they changed; we keep ours.
trait InPlace {
    fn in_place(self) -> Result<(), TchError>;
}

impl InPlace for Result<Tensor, TchError> {
    fn in_place(self) -> Result<(), TchError> {
        self.map(drop)
    }
}

fn torch_err(e: TchError) -> String {
    e.to_string()
}

impl TorchModel {
    /// A validated model on `device` (its hash is that of its file, [`file::to_bytes`]).
    pub fn new(model: Arc<IntModel>, device: Device) -> Result<TorchModel, TorchModelError> {
        file::validate(&model)?;
        let hash = file::hash(&file::to_bytes(&model));
        Self::build(model, hash, device)
    }

    /// The model of a model file, on `device`.
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<TorchModel, TorchModelError> {
        Self::build(Arc::new(file::from_bytes(bytes)?), file::hash(bytes), device)
    }

    /// CUDA when libtorch sees a GPU, else the CPU.
    pub fn default_device() -> Device {
        Device::cuda_if_available()
    }

    fn build(model: Arc<IntModel>, hash: ModelHash, device: Device) -> Result<TorchModel, TorchModelError> {
        let m = &*model;
        let mut layers = Vec::new();
        for (l, layer) in m.layers.iter().enumerate() {
            let r = m.arch.layers[l].r;
            let intensity = (l == 0).then(|| layer.lstm.groups.len() - 1);
            let mut gates = Vec::with_capacity(4 * r * 256);
            for c in 0..4 * r {
                if c < 3 * r {
                    gates.extend(m.luts.sigmoid.iter().map(|&v| v as i32));
                } else {
                    gates.extend(m.luts.tanh.iter().map(|&v| 32 * v as i32));
                }
            }
            let offs: Vec<i32> = (0..4 * r as i32).map(|c| c * 256 + 128).collect();
            layers.push(TLayer {
                r: r as i64,
                lstm: TConv::new(&layer.lstm, intensity, device)?,
                ahat: TConv::new(&layer.ahat, None, device)?,
                a: layer.a.as_ref().map(|a| TConv::new(a, None, device)).transpose()?,
                gates: Tensor::f_from_slice(&gates)?.f_to_device(device)?,
                gate_offset: Tensor::f_from_slice(&offs)?.f_view([4 * r as i64, 1, 1, 1])?.f_to_device(device)?,
            });
        }
        let correction: Vec<i64> = (-128..128).map(|u| m.norm.correction(u)).collect();
        let cell_tanh: Vec<i32> = (-32767..=32767).map(|s: i32| m.luts.tanh_cell[((s >> 5).clamp(-1024, 1023) + 1024) as usize] as i32).collect();
        debug_assert_eq!(m.luts.tanh_cell.len(), CELL_LUT);
        let band = if device == Device::Cpu { CPU_BAND_PIXELS } else { CUDA_BAND_PIXELS };
        Ok(TorchModel {
            hash,
            device,
            layers,
            correction: Tensor::f_from_slice(&correction)?.f_to_device(device)?,
            cell_tanh: Tensor::f_from_slice(&cell_tanh)?.f_to_device(device)?,
            band,
            model,
        })
    }

    pub fn model(&self) -> &Arc<IntModel> {
        &self.model
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Pixels per band (for measurements; any value gives the same integers).
    pub fn set_band_pixels(&mut self, pixels: i64) {
        self.band = pixels.max(1);
    }

    fn err(&self, why: impl Into<String>) -> PredictError {
        PredictError::Model { model: hash_hex(&self.hash), why: why.into() }
    }

    fn state<'a>(&self, s: &'a mut dyn ModelState) -> Result<&'a mut TorchState, PredictError> {
        let s = s.as_any_mut().downcast_mut::<TorchState>().ok_or_else(|| self.err("the state belongs to another backend"))?;
        if s.model != self.hash {
            return Err(self.err("the state belongs to another model"));
        }
        Ok(s)
    }

    /// `conv` over `inputs` (one `[C_g, N, H, W]` tensor per group: int8, the intensity int32),
    /// band by band; each band's output (int64, requantised and clamped, `[cout, nb, bh, W]`)
    /// goes to `sink`.
    fn conv_bands(&self, conv: &TConv, inputs: &[&Tensor], sink: &mut dyn FnMut(Band, Tensor) -> Result<(), TchError>) -> Result<(), TchError> {
        let size = inputs[0].size();
        let (n, h, w) = (size[1], size[2], size[3]);
        let (k, p) = (conv.k, conv.k / 2);
        let padded = conv
            .groups
            .iter()
            .zip(inputs)
            .map(|(g, x)| {
                if g.intensity {
                    let xp = x.f_constant_pad_nd([p, p, p, p])?;
                    let hi = xp.f_bitwise_right_shift_tensor_scalar(8)?.f_to_kind(Kind::Int8)?;
                    let lo = xp.f_bitwise_and(255)?.f_sub_scalar(128)?.f_to_kind(Kind::Int8)?;
                    Tensor::f_cat(&[hi, lo], 0)
                } else if p > 0 {
                    x.f_constant_pad_nd([p, p, p, p])
                } else {
                    Ok(x.shallow_clone())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        for band in bands(n, h, w, self.band) {
            let pix = band.nb * band.bh * w;
            let pix8 = pad8(pix);
            let mut sum: Option<Tensor> = None;
            for (g, xp) in conv.groups.iter().zip(&padded) {
                let b = Tensor::f_empty([g.k_pad, pix8], (Kind::Int8, self.device))?;
                if g.k_pad > g.k_rows {
                    b.f_narrow(0, g.k_rows, g.k_pad - g.k_rows)?.f_zero_().in_place()?;
                }
                if pix8 > pix {
                    b.f_narrow(1, pix, pix8 - pix)?.f_zero_().in_place()?;
                }
                let src = xp.f_narrow(1, band.n0, band.nb)?;
                for dy in 0..k {
                    let rows = src.f_narrow(2, band.y0 + dy, band.bh)?;
                    for dx in 0..k {
                        let tap = dy * k + dx;
                        let mut dst = b.f_narrow(0, tap * g.c, g.c)?.f_narrow(1, 0, pix)?.f_view([g.c, band.nb, band.bh, w])?;
                        dst.f_copy_(&rows.f_narrow(3, dx, w)?)?;
                    }
                }
                let acc = g.weight.f_internal_int_mm(&b)?;
                let acc = if g.intensity {
                    let hi = acc.f_narrow(0, 0, conv.cout)?;
                    let lo = acc.f_narrow(0, conv.cout, conv.cout)?;
                    hi.f_mul_scalar(256)?.f_add_(&lo)?
                } else {
                    acc.f_narrow(0, 0, conv.cout)?
                };
                let acc = acc.f_narrow(1, 0, pix)?.f_view([conv.cout, band.nb, band.bh, w])?;
                sum = Some(match sum {
                    None => conv.bias.f_addcmul(&acc, &g.mult)?,
                    Some(mut s) => {
                        s.f_addcmul_(&acc, &g.mult).in_place()?;
                        s
                    }
                });
            }
            let mut s = sum.expect("a convolution has at least one group");
            s.f_bitwise_right_shift_(&conv.shift).in_place()?;
            s.f_clamp_(conv.lo, conv.hi).in_place()?;
            sink(band, s)?;
        }
        Ok(())
    }

    /// `conv` over `inputs` into a new int32 `[cout, N, H, W]` tensor.
    fn conv_full(&self, conv: &TConv, inputs: &[&Tensor]) -> Result<Tensor, TchError> {
        let size = inputs[0].size();
        let out = Tensor::f_empty([conv.cout, size[1], size[2], size[3]], (Kind::Int, self.device))?;
        self.conv_bands(conv, inputs, &mut |band, z| band.of(&out)?.f_copy_(&z))?;
        Ok(out)
    }

    /// Stacks one tensor of each state along `N` (no copy for one state).
    fn stack(states: &[&mut TorchState], f: impl Fn(&TorchState) -> &Tensor) -> Result<Tensor, TchError> {
        if states.len() == 1 {
            return Ok(f(states[0]).shallow_clone());
        }
        let ts: Vec<&Tensor> = states.iter().map(|s| f(s)).collect();
        Tensor::f_cat(&ts, 1)
    }

    /// One batched prediction for states of one geometry that have all observed a frame.
    fn predict_group(&self, states: &mut [&mut TorchState], outs: &mut [&mut [u32]]) -> Result<(), TchError> {
        let m = &*self.model;
        let nl = self.layers.len();
        let b = Self::stack(states, |s| s.b.as_ref().expect("checked: observed"))?;
        // I(b) = clamp(rshr((b - offset) * in_mult, in_shift), -32768, 32767)
        let mut intensity = b.f_sub_scalar(m.norm.offset)?.f_mul_scalar(m.norm.in_mult)?.f_add_scalar(1i64 << (m.norm.in_shift - 1))?;
        intensity.f_bitwise_right_shift_tensor_scalar_(m.norm.in_shift as i64).in_place()?;
        let intensity = intensity.f_clamp_(-32768, 32767)?.f_to_kind(Kind::Int)?;
        let mut hid: Vec<Option<Tensor>> = (0..nl).map(|_| None).collect();
        let mut cell: Vec<Option<Tensor>> = (0..nl).map(|_| None).collect();
        let mut ahat: Vec<Option<Tensor>> = (0..nl).map(|_| None).collect();
        for l in (0..nl).rev() {
            let layer = &self.layers[l];
            let e = Self::stack(states, |s| &s.layers[l].e)?;
            let h_old = Self::stack(states, |s| &s.layers[l].h)?;
            let s_cell = Self::stack(states, |s| &s.layers[l].s)?;
            let size = h_old.size();
            let (hh, ww) = (size[2], size[3]);
            let upper = match hid.get(l + 1) {
                Some(Some(h1)) => {
                    let sz = h1.size();
                    let (r1, n, h1h, h1w) = (sz[0], sz[1], sz[2], sz[3]);
                    Some(h1.f_view([r1, n, h1h, 1, h1w, 1])?.f_expand([r1, n, h1h, 2, h1w, 2], false)?.f_reshape([r1, n, 2 * h1h, 2 * h1w])?.f_narrow(2, 0, hh)?.f_narrow(3, 0, ww)?)
                }
                _ => None,
            };
            let mut inputs = vec![&e, &h_old];
            if let Some(u) = &upper {
                inputs.push(u);
            }
            if l == 0 {
                inputs.push(&intensity);
            }
            let h_new = Tensor::f_empty(size.as_slice(), (Kind::Int8, self.device))?;
            let r = layer.r;
            self.conv_bands(&layer.lstm, &inputs, &mut |band, z| {
                let idx = z.f_to_kind(Kind::Int)?.f_add_(&layer.gate_offset)?;
                let gates = layer.gates.f_index_select(0, &idx.f_view([-1])?)?.f_view([4 * r, band.nb, band.bh, ww])?;
                let (i, f, o, g) = (gates.f_narrow(0, 0, r)?, gates.f_narrow(0, r, r)?, gates.f_narrow(0, 2 * r, r)?, gates.f_narrow(0, 3 * r, r)?);
                let mut s_band = band.of(&s_cell)?;
                // S = clamp((f * S + ((i * g) << 5)) >> 7, -32767, 32767), the shift in the table.
                let mut s_new = f.f_mul(&s_band)?;
                s_new.f_addcmul_(&i, &g).in_place()?;
                s_new.f_bitwise_right_shift_tensor_scalar_(7).in_place()?;
                s_new.f_clamp_(-32767, 32767).in_place()?;
                s_band.f_copy_(&s_new)?;
                // H = clamp((o * TANHC[...]) >> 7, -127, 127)
                let t = self.cell_tanh.f_index_select(0, &s_new.f_add_scalar(32767)?.f_view([-1])?)?.f_view([r, band.nb, band.bh, ww])?;
                let mut hv = o.f_mul(&t)?;
                hv.f_bitwise_right_shift_tensor_scalar_(7).in_place()?;
                hv.f_clamp_(-127, 127).in_place()?;
                band.of(&h_new)?.f_copy_(&hv)
            })?;
            ahat[l] = Some(self.conv_full(&layer.ahat, &[&h_new])?);
            hid[l] = Some(h_new);
            cell[l] = Some(s_cell);
        }
        // P' = clamp(b + C(Ahat_0), 0, mask)
        let a0 = ahat[0].as_ref().expect("layer 0 computed");
        let corr = self.correction.f_index_select(0, &a0.f_add_scalar(128)?.f_view([-1])?)?.f_view_as(&b)?;
        let pred = b.f_add(&corr)?.f_clamp_(0, states[0].geom.mask() as i64)?.f_to_kind(Kind::Int)?.f_to_device(Device::Cpu)?;
        for (i, (s, out)) in states.iter_mut().zip(outs.iter_mut()).enumerate() {
            let i = i as i64;
            for (l, ls) in s.layers.iter_mut().enumerate() {
                ls.h = hid[l].as_ref().expect("computed").f_narrow(1, i, 1)?;
                ls.s = cell[l].as_ref().expect("computed").f_narrow(1, i, 1)?;
                ls.ahat = ahat[l].as_ref().expect("computed").f_narrow(1, i, 1)?;
            }
            s.predicted = true;
            let n = out.len();
            pred.f_narrow(1, i, 1)?.f_copy_data(as_i32_mut(out), n)?;
        }
        Ok(())
    }

    /// One batched observation for states of one geometry that have all made a prediction.
    fn observe_group(&self, states: &mut [&mut TorchState], recons: &[Tensor]) -> Result<(), TchError> {
        let m = &*self.model;
        let r = if recons.len() == 1 { recons[0].shallow_clone() } else { Tensor::f_cat(recons, 1)? };
        let b = Self::stack(states, |s| s.b.as_ref().expect("checked: predicted"))?;
        // A_0 = U(R - b) = clamp(rshr((R - b) * err_mult, err_shift), -128, 127)
        let mut a0 = r.f_sub(&b)?.f_mul_scalar(m.norm.err_mult)?.f_add_scalar(1i64 << (m.norm.err_shift - 1))?;
        a0.f_bitwise_right_shift_tensor_scalar_(m.norm.err_shift as i64).in_place()?;
        let a0 = a0.f_clamp_(-128, 127)?.f_to_kind(Kind::Int)?;
        let mut errs = vec![errors(&a0, &Self::stack(states, |s| &s.layers[0].ahat)?)?];
        for l in 1..self.layers.len() {
            let conv_a = self.layers[l].a.as_ref().expect("validated: layers above 0 have `a`");
            let full = self.conv_full(conv_a, &[&errs[l - 1]])?;
            errs.push(errors(&pool(&full)?, &Self::stack(states, |s| &s.layers[l].ahat)?)?);
        }
        for (i, s) in states.iter_mut().enumerate() {
            let i = i as i64;
            for (l, ls) in s.layers.iter_mut().enumerate() {
                ls.e = errs[l].f_narrow(1, i, 1)?;
            }
            s.b = Some(r.f_narrow(1, i, 1)?);
            s.predicted = false;
        }
        Ok(())
    }

    /// A frame as an int64 `[1, 1, H, W]` tensor on the device.
    fn frame(&self, geom: &Geometry, recon: &[u32]) -> Result<Tensor, TchError> {
        let t = Tensor::f_from_slice(as_i32(recon))?.f_to_device(self.device)?.f_to_kind(Kind::Int64)?.f_bitwise_and(0xffff_ffffi64)?;
        t.f_view([1, 1, geom.height as i64, geom.width as i64])
    }
}

/// `E = [clamp(A - Ahat, 0, 127), clamp(Ahat - A, 0, 127)]` (int8).
fn errors(a: &Tensor, ahat: &Tensor) -> Result<Tensor, TchError> {
    let d = a.f_sub(ahat)?;
    let pos = d.f_clamp(0, 127)?;
    let neg = d.f_neg()?.f_clamp_(0, 127)?;
    Tensor::f_cat(&[pos, neg], 0)?.f_to_kind(Kind::Int8)
}

/// `pool(T)` of a `[C, N, H, W]` tensor of values >= 0: a zero row/column added at odd edges
/// does not change any maximum.
fn pool(t: &Tensor) -> Result<Tensor, TchError> {
    let s = t.size();
    let (c, n, h, w) = (s[0], s[1], s[2], s[3]);
    let p = t.f_constant_pad_nd([0, w % 2, 0, h % 2])?;
    let (h2, w2) = ((h + 1) / 2, (w + 1) / 2);
    p.f_view([c, n, h2, 2, w2, 2])?.f_amax([3i64, 5].as_slice(), false)
}

/// The integer images as `i32` (the same bits), for libtorch, which has no `u32` tensors.
fn as_i32(v: &[u32]) -> &[i32] {
    // SAFETY: u32 and i32 have the same size and alignment and every bit pattern is valid for
    // both; the returned slice borrows `v` for its lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i32, v.len()) }
}

fn as_i32_mut(v: &mut [u32]) -> &mut [i32] {
    // SAFETY: as in `as_i32`; the mutable borrow of `v` is moved into the result.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut i32, v.len()) }
}

impl Model for TorchModel {
    fn hash(&self) -> ModelHash {
        self.hash
    }

    fn start(&self, geom: Geometry) -> Result<Box<dyn ModelState>, PredictError> {
        if geom.dtype != self.model.dtype {
            return Err(self.err(format!("the model is for {} pixels, the frames are {}", self.model.dtype, geom.dtype)));
        }
        if geom.width == 0 || geom.height == 0 {
            return Err(self.err(format!("empty frames ({} x {})", geom.width, geom.height)));
        }
        let dev = self.device;
        let layers = (|| -> Result<Vec<TLayerState>, TchError> {
            self.model
                .arch
                .layers
                .iter()
                .enumerate()
                .map(|(l, la)| {
                    let (h, w) = layer_size(geom.height, geom.width, l);
                    let (h, w, r, a) = (h as i64, w as i64, la.r as i64, la.a as i64);
                    Ok(TLayerState {
                        h: Tensor::f_zeros([r, 1, h, w], (Kind::Int8, dev))?,
                        s: Tensor::f_zeros([r, 1, h, w], (Kind::Int, dev))?,
                        e: Tensor::f_zeros([2 * a, 1, h, w], (Kind::Int8, dev))?,
                        ahat: Tensor::f_zeros([a, 1, h, w], (Kind::Int, dev))?,
                    })
                })
                .collect()
        })()
        .map_err(|e| self.err(torch_err(e)))?;
        Ok(Box::new(TorchState { model: self.hash, geom, layers, b: None, predicted: false }))
    }

    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError> {
        if states.len() != outs.len() {
            return Err(self.err(format!("{} states and {} outputs", states.len(), outs.len())));
        }
        let mut ts: Vec<&mut TorchState> = Vec::with_capacity(states.len());
        for (s, out) in states.iter_mut().zip(outs.iter()) {
            let s = self.state(&mut **s)?;
            if s.b.is_none() {
                return Err(self.err("predict before any frame was observed"));
            }
            if out.len() != s.geom.pixels() {
                return Err(self.err(format!("output of {} pixels for frames of {}", out.len(), s.geom.pixels())));
            }
            ts.push(s);
        }
        // One batch per geometry, in the order of first appearance.
        let mut outs: Vec<&mut [u32]> = outs.iter_mut().map(|o| &mut **o).collect();
        while !ts.is_empty() {
            let g = (ts[0].geom.width, ts[0].geom.height);
            let (mut group, mut group_outs) = (Vec::new(), Vec::new());
            let (mut rest, mut rest_outs) = (Vec::new(), Vec::new());
            for (s, o) in ts.into_iter().zip(outs) {
                if (s.geom.width, s.geom.height) == g {
                    group.push(s);
                    group_outs.push(o);
                } else {
                    rest.push(s);
                    rest_outs.push(o);
                }
            }
            self.predict_group(&mut group, &mut group_outs).map_err(|e| self.err(torch_err(e)))?;
            ts = rest;
            outs = rest_outs;
        }
        Ok(())
    }

    fn observe_batch(&self, states: &mut [&mut dyn ModelState], recons: &[&[u32]]) -> Result<(), PredictError> {
        if states.len() != recons.len() {
            return Err(self.err(format!("{} states and {} frames", states.len(), recons.len())));
        }
        let mut predicted: Vec<(&mut TorchState, Tensor)> = Vec::new();
        for (s, recon) in states.iter_mut().zip(recons) {
            let s = self.state(&mut **s)?;
            if recon.len() != s.geom.pixels() {
                return Err(self.err(format!("frame of {} pixels for frames of {}", recon.len(), s.geom.pixels())));
            }
            let frame = self.frame(&s.geom, recon).map_err(|e| self.err(torch_err(e)))?;
            if s.predicted && s.b.is_some() {
                predicted.push((s, frame));
            } else {
                // No prediction since the last observation (the key frame): no error to take in.
                for ls in &mut s.layers {
                    ls.e.f_zero_().in_place().map_err(|e| self.err(torch_err(e)))?;
                }
                s.b = Some(frame);
                s.predicted = false;
            }
        }
        while !predicted.is_empty() {
            let g = (predicted[0].0.geom.width, predicted[0].0.geom.height);
            let (group, rest): (Vec<_>, Vec<_>) = predicted.into_iter().partition(|(s, _)| (s.geom.width, s.geom.height) == g);
            let (mut group, frames): (Vec<&mut TorchState>, Vec<Tensor>) = group.into_iter().unzip();
            self.observe_group(&mut group, &frames).map_err(|e| self.err(torch_err(e)))?;
            predicted = rest;
        }
        Ok(())
    }
}
