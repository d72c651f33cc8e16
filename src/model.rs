//! The learned predictor: an integer PredNet in residual form (`docs/MODEL.md`).
//!
//! [`IntModel`] is the network as integers: architecture, weights, multipliers, lookup tables,
//! normalisation. It is what a model file holds ([`file`]), what training exports ([`train`]),
//! and what the two inference backends run: [`reference`] (plain Rust, the definition) and
//! [`torch`] (libtorch, int8 matrix products on CPU or CUDA). Both implement
//! [`crate::codec::predict::Model`] and give the same integers (tested).

pub mod batch;
pub mod cuda;
pub mod file;
pub mod reference;
pub mod registry;
pub mod torch;
pub mod train;

use crate::codec::DType;

pub const MAX_LAYERS: usize = 4;
pub const MAX_CHANNELS: usize = 256;
pub const MAX_KERNEL: usize = 7;
/// Entries of the gate tables (an i8 pre-activation each) and of the cell table.
pub const GATE_LUT: usize = 256;
pub const CELL_LUT: usize = 2048;

/// Shape of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerArch {
    /// Target channels `A_l` (1 on layer 0: the correction).
    pub a: usize,
    /// Representation channels `R_l`.
    pub r: usize,
    /// Kernel sizes of `lstm_l`, `ahat_l` and `a_l` (the last unused on layer 0).
    pub k_lstm: usize,
    pub k_ahat: usize,
    pub k_a: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    pub layers: Vec<LayerArch>,
}

/// The named sizes of `tezipfs model train --size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Size {
    /// Runs usefully on a 2-core CPU: one PredNet layer of 8 representation channels. Chosen
    /// by measurement (ctc, abs:2, 3-minute budgets, `examples/model_lab.rs`): one layer of 8
    /// gained more than two layers (8, 16) or (4, 8), 16 channels or 5x5 kernels in the same
    /// time, and runs about twice as fast as the two-layer stack.
    Small,
    /// The paper's size (four layers, 48/96/192 channels above the bottom): for GPU servers.
    Prednet,
}

impl Size {
    pub fn arch(self) -> Arch {
        let l = |a, r, k_lstm, k_ahat, k_a| LayerArch { a, r, k_lstm, k_ahat, k_a };
        match self {
            Size::Small => Arch { layers: vec![l(1, 8, 3, 3, 3)] },
            Size::Prednet => Arch { layers: vec![l(1, 16, 3, 3, 3), l(48, 48, 3, 3, 3), l(96, 96, 3, 3, 3), l(192, 192, 3, 3, 3)] },
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Size::Small => "small",
            Size::Prednet => "prednet",
        })
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        match s {
            "small" => Ok(Size::Small),
            "prednet" => Ok(Size::Prednet),
            _ => Err(format!("unknown model size {s:?} (expected small or prednet)")),
        }
    }
}

/// One input group of a convolution: weights `[cout][cin][k][k]` and a multiplier per output
/// channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub cin: usize,
    pub weight: Vec<i8>,
    pub mult: Vec<i32>,
}

/// A convolution with zero padding (output the input's size): see `docs/MODEL.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub cout: usize,
    pub k: usize,
    pub groups: Vec<Group>,
    pub bias: Vec<i64>,
    pub shift: Vec<u8>,
    pub lo: i32,
    pub hi: i32,
}

impl Conv {
    /// `out = clamp((sum_g acc_g * mult_g[c] + bias[c] + 2^(shift[c]-1)) >> shift[c], lo, hi)`
    /// for output channel `c`, given each group's exact accumulator.
    #[inline]
    pub fn requant(&self, c: usize, accs: &[i32]) -> i32 {
        let mut sum = self.bias[c];
        for (g, &acc) in self.groups.iter().zip(accs) {
            sum += acc as i64 * g.mult[c] as i64;
        }
        let s = self.shift[c] as u32;
        ((sum + (1i64 << (s - 1))) >> s).clamp(self.lo as i64, self.hi as i64) as i32
    }
}

/// Weights of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Groups: `E_l`, `H_l`, then `up(H_{l+1})` (not on the top layer), then the intensity
    /// (layer 0 only, i16 input). Output `4 R_l` channels: gates i, f, o, g.
    pub lstm: Conv,
    /// `H_l -> A_l`.
    pub ahat: Conv,
    /// `E_{l-1} -> A_l` (layers 1 and up).
    pub a: Option<Conv>,
}

/// The fixed-point maps between pixel values and the network (`docs/MODEL.md`, Values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Norm {
    pub offset: i64,
    pub in_mult: i64,
    pub in_shift: u8,
    pub err_mult: i64,
    pub err_shift: u8,
    pub out_mult: i64,
    pub out_shift: u8,
    /// Model file version 2: error units that follow the noise, one multiplier per intensity
    /// bucket ([`Scale`]); `None` (version 1): `err_mult` and `out_mult` everywhere.
    pub scale: Option<Box<Scale>>,
}

/// Buckets of the noise scale: the intensity `I(b)` (i16) in steps of 64.
pub const SCALE_BUCKETS: usize = 1024;

/// Per intensity bucket `k = (I(b) + 32768) >> 6` of the frame a difference is taken from, the
/// multipliers of the error and correction maps (shifts `err_shift` and `out_shift` as without
/// a scale). Data whose noise grows with the signal (photon counts: Poisson) then has its errors
/// in units of the local noise, where a global unit either saturates the bright pixels' errors
/// at +-127 units or leaves the dark ones a unit of several grey levels.
///
/// The network's intensity input is then *stabilised*: `stab` holds, at each bucket boundary
/// (`SCALE_BUCKETS + 1` entries, non-decreasing i16 values), the integral of `1 / sigma` (the
/// generalised Anscombe transform), linearly interpolated inside a bucket, so that one step of
/// the input is about the same fraction of the noise at every intensity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    pub err_mult: Vec<i64>,
    pub out_mult: Vec<i64>,
    pub stab: Vec<i32>,
}

/// `(x + 2^(s-1)) >> s`: rounds half up (`s >= 1`).
#[inline]
pub fn rshr(x: i64, s: u8) -> i64 {
    (x + (1i64 << (s - 1))) >> s
}

impl Norm {
    /// The intensity of integer image `v` (i16).
    #[inline]
    pub fn intensity(&self, v: u32) -> i32 {
        rshr((v as i64 - self.offset) * self.in_mult, self.in_shift).clamp(-32768, 32767) as i32
    }
    /// The intensity the network sees: `I(v)`, stabilised by the noise scale when there is one
    /// (`S = stab[k] + rshr(j * (stab[k + 1] - stab[k]), 6)`, `k` the bucket of `I`, `j` its
    /// place in it, `0..64`).
    #[inline]
    pub fn net_intensity(&self, v: u32) -> i32 {
        let i = self.intensity(v);
        match &self.scale {
            None => i,
            Some(s) => {
                let (k, j) = (Norm::bucket(i), ((i + 32768) & 63) as i64);
                (s.stab[k] as i64 + rshr(j * (s.stab[k + 1] - s.stab[k]) as i64, 6)) as i32
            }
        }
    }
    /// The noise-scale bucket of an intensity.
    #[inline]
    pub fn bucket(intensity: i32) -> usize {
        ((intensity + 32768) >> 6) as usize
    }
    /// The error and correction multipliers for differences taken from integer image `b`.
    #[inline]
    pub fn mults_at(&self, b: u32) -> (i64, i64) {
        match &self.scale {
            None => (self.err_mult, self.out_mult),
            Some(s) => {
                let k = Norm::bucket(self.intensity(b));
                (s.err_mult[k], s.out_mult[k])
            }
        }
    }
    /// The difference `d = r - b` of integer images in error units (i8).
    #[inline]
    pub fn error(&self, d: i64, b: u32) -> i32 {
        rshr(d * self.mults_at(b).0, self.err_shift).clamp(-128, 127) as i32
    }
    /// `u` error units, as a difference of integer images from `b`.
    #[inline]
    pub fn correction(&self, u: i32, b: u32) -> i64 {
        rshr(u as i64 * self.mults_at(b).1, self.out_shift)
    }
    /// The reference `clamp(b + C(u), 0, mask)`.
    #[inline]
    pub fn corrected(&self, b: u32, u: i32, mask: u32) -> u32 {
        (b as i64 + self.correction(u, b)).clamp(0, mask as i64) as u32
    }
}

/// The lookup tables (Q7 outputs).
#[derive(Clone, Debug, PartialEq)]
pub struct Luts {
    /// Indexed by `z + 128`, `z` an i8 pre-activation meaning `z / 16`.
    pub sigmoid: Vec<i16>,
    pub tanh: Vec<i16>,
    /// Indexed by `clamp(s >> 5, -1024, 1023) + 1024`, `s` a cell value (Q12).
    pub tanh_cell: Vec<i16>,
}

impl Luts {
    /// The tables training writes: the functions rounded to Q7 (computed once, stored in the
    /// file, so no backend evaluates them).
    pub fn standard() -> Luts {
        let q7 = |v: f64| (v * 128.0).round() as i16;
        let sigmoid = (0..GATE_LUT).map(|j| q7(1.0 / (1.0 + (-((j as f64 - 128.0) / 16.0)).exp()))).collect();
        let tanh = (0..GATE_LUT).map(|j| q7(((j as f64 - 128.0) / 16.0).tanh())).collect();
        // Cell index j stands for s = (j - 1024) * 32 in Q12, i.e. (j - 1024) / 128.
        let tanh_cell = (0..CELL_LUT).map(|j| q7(((j as f64 - 1024.0) / 128.0).tanh())).collect();
        Luts { sigmoid, tanh, tanh_cell }
    }

    /// One LSTM cell step in Q7/Q12 (`docs/MODEL.md`, predict): gate pre-activations
    /// `z = [i, f, o, g]` (i8), the cell `s` (Q12) in and out; returns `H` (i8).
    #[inline]
    pub fn lstm_cell(&self, z: [i32; 4], s: &mut i32) -> i32 {
        let (i, f, o) = (self.sigmoid[(z[0] + 128) as usize] as i32, self.sigmoid[(z[1] + 128) as usize] as i32, self.sigmoid[(z[2] + 128) as usize] as i32);
        let g = self.tanh[(z[3] + 128) as usize] as i32;
        *s = ((f * *s + ((i * g) << 5)) >> 7).clamp(-32767, 32767);
        let t = self.tanh_cell[((*s >> 5).clamp(-1024, 1023) + 1024) as usize] as i32;
        ((o * t) >> 7).clamp(-127, 127)
    }
}

/// What training recorded about a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub size: String,
    /// The error bound trained for (`lossless`, `abs:2`, ...).
    pub bound: String,
    /// SHA-256 of the training frames' bytes, in order.
    pub fingerprint: [u8; 32],
    pub frames: u64,
    pub steps: u64,
    /// Final training loss (mean absolute error of the prediction, in error units).
    pub loss: f64,
}

/// A whole integer model.
#[derive(Clone, Debug, PartialEq)]
pub struct IntModel {
    pub arch: Arch,
    pub dtype: DType,
    pub norm: Norm,
    pub luts: Luts,
    pub layers: Vec<Layer>,
    pub meta: Meta,
    /// The causal stage (model file version 3), what predictor `causal` runs.
    pub causal: Option<crate::codec::predict::causal::CausalNet>,
}

/// Bytes a backend's state keeps per value of each of its planes ([`state_bytes`]).
pub struct PlaneBytes {
    pub hid: u64,
    pub cell: u64,
    pub err: u64,
    pub ahat: u64,
    /// Per pixel of the frame: the last reconstruction.
    pub frame: u64,
}

/// Bytes of one window's state of `arch` for frames of `geom`: per layer `R` hidden and `R` cell
/// planes, `2 A` error and `A` prediction planes at the layer's size, and the last
/// reconstruction.
pub fn state_bytes(arch: &Arch, geom: crate::codec::predict::Geometry, b: &PlaneBytes) -> u64 {
    let layers: u64 = arch
        .layers
        .iter()
        .enumerate()
        .map(|(l, la)| {
            let (h, w) = layer_size(geom.height, geom.width, l);
            let (r, a) = (la.r as u64, la.a as u64);
            (h * w) as u64 * (r * (b.hid + b.cell) + a * (2 * b.err + b.ahat))
        })
        .sum();
    layers + geom.pixels() as u64 * b.frame
}

/// Height and width of layer `l` of a `h` x `w` frame.
pub fn layer_size(h: usize, w: usize, l: usize) -> (usize, usize) {
    let (mut h, mut w) = (h, w);
    for _ in 0..l {
        h = h.div_ceil(2);
        w = w.div_ceil(2);
    }
    (h, w)
}

/// Which backend runs a model, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// libtorch on a device (the fast one; CUDA when chosen and present).
    Torch(DeviceChoice),
    /// The plain-Rust reference (slow; the definition).
    Reference,
}

/// `--device auto|cpu|cuda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// The device this choice runs on here; `cuda` without a GPU is an error. (Loads libtorch's
    /// CUDA half first where a driver is: [`cuda::load`].)
    pub fn device(self) -> Result<tch::Device, String> {
        let libs = cuda::load();
        match self {
            DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
            DeviceChoice::Cuda if *libs == cuda::CudaLibs::Loaded => Err("--device cuda: libtorch sees no CUDA device on this machine".into()),
            DeviceChoice::Cuda => Err(format!("--device cuda: no CUDA on this machine (libtorch's CUDA half {libs})")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("unknown device {s:?} (expected auto, cpu or cuda)")),
        }
    }
}

/// Why a model file could not be made into a running model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] file::ModelFileError),
    #[error(transparent)]
    Torch(#[from] torch::TorchModelError),
    #[error("{0}")]
    Device(String),
}

/// A running model from the bytes of a model file (validated; named by their SHA-256). On CUDA
/// the calls of concurrent windows are gathered into batches ([`batch::Batched`]).
pub fn load(bytes: &[u8], backend: Backend) -> Result<std::sync::Arc<dyn crate::codec::predict::Model>, LoadError> {
    Ok(match backend {
        Backend::Torch(d) => {
            let device = d.device().map_err(LoadError::Device)?;
            let model: std::sync::Arc<dyn crate::codec::predict::Model> = std::sync::Arc::new(torch::TorchModel::from_bytes(bytes, device)?);
            if device.is_cuda() {
                std::sync::Arc::new(batch::Batched::new(model, std::time::Duration::from_millis(2), 64))
            } else {
                model
            }
        }
        Backend::Reference => std::sync::Arc::new(reference::ReferenceModel::from_bytes(bytes)?),
    })
}
