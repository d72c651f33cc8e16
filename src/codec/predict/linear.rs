//! The per-window least-squares predictor (`linear`, predictor id 5).
//!
//! A predicted frame's pixel is a fixed-point linear blend of neighbours plus a constant. The
//! *narrow* tap set (nine taps, every version): the already reconstructed left, up, up-left and
//! up-right pixels of the current frame and the previous reconstructed frame at the pixel and its
//! left, right, up and down neighbours. The *wide* set (ten taps, container version 9) adds the
//! previous frame's 5x5 mean around the pixel: a denoised view of the previous frame, which pays
//! on photon noise (the detector fixture u16 0.8% smaller lossless under `best`; the four
//! diagonal neighbours and a 9x9 mean as well added 0.03% more, `examples/denoise_lab.rs`
//! measured the like). The number of coefficients says which set a window uses.
//! The weights are fitted by least squares on the window's first frames (floating point, in the
//! encoder only), rounded to integers with [`SHIFT`] fractional bits and stored in the blob, so
//! the prediction itself is integer-only and bit-exact on every machine.
//!
//! On counts (unsigned integer pixels) the fit weighs each pixel by `1 / (reference + 1)`:
//! photon noise grows with the intensity, and a plain least-squares fit would follow the few
//! bright pixels, whose errors are large but cost few bits each, at the expense of the dark
//! majority (`examples/denoise_lab.rs`: lossless ctc-fluo-nuclei 2.2% smaller with `linear`,
//! the detector fixtures 0.2-0.7%).

/// Weights per tap of the narrow set, then the constant term.
pub const TAPS: usize = 9;
pub const COEFS: usize = TAPS + 1;
/// Taps of the wide set (container version 9) and its coefficients.
pub const WIDE_TAPS: usize = TAPS + 1;
pub const WIDE_COEFS: usize = WIDE_TAPS + 1;
/// Fractional bits of the weights.
pub const SHIFT: u32 = 14;
/// Largest weight magnitude a blob may hold (keeps the sums far inside i64).
pub const MAX_WEIGHT: i32 = 1 << 20;
/// Radius of the wide set's box mean (5x5).
const BOX_RADIUS: usize = 2;
const BOX_AREA: u64 = ((2 * BOX_RADIUS + 1) * (2 * BOX_RADIUS + 1)) as u64;
/// The wide set is kept only where its fit leaves at least this share less weighted squared
/// error than the narrow one's (it costs some decoding speed).
const WIDE_GAIN: f64 = 0.02;

/// Whether `coefs` is a valid coefficient set (narrow or wide).
pub fn valid(coefs: &[i32]) -> bool {
    let taps = match coefs.len() {
        COEFS => TAPS,
        WIDE_COEFS => WIDE_TAPS,
        _ => return false,
    };
    coefs[..taps].iter().all(|w| w.unsigned_abs() <= MAX_WEIGHT as u32)
}

/// Whether `coefs` use the wide tap set (container version 9).
pub fn is_wide(coefs: &[i32]) -> bool {
    coefs.len() == WIDE_COEFS
}

/// The 5x5 means of `prev` (frames of `width` columns), rounded to nearest, into `out` (as many
/// as `prev`): the wide set's last tap. Pixels outside the frame take the value of the nearest
/// one (coordinates clamped to the edges; a partial last row is completed from the row above,
/// or by its last pixel in a frame of one row). Sliding sums along each row, then down each
/// column; integer-only, the same on every machine. `scratch` is reused between calls.
pub fn box_means(prev: &[u32], width: usize, out: &mut Vec<u32>, scratch: &mut Vec<u64>) {
    const R: usize = BOX_RADIUS;
    let n = prev.len();
    // (Every value is written below: no need to clear.)
    out.resize(n, 0);
    if n == 0 || width == 0 {
        return;
    }
    let rows = n.div_ceil(width);
    scratch.resize(rows * width, 0);
    let mut line = Vec::with_capacity(width);
    for (y, h) in scratch.chunks_exact_mut(width).enumerate() {
        line.clear();
        line.extend_from_slice(&prev[y * width..((y + 1) * width).min(n)]);
        let have = line.len();
        if y > 0 {
            line.extend_from_slice(&prev[y * width + have - width..][..width - have]);
        } else {
            line.resize(width, prev[n - 1]);
        }
        let at = |x: isize| line[x.clamp(0, width as isize - 1) as usize] as u64;
        let mut s: u64 = (-(R as isize)..=R as isize).map(at).sum();
        for (x, hx) in h.iter_mut().enumerate() {
            *hx = s;
            s += line[(x + R + 1).min(width - 1)] as u64;
            s -= line[x.saturating_sub(R)] as u64;
        }
    }
    let hrow = |y: isize| &scratch[y.clamp(0, rows as isize - 1) as usize * width..][..width];
    let mut column: Vec<u64> = vec![0; width];
    for dy in -(R as isize)..=R as isize {
        for (c, v) in column.iter_mut().zip(hrow(dy)) {
            *c += v;
        }
    }
    for (y, means) in out.chunks_mut(width).enumerate() {
        for (o, c) in means.iter_mut().zip(&column) {
            *o = ((c + BOX_AREA / 2) / BOX_AREA) as u32;
        }
        let (add, sub) = (hrow(y as isize + R as isize + 1), hrow(y as isize - R as isize));
        for ((c, a), s) in column.iter_mut().zip(add).zip(sub) {
            *c = *c + a - s;
        }
    }
}

/// The taps of pixel `i`: a missing neighbour (frame border) is replaced by `prev[i]`. The
/// first [`TAPS`] are the narrow set; the last is `boxes[i]` ([`box_means`] of `prev`), or
/// `prev[i]` when `boxes` is empty.
#[inline(always)]
pub fn taps(recon: &[u32], prev: &[u32], boxes: &[u32], i: usize, width: usize) -> [i64; WIDE_TAPS] {
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
        boxes.get(i).map_or(p, |&b| b) as i64,
    ]
}

/// The prediction of pixel `i` from the reconstructed pixels before it (`recon`), the previous
/// reconstructed frame and (wide set) its [`box_means`], clamped to `0..=mask`. `coefs` must be
/// [`valid`]; `boxes` is read only by the wide set.
#[inline(always)]
pub fn predict(coefs: &[i32], recon: &[u32], prev: &[u32], boxes: &[u32], i: usize, width: usize, mask: u32) -> u32 {
    let t = taps(recon, prev, boxes, i, width);
    if is_wide(coefs) {
        blend::<WIDE_TAPS>(coefs, &t, mask)
    } else {
        blend::<TAPS>(coefs, &t, mask)
    }
}

/// [`predict`] for a pixel that has all its neighbours (not on the frame's border), narrow set:
/// the same value without the border tests.
#[inline(always)]
pub fn predict_interior(coefs: &[i32], recon: &[u32], prev: &[u32], i: usize, width: usize, mask: u32) -> u32 {
    blend::<TAPS>(coefs, &interior_taps(recon, prev, i, width), mask)
}

/// [`predict_interior`] with the wide set.
#[inline(always)]
pub fn predict_wide_interior(coefs: &[i32], recon: &[u32], prev: &[u32], boxes: &[u32], i: usize, width: usize, mask: u32) -> u32 {
    let t = interior_taps(recon, prev, i, width);
    let sum = blend_sum::<TAPS>(coefs, &t) + coefs[TAPS] as i64 * boxes[i] as i64 + coefs[WIDE_TAPS] as i64;
    round(sum, mask)
}

/// The narrow taps of a pixel that has all its neighbours.
#[inline(always)]
fn interior_taps(recon: &[u32], prev: &[u32], i: usize, width: usize) -> [i64; TAPS] {
    [
        recon[i - 1] as i64,
        recon[i - width] as i64,
        recon[i - width - 1] as i64,
        recon[i - width + 1] as i64,
        prev[i] as i64,
        prev[i - 1] as i64,
        prev[i + 1] as i64,
        prev[i - width] as i64,
        prev[i + width] as i64,
    ]
}

/// The weighted sum of the first `N` taps.
#[inline(always)]
fn blend_sum<const N: usize>(coefs: &[i32], t: &[i64]) -> i64 {
    let mut sum = 0i64;
    for k in 0..N {
        sum += coefs[k] as i64 * t[k];
    }
    sum
}

/// The blend of `N` taps with `coefs` (`N` weights, then the constant), rounded.
#[inline(always)]
fn blend<const N: usize>(coefs: &[i32], t: &[i64], mask: u32) -> u32 {
    round(blend_sum::<N>(coefs, t) + coefs[N] as i64, mask)
}

/// A fixed-point sum rounded to a pixel value. (The sums are exact: weights below 2^20, taps
/// below 2^32, at most eleven terms, far inside i64; the order of the terms does not matter.)
#[inline(always)]
fn round(sum: i64, mask: u32) -> u32 {
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

/// Fit the narrow weights on consecutive frame pairs (`frames[k - 1]` predicting `frames[k]`)
/// by least squares (ridge-regularised), on every other pixel. None when there is no pair.
pub fn fit(frames: &[&[u32]], width: usize, weighting: Weighting) -> Option<Vec<i32>> {
    let pairs: Vec<(&[u32], &[u32])> = frames.windows(2).map(|p| (p[0], p[1])).collect();
    fit_pairs(&pairs, width, weighting)
}

/// [`fit`] on pairs of (reference, frame): the reference is what the predictor reads as the
/// previous frame (a learned model's correction of it, when the window has one).
pub fn fit_pairs(pairs: &[(&[u32], &[u32])], width: usize, weighting: Weighting) -> Option<Vec<i32>> {
    let normal = Normal::of(pairs, width, weighting, false)?;
    normal.coefs(&NARROW)
}

/// Rounds of reweighting of [`fit_pairs_l1`], and every how many pixels they sample.
const L1_ROUNDS: usize = 2;
const L1_STRIDE: usize = 6;

/// [`fit_pairs`] (narrow set) that minimises the weighted sum of absolute errors rather than of
/// squares: iteratively reweighted least squares from the least-squares fit, [`L1_ROUNDS`]
/// rounds, each pixel's weight divided by `max(|residual|, 1)`. The few large errors (edges,
/// moving features) then pull the weights less, and the bulk of the pixels, whose small
/// residuals are what an error bound's zero bin and the entropy coder reward, more. The rounds
/// sample every [`L1_STRIDE`]th pixel. Returns the least-squares fit (what [`fit_pairs`] gives)
/// and, when the rounds solve, the least-absolute one: under a bound the encoder tries both and
/// keeps the one that codes its probe smaller (ctc-fluo-nuclei at abs:2 8.98 -> 9.43; forced
/// everywhere it also loses, e.g. 168 -> 148 on the photons-1 fixture at abs:4; ARCHITECTURE.md).
pub fn fit_pairs_l1(pairs: &[(&[u32], &[u32])], width: usize, weighting: Weighting) -> Option<(Vec<i32>, Option<Vec<i32>>)> {
    let squares = Normal::of(pairs, width, weighting, false)?.solve(&NARROW)?;
    let mut w = squares.clone();
    for _ in 0..L1_ROUNDS {
        match Normal::over(pairs, width, weighting, NARROW, Some((&w, L1_STRIDE))).and_then(|n| n.solve(&NARROW)) {
            Some(next) => w = next,
            None => return Some((quantise(&squares, TAPS), None)),
        }
    }
    Some((quantise(&squares, TAPS), Some(quantise(&w, TAPS))))
}

/// [`fit_pairs`] with both tap sets: the wide one where its fit leaves at least [`WIDE_GAIN`]
/// less weighted squared error than the narrow one (frames of whole rows only).
pub fn fit_pairs_either(pairs: &[(&[u32], &[u32])], width: usize, weighting: Weighting) -> Option<Vec<i32>> {
    let whole_rows = width > 0 && pairs.iter().all(|(p, _)| p.len() % width == 0);
    let normal = Normal::of(pairs, width, weighting, whole_rows)?;
    let narrow = normal.solve(&NARROW);
    if !whole_rows {
        return normal.coefs(&NARROW);
    }
    match (normal.solve(&ALL), narrow) {
        (Some(w), Some(nw)) if normal.error(&ALL, &w) < (1.0 - WIDE_GAIN) * normal.error(&NARROW, &nw) => Some(quantise(&w, WIDE_TAPS)),
        (_, Some(nw)) => Some(quantise(&nw, TAPS)),
        (Some(w), None) => Some(quantise(&w, WIDE_TAPS)),
        (None, None) => None,
    }
}

/// The narrow set's unknowns among the wide system's: its nine taps and the constant.
const NARROW: [usize; COEFS] = [0, 1, 2, 3, 4, 5, 6, 7, 8, WIDE_TAPS];
/// The wide set's unknowns.
const ALL: [usize; WIDE_COEFS] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// The weighted normal equations of the wide system (the narrow one is a part of it), the values
/// centred on the previous pixel so the sums stay well conditioned.
struct Normal {
    ata: Vec<Vec<f64>>,
    atb: Vec<f64>,
    /// Weighted sum of the squared targets (for the residual error of a solution).
    yy: f64,
    total_weight: f64,
    /// Pixels sampled: a system of more unknowns than half of them is not solved.
    count: usize,
}

impl Normal {
    fn of(pairs: &[(&[u32], &[u32])], width: usize, weighting: Weighting, wide: bool) -> Option<Normal> {
        if wide {
            Normal::over(pairs, width, weighting, ALL, None)
        } else {
            Normal::over(pairs, width, weighting, NARROW, None)
        }
    }

    /// The system of the unknowns `active` (fixed-size: the accumulation is the fit's hot loop),
    /// placed in the wide system's rows and columns. With `prior` (a solution over `active`, a
    /// stride), each sampled pixel's weight is divided by the absolute value of its residual
    /// under it, at least 1 (a round of [`fit_pairs_l1`]); without, every other pixel is sampled.
    #[allow(clippy::needless_range_loop)] // matrix code reads best with indices
    fn over<const N: usize>(
        pairs: &[(&[u32], &[u32])],
        width: usize,
        weighting: Weighting,
        active: [usize; N],
        prior: Option<(&[f64], usize)>,
    ) -> Option<Normal> {
        if pairs.is_empty() || width == 0 {
            return None;
        }
        let wide = active.contains(&TAPS);
        let mut a = [[0f64; N]; N];
        let mut b = [0f64; N];
        let (mut yy, mut count, mut total_weight) = (0f64, 0usize, 0f64);
        let (mut boxes, mut scratch) = (Vec::new(), Vec::new());
        for &(prev, cur) in pairs {
            if prev.len() != cur.len() {
                return None;
            }
            if wide {
                box_means(prev, width, &mut boxes, &mut scratch);
            }
            for i in (0..cur.len()).step_by(prior.map_or(2, |p| p.1)) {
                let t = taps(cur, prev, &boxes, i, width);
                let base = t[4] as f64;
                let f: [f64; N] = std::array::from_fn(|j| if active[j] == WIDE_TAPS { 1.0 } else { t[active[j]] as f64 - base });
                let y = cur[i] as f64 - base;
                let mut weight = match weighting {
                    Weighting::Uniform => 1.0,
                    Weighting::Counts => 1.0 / (base + 1.0),
                };
                if let Some((w, _)) = prior {
                    let r = y - (0..N).map(|j| w[j] * f[j]).sum::<f64>();
                    weight /= r.abs().max(1.0);
                }
                for r in 0..N {
                    b[r] += weight * f[r] * y;
                    for c in r..N {
                        a[r][c] += weight * f[r] * f[c];
                    }
                }
                yy += weight * y * y;
                count += 1;
                total_weight += weight;
            }
        }
        const D: usize = WIDE_COEFS;
        let (mut ata, mut atb) = (vec![vec![0f64; D]; D], vec![0f64; D]);
        for r in 0..N {
            atb[active[r]] = b[r];
            for c in 0..N {
                ata[active[r]][active[c]] = if c >= r { a[r][c] } else { a[c][r] };
            }
        }
        Some(Normal { ata, atb, yy, total_weight, count })
    }

    /// The ridge-regularised solution over the unknowns `idx`.
    fn solve(&self, idx: &[usize]) -> Option<Vec<f64>> {
        if self.count < 2 * idx.len() {
            return None;
        }
        let mut a: Vec<Vec<f64>> = idx.iter().map(|&r| idx.iter().map(|&c| self.ata[r][c]).collect()).collect();
        for (k, row) in a.iter_mut().enumerate() {
            row[k] += 1e-3 * self.total_weight;
        }
        solve(a, idx.iter().map(|&r| self.atb[r]).collect())
    }

    /// The weighted squared error of solution `w` over the unknowns `idx`.
    fn error(&self, idx: &[usize], w: &[f64]) -> f64 {
        let mut e = self.yy;
        for (j, &r) in idx.iter().enumerate() {
            e -= 2.0 * w[j] * self.atb[r];
            for (k, &c) in idx.iter().enumerate() {
                e += w[j] * w[k] * self.ata[r][c];
            }
        }
        e
    }

    fn coefs(&self, idx: &[usize]) -> Option<Vec<i32>> {
        self.solve(idx).map(|w| quantise(&w, idx.len() - 1))
    }
}

/// Fixed-point coefficients from a centred solution `w` of `taps` weights and a constant: the
/// centred model predicts base + sum w_k (t_k - base) + w_c, so the weight of the previous pixel
/// (tap 4) gets 1 - the sum of the others.
fn quantise(w: &[f64], taps: usize) -> Vec<i32> {
    let mut coefs = vec![0i32; taps + 1];
    let scale = (1u64 << SHIFT) as f64;
    let mut sum_other = 0i64;
    for k in 0..taps {
        if k == 4 {
            continue;
        }
        let q = (w[k] * scale).round().clamp(-(MAX_WEIGHT as f64), MAX_WEIGHT as f64) as i32;
        coefs[k] = q;
        sum_other += q as i64;
    }
    coefs[4] = ((1i64 << SHIFT) - sum_other).clamp(-(MAX_WEIGHT as i64), MAX_WEIGHT as i64) as i32;
    coefs[taps] = (w[taps] * scale).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32;
    coefs
}

/// Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let d = b.len();
    for col in 0..d {
        let piv = (col..d).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
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
        let p = predict(&c, &cur, &prev, &[], 45, w, 255);
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
            dark.map(|i| (predict(c, &cur, &prev, &[], i, w, u32::MAX) as f64 - cur[i] as f64).abs()).sum::<f64>()
        };
        let plain = fit(&[&prev, &cur], w, Weighting::Uniform).unwrap();
        let counts = fit(&[&prev, &cur], w, Weighting::Counts).unwrap();
        assert!(dark_error(&counts) < 0.6 * dark_error(&plain), "dark error weighted {} vs plain {}", dark_error(&counts), dark_error(&plain));
        assert_eq!(Weighting::of(crate::codec::DType::U16), Weighting::Counts);
        assert_eq!(Weighting::of(crate::codec::DType::F32), Weighting::Uniform);
    }

    fn noise(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    /// The box means are those of their definition (the mean over the 5x5 box, rounded, of the
    /// frame with its edges replicated and a partial last row completed from the row above, or
    /// by its last pixel in a frame of one row), on every small width, whole rows or not.
    #[test]
    fn box_means_are_their_definition() {
        let mut seed = 5u64;
        for width in 1..12 {
            for n in [width * 9, width * 9 + width / 2, width, 3] {
                let prev: Vec<u32> = (0..n).map(|_| noise(&mut seed) & 0xffff).collect();
                let mut out = Vec::new();
                box_means(&prev, width, &mut out, &mut Vec::new());
                let rows = n.div_ceil(width) as i64;
                let at = |x: i64, y: i64| {
                    let i = (y.clamp(0, rows - 1) * width as i64 + x.clamp(0, width as i64 - 1)) as usize;
                    (if i < n {
                        prev[i]
                    } else if i >= width {
                        prev[i - width]
                    } else {
                        prev[n - 1]
                    }) as u64
                };
                assert_eq!(out.len(), n);
                for (i, &o) in out.iter().enumerate() {
                    let (x, y) = ((i % width) as i64, (i / width) as i64);
                    let sum: u64 = (-2..=2).flat_map(|dy| (-2..=2).map(move |dx| (dx, dy))).map(|(dx, dy)| at(x + dx, y + dy)).sum();
                    assert_eq!(o as u64, (sum + 12) / 25, "width {width} n {n} pixel {i}");
                }
            }
        }
    }

    /// Both sets predict the plain sum of their taps on every pixel (borders, partial rows,
    /// every small width), the interior shortcuts included.
    #[test]
    fn predictions_are_the_sums_of_their_taps() {
        let mut seed = 9u64;
        let narrow = [4000, 3000, -1000, 800, 6000, 500, 400, -300, 600, -77];
        let wide = [4000, 3000, -1000, 800, 6000, 500, 400, -300, 600, 1500, -77];
        assert!(valid(&narrow) && !is_wide(&narrow) && valid(&wide) && is_wide(&wide));
        for width in 1..9 {
            for n in [width * 6, width * 6 + width / 2] {
                let (prev, recon): (Vec<u32>, Vec<u32>) = (0..n).map(|_| (noise(&mut seed) & 0xffff, noise(&mut seed) & 0xffff)).unzip();
                let mut boxes = Vec::new();
                box_means(&prev, width, &mut boxes, &mut Vec::new());
                for i in 0..n {
                    let t = taps(&recon, &prev, &boxes, i, width);
                    for coefs in [&narrow[..], &wide[..]] {
                        let k = coefs.len() - 1;
                        let sum = coefs[k] as i64 + (0..k).map(|j| coefs[j] as i64 * t[j]).sum::<i64>();
                        assert_eq!(predict(coefs, &recon, &prev, &boxes, i, width, 0xffff), round(sum, 0xffff), "width {width} n {n} pixel {i}");
                        let (x, y) = (i % width, i / width);
                        if x > 0 && x + 1 < width && y > 0 && i + width < n {
                            let interior = if k == TAPS {
                                predict_interior(coefs, &recon, &prev, i, width, 0xffff)
                            } else {
                                predict_wide_interior(coefs, &recon, &prev, &boxes, i, width, 0xffff)
                            };
                            assert_eq!(interior, round(sum, 0xffff), "interior, width {width} n {n} pixel {i}");
                        }
                    }
                }
            }
        }
    }

    /// The wide set is fitted where the frame follows the previous frame's neighbourhood mean
    /// (a denoised reference), not where it follows the previous pixel; the narrow fit it falls
    /// back to is the one `fit_pairs` makes.
    #[test]
    fn the_wide_set_is_taken_where_it_pays() {
        let (w, h) = (48usize, 40usize);
        let mut seed = 3u64;
        let prev: Vec<u32> = (0..w * h).map(|_| 1000 + noise(&mut seed) % 400).collect();
        let mut boxes = Vec::new();
        box_means(&prev, w, &mut boxes, &mut Vec::new());
        let smooth: Vec<u32> = boxes.iter().map(|&b| b + noise(&mut seed) % 3).collect();
        let same: Vec<u32> = prev.iter().map(|&p| p + noise(&mut seed) % 3).collect();
        let wide = fit_pairs_either(&[(&prev, &smooth)], w, Weighting::Counts).unwrap();
        assert!(is_wide(&wide), "{wide:?}");
        assert!(wide[TAPS] > 1 << (SHIFT - 1), "the 5x5 mean carries the prediction: {wide:?}");
        let narrow = fit_pairs_either(&[(&prev, &same)], w, Weighting::Counts).unwrap();
        assert_eq!(narrow, fit_pairs(&[(&prev, &same)], w, Weighting::Counts).unwrap());
        // Frames of a partial last row keep the narrow set.
        let cut = &prev[..w * h - w / 2];
        assert!(!is_wide(&fit_pairs_either(&[(cut, &smooth[..cut.len()])], w, Weighting::Counts).unwrap()));
    }

    /// Where a few pixels break the rule the rest follow, the fit of least absolute errors keeps
    /// to the rule: its errors on the rule's pixels are a fraction of the least-squares fit's.
    #[test]
    fn the_l1_fit_ignores_a_few_large_errors() {
        let (w, h) = (48usize, 40usize);
        let mut seed = 21u64;
        let prev: Vec<u32> = (0..w * h).map(|_| 500 + noise(&mut seed) % 300).collect();
        let odd = |i: usize| i % 23 == 5;
        let mut cur = vec![0u32; w * h];
        for i in 0..w * h {
            let left = if i % w > 0 { cur[i - 1] } else { prev[i] };
            cur[i] = (left + prev[i]) / 2 + noise(&mut seed) % 3 + if odd(i) { 400 } else { 0 };
        }
        let error_on_rule = |c: &[i32]| -> f64 {
            (0..w * h)
                .filter(|&i| !odd(i) && !odd(i + 1) && !odd(i + w))
                .map(|i| (predict(c, &cur, &prev, &[], i, w, u32::MAX) as f64 - cur[i] as f64).abs())
                .sum()
        };
        let (l2, l1) = fit_pairs_l1(&[(&prev, &cur)], w, Weighting::Uniform).unwrap();
        assert_eq!(l2, fit_pairs(&[(&prev, &cur)], w, Weighting::Uniform).unwrap(), "the least-squares fit is fit_pairs'");
        let l1 = l1.unwrap();
        assert!(valid(&l1) && l1.len() == COEFS);
        assert!(error_on_rule(&l1) < 0.5 * error_on_rule(&l2), "l1 {} vs l2 {}", error_on_rule(&l1), error_on_rule(&l2));
        assert_eq!(fit_pairs_l1(&[(&prev, &cur)], w, Weighting::Uniform).unwrap().1, Some(l1), "deterministic");
        assert!(fit_pairs_l1(&[(&prev[..3], &cur[..3])], w, Weighting::Uniform).is_none());
    }

    #[test]
    fn degenerate_inputs_do_not_fit() {
        assert!(fit(&[&[1, 2, 3]], 3, Weighting::Counts).is_none());
        assert!(fit(&[&[1], &[1]], 1, Weighting::Counts).is_none());
        assert!(!valid(&[0; TAPS]));
        assert!(valid(&[0; WIDE_COEFS]) && !valid(&[0; WIDE_COEFS + 1]));
        assert!(!valid(&[MAX_WEIGHT + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!valid(&[MAX_WEIGHT + 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    }
}
