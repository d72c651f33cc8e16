//! The entropy stage: turns a frame's codes (one `u32` per pixel, `width` bytes significant) into
//! bytes and back. Each frame's codes are one independent section, tagged with the [`Stage`]
//! that coded it, so the stage can change per frame and per window and later stages (a
//! context-adaptive coder) slot in beside these.

pub mod adaptive;
pub mod counts;
mod range;
pub mod rans;
pub mod tree;

pub use adaptive::Side;

use std::fmt;

/// Stable ids stored in the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Codes packed little-endian, then zstd.
    Zstd = 1,
    /// Byte planes (all low bytes, then all next bytes, ...), then zstd.
    BytePlanesZstd = 2,
    /// Bit planes (bitshuffle over the whole frame), then zstd.
    BitShuffleZstd = 3,
    /// Context-modelled rANS ([`rans`]).
    ContextRans = 4,
    /// Context-adaptive binary range coder ([`adaptive`]).
    Adaptive = 5,
    /// Photon counts coded as counts under a rate estimated from the past ([`counts`]; lossless
    /// codes of the `none` predictor; container version 8).
    Counts = 6,
    /// Lossless codes under a context tree with the pixel's prediction as a property, decoded
    /// fused with the reconstruction ([`tree`]; container version 12).
    Tree = 7,
}

impl Stage {
    pub const ALL: [Stage; 7] = [Stage::Zstd, Stage::BytePlanesZstd, Stage::BitShuffleZstd, Stage::ContextRans, Stage::Adaptive, Stage::Counts, Stage::Tree];

    pub fn from_id(id: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == id)
    }

    /// The stages worth trying for codes of `width` bytes under `choice` (the counts stage, which
    /// only suits the `none` predictor's lossless codes, and the tree stage, which needs the
    /// frame's pixels, are tried apart: `window::choose`).
    pub fn candidates(width: usize, choice: EntropyChoice) -> &'static [Stage] {
        match (width == 1, choice == EntropyChoice::Fast) {
            (true, true) => &[Stage::BitShuffleZstd, Stage::Zstd],
            (true, false) => &[Stage::Adaptive, Stage::ContextRans, Stage::BitShuffleZstd, Stage::Zstd],
            (false, true) => &[Stage::BitShuffleZstd, Stage::BytePlanesZstd],
            (false, false) => &[Stage::Adaptive, Stage::ContextRans, Stage::BitShuffleZstd, Stage::BytePlanesZstd],
        }
    }

    /// The size a stage's output counts for when stages are compared under `choice`: the
    /// context rANS coder decodes at about half the speed of the zstd stages, so `balanced`
    /// takes it only where it saves at least [`BALANCED_MARGIN`]; the adaptive coder is slower
    /// again and must also save [`ADAPTIVE_MARGIN`] over context rANS (the counts stage, as fast,
    /// alike). The tree stage decodes at about context rANS's speed (one table lookup and one
    /// rANS step a pixel) and is weighed as it.
    pub fn weighed(self, size: usize, choice: EntropyChoice) -> f64 {
        match (self, choice) {
            (Stage::ContextRans | Stage::Tree, EntropyChoice::Balanced) => size as f64 / (1.0 - BALANCED_MARGIN),
            (Stage::Adaptive | Stage::Counts, EntropyChoice::Balanced) => size as f64 / ((1.0 - BALANCED_MARGIN) * (1.0 - ADAPTIVE_MARGIN)),
            _ => size as f64,
        }
    }
}

/// Share of the size the context coder must save over the zstd stages under `balanced`.
pub const BALANCED_MARGIN: f64 = 0.10;
/// Share of the size the adaptive coder must save over context rANS under `balanced`.
pub const ADAPTIVE_MARGIN: f64 = 0.03;

/// Which entropy stages to consider (`--entropy`, `user.tezip.entropy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EntropyChoice {
    /// zstd stages only: the fastest to code and decode.
    Fast,
    /// Every stage; the context rANS coder where it saves at least [`BALANCED_MARGIN`] of the
    /// size, the adaptive coder where it saves [`ADAPTIVE_MARGIN`].
    #[default]
    Balanced,
    /// Every stage; the smallest output wins.
    Best,
}

impl fmt::Display for EntropyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntropyChoice::Fast => "fast",
            EntropyChoice::Balanced => "balanced",
            EntropyChoice::Best => "best",
        })
    }
}

impl std::str::FromStr for EntropyChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fast" => Ok(EntropyChoice::Fast),
            "balanced" => Ok(EntropyChoice::Balanced),
            "best" => Ok(EntropyChoice::Best),
            _ => Err(format!("unknown entropy choice {s:?} (expected fast, balanced or best)")),
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Zstd => "zstd",
            Stage::BytePlanesZstd => "byteplanes+zstd",
            Stage::BitShuffleZstd => "bitshuffle+zstd",
            Stage::ContextRans => "context-rans",
            Stage::Adaptive => "adaptive",
            Stage::Counts => "counts",
            Stage::Tree => "tree",
        })
    }
}

/// The most bytes a zstd frame can expand to per byte of it: a block holds at most 128 KiB and
/// takes at least 4 bytes (a 3-byte header and the byte of a run-length block).
pub const ZSTD_MAX_EXPANSION: usize = 1 << 15;

/// Reusable zstd contexts and scratch buffers for one thread.
pub struct Coder {
    level: i32,
    comp: zstd::bulk::Compressor<'static>,
    decomp: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
    rans: rans::Scratch,
    adaptive: adaptive::Scratch,
    counts: counts::Scratch,
    tree: tree::Scratch,
}

#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
    #[error("decoded section has {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("a section of {have} compressed bytes cannot hold the {len} bytes claimed")]
    Claim { len: usize, have: usize },
    #[error(transparent)]
    Rans(#[from] rans::RansError),
}

impl Coder {
    pub fn new(level: i32) -> Result<Coder, EntropyError> {
        Ok(Coder {
            level,
            comp: zstd::bulk::Compressor::new(level)?,
            decomp: zstd::bulk::Decompressor::new()?,
            scratch: Vec::new(),
            rans: rans::Scratch::default(),
            adaptive: adaptive::Scratch::default(),
            counts: counts::Scratch::default(),
            tree: tree::Scratch::default(),
        })
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// The tree stage's state (its tables), for a decoder that decodes fused with the
    /// reconstruction ([`tree::open`]).
    pub fn tree_scratch(&mut self) -> &mut tree::Scratch {
        &mut self.tree
    }

    /// Threads the adaptive stage may code and decode a frame's row slices on (0 and 1: the
    /// caller's only); the bytes do not depend on it.
    pub fn set_threads(&mut self, n: usize) {
        self.adaptive.threads = n;
    }

    /// See [`Coder::set_threads`].
    pub fn threads(&self) -> usize {
        self.adaptive.threads
    }

    /// zstd of arbitrary bytes.
    pub fn compress_bytes(&mut self, data: &[u8]) -> Result<Vec<u8>, EntropyError> {
        Ok(self.comp.compress(data)?)
    }

    /// Inverse of [`Coder::compress_bytes`]; `len` is the exact original length. `len` comes from
    /// a container and is checked before it sizes the output: against zstd's largest expansion
    /// ([`ZSTD_MAX_EXPANSION`] bytes out per byte in) and against the length the zstd frame
    /// itself records, so a damaged or hostile length is refused, not allocated.
    pub fn decompress_bytes(&mut self, data: &[u8], len: usize) -> Result<Vec<u8>, EntropyError> {
        if len > data.len().saturating_mul(ZSTD_MAX_EXPANSION) {
            return Err(EntropyError::Claim { len, have: data.len() });
        }
        if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(data) {
            if n != len as u64 {
                return Err(EntropyError::Length { got: usize::try_from(n).unwrap_or(usize::MAX), want: len });
            }
        }
        let out = self.decomp.decompress(data, len)?;
        if out.len() != len {
            return Err(EntropyError::Length { got: out.len(), want: len });
        }
        Ok(out)
    }

    /// Code one frame's codes (`width` significant bytes each, `cols` codes per row).
    /// `side` is what the adaptive stage may use besides the codes (the decoder must be given
    /// the same previous frame).
    pub fn encode(&mut self, stage: Stage, codes: &[u32], width: usize, cols: usize, side: Side) -> Result<Vec<u8>, EntropyError> {
        let mut packed = std::mem::take(&mut self.scratch);
        match stage {
            Stage::Zstd => pack(codes, width, &mut packed),
            Stage::BytePlanesZstd => byte_planes(codes, width, &mut packed),
            Stage::BitShuffleZstd => bitshuffle(codes, width, &mut packed),
            Stage::ContextRans => {
                self.scratch = packed;
                return Ok(rans::encode(codes, cols));
            }
            Stage::Adaptive => {
                self.scratch = packed;
                return Ok(adaptive::encode_with(codes, width, cols, side, &mut self.adaptive));
            }
            Stage::Counts => {
                self.scratch = packed;
                return Ok(counts::encode_with(codes, width, cols, side.carry, &mut self.counts));
            }
            Stage::Tree => {
                self.scratch = packed;
                let (image, levels) = side.pixels.ok_or(rans::RansError("the tree stage needs the frame's pixels"))?;
                return Ok(tree::encode(codes, image, levels, cols, side.prev, side.carry, &mut self.tree));
            }
        }
        let out = self.comp.compress(&packed);
        self.scratch = packed;
        Ok(out?)
    }

    /// The size [`Coder::encode`] gives, or for context rANS and the tree stage a close estimate
    /// of it ([`rans::estimate`], [`tree::estimate`]): what candidates are ranked by.
    pub fn estimate(&mut self, stage: Stage, codes: &[u32], width: usize, cols: usize, side: Side) -> Result<usize, EntropyError> {
        match stage {
            Stage::ContextRans => Ok(rans::estimate(codes, cols)),
            Stage::Tree => {
                let (image, levels) = side.pixels.ok_or(rans::RansError("the tree stage needs the frame's pixels"))?;
                Ok(tree::estimate(codes, image, levels, cols, side.prev, side.carry, &mut self.tree))
            }
            _ => Ok(self.encode(stage, codes, width, cols, side)?.len()),
        }
    }

    /// Encode with each candidate stage and keep the smallest.
    pub fn encode_best(&mut self, codes: &[u32], width: usize, cols: usize, choice: EntropyChoice, side: Side) -> Result<(Stage, Vec<u8>), EntropyError> {
        let mut best: Option<(f64, Stage, Vec<u8>)> = None;
        for &s in Stage::candidates(width, choice) {
            let out = self.encode(s, codes, width, cols, side)?;
            let w = s.weighed(out.len(), choice);
            if best.as_ref().is_none_or(|b| w < b.0) {
                best = Some((w, s, out));
            }
        }
        let (_, s, out) = best.expect("at least one candidate stage");
        Ok((s, out))
    }

    /// `side`: what the adaptive stage's encoder had besides the codes (its `quantised` is read
    /// from the stream; `carry` needs the models of the previous frame of the chain, which the
    /// caller guarantees; for the counts stage, its estimator's state).
    #[allow(clippy::too_many_arguments)]
    pub fn decode(&mut self, stage: Stage, data: &[u8], n: usize, width: usize, cols: usize, side: Side, out: &mut Vec<u32>) -> Result<(), EntropyError> {
        if stage == Stage::Adaptive {
            adaptive::decode_with(data, n, width, cols, side, out, &mut self.adaptive)?;
            return Ok(());
        }
        if stage == Stage::Counts {
            counts::decode_with(data, n, width, cols, side.carry, out, &mut self.counts)?;
            return Ok(());
        }
        if stage == Stage::Tree {
            return Err(EntropyError::Rans(rans::RansError("the tree stage decodes with the reconstruction")));
        }
        if stage == Stage::ContextRans {
            rans::decode_with(data, n, cols, out, &mut self.rans)?;
            if width < 4 && out.iter().any(|&c| c >> (8 * width) != 0) {
                return Err(EntropyError::Rans(rans::RansError("code wider than the pixel type")));
            }
            return Ok(());
        }
        let want = match stage {
            Stage::BitShuffleZstd => n.div_ceil(8) * 8 * width,
            _ => n * width,
        };
        let packed = self.decompress_bytes(data, want)?;
        match stage {
            Stage::Zstd => unpack(&packed, n, width, out),
            Stage::BytePlanesZstd => unbyte_planes(&packed, n, width, out),
            Stage::BitShuffleZstd => unbitshuffle(&packed, n, width, out),
            Stage::ContextRans | Stage::Adaptive | Stage::Counts | Stage::Tree => unreachable!("handled above"),
        }
        Ok(())
    }
}

fn pack(codes: &[u32], width: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(codes.len() * width);
    for &c in codes {
        out.extend_from_slice(&c.to_le_bytes()[..width]);
    }
}

fn unpack(bytes: &[u8], n: usize, width: usize, out: &mut Vec<u32>) {
    out.clear();
    out.extend(bytes.chunks_exact(width).take(n).map(|ch| {
        let mut b = [0u8; 4];
        b[..width].copy_from_slice(ch);
        u32::from_le_bytes(b)
    }));
}

fn byte_planes(codes: &[u32], width: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(codes.len() * width, 0);
    let n = codes.len();
    for (i, &c) in codes.iter().enumerate() {
        let b = c.to_le_bytes();
        for k in 0..width {
            out[k * n + i] = b[k];
        }
    }
}

fn unbyte_planes(bytes: &[u8], n: usize, width: usize, out: &mut Vec<u32>) {
    out.clear();
    out.resize(n, 0);
    for k in 0..width {
        let plane = &bytes[k * n..(k + 1) * n];
        for (o, &b) in out.iter_mut().zip(plane) {
            *o |= (b as u32) << (8 * k);
        }
    }
}

/// Transpose an 8x8 bit matrix held in a u64 (row i = byte i).
#[inline]
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
}

/// Bit planes: plane `8k + b` holds bit `b` of byte `k` of every code, 8 codes per byte.
/// The code count is padded to a multiple of 8 with zeros.
fn bitshuffle(codes: &[u32], width: usize, out: &mut Vec<u8>) {
    let groups = codes.len().div_ceil(8);
    out.clear();
    out.resize(groups * 8 * width, 0);
    let full = codes.len() / 8;
    if groups == 0 {
        return;
    }
    for k in 0..width {
        let mut planes: Vec<&mut [u8]> = out[8 * k * groups..8 * (k + 1) * groups].chunks_exact_mut(groups).collect();
        let byte = |c: u32| ((c >> (8 * k)) & 0xff) as u64;
        for g in 0..groups {
            let m = if g < full {
                let c = &codes[8 * g..8 * g + 8];
                (0..8).fold(0u64, |m, j| m | byte(c[j]) << (8 * j))
            } else {
                codes[8 * g..].iter().enumerate().fold(0u64, |m, (j, &c)| m | byte(c) << (8 * j))
            };
            let t = transpose8(m).to_le_bytes();
            for b in 0..8 {
                planes[b][g] = t[b];
            }
        }
    }
}

fn unbitshuffle(bytes: &[u8], n: usize, width: usize, out: &mut Vec<u32>) {
    let groups = n.div_ceil(8);
    out.clear();
    out.resize(groups * 8, 0);
    for k in 0..width {
        let planes: [&[u8]; 8] = std::array::from_fn(|b| &bytes[(8 * k + b) * groups..(8 * k + b + 1) * groups]);
        for (g, o) in out.chunks_exact_mut(8).enumerate() {
            let m = u64::from_le_bytes(std::array::from_fn(|b| planes[b][g]));
            let t = transpose8(m).to_le_bytes();
            for j in 0..8 {
                o[j] |= (t[j] as u32) << (8 * k);
            }
        }
    }
    out.truncate(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_round_trips() {
        let mut c = Coder::new(3).unwrap();
        for width in [1usize, 2, 4] {
            let mask = if width == 4 { u32::MAX } else { (1u32 << (8 * width)) - 1 };
            for n in [0usize, 1, 7, 8, 9, 1000] {
                let codes: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2654435761) & mask).collect();
                // (The tree stage decodes with the reconstruction: `tree`'s own tests.)
                for s in Stage::ALL.into_iter().filter(|&s| s != Stage::Tree) {
                    let enc = c.encode(s, &codes, width, 10, Side::default()).unwrap();
                    let mut back = Vec::new();
                    c.decode(s, &enc, n, width, 10, Side::default(), &mut back).unwrap();
                    assert_eq!(back, codes, "{s} width {width} n {n}");
                }
            }
        }
    }

    /// Frames coded in order may continue the adaptive models of the frame before: they decode
    /// back when the decoder does the same, and a frame like its predecessor codes smaller.
    #[test]
    fn adaptive_models_carry_over() {
        let frames: Vec<Vec<u32>> = (0..3u32).map(|f| (0..4000u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(f) >> 28) & 7).collect()).collect();
        let (mut enc, mut fresh_enc, mut dec) = (Coder::new(3).unwrap(), Coder::new(3).unwrap(), Coder::new(3).unwrap());
        let mut sizes = Vec::new();
        for (k, f) in frames.iter().enumerate() {
            let side = |carry| Side { carry, ..Side::default() };
            let fresh = fresh_enc.encode(Stage::Adaptive, f, 1, 40, side(false)).unwrap().len();
            let carried = enc.encode(Stage::Adaptive, f, 1, 40, side(k > 0)).unwrap();
            let mut back = Vec::new();
            dec.decode(Stage::Adaptive, &carried, f.len(), 1, 40, side(k > 0), &mut back).unwrap();
            assert_eq!(&back, f, "frame {k}");
            sizes.push((fresh, carried.len()));
        }
        assert!(sizes[1..].iter().all(|&(fresh, carried)| carried < fresh), "{sizes:?}");
    }

    #[test]
    fn bitshuffle_puts_bits_in_planes() {
        let codes = [1u32, 0, 0, 0, 0, 0, 0, 0x80];
        let mut out = Vec::new();
        bitshuffle(&codes, 1, &mut out);
        assert_eq!(out, vec![0b0000_0001, 0, 0, 0, 0, 0, 0, 0b1000_0000]);
    }
}
