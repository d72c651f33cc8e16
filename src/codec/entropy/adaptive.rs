//! Context-adaptive binary range coder for residual codes (entropy stage 5).
//!
//! Every code is turned back into the signed residual it stands for and binarised as FFV1 /
//! CABAC do: a magnitude token (0, or 1 + the exponent of the magnitude) coded as a unary ladder
//! that starts at the context's running mean token (so typical values take two or three
//! decisions), the two mantissa bits below the top bit, the remaining low bits raw, and the sign.
//! Each modelled bit has an adaptive probability (two counters adapting at different rates,
//! averaged), chosen by a context computed from what the decoder already has:
//!
//! - the residual magnitudes of the left, upper, upper-left and upper-right neighbours,
//! - the previous frame's residuals at the same pixel and its four neighbours (the *temporal*
//!   context; absent on key frames),
//! - the signs of the left, upper and previous-frame residuals (sign context).
//!
//! The ladder and first mantissa bits mix (average) two models: one in the activity/temporal
//! context, one in a context of the larger and the smaller of the left and upper magnitudes, or
//! (the *intensity context*, container version 8) of the larger magnitude and the local
//! intensity of the frame's reference: photon noise grows with the intensity, so under an error
//! bound it tells how large a code is likely to be (ctc-fluo-nuclei abs:2 / abs:4 2.7% / 4.6%
//! smaller, the detector fixtures 3-5%; lossless it gains at most 0.4% for 4% of the decoding
//! speed, and the encoder uses it under a bound only).
//!
//! Activities are scaled by a per-frame shift so that 8-bit and 16-bit residuals use the same
//! context range. All arithmetic is integer, so every machine decodes the same codes; a corrupt
//! stream gives wrong codes (caught by the container's CRC) or an error, never a panic or a hang:
//! the decoder reads zeros past the end (then reports it) and every loop is bounded.
//!
//! Row slices (container version 11): a frame of 196,608 pixels or more may be cut into up to
//! four runs of rows ([`slices_for`]), each a stream of its own with models of its own (carried
//! slice by slice from frame to frame), coded and decoded on as many threads
//! ([`Scratch::threads`]): the serial chain below is cut without cutting the frame's other
//! contexts (temporal, gradient and intensity stay the whole frame's; only a slice's first row
//! loses the row above). On the shared sets two slices cost 0.1-0.4% in size
//! (`docs/results/row-slices.txt`).
//!
//! The stream layout is in `docs/FORMAT.md` (stage 5). Tried and dropped (they did not pay on
//! the shared data sets): JPEG-LS bias cancellation per context, local gradients of the
//! reconstruction and the previous frame's intensity as extra contexts (an extra dimension;
//! the intensity context above replaces one instead), a 16-symbol adaptive
//! CDF instead of the binary ladder, and two interleaved slices on one thread for speed (two
//! independent dependency chains did not decode faster: the time goes to mispredicted branches,
//! not to latency, and they cost about 1% in size);
//! logistic mixing of the four estimates instead of the average (0.1-1.9% smaller for 30-42% of
//! the decoding speed) and update-count rates (larger on all but one set):
//! `docs/results/issue14-mixing.txt`.
//!
//! Speed notes (the bitstream is fixed; these only change how it is computed): the range
//! decoder computes both outcomes of a decision and selects, and renormalises its first byte
//! without a branch (the bits are unpredictable by design); the ladder's direction is
//! selected, not branched on; the models a pixel touches sit together in memory (a token's
//! `ge`/`up`/`down`/`man1` share 16 bytes, an (exponent, level) pair's second to fourth
//! mantissa models one cache line, as a tree the decoder reads both children of before the
//! bit that picks one); context levels are table lookups; the left neighbour stays in a
//! register and the row loops run on iterators. Tried and dropped (no gain or slower): a
//! branch-free encoder binarisation into a decision queue coded per row (the encoder's
//! branches predict well; the extra work cost up to 40%), a queue alone, the ladder as
//! branches, a stored ladder start next to the running mean, a zero-residual branch in the
//! decoder. The remaining time is the serial chain per pixel (left residual -> context ->
//! model load -> 2 to 8 dependent decisions), which the format fixes.

use super::super::side_by_side;
use super::range::{Dec, Enc};
use super::rans::{put_varint, BitReader, BitWriter, In, RansError};
use std::ops::Range;

/// Largest exponent of a magnitude: |residual| < 2^34 (32-bit residual minus nothing larger).
const MAX_EXP: usize = 34;
/// Levels of the spatial activity context.
const QA: usize = 24;
/// Levels of the temporal activity context.
const QT: usize = 12;
const MCTX: usize = QA * QT;
/// Levels of each of the two components of the second (mixed-in) context.
const Q2: usize = 24;
const MCTX2: usize = Q2 * Q2;
const SCTX: usize = 27;
// The level tables below rely on these caps.
const _: () = assert!(QA == 24 && Q2 == 24 && QT == 12);

/// Adaptation rates (shifts) of the two probability estimates of a bit.
const FAST: u32 = 4;
const SLOW: u32 = 7;

const FLAG_QUANTISED: u8 = 1;
const FLAG_TEMPORAL: u8 = 2;
/// The second context's smaller magnitude is replaced by the level of the local intensity of
/// the frame's reference (container version 8).
const FLAG_INTENSITY: u8 = 4;
/// The intensity level of a frame without the intensity context (the smaller magnitude is used).
const NO_INTENSITY: u8 = 255;

/// An adaptive bit: two 16-bit estimates of P(bit = 0), fast and slow.
#[derive(Clone, Copy)]
struct Bit {
    fast: u16,
    slow: u16,
}

impl Bit {
    const NEW: Bit = Bit { fast: 1 << 15, slow: 1 << 15 };

    /// P(0) in 15 bits; always within [35, 32767] (the update rules keep both estimates away
    /// from 0 and 65536), so neither interval is empty.
    #[inline(always)]
    fn p(self) -> u32 {
        (self.fast as u32 + self.slow as u32) >> 2
    }

    #[inline(always)]
    fn update(&mut self, bit: bool) {
        // Both outcomes computed, then selected: no branch on a (by design unpredictable) bit.
        let (f, s) = (self.fast, self.slow);
        let (f1, s1) = (f - (f >> FAST), s - (s >> SLOW));
        let (f0, s0) = (f + ((65535 - f) >> FAST), s + ((65535 - s) >> SLOW));
        self.fast = if bit { f1 } else { f0 };
        self.slow = if bit { s1 } else { s0 };
    }
}

/// The coding probability of a bit mixed from two models.
#[inline(always)]
fn p2(m: &Bit, m2: &Bit) -> u32 {
    (m.p() + m2.p()) >> 1
}

impl Enc {
    #[inline(always)]
    fn bit(&mut self, m: &mut Bit, bit: bool) {
        self.code(m.p(), bit);
        m.update(bit);
    }

    /// A bit under the average of two models' probabilities; both adapt.
    #[inline(always)]
    fn bit2(&mut self, m: &mut Bit, m2: &mut Bit, bit: bool) {
        self.code(p2(m, m2), bit);
        m.update(bit);
        m2.update(bit);
    }
}

impl Dec<'_> {
    #[inline(always)]
    fn bit(&mut self, m: &mut Bit) -> bool {
        let bit = self.decide(m.p());
        m.update(bit);
        bit
    }

    #[inline(always)]
    fn bit2(&mut self, m: &mut Bit, m2: &mut Bit) -> bool {
        let bit = self.decide(p2(m, m2));
        m.update(bit);
        m2.update(bit);
        bit
    }
}

/// Magnitude tokens: 0 for a zero residual, else 1 + the exponent of its magnitude.
const TOKENS: usize = MAX_EXP + 1;

/// Lanes of [`Tok`]: the models of token index `j` of a context.
/// [j]: token >= j (the first ladder bit, at the start `k`).
const GE: usize = 0;
/// [j]: token > j, given token >= j (climbing from k).
const UP: usize = 1;
/// [j]: token < j, given token <= j (descending from k - 1).
const DOWN: usize = 2;
/// [exponent]: the mantissa bit below the top bit.
const MAN1: usize = 3;

/// The four models of one token index of a context (`ge`, `up`, `down`, `man1` of the spec),
/// side by side: a ladder reads neighbouring entries, so it touches one or two cache lines
/// (16-byte aligned, an entry never straddles a line).
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Tok([Bit; 4]);

/// The ladder and `man1` models of one magnitude context.
#[derive(Clone, Copy)]
struct CtxModel {
    tok: [Tok; TOKENS],
}

impl CtxModel {
    const NEW: CtxModel = CtxModel { tok: [Tok([Bit::NEW; 4]); TOKENS] };
}

/// Where the token search starts (k) for a running mean.
#[inline(always)]
fn start(mean: u16) -> usize {
    (((mean + 8) >> 4) as usize).min(TOKENS - 1)
}

/// Running mean of the token, 4 fractional bits.
#[inline(always)]
fn learn(mean: &mut u16, t: usize) {
    *mean = (*mean as i32 + ((((t as i32) << 4) - *mean as i32) >> 3)) as u16;
}

/// The second to fourth mantissa models of one (exponent, spatial level) pair, as a binary
/// tree indexed by the leading bits of the magnitude read so far (`1 b1` for the second bit,
/// `1 b1 b2` for the third, `1 b1 b2 b3` for the fourth: entries 2..16), so one pixel's
/// mantissa reads one cache line. Entries 0 and 1 are unused.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct ManTree([Bit; 16]);

/// The adaptive models of one frame.
#[derive(Clone)]
struct Models {
    /// Running mean token of each magnitude context.
    mean: Vec<u16>,
    ctx: Vec<CtxModel>,
    /// Second context's ladder models, mixed with the first's (their means are not used).
    ctx2: Vec<CtxModel>,
    sign: [Bit; SCTX],
    /// [spatial level][exponent]: the second to fourth mantissa bits (`man2`..`man4`).
    man: Vec<ManTree>,
}

impl Models {
    fn new() -> Models {
        Models {
            mean: vec![0; MCTX],
            ctx: vec![CtxModel::NEW; MCTX],
            ctx2: vec![CtxModel::NEW; MCTX2],
            sign: [Bit::NEW; SCTX],
            man: vec![ManTree([Bit::NEW; 16]); QA * TOKENS],
        }
    }

    fn reset(&mut self) {
        self.mean.fill(0);
        self.ctx.fill(CtxModel::NEW);
        self.ctx2.fill(CtxModel::NEW);
        self.sign = [Bit::NEW; SCTX];
        self.man.fill(ManTree([Bit::NEW; 16]));
    }
}

/// How codes map to signed residuals.
#[derive(Clone, Copy)]
struct Mapping {
    quantised: bool,
    mask: u64,
}

impl Mapping {
    #[inline(always)]
    fn signed(self, code: u32) -> i64 {
        let t = if self.quantised { (code as u64 + self.mask) & self.mask } else { code as u64 };
        ((t >> 1) as i64) ^ -((t & 1) as i64)
    }

    /// The code of residual `s`, if it fits the code width.
    #[inline(always)]
    fn code(self, s: i64) -> Option<u32> {
        let t = ((s << 1) ^ (s >> 63)) as u64;
        if t > self.mask {
            return None;
        }
        Some(if self.quantised { ((t + 1) & self.mask) as u32 } else { t as u32 })
    }
}

/// Finer context level of an activity value: the value itself below 4, then four levels per
/// octave (the two bits below the top one), uncapped.
const fn level4(x: u64) -> usize {
    if x < 4 {
        return x as usize;
    }
    let t = 63 - x.leading_zeros() as usize;
    4 * t - 4 + ((x >> (t - 2)) & 3) as usize
}

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// Context level of an activity value: 0 for 0, then two levels per octave, uncapped.
const fn level(x: u64) -> usize {
    if x == 0 {
        return 0;
    }
    let t = 63 - x.leading_zeros() as usize;
    1 + 2 * t + if t > 0 { ((x >> (t - 1)) & 1) as usize } else { 0 }
}

/// `min(level4(x), 23)` for `x < 128`; every larger value is at or above level 24, so the
/// capped level (`QA - 1`, `Q2 - 1`) of any `x` is `Q4[min(x, 127)]`: one load instead of a
/// dependent chain of bit operations on the left-neighbour path.
static Q4: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = min(level4(i as u64), 23) as u8;
        i += 1;
    }
    t
};

/// `min(level(x), 11)` for `x < 64`; larger values are at or above level 12, so the capped
/// level (`QT - 1`) of any `x` is `QL[min(x, 63)]`.
static QL: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = min(level(i as u64), 11) as u8;
        i += 1;
    }
    t
};

/// `min(level4(x), 23)`.
#[inline(always)]
fn qlog4_23(x: u64) -> usize {
    Q4[x.min(127) as usize] as usize
}

/// `min(level(x), 11)`.
#[inline(always)]
fn qlog_11(x: u64) -> usize {
    QL[x.min(63) as usize] as usize
}

#[inline(always)]
fn sign3(s: i32) -> usize {
    (s > 0) as usize + 2 * (s < 0) as usize
}

/// The intensity level of the pixels of `rows` from the frame's reference `r` (`None`:
/// [`NO_INTENSITY`]): `s = 2 r[i] + r[left] + r[right] + r[up] + r[down]` (edges of the frame
/// replicated), two levels an octave (`s` below 4 is its own level, else `2t + h - 2` with `t`
/// the bit length of `s` and `h` the bit below its top one), at most 23. With a reference, `n`
/// is a whole number of rows.
fn intensity_into(r: Option<&[u32]>, n: usize, cols: usize, rows: Range<usize>, out: &mut Vec<u8>) {
    out.clear();
    let Some(r) = r else {
        out.resize(n.min(rows.end * cols) - rows.start * cols, NO_INTENSITY);
        return;
    };
    out.resize(rows.len() * cols, 0);
    let last = n / cols - 1;
    // (Every `s` from 4095 on is level 23: a table of the first 4096.)
    let level = |s: u64| INTENSITY_LEVEL[s.min(4095) as usize];
    for (y, o) in rows.zip(out.chunks_exact_mut(cols)) {
        let (up, row, down) = (&r[y.saturating_sub(1) * cols..][..cols], &r[y * cols..][..cols], &r[(y + 1).min(last) * cols..][..cols]);
        let s = |x: usize, l: usize, rr: usize| 2 * row[x] as u64 + row[l] as u64 + row[rr] as u64 + up[x] as u64 + down[x] as u64;
        o[0] = level(s(0, 0, 1.min(cols - 1)));
        if cols > 1 {
            o[cols - 1] = level(s(cols - 1, cols - 2, cols - 1));
        }
        // The interior on windows of three: no edge tests in the loop.
        for ((o, w), (&u, &d)) in o[1..cols.saturating_sub(1).max(1)].iter_mut().zip(row.windows(3)).zip(up[1..].iter().zip(&down[1..])) {
            *o = level(2 * w[1] as u64 + w[0] as u64 + w[2] as u64 + u as u64 + d as u64);
        }
    }
}

/// The intensity level of `s` below 4096 ([`intensity_into`]).
const INTENSITY_LEVEL: [u8; 4096] = {
    let mut t = [0u8; 4096];
    let mut s = 0;
    while s < 4096 {
        t[s] = if s < 4 {
            s as u8
        } else {
            let bits = 64 - (s as u64).leading_zeros() as usize;
            let level = 2 * bits + ((s >> (bits - 2)) & 1) - 2;
            if level > 23 {
                23
            } else {
                level as u8
            }
        };
        s += 1;
    }
    t
};

/// The temporal context of the pixels of `rows` from the previous frame's codes `p` (mapped to
/// residuals like the current frame's): `level(2|p[i]| + |p[left]| + |p[right]| + |p[up]| +
/// |p[down]|) << 2 | sign(p[i])` (neighbours outside the frame 0), into `out`; all zero without
/// a previous frame. `mags` is scratch space.
#[allow(clippy::too_many_arguments)]
fn temporal_into(prev: Option<&[u32]>, map: Mapping, n: usize, cols: usize, shift: u32, rows: Range<usize>, out: &mut Vec<u8>, mags: &mut Vec<u32>) {
    let (first, end) = (rows.start * cols, n.min(rows.end * cols));
    out.clear();
    out.resize(end - first, 0);
    let Some(p) = prev.filter(|p| p.len() == n) else { return };
    // Magnitudes (|clipped residual| < 2^31) of the rows `lo..hi` (those of `rows` and one more
    // on each side where the frame has it) with a border of zeros: a row of `cols + 2` above,
    // below and around them.
    let (lo, hi) = (rows.start.saturating_sub(1), (rows.end + 1).min(n.div_ceil(cols)));
    let stride = cols + 2;
    mags.clear();
    mags.resize((hi - lo + 2) * stride, 0);
    for (src, dst) in p[lo * cols..n.min(hi * cols)].chunks(cols).zip(mags[stride..].chunks_mut(stride)) {
        for (&c, m) in src.iter().zip(&mut dst[1..]) {
            *m = clip(map.signed(c)).unsigned_abs();
        }
    }
    let windows = mags[(rows.start - lo) * stride..].windows(3 * stride).step_by(stride);
    for ((src, o), w) in p[first..end].chunks(cols).zip(out.chunks_mut(cols)).zip(windows) {
        let (u, c, d) = (&w[..stride], &w[stride..2 * stride], &w[2 * stride..]);
        // Entry `x + 1` of a bordered row is column `x`: windows of three give the left,
        // centre and right magnitudes; `u[1..]` and `d[1..]` the ones above and below.
        let around = c.windows(3).zip(&u[1..]).zip(&d[1..]);
        for ((&code, o), ((cw, &up), &down)) in src.iter().zip(o.iter_mut()).zip(around) {
            let act = 2 * cw[1] as u64 + cw[0] as u64 + cw[2] as u64 + up as u64 + down as u64;
            let sign = sign3(clip(map.signed(code)));
            *o = ((qlog_11(act >> shift) << 2) | sign) as u8;
        }
    }
}

/// Mixes the local gradient of the prediction `pred` into the temporal context levels `qts`
/// (from [`temporal_into`]): the level becomes the rounded mean of the temporal level and
/// `level(g >> shift, 11)`, `g` the sum of the absolute differences between the prediction and
/// its four neighbours (0 on the frame's border); the sign bits stay.
fn mix_gradient(pred: &[u32], cols: usize, shift: u32, rows: Range<usize>, qts: &mut [u8]) {
    let all = pred.len() / cols;
    for y in rows.start.max(1)..rows.end.min(all.saturating_sub(1)) {
        let (up, row, down) = (&pred[(y - 1) * cols..y * cols], &pred[y * cols..(y + 1) * cols], &pred[(y + 1) * cols..(y + 2) * cols]);
        let q = &mut qts[(y - rows.start) * cols..(y - rows.start + 1) * cols];
        for x in 1..cols.saturating_sub(1) {
            let c = row[x];
            let g = c.abs_diff(row[x - 1]) as u64 + c.abs_diff(row[x + 1]) as u64 + c.abs_diff(up[x]) as u64 + c.abs_diff(down[x]) as u64;
            let (lv, sign) = (q[x] >> 2, q[x] & 3);
            let mixed = (lv as usize + qlog_11(g >> shift)).div_ceil(2).min(QT - 1);
            q[x] = ((mixed as u8) << 2) | sign;
        }
    }
}

/// Residuals clipped to i32 for contexts.
#[inline(always)]
fn clip(s: i64) -> i32 {
    s.clamp(i32::MIN as i64 + 1, i32::MAX as i64) as i32
}

/// The per-frame activity shift: typical neighbourhood activity lands mid-range.
fn choose_shift(codes: &[u32], map: Mapping) -> u32 {
    if codes.is_empty() {
        return 0;
    }
    let sum: u128 = codes.iter().map(|&c| map.signed(c).unsigned_abs() as u128).sum();
    let mean = (sum / codes.len() as u128) as u64;
    // activity ~ 6 * mean; aim it at ~16 (level 9 of 16).
    let a = 6 * mean.max(1);
    (63 - a.leading_zeros()).saturating_sub(4)
}

/// What the coder of one frame may use besides its codes.
#[derive(Clone, Copy, Default)]
pub struct Side<'a> {
    /// Codes of the previous frame of the chain (same geometry), for the temporal context.
    pub prev: Option<&'a [u32]>,
    /// The codes are quantisation codes (`zigzag(q) + 1`, 0 the escape), not lossless ones.
    pub quantised: bool,
    /// Start from the models as coding the previous frame of the chain left them in the
    /// scratch space, instead of fresh ones (container version 5): a frame need not learn
    /// again what the frame before it taught (visp-cube lossless 1.3% smaller, abs:4 2.2%).
    /// The caller guarantees that the scratch space's last adaptive frame was that one.
    pub carry: bool,
    /// The frame's prediction, when the temporal context also weighs its local gradient (where
    /// the prediction has edges, a moved or half-pixel prediction misses most). Only with
    /// `prev`; the motion predictors pass it with `prev` moved by the frame's vectors
    /// (container version 5: visp-cube lossless 0.9% smaller).
    pub gradient: Option<&'a [u32]>,
    /// The frame's reference (the previous reconstruction, or with the motion predictors the
    /// moved prediction), whose local intensity then replaces the smaller neighbour magnitude in
    /// the second context (container version 8: photon noise grows with the intensity; ctc at
    /// abs:4 4.6% smaller, the detector fixtures at abs:2 3-5%).
    pub intensity: Option<&'a [u32]>,
    /// The frame's rows are cut into [`slices_for`] row slices, each coded as a stream of its
    /// own with models of its own (container version 11), so that the slices of a frame are
    /// coded and decoded side by side. A slice's first row has no row above it (as a frame's
    /// first row); its temporal, gradient and intensity contexts are the whole frame's. With
    /// `carry`, slice `j` continues the models of slice `j` of the previous frame, or every
    /// slice those of a previous frame coded whole.
    pub sliced: bool,
    /// The frame's pixel values and their type's mask and prediction levels, for the tree stage
    /// (lossless codes: a pixel's prediction is its value less its residual); the adaptive stage
    /// ignores them.
    pub pixels: Option<(&'a [u32], super::tree::Levels)>,
}

/// The contexts of one pixel.
#[derive(Clone, Copy)]
struct Cx {
    /// Magnitude context.
    mc: usize,
    /// Second (mixed-in) magnitude context.
    mc2: usize,
    /// Sign context.
    sc: usize,
    /// Spatial activity level (the mantissa models' context).
    qa: usize,
}

/// The contexts of a pixel from its left `a`, up `b`, up-left `c` and up-right `d` neighbours'
/// residuals (missing ones are 0) and its temporal context `v`.
#[inline(always)]
fn context(a: i32, b: i32, c: i32, d: i32, v: u8, shift: u32, qi: u8) -> Cx {
    let (ma, mb) = (a.unsigned_abs() as u64, b.unsigned_abs() as u64);
    let act = 2 * ma + 2 * mb + c.unsigned_abs() as u64 + d.unsigned_abs() as u64;
    let qa = qlog4_23(act >> shift);
    let v = v as usize;
    let (hi, lo) = (ma.max(mb), ma.min(mb));
    let second = if qi == NO_INTENSITY { qlog4_23((4 * lo) >> shift) } else { qi as usize };
    Cx { mc: qa * QT + (v >> 2), mc2: qlog4_23((4 * hi) >> shift) * Q2 + second, sc: sign3(a) + 3 * sign3(b) + 9 * (v & 3), qa }
}

/// Buffers and models reused from frame to frame (large per-frame allocations cost page
/// faults).
#[derive(Default)]
pub struct Scratch {
    /// One per row slice of the last frame coded: its models and buffers.
    slices: Vec<SliceState>,
    /// Threads the slices of a frame are coded on (at most one per slice; 0 and 1: the caller's).
    pub threads: usize,
}

/// What one row slice's coder keeps: its models (carried to the same slice of the next frame)
/// and its buffers.
struct SliceState {
    models: Models,
    /// Temporal context of the slice's pixels ([`temporal_into`]).
    qts: Vec<u8>,
    /// Intensity levels of the slice's pixels ([`intensity_into`]).
    qis: Vec<u8>,
    mags: Vec<u32>,
    /// Clipped residuals of the previous and the current row, with a zero border (entry
    /// `x + 1` is column `x`).
    up: Vec<i32>,
    cur: Vec<i32>,
}

impl Scratch {
    /// `count` slice states for a frame of `cols` columns: fresh models (or, with `carry`, the
    /// ones the last frame left, which must have had as many slices) and zeroed row buffers.
    fn fresh(&mut self, cols: usize, count: usize, carry: bool) -> Result<(), RansError> {
        if carry && !self.slices.is_empty() && self.slices.len() != count {
            // From a frame in one slice, every slice continues its models.
            if self.slices.len() != 1 {
                return Err(RansError("adaptive models carried over from a frame of another slice count"));
            }
            let models = self.slices[0].models.clone();
            while self.slices.len() < count {
                self.slices.push(SliceState { models: models.clone(), qts: Vec::new(), qis: Vec::new(), mags: Vec::new(), up: Vec::new(), cur: Vec::new() });
            }
        }
        self.slices.truncate(count);
        for s in &mut self.slices {
            if !carry {
                s.models.reset();
            }
        }
        while self.slices.len() < count {
            self.slices.push(SliceState { models: Models::new(), qts: Vec::new(), qis: Vec::new(), mags: Vec::new(), up: Vec::new(), cur: Vec::new() });
        }
        for s in &mut self.slices {
            for r in [&mut s.up, &mut s.cur] {
                r.clear();
                r.resize(cols + 2, 0);
            }
        }
        Ok(())
    }
}

/// What the contexts of a frame's pixels are made from, besides the codes.
#[derive(Clone, Copy)]
struct Frame<'a> {
    n: usize,
    cols: usize,
    map: Mapping,
    shift: u32,
    /// The previous frame's codes (the temporal context), checked.
    prev: Option<&'a [u32]>,
    /// The prediction whose gradient is mixed into the temporal context.
    gradient: Option<&'a [u32]>,
    /// The reference whose local intensity is the second context, checked.
    intensity: Option<&'a [u32]>,
}

impl Frame<'_> {
    /// The temporal and intensity contexts of the pixels of `rows` into `st`'s buffers.
    fn contexts(&self, rows: Range<usize>, st: &mut SliceState) {
        let Frame { n, cols, map, shift, prev, gradient, intensity } = *self;
        intensity_into(intensity, n, cols, rows.clone(), &mut st.qis);
        temporal_into(prev, map, n, cols, shift, rows.clone(), &mut st.qts, &mut st.mags);
        if prev.is_some() {
            if let Some(g) = gradient.filter(|g| g.len() == n) {
                mix_gradient(g, cols, shift, rows, &mut st.qts);
            }
        }
    }
}

/// Bytes of one row slice's models ([`Models`]): what each slice beyond the first holds more.
pub const MODELS_BYTES: u64 =
    (MCTX * 2 + (MCTX + MCTX2) * std::mem::size_of::<CtxModel>() + QA * TOKENS * std::mem::size_of::<ManTree>() + SCTX * std::mem::size_of::<Bit>()) as u64;

/// Pixels per row slice the encoder aims at.
pub const SLICE_PIXELS: usize = 1 << 17;
/// Most row slices of a frame.
pub const MAX_SLICES: usize = 4;

/// The number of row slices a frame of `n` codes in rows of `cols` is cut into when it is sliced
/// ([`Side::sliced`]): `n / SLICE_PIXELS` rounded to the nearest, at most [`MAX_SLICES`] and at
/// most one per 16 rows. 1: not sliced (frames below 196,608 pixels).
pub fn slices_for(n: usize, cols: usize) -> usize {
    let rows = n / cols.max(1);
    ((n + SLICE_PIXELS / 2) / SLICE_PIXELS).min(MAX_SLICES).min(rows / 16).max(1)
}

/// The number of row slices of a coded stream (its header's third byte; 1 for an empty one).
pub fn slice_count(stream: &[u8]) -> usize {
    stream.get(2).map_or(1, |&c| c as usize)
}

/// Where the encoder cuts a frame's rows into `count` slices: at equal shares of the work its
/// codes are expected to take (per pixel 2 plus the magnitude token, about the decisions a
/// pixel takes), so that slices coded side by side finish together. Every slice gets a row
/// at least. Returns the first row of each slice and the frame's row count at the end.
fn cut_rows(codes: &[u32], cols: usize, map: Mapping, count: usize) -> Vec<usize> {
    let rows = codes.len() / cols;
    let work: Vec<u64> = codes.chunks(cols).map(|row| row.iter().map(|&c| 2 + token(map.signed(c).unsigned_abs()) as u64).sum()).collect();
    let total: u64 = work.iter().sum();
    let mut cuts = vec![0usize];
    let mut acc = 0u64;
    for (y, w) in work.iter().enumerate() {
        let j = cuts.len();
        // Cut before row `y` once the rows before hold slice `j`'s share, leaving a row for
        // every slice still to come.
        if j < count && y > cuts[j - 1] && acc * count as u64 >= total * j as u64 && rows - y >= count - j {
            cuts.push(y);
        }
        acc += w;
    }
    // (Rows too few for equal shares: the last slices one row each.)
    while cuts.len() < count {
        let last = *cuts.last().expect("starts with row 0");
        cuts.push(last + 1);
    }
    cuts.push(rows);
    cuts
}

fn mapping(quantised: bool, width: usize) -> Mapping {
    let mask = if width >= 4 { u32::MAX as u64 } else { (1u64 << (8 * width)) - 1 };
    Mapping { quantised, mask }
}

/// The magnitude token of `u`: 0, or 1 + the index of its top bit.
#[inline(always)]
fn token(u: u64) -> usize {
    64 - u.leading_zeros() as usize
}

/// Code residual `s` in contexts `cx`.
#[inline(always)]
fn put(enc: &mut Enc, raw: &mut BitWriter, m: &mut Models, cx: Cx, s: i64) {
    let u = s.unsigned_abs();
    let t = token(u);
    let (cm, cm2) = (&mut m.ctx[cx.mc], &mut m.ctx2[cx.mc2]);
    let mean = &mut m.mean[cx.mc];
    let k = start(*mean);
    let climb = t >= k;
    if k > 0 {
        let (g, g2) = (&mut cm.tok[k].0[GE], &mut cm2.tok[k].0[GE]);
        enc.bit2(g, g2, climb);
    }
    // The ladder: bits "not yet at t" (`t > j` climbing, `t < j` descending), stopping after
    // the first 0 or at the end (j = 34 climbing, j = 0 descending).
    let (mut j, lane, step, end) = if climb { (k, UP, 1, TOKENS - 1) } else { (k - 1, DOWN, usize::MAX, 0) };
    while j != end {
        let b = j != t;
        enc.bit2(&mut cm.tok[j].0[lane], &mut cm2.tok[j].0[lane], b);
        if !b {
            break;
        }
        j = j.wrapping_add(step);
    }
    learn(mean, t);
    if t == 0 {
        return;
    }
    let e = t - 1;
    if e >= 1 {
        enc.bit2(&mut cm.tok[e].0[MAN1], &mut cm2.tok[e].0[MAN1], (u >> (e - 1)) & 1 != 0);
        let tree = &mut m.man[cx.qa * TOKENS + e].0;
        for i in 2..=e.min(4) {
            // Model: the leading bits above bit `e - i` (2..16).
            let node = (u >> (e - i + 1)) as usize & 15;
            enc.bit(&mut tree[node], (u >> (e - i)) & 1 != 0);
        }
        if e > 4 {
            raw.put((u & ((1u64 << (e - 4)) - 1)) as u32, e as u32 - 4);
        }
    }
    enc.bit(&mut m.sign[cx.sc], s < 0);
}

/// Inverse of [`put`].
#[inline(always)]
fn get(dec: &mut Dec, raw: &mut BitReader, m: &mut Models, cx: Cx) -> Result<i64, RansError> {
    let (cm, cm2) = (&mut m.ctx[cx.mc], &mut m.ctx2[cx.mc2]);
    let mean = &mut m.mean[cx.mc];
    let k = start(*mean);
    let climb = k == 0 || dec.bit2(&mut cm.tok[k].0[GE], &mut cm2.tok[k].0[GE]);
    // Direction selected, not branched on (see `put`).
    let (mut t, lane, step, end) = if climb { (k, UP, 1, TOKENS - 1) } else { (k - 1, DOWN, usize::MAX, 0) };
    while t != end && dec.bit2(&mut cm.tok[t].0[lane], &mut cm2.tok[t].0[lane]) {
        t = t.wrapping_add(step);
    }
    learn(mean, t);
    if t == 0 {
        return Ok(0);
    }
    let e = t - 1;
    let mut u = 1u64;
    if e >= 1 {
        // Each tree bit's model depends on the bit before: both children's probabilities are
        // read before that bit is decoded and one is selected after, so the decoder's serial
        // chain holds a select, not a load. (Past the last level the reads are dummies; the
        // masks keep every index in the tree.)
        let tree = &mut m.man[cx.qa * TOKENS + e].0;
        let (mut c0, mut c1) = (tree[2].p(), tree[3].p());
        let b = dec.bit2(&mut cm.tok[e].0[MAN1], &mut cm2.tok[e].0[MAN1]);
        u = 2 | b as u64;
        let mut p = if b { c1 } else { c0 };
        for _ in 2..=e.min(4) {
            let node = u as usize & 15;
            (c0, c1) = (tree[(2 * node) & 15].p(), tree[(2 * node + 1) & 15].p());
            let b = dec.decide(p);
            tree[node].update(b);
            u = (u << 1) | b as u64;
            p = if b { c1 } else { c0 };
        }
        if e > 4 {
            u = (u << (e - 4)) | raw.get(e as u32 - 4)? as u64;
        }
    }
    let neg = dec.bit(&mut m.sign[cx.sc]);
    Ok(if neg { -(u as i64) } else { u as i64 })
}

/// Code one frame's codes (`width` significant bytes each, `cols` codes per row).
pub fn encode(codes: &[u32], width: usize, cols: usize, side: Side) -> Vec<u8> {
    encode_with(codes, width, cols, side, &mut Scratch::default())
}

/// [`encode`] with reused buffers.
pub fn encode_with(codes: &[u32], width: usize, cols: usize, side: Side, scratch: &mut Scratch) -> Vec<u8> {
    let cols = cols.max(1);
    let n = codes.len();
    let map = mapping(side.quantised, width);
    let shift = choose_shift(codes, map);
    let prev = side.prev.filter(|p| p.len() == n);
    // (The intensity context needs whole rows.)
    let intensity = side.intensity.filter(|r| r.len() == n && n % cols == 0);
    let flags =
        if side.quantised { FLAG_QUANTISED } else { 0 } | if prev.is_some() { FLAG_TEMPORAL } else { 0 } | if intensity.is_some() { FLAG_INTENSITY } else { 0 };
    let frame = Frame { n, cols, map, shift, prev, gradient: side.gradient, intensity };
    // Slices need whole rows too.
    let count = if side.sliced && n % cols == 0 { slices_for(n, cols) } else { 1 };
    // The models of the previous frame had this slice count or one (the caller guarantees it:
    // the frames of a chain share their geometry).
    scratch.fresh(cols, count, side.carry).expect("the encoder's previous frame had this slice count");
    let cuts = if count == 1 { vec![0, n.div_ceil(cols)] } else { cut_rows(codes, cols, map, count) };
    let job = |j: usize, st: &mut SliceState| {
        let rows = cuts[j]..cuts[j + 1];
        frame.contexts(rows.clone(), st);
        encode_rows(&codes[rows.start * cols..n.min(rows.end * cols)], frame, st)
    };
    let parts: Vec<(Vec<u8>, Vec<u8>)> = side_by_side(&mut scratch.slices, scratch.threads, job);
    let mut out = Vec::with_capacity(parts.iter().map(|(a, b)| a.len() + b.len() + 8).sum::<usize>() + 8);
    out.push(flags);
    out.push(shift as u8);
    out.push(count as u8);
    if count == 1 {
        let (stream, raw) = &parts[0];
        put_varint(&mut out, stream.len() as u64);
        out.extend_from_slice(stream);
        out.extend_from_slice(raw);
        return out;
    }
    // Several slices: every slice's rows and two lengths, then their bytes in order.
    for ((stream, raw), rows) in parts.iter().zip(cuts.windows(2)) {
        put_varint(&mut out, (rows[1] - rows[0]) as u64);
        put_varint(&mut out, stream.len() as u64);
        put_varint(&mut out, raw.len() as u64);
    }
    for (stream, raw) in &parts {
        out.extend_from_slice(stream);
        out.extend_from_slice(raw);
    }
    out
}

/// Code the rows of one slice (`codes`; its contexts are in `st`) with `st`'s models.
fn encode_rows(codes: &[u32], f: Frame, st: &mut SliceState) -> (Vec<u8>, Vec<u8>) {
    let (cols, map, shift) = (f.cols, f.map, f.shift);
    let SliceState { models: m, qts, qis, up, cur, .. } = st;
    let mut enc = Enc::new(Vec::with_capacity(codes.len() / 2 + 16));
    let mut raw = BitWriter { out: Vec::new(), acc: 0, n: 0 };
    for ((row, qrow), irow) in codes.chunks(cols).zip(qts.chunks(cols)).zip(qis.chunks(cols)) {
        // `up` holds the row above (zeros on the first row); `cur[x + 1]` gets this row's
        // residuals while the left neighbour rides in a register.
        let mut left = 0i32;
        for ((((&code, &v), w), c), &qi) in row.iter().zip(qrow).zip(up.windows(3)).zip(&mut cur[1..]).zip(irow) {
            let s = map.signed(code);
            put(&mut enc, &mut raw, m, context(left, w[1], w[0], w[2], v, shift, qi), s);
            left = clip(s);
            *c = left;
        }
        std::mem::swap(up, cur);
    }
    (enc.finish(), raw.finish())
}

/// Decode `n` codes of a frame (`width` bytes each, `cols` per row); `prev` are the previous
/// frame's codes when the frame has one.
pub fn decode(data: &[u8], n: usize, width: usize, cols: usize, prev: Option<&[u32]>, out: &mut Vec<u32>) -> Result<(), RansError> {
    decode_with(data, n, width, cols, Side { prev, ..Side::default() }, out, &mut Scratch::default())
}

/// [`decode`] with reused buffers.
/// `side` as the encoder had it (its `quantised` is read from the stream).
pub fn decode_with(data: &[u8], n: usize, width: usize, cols: usize, side: Side, out: &mut Vec<u32>, scratch: &mut Scratch) -> Result<(), RansError> {
    let cols = cols.max(1);
    let mut inp = In { b: data, pos: 0 };
    let (flags, shift, count) = (inp.byte()?, inp.byte()?, inp.byte()? as usize);
    if flags & !(FLAG_QUANTISED | FLAG_TEMPORAL | FLAG_INTENSITY) != 0 || shift > 40 {
        return Err(RansError("bad adaptive stream header"));
    }
    // A sliced frame has the count its geometry gives; any other frame one slice.
    let want = if side.sliced && n % cols == 0 { slices_for(n, cols) } else { 1 };
    if count != want {
        return Err(RansError("adaptive stream with a slice count its frame does not have"));
    }
    // Each slice's first row (and the frame's rows at the end), range-coded stream and raw bits.
    let mut cuts = vec![0usize];
    let mut parts: Vec<(&[u8], &[u8])> = Vec::with_capacity(count);
    if count == 1 {
        let len = inp.varint()? as usize;
        parts.push((inp.take(len)?, &data[inp.pos..]));
        cuts.push(n.div_ceil(cols));
    } else {
        let rows = n / cols;
        let mut lens = Vec::with_capacity(count);
        for _ in 0..count {
            let (r, last) = (inp.varint()?, *cuts.last().expect("starts with row 0"));
            if r == 0 || r > (rows - last) as u64 {
                return Err(RansError("adaptive row slices that do not tile the frame"));
            }
            cuts.push(last + r as usize);
            lens.push((inp.varint()? as usize, inp.varint()? as usize));
        }
        if cuts.last() != Some(&rows) {
            return Err(RansError("adaptive row slices that do not tile the frame"));
        }
        for (a, b) in lens {
            parts.push((inp.take(a)?, inp.take(b)?));
        }
        if inp.pos != data.len() {
            return Err(RansError("trailing bytes after the adaptive stream's slices"));
        }
    }
    let map = mapping(flags & FLAG_QUANTISED != 0, width);
    let prev = match flags & FLAG_TEMPORAL != 0 {
        true => Some(side.prev.filter(|p| p.len() == n).ok_or(RansError("temporal context without a previous frame"))?),
        false => None,
    };
    let intensity = match (flags & FLAG_INTENSITY != 0, side.intensity) {
        (true, Some(r)) if r.len() == n && n % cols == 0 => Some(r),
        (false, None) => None,
        (true, _) => return Err(RansError("intensity context without the frame's reference")),
        (false, Some(_)) => return Err(RansError("a reference given for a stream without the intensity context")),
    };
    let frame = Frame { n, cols, map, shift: shift as u32, prev, gradient: side.gradient, intensity };
    scratch.fresh(cols, count, side.carry)?;
    out.clear();
    out.resize(n, 0);
    // The output cut into each slice's rows.
    let mut outs: Vec<&mut [u32]> = Vec::with_capacity(count);
    let mut rest = &mut out[..];
    for r in cuts.windows(2) {
        let len = n.min(r[1] * cols) - r[0] * cols;
        let (a, b) = std::mem::take(&mut rest).split_at_mut(len);
        outs.push(a);
        rest = b;
    }
    let mut work: Vec<(&mut SliceState, &mut [u32])> = scratch.slices.iter_mut().zip(outs).collect();
    let job = |j: usize, (st, o): &mut (&mut SliceState, &mut [u32])| {
        frame.contexts(cuts[j]..cuts[j + 1], st);
        decode_rows(parts[j], frame, st, o)
    };
    side_by_side(&mut work, scratch.threads, job).into_iter().collect()
}

/// Inverse of [`encode_rows`]: decode one slice's rows into `out` (its codes).
fn decode_rows((stream, raw): (&[u8], &[u8]), f: Frame, st: &mut SliceState, out: &mut [u32]) -> Result<(), RansError> {
    let (cols, map, shift) = (f.cols, f.map, f.shift);
    let SliceState { models: m, qts, qis, up, cur, .. } = st;
    let mut dec = Dec::new(stream);
    let mut raw = BitReader { b: raw, pos: 0, acc: 0, n: 0 };
    for ((row, qrow), irow) in out.chunks_mut(cols).zip(qts.chunks(cols)).zip(qis.chunks(cols)) {
        // As in `encode_rows`.
        let mut left = 0i32;
        for ((((o, &v), w), c), &qi) in row.iter_mut().zip(qrow).zip(up.windows(3)).zip(&mut cur[1..]).zip(irow) {
            let s = get(&mut dec, &mut raw, m, context(left, w[1], w[0], w[2], v, shift, qi))?;
            *o = map.code(s).ok_or(RansError("code wider than the pixel type"))?;
            left = clip(s);
            *c = left;
        }
        std::mem::swap(up, cur);
    }
    // The encoder's flush leaves 5 bytes the decoder has pre-read; reading further means the
    // stream was cut short.
    if dec.pos > dec.data.len() {
        return Err(RansError("adaptive stream truncated"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(codes: &[u32], width: usize, cols: usize, side: Side) -> usize {
        let enc = encode(codes, width, cols, side);
        let mut back = Vec::new();
        decode(&enc, codes.len(), width, cols, side.prev, &mut back).unwrap();
        assert_eq!(back, codes);
        enc.len()
    }

    #[test]
    fn round_trips_every_width_and_extreme() {
        for width in [1usize, 2, 4] {
            let mask = if width == 4 { u32::MAX } else { (1u32 << (8 * width)) - 1 };
            for n in [0usize, 1, 2, 7, 64, 1000] {
                for cols in [1usize, 3, 10, 64] {
                    let codes: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2654435761) & mask).collect();
                    let ext: Vec<u32> = (0..n).map(|i| [0, mask, 1, mask - 1][i % 4]).collect();
                    for q in [false, true] {
                        round_trip(
                            &codes,
                            width,
                            cols,
                            Side { prev: None, quantised: q, carry: false, gradient: None, intensity: None, sliced: false, pixels: None },
                        );
                        round_trip(
                            &ext,
                            width,
                            cols,
                            Side { prev: Some(&codes), quantised: q, carry: false, gradient: None, intensity: None, sliced: false, pixels: None },
                        );
                    }
                }
            }
        }
    }

    /// Frames cut into row slices decode back on any thread count, continue each slice's
    /// models from the frame before, and refuse a decoder told otherwise about the slicing.
    #[test]
    fn row_slices_round_trip() {
        let (cols, rows) = (512usize, 600usize);
        let n = cols * rows;
        assert_eq!(slices_for(n, cols), 2);
        let frame =
            |seed: u32| -> Vec<u32> { (0..n as u32).map(|i| (((i.wrapping_mul(2_654_435_761) ^ seed) >> 27) * ((i / cols as u32) % 7)) & 0xff).collect() };
        let (a, b) = (frame(1), frame(2));
        let mut enc_scratch = Scratch::default();
        let key = Side { sliced: true, ..Side::default() };
        let ea = encode_with(&a, 1, cols, key, &mut enc_scratch);
        let next = Side { prev: Some(&a), intensity: Some(&a), carry: true, sliced: true, ..Side::default() };
        let eb = encode_with(&b, 1, cols, next, &mut enc_scratch);
        assert_eq!(ea[2], 2, "two slices");
        for threads in [1, 2, 3] {
            let mut sc = Scratch { threads, ..Scratch::default() };
            let mut out = Vec::new();
            decode_with(&ea, n, 1, cols, key, &mut out, &mut sc).unwrap();
            assert_eq!(out, a, "{threads} threads");
            decode_with(&eb, n, 1, cols, next, &mut out, &mut sc).unwrap();
            assert_eq!(out, b, "{threads} threads");
        }
        let mut out = Vec::new();
        assert!(decode_with(&ea, n, 1, cols, Side::default(), &mut out, &mut Scratch::default()).is_err(), "not sliced");
        let plain = encode(&a, 1, cols, Side::default());
        assert!(decode_with(&plain, n, 1, cols, key, &mut out, &mut Scratch::default()).is_err(), "sliced");
        // Models carried from a frame in two slices into a frame in one: refused.
        let mut one = Scratch::default();
        encode_with(&a, 1, cols, Side::default(), &mut one);
        let whole_next = Side { sliced: false, ..next };
        let eb_whole = encode_with(&b, 1, cols, whole_next, &mut one);
        let mut sc = Scratch::default();
        decode_with(&ea, n, 1, cols, key, &mut out, &mut sc).unwrap();
        assert!(decode_with(&eb_whole, n, 1, cols, whole_next, &mut out, &mut sc).is_err(), "two slices carried into one");
        // Slices that do not tile the frame: the first slice's row count changed.
        let mut bad = ea.clone();
        bad[3] ^= 1;
        assert!(decode_with(&bad, n, 1, cols, key, &mut out, &mut Scratch::default()).is_err());
    }

    /// With the intensity context the stream decodes back only with the same reference; without
    /// one it is refused, and a reference given to a stream that has no intensity context too.
    #[test]
    fn intensity_context_round_trips_and_is_checked() {
        let (cols, rows) = (37usize, 23usize);
        let reference: Vec<u32> = (0..cols * rows).map(|i| ((i % cols) * 97 + (i / cols) * 13) as u32 % 4000).collect();
        let codes: Vec<u32> = reference.iter().enumerate().map(|(i, &r)| ((r / 64 + (i as u32).wrapping_mul(2_654_435_761) % 7) * 2) & 0xffff).collect();
        let with = Side { intensity: Some(&reference), ..Side::default() };
        let enc = encode(&codes, 2, cols, with);
        let mut back = Vec::new();
        decode_with(&enc, codes.len(), 2, cols, with, &mut back, &mut Scratch::default()).unwrap();
        assert_eq!(back, codes);
        assert!(decode_with(&enc, codes.len(), 2, cols, Side::default(), &mut back, &mut Scratch::default()).is_err(), "no reference");
        let plain = encode(&codes, 2, cols, Side::default());
        assert!(decode_with(&plain, codes.len(), 2, cols, with, &mut back, &mut Scratch::default()).is_err(), "a reference the stream does not use");
        // A reference of another size is not used by the encoder.
        let short = Side { intensity: Some(&reference[1..]), ..Side::default() };
        assert_eq!(encode(&codes, 2, cols, short), plain);
    }

    /// The intensity levels of the table are those of the formula in FORMAT.md, for every sum.
    #[test]
    fn intensity_levels_match_the_formula() {
        let formula = |s: u64| -> u8 {
            if s < 4 {
                return s as u8;
            }
            let t = 64 - s.leading_zeros() as u64;
            (2 * t + ((s >> (t - 2)) & 1) - 2).min(23) as u8
        };
        for s in (0..70_000u64).chain([u32::MAX as u64 * 6, 1 << 40]) {
            assert_eq!(INTENSITY_LEVEL[s.min(4095) as usize], formula(s), "s = {s}");
        }
    }

    #[test]
    fn level_tables_match_the_formulas() {
        let xs = (0u64..5000).chain((0..64).flat_map(|b| [1u64 << b, (1u64 << b) - 1, (3u64 << b) >> 1, u64::MAX >> b]));
        for x in xs {
            assert_eq!(qlog4_23(x), level4(x).min(23), "{x}");
            assert_eq!(qlog_11(x), level(x).min(11), "{x}");
        }
    }

    /// FNV-1a over every blob of a fixed synthetic workload (all widths, both mappings, with
    /// and without the temporal context, small and large residuals): pins the bitstream, so a
    /// speed change that alters a single coded bit fails here.
    #[test]
    fn bitstream_is_pinned() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut rng: u64 = 12345;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        for width in [1usize, 2, 4] {
            let mask = if width == 4 { u32::MAX } else { (1u32 << (8 * width)) - 1 };
            let (n, cols) = (3000usize, 61usize);
            // Mostly small codes, some of every exponent.
            let mut frame = || -> Vec<u32> {
                (0..n)
                    .map(|_| {
                        let r = next();
                        let e = if r % 8 == 0 { next() % 32 } else { next() % 4 };
                        (next() & ((1u32 << e) | ((1u32 << e) - 1))) & mask
                    })
                    .collect()
            };
            let (a, b) = (frame(), frame());
            for q in [false, true] {
                for prev in [None, Some(&a[..])] {
                    let enc = encode(&b, width, cols, Side { prev, quantised: q, carry: false, gradient: None, intensity: None, sliced: false, pixels: None });
                    let mut back = Vec::new();
                    decode(&enc, n, width, cols, prev, &mut back).unwrap();
                    assert_eq!(back, b);
                    for &byte in &enc {
                        h = (h ^ byte as u64).wrapping_mul(0x100_0000_01b3);
                    }
                }
            }
        }
        assert_eq!(h, 0x98b3_257e_8f68_269b, "{h:#x}");
    }

    #[test]
    fn small_residuals_compress() {
        let codes: Vec<u32> = (0..10000u32).map(|i| (i.wrapping_mul(2654435761) >> 29) & 3).collect();
        let size = round_trip(&codes, 1, 100, Side::default());
        assert!(size < 10000 / 3, "{size}");
    }

    #[test]
    fn corrupt_streams_error_or_decode() {
        let codes: Vec<u32> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 27) & 31).collect();
        let enc =
            encode(&codes, 2, 50, Side { prev: Some(&codes), quantised: false, carry: false, gradient: None, intensity: None, sliced: false, pixels: None });
        let mut out = Vec::new();
        for cut in [0, 1, 2, 3, enc.len() / 2, enc.len() - 6] {
            let _ = decode(&enc[..cut], codes.len(), 2, 50, Some(&codes), &mut out);
        }
        assert!(decode(&enc, codes.len(), 2, 50, None, &mut out).is_err());
        assert!(decode(&enc[..enc.len() / 2], codes.len(), 2, 50, Some(&codes), &mut out).is_err());
    }
}
