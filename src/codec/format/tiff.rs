//! Baseline TIFF, read only as far as needed to find the pixels: one uncompressed grayscale image
//! (8/16/32-bit unsigned or signed integer, 32-bit float), one or many strips, either byte order.
//! Everything else (compressed, tiled, RGB, planar, multi-page, BigTIFF, malformed) is refused
//! with a reason, and the caller stores the file whole.

use super::Layout;
use crate::codec::dtype::DType;
use std::ops::Range;

const TAG_WIDTH: u16 = 256;
const TAG_HEIGHT: u16 = 257;
const TAG_BITS: u16 = 258;
const TAG_COMPRESSION: u16 = 259;
const TAG_PHOTOMETRIC: u16 = 262;
const TAG_STRIP_OFFSETS: u16 = 273;
const TAG_SAMPLES: u16 = 277;
const TAG_ROWS_PER_STRIP: u16 = 278;
const TAG_STRIP_COUNTS: u16 = 279;
const TAG_PLANAR: u16 = 284;
const TAG_TILE_WIDTH: u16 = 322;
const TAG_SAMPLE_FORMAT: u16 = 339;

pub fn has_tiff_header(file: &[u8]) -> bool {
    file.len() >= 4 && (file[..4] == *b"II*\0" || file[..4] == *b"MM\0*" || file[..4] == *b"II+\0" || file[..4] == *b"MM\0+")
}

struct Reader<'a> {
    b: &'a [u8],
    be: bool,
}

impl Reader<'_> {
    fn u16(&self, off: usize) -> Result<u16, String> {
        let s = self.b.get(off..off + 2).ok_or_else(|| format!("truncated at byte {off}"))?;
        Ok(if self.be { u16::from_be_bytes([s[0], s[1]]) } else { u16::from_le_bytes([s[0], s[1]]) })
    }
    fn u32(&self, off: usize) -> Result<u32, String> {
        let s = self.b.get(off..off + 4).ok_or_else(|| format!("truncated at byte {off}"))?;
        let a = [s[0], s[1], s[2], s[3]];
        Ok(if self.be { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
    }
}

/// One IFD entry's values, as integers (SHORT or LONG; other types are refused where used).
struct Entry {
    tag: u16,
    typ: u16,
    count: u32,
    value_off: usize,
}

impl Entry {
    fn values(&self, r: &Reader) -> Result<Vec<u64>, String> {
        let size = match self.typ {
            3 => 2usize,
            4 => 4,
            1 => 1,
            t => return Err(format!("tag {} has unsupported type {t}", self.tag)),
        };
        let count = self.count as usize;
        if count > r.b.len() {
            return Err(format!("tag {} claims {count} values", self.tag));
        }
        let total = size * count;
        let base = if total <= 4 { self.value_off } else { r.u32(self.value_off)? as usize };
        if base.checked_add(total).is_none_or(|end| end > r.b.len()) {
            return Err(format!("values of tag {} lie outside the file", self.tag));
        }
        (0..count)
            .map(|i| {
                let o = base + i * size;
                Ok(match size {
                    1 => r.b[o] as u64,
                    2 => r.u16(o)? as u64,
                    _ => r.u32(o)? as u64,
                })
            })
            .collect()
    }

    fn single(&self, r: &Reader) -> Result<u64, String> {
        let v = self.values(r)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(format!("tag {} has {} values, expected 1", self.tag, v.len())),
        }
    }
}

/// Find the pixels of a baseline grayscale TIFF, or say why it is not one.
pub fn parse(file: &[u8]) -> Result<Layout, String> {
    if file.len() < 8 {
        return Err("shorter than a TIFF header".into());
    }
    let be = match &file[..2] {
        b"II" => false,
        b"MM" => true,
        _ => return Err("bad byte-order mark".into()),
    };
    let r = Reader { b: file, be };
    match r.u16(2)? {
        42 => {}
        43 => return Err("BigTIFF is not supported".into()),
        m => return Err(format!("bad magic {m}")),
    }
    let ifd = r.u32(4)? as usize;
    let n = r.u16(ifd)? as usize;
    // The entries and the next-IFD offset must lie in the file before any is read or kept.
    if ifd + 2 + 12 * n + 4 > file.len() {
        return Err(format!("IFD of {n} entries at byte {ifd} runs past the end of the file"));
    }
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        entries.push(Entry { tag: r.u16(e)?, typ: r.u16(e + 2)?, count: r.u32(e + 4)?, value_off: e + 8 });
    }
    let next_ifd = r.u32(ifd + 2 + 12 * n)?;
    if next_ifd != 0 {
        return Err("multi-page TIFF".into());
    }
    let find = |tag: u16| entries.iter().find(|e| e.tag == tag);
    let need = |tag: u16, name: &str| find(tag).ok_or_else(|| format!("missing {name} tag"));
    let opt_single = |tag: u16, default: u64| -> Result<u64, String> {
        match find(tag) {
            Some(e) => e.single(&r),
            None => Ok(default),
        }
    };

    if find(TAG_TILE_WIDTH).is_some() {
        return Err("tiled TIFF".into());
    }
    let compression = opt_single(TAG_COMPRESSION, 1)?;
    if compression != 1 {
        return Err(format!("compressed TIFF (compression {compression})"));
    }
    let samples = opt_single(TAG_SAMPLES, 1)?;
    if samples != 1 {
        return Err(format!("{samples} samples per pixel (only grayscale is coded)"));
    }
    let photometric = opt_single(TAG_PHOTOMETRIC, 1)?;
    if photometric > 1 {
        return Err(format!("photometric interpretation {photometric} is not grayscale"));
    }
    if opt_single(TAG_PLANAR, 1)? != 1 {
        return Err("planar configuration 2".into());
    }
    let width = need(TAG_WIDTH, "ImageWidth")?.single(&r)?;
    let height = need(TAG_HEIGHT, "ImageLength")?.single(&r)?;
    super::check_geometry(width, height)?;
    let bits = opt_single(TAG_BITS, 1)?;
    let format = opt_single(TAG_SAMPLE_FORMAT, 1)?;
    let dtype = match (bits, format) {
        (8, 1) => DType::U8,
        (16, 1) => DType::U16,
        (32, 1) => DType::U32,
        (8, 2) => DType::I8,
        (16, 2) => DType::I16,
        (32, 2) => DType::I32,
        (32, 3) => DType::F32,
        (b, f) => return Err(format!("{b}-bit samples of format {f} are not supported")),
    };
    let row_bytes = (width as usize).checked_mul(dtype.bytes()).ok_or_else(|| "image too large".to_string())?;
    let rows_per_strip = opt_single(TAG_ROWS_PER_STRIP, u32::MAX as u64)?.clamp(1, height);
    let offsets = need(TAG_STRIP_OFFSETS, "StripOffsets")?.values(&r)?;
    let counts = need(TAG_STRIP_COUNTS, "StripByteCounts")?.values(&r)?;
    let strips = height.div_ceil(rows_per_strip) as usize;
    if offsets.len() != strips || counts.len() != strips {
        return Err(format!("{} strip offsets and {} byte counts for {strips} strips", offsets.len(), counts.len()));
    }
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(strips);
    for (i, (&off, &count)) in offsets.iter().zip(&counts).enumerate() {
        let rows = rows_per_strip.min(height - i as u64 * rows_per_strip) as usize;
        let len = rows.checked_mul(row_bytes).ok_or_else(|| "image too large".to_string())?;
        if (count as usize) < len {
            return Err(format!("strip {i} holds {count} bytes, needs {len}"));
        }
        let start = off as usize;
        let end = start.checked_add(len).filter(|&e| e <= file.len()).ok_or_else(|| format!("strip {i} lies outside the file"))?;
        ranges.push(start..end);
    }
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).any(|w| w[0].end > w[1].start) {
        return Err("strips overlap".into());
    }
    // Merge strips that follow each other in the file and in pixel order.
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for rg in ranges {
        match merged.last_mut() {
            Some(last) if last.end == rg.start => last.end = rg.end,
            _ => merged.push(rg),
        }
    }
    Ok(Layout { width: width as u32, height: height as u32, dtype, big_endian: be, ranges: merged })
}

/// Write a baseline grayscale TIFF (used by fixtures and tests): `rows_per_strip` rows per strip,
/// strips written in reverse order when `reverse_strips`, a few padding bytes between them.
pub fn write(width: u32, height: u32, dtype: DType, big_endian: bool, rows_per_strip: u32, reverse_strips: bool, image: &[u32]) -> Vec<u8> {
    let put16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&if big_endian { x.to_be_bytes() } else { x.to_le_bytes() });
    let put32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&if big_endian { x.to_be_bytes() } else { x.to_le_bytes() });
    let rows_per_strip = rows_per_strip.clamp(1, height);
    let strips = height.div_ceil(rows_per_strip) as usize;
    let mut pixels = Vec::new();
    dtype.encode_pixels(image, big_endian, &mut pixels);
    let row_bytes = width as usize * dtype.bytes();

    let mut out = Vec::new();
    out.extend_from_slice(if big_endian { b"MM\0*" } else { b"II*\0" });
    put32(&mut out, 0); // IFD offset, patched below
    out.extend_from_slice(b"tezipfs fixture\0"); // a description-like blob of bytes to preserve
    let mut offsets = vec![0u32; strips];
    let mut counts = vec![0u32; strips];
    let order: Vec<usize> = if reverse_strips { (0..strips).rev().collect() } else { (0..strips).collect() };
    for s in order {
        let r0 = s * rows_per_strip as usize;
        let r1 = ((s + 1) * rows_per_strip as usize).min(height as usize);
        offsets[s] = out.len() as u32;
        counts[s] = ((r1 - r0) * row_bytes) as u32;
        out.extend_from_slice(&pixels[r0 * row_bytes..r1 * row_bytes]);
        out.extend_from_slice(&[0xAB, 0xCD]); // padding between strips
    }
    let arrays_at = out.len() as u32;
    for &o in &offsets {
        put32(&mut out, o);
    }
    for &c in &counts {
        put32(&mut out, c);
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    let ifd_at = out.len() as u32;
    let (bits, fmt) = (
        dtype.bits() as u16,
        if dtype.is_float() {
            3
        } else if dtype.is_signed_int() {
            2
        } else {
            1
        },
    );
    let strip_vals = |first: u32| if strips == 1 { None } else { Some(first) };
    let entries: Vec<(u16, u16, u32, u32)> = vec![
        (TAG_WIDTH, 4, 1, width),
        (TAG_HEIGHT, 4, 1, height),
        (TAG_BITS, 3, 1, bits as u32),
        (TAG_COMPRESSION, 3, 1, 1),
        (TAG_PHOTOMETRIC, 3, 1, 1),
        (TAG_STRIP_OFFSETS, 4, strips as u32, strip_vals(arrays_at).unwrap_or(offsets[0])),
        (TAG_SAMPLES, 3, 1, 1),
        (TAG_ROWS_PER_STRIP, 4, 1, rows_per_strip),
        (TAG_STRIP_COUNTS, 4, strips as u32, strip_vals(arrays_at + 4 * strips as u32).unwrap_or(counts[0])),
        (TAG_SAMPLE_FORMAT, 3, 1, fmt),
    ];
    put16(&mut out, entries.len() as u16);
    for (tag, typ, count, val) in entries {
        put16(&mut out, tag);
        put16(&mut out, typ);
        put32(&mut out, count);
        if typ == 3 && count == 1 {
            put16(&mut out, val as u16);
            put16(&mut out, 0);
        } else {
            put32(&mut out, val);
        }
    }
    put32(&mut out, 0);
    let ifd_bytes = if big_endian { ifd_at.to_be_bytes() } else { ifd_at.to_le_bytes() };
    out[4..8].copy_from_slice(&ifd_bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tiffs_parse_back() {
        let img: Vec<u32> = (0..35u32).map(|i| i * 1000).collect();
        for be in [false, true] {
            for rps in [1, 2, 5, 7] {
                let f = write(5, 7, DType::U16, be, rps, rps == 2, &img);
                let l = parse(&f).unwrap();
                assert_eq!((l.width, l.height, l.dtype, l.big_endian), (5, 7, DType::U16, be));
                let mut back = Vec::new();
                l.extract(&f, &mut back);
                assert_eq!(back, img);
            }
        }
    }

    #[test]
    fn refuses_truncated_and_garbage() {
        let img = vec![7u32; 16];
        let f = write(4, 4, DType::U8, false, 2, false, &img);
        for cut in [3, 8, 20, f.len() - 3] {
            assert!(parse(&f[..cut]).is_err(), "cut {cut}");
        }
        assert!(parse(b"II*\0\xff\xff\xff\xff").is_err());
    }
}
