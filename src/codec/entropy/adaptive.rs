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
//! context, one in a context of the larger and the smaller of the left and upper magnitudes.
//!
//! Activities are scaled by a per-frame shift so that 8-bit and 16-bit residuals use the same
//! context range. All arithmetic is integer, so every machine decodes the same codes; a corrupt
//! stream gives wrong codes (caught by the container's CRC) or an error, never a panic or a hang:
//! the decoder reads zeros past the end (then reports it) and every loop is bounded.
//!
//! The stream layout is in `docs/FORMAT.md` (stage 5). Tried and dropped (they did not pay on
//! the shared data sets): JPEG-LS bias cancellation per context, local gradients of the
//! reconstruction and the previous frame's intensity as extra contexts, a 16-symbol adaptive
//! CDF instead of the binary ladder, and two interleaved slices for speed.

use super::rans::{put_varint, BitReader, BitWriter, In, RansError};

/// Probabilities are 15-bit (of the bit being 0).
const PROB_BITS: u32 = 15;
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

/// Adaptation rates (shifts) of the two probability estimates of a bit.
const FAST: u32 = 4;
const SLOW: u32 = 7;

const FLAG_QUANTISED: u8 = 1;
const FLAG_TEMPORAL: u8 = 2;

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

/// LZMA-style range encoder (32-bit range, carry propagation through a cached byte).
struct Enc {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    out: Vec<u8>,
}

impl Enc {
    fn new(out: Vec<u8>) -> Enc {
        Enc { low: 0, range: u32::MAX, cache: 0, cache_size: 1, out }
    }

    #[inline(always)]
    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                self.out.push(temp.wrapping_add(carry));
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    #[inline(always)]
    fn bit(&mut self, m: &mut Bit, bit: bool) {
        let bound = (self.range >> PROB_BITS) * m.p();
        let mask = 0u32.wrapping_sub(bit as u32);
        self.low += (bound & mask) as u64;
        self.range = if bit { self.range - bound } else { bound };
        m.update(bit);
        while self.range < (1 << 24) {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// A bit under the average of two models' probabilities; both adapt.
    #[inline(always)]
    fn bit2(&mut self, m: &mut Bit, m2: &mut Bit, bit: bool) {
        let bound = (self.range >> PROB_BITS) * ((m.p() + m2.p()) >> 1);
        let mask = 0u32.wrapping_sub(bit as u32);
        self.low += (bound & mask) as u64;
        self.range = if bit { self.range - bound } else { bound };
        m.update(bit);
        m2.update(bit);
        while self.range < (1 << 24) {
            self.range <<= 8;
            self.shift_low();
        }
    }

    fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> Dec<'a> {
    fn new(data: &'a [u8]) -> Dec<'a> {
        let mut d = Dec { data, pos: 0, range: u32::MAX, code: 0 };
        for _ in 0..5 {
            d.code = (d.code << 8) | d.byte() as u32;
        }
        d
    }

    /// The next byte; zeros past the end (the caller checks the position at the end).
    #[inline(always)]
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    #[inline(always)]
    fn bit2(&mut self, m: &mut Bit, m2: &mut Bit) -> bool {
        let bound = (self.range >> PROB_BITS) * ((m.p() + m2.p()) >> 1);
        let bit = self.code >= bound;
        let mask = 0u32.wrapping_sub(bit as u32);
        self.code -= bound & mask;
        self.range = if bit { self.range - bound } else { bound };
        m.update(bit);
        m2.update(bit);
        while self.range < (1 << 24) {
            self.range <<= 8;
            self.code = (self.code << 8) | self.byte() as u32;
        }
        bit
    }

    #[inline(always)]
    fn bit(&mut self, m: &mut Bit) -> bool {
        let bound = (self.range >> PROB_BITS) * m.p();
        let bit = self.code >= bound;
        let mask = 0u32.wrapping_sub(bit as u32);
        self.code -= bound & mask;
        self.range = if bit { self.range - bound } else { bound };
        m.update(bit);
        while self.range < (1 << 24) {
            self.range <<= 8;
            self.code = (self.code << 8) | self.byte() as u32;
        }
        bit
    }

}

/// Magnitude tokens: 0 for a zero residual, else 1 + the exponent of its magnitude.
const TOKENS: usize = MAX_EXP + 1;

/// The adaptive models of one magnitude context.
#[derive(Clone)]
struct CtxModel {
    /// Running mean of the token, 4 fractional bits: where the token search starts (k).
    mean: u16,
    /// [k]: token >= k.
    ge: [Bit; TOKENS],
    /// [t]: token > t, given token >= t (climbing from k).
    up: [Bit; TOKENS],
    /// [t]: token < t, given token <= t (descending from k - 1).
    down: [Bit; TOKENS],
    /// [exponent]: the mantissa bit below the top bit.
    man1: [Bit; TOKENS],
}

impl CtxModel {
    const NEW: CtxModel = CtxModel { mean: 0, ge: [Bit::NEW; TOKENS], up: [Bit::NEW; TOKENS], down: [Bit::NEW; TOKENS], man1: [Bit::NEW; TOKENS] };

    #[inline(always)]
    fn start(&self) -> usize {
        (((self.mean + 8) >> 4) as usize).min(TOKENS - 1)
    }

    #[inline(always)]
    fn learn(&mut self, t: usize) {
        self.mean = (self.mean as i32 + ((((t as i32) << 4) - self.mean as i32) >> 3)) as u16;
    }
}

/// The adaptive models of one frame.
struct Models {
    ctx: Vec<CtxModel>,
    /// Second context's ladder models, mixed with the first's.
    ctx2: Vec<CtxModel>,
    sign: Vec<Bit>,
    /// [exponent][first mantissa bit]: the second mantissa bit.
    man2: Vec<Bit>,
    /// [exponent][top two mantissa bits][spatial level]: the third mantissa bit.
    man3: Vec<Bit>,
    /// [exponent][top three mantissa bits][spatial level]: the fourth mantissa bit.
    man4: Vec<Bit>,
}

impl Models {
    fn new() -> Models {
        Models { ctx: vec![CtxModel::NEW; MCTX], ctx2: vec![CtxModel::NEW; MCTX2], sign: vec![Bit::NEW; SCTX], man2: vec![Bit::NEW; TOKENS * 2 * QA], man3: vec![Bit::NEW; TOKENS * 4 * QA], man4: vec![Bit::NEW; TOKENS * 8 * QA] }
    }

    fn reset(&mut self) {
        self.ctx.fill(CtxModel::NEW);
        self.ctx2.fill(CtxModel::NEW);
        self.sign.fill(Bit::NEW);
        self.man2.fill(Bit::NEW);
        self.man3.fill(Bit::NEW);
        self.man4.fill(Bit::NEW);
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
/// octave (the two bits below the top one), capped.
#[inline(always)]
fn qlog4(x: u64, cap: usize) -> usize {
    if x < 4 {
        return x as usize;
    }
    let t = 63 - x.leading_zeros() as usize;
    let h = ((x >> (t - 2)) & 3) as usize;
    (4 * t - 4 + h).min(cap)
}

/// Context level of an activity value: 0 for 0, then two levels per octave, capped.
#[inline(always)]
fn qlog(x: u64, cap: usize) -> usize {
    if x == 0 {
        return 0;
    }
    let t = 63 - x.leading_zeros() as usize;
    let h = if t > 0 { ((x >> (t - 1)) & 1) as usize } else { 0 };
    (1 + 2 * t + h).min(cap)
}

#[inline(always)]
fn sign3(s: i32) -> usize {
    (s > 0) as usize + 2 * (s < 0) as usize
}

/// Per-pixel temporal context from the previous frame's codes `p` (mapped to residuals like
/// the current frame's): `level(2|p[i]| + |p[left]| + |p[right]| + |p[up]| + |p[down]|) << 2 |
/// sign(p[i])` (missing neighbours 0), into `out`; all zero without a previous frame.
fn temporal_into(prev: Option<&[u32]>, map: Mapping, n: usize, cols: usize, shift: u32, out: &mut Vec<u8>) {
    out.clear();
    out.resize(n, 0);
    let Some(p) = prev.filter(|p| p.len() == n) else { return };
    let rows = n.div_ceil(cols);
    // Magnitudes of three rows (up, current, down) with a border of zeros.
    let mag_row = |y: usize, buf: &mut Vec<u64>| {
        buf.clear();
        buf.push(0);
        buf.extend(p[y * cols..((y + 1) * cols).min(n)].iter().map(|&c| clip(map.signed(c)).unsigned_abs() as u64));
        buf.resize(cols + 2, 0);
    };
    let (mut u, mut c, mut d) = (vec![0u64; cols + 2], Vec::with_capacity(cols + 2), Vec::with_capacity(cols + 2));
    mag_row(0, &mut c);
    for y in 0..rows {
        if y + 1 < rows {
            mag_row(y + 1, &mut d);
        } else {
            d.clear();
            d.resize(cols + 2, 0);
        }
        let row = &mut out[y * cols..((y + 1) * cols).min(n)];
        for (x, o) in row.iter_mut().enumerate() {
            let act = 2 * c[x + 1] + c[x] + c[x + 2] + u[x + 1] + d[x + 1];
            let sign = sign3(clip(map.signed(p[y * cols + x])));
            *o = ((qlog(act >> shift, QT - 1) << 2) | sign) as u8;
        }
        std::mem::swap(&mut u, &mut c);
        std::mem::swap(&mut c, &mut d);
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
}


/// The context inputs of one slice: residuals (clipped) of the previous and the current row,
/// with a zero border (entry `x + 1` is column `x`), and the column of the next pixel.
struct Rows {
    up: Vec<i32>,
    cur: Vec<i32>,
    x: usize,
}

impl Rows {
    fn new(cols: usize) -> Rows {
        Rows { up: vec![0; cols + 2], cur: vec![0; cols + 2], x: 0 }
    }

    /// (magnitude context, sign context) of the next pixel (flat index `i`), from its left `a`,
    /// up `b`, up-left `c` and up-right `d` neighbours in the slice (missing ones are 0) and the
    /// temporal context.
    #[inline(always)]
    fn context(&self, t: &Temporal, i: usize) -> (usize, usize, usize) {
        let x = self.x;
        let (a, b, c, d) = (self.cur[x], self.up[x + 1], self.up[x], self.up[x + 2]);
        let m = |v: i32| v.unsigned_abs() as u64;
        let act = 2 * m(a) + 2 * m(b) + m(c) + m(d);
        let qa = qlog4(act >> t.shift, QA - 1);
        let v = t.qts[i] as usize;
        let mc = qa * QT + (v >> 2);
        let sc = sign3(a) + 3 * sign3(b) + 9 * (v & 3);
        let (hi, lo) = if m(a) > m(b) { (m(a), m(b)) } else { (m(b), m(a)) };
        let mc2 = qlog4((4 * hi) >> t.shift, Q2 - 1) * Q2 + qlog4((4 * lo) >> t.shift, Q2 - 1);
        (mc, sc, mc2)
    }

    /// Take in the residual of the pixel just coded.
    #[inline(always)]
    fn push(&mut self, s: i64) {
        self.cur[self.x + 1] = clip(s);
        self.x += 1;
        if self.x + 2 == self.cur.len() {
            self.x = 0;
            std::mem::swap(&mut self.up, &mut self.cur);
        }
    }
}

/// The per-pixel temporal context of a frame (see [`temporal_into`]) and the activity shift.
struct Temporal<'a> {
    shift: u32,
    qts: &'a [u8],
}

/// Buffers and models reused from frame to frame (large per-frame allocations cost page
/// faults).
#[derive(Default)]
pub struct Scratch {
    qts: Vec<u8>,
    models: Vec<Models>,
}

/// Fresh models for `count` slices, reusing `models`' allocations.
fn fresh_models(models: &mut Vec<Models>, count: usize) -> &mut [Models] {
    models.truncate(count);
    for m in models.iter_mut() {
        m.reset();
    }
    while models.len() < count {
        models.push(Models::new());
    }
    &mut models[..]
}

fn mapping(quantised: bool, width: usize) -> Mapping {
    let mask = if width >= 4 { u32::MAX as u64 } else { (1u64 << (8 * width)) - 1 };
    Mapping { quantised, mask }
}


/// Slices of a frame: up to [`MAX_SLICES`] bands of `ceil(rows / count)` rows, coded with their
/// own range coder, models and row contexts, interleaved pixel by pixel. This version writes one
/// slice: two independent dependency chains did not decode faster on real data (the time goes
/// to mispredicted branches, not to latency) and cost about 1% in size.
const MAX_SLICES: usize = 1;
/// Fewest rows per slice.
const MIN_SLICE_ROWS: usize = 16;

fn slices(n: usize, cols: usize, count: usize) -> Vec<std::ops::Range<usize>> {
    let per = n.div_ceil(cols).div_ceil(count.max(1)) * cols;
    (0..count).map(|k| (k * per).min(n)..((k + 1) * per).min(n)).collect()
}

/// Visit the pixels in coding order: position `j` of slice 0, of slice 1, ..., then `j + 1`.
#[inline(always)]
fn interleaved(ranges: &[std::ops::Range<usize>], mut f: impl FnMut(usize, usize) -> Result<(), RansError>) -> Result<(), RansError> {
    let longest = ranges.iter().map(|r| r.len()).max().unwrap_or(0);
    for j in 0..longest {
        for (k, r) in ranges.iter().enumerate() {
            if j < r.len() {
                f(k, r.start + j)?;
            }
        }
    }
    Ok(())
}

/// Code residual `s` in magnitude context `mc` and sign context `sc`.
#[inline(always)]
fn put(enc: &mut Enc, raw: &mut BitWriter, m: &mut Models, (mc, sc, mc2): (usize, usize, usize), s: i64) {
    let u = s.unsigned_abs();
    let t = if u == 0 { 0 } else { 64 - u.leading_zeros() as usize };
    let cm = &mut m.ctx[mc];
    let cm2 = &mut m.ctx2[mc2];
    let k = cm.start();
    if k == 0 || {
        let b = t >= k;
        enc.bit2(&mut cm.ge[k], &mut cm2.ge[k], b);
        b
    } {
        let mut j = k;
        while j + 1 < TOKENS {
            let b = t > j;
            enc.bit2(&mut cm.up[j], &mut cm2.up[j], b);
            if !b {
                break;
            }
            j += 1;
        }
    } else {
        let mut j = k - 1;
        while j > 0 {
            let b = t < j;
            enc.bit2(&mut cm.down[j], &mut cm2.down[j], b);
            if !b {
                break;
            }
            j -= 1;
        }
    }
    cm.learn(t);
    if t > 0 {
        let e = t - 1;
        if e >= 1 {
            let b1 = (u >> (e - 1)) & 1 != 0;
            enc.bit2(&mut cm.man1[e], &mut cm2.man1[e], b1);
            if e >= 2 {
                let b2 = (u >> (e - 2)) & 1 != 0;
                enc.bit(&mut m.man2[(2 * e + b1 as usize) * QA + mc / QT], b2);
                if e >= 3 {
                    let b3 = (u >> (e - 3)) & 1 != 0;
                    enc.bit(&mut m.man3[(4 * e + 2 * b1 as usize + b2 as usize) * QA + mc / QT], b3);
                    if e >= 4 {
                        let b4 = (u >> (e - 4)) & 1 != 0;
                        let top = ((u >> (e - 3)) & 7) as usize;
                        enc.bit(&mut m.man4[(8 * e + top) * QA + mc / QT], b4);
                        if e > 4 {
                            raw.put((u & ((1u64 << (e - 4)) - 1)) as u32, e as u32 - 4);
                        }
                    }
                }
            }
        }
        enc.bit(&mut m.sign[sc], s < 0);
    }
}

/// Inverse of [`put`].
#[inline(always)]
fn get(dec: &mut Dec, raw: &mut BitReader, m: &mut Models, (mc, sc, mc2): (usize, usize, usize)) -> Result<i64, RansError> {
    let cm = &mut m.ctx[mc];
    let cm2 = &mut m.ctx2[mc2];
    let k = cm.start();
    let mut t;
    if k == 0 || dec.bit2(&mut cm.ge[k], &mut cm2.ge[k]) {
        t = k;
        while t + 1 < TOKENS && dec.bit2(&mut cm.up[t], &mut cm2.up[t]) {
            t += 1;
        }
    } else {
        t = k - 1;
        while t > 0 && dec.bit2(&mut cm.down[t], &mut cm2.down[t]) {
            t -= 1;
        }
    }
    cm.learn(t);
    if t == 0 {
        return Ok(0);
    }
    let e = t - 1;
    let mut u = 1u64;
    if e >= 1 {
        let b1 = dec.bit2(&mut cm.man1[e], &mut cm2.man1[e]);
        u = (u << 1) | b1 as u64;
        if e >= 2 {
            let b2 = dec.bit(&mut m.man2[(2 * e + b1 as usize) * QA + mc / QT]);
            u = (u << 1) | b2 as u64;
            if e >= 3 {
                let b3 = dec.bit(&mut m.man3[(4 * e + 2 * b1 as usize + b2 as usize) * QA + mc / QT]);
                u = (u << 1) | b3 as u64;
                if e >= 4 {
                    let top = (u & 7) as usize;
                    let b4 = dec.bit(&mut m.man4[(8 * e + top) * QA + mc / QT]);
                    u = (u << 1) | b4 as u64;
                    if e > 4 {
                        u = (u << (e - 4)) | raw.get(e as u32 - 4)? as u64;
                    }
                }
            }
        }
    }
    let neg = dec.bit(&mut m.sign[sc]);
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
    let flags = if side.quantised { FLAG_QUANTISED } else { 0 } | if prev.is_some() { FLAG_TEMPORAL } else { 0 };
    let count = (n.div_ceil(cols) / MIN_SLICE_ROWS).clamp(1, MAX_SLICES);
    let ranges = slices(n, cols, count);
    temporal_into(prev, map, n, cols, shift, &mut scratch.qts);
    let Scratch { qts, models } = scratch;
    let temporal = Temporal { shift, qts };
    let models = fresh_models(models, count);
    let mut encs: Vec<Enc> = ranges.iter().map(|r| Enc::new(Vec::with_capacity(r.len() / 2 + 16))).collect();
    let mut rows: Vec<Rows> = ranges.iter().map(|_| Rows::new(cols)).collect();
    let mut raw = BitWriter { out: Vec::new(), acc: 0, n: 0 };
    let coded = interleaved(&ranges, |k, i| {
        let cx = rows[k].context(&temporal, i);
        let s = map.signed(codes[i]);
        put(&mut encs[k], &mut raw, &mut models[k], cx, s);
        rows[k].push(s);
        Ok(())
    });
    debug_assert!(coded.is_ok(), "encoding cannot fail");
    let streams: Vec<Vec<u8>> = encs.into_iter().map(Enc::finish).collect();
    let mut out = Vec::with_capacity(streams.iter().map(|s| s.len()).sum::<usize>() + raw.out.len() + 16);
    out.push(flags);
    out.push(shift as u8);
    out.push(count as u8);
    for st in &streams {
        put_varint(&mut out, st.len() as u64);
    }
    for st in &streams {
        out.extend_from_slice(st);
    }
    out.extend_from_slice(&raw.finish());
    out
}

/// Decode `n` codes of a frame (`width` bytes each, `cols` per row); `prev` are the previous
/// frame's codes when the frame has one.
pub fn decode(data: &[u8], n: usize, width: usize, cols: usize, prev: Option<&[u32]>, out: &mut Vec<u32>) -> Result<(), RansError> {
    decode_with(data, n, width, cols, prev, out, &mut Scratch::default())
}

/// [`decode`] with reused buffers.
pub fn decode_with(data: &[u8], n: usize, width: usize, cols: usize, prev: Option<&[u32]>, out: &mut Vec<u32>, scratch: &mut Scratch) -> Result<(), RansError> {
    let cols = cols.max(1);
    let mut inp = In { b: data, pos: 0 };
    let (flags, shift, count) = (inp.byte()?, inp.byte()?, inp.byte()? as usize);
    if flags & !(FLAG_QUANTISED | FLAG_TEMPORAL) != 0 || shift > 40 || count != (n.div_ceil(cols) / MIN_SLICE_ROWS).clamp(1, MAX_SLICES) {
        return Err(RansError("bad adaptive stream header"));
    }
    let mut lens = [0usize; MAX_SLICES];
    for l in lens.iter_mut().take(count) {
        *l = inp.varint()? as usize;
    }
    let mut decs = Vec::with_capacity(count);
    for &l in &lens[..count] {
        decs.push(Dec::new(inp.take(l)?));
    }
    let mut raw = BitReader { b: &data[inp.pos..], pos: 0, acc: 0, n: 0 };
    let map = mapping(flags & FLAG_QUANTISED != 0, width);
    let prev = if flags & FLAG_TEMPORAL != 0 {
        Some(prev.filter(|p| p.len() == n).ok_or(RansError("temporal context without a previous frame"))?)
    } else {
        None
    };
    out.clear();
    out.resize(n, 0);
    let ranges = slices(n, cols, count);
    temporal_into(prev, map, n, cols, shift as u32, &mut scratch.qts);
    let Scratch { qts, models } = scratch;
    let temporal = Temporal { shift: shift as u32, qts };
    let models = fresh_models(models, count);
    let mut rows: Vec<Rows> = ranges.iter().map(|_| Rows::new(cols)).collect();
    {
        interleaved(&ranges, |k, i| {
            let cx = rows[k].context(&temporal, i);
            let s = get(&mut decs[k], &mut raw, &mut models[k], cx)?;
            out[i] = map.code(s).ok_or(RansError("code wider than the pixel type"))?;
            rows[k].push(s);
            Ok(())
        })?;
    }
    // The encoder's flush leaves 5 bytes the decoder has pre-read; reading further means the
    // stream was cut short.
    if decs.iter().any(|d| d.pos > d.data.len()) {
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
                        round_trip(&codes, width, cols, Side { prev: None, quantised: q });
                        round_trip(&ext, width, cols, Side { prev: Some(&codes), quantised: q });
                    }
                }
            }
        }
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
        let enc = encode(&codes, 2, 50, Side { prev: Some(&codes), quantised: false });
        let mut out = Vec::new();
        for cut in [0, 1, 2, 3, enc.len() / 2, enc.len() - 6] {
            let _ = decode(&enc[..cut], codes.len(), 2, 50, Some(&codes), &mut out);
        }
        assert!(decode(&enc, codes.len(), 2, 50, None, &mut out).is_err());
        assert!(decode(&enc[..enc.len() / 2], codes.len(), 2, 50, Some(&codes), &mut out).is_err());
    }
}
