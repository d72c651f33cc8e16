//! The blob container (format versions 1 to 14, see `docs/FORMAT.md`): one window of files, self-
//! describing, every byte covered by a CRC32C. Version 7 cuts large frames into horizontal
//! slices, each coded as a blob of its own (version 2 to 6, 8 or 9) inside the outer one
//! (`codec::slices`). Version 8 is version 6 with frames of entropy stage 6 (counts) or frames
//! whose adaptive stage weighs the intensity of their reference; version 9 is version 8 whose
//! `linear` predictor uses the wide tap set; version 10 is version 9 whose predictor is `causal`
//! (predictor id 8, a model's causal stage); version 11 is version 10 whose frames of the
//! adaptive stage may be coded in row slices (frame flag bit 5); version 12 is version 11 with
//! frames of entropy stage 7 (the tree stage, lossless); version 13 is version 12 whose frames of
//! stage 7 on 8-bit pixels may take the prediction's exact value as a level (frame flag bit 6)
//! and whose frames under an error bound may be of stage 7. Version 14 is version 13 whose header
//! is stored compressed (zstd; on nearly empty frames, photon counts at a tenth of a photon a
//! pixel, the 130 bytes of a frame's header entry are as large as its codes).
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
/// the reference, 7 only when the frames are cut into slices, 8 only when a frame's counts are
/// coded as counts (entropy stage 6) or a frame's adaptive stage weighs the intensity of its
/// reference, 9 only when `linear` uses its wide tap set, 10 only for the `causal` predictor (a
/// model's causal stage), 11 only when a frame's adaptive stage is cut into row slices, 12 only
/// when a frame is coded by the tree stage, 13 only when a tree frame's prediction levels are
/// exact or a frame under a bound is coded by the tree stage, 14 only when its compressed header
/// saves at least [`COMPACT_HEADER_GAIN`] of the blob, so other blobs stay readable by builds
/// that know an older version.
pub const VERSION: u16 = 14;
/// The part of a blob its header must shrink by, compressed, for the blob to be written in
/// version 14 (elsewhere the header is a fraction of a percent of the blob: kept readable by
/// older builds).
pub const COMPACT_HEADER_GAIN: f64 = 0.005;
/// The largest header a version-14 blob may decompress to (a window of 4096 frames takes about
/// 0.5 MiB); with [`super::entropy::ZSTD_MAX_EXPANSION`], what a reader allocates before it has
/// decompressed anything.
const MAX_PLAIN_HEADER: usize = 64 << 20;
/// zstd level of a version-14 header.
const HEADER_LEVEL: i32 = 9;
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
    /// The adaptive stage's second context weighs the local intensity of the frame's reference
    /// (`entropy::adaptive::Side::intensity`). Version 8; needs stage 5 on a frame that is not
    /// the key.
    pub intensity: bool,
    /// The adaptive stage cuts the frame into row slices, each a stream of its own
    /// (`entropy::adaptive::Side::sliced`). Version 11; needs stage 5.
    pub sliced: bool,
    /// The tree stage's prediction levels are the prediction's exact value
    /// (`entropy::tree::exact_levels`). Version 13; needs stage 7 and pixels of at most 8 bits.
    pub exact_levels: bool,
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
    /// Version 7: the frames are cut into horizontal slices, each coded as a blob of its own.
    /// Its frame entries then hold only what belongs to the whole file (byte order, bound, pixel
    /// ranges, skeleton); their codes, escapes and motion sections are empty, `stage` and `key`
    /// are those of the first slice and `n_escapes` the sum over the slices, and `params` holds
    /// the predictor of the first slice and the model the slices use.
    pub slices: Option<Slicing>,
}

/// How the frames of a version-7 blob are cut (`docs/FORMAT.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct Slicing {
    /// Rows of every slice but the last, which holds the rest (`ceil(height / rows)` slices).
    pub rows: u32,
    /// Each slice's blob: a section of the payload.
    pub blobs: Vec<Section>,
    /// Each slice blob's header (filled by [`Blob::parse`]; empty as [`Header`] is written).
    pub headers: Vec<Header>,
}

impl Slicing {
    /// Rows of slice `s` of a frame of `height` rows.
    pub fn rows_of(&self, s: usize, height: u32) -> u32 {
        let start = self.rows.saturating_mul(s as u32);
        self.rows.min(height.saturating_sub(start))
    }
}

/// The number of slices of `rows` rows a frame of `height` rows is cut into.
pub fn slice_count(height: u32, rows: u32) -> usize {
    height.div_ceil(rows.max(1)) as usize
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

    /// (With a plain header: version 13 or older, as [`Writer::finish_up_to`] with 13.)
    pub fn finish(self, header: &Header) -> Vec<u8> {
        self.finish_up_to(header, 13)
    }

    /// [`Writer::finish`] in a version of at most `newest`: 14 (a compressed header, where that
    /// saves [`COMPACT_HEADER_GAIN`] of the blob) only where `newest` allows it.
    pub fn finish_up_to(self, header: &Header, newest: u16) -> Vec<u8> {
        let version = if header.slices.is_some() {
            7
        } else if needs_v13(&header.entries) {
            13
        } else if needs_v12(&header.entries) {
            12
        } else if needs_v11(&header.entries) {
            11
        } else if header.params.as_ref().is_some_and(needs_v10) {
            10
        } else if header.params.as_ref().is_some_and(needs_v9) {
            9
        } else if needs_v8(&header.entries) {
            8
        } else if header.params.as_ref().is_some_and(uses_model) {
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
        // (A version-14 header is a version-13 one, compressed: written again as such.)
        let compact = (version != 7 && newest >= 14).then(|| {
            let mut plain = Vec::new();
            write_header(header, 14, &mut plain);
            compact_header(&plain, h.len(), self.payload.len())
        });
        let (version, h) = match compact.flatten() {
            Some(c) => (14, c),
            None => (version, h),
        };
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

/// `h`, a version-13 header, as a version-14 header (u32 length of `h` | zstd frame of `h`), where
/// that saves [`COMPACT_HEADER_GAIN`] of a blob whose header would otherwise be `plain` bytes
/// (in the oldest version that holds it) and whose payload is `payload` bytes.
fn compact_header(h: &[u8], plain: usize, payload: usize) -> Option<Vec<u8>> {
    let total = (plain + payload) as f64;
    // (Not compressed where it could not save enough even if it vanished.)
    if (plain as f64) < total * COMPACT_HEADER_GAIN || h.len() > MAX_PLAIN_HEADER {
        return None;
    }
    let out = stored_header(h)?;
    ((plain.saturating_sub(out.len())) as f64 >= total * COMPACT_HEADER_GAIN).then_some(out)
}

/// The stored form of a version-14 header whose plain form is `h`: u32 length of `h`, then
/// the zstd frame of `h` (inverse of [`plain_header`]).
fn stored_header(h: &[u8]) -> Option<Vec<u8>> {
    let z = zstd::bulk::compress(h, HEADER_LEVEL).ok()?;
    let mut out = Vec::with_capacity(4 + z.len());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&z);
    Some(out)
}

/// The version and the stored header's length a blob's first bytes give (`None` where they are
/// not a blob's preamble).
fn preamble(bytes: &[u8]) -> Option<(u16, usize)> {
    if bytes.len() < PREAMBLE || &bytes[..8] != MAGIC {
        return None;
    }
    Some((u16::from_le_bytes([bytes[8], bytes[9]]), u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize))
}

/// The plain header of a version-14 blob from its stored form ([`compact_header`]): its length
/// is checked against what the stored bytes can give and against the zstd frame's own record
/// before anything is allocated for it.
fn plain_header(stored: &[u8]) -> Result<Vec<u8>, BlobError> {
    let bad = |w: &str| BlobError::Malformed(format!("a version-14 header {w}"));
    let (len, z) = stored.split_first_chunk::<4>().ok_or_else(|| bad("without its length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_PLAIN_HEADER || len > z.len().saturating_mul(super::entropy::ZSTD_MAX_EXPANSION) {
        return Err(bad(&format!("that claims {len} bytes from {}", z.len())));
    }
    if zstd::zstd_safe::get_frame_content_size(z).ok().flatten() != Some(len as u64) {
        return Err(bad("whose zstd frame does not record its length"));
    }
    let h = zstd::bulk::decompress(z, len).map_err(|e| bad(&format!("that does not decompress ({e})")))?;
    if h.len() != len {
        return Err(bad("shorter than it claims"));
    }
    Ok(h)
}

/// The predictor id and the learned model's hash a blob's header names, from the blob's first
/// bytes `prefix` (at least its header, which sits before the payload), without parsing the
/// rest: `None` where the prefix does not hold them (no frames, too short, a version-14 header
/// that does not decompress). For a quick look (the `user.tezip.predictor` attribute); what
/// decodes is [`Blob::parse`]'s.
pub fn peek_predictor(prefix: &[u8]) -> Option<(u8, [u8; 32])> {
    let (version, hlen) = preamble(prefix)?;
    let plain;
    let h = if version == 14 {
        plain = plain_header(prefix.get(PREAMBLE..PREAMBLE.checked_add(hlen)?)?).ok()?;
        &plain[..]
    } else {
        &prefix[PREAMBLE..]
    };
    // (dtype id, 0 without frames; u32 width, u32 height; u8 predictor; 32 bytes of model.)
    if h.len() < 42 || h[0] == 0 {
        return None;
    }
    Some((h[9], h[10..42].try_into().ok()?))
}

/// How many of a blob's first bytes [`peek_predictor`] needs, from its first [`PREAMBLE`] bytes
/// (`None` where they are not a blob's, or where a version-14 header claims more than any
/// header may take): the stored header of version 14, which is compressed whole, and the
/// header's first 42 bytes otherwise.
pub fn peek_len(first: &[u8]) -> Option<usize> {
    match preamble(first)? {
        (14, hlen) => (hlen <= MAX_PLAIN_HEADER).then_some(PREAMBLE + hlen),
        _ => Some(PREAMBLE + 42),
    }
}

/// [`peek_predictor`] of the blob `r` reads from its start: only the bytes it needs are read
/// ([`peek_len`]), however long the header; `Ok(None)` where they do not name a predictor.
pub fn read_predictor(r: &mut impl std::io::Read) -> std::io::Result<Option<(u8, [u8; 32])>> {
    use std::io::Read;
    let mut prefix = Vec::with_capacity(PREAMBLE);
    r.by_ref().take(PREAMBLE as u64).read_to_end(&mut prefix)?;
    let Some(want) = peek_len(&prefix) else {
        return Ok(None);
    };
    r.take((want - PREAMBLE) as u64).read_to_end(&mut prefix)?;
    Ok(peek_predictor(&prefix))
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
        let plain;
        let h = if version == 14 {
            plain = plain_header(h)?;
            &plain[..]
        } else {
            h
        };
        let mut header = read_header(h, version)?;
        let payload = &bytes[hend + 4..];
        let end = sections(&header).map(|s| s.offset.saturating_add(s.len)).max().unwrap_or(0);
        if end != payload.len() as u64 {
            return Err(if end > payload.len() as u64 {
                BlobError::Truncated
            } else {
                BlobError::Malformed(format!("{} trailing bytes after the last section", payload.len() as u64 - end))
            });
        }
        if header.slices.is_some() {
            parse_slices(&mut header, payload)?;
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

/// Every section of a header (a version-7 header's slice blobs included).
fn sections(h: &Header) -> impl Iterator<Item = Section> + '_ {
    let entries = h.entries.iter().flat_map(|e| match &e.body {
        Body::Frame(f) => vec![f.skeleton, f.codes, f.escapes, f.motion],
        Body::Opaque { data, .. } => vec![*data],
    });
    entries.chain(h.slices.iter().flat_map(|s| s.blobs.iter().copied()))
}

/// The bytes of `s` in `payload`, unchecked (`None`: outside it).
fn section_bytes(payload: &[u8], s: Section) -> Option<&[u8]> {
    let start = usize::try_from(s.offset).ok()?;
    payload.get(start..start.checked_add(usize::try_from(s.len).ok()?)?)
}

/// Parse the slice blobs of a version-7 header (their headers only: each slice blob's sections
/// are checked as it is decoded, the outer section's CRC by [`section_of`] where wanted) and check
/// that they fit the outer header: versions 2 to 6, 8 or 9 (slices do not nest), the outer pixel type and
/// width, the slice's rows, one frame entry per outer frame entry under the same bound, one
/// learned model at most. Fills what the outer frame entries and parameters take from the slices.
fn parse_slices(header: &mut Header, payload: &[u8]) -> Result<(), BlobError> {
    let slicing = header.slices.as_mut().expect("a version-7 header");
    let p = header.params.as_mut().ok_or_else(|| bad("a sliced blob without frame parameters"))?;
    let frames: Vec<usize> = header.entries.iter().enumerate().filter(|(_, e)| matches!(e.body, Body::Frame(_))).map(|(i, _)| i).collect();
    let mut headers = Vec::with_capacity(slicing.blobs.len());
    let mut model = [0u8; 32];
    for (s, &sec) in slicing.blobs.iter().enumerate() {
        let why = |w: String| bad(format!("slice {s}: {w}"));
        let b = section_bytes(payload, sec).ok_or(BlobError::Truncated)?;
        let version = b.get(8..10).map_or(0, |v| u16::from_le_bytes([v[0], v[1]]));
        if !matches!(version, 2..=6 | 8..=14) {
            return Err(why(format!("a slice blob of version {version}")));
        }
        let inner = Blob::parse(b).map_err(|e| why(e.to_string()))?.header;
        let ip = inner.params.as_ref().ok_or_else(|| why("no frames".into()))?;
        let rows = slicing.rows_of(s, p.height);
        if ip.dtype != p.dtype || ip.width != p.width || ip.height != rows {
            return Err(why(format!("{}x{} {} frames in a slice of {}x{rows} {}", ip.width, ip.height, ip.dtype, p.width, p.dtype)));
        }
        if inner.entries.len() != frames.len() {
            return Err(why(format!("{} entries for {} frames", inner.entries.len(), frames.len())));
        }
        if ip.model != [0; 32] {
            if model != [0; 32] && model != ip.model {
                return Err(why("a second learned model".into()));
            }
            model = ip.model;
        }
        for (k, (&i, e)) in frames.iter().zip(&inner.entries).enumerate() {
            let (Body::Frame(f), Body::Frame(of)) = (&e.body, &mut header.entries[i].body) else {
                return Err(why(format!("entry {k} is not a frame")));
            };
            let stripe = ip.width as u64 * ip.height as u64 * ip.dtype.bytes() as u64;
            if e.original_len != stripe || f.big_endian || f.ranges.len() != 1 || f.ranges[0].start != 0 {
                return Err(why(format!("entry {k} is not a raw little-endian stripe")));
            }
            if f.bound != of.bound {
                return Err(why(format!("entry {k} is coded under {:?}, its frame under {:?}", f.bound, of.bound)));
            }
            if s == 0 {
                (of.stage, of.key) = (f.stage, f.key);
            }
            of.n_escapes = of.n_escapes.saturating_add(f.n_escapes);
        }
        if s == 0 {
            (p.predictor, p.coefs) = (ip.predictor, Vec::new());
        }
        headers.push(inner);
    }
    p.model = model;
    slicing.headers = headers;
    Ok(())
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
    // (A version-14 header is resealed decompressed, and compressed again.)
    let stored = &bytes[PREAMBLE..hend];
    let plain = if version == 14 { plain_header(stored).ok() } else { Some(stored.to_vec()) };
    // Version 1 headers have no coefficient count, which `write_header` always writes.
    let (mut header, plain_len) = match plain.map(|h| (read_header(&h, version), h.len())) {
        Some((Ok(h), len)) if version >= 2 => (h, len),
        _ => return Some(out),
    };
    let payload = &bytes[hend + 4..];
    // A version-7 blob's slices are blobs: sealed each on its own first.
    if let Some(sl) = &header.slices {
        for &sec in &sl.blobs {
            // (Slices do not nest: a slice that claims version 7 is left as it is.)
            // (Nor is one whose header, compressed again, takes another length: version 14.)
            let Some(sealed) = section_bytes(payload, sec).filter(|b| b.get(8..10) != Some(&[7, 0])).and_then(reseal).filter(|s| s.len() as u64 == sec.len)
            else {
                continue;
            };
            let start = hend + 4 + sec.offset as usize;
            out[start..start + sealed.len()].copy_from_slice(&sealed);
        }
    }
    let payload = &out[hend + 4..].to_vec();
    let fix = |s: &mut Section| {
        if let Some(b) = section_bytes(payload, *s) {
            s.crc = crc32c::crc32c(b);
        }
    };
    for e in &mut header.entries {
        match &mut e.body {
            Body::Frame(f) => [&mut f.skeleton, &mut f.codes, &mut f.escapes, &mut f.motion].into_iter().for_each(fix),
            Body::Opaque { data, .. } => fix(data),
        }
    }
    if let Some(sl) = &mut header.slices {
        sl.blobs.iter_mut().for_each(fix);
    }
    let mut h = Vec::with_capacity(plain_len);
    write_header(&header, version, &mut h);
    if h.len() != plain_len {
        return Some(out);
    }
    if version == 14 {
        let stored = stored_header(&h)?;
        let mut sealed = bytes[..PREAMBLE].to_vec();
        sealed[12..16].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        sealed.extend_from_slice(&stored);
        sealed.extend_from_slice(&crc32c::crc32c(&stored).to_le_bytes());
        sealed.extend_from_slice(&out[hend + 4..]);
        return Some(sealed);
    }
    out[PREAMBLE..hend].copy_from_slice(&h);
    out[hend..hend + 4].copy_from_slice(&crc32c::crc32c(&h).to_le_bytes());
    Some(out)
}

/// Whether a learned model corrects the frames' reference (what version 6 is for).
fn uses_model(p: &Params) -> bool {
    p.model != [0; 32]
}

/// Whether the window's `linear` predictor uses the wide tap set (what version 9 is for).
fn needs_v9(p: &Params) -> bool {
    p.predictor == PredictorId::Linear && super::predict::linear::is_wide(&p.coefs)
}

/// Whether some frame's adaptive stage cuts it into row slices (what version 11 is for).
fn needs_v11(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.sliced))
}

/// Whether some frame is coded by the tree stage (entropy stage 7: what version 12 is for).
fn needs_v12(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.stage == Stage::Tree))
}

/// Whether some tree frame's prediction levels are exact, or some frame under an error bound is
/// coded by the tree stage (what version 13 is for).
fn needs_v13(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.exact_levels || (f.stage == Stage::Tree && f.bound != FrameBound::Lossless)))
}

/// Whether the window is predicted by a model's causal stage (what version 10 is for).
fn needs_v10(p: &Params) -> bool {
    p.predictor == PredictorId::Causal
}

/// Whether some frame's counts are coded as counts (entropy stage 6) or the adaptive stage weighs
/// the intensity of some frame's reference (what version 8 is for).
fn needs_v8(entries: &[Entry]) -> bool {
    entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.stage == Stage::Counts || f.intensity))
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

/// Bytes a frame's header entry takes in a blob of `version` beyond what it takes in version 2
/// (version 3's motion section, version 4's flags byte): on nearly empty frames (photon counts
/// at a high bound, a frame's codes a few dozen bytes) a stage that needs a later version costs
/// as much there as it saves in codes, and the probe weighs it.
pub fn frame_entry_growth(version: u16) -> usize {
    const SECTION: usize = 8 + 8 + 4;
    if version >= 4 {
        SECTION + 1
    } else if version == 3 {
        SECTION
    } else {
        0
    }
}

// ---- header encoding -------------------------------------------------------------------------

fn put_section(out: &mut Vec<u8>, s: Section) {
    out.extend_from_slice(&s.offset.to_le_bytes());
    out.extend_from_slice(&s.len.to_le_bytes());
    out.extend_from_slice(&s.crc.to_le_bytes());
}

fn write_header(h: &Header, version: u16, out: &mut Vec<u8>) {
    if version == 7 {
        return write_sliced_header(h, out);
    }
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
    write_entries(&h.entries, out, |f, out| {
        out.push(f.big_endian as u8);
        out.push(f.key as u8);
        put_frame_bound_ranges(out, f);
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
            // Version 8: bit 4 says the adaptive stage weighs the reference's intensity.
            // Version 11: bit 5 that the adaptive stage cuts the frame into row slices.
            // Version 13: bit 6 that the tree stage's prediction levels are exact.
            out.push(
                f.block_modes as u8
                    | ((f.subpel && f.block_modes) as u8 * 2)
                    | (f.carry as u8 * 4)
                    | (f.moved_context as u8 * 8)
                    | (f.intensity as u8 * 16)
                    | (f.sliced as u8 * 32)
                    | (f.exact_levels as u8 * 64),
            );
        }
    });
}

/// The entry count and the entries (every version), `frame` writing what follows a frame
/// entry's kind, length and CRC.
fn write_entries(entries: &[Entry], out: &mut Vec<u8>, frame: impl Fn(&FrameEntry, &mut Vec<u8>)) {
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(match &e.body {
            Body::Frame(_) => 0,
            Body::Opaque { compressed: true, .. } => 1,
            Body::Opaque { compressed: false, .. } => 2,
        });
        out.extend_from_slice(&e.original_len.to_le_bytes());
        out.extend_from_slice(&e.crc.to_le_bytes());
        match &e.body {
            Body::Opaque { data, .. } => put_section(out, *data),
            Body::Frame(f) => frame(f, out),
        }
    }
}

/// A version-7 header: the geometry, the slicing, per entry what belongs to the whole file, the
/// slice blobs.
fn write_sliced_header(h: &Header, out: &mut Vec<u8>) {
    let p = h.params.as_ref().expect("a sliced blob has frames");
    let sl = h.slices.as_ref().expect("a version-7 header is sliced");
    out.push(p.dtype.id());
    out.extend_from_slice(&p.width.to_le_bytes());
    out.extend_from_slice(&p.height.to_le_bytes());
    out.extend_from_slice(&sl.rows.to_le_bytes());
    out.push(p.bound.kind_id());
    out.extend_from_slice(&p.bound.param().to_le_bytes());
    write_entries(&h.entries, out, |f, out| {
        out.push(f.big_endian as u8);
        put_frame_bound_ranges(out, f);
        put_section(out, f.skeleton);
    });
    out.extend_from_slice(&(sl.blobs.len() as u32).to_le_bytes());
    for &b in &sl.blobs {
        put_section(out, b);
    }
}

/// A frame entry's bound and pixel ranges (every version).
fn put_frame_bound_ranges(out: &mut Vec<u8>, f: &FrameEntry) {
    let (kind, v) = f.bound.to_parts();
    out.push(kind);
    out.extend_from_slice(&v.to_le_bytes());
    out.extend_from_slice(&(f.ranges.len() as u32).to_le_bytes());
    for r in &f.ranges {
        out.extend_from_slice(&(r.start as u64).to_le_bytes());
        out.extend_from_slice(&(r.len() as u64).to_le_bytes());
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

/// A frame entry's bound and pixel ranges, checked against the file length and the frame.
fn read_bound_ranges(c: &mut Cursor, i: usize, original_len: u64, p: &Params) -> Result<(FrameBound, Vec<Range<usize>>), BlobError> {
    let (bk, bv) = (c.u8()?, c.f64()?);
    let bound = FrameBound::from_parts(bk, bv).ok_or_else(|| bad(format!("entry {i}: bad bound")))?;
    let nr = c.u32()? as usize;
    // 16 bytes a range: a count the header cannot hold sizes nothing.
    if nr > c.b.len() / 16 {
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
    Ok((bound, ranges))
}

/// The pixel type and geometry that open a header with frames.
fn read_geometry(c: &mut Cursor, dtype_id: u8) -> Result<(DType, u32, u32), BlobError> {
    let dtype = DType::from_id(dtype_id).ok_or_else(|| bad(format!("unknown pixel type {dtype_id}")))?;
    Ok((dtype, c.u32()?, c.u32()?))
}

/// Refuse an empty or oversized geometry, before anything is sized by it (docs/FORMAT.md,
/// Limits).
fn check_geometry(width: u32, height: u32) -> Result<(), BlobError> {
    if width == 0 || height == 0 {
        return Err(bad("empty geometry"));
    }
    super::format::check_geometry(width as u64, height as u64).map_err(bad)
}

/// The entry count and the entries of a header (every version), `frame` reading what follows a
/// frame entry's kind, length and CRC.
fn read_entries(c: &mut Cursor, mut frame: impl FnMut(&mut Cursor, usize, u64) -> Result<FrameEntry, BlobError>) -> Result<Vec<Entry>, BlobError> {
    let n = c.u32()? as usize;
    // At least 33 bytes an entry (an opaque one): a count the header cannot hold sizes nothing.
    if n > c.b.len() / 33 {
        return Err(bad(format!("{n} entries in a {}-byte header", c.b.len())));
    }
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let kind = c.u8()?;
        let original_len = c.u64()?;
        let crc = c.u32()?;
        let body = match kind {
            1 | 2 => Body::Opaque { compressed: kind == 1, data: c.section()? },
            0 => Body::Frame(frame(c, i, original_len)?),
            k => return Err(bad(format!("entry {i}: unknown kind {k}"))),
        };
        entries.push(Entry { original_len, crc, body });
    }
    Ok(entries)
}

/// A version-7 header (see [`write_sliced_header`]).
fn read_sliced_header(h: &[u8]) -> Result<Header, BlobError> {
    let mut c = Cursor { b: h, pos: 0 };
    let dtype_id = c.u8()?;
    if dtype_id == 0 {
        return Err(bad("a sliced blob without frames"));
    }
    let (dtype, width, height) = read_geometry(&mut c, dtype_id)?;
    let rows = c.u32()?;
    let (kind, v) = (c.u8()?, c.f64()?);
    let bound = Bound::from_parts(kind, v).ok_or_else(|| bad("bad bound"))?;
    check_geometry(width, height)?;
    if rows == 0 || rows >= height {
        return Err(bad(format!("slices of {rows} rows in a frame of {height}")));
    }
    let p = Params { dtype, width, height, predictor: PredictorId::None, model: [0; 32], coefs: Vec::new(), bound };
    let mut key = true;
    let entries = read_entries(&mut c, |c, i, original_len| {
        let big_endian = c.u8()? != 0;
        let (bound, ranges) = read_bound_ranges(c, i, original_len, &p)?;
        let skeleton = c.section()?;
        let none = Section::default();
        let f = FrameEntry {
            big_endian,
            key,
            bound,
            ranges,
            stage: Stage::Zstd,
            skeleton,
            codes: none,
            escapes: none,
            n_escapes: 0,
            motion: none,
            block_modes: false,
            subpel: false,
            carry: false,
            moved_context: false,
            intensity: false,
            sliced: false,
            exact_levels: false,
        };
        key = false;
        Ok(f)
    })?;
    if key {
        return Err(bad("a sliced blob without frames"));
    }
    let count = c.u32()? as usize;
    if count != slice_count(height, rows) {
        return Err(bad(format!("{count} slices of {rows} rows in a frame of {height}")));
    }
    // 20 bytes a section: checked before the vector is sized.
    if count > h.len() / 20 {
        return Err(bad(format!("{count} slices in a {}-byte header", h.len())));
    }
    let blobs = (0..count).map(|_| c.section()).collect::<Result<Vec<_>, _>>()?;
    if c.pos != h.len() {
        return Err(bad("trailing bytes in header"));
    }
    Ok(Header { params: Some(p), entries, slices: Some(Slicing { rows, blobs, headers: Vec::new() }) })
}

fn read_header(h: &[u8], version: u16) -> Result<Header, BlobError> {
    if version == 7 {
        return read_sliced_header(h);
    }
    let mut c = Cursor { b: h, pos: 0 };
    let dtype_id = c.u8()?;
    let params = if dtype_id == 0 {
        None
    } else {
        let (dtype, width, height) = read_geometry(&mut c, dtype_id)?;
        let pid = c.u8()?;
        let predictor = PredictorId::from_id(pid).ok_or_else(|| bad(format!("unknown predictor {pid}")))?;
        let model: [u8; 32] = c.take(32)?.try_into().expect("32 bytes");
        let mut coefs = Vec::new();
        if version >= 2 {
            for _ in 0..c.u8()? {
                coefs.push(c.u32()? as i32);
            }
        }
        if predictor == PredictorId::Linear && (!super::predict::linear::valid(&coefs) || (super::predict::linear::is_wide(&coefs) && version < 9)) {
            return Err(bad(format!("bad linear predictor coefficients ({} in a version {version} blob)", coefs.len())));
        }
        if model != [0; 32] && (version < 6 || !predictor.takes_model()) {
            return Err(bad(format!("a learned model on predictor {predictor} in a version {version} blob")));
        }
        if predictor.needs_model() && (version < 10 || model == [0; 32]) {
            return Err(bad(format!("predictor {predictor} without a learned model, or in a version {version} blob")));
        }
        let (kind, v) = (c.u8()?, c.f64()?);
        let bound = Bound::from_parts(kind, v).ok_or_else(|| bad("bad bound"))?;
        check_geometry(width, height)?;
        Some(Params { dtype, width, height, predictor, model, coefs, bound })
    };
    let entries = read_entries(&mut c, |c, i, original_len| {
        let p = params.as_ref().ok_or_else(|| bad("frame entry in a blob without frame parameters"))?;
        let big_endian = c.u8()? != 0;
        let key = c.u8()? != 0;
        let (bound, ranges) = read_bound_ranges(c, i, original_len, p)?;
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
        let known = match version {
            13.. => 127,
            11.. => 63,
            8.. => 31,
            5.. => 15,
            _ => 1,
        };
        let (block_modes, subpel, carry, moved_context, intensity, sliced) =
            (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, flags & 8 != 0, flags & 16 != 0, flags & 32 != 0);
        if flags & !known != 0 || (block_modes && motion.len == 0) || (subpel && !block_modes) {
            return Err(bad(format!("entry {i}: motion block-mode flag {flags} (vectors: {} bytes)", motion.len)));
        }
        let exact_levels = flags & 64 != 0;
        if exact_levels && (stage != Stage::Tree || p.dtype.mask() > 255) {
            return Err(bad(format!("entry {i}: exact prediction levels (flag bit 6) on a frame of entropy stage {} with {} pixels", stage as u8, p.dtype)));
        }
        if sliced && stage != Stage::Adaptive {
            return Err(bad(format!("entry {i}: row slices on a frame of entropy stage {}", stage as u8)));
        }
        if (carry && (key || !matches!(stage, Stage::Adaptive | Stage::Counts | Stage::Tree)))
            || ((moved_context || intensity) && (key || stage != Stage::Adaptive))
        {
            let to = if key { "a key frame".to_string() } else { format!("a frame of entropy stage {}", stage as u8) };
            return Err(bad(format!("entry {i}: a stage's state carried over, a moved context or an intensity context on {to}")));
        }
        if stage == Stage::Counts && version < 8 {
            return Err(bad(format!("entry {i}: entropy stage 6 (counts) in a version {version} blob")));
        }
        if stage == Stage::Tree && (version < 12 || (bound != FrameBound::Lossless && version < 13)) {
            return Err(bad(format!(
                "entry {i}: entropy stage 7 (tree) in a version {version} blob{}",
                if bound != FrameBound::Lossless { " under an error bound" } else { "" }
            )));
        }
        Ok(FrameEntry {
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
            intensity,
            sliced,
            exact_levels,
        })
    })?;
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
        8 => needs_v8(&entries),
        9 => params.as_ref().is_some_and(needs_v9),
        10 => params.as_ref().is_some_and(needs_v10),
        11 => needs_v11(&entries),
        12 => needs_v12(&entries),
        13 => needs_v13(&entries),
        _ => true,
    };
    if !used {
        return Err(bad(format!(
            "version {version} blob without {}",
            match version {
                3 => "motion vectors",
                4 => "motion block modes",
                5 => "sub-pixel motion or carried adaptive models",
                6 => "a learned model",
                9 => "the wide linear tap set",
                10 => "the causal predictor",
                11 => "adaptive row slices",
                12 => "frames of the tree stage",
                13 => "exact prediction levels or tree frames under a bound",
                _ => "counts coded as counts or the intensity context",
            }
        )));
    }
    Ok(Header { params, entries, slices: None })
}
