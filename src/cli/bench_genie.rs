//! `tezipfs bench --model --genie`: an upper bound, measured, on what any causal predictor can
//! do for the codec on a set without ground truth.
//!
//! The oracle of the fixtures (the noise-free frames as the reference) is the limit of every
//! predictor, but real sets have no noise-free frames. The strongest honest stand-in is a
//! *genie*: a predictor given strictly more than any causal predictor has, and far more compute
//! than a model gets. For frame `t` it sees
//!
//! * the ORIGINAL frame `t` within radius `R` of the pixel, EXCEPT the pixel itself (so the
//!   pixel's own noise never reaches its prediction), and
//! * the ORIGINAL frames `t-2, t-1, t+1, t+2` within radius `R`, centre included (frames that do
//!   not exist are replaced by the nearest that does, never by `t`).
//!
//! A causal predictor has only half of frame `t`'s neighbourhood (the pixels already coded),
//! none of the future frames, and reconstructions in place of originals under a bound; a
//! genie that codes no smaller than it is no limit, so the bench reports the best of the genie
//! rows and classical `auto` as the measured limit.
//!
//! The learned genie is a float per-pixel MLP (features -> width -> width -> 1, ReLU): the
//! features of a pixel are gathered here in Rust from the shifted frames ([`Features`]), and the
//! network mixes only the channels of one pixel (it is the same as 1x1 convolutions), so
//! nothing can bring `x_t[i]` back into the prediction of pixel `i`: the gathering never reads
//! it, and no layer mixes pixels. It predicts `x_t` as the mean of the pixel's 8 neighbours in
//! frame `t` plus a learned residual, in units of the training frames' residual spread; trained
//! with Adam (MSE or MAE) on random pixels of the set's first half, then its rounded
//! predictions of the second half are the reference of a [`Playback`] model, coded as the
//! oracle is (`prednet`: the model-able predictors only, the best per window).
//!
//! The simple genie is parameter-free: the mean of the pixel's 8 neighbours in frame `t`,
//! averaged with the 3x3 means of frames `t-1` and `t+1` (what a first lab measured), so the
//! learned one can be seen to beat it.
//!
//! Two more learned genies see less ([`Sight`]) and are fitted on every frame of the set, the
//! coded half included (they may learn the very frames they predict: generous, as a limit must
//! be). The *causal* genie sees what a raster-order coder has when it codes the pixel: frame `t`
//! above the pixel and left of it on its row, frames `t-4..t-1` and the means of the last 8 and
//! 16 frames (originals, where a decoder has reconstructions): the limit of a causal predictor of
//! this kind. The *past-only* genie sees no pixel of frame `t`: the limit of a predictor of a
//! whole frame from the frames before it, which is what the model is (the codec's stages then
//! add frame `t`'s coded pixels, as they do to every genie's reference). Its base is frame
//! `t-1`, as the causal genie's. A fifth, `causal-first-half`, is the causal genie fitted on the
//! first half only, as the model is (`--genie-kinds` picks which are trained).
//!
//! A genie's reference is read by the codec only where it did not see the pixel being coded
//! ([`SeesFrame`]): the causal genie's prediction right of a pixel, or below it, was made from
//! that pixel's original value, and `linear`'s taps read the reference there. Until session 16
//! they did, and the causal genie's rows (10.78 at abs:2, 23.63 at abs:4 on ctc) carried that
//! leak: `docs/results/issue11-genie-leak.txt`.

use super::bench::{codec_row_with, Dataset, Row};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use sha2::Digest;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};
use tezipfs::codec::predict::{ModelHandle, Playback, SeesFrame};
use tezipfs::codec::{Bound, DType, Options, PredictorChoice};
use tezipfs::model::file::Rng;

#[derive(clap::Args, Clone, Debug)]
pub struct GenieArgs {
    /// Also measure the GENIE rows: the codec given, as its reference, the prediction of a
    /// non-causal network that sees the original frame t around the pixel (not the pixel) and
    /// the original frames t-2..t+2; a measured limit for sets without noise-free frames.
    #[arg(long)]
    pub genie: bool,
    /// Training budget of the learned genie, in minutes of wall clock on every core (one per
    /// set: it sees originals, so every bound uses the same one).
    #[arg(long, default_value_t = 10.0)]
    pub genie_minutes: f64,
    /// Train the genie for exactly this many steps instead (ignores --genie-minutes): the
    /// same genie on any machine, however loaded.
    #[arg(long)]
    pub genie_steps: Option<u64>,
    /// Radius of the neighbourhood the genie sees in each frame.
    #[arg(long, default_value_t = 3)]
    pub genie_radius: usize,
    /// Width of the genie's two hidden layers.
    #[arg(long, default_value_t = 64)]
    pub genie_width: i64,
    /// The genie's loss: `mse`, `mae`, or `nll` (Laplace negative log-likelihood with a
    /// learned scale: the bulk weighed as a context coder weighs it).
    #[arg(long, default_value = "mse")]
    pub genie_loss: GenieLoss,
    /// Which learned genies to train (comma-separated): `non-causal`, `causal` (fitted on every
    /// frame, the coded ones included), `causal-first-half` (the same kind fitted on the first
    /// half only, as the model is), `past`; `all` for every one. Each costs --genie-minutes.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub genie_kinds: Vec<GenieKind>,
}

/// A learned genie (`--genie-kinds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenieKind {
    All,
    NonCausal,
    Causal,
    CausalFirstHalf,
    Past,
}

impl FromStr for GenieKind {
    type Err = String;
    fn from_str(s: &str) -> Result<GenieKind, String> {
        match s {
            "all" => Ok(GenieKind::All),
            "non-causal" => Ok(GenieKind::NonCausal),
            "causal" => Ok(GenieKind::Causal),
            "causal-first-half" => Ok(GenieKind::CausalFirstHalf),
            "past" => Ok(GenieKind::Past),
            _ => Err(format!("unknown genie kind {s:?} (expected all, non-causal, causal, causal-first-half or past)")),
        }
    }
}

impl GenieArgs {
    fn wants(&self, kind: GenieKind) -> bool {
        self.genie_kinds.iter().any(|&k| k == kind || k == GenieKind::All)
    }
}

/// What the genie minimises of its error (each estimates a centre of the pixel's distribution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenieLoss {
    Mse,
    Mae,
    /// The negative log-likelihood of a Laplace distribution whose scale the network predicts
    /// too (a second output, used only in training): MAE weighted by the inverse of the local
    /// spread. The context coders pay about that: a residual costs its size relative to the
    /// spread of its neighbourhood, so an error in a quiet background costs more bits than the
    /// same error on a moving edge, where MSE and MAE spend the network's capacity.
    Nll,
}

impl FromStr for GenieLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<GenieLoss, String> {
        match s {
            "mse" => Ok(GenieLoss::Mse),
            "mae" => Ok(GenieLoss::Mae),
            "nll" => Ok(GenieLoss::Nll),
            _ => Err(format!("unknown genie loss {s:?} (expected mse, mae or nll)")),
        }
    }
}

impl fmt::Display for GenieLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GenieLoss::Mse => "mse",
            GenieLoss::Mae => "mae",
            GenieLoss::Nll => "nll",
        })
    }
}

/// The frames `t-2, t-1, t+1, t+2` of a sequence of `n` frames as the genie sees them: one that
/// does not exist is replaced by the nearest that does on its side (`t-1` for `t-2`), else by
/// its mirror on the other side (`t+1` for `t-1` at `t = 0`), never by `t` itself. `None` for a
/// single frame (no neighbours at all).
pub(super) fn temporal_neighbours(t: usize, n: usize) -> Option<[usize; 4]> {
    let pick = |d: i64| -> Option<usize> {
        let side = d.signum();
        [t as i64 + d, t as i64 + side, t as i64 - d, t as i64 - side].into_iter().find(|&s| s >= 0 && (s as usize) < n && s as usize != t).map(|s| s as usize)
    };
    Some([pick(-2)?, pick(-1)?, pick(1)?, pick(2)?])
}

/// Mean of the in-frame pixels of `f` at the given offsets from `(y, x)`.
fn mean_at(f: &[f32], w: usize, h: usize, y: usize, x: usize, offsets: &[(i64, i64)]) -> f32 {
    let (mut sum, mut n) = (0f32, 0u32);
    for &(dy, dx) in offsets {
        let (yy, xx) = (y as i64 + dy, x as i64 + dx);
        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
            sum += f[yy as usize * w + xx as usize];
            n += 1;
        }
    }
    sum / n.max(1) as f32
}

/// The 8 neighbours of a pixel (the pixel excluded).
const RING: [(i64, i64); 8] = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)];
/// The 3x3 block around a pixel.
const BLOCK: [(i64, i64); 9] = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)];

/// The base of a prediction: the mean of the pixel's in-frame 8 neighbours in frame `t` (never
/// the pixel).
fn base(cur: &[f32], w: usize, h: usize, p: usize) -> f32 {
    mean_at(cur, w, h, p / w, p % w, &RING)
}

/// The parameter-free genie: the 8-neighbour mean of frame `t` averaged with the 3x3 means of
/// frames `t-1` and `t+1` (as [`temporal_neighbours`] picks them).
pub(super) fn simple_genie(seq: &[Vec<f32>], w: usize, h: usize, t: usize) -> anyhow::Result<Vec<f32>> {
    let nb = temporal_neighbours(t, seq.len()).context("the genie needs at least 2 frames")?;
    let (cur, prev, next) = (&seq[t], &seq[nb[1]], &seq[nb[2]]);
    Ok((0..w * h).map(|p| (base(cur, w, h, p) + mean_at(prev, w, h, p / w, p % w, &BLOCK) + mean_at(next, w, h, p / w, p % w, &BLOCK)) / 3.0).collect())
}

/// What a learned genie sees of frame `t` and of the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sight {
    /// Frame `t` all round the pixel (not the pixel), frames `t-2, t-1, t+1, t+2`.
    NonCausal,
    /// Frame `t` where a raster-order coder has coded it (above the pixel, and left of it on its
    /// row), frames `t-4..t-1`, the means of the last 8 and 16 frames.
    Causal,
    /// As `Causal` without frame `t` at all: a predictor of a whole frame from the frames
    /// before it, which is what the model is (the codec's stages add frame `t`'s coded pixels).
    Past,
}

impl Sight {
    fn causal(self) -> bool {
        self != Sight::NonCausal
    }

    /// What its predictions saw of their own frame.
    fn sees(self) -> SeesFrame {
        match self {
            Sight::NonCausal => SeesFrame::AllButThePixel,
            Sight::Causal => SeesFrame::Causal,
            Sight::Past => SeesFrame::No,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sight::NonCausal => "learned, non-causal",
            Sight::Causal => "learned, causal",
            Sight::Past => "learned, past frames only",
        }
    }
}

/// How the learned genie's features are laid out and scaled.
#[derive(Clone, Debug)]
pub(super) struct Features {
    pub radius: usize,
    /// What the genie sees ([`Sight`]).
    pub sight: Sight,
    /// Residual units: a robust spread of `x_t - base` on the training frames.
    pub scale: f32,
    /// Mean and spread of the base on the training frames (the pixel's level, one feature).
    pub level_mean: f32,
    pub level_scale: f32,
}

impl Features {
    /// Offsets of the current frame's channels: the square of radius `R`, the centre omitted;
    /// for the causal genie only the pixels a raster-order coder has already coded (the rows
    /// above, and the pixels to the left on the same row).
    fn current_offsets(&self) -> Vec<(i64, i64)> {
        let coded = |&(dy, dx): &(i64, i64)| match self.sight {
            Sight::NonCausal => (dy, dx) != (0, 0),
            Sight::Causal => dy < 0 || (dy == 0 && dx < 0),
            Sight::Past => false,
        };
        self.square().into_iter().filter(coded).collect()
    }

    fn square(&self) -> Vec<(i64, i64)> {
        let r = self.radius as i64;
        (-r..=r).flat_map(|dy| (-r..=r).map(move |dx| (dy, dx))).collect()
    }

    /// Channels: the level, the current frame's offsets, four other frames' `(2R+1)^2`, and
    /// for the causal genie the 3x3 blocks of the means of the last 8 and 16 frames.
    pub fn channels(&self) -> usize {
        let side = 2 * self.radius + 1;
        1 + self.current_offsets().len() + 4 * side * side + if self.sight.causal() { 2 * BLOCK.len() } else { 0 }
    }

    /// The base of the prediction of pixel `p` of frame `t`: the mean of its 8 neighbours in
    /// frame `t` (non-causal), or its value in frame `t - 1` (causal).
    fn base_of(&self, seq: &[Vec<f32>], w: usize, h: usize, t: usize, p: usize) -> f32 {
        if self.sight.causal() {
            seq[t.saturating_sub(1)][p]
        } else {
            base(&seq[t], w, h, p)
        }
    }

    /// Choose the scales from the training frames (a sample of their pixels).
    fn fit(radius: usize, sight: Sight, seq: &[Vec<f32>], w: usize, h: usize, rng: &mut Rng) -> Features {
        let mut f = Features { radius, sight, scale: 1.0, level_mean: 0.0, level_scale: 1.0 };
        let (mut resid, mut levels) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let t = rng.range(f.first_target() as i64, seq.len() as i64 - 1) as usize;
            let p = rng.range(0, (w * h) as i64 - 1) as usize;
            let b = f.base_of(seq, w, h, t, p);
            resid.push((seq[t][p] - b).abs());
            levels.push(b);
        }
        let median = |v: &mut Vec<f32>| {
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        // Median absolute residual to a standard deviation (Gaussian), never zero.
        let scale = (1.4826 * median(&mut resid)).max(0.5);
        let level_mean = levels.iter().sum::<f32>() / levels.len() as f32;
        let level_scale = (levels.iter().map(|l| (l - level_mean) * (l - level_mean)).sum::<f32>() / levels.len() as f32).sqrt().max(1.0);
        f.scale = scale;
        f.level_mean = level_mean;
        f.level_scale = level_scale;
        f
    }

    /// The first frame that can be a target: the causal genie needs a frame before it.
    fn first_target(&self) -> usize {
        usize::from(self.sight.causal())
    }

    /// The other frames a genie sees around pixels of frame `t`: `t-2, t-1, t+1, t+2` (non-causal,
    /// [`temporal_neighbours`]), `t-1..t-4` (causal; before frame 0, frame 0).
    fn frames_for(&self, t: usize, n: usize) -> anyhow::Result<[usize; 4]> {
        if !self.sight.causal() {
            return temporal_neighbours(t, n).context("the genie needs at least 2 frames");
        }
        if t < self.first_target() {
            bail!("a causal genie has no frame before frame {t} to predict it from");
        }
        Ok([1, 2, 3, 4].map(|back| t.saturating_sub(back)))
    }

    /// The base and the features of pixel `p` of frame `t` into `out` (`channels()` floats):
    /// the level; frame `t` at the `current` offsets ([`Self::current_offsets`]: never the pixel,
    /// for a causal genie nothing below or right of it); the `frames` around the pixel
    /// (`square`); for a causal genie the 3x3 blocks of the means of frames `t-8..t-1` and
    /// `t-16..t-1` (those that exist). Out-of-frame offsets of frame `t` read as the base (0 after
    /// normalisation: never the border pixel again, which could be the pixel itself). Other
    /// frames clamp at the border.
    #[allow(clippy::too_many_arguments)]
    fn pixel(
        &self,
        seq: &[Vec<f32>],
        frames: &[usize; 4],
        w: usize,
        h: usize,
        t: usize,
        p: usize,
        current: &[(i64, i64)],
        square: &[(i64, i64)],
        out: &mut [f32],
    ) -> f32 {
        let (y, x) = ((p / w) as i64, (p % w) as i64);
        let cur = &seq[t];
        let b = self.base_of(seq, w, h, t, p);
        let inv = 1.0 / self.scale;
        let at = |f: &[f32], dy: i64, dx: i64| {
            let yy = (y + dy).clamp(0, h as i64 - 1) as usize;
            let xx = (x + dx).clamp(0, w as i64 - 1) as usize;
            f[yy * w + xx]
        };
        out[0] = (b - self.level_mean) / self.level_scale;
        let mut k = 1;
        for &(dy, dx) in current {
            let (yy, xx) = (y + dy, x + dx);
            out[k] = if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w { (cur[yy as usize * w + xx as usize] - b) * inv } else { 0.0 };
            k += 1;
        }
        for &s in frames {
            for &(dy, dx) in square {
                out[k] = (at(&seq[s], dy, dx) - b) * inv;
                k += 1;
            }
        }
        if self.sight.causal() {
            for span in [8, 16] {
                let past = &seq[t.saturating_sub(span)..t];
                for &(dy, dx) in &BLOCK {
                    out[k] = (past.iter().map(|f| at(f, dy, dx)).sum::<f32>() / past.len() as f32 - b) * inv;
                    k += 1;
                }
            }
        }
        b
    }

    /// Features of the pixels `(t, p)` (pixel `p` of frame `t`), appended to `feats`
    /// (`[n][channels]`), and their bases to `bases`.
    fn gather(
        &self,
        seq: &[Vec<f32>],
        w: usize,
        h: usize,
        pixels: impl Iterator<Item = (usize, usize)>,
        feats: &mut Vec<f32>,
        bases: &mut Vec<f32>,
    ) -> anyhow::Result<()> {
        let (current, square, c) = (self.current_offsets(), self.square(), self.channels());
        for (t, p) in pixels {
            let at = feats.len();
            feats.resize(at + c, 0.0);
            let frames = self.frames_for(t, seq.len())?;
            bases.push(self.pixel(seq, &frames, w, h, t, p, &current, &square, &mut feats[at..]));
        }
        Ok(())
    }
}

/// The learned genie: features, then a per-pixel MLP predicting the residual over the base.
pub(super) struct Genie {
    pub features: Features,
    _vs: nn::VarStore,
    net: nn::Sequential,
    pub steps: u64,
    pub secs: f64,
    /// Running mean of the training loss (residual units; MSE or MAE).
    pub loss: f64,
    pub width: i64,
    pub loss_kind: GenieLoss,
}

/// Pixels per training step.
const BATCH: usize = 4096;
/// Pixels per inference call.
const CHUNK: usize = 16_384;

impl Genie {
    /// Train on `seq` (every frame a target, its neighbours from `seq` itself; the causal genie's
    /// targets from frame 1) for `minutes`, or `max_steps` steps when given.
    pub fn train(seq: &[Vec<f32>], w: usize, h: usize, args: &GenieArgs, sight: Sight, max_steps: Option<u64>, seed: u64) -> anyhow::Result<Genie> {
        if seq.len() < 2 {
            bail!("the genie needs at least 2 training frames, got {}", seq.len());
        }
        if w < 3 || h < 3 {
            bail!("frames of {w}x{h} are too small for the genie");
        }
        let mut rng = Rng(seed);
        tch::manual_seed(seed as i64);
        let features = Features::fit(args.genie_radius, sight, seq, w, h, &mut rng);
        let c = features.channels() as i64;
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let width = args.genie_width.max(1);
        // The last layer starts at zero: an untrained genie predicts its base.
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        let net = nn::seq()
            .add(nn::linear(&root / "l0", c, width, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&root / "l1", width, width, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&root / "l2", width, if args.genie_loss == GenieLoss::Nll { 2 } else { 1 }, zero));
        let lr = 1e-3;
        let mut adam = nn::Adam::default().build(&vs, lr)?;
        let budget = Duration::from_secs_f64((args.genie_minutes * 60.0).max(0.0));
        let start = Instant::now();
        let (mut steps, mut ema) = (0u64, f64::NAN);
        let (mut feats, mut bases, mut targets) = (Vec::with_capacity(BATCH * c as usize), Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        loop {
            let done = match max_steps {
                Some(m) => steps as f64 / m.max(1) as f64,
                None => start.elapsed().as_secs_f64() / budget.as_secs_f64().max(1e-9),
            };
            if done >= 1.0 {
                break;
            }
            // Warm-up, then cosine decay to 5% of the peak over the budget.
            let warm = ((steps + 1) as f64 / 100.0).min(1.0);
            adam.set_lr(lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())));
            feats.clear();
            bases.clear();
            targets.clear();
            let picks: Vec<(usize, usize)> = (0..BATCH)
                .map(|_| (rng.range(features.first_target() as i64, seq.len() as i64 - 1) as usize, rng.range(0, (w * h) as i64 - 1) as usize))
                .collect();
            features.gather(seq, w, h, picks.iter().copied(), &mut feats, &mut bases)?;
            targets.extend(picks.iter().zip(&bases).map(|(&(t, p), b)| (seq[t][p] - b) / features.scale));
            let x = Tensor::from_slice(&feats).view([BATCH as i64, c]);
            let y = Tensor::from_slice(&targets).view([BATCH as i64, 1]);
            let out = net.forward(&x);
            let e = out.narrow(1, 0, 1) - y;
            let loss = match args.genie_loss {
                GenieLoss::Mse => (&e * &e).mean(Kind::Float),
                GenieLoss::Mae => e.abs().mean(Kind::Float),
                GenieLoss::Nll => {
                    // log b, kept within e^-4..e^4 units so an exact fit cannot run away.
                    let log_b = out.narrow(1, 1, 1).clamp(-4.0, 4.0);
                    (e.abs() * (-&log_b).exp() + log_b).mean(Kind::Float)
                }
            };
            adam.backward_step(&loss);
            steps += 1;
            let l = loss.double_value(&[]);
            if !l.is_finite() {
                bail!("the genie's training diverged at step {steps} (loss {l})");
            }
            ema = if ema.is_nan() { l } else { 0.99 * ema + 0.01 * l };
        }
        Ok(Genie { features, _vs: vs, net, steps, secs: start.elapsed().as_secs_f64(), loss: ema, width, loss_kind: args.genie_loss })
    }

    /// The genie's prediction of frame `t` of `seq` (every pixel, in pixel units).
    pub fn predict(&self, seq: &[Vec<f32>], w: usize, h: usize, t: usize) -> anyhow::Result<Vec<f32>> {
        let c = self.features.channels() as i64;
        let mut out = Vec::with_capacity(w * h);
        let (mut feats, mut bases) = (Vec::new(), Vec::new());
        for lo in (0..w * h).step_by(CHUNK) {
            let hi = (lo + CHUNK).min(w * h);
            feats.clear();
            bases.clear();
            self.features.gather(seq, w, h, (lo..hi).map(|p| (t, p)), &mut feats, &mut bases)?;
            // The first output is the residual (under `nll` the second is its scale).
            let r = tch::no_grad(|| self.net.forward(&Tensor::from_slice(&feats).view([(hi - lo) as i64, c])).narrow(1, 0, 1).contiguous());
            let r = Vec::<f32>::try_from(&r.view([-1]))?;
            out.extend(bases.iter().zip(&r).map(|(b, r)| b + r * self.features.scale));
        }
        Ok(out)
    }
}

/// A reference made elsewhere, played back to the codec, named by the SHA-256 of `name`: from
/// float predictions, rounded and clamped to the pixel type's integer image; `sees`: what each
/// prediction saw of its own frame (the codec then reads it only where it did not see the
/// pixel being coded: without that, `linear`'s taps right of and below the pixel read a
/// causal genie's prediction made from the pixel itself).
pub(super) fn reference(name: &str, preds: &[Vec<f32>], dtype: DType, sees: SeesFrame) -> Playback {
    let mask = dtype.mask() as f32;
    let refs = preds.iter().map(|f| f.iter().map(|&v| v.round().clamp(0.0, mask) as u32).collect()).collect();
    Playback { sees, ..Playback::new(sha2::Sha256::digest(name.as_bytes()).into(), refs) }
}

/// A set's frames as f32 (the integer images), when the genie can work on them: integer types
/// of at most 16 bits (f32 holds their images exactly; the image of a wider or float type is
/// not a linear scale).
pub(super) fn float_frames(images: &[Vec<u32>], dtype: DType) -> Option<Vec<Vec<f32>>> {
    matches!(dtype, DType::U8 | DType::U16 | DType::I8 | DType::I16).then(|| images.iter().map(|f| f.iter().map(|&v| v as f32).collect()).collect())
}

/// Root mean square of `a - b` over all frames.
fn rmse(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut s, mut n) = (0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.iter().zip(y) {
            s += ((u - v) as f64).powi(2);
            n += 1;
        }
    }
    (s / n.max(1) as f64).sqrt()
}

/// Zeroth-order entropy (bits per pixel) of the residuals `x - round(ref)` over all frames,
/// quantised as the codec quantises under `abs:e` (bins of `2e + 1`; `e = 0`: lossless). A
/// predictor's RMSE is dominated by its largest errors (moving edges); what the coder pays
/// follows the bulk, which this shows.
fn residual_entropy(refs: &[Vec<f32>], truth: &[Vec<f32>], e: u32) -> f64 {
    let step = (2 * e + 1) as f64;
    let mut counts: std::collections::HashMap<i64, u64> = Default::default();
    let mut n = 0u64;
    for (r, x) in refs.iter().zip(truth) {
        for (&p, &v) in r.iter().zip(x) {
            *counts.entry(((v as f64 - p.round() as f64) / step).round() as i64).or_default() += 1;
            n += 1;
        }
    }
    counts.values().map(|&c| c as f64 / n as f64).map(|q| -q * q.log2()).sum()
}

/// A set's genies, trained and applied: the references of its second half (`None`: a learned
/// genie `--genie-kinds` left out).
pub(super) struct SetGenie {
    pub learned: Option<Arc<Playback>>,
    pub simple: Arc<Playback>,
    pub causal: Option<Arc<Playback>>,
    pub causal_first_half: Option<Arc<Playback>>,
    pub past: Option<Arc<Playback>>,
    pub report: Value,
}

impl SetGenie {
    /// Every reference, with the label of its row.
    fn all(&self) -> Vec<(&'static str, &Arc<Playback>)> {
        [
            ("non-causal, simple", Some(&self.simple)),
            ("non-causal, learned", self.learned.as_ref()),
            ("causal, learned", self.causal.as_ref()),
            ("causal, learned on the first half", self.causal_first_half.as_ref()),
            ("past frames only", self.past.as_ref()),
        ]
        .into_iter()
        .filter_map(|(l, r)| r.map(|r| (l, r)))
        .collect()
    }
}

/// One line on how a learned genie was made.
fn describe(label: &str, genie: &Genie, trained_on: &str) -> String {
    format!(
        "GENIE ({label}): R={} ({} channels), MLP {}-{w2}-{w2}-1, {} loss, trained {:.0} s ({} steps of {BATCH} pixels, final loss {:.3} in units of {:.2}) on {trained_on}",
        genie.features.radius,
        genie.features.channels(),
        genie.features.channels(),
        genie.loss_kind,
        genie.secs,
        genie.steps,
        genie.loss,
        genie.features.scale,
        w2 = genie.width,
    )
}

/// Train the genies on `images` and predict frames `half..` with them. The non-causal genie
/// learns from the first `half` frames only (a sequence of its own: its neighbours never come
/// from the coded half); the causal and past-only genies learn from every frame, the coded ones
/// included (they have less to see, so they are given the coded frames themselves to fit: what
/// they reach is more than a predictor of their kind trained on the first half can), and the
/// causal one once more from the first half only, as the model learns (what a larger causal
/// predictor of the same kind reaches under the bench's rule). All predict from originals (a
/// genie has every one). `None` (with a printed note) for pixel types they cannot take.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    name: &str,
    images: &[Vec<u32>],
    dtype: DType,
    w: usize,
    h: usize,
    half: usize,
    args: &GenieArgs,
    oracle: Option<&[Vec<u32>]>,
) -> anyhow::Result<Option<SetGenie>> {
    let Some(seq) = float_frames(images, dtype) else {
        println!("GENIE: skipped ({dtype} images are not a linear scale in f32)");
        return Ok(None);
    };
    let t0 = Instant::now();
    let train = |kind: GenieKind, frames: &[Vec<f32>], sight: Sight, seed: u64| -> anyhow::Result<Option<Genie>> {
        args.wants(kind).then(|| Genie::train(frames, w, h, args, sight, args.genie_steps, seed)).transpose()
    };
    // (Label, genie, what it learned from, the name of its reference.)
    let genies = [
        ("learned", train(GenieKind::NonCausal, &seq[..half], Sight::NonCausal, 1)?, format!("frames 0-{}", half - 1), "learned, non-causal"),
        ("causal", train(GenieKind::Causal, &seq, Sight::Causal, 2)?, format!("frames 1-{}, the coded ones included", seq.len() - 1), "learned, causal"),
        (
            "causal, first half",
            train(GenieKind::CausalFirstHalf, &seq[..half], Sight::Causal, 4)?,
            format!("frames 1-{}, as the model", half - 1),
            "learned, causal, first half",
        ),
        (
            "past only",
            train(GenieKind::Past, &seq, Sight::Past, 3)?,
            format!("frames 1-{}, the coded ones included", seq.len() - 1),
            "learned, past frames only",
        ),
    ];
    let mut preds: Vec<Option<Vec<Vec<f32>>>> = Vec::new();
    for (_, g, _, _) in &genies {
        preds.push(match g {
            Some(g) => Some((half..seq.len()).map(|t| g.predict(&seq, w, h, t)).collect::<anyhow::Result<Vec<_>>>()?),
            None => None,
        });
    }
    let simple = (half..seq.len()).map(|t| simple_genie(&seq, w, h, t)).collect::<anyhow::Result<Vec<_>>>()?;
    let truth = &seq[half..];
    let previous: Vec<Vec<f32>> = (half..seq.len()).map(|t| seq[t - 1].clone()).collect();
    let round = |v: &[Vec<f32>]| v.iter().map(|f| f.iter().map(|x| x.round()).collect()).collect::<Vec<Vec<f32>>>();
    let r_oracle = oracle.map(|o| rmse(&o.iter().map(|f| f.iter().map(|&v| v as f32).collect()).collect::<Vec<_>>(), truth));
    for (_, g, on, _) in &genies {
        if let Some(g) = g {
            println!("{}", describe(g.features.sight.label(), g, on));
        }
    }
    println!("GENIE: all took {:.0} s", t0.elapsed().as_secs_f64());
    let mut refs: Vec<(&str, &Vec<Vec<f32>>)> = genies.iter().zip(&preds).filter_map(|((l, _, _, _), p)| p.as_ref().map(|p| (*l, p))).collect();
    refs.extend([("simple", &simple), ("previous frame", &previous)]);
    let mut rmses = serde_json::Map::new();
    for (label, refs) in &refs {
        let h: Vec<String> = [0, 1, 2, 4]
            .iter()
            .map(|&e| format!("{} {:.3}", if e == 0 { "lossless".to_string() } else { format!("abs:{e}") }, residual_entropy(refs, truth, e)))
            .collect();
        println!("GENIE references, zeroth-order entropy of the residual (bits/pixel), {label}: {}", h.join(", "));
        rmses.insert(label.to_string(), json!(rmse(&round(refs), truth)));
    }
    println!(
        "GENIE references, RMSE against the coded frames: {}{}",
        rmses.iter().map(|(l, r)| format!("{l} {:.3}", r.as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>().join(", "),
        r_oracle.map_or(String::new(), |r| format!(", oracle {r:.3} (the noise)"))
    );
    rmses.insert("oracle".into(), json!(r_oracle));
    let about = |g: &Genie| {
        json!({
            "radius": g.features.radius, "channels": g.features.channels(), "width": g.width, "loss": g.loss_kind.to_string(),
            "train_seconds": g.secs, "train_steps": g.steps, "train_loss": g.loss, "units": g.features.scale,
        })
    };
    let mut report = json!({});
    for (label, g, _, _) in &genies {
        if let Some(g) = g {
            report[*label] = about(g);
        }
    }
    report["rmse"] = Value::Object(rmses);
    let mut playbacks = genies.iter().zip(preds).map(|((_, g, _, what), p)| {
        let sees = g.as_ref().map_or(SeesFrame::No, |g| g.features.sight.sees());
        p.map(|p| Arc::new(reference(&format!("genie: {what}, {name}"), &p, dtype, sees)))
    });
    let (learned, causal, causal_first_half, past) =
        (playbacks.next().flatten(), playbacks.next().flatten(), playbacks.next().flatten(), playbacks.next().flatten());
    let simple = Arc::new(reference(&format!("genie: simple, non-causal, {name}"), &simple, dtype, SeesFrame::AllButThePixel));
    Ok(Some(SetGenie { learned, simple, causal, causal_first_half, past, report }))
}

/// Code `second` with a reference model as the oracle row is coded: the model-able predictors
/// only, the best per window.
pub(super) fn reference_row(second: &Dataset, base: &Options, window: usize, r: &Arc<Playback>, label: &str) -> anyhow::Result<Row> {
    let opts = Options { model: Some(ModelHandle(r.clone())), predictor: PredictorChoice::Prednet, ..base.clone() };
    codec_row_with(second, &opts, window, label, &|start| r.window_start.store(start, Ordering::SeqCst))
}

/// The genie rows of one bound, printed, and a summary: the measured limits (the best of the
/// non-causal genie rows and classical auto; the best of the causal genie and classical auto;
/// the past-only genie, the limit of the model's kind of predictor; the causal genie trained on
/// the first half, what a larger predictor of the stage's kind reaches under the bench's rule),
/// 90% of each, what 1.3x classical would be, and where the model (`with`) stands.
#[allow(clippy::too_many_arguments)]
pub(super) fn rows(
    g: &SetGenie,
    second: &Dataset,
    base: &Options,
    window: usize,
    classical: &Row,
    with: &Row,
    oracle: Option<&Row>,
    print: &dyn Fn(&Row),
) -> anyhow::Result<Value> {
    let bound = base.bound;
    let mut ratios = serde_json::Map::new();
    let mut checks = Vec::new();
    for (label, r) in g.all() {
        let row = reference_row(second, base, window, r, &format!("{bound}: GENIE ({label})"))?;
        print(&row);
        ratios.insert(label.to_string(), json!(row.ratio));
        checks.push(row.check.clone());
    }
    let ratio = |label: &str| ratios.get(label).and_then(Value::as_f64);
    let share = |limit: f64| format!("{:.0}% of it ({})", 100.0 * with.ratio / limit, if with.ratio >= 0.9 * limit { "90%: met" } else { "90%: MISSED" });
    let target = if bound == Bound::Lossless { classical.ratio / 0.97 } else { 1.3 * classical.ratio };
    let mut out = json!({ "target": target, "checks": checks });
    if let Some(learned) = ratio("non-causal, learned") {
        let limit = learned.max(ratio("non-causal, simple").unwrap_or(0.0)).max(classical.ratio);
        println!(
            "  GENIE limit (best of the non-causal genie rows and classical auto) {limit:.3}; 90% of it {:.3}; {} classical auto would be {target:.3} ({} the measured limit){}",
            0.9 * limit,
            if bound == Bound::Lossless { "3% fewer bits than" } else { "1.3x" },
            if target > limit { "BEYOND" } else { "within" },
            oracle.map_or(String::new(), |o| format!("; the oracle codes {:.3} (learned genie at {:.0}% of it)", o.ratio, 100.0 * learned / o.ratio)),
        );
        out["limit"] = json!(limit);
        out["limit_90"] = json!(0.9 * limit);
    }
    if let Some(causal) = ratio("causal, learned") {
        let limit = causal.max(classical.ratio);
        println!(
            "  causal GENIE limit (the causal genie or classical auto) {limit:.3}; 90% of it {:.3}; auto with the model {:.3} = {}; {} classical auto would be {target:.3} ({} the causal limit)",
            0.9 * limit,
            with.ratio,
            share(limit),
            if bound == Bound::Lossless { "3% fewer bits than" } else { "1.3x" },
            if target > limit { "BEYOND" } else { "within" },
        );
        out["causal_limit"] = json!(limit);
        out["causal_limit_90"] = json!(0.9 * limit);
    }
    if let Some(first) = ratio("causal, learned on the first half") {
        let limit = first.max(classical.ratio);
        println!(
            "  causal GENIE trained on the first half only (as the model; 6x the stage's inputs, 4x its units, float, originals) or classical auto {limit:.3}; 90% of it {:.3}; auto with the model {:.3} = {}",
            0.9 * limit,
            with.ratio,
            share(limit)
        );
        out["causal_first_half"] = json!(limit);
    }
    if let Some(past) = ratio("past frames only") {
        let limit = past.max(classical.ratio);
        println!(
            "  past-only GENIE (a whole frame from the frames before it, the model's kind; the codec adds frame t's coded pixels) {limit:.3}; auto with the model {:.0}% of it",
            100.0 * with.ratio / limit,
        );
    }
    out["ratios"] = Value::Object(ratios);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::bench::fixture;
    use super::*;

    fn args(minutes: f64) -> GenieArgs {
        GenieArgs {
            genie: true,
            genie_minutes: minutes,
            genie_steps: None,
            genie_radius: 2,
            genie_width: 16,
            genie_loss: GenieLoss::Mse,
            genie_kinds: vec![GenieKind::All],
        }
    }

    fn images(d: &Dataset) -> Vec<Vec<u32>> {
        d.files
            .iter()
            .map(|f| {
                let mut v = Vec::new();
                d.dtype.decode_pixels(f, false, &mut v);
                v
            })
            .collect()
    }

    #[test]
    fn neighbours_never_the_frame_itself() {
        for n in 2..7 {
            for t in 0..n {
                let nb = temporal_neighbours(t, n).expect("two frames or more");
                assert!(nb.iter().all(|&s| s != t && s < n), "t={t} n={n}: {nb:?}");
            }
        }
        assert_eq!(temporal_neighbours(5, 10), Some([3, 4, 6, 7]));
        assert_eq!(temporal_neighbours(0, 10), Some([2, 1, 1, 2]));
        assert_eq!(temporal_neighbours(1, 10), Some([0, 0, 2, 3]));
        assert_eq!(temporal_neighbours(9, 10), Some([7, 8, 8, 7]));
        assert_eq!(temporal_neighbours(0, 1), None);
    }

    /// A trained genie's prediction at a pixel does not move when that pixel of frame t
    /// changes (it never sees it), but does at its neighbours (it does see them): at the
    /// corners, edges and inside, and for the simple genie too.
    #[test]
    fn no_leak_of_the_pixel_itself() {
        let d = fixture("t", DType::U16, 40, 24, 6, 3);
        let seq = float_frames(&images(&d), d.dtype).expect("u16");
        let (w, h) = (40, 24);
        let genie = Genie::train(&seq, w, h, &args(1.0), Sight::NonCausal, Some(150), 7).expect("trains");
        assert!(genie.steps == 150);
        let t = 2;
        let before = genie.predict(&seq, w, h, t).expect("predicts");
        let simple_before = simple_genie(&seq, w, h, t).expect("simple");
        for (y, x) in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (0, 17), (11, 0), (1, 1), (12, 20), (h - 2, w - 3)] {
            let p = y * w + x;
            let mut changed = seq.clone();
            changed[t][p] += 5000.0;
            let after = genie.predict(&changed, w, h, t).expect("predicts");
            assert_eq!(after[p], before[p], "the prediction at ({y},{x}) moved with the pixel itself");
            let nbr = if x + 1 < w { p + 1 } else { p - 1 };
            assert_ne!(after[nbr], before[nbr], "the prediction at the neighbour of ({y},{x}) ignores it: the test sees nothing");
            let simple_after = simple_genie(&changed, w, h, t).expect("simple");
            assert_eq!(simple_after[p], simple_before[p]);
            assert_ne!(simple_after[nbr], simple_before[nbr]);
        }
    }

    /// The causal genie never sees what a raster-order coder has not coded yet: its prediction
    /// of a pixel does not move when the pixel itself, a pixel to its right or below it in
    /// frame t, or any later frame changes; it does move with the pixel to its left, the one
    /// above, and the pixel in frame t-1 (so the test sees something). The past-only genie
    /// moves with nothing of frame t, and with frame t-1.
    #[test]
    fn the_causal_genies_see_only_the_past() {
        let d = fixture("t", DType::U16, 40, 24, 8, 3);
        let seq = float_frames(&images(&d), d.dtype).expect("u16");
        let (w, h) = (40, 24);
        for sight in [Sight::Causal, Sight::Past] {
            let genie = Genie::train(&seq, w, h, &args(1.0), sight, Some(150), 7).expect("trains");
            assert!(genie.predict(&seq, w, h, 0).is_err(), "frame 0 has no past to be predicted from");
            let t = 4;
            let before = genie.predict(&seq, w, h, t).expect("predicts");
            for (y, x) in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (1, 1), (12, 20), (h - 2, w - 3)] {
                let p = y * w + x;
                let (mut unseen, mut seen) = (vec![(t, p)], vec![(t - 1, p)]);
                if x + 1 < w {
                    unseen.push((t, p + 1));
                }
                if y + 1 < h {
                    unseen.push((t, p + w));
                    unseen.push((t, p + w - usize::from(x > 0)));
                }
                unseen.extend((t + 1..seq.len()).map(|later| (later, p)));
                let coded = [(x > 0).then(|| p - 1), (y > 0).then(|| p - w)];
                for q in coded.into_iter().flatten() {
                    match sight {
                        Sight::Past => unseen.push((t, q)),
                        _ => seen.push((t, q)),
                    }
                }
                for (f, q) in unseen {
                    let mut changed = seq.clone();
                    changed[f][q] += 5000.0;
                    let after = genie.predict(&changed, w, h, t).expect("predicts");
                    assert_eq!(after[p], before[p], "{sight:?}: the prediction at ({y},{x}) of frame {t} moved with pixel {q} of frame {f}");
                }
                for (f, q) in seen {
                    let mut changed = seq.clone();
                    changed[f][q] += 5000.0;
                    let after = genie.predict(&changed, w, h, t).expect("predicts");
                    assert_ne!(after[p], before[p], "{sight:?}: the prediction at ({y},{x}) ignores pixel {q} of frame {f}: the test sees nothing");
                }
            }
        }
    }

    /// The genie rows decode bit-exact lossless and within the bound under abs:E, on a fixture
    /// (a window longer than the half, and one shorter).
    #[test]
    fn genie_rows_decode() {
        tch::set_num_threads(1);
        let d = fixture("t", DType::U16, 48, 40, 10, 5);
        let imgs = images(&d);
        let half = 5;
        let second = Dataset {
            name: "t (second half)".into(),
            dtype: d.dtype,
            width: d.width,
            height: d.height,
            files: d.files[half..].to_vec(),
            floor_bits: None,
            spec: None,
        };
        let a = GenieArgs { genie_minutes: 0.05, ..args(0.05) };
        let g = prepare("t", &imgs, d.dtype, 48, 40, half, &a, None).expect("prepares").expect("u16 is taken");
        for window in [32, 3] {
            for bound in [Bound::Lossless, Bound::Abs(2.0), Bound::Abs(7.0)] {
                let base = Options { format: second.format(), bound, ..Options::default() };
                assert_eq!(g.all().len(), 5, "every genie when all are asked for");
                for (_, r) in g.all() {
                    let row = reference_row(&second, &base, window, r, "genie").expect("codes");
                    let ok = match bound {
                        Bound::Lossless => row.check.starts_with("bit-exact"),
                        _ => row.check.starts_with("maxerr=") && !row.check.contains("VIOLATES"),
                    };
                    assert!(ok, "{bound} window {window}: {}", row.check);
                    assert!(row.check.contains("prednet+"), "the reference was not used: {}", row.check);
                }
            }
        }
    }
}
