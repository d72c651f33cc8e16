//! Block motion of the `motion` and `motion+med` predictors (ids 7 and 6).
//!
//! The previous reconstructed frame is cut into [`BLOCK`] x [`BLOCK`] blocks (smaller at the
//! right and bottom edges); each block of the current frame takes its pixels from the previous
//! frame (or, by its mode, the frame before it) moved by a whole-pixel vector `(dx, dy)`, sampled
//! with coordinates clamped to the frame. `motion` predicts this moved frame (as `previous`
//! predicts the unmoved one), correcting the blocks whose mode says so by the temporal MED or
//! predicting them spatially; `motion+med` corrects every block (as `previous+med` does).
//!
//! The vectors and modes are found by the encoder alone ([`search`], [`choose_modes`]) and
//! stored per frame as the bytes `dx, dy` or `dx, dy, mode` (two `i8` and a [`REF`], [`MED`],
//! [`INTRA`] byte,
//! blocks in row-major order; see `docs/FORMAT.md`, motion section), so the decoder only applies
//! them ([`apply`]): any vector is valid, the search is free to change.

/// Side of a motion block in pixels.
pub const BLOCK: usize = 16;
/// Largest displacement the encoder searches, in pixels along each axis.
pub const RANGE: i32 = 12;

/// Blocks of a frame.
pub fn blocks(width: usize, height: usize) -> usize {
    width.div_ceil(BLOCK) * height.div_ceil(BLOCK)
}

/// Sum of absolute differences between block `(bx, by)` of `cur` and `prev` moved by `(dx, dy)`,
/// stopping early once it exceeds `limit`.
#[allow(clippy::too_many_arguments)]
fn sad(prev: &[u32], cur: &[u32], width: usize, height: usize, bx: usize, by: usize, dx: i32, dy: i32, limit: u64) -> u64 {
    let (x0, y0) = (bx * BLOCK, by * BLOCK);
    let (bw, bh) = ((width - x0).min(BLOCK), (height - y0).min(BLOCK));
    let inside = x0 as i64 + dx as i64 >= 0 && (x0 + bw) as i64 + dx as i64 <= width as i64 && y0 as i64 + dy as i64 >= 0 && (y0 + bh) as i64 + dy as i64 <= height as i64;
    let mut s = 0u64;
    for y in y0..y0 + bh {
        let row = &cur[y * width + x0..y * width + x0 + bw];
        if inside {
            let sy = (y as i64 + dy as i64) as usize;
            let sx = (x0 as i64 + dx as i64) as usize;
            let src = &prev[sy * width + sx..sy * width + sx + bw];
            s += row.iter().zip(src).map(|(&a, &b)| a.abs_diff(b) as u64).sum::<u64>();
        } else {
            let sy = (y as i64 + dy as i64).clamp(0, height as i64 - 1) as usize;
            for (i, &a) in row.iter().enumerate() {
                let sx = ((x0 + i) as i64 + dx as i64).clamp(0, width as i64 - 1) as usize;
                s += a.abs_diff(prev[sy * width + sx]) as u64;
            }
        }
        if s > limit {
            return s;
        }
    }
    s
}

/// Row `y` of a block's moved pixels, columns `x0..x0 + out.len()`, from `from` moved by `(dx,
/// dy)` at sub-pixel `phase` (coordinates clamped to the frame): the one sampling rule of the
/// format, shared by the encoder's search and [`apply`]. A half-pixel sample is
/// `(a + b + c + d + 2) >> 2` over the whole pixels around it (`a = b`, `c = d` along an axis
/// without offset), which is `(a + b + 1) >> 1` on a half-pixel edge.
#[allow(clippy::too_many_arguments)]
fn sample_row(from: &[u32], width: usize, height: usize, y: usize, x0: usize, dx: i64, dy: i64, phase: u8, out: &mut [u32]) {
    let (hx, hy) = HALF[phase as usize];
    let (w, h) = (width as i64, height as i64);
    let sy0 = (y as i64 + dy + hy.min(0)).clamp(0, h - 1) as usize;
    let sy1 = (y as i64 + dy + hy.max(0)).clamp(0, h - 1) as usize;
    let (r0, r1) = (&from[sy0 * width..sy0 * width + width], &from[sy1 * width..sy1 * width + width]);
    let (lo, hi) = (x0 as i64 + dx + hx.min(0), (x0 + out.len()) as i64 + dx + hx.max(0));
    if phase == 0 {
        if lo >= 0 && hi <= w {
            out.copy_from_slice(&r0[lo as usize..lo as usize + out.len()]);
        } else {
            for (i, o) in out.iter_mut().enumerate() {
                *o = r0[((x0 + i) as i64 + dx).clamp(0, w - 1) as usize];
            }
        }
        return;
    }
    if lo >= 0 && hi <= w {
        let (a, b) = (lo as usize, (lo + hx.abs()) as usize);
        let n = out.len();
        for (((o, (&p, &q)), &r), &t) in out.iter_mut().zip(r0[a..a + n].iter().zip(&r0[b..b + n])).zip(&r1[a..a + n]).zip(&r1[b..b + n]) {
            *o = ((p as u64 + q as u64 + r as u64 + t as u64 + 2) >> 2) as u32;
        }
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            let x = (x0 + i) as i64 + dx;
            let (a, b) = ((x + hx.min(0)).clamp(0, w - 1) as usize, (x + hx.max(0)).clamp(0, w - 1) as usize);
            *o = ((r0[a] as u64 + r0[b] as u64 + r1[a] as u64 + r1[b] as u64 + 2) >> 2) as u32;
        }
    }
}

/// [`sad`] at a sub-pixel phase (any phase, through [`sample_row`]).
#[allow(clippy::too_many_arguments)]
fn sad_phase(from: &[u32], cur: &[u32], width: usize, height: usize, bx: usize, by: usize, v: [i32; 2], phase: u8, limit: u64) -> u64 {
    let (x0, y0) = (bx * BLOCK, by * BLOCK);
    let (bw, bh) = ((width - x0).min(BLOCK), (height - y0).min(BLOCK));
    let mut row = [0u32; BLOCK];
    let mut s = 0u64;
    for y in y0..y0 + bh {
        sample_row(from, width, height, y, x0, v[0] as i64, v[1] as i64, phase, &mut row[..bw]);
        s += cur[y * width + x0..y * width + x0 + bw].iter().zip(&row).map(|(&a, &b)| a.abs_diff(b) as u64).sum::<u64>();
        if s > limit {
            return s;
        }
    }
    s
}

/// Bytes per block of stored vectors: `dx, dy` (every block from the previous frame, as the
/// predictor has it), or `dx, dy, mode` with the block mode bits [`REF`] and [`MED`].
pub const PAIR: usize = 2;
pub const TRIPLE: usize = 3;
/// Block mode bit: the block moves the frame before the previous one, not the previous one.
pub const REF: u8 = 1;
/// Block mode bit (predictor `motion` only): the moved block is corrected by the temporal MED.
pub const MED: u8 = 2;
/// Block mode bit (predictor `motion` only): the block is predicted spatially, by the intra MED
/// over its reconstructed neighbours (as `spatial` does), not from a reference. Excludes [`MED`].
pub const INTRA: u8 = 4;

/// Block mode bits 3 to 6 (container version 5): the block's sub-pixel phase, 0 for the
/// whole-pixel position or 1 to 8 for a half-pixel offset ([`HALF`]) from its vector.
pub const PHASE_SHIFT: u32 = 3;
/// Phases: the whole-pixel position and the eight half-pixel offsets around it.
pub const PHASES: u8 = 9;
/// Half-pixel offsets `(hx, hy)` of the phases: the sample at `(x + dx + hx / 2, y + dy + hy / 2)`
/// is the rounded mean of the (up to) four whole pixels around it.
const HALF: [(i64, i64); PHASES as usize] = [(0, 0), (-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)];
/// Largest valid mode byte.
const MAX_MODE: u8 = ((PHASES - 1) << PHASE_SHIFT) | REF | MED | INTRA;

/// Per-block prediction of a frame under `motion` with block modes (see [`corrections`]).
pub const PLAIN: u8 = 0;
pub const CORRECTED: u8 = 1;
pub const SPATIAL: u8 = 2;

/// The vectors that move the references closest to `cur` (by the sum of absolute differences
/// per block, with a small cost for moving and for the older reference), as stored bytes; empty
/// when every block takes the previous frame unmoved.
///
/// Blocks that changed more than most are searched in `prev`, with a three-step search around
/// the best of no motion and the left and upper blocks' vectors. When `older` (the frame before
/// `prev`) is given, every block that changed also tries it, unmoved and at the vector found in
/// `prev`: a block that flickers (changes and changes back, as alternating exposures or the
/// refreshes of a block-coded source do) is then predicted from the frame it matches. (A motion
/// of the whole frame is not looked for.)
///
/// With `subpel`, every block that changed then tries the eight half-pixel positions around its
/// vector (in its reference) and takes the best: motion that is not a whole number of pixels,
/// and (under an error bound) a mean of neighbouring reconstructed pixels, which carries less of
/// their quantisation error than any one of them.
pub fn search(prev: &[u32], older: Option<&[u32]>, cur: &[u32], width: usize, height: usize, subpel: bool) -> Vec<u8> {
    let (nx, ny) = (width.div_ceil(BLOCK), height.div_ceil(BLOCK));
    if prev.len() != width * height || cur.len() != prev.len() || nx * ny == 0 {
        return Vec::new();
    }
    let older = older.filter(|o| o.len() == prev.len());
    let still: Vec<u64> = (0..nx * ny).map(|b| sad(prev, cur, width, height, b % nx, b / nx, 0, 0, u64::MAX)).collect();
    let mut sorted = still.clone();
    sorted.sort_unstable();
    let typical = sorted[sorted.len() / 2];
    // Per block: vector and mode bits (reference, phase).
    let mut vectors = vec![([0i32; 2], 0u8); nx * ny];
    for b in 0..nx * ny {
        let (bx, by) = (b % nx, b / nx);
        let px = ((width - bx * BLOCK).min(BLOCK) * (height - by * BLOCK).min(BLOCK)) as u64;
        let penalty = px / 4;
        let mut best = ([0, 0], still[b]);
        // A block that changed by less than two levels a pixel is not worth a vector, and one
        // that changed no more than half as much again as the median block (noise, a change of
        // light) is not worth the search.
        if still[b] > (2 * px).max(typical + typical / 2) {
            let cost = |v: [i32; 2], limit: u64| if v == [0, 0] { still[b] } else { sad(prev, cur, width, height, bx, by, v[0], v[1], limit).saturating_add(penalty) };
            let mut seeds = Vec::with_capacity(2);
            if bx > 0 && vectors[b - 1].1 == 0 {
                seeds.push(vectors[b - 1].0);
            }
            if by > 0 && vectors[b - nx].1 == 0 {
                seeds.push(vectors[b - nx].0);
            }
            for v in seeds {
                if v != best.0 {
                    let c = cost(v, best.1);
                    if c < best.1 {
                        best = (v, c);
                    }
                }
            }
            let mut step = (RANGE + 1) / 2;
            while step >= 1 {
                let centre = best.0;
                for (sx, sy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                    let v = [centre[0] + sx * step, centre[1] + sy * step];
                    if v[0].abs() > RANGE || v[1].abs() > RANGE {
                        continue;
                    }
                    let c = cost(v, best.1);
                    if c < best.1 {
                        best = (v, c);
                    }
                }
                if best.0 == centre {
                    step /= 2;
                }
            }
        }
        vectors[b] = (best.0, 0);
        if let Some(older) = older.filter(|_| still[b] > 0) {
            let mut tried = [[0, 0], best.0];
            if best.0 == [0, 0] {
                tried[1] = [i32::MAX, 0];
            }
            for v in tried.into_iter().filter(|v| v[0] != i32::MAX) {
                let extra = px / 64 + if v == [0, 0] { 0 } else { penalty };
                let c = sad(older, cur, width, height, bx, by, v[0], v[1], best.1).saturating_add(extra);
                if c < best.1 {
                    best = (v, c);
                    vectors[b] = (v, REF);
                }
            }
        }
        if subpel && still[b] > 0 && best.1 > 0 {
            let (v, r) = vectors[b];
            let from = match older {
                Some(o) if r & REF != 0 => o,
                _ => prev,
            };
            // The block's cost without its penalties, then each phase at a small cost of its own.
            let plain = sad(from, cur, width, height, bx, by, v[0], v[1], u64::MAX);
            let (mut best_phase, mut best_cost) = (0u8, plain);
            for phase in 1..PHASES {
                let c = sad_phase(from, cur, width, height, bx, by, v, phase, best_cost).saturating_add(px / 16);
                if c < best_cost {
                    (best_phase, best_cost) = (phase, c);
                }
            }
            vectors[b].1 = r | (best_phase << PHASE_SHIFT);
        }
    }
    if vectors.iter().all(|v| v.0 == [0, 0] && v.1 == 0) {
        return Vec::new();
    }
    if vectors.iter().all(|v| v.1 == 0) {
        return vectors.iter().flat_map(|(v, _)| [v[0] as i8 as u8, v[1] as i8 as u8]).collect();
    }
    vectors.iter().flat_map(|(v, r)| [v[0] as i8 as u8, v[1] as i8 as u8, *r]).collect()
}

/// Error of [`apply`]: the stored vectors do not fit the frame.
#[derive(Debug, PartialEq, Eq)]
pub struct BadVectors;

/// The references moved by the stored `vectors` into `out` (`vectors` empty: `prev` unmoved).
/// Vectors of [`TRIPLE`] bytes name a reference per block, and need `older`; their phases are
/// valid only with `subpel` (a version-5 frame).
pub fn apply(prev: &[u32], older: Option<&[u32]>, vectors: &[u8], width: usize, height: usize, subpel: bool, out: &mut Vec<u32>) -> Result<(), BadVectors> {
    out.clear();
    if vectors.is_empty() {
        out.extend_from_slice(prev);
        return Ok(());
    }
    let nx = width.div_ceil(BLOCK);
    let n = blocks(width, height);
    let per = if vectors.len() == PAIR * n { PAIR } else { TRIPLE };
    if vectors.len() != per * n || prev.len() != width * height {
        return Err(BadVectors);
    }
    if per == TRIPLE {
        let modes = || vectors.chunks_exact(TRIPLE).map(|v| v[2]);
        let bad_phase = |m: u8| m >> PHASE_SHIFT != 0 && !subpel;
        if modes().any(|m| m > MAX_MODE || bad_phase(m) || m & (MED | INTRA) == (MED | INTRA)) || (modes().any(|m| m & REF != 0) && older.is_none_or(|o| o.len() != prev.len())) {
            return Err(BadVectors);
        }
    }
    out.resize(prev.len(), 0);
    for y in 0..height {
        for bx in 0..nx {
            let b = (y / BLOCK) * nx + bx;
            let v = &vectors[per * b..per * b + per];
            let (dx, dy) = (v[0] as i8 as i64, v[1] as i8 as i64);
            let from = match (per, older) {
                (TRIPLE, Some(o)) if v[2] & REF != 0 => o,
                _ => prev,
            };
            let phase = if per == TRIPLE { v[2] >> PHASE_SHIFT } else { 0 };
            let x0 = bx * BLOCK;
            let x1 = (x0 + BLOCK).min(width);
            sample_row(from, width, height, y, x0, dx, dy, phase, &mut out[y * width + x0..y * width + x1]);
        }
    }
    Ok(())
}

/// The temporal MED's correction at pixel `i`: MED over the left, upper and upper-left
/// neighbours' differences `recon - prev` (what the scene did there since `prev`), with the
/// edge rules of [`super::predictor::med`].
#[inline]
pub fn temporal_med(prev: &[u32], recon: &[u32], i: usize, width: usize) -> i64 {
    let d = |j: usize| recon[j] as i64 - prev[j] as i64;
    match (i % width > 0, i >= width) {
        (false, false) => 0,
        (true, false) => d(i - 1),
        (false, true) => d(i - width),
        (true, true) => {
            let (a, b, c) = (d(i - 1), d(i - width), d(i - width - 1));
            if c >= a.max(b) {
                a.min(b)
            } else if c <= a.min(b) {
                a.max(b)
            } else {
                a + b - c
            }
        }
    }
}

/// Mark each block with the prediction that leaves it the smallest sum of residual bit lengths
/// (an estimate of its coded size; absolute values code 0.2% larger on visp-cube): `moved`
/// alone, corrected by the temporal MED ([`MED`]), or spatial ([`INTRA`]), computed on
/// `cur` as the reconstruction (so for lossless frames only, where it is exact), turning
/// `vectors` into triples when a block is marked.
///
/// `whole` is the frame moved by the same vectors without their sub-pixel phases, when some
/// block has one: such a block also weighs its whole-pixel prediction, plain and corrected, and
/// loses its phase when that is smaller (the search picks phases by absolute differences, which
/// favour the smoothing of a half-pixel mean on noisy blocks). Returns whether a phase was
/// dropped: `moved` no longer matches the vectors and must be moved again.
pub fn choose_modes(moved: &[u32], whole: Option<&[u32]>, cur: &[u32], width: usize, height: usize, vectors: &mut Vec<u8>) -> bool {
    let n = blocks(width, height);
    let whole = whole.filter(|w| w.len() == moved.len());
    if moved.len() != width * height || cur.len() != moved.len() || n == 0 {
        return false;
    }
    let nx = width.div_ceil(BLOCK);
    // Per block: plain, corrected and spatial sums of residual bit lengths, then plain and
    // corrected on the whole-pixel prediction.
    let mut sums = vec![[0u64; 5]; n];
    let bits = |r: i64| 64 - r.unsigned_abs().leading_zeros() as u64;
    for y in 0..height {
        let row = (y / BLOCK) * nx;
        for x in 0..width {
            let i = y * width + x;
            let plain = cur[i] as i64 - moved[i] as i64;
            let s = &mut sums[row + x / BLOCK];
            s[0] += bits(plain);
            s[1] += bits(plain - temporal_med(moved, cur, i, width));
            s[2] += bits(cur[i] as i64 - super::predictor::med(cur, i, width) as i64);
            if let Some(w) = whole {
                let plain = cur[i] as i64 - w[i] as i64;
                s[3] += bits(plain);
                s[4] += bits(plain - temporal_med(w, cur, i, width));
            }
        }
    }
    let per = if vectors.len() == TRIPLE * n { TRIPLE } else { PAIR };
    let phased = |b: usize| per == TRIPLE && vectors[TRIPLE * b + 2] >> PHASE_SHIFT != 0;
    let mut dropped = false;
    // Per block: the mark and whether to keep the phase.
    let marks: Vec<(u8, bool)> = sums
        .iter()
        .enumerate()
        .map(|(b, s)| {
            // A correction must win by a little more than noise.
            let px = ((width - (b % nx) * BLOCK).min(BLOCK) * (height - (b / nx) * BLOCK).min(BLOCK)) as u64;
            let (med, intra) = (s[1] + px / 64, s[2] + px / 64);
            let mut best = if intra < s[0].min(med) { (intra, INTRA) } else if med < s[0] { (med, MED) } else { (s[0], 0) };
            let mut keep = true;
            if whole.is_some() && phased(b) {
                for (c, m) in [(s[3], 0), (s[4] + px / 64, MED)] {
                    if c < best.0 {
                        (best, keep) = ((c, m), false);
                    }
                }
            }
            dropped |= !keep;
            (best.1, keep)
        })
        .collect();
    if marks.iter().all(|&(m, keep)| m == 0 && keep) {
        return false;
    }
    let old = std::mem::take(vectors);
    for (b, &(m, keep)) in marks.iter().enumerate() {
        let (dx, dy, mode) = match per {
            TRIPLE => (old[TRIPLE * b], old[TRIPLE * b + 1], old[TRIPLE * b + 2]),
            _ if old.is_empty() => (0, 0, 0),
            _ => (old[PAIR * b], old[PAIR * b + 1], 0),
        };
        let mode = if keep { mode } else { mode & !(0xf << PHASE_SHIFT) };
        vectors.extend_from_slice(&[dx, dy, mode | m]);
    }
    dropped
}

/// The vectors without their sub-pixel phases (`None` when none has one).
pub fn whole_pixel(vectors: &[u8], width: usize, height: usize) -> Option<Vec<u8>> {
    if vectors.len() != TRIPLE * blocks(width, height) || vectors.chunks_exact(TRIPLE).all(|t| t[2] >> PHASE_SHIFT == 0) {
        return None;
    }
    Some(vectors.chunks_exact(TRIPLE).flat_map(|t| [t[0], t[1], t[2] & !(0xf << PHASE_SHIFT)]).collect())
}

/// Per block, [`PLAIN`], [`CORRECTED`] ([`MED`] set) or [`SPATIAL`] ([`INTRA`] set); `None`
/// when every block is plain.
pub fn corrections(vectors: &[u8], width: usize, height: usize) -> Option<Vec<u8>> {
    if vectors.len() != TRIPLE * blocks(width, height) {
        return None;
    }
    let modes: Vec<u8> = vectors
        .chunks_exact(TRIPLE)
        .map(|v| if v[2] & INTRA != 0 { SPATIAL } else if v[2] & MED != 0 { CORRECTED } else { PLAIN })
        .collect();
    modes.iter().any(|&m| m != PLAIN).then_some(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texture(w: usize, h: usize, ox: i64, oy: i64) -> Vec<u32> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as i64 + ox, (i / w) as i64 + oy);
                // Smooth, as images are, so that the search's descent finds the match.
                let (x, y) = (x as f64, y as f64);
                (128.0 + 60.0 * (0.21 * x + 0.05 * y).sin() + 50.0 * (0.13 * y - 0.07 * x).cos()) as u32
            })
            .collect()
    }

    #[test]
    fn finds_a_shift_and_applies_it() {
        let (w, h) = (128, 96);
        let prev = texture(w, h, 0, 0);
        // An object moved 3 right and 2 down: there the current pixel (x, y) shows prev (x - 3,
        // y - 2). It covers the blocks of rows 2 and 3, columns 2 to 5; the rest stands still.
        let shifted = texture(w, h, -3, -2);
        let mut cur = prev.clone();
        for y in 32..64 {
            for x in 32..96 {
                cur[y * w + x] = shifted[y * w + x];
            }
        }
        let v = search(&prev, None, &cur, w, h, false);
        assert_eq!(v.len(), 2 * blocks(w, h));
        let mut moved = Vec::new();
        apply(&prev, None, &v, w, h, false, &mut moved).unwrap();
        let wrong = moved.iter().zip(&cur).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "pixels not matched by the vectors {v:?}");
        let nx = w / BLOCK;
        assert_eq!((v[2 * (2 * nx + 3)] as i8, v[2 * (2 * nx + 3) + 1] as i8), (-3, -2));
        assert_eq!((v[0] as i8, v[1] as i8), (0, 0));
    }

    #[test]
    fn a_block_that_changes_back_takes_the_frame_before() {
        let (w, h) = (64, 48);
        let older = texture(w, h, 0, 0);
        // Block (1, 1) shows something else in the previous frame and is back in the current
        // one; block (2, 0) changes for good; everything else stands still.
        let mut prev = older.clone();
        let mut cur = older.clone();
        for y in 16..32 {
            for x in 16..32 {
                prev[y * w + x] = older[y * w + x] / 2 + 7;
            }
        }
        for y in 0..16 {
            for x in 32..48 {
                cur[y * w + x] = 255 - older[y * w + x];
            }
        }
        let v = search(&prev, Some(&older), &cur, w, h, false);
        assert_eq!(v.len(), TRIPLE * blocks(w, h));
        let nx = w / BLOCK;
        let refs: Vec<u8> = v.chunks_exact(TRIPLE).map(|t| t[2]).collect();
        assert_eq!(refs[nx + 1], 1, "the flickering block: {refs:?}");
        assert_eq!(refs.iter().filter(|&&r| r == 1).count(), 1, "only the flickering block: {refs:?}");
        let mut moved = Vec::new();
        apply(&prev, Some(&older), &v, w, h, false, &mut moved).unwrap();
        let block = |img: &[u32], bx: usize, by: usize| -> Vec<u32> { (0..BLOCK * BLOCK).map(|i| img[(by * BLOCK + i / BLOCK) * w + bx * BLOCK + i % BLOCK]).collect() };
        assert_eq!(block(&moved, 1, 1), block(&cur, 1, 1));
        assert_eq!(block(&moved, 0, 0), block(&prev, 0, 0));
        // Without the frame before, the same search names no references.
        assert!(search(&prev, None, &cur, w, h, false).len() <= PAIR * blocks(w, h));
        // References need the frame before and must be 0 or 1.
        assert_eq!(apply(&prev, None, &v, w, h, false, &mut moved), Err(BadVectors));
        let mut bad = v.clone();
        bad[TRIPLE * (nx + 1) + 2] = 8;
        assert_eq!(apply(&prev, Some(&older), &bad, w, h, false, &mut moved), Err(BadVectors));
        bad[TRIPLE * (nx + 1) + 2] = MED | INTRA;
        assert_eq!(apply(&prev, Some(&older), &bad, w, h, false, &mut moved), Err(BadVectors));
    }

    #[test]
    fn half_pixel_phases_sample_the_mean_and_are_found() {
        let (w, h) = (48, 32);
        // Phase 5 is (hx, hy) = (1, 0): the rounded mean of a pixel and its right neighbour
        // (the last column repeats itself); phase 8 the mean of four.
        let prev: Vec<u32> = (0..w * h).map(|i| ((i % w) * 3 + (i / w) * 5) as u32).collect();
        let mut vectors: Vec<u8> = std::iter::repeat_n([0u8, 0, 5 << PHASE_SHIFT], blocks(w, h)).flatten().collect();
        let mut out = Vec::new();
        assert_eq!(apply(&prev, None, &vectors, w, h, false, &mut out), Err(BadVectors), "phases need the version-5 flag");
        apply(&prev, None, &vectors, w, h, true, &mut out).unwrap();
        for i in 0..w * h {
            let right = if i % w + 1 < w { prev[i + 1] } else { prev[i] };
            assert_eq!(out[i], (prev[i] + right + 1) >> 1, "pixel {i}");
        }
        vectors.iter_mut().skip(2).step_by(TRIPLE).for_each(|m| *m = 8 << PHASE_SHIFT);
        apply(&prev, None, &vectors, w, h, true, &mut out).unwrap();
        assert_eq!(out[w + 1], (prev[w + 1] + prev[w + 2] + prev[2 * w + 1] + prev[2 * w + 2] + 2) >> 2);
        // A smooth texture moved by half a pixel: its inner blocks take a half-pixel phase.
        let smooth = |ox: f64| -> Vec<u32> { (0..w * h).map(|i| (1000.0 + 400.0 * (0.2 * ((i % w) as f64 + ox)).sin() + 300.0 * (0.15 * (i / w) as f64).cos()) as u32).collect() };
        let (prev, cur) = (smooth(0.0), smooth(0.5));
        let v = search(&prev, None, &cur, w, h, true);
        assert_eq!(v.len(), TRIPLE * blocks(w, h));
        assert!(v.chunks_exact(TRIPLE).all(|t| t[2] >> PHASE_SHIFT != 0), "{v:?}");
        assert!(search(&prev, None, &cur, w, h, false).len() <= PAIR * blocks(w, h), "no phases without subpel");
    }

    #[test]
    fn still_frames_have_no_vectors() {
        let (w, h) = (40, 33);
        let prev = texture(w, h, 0, 0);
        assert!(search(&prev, None, &prev, w, h, false).is_empty());
        let mut out = Vec::new();
        apply(&prev, None, &[], w, h, false, &mut out).unwrap();
        assert_eq!(out, prev);
    }

    #[test]
    fn any_stored_vector_applies_and_a_wrong_count_is_an_error() {
        let (w, h) = (17, 5);
        let prev = texture(w, h, 0, 0);
        let mut out = Vec::new();
        for v in [[127u8, 128], [0, 255], [128, 127]] {
            let vectors: Vec<u8> = std::iter::repeat_n(v, blocks(w, h)).flatten().collect();
            apply(&prev, None, &vectors, w, h, false, &mut out).unwrap();
            assert_eq!(out.len(), prev.len());
        }
        assert_eq!(apply(&prev, None, &[1, 2, 3], w, h, false, &mut out), Err(BadVectors));
    }
}
