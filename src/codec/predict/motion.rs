//! Block motion of the `motion` and `motion+med` predictors (ids 7 and 6).
//!
//! The previous reconstructed frame is cut into [`BLOCK`] x [`BLOCK`] blocks (smaller at the
//! right and bottom edges); each block of the current frame takes its pixels from the previous
//! frame (or, by its mode, the frame before it) moved by a whole-pixel vector `(dx, dy)` and, by
//! its mode's phase, a further quarter-pixel offset of at most half a pixel (bilinear), sampled
//! with coordinates clamped to the frame. `motion` predicts this moved frame (as `previous`
//! predicts the unmoved one), correcting the blocks whose mode says so by the temporal MED or
//! predicting them spatially; `motion+med` corrects every block (as `previous+med` does).
//!
//! The vectors and modes are found by the encoder alone ([`search`], [`choose_modes`]) and
//! stored per frame as the bytes `dx, dy` or `dx, dy, mode` (two `i8` and a byte of [`REF`],
//! [`MED`], [`INTRA`] and the phase, blocks in row-major order; see `docs/FORMAT.md`, motion section), so the decoder only applies
//! them ([`apply`]): any vector is valid, the search is free to change.

/// Side of a motion block in pixels.
pub const BLOCK: usize = 16;
/// Largest displacement the encoder searches, in pixels along each axis.
pub const RANGE: i32 = 12;

/// Blocks of a frame.
pub fn blocks(width: usize, height: usize) -> usize {
    width.div_ceil(BLOCK) * height.div_ceil(BLOCK)
}

/// Sum of absolute differences of two rows of at most [`BLOCK`] pixels; with `narrow` (every
/// value below 2^28) summed in 32 bits, which vectorises far better, with the same result.
#[inline]
fn row_sad(a: &[u32], b: &[u32], narrow: bool) -> u64 {
    if narrow {
        a.iter().zip(b).map(|(&a, &b)| (a as i32 - b as i32).unsigned_abs()).sum::<u32>() as u64
    } else {
        a.iter().zip(b).map(|(&a, &b)| a.abs_diff(b) as u64).sum::<u64>()
    }
}

/// Sum of absolute differences between block `(bx, by)` of `cur` and `prev` moved by `(dx, dy)`,
/// stopping early once it exceeds `limit`; `narrow` as in [`row_sad`].
#[allow(clippy::too_many_arguments)]
fn sad(prev: &[u32], cur: &[u32], width: usize, height: usize, bx: usize, by: usize, dx: i32, dy: i32, narrow: bool, limit: u64) -> u64 {
    let (x0, y0) = (bx * BLOCK, by * BLOCK);
    let (bw, bh) = ((width - x0).min(BLOCK), (height - y0).min(BLOCK));
    let inside = x0 as i64 + dx as i64 >= 0
        && (x0 + bw) as i64 + dx as i64 <= width as i64
        && y0 as i64 + dy as i64 >= 0
        && (y0 + bh) as i64 + dy as i64 <= height as i64;
    let mut s = 0u64;
    if inside && narrow && bw == BLOCK {
        // The common case, rows of a fixed length (unrolled, no bounds checks inside).
        let (sx, sy0) = ((x0 as i64 + dx as i64) as usize, (y0 as i64 + dy as i64) as usize);
        for r in 0..bh {
            let (row, src) = (&cur[(y0 + r) * width + x0..][..BLOCK], &prev[(sy0 + r) * width + sx..][..BLOCK]);
            s += row.iter().zip(src).map(|(&a, &b)| (a as i32 - b as i32).unsigned_abs()).sum::<u32>() as u64;
            if s > limit {
                return s;
            }
        }
        return s;
    }
    for y in y0..y0 + bh {
        let row = &cur[y * width + x0..y * width + x0 + bw];
        if inside {
            let sy = (y as i64 + dy as i64) as usize;
            let sx = (x0 as i64 + dx as i64) as usize;
            let src = &prev[sy * width + sx..sy * width + sx + bw];
            s += row_sad(row, src, narrow);
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
/// format, shared by the encoder's search and [`apply`]. The sample at a quarter-pixel offset
/// `(ox, oy)` ([`offset`]) is the bilinear mean of the four whole pixels around it with weights
/// in sixteenths, rounded: `((4 - fx)(4 - fy) a + fx (4 - fy) b + (4 - fx) fy c + fx fy d + 8)
/// >> 4`; at half-pixel offsets that is `(a + b + c + d + 2) >> 2`.
#[allow(clippy::too_many_arguments)]
///
/// `narrow` says every value of `from` is below 2^28, so the weighted sums fit 32 bits (which
/// vectorise far better than 64); it changes no result.
fn sample_row(from: &[u32], width: usize, height: usize, y: usize, x0: usize, dx: i64, dy: i64, phase: u8, narrow: bool, out: &mut [u32]) {
    let (w, h) = (width as i64, height as i64);
    if phase == 0 {
        let sy = (y as i64 + dy).clamp(0, h - 1) as usize;
        let r = &from[sy * width..sy * width + width];
        let lo = x0 as i64 + dx;
        if lo >= 0 && lo + out.len() as i64 <= w {
            out.copy_from_slice(&r[lo as usize..lo as usize + out.len()]);
        } else {
            for (i, o) in out.iter_mut().enumerate() {
                *o = r[((x0 + i) as i64 + dx).clamp(0, w - 1) as usize];
            }
        }
        return;
    }
    let (ox, oy) = offset(phase);
    // Whole-pixel position of the upper-left of the four, and the fractions in quarters.
    let (sx, fx) = ((4 * (x0 as i64 + dx) + ox).div_euclid(4), (4 * dx + ox).rem_euclid(4) as u64);
    let (sy, fy) = ((4 * (y as i64 + dy) + oy).div_euclid(4), (4 * dy + oy).rem_euclid(4) as u64);
    let (sy0, sy1) = (sy.clamp(0, h - 1) as usize, (sy + 1).clamp(0, h - 1) as usize);
    let (r0, r1) = (&from[sy0 * width..sy0 * width + width], &from[sy1 * width..sy1 * width + width]);
    let (wa, wb, wc, wd) = ((4 - fx) * (4 - fy), fx * (4 - fy), (4 - fx) * fy, fx * fy);
    let n = out.len();
    let inside = sx >= 0 && sx + 1 + (n as i64) <= w;
    if inside && narrow {
        let a = sx as usize;
        by_fraction!(fx as u32, fy as u32, bilinear_narrow(&r0[a..a + n + 1], &r1[a..a + n + 1], out));
    } else if inside {
        let (a, b) = (sx as usize, sx as usize + 1);
        for (((o, (&p, &q)), &r), &t) in out.iter_mut().zip(r0[a..a + n].iter().zip(&r0[b..b + n])).zip(&r1[a..a + n]).zip(&r1[b..b + n]) {
            *o = ((wa * p as u64 + wb * q as u64 + wc * r as u64 + wd * t as u64 + 8) >> 4) as u32;
        }
    } else {
        for (i, o) in out.iter_mut().enumerate() {
            let x = sx + i as i64;
            let (a, b) = (x.clamp(0, w - 1) as usize, (x + 1).clamp(0, w - 1) as usize);
            *o = ((wa * r0[a] as u64 + wb * r0[b] as u64 + wc * r1[a] as u64 + wd * r1[b] as u64 + 8) >> 4) as u32;
        }
    }
}

/// Whether every value of `f` is below 2^28 (see [`sample_row`]).
fn narrow(f: &[u32]) -> bool {
    f.iter().fold(0, |m, &v| m | v) < 1 << 28
}

/// Calls `f::<FX, FY>(args)` for fractions `fx`, `fy` (each 0 to 3 quarters) known only at run
/// time: the bilinear weights then are constants, computed by shifts and adds (baseline x86-64
/// has no vector 32-bit multiply; the multiplies were the refinement's largest cost).
macro_rules! by_fraction {
    ($fx:expr, $fy:expr, $f:ident($($arg:expr),*)) => {
        match ($fx, $fy) {
            (0, 0) => $f::<0, 0>($($arg),*),
            (0, 1) => $f::<0, 1>($($arg),*),
            (0, 2) => $f::<0, 2>($($arg),*),
            (0, _) => $f::<0, 3>($($arg),*),
            (1, 0) => $f::<1, 0>($($arg),*),
            (1, 1) => $f::<1, 1>($($arg),*),
            (1, 2) => $f::<1, 2>($($arg),*),
            (1, _) => $f::<1, 3>($($arg),*),
            (2, 0) => $f::<2, 0>($($arg),*),
            (2, 1) => $f::<2, 1>($($arg),*),
            (2, 2) => $f::<2, 2>($($arg),*),
            (2, _) => $f::<2, 3>($($arg),*),
            (_, 0) => $f::<3, 0>($($arg),*),
            (_, 1) => $f::<3, 1>($($arg),*),
            (_, 2) => $f::<3, 2>($($arg),*),
            (_, _) => $f::<3, 3>($($arg),*),
        }
    };
}
use by_fraction;

/// The bilinear samples of [`sample_row`] for values below 2^28 at fractions `FX`, `FY`
/// (quarters): `out[i]` from `r0[i]`, `r0[i + 1]`, `r1[i]`, `r1[i + 1]` (the rows hold one
/// pixel more than `out`).
#[inline(always)]
fn bilinear_narrow<const FX: u32, const FY: u32>(r0: &[u32], r1: &[u32], out: &mut [u32]) {
    let n = out.len();
    let (a, b, c, d) = (&r0[..n], &r0[1..n + 1], &r1[..n], &r1[1..n + 1]);
    for i in 0..n {
        out[i] = ((4 - FX) * (4 - FY) * a[i] + FX * (4 - FY) * b[i] + (4 - FX) * FY * c[i] + FX * FY * d[i] + 8) >> 4;
    }
}

/// [`sad_phase`]'s common case: a full-width block at `(x0, y0)` of `bh` rows, values below
/// 2^28, whose samples' four pixels (upper-left at `(sx, sy)`) all lie in the frame.
#[inline(always)]
fn sad_block_phase<const FX: u32, const FY: u32>(
    from: &[u32],
    cur: &[u32],
    width: usize,
    (sx, sy): (usize, usize),
    (x0, y0): (usize, usize),
    bh: usize,
    limit: u64,
) -> u64 {
    let mut s = 0u64;
    let mut p = [0u32; BLOCK];
    for r in 0..bh {
        let a = &from[(sy + r) * width + sx..][..BLOCK + 1];
        let b = &from[(sy + r + 1) * width + sx..][..BLOCK + 1];
        let c = &cur[(y0 + r) * width + x0..][..BLOCK];
        bilinear_narrow::<FX, FY>(a, b, &mut p);
        s += c.iter().zip(&p).map(|(&c, &p)| (c as i32 - p as i32).unsigned_abs()).sum::<u32>() as u64;
        if s > limit {
            return s;
        }
    }
    s
}

/// [`sad`] at a sub-pixel phase (any phase, through [`sample_row`]).
#[allow(clippy::too_many_arguments)]
fn sad_phase(from: &[u32], cur: &[u32], width: usize, height: usize, bx: usize, by: usize, v: [i32; 2], phase: u8, narrow: bool, limit: u64) -> u64 {
    let (x0, y0) = (bx * BLOCK, by * BLOCK);
    let (bw, bh) = ((width - x0).min(BLOCK), (height - y0).min(BLOCK));
    let mut s = 0u64;
    // The common case (narrow values, a full block whose four-pixel neighbourhoods all lie in
    // the frame) fused into one loop; the same arithmetic as `sample_row`'s.
    let (ox, oy) = offset(phase);
    let (sx, sy) = ((4 * (x0 as i64 + v[0] as i64) + ox).div_euclid(4), (4 * (y0 as i64 + v[1] as i64) + oy).div_euclid(4));
    if narrow && bw == BLOCK && sx >= 0 && (sx + BLOCK as i64) < (width as i64) && sy >= 0 && (sy + bh as i64) < (height as i64) {
        let (fx, fy) = (ox.rem_euclid(4) as u32, oy.rem_euclid(4) as u32);
        return by_fraction!(fx, fy, sad_block_phase(from, cur, width, (sx as usize, sy as usize), (x0, y0), bh, limit));
    }
    let mut row = [0u32; BLOCK];
    for y in y0..y0 + bh {
        sample_row(from, width, height, y, x0, v[0] as i64, v[1] as i64, phase, narrow, &mut row[..bw]);
        s += row_sad(&cur[y * width + x0..y * width + x0 + bw], &row[..bw], narrow);
        if s > limit {
            return s;
        }
    }
    s
}

/// Quarter-pixel offsets from a block's centre of search tried by [`refine`], coarse to fine:
/// whole pixels two and one away (the first descent finds a nearby minimum of the absolute
/// differences, not always the nearest: a second and third step at one pixel follow it further),
/// then half and quarter pixels.
const REFINE_STEPS: [i64; 3] = [4, 2, 1];
/// Most whole-pixel moves of [`refine`]'s descent.
const MAX_MOVES: usize = 8;

/// The best position near vector `v` for block `(bx, by)` (by the sum of absolute differences,
/// each position but `v` itself at a small cost), in quarter pixels, as the nearest whole vector
/// and a phase of at most half a pixel. A descent: at each step of [`REFINE_STEPS`] the eight
/// positions around the best so far.
#[allow(clippy::too_many_arguments)]
fn refine(from: &[u32], cur: &[u32], width: usize, height: usize, bx: usize, by: usize, v: [i32; 2], narrow: bool, whole: bool) -> ([i32; 2], u8) {
    let px = ((width - bx * BLOCK).min(BLOCK) * (height - by * BLOCK).min(BLOCK)) as u64;
    let cost_of_moving = px / 16;
    let split = |o: (i64, i64)| {
        let (qx, qy) = (4 * v[0] as i64 + o.0, 4 * v[1] as i64 + o.1);
        let (wx, wy) = ((qx + 2).div_euclid(4), (qy + 2).div_euclid(4));
        ([wx as i32, wy as i32], phase_of(qx - 4 * wx, qy - 4 * wy))
    };
    let mut best = ((0i64, 0i64), sad(from, cur, width, height, bx, by, v[0], v[1], narrow, u64::MAX));
    let mut tried = vec![(0i64, 0i64)];
    let mut moves = 0;
    // Without `whole`, the sub-pixel steps only.
    let mut step_i = usize::from(!whole);
    while step_i < REFINE_STEPS.len() {
        let step = REFINE_STEPS[step_i];
        let centre = best.0;
        let around: &[(i64, i64)] =
            if step == 1 { &[(0, -1), (-1, 0), (1, 0), (0, 1)] } else { &[(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] };
        for &(sx, sy) in around {
            let o = (centre.0 + sx * step, centre.1 + sy * step);
            if tried.contains(&o) {
                continue;
            }
            tried.push(o);
            let limit = best.1.saturating_sub(cost_of_moving);
            let (wv, phase) = split(o);
            let c = if phase == 0 {
                sad(from, cur, width, height, bx, by, wv[0], wv[1], narrow, limit)
            } else {
                sad_phase(from, cur, width, height, bx, by, wv, phase, narrow, limit)
            };
            if c < limit {
                best = (o, c + cost_of_moving);
            }
        }
        // Whole-pixel steps repeat while they move (a few times at most).
        if step == 4 && best.0 != centre && moves < MAX_MOVES {
            moves += 1;
        } else {
            step_i += 1;
        }
    }
    split(best.0)
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

/// Block mode bits 3 to 7 (container version 5): the block's sub-pixel phase, 0 for the
/// whole-pixel position or 1 to 24 for a quarter-pixel offset ([`offset`]) from its vector.
pub const PHASE_SHIFT: u32 = 3;
/// Phases: the whole-pixel position and the 24 offsets of up to half a pixel around it.
pub const PHASES: u8 = 25;
/// Largest valid mode byte.
const MAX_MODE: u8 = ((PHASES - 1) << PHASE_SHIFT) | REF | MED | INTRA;

/// The quarter-pixel offset `(ox, oy)` (each -2 to 2) of a phase: phase 0 is `(0, 0)`, phases 1
/// to 24 the other offsets in row-major order (`oy` first, then `ox`, from -2).
pub fn offset(phase: u8) -> (i64, i64) {
    let i = phase as i64 - 1 + (phase as i64 > 12) as i64;
    if phase == 0 {
        (0, 0)
    } else {
        (i % 5 - 2, i / 5 - 2)
    }
}

/// The phase of a quarter-pixel offset (each -2 to 2); inverse of [`offset`].
pub fn phase_of(ox: i64, oy: i64) -> u8 {
    let i = (oy + 2) * 5 + ox + 2;
    match i.cmp(&12) {
        std::cmp::Ordering::Less => (i + 1) as u8,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => i as u8,
    }
}

/// Per-block prediction of a frame under `motion` with block modes (see [`corrections`]).
pub const PLAIN: u8 = 0;
pub const CORRECTED: u8 = 1;
pub const SPATIAL: u8 = 2;
/// [`MED`] and [`INTRA`] together (version-5 modes only): the mean of the moved block and the
/// intra MED, for blocks that both predict half well (a new exposure of a moved texture).
pub const BLENDED: u8 = 3;

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
/// vector (in its reference), then the eight quarter-pixel ones around the best, and takes the
/// best: motion that is not a whole number of pixels,
/// and (under an error bound) a mean of neighbouring reconstructed pixels, which carries less of
/// their quantisation error than any one of them.
pub fn search(prev: &[u32], older: Option<&[u32]>, cur: &[u32], width: usize, height: usize, subpel: bool) -> Vec<u8> {
    search_both(prev, older, cur, width, height, subpel).0
}

/// [`search`], and the vectors as they were before the refinement of `subpel` (`None` when it
/// changed nothing), stored alike: what [`choose_modes`] may fall back to, block by block.
pub fn search_both(prev: &[u32], older: Option<&[u32]>, cur: &[u32], width: usize, height: usize, subpel: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let (nx, ny) = (width.div_ceil(BLOCK), height.div_ceil(BLOCK));
    if prev.len() != width * height || cur.len() != prev.len() || nx * ny == 0 {
        return (Vec::new(), None);
    }
    let older = older.filter(|o| o.len() == prev.len());
    // One flag for every frame the search reads.
    let narrow = narrow(prev) && narrow(cur) && older.is_none_or(narrow);
    let still: Vec<u64> = (0..nx * ny).map(|b| sad(prev, cur, width, height, b % nx, b / nx, 0, 0, narrow, u64::MAX)).collect();
    let mut sorted = still.clone();
    sorted.sort_unstable();
    let typical = sorted[sorted.len() / 2];
    // Per block: vector and mode bits (reference, phase), refined and before the refinement.
    let mut vectors = vec![([0i32; 2], 0u8); nx * ny];
    let mut coarse = vec![([0i32; 2], 0u8); nx * ny];
    let mut refined = false;
    for b in 0..nx * ny {
        let (bx, by) = (b % nx, b / nx);
        let px = ((width - bx * BLOCK).min(BLOCK) * (height - by * BLOCK).min(BLOCK)) as u64;
        let penalty = px / 4;
        let mut best = ([0, 0], still[b]);
        // A block that changed by less than two levels a pixel is not worth a vector, and one
        // that changed no more than half as much again as the median block (noise, a change of
        // light) is not worth the search.
        let searched = still[b] > (2 * px).max(typical + typical / 2);
        if searched {
            let cost = |v: [i32; 2], limit: u64| {
                if v == [0, 0] {
                    still[b]
                } else {
                    sad(prev, cur, width, height, bx, by, v[0], v[1], narrow, limit).saturating_add(penalty)
                }
            };
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
                let c = sad(older, cur, width, height, bx, by, v[0], v[1], narrow, best.1).saturating_add(extra);
                if c < best.1 {
                    best = (v, c);
                    vectors[b] = (v, REF);
                }
            }
        }
        coarse[b] = vectors[b];
        // (Not on values of 2^28 and above: the integer images of floats are not linear in the
        // value, so their means are no interpolation, and 32-bit sums would not hold them.)
        if subpel && narrow && still[b] > 0 && best.1 > 0 {
            let (v, r) = vectors[b];
            let from = match older {
                Some(o) if r & REF != 0 => o,
                _ => prev,
            };
            let (wv, phase) = refine(from, cur, width, height, bx, by, v, narrow, true);
            refined |= (wv, phase) != (v, 0);
            vectors[b] = (wv, r | (phase << PHASE_SHIFT));
        }
    }
    (stored(&vectors), refined.then(|| stored(&coarse)))
}

/// Vectors and mode bits as stored: empty when every block takes the previous frame unmoved,
/// pairs when no block has a mode bit, triples otherwise.
fn stored(vectors: &[([i32; 2], u8)]) -> Vec<u8> {
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
        // Phases and the blend (both corrections) are version-5 modes.
        let v5_only = |m: u8| (m >> PHASE_SHIFT != 0 || m & (MED | INTRA) == (MED | INTRA)) && !subpel;
        if modes().any(|m| m > MAX_MODE || v5_only(m)) || (modes().any(|m| m & REF != 0) && older.is_none_or(|o| o.len() != prev.len())) {
            return Err(BadVectors);
        }
    }
    out.resize(prev.len(), 0);
    let phased = per == TRIPLE && vectors.chunks_exact(TRIPLE).any(|v| v[2] >> PHASE_SHIFT != 0);
    let (narrow_prev, narrow_older) = (phased && narrow(prev), phased && older.is_some_and(narrow));
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
            let narrow = if std::ptr::eq(from, prev) { narrow_prev } else { narrow_older };
            sample_row(from, width, height, y, x0, dx, dy, phase, narrow, &mut out[y * width + x0..y * width + x1]);
        }
    }
    Ok(())
}

/// Mark each block with the prediction that leaves it the smallest sum of residual bit lengths
/// (an estimate of its coded size; absolute values code 0.2% larger on visp-cube): `moved`
/// alone, corrected by the temporal MED ([`MED`]), or spatial ([`INTRA`]), computed on
/// `cur` as the reconstruction (so for lossless frames only, where it is exact), turning
/// `vectors` into triples when a block is marked.
///
/// `alt` is the frame moved by other vectors (the search's before its refinement, stored alike)
/// and those vectors: a block that it predicts with a smaller sum (plain or corrected) takes its
/// vector and mode instead (the refinement picks positions by absolute differences, which favour
/// the smoothing of sub-pixel means and small moves that fit noise, where the coded size may
/// not). Returns whether a block took them: `moved` then no longer matches the vectors and must
/// be moved again.
pub fn choose_modes(moved: &[u32], alt: Option<(&[u32], &[u8])>, cur: &[u32], width: usize, height: usize, vectors: &mut Vec<u8>) -> bool {
    let n = blocks(width, height);
    let alt = alt.filter(|(w, _)| w.len() == moved.len());
    let whole = alt.map(|(w, _)| w);
    // The alternative's vector and mode of block b.
    let alt_of = |b: usize| -> (u8, u8, u8) {
        match alt.map(|(_, v)| v) {
            Some(v) if v.len() == TRIPLE * n => (v[TRIPLE * b], v[TRIPLE * b + 1], v[TRIPLE * b + 2]),
            Some(v) if v.len() == PAIR * n => (v[PAIR * b], v[PAIR * b + 1], 0),
            _ => (0, 0, 0),
        }
    };
    if moved.len() != width * height || cur.len() != moved.len() || n == 0 {
        return false;
    }
    let nx = width.div_ceil(BLOCK);
    let per = if vectors.len() == TRIPLE * n { TRIPLE } else { PAIR };
    let own = |b: usize| -> (u8, u8, u8) {
        match per {
            TRIPLE => (vectors[TRIPLE * b], vectors[TRIPLE * b + 1], vectors[TRIPLE * b + 2]),
            _ if vectors.is_empty() => (0, 0, 0),
            _ => (vectors[PAIR * b], vectors[PAIR * b + 1], 0),
        }
    };
    // Per block: plain, corrected and spatial sums of residual bit lengths, then plain and
    // corrected on the alternative (where its vector differs), then blended. A block that its
    // prediction matches exactly (most blocks of a still scene) keeps it: nothing is smaller, so
    // its other sums are not computed.
    let mut sums = vec![[0u64; 6]; n];
    let bits = |r: i64| 64 - r.unsigned_abs().leading_zeros() as u64;
    let narrow = [cur, moved, whole.unwrap_or(&[])].iter().all(|f| f.iter().fold(0, |m, &v| m | v) < 1 << 23);
    for (b, s) in sums.iter_mut().enumerate() {
        let (x0, y0) = ((b % nx) * BLOCK, (b / nx) * BLOCK);
        let (x1, y1) = ((x0 + BLOCK).min(width), (y0 + BLOCK).min(height));
        if (y0..y1).all(|y| cur[y * width + x0..y * width + x1] == moved[y * width + x0..y * width + x1]) {
            continue;
        }
        let whole = whole.filter(|_| alt_of(b) != own(b));
        if whole.is_none() {
            // No alternative: never smaller than the block's own plain prediction.
            s[3] = u64::MAX / 2;
            s[4] = u64::MAX / 2;
        }
        for y in y0..y1 {
            // Inner pixels (left and upper neighbours in the frame) of narrow frames: the same
            // sums in 32-bit lanes, without branches ([`inner_sums`]); edges as below.
            let xa = if y > 0 && narrow { x0.max(1) } else { x1 };
            if xa < x1 {
                let (i0, i1) = (y * width + xa, y * width + x1);
                let [p, c, sp, bl] = inner_sums::<true>(cur, moved, i0, i1, width);
                (s[0], s[1], s[2], s[5]) = (s[0] + p, s[1] + c, s[2] + sp, s[5] + bl);
                if let Some(w) = whole {
                    let [p, c, _, _] = inner_sums::<false>(cur, w, i0, i1, width);
                    (s[3], s[4]) = (s[3] + p, s[4] + c);
                }
            }
            for i in y * width + x0..y * width + xa {
                let plain = cur[i] as i64 - moved[i] as i64;
                s[0] += bits(plain);
                s[1] += bits(plain - super::pixel::temporal_med(moved, cur, i, width));
                let intra = super::pixel::med(cur, i, width) as i64;
                s[2] += bits(cur[i] as i64 - intra);
                s[5] += bits(cur[i] as i64 - (moved[i] as i64 + intra) / 2);
                if let Some(w) = whole {
                    let plain = cur[i] as i64 - w[i] as i64;
                    s[3] += bits(plain);
                    s[4] += bits(plain - super::pixel::temporal_med(w, cur, i, width));
                }
            }
        }
    }
    let mut dropped = false;
    // Per block: the mark and whether to keep the phase.
    let marks: Vec<(u8, bool)> = sums
        .iter()
        .enumerate()
        .map(|(b, s)| {
            // A correction must win by a little more than noise.
            let px = ((width - (b % nx) * BLOCK).min(BLOCK) * (height - (b / nx) * BLOCK).min(BLOCK)) as u64;
            let (med, intra) = (s[1] + px / 64, s[2] + px / 64);
            let mut best = if intra < s[0].min(med) {
                (intra, INTRA)
            } else if med < s[0] {
                (med, MED)
            } else {
                (s[0], 0)
            };
            if s[5] + px / 64 < best.0 {
                best = (s[5] + px / 64, MED | INTRA);
            }
            let mut keep = true;
            if whole.is_some() {
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
        let (dx, dy, mode) = if keep { (dx, dy, mode) } else { alt_of(b) };
        vectors.extend_from_slice(&[dx, dy, mode | m]);
    }
    dropped
}

/// The sums of residual bit lengths of [`choose_modes`] over the pixels `i0..i1` of one row,
/// all with a left and an upper neighbour in the frame, every value below 2^23 (so every
/// difference and correction fits 24 bits): plain and corrected by the temporal MED against
/// `moved`, and (with `WITH_INTRA`) spatial and blended. The same values as the general per-pixel
/// path, in a loop without branches that the compiler vectorises (the mode choice took a sixth
/// of lossless `motion` coding).
#[inline(always)]
fn inner_sums<const WITH_INTRA: bool>(cur: &[u32], moved: &[u32], i0: usize, i1: usize, width: usize) -> [u64; 4] {
    let n = i1 - i0;
    let (c, cl, cu, cul) = (&cur[i0..i1], &cur[i0 - 1..i1 - 1], &cur[i0 - width..i1 - width], &cur[i0 - width - 1..i1 - width - 1]);
    let (m, ml, mu, mul) = (&moved[i0..i1], &moved[i0 - 1..i1 - 1], &moved[i0 - width..i1 - width], &moved[i0 - width - 1..i1 - width - 1]);
    // Bit length of |r| from the exponent of its exact float (|r| < 2^24), a vector conversion
    // where a leading-zero count is not one on baseline x86-64.
    let bits = |r: i32| (((r.unsigned_abs() as i32 as f32).to_bits() >> 23) as i32 - 126).max(0) as u32;
    // The median of three: MED's prediction from left `a`, upper `b` and upper-left `c` is the
    // median of `a`, `b` and `a + b - c`.
    let med = |a: i32, b: i32, c: i32| a.min(b).max(a.max(b).min(a + b - c));
    let mut s = [0u32; 4];
    for j in 0..n {
        let (x, p) = (c[j] as i32, m[j] as i32);
        let plain = x - p;
        let tmed = med(cl[j] as i32 - ml[j] as i32, cu[j] as i32 - mu[j] as i32, cul[j] as i32 - mul[j] as i32);
        s[0] += bits(plain);
        s[1] += bits(plain - tmed);
        if WITH_INTRA {
            let intra = med(cl[j] as i32, cu[j] as i32, cul[j] as i32);
            s[2] += bits(x - intra);
            s[3] += bits(x - ((p + intra) >> 1));
        }
    }
    s.map(u64::from)
}

/// [`apply`] at whole pixels only (every phase taken as 0): how the adaptive stage's moved
/// temporal context moves the previous frame's codes (a mean of codes means nothing). Vectors
/// that [`apply`] refuses are refused alike.
pub fn apply_whole(prev: &[u32], older: Option<&[u32]>, vectors: &[u8], width: usize, height: usize, out: &mut Vec<u32>) -> Result<(), BadVectors> {
    if vectors.len() != TRIPLE * blocks(width, height) {
        return apply(prev, older, vectors, width, height, false, out);
    }
    if vectors.chunks_exact(TRIPLE).any(|v| v[2] > MAX_MODE) {
        return Err(BadVectors);
    }
    let whole: Vec<u8> = vectors.chunks_exact(TRIPLE).flat_map(|v| [v[0], v[1], v[2] & (REF | MED | INTRA)]).collect();
    apply(prev, older, &whole, width, height, true, out)
}

/// Per block, [`PLAIN`], [`CORRECTED`] ([`MED`] set), [`SPATIAL`] ([`INTRA`] set) or
/// [`BLENDED`] (both set); `None` when every block is plain.
pub fn corrections(vectors: &[u8], width: usize, height: usize) -> Option<Vec<u8>> {
    if vectors.len() != TRIPLE * blocks(width, height) {
        return None;
    }
    let modes: Vec<u8> = vectors
        .chunks_exact(TRIPLE)
        .map(|v| match (v[2] & MED != 0, v[2] & INTRA != 0) {
            (true, true) => BLENDED,
            (false, true) => SPATIAL,
            (true, false) => CORRECTED,
            (false, false) => PLAIN,
        })
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
        let block = |img: &[u32], bx: usize, by: usize| -> Vec<u32> {
            (0..BLOCK * BLOCK).map(|i| img[(by * BLOCK + i / BLOCK) * w + bx * BLOCK + i % BLOCK]).collect()
        };
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
        // Offset (2, 0) quarters: the rounded mean of a pixel and its right neighbour (the last
        // column repeats itself); (2, 2) the mean of four; (1, 0) a quarter of the way.
        let prev: Vec<u32> = (0..w * h).map(|i| ((i % w) * 3 + (i / w) * 5) as u32).collect();
        let mut vectors: Vec<u8> = std::iter::repeat_n([0u8, 0, phase_of(2, 0) << PHASE_SHIFT], blocks(w, h)).flatten().collect();
        let mut out = Vec::new();
        assert_eq!(apply(&prev, None, &vectors, w, h, false, &mut out), Err(BadVectors), "phases need the version-5 flag");
        apply(&prev, None, &vectors, w, h, true, &mut out).unwrap();
        for i in 0..w * h {
            let right = if i % w + 1 < w { prev[i + 1] } else { prev[i] };
            assert_eq!(out[i], (prev[i] + right + 1) >> 1, "pixel {i}");
        }
        vectors.iter_mut().skip(2).step_by(TRIPLE).for_each(|m| *m = phase_of(2, 2) << PHASE_SHIFT);
        apply(&prev, None, &vectors, w, h, true, &mut out).unwrap();
        assert_eq!(out[w + 1], (prev[w + 1] + prev[w + 2] + prev[2 * w + 1] + prev[2 * w + 2] + 2) >> 2);
        vectors.iter_mut().skip(2).step_by(TRIPLE).for_each(|m| *m = phase_of(1, 0) << PHASE_SHIFT);
        apply(&prev, None, &vectors, w, h, true, &mut out).unwrap();
        assert_eq!(out[w + 1], (3 * prev[w + 1] + prev[w + 2] + 2) >> 2);
        for p in 0..PHASES {
            let (ox, oy) = offset(p);
            assert_eq!(phase_of(ox, oy), p);
            assert!(ox.abs() <= 2 && oy.abs() <= 2 && (p == 0) == (ox == 0 && oy == 0));
        }
        // A smooth texture moved by half a pixel: its inner blocks take a half-pixel phase.
        let smooth = |ox: f64| -> Vec<u32> {
            (0..w * h).map(|i| (1000.0 + 400.0 * (0.2 * ((i % w) as f64 + ox)).sin() + 300.0 * (0.15 * (i / w) as f64).cos()) as u32).collect()
        };
        let (prev, cur) = (smooth(0.0), smooth(0.5));
        let v = search(&prev, None, &cur, w, h, true);
        assert_eq!(v.len(), TRIPLE * blocks(w, h));
        assert!(v.chunks_exact(TRIPLE).all(|t| t[2] >> PHASE_SHIFT != 0), "{v:?}");
        assert!(search(&prev, None, &cur, w, h, false).len() <= PAIR * blocks(w, h), "no phases without subpel");
    }

    /// The vectorised sums of the block-mode choice are those of the per-pixel formulas, up to
    /// the largest values they take (just below 2^23).
    #[test]
    fn inner_sums_match_the_per_pixel_sums() {
        let (w, h) = (37, 9);
        let mut seed = 7u64;
        let mut next = |top: u32| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as u32) % top
        };
        for top in [4, 256, 1 << 16, 1 << 23] {
            let cur: Vec<u32> = (0..w * h).map(|_| next(top)).collect();
            let moved: Vec<u32> = (0..w * h).map(|_| next(top)).collect();
            let bits = |r: i64| 64 - r.unsigned_abs().leading_zeros() as u64;
            for y in 1..h {
                let (i0, i1) = (y * w + 1, y * w + w);
                let mut want = [0u64; 4];
                for i in i0..i1 {
                    let plain = cur[i] as i64 - moved[i] as i64;
                    let intra = crate::codec::predict::pixel::med(&cur, i, w) as i64;
                    want[0] += bits(plain);
                    want[1] += bits(plain - crate::codec::predict::pixel::temporal_med(&moved, &cur, i, w));
                    want[2] += bits(cur[i] as i64 - intra);
                    want[3] += bits(cur[i] as i64 - (moved[i] as i64 + intra) / 2);
                }
                assert_eq!(inner_sums::<true>(&cur, &moved, i0, i1, w), want, "values below {top}, row {y}");
                assert_eq!(inner_sums::<false>(&cur, &moved, i0, i1, w)[..2], want[..2]);
            }
        }
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
