//! Training of the causal stage ([`crate::codec::predict::causal`]): a float MLP in tch on
//! pixels of the training frames, then its export to integers.
//!
//! The frames are degraded as a decoder would reconstruct them under the bound (originals plus
//! uniform noise within it, [`Degrade`]); the stage's inputs are computed from them by the
//! codec's own [`Past::inputs`] (so training sees exactly the integers the codec will feed it)
//! and its target is the original minus the previous reconstruction. In the lab this stand-in for
//! the closed loop kept its gain when coded row by row from the network's own reconstructions
//! (`docs/results/issue11-causal-lab.txt`). Least squares, Adam, a fixed number of steps (or a
//! time budget, whichever ends first), deterministic seed.
//!
//! Export: inputs standardised in training are folded into the first layer; each hidden unit's
//! activation gets a scale of its own so that its 99.99th percentile on the calibration sample
//! is 7/8 of [`causal::MAX_ACT`] (rarer values saturate); every unit's weights, bias and shift
//! are then the largest power-of-two scaling that keeps them within the stage's ranges.

use super::{panic_message, Degrade, Loss, TrainError};
use crate::codec::predict::causal::{self, CausalNet, CausalStage, Past, H1, H2, INPUTS};
use crate::codec::predict::{Geometry, Prediction};
use crate::codec::quantizer::{self, Bound};
use crate::fixtures::Rng;
use std::time::{Duration, Instant};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// How the stage is trained.
#[derive(Clone, Debug)]
pub struct CausalOptions {
    /// Optimisation steps (minibatches).
    pub steps: u64,
    /// Stop after this long even if steps are left.
    pub budget: Duration,
    /// Pixels per step.
    pub batch: usize,
    /// Training pixels drawn from the frames (at most).
    pub samples: usize,
    pub lr: f64,
    pub seed: u64,
    /// Whether the running means are inputs; `None`: decided on held-out frames (below).
    pub means: Option<bool>,
    /// What training minimises of the residual (`Log`: `log(1 + |r| / u)`, `u` half the
    /// quantiser's step, at least one grey level).
    pub loss: Loss,
    /// `Log`'s unit `u`, as a multiple of half the quantiser's step.
    pub log_unit: f64,
    /// Under a bound, a second round of training on the training frames as the first round's
    /// stage reconstructs them when it codes them (closed loop). Off: on ctc it made the closed
    /// loop worse (abs:2 1.089 -> 1.112, abs:4 0.638 -> 0.763 bits per pixel,
    /// `examples/causal_lab.rs` with `CLOSED=1`): a stage that learns to trust neighbours
    /// reconstructed as its own predictions carries its errors along.
    pub closed_loop: bool,
}

impl Default for CausalOptions {
    fn default() -> CausalOptions {
        // The lab's lean MLP: 12,000 steps of 4096 pixels at 1e-3 (25 s on 2 cores). Half the
        // steps lost 1% of its entropy gain there.
        CausalOptions {
            steps: 6000,
            budget: Duration::from_secs(120),
            batch: 4096,
            samples: 1 << 20,
            lr: 1e-3,
            seed: 1,
            means: None,
            loss: Loss::Log,
            log_unit: 1.0,
            closed_loop: false,
        }
    }
}

/// What training the stage measured (logged, and returned for benches).
#[derive(Clone, Debug)]
pub struct CausalReport {
    pub steps: u64,
    pub elapsed: Duration,
    /// Root mean square error of the float and the exported integer stage on the calibration
    /// pixels, and of the previous frame alone, in integer-image units.
    pub rmse_float: f64,
    pub rmse_int: f64,
    pub rmse_previous: f64,
    /// Whether the means are inputs, and the held-out entropies (bits per pixel of the quantised
    /// residual) with and without them when training chose.
    pub means: bool,
    pub held_out: Option<(f64, f64)>,
}

/// The standard deviation below which a training input counts as constant (it is then
/// standardised to 0 and gets no weight).
const CONSTANT: f64 = 1e-3;

/// The smallest right shift that brings `v` to at most 1024.
fn shift_for(v: f64) -> u8 {
    let mut s = 0u8;
    while v / f64::from(1u32 << s.min(31)) > 1024.0 && s < 31 {
        s += 1;
    }
    s
}

/// Training pixels: inputs (integers as the codec computes them) and targets.
struct Samples {
    x: Vec<f32>,
    y: Vec<f32>,
    n: usize,
}

/// Draw up to `opts.samples` pixels of frames 1.. of the (degraded) sequence.
fn samples(frames: &[Vec<u32>], degraded: &[Vec<u32>], geom: Geometry, net: &CausalNet, opts: &CausalOptions, rng: &mut Rng) -> Samples {
    let per = (opts.samples / (frames.len() - 1)).clamp(1, geom.pixels());
    let mut s = Samples { x: Vec::with_capacity(per * (frames.len() - 1) * INPUTS), y: Vec::new(), n: 0 };
    let mut past = Past::default();
    past.observe(&degraded[0], geom.width);
    let mut f = [0i16; INPUTS];
    for t in 1..frames.len() {
        for _ in 0..per {
            let i = (rng.next_u64() % geom.pixels() as u64) as usize;
            past.inputs(net, &degraded[t], i, geom.width, &mut f);
            s.x.extend(f.iter().map(|&v| v as f32));
            s.y.push((frames[t][i] as f64 - past.prev[i] as f64) as f32);
            s.n += 1;
        }
        past.observe(&degraded[t], geom.width);
    }
    s
}

/// Trains the causal stage on `frames` (integer images of `geom`, in order; at least two).
///
/// Whether the running means are inputs is decided, unless `opts` says, on the last fifth of
/// the frames (at least two, with at least four to train on): the stage is trained with and
/// without them on the others, for half the steps and half the budget each, and the one whose
/// quantised residual has the lower entropy on the held-out frames is trained again on all of
/// them. (On ctc at abs:2 the means cost 10%: the scene's history in the first half does not
/// predict the second; on static noisy scenes they are the denoiser.)
pub fn train_causal(frames: &[Vec<u32>], geom: Geometry, degrade: Degrade, opts: &CausalOptions) -> Result<(CausalNet, CausalReport), TrainError> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let held = (frames.len() / 5).max(2);
        let means = match opts.means {
            Some(m) => return train_inner(frames, geom, degrade, opts, m).map(|(n, r)| (n, CausalReport { held_out: None, ..r })),
            None if frames.len() < held + 4 => return train_inner(frames, geom, degrade, opts, true),
            None => {
                let half = CausalOptions { steps: opts.steps / 2, budget: opts.budget / 4, ..opts.clone() };
                let (fit, test) = frames.split_at(frames.len() - held);
                let (with, _) = train_inner(fit, geom, degrade, &half, true)?;
                let (without, _) = train_inner(fit, geom, degrade, &half, false)?;
                let key = &fit[fit.len() - 1];
                let (e_with, e_without) =
                    (held_out_entropy(&with, key, test, geom, degrade, opts.seed), held_out_entropy(&without, key, test, geom, degrade, opts.seed));
                tracing::info!(e_with, e_without, "causal stage: held-out entropy with and without the running means");
                (e_with < e_without, (e_with, e_without))
            }
        };
        let budget = opts.budget / 2;
        train_inner(frames, geom, degrade, &CausalOptions { budget, ..opts.clone() }, means.0).map(|(n, r)| (n, CausalReport { held_out: Some(means.1), ..r }))
    }));
    match run {
        Ok(r) => r,
        Err(p) => Err(TrainError::Torch(panic_message(p))),
    }
}

/// Zeroth-order entropy (bits per pixel) of the quantised residual of `net` on `test`, predicted
/// from degraded frames (the means starting at `key`).
fn held_out_entropy(net: &CausalNet, key: &[u32], test: &[Vec<u32>], geom: Geometry, degrade: Degrade, seed: u64) -> f64 {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let step = if degrade.dtype.is_float() { 1 } else { 2 * degrade.e as i64 + 1 };
    let stage = CausalStage::new(net.clone());
    let mut past = Past::default();
    past.observe(&key.iter().map(|&v| degrade.apply(v, &mut rng)).collect::<Vec<u32>>(), geom.width);
    let mut counts = std::collections::HashMap::<i64, u64>::new();
    let mut n = 0u64;
    for x in test {
        let d: Vec<u32> = x.iter().map(|&v| degrade.apply(v, &mut rng)).collect();
        for (i, &v) in x.iter().enumerate() {
            let p = stage.predict(&past, &d, i, geom.width, geom.mask()) as i64;
            *counts.entry((v as i64 - p + step / 2).div_euclid(step)).or_default() += 1;
            n += 1;
        }
        past.observe(&d, geom.width);
    }
    counts.values().map(|&c| -(c as f64 / n as f64) * (c as f64 / n as f64).log2()).sum()
}

fn train_inner(frames: &[Vec<u32>], geom: Geometry, degrade: Degrade, opts: &CausalOptions, means: bool) -> Result<(CausalNet, CausalReport), TrainError> {
    let t0 = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let degraded: Vec<Vec<u32>> = frames.iter().map(|f| f.iter().map(|&v| degrade.apply(v, &mut rng)).collect()).collect();
    // Input shifts from the spread of frame-to-frame differences (99.9th percentile).
    let mut diffs: Vec<f64> = (0..20_000)
        .map(|_| {
            let t = 1 + (rng.next_u64() % (frames.len() as u64 - 1)) as usize;
            let i = (rng.next_u64() % geom.pixels() as u64) as usize;
            (degraded[t][i] as f64 - degraded[t - 1][i] as f64).abs()
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let spread = diffs[diffs.len() * 999 / 1000].max(1.0);
    let shifts = CausalNet { means, shift_px: shift_for(spread), shift_mean: shift_for(spread * f64::from(1u32 << causal::MEAN_FRAC)), ..causal::random(0) };
    let s = samples(frames, &degraded, geom, &shifts, opts, &mut rng);
    drop(degraded);
    // Standardise inputs and target (folded into the export).
    let (mu, sd): (Vec<f64>, Vec<f64>) = (0..INPUTS)
        .map(|j| {
            let (mut a, mut b) = (0.0, 0.0);
            for r in 0..s.n {
                let v = s.x[r * INPUTS + j] as f64;
                a += v;
                b += v * v;
            }
            let m = a / s.n as f64;
            (m, (b / s.n as f64 - m * m).max(0.0).sqrt().max(CONSTANT))
        })
        .unzip();
    let ymu = s.y.iter().map(|&v| v as f64).sum::<f64>() / s.n as f64;
    let ysd = (s.y.iter().map(|&v| (v as f64 - ymu).powi(2)).sum::<f64>() / s.n as f64).sqrt().max(1e-3);
    let std = Standard { mu, sd, ymu, ysd };
    tch::manual_seed(opts.seed as i64);
    let dev = Device::Cpu;
    let vs = nn::VarStore::new(dev);
    let root = vs.root();
    let l1 = nn::linear(&root / "l1", INPUTS as i64, H1 as i64, Default::default());
    let l2 = nn::linear(&root / "l2", H1 as i64, H2 as i64, Default::default());
    let l3 = nn::linear(&root / "l3", H2 as i64, 1, Default::default());
    let mut opt = nn::Adam::default().build(&vs, opts.lr).map_err(|e| TrainError::Torch(e.to_string()))?;
    let forward = |x: &Tensor| l3.forward(&l2.forward(&l1.forward(x).relu()).relu()).squeeze_dim(1);
    // (`Log`'s unit in standardised target units.)
    let unit = (if degrade.dtype.is_float() { 1.0 } else { (degrade.e + 0.5).max(1.0) }) * opts.log_unit / std.ysd;
    let mu_t = Tensor::from_slice(&std.mu.iter().map(|&v| v as f32).collect::<Vec<f32>>());
    let sd_t = Tensor::from_slice(&std.sd.iter().map(|&v| v as f32).collect::<Vec<f32>>());
    // (A second round on closed-loop reconstructions, when asked for: see `closed_loop`.)
    let rounds = if degrade.e > 0.0 && opts.closed_loop { 2 } else { 1 };
    let mut s = s;
    let mut steps = 0;
    let mut last = None;
    for round in 0..rounds {
        if round > 0 {
            let (net, _) = last.take().expect("the first round's stage");
            let recon = closed_loop(frames, geom, degrade, &net);
            s = samples(frames, &recon, geom, &net, opts, &mut rng);
        }
        let xs = (Tensor::from_slice(&s.x).view([s.n as i64, INPUTS as i64]) - &mu_t) / &sd_t;
        let ys = (Tensor::from_slice(&s.y) - std.ymu) / std.ysd;
        let until = opts.steps * (round + 1) / rounds;
        while steps < until && t0.elapsed() < opts.budget * (round as u32 + 1) / rounds as u32 {
            let idx = Tensor::randint(s.n as i64, [opts.batch as i64], (Kind::Int64, dev));
            let r = forward(&xs.index_select(0, &idx)) - ys.index_select(0, &idx);
            let loss = match opts.loss {
                Loss::Mse => r.square().mean(Kind::Float),
                Loss::Mae => r.abs().mean(Kind::Float),
                Loss::Log => (r.abs() / unit).log1p().mean(Kind::Float),
            };
            opt.backward_step(&loss);
            steps += 1;
        }
        let w = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| TrainError::Torch(e.to_string()));
        let float = Float {
            w1: w(&l1.ws)?,
            b1: w(l1.bs.as_ref().expect("bias"))?,
            w2: w(&l2.ws)?,
            b2: w(l2.bs.as_ref().expect("bias"))?,
            w3: w(&l3.ws)?,
            b3: w(l3.bs.as_ref().expect("bias"))?,
        };
        last = Some((export(&float, &std, &s, &shifts)?, float));
    }
    let (net, float) = last.expect("at least one round");
    let (rmse_float, rmse_int, rmse_previous) = errors(&net, &float, &std, &s);
    let report = CausalReport { steps, elapsed: t0.elapsed(), rmse_float, rmse_int, rmse_previous, means, held_out: None };
    tracing::info!(?report, shift_px = net.shift_px, shift_mean = net.shift_mean, samples = s.n, rounds, "causal stage trained");
    Ok((net, report))
}

/// The standardisation of inputs and target in training.
struct Standard {
    mu: Vec<f64>,
    sd: Vec<f64>,
    ymu: f64,
    ysd: f64,
}

/// The float network's weights (tch's layout: `[out][in]`).
struct Float {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    w3: Vec<f32>,
    b3: Vec<f32>,
}

impl Float {
    /// Hidden activations and the prediction (a correction, in integer-image units) of sample
    /// `r` of `s`.
    fn eval(&self, std: &Standard, s: &Samples, r: usize) -> (Vec<f64>, Vec<f64>, f64) {
        let x: Vec<f64> = (0..INPUTS).map(|j| (s.x[r * INPUTS + j] as f64 - std.mu[j]) / std.sd[j]).collect();
        let h1: Vec<f64> = (0..H1).map(|o| (self.b1[o] as f64 + (0..INPUTS).map(|j| self.w1[o * INPUTS + j] as f64 * x[j]).sum::<f64>()).max(0.0)).collect();
        let h2: Vec<f64> = (0..H2).map(|o| (self.b2[o] as f64 + (0..H1).map(|j| self.w2[o * H1 + j] as f64 * h1[j]).sum::<f64>()).max(0.0)).collect();
        let y = self.b3[0] as f64 + (0..H2).map(|j| self.w3[j] as f64 * h2[j]).sum::<f64>();
        (h1, h2, y * std.ysd + std.ymu)
    }
}

/// The training frames as the codec reconstructs them under the bound with `net` (key frame
/// intra, every later frame predicted by the stage).
fn closed_loop(frames: &[Vec<u32>], geom: Geometry, degrade: Degrade, net: &CausalNet) -> Vec<Vec<u32>> {
    let stage = CausalStage::new(net.clone());
    let net = &stage;
    let mut past = Past::default();
    let mut out = Vec::with_capacity(frames.len());
    for (t, x) in frames.iter().enumerate() {
        let fb = Bound::Abs(degrade.e).for_frame(geom.dtype, x);
        let pred = if t == 0 { Prediction::Intra { width: geom.width } } else { Prediction::Causal { net, past: &past, width: geom.width } };
        let c = quantizer::encode(geom.dtype, fb, x, pred);
        past.observe(&c.recon, geom.width);
        out.push(c.recon);
    }
    out
}

/// The integer stage of `float`: see the module's description.
fn export(float: &Float, std: &Standard, s: &Samples, shifts: &CausalNet) -> Result<CausalNet, TrainError> {
    let Float { w1, b1, w2, b2, w3, b3 } = float;
    let (mu, sd, ymu, ysd) = (&std.mu, &std.sd, std.ymu, std.ysd);
    // Calibration: the float network on up to 65,536 of the training pixels, in plain Rust.
    let cal = s.n.min(1 << 16);
    let float_h = |r: usize| float.eval(std, s, r);
    let (mut acts1, mut acts2): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        ((0..H1).map(|_| Vec::with_capacity(cal)).collect(), (0..H2).map(|_| Vec::with_capacity(cal)).collect());
    for r in 0..cal {
        let (h1, h2, _) = float_h(r);
        h1.iter().zip(acts1.iter_mut()).for_each(|(&v, a)| a.push(v));
        h2.iter().zip(acts2.iter_mut()).for_each(|(&v, a)| a.push(v));
    }
    let target = causal::MAX_ACT as f64 * 7.0 / 8.0;
    let scales = |acts: &mut Vec<Vec<f64>>| -> Vec<f64> {
        acts.iter_mut()
            .map(|a| {
                a.sort_by(f64::total_cmp);
                target / a[(a.len() - 1) * 9999 / 10000].max(1e-6)
            })
            .collect()
    };
    let (a1, a2) = (scales(&mut acts1), scales(&mut acts2));
    // One unit: real weights (on the integer inputs) and bias, to integers with the largest
    // shift that keeps them in range.
    let unit = |ws: &[f64], b: f64| -> (Vec<i16>, i32, u8) {
        let big = ws.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let mut sh = causal::MAX_SHIFT;
        while sh > 0 && (big * f64::from(1u32 << sh) > causal::MAX_W as f64 || b.abs() * f64::from(1u32 << sh) > causal::MAX_BIAS as f64) {
            sh -= 1;
        }
        let k = f64::from(1u32 << sh);
        let q = ws.iter().map(|w| (w * k).round().clamp(-(causal::MAX_W as f64), causal::MAX_W as f64) as i16).collect();
        (q, (b * k).round().clamp(-(causal::MAX_BIAS as f64), causal::MAX_BIAS as f64) as i32, sh)
    };
    let mut net = CausalNet {
        w1: Vec::new(),
        b1: Vec::new(),
        s1: Vec::new(),
        w2: Vec::new(),
        b2: Vec::new(),
        s2: Vec::new(),
        w3: Vec::new(),
        b3: 0,
        s3: 0,
        ..shifts.clone()
    };
    // (tch's weights are `[out][in]`, as the stage's.)
    for o in 0..H1 {
        // (An input constant on the training pixels, such as the previous frame's centre, always
        // 0, or the means when they are off, was standardised to 0: its weight is 0, rather than
        // a huge one that would leave the unit's other weights no precision.)
        let live = |j: usize| sd[j] > CONSTANT * 1.5;
        let ws: Vec<f64> = (0..INPUTS).map(|j| if live(j) { w1[o * INPUTS + j] as f64 / sd[j] * a1[o] } else { 0.0 }).collect();
        let b = (b1[o] as f64 - (0..INPUTS).filter(|&j| live(j)).map(|j| w1[o * INPUTS + j] as f64 * mu[j] / sd[j]).sum::<f64>()) * a1[o];
        let (q, bq, sh) = unit(&ws, b);
        net.w1.extend(q);
        net.b1.push(bq);
        net.s1.push(sh);
    }
    for o in 0..H2 {
        let ws: Vec<f64> = (0..H1).map(|j| w2[o * H1 + j] as f64 * a2[o] / a1[j]).collect();
        let (q, bq, sh) = unit(&ws, b2[o] as f64 * a2[o]);
        net.w2.extend(q);
        net.b2.push(bq);
        net.s2.push(sh);
    }
    let ws: Vec<f64> = (0..H2).map(|j| w3[j] as f64 * ysd / a2[j]).collect();
    let (q, bq, sh) = unit(&ws, b3[0] as f64 * ysd + ymu);
    (net.w3, net.b3, net.s3) = (q, bq, sh);
    net.validate().map_err(TrainError::Arch)?;
    Ok(net)
}

/// Root mean square errors of the float network, of its integer stage `net` and of the previous
/// frame alone on the first 65,536 samples (integer-image units).
fn errors(net: &CausalNet, float: &Float, std: &Standard, s: &Samples) -> (f64, f64, f64) {
    let cal = s.n.min(1 << 16);
    let (mut ef, mut ei, mut ep) = (0.0, 0.0, 0.0);
    let mut f = [0i16; INPUTS];
    for r in 0..cal {
        f.iter_mut().enumerate().for_each(|(j, v)| *v = s.x[r * INPUTS + j] as i16);
        let y = s.y[r] as f64;
        ef += (y - float.eval(std, s, r).2).powi(2);
        ei += (y - net.eval(&f) as f64).powi(2);
        ep += y * y;
    }
    let rm = |e: f64| (e / cal as f64).sqrt();
    (rm(ef), rm(ei), rm(ep))
}
