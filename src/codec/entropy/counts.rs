//! Counts coded as counts (entropy stage 6): for photon-counting frames, where a pixel holds a
//! few photons or none and the best code for a count is its probability under the rate of
//! photons at that pixel, not a residual from a predicted value.
//!
//! The stage codes the frame's values themselves (the codes of the `none` predictor, lossless)
//! and estimates each pixel's rate from what the decoder already has, in integer arithmetic:
//!
//! - the past: a per-pixel sum of the chain's earlier counts over a 3x3 neighbourhood weighted
//!   close to how a speckle grain correlates (centre 16, sides 8, corners 4: 64 per frame), discounted by
//!   [`DECAY`]/256 a frame; with the exposure (the same weights, discounted alike) it is a
//!   running estimate of the rate that forgets as the scene changes;
//! - the present: the current frame's decoded left, up, up-left and up-right neighbours
//!   (weights 8, 8, 4, 4);
//! - a prior of one photon at the frame's mean rate (the previous frame's mean, or the running
//!   mean of the rows above on a chain's first).
//!
//! Together they give a Gamma posterior of the rate: its mean `m = photons / exposure` and its
//! evidence (the photons it rests on) select the context, and each count is coded by a binary
//! ladder that starts at `m` rounded and climbs or descends one count a decision (FFV1-like, as
//! the adaptive stage's token ladder), each decision an adaptive probability of its context and
//! count. Counts past [`LADDER`] leave the ladder and code the excess as an Exp-Golomb number
//! (unary exponent with adaptive bits, plain mantissa). The probabilities adapt fast at first and
//! slower with every use (a count-based rate, down to 1/[`RATE_LIMIT`]).
//!
//! The estimator's state continues from one frame of a chain to the next (the container's
//! `carry` flag, as the adaptive stage's models); a frame that does not carry starts afresh. A
//! corrupt stream decodes to wrong counts (the container's CRC catches them) or an error, never a
//! panic or a hang: the decoder reads zeros past the end and every loop is bounded.
//!
//! Stream: `flags` (bit 0: the state was carried), varint length of the range-coded stream,
//! the stream. Layout in `docs/FORMAT.md` (stage 6, container version 8).
//!
//! Measured (`cargo run --release --example count_contexts`, 512x512x32 speckle fixtures
//! decorrelating over 30 frames): 90.8% / 85.0% / 69.2% of the exact Poisson floor at 0.1 / 1 /
//! 20 photons per pixel (the adaptive stage on the same values: 87% / 84% / 74% with `linear`).
//! A genie that codes each count at the previous frame's *true* rate reaches 97.8% / 94.3% /
//! 66.9%: what is left is the rate a causal coder cannot see from a few photons per grain, and
//! the speckle's change from one frame to the next. Tried without gain (within 1%): a decay of
//! 208 to 248, a prior of 1/2 to 2 photons, the present weighted 2 to 8 times more, slowest
//! rates of 1/64 to 1/1024.

use super::range::{Dec, Enc, PROB_BITS};
use super::rans::{put_varint, In, RansError};
use crate::codec::quantizer::{unzigzag_native, zigzag_native};

/// Per-frame discount of the past, out of 256 (the rate's memory: about 1 / (1 - 224/256) = 8
/// frames).
pub const DECAY: u64 = 224;
/// Weights of a 3x3 neighbourhood (centre, side, corner: `[1 2 1]` by `[1 2 1]`, times 4, close
/// to how a speckle grain's intensity correlates) and of one frame in all.
const W_CENTRE: u32 = 16;
const W_SIDE: u32 = 8;
const W_CORNER: u32 = 4;
const W_FRAME: u32 = W_CENTRE + 4 * W_SIDE + 4 * W_CORNER;
/// Counts above this enter the estimates clipped (a 32-bit frame cannot overflow the sums).
const CLIP: u32 = 65_535;
/// Counts coded on the ladder: 0 to `LADDER - 1`; from `LADDER` on, an escape.
const LADDER: usize = 48;
/// Levels of the posterior mean (four per octave of its 8-bit fixed point).
const MEAN_LEVELS: usize = 100;
/// Levels of the posterior's evidence (octaves of photons).
const EVIDENCE_LEVELS: usize = 8;
const CONTEXTS: usize = MEAN_LEVELS * EVIDENCE_LEVELS;
/// Adaptive bits of the escape's exponent.
const ESCAPE_BITS: usize = 34;
/// The slowest adaptation rate of a probability: 1 / RATE_LIMIT.
const RATE_LIMIT: usize = 256;

const FLAG_CARRIED: u8 = 1;

/// An adaptive bit: P(0) in 16 bits and how often it was used (its adaptation rate).
#[derive(Clone, Copy)]
struct Prob {
    p: u16,
    n: u16,
}

impl Prob {
    const NEW: Prob = Prob { p: 1 << 15, n: 0 };

    /// P(0) in [`PROB_BITS`] bits, within [32, 32736]: neither interval is empty.
    #[inline(always)]
    fn p(self) -> u32 {
        ((self.p >> 1) as u32).clamp(32, (1 << PROB_BITS) - 32)
    }

    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let n = self.n as i32;
        let target = if bit { 0 } else { 65_535 };
        let p = self.p as i32;
        // p += (target - p) / (n + 2), in integers (the division truncates toward zero).
        self.p = (p + (target - p) / (n + 2)) as u16;
        self.n = (n + 1).min(RATE_LIMIT as i32 - 2) as u16;
    }
}

/// Decisions of one count `j` of a context: `x >= j` (where the ladder starts), `x > j` (while
/// climbing), `x < j` (while descending).
#[derive(Clone, Copy)]
struct Step([Prob; 3]);
const GE: usize = 0;
const UP: usize = 1;
const DOWN: usize = 2;

/// Reusable state of the stage: the estimator and the models, carried from frame to frame.
#[derive(Default)]
pub struct Scratch {
    /// Per pixel, the discounted weighted sum of past counts.
    past: Vec<u32>,
    /// The discounted weight of one pixel's past (the same for every pixel).
    exposure: u32,
    /// The previous frame's mean count, 8 fractional bits (0: no previous frame).
    mean: u64,
    /// The current frame's counts.
    vals: Vec<u32>,
    /// Three rows of [`Scratch::absorb`]'s row pass.
    rows3: Vec<u32>,
    /// [context][count].
    ladder: Vec<[Step; LADDER]>,
    escape: Vec<Prob>,
}

impl Scratch {
    fn start(&mut self, n: usize, carry: bool) {
        if !carry || self.past.len() != n || self.ladder.is_empty() {
            self.past.clear();
            self.past.resize(n, 0);
            self.exposure = 0;
            self.mean = 0;
            self.ladder.clear();
            self.ladder.resize(CONTEXTS, [Step([Prob::NEW; 3]); LADDER]);
            self.escape = vec![Prob::NEW; ESCAPE_BITS];
        }
        self.vals.clear();
        self.vals.resize(n, 0);
    }

    /// Whether `start(n, true)` would continue the state.
    fn can_carry(&self, n: usize) -> bool {
        self.past.len() == n && !self.ladder.is_empty()
    }

    /// Fold the frame just coded (`vals`) into the past: discount, then add its 3x3 weighted
    /// counts (edges replicated, so every pixel's weights sum to [`W_FRAME`]); the kernel is
    /// separable, so a row pass then a column pass.
    fn absorb(&mut self, cols: usize) {
        let n = self.vals.len();
        let rows = n / cols;
        let vals = &self.vals;
        // Horizontal [1 2 1] of row `y` (at most 4 x 65535 per entry).
        let horizontal = |y: usize, h: &mut [u32]| {
            let v = &vals[y * cols..][..cols];
            for x in 0..cols {
                h[x] = v[x.saturating_sub(1)].min(CLIP) + 2 * v[x].min(CLIP) + v[(x + 1).min(cols - 1)].min(CLIP);
            }
        };
        // Three rows of it at a time (above, this, below), then the vertical [1 2 1] of those,
        // times 4: the 3x3 kernel.
        self.rows3.clear();
        self.rows3.resize(3 * cols, 0);
        let (mut up, rest) = self.rows3.split_at_mut(cols);
        let (mut mid, mut down) = rest.split_at_mut(cols);
        if rows > 0 {
            horizontal(0, mid);
            up.copy_from_slice(mid);
        }
        for y in 0..rows {
            horizontal((y + 1).min(rows - 1), down);
            for (((p, &u), &m), &d) in self.past[y * cols..][..cols].iter_mut().zip(&*up).zip(&*mid).zip(&*down) {
                *p = ((*p as u64 * DECAY) >> 8) as u32 + 4 * (u + 2 * m + d);
            }
            (up, mid, down) = (mid, down, up);
        }
        let sum: u64 = vals.iter().map(|&v| v.min(CLIP) as u64).sum();
        self.exposure = ((self.exposure as u64 * DECAY) >> 8) as u32 + W_FRAME;
        self.mean = ((sum << 8) / n.max(1) as u64).max(1);
    }
}

/// The count a code stands for: the residual from zero of the `none` predictor (see
/// `quantizer::lossless_codes`), i.e. the value of an unsigned pixel.
#[inline(always)]
fn count_of(code: u32, mask: u32) -> u32 {
    unzigzag_native(code) & mask
}

/// Inverse of [`count_of`] (on `0..=mask`).
#[inline(always)]
fn code_of(count: u32, mask: u32) -> u32 {
    zigzag_native(count, mask)
}

fn mask_of(width: usize) -> u32 {
    if width >= 4 {
        u32::MAX
    } else {
        (1u32 << (8 * width)) - 1
    }
}

/// `m` (8 fractional bits) on a log scale, four levels an octave.
#[inline(always)]
fn mean_level(m: u64) -> usize {
    if m < 8 {
        return m as usize;
    }
    let t = 63 - m.leading_zeros() as usize;
    (8 + 4 * (t - 3) + ((m >> (t - 2)) & 3) as usize).min(MEAN_LEVELS - 1)
}

/// One side of the range coder: the encoder codes the given bit, the decoder returns the bit it
/// reads (and ignores the one given), so the stage's logic is written once for both.
trait Bits {
    fn bit(&mut self, m: &mut Prob, bit: bool) -> bool;
    /// A bit at probability one half.
    fn even(&mut self, bit: bool) -> bool;
}

impl Bits for Enc {
    #[inline(always)]
    fn bit(&mut self, m: &mut Prob, bit: bool) -> bool {
        self.code(m.p(), bit);
        m.update(bit);
        bit
    }
    fn even(&mut self, bit: bool) -> bool {
        self.code(1 << (PROB_BITS - 1), bit);
        bit
    }
}

impl Bits for Dec<'_> {
    #[inline(always)]
    fn bit(&mut self, m: &mut Prob, _: bool) -> bool {
        let bit = self.decide(m.p());
        m.update(bit);
        bit
    }
    fn even(&mut self, _: bool) -> bool {
        self.decide(1 << (PROB_BITS - 1))
    }
}

/// Code (or decode) count `x` on the ladder of a context starting at `k`; the decoder's `x` is
/// ignored and the count read is returned.
#[inline(always)]
fn ladder<B: Bits>(io: &mut B, steps: &mut [Step; LADDER], escape: &mut [Prob], k: usize, x: u32) -> u32 {
    let x64 = x as u64;
    let climb = k == 0 || io.bit(&mut steps[k].0[GE], x64 >= k as u64);
    if climb {
        let mut j = k;
        while j < LADDER - 1 && io.bit(&mut steps[j].0[UP], x64 > j as u64) {
            j += 1;
        }
        if j < LADDER - 1 || !io.bit(&mut steps[j].0[UP], x64 > j as u64) {
            return j as u32;
        }
        // Escape: x - LADDER + 1 >= 1 as Exp-Golomb (exponent in unary, adaptive; mantissa plain).
        let e = x64.wrapping_sub(LADDER as u64 - 1);
        let bits = 64 - e.leading_zeros() as usize;
        let mut t = 1;
        while t < ESCAPE_BITS - 1 && io.bit(&mut escape[t], bits > t) {
            t += 1;
        }
        let mut v = 1u64;
        for i in (0..t - 1).rev() {
            v = (v << 1) | io.even((e >> i) & 1 != 0) as u64;
        }
        // (A corrupt stream may claim a count past 32 bits: it wraps, and the CRC catches it.)
        return (v + LADDER as u64 - 1) as u32;
    }
    let mut j = k - 1;
    while j > 0 && io.bit(&mut steps[j].0[DOWN], x64 < j as u64) {
        j -= 1;
    }
    j as u32
}

/// `2^56 / w` rounded up: `(p * recip(w)) >> 48` is `(p << 8) / w` to within one for every `p`
/// below 2^32 (the stage's definition of a mean, exact on every machine).
#[inline(always)]
fn recip(w: u64) -> u64 {
    (1u64 << 56).div_ceil(w.max(1))
}

/// Code (`vals` given, `B` the encoder) or decode (`vals` filled) one frame's counts.
fn run<B: Bits>(io: &mut B, s: &mut Scratch, cols: usize, decode: bool) {
    let Scratch { past, exposure, mean, vals, ladder: models, escape, .. } = s;
    let (exposure, prior_mean) = (*exposure as u64, *mean);
    let mut frame_sum = 0u64;
    for y in 0..vals.len() / cols {
        // The prior: one photon at the frame's mean (8 fractional bits): the previous frame's, or
        // on a chain's first frame the mean of the rows above.
        let m0 = if prior_mean > 0 { prior_mean } else { ((frame_sum + 1) << 8) / (y * cols + 1) as u64 };
        let base = ((W_CENTRE as u64) << 8) / m0.max(1) + exposure;
        // The present's weights: inside the frame only (the first row has no row above).
        let (side_up, corner) = if y > 0 { (W_SIDE, W_CORNER) } else { (0, 0) };
        let (done, rest) = vals.split_at_mut(y * cols);
        let up: &[u32] = if y > 0 { &done[(y - 1) * cols..] } else { &[] };
        let row = &mut rest[..cols];
        let past = &past[y * cols..][..cols];
        // Interior pixels share one weight, so one reciprocal.
        let inner = recip(base + (W_SIDE + side_up + 2 * corner) as u64);
        let mut left = 0u32;
        for x in 0..cols {
            let c = |v: u32| v.min(CLIP);
            let (mut near, mut r) = (0u32, inner);
            if y > 0 {
                let ul = if x > 0 { c(up[x - 1]) } else { 0 };
                let ur = if x + 1 < cols { c(up[x + 1]) } else { 0 };
                near += W_SIDE * c(up[x]) + W_CORNER * (ul + ur);
            }
            near += W_SIDE * left;
            if x == 0 || x + 1 == cols {
                let w = base + (side_up + if x > 0 { W_SIDE + corner } else { 0 } + if x + 1 < cols { corner } else { 0 }) as u64;
                r = recip(w);
            }
            let photons = W_CENTRE as u64 + past[x] as u64 + near as u64;
            let m = ((photons as u128 * r as u128) >> 48) as u64;
            let evidence = (64 - (photons / W_CENTRE as u64).leading_zeros() as usize).clamp(1, EVIDENCE_LEVELS) - 1;
            let ctx = mean_level(m) * EVIDENCE_LEVELS + evidence;
            let k = (((m + 128) >> 8) as usize).min(LADDER - 1);
            let v = ladder(io, &mut models[ctx], escape, k, if decode { 0 } else { row[x] });
            if decode {
                row[x] = v;
            }
            left = c(v);
            frame_sum += left as u64;
        }
    }
}

/// The row length the stage works with: `cols`, or where `n` codes are not whole rows of it (no
/// frame of the codec, but the stage takes any codes), one row of all.
fn row_length(n: usize, cols: usize) -> usize {
    if cols > 0 && n % cols == 0 {
        cols
    } else {
        n.max(1)
    }
}

/// Code one frame's codes (`width` significant bytes each, `cols` codes per row), continuing the
/// state of the frame coded before with `scratch` when `carry` (and its geometry allows).
pub fn encode_with(codes: &[u32], width: usize, cols: usize, carry: bool, scratch: &mut Scratch) -> Vec<u8> {
    let n = codes.len();
    let cols = row_length(n, cols);
    let mask = mask_of(width);
    let carried = carry && scratch.can_carry(n);
    scratch.start(n, carried);
    for (v, &c) in scratch.vals.iter_mut().zip(codes) {
        *v = count_of(c, mask);
    }
    let mut enc = Enc::new(Vec::with_capacity(n / 4 + 16));
    run(&mut enc, scratch, cols, false);
    scratch.absorb(cols);
    let stream = enc.finish();
    let mut out = Vec::with_capacity(stream.len() + 12);
    out.push(if carried { FLAG_CARRIED } else { 0 });
    put_varint(&mut out, stream.len() as u64);
    out.extend_from_slice(&stream);
    out
}

/// Decode `n` codes of a frame coded by [`encode_with`]; `carry` as the encoder was given it
/// (the decoder must have decoded the chain's previous frame with `scratch`).
pub fn decode_with(data: &[u8], n: usize, width: usize, cols: usize, carry: bool, out: &mut Vec<u32>, scratch: &mut Scratch) -> Result<(), RansError> {
    let cols = row_length(n, cols);
    let mask = mask_of(width);
    let mut inp = In { b: data, pos: 0 };
    let flags = inp.byte()?;
    if flags & !FLAG_CARRIED != 0 {
        return Err(RansError("bad counts stream header"));
    }
    let carried = flags & FLAG_CARRIED != 0;
    if carried && !(carry && scratch.can_carry(n)) {
        return Err(RansError("counts stream continues a state the decoder does not have"));
    }
    let len = inp.varint()? as usize;
    let mut dec = Dec::new(inp.take(len)?);
    if inp.pos != data.len() {
        return Err(RansError("trailing bytes after the counts stream"));
    }
    scratch.start(n, carried);
    run(&mut dec, scratch, cols, true);
    if dec.pos > dec.data.len() {
        // (The state is not continued from a frame that failed.)
        scratch.past.clear();
        return Err(RansError("counts stream truncated"));
    }
    out.clear();
    out.extend(scratch.vals.iter().map(|&v| code_of(v, mask)));
    if width < 4 && scratch.vals.iter().any(|&v| v > mask) {
        scratch.past.clear();
        return Err(RansError("count wider than the pixel type"));
    }
    scratch.absorb(cols);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_codes_are_inverse() {
        for width in [1usize, 2] {
            let mask = mask_of(width);
            for c in 0..=mask {
                assert_eq!(code_of(count_of(c, mask), mask), c, "width {width} code {c}");
            }
        }
        // An unsigned pixel's `none` code is twice its value below half the range.
        assert_eq!(count_of(2 * 37, 0xffff), 37);
        for c in [0, 1, 2, 0x7fff_ffff, 0x8000_0000, u32::MAX] {
            assert_eq!(code_of(count_of(c, u32::MAX), u32::MAX), c);
        }
    }

    fn frames(n: usize, len: usize, seed: u32) -> Vec<Vec<u32>> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                (0..len)
                    .map(|i| {
                        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        // Mostly 0-3 photons, a few large counts (escapes), a few at the top.
                        let r = s >> 8;
                        let v = match r % 1000 {
                            0 => 70_000 + r % 5,
                            1 => u32::MAX >> (r % 3),
                            2..=30 => 40 + r % 200,
                            _ => (r % 7) * (i as u32 % 3) / 4,
                        };
                        code_of(v, u32::MAX)
                    })
                    .collect()
            })
            .collect()
    }

    /// Frames coded in order, carrying the state, decode back bit-exact (every width, escapes,
    /// odd geometry), and the state carried makes later frames smaller than fresh ones.
    #[test]
    fn frames_round_trip_with_and_without_carry() {
        for (width, cols) in [(4usize, 37usize), (2, 1), (1, 64)] {
            let mask = mask_of(width);
            let fs: Vec<Vec<u32>> =
                frames(4, 37 * 29, width as u32).into_iter().map(|f| f.into_iter().map(|c| code_of(count_of(c, u32::MAX) & mask, mask)).collect()).collect();
            let (mut enc, mut dec) = (Scratch::default(), Scratch::default());
            for (k, f) in fs.iter().enumerate() {
                let bytes = encode_with(f, width, cols, k > 0, &mut enc);
                let mut back = Vec::new();
                decode_with(&bytes, f.len(), width, cols, k > 0, &mut back, &mut dec).unwrap();
                assert_eq!(&back, f, "width {width} frame {k}");
            }
        }
    }

    /// Sparse counts at a slowly varying rate: with the past, a frame costs less than alone.
    #[test]
    fn the_past_makes_counts_cheaper() {
        let (cols, rows) = (64usize, 64usize);
        let mut s = 7u32;
        let mut rnd = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f64 / (1u32 << 24) as f64
        };
        // A fixed rate map (0.05 to 3 photons), Bernoulli-sum counts.
        let rate: Vec<f64> = (0..cols * rows).map(|i| 0.05 + 3.0 * (((i % cols) / 8 + (i / cols) / 8) % 2) as f64).collect();
        let fs: Vec<Vec<u32>> = (0..6).map(|_| rate.iter().map(|&r| code_of((0..8).filter(|_| rnd() < r / 8.0).count() as u32, 0xffff)).collect()).collect();
        let (mut carried, mut fresh) = (Scratch::default(), Scratch::default());
        let sizes: Vec<(usize, usize)> = fs
            .iter()
            .enumerate()
            .map(|(k, f)| (encode_with(f, 2, cols, k > 0, &mut carried).len(), encode_with(f, 2, cols, false, &mut fresh).len()))
            .collect();
        assert!(sizes[3..].iter().all(|&(c, f)| (c as f64) < 0.9 * f as f64), "{sizes:?}");
    }

    /// Damaged streams: an error or wrong codes, never a panic; a carried stream is refused by a
    /// decoder without the state.
    #[test]
    fn damaged_streams_are_refused_or_wrong() {
        let fs = frames(2, 40 * 40, 3);
        let mut enc = Scratch::default();
        let first = encode_with(&fs[0], 4, 40, false, &mut enc);
        let second = encode_with(&fs[1], 4, 40, true, &mut enc);
        let mut out = Vec::new();
        assert!(decode_with(&second, fs[1].len(), 4, 40, true, &mut out, &mut Scratch::default()).is_err(), "no state to continue");
        assert!(decode_with(&first[..first.len() / 2], fs[0].len(), 4, 40, false, &mut out, &mut Scratch::default()).is_err(), "truncated");
        assert!(decode_with(&[4, 0], fs[0].len(), 4, 40, false, &mut out, &mut Scratch::default()).is_err(), "unknown flag");
        let mut trailing = first.clone();
        trailing.push(0);
        assert!(decode_with(&trailing, fs[0].len(), 4, 40, false, &mut out, &mut Scratch::default()).is_err(), "trailing bytes");
        for i in (0..first.len()).step_by(7) {
            let mut bad = first.clone();
            bad[i] ^= 0x5a;
            if decode_with(&bad, fs[0].len(), 4, 40, false, &mut out, &mut Scratch::default()).is_ok() {
                assert_eq!(out.len(), fs[0].len());
            }
        }
    }
}
