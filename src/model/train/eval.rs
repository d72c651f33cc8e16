//! Measuring a model on held-out frames, open loop: the frames a model observes are the
//! originals plus the reconstruction noise of the bound ([`super::Degrade`]), as a proxy of what
//! the codec's reconstructions are; its reference for every frame after a window's key frame is
//! compared with the original.
//!
//! What is measured is what the codec pays for: the empirical entropy of the residual `x - P'`
//! (lossless) or of the quantisation index `floor((x - P' + E) / (2E + 1))` (under `abs:E`),
//! order 0 and conditioned on a causal context of the neighbouring indices' magnitudes (closer
//! to the codec's context coders), each the mean over frames.

use super::Degrade;
use crate::codec::predict::{Geometry, Model, PredictError};
use crate::fixtures::Rng;
use std::collections::HashMap;

/// What a set of references costs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Residuals {
    /// Mean absolute residual `|x - P'|` (pixel units).
    pub mae: f64,
    /// Order-0 entropy of the codes, bits per pixel.
    pub bits: f64,
    /// Entropy of the codes given the causal context of their neighbours, bits per pixel.
    pub ctx_bits: f64,
    /// Frames measured (the key frames are not).
    pub frames: usize,
}

/// The frames a model observes: `frames` with reconstruction noise (deterministic in `seed`).
pub fn observed(frames: &[Vec<u32>], degrade: Degrade, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed ^ 0x6576_616c);
    frames.iter().map(|f| f.iter().map(|&x| degrade.apply(x, &mut rng)).collect()).collect()
}

/// The reference a model makes for every frame of `observed`, in windows of `window` frames
/// (`None` for key frames).
pub fn references(model: &dyn Model, geom: Geometry, observed: &[Vec<u32>], window: usize) -> Result<Vec<Option<Vec<u32>>>, PredictError> {
    let mut out = Vec::with_capacity(observed.len());
    for chunk in observed.chunks(window.max(1)) {
        let mut s = model.start(geom)?;
        model.observe_batch(&mut [s.as_mut()], &[&chunk[0]])?;
        out.push(None);
        for f in &chunk[1..] {
            let mut p = vec![0u32; geom.pixels()];
            model.predict_batch(&mut [s.as_mut()], &mut [&mut p])?;
            model.observe_batch(&mut [s.as_mut()], &[f])?;
            out.push(Some(p));
        }
    }
    Ok(out)
}

/// The classical reference: the previous observed frame.
pub fn previous_references(observed: &[Vec<u32>], window: usize) -> Vec<Option<Vec<u32>>> {
    (0..observed.len()).map(|t| (t % window.max(1) != 0).then(|| observed[t - 1].clone())).collect()
}

/// Order-0 entropy of `codes`, and their entropy given each one's context (bits per code).
fn entropies(codes: &[i64], width: usize) -> (f64, f64) {
    let n = codes.len() as f64;
    let mut plain: HashMap<i64, u64> = HashMap::new();
    let mut joint: HashMap<(u8, i64), u64> = HashMap::new();
    let mut ctx_count = [0u64; 16];
    for (i, &q) in codes.iter().enumerate() {
        let (y, x) = (i / width, i % width);
        let a = |dy: usize, dx: isize| -> u64 {
            if y < dy {
                return 0;
            }
            let xx = x as isize + dx;
            if xx < 0 || xx >= width as isize || (dy == 0 && dx >= 0) {
                return 0;
            }
            codes[(y - dy) * width + xx as usize].unsigned_abs()
        };
        // The lab's context: weighted magnitudes of left, up, up-left and up-right, log-binned.
        let s = 2 * a(0, -1) + 2 * a(1, 0) + a(1, -1) + a(1, 1);
        let c = if s == 0 { 0 } else { (1 + (2.0 * (s as f64).log2()).floor() as u64).min(15) as u8 };
        *plain.entry(q).or_default() += 1;
        *joint.entry((c, q)).or_default() += 1;
        ctx_count[c as usize] += 1;
    }
    let h0 = plain.values().map(|&k| -(k as f64) * (k as f64 / n).log2()).sum::<f64>() / n;
    let hc = joint.iter().map(|(&(c, _), &k)| -(k as f64) * (k as f64 / ctx_count[c as usize] as f64).log2()).sum::<f64>() / n;
    (h0, hc)
}

/// What the references `refs` cost for `frames` under a bound of largest error `e` (0:
/// lossless; integer types).
pub fn residuals(frames: &[Vec<u32>], refs: &[Option<Vec<u32>>], width: usize, e: u32) -> Residuals {
    let step = 2 * e as i64 + 1;
    let mut out = Residuals::default();
    let mut abs_sum = 0f64;
    let mut pixels = 0f64;
    for (x, p) in frames.iter().zip(refs) {
        let Some(p) = p else { continue };
        let codes: Vec<i64> = x.iter().zip(p).map(|(&x, &p)| (x as i64 - p as i64 + e as i64).div_euclid(step)).collect();
        abs_sum += x.iter().zip(p).map(|(&x, &p)| (x as i64 - p as i64).unsigned_abs() as f64).sum::<f64>();
        pixels += x.len() as f64;
        let (h0, hc) = entropies(&codes, width);
        out.bits += h0;
        out.ctx_bits += hc;
        out.frames += 1;
    }
    if out.frames > 0 {
        out.bits /= out.frames as f64;
        out.ctx_bits /= out.frames as f64;
        out.mae = abs_sum / pixels;
    }
    out
}

/// How closely two sets of references agree.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Agreement {
    /// Fraction of pixels whose references differ.
    pub differ: f64,
    /// The largest difference.
    pub max_abs: u64,
}

pub fn agreement(a: &[Option<Vec<u32>>], b: &[Option<Vec<u32>>]) -> Agreement {
    let (mut n, mut d, mut max_abs) = (0u64, 0u64, 0u64);
    for (a, b) in a.iter().zip(b) {
        if let (Some(a), Some(b)) = (a, b) {
            for (&x, &y) in a.iter().zip(b) {
                n += 1;
                if x != y {
                    d += 1;
                    max_abs = max_abs.max((x as i64 - y as i64).unsigned_abs());
                }
            }
        }
    }
    Agreement { differ: d as f64 / n.max(1) as f64, max_abs }
}

/// The previous frame against a model on `frames` (integer types), in windows of `window`.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub previous: Residuals,
    pub model: Residuals,
    /// The model's references (to compare backends).
    pub refs: Vec<Option<Vec<u32>>>,
}

impl Comparison {
    /// Relative change of the context entropy against the previous frame (negative: smaller).
    pub fn gain(&self) -> f64 {
        self.model.ctx_bits / self.previous.ctx_bits - 1.0
    }
}

pub fn compare(model: &dyn Model, frames: &[Vec<u32>], geom: Geometry, degrade: Degrade, seed: u64, window: usize) -> Result<Comparison, PredictError> {
    let obs = observed(frames, degrade, seed);
    let e = degrade.e as u32;
    let refs = references(model, geom, &obs, window)?;
    let previous = residuals(frames, &previous_references(&obs, window), geom.width, e);
    let model = residuals(frames, &refs, geom.width, e);
    Ok(Comparison { previous, model, refs })
}

/// Closed loop, as the codec codes: every frame after a window's key frame is quantised against
/// the reference (`q = floor((x - P' + E) / (2E + 1))`, reconstruction `clamp(P' + q (2E + 1))`)
/// and the model observes that reconstruction; the key frames are the originals plus the
/// reconstruction noise. Returns the references (`None` for key frames).
pub fn closed_loop(
    model: Option<&dyn Model>,
    frames: &[Vec<u32>],
    geom: Geometry,
    degrade: Degrade,
    seed: u64,
    window: usize,
) -> Result<Vec<Option<Vec<u32>>>, PredictError> {
    let mut rng = Rng::new(seed ^ 0x636c_6f73);
    let e = degrade.e as i64;
    let step = 2 * e + 1;
    let mask = geom.mask() as i64;
    let mut out = Vec::with_capacity(frames.len());
    for chunk in frames.chunks(window.max(1)) {
        let mut state = model.map(|m| m.start(geom)).transpose()?;
        let mut recon: Vec<u32> = chunk[0].iter().map(|&x| degrade.apply(x, &mut rng)).collect();
        if let (Some(m), Some(s)) = (model, state.as_mut()) {
            m.observe_batch(&mut [s.as_mut()], &[&recon])?;
        }
        out.push(None);
        for x in &chunk[1..] {
            let p = match (model, state.as_mut()) {
                (Some(m), Some(s)) => {
                    let mut p = vec![0u32; geom.pixels()];
                    m.predict_batch(&mut [s.as_mut()], &mut [&mut p])?;
                    p
                }
                _ => recon.clone(),
            };
            for ((r, &x), &p) in recon.iter_mut().zip(x).zip(&p) {
                let q = (x as i64 - p as i64 + e).div_euclid(step);
                *r = (p as i64 + q * step).clamp(0, mask) as u32;
            }
            if let (Some(m), Some(s)) = (model, state.as_mut()) {
                m.observe_batch(&mut [s.as_mut()], &[&recon])?;
            }
            out.push(Some(p));
        }
    }
    Ok(out)
}
