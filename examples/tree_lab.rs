//! Lab (issues 12 and 14): could a context tree learned per window, with static multi-symbol
//! tables (JPEG-XL's modular mode: an MA tree, hybrid-uint tokens, ANS), code a window's residuals
//! as small as the adaptive stage does? Static tables decode with one table lookup a symbol
//! instead of the adaptive stage's two to eight dependent binary decisions, so where the size
//! holds, that is the road to the 40 MB/s a core of issue 12; and the tree is issue 14's
//! "context choice, data-driven".
//!
//! For each frame: residuals of a simple predictor (`none`: the values; `prev`: the previous
//! frame; `med`: MED; `lsq`: a least-squares fit over the window of W, N, NW, NE, the previous
//! frame's pixel and its four neighbours and a constant, a stand-in for the codec's `linear`;
//! `ilsq`: the same weights in 12-bit fixed point, integer arithmetic),
//! hybrid-uint tokens (16 direct, then exponent + 2 mantissa bits, the rest raw), causal
//! properties of each pixel (neighbour residual magnitudes, the previous frame's residuals,
//! values, gradients, position, the prediction). A tree is grown best first on every STRIDE-th
//! pixel of the window (the leaf whose split saves most static bits, less a table's cost, goes
//! next), then every pixel is costed: static (each leaf's histogram over the whole window, plus
//! its table at 16 + 6 bits a used token) and adaptive (the same leaves, counts learned as the
//! pixels come: a code an adaptive multi-symbol arithmetic coder reaches, no tables), each with
//! the tree's own bits (26 a split) and the raw bits. Beside them, the adaptive stage's real bytes
//! for the same residuals (`Coder::encode(Stage::Adaptive)`, with the temporal context and
//! carried models, as the codec codes a chain; and with the intensity context taken from the
//! prediction).
//! `cargo run --release --example tree_lab DIR PREDICTOR [LEAVES]` (raw frames + meta.json;
//! env: STRIDE=N learning sample, default 7; LIMIT=N halve a leaf's adaptive counts past N;
//! DIAG=1 the costliest leaves; KEEP=a,b the properties the tree may use; CODE=1 code the
//! window for real and decode it, bit-exact and timed, and with KEEP=qa,qp and `ilsq` also with
//! the tree compiled into a table; QSTEP=N quantise the residuals to steps of N, `floor((r + N/2)
//! / N)` open loop, as an error bound `abs:(N-1)/2` would). Results: `docs/results/issue14-tree-lab.txt`,
//! `docs/results/tree-v13.txt`.
use tezipfs::codec::entropy::{Coder, Side, Stage};
use tezipfs::fixtures::read_raw_dir;

const PROPS: usize = 20;
const NAMES: [&str; PROPS] = [
    "|rW|",
    "|rN|",
    "|rNW|",
    "|rNE|",
    "|rN|+|rW|",
    "|rWW|",
    "|rP|",
    "sum|rP3x3|",
    "vW",
    "vN",
    "vP",
    "vW-vNW",
    "vN-vNW",
    "vN-vNE",
    "y",
    "max|r|nb",
    "x",
    "pred",
    "qa",
    "qp",
];

fn zz(r: i64) -> u32 {
    if r >= 0 {
        (2 * r) as u32
    } else {
        (-2 * r - 1) as u32
    }
}

/// Hybrid uint (JPEG-XL's 4/2/0): a token and its count of raw bits.
fn token(z: u32) -> (u16, u32) {
    if z < 16 {
        return (z as u16, 0);
    }
    let n = 31 - z.leading_zeros(); // >= 4
    let m = (z >> (n - 2)) & 3;
    ((16 + (n - 4) * 4 + m) as u16, n - 2)
}

const TOKENS: usize = 16 + 30 * 4;

struct Sample {
    props: [i32; PROPS],
    tok: u16,
}

/// The properties the tree may split on (env KEEP: their names, comma-separated; all by default).
fn kept() -> &'static [bool; PROPS] {
    static KEPT: std::sync::OnceLock<[bool; PROPS]> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| match std::env::var("KEEP") {
        Ok(list) => {
            let names: Vec<&str> = list.split(',').collect();
            for n in &names {
                assert!(NAMES.contains(n), "KEEP: no property {n}; they are {NAMES:?}");
            }
            std::array::from_fn(|p| names.contains(&NAMES[p]))
        }
        Err(_) => [true; PROPS],
    })
}

/// The adaptive stage's bit model: two estimates of P(0) in 16 bits, adapting at 1/16 and 1/128.
#[derive(Clone, Copy)]
struct Bit {
    fast: u16,
    slow: u16,
}

impl Bit {
    const NEW: Bit = Bit { fast: 1 << 15, slow: 1 << 15 };

    /// The bits of coding `bit`, then the update.
    fn code(&mut self, bit: bool) -> f64 {
        let p0 = ((self.fast as u32 + self.slow as u32) >> 2).clamp(1, 32767) as f64 / 32768.0;
        let (f, s) = (self.fast, self.slow);
        if bit {
            self.fast = f - (f >> 4);
            self.slow = s - (s >> 7);
        } else {
            self.fast = f + ((65535 - f) >> 4);
            self.slow = s + ((65535 - s) >> 7);
        }
        -(if bit { 1.0 - p0 } else { p0 }).log2()
    }
}

fn entropy(h: &[u32]) -> f64 {
    let n: u32 = h.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let nf = n as f64;
    h.iter().filter(|&&c| c > 0).map(|&c| c as f64 * (nf / c as f64).log2()).sum()
}

/// Bits to send a leaf's table (a rough JPEG-XL-like figure: 6 bits a used token, 16 more).
fn table_bits(h: &[u32]) -> f64 {
    16.0 + 6.0 * h.iter().filter(|&&c| c > 0).count() as f64
}

enum Node {
    Leaf(usize),
    Split { prop: usize, thr: i32, lo: Box<Node>, hi: Box<Node> },
}

fn hist(samples: &[&Sample]) -> Vec<u32> {
    let mut h = vec![0u32; TOKENS];
    for s in samples {
        h[s.tok as usize] += 1;
    }
    h
}

/// The best split of `samples` (scaled by `scale` to the whole window's counts): (bits saved,
/// property, threshold).
fn best_split(samples: &[&Sample], scale: f64) -> Option<(f64, usize, i32)> {
    let h = hist(samples);
    let base = entropy(&h) * scale + table_bits(&h);
    let mut best: Option<(f64, usize, i32)> = None;
    if samples.len() <= 256 {
        return None;
    }
    for p in (0..PROPS).filter(|&p| kept()[p]) {
        let mut vals: Vec<i32> = samples.iter().map(|s| s.props[p]).collect();
        vals.sort_unstable();
        vals.dedup();
        if vals.len() < 2 {
            continue;
        }
        // Up to 32 candidate thresholds: quantiles of the distinct values.
        let mut cands: Vec<i32> = (1..=32).map(|i| vals[(i * (vals.len() - 1)) / 33]).collect();
        cands.dedup();
        let nb = cands.len() + 1;
        let mut bh = vec![vec![0u32; TOKENS]; nb];
        for s in samples.iter() {
            let b = cands.partition_point(|&t| t < s.props[p]);
            bh[b][s.tok as usize] += 1;
        }
        let mut lo = vec![0u32; TOKENS];
        for (b, &t) in cands.iter().enumerate() {
            for (l, v) in lo.iter_mut().zip(bh[b].iter()) {
                *l += v;
            }
            let hi: Vec<u32> = h.iter().zip(lo.iter()).map(|(a, b)| a - b).collect();
            let nlo: u32 = lo.iter().sum();
            let nhi: u32 = hi.iter().sum();
            if nlo < 64 || nhi < 64 {
                continue;
            }
            let cost = (entropy(&lo) + entropy(&hi)) * scale + table_bits(&lo) + table_bits(&hi) + 16.0;
            if cost < base && best.is_none_or(|(g, _, _)| base - cost > g) {
                best = Some((base - cost, p, t));
            }
        }
    }
    best
}

/// Grow a tree best first (the leaf whose split saves most goes next), at most `max_leaves`.
fn grow(samples: Vec<&Sample>, scale: f64, max_leaves: usize) -> Node {
    enum Slot<'a> {
        Open(Vec<&'a Sample>, Option<(f64, usize, i32)>),
        Split(usize, i32, usize, usize),
    }
    let first = best_split(&samples, scale);
    let mut slots = vec![Slot::Open(samples, first)];
    let mut leaves = 1;
    while leaves < max_leaves {
        let pick = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Open(_, Some((g, _, _))) => Some((*g, i)),
                _ => None,
            })
            .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let Some((_, i)) = pick else { break };
        let Slot::Open(samples, Some((_, prop, thr))) = std::mem::replace(&mut slots[i], Slot::Split(0, 0, 0, 0)) else { unreachable!() };
        let (lo, hi): (Vec<&Sample>, Vec<&Sample>) = samples.into_iter().partition(|s| s.props[prop] <= thr);
        let (blo, bhi) = (best_split(&lo, scale), best_split(&hi, scale));
        let j = slots.len();
        slots.push(Slot::Open(lo, blo));
        slots.push(Slot::Open(hi, bhi));
        slots[i] = Slot::Split(prop, thr, j, j + 1);
        leaves += 1;
    }
    fn build(slots: &[Slot], i: usize) -> Node {
        match &slots[i] {
            Slot::Open(..) => Node::Leaf(usize::MAX),
            Slot::Split(prop, thr, lo, hi) => Node::Split { prop: *prop, thr: *thr, lo: Box::new(build(slots, *lo)), hi: Box::new(build(slots, *hi)) },
        }
    }
    build(&slots, 0)
}

/// Number the leaves; count how often each property splits.
fn number(n: &mut Node, next: &mut usize, uses: &mut [usize; PROPS]) {
    match n {
        Node::Leaf(i) => {
            *i = *next;
            *next += 1;
        }
        Node::Split { prop, lo, hi, .. } => {
            uses[*prop] += 1;
            number(lo, next, uses);
            number(hi, next, uses);
        }
    }
}

fn leaf(n: &Node, p: &[i32; PROPS]) -> usize {
    match n {
        Node::Leaf(i) => *i,
        Node::Split { prop, thr, lo, hi } => {
            if p[*prop] <= *thr {
                leaf(lo, p)
            } else {
                leaf(hi, p)
            }
        }
    }
}

/// The codec's MED (JPEG-LS), as the intra predictor.
fn med(f: &[u32], w: usize, i: usize) -> i64 {
    tezipfs::codec::predict::pixel::med(f, i, w) as i64
}

const NT: usize = 10;

/// The weights in 12-bit fixed point (the `ilsq` predictor: integer arithmetic, as a codec's).
fn fixed(lsq: &[f64; NT]) -> [i64; NT] {
    std::array::from_fn(|j| (lsq[j] * 4096.0).round() as i64)
}

/// A `linear`-like tap set: W, N, NW, NE of the frame; the previous frame at the pixel and its
/// four neighbours; a constant.
fn taps(f: &[u32], p: &[u32], w: usize, h: usize, i: usize) -> [f64; NT] {
    let (x, y) = ((i % w) as isize, (i / w) as isize);
    let at = |img: &[u32], dx: isize, dy: isize| -> f64 {
        let (xx, yy) = ((x + dx).clamp(0, w as isize - 1) as usize, (y + dy).clamp(0, h as isize - 1) as usize);
        img[yy * w + xx] as f64
    };
    let cur = |dx: isize, dy: isize| -> f64 {
        // Causal only: outside the frame or below, the previous frame stands in.
        if y + dy < 0 || x + dx < 0 || x + dx >= w as isize {
            at(p, dx, dy)
        } else {
            at(f, dx, dy)
        }
    };
    [cur(-1, 0), cur(0, -1), cur(-1, -1), cur(1, -1), at(p, 0, 0), at(p, -1, 0), at(p, 1, 0), at(p, 0, -1), at(p, 0, 1), 1.0]
}

/// Least squares of the taps over the window (a lab's stand-in for the codec's fit).
// (Row and column indices read as the matrix algebra they are.)
#[allow(clippy::needless_range_loop)]
fn fit_lsq(frames: &[Vec<u32>], w: usize, h: usize) -> [f64; NT] {
    let mut a = [[0f64; NT]; NT];
    let mut b = [0f64; NT];
    for k in 1..frames.len() {
        for i in (0..w * h).step_by(3) {
            let t = taps(&frames[k], &frames[k - 1], w, h, i);
            let v = frames[k][i] as f64;
            for r in 0..NT {
                b[r] += t[r] * v;
                for c in 0..NT {
                    a[r][c] += t[r] * t[c];
                }
            }
        }
    }
    for r in 0..NT {
        a[r][r] += 1e-6 * a[r][r].max(1.0);
    }
    // Gaussian elimination with partial pivoting.
    for c in 0..NT {
        let piv = (c..NT).max_by(|&i, &j| a[i][c].abs().partial_cmp(&a[j][c].abs()).unwrap()).unwrap();
        a.swap(c, piv);
        b.swap(c, piv);
        for r in c + 1..NT {
            let f = a[r][c] / a[c][c];
            for cc in c..NT {
                a[r][cc] -= f * a[c][cc];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = [0f64; NT];
    for r in (0..NT).rev() {
        x[r] = (b[r] - (r + 1..NT).map(|c| a[r][c] * x[c]).sum::<f64>()) / a[r][r];
    }
    x
}

/// The prediction of pixel `i` of frame `f` (only its causal pixels are read) from `prev`.
#[allow(clippy::too_many_arguments)]
fn predict(kind: &str, f: &[u32], prev: Option<&[u32]>, w: usize, h: usize, i: usize, lsq: &[f64; NT], mask: u32) -> i64 {
    match (kind, prev) {
        ("none", _) => 0,
        ("prev", Some(p)) => p[i] as i64,
        ("prev", None) => 0,
        ("lsq", Some(p)) => {
            let t = taps(f, p, w, h, i);
            let v: f64 = t.iter().zip(lsq.iter()).map(|(a, b)| a * b).sum();
            (v.round() as i64).clamp(0, mask as i64)
        }
        ("ilsq", Some(p)) => {
            let t = taps(f, p, w, h, i);
            let q = fixed(lsq);
            let v: i64 = t.iter().zip(q.iter()).map(|(a, b)| *a as i64 * b).sum();
            ((v + (1 << 11)) >> 12).clamp(0, mask as i64)
        }
        ("med", _) | ("lsq" | "ilsq", None) => med(f, w, i),
        (other, _) => panic!("predictor {other}: none, prev, med or lsq"),
    }
}

/// The properties of pixel `i` (only causal pixels of `r` and `f` are read; `pr`/`pf`: the
/// previous frame's residuals and values).
#[allow(clippy::too_many_arguments)]
#[inline]
fn props_at(i: usize, w: usize, h: usize, r: &[i64], f: &[u32], pr: Option<&[i64]>, pf: Option<&[u32]>, pred: i64) -> [i32; PROPS] {
    let (x, y) = ((i % w) as isize, (i / w) as isize);
    let a = |x: isize, y: isize| -> i32 {
        if x < 0 || y < 0 || x >= w as isize {
            0
        } else {
            (r[y as usize * w + x as usize].unsigned_abs().min(1 << 20)) as i32
        }
    };
    let val = |x: isize, y: isize| -> i32 {
        if x < 0 || y < 0 || x >= w as isize {
            0
        } else {
            f[y as usize * w + x as usize] as i32
        }
    };
    let (prev, pv) = match (pr, pf) {
        (Some(pr), Some(pf)) => {
            let pa = |dx: isize, dy: isize| -> i32 {
                let (xx, yy) = ((x + dx).clamp(0, w as isize - 1) as usize, (y + dy).clamp(0, h as isize - 1) as usize);
                pr[yy * w + xx].unsigned_abs().min(1 << 20) as i32
            };
            let s3: i32 = (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dx, dy))).map(|(dx, dy)| pa(dx, dy)).sum();
            ((pa(0, 0), s3), pf[i] as i32)
        }
        _ => ((-1, -1), -1),
    };
    let (rw, rn, rnw, rne) = (a(x - 1, y), a(x, y - 1), a(x - 1, y - 1), a(x + 1, y - 1));
    [
        rw,
        rn,
        rnw,
        rne,
        rn + rw,
        a(x - 2, y),
        prev.0,
        prev.1,
        val(x - 1, y),
        val(x, y - 1),
        pv,
        val(x - 1, y) - val(x - 1, y - 1),
        val(x, y - 1) - val(x - 1, y - 1),
        val(x, y - 1) - val(x + 1, y - 1),
        y as i32,
        rw.max(rn).max(rnw).max(rne),
        x as i32,
        pred as i32,
        lvl((rn + rw) as u32) as i32,
        lvl8(pred.max(0) as u32) as i32,
    ]
}

/// Four levels an octave (0..8 their own): the quantised activity `qa`.
#[inline]
fn lvl(v: u32) -> usize {
    if v < 8 {
        v as usize
    } else {
        let b = 31 - v.leading_zeros() as usize;
        8 + 4 * (b - 3) + ((v >> (b - 2)) & 3) as usize
    }
}

const LEVELS: usize = 8 + 4 * 29;

/// Eight levels an octave (0..16 their own): the quantised prediction `qp`.
#[inline]
fn lvl8(v: u32) -> usize {
    if v < 16 {
        v as usize
    } else {
        let b = 31 - v.leading_zeros() as usize;
        16 + 8 * (b - 4) + ((v >> (b - 3)) & 7) as usize
    }
}

const LEVELS8: usize = 16 + 8 * 28;

/// The stream of [`real_encode`], opened: the tree, each leaf's slots (freq, cum, token: one
/// load a symbol) and the rANS and raw-bit readers.
struct Reader<'a> {
    tree: Node,
    slots: Vec<[(u32, u32, u8); SCALE as usize]>,
    words: Vec<u16>,
    wpos: usize,
    x: u32,
    rawb: &'a [u8],
    rpos: usize,
    acc: u64,
    nacc: u32,
}

impl<'a> Reader<'a> {
    fn open(b: &'a [u8]) -> Reader<'a> {
        let mut pos = 0;
        let head_len = read_varint(b, &mut pos) as usize;
        let head_end = pos + head_len;
        let mut count = 0;
        let tree = get_tree(b, &mut pos, &mut count);
        let mut slots = vec![[(0u32, 0u32, 0u8); SCALE as usize]; count];
        for sl in slots.iter_mut() {
            let used = read_varint(b, &mut pos) as usize;
            let (mut t, mut c) = (0usize, 0u32);
            for _ in 0..used {
                t += read_varint(b, &mut pos) as usize;
                let f = read_varint(b, &mut pos) as u32 + 1;
                sl[c as usize..(c + f) as usize].fill((f, c, t as u8));
                c += f;
            }
        }
        assert_eq!(pos, head_end);
        let nwords = read_varint(b, &mut pos) as usize;
        let words: Vec<u16> = b[pos..pos + 2 * nwords].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let x = ((words[0] as u32) << 16) | words[1] as u32;
        Reader { tree, slots, words, wpos: 2, x, rawb: &b[pos + 2 * nwords..], rpos: 0, acc: 0, nacc: 0 }
    }

    /// The next residual, coded in leaf `l`: its token (rANS), then its raw bits.
    #[inline]
    fn residual(&mut self, l: usize) -> i64 {
        let (fq, cum, t) = self.slots[l][(self.x & (SCALE - 1)) as usize];
        self.x = fq * (self.x >> SCALE_BITS) + (self.x & (SCALE - 1)) - cum;
        if self.x < RANS_L {
            self.x = (self.x << 16) | self.words[self.wpos] as u32;
            self.wpos += 1;
        }
        let t = t as usize;
        let z = if t < 16 {
            t as u32
        } else {
            let (e, m) = ((t - 16) / 4 + 4, (t - 16) % 4);
            let extra = e as u32 - 2;
            while self.nacc < extra {
                self.acc |= (self.rawb.get(self.rpos).copied().unwrap_or(0) as u64) << self.nacc;
                self.rpos += 1;
                self.nacc += 8;
            }
            let low = (self.acc & ((1 << extra) - 1)) as u32;
            self.acc >>= extra;
            self.nacc -= extra;
            ((4 | m as u32) << extra) | low
        };
        if z & 1 == 0 {
            (z / 2) as i64
        } else {
            -((z as i64 + 1) / 2)
        }
    }
}

/// The decoder of [`real_encode`] for a tree on `qa` and `qp` alone (KEEP=qa,qp), `ilsq`
/// predictor: the tree compiled into a table of (qa, qp) -> leaf, the interior pixels' prediction
/// without edge tests: how fast a context tree can decode when its properties are few.
fn fast_decode(b: &[u8], w: usize, h: usize, frames: usize, lsq: &[f64; NT], mask: u32) -> Vec<Vec<u32>> {
    let n = w * h;
    let mut rd = Reader::open(b);
    let tree = &rd.tree;
    let mut table = vec![0u8; LEVELS * LEVELS8];
    for qa in 0..LEVELS {
        for qp in 0..LEVELS8 {
            let mut props = [0i32; PROPS];
            props[18] = qa as i32;
            props[19] = qp as i32;
            table[qa * LEVELS8 + qp] = leaf(tree, &props) as u8;
        }
    }
    let mut out: Vec<Vec<u32>> = Vec::with_capacity(frames);
    let mut r = vec![0i64; n];
    for k in 0..frames {
        let mut f = vec![0u32; n];
        let pf = out.last().map(|v: &Vec<u32>| &v[..]);
        let q = fixed(lsq);
        for (i, (xx, yy)) in (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).enumerate() {
            let interior = xx > 0 && xx + 1 < w && yy > 0 && yy + 1 < h;
            let p = match pf {
                Some(pf) if interior => {
                    let v = f[i - 1] as i64 * q[0]
                        + f[i - w] as i64 * q[1]
                        + f[i - w - 1] as i64 * q[2]
                        + f[i - w + 1] as i64 * q[3]
                        + pf[i] as i64 * q[4]
                        + pf[i - 1] as i64 * q[5]
                        + pf[i + 1] as i64 * q[6]
                        + pf[i - w] as i64 * q[7]
                        + pf[i + w] as i64 * q[8]
                        + q[9];
                    ((v + (1 << 11)) >> 12).clamp(0, mask as i64)
                }
                prev => predict(if k == 0 { "med" } else { "ilsq" }, &f, prev, w, h, i, lsq, mask),
            };
            let act = if xx > 0 { r[i - 1].unsigned_abs() } else { 0 } + if yy > 0 { r[i - w].unsigned_abs() } else { 0 };
            let l = table[lvl(act.min(1 << 20) as u32) * LEVELS8 + lvl8(p.max(0) as u32)] as usize;
            let rr = rd.residual(l);
            r[i] = rr;
            f[i] = (p + rr) as u32;
        }
        out.push(f);
    }
    out
}

const SCALE_BITS: u32 = 12;
const SCALE: u32 = 1 << SCALE_BITS;
const RANS_L: u32 = 1 << 16;

/// A histogram normalised to [`SCALE`], every used token at least 1.
fn normalise(h: &[u32]) -> Vec<u32> {
    let total: u64 = h.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return vec![0; h.len()];
    }
    let mut f: Vec<u32> = h.iter().map(|&c| if c == 0 { 0 } else { ((c as u64 * SCALE as u64) / total).max(1) as u32 }).collect();
    loop {
        let sum: u32 = f.iter().sum();
        let imax = (0..f.len()).max_by_key(|&i| f[i]).expect("tokens");
        match sum.cmp(&SCALE) {
            std::cmp::Ordering::Equal => return f,
            std::cmp::Ordering::Less => f[imax] += SCALE - sum,
            std::cmp::Ordering::Greater => f[imax] -= (sum - SCALE).min(f[imax] - 1),
        }
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(b: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut sh) = (0u64, 0);
    loop {
        let c = b[*pos];
        *pos += 1;
        v |= ((c & 0x7f) as u64) << sh;
        if c < 0x80 {
            return v;
        }
        sh += 7;
    }
}

fn put_tree(n: &Node, out: &mut Vec<u8>) {
    match n {
        Node::Leaf(_) => out.push(0),
        Node::Split { prop, thr, lo, hi } => {
            out.push(1 + *prop as u8);
            varint(out, zz(*thr as i64) as u64);
            put_tree(lo, out);
            put_tree(hi, out);
        }
    }
}

fn get_tree(b: &[u8], pos: &mut usize, next: &mut usize) -> Node {
    let tag = b[*pos];
    *pos += 1;
    if tag == 0 {
        *next += 1;
        return Node::Leaf(*next - 1);
    }
    let z = read_varint(b, pos) as i64;
    let thr = if z & 1 == 0 { z / 2 } else { -(z + 1) / 2 } as i32;
    let lo = get_tree(b, pos, next);
    let hi = get_tree(b, pos, next);
    Node::Split { prop: tag as usize - 1, thr, lo: Box::new(lo), hi: Box::new(hi) }
}

/// The window coded for real: [tree][tables][rANS words][raw bits], lengths as varints.
fn real_encode(tree: &Node, hs: &[Vec<u32>], leaves: &[usize], samples: &[Sample], res: &[Vec<i64>]) -> Vec<u8> {
    let freqs: Vec<Vec<u32>> = hs.iter().map(|h| normalise(h)).collect();
    let cums: Vec<Vec<u32>> = freqs.iter().map(|f| f.iter().scan(0, |c, &v| Some(std::mem::replace(c, *c + v))).collect()).collect();
    let mut head = Vec::new();
    put_tree(tree, &mut head);
    for f in &freqs {
        let used: Vec<usize> = (0..TOKENS).filter(|&t| f[t] > 0).collect();
        varint(&mut head, used.len() as u64);
        let mut last = 0;
        for t in used {
            varint(&mut head, (t - last) as u64);
            varint(&mut head, f[t] as u64 - 1);
            last = t;
        }
    }
    // Raw bits forward, rANS backward.
    let (mut acc, mut nacc, mut rawb) = (0u64, 0u32, Vec::new());
    for r in res.iter().flatten() {
        let z = zz(*r);
        let (_, extra) = token(z);
        if extra > 0 {
            acc |= ((z & ((1 << extra) - 1)) as u64) << nacc;
            nacc += extra;
            while nacc >= 8 {
                rawb.push(acc as u8);
                acc >>= 8;
                nacc -= 8;
            }
        }
    }
    rawb.push(acc as u8);
    let mut words: Vec<u16> = Vec::new();
    let mut x: u32 = RANS_L;
    for (s, &l) in samples.iter().zip(leaves).rev() {
        let (f, c) = (freqs[l][s.tok as usize], cums[l][s.tok as usize]);
        let x_max = ((RANS_L >> SCALE_BITS) << 16) * f;
        while x >= x_max {
            words.push(x as u16);
            x >>= 16;
        }
        x = ((x / f) << SCALE_BITS) + (x % f) + c;
    }
    words.push(x as u16);
    words.push((x >> 16) as u16);
    words.reverse();
    let mut out = Vec::new();
    varint(&mut out, head.len() as u64);
    out.extend_from_slice(&head);
    varint(&mut out, words.len() as u64);
    out.extend(words.iter().flat_map(|w| w.to_le_bytes()));
    out.extend_from_slice(&rawb);
    out
}

/// Decode [`real_encode`]'s window: prediction, properties, tree, rANS, raw bits, value.
fn real_decode(b: &[u8], kind: &str, w: usize, h: usize, frames: usize, lsq: &[f64; NT], mask: u32) -> Vec<Vec<u32>> {
    let n = w * h;
    let mut rd = Reader::open(b);
    let mut out: Vec<Vec<u32>> = Vec::with_capacity(frames);
    let mut res: Vec<Vec<i64>> = Vec::with_capacity(frames);
    for k in 0..frames {
        let mut f = vec![0u32; n];
        let mut r = vec![0i64; n];
        for i in 0..n {
            let prev = (k > 0).then(|| &out[k - 1][..]);
            let p = predict(kind, &f, prev, w, h, i, lsq, mask);
            let props = props_at(i, w, h, &r, &f, (k > 0).then(|| &res[k - 1][..]), prev, p);
            let l = leaf(&rd.tree, &props);
            let rr = rd.residual(l);
            r[i] = rr;
            f[i] = (p + rr) as u32;
        }
        out.push(f);
        res.push(r);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("DIR"));
    let pred = args.get(2).map_or("none", |s| s.as_str()).to_string();
    let max_leaves: usize = args.get(3).map_or(256, |s| s.parse().expect("LEAVES"));
    let raw = read_raw_dir(&dir, 32).expect("raw dir");
    let (w, h) = (raw.width, raw.height);
    let n = w * h;
    let bytes_px = raw.dtype.bytes();
    let frames = &raw.images;
    // Predictions of every frame, then residuals.
    let lsq_w = if pred == "lsq" || pred == "ilsq" { Some(fit_lsq(frames, w, h)) } else { None };
    let lsq = lsq_w.unwrap_or([0.0; NT]);
    let preds: Vec<Vec<i64>> = frames
        .iter()
        .enumerate()
        .map(|(k, f)| (0..n).map(|i| predict(&pred, f, (k > 0).then(|| &frames[k - 1][..]), w, h, i, &lsq, raw.dtype.mask())).collect())
        .collect();
    let qstep: i64 = std::env::var("QSTEP").ok().map_or(1, |v| v.parse().expect("QSTEP"));
    let res: Vec<Vec<i64>> =
        frames.iter().zip(preds.iter()).map(|(f, p)| f.iter().zip(p.iter()).map(|(&v, &p)| (v as i64 - p + qstep / 2).div_euclid(qstep)).collect()).collect();
    // The adaptive stage's bytes for the same residuals, as a chain.
    let mut coder = Coder::new(3).expect("coder");
    let mut adaptive = 0usize;
    let codes: Vec<Vec<u32>> = res.iter().map(|r| r.iter().map(|&v| zz(v)).collect()).collect();
    // (Residuals of a clamped prediction can need a bit more than the pixel type: then the
    // adaptive stage gets codes of the next width.)
    let acw = if codes.iter().flatten().any(|&c| c > raw.dtype.mask()) { 2 * bytes_px } else { bytes_px };
    let mut blobs = Vec::new();
    for k in 0..codes.len() {
        let side = Side { prev: (k > 0).then(|| &codes[k - 1][..]), carry: k > 0, ..Side::default() };
        blobs.push(coder.encode(Stage::Adaptive, &codes[k], acw, w, side).expect("adaptive"));
        adaptive += blobs[k].len();
    }
    // The adaptive stage's decoding of them, timed (entropy decoding only: no prediction).
    let t0 = std::time::Instant::now();
    let mut out = Vec::new();
    let mut last: Vec<u32> = Vec::new();
    for (k, blob) in blobs.iter().enumerate() {
        let side = Side { prev: (k > 0).then_some(&last[..]), carry: k > 0, ..Side::default() };
        coder.decode(Stage::Adaptive, blob, n, acw, w, side, &mut out).expect("adaptive decode");
        assert_eq!(out, codes[k]);
        std::mem::swap(&mut last, &mut out);
    }
    let adaptive_dec_s = t0.elapsed().as_secs_f64();
    // And with the intensity context taken from the prediction (the reference).
    let mut adaptive_i = 0usize;
    let refs: Vec<Vec<u32>> = preds.iter().map(|p| p.iter().map(|&v| v.max(0) as u32).collect()).collect();
    for k in 0..codes.len() {
        let side = Side { prev: (k > 0).then(|| &codes[k - 1][..]), carry: k > 0, intensity: (k > 0).then(|| &refs[k][..]), ..Side::default() };
        adaptive_i += coder.encode(Stage::Adaptive, &codes[k], acw, w, side).expect("adaptive").len();
    }
    // Samples: every pixel's properties and token; raw bits counted apart.
    let mut samples = Vec::with_capacity(n * frames.len());
    let mut raw_bits = 0u64;
    for (k, r) in res.iter().enumerate() {
        let (pr, pf) = if k > 0 { (Some(&res[k - 1][..]), Some(&frames[k - 1][..])) } else { (None, None) };
        for i in 0..n {
            let (t, extra) = token(zz(r[i]));
            raw_bits += extra as u64;
            let props = props_at(i, w, h, r, &frames[k], pr, pf, preds[k][i]);
            samples.push(Sample { props, tok: t });
        }
    }
    // Learn on every 7th pixel.
    let stride: usize = std::env::var("STRIDE").ok().map_or(7, |v| v.parse().expect("STRIDE"));
    let learn: Vec<&Sample> = samples.iter().step_by(stride).collect();
    let t0 = std::time::Instant::now();
    let mut tree = grow(learn, stride as f64, max_leaves);
    let mut count = 0;
    let mut uses = [0usize; PROPS];
    number(&mut tree, &mut count, &mut uses);
    let grow_s = t0.elapsed().as_secs_f64();
    // Cost every pixel: static (per-leaf histograms + tables) and adaptive counts per leaf.
    let mut hs = vec![vec![0u32; TOKENS]; count];
    let mut adaptive_bits = 0.0;
    let mut ac = vec![vec![0u32; TOKENS]; count];
    let mut at = vec![0u32; count];
    let limit: u32 = std::env::var("LIMIT").ok().map_or(u32::MAX, |v| v.parse().expect("LIMIT"));
    // And binary: a leaf's token as 8 bits, most significant first, each an adaptive bit of the
    // leaf and the bits above it (a binary tree of 255 models a leaf).
    let mut binary_bits = 0.0;
    let mut models = vec![[Bit::NEW; 256]; count];
    for s in samples.iter() {
        let l = leaf(&tree, &s.props);
        hs[l][s.tok as usize] += 1;
        let mut node = 1usize;
        for b in (0..8).rev() {
            let bit = (s.tok >> b) & 1 == 1;
            binary_bits += models[l][node].code(bit);
            node = 2 * node + bit as usize;
        }
        // KT-like adaptive estimate: counts of 1/2 each for the tokens seen in the window's range.
        let c = ac[l][s.tok as usize] as f64 + 1.0;
        let tot = at[l] as f64 + TOKENS as f64;
        adaptive_bits += (tot / c).log2();
        ac[l][s.tok as usize] += 32;
        at[l] += 32;
        if at[l] > limit {
            at[l] = 0;
            for c in ac[l].iter_mut() {
                *c -= *c / 2;
                at[l] += *c;
            }
        }
    }
    if std::env::var("DIAG").is_ok() {
        let mut v: Vec<(f64, usize)> = hs.iter().enumerate().map(|(i, h)| (entropy(h), i)).collect();
        v.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let tot_n: u32 = hs.iter().map(|h| h.iter().sum::<u32>()).sum();
        let z: u32 = hs.iter().map(|h| h[0]).sum();
        println!("  zeros {:.1}% of the pixels", 100.0 * z as f64 / tot_n as f64);
        for (e, i) in v.iter().take(8) {
            let nn: u32 = hs[*i].iter().sum();
            println!(
                "  leaf {i}: {nn} px, P(0) {:.3}, {:.3} b/px, {:.1}% of the bits",
                hs[*i][0] as f64 / nn as f64,
                e / nn as f64,
                100.0 * e / v.iter().map(|x| x.0).sum::<f64>()
            );
        }
    }
    let stat: f64 = hs.iter().map(|h| entropy(h) + table_bits(h)).sum();
    let one = {
        let mut h = vec![0u32; TOKENS];
        for s in samples.iter() {
            h[s.tok as usize] += 1;
        }
        entropy(&h) + table_bits(&h)
    };
    let orig = (n * frames.len() * bytes_px) as f64;
    // The tree itself: a property (5 bits) and a threshold (20 bits) a split, 1 bit a node.
    let tree_bits = (count.saturating_sub(1) * 26 + count) as f64;
    let kb = |bits: f64| (bits + raw_bits as f64 + tree_bits) / 8.0;
    let real = std::env::var("CODE").is_ok().then(|| {
        let leaves: Vec<usize> = samples.iter().map(|s| leaf(&tree, &s.props)).collect();
        let coded = real_encode(&tree, &hs, &leaves, &samples, &res);
        let t0 = std::time::Instant::now();
        let decoded = real_decode(&coded, &pred, w, h, frames.len(), &lsq, raw.dtype.mask());
        let secs = t0.elapsed().as_secs_f64();
        assert!(decoded == *frames, "the tree coder's frames differ from the originals");
        let fast = (std::env::var("KEEP").as_deref() == Ok("qa,qp") && pred == "ilsq").then(|| {
            let t0 = std::time::Instant::now();
            let decoded = fast_decode(&coded, w, h, frames.len(), &lsq, raw.dtype.mask());
            let secs = t0.elapsed().as_secs_f64();
            assert!(decoded == *frames, "the fast decoder's frames differ from the originals");
            secs
        });
        (coded.len(), secs, fast)
    });
    println!("{} {pred}: {} frames {w}x{h}, tree of {count} leaves grown in {grow_s:.1} s", dir.display(), frames.len());
    println!("  adaptive stage (real bytes)        ratio {:7.4}", orig / adaptive as f64);
    println!("  adaptive + intensity of the pred.  ratio {:7.4}", orig / adaptive_i as f64);
    println!("  one static table                   ratio {:7.4}", orig / kb(one));
    println!("  tree, static tables                ratio {:7.4}  ({:+.2}% against adaptive)", orig / kb(stat), 100.0 * (adaptive as f64 / kb(stat) - 1.0));
    println!("  tree, adaptive counts per leaf     ratio {:7.4}  ({:+.2}%)", orig / kb(adaptive_bits), 100.0 * (adaptive as f64 / kb(adaptive_bits) - 1.0));
    println!("  tree, adaptive bits per leaf       ratio {:7.4}  ({:+.2}%)", orig / kb(binary_bits), 100.0 * (adaptive as f64 / kb(binary_bits) - 1.0));
    println!("  adaptive stage decoding            {:7.1} MB/s (entropy decoding only)", orig / 1e6 / adaptive_dec_s);
    if let Some((bytes, secs, fast)) = real {
        println!(
            "  tree, static tables, REAL bytes    ratio {:7.4}  ({:+.2}%), decoded bit-exact at {:.1} MB/s (prediction included)",
            orig / bytes as f64,
            100.0 * (adaptive as f64 / bytes as f64 - 1.0),
            orig / 1e6 / secs
        );
        if let Some(s) = fast {
            println!("  the same, (qa, qp) table decoder   decoded bit-exact at {:.1} MB/s (prediction included)", orig / 1e6 / s);
        }
    }
    println!("  raw bits {:.1}% of the static size", 100.0 * raw_bits as f64 / 8.0 / kb(stat));
    let used: Vec<String> = NAMES.iter().zip(uses.iter()).filter(|(_, &u)| u > 0).map(|(n, u)| format!("{n}:{u}")).collect();
    println!("  splits: {}", used.join(" "));
}
