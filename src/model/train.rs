//! Training: the float PredNet with fake quantisation, in tch, and its export to an
//! [`super::IntModel`].
//!
//! The network ([`net`]) mirrors the integer network of `docs/MODEL.md` step for step, so what
//! training optimises is (up to a few rounding boundaries) what the codec runs. It learns from
//! random crops of short runs of consecutive frames, each run treated as a window starting from
//! a zero state: the first frame observed (the key frame), every later one predicted, then
//! observed. What it observes is what a decoder reconstructs: under `abs:E` the originals plus
//! uniform integer noise in `[-E, E]`; what it is scored against is the original. The loss is
//! the mean absolute error of the corrected reference `P'` in error units.
//!
//! Before training, the normalisation ([`Norm`]) is chosen from the training frames: the
//! intensity map from their robust value range, the error units from their noise (about
//! [`Hyper::units`] units per standard deviation of what the network observes).
//!
//! [`eval`] measures a model (float or integer) against the previous frame on held-out frames.

pub mod causal;
pub mod eval;
pub mod net;

use super::file::{self, ModelFileError};
use super::{Arch, Conv, Group, IntModel, Layer, Luts, Meta, Norm, Scale, Size, SCALE_BUCKETS};
use crate::codec::predict::{hash_hex, Geometry, Model, ModelHash, ModelState, PredictError};
use crate::codec::{Bound, DType};
use crate::fixtures::Rng;
use net::{FState, FloatNet, QConv};
use sha2::Digest;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training needs at least 2 frames (a key frame and one to predict), got {0}")]
    TooFewFrames(usize),
    #[error("frame {index} has {got} pixels, but the frames are {width}x{height} ({want} pixels)")]
    Geometry { index: usize, got: usize, want: usize, width: usize, height: usize },
    #[error("frames of {0}x{1} pixels are too small to train on (at least 8x8)")]
    TooSmall(usize, usize),
    #[error(
        "a model is trained for a lossless or abs:E bound, not {0} (the noise of rel and pwrel reconstructions differs from frame to frame and pixel to pixel)"
    )]
    Bound(Bound),
    #[error("CUDA was asked for but is not available (this build's libtorch sees no CUDA device)")]
    NoCuda,
    #[error("architecture: {0}")]
    Arch(String),
    #[error("training diverged at step {step} (loss {loss})")]
    Diverged { step: u64, loss: f64 },
    #[error("libtorch failed: {0}")]
    Torch(String),
    #[error("the exported model is invalid (a bug in the export): {0}")]
    Export(#[from] ModelFileError),
}

/// Where to train: the same choice as inference's `--device`.
pub use crate::model::DeviceChoice;

/// What the loss measures of the prediction error `P' - x` (in error units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Mean absolute error.
    Mae,
    /// Mean squared error (scaled to error units).
    Mse,
    /// Mean of `log(1 + |e| / units)`: closer to what an entropy coder pays for a residual
    /// (its cost grows with the logarithm of its magnitude).
    Log,
}

impl FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Loss, String> {
        match s {
            "mae" => Ok(Loss::Mae),
            "mse" => Ok(Loss::Mse),
            "log" => Ok(Loss::Log),
            _ => Err(format!("unknown loss {s:?} (expected mae, mse or log)")),
        }
    }
}

/// Hyper-parameters (defaults: what worked best in the measurements of `docs/MODEL.md`).
#[derive(Clone, Debug)]
pub struct Hyper {
    /// Side of the square crops (clipped to the frame).
    pub crop: usize,
    /// Frames per training sequence: a key frame, then `seq - 1` predicted frames.
    pub seq: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Adam's learning rate at its peak (cosine decay to 5% over the budget).
    pub lr: f64,
    pub loss: Loss,
    /// Error units per standard deviation of the noise the network observes.
    pub units: f64,
    /// Random flips and transposes of the crops.
    pub augment: bool,
    /// Export for i32 requantisation (faster inference, coarser multipliers; see [`net::Plan`]).
    pub int32: bool,
    /// Under `abs:E`, train as the codec codes: each predicted frame quantised against the
    /// prediction, the network observing that reconstruction (the gradient does not flow
    /// through the quantisation). Otherwise (and for lossless, floats and 32-bit types) the
    /// network observes the originals plus independent uniform noise.
    pub closed_loop: bool,
    /// Error units that follow the noise where it grows with the signal (a noise scale, model
    /// file version 2; see [`choose_norm`]).
    pub noise_scale: bool,
}

impl Default for Hyper {
    fn default() -> Hyper {
        // lr 1e-2: better than 3e-3, 1e-3 and 3e-2 in 3-minute budgets (model_lab, ctc abs:2).
        // Closed loop: in `bench --model` (2.5 minutes) ctc abs:2 -3.4% of classical auto's bits
        // against -1.8% open loop, abs:4 -3.9% against -3.2%; the u16 fixture abs:4 closes 61%
        // of the oracle gap against 44% (abs:1 37% both ways, abs:2 39% against 43%).
        Hyper { crop: 96, seq: 6, batch: 8, lr: 1e-2, loss: Loss::Mae, units: 16.0, augment: true, int32: true, closed_loop: true, noise_scale: true }
    }
}

/// Options of [`train`].
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub size: Size,
    /// Another architecture than `size`'s (experiments); the model is then named `custom`.
    pub arch: Option<Arch>,
    /// The bound the codec will code under: `lossless` or `abs:E`.
    pub bound: Bound,
    /// Wall-clock budget.
    pub minutes: f64,
    /// Stop after this many steps even if time is left.
    pub max_steps: Option<u64>,
    pub device: DeviceChoice,
    pub seed: u64,
    /// libtorch threads (default: every core).
    pub threads: Option<usize>,
    pub hyper: Hyper,
    /// The causal stage (model file version 3), trained after the PredNet within at most a
    /// quarter of `minutes`; `None`: a model without it.
    pub causal: Option<causal::CausalOptions>,
}

impl Default for TrainOptions {
    fn default() -> TrainOptions {
        TrainOptions {
            size: Size::Small,
            arch: None,
            bound: Bound::Lossless,
            minutes: 10.0,
            max_steps: None,
            device: DeviceChoice::Auto,
            seed: 1,
            threads: None,
            hyper: Hyper::default(),
            causal: Some(causal::CausalOptions::default()),
        }
    }
}

/// What the progress callback is told after every step.
#[derive(Clone, Debug)]
pub struct Progress {
    pub step: u64,
    pub elapsed: Duration,
    /// The time budget (training stops at it or at the step limit, whichever comes first).
    pub budget: Duration,
    /// Fraction of the budget (time or steps) used, 0 to 1.
    pub done: f64,
    /// Running mean of the loss (error units).
    pub loss: f64,
    /// This step's loss (mean absolute error, error units).
    pub step_loss: f64,
    /// Frames predicted per second, counted in whole-frame equivalents (crop pixels / frame
    /// pixels).
    pub frames_per_sec: f64,
}

/// The reconstruction noise training simulates: `e` is the largest error (0 lossless; for
/// integer types an integer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Degrade {
    pub dtype: DType,
    pub e: f64,
}

impl Degrade {
    /// The noise of reconstructions under `bound` (as the codec applies it: an integer type's
    /// `abs:E` is floored, below 1 it is lossless).
    pub fn new(bound: Bound, dtype: DType) -> Result<Degrade, TrainError> {
        let e = match bound {
            Bound::Lossless => 0.0,
            Bound::Abs(e) if dtype.is_float() => e,
            Bound::Abs(e) => e.floor(),
            b => return Err(TrainError::Bound(b)),
        };
        Ok(Degrade { dtype, e })
    }

    /// Variance of the added noise (integer-image units for integer types).
    pub fn variance(&self) -> f64 {
        if self.dtype.is_float() {
            self.e * self.e / 3.0
        } else {
            self.e * (self.e + 1.0) / 3.0
        }
    }

    /// What a decoder might reconstruct of `x`: `x` plus uniform noise in `[-e, e]` (integers for
    /// integer types), clamped to the type's range.
    #[inline]
    pub fn apply(&self, x: u32, rng: &mut Rng) -> u32 {
        if self.e <= 0.0 {
            return x;
        }
        if !self.dtype.is_float() {
            let e = self.e as u64;
            let n = (rng.next_u64() % (2 * e + 1)) as i64 - e as i64;
            return (x as i64 + n).clamp(0, self.dtype.mask() as i64) as u32;
        }
        let v = self.dtype.value(x);
        if !v.is_finite() {
            return x;
        }
        let y = (v + (2.0 * rng.uniform() - 1.0) * self.e) as f32;
        self.dtype.to_image(y.to_bits())
    }
}

/// `(mult, shift)` with `mult / 2^shift` as close to `ratio` as `mult <= max_mult` allows
/// (`shift` in 1..=62, `mult >= 1`).
pub fn fixed_point(ratio: f64, max_mult: i64) -> (i64, u8) {
    let mut s = 62i32;
    while s > 1 && ratio * 2f64.powi(s) > max_mult as f64 {
        s -= 1;
    }
    let m = (ratio * 2f64.powi(s)).round().clamp(1.0, max_mult as f64) as i64;
    (m, s as u8)
}

/// At most this many pixels are sampled to choose the normalisation.
const NORM_SAMPLES: usize = 1 << 21;

/// The standard deviation of the noise of the frames (integer-image units): a sigma-clipped
/// standard deviation of the differences of consecutive frames, over `sqrt(2)`. Clipping at 3
/// standard deviations until it settles keeps moving edges and bright features (whose Poisson
/// noise is larger) out, so the result is the noise of the bulk of the pixels. Never below 0.5
/// (the rounding of integer frames is noise of 0.29).
pub fn noise_sigma(frames: &[Vec<u32>]) -> f64 {
    let pairs = frames.len().saturating_sub(1);
    if pairs == 0 {
        return 1.0;
    }
    let px = frames[0].len();
    let step = (pairs * px).div_ceil(NORM_SAMPLES).max(1);
    let mut d: Vec<f64> = Vec::with_capacity(pairs * px / step + 1);
    for p in 0..pairs {
        let (a, b) = (&frames[p], &frames[p + 1]);
        let mut i = p % step;
        while i < px {
            d.push(b[i] as f64 - a[i] as f64);
            i += step;
        }
    }
    (clipped_sd(&d) / std::f64::consts::SQRT_2).max(0.5)
}

/// The standard deviation of `d` clipped at 3 standard deviations until it settles.
fn clipped_sd(d: &[f64]) -> f64 {
    let stats = |lim: f64| {
        let (mut n, mut s, mut ss) = (0f64, 0f64, 0f64);
        for &x in d {
            if x.abs() <= lim {
                n += 1.0;
                s += x;
                ss += x * x;
            }
        }
        if n < 2.0 {
            return 0.0;
        }
        (ss / n - (s / n).powi(2)).max(0.0).sqrt()
    };
    let mut sd = stats(f64::INFINITY);
    for _ in 0..50 {
        let next = stats(3.0 * sd.max(0.5));
        if (next - sd).abs() <= 1e-4 * sd {
            sd = next;
            break;
        }
        sd = next;
    }
    sd
}

/// Value bins of [`noise_profile`], and the fewest samples a bin needs to count.
const PROFILE_BINS: usize = 32;
const PROFILE_MIN_SAMPLES: usize = 200;

/// The noise of the frames as a function of the pixel value `v` in `lo..=hi`: the variance
/// `a + g v` (read noise plus a gain times the signal, as photon-counting detectors have),
/// fitted by weighted least squares to sigma-clipped variances of consecutive frames'
/// differences in value bins (each difference binned by the first frame's value). `g = 0`
/// when fewer than two bins have enough samples; `a >= 0.25`, `g >= 0`.
pub fn noise_profile(frames: &[Vec<u32>], lo: f64, hi: f64) -> (f64, f64) {
    let pairs = frames.len().saturating_sub(1);
    let px = frames.first().map_or(0, |f| f.len());
    let mut bins: Vec<(f64, Vec<f64>)> = vec![(0.0, Vec::new()); PROFILE_BINS];
    let width = ((hi - lo) / PROFILE_BINS as f64).max(1e-9);
    let step = (pairs * px).div_ceil(NORM_SAMPLES).max(1);
    for p in 0..pairs {
        let (a, b) = (&frames[p], &frames[p + 1]);
        let mut i = p % step;
        while i < px {
            let v = a[i] as f64;
            if (lo..=hi).contains(&v) {
                let k = (((v - lo) / width) as usize).min(PROFILE_BINS - 1);
                bins[k].0 += v;
                bins[k].1.push(b[i] as f64 - v);
            }
            i += step;
        }
    }
    // (mean value, variance of a pixel, weight)
    let pts: Vec<(f64, f64, f64)> = bins
        .iter()
        .filter(|(_, d)| d.len() >= PROFILE_MIN_SAMPLES)
        .map(|(sum, d)| (sum / d.len() as f64, clipped_sd(d).powi(2) / 2.0, d.len() as f64))
        .collect();
    let global = |pts: &[(f64, f64, f64)]| {
        let w: f64 = pts.iter().map(|p| p.2).sum();
        (pts.iter().map(|p| p.1 * p.2).sum::<f64>() / w.max(1.0)).max(0.25)
    };
    if pts.len() < 2 {
        return (if pts.is_empty() { 1.0 } else { global(&pts) }, 0.0);
    }
    let w: f64 = pts.iter().map(|p| p.2).sum();
    let mv = pts.iter().map(|p| p.0 * p.2).sum::<f64>() / w;
    let my = pts.iter().map(|p| p.1 * p.2).sum::<f64>() / w;
    let sxx: f64 = pts.iter().map(|p| p.2 * (p.0 - mv).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| p.2 * (p.0 - mv) * (p.1 - my)).sum();
    let g = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
    if g == 0.0 {
        return (global(&pts), 0.0);
    }
    ((my - g * mv).max(0.25), g)
}

/// The noise must grow at least this much over the value range for a model to get a noise
/// scale. Measured (1900 / 1000 steps, `bench --model`): the u16 detector fixture (the fit
/// says 105x: Poisson from 0.25 to 2847 photons) gains 32% -> 52% of the oracle gap lossless
/// with it; ctc-fluo-nuclei (15x by the fit, which its cells' motion inflates: the fit reads
/// frame-to-frame differences) lost (lossless -0.4% of classical's bits with it, -7.6% without)
/// and scratch-hoechst-u16 (3.5x) was not measured. Until the fit tells noise from motion, only
/// data whose noise clearly grows with the signal gets a scale.
const SCALE_MIN_RATIO: f64 = 30.0;

/// The normalisation for frames like `frames` coded under `degrade`: the intensity maps the
/// 0.01%..99.99% value range onto +-16384 (twice that before it saturates), the error units are
/// `units` per standard deviation of the observed noise (the frames' own, plus the
/// reconstruction noise), the correction is their inverse.
///
/// With `scaled`, integer frames whose own noise grows by at least [`SCALE_MIN_RATIO`] (30x) over
/// their value range ([`noise_profile`]; under any bound) get a noise scale: per intensity bucket, `units` per standard
/// deviation of the noise at that value (clamped to the range), plus the reconstruction noise.
pub fn choose_norm(frames: &[Vec<u32>], degrade: Degrade, units: f64, scaled: bool) -> Norm {
    let px = frames.first().map_or(0, |f| f.len());
    let total = frames.len() * px;
    let step = total.div_ceil(NORM_SAMPLES).max(1);
    let mut v: Vec<u32> = Vec::with_capacity(total / step + 1);
    let mut i = 0;
    while i < total {
        v.push(frames[i / px][i % px]);
        i += step;
    }
    v.sort_unstable();
    let q = |p: f64| v.get(((v.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0) as f64;
    let (lo, hi) = (q(1e-4), q(1.0 - 1e-4));
    let half = ((hi - lo) / 2.0).max(1.0);
    let offset = ((lo + hi) / 2.0).round().clamp(0.0, u32::MAX as f64) as i64;
    let (in_mult, in_shift) = fixed_point(net::UNITS_INTENSITY / half, file::MAX_NORM_MULT);
    let sigma = (noise_sigma(frames).powi(2) + degrade.variance()).sqrt();
    let (err_mult, err_shift) = fixed_point(units / sigma, file::MAX_NORM_MULT);
    let (out_mult, out_shift) = fixed_point(sigma / units, file::MAX_NORM_MULT);
    let norm = Norm { offset, in_mult, in_shift, err_mult, err_shift, out_mult, out_shift, scale: None };
    if !scaled || degrade.dtype.is_float() {
        return norm;
    }
    let (a, g) = noise_profile(frames, lo, hi);
    // Whether the data are photon-like is a property of their own noise, not of the bound: the
    // reconstruction noise (constant) flattens the growth under a coarse bound, but the bright
    // pixels' noise still dwarfs it (the u16 fixture under abs:4: 105x alone, 20x with it).
    let noise_sd = |v: f64| (a + g * v.clamp(lo, hi)).max(0.25).sqrt();
    if noise_sd(hi) < SCALE_MIN_RATIO * noise_sd(lo) {
        return norm;
    }
    let sd_at = |v: f64| (noise_sd(v).powi(2) + degrade.variance()).sqrt();
    // Bucket k holds intensities k * 64 - 32768 .. +63: its value at the middle.
    let in_ratio = in_mult as f64 / 2f64.powi(in_shift as i32);
    let sds: Vec<f64> = (0..SCALE_BUCKETS).map(|k| sd_at(offset as f64 + ((k * 64) as f64 - 32768.0 + 32.0) / in_ratio)).collect();
    let sd_min = sds.iter().copied().fold(f64::INFINITY, f64::min);
    let sd_max = sds.iter().copied().fold(0.0, f64::max);
    // One shift per map, from its largest ratio; every bucket's multiplier at that shift.
    let (_, err_shift) = fixed_point(units / sd_min, file::MAX_NORM_MULT);
    let (_, out_shift) = fixed_point(sd_max / units, file::MAX_NORM_MULT);
    let at = |r: f64, s: u8| (r * 2f64.powi(s as i32)).round().clamp(1.0, file::MAX_NORM_MULT as f64) as i64;
    // The stabilised intensity: the integral of 1 / sigma, (2 / g) sqrt(g v + a + reconstruction
    // noise), at each bucket boundary, mapped as the intensity maps the value range (+-16384).
    let f = |v: f64| 2.0 / g * (g * v.max(0.0) + a + degrade.variance()).sqrt();
    let (mid, half_s) = ((f(lo) + f(hi)) / 2.0, ((f(hi) - f(lo)) / 2.0).max(1e-9));
    let stab = (0..=SCALE_BUCKETS)
        .map(|m| {
            let v = offset as f64 + ((m * 64) as f64 - 32768.0) / in_ratio;
            ((f(v) - mid) * net::UNITS_INTENSITY / half_s).round().clamp(-32768.0, 32767.0) as i32
        })
        .collect();
    let scale = Scale {
        err_mult: sds.iter().map(|&sd| at(units / sd, err_shift)).collect(),
        out_mult: sds.iter().map(|&sd| at(sd / units, out_shift)).collect(),
        stab,
    };
    Norm { err_mult: at(units / sigma, err_shift), err_shift, out_mult: at(sigma / units, out_shift), out_shift, scale: Some(Box::new(scale)), ..norm }
}

/// SHA-256 of the frames' pixels, in order, each as the little-endian bytes of its type.
pub fn fingerprint(frames: &[Vec<u32>], dtype: DType) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    let mut buf = Vec::new();
    for f in frames {
        dtype.encode_pixels(f, false, &mut buf);
        h.update(&buf);
    }
    h.finalize().into()
}

/// The inputs of one training step, per time step `t` (`[T][B][1][h][w]`): the intensity of the
/// observed frame `t`, and for `t >= 1` the observed error `U(R[t] - R[t-1])`, the target
/// `x[t] - R[t-1]` (pixel units) and the range of a correction (`-R[t-1]` to `mask - R[t-1]`).
struct Batch {
    intensity: Tensor,
    a0: Tensor,
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    /// Closed loop only: the originals and the key frame's observation (pixel values).
    orig: Option<Tensor>,
    key: Option<Tensor>,
}

/// Draws training batches.
struct Sampler<'a> {
    frames: &'a [Vec<u32>],
    geom: Geometry,
    degrade: Degrade,
    norm: Norm,
    seq: usize,
    batch: usize,
    ch: usize,
    cw: usize,
    augment: bool,
    /// Also hand out the originals (closed-loop training).
    closed: bool,
    rng: Rng,
}

impl Sampler<'_> {
    fn next(&mut self, device: Device) -> Batch {
        let (t_n, b_n, ch, cw) = (self.seq, self.batch, self.ch, self.cw);
        let plane = ch * cw;
        let len = t_n * b_n * plane;
        let (mut inten, mut a0, mut target, mut lo, mut hi) = (vec![0f32; len], vec![0f32; len], vec![0f32; len], vec![0f32; len], vec![0f32; len]);
        let (mut origs, mut key) = (vec![0f32; if self.closed { len } else { 0 }], vec![0f32; if self.closed { b_n * plane } else { 0 }]);
        let (w, h) = (self.geom.width, self.geom.height);
        let mask = self.geom.mask() as f64;
        let mut orig = vec![0u32; plane];
        let mut obs = vec![0u32; plane];
        let mut prev = vec![0u32; plane];
        for b in 0..b_n {
            let t0 = (self.rng.next_u64() % (self.frames.len() - t_n + 1) as u64) as usize;
            let y0 = (self.rng.next_u64() % (h - ch + 1) as u64) as usize;
            let x0 = (self.rng.next_u64() % (w - cw + 1) as u64) as usize;
            let tf = if self.augment { self.rng.next_u64() % if ch == cw { 8 } else { 4 } } else { 0 };
            for t in 0..t_n {
                let f = &self.frames[t0 + t];
                for i in 0..ch {
                    for j in 0..cw {
                        // Flips (bits 0, 1) and a transpose (bit 2, square crops only).
                        let (mut a, mut c) = if tf & 4 != 0 { (j, i) } else { (i, j) };
                        if tf & 1 != 0 {
                            a = ch - 1 - a;
                        }
                        if tf & 2 != 0 {
                            c = cw - 1 - c;
                        }
                        let x = f[(y0 + a) * w + x0 + c];
                        orig[i * cw + j] = x;
                        obs[i * cw + j] = self.degrade.apply(x, &mut self.rng);
                    }
                }
                let at = (t * b_n + b) * plane;
                if self.closed {
                    for k in 0..plane {
                        origs[at + k] = orig[k] as f32;
                        if t == 0 {
                            key[b * plane + k] = obs[k] as f32;
                        }
                    }
                }
                for k in 0..plane {
                    inten[at + k] = self.norm.intensity(obs[k]) as f32;
                    if t > 0 {
                        let p = prev[k] as i64;
                        a0[at + k] = self.norm.error(obs[k] as i64 - p, prev[k]) as f32;
                        target[at + k] = (orig[k] as i64 - p) as f32;
                        lo[at + k] = -(p as f32);
                        hi[at + k] = (mask - p as f64) as f32;
                    }
                }
                std::mem::swap(&mut prev, &mut obs);
            }
        }
        let dims = [t_n as i64, b_n as i64, 1, ch as i64, cw as i64];
        let t = |v: Vec<f32>| Tensor::from_slice(&v).view(dims).to_device(device);
        let (orig, key) = if self.closed {
            (Some(t(origs)), Some(Tensor::from_slice(&key).view([b_n as i64, 1, ch as i64, cw as i64]).to_device(device)))
        } else {
            (None, None)
        };
        Batch { intensity: t(inten), a0: t(a0), target: t(target), lo: t(lo), hi: t(hi), orig, key }
    }
}

/// A trained float network with everything its export needs.
pub struct Trained {
    pub net: FloatNet,
    pub norm: Norm,
    pub dtype: DType,
    pub meta: Meta,
    /// How long the optimisation ran.
    pub elapsed: Duration,
}

/// Trains a model on `frames` (integer images of `geom`, in order) and exports it.
pub fn train(frames: &[Vec<u32>], geom: Geometry, opts: &TrainOptions, progress: &mut dyn FnMut(&Progress)) -> Result<IntModel, TrainError> {
    let mut m = train_float(frames, geom, opts, progress)?.export()?;
    add_causal(&mut m, frames, geom, opts)?;
    Ok(m)
}

/// Trains the causal stage of `opts` (if any) on `frames` and adds it to `m`.
pub fn add_causal(m: &mut IntModel, frames: &[Vec<u32>], geom: Geometry, opts: &TrainOptions) -> Result<Option<causal::CausalReport>, TrainError> {
    let Some(c) = &opts.causal else { return Ok(None) };
    check_input(frames, geom)?;
    let budget = c.budget.min(Duration::from_secs_f64((opts.minutes * 15.0).clamp(0.0, 1e9)));
    let (net, report) =
        causal::train_causal(frames, geom, Degrade::new(opts.bound, geom.dtype)?, &causal::CausalOptions { budget, seed: opts.seed, ..c.clone() })?;
    m.causal = Some(net);
    file::validate(m)?;
    Ok(Some(report))
}

/// Checks what the caller gave before any work.
fn check_input(frames: &[Vec<u32>], geom: Geometry) -> Result<(), TrainError> {
    if frames.len() < 2 {
        return Err(TrainError::TooFewFrames(frames.len()));
    }
    if geom.width < 8 || geom.height < 8 {
        return Err(TrainError::TooSmall(geom.width, geom.height));
    }
    if let Some(index) = frames.iter().position(|f| f.len() != geom.pixels()) {
        return Err(TrainError::Geometry { index, got: frames[index].len(), want: geom.pixels(), width: geom.width, height: geom.height });
    }
    Ok(())
}

/// The message of a caught panic (libtorch reports its errors by panicking in tch).
fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown error".into())
}

/// Trains the float network (the export is [`Trained::export`]).
pub fn train_float(frames: &[Vec<u32>], geom: Geometry, opts: &TrainOptions, progress: &mut dyn FnMut(&Progress)) -> Result<Trained, TrainError> {
    check_input(frames, geom)?;
    let arch = opts.arch.clone().unwrap_or_else(|| opts.size.arch());
    file::check_arch(&arch).map_err(|e| TrainError::Arch(e.to_string()))?;
    let degrade = Degrade::new(opts.bound, geom.dtype)?;
    let device = opts.device.device().map_err(|_| TrainError::NoCuda)?;
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    tch::set_num_threads(threads as i32);
    let hy = &opts.hyper;
    let norm = choose_norm(frames, degrade, hy.units, hy.noise_scale);
    tracing::info!(norm = ?Norm { scale: None, ..norm.clone() }, scaled = norm.scale.is_some(), sigma = noise_sigma(frames), e = degrade.e, ?device, threads, "training normalisation");
    let meta = Meta {
        size: if opts.arch.is_some() { "custom".into() } else { opts.size.to_string() },
        bound: if degrade.e > 0.0 { format!("abs:{}", degrade.e) } else { "lossless".into() },
        fingerprint: fingerprint(frames, geom.dtype),
        frames: frames.len() as u64,
        steps: 0,
        loss: 0.0,
    };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| optimise(frames, geom, opts, &arch, degrade, norm.clone(), device, progress)));
    let (net, steps, loss, elapsed) = match run {
        Ok(r) => r?,
        Err(p) => return Err(TrainError::Torch(panic_message(p))),
    };
    Ok(Trained { net, norm, dtype: geom.dtype, meta: Meta { steps, loss, ..meta }, elapsed })
}

/// The optimisation loop: returns the network, the steps taken, the final running loss and the
/// time spent.
#[allow(clippy::too_many_arguments)]
fn optimise(
    frames: &[Vec<u32>],
    geom: Geometry,
    opts: &TrainOptions,
    arch: &Arch,
    degrade: Degrade,
    norm: Norm,
    device: Device,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(FloatNet, u64, f64, Duration), TrainError> {
    let hy = &opts.hyper;
    tch::manual_seed(opts.seed as i64);
    let net = FloatNet::new(arch, &Luts::standard(), hy.units, hy.int32, device);
    let mut adam = tch::nn::OptimizerConfig::build(tch::nn::Adam::default(), &net.vs, hy.lr).map_err(|e| TrainError::Torch(e.to_string()))?;
    let seq = hy.seq.clamp(2, frames.len());
    let (ch, cw) = (hy.crop.clamp(8, geom.height), hy.crop.clamp(8, geom.width));
    // Closed loop needs exact pixel values in f32 (types up to 16 bits) and integer steps.
    let closed = hy.closed_loop && degrade.e > 0.0 && geom.dtype.bits() <= 16 && !geom.dtype.is_float();
    let mut sampler = Sampler {
        frames,
        geom,
        degrade,
        norm: norm.clone(),
        seq,
        batch: hy.batch.max(1),
        ch,
        cw,
        augment: hy.augment,
        closed,
        rng: Rng::new(opts.seed ^ 0x7472_6169_6e00),
    };
    let err_ratio = norm.err_mult as f64 / 2f64.powi(norm.err_shift as i32);
    let out_ratio = norm.out_mult as f64 / 2f64.powi(norm.out_shift as i32);
    let in_ratio = norm.in_mult as f64 / 2f64.powi(norm.in_shift as i32);
    // From the (linear) intensity of the frame a difference is taken from: the intensity the
    // network sees and the error and correction ratios of every pixel, as the integer backends
    // compute them (with a noise scale, per bucket; every stabilised value is an integer below
    // 2^24, exact in f32). Without a scale: the intensity itself and one ratio everywhere.
    let tables = norm.scale.as_ref().map(|sc| {
        let t = |v: Vec<f32>| Tensor::from_slice(&v).to_device(device);
        let ratio = |v: &[i64], s: u8| t(v.iter().map(|&m| (m as f64 / 2f64.powi(s as i32)) as f32).collect());
        (ratio(&sc.err_mult, norm.err_shift), ratio(&sc.out_mult, norm.out_shift), t(sc.stab.iter().map(|&v| v as f32).collect()))
    });
    let per_pixel = |inten: &Tensor| -> (Tensor, Tensor, Tensor) {
        match &tables {
            Some((et, ot, st)) => {
                let k = ((inten + 32768.0) / 64.0).floor();
                let j = inten + 32768.0 - &k * 64.0;
                let k = k.to_kind(Kind::Int64).view([-1]);
                let at = |t: &Tensor, k: &Tensor| t.index_select(0, k).view_as(inten);
                let (lo, hi) = (at(st, &k), at(st, &(&k + 1)));
                (&lo + ((j * (hi - &lo) + 32.0) / 64.0).floor(), at(et, &k), at(ot, &k))
            }
            None => (inten.shallow_clone(), Tensor::from(err_ratio as f32).to_device(device), Tensor::from(out_ratio as f32).to_device(device)),
        }
    };
    let (ed, qstep, mask) = (degrade.e, 2.0 * degrade.e + 1.0, geom.mask() as f64);
    let budget = Duration::from_secs_f64((opts.minutes * 60.0).max(0.0));
    let start = Instant::now();
    let (mut step, mut ema) = (0u64, f64::NAN);
    let frame_equiv = (sampler.batch * (seq - 1) * ch * cw) as f64 / geom.pixels() as f64;
    loop {
        let elapsed = start.elapsed();
        let done =
            (elapsed.as_secs_f64() / budget.as_secs_f64().max(1e-9)).max(opts.max_steps.map_or(0.0, |m| if m == 0 { 1.0 } else { step as f64 / m as f64 }));
        if done >= 1.0 {
            break;
        }
        // Short warm-up, then cosine decay to 5% of the peak over the budget.
        let warm = ((step + 1) as f64 / 20.0).min(1.0);
        adam.set_lr(hy.lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())));
        let batch = sampler.next(device);
        net.prepare();
        let mut st = net.zero_state(sampler.batch as i64, ch, cw);
        let mut total = Tensor::zeros([], (Kind::Float, device));
        let mut mae = Tensor::zeros([], (Kind::Float, device));
        // Closed loop: the last reconstruction and its intensity, as tensors.
        let mut b = batch.key.as_ref().map(|k| k.shallow_clone());
        let mut inten = batch.intensity.get(0);
        for t in 1..seq as i64 {
            let (net_in, err_ratio, out_ratio) = per_pixel(&inten);
            let ahat = net.predict(&mut st, &net_in);
            let c = net::round_ste(&(&ahat * &out_ratio));
            // P' - x = clamp(b + C(Ahat_0), 0, mask) - x, in error units.
            let e = match (&b, &batch.orig) {
                (Some(b), Some(orig)) => (b + c).clamp(0.0, mask) - orig.get(t),
                _ => c.clamp_tensor(Some(batch.lo.get(t)), Some(batch.hi.get(t))) - batch.target.get(t),
            } * &err_ratio;
            let abs = e.abs().mean(Kind::Float);
            let l = match hy.loss {
                Loss::Mae => abs.shallow_clone(),
                Loss::Mse => (&e * &e).mean(Kind::Float) / hy.units,
                Loss::Log => (e.abs() / hy.units).log1p().mean(Kind::Float) * hy.units,
            };
            total += l;
            mae += abs.detach();
            match (&mut b, &batch.orig) {
                (Some(bt), Some(orig)) => {
                    // What the codec reconstructs when it quantises x against P'.
                    let x = orig.get(t);
                    let p = (e.detach() / &err_ratio + &x).round();
                    let r = (&p + ((&x - &p + ed) / qstep).floor() * qstep).clamp(0.0, mask);
                    let a0 = ((&r - &*bt) * &err_ratio + 0.5).floor().clamp(-128.0, 127.0);
                    net.observe(&mut st, &a0);
                    inten = ((&r - norm.offset as f64) * in_ratio + 0.5).floor().clamp(-32768.0, 32767.0);
                    *bt = r;
                }
                _ => {
                    net.observe(&mut st, &batch.a0.get(t));
                    inten = batch.intensity.get(t);
                }
            }
        }
        let n = (seq - 1) as f64;
        let loss = total / n;
        adam.zero_grad();
        loss.backward();
        adam.clip_grad_norm(100.0);
        adam.step();
        step += 1;
        let m = mae.double_value(&[]) / n;
        if !m.is_finite() {
            return Err(TrainError::Diverged { step, loss: m });
        }
        ema = if ema.is_nan() { m } else { 0.98 * ema + 0.02 * m };
        let elapsed = start.elapsed();
        progress(&Progress {
            step,
            elapsed,
            budget,
            done,
            loss: ema,
            step_loss: m,
            frames_per_sec: frame_equiv * step as f64 / elapsed.as_secs_f64().max(1e-9),
        });
        if step % 50 == 0 {
            tracing::debug!(step, loss = ema, "training");
        }
    }
    Ok((net, step, ema, start.elapsed()))
}

/// A float tensor's values (any device) as f64.
fn values(t: &Tensor) -> Vec<f64> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Double).contiguous().view([-1]);
    Vec::<f64>::try_from(&t).unwrap_or_default()
}

/// The integer convolution of a fake-quantised one: its [`net::Plan`], which the forward pass
/// computed with.
fn export_conv(q: &QConv) -> Conv {
    let p = q.plan();
    let groups = q
        .groups
        .iter()
        .enumerate()
        .map(|(g, grp)| Group { cin: grp.cin as usize, weight: p.wint[g].clone(), mult: p.mult[g].iter().map(|&m| m as i32).collect() })
        .collect();
    Conv { cout: q.cout as usize, k: q.k as usize, groups, bias: p.bias, shift: p.shift, lo: q.lo as i32, hi: q.hi as i32 }
}

impl Trained {
    /// The integer model: rounded weights, multipliers, shifts, biases, the standard tables, the
    /// normalisation and what training recorded. Validated before it is returned.
    pub fn export(&self) -> Result<IntModel, TrainError> {
        let layers =
            self.net.layers.iter().map(|l| Layer { lstm: export_conv(&l.lstm), ahat: export_conv(&l.ahat), a: l.a.as_ref().map(export_conv) }).collect();
        let m = IntModel {
            arch: self.net.arch.clone(),
            dtype: self.dtype,
            norm: self.norm.clone(),
            luts: Luts::standard(),
            layers,
            meta: self.meta.clone(),
            causal: None,
        };
        file::validate(&m)?;
        Ok(m)
    }

    /// The float network as a [`Model`] (for measurements: it is not integer-exact).
    pub fn float_model(self) -> FloatModel {
        tch::no_grad(|| self.net.prepare());
        FloatModel { net: Mutex::new(self.net), norm: self.norm.clone(), dtype: self.dtype }
    }
}

/// The float network behind the codec's [`Model`] boundary: the same steps as the integer
/// backends with float convolutions. Its references match the exported model's on all but a few
/// pixels; it exists to measure that, never to code (it is not reproducible across machines).
pub struct FloatModel {
    /// tch tensors are not `Sync`; one window at a time is plenty for measurements.
    net: Mutex<FloatNet>,
    norm: Norm,
    dtype: DType,
}

/// A window's state in the [`FloatModel`].
pub struct FloatState {
    st: FState,
    geom: Geometry,
    b: Option<Vec<u32>>,
    predicted: bool,
}

impl ModelState for FloatState {
    fn clone_box(&self) -> Box<dyn ModelState> {
        Box::new(FloatState { st: self.st.copy(), geom: self.geom, b: self.b.clone(), predicted: self.predicted })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl FloatModel {
    fn err(why: impl Into<String>) -> PredictError {
        PredictError::Model { model: hash_hex(&[0; 32]) + " (float)", why: why.into() }
    }

    fn state(s: &mut dyn ModelState) -> Result<&mut FloatState, PredictError> {
        s.as_any_mut().downcast_mut::<FloatState>().ok_or_else(|| Self::err("the state belongs to another backend"))
    }

    fn plane(v: Vec<f32>, geom: Geometry, device: Device) -> Tensor {
        Tensor::from_slice(&v).view([1, 1, geom.height as i64, geom.width as i64]).to_device(device)
    }
}

impl Model for FloatModel {
    fn hash(&self) -> ModelHash {
        [0; 32]
    }

    fn start(&self, geom: Geometry) -> Result<Box<dyn ModelState>, PredictError> {
        if geom.dtype != self.dtype {
            return Err(Self::err(format!("the model is for {} pixels, the frames are {}", self.dtype, geom.dtype)));
        }
        let net = self.net.lock().map_err(|_| Self::err("poisoned"))?;
        Ok(Box::new(FloatState { st: net.zero_state(1, geom.height, geom.width), geom, b: None, predicted: false }))
    }

    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError> {
        let net = self.net.lock().map_err(|_| Self::err("poisoned"))?;
        for (s, out) in states.iter_mut().zip(outs.iter_mut()) {
            let s = Self::state(*s)?;
            let b = s.b.as_ref().ok_or_else(|| Self::err("predict before any frame was observed"))?;
            let inten = Self::plane(b.iter().map(|&v| self.norm.net_intensity(v) as f32).collect(), s.geom, net.device());
            let ahat = tch::no_grad(|| net.predict(&mut s.st, &inten));
            let u = values(&ahat);
            let mask = s.geom.mask();
            for ((o, &b), &u) in out.iter_mut().zip(b).zip(&u) {
                *o = self.norm.corrected(b, u as i32, mask);
            }
            s.predicted = true;
        }
        Ok(())
    }

    fn observe_batch(&self, states: &mut [&mut dyn ModelState], recons: &[&[u32]]) -> Result<(), PredictError> {
        let net = self.net.lock().map_err(|_| Self::err("poisoned"))?;
        for (s, r) in states.iter_mut().zip(recons) {
            let s = Self::state(*s)?;
            if let (Some(b), true) = (&s.b, s.predicted) {
                let a0 = Self::plane(r.iter().zip(b).map(|(&r, &b)| self.norm.error(r as i64 - b as i64, b) as f32).collect(), s.geom, net.device());
                tch::no_grad(|| net.observe(&mut s.st, &a0));
            } else {
                // A key frame: no error to take in (as the integer backends do).
                s.st.e.iter_mut().for_each(|e| *e = e.zeros_like());
            }
            s.b = Some(r.to_vec());
            s.predicted = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
