//! The learned causal stage (`docs/MODEL.md`, The causal stage): a small integer MLP that
//! predicts each pixel of frame `t` from the pixels of frame `t` already reconstructed around
//! it, the previous reconstruction and two running means of the window's reconstructions.
//!
//! What ctc's gain under a bound is made of (`scripts/lab/causal_predictors.py`,
//! `docs/results/issue11-causal-lab.txt`): frame `t`'s coded neighbours weighed by what they
//! look like, a nonlinear spatial predictor; a network of whole frames from the past (the
//! PredNet) cannot see them. The stage is per pixel and walked by the quantiser like the
//! classical rules ([`super::Prediction::Causal`]), in integers only, so one plain-Rust
//! implementation serves the encoder and the decoder on every machine.
//!
//! Inputs of pixel `(x, y)`, all relative to `b`, the previous reconstruction at `(x, y)`:
//! frame `t`'s 12 causal neighbours within two pixels ([`CAUSAL`]; outside the frame: `b`),
//! the previous frame's 3x3 and the two running means' 3x3 (coordinates clamped into the
//! frame). Pixel differences are shifted right by `shift_px`, the means' (kept in 1/16ths) by
//! `shift_mean`, and every input is clamped to `+-MAX_IN`. Two hidden layers of ReLU units
//! (`H1`, `H2`), i32 sums (the ranges of [`CausalNet::validate`] keep them exact), each unit
//! requantised by a rounding shift and clamped to `0..=MAX_ACT`; the output, shifted, is a
//! correction of `b`: the prediction is `clamp(b + out, 0, mask)`.

/// Frame `t`'s causal neighbours `(dy, dx)`: the two rows above within two columns, and the
/// two pixels to the left.
pub const CAUSAL: [(isize, isize); 12] = [(-2, -2), (-2, -1), (-2, 0), (-2, 1), (-2, 2), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (0, -2), (0, -1)];
/// Inputs: 12 causal, 9 previous, 9 slow mean, 9 fast mean.
pub const INPUTS: usize = 39;
pub const H1: usize = 32;
pub const H2: usize = 16;
/// Multiply-adds per pixel.
pub const MACS: usize = INPUTS * H1 + H1 * H2 + H2;
/// The largest input magnitude, hidden activation and weight magnitude, the largest bias and
/// shift: with them every sum stays below `2^31` (39 x 4095 x 8191 + 2^28 + 2^23 < 2^31).
pub const MAX_IN: i32 = 4095;
pub const MAX_ACT: i32 = 4095;
pub const MAX_W: i32 = 8191;
pub const MAX_BIAS: i32 = 1 << 28;
pub const MAX_SHIFT: u8 = 24;
/// Fractional bits of the running means.
pub const MEAN_FRAC: u32 = 4;
/// The running means' rates: `m += (16 r - m) >> k` for the slow and the fast mean.
pub const SLOW: u32 = 4;
pub const FAST: u32 = 3;

/// The integer network (what the model file's causal section holds, version 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalNet {
    /// Whether the running means are inputs (otherwise their inputs are 0: training keeps the
    /// means only where they help on frames it held out, see `model::train::causal`).
    pub means: bool,
    pub shift_px: u8,
    pub shift_mean: u8,
    /// `[H1][INPUTS]`, unit-major (each unit's sum is a dot product of i16 vectors).
    pub w1: Vec<i16>,
    pub b1: Vec<i32>,
    pub s1: Vec<u8>,
    /// `[H2][H1]`.
    pub w2: Vec<i16>,
    pub b2: Vec<i32>,
    pub s2: Vec<u8>,
    /// `[H2]`.
    pub w3: Vec<i16>,
    pub b3: i32,
    pub s3: u8,
}

/// `(x + 2^(s-1)) >> s`, `x` itself for `s = 0`.
#[inline(always)]
fn requant(x: i32, s: u8) -> i32 {
    if s == 0 {
        x
    } else {
        (x + (1 << (s - 1))) >> s
    }
}

impl CausalNet {
    /// The ranges that keep every sum exact in i32; a model file whose net fails is refused.
    pub fn validate(&self) -> Result<(), String> {
        let lens = [
            ("first layer weights", self.w1.len(), H1 * INPUTS),
            ("first layer biases", self.b1.len(), H1),
            ("first layer shifts", self.s1.len(), H1),
            ("second layer weights", self.w2.len(), H2 * H1),
            ("second layer biases", self.b2.len(), H2),
            ("second layer shifts", self.s2.len(), H2),
            ("output weights", self.w3.len(), H2),
        ];
        for (what, got, want) in lens {
            if got != want {
                return Err(format!("causal stage: {got} {what}, expected {want}"));
            }
        }
        for (what, w) in [("first layer", &self.w1), ("second layer", &self.w2), ("output", &self.w3)] {
            if let Some(j) = w.iter().position(|&v| i32::from(v).abs() > MAX_W) {
                return Err(format!("causal stage: {what} weight {j} is {} (|w| <= {MAX_W} allowed)", w[j]));
            }
        }
        for (what, b) in [("first layer", &self.b1[..]), ("second layer", &self.b2[..]), ("output", std::slice::from_ref(&self.b3))] {
            if let Some(j) = b.iter().position(|v| v.abs() > MAX_BIAS) {
                return Err(format!("causal stage: {what} bias {j} is {} (|b| <= 2^28 allowed)", b[j]));
            }
        }
        for (what, s) in [("first layer", &self.s1[..]), ("second layer", &self.s2[..]), ("output", std::slice::from_ref(&self.s3))] {
            if let Some(j) = s.iter().position(|&v| v > MAX_SHIFT) {
                return Err(format!("causal stage: {what} shift {j} is {} (0 to {MAX_SHIFT} allowed)", s[j]));
            }
        }
        if self.shift_px > 31 || self.shift_mean > 31 {
            return Err(format!("causal stage: input shifts {} and {} (0 to 31 allowed)", self.shift_px, self.shift_mean));
        }
        Ok(())
    }

    /// The correction of `b` the network gives for inputs `f`: the definition, unit by unit
    /// (what [`CausalStage`] computes faster).
    pub fn eval(&self, f: &[i16; INPUTS]) -> i32 {
        // (Integer sums in any order: the ranges keep every partial sum exact, so the
        // vectorised reductions give every machine the same result.)
        let dot = |w: &[i16], x: &[i16]| w.iter().zip(x).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum::<i32>();
        let mut h1 = [0i16; H1];
        for (o, h) in h1.iter_mut().enumerate() {
            *h = requant(dot(&self.w1[o * INPUTS..(o + 1) * INPUTS], f) + self.b1[o], self.s1[o]).clamp(0, MAX_ACT) as i16;
        }
        let mut h2 = [0i16; H2];
        for (o, h) in h2.iter_mut().enumerate() {
            *h = requant(dot(&self.w2[o * H1..(o + 1) * H1], &h1) + self.b2[o], self.s2[o]).clamp(0, MAX_ACT) as i16;
        }
        requant(dot(&self.w3, &h2) + self.b3, self.s3)
    }
}

/// A [`CausalNet`] laid out to run: the weights by input (column), so that each input's
/// products with every unit's weight are one vector operation. The same integers as
/// [`CausalNet::eval`] (tested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CausalStage {
    pub net: CausalNet,
    w1t: Vec<[i32; H1]>,
    w2t: Vec<[i32; H2]>,
    b1: [i32; H1],
    b2: [i32; H2],
    /// Each unit's rounding term `2^(s-1)` (0 for `s = 0`) and shift, as i32 lanes.
    r1: [i32; H1],
    r2: [i32; H2],
    sh1: [i32; H1],
    sh2: [i32; H2],
}

impl CausalStage {
    /// The stage of a valid net (see [`CausalNet::validate`]).
    pub fn new(net: CausalNet) -> CausalStage {
        let w1t = (0..INPUTS).map(|j| std::array::from_fn(|o| i32::from(net.w1[o * INPUTS + j]))).collect();
        let w2t = (0..H1).map(|j| std::array::from_fn(|o| i32::from(net.w2[o * H1 + j]))).collect();
        let (b1, b2) = (std::array::from_fn(|o| net.b1[o]), std::array::from_fn(|o| net.b2[o]));
        let round = |s: u8| if s == 0 { 0 } else { 1i32 << (s - 1) };
        let (r1, r2) = (std::array::from_fn(|o| round(net.s1[o])), std::array::from_fn(|o| round(net.s2[o])));
        let (sh1, sh2) = (std::array::from_fn(|o| i32::from(net.s1[o])), std::array::from_fn(|o| i32::from(net.s2[o])));
        CausalStage { net, w1t, w2t, b1, b2, r1, r2, sh1, sh2 }
    }

    /// [`CausalNet::eval`], by columns.
    #[inline(always)]
    pub fn eval(&self, f: &[i16; INPUTS]) -> i32 {
        let n = &self.net;
        let mut a1 = self.b1;
        for (col, &x) in self.w1t.iter().zip(f) {
            let x = i32::from(x);
            a1.iter_mut().zip(col).for_each(|(a, &w)| *a += w * x);
        }
        let mut a2 = self.b2;
        for ((col, &a), &s) in self.w2t.iter().zip(&a1).zip(&n.s1) {
            let h = requant(a, s).clamp(0, MAX_ACT);
            a2.iter_mut().zip(col).for_each(|(a, &w)| *a += w * h);
        }
        let out = a2.iter().zip(&n.s2).zip(&n.w3).fold(n.b3, |acc, ((&a, &s), &w)| acc + i32::from(w) * requant(a, s).clamp(0, MAX_ACT));
        requant(out, n.s3)
    }

    /// The prediction of pixel `i` of a `width`-wide frame.
    #[inline]
    pub fn predict(&self, past: &Past, recon: &[u32], i: usize, width: usize, mask: u32) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), all `predict_avx2` requires. The
            // arithmetic is integer, so both paths give the same prediction (tested).
            return unsafe { self.predict_avx2(past, recon, i, width, mask) };
        }
        self.predict_here(past, recon, i, width, mask)
    }

    /// [`CausalStage::predict`] with AVX2: eight units' products per instruction.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn predict_avx2(&self, past: &Past, recon: &[u32], i: usize, width: usize, mask: u32) -> u32 {
        let mut f = [0i16; INPUTS];
        past.inputs(&self.net, recon, i, width, &mut f);
        // SAFETY: the caller checked AVX2, all `eval_avx2` requires.
        let c = unsafe { self.eval_avx2(&f) };
        (past.prev[i] as i64 + c as i64).clamp(0, mask as i64) as u32
    }

    /// [`CausalStage::eval`] in AVX2 intrinsics: the same sums (exact in i32), requantisation
    /// by a variable arithmetic shift, clamps by min and max.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn eval_avx2(&self, f: &[i16; INPUTS]) -> i32 {
        use std::arch::x86_64::*;
        // SAFETY (every load and store below): unaligned 8-lane accesses at offsets 0, 8, 16, 24
        // of arrays of H1 = 32 or H2 = 16 i32, all within them.
        let load = |p: &[i32], k: usize| unsafe { _mm256_loadu_si256(p.as_ptr().add(8 * k) as *const __m256i) };
        let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(MAX_ACT));
        let mut a1 = [load(&self.b1, 0), load(&self.b1, 1), load(&self.b1, 2), load(&self.b1, 3)];
        for (col, &x) in self.w1t.iter().zip(f) {
            let xv = _mm256_set1_epi32(i32::from(x));
            for (k, a) in a1.iter_mut().enumerate() {
                *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(load(col, k), xv));
            }
        }
        let mut h1 = [0i32; H1];
        for (k, a) in a1.iter().enumerate() {
            let v = _mm256_srav_epi32(_mm256_add_epi32(*a, load(&self.r1, k)), load(&self.sh1, k));
            // SAFETY: as above (a store of 8 lanes at offset 8k of 32).
            unsafe { _mm256_storeu_si256(h1.as_mut_ptr().add(8 * k) as *mut __m256i, _mm256_min_epi32(_mm256_max_epi32(v, zero), top)) };
        }
        let mut a2 = [load(&self.b2, 0), load(&self.b2, 1)];
        for (col, &h) in self.w2t.iter().zip(&h1) {
            let hv = _mm256_set1_epi32(h);
            for (k, a) in a2.iter_mut().enumerate() {
                *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(load(col, k), hv));
            }
        }
        let mut h2 = [0i32; H2];
        for (k, a) in a2.iter().enumerate() {
            let v = _mm256_srav_epi32(_mm256_add_epi32(*a, load(&self.r2, k)), load(&self.sh2, k));
            // SAFETY: as above (8 lanes at offset 8k of 16).
            unsafe { _mm256_storeu_si256(h2.as_mut_ptr().add(8 * k) as *mut __m256i, _mm256_min_epi32(_mm256_max_epi32(v, zero), top)) };
        }
        let n = &self.net;
        requant(h2.iter().zip(&n.w3).fold(n.b3, |acc, (&h, &w)| acc + i32::from(w) * h), n.s3)
    }

    /// [`CausalStage::predict`] for the build's baseline instruction set.
    #[inline(always)]
    pub fn predict_here(&self, past: &Past, recon: &[u32], i: usize, width: usize, mask: u32) -> u32 {
        let mut f = [0i16; INPUTS];
        past.inputs(&self.net, recon, i, width, &mut f);
        (past.prev[i] as i64 + self.eval(&f) as i64).clamp(0, mask as i64) as u32
    }
}

/// What the stage reads of the frames before `t`: the previous reconstruction and the running
/// means (in 1/16ths), state of a window carried from frame to frame.
#[derive(Clone, Debug, Default)]
pub struct Past {
    pub prev: Vec<u32>,
    pub slow: Vec<i64>,
    pub fast: Vec<i64>,
    pub width: usize,
    pub height: usize,
}

#[inline(always)]
fn clamp_in(v: i64, shift: u8) -> i16 {
    (v >> shift).clamp(-(MAX_IN as i64), MAX_IN as i64) as i16
}

impl Past {
    /// Take in reconstruction `r` of the window's next frame (the key frame starts the means).
    pub fn observe(&mut self, r: &[u32], width: usize) {
        let first = self.prev.is_empty();
        self.width = width;
        self.height = r.len().checked_div(width).unwrap_or(0);
        self.prev.clear();
        self.prev.extend_from_slice(r);
        if first {
            self.slow = r.iter().map(|&v| (v as i64) << MEAN_FRAC).collect();
            self.fast = self.slow.clone();
        } else {
            for ((s, f), &v) in self.slow.iter_mut().zip(self.fast.iter_mut()).zip(r) {
                let v = (v as i64) << MEAN_FRAC;
                *s += (v - *s) >> SLOW;
                *f += (v - *f) >> FAST;
            }
        }
    }

    /// Whether this state fits frames of `n` pixels (it has observed a frame of them).
    pub fn fits(&self, n: usize) -> bool {
        self.prev.len() == n && self.slow.len() == n && self.fast.len() == n && self.width > 0
    }

    /// The inputs of pixel `i`, given frame `t`'s reconstruction so far in `recon`.
    #[inline(always)]
    pub fn inputs(&self, net: &CausalNet, recon: &[u32], i: usize, width: usize, f: &mut [i16; INPUTS]) {
        let (x, y) = (i % width, i / width);
        let (w, h) = (width as isize, self.height as isize);
        let b = self.prev[i] as i64;
        let interior = x >= 2 && y >= 2 && x + 2 < width && (y as isize) + 1 < h;
        if interior {
            for (j, &(dy, dx)) in CAUSAL.iter().enumerate() {
                let at = (i as isize + dy * w + dx) as usize;
                f[j] = clamp_in(recon[at] as i64 - b, net.shift_px);
            }
            let mut j = CAUSAL.len();
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    let at = (i as isize + dy * w + dx) as usize;
                    f[j] = clamp_in(self.prev[at] as i64 - b, net.shift_px);
                    if net.means {
                        f[j + 9] = clamp_in(self.slow[at] - (b << MEAN_FRAC), net.shift_mean);
                        f[j + 18] = clamp_in(self.fast[at] - (b << MEAN_FRAC), net.shift_mean);
                    }
                    j += 1;
                }
            }
            if !net.means {
                f[CAUSAL.len() + 9..].fill(0);
            }
            return;
        }
        let (xi, yi) = (x as isize, y as isize);
        for (j, &(dy, dx)) in CAUSAL.iter().enumerate() {
            let (yy, xx) = (yi + dy, xi + dx);
            let v = if yy >= 0 && xx >= 0 && xx < w { recon[(yy * w + xx) as usize] as i64 } else { b };
            f[j] = clamp_in(v - b, net.shift_px);
        }
        let mut j = CAUSAL.len();
        for dy in -1isize..=1 {
            for dx in -1isize..=1 {
                let at = ((yi + dy).clamp(0, h - 1) * w + (xi + dx).clamp(0, w - 1)) as usize;
                f[j] = clamp_in(self.prev[at] as i64 - b, net.shift_px);
                let (s, q) = if net.means { (self.slow[at] - (b << MEAN_FRAC), self.fast[at] - (b << MEAN_FRAC)) } else { (0, 0) };
                f[j + 9] = clamp_in(s, net.shift_mean);
                f[j + 18] = clamp_in(q, net.shift_mean);
                j += 1;
            }
        }
    }
}

/// A random valid net (tests and speed measurements).
pub fn random(seed: u64) -> CausalNet {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = |lo: i32, hi: i32| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        lo + (s % (hi - lo + 1) as u64) as i32
    };
    let mut v = |n: usize, lo: i32, hi: i32| (0..n).map(|_| next(lo, hi)).collect::<Vec<i32>>();
    let w = |v: Vec<i32>| v.into_iter().map(|x| x as i16).collect::<Vec<i16>>();
    CausalNet {
        means: seed % 3 != 1,
        shift_px: 0,
        shift_mean: 0,
        w1: w(v(H1 * INPUTS, -300, 300)),
        b1: v(H1, -5000, 5000),
        s1: vec![6; H1],
        w2: w(v(H2 * H1, -600, 600)),
        b2: v(H2, -5000, 5000),
        s2: vec![9; H2],
        w3: w(v(H2, -400, 400)),
        b3: 100,
        s3: 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest sums the ranges allow fit in i32, at every layer.
    #[test]
    fn the_ranges_keep_every_sum_exact() {
        let worst1 = INPUTS as i64 * MAX_IN as i64 * MAX_W as i64 + MAX_BIAS as i64 + (1i64 << (MAX_SHIFT - 1));
        let worst2 = H1 as i64 * MAX_ACT as i64 * MAX_W as i64 + MAX_BIAS as i64 + (1i64 << (MAX_SHIFT - 1));
        assert!(worst1 < i32::MAX as i64 && worst2 < worst1, "{worst1}");
        // And the network evaluates the extremes without overflowing (debug builds panic).
        let mut net = random(1);
        net.w1.iter_mut().for_each(|w| *w = MAX_W as i16);
        net.b1.iter_mut().for_each(|b| *b = MAX_BIAS);
        net.w2.iter_mut().for_each(|w| *w = -MAX_W as i16);
        net.s1.iter_mut().for_each(|s| *s = MAX_SHIFT);
        net.validate().unwrap();
        for x in [MAX_IN as i16, -MAX_IN as i16] {
            assert_eq!(net.eval(&[x; INPUTS]) as i64, wide(&net, &[x; INPUTS]), "{x}");
        }
        let mut other = random(4);
        other.w1.iter_mut().step_by(2).for_each(|w| *w = -MAX_W as i16);
        other.b2.iter_mut().for_each(|b| *b = -MAX_BIAS);
        for x in [MAX_IN as i16, -MAX_IN as i16, 7] {
            assert_eq!(other.eval(&[x; INPUTS]) as i64, wide(&other, &[x; INPUTS]), "{x}");
        }
    }

    /// The stage computes the net's integers, on either instruction set.
    #[test]
    fn the_stage_is_the_net() {
        let (w, h) = (13usize, 9usize);
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as u32 & 0x3ff
        };
        for k in 0..6 {
            let mut net = random(k);
            net.shift_px = (k % 3) as u8;
            if k == 5 {
                net.w1.iter_mut().for_each(|w| *w = MAX_W as i16);
                net.b1.iter_mut().for_each(|b| *b = MAX_BIAS);
            }
            let stage = CausalStage::new(net.clone());
            let mut past = Past::default();
            past.observe(&(0..w * h).map(|_| next()).collect::<Vec<u32>>(), w);
            past.observe(&(0..w * h).map(|_| next()).collect::<Vec<u32>>(), w);
            let recon: Vec<u32> = (0..w * h).map(|_| next()).collect();
            for i in 0..w * h {
                let mut f = [0i16; INPUTS];
                past.inputs(&net, &recon, i, w, &mut f);
                assert_eq!(stage.eval(&f), net.eval(&f), "net {k} pixel {i}");
                assert_eq!(stage.eval(&f) as i64, wide(&net, &f), "net {k} pixel {i}");
                let p = stage.predict(&past, &recon, i, w, 0x3ff);
                assert_eq!(p, stage.predict_here(&past, &recon, i, w, 0x3ff), "net {k} pixel {i}: the instruction sets differ");
                assert_eq!(p as i64, (past.prev[i] as i64 + wide(&net, &f)).clamp(0, 0x3ff));
            }
        }
    }

    /// [`CausalNet::eval`] in i64 (no sum can overflow).
    fn wide(n: &CausalNet, f: &[i16; INPUTS]) -> i64 {
        let rq = |x: i64, s: u8| if s == 0 { x } else { (x + (1 << (s - 1))) >> s };
        let h1: Vec<i64> = (0..H1)
            .map(|o| rq((0..INPUTS).map(|j| n.w1[o * INPUTS + j] as i64 * f[j] as i64).sum::<i64>() + n.b1[o] as i64, n.s1[o]).clamp(0, MAX_ACT as i64))
            .collect();
        let h2: Vec<i64> =
            (0..H2).map(|o| rq((0..H1).map(|j| n.w2[o * H1 + j] as i64 * h1[j]).sum::<i64>() + n.b2[o] as i64, n.s2[o]).clamp(0, MAX_ACT as i64)).collect();
        rq((0..H2).map(|j| n.w3[j] as i64 * h2[j]).sum::<i64>() + n.b3 as i64, n.s3)
    }

    #[test]
    fn validation_names_what_is_out_of_range() {
        let good = random(2);
        good.validate().unwrap();
        let mut n = good.clone();
        n.w2[5] = MAX_W as i16 + 1;
        assert!(n.validate().unwrap_err().contains("second layer weight 5"));
        let mut n = good.clone();
        n.s3 = MAX_SHIFT + 1;
        assert!(n.validate().unwrap_err().contains("output shift"));
        let mut n = good.clone();
        n.b1.pop();
        assert!(n.validate().unwrap_err().contains("first layer biases"));
    }

    /// The interior fast path of `inputs` reads what the general border path reads.
    #[test]
    fn interior_inputs_are_the_border_rule_inside_the_frame() {
        let (w, h) = (9usize, 7usize);
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as u32 & 0xfff
        };
        let mut past = Past::default();
        for _ in 0..3 {
            let f: Vec<u32> = (0..w * h).map(|_| next()).collect();
            past.observe(&f, w);
        }
        let recon: Vec<u32> = (0..w * h).map(|_| next()).collect();
        for means in [true, false] {
            let net = CausalNet { shift_px: 1, shift_mean: 2, means, ..random(3) };
            for i in 0..w * h {
                let (x, y) = (i % w, i / w);
                let mut fast = [0i16; INPUTS];
                past.inputs(&net, &recon, i, w, &mut fast);
                // The general rule, written out.
                let b = past.prev[i] as i64;
                let mut want = [0i16; INPUTS];
                for (j, &(dy, dx)) in CAUSAL.iter().enumerate() {
                    let (yy, xx) = (y as isize + dy, x as isize + dx);
                    let v = if yy >= 0 && xx >= 0 && (xx as usize) < w { recon[yy as usize * w + xx as usize] as i64 } else { b };
                    want[j] = clamp_in(v - b, 1);
                }
                for k in 0..9 {
                    let (yy, xx) = ((y as isize + k / 3 - 1).clamp(0, h as isize - 1) as usize, (x as isize + k % 3 - 1).clamp(0, w as isize - 1) as usize);
                    let at = yy * w + xx;
                    want[12 + k as usize] = clamp_in(past.prev[at] as i64 - b, 1);
                    if means {
                        want[21 + k as usize] = clamp_in(past.slow[at] - (b << 4), 2);
                        want[30 + k as usize] = clamp_in(past.fast[at] - (b << 4), 2);
                    }
                }
                assert_eq!(fast, want, "pixel ({x}, {y}), means {means}");
            }
        }
    }

    #[test]
    fn the_means_follow_the_frames() {
        let mut past = Past::default();
        past.observe(&[100, 0], 2);
        assert_eq!((past.slow[0], past.fast[0]), (1600, 1600));
        past.observe(&[116, 0], 2);
        // +256 in 1/16ths: the slow mean moves by 256 >> 4, the fast one by 256 >> 3.
        assert_eq!((past.slow[0], past.fast[0]), (1616, 1632));
        assert_eq!(past.prev, [116, 0]);
        // Floors: -1 >> 4 is -1, so a mean never sticks above a lower frame.
        past.observe(&[0, 0], 2);
        assert_eq!(past.slow[1], 0);
    }
}
