//! How each pixel of a frame is predicted from its references and the already reconstructed
//! pixels before it: the per-pixel rules that the quantiser's encoder and decoder both walk
//! ([`Prediction`]), and the spatial building blocks they use (MED, temporal MED).

use super::motion::{blocks, BLENDED, BLOCK, CORRECTED, SPATIAL};
use super::{causal, linear};

/// The median edge detector of JPEG-LS (LOCO-I): the intra prediction of pixel `i` from its
/// already reconstructed left, upper and upper-left neighbours in `img`.
#[inline]
pub fn med(img: &[u32], i: usize, width: usize) -> u32 {
    med_at(img, i, width, i % width)
}

/// [`med`] of pixel `i`, in column `x` (a walk knows it: no division).
#[inline(always)]
fn med_at(img: &[u32], i: usize, width: usize, x: usize) -> u32 {
    let has_up = i >= width;
    match (x > 0, has_up) {
        (false, false) => 0,
        (true, false) => img[i - 1],
        (false, true) => img[i - width],
        (true, true) => {
            let (a, b, c) = (img[i - 1], img[i - width], img[i - width - 1]);
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            if c >= hi {
                lo
            } else if c <= lo {
                hi
            } else {
                // a + b - c lies strictly between lo and hi here, so no overflow.
                a.wrapping_add(b).wrapping_sub(c)
            }
        }
    }
}

/// The temporal MED's correction at pixel `i`: MED over the left, upper and upper-left
/// neighbours' differences `recon - prev` (what the scene did there since `prev`), with the
/// edge rules of [`med`].
#[inline(always)]
pub fn temporal_med(prev: &[u32], recon: &[u32], i: usize, width: usize) -> i64 {
    temporal_med_at(prev, recon, i, width, i % width)
}

/// [`temporal_med`] of pixel `i`, in column `x`.
#[inline(always)]
fn temporal_med_at(prev: &[u32], recon: &[u32], i: usize, width: usize, x: usize) -> i64 {
    let d = |j: usize| recon[j] as i64 - prev[j] as i64;
    match (x > 0, i >= width) {
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

/// Where the prediction of each pixel comes from.
#[derive(Clone, Copy)]
pub enum Prediction<'a> {
    /// A whole predicted frame (temporal predictors).
    Frame(&'a [u32]),
    /// Intra: MED over the already reconstructed pixels of this frame.
    Intra { width: usize },
    /// The previous frame corrected by MED over the temporal differences of the already
    /// reconstructed neighbours (what the scene did there since the previous frame).
    TemporalMed { prev: &'a [u32], width: usize },
    /// Per motion block (`modes`: one per [`BLOCK`]-sized block, row-major): the previous frame
    /// as it is ([`PLAIN`]), corrected as by `TemporalMed` ([`CORRECTED`]), `Intra`
    /// ([`SPATIAL`]), or as by `Blend` ([`BLENDED`]).
    BlockModes { prev: &'a [u32], width: usize, modes: &'a [u8] },
    /// The mean of the previous frame and the intra MED prediction.
    Blend { prev: &'a [u32], width: usize },
    /// Least-squares blend of spatial and temporal neighbours ([`linear`]); `coefs` must be
    /// valid, and with the wide tap set (container version 9) `boxes` holds the
    /// [`linear::box_means`] of `prev` (empty with the narrow set).
    Linear { prev: &'a [u32], width: usize, coefs: &'a [i32], boxes: &'a [u32] },
    /// The learned causal stage ([`causal`]): its network and what it keeps of the past.
    Causal { net: &'a causal::CausalStage, past: &'a causal::Past, width: usize },
}

/// Where a walk over a frame is (`linear` only: whether a pixel is on the frame's border).
struct Walker {
    width: usize,
    rows: usize,
    x: usize,
    y: usize,
}

impl Walker {
    /// The prediction of pixel `i`, the next of the walk.
    #[inline(always)]
    fn next(&mut self, pred: &Prediction, recon: &[u32], i: usize, mask: u32) -> u32 {
        let interior = self.y > 0 && self.y + 1 < self.rows && self.x > 0 && self.x + 1 < self.width;
        self.x += 1;
        if self.x == self.width {
            (self.x, self.y) = (0, self.y + 1);
        }
        match *pred {
            Prediction::Linear { prev, width, coefs, boxes } if interior => {
                if boxes.is_empty() {
                    linear::predict_interior(coefs, recon, prev, i, width, mask)
                } else {
                    linear::predict_wide_interior(coefs, recon, prev, boxes, i, width, mask)
                }
            }
            Prediction::Frame(f) => f[i],
            other => other.at(recon, i, mask),
        }
    }
}

/// Where a walk is: the MED family and block modes by column and row ([`Prediction::at_column`]:
/// no division per pixel), `linear` and the rest by [`Walker`] (whose loop, the hot one of the
/// tree stage's decoding, is left as it was: measured, a walk that tracked the column for every
/// prediction decoded ctc-fluo-nuclei's `linear` frames with 2% more instructions and 10% more
/// time).
enum Position {
    Columns { width: usize, x: usize, y: usize },
    Walker(Walker),
}

impl Position {
    fn new(pred: &Prediction, n: usize) -> Position {
        match pred.column_width(n) {
            Some(width) => Position::Columns { width, x: 0, y: 0 },
            None => Position::Walker(pred.walker(n)),
        }
    }

    /// The prediction of pixel `i`, the next of the walk.
    #[inline(always)]
    fn next(&mut self, pred: &Prediction, recon: &[u32], i: usize, mask: u32) -> u32 {
        match self {
            Position::Walker(w) => w.next(pred, recon, i, mask),
            Position::Columns { width, x, y } => {
                let p = pred.at_column(recon, i, *x, *y, mask);
                (*x, *y) = if *x + 1 == *width { (0, *y + 1) } else { (*x + 1, *y) };
                p
            }
        }
    }
}

/// The prediction of pixel `i` in a block of `mode` (see [`Prediction::BlockModes`]).
#[inline(always)]
pub(crate) fn block_mode_at(mode: u8, prev: &[u32], recon: &[u32], i: usize, width: usize, mask: u32) -> u32 {
    block_mode_at_x(mode, prev, recon, i, width, i % width, mask)
}

/// [`block_mode_at`] of pixel `i`, in column `x`.
#[inline(always)]
fn block_mode_at_x(mode: u8, prev: &[u32], recon: &[u32], i: usize, width: usize, x: usize, mask: u32) -> u32 {
    match mode {
        CORRECTED => (prev[i] as i64 + temporal_med_at(prev, recon, i, width, x)).clamp(0, mask as i64) as u32,
        SPATIAL => med_at(recon, i, width, x),
        BLENDED => ((prev[i] as u64 + med_at(recon, i, width, x) as u64) / 2) as u32,
        _ => prev[i],
    }
}

/// The runs of pixels of row `y` (frame indices) that lie in one block each, with that block's
/// mode, left to right (see [`Prediction::BlockModes`]).
#[inline(always)]
pub(crate) fn block_mode_runs(width: usize, modes: &[u8], y: usize) -> impl Iterator<Item = (u8, std::ops::Range<usize>)> + '_ {
    let nx = width.div_ceil(BLOCK);
    let row = y * width;
    let row_modes = modes.get((y / BLOCK) * nx..).unwrap_or(&[]);
    row_modes.iter().take(nx).enumerate().map(move |(bx, &mode)| (mode, row + bx * BLOCK..row + ((bx + 1) * BLOCK).min(width)))
}

impl Prediction<'_> {
    /// The prediction of pixel `i`, given the reconstructed pixels before it in `recon`.
    #[inline]
    pub(crate) fn at(&self, recon: &[u32], i: usize, mask: u32) -> u32 {
        match *self {
            Prediction::Frame(f) => f[i],
            Prediction::Intra { width } => med(recon, i, width),
            Prediction::TemporalMed { prev, width } => (prev[i] as i64 + temporal_med(prev, recon, i, width)).clamp(0, mask as i64) as u32,
            Prediction::BlockModes { prev, width, modes } => {
                let nx = width.div_ceil(BLOCK);
                block_mode_at(modes[(i / width / BLOCK) * nx + (i % width) / BLOCK], prev, recon, i, width, mask)
            }
            Prediction::Blend { prev, width } => ((prev[i] as u64 + med(recon, i, width) as u64) / 2) as u32,
            Prediction::Linear { prev, width, coefs, boxes } => linear::predict(coefs, recon, prev, boxes, i, width, mask),
            Prediction::Causal { net, past, width } => net.predict(past, recon, i, width, mask),
        }
    }

    /// `f(i, prediction of pixel i)` for every pixel in order, from a frame already whole in
    /// `recon` (lossless coding, where the frame is its own reconstruction): the predictions
    /// of [`Prediction::at`], with `linear`'s border tests only on the border.
    #[inline(always)]
    pub(crate) fn each(&self, recon: &[u32], mask: u32, mut f: impl FnMut(usize, u32)) {
        let mut at = Position::new(self, recon.len());
        for i in 0..recon.len() {
            f(i, at.next(self, recon, i, mask));
        }
    }

    /// Walk a frame in order: `out[i] = f(i, prediction of pixel i)`, each prediction made from
    /// the values `f` gave the pixels before it (the quantiser's encoders and decoders): the
    /// predictions of [`Prediction::at`], with `linear`'s border tests only on the border.
    /// The first error of `f` ends the walk.
    #[inline(always)]
    pub(crate) fn walk<E>(&self, out: &mut [u32], mask: u32, mut f: impl FnMut(usize, u32) -> Result<u32, E>) -> Result<(), E> {
        let mut at = Position::new(self, out.len());
        for i in 0..out.len() {
            let p = at.next(self, out, i, mask);
            // (One call of `f` in the loop, so that it is inlined.)
            out[i] = f(i, p)?;
        }
        Ok(())
    }

    /// The width of a frame of `n` pixels predicted by the MED family (intra, temporal MED,
    /// blend) or by block modes that cover it (as `len_ok` checks): the predictions
    /// [`Prediction::at_column`] makes; `None` for the others.
    fn column_width(&self, n: usize) -> Option<usize> {
        match *self {
            Prediction::BlockModes { prev, width, modes } if width > 0 && prev.len() == n && modes.len() == blocks(width, n / width) => Some(width),
            Prediction::Intra { width } | Prediction::TemporalMed { width, .. } | Prediction::Blend { width, .. } if width > 0 => Some(width),
            _ => None,
        }
    }

    /// [`Prediction::at`] of pixel `i`, in column `x` of row `y`, for the predictions of
    /// [`Prediction::column_width`]: no division per pixel.
    #[inline(always)]
    fn at_column(&self, recon: &[u32], i: usize, x: usize, y: usize, mask: u32) -> u32 {
        match *self {
            Prediction::Intra { width } => med_at(recon, i, width, x),
            Prediction::TemporalMed { prev, width } => (prev[i] as i64 + temporal_med_at(prev, recon, i, width, x)).clamp(0, mask as i64) as u32,
            Prediction::Blend { prev, width } => ((prev[i] as u64 + med_at(recon, i, width, x) as u64) / 2) as u32,
            Prediction::BlockModes { prev, width, modes } => {
                let mode = modes[(y / BLOCK) * width.div_ceil(BLOCK) + x / BLOCK];
                block_mode_at_x(mode, prev, recon, i, width, x, mask)
            }
            _ => self.at(recon, i, mask),
        }
    }

    fn walker(&self, n: usize) -> Walker {
        let (width, rows) = match *self {
            Prediction::Linear { prev, width, .. } if width > 2 && prev.len() == n => (width, n / width),
            _ => (usize::MAX, 0),
        };
        Walker { width, rows, x: 0, y: 0 }
    }

    pub(crate) fn len_ok(&self, n: usize) -> bool {
        match *self {
            Prediction::Frame(f) | Prediction::TemporalMed { prev: f, .. } | Prediction::Blend { prev: f, .. } => f.len() == n,
            Prediction::BlockModes { prev, width, modes } => prev.len() == n && width > 0 && modes.len() == blocks(width, n / width),
            Prediction::Linear { prev, coefs, boxes, .. } => {
                prev.len() == n && linear::valid(coefs) && boxes.len() == if linear::is_wide(coefs) { n } else { 0 }
            }
            Prediction::Causal { past, width, .. } => past.fits(n) && past.width == width,
            Prediction::Intra { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk predicts every pixel as `at` does, for every kind of prediction, on frames of
    /// every small width and a few spanning several motion blocks, whole rows or not, with block
    /// modes of every kind.
    #[test]
    fn walk_predicts_as_at() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let coefs = [4000, 3000, -1000, 800, 9000, 500, 400, -300, 600, -77];
        let wide = [4000, 3000, -1000, 800, 6000, 500, 400, -300, 600, 1500, -77];
        for width in (1..7).chain([17, 33]) {
            for n in [width * 5, width * 5 + width / 2, width * 35 + 3] {
                let mask = 0xffff;
                let prev: Vec<u32> = (0..n).map(|_| next() & mask).collect();
                let x: Vec<u32> = (0..n).map(|_| next() & mask).collect();
                let modes: Vec<u8> = (0..blocks(width, n / width)).map(|_| (next() % 4) as u8).collect();
                let mut boxes = Vec::new();
                linear::box_means(&prev, width, &mut boxes, &mut Vec::new());
                let preds = [
                    Prediction::Frame(&prev),
                    Prediction::Intra { width },
                    Prediction::TemporalMed { prev: &prev, width },
                    Prediction::Blend { prev: &prev, width },
                    Prediction::Linear { prev: &prev, width, coefs: &coefs, boxes: &[] },
                    Prediction::Linear { prev: &prev, width, coefs: &wide, boxes: &boxes },
                    Prediction::BlockModes { prev: &prev, width, modes: &modes },
                ];
                for pred in preds {
                    let mut walked = vec![0u32; n];
                    let mut seen = Vec::new();
                    let r: Result<(), ()> = pred.walk(&mut walked, mask, |i, p| {
                        seen.push(p);
                        Ok(x[i])
                    });
                    r.unwrap();
                    let direct: Vec<u32> = (0..n).map(|i| pred.at(&x, i, mask)).collect();
                    assert_eq!(seen, direct, "width {width} n {n}");
                    assert_eq!(walked, x);
                    let mut each = Vec::new();
                    pred.each(&x, mask, |i, p| {
                        assert_eq!(i, each.len());
                        each.push(p)
                    });
                    assert_eq!(each, direct, "width {width} n {n}");
                }
            }
        }
    }

    #[test]
    fn med_picks_edges_and_planes() {
        // c >= max(a, b) -> min(a, b)
        let img = [9, 5, 3, 0];
        assert_eq!(med(&img, 3, 2), 3);
        // c <= min(a, b) -> max(a, b)
        assert_eq!(med(&[4, 6, 5, 0], 3, 2), 6);
        // c in between: the plane a + b - c
        assert_eq!(med(&[5, 6, 4, 0], 3, 2), 4 + 6 - 5);
        assert_eq!(med(&[7, 0], 1, 2), 7);
        assert_eq!(med(&[7, 0], 1, 1), 7);
    }
}
