//! Lab: what a spot-tracking reference could give on the sparse-particle fixture (issue 14).
//! The particles fixture's frames are coded through the real coder with, as the temporal
//! reference (a played-back "model"): the generator's noise-free means (oracle); the means only
//! where a spot is (zeros elsewhere); and a causal tracker in f64 (spots found in the previous
//! reconstruction, matched to the one before it, moved by that velocity and drawn as Gaussians),
//! each also coded directly by the adaptive stage with the intensity context taken from the
//! reference; and a diagnosis of the tracker against the generator's true spots.
//! Measured 2026-12-05 (seed 4, `docs/results/issue14-particles-lab.txt`): auto 7.809, oracle
//! 8.536 (8.707 with the intensity of the reference), tracker 8.159 (8.276); JPEG-XL 7.656.
//! `cargo run --release --example particle_lab [SEED] [background|spots]`
use sha2::Digest;
use std::sync::Arc;
use tezipfs::codec::entropy::{Coder, Side, Stage};
use tezipfs::codec::predict::{ModelHandle, Playback};
use tezipfs::codec::{encode_window, DType, FormatSpec, Options, PredictorChoice, RawSpec};
use tezipfs::fixtures::{generate_images, generate_means, generate_raw, noise_floor_bits, Scene, SequenceSpec};

const W: usize = 512;
const H: usize = 512;
static REFINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn size(files: &[Vec<u8>], opts: &Options) -> usize {
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    encode_window(&refs, opts).expect("encode").blob.len()
}

fn with_refs(name: &str, refs: Vec<Vec<u32>>, base: &Options) -> Options {
    let p = Playback::new(sha2::Sha256::digest(name.as_bytes()).into(), refs);
    Options { model: Some(ModelHandle(Arc::new(p))), predictor: PredictorChoice::Prednet, ..base.clone() }
}

/// A spot: centre, flux (photons above the dark level) and squared width.
#[derive(Clone, Debug)]
struct Spot {
    x: f64,
    y: f64,
    flux: f64,
    s2: f64,
}

/// Bright local maxima of `img` with their centroid, flux and width over a (2r+1)^2 window.
fn find(img: &[u32], thr: u32, r: i64, bg: f64) -> Vec<Spot> {
    let mut out = Vec::new();
    for y in 1..H - 1 {
        for x in 1..W - 1 {
            let v = img[y * W + x];
            if v < thr {
                continue;
            }
            let mut peak = true;
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    if dx == 0 && dy == 0 {
                        continue;
                    }
                    let j = (y as i64 + dy) as usize * W + (x as i64 + dx) as usize;
                    let u = img[j];
                    // ties: the first in raster order is the peak
                    if u > v || (u == v && (dy < 0 || (dy == 0 && dx < 0))) {
                        peak = false;
                    }
                }
            }
            if !peak {
                continue;
            }
            let (mut f, mut sx, mut sy, mut sxx) = (0.0, 0.0, 0.0, 0.0);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                    if xx < 0 || yy < 0 || xx >= W as i64 || yy >= H as i64 {
                        continue;
                    }
                    let v = (img[yy as usize * W + xx as usize] as f64 - bg).max(0.0);
                    f += v;
                    sx += v * dx as f64;
                    sy += v * dy as f64;
                    sxx += v * (dx * dx + dy * dy) as f64;
                }
            }
            let (cx, cy) = (sx / f, sy / f);
            let s2 = ((sxx / f - cx * cx - cy * cy) / 2.0).clamp(0.2, 4.0);
            out.push(Spot { x: x as f64 + cx, y: y as f64 + cy, flux: f, s2 });
        }
    }
    out
}

/// Gauss-Newton fit of every spot's position, amplitude and width over a (2r+1)^2 window,
/// the other spots' models subtracted (two passes), Poisson weights.
#[allow(clippy::needless_range_loop)]
fn fit_all(img: &[u32], spots: &[Spot], r: i64, bg: f64) -> Vec<Spot> {
    let mut cur: Vec<Spot> = spots.to_vec();
    let model_at = |s: &Spot, x: f64, y: f64| {
        let amp = s.flux / (2.0 * std::f64::consts::PI * s.s2);
        amp * (-((x - s.x).powi(2) + (y - s.y).powi(2)) / (2.0 * s.s2)).exp()
    };
    for _pass in 0..2 {
        let mut others = vec![0.0f64; W * H];
        for s in &cur {
            let (cx, cy) = (s.x.round() as i64, s.y.round() as i64);
            for y in (cy - 5).max(0)..(cy + 6).min(H as i64) {
                for x in (cx - 5).max(0)..(cx + 6).min(W as i64) {
                    others[y as usize * W + x as usize] += model_at(s, x as f64, y as f64);
                }
            }
        }
        let mut next = Vec::with_capacity(cur.len());
        for s in &cur {
            let (cx, cy) = (s.x.round() as i64, s.y.round() as i64);
            let mut p = [s.x, s.y, s.flux / (2.0 * std::f64::consts::PI * s.s2), s.s2];
            let mut pts = Vec::new();
            for y in (cy - r).max(0)..(cy + r + 1).min(H as i64) {
                for x in (cx - r).max(0)..(cx + r + 1).min(W as i64) {
                    let i = y as usize * W + x as usize;
                    let v = img[i] as f64 - bg - (others[i] - model_at(s, x as f64, y as f64));
                    pts.push((x as f64, y as f64, v));
                }
            }
            for _ in 0..6 {
                let mut a = [[0.0f64; 4]; 4];
                let mut b = [0.0f64; 4];
                for &(x, y, v) in &pts {
                    let d2 = (x - p[0]).powi(2) + (y - p[1]).powi(2);
                    let e = (-d2 / (2.0 * p[3])).exp();
                    let g = p[2] * e;
                    let j = [g * (x - p[0]) / p[3], g * (y - p[1]) / p[3], e, g * d2 / (2.0 * p[3] * p[3])];
                    let wgt = 1.0 / (g + bg + 1.0);
                    for u in 0..4 {
                        b[u] += wgt * j[u] * (v - g);
                        for k in 0..4 {
                            a[u][k] += wgt * j[u] * j[k];
                        }
                    }
                }
                for u in 0..4 {
                    a[u][u] *= 1.001;
                    a[u][u] += 1e-9;
                }
                let Some(d) = solve4(a, b) else { break };
                p[0] += d[0].clamp(-0.5, 0.5);
                p[1] += d[1].clamp(-0.5, 0.5);
                p[2] = (p[2] + d[2]).max(1.0);
                p[3] = (p[3] + d[3]).clamp(0.15, 6.0);
            }
            if (p[0] - s.x).abs() > 1.5 || (p[1] - s.y).abs() > 1.5 {
                next.push(s.clone());
            } else {
                next.push(Spot { x: p[0], y: p[1], flux: p[2] * 2.0 * std::f64::consts::PI * p[3], s2: p[3] });
            }
        }
        cur = next;
    }
    cur
}

#[allow(clippy::needless_range_loop)]
fn solve4(mut a: [[f64; 4]; 4], mut b: [f64; 4]) -> Option<[f64; 4]> {
    for c in 0..4 {
        let piv = (c..4).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[piv][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, piv);
        b.swap(c, piv);
        for r in 0..4 {
            if r != c {
                let f = a[r][c] / a[c][c];
                for k in 0..4 {
                    a[r][k] -= f * a[c][k];
                }
                b[r] -= f * b[c];
            }
        }
    }
    Some([b[0] / a[0][0], b[1] / a[1][1], b[2] / a[2][2], b[3] / a[3][3]])
}

/// Draw spots as Gaussians of their flux and width onto `bg`.
fn draw(spots: &[Spot], bg: f64) -> Vec<u32> {
    let mut m = vec![bg; W * H];
    for s in spots {
        let amp = s.flux / (2.0 * std::f64::consts::PI * s.s2);
        let r = (3.0 * s.s2.sqrt()).ceil() as i64;
        let (cx, cy) = (s.x.round() as i64, s.y.round() as i64);
        for y in (cy - r).max(0)..(cy + r + 1).min(H as i64) {
            for x in (cx - r).max(0)..(cx + r + 1).min(W as i64) {
                let d2 = (x as f64 - s.x).powi(2) + (y as f64 - s.y).powi(2);
                m[y as usize * W + x as usize] += amp * (-d2 / (2.0 * s.s2)).exp();
            }
        }
    }
    m.iter().map(|&v| v.round().max(0.0) as u32).collect()
}

/// The causal tracker's reference of frame t from frames t-1 and t-2.
fn track(prev: &[u32], older: Option<&[u32]>, thr: u32, r: i64, dmax: f64, pbg: f64, moving_only: bool) -> Vec<u32> {
    draw(&track_spots(prev, older, thr, r, dmax, moving_only), pbg)
}

/// The true spots of frame `t` of the particles scene (the generator's draws, replayed).
fn truth(seed: u64, n: usize, t: usize) -> Vec<Spot> {
    let mut rng = tezipfs::fixtures::Rng::new(seed);
    (0..n)
        .map(|_| {
            let x = rng.uniform() * W as f64;
            let y = rng.uniform() * H as f64;
            let vx = 1.0 + rng.uniform() * 2.0;
            let vy = (rng.uniform() - 0.5) * 2.0;
            let sigma = 0.6 + rng.uniform() * 0.8;
            let amp = 2000.0 * (0.2 + 0.8 * rng.uniform());
            let s2 = sigma * sigma;
            Spot { x: (x + t as f64 * vx).rem_euclid(W as f64), y: (y + t as f64 * vy).rem_euclid(H as f64), flux: amp * 2.0 * std::f64::consts::PI * s2, s2 }
        })
        .collect()
}

fn diagnose(seed: u64, n: usize, images: &[Vec<u32>], thr: u32, r: i64) {
    let (mut missed, mut total, mut dpos, mut lflux, mut ls2, mut far) = (0, 0, 0.0, 0.0, 0.0, 0);
    for t in 2..images.len() {
        let pred = track_spots(&images[t - 1], Some(&images[t - 2]), thr, r, 6.0, true);
        for s in truth(seed, n, t) {
            if s.x < 8.0 || s.y < 8.0 || s.x > W as f64 - 8.0 || s.y > H as f64 - 8.0 {
                continue;
            }
            total += 1;
            let best = pred.iter().map(|p| (((p.x - s.x).powi(2) + (p.y - s.y).powi(2)).sqrt(), p)).min_by(|a, b| a.0.total_cmp(&b.0));
            match best {
                Some((d, p)) if d < 1.0 => {
                    dpos += d;
                    lflux += (p.flux / s.flux).ln().abs();
                    ls2 += (p.s2 / s.s2).ln().abs();
                    if d > 0.25 {
                        far += 1;
                    }
                }
                _ => missed += 1,
            }
        }
    }
    let m = (total - missed) as f64;
    println!("diagnosis r {r}: {total} true spots, {missed} without a predicted spot within 1 px, {far} off by > 0.25 px; mean position error {:.3} px, mean |ln flux ratio| {:.3}, mean |ln sigma^2 ratio| {:.3}", dpos / m, lflux / m, ls2 / m);
}

fn track_spots(prev: &[u32], older: Option<&[u32]>, thr: u32, r: i64, dmax: f64, moving_only: bool) -> Vec<Spot> {
    let bg = 0.5;
    let mut p1 = find(prev, thr, r, bg);
    if REFINE.load(std::sync::atomic::Ordering::Relaxed) {
        p1 = fit_all(prev, &p1, r, bg);
    }
    let Some(older) = older else { return if moving_only { Vec::new() } else { p1 } };
    let mut p2 = find(older, thr, r, bg);
    if REFINE.load(std::sync::atomic::Ordering::Relaxed) {
        p2 = fit_all(older, &p2, r, bg);
    }
    let mut moved = Vec::new();
    for s in &p1 {
        let best = p2
            .iter()
            .map(|o| {
                let (dx, dy) = (s.x - o.x, s.y - o.y);
                let d = (dx * dx + dy * dy).sqrt();
                let fr = (s.flux / o.flux).ln().abs();
                (d + 4.0 * fr, dx, dy, d, o)
            })
            .filter(|c| c.3 <= dmax)
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match best {
            Some((_, dx, dy, _, o)) => moved.push(Spot { x: s.x + dx, y: s.y + dy, flux: 0.5 * (s.flux + o.flux), s2: 0.5 * (s.s2 + o.s2) }),
            None if !moving_only => moved.push(s.clone()),
            None => {}
        }
    }
    moved
}

fn zz(r: i64) -> u32 {
    if r >= 0 {
        (2 * r) as u32
    } else {
        (-2 * r - 1) as u32
    }
}

/// Bytes of frames 1.. coded by the adaptive stage as residuals from `preds[k]` (the reference
/// of frame k), with or without the intensity context taken from that reference.
fn adaptive_bytes(coder: &mut Coder, images: &[Vec<u32>], preds: &[Vec<u32>], intensity: bool) -> usize {
    let n = W * H;
    let mut prev_codes: Vec<u32> = vec![0; n];
    let mut bytes = 0usize;
    for k in 1..images.len() {
        let codes: Vec<u32> = (0..n).map(|i| zz(images[k][i] as i64 - preds[k][i] as i64)).collect();
        let side = Side { prev: (k > 1).then_some(&prev_codes[..]), carry: k > 1, intensity: intensity.then_some(&preds[k][..]), ..Side::default() };
        bytes += coder.encode(Stage::Adaptive, &codes, 2, W, side).unwrap().len();
        prev_codes = codes;
    }
    bytes
}

/// Bits of frames 1.. under an adaptive multi-symbol model of the residual per context of the
/// predicted intensity (four levels an octave): a stand-in for a coder that knows the scale.
fn bucket_bits(images: &[Vec<u32>], preds: &[Vec<u32>]) -> f64 {
    const SYMS: usize = 2048;
    let mut counts = vec![vec![0u32; SYMS + 1]; 64];
    let mut totals = vec![0u32; 64];
    let mut bits = 0.0;
    for k in 1..images.len() {
        for i in 0..W * H {
            let p = preds[k][i] as f64;
            let b = if p < 1.0 { 0 } else { (1.0 + 4.0 * p.log2()).min(63.0) as usize };
            let z = zz(images[k][i] as i64 - preds[k][i] as i64) as usize;
            let sym = z.min(SYMS);
            let c = &mut counts[b];
            let num = c[sym] as f64 * 8.0 + 1.0;
            let den = totals[b] as f64 * 8.0 + (SYMS + 1) as f64;
            bits -= (num / den).log2();
            if sym == SYMS {
                bits += 24.0;
            }
            c[sym] += 1;
            totals[b] += 1;
        }
    }
    bits
}

fn main() {
    let seed = std::env::args().nth(1).map(|s| s.parse().expect("seed")).unwrap_or(4);
    let mut spec = SequenceSpec::of_scene(Scene::Particles, DType::U16, W as u32, H as u32, 32, seed);
    match std::env::args().nth(2).as_deref() {
        Some("background") => spec.spots = 0,
        Some("spots") => spec.dark = 0.0,
        _ => {}
    }
    let files = generate_raw(&spec);
    let images = generate_images(&spec);
    let means = generate_means(&spec);
    let floor = noise_floor_bits(&spec).expect("a floor");
    let raw_bytes = (W * H * 2 * files.len()) as f64;
    let base = Options { format: FormatSpec::Raw(RawSpec { width: W as u32, height: H as u32, dtype: DType::U16, skip: 0 }), threads: 1, ..Options::default() };
    let report = |label: &str, bytes: usize| {
        let bpp = bytes as f64 * 8.0 / (W * H * files.len()) as f64;
        println!("{label:50} ratio {:7.3}  {:.4} b/px  {:5.1}% of floor", raw_bytes / bytes as f64, bpp, 100.0 * floor / bpp);
    };
    println!("particles seed {seed}: floor {floor:.4} b/px, ratio {:.3}", 16.0 / floor);
    report("auto (classical)", size(&files, &base));
    let oracle: Vec<Vec<u32>> = means.iter().map(|m| m.iter().map(|&v| v.round() as u32).collect()).collect();
    let mut coder = Coder::new(3).unwrap();
    let key = size(&files[..1], &base);
    let direct = |label: &str, preds: &[Vec<u32>], coder: &mut Coder| {
        report(&format!("{label}: adaptive"), key + adaptive_bytes(coder, &images, preds, false));
        report(&format!("{label}: adaptive + intensity of the reference"), key + adaptive_bytes(coder, &images, preds, true));
        report(&format!("{label}: per-intensity adaptive symbols"), key + (bucket_bits(&images, preds) / 8.0) as usize);
    };
    direct("oracle", &oracle, &mut coder);
    let oracle_prev: Vec<Vec<u32>> = (0..oracle.len()).map(|k| oracle[k.saturating_sub(1)].clone()).collect();
    direct("noise-free previous frame", &oracle_prev, &mut coder);
    report("oracle (noise-free means)", size(&files, &with_refs("oracle", oracle.clone(), &base)));
    for t in [1.0, 3.0, 10.0] {
        let spots: Vec<Vec<u32>> = means.iter().map(|m| m.iter().map(|&v| if v > 0.5 + t { v.round() as u32 } else { 0 }).collect()).collect();
        report(&format!("oracle on spots (mean > dark + {t}), 0 elsewhere"), size(&files, &with_refs(&format!("spots{t}"), spots, &base)));
    }
    for (r, refine) in [(3, false), (3, true), (4, true)] {
        REFINE.store(refine, std::sync::atomic::Ordering::Relaxed);
        print!("refine {refine} ");
        diagnose(seed, spec.spots, &images, 20, r);
    }
    if std::env::args().nth(2).is_some() {
        return;
    }
    for (thr, r, dmax, pbg, mo, refine) in [(20, 3, 6.0, 0.0, true, false), (20, 3, 6.0, 0.0, true, true), (20, 4, 6.0, 0.0, true, true)] {
        REFINE.store(refine, std::sync::atomic::Ordering::Relaxed);
        for (src, name) in [(&images, "images"), (&oracle, "noise-free means")] {
            let mut refs = vec![vec![0u32; W * H]];
            for t in 1..images.len() {
                refs.push(track(&src[t - 1], (t >= 2).then(|| &src[t - 2][..]), thr, r, dmax, pbg, mo));
            }
            direct(&format!("tracker on {name} r {r} refine {refine}"), &refs, &mut coder);
        }
    }
}
