//! The noise floor of a frame sequence, estimated from the frames alone.
//!
//! A detector frame is a noise-free image plus noise. When the noise is *white* (independent
//! from pixel to pixel and from frame to frame, as photon and read noise are), nothing a coder
//! has seen tells it anything about the noise of the next pixel, so no lossless coder can spend
//! fewer bits per pixel on average than the entropy of that noise, whatever it predicts from
//! (even a coder that knew the noise-free image). Under an error bound of `E` the same argument
//! gives the Shannon lower bound `max(0, H - log2(2E + 1))` per pixel: a reconstruction within
//! `E` of the frame leaves at most `2E + 1` integers a pixel could have been. These are the
//! ratio limits `tezipfs bench` prints beside the codec's rows; a target above them cannot be
//! met by any coder.
//!
//! The estimate, for integer images:
//!
//! 1. Every interior pixel's *high-pass residual* `r = (K * f) / 6` with the Laplacian-of-
//!    Laplacian kernel `K = [1 -2 1; -2 4 -2; 1 -2 1]` (Immerkær 1996): it cancels every image
//!    that is locally a plane (and most smooth structure), and on white noise of standard
//!    deviation `s` it has standard deviation `s` (the squares of `K` sum to 36).
//! 2. The noise depends on the intensity (photon noise grows with the count), so the residuals
//!    are binned by their 3x3 local mean into [`BINS`] bins of equal count, and each bin's
//!    standard deviation is taken from the interquartile range of its residuals (robust to the
//!    edges that leak through the kernel).
//! 3. Each bin contributes the entropy of integer noise of that standard deviation (a Gaussian
//!    rounded to integers), weighted by its share of pixels.
//!
//! The estimate is checked against generated sequences whose exact floor is known
//! ([`crate::fixtures::noise_floor_bits`]): it lies 0-3% above it in bits (structure that leaks
//! through the kernel counts as noise), so the ratio limits it gives are slightly low, never
//! flattering. Whiteness is measured, not assumed: the correlation of neighbouring residuals
//! (white noise: -2/3 along a row, 0 from one frame to the next). Where the noise is not white
//! (fixed-pattern noise, a low-noise video whose residual is mostly structure) the estimate is
//! no bound, and [`NoiseFloor::white`] says so.

use crate::codec::DType;

/// Bins of local mean intensity.
pub const BINS: usize = 64;
/// At most this many residuals are measured (evenly spread over the sequence).
const MAX_SAMPLES: usize = 1 << 22;
/// Correlation of neighbouring residuals along a row for white noise: the kernel's own.
pub const WHITE_ROW_CORRELATION: f64 = -2.0 / 3.0;
/// How far the measured correlations may be from white noise's and still count as white.
const WHITE_TOLERANCE: f64 = 0.1;

#[derive(Clone, Debug, PartialEq)]
pub struct NoiseFloor {
    /// Entropy of the noise in bits per pixel (the lossless limit).
    pub bits: f64,
    /// (standard deviation, share of pixels) of each intensity bin.
    pub bins: Vec<(f64, f64)>,
    /// Correlation of horizontally neighbouring residuals (white noise: -2/3).
    pub row_correlation: f64,
    /// Correlation of a pixel's residual with the same pixel's in the next frame (white: 0;
    /// `None` for a single frame).
    pub frame_correlation: Option<f64>,
}

impl NoiseFloor {
    /// Whether the noise looks white, so that [`NoiseFloor::bits`] bounds every coder.
    pub fn white(&self) -> bool {
        (self.row_correlation - WHITE_ROW_CORRELATION).abs() <= WHITE_TOLERANCE && self.frame_correlation.is_none_or(|c| c.abs() <= WHITE_TOLERANCE)
    }

    /// The fewest bits per pixel any coder needs under an absolute error bound `e` (integer
    /// steps of the image; 0 is lossless).
    pub fn bits_within(&self, e: u32) -> f64 {
        let ball = (2.0 * e as f64 + 1.0).log2();
        self.bins.iter().map(|&(s, share)| share * (integer_noise_entropy(s) - ball).max(0.0)).sum()
    }

    /// The highest ratio a coder can reach on `dtype` frames under the bound `e` (lossless: 0),
    /// `None` where the limit is unbounded (no noise to pay for).
    pub fn ratio_limit(&self, dtype: DType, e: u32) -> Option<f64> {
        let bits = self.bits_within(e);
        (bits > 0.0).then(|| dtype.bits() as f64 / bits)
    }
}

/// Estimate the noise floor of integer images of `width` x `height` (see the module
/// documentation). `None` for floats (their noise is continuous, every bit pattern is a
/// value) and for frames too small to have an interior pixel.
pub fn estimate(frames: &[Vec<u32>], width: usize, height: usize, dtype: DType) -> Option<NoiseFloor> {
    if dtype.is_float() || width < 3 || height < 3 || frames.is_empty() {
        return None;
    }
    let interior = (width - 2) * (height - 2);
    let step = (interior * frames.len()).div_ceil(MAX_SAMPLES).max(1);
    // (3x3 sum, 6 r) of the sampled pixels.
    let mut samples: Vec<(u64, i64)> = Vec::with_capacity(interior * frames.len() / step + 1);
    let mut row = Correlation::default();
    let mut frame = Correlation::default();
    let mut previous: Vec<i64> = Vec::new();
    let mut current: Vec<i64> = vec![0; interior];
    let mut n = 0usize;
    for f in frames {
        for y in 1..height - 1 {
            for x in 1..width - 1 {
                let at = |dx: usize, dy: usize| f[(y + dy - 1) * width + x + dx - 1] as i64;
                let (corners, edges, centre) = (at(0, 0) + at(2, 0) + at(0, 2) + at(2, 2), at(1, 0) + at(0, 1) + at(2, 1) + at(1, 2), at(1, 1));
                let r = corners - 2 * edges + 4 * centre;
                let j = (y - 1) * (width - 2) + x - 1;
                current[j] = r;
                if x > 1 {
                    row.add(current[j - 1], r);
                }
                if let Some(&p) = previous.get(j) {
                    frame.add(p, r);
                }
                if n % step == 0 {
                    samples.push(((corners + edges + centre) as u64, r));
                }
                n += 1;
            }
        }
        std::mem::swap(&mut previous, &mut current);
        current.resize(interior, 0);
    }
    samples.sort_unstable_by_key(|s| s.0);
    let mut bins = Vec::with_capacity(BINS);
    let total = samples.len();
    for b in 0..BINS {
        let bin = &mut samples[b * total / BINS..(b + 1) * total / BINS];
        if bin.is_empty() {
            continue;
        }
        let mut r: Vec<i64> = bin.iter().map(|s| s.1).collect();
        let q = |r: &mut Vec<i64>, p: usize| {
            let at = p * (r.len() - 1) / 4;
            *r.select_nth_unstable(at).1 as f64
        };
        let iqr = (q(&mut r, 3) - q(&mut r, 1)) / 6.0;
        // The interquartile range of a Gaussian is 1.349 standard deviations.
        bins.push((iqr / 1.349, bin.len() as f64 / total as f64));
    }
    let bits = bins.iter().map(|&(s, share)| share * integer_noise_entropy(s)).sum();
    Some(NoiseFloor { bits, bins, row_correlation: row.value(), frame_correlation: (frames.len() > 1).then(|| frame.value()) })
}

/// Pearson correlation of pairs, accumulated.
#[derive(Default)]
struct Correlation {
    n: f64,
    a: f64,
    b: f64,
    aa: f64,
    bb: f64,
    ab: f64,
}

impl Correlation {
    fn add(&mut self, a: i64, b: i64) {
        let (a, b) = (a as f64, b as f64);
        self.n += 1.0;
        self.a += a;
        self.b += b;
        self.aa += a * a;
        self.bb += b * b;
        self.ab += a * b;
    }

    fn value(&self) -> f64 {
        let cov = self.ab / self.n - (self.a / self.n) * (self.b / self.n);
        let va = self.aa / self.n - (self.a / self.n).powi(2);
        let vb = self.bb / self.n - (self.b / self.n).powi(2);
        if va > 0.0 && vb > 0.0 {
            cov / (va * vb).sqrt()
        } else {
            0.0
        }
    }
}

/// Entropy in bits of Gaussian noise of standard deviation `s` rounded to integers.
pub fn integer_noise_entropy(s: f64) -> f64 {
    if s < 0.05 {
        // P(0) > 1 - 1e-23: nothing to code.
        return 0.0;
    }
    if s >= 3.0 {
        // Rounding adds the variance of a uniform step (Sheppard); the Gaussian of that variance
        // is then within 1e-4 bits of the sum below.
        return 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * (s * s + 1.0 / 12.0)).log2();
    }
    // P(k) = integral of the density over [k - 1/2, k + 1/2], by Simpson's rule.
    let density = |t: f64| (-t * t / (2.0 * s * s)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
    let p = |k: f64| {
        const STEPS: usize = 64;
        let h = 1.0 / STEPS as f64;
        let sum: f64 = (0..=STEPS)
            .map(|i| {
                density(k - 0.5 + i as f64 * h)
                    * if i == 0 || i == STEPS {
                        1.0
                    } else if i % 2 == 1 {
                        4.0
                    } else {
                        2.0
                    }
            })
            .sum();
        sum * h / 3.0
    };
    // The tails by the rule, the centre as what they leave (exact where the rule is coarse).
    let tail: Vec<f64> = (1..=20).map(|k| p(k as f64)).collect();
    let centre = 1.0 - 2.0 * tail.iter().sum::<f64>();
    let h = |p: f64| if p > 0.0 { -p * p.log2() } else { 0.0 };
    h(centre) + 2.0 * tail.into_iter().map(h).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{generate_images, noise_floor_bits, Rng, SequenceSpec};

    #[test]
    fn integer_noise_entropy_matches_known_values() {
        // Values summed from the normal CDF elsewhere; the two branches meet at 3.
        assert!((integer_noise_entropy(100.0) - 8.6910).abs() < 1e-3, "{}", integer_noise_entropy(100.0));
        assert!((integer_noise_entropy(3.0) - 3.6387).abs() < 2e-4, "{}", integer_noise_entropy(3.0));
        assert!((integer_noise_entropy(2.9999) - 3.6387).abs() < 2e-4, "{}", integer_noise_entropy(2.9999));
        // A rounded standard Gaussian: -sum p log p with p0 = 0.3829, p1 = 0.2417, p2 = 0.0606, ...
        assert!((integer_noise_entropy(1.0) - 2.1048).abs() < 2e-3, "{}", integer_noise_entropy(1.0));
        assert_eq!(integer_noise_entropy(0.0), 0.0);
        // Mostly zeros: 0.1089 bits (summed from the normal CDF elsewhere).
        assert!((integer_noise_entropy(0.2) - 0.1089).abs() < 2e-3, "{}", integer_noise_entropy(0.2));
    }

    /// On generated detector sequences, whose exact floor the generator knows, the estimate
    /// is at most 4% above it (in bits) and never below it by more than 1%.
    #[test]
    fn estimate_is_close_to_the_generators_exact_floor() {
        for (dtype, seed) in [(DType::U16, 1), (DType::U8, 2)] {
            let spec = SequenceSpec { dtype, ..SequenceSpec::detector_u16(256, 256, 8, seed) };
            let exact = noise_floor_bits(&spec).expect("integer fixture");
            let est = estimate(&generate_images(&spec), 256, 256, dtype).expect("integer frames");
            let rel = est.bits / exact - 1.0;
            assert!((-0.01..=0.04).contains(&rel), "{dtype}: estimate {:.4} vs exact {exact:.4} bits ({:+.1}%)", est.bits, 100.0 * rel);
            assert!(est.white(), "{dtype}: photon noise is white: {est:?}");
        }
    }

    /// Noise that repeats from frame to frame (fixed-pattern noise) can be predicted from the
    /// frame before: the estimate says it is no bound there.
    #[test]
    fn repeated_noise_is_not_white() {
        let mut rng = Rng::new(7);
        let pattern: Vec<u32> = (0..64 * 64).map(|_| (1000.0 + 30.0 * rng.normal()).round() as u32).collect();
        let fresh: Vec<Vec<u32>> = (0..4).map(|_| (0..64 * 64).map(|_| (1000.0 + 30.0 * rng.normal()).round() as u32).collect()).collect();
        let white = estimate(&fresh, 64, 64, DType::U16).unwrap();
        assert!(white.white(), "{white:?}");
        assert!((white.bits - integer_noise_entropy(30.0)).abs() < 0.15, "{white:?}");
        let fixed = estimate(&vec![pattern; 4], 64, 64, DType::U16).unwrap();
        assert!(!fixed.white() && fixed.frame_correlation.unwrap() > 0.99, "{fixed:?}");
    }

    #[test]
    fn bounded_limits_shrink_with_the_bound_and_vanish_without_noise() {
        let mut rng = Rng::new(3);
        let frames: Vec<Vec<u32>> = (0..3).map(|_| (0..128 * 64).map(|_| (5000.0 + 40.0 * rng.normal()).round() as u32).collect()).collect();
        let f = estimate(&frames, 128, 64, DType::U16).unwrap();
        let l: Vec<f64> = [0, 1, 2, 4].iter().map(|&e| f.ratio_limit(DType::U16, e).unwrap()).collect();
        assert!(l.windows(2).all(|w| w[0] < w[1]), "{l:?}");
        // Shannon lower bound: log2(3) bits fewer at abs:1.
        assert!((f.bits_within(1) - (f.bits - 3f64.log2())).abs() < 1e-9);
        let flat = estimate(&[vec![9u32; 16 * 16]], 16, 16, DType::U8).unwrap();
        assert_eq!(flat.bits, 0.0);
        assert_eq!(flat.ratio_limit(DType::U8, 0), None);
        assert!(estimate(&frames, 128, 64, DType::F32).is_none());
        assert!(estimate(&[vec![1, 2]], 2, 1, DType::U8).is_none());
    }
}
