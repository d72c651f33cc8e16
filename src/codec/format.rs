//! Frame formats: where the pixels are inside a file.
//!
//! A file is either a *frame* (a [`Layout`]: pixel type, geometry, byte order and the byte ranges
//! that hold the pixels, in pixel order) or *opaque* (stored whole). Every byte outside the pixel
//! ranges is kept verbatim, so a lossless round trip returns the identical file.

pub mod tiff;

use super::dtype::DType;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// The largest frame coded as a frame: 2^28 pixels (16384 x 16384; the largest detectors have
/// about 2^24). A file with more pixels is stored whole (opaque), and a blob whose header claims
/// more is refused before anything is allocated for it (`docs/FORMAT.md`, Limits), so a damaged
/// or hostile header cannot make the decoder allocate and work without bound.
pub const MAX_FRAME_PIXELS: u64 = 1 << 28;
/// The largest header a raw format may skip (`raw:WxH:TYPE:skip=N`).
pub const MAX_RAW_SKIP: usize = 1 << 32;

/// Whether a frame of `width` x `height` pixels may be coded: both sides at least 1 and at most
/// `u32::MAX`, at most [`MAX_FRAME_PIXELS`] pixels. The error says why not.
pub fn check_geometry(width: u64, height: u64) -> Result<(), String> {
    if width == 0 || height == 0 || width > u32::MAX as u64 || height > u32::MAX as u64 {
        return Err(format!("bad geometry {width}x{height}"));
    }
    match width.checked_mul(height) {
        Some(n) if n <= MAX_FRAME_PIXELS => Ok(()),
        _ => Err(format!("a frame of {width}x{height} pixels exceeds the limit of 2^28 pixels")),
    }
}

/// How to find the pixels in a file (`user.tezip.format`, `--format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatSpec {
    /// TIFF when the file starts with a TIFF header, opaque otherwise.
    Auto,
    /// Headerless (or fixed-header) raw frames of known geometry.
    Raw(RawSpec),
    /// TIFF only; anything else is opaque.
    Tiff,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSpec {
    pub width: u32,
    pub height: u32,
    pub dtype: DType,
    /// Bytes of header before the pixels, kept verbatim.
    pub skip: usize,
}

impl RawSpec {
    /// Bytes of the pixels (saturating: a spec beyond [`MAX_FRAME_PIXELS`] fits no file).
    pub fn pixel_bytes(&self) -> usize {
        (self.width as usize).saturating_mul(self.height as usize).saturating_mul(self.dtype.bytes())
    }
}

impl fmt::Display for FormatSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatSpec::Auto => f.write_str("auto"),
            FormatSpec::Tiff => f.write_str("tiff"),
            FormatSpec::Raw(r) => {
                write!(f, "raw:{}x{}:{}", r.width, r.height, r.dtype)?;
                if r.skip > 0 {
                    write!(f, ":skip={}", r.skip)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for FormatSpec {
    type Err = String;

    /// `auto`, `tiff`, or `raw:WxH:TYPE[:skip=N]`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => return Ok(FormatSpec::Auto),
            "tiff" => return Ok(FormatSpec::Tiff),
            _ => {}
        }
        let usage = "expected auto, tiff or raw:WIDTHxHEIGHT:TYPE[:skip=BYTES], e.g. raw:640x480:u16";
        let rest = s.strip_prefix("raw:").ok_or_else(|| format!("bad format {s:?}: {usage}"))?;
        let mut parts = rest.split(':');
        let geom = parts.next().unwrap_or_default();
        let (w, h) = geom.split_once('x').ok_or_else(|| format!("bad geometry {geom:?} in {s:?}: {usage}"))?;
        let width: u32 = w.parse().map_err(|_| format!("bad width {w:?} in {s:?}"))?;
        let height: u32 = h.parse().map_err(|_| format!("bad height {h:?} in {s:?}"))?;
        if width == 0 || height == 0 {
            return Err(format!("geometry must be at least 1x1 in {s:?}"));
        }
        check_geometry(width as u64, height as u64).map_err(|e| format!("{e} in {s:?}"))?;
        let dtype: DType = parts.next().ok_or_else(|| format!("missing pixel type in {s:?}: {usage}"))?.parse()?;
        let mut skip = 0usize;
        for p in parts {
            let v = p.strip_prefix("skip=").ok_or_else(|| format!("unknown option {p:?} in {s:?}: {usage}"))?;
            skip = v.parse().map_err(|_| format!("bad skip {v:?} in {s:?}"))?;
            if skip > MAX_RAW_SKIP {
                return Err(format!("skip {skip} in {s:?} exceeds the limit of 2^32 bytes"));
            }
        }
        Ok(FormatSpec::Raw(RawSpec { width, height, dtype, skip }))
    }
}

/// Where the pixels of one frame file are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    pub dtype: DType,
    pub big_endian: bool,
    /// Byte ranges of the file that hold the pixels, in row-major pixel order. They do not
    /// overlap; together they hold exactly `width * height * dtype.bytes()` bytes.
    pub ranges: Vec<Range<usize>>,
}

impl Layout {
    pub fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// Same pixel type and geometry: frames that can predict each other.
    pub fn same_geometry(&self, o: &Layout) -> bool {
        self.width == o.width && self.height == o.height && self.dtype == o.dtype
    }

    /// The integer image of the file's pixels.
    pub fn extract(&self, file: &[u8], out: &mut Vec<u32>) {
        if self.ranges.len() == 1 {
            self.dtype.decode_pixels(&file[self.ranges[0].clone()], self.big_endian, out);
            return;
        }
        let mut bytes = Vec::with_capacity(self.pixels() * self.dtype.bytes());
        for r in &self.ranges {
            bytes.extend_from_slice(&file[r.clone()]);
        }
        self.dtype.decode_pixels(&bytes, self.big_endian, out);
    }

    /// The file bytes outside the pixel ranges, in file order.
    pub fn skeleton(&self, file: &[u8]) -> Vec<u8> {
        let mut sorted: Vec<&Range<usize>> = self.ranges.iter().collect();
        sorted.sort_by_key(|r| r.start);
        let mut out = Vec::with_capacity(file.len() - self.pixels() * self.dtype.bytes());
        let mut pos = 0;
        for r in sorted {
            out.extend_from_slice(&file[pos..r.start]);
            pos = r.end;
        }
        out.extend_from_slice(&file[pos..]);
        out
    }

    /// Rebuild a file of `file_len` bytes from its skeleton and integer image.
    /// Returns `None` when the pieces do not fit together (a corrupt container).
    pub fn assemble(&self, file_len: usize, skeleton: &[u8], image: &[u32]) -> Option<Vec<u8>> {
        let pixel_bytes: usize = self.ranges.iter().map(|r| r.len()).sum();
        if image.len() != self.pixels()
            || pixel_bytes != self.pixels() * self.dtype.bytes()
            || skeleton.len() + pixel_bytes != file_len
            || self.ranges.iter().any(|r| r.end > file_len || r.start > r.end)
        {
            return None;
        }
        let mut file = vec![0u8; file_len];
        let mut sorted: Vec<&Range<usize>> = self.ranges.iter().collect();
        sorted.sort_by_key(|r| r.start);
        let (mut pos, mut sk) = (0usize, 0usize);
        for r in sorted {
            if r.start < pos {
                return None; // overlapping ranges
            }
            let n = r.start - pos;
            file[pos..r.start].copy_from_slice(&skeleton[sk..sk + n]);
            sk += n;
            pos = r.end;
        }
        file[pos..].copy_from_slice(&skeleton[sk..]);
        if let [r] = &self.ranges[..] {
            self.dtype.encode_pixels_into(image, self.big_endian, &mut file[r.clone()]);
            return Some(file);
        }
        let mut px = Vec::new();
        self.dtype.encode_pixels(image, self.big_endian, &mut px);
        let mut off = 0;
        for r in &self.ranges {
            file[r.clone()].copy_from_slice(&px[off..off + r.len()]);
            off += r.len();
        }
        Some(file)
    }
}

/// What a file is, under a format spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Analysis {
    Frame(Layout),
    /// Not a frame we can code; the reason is for logs and `stats`.
    Opaque(String),
}

/// Decide where the pixels of `file` are. Never fails: anything we cannot code is opaque.
pub fn analyze(file: &[u8], spec: &FormatSpec) -> Analysis {
    match spec {
        FormatSpec::Raw(r) => {
            if let Err(why) = check_geometry(r.width as u64, r.height as u64) {
                return Analysis::Opaque(format!("raw frame not coded: {why}"));
            }
            let want = r.skip.saturating_add(r.pixel_bytes());
            if file.len() != want {
                return Analysis::Opaque(format!(
                    "raw file is {} bytes, but {} expects {} ({} header + {} pixels)",
                    file.len(),
                    spec,
                    want,
                    r.skip,
                    r.pixel_bytes()
                ));
            }
            #[allow(clippy::single_range_in_vec_init)] // one byte range of the file, not the numbers in it
            Analysis::Frame(Layout { width: r.width, height: r.height, dtype: r.dtype, big_endian: false, ranges: vec![r.skip..want] })
        }
        FormatSpec::Tiff | FormatSpec::Auto => {
            if !tiff::has_tiff_header(file) {
                return Analysis::Opaque(match spec {
                    FormatSpec::Tiff => "not a TIFF file (no TIFF header)".into(),
                    _ => "not a TIFF file; raw frames need a raw:WxH:TYPE format".into(),
                });
            }
            match tiff::parse(file) {
                Ok(layout) => Analysis::Frame(layout),
                Err(why) => Analysis::Opaque(format!("TIFF not coded as a frame: {why}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_specs() {
        for s in ["auto", "tiff", "raw:640x480:u16", "raw:1x1:f32:skip=128"] {
            assert_eq!(s.parse::<FormatSpec>().unwrap().to_string(), s);
        }
        for bad in ["raw", "raw:0x5:u8", "raw:5x5", "raw:5x5:u12", "raw:5x5:u8:foo=1", "png"] {
            assert!(bad.parse::<FormatSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn wrong_size_raw_is_opaque() {
        let spec: FormatSpec = "raw:4x4:u16".parse().unwrap();
        assert!(matches!(analyze(&[0u8; 31], &spec), Analysis::Opaque(_)));
        assert!(matches!(analyze(&[0u8; 32], &spec), Analysis::Frame(_)));
    }

    #[test]
    fn skeleton_and_assemble_round_trip() {
        let file: Vec<u8> = (0..40u8).collect();
        let l = Layout { width: 2, height: 2, dtype: DType::U16, big_endian: true, ranges: vec![20..24, 4..8] };
        let mut img = Vec::new();
        l.extract(&file, &mut img);
        assert_eq!(img, vec![0x1415, 0x1617, 0x0405, 0x0607]);
        let sk = l.skeleton(&file);
        assert_eq!(sk.len(), 32);
        assert_eq!(l.assemble(file.len(), &sk, &img).unwrap(), file);
    }
}
