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
const RANS_L: u32 = 1 << 23;
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

/// (high part of the value, number of extra bits) of a token.
#[inline]
fn token_base(token: usize) -> (u32, u32) {
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
    let a = if x > 0 { codes[i - 1] as u64 } else if up { codes[i - cols] as u64 } else { 0 };
    let b = if up { codes[i - cols] as u64 } else { a };
    let c = if up && x > 0 { codes[i - cols - 1] as u64 } else { b };
    let d = if up && x + 1 < cols { codes[i - cols + 1] as u64 } else { b };
    bucket(2 * a + 2 * b + c + d)
}

/// The context of an interior pixel (not on the first row, first or last column).
#[inline(always)]
fn context_inner(cur: &[u32], up: &[u32], x: usize) -> usize {
    let s = 2 * cur[x - 1] as u64 + 2 * up[x] as u64 + up[x - 1] as u64 + up[x + 1] as u64;
    bucket(s)
}

/// Two contexts per octave of the neighbourhood activity `s`; 0 for a quiet neighbourhood.
#[inline(always)]
fn bucket(s: u64) -> usize {
    if s == 0 {
        return 0;
    }
    let n = 63 - s.leading_zeros() as usize; // top bit index
    let half = ((s << 1 >> n) & 1) as usize; // the bit below the top one (0 when n == 0)
    (1 + 2 * n + half).min(CONTEXTS - 1)
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

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct In<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> In<'a> {
    fn byte(&mut self) -> Result<u8, RansError> {
        let v = *self.b.get(self.pos).ok_or(RansError("stream ends early"))?;
        self.pos += 1;
        Ok(v)
    }
    fn varint(&mut self) -> Result<u64, RansError> {
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
    fn take(&mut self, n: usize) -> Result<&'a [u8], RansError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(RansError("stream ends early"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    #[inline]
    fn put(&mut self, bits: u32, n: u32) {
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
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl BitReader<'_> {
    #[inline]
    fn get(&mut self, n: u32) -> Result<u32, RansError> {
        if n == 0 {
            return Ok(0);
        }
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

/// Code `codes` (one frame, `cols` pixels per row).
pub fn encode(codes: &[u32], cols: usize) -> Vec<u8> {
    let cols = cols.max(1);
    let n = codes.len();
    let mut ctx = vec![0u8; n];
    let mut tok = vec![0u8; n];
    let mut counts = vec![[0u32; TOKENS]; CONTEXTS];
    let mut bits = BitWriter { out: Vec::new(), acc: 0, n: 0 };
    for i in 0..n {
        let c = context(codes, i, i % cols, cols);
        let (t, nb, extra) = token_of(codes[i]);
        ctx[i] = c as u8;
        tok[i] = t as u8;
        counts[c][t] += 1;
        bits.put(extra, nb);
    }
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

    // rANS, in reverse.
    let mut rev = Vec::with_capacity(n / 2 + 16);
    let mut x: u32 = RANS_L;
    for i in (0..n).rev() {
        let (c, t) = (ctx[i] as usize, tok[i] as usize);
        let (freq, start) = (freqs[c][t], starts[c][t]);
        let x_max = ((RANS_L >> PROB_BITS) << 8) * freq;
        while x >= x_max {
            rev.push(x as u8);
            x >>= 8;
        }
        x = ((x / freq) << PROB_BITS) + (x % freq) + start;
    }
    rev.extend_from_slice(&x.to_be_bytes());
    rev.reverse();
    put_varint(&mut out, rev.len() as u64);
    out.extend_from_slice(&rev);
    out.extend_from_slice(&bits.finish());
    out
}

/// Decode `n` codes of a frame with `cols` pixels per row.
pub fn decode(data: &[u8], n: usize, cols: usize, out: &mut Vec<u32>) -> Result<(), RansError> {
    let cols = cols.max(1);
    let mut inp = In { b: data, pos: 0 };
    let tlen = inp.varint()? as usize;
    let table = inp.take(tlen)?;
    let mut t_in = In { b: table, pos: 0 };
    // One lookup per symbol: for each context and slot, token | freq << 7 | (slot - start) << 20.
    let mut lut: Vec<u32> = Vec::new();
    let mut ctx_base = [usize::MAX; CONTEXTS];
    for base in ctx_base.iter_mut() {
        let used = t_in.byte()? as usize;
        if used == 0 {
            continue;
        }
        *base = lut.len();
        let mut t = 0usize;
        let mut acc = 0u32;
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
            lut.extend((0..f).map(|k| t as u32 | f << 7 | k << 20));
            acc += f;
        }
        if acc != PROB_SCALE {
            return Err(RansError("table does not sum to the scale"));
        }
    }
    if t_in.pos != table.len() {
        return Err(RansError("bad table"));
    }
    let rlen = inp.varint()? as usize;
    let rans = inp.take(rlen)?;
    let mut bits = BitReader { b: &data[inp.pos..], pos: 0, acc: 0, n: 0 };
    if rans.len() < 4 {
        return Err(RansError("stream ends early"));
    }
    let mut x = u32::from_le_bytes([rans[0], rans[1], rans[2], rans[3]]);
    let mut rp = 4usize;
    out.clear();
    out.resize(n, 0);
    let mut step = |x: &mut u32, c: usize, bits: &mut BitReader| -> Result<u32, RansError> {
        let base = ctx_base[c];
        if base == usize::MAX {
            return Err(RansError("symbol in an empty context"));
        }
        let slot = *x & (PROB_SCALE - 1);
        let e = lut[base + slot as usize];
        let t = (e & 0x7f) as usize;
        *x = ((e >> 7) & 0x1fff) * (*x >> PROB_BITS) + (e >> 20);
        while *x < RANS_L {
            let b = *rans.get(rp).ok_or(RansError("stream ends early"))?;
            *x = (*x << 8) | b as u32;
            rp += 1;
        }
        let (base, nb) = token_base(t);
        Ok(base | bits.get(nb)?)
    };
    for row_start in (0..n).step_by(cols) {
        let row_end = (row_start + cols).min(n);
        if row_start == 0 || row_end - row_start < 3 {
            for i in row_start..row_end {
                let c = context(out, i, i - row_start, cols);
                out[i] = step(&mut x, c, &mut bits)?;
            }
            continue;
        }
        let (done, rest) = out.split_at_mut(row_start);
        let up = &done[row_start - cols..];
        let cur = &mut rest[..row_end - row_start];
        let w = cur.len();
        // first column
        let s0 = 2 * up[0] as u64 + 2 * up[0] as u64 + up[0] as u64 + up[1] as u64;
        cur[0] = step(&mut x, bucket(s0), &mut bits)?;
        for xx in 1..w - 1 {
            let c = context_inner(cur, up, xx);
            cur[xx] = step(&mut x, c, &mut bits)?;
        }
        let l = w - 1;
        let sl = 2 * cur[l - 1] as u64 + 2 * up[l] as u64 + up[l - 1] as u64 + up[l] as u64;
        cur[l] = step(&mut x, bucket(sl), &mut bits)?;
    }
    if x != RANS_L || rp != rans.len() {
        return Err(RansError("stream does not end where it should"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
