//! Lab: how close to the noise floor does a prediction from a denoised reference come?
//! The reference is a running mean of the past frames (decay d/256); the predictor a
//! least-squares blend of the current frame's causal neighbours, the running mean around the
//! pixel and the previous frame around the pixel (plain or weighted by 1/(intensity+1)); the
//! codes go through the adaptive stage with and without its intensity context. On fixtures the
//! generator's noise-free means give the oracle row.
//! Measured 2026-12-05 (lossless, 32 frames; ratio without / with the intensity context): detector-u16
//! floor 3.712, oracle 3.583 / 3.634, linear on the previous frame 3.479 / 3.530, weighted 3.504 /
//! 3.550, previous frame and running mean (7/8) in 3x3 with 5x5 and 9x9 means, weighted 3.553 /
//! 3.599; detector-u8 floor 2.636, oracle 2.520 / 2.557, 2.436 / 2.468, 2.441 / 2.474, 2.469 / 2.499;
//! ctc-fluo-nuclei 2.593 / 2.623, weighted 2.649 / 2.682, with the running mean 2.645 / 2.670.
//! BUCKETS=1 adds a third figure to each: an adaptive multi-symbol model of the residual per
//! quarter-octave of the prediction and 4 levels of the neighbours' residuals (a coder that
//! conditions finely on the predicted intensity). Measured 2026-12-05 on detector-u16: oracle
//! 3.640 (98.1% of the floor; the adaptive stage with the intensity context 3.634), the causal
//! rows +0.2-0.7% over the adaptive stage with the intensity context: on this fixture the
//! predictor, not the coder, is what is left.
//! `cargo run --release --example denoise_lab DIR...`
use tezipfs::codec::entropy::{Coder, Side, Stage};
use tezipfs::fixtures::{read_raw_dir, RawDir};

fn zz(r: i64) -> u32 {
    if r >= 0 {
        (2 * r) as u32
    } else {
        (-2 * r - 1) as u32
    }
}

/// Which taps a blend reads.
#[derive(Clone, Copy)]
struct Taps {
    prev: bool,
    mean: bool,
    /// 3x3 instead of 5-point neighbourhoods, plus box sums of the reference over 5x5 and 9x9.
    wide: bool,
}

fn taps(t: Taps, cur: &[u32], prev: &[u32], mean: &[f64], i: usize, w: usize) -> Vec<f64> {
    let n = cur.len();
    let x = i % w;
    let (l, u, r, d) = (x > 0, i >= w, x + 1 < w, i + w < n);
    let base = if t.mean { mean[i] } else { prev[i] as f64 };
    let gc = |ok: bool, j: usize| if ok { cur[j] as f64 } else { base };
    let mut v = vec![gc(l, i.wrapping_sub(1)), gc(u, i.wrapping_sub(w)), gc(l && u, i.wrapping_sub(w + 1)), gc(u && r, i.wrapping_sub(w).wrapping_add(1))];
    let five = |img: &dyn Fn(usize) -> f64, v: &mut Vec<f64>| {
        v.push(img(i));
        v.push(if l { img(i - 1) } else { img(i) });
        v.push(if r { img(i + 1) } else { img(i) });
        v.push(if u { img(i - w) } else { img(i) });
        v.push(if d { img(i + w) } else { img(i) });
    };
    let nine = |img: &dyn Fn(usize) -> f64, v: &mut Vec<f64>| {
        let y = i / w;
        let h = n / w;
        for (dy, dx) in [(-1i64, -1i64), (-1, 1), (1, -1), (1, 1)] {
            let (xx, yy) = ((x as i64 + dx).clamp(0, w as i64 - 1) as usize, (y as i64 + dy).clamp(0, h as i64 - 1) as usize);
            v.push(img(yy * w + xx));
        }
        for r in [2i64, 4] {
            let mut s = 0.0;
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = ((x as i64 + dx).clamp(0, w as i64 - 1) as usize, (y as i64 + dy).clamp(0, h as i64 - 1) as usize);
                    s += img(yy * w + xx);
                }
            }
            v.push(s / ((2 * r + 1) * (2 * r + 1)) as f64);
        }
    };
    if t.prev {
        five(&|j| prev[j] as f64, &mut v);
        if t.wide {
            nine(&|j| prev[j] as f64, &mut v);
        }
    }
    if t.mean {
        five(&|j| mean[j], &mut v);
        if t.wide {
            nine(&|j| mean[j], &mut v);
        }
    }
    v.push(1.0);
    v
}

#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let d = b.len();
    for col in 0..d {
        let piv = (col..d).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap();
        a.swap(col, piv);
        b.swap(col, piv);
        for r in col + 1..d {
            let f = a[r][col] / a[col][col];
            for c in col..d {
                a[r][c] -= f * a[col][c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = vec![0f64; d];
    for r in (0..d).rev() {
        let s: f64 = (r + 1..d).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

/// Bits of `frames[1..]` under an adaptive multi-symbol model of the residual from `preds` per
/// context: the quarter-octave of the prediction, times 4 levels of the left and upper residuals'
/// magnitude (a stand-in for a coder that conditions finely on the predicted intensity).
fn bucket_bits(frames: &[Vec<u32>], preds: &[Vec<u32>], w: usize) -> f64 {
    const SYMS: usize = 4096;
    const CTX: usize = 80 * 4;
    let mut counts = vec![vec![0u32; SYMS + 1]; CTX];
    let mut totals = vec![0u32; CTX];
    let mut bits = 0.0;
    for (f, p) in frames[1..].iter().zip(preds) {
        let r: Vec<i64> = f.iter().zip(p).map(|(&a, &b)| a as i64 - b as i64).collect();
        for i in 0..f.len() {
            let pv = p[i] as f64;
            let b = if pv < 1.0 { 0 } else { (1.0 + 4.0 * pv.log2()).min(79.0) as usize };
            let act = if i % w > 0 && i >= w { (r[i - 1].abs() + r[i - w].abs()) as f64 / (2.0 * pv.max(1.0).sqrt()) } else { 1.0 };
            let a = if act < 0.5 {
                0
            } else if act < 1.0 {
                1
            } else if act < 2.0 {
                2
            } else {
                3
            };
            let c = b * 4 + a;
            let sym = (zz(r[i]) as usize).min(SYMS);
            bits -= ((counts[c][sym] as f64 * 8.0 + 1.0) / (totals[c] as f64 * 8.0 + (SYMS + 1) as f64)).log2();
            if sym == SYMS {
                bits += 32.0;
            }
            counts[c][sym] += 1;
            totals[c] += 1;
        }
    }
    bits
}

#[allow(clippy::needless_range_loop)]
fn main() {
    let mut coder = Coder::new(3).unwrap();
    // BOUND=E: code in closed loop under abs:E (the escapes' bytes not counted) instead.
    let bound: u32 = std::env::var("BOUND").ok().and_then(|b| b.parse().ok()).unwrap_or(0);
    for path in std::env::args().skip(1) {
        let dir = std::path::Path::new(&path);
        let RawDir { width: w, height: h, dtype, images: frames, noise_floor_bits, .. } = read_raw_dir(dir, 32).expect("a directory of raw frames");
        let n = w * h;
        let mask = dtype.mask();
        let raw = (frames.len() - 1) * n * dtype.bytes();
        let mut line = format!("{}:", path.rsplit('/').next().unwrap());
        if let Some(bits) = noise_floor_bits {
            line += &format!(" floor {:.3}", 8.0 * dtype.bytes() as f64 / bits);
        }
        // The oracle, when meta.json names a generated scene.
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let oracle = meta["scene"].as_str().and_then(|scene| {
            let seed: u64 = meta["source"].as_str()?.rsplit(' ').next()?.parse().ok()?;
            let spec = tezipfs::fixtures::SequenceSpec::of_scene(scene.parse().ok()?, dtype, w as u32, h as u32, frames.len(), seed);
            Some(tezipfs::fixtures::generate_means(&spec))
        });
        let code_with = |coder: &mut Coder, preds: &[Vec<u32>], refs: &[Vec<u32>], intensity: bool| -> f64 {
            let mut prev_codes: Vec<u32> = vec![0; n];
            let mut bytes = 0usize;
            for k in 1..frames.len() {
                let codes: Vec<u32> = (0..n).map(|i| zz(frames[k][i] as i64 - preds[k - 1][i] as i64)).collect();
                let side = Side { prev: (k > 1).then_some(&prev_codes[..]), carry: k > 1, intensity: intensity.then_some(&refs[k - 1][..]), ..Side::default() };
                bytes += coder.encode(Stage::Adaptive, &codes, dtype.bytes().max(2), w, side).unwrap().len();
                prev_codes = codes;
            }
            raw as f64 / bytes as f64
        };
        if let (Some(means), 0) = (&oracle, bound) {
            let preds: Vec<Vec<u32>> = means[1..].iter().map(|m| m.iter().map(|&v| v.round().min(mask as f64) as u32).collect()).collect();
            line += &format!("  oracle {:.3}/{:.3}", code_with(&mut coder, &preds, &preds, false), code_with(&mut coder, &preds, &preds, true));
            if std::env::var("BUCKETS").is_ok() {
                line += &format!("/{:.3}", raw as f64 * 8.0 / bucket_bits(&frames, &preds, w));
            }
        }
        for (label, decay, t, weighted) in [
            ("prev", 0.0, Taps { prev: true, mean: false, wide: false }, false),
            ("prev-w", 0.0, Taps { prev: true, mean: false, wide: false }, true),
            ("prev-wide-w", 0.0, Taps { prev: true, mean: false, wide: true }, true),
            ("both.75-wide-w", 0.75, Taps { prev: true, mean: true, wide: true }, true),
            ("both.875-w", 0.875, Taps { prev: true, mean: true, wide: false }, true),
            ("both.875-wide-w", 0.875, Taps { prev: true, mean: true, wide: true }, true),
        ] {
            // The running mean before each frame k >= 1.
            let mut ema: Vec<f64> = frames[0].iter().map(|&v| v as f64).collect();
            let mut means = Vec::new();
            for f in frames.iter().skip(1) {
                means.push(ema.clone());
                for i in 0..n {
                    ema[i] = decay * ema[i] + (1.0 - decay) * f[i] as f64;
                }
            }
            // Fit on every third pixel of frames 4.. (optimistic: the fit sees the coded frames).
            let d = taps(t, &frames[1], &frames[0], &means[0], 0, w).len();
            let mut ata = vec![vec![0f64; d]; d];
            let mut atb = vec![0f64; d];
            for k in 4..frames.len() {
                for i in (0..n).step_by(3) {
                    let v = taps(t, &frames[k], &frames[k - 1], &means[k - 1], i, w);
                    let wt = if weighted { 1.0 / (means[k - 1][i].max(frames[k - 1][i] as f64) + 1.0) } else { 1.0 };
                    let y = frames[k][i] as f64;
                    for r in 0..d {
                        atb[r] += wt * v[r] * y;
                        for c in 0..d {
                            ata[r][c] += wt * v[r] * v[c];
                        }
                    }
                }
            }
            for (r, row) in ata.iter_mut().enumerate() {
                row[r] += 1e-6 * row[r].abs().max(1.0);
            }
            let coefs = solve(ata, atb);
            if bound > 0 {
                // Closed loop under abs:bound: every tap reads reconstructions (the key frame
                // kept exact), the running mean too; codes are zigzag(q) + 1.
                let step = 2 * bound as i64 + 1;
                let mut recon_prev = frames[0].clone();
                let mut ema: Vec<f64> = frames[0].iter().map(|&v| v as f64).collect();
                let mut prev_codes: Vec<u32> = vec![0; n];
                let mut bytes = 0usize;
                for k in 1..frames.len() {
                    let mut r = vec![0u32; n];
                    let mut codes = vec![0u32; n];
                    for i in 0..n {
                        let v = taps(t, &r, &recon_prev, &ema, i, w);
                        let p = (v.iter().zip(&coefs).map(|(a, b)| a * b).sum::<f64>().round()).clamp(0.0, mask as f64) as i64;
                        let x = frames[k][i] as i64;
                        let q = (x - p).signum() * (((x - p).abs() + bound as i64) / step);
                        let rec = p + q * step;
                        if rec < 0 || rec > mask as i64 || (rec - x).abs() > bound as i64 {
                            r[i] = x as u32;
                            codes[i] = 0;
                        } else {
                            r[i] = rec as u32;
                            codes[i] = zz(q) + 1;
                        }
                    }
                    let refr: Vec<u32> = if t.mean { ema.iter().map(|&v| v.round() as u32).collect() } else { recon_prev.clone() };
                    let side = Side { prev: (k > 1).then_some(&prev_codes[..]), carry: k > 1, quantised: true, intensity: Some(&refr[..]), ..Side::default() };
                    bytes += coder.encode(Stage::Adaptive, &codes, dtype.bytes().max(2), w, side).unwrap().len();
                    prev_codes = codes;
                    for i in 0..n {
                        ema[i] = decay * ema[i] + (1.0 - decay) * r[i] as f64;
                    }
                    recon_prev = r;
                }
                line += &format!("  {label} {:.3}", raw as f64 / bytes as f64);
                continue;
            }
            let preds: Vec<Vec<u32>> = (1..frames.len())
                .map(|k| {
                    (0..n)
                        .map(|i| {
                            let v = taps(t, &frames[k], &frames[k - 1], &means[k - 1], i, w);
                            let p: f64 = v.iter().zip(&coefs).map(|(a, b)| a * b).sum();
                            p.round().clamp(0.0, mask as f64) as u32
                        })
                        .collect()
                })
                .collect();
            let refs: Vec<Vec<u32>> =
                (1..frames.len()).map(|k| if t.mean { means[k - 1].iter().map(|&v| v.round() as u32).collect() } else { frames[k - 1].clone() }).collect();
            line += &format!("  {label} {:.3}/{:.3}", code_with(&mut coder, &preds, &refs, false), code_with(&mut coder, &preds, &refs, true));
            if std::env::var("BUCKETS").is_ok() {
                line += &format!("/{:.3}", raw as f64 * 8.0 / bucket_bits(&frames, &preds, w));
            }
        }
        println!("{line}");
    }
}
