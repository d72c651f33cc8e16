//! The per-window least-squares predictor (`linear`, predictor id 5).
//!
//! A predicted frame's pixel is a fixed-point linear blend of nine neighbours plus a constant:
//! the already reconstructed left, up, up-left and up-right pixels of the current frame and the
//! previous reconstructed frame at the pixel and its left, right, up and down neighbours.
//! The weights are fitted by least squares on the window's first frames (floating point, in the
//! encoder only), rounded to integers with [`SHIFT`] fractional bits and stored in the blob, so
//! the prediction itself is integer-only and bit-exact on every machine.
//!
//! On counts (unsigned integer pixels) the fit weighs each pixel by `1 / (reference + 1)`:
//! photon noise grows with the intensity, and a plain least-squares fit would follow the few
//! bright pixels, whose errors are large but cost few bits each, at the expense of the dark
//! majority (`examples/denoise_lab.rs`: lossless ctc-fluo-nuclei 2.2% smaller with `linear`,
//! the detector fixtures 0.2-0.7%).

/// Weights per tap, then the constant term.
pub const TAPS: usize = 9;
pub const COEFS: usize = TAPS + 1;
/// Fractional bits of the weights.
pub const SHIFT: u32 = 14;
/// Largest weight magnitude a blob may hold (keeps the sums far inside i64).
pub const MAX_WEIGHT: i32 = 1 << 20;

/// Whether `coefs` is a valid coefficient set.
pub fn valid(coefs: &[i32]) -> bool {
    coefs.len() == COEFS && coefs[..TAPS].iter().all(|w| w.unsigned_abs() <= MAX_WEIGHT as u32)
}

/// The taps of pixel `i`: a missing neighbour (frame border) is replaced by `prev[i]`.
#[inline(always)]
fn taps(recon: &[u32], prev: &[u32], i: usize, width: usize) -> [i64; TAPS] {
    let n = prev.len();
    let x = i % width;
    let p = prev[i];
    let (l, u, r, d) = (x > 0, i >= width, x + 1 < width, i + width < n);
    let g = |ok: bool, img: &[u32], j: usize| if ok { img[j] } else { p } as i64;
    [
        g(l, recon, i.wrapping_sub(1)),
        g(u, recon, i.wrapping_sub(width)),
        g(l && u, recon, i.wrapping_sub(width + 1)),
        g(u && r, recon, i.wrapping_sub(width).wrapping_add(1)),
        p as i64,
        g(l, prev, i.wrapping_sub(1)),
        // (A frame's last row may be partial: its right neighbour, then, is missing too.)
        g(r && i + 1 < n, prev, i + 1),
        g(u, prev, i.wrapping_sub(width)),
        g(d, prev, i + width),
    ]
}

/// The prediction of pixel `i` from the reconstructed pixels before it (`recon`) and the
/// previous reconstructed frame, clamped to `0..=mask`. `coefs` must be [`valid`].
#[inline(always)]
pub fn predict(coefs: &[i32], recon: &[u32], prev: &[u32], i: usize, width: usize, mask: u32) -> u32 {
    blend(coefs, taps(recon, prev, i, width), mask)
}

/// [`predict`] for a pixel that has all its neighbours (not on the frame's border): the same
/// value without the border tests.
#[inline(always)]
pub fn predict_interior(coefs: &[i32], recon: &[u32], prev: &[u32], i: usize, width: usize, mask: u32) -> u32 {
    let t = [
        recon[i - 1] as i64,
        recon[i - width] as i64,
        recon[i - width - 1] as i64,
        recon[i - width + 1] as i64,
        prev[i] as i64,
        prev[i - 1] as i64,
        prev[i + 1] as i64,
        prev[i - width] as i64,
        prev[i + width] as i64,
    ];
    blend(coefs, t, mask)
}

#[inline(always)]
fn blend(coefs: &[i32], t: [i64; TAPS], mask: u32) -> u32 {
    let mut sum = coefs[TAPS] as i64;
    for k in 0..TAPS {
        sum += coefs[k] as i64 * t[k];
    }
    ((sum + (1 << (SHIFT - 1))) >> SHIFT).clamp(0, mask as i64) as u32
}

/// How the fit weighs the pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weighting {
    /// Every pixel alike (signed and float images, whose integer images are not intensities).
    Uniform,
    /// By `1 / (reference + 1)`: counts, whose noise grows with the intensity.
    Counts,
}

impl Weighting {
    /// The weighting of a pixel type.
    pub fn of(dtype: crate::codec::DType) -> Weighting {
        if dtype.is_float() || dtype.is_signed_int() {
            Weighting::Uniform
        } else {
            Weighting::Counts
        }
    }
}

/// Fit the weights on consecutive frame pairs (`frames[k - 1]` predicting `frames[k]`) by least
/// squares (ridge-regularised), on every other pixel. None when there is no pair.
pub fn fit(frames: &[&[u32]], width: usize, weighting: Weighting) -> Option<Vec<i32>> {
    let pairs: Vec<(&[u32], &[u32])> = frames.windows(2).map(|p| (p[0], p[1])).collect();
    fit_pairs(&pairs, width, weighting)
}

/// [`fit`] on pairs of (reference, frame): the reference is what the predictor reads as the
/// previous frame (a learned model's correction of it, when the window has one).
#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
pub fn fit_pairs(pairs: &[(&[u32], &[u32])], width: usize, weighting: Weighting) -> Option<Vec<i32>> {
    if pairs.is_empty() || width == 0 {
        return None;
    }
    const D: usize = COEFS;
    let mut ata = [[0f64; D]; D];
    let mut atb = [0f64; D];
    let mut count = 0usize;
    let mut total_weight = 0f64;
    for &(prev, cur) in pairs {
        if prev.len() != cur.len() {
            return None;
        }
        // Centre the values around the previous pixel so the sums stay well conditioned.
        for i in (0..cur.len()).step_by(2) {
            let t = taps(cur, prev, i, width);
            let base = t[4] as f64;
            let mut f = [0f64; D];
            for k in 0..TAPS {
                f[k] = t[k] as f64 - base;
            }
            f[TAPS] = 1.0;
            let y = cur[i] as f64 - base;
            let weight = match weighting {
                Weighting::Uniform => 1.0,
                Weighting::Counts => 1.0 / (base + 1.0),
            };
            for r in 0..D {
                atb[r] += weight * f[r] * y;
                for c in r..D {
                    ata[r][c] += weight * f[r] * f[c];
                }
            }
            count += 1;
            total_weight += weight;
        }
    }
    if count < 2 * D {
        return None;
    }
    for r in 0..D {
        for c in 0..r {
            ata[r][c] = ata[c][r];
        }
        ata[r][r] += 1e-3 * total_weight;
    }
    let w = solve(ata, atb)?;
    // The centred model predicts base + sum w_k (t_k - base) + w_c: the weight of the previous
    // pixel gets 1 - sum of the others.
    let mut coefs = vec![0i32; COEFS];
    let scale = (1u64 << SHIFT) as f64;
    let mut sum_other = 0i64;
    for k in 0..TAPS {
        if k == 4 {
            continue;
        }
        let q = (w[k] * scale).round().clamp(-(MAX_WEIGHT as f64), MAX_WEIGHT as f64) as i32;
        coefs[k] = q;
        sum_other += q as i64;
    }
    coefs[4] = ((1i64 << SHIFT) - sum_other).clamp(-(MAX_WEIGHT as i64), MAX_WEIGHT as i64) as i32;
    coefs[TAPS] = (w[TAPS] * scale).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32;
    Some(coefs)
}

/// Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
fn solve<const D: usize>(mut a: [[f64; D]; D], mut b: [f64; D]) -> Option<[f64; D]> {
    for col in 0..D {
        let piv = (col..D).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for r in col + 1..D {
            let f = a[r][col] / a[col][col];
            for c in col..D {
                a[r][c] -= f * a[col][c];
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = [0f64; D];
    for r in (0..D).rev() {
        let s: f64 = (r + 1..D).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_a_known_blend() {
        // cur = (left + prev) / 2 exactly, on a textured image.
        let (w, h) = (40usize, 30usize);
        let prev: Vec<u32> = (0..w * h).map(|i| ((i * 7919) % 251) as u32).collect();
        let mut cur = vec![0u32; w * h];
        for i in 0..w * h {
            let left = if i % w > 0 { cur[i - 1] } else { prev[i] };
            cur[i] = (left + prev[i]) / 2;
        }
        let c = fit(&[&prev, &cur], w, Weighting::Uniform).unwrap();
        assert!(valid(&c));
        assert!((c[0] - (1 << (SHIFT - 1))).abs() < 200, "{c:?}");
        assert!((c[4] - (1 << (SHIFT - 1))).abs() < 200, "{c:?}");
        let p = predict(&c, &cur, &prev, 45, w, 255);
        assert!((p as i64 - cur[45] as i64).abs() <= 1);
    }

    #[test]
    fn counts_weigh_the_dark_majority() {
        // Dark rows (7 of 8) follow cur = prev; bright rows another rule, cur = 2 prev - prev
        // left, with noise: the plain fit follows the bright rows' large errors, the
        // count-weighted one the dark majority.
        let (w, h) = (64usize, 64usize);
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        let bright = |i: usize| (i / w) % 8 == 0;
        let prev: Vec<u32> = (0..w * h).map(|i| if bright(i) { 2000 + next() % 500 } else { 2 + next() % 6 }).collect();
        let cur: Vec<u32> =
            (0..w * h).map(|i| if bright(i) && i % w > 0 { (2 * prev[i] + next() % 40).saturating_sub(prev[i - 1]) } else { prev[i] }).collect();
        let dark_error = |c: &[i32]| -> f64 {
            let dark = (0..w * h).filter(|&i| !bright(i) && !bright(i + w) && !bright(i.wrapping_sub(w)));
            dark.map(|i| (predict(c, &cur, &prev, i, w, u32::MAX) as f64 - cur[i] as f64).abs()).sum::<f64>()
        };
        let plain = fit(&[&prev, &cur], w, Weighting::Uniform).unwrap();
        let counts = fit(&[&prev, &cur], w, Weighting::Counts).unwrap();
        assert!(dark_error(&counts) < 0.6 * dark_error(&plain), "dark error weighted {} vs plain {}", dark_error(&counts), dark_error(&plain));
        assert_eq!(Weighting::of(crate::codec::DType::U16), Weighting::Counts);
        assert_eq!(Weighting::of(crate::codec::DType::F32), Weighting::Uniform);
    }

    #[test]
    fn degenerate_inputs_do_not_fit() {
        assert!(fit(&[&[1, 2, 3]], 3, Weighting::Counts).is_none());
        assert!(fit(&[&[1], &[1]], 1, Weighting::Counts).is_none());
        assert!(!valid(&[0; TAPS]));
        assert!(!valid(&[MAX_WEIGHT + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    }
}
