//! What the trained causal stage does on ctc, open loop and closed loop (issue 11).
//!
//! Trains the stage on frames 0-14 of a u8 set (as `bench --model` does) and measures on frames
//! 16-29 the zeroth-order entropy (bits per pixel) of the quantised residual:
//! - open loop: predicted from simulated reconstructions (originals + uniform error in the bound),
//!   as training saw them;
//! - closed loop: the frames coded one after another by the codec's quantiser, each predicted
//!   from the reconstructions the codec made (what a decoder sees).
//!
//! Beside them: `linear` fitted on the first test frames (least squares, as the codec fits it)
//! in the same closed loop, and the previous frame alone.
//!
//!     cargo run --release --example causal_lab -- [DIR] [BOUND] [STEPS]
//!
//! Environment: `LOSS=mse|mae|log` (default: the stage's, log), `CLOSED=1` (a second round of
//! training on closed-loop reconstructions), `WARM=1` (open loop: the running means start at
//! frame 0, not at the window's first frame).
use tezipfs::codec::predict::causal::{CausalStage, Past};
use tezipfs::codec::predict::{linear, Geometry, Prediction};
use tezipfs::codec::quantizer::{self, Bound};
use tezipfs::codec::DType;
use tezipfs::model::train::causal::{train_causal, CausalOptions};
use tezipfs::model::train::{Degrade, Loss};

/// Entropy of each frame's codes given a context of their left and upper neighbours' codes
/// (the sum of their magnitudes, in 12 levels): how much a context-adaptive coder can still take
/// out of the residual.
fn context_entropy(codes: &[u32], w: usize) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for (i, &c) in codes.iter().enumerate() {
        let mag = |j: usize| codes[j].saturating_sub(1).div_ceil(2);
        let (x, y) = (i % w, (i / w) % w);
        let a = if x > 0 { mag(i - 1) } else { 0 };
        let b = if y > 0 { mag(i - w) } else { 0 };
        let ctx = (a + b).min(11);
        *counts.entry((ctx, c)).or_insert(0usize) += 1;
    }
    let mut per: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for (&(k, _), &n) in &counts {
        *per.entry(k).or_default() += n;
    }
    let n = codes.len() as f64;
    counts.iter().map(|(&(k, _), &c)| -(c as f64 / n) * (c as f64 / per[&k] as f64).log2()).sum()
}

fn entropy(codes: &[u32]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for &c in codes {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = codes.len() as f64;
    counts.values().map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum()
}

#[allow(clippy::needless_range_loop)] // (frame numbers read better than iterators here)
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).cloned().unwrap_or_else(|| "../shared/data/ctc-fluo-nuclei".into());
    let e: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let steps: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(6000);
    let (w, h) = (511usize, 511usize);
    let frames: Vec<Vec<u32>> =
        (0..30).map(|i| std::fs::read(format!("{dir}/frame_{i:05}.raw")).expect("frame").into_iter().map(u32::from).collect()).collect();
    let geom = Geometry::of(w, h, DType::U8);
    let bound = if e > 0.0 { Bound::Abs(e) } else { Bound::Lossless };
    let degrade = Degrade::new(bound, DType::U8).expect("bound");
    tch::set_num_threads(2);
    let (net, report) = train_causal(
        &frames[..15],
        geom,
        degrade,
        &CausalOptions {
            steps,
            loss: std::env::var("LOSS").ok().and_then(|l| l.parse().ok()).unwrap_or(Loss::Log),
            closed_loop: std::env::var("CLOSED").is_ok(),
            log_unit: std::env::var("UNIT").ok().and_then(|u| u.parse().ok()).unwrap_or(1.0),
            ..Default::default()
        },
    )
    .expect("training");
    println!(
        "{bound}: trained {} steps in {:.1} s; rmse on training pixels: int {:.3} float {:.3} previous {:.3}; means {} (held-out entropies with/without {:?})",
        report.steps,
        report.elapsed.as_secs_f64(),
        report.rmse_int,
        report.rmse_float,
        report.rmse_previous,
        report.means,
        report.held_out
    );
    let net = CausalStage::new(net);
    let fb = bound.for_frame(DType::U8, &frames[0]);
    let step = 2.0 * e + 1.0;
    // Open loop.
    let mut rng = tezipfs::fixtures::Rng::new(7);
    let degraded: Vec<Vec<u32>> = frames.iter().map(|f| f.iter().map(|&v| degrade.apply(v, &mut rng)).collect()).collect();
    let mut past = Past::default();
    // WARM=1: the running means start at frame 0 (the test frames then have the history the
    // lab's boxcar means had), not at the window's key frame.
    if std::env::var("WARM").is_ok() {
        (0..15).for_each(|t| past.observe(&degraded[t], w));
    }
    let mut open = Vec::new();
    let mut se = 0.0;
    for t in 15..30 {
        if t > 15 {
            for (i, &x) in frames[t].iter().enumerate() {
                let p = net.predict(&past, &degraded[t], i, w, 255) as f64;
                se += (x as f64 - p).powi(2);
                open.push(((x as f64 - p) / step).round() as i64 as u32);
            }
        }
        past.observe(&degraded[t], w);
    }
    println!("{bound}: causal open loop        {:.3} bits/pixel, rmse {:.3}", entropy(&open), (se / open.len() as f64).sqrt());
    // Closed loop: causal, linear, previous.
    let coefs = {
        let pairs: Vec<(&[u32], &[u32])> = (15..22).map(|t| (&frames[t - 1][..], &frames[t][..])).collect();
        linear::fit_pairs(&pairs, w, linear::Weighting::of(DType::U8)).expect("fit")
    };
    for kind in ["causal", "linear", "previous"] {
        let t0 = std::time::Instant::now();
        let mut past = Past::default();
        let mut codes = Vec::new();
        let mut prev: Vec<u32> = Vec::new();
        for t in 15..30 {
            let c = if t == 15 {
                quantizer::encode(DType::U8, fb, &frames[t], Prediction::Intra { width: w })
            } else {
                let pred = match kind {
                    "causal" => Prediction::Causal { net: &net, past: &past, width: w },
                    "linear" => Prediction::Linear { prev: &prev, width: w, coefs: &coefs, boxes: &[] },
                    _ => Prediction::Frame(&prev),
                };
                quantizer::encode(DType::U8, fb, &frames[t], pred)
            };
            if t > 15 {
                codes.extend_from_slice(&c.codes);
            }
            past.observe(&c.recon, w);
            prev = c.recon;
        }
        let mbs = (15 * w * h) as f64 / 1e6 / t0.elapsed().as_secs_f64();
        println!(
            "{bound}: {kind:<8} closed loop     {:.3} bits/pixel, {:.3} given its neighbours' codes  (quantised at {mbs:.1} MB/s, one core)",
            entropy(&codes),
            context_entropy(&codes, w)
        );
    }
}
