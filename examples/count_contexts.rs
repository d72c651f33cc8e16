//! How far "counts coded as counts" can go on photon-counting frames (issue 14, item 3), before
//! any coder is built: the adaptive code length of every count under a frequency model per
//! context, the context made only of what a decoder has (integer arithmetic):
//! - `near`: the current frame's decoded neighbours (left, up-left, up, up-right), summed;
//! - `past`: a per-pixel running rate, `r += (256 c - r) >> k` after each frame (8 fractional
//!   bits), over the 3x3 neighbourhood;
//!
//! each quantised to a few levels. Counts above 30 are an escape whose value costs its Elias-gamma
//! length. The models are adaptive (Krichevsky-Trofimov: a count seen n times of N in its context
//! costs -log2((n + 1/2) / (N + K/2))), so the figure is what an arithmetic coder with these
//! models would spend, to within its few bytes of flush. Printed next to the exact floor (the
//! Poisson entropy given the true rate) of the generator's speckle.
//!
//! Then the counts stage itself (`codec::entropy::counts`, frames coded in order, its state
//! carried), and a genie that codes each count at the previous frame's *true* rate.
//!
//! `cargo run --release --example count_contexts [WIDTHxHEIGHT] [FRAMES]`

use tezipfs::codec::entropy::counts;
use tezipfs::codec::DType;
use tezipfs::fixtures::{generate_images, generate_means, noise_floor_bits, Scene, SequenceSpec};

/// Symbols of a context's model: counts 0..ESCAPE-1 and the escape.
const ESCAPE: usize = 31;

/// `x` on a log-like scale: 0, 1, 2, 3, then two levels per octave, at most `cap`.
fn level(x: u64, cap: usize) -> usize {
    if x < 4 {
        return x as usize;
    }
    let t = 63 - x.leading_zeros() as usize;
    (2 * t + ((x >> (t - 1)) & 1) as usize).min(cap)
}

/// Adaptive bits per count with contexts of `near` and `past` (history shift `k`).
fn adaptive_bits(images: &[Vec<u32>], w: usize, h: usize, k: u32, use_near: bool, use_past: bool) -> f64 {
    const NEAR: usize = 24;
    const PAST: usize = 24;
    let mut freq = vec![[0u32; ESCAPE + 1]; NEAR * PAST];
    let mut total = vec![0u32; NEAR * PAST];
    let mut rate = vec![0u64; w * h];
    let mut bits = 0.0;
    for img in images {
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let mut near = 0u64;
                if use_near {
                    if x > 0 {
                        near += img[i - 1] as u64;
                    }
                    if y > 0 {
                        near += img[i - w] as u64;
                        if x > 0 {
                            near += img[i - w - 1] as u64;
                        }
                        if x + 1 < w {
                            near += img[i - w + 1] as u64;
                        }
                    }
                }
                let mut past = 0u64;
                if use_past {
                    for yy in y.saturating_sub(1)..(y + 2).min(h) {
                        for xx in x.saturating_sub(1)..(x + 2).min(w) {
                            past += rate[yy * w + xx];
                        }
                    }
                    past >>= 6; // 9 pixels of 8 fractional bits, shifted: 36 x the local rate
                }
                let ctx = level(near, NEAR - 1) * PAST + level(past, PAST - 1);
                let c = img[i] as usize;
                let s = c.min(ESCAPE);
                let p = (freq[ctx][s] as f64 + 0.5) / (total[ctx] as f64 + 0.5 * (ESCAPE + 1) as f64);
                bits -= p.log2();
                if s == ESCAPE {
                    let v = (c - ESCAPE + 1) as f64;
                    bits += 2.0 * v.log2().floor() + 1.0;
                }
                freq[ctx][s] += 1;
                total[ctx] += 1;
            }
        }
        for (r, &c) in rate.iter_mut().zip(img) {
            let target = (c as u64) << 8;
            *r = if target >= *r { *r + ((target - *r) >> k) } else { *r - ((*r - target) >> k) };
        }
    }
    bits / (images.len() * w * h) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (w, h) = args.get(1).and_then(|s| s.split_once('x')).and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))).unwrap_or((512u32, 512u32));
    let frames: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    println!("counts coded as counts: adaptive code length by context ({w}x{h} x {frames} frames of speckle decorrelating over 30 frames; the bench's seeds)");
    println!("{:<20} {:>10} {:>22} {:>22} {:>22}", "set", "floor b/px", "near only: b/px (%)", "past only: b/px (%)", "near+past: b/px (%), k");
    for (name, mean, seed) in [("fixture-photons-0.1", 0.1, 5), ("fixture-photons-1", 1.0, 6), ("fixture-photons-20", 20.0, 7)] {
        let spec = SequenceSpec::of_scene(Scene::Speckle { mean, frames: 30.0 }, DType::U16, w, h, frames, seed);
        let floor = noise_floor_bits(&spec).unwrap_or(f64::NAN);
        let images = generate_images(&spec);
        let (w, h) = (w as usize, h as usize);
        let pct = |b: f64| format!("{b:.4} ({:.1}%)", 100.0 * floor / b);
        let near = adaptive_bits(&images, w, h, 2, true, false);
        let (k_past, past) = (1..=4).map(|k| (k, adaptive_bits(&images, w, h, k, false, true))).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, f64::NAN));
        let (k, both) = (1..=4).map(|k| (k, adaptive_bits(&images, w, h, k, true, true))).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, f64::NAN));
        println!("{name:<20} {floor:>10.4} {:>22} {:>22} {:>22}", pct(near), format!("{}, {k_past}", pct(past)), format!("{}, {k}", pct(both)));
        // The counts stage itself (entropy stage 6), frames coded in order with its state carried.
        let mut scratch = counts::Scratch::default();
        let t0 = std::time::Instant::now();
        let bytes: usize = images
            .iter()
            .enumerate()
            .map(|(k, img)| {
                let codes: Vec<u32> = img.iter().map(|&v| if v <= 0x7fff { 2 * v } else { 0 }).collect();
                counts::encode_with(&codes, 2, w, k > 0, &mut scratch).len()
            })
            .sum();
        let b = 8.0 * bytes as f64 / (images.len() * w * h) as f64;
        let mpx = (images.len() * w * h) as f64 / t0.elapsed().as_secs_f64() / 1e6;
        println!("{:<20} {:>10} counts stage (entropy stage 6): {} at {mpx:.0} Mpixel/s", "", "", pct(b));
        // A genie that knows the previous frame's true rate of every pixel and codes each count
        // at that Poisson rate: what knowing the past exactly is worth, before the speckle's
        // change from one frame to the next (not a bound: a coder may also use the neighbours).
        let means = generate_means(&spec);
        let lnfact = |k: u32| (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
        let mut genie = 0.0;
        for t in 1..images.len() {
            for (&x, &l) in images[t].iter().zip(&means[t - 1]) {
                let l = l.max(1e-9);
                genie -= ((x as f64) * l.ln() - l - lnfact(x)) / std::f64::consts::LN_2;
            }
        }
        let genie = genie / ((images.len() - 1) * w * h) as f64;
        println!("{:<20} {:>10} genie (previous true rate): {}", "", "", pct(genie));
    }
}
