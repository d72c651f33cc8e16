//! The libtorch backend: the integer network of `docs/MODEL.md` with int8 matrix products, on
//! CPU or CUDA.
//!
//! It computes exactly what [`super::reference`] computes (tested), by other means:
//!
//! - Tensors are laid out `C x N x H x W` ("CNHW"): channel-major, so that the im2col matrix of
//!   a convolution is built by copying whole shifted rows of each channel plane (one strided
//!   copy per input for all taps), and the batch dimension `N` (several windows' states
//!   stacked) sits inside the pixel dimension of the product.
//! - A convolution group is one `torch._int_mm` (int8 x int8 -> int32, exact):
//!   `acc[cout, pixels] = W[cout, k*k*cin] @ B[k*k*cin, pixels]`, `B` row `tap * cin + j` the
//!   input channel `j` shifted by the tap. CUDA's int8 product needs more than 16 rows and both
//!   other dimensions multiples of 8; the rows, `K` and the pixel count are padded with zeros
//!   on every device, so CPU and CUDA run one code path. Input groups whose multipliers are
//!   equal share one product (their channels side by side in `B`).
//! - The i16 intensity group is two int8 products: after zero padding, every value `v` is
//!   `256 * (v >> 8) + ((v & 255) - 128) + 128` with both parts in -128..=127, so
//!   `acc = 256 * acc_hi + acc_lo + 128 * sum(w)`; the constant goes into the bias.
//! - Requantisation is tensor arithmetic (`addcmul` per group, an arithmetic right shift, a
//!   clamp) in int64, or in int32 where the model's integers prove every partial sum fits
//!   ([`requant_fits_i32`]; four times cheaper on a CPU). The gate nonlinearities are one
//!   `index_select` into a per-channel table, the cell nonlinearity one into a table indexed
//!   by the cell value itself, `C(u)` one into a 256-entry table; 2 x 2 pooling two
//!   elementwise maxima, up-sampling a byte-doubling int16 widening and a row copy.
//! - A convolution runs in bands of rows (or of whole small images) of about
//!   [`CPU_BAND_BYTES`] of temporaries, so that its intermediates stay in the CPU's cache;
//!   each band's output is consumed at once (LSTM cell, pooling and errors, store). Every
//!   temporary lives in an [`Arena`] reused across bands and frames: fresh multi-megabyte
//!   allocations are fresh pages, whose faults cost more than the arithmetic. On CUDA the band
//!   is the batch.
//!
//! - On the CPU, two of these steps run differently (same integers, tested against the
//!   device-generic path and the reference): the product is taken with the pixels as rows
//!   (`B^T W^T` on views of the same matrices: oneDNN's int8 GEMM is 1.5-2x faster that way
//!   round at these shapes, and the weight rows need no padding), and the LSTM convolution's
//!   requantisation, gates, cell and hidden state are one fused pass in Rust over the raw
//!   products ([`lstm_cpu`]) instead of a dozen tensor operations (together 1.8x on the
//!   `small` model: `examples/model_speed.rs`). [`TorchModel::set_cpu_kernels`] turns them off.
//!
//! libtorch's OpenMP threads busy-wait between operations: with more torch threads than free
//! cores (another process on the machine) a step can take ten times longer; run inference at
//! one torch thread per free core, or with `OMP_WAIT_POLICY=PASSIVE`.

use super::file::{self, ModelFileError};
use super::{layer_size, rshr, Conv, IntModel, CELL_LUT};
use crate::codec::predict::{hash_hex, Geometry, Model, ModelHash, ModelState, PredictError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tch::{Device, Kind, TchError, Tensor};

mod lstm_cpu;

/// Bytes of a band's largest temporaries on the CPU (the im2col matrix and the int32 outputs):
/// small enough for the caches, large enough that torch's per-operation overhead (a few
/// microseconds) is small against the band's work.
pub const CPU_BAND_BYTES: i64 = 4 << 20;
/// How many band-sized buffers a call's arena holds at most ([`Model::scratch_bytes`]; the
/// resident set measured in `tests/model_step_memory.rs`).
const SCRATCH_BANDS: u64 = 8;
/// What libtorch's and oneDNN's allocators hold in a step's peak beyond the arena's buffers and
/// the states, charged with the scratch on a CPU: the peak of one PredNet state's life at
/// 256x256 varies by 20 MB from run to run and host to host with the same states and bands
/// (`tests/model_step_memory.rs`: u8 77-91 MB, u16 93-100 MB, against 63.9 MB of states and
/// 33.5 MB of bands), so the bands alone under-counted it on one host (u16, 100.1 > 97.5).
const ALLOCATOR_SLACK: u64 = 16 << 20;
/// On CUDA the whole batch is one band (memory permitting).
pub const CUDA_BAND_BYTES: i64 = 1 << 34;

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

/// One input group of a convolution as a weight matrix. Groups of the model whose multipliers
/// are equal (channel by channel) are merged into one product: `sum_g acc_g * m = (sum_g
/// acc_g) * m`, and the merged accumulator still fits an i32 (at most 1024 input channels of
/// 49 taps of `127 * 128`).
struct TGroup {
    /// The inputs read: `(index of the input tensor, its channels, first row of B)`, the rows
    /// of a tap being `tap * c + row`.
    parts: Vec<(usize, i64, i64)>,
    /// Channels of the group's `B` matrix per tap (2 for the intensity: high and low bytes).
    c: i64,
    intensity: bool,
    /// Output rows of the product: `cout`, or `2 cout` for the intensity.
    rows: i64,
    /// `k * k * c` and its padding to a multiple of 8.
    k_rows: i64,
    k_pad: i64,
    /// `[rows_pad, k_pad]` int8: row `o`, column `tap * c + j` is `w[o][j][tap]`; for the
    /// intensity rows `0..cout` read the high bytes, rows `cout..2 cout` the low bytes.
    weight: Tensor,
    /// `[cout, 1, 1, 1]`, int32 or int64 as the convolution's sums.
    mult: Tensor,
    /// The same multipliers.
    mult_v: Vec<i64>,
}

struct TConv {
    cout: i64,
    k: i64,
    lo: i64,
    hi: i64,
    groups: Vec<TGroup>,
    /// `[cout, 1, 1, 1]`: `bias + 2^(shift - 1)`, plus `128 * sum(w) * mult` of the intensity
    /// group.
    bias: Tensor,
    /// The same biases.
    bias_v: Vec<i64>,
    /// `[cout, 1, 1, 1]`.
    shift: Tensor,
    /// The kind of the requantisation sums: int32 when [`requant_fits_i32`], else int64.
    kind: Kind,
}

/// Whether every partial sum of `conv`'s requantisation provably fits in an i32
/// ([`file::requant_bound`] below 2^31 for every output channel). The torch backend then
/// requantises in int32, about four times cheaper on a CPU without 64-bit vector multiplies,
/// with the same result; otherwise in int64. `intensity` is the index of the i16 group.
pub fn requant_fits_i32(conv: &Conv, intensity: Option<usize>) -> bool {
    (0..conv.cout).all(|o| file::requant_bound(conv, o, intensity) < 1i128 << 31)
}

impl TConv {
    /// `intensity`: the index of the i16 group, if any.
    fn new(conv: &Conv, intensity: Option<usize>, dev: Device) -> Result<TConv, TchError> {
        let cout = conv.cout;
        let kk = conv.k * conv.k;
        let kind = if requant_fits_i32(conv, intensity) { Kind::Int } else { Kind::Int64 };
        let mut bias: Vec<i64> = (0..cout).map(|o| conv.bias[o] + (1i64 << (conv.shift[o] - 1))).collect();
        // Model groups merged by equal multipliers (the intensity always alone), in order.
        let mut merged: Vec<Vec<usize>> = Vec::new();
        for (g, grp) in conv.groups.iter().enumerate() {
            match merged.iter_mut().find(|m| intensity != Some(g) && intensity != Some(m[0]) && conv.groups[m[0]].mult == grp.mult) {
                Some(m) => m.push(g),
                None => merged.push(vec![g]),
            }
        }
        let mut groups = Vec::new();
        for members in merged {
            let is_i = intensity == Some(members[0]);
            let c: usize = if is_i { 2 } else { members.iter().map(|&g| conv.groups[g].cin).sum() };
            let k_rows = (kk * c) as i64;
            let k_pad = pad8(k_rows);
            let rows = if is_i { 2 * cout } else { cout };
            let rpad = rows_pad(rows as i64);
            let mut w = vec![0i8; rpad as usize * k_pad as usize];
            let kp = k_pad as usize;
            let mut parts = Vec::new();
            let mut off = 0;
            for &g in &members {
                let grp = &conv.groups[g];
                parts.push((g, if is_i { 2 } else { grp.cin as i64 }, off as i64));
                for o in 0..cout {
                    for j in 0..grp.cin {
                        for tap in 0..kk {
                            let v = grp.weight[(o * grp.cin + j) * kk + tap];
                            if is_i {
                                w[o * kp + tap * 2] = v;
                                w[(cout + o) * kp + tap * 2 + 1] = v;
                            } else {
                                w[o * kp + tap * c + off + j] = v;
                            }
                        }
                    }
                    if is_i {
                        let wsum: i64 = grp.weight[o * kk..(o + 1) * kk].iter().map(|&v| v as i64).sum();
                        bias[o] += 128 * wsum * grp.mult[o] as i64;
                    }
                }
                off += grp.cin;
            }
            let weight = Tensor::f_from_slice(&w)?.f_view([rpad, k_pad])?.f_to_device(dev)?;
            let mult: Vec<i64> = conv.groups[members[0]].mult.iter().map(|&m| m as i64).collect();
            let mult_t = Tensor::f_from_slice(&mult)?.f_view([cout as i64, 1, 1, 1])?.f_to_kind(kind)?.f_to_device(dev)?;
            groups.push(TGroup { parts, c: c as i64, intensity: is_i, rows: rows as i64, k_rows, k_pad, weight, mult: mult_t, mult_v: mult });
        }
        let shift: Vec<i64> = conv.shift.iter().map(|&s| s as i64).collect();
        Ok(TConv {
            cout: cout as i64,
            k: conv.k as i64,
            lo: conv.lo as i64,
            hi: conv.hi as i64,
            groups,
            bias: Tensor::f_from_slice(&bias)?.f_view([cout as i64, 1, 1, 1])?.f_to_kind(kind)?.f_to_device(dev)?,
            bias_v: bias,
            shift: Tensor::f_from_slice(&shift)?.f_view([cout as i64, 1, 1, 1])?.f_to_kind(kind)?.f_to_device(dev)?,
            kind,
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
    /// The CPU's fused LSTM step (on the CPU only).
    fused: Option<lstm_cpu::LstmCpu>,
}

/// What a band of a convolution hands its consumer ([`TorchModel::conv_bands`]).
enum BandOut<'a> {
    /// The requantised, clamped output.
    Requantised(&'a Tensor),
    /// Each group's raw int8 products, pixels as rows (the CPU's fused LSTM step).
    Products(&'a [Tensor]),
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

/// Bands of about `target` pixels: rows of one image (an even number, so that 2 x 2 pooling
/// stays inside a band), or whole images.
fn bands(n: i64, h: i64, w: i64, target: i64) -> Vec<Band> {
    let mut v = Vec::new();
    if h * w >= target {
        let rows = ((target / w) & !1).max(2);
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

/// Scratch tensors reused across bands and frames, one set per concurrent call (a pool in the
/// model). On the CPU a fresh allocation of a few MB is fresh pages, and the page faults cost
/// more than the arithmetic done in them; the arena makes every temporary of a band and every
/// padded input an existing buffer.
#[derive(Default)]
struct Arena {
    /// A flat buffer per slot and element kind.
    bufs: Vec<(usize, Kind, Tensor)>,
}

/// What each arena buffer holds. Buffers in use at the same time have different slots.
#[derive(Clone, Copy)]
enum Slot {
    /// A group's im2col matrix (one group at a time).
    B,
    /// The requantisation sum of a band.
    Sum,
    /// Table indices.
    Idx,
    Gates,
    Cell,
    Tanh,
    Hid,
    /// A pooled band.
    Pool,
    /// Frame-sized work (intensity, errors, up-sampling).
    Work,
    Work2,
    /// Padded inputs of a convolution's groups (`Pad0 + g`).
    Pad0,
}

/// The arena slot of group `g`'s int32 product: `ACC0 + g` (above every `Pad0 + g`).
const ACC0: usize = 64;

impl Arena {
    /// A tensor of `shape` in buffer `slot` of `kind` (grown when too small; contents
    /// undefined).
    fn get(&mut self, slot: usize, kind: Kind, dev: Device, shape: &[i64]) -> Result<Tensor, TchError> {
        let numel: i64 = shape.iter().product();
        let i = match self.bufs.iter().position(|(s, k, _)| *s == slot && *k == kind) {
            Some(i) => i,
            None => {
                self.bufs.push((slot, kind, Tensor::f_empty([numel.max(1)], (kind, dev))?));
                self.bufs.len() - 1
            }
        };
        if self.bufs[i].2.size()[0] < numel {
            // Dropped first, so the memory can be reused for the larger buffer.
            self.bufs[i].2 = Tensor::f_empty([0], (kind, dev))?;
            self.bufs[i].2 = Tensor::f_empty([numel], (kind, dev))?;
        }
        self.bufs[i].2.f_narrow(0, 0, numel)?.f_view(shape)
    }
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
        Box::new(TorchState {
            model: self.model,
            geom: self.geom,
            layers: self.layers.iter().map(TLayerState::deep_copy).collect(),
            b: self.b.as_ref().map(Tensor::copy),
            predicted: self.predicted,
        })
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
    /// The model's causal stage, laid out to run (plain Rust: it is per pixel).
    stage: Option<crate::codec::predict::causal::CausalStage>,
    hash: ModelHash,
    device: Device,
    layers: Vec<TLayer>,
    /// int64 `[256]`: `C(u)` at `u + 128` (a model without a noise scale).
    correction: Tensor,
    /// A model with a noise scale: its error and correction multipliers, int64 `[SCALE_BUCKETS]`,
    /// and its stabilised intensities, int64 `[SCALE_BUCKETS + 1]`.
    scale: Option<(Tensor, Tensor, Tensor)>,
    /// int32 `[65535]`: `TANHC[clamp(s >> 5, -1024, 1023) + 1024]` at `s + 32767`.
    cell_tanh: Tensor,
    band: i64,
    /// The CPU's own kernels: products with the pixels as rows and the fused LSTM step (on by
    /// default on the CPU; off, the CPU runs the device-generic path CUDA runs).
    fast_cpu: bool,
    profile: Profile,
    /// Scratch buffers of calls not running.
    arenas: Mutex<Vec<Arena>>,
}

/// Where the time goes, when asked ([`TorchModel::set_profile`]): seconds per named part, in
/// the order the parts first ran. CPU operations are synchronous, so wall-clock laps are the
/// parts' times there (on CUDA they would need a synchronisation).
#[derive(Default)]
struct Profile {
    on: AtomicBool,
    parts: Mutex<Vec<(String, f64)>>,
}

/// Laps of a stopwatch that only runs when profiling.
struct Laps {
    on: bool,
    last: Instant,
}

impl Laps {
    fn new(on: bool) -> Laps {
        Laps { on, last: Instant::now() }
    }
    /// Seconds since the last lap (0 when not profiling).
    fn lap(&mut self) -> f64 {
        if !self.on {
            return 0.0;
        }
        let now = Instant::now();
        let d = (now - self.last).as_secs_f64();
        self.last = now;
        d
    }
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
        super::cuda::load();
        Device::cuda_if_available()
    }

    fn build(model: Arc<IntModel>, hash: ModelHash, device: Device) -> Result<TorchModel, TorchModelError> {
        let m = &*model;
        let mut layers = Vec::new();
        for (l, layer) in m.layers.iter().enumerate() {
            let r = m.arch.layers[l].r;
            let intensity = file::intensity_group(l, &layer.lstm);
            let mut gates = Vec::with_capacity(4 * r * 256);
            for c in 0..4 * r {
                if c < 3 * r {
                    gates.extend(m.luts.sigmoid.iter().map(|&v| v as i32));
                } else {
                    gates.extend(m.luts.tanh.iter().map(|&v| 32 * v as i32));
                }
            }
            let offs: Vec<i32> = (0..4 * r as i32).map(|c| c * 256 + 128).collect();
            let lstm = TConv::new(&layer.lstm, intensity, device)?;
            let fused = (device == Device::Cpu).then(|| {
                lstm_cpu::LstmCpu::new(m, l, lstm.groups.iter().map(|g| (g.mult_v.clone(), g.intensity)).collect(), lstm.bias_v.clone(), lstm.kind == Kind::Int)
            });
            layers.push(TLayer {
                r: r as i64,
                lstm,
                fused,
                ahat: TConv::new(&layer.ahat, None, device)?,
                a: layer.a.as_ref().map(|a| TConv::new(a, None, device)).transpose()?,
                gates: Tensor::f_from_slice(&gates)?.f_to_device(device)?,
                gate_offset: Tensor::f_from_slice(&offs)?.f_view([4 * r as i64, 1, 1, 1])?.f_to_device(device)?,
            });
        }
        let correction: Vec<i64> = (-128..128).map(|u| rshr(u as i64 * m.norm.out_mult, m.norm.out_shift)).collect();
        let scale = match &m.norm.scale {
            Some(sc) => {
                let stab: Vec<i64> = sc.stab.iter().map(|&v| v as i64).collect();
                let t = |v: &[i64]| Tensor::f_from_slice(v)?.f_to_device(device);
                Some((t(&sc.err_mult)?, t(&sc.out_mult)?, t(&stab)?))
            }
            None => None,
        };
        let cell_tanh: Vec<i32> = (-32767..=32767).map(|s: i32| m.luts.tanh_cell[((s >> 5).clamp(-1024, 1023) + 1024) as usize] as i32).collect();
        debug_assert_eq!(m.luts.tanh_cell.len(), CELL_LUT);
        let band = if device == Device::Cpu { CPU_BAND_BYTES } else { CUDA_BAND_BYTES };
        Ok(TorchModel {
            stage: model.causal.clone().map(crate::codec::predict::causal::CausalStage::new),
            hash,
            device,
            layers,
            correction: Tensor::f_from_slice(&correction)?.f_to_device(device)?,
            scale,
            cell_tanh: Tensor::f_from_slice(&cell_tanh)?.f_to_device(device)?,
            band,
            fast_cpu: device == Device::Cpu,
            model,
            profile: Profile::default(),
            arenas: Mutex::new(Vec::new()),
        })
    }

    /// The noise-scale bucket `(I + 32768) >> 6` of every element of an intensity tensor, flat.
    fn buckets(intensity: &Tensor) -> Result<Tensor, TchError> {
        intensity.f_to_kind(Kind::Int64)?.f_add_scalar(32768)?.f_bitwise_right_shift_tensor_scalar(6)?.f_view([-1])
    }

    pub fn model(&self) -> &Arc<IntModel> {
        &self.model
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// How many of the model's convolutions requantise in int32 ([`requant_fits_i32`]), and
    /// how many there are.
    pub fn int32_convs(&self) -> (usize, usize) {
        let convs = self.convs();
        (convs.iter().filter(|c| c.kind == Kind::Int).count(), convs.len())
    }

    /// How many int8 products a step makes (input groups with equal multipliers share one).
    pub fn products(&self) -> usize {
        self.convs().iter().map(|c| c.groups.len()).sum()
    }

    fn convs(&self) -> Vec<&TConv> {
        self.layers.iter().flat_map(|l| [Some(&l.lstm), Some(&l.ahat), l.a.as_ref()]).flatten().collect()
    }

    /// Bytes of a band's temporaries (for tests and measurements; any value gives the same
    /// integers).
    pub fn set_band_bytes(&mut self, bytes: i64) {
        self.band = bytes.max(1);
    }

    /// Whether the CPU runs its own kernels ([`lstm_cpu`], products with the pixels as rows) or
    /// the device-generic path that CUDA runs (for tests and measurements: both give the same
    /// integers). Ignored on CUDA.
    pub fn set_cpu_kernels(&mut self, on: bool) {
        self.fast_cpu = on && self.device == Device::Cpu;
    }

    /// Start (or stop) recording where the time goes; [`TorchModel::take_profile`] returns it.
    pub fn set_profile(&self, on: bool) {
        self.profile.on.store(on, Ordering::Relaxed);
    }

    /// Seconds spent per part since profiling started or was last taken, and resets them.
    pub fn take_profile(&self) -> Vec<(String, f64)> {
        std::mem::take(&mut *self.profile.parts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn profiling(&self) -> bool {
        self.profile.on.load(Ordering::Relaxed)
    }

    fn record(&self, part: &str, secs: f64) {
        if !self.profiling() {
            return;
        }
        let mut parts = self.profile.parts.lock().unwrap_or_else(|e| e.into_inner());
        match parts.iter_mut().find(|(p, _)| p == part) {
            Some((_, t)) => *t += secs,
            None => parts.push((part.to_string(), secs)),
        }
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

    /// A padded copy of `x` (`[C, N, H, W]`) in arena buffer `slot`: `[C, N, H + 2p + 1,
    /// W + 2p + 1]`, `x` at `(p, p)`, zeros around. The extra row and column (never read by a
    /// convolution) let [`Self::pad_up`] write whole 2 x 2 blocks.
    fn pad(&self, arena: &mut Arena, slot: usize, x: &Tensor, p: i64) -> Result<Tensor, TchError> {
        let sz = x.size();
        let (c, n, h, w) = (sz[0], sz[1], sz[2], sz[3]);
        let buf = arena.get(slot, x.f_kind()?, self.device, &[c, n, h + 2 * p + 1, w + 2 * p + 1])?;
        buf.f_narrow(2, p, h)?.f_narrow(3, p, w)?.f_copy_(x)?;
        zero_border(&buf, p, h, w, 0)?;
        Ok(buf)
    }

    /// `up(h1)` cropped to `h x w`, padded as [`Self::pad`] pads.
    fn pad_up(&self, arena: &mut Arena, slot: usize, h1: &Tensor, h: i64, w: i64, p: i64) -> Result<Tensor, TchError> {
        let sz = h1.size();
        let (c, n, h1h, h1w) = (sz[0], sz[1], sz[2], sz[3]);
        let buf = arena.get(slot, Kind::Int8, self.device, &[c, n, h + 2 * p + 1, w + 2 * p + 1])?;
        // Each byte doubled along the row: as int16 `(b & 255) * 257` is the byte pair `b b`
        // (a contiguous widening, ten times faster than a copy with a repeated inner index).
        let wide = arena.get(Slot::Work as usize, Kind::Int16, self.device, &sz)?;
        wide.shallow_clone().f_copy_(h1)?;
        wide.shallow_clone().f_bitwise_and_(255).in_place()?;
        wide.shallow_clone().f_mul_scalar_(257).in_place()?;
        let rows = wide.f_view_dtype(Kind::Int8)?.f_view([c, n, h1h, 1, 2 * h1w])?;
        // Then each doubled row twice. 2 h1h <= h + 1: the blocks may hang one row/column over
        // the crop, into the border (zeroed after).
        let blocks = buf.f_narrow(2, p, 2 * h1h)?.f_narrow(3, p, 2 * h1w)?.f_view([c, n, h1h, 2, 2 * h1w])?;
        blocks.shallow_clone().f_copy_(&rows.f_expand([c, n, h1h, 2, 2 * h1w], false)?)?;
        zero_border(&buf, p, h, w, 0)?;
        Ok(buf)
    }

    /// The intensity `i` (int32 `[1, N, H, W]`) padded with zeros and split into its high and
    /// low bytes (`[2, N, ..]` int8, laid out as [`Self::pad`]): `v = 256 * hi + lo + 128`
    /// everywhere, the padding included (hi 0, lo -128).
    fn pad_intensity(&self, arena: &mut Arena, slot: usize, i: &Tensor, p: i64) -> Result<Tensor, TchError> {
        let sz = i.size();
        let (n, h, w) = (sz[1], sz[2], sz[3]);
        let buf = arena.get(slot, Kind::Int8, self.device, &[2, n, h + 2 * p + 1, w + 2 * p + 1])?;
        let hi = buf.f_narrow(0, 0, 1)?;
        let lo = buf.f_narrow(0, 1, 1)?;
        let mut t = arena.get(Slot::Work2 as usize, Kind::Int, self.device, &sz)?;
        i.f_bitwise_right_shift_tensor_scalar_out(&t, 8).in_place()?;
        hi.f_narrow(2, p, h)?.f_narrow(3, p, w)?.f_copy_(&t)?;
        i.f_bitwise_and_scalar_out(&t, 255).in_place()?;
        t.f_sub_scalar_(128).in_place()?;
        lo.f_narrow(2, p, h)?.f_narrow(3, p, w)?.f_copy_(&t)?;
        zero_border(&hi, p, h, w, 0)?;
        zero_border(&lo, p, h, w, -128)?;
        Ok(buf)
    }

    /// `conv` over `padded` (one buffer per group from [`Self::pad`] and its kin, all of an
    /// `n x h x w` input), band by band; each band's output goes to `sink`: requantised and
    /// clamped (int32 or int64 `[cout, nb, bh, w]`, an arena buffer), or, when `products` and on
    /// the CPU, each group's raw products (`[pixels (padded to 8), rows]` int32, for
    /// [`lstm_cpu`]).
    #[allow(clippy::too_many_arguments)]
    fn conv_bands(
        &self,
        label: &str,
        conv: &TConv,
        padded: &[Tensor],
        (n, h, w): (i64, i64, i64),
        arena: &mut Arena,
        products: bool,
        sink: &mut dyn FnMut(Band, BandOut, &mut Arena) -> Result<(), TchError>,
    ) -> Result<(), TchError> {
        let mut laps = Laps::new(self.profiling());
        let mut t = [0.0f64; 4];
        let (k, p) = (conv.k, conv.k / 2);
        let dev = self.device;
        // On the CPU the product is taken with the pixels as rows (`B^T W^T`, views of the same
        // matrices): oneDNN's int8 GEMM runs 1.5-2x faster that way round at these shapes, and
        // needs no padding of the weight rows.
        let cpu = self.fast_cpu;
        let products = products && cpu;
        // A band's biggest temporaries are the im2col matrix (k_pad bytes a pixel) and the
        // int32 outputs and tables (4 cout bytes a pixel; raw products: 4 bytes a row of every
        // group): keep them near `self.band` bytes.
        let k_max = conv.groups.iter().map(|g| g.k_pad).max().unwrap_or(8);
        let out_bytes = if products { 4 * conv.groups.iter().map(|g| g.rows).sum::<i64>() } else { 4 * conv.cout };
        let target = (self.band / (k_max + out_bytes)).max(1);
        let mut accs = Vec::with_capacity(conv.groups.len());
        for band in bands(n, h, w, target) {
            let pix = band.nb * band.bh * w;
            let pix8 = pad8(pix);
            let sum = if products { None } else { Some(arena.get(Slot::Sum as usize, conv.kind, dev, &[conv.cout, band.nb, band.bh, w])?) };
            accs.clear();
            for (gi, g) in conv.groups.iter().enumerate() {
                // im2col: row tap * c + j of B is input channel j shifted by the tap, all taps
                // of an input in one strided copy.
                let b = arena.get(Slot::B as usize, Kind::Int8, dev, &[g.k_pad, pix8])?;
                if g.k_pad > g.k_rows {
                    b.f_narrow(0, g.k_rows, g.k_pad - g.k_rows)?.f_zero_().in_place()?;
                }
                if pix8 > pix {
                    b.f_narrow(1, pix, pix8 - pix)?.f_zero_().in_place()?;
                }
                for &(input, c, row) in &g.parts {
                    let xp = &padded[input];
                    let st = xp.stride();
                    let src = xp.f_narrow(1, band.n0, band.nb)?.f_narrow(2, band.y0, band.bh + 2 * p)?;
                    let src = src.f_as_strided([k, k, c, band.nb, band.bh, w], [st[2], st[3], st[0], st[1], st[2], st[3]], None)?;
                    let mut dst = b.f_as_strided([k, k, c, band.nb, band.bh, w], [k * g.c * pix8, g.c * pix8, pix8, band.bh * w, w, 1], row * pix8)?;
                    dst.f_copy_(&src)?;
                }
                t[0] += laps.lap();
                // `acc`: the product as `[cout, pixels]` (a view on the CPU).
                let acc = if cpu {
                    let acc = arena.get(ACC0 + gi, Kind::Int, dev, &[pix8, g.rows])?;
                    b.f_transpose(0, 1)?.f_internal_int_mm_out(&acc, &g.weight.f_narrow(0, 0, g.rows)?.f_transpose(0, 1)?).in_place()?;
                    t[1] += laps.lap();
                    if products {
                        accs.push(acc);
                        continue;
                    }
                    acc.f_transpose(0, 1)?
                } else {
                    let acc = arena.get(ACC0, Kind::Int, dev, &[g.weight.size()[0], pix8])?;
                    g.weight.f_internal_int_mm_out(&acc, &b).in_place()?;
                    t[1] += laps.lap();
                    acc
                };
                if g.intensity {
                    let mut hi = acc.f_narrow(0, 0, conv.cout)?;
                    hi.f_mul_scalar_(256).in_place()?;
                    hi.f_add_(&acc.f_narrow(0, conv.cout, conv.cout)?).in_place()?;
                }
                let acc = acc.f_narrow(0, 0, conv.cout)?.f_narrow(1, 0, pix)?.f_view([conv.cout, band.nb, band.bh, w])?;
                let sum = sum.as_ref().expect("made when not products");
                if gi == 0 {
                    conv.bias.f_addcmul_out(sum, &acc, &g.mult).in_place()?;
                } else {
                    sum.shallow_clone().f_addcmul_(&acc, &g.mult).in_place()?;
                }
                t[2] += laps.lap();
            }
            match sum {
                Some(mut z) => {
                    z.f_bitwise_right_shift_(&conv.shift).in_place()?;
                    z.f_clamp_(conv.lo, conv.hi).in_place()?;
                    t[2] += laps.lap();
                    sink(band, BandOut::Requantised(&z), arena)?;
                }
                None => sink(band, BandOut::Products(&accs), arena)?,
            }
            t[3] += laps.lap();
        }
        for (part, secs) in ["im2col", "int_mm", "requant", "consumer"].iter().zip(t) {
            self.record(&format!("{label} {part}"), secs);
        }
        Ok(())
    }

    /// `conv` over `x` (`[cin, N, H, W]` int8) into a new int32 `[cout, N, H, W]` tensor.
    fn conv_full(&self, label: &str, conv: &TConv, x: &Tensor, arena: &mut Arena) -> Result<Tensor, TchError> {
        let sz = x.size();
        let (n, h, w) = (sz[1], sz[2], sz[3]);
        let xp = self.pad(arena, Slot::Pad0 as usize, x, conv.k / 2)?;
        let out = Tensor::f_empty([conv.cout, n, h, w], (Kind::Int, self.device))?;
        self.conv_bands(label, conv, &[xp], (n, h, w), arena, false, &mut |band, z, _| band.of(&out)?.f_copy_(requantised(z)))?;
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

    /// An arena from the pool (a new one if every arena is in use).
    fn take_arena(&self) -> Arena {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }

    fn give_arena(&self, a: Arena) {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }

    /// One batched prediction for states of one geometry that have all observed a frame.
    fn predict_group(&self, states: &mut [&mut TorchState], outs: &mut [&mut [u32]], arena: &mut Arena) -> Result<(), TchError> {
        let m = &*self.model;
        let dev = self.device;
        let mut laps = Laps::new(self.profiling());
        let nl = self.layers.len();
        let b = Self::stack(states, |s| s.b.as_ref().expect("checked: observed"))?;
        // I(b) = clamp(rshr((b - offset) * in_mult, in_shift), -32768, 32767)
        let mut work = arena.get(Slot::Work as usize, Kind::Int64, dev, &b.size())?;
        b.f_sub_scalar_out(&work, m.norm.offset).in_place()?;
        work.f_mul_scalar_(m.norm.in_mult).in_place()?;
        work.f_add_scalar_(1i64 << (m.norm.in_shift - 1)).in_place()?;
        work.f_bitwise_right_shift_tensor_scalar_(m.norm.in_shift as i64).in_place()?;
        let intensity = work.f_clamp_(-32768, 32767)?.f_to_kind(Kind::Int)?;
        // The noise scale's correction multiplier of every pixel, from its bucket.
        let out_mult = match &self.scale {
            Some((_, out, _)) => Some(out.f_index_select(0, &Self::buckets(&intensity)?)?),
            None => None,
        };
        // What the network sees: S = stab[k] + rshr(j * (stab[k + 1] - stab[k]), 6).
        let intensity = match &self.scale {
            Some((_, _, stab)) => {
                let k = Self::buckets(&intensity)?;
                let j = intensity.f_to_kind(Kind::Int64)?.f_add_scalar(32768)?.f_bitwise_and(63)?.f_view([-1])?;
                let lo = stab.f_index_select(0, &k)?;
                let step = stab.f_index_select(0, &k.f_add_scalar(1)?)?.f_sub(&lo)?;
                let s = lo.f_add(&j.f_mul(&step)?.f_add_scalar(32)?.f_bitwise_right_shift_tensor_scalar(6)?)?;
                s.f_view_as(&intensity)?.f_to_kind(Kind::Int)?
            }
            None => intensity,
        };
        let mut hid: Vec<Option<Tensor>> = (0..nl).map(|_| None).collect();
        let mut cell: Vec<Option<Tensor>> = (0..nl).map(|_| None).collect();
        let mut ahat: Vec<Option<Tensor>> = (0..nl).map(|_| None).collect();
        self.record("intensity", laps.lap());
        for l in (0..nl).rev() {
            let mut laps = Laps::new(self.profiling());
            let layer = &self.layers[l];
            let e = Self::stack(states, |s| &s.layers[l].e)?;
            let h_old = Self::stack(states, |s| &s.layers[l].h)?;
            let s_cell = Self::stack(states, |s| &s.layers[l].s)?;
            let size = h_old.size();
            let (n, hh, ww) = (size[1], size[2], size[3]);
            let p = layer.lstm.k / 2;
            let mut padded = vec![self.pad(arena, Slot::Pad0 as usize, &e, p)?, self.pad(arena, Slot::Pad0 as usize + 1, &h_old, p)?];
            if let Some(Some(h1)) = hid.get(l + 1) {
                padded.push(self.pad_up(arena, Slot::Pad0 as usize + 2, h1, hh, ww, p)?);
            }
            if l == 0 {
                let slot = Slot::Pad0 as usize + padded.len();
                padded.push(self.pad_intensity(arena, slot, &intensity, p)?);
            }
            let h_new = Tensor::f_empty(size.as_slice(), (Kind::Int8, dev))?;
            let r = layer.r;
            self.record(&format!("L{l} inputs"), laps.lap());
            // The fused step writes the cell in place through its memory: one contiguous tensor.
            let s_cell = if layer.fused.is_some() && self.fast_cpu && !s_cell.is_contiguous() { s_cell.f_contiguous()? } else { s_cell };
            let plane = (n * hh * ww) as usize;
            self.conv_bands(&format!("L{l} lstm"), &layer.lstm, &padded, (n, hh, ww), arena, layer.fused.is_some(), &mut |band, out, arena| {
                let (nb, bh) = (band.nb, band.bh);
                let z = match (out, &layer.fused) {
                    (BandOut::Products(accs), Some(fused)) => {
                        let place = lstm_cpu::Place { plane, offset: ((band.n0 * hh + band.y0) * ww) as usize, pixels: (nb * bh * ww) as usize };
                        // SAFETY: the products are arena buffers no other operation uses until
                        // this band is done; `s_cell` and `h_new` are contiguous CPU tensors of
                        // their kinds that nothing else reads or writes while the slices live
                        // (until `band` returns).
                        let products = accs
                            .iter()
                            .map(|a| Ok(lstm_cpu::Products { acc: unsafe { cpu_slice::<i32>(a, Kind::Int)? }, rows: a.size()[1] as usize }))
                            .collect::<Result<Vec<_>, TchError>>()?;
                        let (s, h) = unsafe { (cpu_slice_mut::<i32>(&s_cell, Kind::Int)?, cpu_slice_mut::<i8>(&h_new, Kind::Int8)?) };
                        fused.band(&products, s, h, place);
                        return Ok(());
                    }
                    (BandOut::Requantised(z), _) => z,
                    (BandOut::Products(_), None) => return Err(TchError::Kind("raw products for a layer without a fused step".into())),
                };
                let idx = arena.get(Slot::Idx as usize, Kind::Int, dev, &[4 * r, nb, bh, ww])?;
                z.f_add_out(&idx, &layer.gate_offset).in_place()?;
                let gates = arena.get(Slot::Gates as usize, Kind::Int, dev, &[4 * r * nb * bh * ww])?;
                layer.gates.f_index_select_out(&gates, 0, &idx.f_view([-1])?).in_place()?;
                let gates = gates.f_view([4 * r, nb, bh, ww])?;
                let (i, f, o, g) = (gates.f_narrow(0, 0, r)?, gates.f_narrow(0, r, r)?, gates.f_narrow(0, 2 * r, r)?, gates.f_narrow(0, 3 * r, r)?);
                // S = clamp((f * S + ((i * g) << 5)) >> 7, -32767, 32767), the << 5 in the table.
                let mut s_band = band.of(&s_cell)?;
                let mut s_new = arena.get(Slot::Cell as usize, Kind::Int, dev, &[r, nb, bh, ww])?;
                f.f_mul_out(&s_new, &s_band).in_place()?;
                s_new.f_addcmul_(&i, &g).in_place()?;
                s_new.f_bitwise_right_shift_tensor_scalar_(7).in_place()?;
                s_new.f_clamp_(-32767, 32767).in_place()?;
                s_band.f_copy_(&s_new)?;
                // H = clamp((o * TANHC[clamp(S >> 5, -1024, 1023) + 1024]) >> 7, -127, 127),
                // the table indexed by S + 32767.
                let idx = arena.get(Slot::Idx as usize, Kind::Int, dev, &[r * nb * bh * ww])?;
                s_new.f_view([-1])?.f_add_scalar_out(&idx, 32767).in_place()?;
                let t = arena.get(Slot::Tanh as usize, Kind::Int, dev, &[r * nb * bh * ww])?;
                self.cell_tanh.f_index_select_out(&t, 0, &idx).in_place()?;
                let mut hv = arena.get(Slot::Hid as usize, Kind::Int, dev, &[r, nb, bh, ww])?;
                o.f_mul_out(&hv, &t.f_view([r, nb, bh, ww])?).in_place()?;
                hv.f_bitwise_right_shift_tensor_scalar_(7).in_place()?;
                hv.f_clamp_(-127, 127).in_place()?;
                band.of(&h_new)?.f_copy_(&hv)
            })?;
            ahat[l] = Some(self.conv_full(&format!("L{l} ahat"), &layer.ahat, &h_new, arena)?);
            hid[l] = Some(h_new);
            cell[l] = Some(s_cell);
        }
        // P' = clamp(b + C(Ahat_0), 0, mask)
        let mut laps = Laps::new(self.profiling());
        let a0 = ahat[0].as_ref().expect("layer 0 computed");
        let work = arena.get(Slot::Work as usize, Kind::Int64, dev, &b.size())?;
        match &out_mult {
            // C(u) = rshr(u * out_mult[k], out_shift)
            Some(om) => {
                let mut flat = work.f_view([-1])?;
                a0.f_view([-1])?.f_to_kind(Kind::Int64)?.f_mul_out(&flat, om).in_place()?;
                flat.f_add_scalar_(1i64 << (m.norm.out_shift - 1))?.f_bitwise_right_shift_tensor_scalar_(m.norm.out_shift as i64).in_place()?;
            }
            None => {
                let idx = arena.get(Slot::Idx as usize, Kind::Int, dev, &[a0.numel() as i64])?;
                a0.f_view([-1])?.f_add_scalar_out(&idx, 128).in_place()?;
                self.correction.f_index_select_out(&work.f_view([-1])?, 0, &idx).in_place()?;
            }
        }
        let pred = work.shallow_clone().f_add_(&b)?.f_clamp_(0, states[0].geom.mask() as i64)?.f_to_kind(Kind::Int)?.f_to_device(Device::Cpu)?;
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
        self.record("output", laps.lap());
        Ok(())
    }

    /// One batched observation for states of one geometry that have all made a prediction.
    fn observe_group(&self, states: &mut [&mut TorchState], recons: &[Tensor], arena: &mut Arena) -> Result<(), TchError> {
        let m = &*self.model;
        let dev = self.device;
        let mut laps = Laps::new(self.profiling());
        let r = if recons.len() == 1 { recons[0].shallow_clone() } else { Tensor::f_cat(recons, 1)? };
        let b = Self::stack(states, |s| s.b.as_ref().expect("checked: predicted"))?;
        // A_0 = U(R - b) = clamp(rshr((R - b) * err_mult, err_shift), -128, 127)
        let size = r.size();
        let mut work = arena.get(Slot::Work as usize, Kind::Int64, dev, &size)?;
        r.f_sub_out(&work, &b).in_place()?;
        match &self.scale {
            // The error multiplier of each pixel's bucket, from the intensity of `b`.
            Some((err, _, _)) => {
                let i = b.f_to_kind(Kind::Int64)?.f_sub_scalar(m.norm.offset)?.f_mul_scalar(m.norm.in_mult)?;
                let i = i.f_add_scalar(1i64 << (m.norm.in_shift - 1))?.f_bitwise_right_shift_tensor_scalar(m.norm.in_shift as i64)?.f_clamp(-32768, 32767)?;
                work.f_mul_(&err.f_index_select(0, &Self::buckets(&i)?)?.f_view_as(&work)?).in_place()?;
            }
            None => work.f_mul_scalar_(m.norm.err_mult).in_place()?,
        }
        work.f_add_scalar_(1i64 << (m.norm.err_shift - 1)).in_place()?;
        work.f_bitwise_right_shift_tensor_scalar_(m.norm.err_shift as i64).in_place()?;
        work.f_clamp_(-128, 127).in_place()?;
        let mut d = arena.get(Slot::Work2 as usize, Kind::Int, dev, &size)?;
        work.f_sub_out(&d, &Self::stack(states, |s| &s.layers[0].ahat)?).in_place()?;
        let e0 = Tensor::f_empty([2, size[1], size[2], size[3]], (Kind::Int8, dev))?;
        let t = arena.get(Slot::Idx as usize, Kind::Int, dev, &size)?;
        errors_into(&mut d, &t, &e0, 1)?;
        let mut errs = vec![e0];
        self.record("L0 errors", laps.lap());
        for l in 1..self.layers.len() {
            // A_l = pool(a_l(E_{l-1})), E_l = errors(A_l, Ahat_l), band by band (even rows).
            let conv_a = self.layers[l].a.as_ref().expect("validated: layers above 0 have `a`");
            let ahat = Self::stack(states, |s| &s.layers[l].ahat)?;
            let sz = ahat.size();
            let a = sz[0];
            let e = Tensor::f_empty([2 * a, sz[1], sz[2], sz[3]], (Kind::Int8, dev))?;
            let below = &errs[l - 1];
            let bsz = below.size();
            let xp = self.pad(arena, Slot::Pad0 as usize, below, conv_a.k / 2)?;
            self.conv_bands(&format!("L{l} a"), conv_a, &[xp], (bsz[1], bsz[2], bsz[3]), arena, false, &mut |band, z, arena| {
                let z = requantised(z);
                let (bh, w) = (band.bh, bsz[3]);
                let (ph, pw) = ((bh + 1) / 2, (w + 1) / 2);
                // pool: a zero row/column at odd edges changes no maximum (values >= 0).
                let padded = arena.get(Slot::Pool as usize, conv_a.kind, dev, &[a, band.nb, 2 * ph, 2 * pw])?;
                padded.f_narrow(2, 0, bh)?.f_narrow(3, 0, w)?.f_copy_(z)?;
                if bh % 2 == 1 {
                    padded.f_narrow(2, bh, 1)?.f_zero_().in_place()?;
                }
                if w % 2 == 1 {
                    padded.f_narrow(3, w, 1)?.f_zero_().in_place()?;
                }
                // Two elementwise maxima (rows, then columns): fifteen times faster than a
                // reduction over a 6-d view.
                let rows = arena.get(Slot::Idx as usize, conv_a.kind, dev, &[a, band.nb, ph, 2 * pw])?;
                let v = padded.f_view([a, band.nb, ph, 2, 2 * pw])?;
                v.f_select(3, 0)?.f_maximum_out(&rows, &v.f_select(3, 1)?).in_place()?;
                let pooled = arena.get(Slot::Gates as usize, conv_a.kind, dev, &[a, band.nb, ph, pw])?;
                let u = rows.f_view([a, band.nb, ph, pw, 2])?;
                u.f_select(4, 0)?.f_maximum_out(&pooled, &u.f_select(4, 1)?).in_place()?;
                let up_band = Band { n0: band.n0, nb: band.nb, y0: band.y0 / 2, bh: ph };
                let mut d = arena.get(Slot::Cell as usize, Kind::Int, dev, &[a, band.nb, ph, pw])?;
                pooled.f_sub_out(&d, &up_band.of(&ahat)?).in_place()?;
                let t = arena.get(Slot::Tanh as usize, Kind::Int, dev, &[a, band.nb, ph, pw])?;
                errors_into(&mut d, &t, &up_band.of(&e)?, a)
            })?;
            errs.push(e);
        }
        let mut laps = Laps::new(self.profiling());
        for (i, s) in states.iter_mut().enumerate() {
            let i = i as i64;
            for (l, ls) in s.layers.iter_mut().enumerate() {
                ls.e = errs[l].f_narrow(1, i, 1)?;
            }
            s.b = Some(r.f_narrow(1, i, 1)?);
            s.predicted = false;
        }
        self.record("observe rest", laps.lap());
        Ok(())
    }

    /// A window's layer states before any frame: all zero.
    fn zero_layers(&self, geom: Geometry) -> Result<Vec<TLayerState>, TchError> {
        let dev = self.device;
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
    }

    /// A frame as an int64 `[1, 1, H, W]` tensor on the device.
    fn frame(&self, geom: &Geometry, recon: &[u32]) -> Result<Tensor, TchError> {
        let t = Tensor::f_from_slice(as_i32(recon))?.f_to_device(self.device)?.f_to_kind(Kind::Int64)?.f_bitwise_and_(0xffff_ffffi64)?;
        t.f_view([1, 1, geom.height as i64, geom.width as i64])
    }
}

/// The output of a band asked for requantised.
fn requantised(out: BandOut<'_>) -> &Tensor {
    match out {
        BandOut::Requantised(z) => z,
        BandOut::Products(_) => unreachable!("conv_bands hands raw products only to a fused step"),
    }
}

/// Checks that `t` is a contiguous CPU tensor of `kind` whose elements are `T`s.
fn check_cpu<T>(t: &Tensor, kind: Kind) -> Result<(), TchError> {
    if t.device() != Device::Cpu || t.kind() != kind || !t.is_contiguous() || kind.elt_size_in_bytes() != std::mem::size_of::<T>() {
        return Err(TchError::Kind(format!("expected a contiguous CPU tensor of {kind:?}, got {:?} on {:?}", t.kind(), t.device())));
    }
    Ok(())
}

/// The elements of a contiguous CPU tensor of `kind`.
///
/// # Safety
/// Nothing may write the tensor's memory while the slice lives.
unsafe fn cpu_slice<T>(t: &Tensor, kind: Kind) -> Result<&[T], TchError> {
    check_cpu::<T>(t, kind)?;
    // SAFETY: the tensor's `numel` elements of `T` are contiguous at its data pointer (checked),
    // alive while `t` is borrowed; the caller promises no writer.
    Ok(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, t.numel()) })
}

/// The elements of a contiguous CPU tensor of `kind`, to write.
///
/// # Safety
/// Nothing else may read or write the tensor's memory while the slice lives.
#[allow(clippy::mut_from_ref)]
unsafe fn cpu_slice_mut<T>(t: &Tensor, kind: Kind) -> Result<&mut [T], TchError> {
    check_cpu::<T>(t, kind)?;
    // SAFETY: as in `cpu_slice`; the caller promises exclusive use.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel()) })
}

/// Sets the border of a buffer from [`TorchModel::pad`] (everything outside the `h x w`
/// interior at `(p, p)`) to `v`.
fn zero_border(buf: &Tensor, p: i64, h: i64, w: i64, v: i64) -> Result<(), TchError> {
    let sz = buf.size();
    let (hp, wp) = (sz[2], sz[3]);
    for (dim, lo, len) in [(2, 0, p), (2, p + h, hp - p - h), (3, 0, p), (3, p + w, wp - p - w)] {
        if len > 0 {
            buf.f_narrow(dim, lo, len)?.f_fill_(v).in_place()?;
        }
    }
    Ok(())
}

/// `E = [clamp(A - Ahat, 0, 127), clamp(Ahat - A, 0, 127)]` into the int8 `e` (`[2 a, ..]`),
/// given `d = A - Ahat` (int32, overwritten) and an int32 buffer `t` of its shape.
fn errors_into(d: &mut Tensor, t: &Tensor, e: &Tensor, a: i64) -> Result<(), TchError> {
    d.f_clamp_out(t, 0, 127).in_place()?;
    e.f_narrow(0, 0, a)?.f_copy_(t)?;
    d.f_neg_().in_place()?;
    d.f_clamp_out(t, 0, 127).in_place()?;
    e.f_narrow(0, a, a)?.f_copy_(t)
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

    fn causal(&self) -> Option<&crate::codec::predict::causal::CausalStage> {
        self.stage.as_ref()
    }

    fn fits(&self, geom: Geometry) -> Result<(), PredictError> {
        file::check_frames(&self.model, &geom).map_err(|why| self.err(why))
    }

    fn state_bytes(&self, geom: Geometry) -> u64 {
        // int8 hidden and error planes, int32 cells and predictions, an int64 reconstruction
        // (`TorchState`).
        super::state_bytes(&self.model.arch, geom, &super::PlaneBytes { hid: 1, cell: 4, err: 1, ahat: 4, frame: 8 })
    }

    fn scratch_bytes(&self) -> u64 {
        // The arena's buffers that scale with the band, not the frame ([`Slot`]: the im2col
        // matrix, the products, the sums, the tables' indices and outputs, the cell and hidden
        // temporaries, pooling), each at most about `band` bytes; the frame-sized ones are in the
        // step's share of states. On CUDA they are device memory, which the host budget does not
        // hold (the states charged for it are already an over-count there).
        if self.device == Device::Cpu {
            SCRATCH_BANDS * self.band as u64 + ALLOCATOR_SLACK
        } else {
            0
        }
    }

    fn start(&self, geom: Geometry) -> Result<Box<dyn ModelState>, PredictError> {
        self.fits(geom)?;
        let layers = self.zero_layers(geom).map_err(|e| self.err(torch_err(e)))?;
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
            let mut arena = self.take_arena();
            let r = self.predict_group(&mut group, &mut group_outs, &mut arena);
            self.give_arena(arena);
            r.map_err(|e| self.err(torch_err(e)))?;
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
            let mut arena = self.take_arena();
            let r = self.observe_group(&mut group, &frames, &mut arena);
            self.give_arena(arena);
            r.map_err(|e| self.err(torch_err(e)))?;
            predicted = rest;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `state_bytes` is what a state that observed a frame holds in its tensors, on every
    /// layer's size (odd sizes round up at each halving).
    #[test]
    fn state_bytes_is_what_a_state_holds() {
        let m = TorchModel::new(Arc::new(file::random(&crate::model::Size::Prednet.arch(), crate::codec::DType::U16, 4)), Device::Cpu).unwrap();
        let geom = Geometry::of(37, 29, crate::codec::DType::U16);
        let mut st = m.start(geom).unwrap();
        m.observe_batch(&mut [&mut *st], &[&vec![1000u32; geom.pixels()]]).unwrap();
        let s = st.as_any().downcast_ref::<TorchState>().unwrap();
        let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        let layers: u64 = s.layers.iter().map(|l| bytes(&l.h) + bytes(&l.s) + bytes(&l.e) + bytes(&l.ahat)).sum();
        assert_eq!(m.state_bytes(geom), layers + s.b.as_ref().map_or(0, bytes));
    }
}
