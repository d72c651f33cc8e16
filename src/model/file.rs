//! The model file (version 1, `docs/MODEL.md`): writing, and reading with validation.
//!
//! A model file is what the store keeps and archives embed, so it is read from untrusted bytes:
//! every length is checked against the file before anything is allocated, both parts carry a
//! CRC32C, and every value is checked against the ranges `docs/MODEL.md` gives (those ranges are
//! what keeps the integer arithmetic of the backends inside `i64`, so a model that passes
//! [`validate`] cannot overflow). The header is postcard of [`ModelHeader`], a struct of its own
//! (not the in-memory types), so that changing [`IntModel`] cannot silently change the format.
//!
//! [`random`] builds a valid random model for tests and speed measurements.

use super::{
    rshr, Arch, Conv, Group, IntModel, Layer, LayerArch, Luts, Meta, Norm, Scale, CELL_LUT, GATE_LUT, MAX_CHANNELS, MAX_KERNEL, MAX_LAYERS, SCALE_BUCKETS,
};
use crate::codec::predict::causal::{self, CausalNet};
use crate::codec::predict::ModelHash;
use crate::codec::DType;
use sha2::Digest;

pub const MAGIC: &[u8; 8] = b"TZIPMODL";
/// The newest version: 2 adds the noise scale ([`crate::model::Scale`]), 3 the causal stage
/// ([`CausalNet`]; its header extension says whether a noise scale is there too). A model
/// without either is written as version 1, one with only a noise scale as version 2 (so their
/// files, and their names, are what they were).
pub const VERSION: u16 = 3;
/// The largest header a reader accepts.
pub const MAX_HEADER: usize = 1 << 20;
/// Bytes before the header: magic, version, reserved, header length.
const PREFIX: usize = 16;
/// The largest `|bias|` of a convolution: with it the requantisation sum stays inside `i64`
/// (`docs/MODEL.md`, Tensors and convolutions).
pub const MAX_BIAS: i64 = 1 << 61;
/// The largest normalisation multiplier.
pub const MAX_NORM_MULT: i64 = 1 << 30;

/// Why a model file (or an in-memory model) is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ModelFileError {
    #[error("not a tezipfs model file (bad magic)")]
    BadMagic,
    #[error("model file version {0} is not supported (this build reads versions 1 to {VERSION})")]
    UnsupportedVersion(u16),
    #[error("model file: reserved field is {0}, expected 0")]
    Reserved(u16),
    #[error("model file truncated: {what} needs {need} bytes, the file has {have}")]
    Truncated { what: &'static str, need: u64, have: u64 },
    #[error("model file: {0} bytes after the end of the model")]
    TrailingBytes(u64),
    #[error("model file header of {0} bytes exceeds the {MAX_HEADER}-byte limit")]
    HeaderTooLong(u64),
    #[error("model file header is corrupt (CRC32C {stored:08x} stored, {computed:08x} computed)")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("model file tensors are corrupt (CRC32C {stored:08x} stored, {computed:08x} computed)")]
    TensorCrc { stored: u32, computed: u32 },
    #[error("model file header cannot be decoded: {0}")]
    Header(String),
    #[error("model: unknown pixel type id {0}")]
    UnknownDType(u8),
    /// Shapes that do not fit together (architecture, group count, tensor lengths).
    #[error("model: {0}")]
    Inconsistent(String),
    /// A value outside the range `docs/MODEL.md` allows.
    #[error("model: {0}")]
    OutOfRange(String),
}

/// One layer's shape as the header stores it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerHeader {
    pub a: u32,
    pub r: u32,
    pub k_lstm: u32,
    pub k_ahat: u32,
    pub k_a: u32,
}

/// The normalisation as the header stores it (`docs/MODEL.md`, Values).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NormHeader {
    pub offset: i64,
    pub in_mult: i64,
    pub in_shift: u8,
    pub err_mult: i64,
    pub err_shift: u8,
    pub out_mult: i64,
    pub out_shift: u8,
}

/// The header of a model file (postcard). The tensors follow in the order of [`tensor_layout`],
/// `tensors` giving each one's byte length.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelHeader {
    /// The size name (`small`, `prednet`, or anything training called it).
    pub size: String,
    pub layers: Vec<LayerHeader>,
    /// [`DType::id`] of the pixel type the model was trained for.
    pub dtype: u8,
    /// Valid bits of that type's integer image (redundant: checked against the type).
    pub bits: u32,
    pub norm: NormHeader,
    /// The error bound trained for (`lossless`, `abs:2`, ...).
    pub bound: String,
    /// SHA-256 of the training frames' bytes, in order.
    pub fingerprint: [u8; 32],
    pub frames: u64,
    pub steps: u64,
    pub loss: f64,
    /// Byte length of each tensor.
    pub tensors: Vec<u64>,
}

/// What a version-3 header holds after [`ModelHeader`] (postcard, inside the header's length).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CausalHeader {
    /// Whether the noise scale's tensors are there (version 2 says so by its number).
    pub scale: bool,
    /// The stage's shape, checked against this build's ([`causal::INPUTS`], `H1`, `H2`).
    pub inputs: u32,
    pub h1: u32,
    pub h2: u32,
    pub shift_px: u8,
    pub shift_mean: u8,
    /// Whether the running means are inputs.
    pub means: bool,
}

/// The optional parts of a model, which decide its file's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub scale: bool,
    pub causal: bool,
}

impl Parts {
    pub fn of(m: &IntModel) -> Parts {
        Parts { scale: m.norm.scale.is_some(), causal: m.causal.is_some() }
    }
}

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    I8,
    U8,
    I16,
    I32,
    I64,
}

impl Elem {
    pub fn bytes(self) -> usize {
        match self {
            Elem::I8 | Elem::U8 => 1,
            Elem::I16 => 2,
            Elem::I32 => 4,
            Elem::I64 => 8,
        }
    }
}

/// One tensor of the file: what it is (for messages), its element type and count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub elem: Elem,
    pub count: usize,
}

/// Input channel counts of the groups of `lstm_l`, in order: `E_l`, `H_l`, `up(H_{l+1})` (not
/// on the top layer), the intensity (layer 0).
pub fn lstm_groups(arch: &Arch, l: usize) -> Vec<usize> {
    let la = &arch.layers[l];
    let mut g = vec![2 * la.a, la.r];
    if l + 1 < arch.layers.len() {
        g.push(arch.layers[l + 1].r);
    }
    if l == 0 {
        g.push(1);
    }
    g
}

/// The shape a convolution must have.
struct ConvShape {
    name: &'static str,
    cout: usize,
    k: usize,
    /// Input channels of each group.
    cins: Vec<usize>,
    lo: i32,
    hi: i32,
}

/// The shapes of layer `l`'s convolutions: `lstm`, `ahat` and (layers 1 and up) `a`.
fn conv_shapes(arch: &Arch, l: usize) -> Vec<ConvShape> {
    let la = &arch.layers[l];
    let ahat_lo = if l == 0 { -128 } else { 0 };
    let mut v = vec![
        ConvShape { name: "lstm", cout: 4 * la.r, k: la.k_lstm, cins: lstm_groups(arch, l), lo: -128, hi: 127 },
        ConvShape { name: "ahat", cout: la.a, k: la.k_ahat, cins: vec![la.r], lo: ahat_lo, hi: 127 },
    ];
    if l > 0 {
        v.push(ConvShape { name: "a", cout: la.a, k: la.k_a, cins: vec![2 * arch.layers[l - 1].a], lo: 0, hi: 127 });
    }
    v
}

/// The tensors of a model of `arch`, in file order (LUTs, in version 2 the noise scale's error
/// and correction multipliers, then per layer lstm, ahat, a: per group weights then
/// multipliers, then bias and shift). `arch` must have passed [`check_arch`] (so the counts are
/// small).
pub fn tensor_layout(arch: &Arch, parts: Parts) -> Vec<TensorSpec> {
    let t = |name: String, elem, count| TensorSpec { name, elem, count };
    let mut v =
        vec![t("sigmoid table".into(), Elem::I16, GATE_LUT), t("tanh table".into(), Elem::I16, GATE_LUT), t("cell tanh table".into(), Elem::I16, CELL_LUT)];
    if parts.scale {
        v.push(t("noise scale error multipliers".into(), Elem::I64, SCALE_BUCKETS));
        v.push(t("noise scale correction multipliers".into(), Elem::I64, SCALE_BUCKETS));
        v.push(t("noise scale stabilised intensity".into(), Elem::I32, SCALE_BUCKETS + 1));
    }
    for l in 0..arch.layers.len() {
        for cs in conv_shapes(arch, l) {
            let (name, cout, k) = (cs.name, cs.cout, cs.k);
            for (g, cin) in cs.cins.iter().enumerate() {
                v.push(t(format!("layer {l} {name} group {g} weights"), Elem::I8, cout * cin * k * k));
                v.push(t(format!("layer {l} {name} group {g} multipliers"), Elem::I32, cout));
            }
            v.push(t(format!("layer {l} {name} bias"), Elem::I64, cout));
            v.push(t(format!("layer {l} {name} shift"), Elem::U8, cout));
        }
    }
    if parts.causal {
        use causal::{H1, H2, INPUTS};
        for (name, w, n) in [("first", INPUTS, H1), ("second", H1, H2), ("output", H2, 1)] {
            v.push(t(format!("causal stage {name} layer weights"), Elem::I16, w * n));
            v.push(t(format!("causal stage {name} layer biases"), Elem::I32, n));
            v.push(t(format!("causal stage {name} layer shifts"), Elem::U8, n));
        }
    }
    v
}

fn range_err(what: impl std::fmt::Display) -> ModelFileError {
    ModelFileError::OutOfRange(what.to_string())
}

fn odd_kernel(k: usize) -> bool {
    k % 2 == 1 && k <= MAX_KERNEL
}

/// The architecture's ranges: 1 to [`MAX_LAYERS`] layers, channels 1 to [`MAX_CHANNELS`]
/// (`A_0 = 1`), odd kernels 1 to [`MAX_KERNEL`] (`k_a` is unused on layer 0 and not checked).
pub fn check_arch(arch: &Arch) -> Result<(), ModelFileError> {
    let n = arch.layers.len();
    if n == 0 || n > MAX_LAYERS {
        return Err(range_err(format!("{n} layers (1 to {MAX_LAYERS} allowed)")));
    }
    for (l, la) in arch.layers.iter().enumerate() {
        for (what, c) in [("target", la.a), ("representation", la.r)] {
            if c == 0 || c > MAX_CHANNELS {
                return Err(range_err(format!("layer {l}: {c} {what} channels (1 to {MAX_CHANNELS} allowed)")));
            }
        }
        if l == 0 && la.a != 1 {
            return Err(ModelFileError::Inconsistent(format!("layer 0 has {} target channels (the correction is 1 channel)", la.a)));
        }
        let mut kernels = vec![("lstm", la.k_lstm), ("ahat", la.k_ahat)];
        if l > 0 {
            kernels.push(("a", la.k_a));
        }
        for (what, k) in kernels {
            if !odd_kernel(k) {
                return Err(range_err(format!("layer {l} {what}: kernel {k} (odd, 1 to {MAX_KERNEL} allowed)")));
            }
        }
    }
    Ok(())
}

fn check_norm(n: &Norm) -> Result<(), ModelFileError> {
    if !(0..=u32::MAX as i64).contains(&n.offset) {
        return Err(range_err(format!("normalisation offset {} (0 to 2^32-1 allowed)", n.offset)));
    }
    for (what, m) in [("intensity", n.in_mult), ("error", n.err_mult), ("output", n.out_mult)] {
        if !(1..=MAX_NORM_MULT).contains(&m) {
            return Err(range_err(format!("{what} multiplier {m} (1 to 2^30 allowed)")));
        }
    }
    for (what, s) in [("intensity", n.in_shift), ("error", n.err_shift), ("output", n.out_shift)] {
        if !(1..=62).contains(&s) {
            return Err(range_err(format!("{what} shift {s} (1 to 62 allowed)")));
        }
    }
    if let Some(sc) = &n.scale {
        for (what, t) in [("error", &sc.err_mult), ("correction", &sc.out_mult)] {
            if t.len() != SCALE_BUCKETS {
                return Err(ModelFileError::Inconsistent(format!("noise scale has {} {what} multipliers, expected {SCALE_BUCKETS}", t.len())));
            }
            if let Some(k) = t.iter().position(|m| !(1..=MAX_NORM_MULT).contains(m)) {
                return Err(range_err(format!("noise scale {what} multiplier {k} is {} (1 to 2^30 allowed)", t[k])));
            }
        }
        if sc.stab.len() != SCALE_BUCKETS + 1 {
            return Err(ModelFileError::Inconsistent(format!("noise scale has {} stabilised intensities, expected {}", sc.stab.len(), SCALE_BUCKETS + 1)));
        }
        if let Some(k) = sc.stab.iter().position(|v| !(-32768..=32767).contains(v)) {
            return Err(range_err(format!("noise scale stabilised intensity {k} is {} (-32768 to 32767 allowed)", sc.stab[k])));
        }
        if let Some(k) = sc.stab.windows(2).position(|w| w[1] < w[0]) {
            return Err(range_err(format!("noise scale stabilised intensity decreases at entry {}", k + 1)));
        }
    }
    Ok(())
}

/// The version a model's file has: 3 with a causal stage, else 2 with a noise scale, 1 without.
pub fn version_of(m: &IntModel) -> u16 {
    if m.causal.is_some() {
        3
    } else if m.norm.scale.is_some() {
        2
    } else {
        1
    }
}

fn check_luts(luts: &Luts) -> Result<(), ModelFileError> {
    for (what, t, len, lo) in [("sigmoid", &luts.sigmoid, GATE_LUT, 0), ("tanh", &luts.tanh, GATE_LUT, -128), ("cell tanh", &luts.tanh_cell, CELL_LUT, -128)] {
        if t.len() != len {
            return Err(ModelFileError::Inconsistent(format!("{what} table has {} entries, expected {len}", t.len())));
        }
        if let Some(j) = t.iter().position(|&v| v < lo || v > 128) {
            return Err(range_err(format!("{what} table entry {j} is {} ({lo} to 128 allowed)", t[j])));
        }
        if let Some(j) = t.windows(2).position(|w| w[1] < w[0]) {
            return Err(range_err(format!("{what} table decreases at entry {}", j + 1)));
        }
    }
    Ok(())
}

fn check_conv(conv: &Conv, name: &str, shape: &ConvShape) -> Result<(), ModelFileError> {
    let (cout, k, cins, lo, hi) = (shape.cout, shape.k, &shape.cins, shape.lo, shape.hi);
    let inc = |what: String| Err(ModelFileError::Inconsistent(format!("{name}: {what}")));
    if conv.cout != cout {
        return inc(format!("{} output channels, the architecture says {cout}", conv.cout));
    }
    if conv.k != k {
        return inc(format!("kernel {}, the architecture says {k}", conv.k));
    }
    if conv.groups.len() != cins.len() {
        return inc(format!("{} input groups, the architecture says {}", conv.groups.len(), cins.len()));
    }
    if (conv.lo, conv.hi) != (lo, hi) {
        return inc(format!("output range {}..={}, the specification says {lo}..={hi}", conv.lo, conv.hi));
    }
    for (g, (grp, &cin)) in conv.groups.iter().zip(cins).enumerate() {
        if grp.cin != cin {
            return inc(format!("group {g} has {} input channels, the architecture says {cin}", grp.cin));
        }
        if grp.weight.len() != cout * cin * k * k || grp.mult.len() != cout {
            return inc(format!("group {g} has {} weights and {} multipliers, expected {} and {cout}", grp.weight.len(), grp.mult.len(), cout * cin * k * k));
        }
        if let Some(j) = grp.weight.iter().position(|&w| w == i8::MIN) {
            return Err(range_err(format!("{name}: group {g} weight {j} is -128 (-127 to 127 allowed)")));
        }
        // Every i32 multiplier is allowed: |acc| < 2^29 and |mult| <= 2^31 keep each product
        // below 2^60.
    }
    if conv.bias.len() != cout || conv.shift.len() != cout {
        return inc(format!("{} biases and {} shifts, expected {cout}", conv.bias.len(), conv.shift.len()));
    }
    if let Some(c) = conv.bias.iter().position(|b| b.unsigned_abs() > MAX_BIAS as u64) {
        return Err(range_err(format!("{name}: bias {c} is {} (|bias| <= 2^61 allowed)", conv.bias[c])));
    }
    if let Some(c) = conv.shift.iter().position(|s| !(1..=62).contains(s)) {
        return Err(range_err(format!("{name}: shift {c} is {} (1 to 62 allowed)", conv.shift[c])));
    }
    Ok(())
}

/// Checks everything `docs/MODEL.md` requires of a model: architecture, normalisation, tables,
/// and every convolution's shape, ranges and output bounds. The backends refuse a model that
/// fails it (their arithmetic relies on these ranges).
pub fn validate(m: &IntModel) -> Result<(), ModelFileError> {
    check_arch(&m.arch)?;
    check_norm(&m.norm)?;
    check_luts(&m.luts)?;
    if m.layers.len() != m.arch.layers.len() {
        return Err(ModelFileError::Inconsistent(format!("{} layers of weights for {} layers of architecture", m.layers.len(), m.arch.layers.len())));
    }
    for (l, layer) in m.layers.iter().enumerate() {
        let convs: Vec<Option<&Conv>> = vec![Some(&layer.lstm), Some(&layer.ahat), layer.a.as_ref()];
        let shapes = conv_shapes(&m.arch, l);
        if l == 0 && layer.a.is_some() {
            return Err(ModelFileError::Inconsistent("layer 0 has an `a` convolution".into()));
        }
        for (i, cs) in shapes.iter().enumerate() {
            let label = format!("layer {l} {}", cs.name);
            let conv = convs[i].ok_or_else(|| ModelFileError::Inconsistent(format!("{label} is missing")))?;
            check_conv(conv, &label, cs)?;
        }
    }
    if let Some(c) = &m.causal {
        c.validate().map_err(range_err)?;
    }
    Ok(())
}

/// The largest frame a backend takes (2^32 pixels): beyond it the state alone would not fit in
/// memory, and refusing is better than an allocation that aborts.
pub const MAX_PIXELS: usize = 1 << 32;

/// Whether `m` can run on frames of `geom`: the pixel type it was trained for, a frame of 1 to
/// [`MAX_PIXELS`] pixels. Both backends' `start` check it.
pub fn check_frames(m: &IntModel, geom: &crate::codec::predict::Geometry) -> Result<(), String> {
    if geom.dtype != m.dtype {
        return Err(format!("the model is for {} pixels, the frames are {}", m.dtype, geom.dtype));
    }
    match geom.width.checked_mul(geom.height) {
        Some(n) if (1..=MAX_PIXELS).contains(&n) => Ok(()),
        _ => Err(format!("frames of {} x {} pixels (1 to 2^32 pixels allowed)", geom.width, geom.height)),
    }
}

/// The header of `m` (tensor lengths from its vectors).
fn header_of(m: &IntModel) -> ModelHeader {
    let mut tensors = vec![m.luts.sigmoid.len() as u64 * 2, m.luts.tanh.len() as u64 * 2, m.luts.tanh_cell.len() as u64 * 2];
    if let Some(sc) = &m.norm.scale {
        tensors.push(sc.err_mult.len() as u64 * 8);
        tensors.push(sc.out_mult.len() as u64 * 8);
        tensors.push(sc.stab.len() as u64 * 4);
    }
    for layer in &m.layers {
        for conv in [Some(&layer.lstm), Some(&layer.ahat), layer.a.as_ref()].into_iter().flatten() {
            for g in &conv.groups {
                tensors.push(g.weight.len() as u64);
                tensors.push(g.mult.len() as u64 * 4);
            }
            tensors.push(conv.bias.len() as u64 * 8);
            tensors.push(conv.shift.len() as u64);
        }
    }
    if let Some(c) = &m.causal {
        for (w, b, s) in [(&c.w1, &c.b1[..], &c.s1[..]), (&c.w2, &c.b2[..], &c.s2[..]), (&c.w3, std::slice::from_ref(&c.b3), std::slice::from_ref(&c.s3))] {
            tensors.extend([w.len() as u64 * 2, b.len() as u64 * 4, s.len() as u64]);
        }
    }
    let n = &m.norm;
    ModelHeader {
        size: m.meta.size.clone(),
        layers: m
            .arch
            .layers
            .iter()
            .map(|l| LayerHeader { a: l.a as u32, r: l.r as u32, k_lstm: l.k_lstm as u32, k_ahat: l.k_ahat as u32, k_a: l.k_a as u32 })
            .collect(),
        dtype: m.dtype.id(),
        bits: m.dtype.bits(),
        norm: NormHeader {
            offset: n.offset,
            in_mult: n.in_mult,
            in_shift: n.in_shift,
            err_mult: n.err_mult,
            err_shift: n.err_shift,
            out_mult: n.out_mult,
            out_shift: n.out_shift,
        },
        bound: m.meta.bound.clone(),
        fingerprint: m.meta.fingerprint,
        frames: m.meta.frames,
        steps: m.meta.steps,
        loss: m.meta.loss,
        tensors,
    }
}

/// The model file of `m`. A model that fails [`validate`] is written as it is and refused when
/// read; callers that build models check [`validate`] first.
pub fn to_bytes(m: &IntModel) -> Vec<u8> {
    // postcard of plain integers, strings and vectors cannot fail.
    let mut header = postcard::to_allocvec(&header_of(m)).expect("postcard encodes a ModelHeader");
    if let Some(c) = &m.causal {
        let ext = CausalHeader {
            scale: m.norm.scale.is_some(),
            inputs: causal::INPUTS as u32,
            h1: causal::H1 as u32,
            h2: causal::H2 as u32,
            shift_px: c.shift_px,
            shift_mean: c.shift_mean,
            means: c.means,
        };
        header.extend(postcard::to_allocvec(&ext).expect("postcard encodes a CausalHeader"));
    }
    let mut out = Vec::with_capacity(PREFIX + header.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version_of(m).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let start = out.len();
    let put16 = |out: &mut Vec<u8>, v: &[i16]| v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    put16(&mut out, &m.luts.sigmoid);
    put16(&mut out, &m.luts.tanh);
    put16(&mut out, &m.luts.tanh_cell);
    if let Some(sc) = &m.norm.scale {
        for t in [&sc.err_mult, &sc.out_mult] {
            t.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        sc.stab.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    }
    for layer in &m.layers {
        for conv in [Some(&layer.lstm), Some(&layer.ahat), layer.a.as_ref()].into_iter().flatten() {
            for g in &conv.groups {
                out.extend(g.weight.iter().map(|&w| w as u8));
                g.mult.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            conv.bias.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            out.extend_from_slice(&conv.shift);
        }
    }
    if let Some(c) = &m.causal {
        for (w, b, s) in [(&c.w1, &c.b1[..], &c.s1[..]), (&c.w2, &c.b2[..], &c.s2[..]), (&c.w3, std::slice::from_ref(&c.b3), std::slice::from_ref(&c.s3))] {
            w.iter().for_each(|&x| out.extend_from_slice(&x.to_le_bytes()));
            b.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            out.extend_from_slice(s);
        }
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// `bytes` with both checksums of a model file recomputed (the header's and the tensors'), for
/// fuzzing and damage tests: a mutated file then reaches the checks behind the CRCs. `None` when
/// `bytes` do not start like a model file whose header fits.
pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < PREFIX || &bytes[..8] != MAGIC {
        return None;
    }
    let hend = PREFIX.checked_add(le_u32(bytes, 12) as usize).filter(|&e| e + 8 <= bytes.len())?;
    let mut out = bytes.to_vec();
    let crc = crc32c::crc32c(&out[..hend]);
    out[hend..hend + 4].copy_from_slice(&crc.to_le_bytes());
    let end = out.len() - 4;
    let crc = crc32c::crc32c(&out[hend + 4..end]);
    out[end..].copy_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// A model's name: the SHA-256 of its file.
pub fn hash(bytes: &[u8]) -> ModelHash {
    sha2::Sha256::digest(bytes).into()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the tensors one after another (lengths already checked against the file).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        s
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        self.take(n).iter().map(|&b| b as i8).collect()
    }
    fn u8s(&mut self, n: usize) -> Vec<u8> {
        self.take(n).to_vec()
    }
    fn i16s(&mut self, n: usize) -> Vec<i16> {
        self.take(2 * n).chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    }
    fn i32s(&mut self, n: usize) -> Vec<i32> {
        self.take(4 * n).chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    fn i64s(&mut self, n: usize) -> Vec<i64> {
        self.take(8 * n).chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()
    }
    fn conv(&mut self, cout: usize, k: usize, cins: &[usize], lo: i32, hi: i32) -> Conv {
        let groups = cins.iter().map(|&cin| Group { cin, weight: self.i8s(cout * cin * k * k), mult: self.i32s(cout) }).collect();
        Conv { cout, k, groups, bias: self.i64s(cout), shift: self.u8s(cout), lo, hi }
    }
}

/// Reads and validates a model file.
pub fn from_bytes(bytes: &[u8]) -> Result<IntModel, ModelFileError> {
    let have = bytes.len() as u64;
    let truncated = |what, need: u64| ModelFileError::Truncated { what, need, have };
    if bytes.len() < PREFIX {
        // A file that starts like ours is reported as truncated, anything else as not ours.
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            return Err(ModelFileError::BadMagic);
        }
        return Err(truncated("the fixed header", PREFIX as u64));
    }
    if &bytes[..8] != MAGIC {
        return Err(ModelFileError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(1..=VERSION).contains(&version) {
        return Err(ModelFileError::UnsupportedVersion(version));
    }
    let reserved = u16::from_le_bytes([bytes[10], bytes[11]]);
    if reserved != 0 {
        return Err(ModelFileError::Reserved(reserved));
    }
    let hlen = le_u32(bytes, 12) as u64;
    if hlen > MAX_HEADER as u64 {
        return Err(ModelFileError::HeaderTooLong(hlen));
    }
    let hend = PREFIX as u64 + hlen;
    // The header, its CRC and the tensors' CRC at least.
    if have < hend + 8 {
        return Err(truncated("the header and CRCs", hend + 8));
    }
    let hend = hend as usize;
    let stored = le_u32(bytes, hend);
    let computed = crc32c::crc32c(&bytes[..hend]);
    if stored != computed {
        return Err(ModelFileError::HeaderCrc { stored, computed });
    }
    let (h, rest) = postcard::take_from_bytes::<ModelHeader>(&bytes[PREFIX..hend]).map_err(|e| ModelFileError::Header(e.to_string()))?;
    let (ext, rest) = if version >= 3 {
        let (e, r) = postcard::take_from_bytes::<CausalHeader>(rest).map_err(|e| ModelFileError::Header(format!("causal stage: {e}")))?;
        (Some(e), r)
    } else {
        (None, rest)
    };
    if !rest.is_empty() {
        return Err(ModelFileError::Header(format!("{} bytes after the header's last field", rest.len())));
    }
    // One encoding per header (postcard also reads over-long varints): a model's name, the hash
    // of its file, then follows from the model alone.
    let mut canonical = postcard::to_allocvec(&h).map_err(|e| ModelFileError::Header(e.to_string()))?;
    if let Some(e) = &ext {
        canonical.extend(postcard::to_allocvec(e).map_err(|e| ModelFileError::Header(e.to_string()))?);
    }
    if canonical != bytes[PREFIX..hend] {
        return Err(ModelFileError::Header("not in canonical form (an over-long number)".into()));
    }
    if let Some(e) = &ext {
        if (e.inputs, e.h1, e.h2) != (causal::INPUTS as u32, causal::H1 as u32, causal::H2 as u32) {
            return Err(ModelFileError::Inconsistent(format!(
                "a causal stage of {}-{}-{}-1 (this build runs {}-{}-{}-1)",
                e.inputs,
                e.h1,
                e.h2,
                causal::INPUTS,
                causal::H1,
                causal::H2
            )));
        }
    }
    if h.layers.is_empty() || h.layers.len() > MAX_LAYERS {
        return Err(range_err(format!("{} layers (1 to {MAX_LAYERS} allowed)", h.layers.len())));
    }
    let arch = Arch {
        layers: h
            .layers
            .iter()
            .map(|l| LayerArch { a: l.a as usize, r: l.r as usize, k_lstm: l.k_lstm as usize, k_ahat: l.k_ahat as usize, k_a: l.k_a as usize })
            .collect(),
    };
    check_arch(&arch)?;
    let dtype = DType::from_id(h.dtype).ok_or(ModelFileError::UnknownDType(h.dtype))?;
    if h.bits != dtype.bits() {
        return Err(ModelFileError::Inconsistent(format!("{} bits for pixel type {dtype} (which has {})", h.bits, dtype.bits())));
    }
    let parts = Parts { scale: ext.as_ref().map_or(version >= 2, |e| e.scale), causal: ext.is_some() };
    let layout = tensor_layout(&arch, parts);
    if h.tensors.len() != layout.len() {
        return Err(ModelFileError::Inconsistent(format!("the header lists {} tensors, the architecture has {}", h.tensors.len(), layout.len())));
    }
    let mut total: u64 = 0;
    for (spec, &len) in layout.iter().zip(&h.tensors) {
        let want = (spec.count * spec.elem.bytes()) as u64;
        if len != want {
            return Err(ModelFileError::Inconsistent(format!("{} is {len} bytes long, the architecture needs {want}", spec.name)));
        }
        total += want;
    }
    let tstart = hend as u64 + 4;
    let end = tstart + total + 4;
    if have < end {
        return Err(truncated("the tensors", end));
    }
    if have > end {
        return Err(ModelFileError::TrailingBytes(have - end));
    }
    let (tstart, tend) = (tstart as usize, (tstart + total) as usize);
    let stored = le_u32(bytes, tend);
    let computed = crc32c::crc32c(&bytes[tstart..tend]);
    if stored != computed {
        return Err(ModelFileError::TensorCrc { stored, computed });
    }
    let mut r = Reader { bytes: &bytes[..tend], at: tstart };
    let luts = Luts { sigmoid: r.i16s(GATE_LUT), tanh: r.i16s(GATE_LUT), tanh_cell: r.i16s(CELL_LUT) };
    let scale = parts.scale.then(|| Box::new(Scale { err_mult: r.i64s(SCALE_BUCKETS), out_mult: r.i64s(SCALE_BUCKETS), stab: r.i32s(SCALE_BUCKETS + 1) }));
    let mut layers = Vec::with_capacity(arch.layers.len());
    for l in 0..arch.layers.len() {
        let mut convs = conv_shapes(&arch, l).into_iter().map(|cs| r.conv(cs.cout, cs.k, &cs.cins, cs.lo, cs.hi)).collect::<Vec<_>>();
        let a = if l > 0 { convs.pop() } else { None };
        let ahat = convs.pop().expect("conv_shapes lists ahat");
        let lstm = convs.pop().expect("conv_shapes lists lstm");
        layers.push(Layer { lstm, ahat, a });
    }
    let causal = ext.map(|e| {
        use causal::{H1, H2, INPUTS};
        let mut layer = |w: usize, n: usize| (r.i16s(w * n), r.i32s(n), r.u8s(n));
        let (w1, b1, s1) = layer(INPUTS, H1);
        let (w2, b2, s2) = layer(H1, H2);
        let (w3, b3, s3) = layer(H2, 1);
        CausalNet { means: e.means, shift_px: e.shift_px, shift_mean: e.shift_mean, w1, b1, s1, w2, b2, s2, w3, b3: b3[0], s3: s3[0] }
    });
    debug_assert_eq!(r.at, tend);
    let n = &h.norm;
    let model = IntModel {
        arch,
        dtype,
        norm: Norm {
            offset: n.offset,
            in_mult: n.in_mult,
            in_shift: n.in_shift,
            err_mult: n.err_mult,
            err_shift: n.err_shift,
            out_mult: n.out_mult,
            out_shift: n.out_shift,
            scale,
        },
        luts,
        layers,
        meta: Meta { size: h.size, bound: h.bound, fingerprint: h.fingerprint, frames: h.frames, steps: h.steps, loss: h.loss },
        causal,
    };
    validate(&model)?;
    Ok(model)
}

/// A bound on the magnitude of every partial sum of output channel `o`'s requantisation,
/// however the groups are added up: `sum_g sum|w_g[o]| * max|x_g| * |mult_g[o]| + |bias[o]| +
/// 2^(shift[o]-1)`, with `max|x|` 128 for the i8 inputs and 32896 for the intensity (group
/// `intensity`; the margin covers a backend's `256 * hi + lo = v - 128` split and its constant).
/// Below 2^31 a backend may requantise in i32 with the same result (the torch backend does:
/// about four times cheaper on a CPU); training can export multipliers of about 10 bits to get
/// there (see [`shrink_multipliers`]).
pub fn requant_bound(conv: &Conv, o: usize, intensity: Option<usize>) -> i128 {
    let kk = conv.k * conv.k;
    let mut b: i128 = conv.bias[o].unsigned_abs() as i128 + (1i128 << (conv.shift[o] - 1));
    for (g, grp) in conv.groups.iter().enumerate() {
        let w = &grp.weight[o * grp.cin * kk..(o + 1) * grp.cin * kk];
        let wabs: i128 = w.iter().map(|&v| (v as i128).abs()).sum();
        let m = (grp.mult[o] as i128).abs();
        let xmax = if intensity == Some(g) { 32896 + 128 } else { 128 };
        b += wabs * xmax * m;
    }
    b
}

/// The index of the intensity group of layer `l`'s `lstm` (the last group of layer 0).
pub fn intensity_group(l: usize, conv: &Conv) -> Option<usize> {
    (l == 0).then(|| conv.groups.len() - 1)
}

/// Halves multipliers and biases and lowers shifts (one step at a time, per output channel)
/// until every partial sum of every requantisation fits in an i32 ([`requant_bound`]), or the
/// shift reaches 1. The outputs change by the rounding of the halved values only; this is what
/// an export for the int32 path would do. For tests and speed measurements.
pub fn shrink_multipliers(m: &mut IntModel) {
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let ig = intensity_group(l, &layer.lstm);
        for (conv, ig) in [(&mut layer.lstm, ig), (&mut layer.ahat, None)].into_iter().chain(layer.a.as_mut().map(|a| (a, None))) {
            for o in 0..conv.cout {
                while requant_bound(conv, o, ig) >= 1i128 << 31 && conv.shift[o] > 1 {
                    for g in &mut conv.groups {
                        g.mult[o] = ((g.mult[o] as i64 + 1) >> 1) as i32;
                    }
                    conv.bias[o] = rshr(conv.bias[o], 1);
                    conv.shift[o] -= 1;
                }
            }
        }
    }
}

/// Gives every i8 input group of every convolution the multipliers of its first group (what an
/// export with one scale per output channel for all i8 inputs would give; the torch backend then
/// makes one product for them). For tests and speed measurements.
pub fn share_multipliers(m: &mut IntModel) {
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let ig = intensity_group(l, &layer.lstm);
        for (conv, ig) in [(&mut layer.lstm, ig), (&mut layer.ahat, None)].into_iter().chain(layer.a.as_mut().map(|a| (a, None))) {
            let first = conv.groups[0].mult.clone();
            for (g, grp) in conv.groups.iter_mut().enumerate() {
                if Some(g) != ig {
                    grp.mult = first.clone();
                }
            }
        }
    }
}

/// A small deterministic generator (SplitMix64) for [`random`] and tests: no dependency, the
/// same numbers on every machine.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo) as u64 + 1)) as i64
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// `(mult, shift)` with `mult / 2^shift` close to `scale`, `mult` in `1..=max_mult`.
fn fixed_point(scale: f64, max_mult: i64) -> (i64, u8) {
    let mut s: i32 = 1;
    while s < 62 && scale * 2f64.powi(s) < (max_mult / 4) as f64 {
        s += 1;
    }
    let m = (scale * 2f64.powi(s)).round().clamp(1.0, max_mult as f64) as i64;
    (m, s as u8)
}

/// A random convolution whose outputs spread over `lo..=hi` and saturate sometimes: `typical`
/// gives each group's typical input magnitude, from which the multipliers are chosen. A few
/// channels get extreme values (multipliers near 2^31, large shifts, huge biases) so the
/// backends' 64-bit paths are exercised.
fn random_conv(rng: &mut Rng, cout: usize, k: usize, groups: &[(usize, f64)], lo: i32, hi: i32) -> Conv {
    let target = (hi - lo) as f64 / 3.0;
    let centre = (hi + lo) as f64 / 2.0;
    let ng = groups.len() as f64;
    let mut gs: Vec<Group> = groups
        .iter()
        .map(|&(cin, _)| Group { cin, weight: (0..cout * cin * k * k).map(|_| rng.range(-127, 127) as i8).collect(), mult: vec![0; cout] })
        .collect();
    let mut bias = vec![0; cout];
    let mut shift = vec![0; cout];
    for c in 0..cout {
        // Scale of each group so that its contribution has about `target / sqrt(groups)`.
        let scales: Vec<f64> = groups.iter().map(|&(cin, typ)| target / ng.sqrt() / (((cin * k * k) as f64).sqrt() * 73.0 * typ)).collect();
        let smallest = scales.iter().cloned().fold(f64::MAX, f64::min);
        if rng.chance(0.04) {
            // Extreme: multipliers up to 2^31 - 1, shift adjusted so that the output still varies.
            let s = (-(smallest.log2()) + 31.0).ceil().clamp(1.0, 62.0) as u8;
            for (g, grp) in gs.iter_mut().enumerate() {
                let m = (scales[g] * 2f64.powi(s as i32) * (0.5 + rng.unit())).clamp(1.0, i32::MAX as f64);
                grp.mult[c] = m as i32;
            }
            shift[c] = s;
            bias[c] = if rng.chance(0.3) {
                if rng.chance(0.5) {
                    MAX_BIAS
                } else {
                    -MAX_BIAS
                }
            } else {
                (centre * 2f64.powi(s as i32)) as i64
            };
            continue;
        }
        let s = ((-(smallest.log2())).ceil() + 8.0 + rng.range(0, 6) as f64).clamp(1.0, 40.0) as u8;
        for (g, grp) in gs.iter_mut().enumerate() {
            let m = (scales[g] * 2f64.powi(s as i32) * (0.5 + 1.5 * rng.unit())).round().clamp(1.0, i32::MAX as f64) as i32;
            grp.mult[c] = if rng.chance(0.15) { -m } else { m };
        }
        shift[c] = s;
        bias[c] = ((centre + target * (rng.unit() - 0.5)) * 2f64.powi(s as i32)) as i64;
    }
    Conv { cout, k, groups: gs, bias, shift, lo, hi }
}

/// `table` with random steps added, kept monotone and in `lo..=128`: the shape of the standard
/// function (so the network behaves like one) with entries no formula predicts.
fn perturbed_table(rng: &mut Rng, table: &[i16], lo: i16) -> Vec<i16> {
    let mut prev = lo;
    table
        .iter()
        .map(|&v| {
            prev = (v + rng.range(-3, 3) as i16).clamp(prev, 128);
            prev
        })
        .collect()
}

/// A valid random model of `arch` for pixels of `dtype` (deterministic in `seed`), for tests and
/// speed measurements. Weights spread over -127..=127, multipliers chosen so that activations
/// vary and sometimes saturate, randomly perturbed standard tables, a normalisation that maps the type's
/// whole integer-image range onto a little more than the i16 intensity range (so extreme pixels
/// saturate) and a difference of 1/50 of the range onto about 30 error units. Panics if `arch`
/// fails [`check_arch`] (a test's mistake).
pub fn random(arch: &Arch, dtype: DType, seed: u64) -> IntModel {
    check_arch(arch).expect("random(): invalid architecture");
    let mut rng = Rng(seed ^ 0x5eed_1234_abcd_0001);
    let range = dtype.mask() as f64 + 1.0;
    let (in_mult, in_shift) = fixed_point(70000.0 / range * (0.8 + 0.4 * rng.unit()), MAX_NORM_MULT);
    let (err_mult, err_shift) = fixed_point(1500.0 / range * (0.8 + 0.4 * rng.unit()), MAX_NORM_MULT);
    let (out_mult, out_shift) = fixed_point(range / 3000.0 * (0.5 + rng.unit()), MAX_NORM_MULT);
    let offset = (range * (0.4 + 0.2 * rng.unit())) as i64;
    let mut norm = Norm { offset, in_mult, in_shift, err_mult, err_shift, out_mult, out_shift, scale: None };
    let std = Luts::standard();
    let luts = Luts {
        sigmoid: perturbed_table(&mut rng, &std.sigmoid, 0),
        tanh: perturbed_table(&mut rng, &std.tanh, -128),
        tanh_cell: perturbed_table(&mut rng, &std.tanh_cell, -128),
    };
    // Typical magnitudes of the inputs: errors are small and often zero, H spreads over i8,
    // the intensity over i16.
    let (e_typ, h_typ, i_typ) = (20.0, 50.0, 12000.0);
    let mut layers = Vec::new();
    let n = arch.layers.len();
    for l in 0..n {
        let la = arch.layers[l];
        let mut g = vec![(2 * la.a, e_typ), (la.r, h_typ)];
        if l + 1 < n {
            g.push((arch.layers[l + 1].r, h_typ));
        }
        if l == 0 {
            g.push((1, i_typ));
        }
        let mut lstm = random_conv(&mut rng, 4 * la.r, la.k_lstm, &g, -128, 127);
        // Half the forget gates lean open (as trained LSTMs' do), so that cells integrate over
        // frames and reach their limits within a short test sequence.
        for c in la.r..2 * la.r {
            if rng.chance(0.5) && lstm.bias[c].unsigned_abs() < (1u64 << 55) {
                lstm.bias[c] += 60i64 << lstm.shift[c];
            }
        }
        let ahat = random_conv(&mut rng, la.a, la.k_ahat, &[(la.r, h_typ)], if l == 0 { -128 } else { 0 }, 127);
        let a = (l > 0).then(|| random_conv(&mut rng, la.a, la.k_a, &[(2 * arch.layers[l - 1].a, e_typ)], 0, 127));
        layers.push(Layer { lstm, ahat, a });
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
    let meta = Meta {
        size: "random".into(),
        bound: "lossless".into(),
        fingerprint,
        frames: rng.range(1, 1000) as u64,
        steps: rng.range(1, 100000) as u64,
        loss: rng.unit(),
    };
    // Drawn last, so that the models without a scale are the ones this function always made.
    if rng.chance(0.5) {
        norm.scale = Some(Box::new(random_scale(&mut rng, &norm)));
    }
    let m = IntModel { arch: arch.clone(), dtype, norm, luts, layers, meta, causal: None };
    debug_assert_eq!(validate(&m), Ok(()));
    m
}

/// `m` with its noise scale taken away, or a random one given (deterministic in `seed`), so
/// that tests cover both versions of every model they draw.
pub fn toggle_scale(m: &IntModel, seed: u64) -> IntModel {
    let mut t = m.clone();
    t.norm.scale = match &m.norm.scale {
        Some(_) => None,
        None => Some(Box::new(random_scale(&mut Rng(seed ^ 0x5ca1e), &m.norm))),
    };
    t
}

/// A noise scale that wanders (a random walk in the logarithm) between a quarter and four times
/// the model's global multipliers, as the noise of photon counts does over their intensities.
fn random_scale(rng: &mut Rng, norm: &Norm) -> Scale {
    let mut walk = |base: i64| {
        let mut f = 1f64;
        (0..SCALE_BUCKETS)
            .map(|_| {
                f = (f * (1.0 + 0.1 * (rng.unit() - 0.5))).clamp(0.25, 4.0);
                ((base as f64 * f).round() as i64).clamp(1, MAX_NORM_MULT)
            })
            .collect::<Vec<i64>>()
    };
    let err_mult = walk(norm.err_mult);
    let out_mult = walk(norm.out_mult);
    // Non-decreasing steps of 0 to 80 (a random slope), started low enough to reach both ends.
    let mut v = -32768 - rng.range(0, 8000) as i32;
    let stab = (0..=SCALE_BUCKETS)
        .map(|_| {
            v += rng.range(0, 80) as i32;
            v.clamp(-32768, 32767)
        })
        .collect();
    Scale { err_mult, out_mult, stab }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Size;

    fn tiny_arch() -> Arch {
        let l = |a, r, k_lstm, k_ahat, k_a| LayerArch { a, r, k_lstm, k_ahat, k_a };
        Arch { layers: vec![l(1, 2, 1, 3, 3), l(2, 2, 3, 1, 1)] }
    }

    #[test]
    fn file_round_trip() {
        for (i, arch) in [tiny_arch(), Size::Small.arch(), Size::Prednet.arch()].iter().enumerate() {
            for dtype in DType::ALL {
                let m = random(arch, dtype, i as u64 * 31 + dtype.id() as u64);
                assert_eq!(validate(&m), Ok(()));
                let bytes = to_bytes(&m);
                let back = from_bytes(&bytes).unwrap();
                assert_eq!(back, m);
                assert_eq!(to_bytes(&back), bytes, "writing is deterministic");
                assert_eq!(hash(&bytes), hash(&to_bytes(&back)));
            }
        }
    }

    #[test]
    fn file_random_is_deterministic_and_seeded() {
        let a = Size::Small.arch();
        assert_eq!(to_bytes(&random(&a, DType::U16, 7)), to_bytes(&random(&a, DType::U16, 7)));
        assert_ne!(to_bytes(&random(&a, DType::U16, 7)), to_bytes(&random(&a, DType::U16, 8)));
    }

    #[test]
    fn file_refuses_every_truncation() {
        let bytes = to_bytes(&random(&tiny_arch(), DType::U8, 1));
        for n in 0..bytes.len() {
            let e = from_bytes(&bytes[..n]).unwrap_err();
            assert!(matches!(e, ModelFileError::Truncated { .. }), "{n}: {e}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(from_bytes(&long).unwrap_err(), ModelFileError::TrailingBytes(1));
    }

    #[test]
    fn file_refuses_every_bit_flip() {
        let bytes = to_bytes(&random(&tiny_arch(), DType::I16, 2));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let e = from_bytes(&b).expect_err("a flipped bit is detected");
                // The message is never empty.
                assert!(!e.to_string().is_empty());
            }
        }
    }

    /// A file whose header says what the test wants, with correct CRCs: what the reader must
    /// refuse on content alone.
    /// (Version 2 when the header lists the noise scale's two tables after the LUTs.)
    fn file_with(h: &ModelHeader, tensors: &[u8]) -> Vec<u8> {
        let header = postcard::to_allocvec(h).unwrap();
        let mut out = MAGIC.to_vec();
        let scaled = h.tensors.get(3..5) == Some(&[SCALE_BUCKETS as u64 * 8; 2][..]);
        out.extend_from_slice(&(if scaled { 2u16 } else { 1 }).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(tensors);
        out.extend_from_slice(&crc32c::crc32c(tensors).to_le_bytes());
        out
    }

    fn split(bytes: &[u8]) -> (ModelHeader, Vec<u8>) {
        let hlen = le_u32(bytes, 12) as usize;
        let h: ModelHeader = postcard::from_bytes(&bytes[16..16 + hlen]).unwrap();
        (h, bytes[20 + hlen..bytes.len() - 4].to_vec())
    }

    #[test]
    fn file_refuses_huge_claimed_lengths_before_allocating() {
        let bytes = to_bytes(&random(&tiny_arch(), DType::U16, 3));
        let (h, t) = split(&bytes);
        // A tensor of 2^40 elements: refused by its length (and never allocated).
        let mut big = h.clone();
        big.tensors[3] = 1 << 40;
        assert!(matches!(from_bytes(&file_with(&big, &t)).unwrap_err(), ModelFileError::Inconsistent(_)));
        // An architecture of 2^31 channels.
        let mut big = h.clone();
        big.layers[1].r = 1 << 31;
        assert!(matches!(from_bytes(&file_with(&big, &t)).unwrap_err(), ModelFileError::OutOfRange(_)));
        // A header that claims 4 GiB.
        let mut b = bytes.clone();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(from_bytes(&b).unwrap_err(), ModelFileError::HeaderTooLong(_)));
        // A header that claims 1 MiB in a short file.
        b[12..16].copy_from_slice(&(MAX_HEADER as u32).to_le_bytes());
        assert!(matches!(from_bytes(&b).unwrap_err(), ModelFileError::Truncated { .. }));
        // A header whose vector of tensor lengths claims 2^40 entries.
        let mut hb = postcard::to_allocvec(&h).unwrap();
        let n = hb.len();
        // The tensor list is last: replace it by a length prefix of 2^40 and no entries.
        let entries = postcard::to_allocvec(&h.tensors).unwrap();
        hb.truncate(n - entries.len());
        hb.extend_from_slice(&postcard::to_allocvec(&(1u64 << 40)).unwrap());
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&VERSION.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&(hb.len() as u32).to_le_bytes());
        f.extend_from_slice(&hb);
        let crc = crc32c::crc32c(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        assert!(matches!(from_bytes(&f).unwrap_err(), ModelFileError::Header(_)));
    }

    #[test]
    fn file_refuses_overlong_numbers() {
        let bytes = to_bytes(&random(&tiny_arch(), DType::U8, 6));
        // The header starts with the size name's length (one byte); write it in two.
        let mut b = bytes[..16].to_vec();
        b.extend_from_slice(&[bytes[16] | 0x80, 0]);
        b.extend_from_slice(&bytes[17..]);
        let hlen = le_u32(&bytes, 12) + 1;
        b[12..16].copy_from_slice(&hlen.to_le_bytes());
        let b = reseal(&b).unwrap();
        assert!(matches!(from_bytes(&b).unwrap_err(), ModelFileError::Header(m) if m.contains("canonical")));
        assert_eq!(reseal(&bytes).unwrap(), bytes, "resealing a sound file changes nothing");
    }

    #[test]
    fn file_refuses_bad_values() {
        let m = random(&tiny_arch(), DType::U8, 4);
        let bytes = to_bytes(&m);
        let (h, t) = split(&bytes);
        let refuse = |h: &ModelHeader, t: &[u8], want: fn(&ModelFileError) -> bool| {
            let e = from_bytes(&file_with(h, t)).unwrap_err();
            assert!(want(&e), "{e}");
            e
        };
        let range = |e: &ModelFileError| matches!(e, ModelFileError::OutOfRange(_));
        let inconsistent = |e: &ModelFileError| matches!(e, ModelFileError::Inconsistent(_));
        // Header fields.
        let edit = |f: &dyn Fn(&mut ModelHeader)| {
            let mut h2 = h.clone();
            f(&mut h2);
            h2
        };
        refuse(&edit(&|h| h.layers[0].k_lstm = 4), &t, range);
        refuse(&edit(&|h| h.layers[1].k_a = 9), &t, range);
        refuse(&edit(&|h| h.layers[1].r = 0), &t, range);
        refuse(&edit(&|h| h.layers[1].a = 257), &t, range);
        refuse(&edit(&|h| h.layers[0].a = 2), &t, inconsistent);
        refuse(&edit(&|h| h.layers.clear()), &t, range);
        refuse(&edit(&|h| h.layers = vec![h.layers[0].clone(); 5]), &t, range);
        refuse(&edit(&|h| h.layers.truncate(1)), &t, inconsistent);
        refuse(&edit(&|h| h.dtype = 9), &t, |e| matches!(e, ModelFileError::UnknownDType(9)));
        refuse(&edit(&|h| h.bits = 16), &t, inconsistent);
        refuse(&edit(&|h| h.norm.in_shift = 0), &t, range);
        refuse(&edit(&|h| h.norm.err_shift = 63), &t, range);
        refuse(&edit(&|h| h.norm.out_mult = 0), &t, range);
        refuse(&edit(&|h| h.norm.in_mult = (1 << 30) + 1), &t, range);
        refuse(&edit(&|h| h.norm.offset = -1), &t, range);
        refuse(&edit(&|h| h.norm.offset = 1 << 32), &t, range);
        refuse(&edit(&|h| h.tensors[0] += 2), &t, inconsistent);
        refuse(
            &edit(&|h| {
                h.tensors.pop();
            }),
            &t,
            inconsistent,
        );
        // Tensor values: find each tensor's offset from the layout.
        let layout = tensor_layout(&m.arch, Parts::of(&m));
        let offset = |i: usize| layout[..i].iter().map(|s| s.count * s.elem.bytes()).sum::<usize>();
        let find = |name: &str| layout.iter().position(|s| s.name == name).unwrap();
        let poke = |i: usize, at: usize, v: &[u8]| {
            let mut t2 = t.clone();
            let o = offset(i) + at;
            t2[o..o + v.len()].copy_from_slice(v);
            t2
        };
        // Sigmoid table out of range and not monotone.
        refuse(&h, &poke(0, 2 * 255, &129i16.to_le_bytes()), range);
        refuse(&h, &poke(0, 0, &(-1i16).to_le_bytes()), range);
        refuse(&h, &poke(1, 2 * 255, &(-128i16).to_le_bytes()), range);
        refuse(&h, &poke(2, 0, &(-129i16).to_le_bytes()), range);
        // A weight of -128.
        refuse(&h, &poke(find("layer 0 lstm group 1 weights"), 0, &[0x80]), range);
        // Shifts 0 and 63, a bias beyond 2^61.
        refuse(&h, &poke(find("layer 1 a shift"), 0, &[0]), range);
        refuse(&h, &poke(find("layer 0 ahat shift"), 0, &[63]), range);
        refuse(&h, &poke(find("layer 1 lstm bias"), 0, &((1i64 << 61) + 1).to_le_bytes()), range);
        refuse(&h, &poke(find("layer 1 lstm bias"), 0, &(i64::MIN).to_le_bytes()), range);
        // And the extremes that are allowed.
        let ok = poke(find("layer 1 lstm bias"), 0, &(-(1i64 << 61)).to_le_bytes());
        let ok = {
            let mut t2 = ok;
            let o = offset(find("layer 0 lstm group 0 multipliers"));
            t2[o..o + 4].copy_from_slice(&i32::MIN.to_le_bytes());
            t2
        };
        assert!(from_bytes(&file_with(&h, &ok)).is_ok());
        // Fixed fields.
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(from_bytes(&b).unwrap_err(), ModelFileError::BadMagic);
        let mut b = bytes.clone();
        b[8] = VERSION as u8 + 1;
        assert_eq!(from_bytes(&b).unwrap_err(), ModelFileError::UnsupportedVersion(VERSION + 1));
        let mut b = bytes.clone();
        b[8] = 0;
        assert_eq!(from_bytes(&b).unwrap_err(), ModelFileError::UnsupportedVersion(0));
        let mut b = bytes.clone();
        b[10] = 1;
        assert_eq!(from_bytes(&b).unwrap_err(), ModelFileError::Reserved(1));
        assert_eq!(from_bytes(b"NOTAMODELFILE-----------").unwrap_err(), ModelFileError::BadMagic);
    }

    /// A random model with a noise scale (version 2) and the same model without (version 1).
    fn scaled_pair() -> (IntModel, IntModel) {
        let m = (0..64).map(|seed| random(&tiny_arch(), DType::U16, seed)).find(|m| m.norm.scale.is_some()).expect("half the random models have a scale");
        let mut plain = m.clone();
        plain.norm.scale = None;
        (m, plain)
    }

    #[test]
    fn file_version_2_holds_the_noise_scale_and_version_1_stays_as_it_was() {
        let (m, plain) = scaled_pair();
        let (b2, b1) = (to_bytes(&m), to_bytes(&plain));
        assert_eq!((u16::from_le_bytes([b2[8], b2[9]]), u16::from_le_bytes([b1[8], b1[9]])), (2, 1));
        // Three tables more (two of i64, one of i32), and their lengths in the header.
        let varint = |n: usize| postcard::to_allocvec(&(n as u64)).unwrap().len();
        assert_eq!(b2.len(), b1.len() + 2 * SCALE_BUCKETS * 8 + (SCALE_BUCKETS + 1) * 4 + 2 * varint(SCALE_BUCKETS * 8) + varint((SCALE_BUCKETS + 1) * 4));
        assert_eq!(from_bytes(&b2).unwrap(), m);
        assert_eq!(from_bytes(&b1).unwrap(), plain);
        assert!((0..64).any(|seed| random(&tiny_arch(), DType::U16, seed).norm.scale.is_none()), "random() still makes version-1 models");
        // The version number decides how the tensors are read: swapped, both files are refused
        // by their tensor lengths.
        for (b, v) in [(&b2, 1u16), (&b1, 2)] {
            let mut x = b.clone();
            x[8..10].copy_from_slice(&v.to_le_bytes());
            assert!(matches!(from_bytes(&x).unwrap_err(), ModelFileError::HeaderCrc { .. }), "the header's CRC covers the version");
            let x = reseal(&x).unwrap();
            assert!(matches!(from_bytes(&x).unwrap_err(), ModelFileError::Inconsistent(_)), "version {v}");
        }
        // Every entry of both tables in range, tested per table at a bucket in the middle.
        let (h, t) = split(&b2);
        let layout = tensor_layout(&m.arch, Parts { scale: true, causal: false });
        for name in ["noise scale error multipliers", "noise scale correction multipliers"] {
            let i = layout.iter().position(|s| s.name == name).unwrap();
            let o = layout[..i].iter().map(|s| s.count * s.elem.bytes()).sum::<usize>() + 8 * 500;
            for bad in [0i64, -5, MAX_NORM_MULT + 1] {
                let mut t2 = t.clone();
                t2[o..o + 8].copy_from_slice(&bad.to_le_bytes());
                let e = from_bytes(&file_with(&h, &t2)).unwrap_err();
                assert!(matches!(&e, ModelFileError::OutOfRange(msg) if msg.contains("noise scale") && msg.contains("500")), "{e}");
            }
        }
        // The stabilised intensity: in i16, non-decreasing.
        let i = layout.iter().position(|s| s.name == "noise scale stabilised intensity").unwrap();
        let o = layout[..i].iter().map(|s| s.count * s.elem.bytes()).sum::<usize>();
        let st = &m.norm.scale.as_ref().unwrap().stab;
        for (at, bad, what) in [(700, st[699] - 1, "decreases at entry 700"), (0, -40000, "entry 0 is -40000"), (1024, 40000, "1024 is 40000")] {
            let mut t2 = t.clone();
            t2[o + 4 * at..o + 4 * at + 4].copy_from_slice(&bad.to_le_bytes());
            let e = from_bytes(&file_with(&h, &t2)).unwrap_err();
            assert!(matches!(&e, ModelFileError::OutOfRange(msg) if msg.contains("stabilised") && msg.contains(what.split(' ').next_back().unwrap())), "{e}");
        }
        let mut short = m.clone();
        short.norm.scale.as_mut().unwrap().stab.pop();
        assert!(matches!(validate(&short), Err(ModelFileError::Inconsistent(_))));
        let mut short = m.clone();
        short.norm.scale.as_mut().unwrap().out_mult.pop();
        assert!(matches!(validate(&short), Err(ModelFileError::Inconsistent(_))));
    }

    #[test]
    fn the_noise_scale_maps_each_bucket_with_its_own_multipliers() {
        let (m, plain) = scaled_pair();
        let n = &m.norm;
        let sc = n.scale.as_ref().unwrap();
        let mask = DType::U16.mask();
        let mut seen = std::collections::HashSet::new();
        for b in (0..=mask).step_by(97) {
            let k = Norm::bucket(n.intensity(b));
            seen.insert(k);
            for d in [-3000i64, -7, 0, 1, 250] {
                assert_eq!(n.error(d, b), rshr(d * sc.err_mult[k], n.err_shift).clamp(-128, 127) as i32);
            }
            for u in [-128, -1, 0, 5, 127] {
                assert_eq!(n.corrected(b, u, mask), (b as i64 + rshr(u as i64 * sc.out_mult[k], n.out_shift)).clamp(0, mask as i64) as u32);
                assert_eq!(plain.norm.correction(u, b), rshr(u as i64 * n.out_mult, n.out_shift), "no scale: the global multiplier");
            }
        }
        assert!(seen.len() > 100, "the pixel range spreads over many buckets ({})", seen.len());
        // The network's intensity: the stabilised one, interpolated inside each bucket, never
        // decreasing with the pixel value; without a scale, I(v).
        let mut last = i32::MIN;
        for b in (0..=mask).step_by(7) {
            let i = n.intensity(b);
            let (k, j) = (Norm::bucket(i), ((i + 32768) & 63) as i64);
            let want = sc.stab[k] as i64 + rshr(j * (sc.stab[k + 1] - sc.stab[k]) as i64, 6);
            assert_eq!(n.net_intensity(b) as i64, want);
            assert!(n.net_intensity(b) >= last);
            last = n.net_intensity(b);
            assert_eq!(plain.norm.net_intensity(b), i);
        }
    }

    #[test]
    fn file_validate_refuses_inconsistent_models() {
        let m = random(&tiny_arch(), DType::U8, 5);
        let mut bad = m.clone();
        bad.layers[0].lstm.groups.pop();
        assert!(matches!(validate(&bad), Err(ModelFileError::Inconsistent(_))));
        let mut bad = m.clone();
        bad.layers[1].lstm.groups[0].cin = 3;
        assert!(matches!(validate(&bad), Err(ModelFileError::Inconsistent(_))));
        let mut bad = m.clone();
        bad.layers[1].ahat.lo = -128;
        assert!(matches!(validate(&bad), Err(ModelFileError::Inconsistent(_))));
        let mut bad = m.clone();
        bad.layers[1].a = None;
        assert!(matches!(validate(&bad), Err(ModelFileError::Inconsistent(_))));
        let mut bad = m.clone();
        bad.layers[0].a = bad.layers[1].a.clone();
        assert!(matches!(validate(&bad), Err(ModelFileError::Inconsistent(_))));
        let mut bad = m;
        bad.layers.pop();
        assert!(matches!(validate(&bad), Err(ModelFileError::Inconsistent(_))));
    }
}
