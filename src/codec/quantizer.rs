//! Error bounds and the residual coding of one frame against its prediction.
//!
//! Lossless: the code of a pixel is `zigzag((x - p) mod 2^bits)` in the native width, so the
//! decoder gets `x` back bit for bit (f32 included, through the integer image).
//!
//! Error-bounded: closed-loop quantisation. The residual against the prediction (made from
//! *reconstructed* frames) is quantised, the reconstruction is computed exactly as the decoder
//! will compute it, and the encoder checks the bound on every pixel. A pixel whose bound would
//! break (clamping, NaN, infinities, float rounding, a `pwrel` step that overshoots) gets code 0,
//! the escape, and its exact value goes to the escape list. Other codes are `zigzag(q) + 1`.

use super::dtype::DType;
use super::predict::motion::{blocks, PLAIN};
use super::predict::pixel::{block_mode_at, block_mode_runs};
pub use super::predict::Prediction;
use std::fmt;
use std::str::FromStr;

/// An error bound as the user states it (`user.tezip.bound`, `--bound`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    Lossless,
    /// |x' - x| <= E
    Abs(f64),
    /// |x' - x| <= R * (max - min of the frame)
    Rel(f64),
    /// |x' - x| <= P * |x|
    PwRel(f64),
}

impl Bound {
    pub fn kind_id(self) -> u8 {
        match self {
            Bound::Lossless => 0,
            Bound::Abs(_) => 1,
            Bound::Rel(_) => 2,
            Bound::PwRel(_) => 3,
        }
    }

    pub fn param(self) -> f64 {
        match self {
            Bound::Lossless => 0.0,
            Bound::Abs(v) | Bound::Rel(v) | Bound::PwRel(v) => v,
        }
    }

    pub fn from_parts(kind: u8, param: f64) -> Option<Bound> {
        let b = match kind {
            0 => Bound::Lossless,
            1 => Bound::Abs(param),
            2 => Bound::Rel(param),
            3 => Bound::PwRel(param),
            _ => return None,
        };
        b.validate().ok()?;
        Some(b)
    }

    fn validate(self) -> Result<Bound, String> {
        let v = self.param();
        if !v.is_finite() || v < 0.0 {
            return Err(format!("bound {self} must be a finite number >= 0"));
        }
        if matches!(self, Bound::PwRel(p) | Bound::Rel(p) if p >= 1.0) {
            return Err(format!("bound {self}: a relative bound must be below 1"));
        }
        Ok(self)
    }

    /// The bound for one frame (`rel` becomes `abs` with the frame's value range).
    pub fn for_frame(self, dtype: DType, image: &[u32]) -> FrameBound {
        match self {
            Bound::Lossless => FrameBound::Lossless,
            Bound::Abs(e) => FrameBound::abs(dtype, e),
            Bound::Rel(r) => {
                let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
                for &p in image {
                    let v = dtype.value(p);
                    if v.is_finite() {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
                FrameBound::abs(dtype, if hi >= lo { r * (hi - lo) } else { 0.0 })
            }
            Bound::PwRel(p) if p > 0.0 => FrameBound::PwRel(p),
            Bound::PwRel(_) => FrameBound::Lossless,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Lossless => f.write_str("lossless"),
            Bound::Abs(v) => write!(f, "abs:{v}"),
            Bound::Rel(v) => write!(f, "rel:{v}"),
            Bound::PwRel(v) => write!(f, "pwrel:{v}"),
        }
    }
}

impl FromStr for Bound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "lossless" {
            return Ok(Bound::Lossless);
        }
        let usage = "expected lossless, abs:E, rel:R or pwrel:P (e.g. abs:2, rel:0.001, pwrel:0.01)";
        let (kind, val) = s.split_once(':').ok_or_else(|| format!("bad bound {s:?}: {usage}"))?;
        let v: f64 = val.parse().map_err(|_| format!("bad number {val:?} in bound {s:?}"))?;
        let b = match kind {
            "abs" => Bound::Abs(v),
            "rel" => Bound::Rel(v),
            "pwrel" => Bound::PwRel(v),
            _ => return Err(format!("bad bound {s:?}: {usage}")),
        };
        b.validate()
    }
}

/// The bound that applies to one frame, as stored in the container.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FrameBound {
    Lossless,
    /// Absolute bound; for integer types already floored to an integer >= 1.
    Abs(f64),
    PwRel(f64),
}

impl FrameBound {
    fn abs(dtype: DType, e: f64) -> FrameBound {
        let e = if dtype.is_float() { e } else { e.floor() };
        if e > 0.0 {
            FrameBound::Abs(e)
        } else {
            FrameBound::Lossless
        }
    }

    /// (kind, parameter) for the container: 0 lossless, 1 abs, 3 pwrel.
    pub fn to_parts(self) -> (u8, f64) {
        match self {
            FrameBound::Lossless => (0, 0.0),
            FrameBound::Abs(e) => (1, e),
            FrameBound::PwRel(p) => (3, p),
        }
    }

    pub fn from_parts(kind: u8, v: f64) -> Option<FrameBound> {
        match kind {
            0 => Some(FrameBound::Lossless),
            1 if v.is_finite() && v > 0.0 => Some(FrameBound::Abs(v)),
            3 if v.is_finite() && v > 0.0 && v < 1.0 => Some(FrameBound::PwRel(v)),
            _ => None,
        }
    }

    /// Whether the reconstruction `r` of `x` (integer images) meets this bound.
    pub fn holds(self, dtype: DType, x: u32, r: u32) -> bool {
        match self {
            FrameBound::Lossless => x == r,
            FrameBound::Abs(e) => within(dtype, x, r, |_| e),
            FrameBound::PwRel(p) => within(dtype, x, r, |xv| p * xv.abs()),
        }
    }
}

#[inline]
fn within(dtype: DType, x: u32, r: u32, bound: impl Fn(f64) -> f64) -> bool {
    if x == r {
        return true;
    }
    let (xv, rv) = (dtype.value(x), dtype.value(r));
    xv.is_finite() && rv.is_finite() && (rv - xv).abs() <= bound(xv)
}

#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// The codes of one frame and its reconstruction.
pub struct Coded {
    pub codes: Vec<u32>,
    pub escapes: Vec<u32>,
    pub recon: Vec<u32>,
    /// Under a bound, from [`encode_for_tree`]: what the tree stage reads the frame's
    /// predictions from (empty otherwise).
    pub tree_image: Vec<u32>,
}

/// The tree stage's reading of pixel `i`'s prediction `p` and code (entropy stage 7 takes a
/// pixel's prediction as a property and reads it as `image - unzigzag(code)`): `(p +
/// unzigzag(code)) & mask`.
#[inline(always)]
fn tree_pixel(p: u32, code: u32, mask: u32) -> u32 {
    p.wrapping_add(unzigzag_native(code)) & mask
}

/// [`encode`] under a bound, with [`Coded::tree_image`]: each pixel's [`tree_pixel`], so that
/// the tree stage (container version 13) can code the frame.
pub fn encode_for_tree(dtype: DType, bound: FrameBound, x: &[u32], pred: Prediction) -> Coded {
    match bound {
        FrameBound::Lossless => encode(dtype, bound, x, pred),
        FrameBound::Abs(e) if !dtype.is_float() => encode_int_abs(dtype, e, x, pred, true),
        _ => encode_quantised(dtype, bound, x, pred, true),
    }
}

/// Code frame `x` (integer image) against `pred` under `bound`.
pub fn encode(dtype: DType, bound: FrameBound, x: &[u32], pred: Prediction) -> Coded {
    match bound {
        FrameBound::Lossless => Coded { codes: lossless_codes(dtype, x, pred), escapes: Vec::new(), recon: x.to_vec(), tree_image: Vec::new() },
        FrameBound::Abs(e) if !dtype.is_float() => encode_int_abs(dtype, e, x, pred, false),
        _ => encode_quantised(dtype, bound, x, pred, false),
    }
}

/// The codes of [`encode`] for a lossless frame, whose reconstruction is `x` itself (so the
/// encoder need not copy it).
pub fn lossless_codes(dtype: DType, x: &[u32], pred: Prediction) -> Vec<u32> {
    let mask = dtype.mask();
    match pred {
        Prediction::Frame(p) => x.iter().zip(p).map(|(&x, &p)| zigzag_native(x.wrapping_sub(p) & mask, mask)).collect(),
        Prediction::BlockModes { prev, width, modes } if prev.len() == x.len() && width > 0 && modes.len() == blocks(width, x.len() / width) => {
            // (Lossless, the frame is its own reconstruction: every pixel's prediction is known
            // at once, and a run of the plain mode is one pass that vectorises.)
            let mut codes = vec![0; x.len()];
            for y in 0..x.len() / width {
                for (mode, run) in block_mode_runs(width, modes, y) {
                    if mode == PLAIN {
                        for ((c, &v), &p) in codes[run.clone()].iter_mut().zip(&x[run.clone()]).zip(&prev[run]) {
                            *c = zigzag_native(v.wrapping_sub(p) & mask, mask);
                        }
                    } else {
                        for i in run {
                            codes[i] = zigzag_native(x[i].wrapping_sub(block_mode_at(mode, prev, x, i, width, mask)) & mask, mask);
                        }
                    }
                }
            }
            codes
        }
        other => {
            let mut codes = vec![0u32; x.len()];
            other.each(x, mask, |i, p| codes[i] = zigzag_native(x[i].wrapping_sub(p) & mask, mask));
            codes
        }
    }
}

/// [`encode`] under a bound, for any type and bound (`tree`: with the tree stage's image).
fn encode_quantised(dtype: DType, bound: FrameBound, x: &[u32], pred: Prediction, tree: bool) -> Coded {
    let mask = dtype.mask();
    let q = Quant::new(dtype, bound);
    let mut codes = Vec::with_capacity(x.len());
    let mut escapes = Vec::new();
    let mut recon = vec![0u32; x.len()];
    let mut tree_image = vec![0u32; if tree { x.len() } else { 0 }];
    let walked: Result<(), std::convert::Infallible> = pred.walk(&mut recon, mask, |i, p| {
        let (code, r) = match q.quantize(x[i], p) {
            Some((code, r)) if bound.holds(dtype, x[i], r) => (code, r),
            _ => {
                escapes.push(x[i]);
                (0, x[i])
            }
        };
        codes.push(code);
        if let Some(t) = tree_image.get_mut(i) {
            *t = tree_pixel(p, code, mask);
        }
        Ok(r)
    });
    let Ok(()) = walked;
    Coded { codes, escapes, recon, tree_image }
}

/// Floor division by a quantisation step, the quantiser's division per pixel (a hardware
/// division was a third of the time of bounded quantising). For types of at most 16 bits the
/// numerators `v - p + E` lie within `+-2^17`; offset by a multiple of the step they are
/// non-negative and below `2^32`, where `floor(n / d) = (n * ceil(2^64 / d)) >> 64` exactly for
/// every `d < 2^32` (Lemire, Kaser & Kurz, "Faster remainder by direct computation", 2019).
/// Wider types (and steps beyond any 16-bit bound) divide in hardware.
struct StepDiv {
    step: i64,
    /// `ceil(2^64 / step)`, or 0 for hardware division.
    magic: u64,
    /// A multiple of `step` that makes every numerator non-negative, and that multiple's factor.
    offset: i64,
    offset_steps: i64,
}

impl StepDiv {
    fn new(step: i64, mask: i64) -> StepDiv {
        // (The offset then stays below 2^19, the offset numerator below 2^20.)
        let fast = mask <= 0xffff && (2..=1 << 18).contains(&step);
        let magic = if fast { u64::MAX / step as u64 + 1 } else { 0 };
        let offset_steps = (1 << 17) / step + 1;
        StepDiv { step, magic, offset: offset_steps * step, offset_steps }
    }

    /// `n.div_euclid(step)` (the floor: the step is positive).
    #[inline(always)]
    fn floor(&self, n: i64) -> i64 {
        if self.magic == 0 {
            return n.div_euclid(self.step);
        }
        let m = (n + self.offset) as u64;
        ((m as u128 * self.magic as u128) >> 64) as i64 - self.offset_steps
    }
}

/// [`encode`] for integer types under `abs:E`: the codes, reconstructions and escapes of the
/// general path (`Quant::quantize`, then `FrameBound::holds`), in integer arithmetic. An integer
/// value's distance is its integer image's (signed types are offset, not scaled), so the check
/// of every pixel against the bound is the same, only without floating point (a third of the
/// time of bounded coding went to it).
fn encode_int_abs(dtype: DType, e: f64, x: &[u32], pred: Prediction, tree: bool) -> Coded {
    let mask = dtype.mask() as i64;
    // As `Quant::half_width`: a bound beyond the type's range is the range.
    let e = e.min(mask as f64) as i64;
    let step = 2 * e + 1;
    let div = StepDiv::new(step, mask);
    let mut codes = Vec::with_capacity(x.len());
    let mut escapes = Vec::new();
    let mut recon = vec![0u32; x.len()];
    // Code and reconstruction of pixel value `v` against prediction `p` (code 0: escape).
    // (A function rather than a closure, to be inlined into the walk's closure.)
    #[inline(always)]
    fn code_of(v: u32, p: u32, e: i64, div: &StepDiv, mask: i64) -> (u32, u32) {
        let q = div.floor(v as i64 - p as i64 + e);
        let code = zigzag(q) + 1;
        let r = (p as i64 + q * div.step).clamp(0, mask);
        if code <= mask as u64 && (r - v as i64).abs() <= e {
            (code as u32, r as u32)
        } else {
            (0, v)
        }
    }
    let one = |v: u32, p: u32| code_of(v, p, e, &div, mask);
    match pred {
        Prediction::Frame(f) if f.len() == x.len() => {
            for ((&v, &p), r) in x.iter().zip(f).zip(recon.iter_mut()) {
                let (code, value) = one(v, p);
                codes.push(code);
                *r = value;
                if code == 0 {
                    escapes.push(v);
                }
            }
            let tree_image = if tree { f.iter().zip(&codes).map(|(&p, &c)| tree_pixel(p, c, mask as u32)).collect() } else { Vec::new() };
            Coded { codes, escapes, recon, tree_image }
        }
        _ => {
            // (Codes written in place and escapes gathered afterwards: a small closure, which
            // the walk inlines.)
            codes.resize(x.len(), 0);
            let mut tree_image = vec![0u32; if tree { x.len() } else { 0 }];
            let walked: Result<(), std::convert::Infallible> = pred.walk(&mut recon, mask as u32, |i, p| {
                let (code, value) = one(x[i], p);
                codes[i] = code;
                if let Some(t) = tree_image.get_mut(i) {
                    *t = tree_pixel(p, code, mask as u32);
                }
                Ok(value)
            });
            let Ok(()) = walked;
            escapes.extend(codes.iter().zip(x).filter(|(&c, _)| c == 0).map(|(_, &v)| v));
            Coded { codes, escapes, recon, tree_image }
        }
    }
}

/// Error from [`decode`]: the codes do not fit the frame (a corrupt container).
#[derive(Debug)]
pub struct BadCodes(pub &'static str);

impl From<BadCodes> for crate::codec::entropy::rans::RansError {
    fn from(b: BadCodes) -> Self {
        crate::codec::entropy::rans::RansError(b.0)
    }
}

/// Reconstruct a frame from its codes; exact inverse of [`encode`].
pub fn decode(dtype: DType, bound: FrameBound, codes: &[u32], escapes: &[u32], pred: Prediction, out: &mut Vec<u32>) -> Result<(), BadCodes> {
    let mask = dtype.mask();
    out.clear();
    out.resize(codes.len(), 0);
    if !pred.len_ok(codes.len()) {
        return Err(BadCodes("prediction size"));
    }
    match bound {
        FrameBound::Lossless => match pred {
            Prediction::Frame(p) => {
                if p.len() != codes.len() {
                    return Err(BadCodes("prediction size"));
                }
                for ((o, &c), &p) in out.iter_mut().zip(codes).zip(p) {
                    *o = p.wrapping_add(unzigzag_native(c)) & mask;
                }
            }
            // (`len_ok` above checked the modes' count.)
            Prediction::BlockModes { prev, width, modes } => decode_block_modes(prev, width, modes, codes, mask, out),
            other => other.walk(out, mask, |i, p| Ok::<u32, BadCodes>(p.wrapping_add(unzigzag_native(codes[i])) & mask))?,
        },
        // Integer types under `abs:E`: the general path's reconstructions in integer arithmetic
        // (as `encode_int_abs`; a tenth of the time of bounded decoding went to the general one).
        FrameBound::Abs(e) if !dtype.is_float() => {
            let e = e.min(mask as f64) as i64;
            let step = 2 * e + 1;
            // (Saturating: a corrupt code may be far out of range; the clamp makes it exact.)
            let value = |c: u32, p: u32| unzigzag(c as u64 - 1).saturating_mul(step).saturating_add(p as i64).clamp(0, mask as i64) as u32;
            if let Prediction::Frame(f) = pred {
                // No pixel reads another: every value in one pass (it vectorises), then the
                // escapes (zero codes) in order.
                for ((o, &c), &p) in out.iter_mut().zip(codes).zip(f) {
                    *o = value(c.max(1), p);
                }
                let mut esc = escapes.iter();
                for (o, _) in out.iter_mut().zip(codes).filter(|(_, &c)| c == 0) {
                    *o = *esc.next().ok_or(BadCodes("too few escapes"))?;
                }
                if esc.next().is_some() {
                    return Err(BadCodes("too many escapes"));
                }
                return Ok(());
            }
            let mut esc = escapes.iter();
            pred.walk(out, mask, |i, p| match codes[i] {
                0 => esc.next().copied().ok_or(BadCodes("too few escapes")),
                c => Ok(value(c, p)),
            })?;
            if esc.next().is_some() {
                return Err(BadCodes("too many escapes"));
            }
        }
        _ => decode_quantised(dtype, bound, codes, escapes, pred, out)?,
    }
    Ok(())
}

/// Reconstruct a frame coded under `bound` whose codes are decoded pixel by pixel from each
/// pixel's prediction (entropy stage 7, container version 13): as [`decode_lossless_fused`], each
/// code then dequantised against its prediction, or (code 0) the next of `escapes`.
pub fn decode_quantised_fused<E: From<BadCodes>>(
    dtype: DType,
    bound: FrameBound,
    escapes: &[u32],
    pred: Prediction,
    codes: &mut [u32],
    out: &mut Vec<u32>,
    mut code: impl FnMut(&[u32], usize, u32) -> Result<u32, E>,
) -> Result<(), E> {
    out.clear();
    out.resize(codes.len(), 0);
    if !pred.len_ok(codes.len()) {
        return Err(BadCodes("prediction size").into());
    }
    let q = Quant::new(dtype, bound);
    let mut esc = escapes.iter();
    pred.walk(out, dtype.mask(), |i, p| -> Result<u32, E> {
        let c = code(codes, i, p)?;
        codes[i] = c;
        Ok(match c {
            0 => esc.next().copied().ok_or(BadCodes("too few escapes"))?,
            c => q.dequantize(c, p).ok_or(BadCodes("code out of range"))?,
        })
    })?;
    if esc.next().is_some() {
        return Err(BadCodes("too many escapes").into());
    }
    Ok(())
}

/// Reconstruct a lossless frame whose codes are decoded pixel by pixel from each pixel's
/// prediction (entropy stage 7): `code(codes of the pixels before, i, prediction of pixel i)`
/// gives pixel `i`'s code, which also goes to `codes` (as many as the frame's pixels).
pub fn decode_lossless_fused<E: From<BadCodes>>(
    dtype: DType,
    pred: Prediction,
    codes: &mut [u32],
    out: &mut Vec<u32>,
    mut code: impl FnMut(&[u32], usize, u32) -> Result<u32, E>,
) -> Result<(), E> {
    let mask = dtype.mask();
    out.clear();
    out.resize(codes.len(), 0);
    if !pred.len_ok(codes.len()) {
        return Err(BadCodes("prediction size").into());
    }
    pred.walk(out, mask, |i, p| {
        let c = code(codes, i, p)?;
        codes[i] = c;
        Ok(p.wrapping_add(unzigzag_native(c)) & mask)
    })
}

/// The lossless reconstruction of a frame predicted per motion block ([`Prediction::BlockModes`]):
/// the plain blocks first (the moved frame plus the residual: no pixel reads another, so it
/// vectorises), then the corrected, spatial and blended blocks in raster order, whose pixels read
/// their left and upper neighbours, which are then either in a plain block or before them. The
/// same values as a walk of the frame's pixels in raster order (tested).
fn decode_block_modes(prev: &[u32], width: usize, modes: &[u8], codes: &[u32], mask: u32, out: &mut [u32]) {
    let rows = codes.len() / width.max(1);
    for y in 0..rows {
        for (_, run) in block_mode_runs(width, modes, y).filter(|(m, _)| *m == PLAIN) {
            for ((o, &c), &p) in out[run.clone()].iter_mut().zip(&codes[run.clone()]).zip(&prev[run]) {
                *o = p.wrapping_add(unzigzag_native(c)) & mask;
            }
        }
    }
    for y in 0..rows {
        for (mode, run) in block_mode_runs(width, modes, y).filter(|(m, _)| *m != PLAIN) {
            for i in run {
                out[i] = block_mode_at(mode, prev, out, i, width, mask).wrapping_add(unzigzag_native(codes[i])) & mask;
            }
        }
    }
}

/// [`decode`] under a bound, for any type and bound.
fn decode_quantised(dtype: DType, bound: FrameBound, codes: &[u32], escapes: &[u32], pred: Prediction, out: &mut [u32]) -> Result<(), BadCodes> {
    let q = Quant::new(dtype, bound);
    let mut esc = escapes.iter();
    pred.walk(out, dtype.mask(), |i, p| match codes[i] {
        0 => esc.next().copied().ok_or(BadCodes("too few escapes")),
        c => q.dequantize(c, p).ok_or(BadCodes("code out of range")),
    })?;
    if esc.next().is_some() {
        return Err(BadCodes("too many escapes"));
    }
    Ok(())
}

/// Zig-zag of a residual wrapped to the native width (`mask` = 2^bits - 1): small magnitudes of
/// either sign get small codes, and every code fits the native width.
#[inline]
pub(crate) fn zigzag_native(r: u32, mask: u32) -> u32 {
    // Above mask / 2, r stands for the negative residual r - 2^bits, of magnitude m in
    // 1..=2^(bits-1), whose code 2m - 1 = 2 (mask - r) + 1 is 2r with its bits flipped (within
    // the width): without a branch, so that the loops over a frame vectorise.
    let negative = 0u32.wrapping_sub(u32::from(r > mask / 2));
    ((r << 1) ^ negative) & mask
}

#[inline]
pub(crate) fn unzigzag_native(c: u32) -> u32 {
    (c >> 1) ^ (0u32.wrapping_sub(c & 1))
}

/// Quantiser of one frame: the arithmetic that encoder and decoder share.
struct Quant {
    dtype: DType,
    bound: FrameBound,
    /// Largest code that fits the code width.
    max_code: u64,
}

impl Quant {
    fn new(dtype: DType, bound: FrameBound) -> Quant {
        Quant { dtype, bound, max_code: dtype.mask() as u64 }
    }

    /// The half-width E of the quantisation step at prediction `p` (the step is 2E+1 for
    /// integer types, 2E for floats); `None` when the bound allows no quantisation here.
    #[inline]
    fn half_width(&self, p: u32) -> Option<f64> {
        match self.bound {
            FrameBound::Lossless => None,
            // An integer bound beyond the type's range allows any value, like the range itself
            // (same codes and reconstructions), and keeps `2 * e + 1` far from overflowing i64.
            FrameBound::Abs(e) if !self.dtype.is_float() => Some(e.min(self.dtype.mask() as f64)),
            FrameBound::Abs(e) => Some(e),
            FrameBound::PwRel(rel) => {
                let pv = self.dtype.value(p);
                let e = rel * pv.abs() / (1.0 + rel);
                if self.dtype.is_float() {
                    (e.is_finite() && e > 0.0).then_some(e)
                } else {
                    Some(e.floor())
                }
            }
        }
    }

    #[inline]
    fn quantize(&self, x: u32, p: u32) -> Option<(u32, u32)> {
        let e = self.half_width(p)?;
        let q = if self.dtype.is_float() {
            let (xv, pv) = (self.dtype.value(x), self.dtype.value(p));
            if !xv.is_finite() || !pv.is_finite() {
                return None;
            }
            let q = ((xv - pv) / (2.0 * e)).round();
            if q.abs() > (1u64 << 30) as f64 {
                return None;
            }
            q as i64
        } else {
            let step = 2 * e as i64 + 1;
            (x as i64 - p as i64 + e as i64).div_euclid(step)
        };
        let code = zigzag(q) + 1;
        if code > self.max_code {
            return None;
        }
        let r = self.dequantize(code as u32, p)?;
        Some((code as u32, r))
    }

    #[inline]
    fn dequantize(&self, code: u32, p: u32) -> Option<u32> {
        let e = self.half_width(p)?;
        let q = unzigzag(code as u64 - 1);
        if self.dtype.is_float() {
            let pv = self.dtype.value(p);
            let v = (pv + q as f64 * (2.0 * e)) as f32;
            if !v.is_finite() {
                return None;
            }
            Some(DType::F32.to_image(v.to_bits()))
        } else {
            let step = 2 * e as i64 + 1;
            // saturating: a corrupt code may be far out of range; the clamp makes the result exact
            let r = q.saturating_mul(step).saturating_add(p as i64).clamp(0, self.dtype.mask() as i64);
            Some(r as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer `abs` path codes exactly as the general one, escapes and clamps included.
    #[test]
    fn integer_abs_path_matches_the_general_one() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for dtype in [DType::U8, DType::U16, DType::U32, DType::I8, DType::I16, DType::I32] {
            let mask = dtype.mask();
            let x: Vec<u32> = (0..500).map(|i| if i % 7 == 0 { [0, mask, 1, mask - 1][i % 4] } else { next() & mask }).collect();
            let p: Vec<u32> = x.iter().map(|&v| if next() % 3 == 0 { next() & mask } else { v.wrapping_add(next() % 9).wrapping_sub(4) & mask }).collect();
            let coefs = [4000, 3000, -1000, 800, 9000, 500, 400, -300, 600, 77];
            for e in [1.0, 2.0, 2.5, 4.0, 1000.0, 1e12] {
                let bound = FrameBound::Abs(e);
                for pred in [
                    Prediction::Frame(&p),
                    Prediction::TemporalMed { prev: &p, width: 25 },
                    Prediction::Linear { prev: &p, width: 25, coefs: &coefs, boxes: &[] },
                ] {
                    let (a, b) = (encode_int_abs(dtype, e, &x, pred, false), encode_quantised(dtype, bound, &x, pred, false));
                    assert!(a.codes == b.codes && a.recon == b.recon && a.escapes == b.escapes, "{dtype} abs:{e}");
                    // With the tree stage's image: the same codes, the same image both ways, and
                    // it gives each pixel's prediction back (walked again over the reconstruction).
                    let (ta, tb) = (encode_int_abs(dtype, e, &x, pred, true), encode_quantised(dtype, bound, &x, pred, true));
                    assert!(ta.codes == a.codes && ta.recon == a.recon && ta.tree_image == tb.tree_image, "{dtype} abs:{e}");
                    let mut preds = vec![0u32; x.len()];
                    pred.each(&a.recon, mask, |i, p| preds[i] = p);
                    let read = ta.tree_image.iter().zip(&a.codes).map(|(&t, &c)| t.wrapping_sub(unzigzag_native(c)) & mask);
                    assert!(read.eq(preds.iter().copied()), "{dtype} abs:{e}: the tree image's predictions");
                    // The fused decoder, handed the codes pixel by pixel, reconstructs the frame.
                    let (mut codes, mut out) = (vec![0u32; x.len()], Vec::new());
                    decode_quantised_fused::<BadCodes>(dtype, bound, &a.escapes, pred, &mut codes, &mut out, |_, i, _| Ok(a.codes[i])).unwrap();
                    assert!(out == a.recon && codes == a.codes, "{dtype} abs:{e}: fused decoding");
                    // The decoder's integer path reconstructs as the general one, from the
                    // codes and from corrupt codes alike.
                    let mut corrupt = a.codes.clone();
                    corrupt[3] = u32::MAX;
                    corrupt[4] = 1 << 31;
                    for codes in [&a.codes, &corrupt] {
                        let (mut fast, mut general) = (Vec::new(), vec![0u32; x.len()]);
                        decode(dtype, bound, codes, &a.escapes, pred, &mut fast).unwrap();
                        decode_quantised(dtype, bound, codes, &a.escapes, pred, &mut general).unwrap();
                        assert_eq!(fast, general, "{dtype} abs:{e}");
                    }
                    assert_eq!(fast_decoded(dtype, bound, &a.codes, &a.escapes, pred), a.recon);
                    if !a.escapes.is_empty() {
                        let mut out = Vec::new();
                        assert!(decode(dtype, bound, &a.codes, &a.escapes[1..], pred, &mut out).is_err(), "too few escapes");
                    }
                    let mut more = a.escapes.clone();
                    more.push(0);
                    let mut out = Vec::new();
                    assert!(decode(dtype, bound, &a.codes, &more, pred, &mut out).is_err(), "too many escapes");
                }
            }
        }
    }

    /// Lossless frames predicted per motion block decode (plain blocks first, then the others)
    /// to the frame the codes were made from, for every mix of modes, at widths and heights that
    /// are and are not multiples of the block.
    #[test]
    fn block_modes_decode_plain_blocks_first_to_the_frame() {
        use crate::codec::predict::motion::{BLENDED, CORRECTED, SPATIAL};
        let mut rng = crate::fixtures::Rng::new(3);
        let mut next = || (rng.next_u64() >> 32) as u32;
        for (w, h) in [(48, 32), (50, 37), (17, 5), (3, 40)] {
            for dtype in [DType::U8, DType::U16] {
                let mask = dtype.mask();
                let prev: Vec<u32> = (0..w * h).map(|_| next() & mask).collect();
                let x: Vec<u32> =
                    prev.iter().map(|&p| if next() % 5 == 0 { next() & mask } else { p.wrapping_add(next() % 7).wrapping_sub(3) & mask }).collect();
                for mix in 0..4 {
                    let modes: Vec<u8> = (0..blocks(w, h))
                        .map(|b| match mix {
                            0 => PLAIN,
                            1 => SPATIAL,
                            _ => [PLAIN, CORRECTED, SPATIAL, BLENDED][(next() as usize + b) % 4],
                        })
                        .collect();
                    let pred = Prediction::BlockModes { prev: &prev, width: w, modes: &modes };
                    let codes = lossless_codes(dtype, &x, pred);
                    let mut out = vec![1; 3];
                    decode(dtype, FrameBound::Lossless, &codes, &[], pred, &mut out).unwrap();
                    assert_eq!(out, x, "{w}x{h} {dtype} mix {mix}");
                }
            }
        }
    }

    /// The quantiser's division by multiplication equals the hardware's floor division over
    /// every numerator the 8- and 16-bit types can make, for steps small and large.
    #[test]
    fn step_division_is_exact() {
        let mut steps: Vec<i64> = (3..2000).step_by(2).collect();
        steps.extend([4095, 65535, 65537, 131071, 131073, (1 << 31) - 1, (1 << 32) - 1, 1 << 32, 3 << 32]);
        for step in steps {
            let div = StepDiv::new(step, 0xffff);
            let edges = [-(1 << 17), 1 << 17, 0, -1, step, -step, step - 1, 1 - step, step + 1].into_iter().filter(|n| n.abs() <= 1 << 17);
            for n in (-(1i64 << 17)..=1 << 17).step_by(if step < 100 { 1 } else { 7 }).chain(edges) {
                assert_eq!(div.floor(n), n.div_euclid(step), "{n} / {step}");
            }
            let wide = StepDiv::new(step, u32::MAX as i64);
            assert_eq!(wide.floor(-(1 << 33)), (-(1i64 << 33)).div_euclid(step));
        }
    }

    fn fast_decoded(dtype: DType, bound: FrameBound, codes: &[u32], escapes: &[u32], pred: Prediction) -> Vec<u32> {
        let mut out = Vec::new();
        decode(dtype, bound, codes, escapes, pred, &mut out).unwrap();
        out
    }

    #[test]
    fn native_zigzag_round_trips() {
        for bits in [8u32, 16, 32] {
            let mask = if bits == 32 { u32::MAX } else { (1 << bits) - 1 };
            let half = mask / 2 + 1;
            for r in [0u32, 1, 2, half - 1, half, half + 1, mask - 1, mask] {
                let c = zigzag_native(r, mask);
                assert!(c <= mask, "bits {bits} r {r} c {c}");
                assert_eq!(unzigzag_native(c) & mask, r, "bits {bits} r {r}");
            }
            assert_eq!(zigzag_native(mask, mask), 1); // -1 -> 1
            assert_eq!(zigzag_native(1, mask), 2);
        }
    }

    #[test]
    fn parses_bounds() {
        assert_eq!("abs:2".parse::<Bound>().unwrap(), Bound::Abs(2.0));
        assert_eq!("pwrel:0.01".parse::<Bound>().unwrap(), Bound::PwRel(0.01));
        for bad in ["abs", "abs:-1", "abs:nan", "rel:2", "foo:1", "lossy"] {
            assert!(bad.parse::<Bound>().is_err(), "{bad}");
        }
    }
}
