//! Context-modelled rANS: the residual coder that models each code in a context built from its
//! already coded neighbours (left, up, up-left, up-right), in the manner of JPEG-LS / FFV1
//! contexts and JPEG-XL's static ANS tables.
//!
//! Each code `v` is split into a *token* (the value itself below 16, else its bit length and the
//! bit below the top one, as JPEG-XL's hybrid integers) coded with rANS under the context's
//! probability table, and *extra bits* (the low bits of large values) written raw. Tables are
//! measured per frame (two passes), normalised to 2^12 and stored with the frame. Everything is
//! integer arithmetic, so every machine decodes the same codes; corrupt input gives an error,
//! never a panic or a hang.

use std::fmt;

const PROB_BITS: u32 = 12;
const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Lower bound of the rANS state; renormalisation moves 16-bit words, at most one per symbol.
const RANS_L: u32 = 1 << 16;
/// Tokens: 0..16 literal, then 2 per bit length up to 32 bits.
const TOKENS: usize = 16 + 2 * 28;
/// Contexts: zero neighbourhood, then two per octave of the neighbourhood activity.
pub const CONTEXTS: usize = 24;

#[derive(Debug, PartialEq, Eq)]
pub struct RansError(pub &'static str);

impl fmt::Display for RansError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "context coder: {}", self.0)
    }
}

impl std::error::Error for RansError {}

#[inline]
fn token_of(v: u32) -> (usize, u32, u32) {
    if v < 16 {
        return (v as usize, 0, 0);
    }
    let n = 31 - v.leading_zeros(); // index of the top bit, >= 4
    let m = (v >> (n - 1)) & 1;
    let token = 16 + (n as usize - 4) * 2 + m as usize;
    (token, n - 1, v & ((1 << (n - 1)) - 1))
}

/// (high part of the value, number of extra bits) of every token.
const TOKEN_BASE: [(u32, u32); TOKENS] = {
    let mut t = [(0u32, 0u32); TOKENS];
    let mut k = 0;
    while k < TOKENS {
        t[k] = token_base(k);
        k += 1;
    }
    t
};

/// (high part of the value, number of extra bits) of a token.
#[inline]
const fn token_base(token: usize) -> (u32, u32) {
    if token < 16 {
        return (token as u32, 0);
    }
    let t = token - 16;
    let n = (t / 2) as u32 + 4;
    let m = (t % 2) as u32;
    (((2 | m) << (n - 1)), n - 1)
}

/// The context of pixel `i` from the codes already known around it: left `a`, up `b`,
/// up-left `c`, up-right `d` (missing neighbours are replaced by present ones).
#[inline]
fn context(codes: &[u32], i: usize, x: usize, cols: usize) -> usize {
    let up = i >= cols;
    let a = if x > 0 {
        codes[i - 1] as u64
    } else if up {
        codes[i - cols] as u64
    } else {
        0
    };
    let b = if up { codes[i - cols] as u64 } else { a };
    let c = if up && x > 0 { codes[i - cols - 1] as u64 } else { b };
    let d = if up && x + 1 < cols { codes[i - cols + 1] as u64 } else { b };
    bucket(2 * a + 2 * b + c + d)
}

/// Calls `f(j, context(codes, j, ..))` for every code of a slice (`codes`, whole rows of `cols`
/// from its first) in order: the rows' inner pixels without [`context`]'s edge tests and its
/// division per pixel.
#[inline(always)]
fn each_context(codes: &[u32], cols: usize, mut f: impl FnMut(usize, usize)) {
    for (y, row) in codes.chunks(cols).enumerate() {
        let start = y * cols;
        if y == 0 || row.len() < 3 {
            (0..row.len()).for_each(|x| f(start + x, context(codes, start + x, x, cols)));
            continue;
        }
        f(start, context(codes, start, 0, cols));
        let up = &codes[start - cols..start - cols + row.len()];
        for (k, (w, u)) in row.windows(2).zip(up.windows(3)).take(row.len() - 2).enumerate() {
            let (a, b, c, d) = (w[0] as u64, u[1] as u64, u[0] as u64, u[2] as u64);
            f(start + k + 1, bucket(2 * a + 2 * b + c + d));
        }
        let last = row.len() - 1;
        f(start + last, context(codes, start + last, last, cols));
    }
}

/// Two contexts per octave of the neighbourhood activity `s`; 0 for a quiet neighbourhood.
/// Written without branches: `1 + 2t + h` for top bit index `t` and the bit `h` below it.
#[inline(always)]
fn bucket(s: u64) -> usize {
    let n = 64 - s.leading_zeros(); // bit length, 0 for s == 0
    let half = ((s << 1) >> n.saturating_sub(1)) & 1; // the bit below the top one (0 if none)
    ((2 * n as usize + half as usize).saturating_sub(1)).min(CONTEXTS - 1)
}

/// Normalise counts to frequencies summing to PROB_SCALE, every used token at least 1.
fn normalize(counts: &[u32; TOKENS]) -> [u32; TOKENS] {
    let total: u64 = counts.iter().map(|&c| c as u64).sum();
    let mut f = [0u32; TOKENS];
    if total == 0 {
        return f;
    }
    let mut sum = 0i64;
    for (fi, &c) in f.iter_mut().zip(counts) {
        if c > 0 {
            *fi = ((c as u64 * PROB_SCALE as u64 / total) as u32).max(1);
            sum += *fi as i64;
        }
    }
    // Give or take the difference from the largest entries (they lose the least by it).
    let mut diff = PROB_SCALE as i64 - sum;
    while diff != 0 {
        let (k, _) = f.iter().enumerate().filter(|(_, &v)| v > 1 || (diff > 0 && v > 0)).max_by_key(|(_, &v)| v).expect("a used token");
        if diff > 0 {
            f[k] += diff as u32;
            diff = 0;
        } else {
            let take = (-diff).min(f[k] as i64 - 1);
            f[k] -= take as u32;
            diff += take;
        }
    }
    f
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) struct In<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> In<'a> {
    pub(super) fn byte(&mut self) -> Result<u8, RansError> {
        let v = *self.b.get(self.pos).ok_or(RansError("stream ends early"))?;
        self.pos += 1;
        Ok(v)
    }
    pub(super) fn varint(&mut self) -> Result<u64, RansError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RansError("bad varint"))
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], RansError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(RansError("stream ends early"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

pub(super) struct BitWriter {
    pub(super) out: Vec<u8>,
    pub(super) acc: u64,
    pub(super) n: u32,
}

impl BitWriter {
    #[inline]
    pub(super) fn put(&mut self, bits: u32, n: u32) {
        if n == 0 {
            return;
        }
        self.acc |= (bits as u64) << self.n;
        self.n += n;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    pub(super) fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

pub(super) struct BitReader<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
    pub(super) acc: u64,
    pub(super) n: u32,
}

impl BitReader<'_> {
    #[inline]
    pub(super) fn get(&mut self, n: u32) -> Result<u32, RansError> {
        if self.n < n {
            if let Some(w) = self.b.get(self.pos..self.pos + 4) {
                self.acc |= (u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64) << self.n;
                self.pos += 4;
                self.n += 32;
            } else {
                while self.n < n {
                    let byte = *self.b.get(self.pos).ok_or(RansError("extra bits end early"))?;
                    self.acc |= (byte as u64) << self.n;
                    self.pos += 1;
                    self.n += 8;
                }
            }
        }
        let v = (self.acc & ((1u64 << n) - 1)) as u32;
        self.acc >>= n;
        self.n -= n;
        Ok(v)
    }
}

/// Rows are cut into this many horizontal slices at most; each slice is its own context chain
/// and rANS state, and the decoder interleaves them so their dependency chains overlap.
const MAX_SLICES: usize = 4;
/// A slice has at least this many rows.
const MIN_SLICE_ROWS: usize = 16;

/// Pixel index ranges of the slices of `n` codes with `cols` per row.
fn slices(n: usize, cols: usize, count: usize) -> Vec<std::ops::Range<usize>> {
    let rows = n.div_ceil(cols);
    let per = rows.div_ceil(count.max(1)).max(1) * cols;
    (0..count.max(1)).map(|s| (s * per).min(n)..((s + 1) * per).min(n)).collect()
}

/// The decode order: position `j` of every slice in turn, for `j` up to the longest slice.
fn for_each_in_order(ranges: &[std::ops::Range<usize>], mut f: impl FnMut(usize, usize)) {
    let longest = ranges.iter().map(|r| r.len()).max().unwrap_or(0);
    for j in 0..longest {
        for (s, r) in ranges.iter().enumerate() {
            if j < r.len() {
                f(s, j);
            }
        }
    }
}

struct SliceDecoder<'a> {
    lut: &'a [u8],
    /// Frequency | start << 16 of each (context, token).
    fs: &'a [[u32; TOKENS]; CONTEXTS],
    valid: [bool; CONTEXTS],
    words: &'a [u16],
    wp: usize,
    /// A renormalisation wanted a word past the end (corrupt input); reported at the end.
    overrun: bool,
    bits: BitReader<'a>,
    cols: usize,
}

impl SliceDecoder<'_> {
    /// Decode one symbol of context `c` with state `x`.
    #[inline(always)]
    fn symbol(&mut self, x: &mut u32, c: usize) -> Result<u32, RansError> {
        if !self.valid[c] {
            return Err(RansError("symbol in an empty context"));
        }
        let slot = *x & (PROB_SCALE - 1);
        let t = self.lut[(c << PROB_BITS) | slot as usize] as usize;
        let e = self.fs[c][t];
        *x = (e & 0xffff) * (*x >> PROB_BITS) + slot - (e >> 16);
        // Branch-free renormalisation: at most one word is needed.
        let need = *x < RANS_L;
        let w = self.words.get(self.wp).copied();
        self.overrun |= need & w.is_none();
        let w = w.unwrap_or(0) as u32;
        *x = if need { (*x << 16) | w } else { *x };
        self.wp += need as usize;
        let (base, nb) = TOKEN_BASE[t];
        Ok(base | self.bits.get(nb)?)
    }

    /// Decode `S` slices in the interleaved order of [`for_each_in_order`].
    fn run<const S: usize>(&mut self, out: &mut [u32], ranges: &[std::ops::Range<usize>], xs: &mut [u32; MAX_SLICES]) -> Result<(), RansError> {
        let cols = self.cols;
        let mut st = [0u32; S];
        st.copy_from_slice(&xs[..S]);
        let starts: [usize; S] = std::array::from_fn(|s| ranges[s].start);
        let lens: [usize; S] = std::array::from_fn(|s| ranges[s].len());
        let longest = lens.iter().copied().max().unwrap_or(0);
        let mut col = 0usize;
        for j in 0..longest {
            let inner = j >= cols && col > 0 && col + 1 < cols;
            for s in 0..S {
                if j >= lens[s] {
                    continue;
                }
                let i = starts[s] + j;
                let c = if inner {
                    bucket(2 * out[i - 1] as u64 + 2 * out[i - cols] as u64 + out[i - cols - 1] as u64 + out[i - cols + 1] as u64)
                } else {
                    context(&out[starts[s]..starts[s] + lens[s]], j, col, cols)
                };
                let v = self.symbol(&mut st[s], c)?;
                out[i] = v;
            }
            col += 1;
            if col == cols {
                col = 0;
            }
        }
        xs[..S].copy_from_slice(&st);
        Ok(())
    }
}

/// Code `codes` (one frame, `cols` pixels per row).
pub fn encode(codes: &[u32], cols: usize) -> Vec<u8> {
    let cols = cols.max(1);
    let n = codes.len();
    let count = (n.div_ceil(cols) / MIN_SLICE_ROWS).clamp(1, MAX_SLICES);
    let ranges = slices(n, cols, count);
    let mut ctx = vec![0u8; n];
    let mut tok = vec![0u8; n];
    let mut counts = vec![[0u32; TOKENS]; CONTEXTS];
    let mut bits = BitWriter { out: Vec::new(), acc: 0, n: 0 };
    // (The contexts first, slice by slice; the extra bits in the decoder's order.)
    for r in &ranges {
        each_context(&codes[r.clone()], cols, |j, c| ctx[r.start + j] = c as u8);
    }
    for_each_in_order(&ranges, |s, j| {
        let i = ranges[s].start + j;
        let (t, nb, extra) = token_of(codes[i]);
        tok[i] = t as u8;
        counts[ctx[i] as usize][t] += 1;
        bits.put(extra, nb);
    });
    let freqs: Vec<[u32; TOKENS]> = counts.iter().map(normalize).collect();
    let mut starts = vec![[0u32; TOKENS]; CONTEXTS];
    for (s, f) in starts.iter_mut().zip(&freqs) {
        let mut acc = 0;
        for t in 0..TOKENS {
            s[t] = acc;
            acc += f[t];
        }
    }

    // Tables: per context, the number of used tokens, then (token gap, frequency - 1) pairs.
    let mut out = Vec::new();
    let mut table = Vec::new();
    for f in &freqs {
        let used: Vec<usize> = (0..TOKENS).filter(|&t| f[t] > 0).collect();
        table.push(used.len() as u8);
        let mut prev = 0usize;
        for &t in &used {
            table.push((t - prev) as u8);
            put_varint(&mut table, (f[t] - 1) as u64);
            prev = t;
        }
    }
    put_varint(&mut out, table.len() as u64);
    out.extend_from_slice(&table);
    out.push(count as u8);

    // rANS, one state per slice, symbols in reverse decode order.
    let mut order = Vec::with_capacity(n);
    for_each_in_order(&ranges, |s, j| order.push((s as u8, (ranges[s].start + j) as u32)));
    let mut rev: Vec<u16> = Vec::with_capacity(n / 4 + 16);
    let mut xs = vec![RANS_L; count];
    for &(s, i) in order.iter().rev() {
        let (c, t) = (ctx[i as usize] as usize, tok[i as usize] as usize);
        let (freq, start) = (freqs[c][t], starts[c][t]);
        let x = &mut xs[s as usize];
        let x_max = (((RANS_L >> PROB_BITS) as u64) << 16) * freq as u64;
        if *x as u64 >= x_max {
            rev.push(*x as u16);
            *x >>= 16;
        }
        *x = ((*x / freq) << PROB_BITS) + (*x % freq) + start;
    }
    // The decoder reads the states first (state 0 first, low word first), then the words.
    for x in xs.iter().rev() {
        rev.push((*x >> 16) as u16);
        rev.push(*x as u16);
    }
    rev.reverse();
    put_varint(&mut out, 2 * rev.len() as u64);
    out.extend(rev.iter().flat_map(|w| w.to_le_bytes()));
    out.extend_from_slice(&bits.finish());
    out
}

/// Buffers the decoder reuses from frame to frame.
#[derive(Default)]
pub struct Scratch {
    /// Token of each slot, per context (96 KiB).
    lut: Vec<u8>,
    words: Vec<u16>,
}

/// Decode `n` codes of a frame with `cols` pixels per row.
/// The size [`encode`] would give these codes, estimated without coding them: the tables and the
/// extra bits exactly, the rANS words as the information content of the tokens under the
/// normalised frequencies (rANS codes within a few bytes of it). For ranking candidates: a
/// third of the work of `encode` (no second pass, no division per symbol).
pub fn estimate(codes: &[u32], cols: usize) -> usize {
    let cols = cols.max(1);
    let n = codes.len();
    let count = (n.div_ceil(cols) / MIN_SLICE_ROWS).clamp(1, MAX_SLICES);
    let ranges = slices(n, cols, count);
    let mut counts = vec![[0u32; TOKENS]; CONTEXTS];
    let mut extra_bits = 0u64;
    // (The contexts do not depend on the order the slices are interleaved in.)
    for r in &ranges {
        let slice = &codes[r.clone()];
        each_context(slice, cols, |j, c| {
            let (t, nb, _) = token_of(slice[j]);
            counts[c][t] += 1;
            extra_bits += nb as u64;
        });
    }
    let mut table = 0usize;
    let mut bits = 0f64;
    for cs in &counts {
        let f = normalize(cs);
        table += 1;
        for t in (0..TOKENS).filter(|&t| f[t] > 0) {
            table += 1 + varint_len((f[t] - 1) as u64);
            bits += cs[t] as f64 * (PROB_BITS as f64 - (f[t] as f64).log2());
        }
    }
    let words = (bits / 16.0).ceil() as usize + 2 * count;
    varint_len(table as u64) + table + 1 + varint_len(2 * words as u64) + 2 * words + extra_bits.div_ceil(8) as usize
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub fn decode(data: &[u8], n: usize, cols: usize, out: &mut Vec<u32>) -> Result<(), RansError> {
    decode_with(data, n, cols, out, &mut Scratch::default())
}

/// [`decode`] with reused buffers.
pub fn decode_with(data: &[u8], n: usize, cols: usize, out: &mut Vec<u32>, scratch: &mut Scratch) -> Result<(), RansError> {
    let cols = cols.max(1);
    let mut inp = In { b: data, pos: 0 };
    let tlen = inp.varint()? as usize;
    let table = inp.take(tlen)?;
    let mut t_in = In { b: table, pos: 0 };
    // Symbol lookup: entry (context << 12 | slot) holds the token; `fs` its frequency and start.
    let lut = &mut scratch.lut;
    lut.resize(CONTEXTS << PROB_BITS, 0);
    let mut fs = [[0u32; TOKENS]; CONTEXTS];
    let mut valid = [false; CONTEXTS];
    for c in 0..CONTEXTS {
        let used = t_in.byte()? as usize;
        let (mut t, mut acc) = (0usize, 0u32);
        for k in 0..used {
            let gap = t_in.byte()? as usize;
            if k > 0 && gap == 0 {
                return Err(RansError("bad table"));
            }
            t += gap;
            let f = t_in.varint()?.checked_add(1).filter(|&f| f <= PROB_SCALE as u64).ok_or(RansError("bad table"))? as u32;
            if t >= TOKENS || acc + f > PROB_SCALE {
                return Err(RansError("bad table"));
            }
            let base = (c << PROB_BITS) + acc as usize;
            lut[base..base + f as usize].fill(t as u8);
            fs[c][t] = f | acc << 16;
            acc += f;
        }
        if used > 0 && acc != PROB_SCALE {
            return Err(RansError("table does not sum to the scale"));
        }
        valid[c] = used > 0;
    }
    if t_in.pos != table.len() {
        return Err(RansError("bad table"));
    }
    let count = inp.byte()? as usize;
    if count == 0 || count > MAX_SLICES {
        return Err(RansError("bad slice count"));
    }
    let rlen = inp.varint()? as usize;
    let rans = inp.take(rlen)?;
    let bits = BitReader { b: &data[inp.pos..], pos: 0, acc: 0, n: 0 };
    if rans.len() < 4 * count || rans.len() % 2 != 0 {
        return Err(RansError("stream ends early"));
    }
    let words = &mut scratch.words;
    words.clear();
    words.extend(rans.chunks_exact(2).map(|w| u16::from_le_bytes([w[0], w[1]])));
    let mut xs = [0u32; MAX_SLICES];
    for (s, x) in xs.iter_mut().take(count).enumerate() {
        *x = words[2 * s] as u32 | (words[2 * s + 1] as u32) << 16;
    }
    out.clear();
    out.resize(n, 0);
    let ranges = slices(n, cols, count);
    let mut dec = SliceDecoder { lut, fs: &fs, valid, words, wp: 2 * count, overrun: false, bits, cols };
    match count {
        1 => dec.run::<1>(out, &ranges, &mut xs)?,
        2 => dec.run::<2>(out, &ranges, &mut xs)?,
        3 => dec.run::<3>(out, &ranges, &mut xs)?,
        _ => dec.run::<4>(out, &ranges, &mut xs)?,
    }
    if dec.overrun || xs[..count].iter().any(|&x| x != RANS_L) || dec.wp != words.len() {
        return Err(RansError("stream does not end where it should"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_is_close_to_the_coded_size() {
        let mut seed = 7u64;
        for &(n, cols, scale) in &[(64 * 64, 64usize, 3u64), (300 * 200, 300, 40), (1000, 1000, 1), (17 * 33, 17, 5000)] {
            let codes: Vec<u32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 33) % (scale + 1) * ((seed >> 20) & 3)) as u32
                })
                .collect();
            let (real, est) = (encode(&codes, cols).len() as f64, estimate(&codes, cols) as f64);
            assert!((real - est).abs() <= 8.0 + 0.002 * real, "n {n}: coded {real}, estimated {est}");
        }
    }

    /// The row walk gives every code the context the per-pixel function does: narrow and wide
    /// rows, a partial last row, one column, rows of one and two pixels.
    #[test]
    fn each_context_is_context() {
        let mut seed = 11u64;
        for &(n, cols) in &[(64 * 64, 64usize), (300 * 7 + 5, 300), (1000, 1000), (17 * 33 + 16, 17), (40, 1), (10, 2), (9, 3)] {
            let codes: Vec<u32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (((seed >> 33) % 5000) >> ((seed >> 20) & 15)) as u32
                })
                .collect();
            let mut seen = Vec::new();
            each_context(&codes, cols, |j, c| seen.push((j, c)));
            let want: Vec<(usize, usize)> = (0..n).map(|j| (j, context(&codes, j, j % cols, cols))).collect();
            assert_eq!(seen, want, "n {n}, cols {cols}");
        }
    }

    #[test]
    fn tokens_round_trip() {
        for v in [0u32, 1, 15, 16, 17, 31, 32, 47, 48, 1000, 65535, 1 << 31, u32::MAX] {
            let (t, nb, extra) = token_of(v);
            assert!(t < TOKENS);
            let (base, nb2) = token_base(t);
            assert_eq!(nb, nb2, "v {v}");
            assert_eq!(base | extra, v, "v {v}");
        }
    }

    #[test]
    fn round_trips_and_compresses() {
        let cols = 37;
        let mut codes: Vec<u32> = (0..cols * 23).map(|i| ((i * 7919) % 13) as u32).collect();
        codes[5] = u32::MAX;
        codes[100] = 1 << 20;
        let enc = encode(&codes, cols);
        let mut back = Vec::new();
        decode(&enc, codes.len(), cols, &mut back).unwrap();
        assert_eq!(back, codes);
        let zeros = vec![0u32; 10_000];
        let enc = encode(&zeros, 100);
        assert!(enc.len() < 64, "{}", enc.len());
        decode(&enc, zeros.len(), 100, &mut back).unwrap();
        assert_eq!(back, zeros);
        for n in [0usize, 1, 2] {
            let c: Vec<u32> = (0..n as u32).collect();
            decode(&encode(&c, 1), n, 1, &mut back).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codes: Vec<u32> = (0..500).map(|i| (i % 7) as u32).collect();
        let enc = encode(&codes, 25);
        let mut back = Vec::new();
        for cut in 0..enc.len() {
            let _ = decode(&enc[..cut], codes.len(), 25, &mut back);
        }
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x5a;
            let _ = decode(&bad, codes.len(), 25, &mut back);
        }
    }
}
