//! The blob container (format versions 1 to 6, see `docs/FORMAT.md`): one window of files, self-
//! describing, every byte covered by a CRC32C.
//!
//! ```text
//! magic "TZIPBLOB" | u16 version | u16 reserved | u32 header_len | header | u32 crc32c(header) | payload
//! ```
//! The header lists the entries; each entry points at its sections in the payload, and each
//! section carries its own CRC32C, so a flipped bit anywhere is found and named by entry.

use super::dtype::DType;
use super::entropy::Stage;
use super::predict::PredictorId;
use super::quantizer::{Bound, FrameBound};
use std::ops::Range;

pub const MAGIC: &[u8; 8] = b"TZIPBLOB";
/// Newest version this build reads and writes. A blob is written in the oldest version that can
/// hold it: 3 only when a frame has motion vectors, 4 only when vectors carry block modes, 5
/// only for sub-pixel motion or carried adaptive models, 6 only when a learned model corrects
/// the reference, so other blobs stay readable by builds that know an older version.
pub const VERSION: u16 = 6;
const PREAMBLE: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("not a tezipfs blob (bad magic)")]
    BadMagic,
    #[error("blob format version {0} is not supported by this build (supports 1 to {VERSION})")]
    Version(u16),
    #[error("blob is truncated")]
    Truncated,
    #[error("blob header is corrupt (CRC mismatch)")]
    HeaderCrc,
    #[error("blob header is malformed: {0}")]
    Malformed(String),
    #[error("entry {entry}: {what} section is corrupt (CRC mismatch)")]
    SectionCrc { entry: usize, what: &'static str },
    #[error("entry {entry}: cannot decode: {why}")]
    Decode { entry: usize, why: String },
    #[error("entry {entry}: decoded bytes do not match the stored checksum")]
    FrameCrc { entry: usize },
    #[error("entry {entry} does not exist (blob holds {len})")]
    NoEntry { entry: usize, len: usize },
}

/// A byte range of the payload with its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Section {
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// The geometry and coding parameters shared by the frames of a blob.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub dtype: DType,
    pub width: u32,
    pub height: u32,
    pub predictor: PredictorId,
    /// Hash of the learned model used (all zeros: none).
    pub model: [u8; 32],
    /// Coefficients of the predictor (`linear`: weights and constant; empty otherwise).
    /// Version 2 and later.
    pub coefs: Vec<i32>,
    /// The bound as the policy stated it (per-frame bounds are in the entries).
    pub bound: Bound,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FrameEntry {
    pub big_endian: bool,
    /// Intra-coded (first frame of the chain).
    pub key: bool,
    pub bound: FrameBound,
    /// Pixel byte ranges of the file, in pixel order.
    pub ranges: Vec<Range<usize>>,
    pub stage: Stage,
    pub skeleton: Section,
    pub codes: Section,
    pub escapes: Section,
    pub n_escapes: u32,
    /// zstd-compressed motion vectors (`motion` predictor; empty: no motion). Version 3.
    pub motion: Section,
    /// The vectors carry a mode byte per block (reference frame, temporal MED correction):
    /// three bytes a block, not two. Version 4.
    pub block_modes: bool,
    /// The block modes may carry a sub-pixel phase (half-pixel motion). Version 5; needs
    /// `block_modes`.
    pub subpel: bool,
    /// The adaptive stage continues the models of the previous frame of the chain (see
    /// `entropy::adaptive::Side::carry`). Version 5; needs stage 5 on a frame that is not the key.
    pub carry: bool,
    /// The adaptive stage's temporal context is the previous frame's codes moved by this frame's
    /// vectors, mixed with the gradient of the moved prediction (`motion` predictors). Version 5;
    /// needs stage 5 on a frame that is not the key.
    pub moved_context: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Frame(FrameEntry),
    /// Whole file, zstd-compressed (`compressed`) or as is.
    Opaque {
        compressed: bool,
        data: Section,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub original_len: u64,
    /// CRC32C of the original bytes (lossless, opaque) or of the reconstructed bytes (lossy).
    pub crc: u32,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// `None` when the blob holds only opaque entries.
    pub params: Option<Params>,
    pub entries: Vec<Entry>,
}

/// Builds a blob: sections are appended to the payload as they are produced.
#[derive(Default)]
pub struct Writer {
    payload: Vec<u8>,
}

impl Writer {
    pub fn section(&mut self, bytes: &[u8]) -> Section {
        let s = Section { offset: self.payload.len() as u64, len: bytes.len() as u64, crc: crc32c::crc32c(bytes) };
        self.payload.extend_from_slice(bytes);
        s
    }

    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    pub fn finish(self, header: &Header) -> Vec<u8> {
        let version = if header.params.as_ref().is_some_and(uses_model) {
            6
        } else if needs_v5(&header.entries) {
            5
        } else if has_block_modes(&header.entries) {
            4
        } else if has_motion(&header.entries) {
            3
        } else {
            2
        };
        let mut h = Vec::new();
        write_header(header, version, &mut h);
        let mut out = Vec::with_capacity(PREAMBLE + h.len() + 4 + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&crc32c::crc32c(&h).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// A parsed blob borrowing its bytes.
pub struct Blob<'a> {
    pub header: Header,
    payload: &'a [u8],
}

impl<'a> Blob<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Blob<'a>, BlobError> {
        if bytes.len() < PREAMBLE {
            return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) { BlobError::Truncated } else { BlobError::BadMagic });
        }
        if &bytes[..8] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if !(1..=VERSION).contains(&version) {
            return Err(BlobError::Version(version));
        }
        if bytes[10..12] != [0, 0] {
            return Err(BlobError::HeaderCrc);
        }
        let hlen = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let hend = PREAMBLE.checked_add(hlen).ok_or(BlobError::Truncated)?;
        if bytes.len() < hend + 4 {
            return Err(BlobError::Truncated);
        }
        let h = &bytes[PREAMBLE..hend];
        let crc = u32::from_le_bytes([bytes[hend], bytes[hend + 1], bytes[hend + 2], bytes[hend + 3]]);
        if crc32c::crc32c(h) != crc {
            return Err(BlobError::HeaderCrc);
        }
        let header = read_header(h, version)?;
        let payload = &bytes[hend + 4..];
        let end = header
            .entries
            .iter()
            .flat_map(|e| match &e.body {
                Body::Frame(f) => vec![f.skeleton, f.codes, f.escapes, f.motion],
                Body::Opaque { data, .. } => vec![*data],
            })
            .map(|s| s.offset.saturating_add(s.len))
            .max()
            .unwrap_or(0);
        if end != payload.len() as u64 {
            return Err(if end > payload.len() as u64 {
                BlobError::Truncated
            } else {
                BlobError::Malformed(format!("{} trailing bytes after the last section", payload.len() as u64 - end))
            });
        }
        Ok(Blob { header, payload })
    }

    /// The bytes of a section, after checking its CRC.
    pub fn section(&self, entry: usize, what: &'static str, s: Section) -> Result<&'a [u8], BlobError> {
        section_of(self.payload, entry, what, s)
    }

    /// Where the payload starts in the blob's bytes.
    pub fn payload_offset(&self, bytes: &[u8]) -> usize {
        bytes.len() - self.payload.len()
    }

    pub fn entry(&self, i: usize) -> Result<&Entry, BlobError> {
        self.header.entries.get(i).ok_or(BlobError::NoEntry { entry: i, len: self.header.entries.len() })
    }
}

/// The bytes of section `s` of `payload`, after checking its CRC.
pub fn section_of<'p>(payload: &'p [u8], entry: usize, what: &'static str, s: Section) -> Result<&'p [u8], BlobError> {
    let start = usize::try_from(s.offset).map_err(|_| BlobError::Truncated)?;
    let end = start.checked_add(usize::try_from(s.len).map_err(|_| BlobError::Truncated)?).ok_or(BlobError::Truncated)?;
    let bytes = payload.get(start..end).ok_or(BlobError::Truncated)?;
    if crc32c::crc32c(bytes) != s.crc {
        return Err(BlobError::SectionCrc { entry, what });
    }
    Ok(bytes)
}

/// `bytes` with every checksum of the blob recomputed: the header's and (when the header parses)
/// each section's. For fuzzing and damage tests: a mutated blob then reaches the parser's checks
/// and the decoder behind the CRCs. `None` when `bytes` do not start like a blob whose header fits.
/// (The entries' checksums of the decoded bytes stay as they are: only decoding can check them.)
pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < PREAMBLE || &bytes[..8] != MAGIC {
        return None;
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let hlen = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let hend = PREAMBLE.checked_add(hlen).filter(|&e| e + 4 <= bytes.len())?;
    let mut out = bytes.to_vec();
    out[hend..hend + 4].copy_from_slice(&crc32c::crc32c(&bytes[PREAMBLE..hend]).to_le_bytes());
    // Version 1 headers have no coefficient count, which `write_header` always writes.
    let mut header = match read_header(&bytes[PREAMBLE..hend], version) {
        Ok(h) if version >= 2 => h,
        _ => return Some(out),
    };
    let payload = &bytes[hend + 4..];
    let fix = |s: &mut Section| {
        let range = usize::try_from(s.offset).ok().zip(usize::try_from(s.len).ok()).and_then(|(o, l)| payload.get(o..o.checked_add(l)?));
        if let Some(b) = range {
            s.crc = crc32c::crc32c(b);
        }
    };
    for e in &mut header.entries {
        match &mut e.body {
            Body::Frame(f) => [&mut f.skeleton, &mut f.codes, &mut f.escapes, &mut f.motion].into_iter().for_each(fix),
            Body::Opaque { data, .. } => fix(data),
        }
    }
    let mut h = Vec::with_capacity(hlen);
    write_header(&header, version, &mut h);
    if h.len() != hlen {
        return Some(out);
    }
    out[PREAMBLE..hend].copy_from_slice(&h);
    out[hend..hend + 4].copy_from_slice(&crc32c::crc32c(&h).to_le_bytes());
    Some(out)
}

/// Whether a learned model corrects the frames' reference (what version 6 is for).
fn uses_model(p: &Params) -> bool {
    p.model != [0; 32]
}

/// Whether some frame has motion vectors (what version 3 is for).
fn has_motion(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.motion.len > 0))
}

/// Whether some frame's block modes carry sub-pixel phases, or some frame continues the
/// adaptive models of the frame before (what version 5 is for).
fn needs_v5(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if (f.subpel && f.block_modes) || f.carry || f.moved_context))
}

/// Whether some frame's motion vectors carry block modes (what version 4 is for).
fn has_block_modes(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.block_modes))
}

// ---- header encoding -------------------------------------------------------------------------

fn put_section(out: &mut Vec<u8>, s: Section) {
    out.extend_from_slice(&s.offset.to_le_bytes());
    out.extend_from_slice(&s.len.to_le_bytes());
    out.extend_from_slice(&s.crc.to_le_bytes());
}

fn write_header(h: &Header, version: u16, out: &mut Vec<u8>) {
    match &h.params {
        None => out.push(0),
        Some(p) => {
            out.push(p.dtype.id());
            out.extend_from_slice(&p.width.to_le_bytes());
            out.extend_from_slice(&p.height.to_le_bytes());
            out.push(p.predictor as u8);
            out.extend_from_slice(&p.model);
            out.push(p.coefs.len() as u8);
            for c in &p.coefs {
                out.extend_from_slice(&c.to_le_bytes());
            }
            out.push(p.bound.kind_id());
            out.extend_from_slice(&p.bound.param().to_le_bytes());
        }
    }
    out.extend_from_slice(&(h.entries.len() as u32).to_le_bytes());
    for e in &h.entries {
        match &e.body {
            Body::Frame(_) => out.push(0),
            Body::Opaque { compressed: true, .. } => out.push(1),
            Body::Opaque { compressed: false, .. } => out.push(2),
        }
        out.extend_from_slice(&e.original_len.to_le_bytes());
        out.extend_from_slice(&e.crc.to_le_bytes());
        match &e.body {
            Body::Opaque { data, .. } => put_section(out, *data),
            Body::Frame(f) => {
                out.push(f.big_endian as u8);
                out.push(f.key as u8);
                let (kind, v) = f.bound.to_parts();
                out.push(kind);
                out.extend_from_slice(&v.to_le_bytes());
                out.extend_from_slice(&(f.ranges.len() as u32).to_le_bytes());
                for r in &f.ranges {
                    out.extend_from_slice(&(r.start as u64).to_le_bytes());
                    out.extend_from_slice(&(r.len() as u64).to_le_bytes());
                }
                out.push(f.stage as u8);
                put_section(out, f.skeleton);
                put_section(out, f.codes);
                put_section(out, f.escapes);
                out.extend_from_slice(&f.n_escapes.to_le_bytes());
                if version >= 3 {
                    put_section(out, f.motion);
                }
                if version >= 4 {
                    // Version 5: bit 1 says the modes carry phases (only with bit 0), bit 2
                    // that the adaptive models carry over, bit 3 that its temporal context moves.
                    out.push(f.block_modes as u8 | ((f.subpel && f.block_modes) as u8 * 2) | (f.carry as u8 * 4) | (f.moved_context as u8 * 8));
                }
            }
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], BlobError> {
        let s = self.b.get(self.pos..self.pos + n).ok_or_else(|| BlobError::Malformed("header ends early".into()))?;
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, BlobError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, BlobError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, BlobError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn f64(&mut self) -> Result<f64, BlobError> {
        Ok(f64::from_bits(self.u64()?))
    }
    fn section(&mut self) -> Result<Section, BlobError> {
        Ok(Section { offset: self.u64()?, len: self.u64()?, crc: self.u32()? })
    }
}

fn bad(s: impl Into<String>) -> BlobError {
    BlobError::Malformed(s.into())
}

fn read_header(h: &[u8], version: u16) -> Result<Header, BlobError> {
    let mut c = Cursor { b: h, pos: 0 };
    let dtype_id = c.u8()?;
    let params = if dtype_id == 0 {
        None
    } else {
        let dtype = DType::from_id(dtype_id).ok_or_else(|| bad(format!("unknown pixel type {dtype_id}")))?;
        let width = c.u32()?;
        let height = c.u32()?;
        let pid = c.u8()?;
        let predictor = PredictorId::from_id(pid).ok_or_else(|| bad(format!("unknown predictor {pid}")))?;
        let model: [u8; 32] = c.take(32)?.try_into().expect("32 bytes");
        let mut coefs = Vec::new();
        if version >= 2 {
            for _ in 0..c.u8()? {
                coefs.push(c.u32()? as i32);
            }
        }
        if predictor == PredictorId::Linear && !super::predict::linear::valid(&coefs) {
            return Err(bad("bad linear predictor coefficients"));
        }
        if model != [0; 32] && (version < 6 || !predictor.takes_model()) {
            return Err(bad(format!("a learned model on predictor {predictor} in a version {version} blob")));
        }
        let (kind, v) = (c.u8()?, c.f64()?);
        let bound = Bound::from_parts(kind, v).ok_or_else(|| bad("bad bound"))?;
        if width == 0 || height == 0 {
            return Err(bad("empty geometry"));
        }
        // Before anything is sized by it (docs/FORMAT.md, Limits).
        super::format::check_geometry(width as u64, height as u64).map_err(bad)?;
        Some(Params { dtype, width, height, predictor, model, coefs, bound })
    };
    let n = c.u32()? as usize;
    // At least 33 bytes an entry (an opaque one): a count the header cannot hold sizes nothing.
    if n > h.len() / 33 {
        return Err(bad(format!("{n} entries in a {}-byte header", h.len())));
    }
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let kind = c.u8()?;
        let original_len = c.u64()?;
        let crc = c.u32()?;
        let body = match kind {
            1 | 2 => Body::Opaque { compressed: kind == 1, data: c.section()? },
            0 => {
                let p = params.as_ref().ok_or_else(|| bad("frame entry in a blob without frame parameters"))?;
                let big_endian = c.u8()? != 0;
                let key = c.u8()? != 0;
                let (bk, bv) = (c.u8()?, c.f64()?);
                let bound = FrameBound::from_parts(bk, bv).ok_or_else(|| bad(format!("entry {i}: bad bound")))?;
                let nr = c.u32()? as usize;
                // 16 bytes a range: a count the header cannot hold sizes nothing.
                if nr > h.len() / 16 {
                    return Err(bad(format!("entry {i}: {nr} pixel ranges")));
                }
                let mut ranges = Vec::with_capacity(nr);
                let mut total = 0u64;
                for _ in 0..nr {
                    let (start, len) = (c.u64()?, c.u64()?);
                    let end = start.checked_add(len).filter(|&e| e <= original_len).ok_or_else(|| bad(format!("entry {i}: pixel range outside the file")))?;
                    // Each range lies in the file, but their sum may still overflow.
                    total = total.checked_add(len).ok_or_else(|| bad(format!("entry {i}: pixel ranges hold more than 2^64 bytes")))?;
                    ranges.push(start as usize..end as usize);
                }
                let want = p.width as u64 * p.height as u64 * p.dtype.bytes() as u64;
                if total != want {
                    return Err(bad(format!("entry {i}: pixel ranges hold {total} bytes, frame needs {want}")));
                }
                let sid = c.u8()?;
                let stage = Stage::from_id(sid).ok_or_else(|| bad(format!("entry {i}: unknown entropy stage {sid}")))?;
                let skeleton = c.section()?;
                let codes = c.section()?;
                let escapes = c.section()?;
                let n_escapes = c.u32()?;
                if n_escapes as u64 > p.width as u64 * p.height as u64 {
                    return Err(bad(format!("entry {i}: {n_escapes} escapes")));
                }
                let motion = if version >= 3 { c.section()? } else { Section::default() };
                let flags = if version >= 4 { c.u8()? } else { 0 };
                let known = if version >= 5 { 15 } else { 1 };
                let (block_modes, subpel, carry, moved_context) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, flags & 8 != 0);
                if flags & !known != 0 || (block_modes && motion.len == 0) || (subpel && !block_modes) {
                    return Err(bad(format!("entry {i}: motion block-mode flag {flags} (vectors: {} bytes)", motion.len)));
                }
                if (carry || moved_context) && (key || stage != Stage::Adaptive) {
                    let to = if key { "a key frame".to_string() } else { format!("a frame of entropy stage {}", stage as u8) };
                    return Err(bad(format!("entry {i}: adaptive models carried over or a moved context on {to}")));
                }
                Body::Frame(FrameEntry {
                    big_endian,
                    key,
                    bound,
                    ranges,
                    stage,
                    skeleton,
                    codes,
                    escapes,
                    n_escapes,
                    motion,
                    block_modes,
                    subpel,
                    carry,
                    moved_context,
                })
            }
            k => return Err(bad(format!("entry {i}: unknown kind {k}"))),
        };
        entries.push(Entry { original_len, crc, body });
    }
    if c.pos != h.len() {
        return Err(bad("trailing bytes in header"));
    }
    // Each version is written only for what it adds (3: motion vectors, 4: block modes, 5:
    // sub-pixel phases or carried adaptive models): a blob that does not use it is damaged (a
    // flipped version bit would otherwise go unnoticed).
    let used = match version {
        3 => has_motion(&entries),
        4 => has_block_modes(&entries),
        5 => needs_v5(&entries),
        6 => params.as_ref().is_some_and(uses_model),
        _ => true,
    };
    if !used {
        return Err(bad(format!(
            "version {version} blob without {}",
            ["motion vectors", "motion block modes", "sub-pixel motion or carried adaptive models", "a learned model"][version as usize - 3]
        )));
    }
    Ok(Header { params, entries })
}
