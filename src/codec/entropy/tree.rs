//! Entropy stage 7 (container version 12): a frame's lossless codes under a context tree learned
//! by the encoder, with the pixel's *prediction* among its properties. In container version 13
//! also a bounded frame's quantisation codes (the caller hands the predictions over as
//! `quantizer::Coded::tree_image` and dequantises each decoded code against its prediction), and
//! on 8-bit pixels the prediction's exact value as its level ([`exact_levels`]).
//!
//! Photon noise grows with the intensity, so the spread of a residual depends on the value
//! predicted for its pixel; the adaptive stage's contexts see only the residuals around it (and,
//! with the intensity context, the reference's local level as half of a mixed model). A tree
//! over the prediction and the neighbours' activity, with a static distribution per leaf, codes
//! the detector fixtures' `linear` codes 3-4% smaller than the adaptive stage and decodes them
//! twice as fast (`docs/results/issue14-tree-stage.txt`; the lab that found it:
//! `examples/tree_lab.rs`, `docs/results/issue14-tree-lab.txt`).
//!
//! Each code is split as a hybrid integer: a code below 16 is its own token; a larger one, of top
//! bit `e`, is token `16 + 4 (e - 4) + (its two bits below the top one)` and keeps its `e - 2`
//! lowest bits raw. Tokens are coded by rANS (12-bit frequencies, 16-bit renormalisation) under
//! the distribution of the pixel's leaf. The leaf is found from three quantised properties, all
//! known to the decoder when it decodes the pixel:
//!
//! - `qa`: the activity, the codes to the left and above (four levels an octave);
//! - `qp`: the pixel's prediction (its own value below 64, then sixteen levels an octave; on
//!   8-bit pixels in container version 13 its own value throughout, [`exact_levels`]);
//! - `qc`: the codes up-left and up-right and the previous frame's code at the pixel.
//!
//! The encoder grows the tree best first on a sample of the frame (each split must pay for the
//! tables it adds) and compiles it into a table over the three levels: the decoder finds a leaf
//! with one lookup. A token a leaf's distribution lacks is coded as the escape token followed by
//! [`TOKEN_BITS`] raw bits, so a frame may continue the previous frame's tree and tables (the
//! container's `carry` flag; the first frames of a chain learn their own).
//!
//! Because the prediction is a property, decoding is fused with the reconstruction: the caller
//! predicts each pixel from the pixels decoded before it and asks for its code
//! ([`FrameDecoder::next`]). A corrupt stream gives wrong codes (the container's CRC catches
//! them) or an error, never a panic or a hang.
//!
//! Stream (docs/FORMAT.md, stage 7): `flags` (bit 0: a tree and tables follow; else the previous
//! frame's are continued), [tree and tables], varint count of 16-bit rANS words, the words, the raw
//! bits (little-endian, least significant first).

use super::rans::{put_varint, BitReader, BitWriter, In, RansError};
use crate::codec::quantizer::unzigzag_native;
use std::collections::BinaryHeap;

/// Tokens of codes up to 32 bits, then the escape.
const TOKENS: usize = 16 + 4 * 28;
const ESCAPE: usize = TOKENS;
const SYMBOLS: usize = TOKENS + 1;
/// Raw bits of an escaped token.
pub const TOKEN_BITS: u32 = 7;
const PROB_BITS: u32 = 12;
const PROB_SCALE: u32 = 1 << PROB_BITS;
const RANS_L: u32 = 1 << 16;
/// Levels of the activity properties (`qa`, `qc`) and of the prediction (`qp`).
const A_LEVELS: usize = 64;
const P_LEVELS: usize = 256;
/// Most leaves of a tree (a leaf is a byte of the compiled table).
pub const MAX_LEAVES: usize = 255;
/// Most pixels the tree is grown on (a regular sample of the frame; 2^17 coded the detector
/// fixtures the same and took 18% longer on u8, 2^15 lost 0.7-1%).
const SAMPLES: usize = 1 << 16;
/// What a split costs in the stream (its node) and a used token in a leaf's table, in bits:
/// a split must save more than it adds.
const SPLIT_BITS: f64 = 24.0;
const TABLE_BITS_PER_TOKEN: f64 = 14.0;

/// Four levels an octave, 0 to 7 their own, at most `A_LEVELS - 1`.
#[inline(always)]
fn level_a(v: u64) -> usize {
    if v < 8 {
        v as usize
    } else {
        let b = 63 - v.leading_zeros() as usize;
        (8 + 4 * (b - 3) + ((v >> (b - 2)) & 3) as usize).min(A_LEVELS - 1)
    }
}

/// The prediction's level: with `exact` its own value (pixel types of at most 8 bits, container
/// version 13); else its own value below 64, then sixteen an octave.
#[inline(always)]
fn level_p(p: u32, exact: bool) -> usize {
    if exact {
        (p as usize).min(P_LEVELS - 1)
    } else if p < 64 {
        p as usize
    } else {
        let b = 31 - p.leading_zeros() as usize;
        (64 + 16 * (b - 6) + ((p >> (b - 4)) & 15) as usize).min(P_LEVELS - 1)
    }
}

/// (token, raw bit count, raw bits) of a code.
#[inline(always)]
fn token_of(z: u32) -> (usize, u32, u32) {
    if z < 16 {
        return (z as usize, 0, 0);
    }
    let e = 31 - z.leading_zeros();
    let m = (z >> (e - 2)) & 3;
    (16 + 4 * (e as usize - 4) + m as usize, e - 2, z & ((1 << (e - 2)) - 1))
}

/// (high part of the code, raw bit count) of a token.
#[inline(always)]
fn token_base(t: usize) -> (u32, u32) {
    if t < 16 {
        return (t as u32, 0);
    }
    let e = ((t - 16) / 4) as u32 + 4;
    let m = ((t - 16) % 4) as u32;
    ((4 | m) << (e - 2), e - 2)
}

/// Whether frames of pixels of `mask` have their prediction's exact value as a level, where
/// the writer may (`allowed`: container version 13): pixel types of at most 8 bits. Sixteen
/// levels an octave above 64 merge the values near an 8-bit type's saturation, whose residuals
/// are almost always 0: exact levels code the u8 detector fixture 1.1% smaller (ctc-fluo-nuclei
/// 0.4%), `docs/results/tree-v13.txt`.
pub fn exact_levels(allowed: bool, mask: u32) -> bool {
    allowed && mask < P_LEVELS as u32
}

/// The pixels a frame's codes are of, as the stage's levels see them: the type's mask, and
/// whether the prediction's levels are exact ([`exact_levels`]; the frame entry's flag bit 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    pub mask: u32,
    pub exact: bool,
}

impl Levels {
    /// Pixels of `mask`, with exact prediction levels where the writer may use them (`allowed`).
    pub fn new(mask: u32, allowed: bool) -> Levels {
        Levels { mask, exact: exact_levels(allowed, mask) }
    }
}

/// Number of levels of each property for codes and predictions of `mask` (the compiled table's
/// dimensions).
fn dims(mask: u32, exact: bool) -> [usize; 3] {
    let m = mask as u64;
    [level_a(2 * m) + 1, level_p(mask, exact) + 1, level_a(3 * m) + 1]
}

/// Bytes a decoder's tables of `leaves` leaves hold besides the compiled table: each leaf's
/// slots, frequencies and costs.
fn leaf_bytes(leaves: usize) -> usize {
    leaves * (PROB_SCALE as usize + 8 * SYMBOLS)
}

/// Bytes a decoder's tables take at most for pixels of `mask`: each leaf's slots and
/// frequencies, the compiled table (over classes: at most `MAX_LEAVES - 1` cuts in all, each
/// property at most its levels, the largest product of the class counts those allow).
pub fn tables_bytes(mask: u32) -> u64 {
    let d = dims(mask, exact_levels(true, mask));
    let mut classes = [1usize; 3];
    // (Each cut goes where it multiplies the product most: to the property of fewest classes
    // that still has levels to cut.)
    for _ in 0..MAX_LEAVES - 1 {
        let Some(j) = (0..3).filter(|&j| classes[j] < d[j]).min_by_key(|&j| classes[j]) else { break };
        classes[j] += 1;
    }
    (leaf_bytes(MAX_LEAVES) + classes.iter().product::<usize>()) as u64
}

/// Bytes the tables a frame's stream `data` (pixels `lv`) brings take in a decoder: 0 where it
/// carries the frame before's; `None` where its tree does not parse (the decoder will refuse
/// it; [`tables_bytes`] bounds any stream).
pub fn stream_tables_bytes(data: &[u8], lv: Levels) -> Option<u64> {
    let mut inp = In { b: data, pos: 0 };
    if inp.byte().ok()? & 1 == 0 {
        return Some(0);
    }
    let (mut nodes, mut leaves) = (Vec::new(), 0);
    get_tree(&mut inp, &mut nodes, &mut leaves, 0).ok()?;
    let (_, dims) = classes(&nodes, lv);
    Some((leaf_bytes(leaves) + dims.iter().product::<usize>()) as u64)
}

/// The levels of pixel `i` (column `x`) from the codes before it, its prediction `p` and the
/// previous frame's codes.
#[inline(always)]
fn levels(codes: &[u32], prev: Option<&[u32]>, i: usize, x: usize, cols: usize, p: u32, exact: bool) -> [u8; 3] {
    let w = if x > 0 { codes[i - 1] as u64 } else { 0 };
    let up = i >= cols;
    let n = if up { codes[i - cols] as u64 } else { w };
    let nw = if up && x > 0 { codes[i - cols - 1] as u64 } else { n };
    let ne = if up && x + 1 < cols { codes[i - cols + 1] as u64 } else { n };
    let t = prev.map_or(0, |pr| pr[i] as u64);
    [level_a(w + n) as u8, level_p(p, exact) as u8, level_a(nw + ne + t) as u8]
}

/// A split of the tree (`prop`'s level at most `at`: left) or a leaf.
#[derive(Clone, Copy, Debug)]
enum Node {
    Leaf(u8),
    Split { prop: u8, at: u8, left: u32, right: u32 },
}

/// A tree compiled into a table of its leaves (one lookup a pixel). The table is indexed by
/// *classes*, not levels: the levels of a property between two of the tree's cuts on it lead to
/// the same leaves, so each property's levels map to their class first. The table then holds a
/// few hundred bytes where one over the levels would hold up to 280 KB (8-bit pixels with exact
/// prediction levels), which decoding would read all over.
struct Compiled {
    /// Per property, each level's class.
    class: [[u8; 256]; 3],
    /// Classes per property.
    dims: [usize; 3],
    table: Vec<u8>,
    /// The prediction's levels are exact ([`exact_levels`]).
    exact: bool,
}

impl Compiled {
    /// The tree `nodes` for pixels of `lv`.
    fn new(nodes: &[Node], lv: Levels) -> Compiled {
        let levels = dims(lv.mask, lv.exact);
        let (class, dims) = classes(nodes, lv);
        let mut table = vec![0u8; dims[0] * dims[1] * dims[2]];
        fill(nodes, 0, [[0, dims[0]], [0, dims[1]], [0, dims[2]]], (&dims, &class, &levels), &mut table);
        Compiled { class, dims, table, exact: lv.exact }
    }

    #[inline(always)]
    fn leaf(&self, l: [u8; 3]) -> usize {
        let c = |j: usize| self.class[j][l[j] as usize] as usize;
        self.table[(c(0) * self.dims[1] + c(1)) * self.dims[2] + c(2)] as usize
    }
}

/// Each property's levels mapped to their classes (the levels between two of the tree's cuts on
/// it), and the number of classes of each.
fn classes(nodes: &[Node], lv: Levels) -> ([[u8; 256]; 3], [usize; 3]) {
    let levels = dims(lv.mask, lv.exact);
    // (A class starts at every level a split sends to its right; levels are below 256.)
    let mut starts = [[false; 256]; 3];
    for n in nodes {
        if let Node::Split { prop, at, .. } = *n {
            let cut = at as usize + 1;
            if cut < levels[prop as usize] {
                starts[prop as usize][cut] = true;
            }
        }
    }
    let mut class = [[0u8; 256]; 3];
    let mut dims = [0usize; 3];
    for j in 0..3 {
        let mut k = 0usize;
        for (l, c) in class[j].iter_mut().enumerate() {
            k += starts[j][l] as usize;
            *c = k as u8;
        }
        dims[j] = k + 1;
    }
    (class, dims)
}

/// A tree, compiled, and each leaf's distribution.
pub struct Tables {
    compiled: Compiled,
    /// Per leaf, per symbol: frequency | start << 16 (frequency 0: absent).
    freqs: Vec<[u32; SYMBOLS]>,
    /// Per leaf, per slot: the symbol (the decoder's; empty in the encoder's tables).
    slots: Vec<[u8; PROB_SCALE as usize]>,
    /// Per leaf, per token: its bits under the leaf's distribution in [`COST_ONE`] units (a token
    /// the leaf lacks: the escape's and [`TOKEN_BITS`]), for the encoder's estimates.
    cost: Vec<[u32; SYMBOLS]>,
}

/// `-log2(q / PROB_SCALE)` in [`COST_ONE`] units, for every frequency `q` (0 taken as 1).
fn bits_of_frequency() -> &'static [u32] {
    static BITS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    BITS.get_or_init(|| (0..=PROB_SCALE).map(|q| ((PROB_BITS as f64 - (q.max(1) as f64).log2()) * COST_ONE).round() as u32).collect())
}

impl Tables {
    #[inline(always)]
    fn leaf(&self, l: [u8; 3]) -> usize {
        self.compiled.leaf(l)
    }

    /// Made from a compiled tree and the frequencies of each leaf (each summing to `PROB_SCALE`);
    /// `decoding`: with the slots the decoder looks symbols up in.
    fn new(compiled: Compiled, freqs: Vec<[u32; SYMBOLS]>, decoding: bool) -> Tables {
        let mut slots = vec![[0u8; PROB_SCALE as usize]; if decoding { freqs.len() } else { 0 }];
        let mut packed = vec![[0u32; SYMBOLS]; freqs.len()];
        let mut cost = vec![[0u32; SYMBOLS]; freqs.len()];
        let bits = bits_of_frequency();
        for (l, ((f, p), c)) in freqs.iter().zip(packed.iter_mut()).zip(cost.iter_mut()).enumerate() {
            let mut start = 0u32;
            let escape = bits[f[ESCAPE] as usize] + TOKEN_BITS * COST_ONE as u32;
            for (t, &q) in f.iter().enumerate() {
                if let Some(s) = slots.get_mut(l) {
                    s[start as usize..(start + q) as usize].fill(t as u8);
                }
                p[t] = q | start << 16;
                c[t] = if q > 0 { bits[q as usize] } else { escape };
                start += q;
            }
        }
        Tables { compiled, freqs: packed, slots, cost }
    }

    /// The tokens' bits of pixels `px` (levels and token) under these tables, in [`COST_ONE`]
    /// units.
    fn cost_of(&self, px: &[[u8; 4]]) -> u64 {
        px.iter().map(|p| self.cost[self.leaf([p[0], p[1], p[2]])][p[3] as usize] as u64).sum()
    }

    /// The same from each leaf's token counts.
    fn cost_of_counts(&self, counts: &[[u64; SYMBOLS]]) -> u64 {
        counts.iter().zip(&self.cost).map(|(n, c)| n.iter().zip(c).map(|(&n, &c)| n * c as u64).sum::<u64>()).sum()
    }
}

/// Fill the part of the compiled table below node `n` (`bounds`: each property's range of classes
/// there; `classes`: the classes per property, each level's class, the levels per property).
fn fill(nodes: &[Node], n: usize, bounds: [[usize; 2]; 3], classes: (&[usize; 3], &[[u8; 256]; 3], &[usize; 3]), table: &mut [u8]) {
    let (dims, class, levels) = classes;
    match nodes[n] {
        Node::Leaf(l) => {
            for a in bounds[0][0]..bounds[0][1] {
                for p in bounds[1][0]..bounds[1][1] {
                    let row = (a * dims[1] + p) * dims[2];
                    table[row + bounds[2][0]..row + bounds[2][1]].fill(l);
                }
            }
        }
        Node::Split { prop, at, left, right } => {
            let (j, at) = (prop as usize, at as usize + 1);
            // (The first class of the levels the split sends right; none past the last level.)
            let first = if at < levels[j] { class[j][at] as usize } else { dims[j] };
            let cut = first.clamp(bounds[j][0], bounds[j][1]);
            let (mut lb, mut rb) = (bounds, bounds);
            lb[j][1] = cut;
            rb[j][0] = cut;
            fill(nodes, left as usize, lb, classes, table);
            fill(nodes, right as usize, rb, classes, table);
        }
    }
}

/// What the encoder keeps from frame to frame: the tables the last frame coded with.
#[derive(Default)]
pub struct Scratch {
    tables: Option<Tables>,
    /// The pixels the tables were made for.
    levels: Levels,
    /// Bits a pixel the tables coded the frame they were learned on (their own bytes apart),
    /// estimated.
    learned_bits: f64,
    /// The encoder's buffers: each pixel's levels and token, the rANS symbols, the words.
    px: Vec<[u8; 4]>,
    sym: Vec<u32>,
    words: Vec<u16>,
}

/// Normalise counts to frequencies summing to `PROB_SCALE`, every used symbol at least 1 and the
/// escape always present.
fn normalise(counts: &[u64; SYMBOLS]) -> [u32; SYMBOLS] {
    let mut c = *counts;
    c[ESCAPE] = c[ESCAPE].max(1);
    let total: u64 = c.iter().sum();
    let mut f = [0u32; SYMBOLS];
    let mut sum = 0i64;
    for (fi, &n) in f.iter_mut().zip(&c) {
        if n > 0 {
            *fi = ((n * PROB_SCALE as u64 + total / 2) / total).max(1) as u32;
            sum += *fi as i64;
        }
    }
    let mut diff = PROB_SCALE as i64 - sum;
    while diff != 0 {
        let k = (0..SYMBOLS).max_by_key(|&k| f[k]).expect("symbols");
        let change = if diff > 0 { diff } else { -((-diff).min(f[k] as i64 - 1)) };
        f[k] = (f[k] as i64 + change) as u32;
        diff -= change;
    }
    f
}

/// `n log2 n`, tabulated for the sample's counts.
fn nlogn_table(n: usize) -> Vec<f64> {
    (0..=n).map(|k| if k < 2 { 0.0 } else { k as f64 * (k as f64).log2() }).collect()
}

/// Bits of a node's samples under their own static distribution (scaled to the frame) plus its
/// table's.
fn cost(h: &[u32], total: u32, nlogn: &[f64], scale: f64) -> f64 {
    let mut s = nlogn[total as usize];
    let mut used = 0;
    for &n in h.iter() {
        if n > 0 {
            s -= nlogn[n as usize];
            used += 1;
        }
    }
    s * scale + used as f64 * TABLE_BITS_PER_TOKEN
}

/// The histograms [`Splitter::best_split`] counts a node's samples into, kept across the nodes of
/// a tree: the sweep that reads a level's counts clears them, so a node costs its samples and its
/// levels, not a fresh table.
struct Splitter {
    /// Per property, per level, per symbol: the samples.
    hist: [Box<[[u32; 256]; 256]>; 3],
    /// Per property, per level: the samples.
    seen: [[u32; 256]; 3],
    used: usize,
}

impl Splitter {
    fn new(used: usize) -> Splitter {
        let table = || -> Box<[[u32; 256]; 256]> { vec![[0u32; 256]; 256].into_boxed_slice().try_into().expect("256 rows") };
        Splitter { hist: [table(), table(), table()], seen: [[0; 256]; 3], used }
    }

    /// The best split of `samples` (levels within `ranges`, symbol below `used`) and its gain in
    /// bits, if any pays. (Per property, the levels are swept upwards with the two sides' sums of
    /// `n log2 n` kept as they change.)
    fn best_split(&mut self, samples: &[([u8; 3], u8)], ranges: [[u8; 2]; 3], nlogn: &[f64], scale: f64) -> Option<(f64, u8, u8)> {
        let used = self.used;
        let mut all = [0u32; SYMBOLS];
        for &(l, s) in samples {
            all[s as usize] += 1;
            for (j, &at) in l.iter().enumerate() {
                self.hist[j][at as usize][s as usize] += 1;
                self.seen[j][at as usize] += 1;
            }
        }
        let total = samples.len() as u32;
        let here = cost(&all[..used], total, nlogn, scale);
        let all_sum: f64 = all[..used].iter().map(|&n| nlogn[n as usize]).sum();
        let all_used = all[..used].iter().filter(|&&n| n > 0).count();
        let mut best: Option<(f64, u8, u8)> = None;
        for (j, [lo, hi]) in ranges.into_iter().enumerate() {
            let (mut left, mut right) = ([0u32; SYMBOLS], all);
            let (mut left_sum, mut right_sum, mut left_used, mut right_used) = (0.0, all_sum, 0usize, all_used);
            let mut nl = 0u32;
            for at in lo as usize..=hi as usize {
                let seen = std::mem::take(&mut self.seen[j][at]);
                if seen == 0 {
                    continue;
                }
                for (s, h) in self.hist[j][at][..used].iter_mut().enumerate() {
                    if *h == 0 {
                        continue;
                    }
                    let h = std::mem::take(h) as usize;
                    let (l, r) = (left[s] as usize, right[s] as usize);
                    left_sum += nlogn[l + h] - nlogn[l];
                    right_sum += nlogn[r - h] - nlogn[r];
                    left_used += (l == 0) as usize;
                    right_used -= (r == h) as usize;
                    left[s] += h as u32;
                    right[s] -= h as u32;
                }
                nl += seen;
                // (Once every sample is on the left there is no split; the sweep goes on to
                // clear the counts.)
                if nl == total {
                    continue;
                }
                let split_cost =
                    (nlogn[nl as usize] - left_sum + nlogn[(total - nl) as usize] - right_sum) * scale + (left_used + right_used) as f64 * TABLE_BITS_PER_TOKEN;
                let gain = here - split_cost - SPLIT_BITS;
                if gain > 0.0 && best.is_none_or(|b| gain > b.0) {
                    best = Some((gain, j as u8, at as u8));
                }
            }
        }
        best
    }
}

/// A leaf waiting to be split, ordered by what its split gains; its samples are
/// `samples[from..to]` of [`grow`]'s.
struct Candidate {
    gain: f64,
    node: usize,
    prop: u8,
    at: u8,
    from: usize,
    to: usize,
    /// Per property, the lowest and highest level its samples may have.
    ranges: [[u8; 2]; 3],
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.gain == o.gain
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.gain.total_cmp(&o.gain).then(o.node.cmp(&self.node))
    }
}

/// Grow a tree best first on `samples` (each standing for `scale` pixels); leaves numbered as
/// they are made final. (A split's samples are partitioned in place.)
fn grow(mut samples: Vec<([u8; 3], u8)>, used: usize, scale: f64) -> Vec<Node> {
    let nlogn = nlogn_table(samples.len());
    let mut nodes = vec![Node::Leaf(0)];
    let mut heap = BinaryHeap::new();
    let mut splitter = Splitter::new(used);
    let mut push = |heap: &mut BinaryHeap<Candidate>, samples: &[([u8; 3], u8)], node: usize, from: usize, to: usize, ranges: [[u8; 2]; 3]| {
        if let Some((gain, prop, at)) = splitter.best_split(&samples[from..to], ranges, &nlogn, scale) {
            heap.push(Candidate { gain, node, prop, at, from, to, ranges });
        }
    };
    push(&mut heap, &samples, 0, 0, samples.len(), [[0, 255]; 3]);
    let mut leaves = 1;
    while leaves < MAX_LEAVES {
        let Some(c) = heap.pop() else { break };
        let part = &mut samples[c.from..c.to];
        let mut mid = 0;
        for k in 0..part.len() {
            if part[k].0[c.prop as usize] <= c.at {
                part.swap(mid, k);
                mid += 1;
            }
        }
        let (l, r) = (nodes.len(), nodes.len() + 1);
        nodes.push(Node::Leaf(0));
        nodes.push(Node::Leaf(0));
        nodes[c.node] = Node::Split { prop: c.prop, at: c.at, left: l as u32, right: r as u32 };
        leaves += 1;
        // (The children's levels lie within their parent's, split at `at`.)
        let (mut lr, mut rr) = (c.ranges, c.ranges);
        lr[c.prop as usize][1] = c.at;
        rr[c.prop as usize][0] = c.at + 1;
        push(&mut heap, &samples, l, c.from, c.from + mid, lr);
        push(&mut heap, &samples, r, c.from + mid, c.to, rr);
    }
    // Number the leaves in preorder (the order they are stored in).
    let mut next = 0u8;
    number(&mut nodes, 0, &mut next);
    nodes
}

fn number(nodes: &mut [Node], n: usize, next: &mut u8) {
    match nodes[n] {
        Node::Leaf(_) => {
            nodes[n] = Node::Leaf(*next);
            *next = next.wrapping_add(1);
        }
        Node::Split { left, right, .. } => {
            number(nodes, left as usize, next);
            number(nodes, right as usize, next);
        }
    }
}

/// The tree in preorder: per node a byte (0: a leaf, 1 + property: a split) and a split's level.
fn put_tree(nodes: &[Node], n: usize, out: &mut Vec<u8>) {
    match nodes[n] {
        Node::Leaf(_) => out.push(0),
        Node::Split { prop, at, left, right } => {
            out.push(1 + prop);
            out.push(at);
            put_tree(nodes, left as usize, out);
            put_tree(nodes, right as usize, out);
        }
    }
}

fn get_tree(inp: &mut In, nodes: &mut Vec<Node>, leaves: &mut usize, depth: usize) -> Result<usize, RansError> {
    // (A tree of at most MAX_LEAVES leaves is at most that deep.)
    if depth > MAX_LEAVES || nodes.len() >= 2 * MAX_LEAVES {
        return Err(RansError("tree too large"));
    }
    let n = nodes.len();
    match inp.byte()? {
        0 => {
            if *leaves >= MAX_LEAVES {
                return Err(RansError("too many leaves"));
            }
            nodes.push(Node::Leaf(*leaves as u8));
            *leaves += 1;
        }
        tag @ 1..=3 => {
            let at = inp.byte()?;
            nodes.push(Node::Leaf(0));
            let left = get_tree(inp, nodes, leaves, depth + 1)? as u32;
            let right = get_tree(inp, nodes, leaves, depth + 1)? as u32;
            nodes[n] = Node::Split { prop: tag - 1, at, left, right };
        }
        _ => return Err(RansError("bad tree node")),
    }
    Ok(n)
}

/// The tree and each leaf's frequencies (per leaf: the used symbols' count, then per symbol the
/// step from the one before and its frequency less one).
fn put_tables(nodes: &[Node], freqs: &[[u32; SYMBOLS]], out: &mut Vec<u8>) {
    put_tree(nodes, 0, out);
    for f in freqs {
        put_varint(out, f.iter().filter(|&&q| q > 0).count() as u64);
        let mut last = 0usize;
        for (t, &q) in f.iter().enumerate().filter(|(_, &q)| q > 0) {
            put_varint(out, (t - last) as u64);
            put_varint(out, q as u64 - 1);
            last = t;
        }
    }
}

fn get_tables(inp: &mut In, lv: Levels) -> Result<Tables, RansError> {
    let mut nodes = Vec::new();
    let mut leaves = 0;
    get_tree(inp, &mut nodes, &mut leaves, 0)?;
    let mut freqs = vec![[0u32; SYMBOLS]; leaves];
    for f in freqs.iter_mut() {
        let used = inp.varint()?;
        if used == 0 || used > SYMBOLS as u64 {
            return Err(RansError("bad table"));
        }
        let (mut t, mut sum) = (0u64, 0u64);
        for k in 0..used {
            let step = inp.varint()?;
            if k > 0 && step == 0 {
                return Err(RansError("bad table"));
            }
            t += step;
            let q = inp.varint()?.saturating_add(1);
            sum = sum.saturating_add(q);
            if t >= SYMBOLS as u64 || sum > PROB_SCALE as u64 {
                return Err(RansError("bad table"));
            }
            f[t as usize] = q as u32;
        }
        if sum != PROB_SCALE as u64 || f[ESCAPE] == 0 {
            return Err(RansError("bad table"));
        }
    }
    Ok(Tables::new(Compiled::new(&nodes, lv), freqs, true))
}

/// Choose the tables for one frame's lossless codes (`cols` a row) of pixels `image` (`mask`: the
/// pixel type's; the prediction of a pixel is its value less its residual); `prev`: the previous
/// frame's codes (the same geometry) or none; `carry`: the tables the scratch holds may be
/// continued from the frame before (the caller guarantees that it was coded by this stage).
/// They are, while their estimated bits a pixel stay within [`RELEARN`] of those of the frame
/// they were learned on; past that (the scene changed: ctc-fluo-nuclei's nuclei move and
/// divide) new ones are learned on this frame and taken where they code it smaller. Leaves the
/// chosen tables in the scratch and each pixel's levels and token in `scratch.px`; returns the
/// stream's head (flags, and new tables' tree and frequencies) and the frame's estimated size in
/// bytes.
fn choose(codes: &[u32], image: &[u32], lv: Levels, cols: usize, prev: Option<&[u32]>, carry: bool, scratch: &mut Scratch) -> (Vec<u8>, usize) {
    let n = codes.len();
    let prev = prev.filter(|p| p.len() == n);
    let raw = pixels_of(codes, image, lv, cols.max(1), prev, &mut scratch.px);
    let per_pixel = |cost: u64| cost as f64 / COST_ONE / n.max(1) as f64;
    let carried = scratch.tables.as_ref().filter(|_| carry && scratch.levels == lv).map(|t| t.cost_of(&scratch.px) + raw);
    if let Some(c) = carried.filter(|&c| per_pixel(c) <= scratch.learned_bits * (1.0 + RELEARN)) {
        return (vec![0], bytes_of(c, 0));
    }
    let (nodes, compiled, counts) = learn(&scratch.px, lv);
    let freqs: Vec<[u32; SYMBOLS]> = counts.iter().map(normalise).collect();
    let mut head = vec![1u8];
    put_tables(&nodes, &freqs, &mut head);
    let tables = Tables::new(compiled, freqs, false);
    let fresh = tables.cost_of_counts(&counts) + raw;
    match carried {
        // (Kept: the carried tables code this frame better than new ones would, which is what
        // later frames are measured against.)
        Some(c) if bytes_of(c, 0) <= bytes_of(fresh, head.len()) => {
            scratch.learned_bits = per_pixel(c);
            (vec![0], bytes_of(c, 0))
        }
        _ => {
            let size = bytes_of(fresh, head.len());
            scratch.learned_bits = per_pixel(fresh);
            scratch.tables = Some(tables);
            scratch.levels = lv;
            (head, size)
        }
    }
}

/// Units of [`Tables::cost`]: 1/65536 bit.
const COST_ONE: f64 = 65536.0;

/// Bytes of a frame's stream whose codes cost `cost` ([`COST_ONE`] a bit) after a head of `head`
/// bytes: the flags (in `head` where tables follow), the word count, the final rANS state.
fn bytes_of(cost: u64, head: usize) -> usize {
    head.max(1) + 3 + 4 + (cost as f64 / COST_ONE / 8.0).ceil() as usize
}

/// Code one frame's lossless codes (see [`choose`] for the arguments and which tables).
pub fn encode(codes: &[u32], image: &[u32], lv: Levels, cols: usize, prev: Option<&[u32]>, carry: bool, scratch: &mut Scratch) -> Vec<u8> {
    let (mut out, _) = choose(codes, image, lv, cols, prev, carry, scratch);
    let tables = scratch.tables.as_ref().expect("choose leaves the frame's tables");
    code_with(tables, &scratch.px, codes, &mut scratch.sym, &mut scratch.words, &mut out);
    out
}

/// The size [`encode`] would give (within a few bytes), leaving the scratch as it would.
pub fn estimate(codes: &[u32], image: &[u32], lv: Levels, cols: usize, prev: Option<&[u32]>, carry: bool, scratch: &mut Scratch) -> usize {
    choose(codes, image, lv, cols, prev, carry, scratch).1
}

/// Each pixel's levels (from the codes before it, its prediction and the previous frame's codes)
/// and token, into `px`; returns the raw bits of all the codes in [`COST_ONE`] units. (The same
/// levels as [`levels`], the rows' inner pixels without its edge tests.)
fn pixels_of(codes: &[u32], image: &[u32], lv: Levels, cols: usize, prev: Option<&[u32]>, px: &mut Vec<[u8; 4]>) -> u64 {
    let (mask, exact) = (lv.mask, lv.exact);
    let n = codes.len();
    px.clear();
    px.reserve(n);
    let mut raw = 0u64;
    let mut one = |px: &mut Vec<[u8; 4]>, c: u32, [a, q, b]: [u8; 3]| {
        let (tok, nb, _) = token_of(c);
        raw += nb as u64;
        px.push([a, q, b, tok as u8]);
    };
    let prediction = |i: usize| image[i].wrapping_sub(unzigzag_native(codes[i])) & mask;
    let zeros = vec![0u32; if prev.is_none() { cols } else { 0 }];
    for start in (0..n).step_by(cols) {
        let end = (start + cols).min(n);
        if start == 0 || end - start < 3 {
            for i in start..end {
                one(px, codes[i], levels(codes, prev, i, i - start, cols, prediction(i), exact));
            }
            continue;
        }
        one(px, codes[start], levels(codes, prev, start, 0, cols, prediction(start), exact));
        let (up, cur) = (&codes[start - cols..end - cols], &codes[start..end]);
        let img = &image[start + 1..end - 1];
        let last = match prev {
            Some(p) => &p[start + 1..end - 1],
            None => &zeros[1..end - start - 1],
        };
        let inner = cur[1..].iter().zip(&cur[..cur.len() - 2]).zip(up.windows(3)).zip(img).zip(last);
        for ((((&c, &w), nb), &v), &t) in inner {
            let p = v.wrapping_sub(unzigzag_native(c)) & mask;
            let (w, no, nw, ne) = (w as u64, nb[1] as u64, nb[0] as u64, nb[2] as u64);
            one(px, c, [level_a(w + no) as u8, level_p(p, exact) as u8, level_a(nw + ne + t as u64) as u8]);
        }
        one(px, codes[end - 1], levels(codes, prev, end - 1, end - 1 - start, cols, prediction(end - 1), exact));
    }
    raw << 16
}

/// How much more a pixel the carried tables may code a frame than the frame they were learned on
/// before new ones are tried (see [`choose`]).
const RELEARN: f64 = 0.01;

/// A tree grown on a sample of the frame's pixels (levels and tokens `px`) and each leaf's token
/// counts over all of them.
fn learn(px: &[[u8; 4]], lv: Levels) -> (Vec<Node>, Compiled, Vec<[u64; SYMBOLS]>) {
    let n = px.len();
    let step = n.div_ceil(SAMPLES).max(1);
    let samples: Vec<([u8; 3], u8)> = px.iter().step_by(step).map(|p| ([p[0], p[1], p[2]], p[3])).collect();
    // (Symbols past the type's largest token never occur.)
    let nodes = grow(samples, token_of(lv.mask).0 + 1, step as f64);
    // (The table compiled once: for these lookups and the tables.)
    let compiled = Compiled::new(&nodes, lv);
    let mut counts = vec![[0u64; SYMBOLS]; count_leaves(&nodes)];
    for p in px {
        counts[compiled.leaf([p[0], p[1], p[2]])][p[3] as usize] += 1;
    }
    (nodes, compiled, counts)
}

/// The codes of pixels `px` (levels and token) under `t`, appended to `out`: the word count, the
/// rANS words, the raw bits. (`sym`, `words`: buffers.)
fn code_with(t: &Tables, px: &[[u8; 4]], codes: &[u32], sym: &mut Vec<u32>, words: &mut Vec<u16>, out: &mut Vec<u8>) {
    // Raw bits in pixel order; rANS backwards.
    let mut bits = BitWriter { out: Vec::with_capacity(codes.len() / 4), acc: 0, n: 0 };
    sym.clear();
    sym.reserve(codes.len());
    for (p, &c) in px.iter().zip(codes) {
        let f = &t.freqs[t.leaf([p[0], p[1], p[2]])];
        let tok = p[3] as usize;
        let mut e = f[tok];
        if e & 0xffff == 0 {
            e = f[ESCAPE];
            bits.put(tok as u32, TOKEN_BITS);
        }
        let (_, nb, raw) = token_of(c);
        bits.put(raw, nb);
        sym.push(e);
    }
    words.clear();
    let mut st = RANS_L;
    for &e in sym.iter().rev() {
        let (f, start) = (e & 0xffff, e >> 16);
        // (In 64 bits: a symbol of frequency 4096, an escape-only leaf's, never renormalises.)
        let max = (((RANS_L >> PROB_BITS) as u64) << 16) * f as u64;
        if st as u64 >= max {
            words.push(st as u16);
            st >>= 16;
        }
        st = ((st / f) << PROB_BITS) + st % f + start;
    }
    words.push(st as u16);
    words.push((st >> 16) as u16);
    put_varint(out, words.len() as u64);
    out.reserve(2 * words.len());
    out.extend(words.iter().rev().flat_map(|w| w.to_le_bytes()));
    out.extend(bits.finish());
}

fn count_leaves(nodes: &[Node]) -> usize {
    nodes.iter().filter(|n| matches!(n, Node::Leaf(_))).count()
}

/// Whether a frame coded by this stage carries the tables of the frame before (its first byte).
pub fn carries(data: &[u8]) -> bool {
    data.first().is_some_and(|&f| f & 1 == 0)
}

/// The decoder of one frame: [`FrameDecoder::next`] for each pixel in order.
pub struct FrameDecoder<'a> {
    tables: &'a Tables,
    words: Vec<u16>,
    wp: usize,
    overrun: bool,
    x: u32,
    bits: BitReader<'a>,
    mask: u32,
    cols: usize,
    col: usize,
    prev: Option<&'a [u32]>,
}

/// Open a frame's stream `data` of codes of pixels `lv`, `cols` a row, `n` in all; `prev`: the
/// previous frame's codes, as the encoder had them. New tables are read into `scratch`; carried
/// ones (the caller checked that the frame before left them) are taken from it, and must have
/// been made for the same pixels and levels.
pub fn open<'a>(data: &'a [u8], lv: Levels, cols: usize, n: usize, prev: Option<&'a [u32]>, scratch: &'a mut Scratch) -> Result<FrameDecoder<'a>, RansError> {
    let mask = lv.mask;
    if lv.exact && !exact_levels(true, mask) {
        return Err(RansError("exact prediction levels on pixels wider than 8 bits"));
    }
    // (The levels index the compiled table: codes wider than the type, which another stage of a
    // damaged blob might leave, would fall outside it.)
    if prev.is_some_and(|p| p.iter().any(|&c| c > mask)) {
        return Err(RansError("previous codes wider than the pixel type"));
    }
    let mut inp = In { b: data, pos: 0 };
    let flags = inp.byte()?;
    if flags > 1 {
        return Err(RansError("unknown flags"));
    }
    if flags & 1 == 1 {
        scratch.tables = Some(get_tables(&mut inp, lv)?);
        scratch.levels = lv;
    } else if scratch.tables.as_ref().is_none_or(|t| t.slots.len() != t.freqs.len()) || scratch.levels != lv {
        // (Or an encoder's, which have no slots to decode with.)
        return Err(RansError("carried tables missing"));
    }
    let nw = inp.varint()?;
    if nw < 2 || nw > 2 * n as u64 + 2 {
        return Err(RansError("bad word count"));
    }
    let raw = inp.take(2 * nw as usize)?;
    let words: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    let x = (words[0] as u32) << 16 | words[1] as u32;
    if x < RANS_L {
        return Err(RansError("bad state"));
    }
    let tables = scratch.tables.as_ref().expect("read or checked above");
    Ok(FrameDecoder {
        tables,
        words,
        wp: 2,
        overrun: false,
        x,
        bits: BitReader { b: &data[inp.pos..], pos: 0, acc: 0, n: 0 },
        mask,
        cols: cols.max(1),
        col: 0,
        prev: prev.filter(|p| p.len() == n),
    })
}

impl FrameDecoder<'_> {
    /// The code of pixel `i` (the next one), whose prediction is `p`, after the codes of the
    /// pixels before it in `codes`.
    #[inline(always)]
    pub fn next(&mut self, codes: &[u32], i: usize, p: u32) -> Result<u32, RansError> {
        let l = levels(codes, self.prev, i, self.col, self.cols, p, self.tables.compiled.exact);
        self.col += 1;
        if self.col == self.cols {
            self.col = 0;
        }
        let leaf = self.tables.leaf(l);
        let slot = self.x & (PROB_SCALE - 1);
        let mut s = self.tables.slots[leaf][slot as usize] as usize;
        let e = self.tables.freqs[leaf][s];
        self.x = (e & 0xffff) * (self.x >> PROB_BITS) + slot - (e >> 16);
        if self.x < RANS_L {
            let w = self.words.get(self.wp).copied();
            self.overrun |= w.is_none();
            self.x = (self.x << 16) | w.unwrap_or(0) as u32;
            self.wp += 1;
        }
        if s == ESCAPE {
            s = self.bits.get(TOKEN_BITS)? as usize;
            if s >= TOKENS {
                return Err(RansError("bad escaped token"));
            }
        }
        let (base, nb) = token_base(s);
        let z = base | self.bits.get(nb)?;
        if z > self.mask {
            return Err(RansError("code wider than the pixel type"));
        }
        Ok(z)
    }

    /// After the last pixel: whether the stream ended where the encoder's did.
    pub fn finish(self) -> Result<(), RansError> {
        if self.overrun || self.x != RANS_L || self.wp != self.words.len() {
            return Err(RansError("stream does not end where it should"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::quantizer::zigzag_native;

    /// Pixels of `mask`, exact prediction levels where the type allows them.
    fn lv(mask: u32) -> Levels {
        Levels::new(mask, true)
    }

    /// A lossless frame decoded with the prediction fused: the codes of a frame whose residual
    /// spread grows with the prediction, with and without a previous frame, carried tables and
    /// an escaped token included; `exact`: exact prediction levels where the type allows them.
    fn round_trip(mask: u32, cols: usize, rows: usize, exact: bool) {
        let (n, levels) = (cols * rows, Levels::new(mask, exact));
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let mut enc = Scratch::default();
        let mut dec = Scratch::default();
        let mut prev_codes: Option<Vec<u32>> = None;
        for k in 0..3 {
            let pred: Vec<u32> = (0..n).map(|i| ((i * 7 + k) as u32 * 13) % (mask.min(4000) + 1)).collect();
            let image: Vec<u32> = pred
                .iter()
                .map(|&p| {
                    let spread = 1 + (p as f64).sqrt() as u32;
                    let r = (rnd() % (2 * spread + 1)) as i64 - spread as i64;
                    (p as i64 + r).rem_euclid(mask as i64 + 1) as u32
                })
                .collect();
            let mut image = image;
            if k == 2 {
                image[n / 2] = image[n / 2].wrapping_add(mask / 2) & mask; // a code no table has seen
            }
            let codes: Vec<u32> = image.iter().zip(&pred).map(|(&x, &p)| zigzag_native(x.wrapping_sub(p) & mask, mask)).collect();
            let data = encode(&codes, &image, levels, cols, prev_codes.as_deref(), k == 2, &mut enc);
            // (Frame 2 may carry the tables of frame 1, or learn its own where they code it smaller.)
            if k < 2 {
                assert!(!carries(&data));
            }
            let mut back = vec![0u32; n];
            let mut d = open(&data, levels, cols, n, prev_codes.as_deref(), &mut dec).unwrap();
            for i in 0..n {
                back[i] = d.next(&back, i, pred[i]).unwrap();
            }
            d.finish().unwrap();
            assert_eq!(back, codes, "frame {k} mask {mask:#x}");
            prev_codes = Some(codes);
        }
    }

    #[test]
    fn frames_round_trip() {
        round_trip(0xff, 37, 23, true);
        round_trip(0xff, 37, 23, false);
        round_trip(0xffff, 64, 50, true);
        round_trip(u32::MAX, 16, 9, true);
        round_trip(0xffff, 1, 5, true);
    }

    /// A frame like the one before carries its tables (no tables in its stream); one unlike it
    /// learns its own.
    #[test]
    fn like_frames_carry_their_tables() {
        let (cols, n, mask) = (64usize, 64 * 48, 0xffffu32);
        let image: Vec<u32> = (0..n as u32).map(|i| 100 + (i.wrapping_mul(2654435761) >> 24) % 60).collect();
        let codes: Vec<u32> = image.iter().map(|&x| zigzag_native(x.wrapping_sub(120) & mask, mask)).collect();
        let mut s = Scratch::default();
        let first = encode(&codes, &image, lv(mask), cols, None, true, &mut s);
        let second = encode(&codes, &image, lv(mask), cols, None, true, &mut s);
        assert!(!carries(&first) && carries(&second) && second.len() < first.len());
        let other: Vec<u32> = (0..n as u32).map(|i| 30_000 + (i.wrapping_mul(2654435761) >> 16) % 9000).collect();
        let other_codes: Vec<u32> = other.iter().map(|&x| zigzag_native(x.wrapping_sub(34_000) & mask, mask)).collect();
        let third = encode(&other_codes, &other, lv(mask), cols, Some(&codes), true, &mut s);
        assert!(!carries(&third));
    }

    /// The encoder's estimate is within a few bytes of what it codes, picks the same tables (the
    /// carry flag), and leaves its state as coding does: over frames that carry, relearn, and
    /// move to another scene.
    #[test]
    fn the_estimate_matches_the_coding() {
        let (cols, rows, mask) = (97usize, 61usize, 0xffffu32);
        let n = cols * rows;
        let (mut coded, mut estimated) = (Scratch::default(), Scratch::default());
        let mut prev: Option<Vec<u32>> = None;
        for k in 0..8u32 {
            let base = if k < 5 { 300 + 40 * k } else { 20_000 };
            let image: Vec<u32> = (0..n as u32).map(|i| base + (i.wrapping_mul(2654435761).wrapping_add(k * 7919) >> 22) % (50 + 30 * k)).collect();
            let codes: Vec<u32> = image.iter().map(|&x| zigzag_native(x.wrapping_sub(base + 25) & mask, mask)).collect();
            let carry = k >= 2;
            let data = encode(&codes, &image, lv(mask), cols, prev.as_deref(), carry, &mut coded);
            let size = estimate(&codes, &image, lv(mask), cols, prev.as_deref(), carry, &mut estimated);
            assert!(data.len().abs_diff(size) <= 8, "frame {k}: coded {} bytes, estimated {size}", data.len());
            assert_eq!(coded.learned_bits, estimated.learned_bits, "frame {k}");
            prev = Some(codes);
        }
    }

    /// The levels pass computes each pixel's levels as the decoder does ([`levels`]), at every
    /// edge and on frames one, two and three pixels wide, with and without a previous frame,
    /// with exact prediction levels (8 bits) and without.
    #[test]
    fn the_levels_pass_agrees_with_the_decoders_levels() {
        for (mask, (cols, rows)) in [0xfffu32, 0xff].into_iter().flat_map(|m| [(1usize, 5usize), (2, 4), (3, 3), (17, 9), (5, 1)].map(|g| (m, g))) {
            let n = cols * rows;
            let image: Vec<u32> = (0..n as u32).map(|i| (i * 2654435761) >> 20).collect();
            let codes: Vec<u32> = (0..n as u32).map(|i| (i * 40503 + 17) % 3000).collect();
            let other: Vec<u32> = (0..n as u32).map(|i| (i * 977) % 2000).collect();
            for prev in [None, Some(&other[..])] {
                let mut px = Vec::new();
                let raw = pixels_of(&codes, &image, lv(mask), cols, prev, &mut px);
                let mut want_raw = 0u64;
                for i in 0..n {
                    let p = image[i].wrapping_sub(unzigzag_native(codes[i])) & mask;
                    let [a, q, b] = levels(&codes, prev, i, i % cols, cols, p, mask == 0xff);
                    let (t, nb, _) = token_of(codes[i]);
                    want_raw += nb as u64;
                    assert_eq!(px[i], [a, q, b, t as u8], "{cols}x{rows}, pixel {i}");
                }
                assert_eq!(raw, want_raw << 16);
            }
        }
    }

    /// An encoder's tables (no decoding slots) left in a scratch are not decoded with: a frame
    /// that carries them is refused, not a panic.
    #[test]
    fn an_encoders_tables_are_not_decoded_with() {
        let (cols, n, mask) = (32usize, 32 * 20, 0xffu32);
        let image: Vec<u32> = (0..n as u32).map(|i| 40 + (i.wrapping_mul(2654435761) >> 26)).collect();
        let codes: Vec<u32> = image.iter().map(|&x| zigzag_native(x.wrapping_sub(60) & mask, mask)).collect();
        let mut s = Scratch::default();
        encode(&codes, &image, lv(mask), cols, None, false, &mut s);
        let carried = encode(&codes, &image, lv(mask), cols, None, true, &mut s);
        assert!(carries(&carried));
        assert!(open(&carried, lv(mask), cols, n, None, &mut s).is_err());
    }

    /// A frame that carries tables decodes only with tables of its own levels: one whose tables
    /// were read with the other prediction levels (a damaged frame flag) is refused, as are exact
    /// levels on pixels wider than 8 bits.
    #[test]
    fn carried_tables_keep_their_levels() {
        let (cols, n, mask) = (32usize, 32 * 20, 0xffu32);
        let image: Vec<u32> = (0..n as u32).map(|i| 40 + (i.wrapping_mul(2654435761) >> 26)).collect();
        let codes: Vec<u32> = image.iter().map(|&x| zigzag_native(x.wrapping_sub(60) & mask, mask)).collect();
        let (exact, coarse) = (Levels::new(mask, true), Levels::new(mask, false));
        assert!(exact.exact && !coarse.exact && !Levels::new(0xffff, true).exact);
        let mut enc = Scratch::default();
        let first = encode(&codes, &image, exact, cols, None, false, &mut enc);
        let second = encode(&codes, &image, exact, cols, None, true, &mut enc);
        assert!(carries(&second));
        let decode = |lv: Levels, dec: &mut Scratch, data: &[u8]| -> Result<Vec<u32>, RansError> {
            let mut back = vec![0u32; n];
            let mut d = open(data, lv, cols, n, None, dec)?;
            for i in 0..n {
                back[i] = d.next(&back, i, 60)?;
            }
            d.finish().map(|_| back)
        };
        let mut dec = Scratch::default();
        assert_eq!(decode(exact, &mut dec, &first).unwrap(), codes);
        assert_eq!(decode(exact, &mut dec, &second).unwrap(), codes);
        let mut dec = Scratch::default();
        decode(coarse, &mut dec, &first).ok();
        assert!(decode(exact, &mut dec, &second).is_err(), "carried tables of the other levels");
        assert!(open(&first, Levels { mask: 0xffff, exact: true }, cols, n, None, &mut Scratch::default()).is_err());
    }

    /// A leaf that holds only the escape (frequency 4096) codes and decodes: every token escaped.
    #[test]
    fn an_escape_only_leaf_round_trips() {
        let (cols, n, mask) = (8usize, 40usize, 0xffffu32);
        let mut f = [0u32; SYMBOLS];
        f[ESCAPE] = PROB_SCALE;
        let nodes = vec![Node::Leaf(0)];
        let mut out = vec![1u8];
        put_tables(&nodes, &[f], &mut out);
        let codes: Vec<u32> = (0..n as u32).map(|i| i * 977 % 3000).collect();
        let px: Vec<[u8; 4]> = codes.iter().map(|&c| [0, 0, 0, token_of(c).0 as u8]).collect();
        code_with(&Tables::new(Compiled::new(&nodes, lv(mask)), vec![f], false), &px, &codes, &mut Vec::new(), &mut Vec::new(), &mut out);
        let mut s = Scratch::default();
        let mut d = open(&out, lv(mask), cols, n, None, &mut s).unwrap();
        let mut back = vec![0u32; n];
        for i in 0..n {
            back[i] = d.next(&back, i, 0).unwrap();
        }
        d.finish().unwrap();
        assert_eq!(back, codes);
    }

    #[test]
    fn tokens_split_and_join() {
        for z in (0..70000u32).chain([u32::MAX, u32::MAX - 1, 1 << 31]) {
            let (t, nb, raw) = token_of(z);
            assert!(t < TOKENS);
            let (base, b) = token_base(t);
            assert_eq!(b, nb);
            assert_eq!(base | raw, z);
        }
    }

    /// Damaged streams give an error or wrong codes, never a panic.
    #[test]
    fn damage_is_an_error_not_a_panic() {
        let (cols, n, mask) = (40usize, 1200usize, 0xffffu32);
        let image: Vec<u32> = (0..n as u32).map(|i| (i * 31) % 5000).collect();
        let pred: Vec<u32> = image.iter().map(|&x| x.saturating_sub(3)).collect();
        let codes: Vec<u32> = image.iter().zip(&pred).map(|(&x, &p)| zigzag_native(x.wrapping_sub(p) & mask, mask)).collect();
        let data = encode(&codes, &image, lv(mask), cols, None, false, &mut Scratch::default());
        let mut errors = 0;
        for cut in (0..data.len()).step_by(7) {
            for bad in [data[..cut].to_vec(), {
                let mut d = data.clone();
                d[cut] ^= 0x5a;
                d
            }] {
                let mut s = Scratch::default();
                let r = open(&bad, lv(mask), cols, n, None, &mut s).and_then(|mut d| {
                    let mut back = vec![0u32; n];
                    for i in 0..n {
                        back[i] = d.next(&back, i, pred[i])?;
                    }
                    d.finish()
                });
                errors += usize::from(r.is_err());
            }
        }
        assert!(errors > 0);
        // A carried frame without tables is refused.
        let carried = encode(&codes, &image, lv(mask), cols, None, true, &mut Scratch::default());
        assert!(!carries(&carried), "nothing to carry: new tables");
        let mut s = Scratch::default();
        assert!(open(&[0, 2, 0, 0, 0, 0], lv(mask), cols, n, None, &mut s).is_err());
        // Previous codes wider than the type (a damaged blob's other stage) are refused.
        let wide = vec![0x1_0000u32; n];
        assert!(open(&data, lv(mask), cols, n, Some(&wide), &mut Scratch::default()).is_err());
    }
}
