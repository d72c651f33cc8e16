//! Pixel types and the "integer image": every pixel as a `u32` whose order matches the order of
//! the values, so that one set of predictors and coders serves every type.
//!
//! - unsigned integers are their value;
//! - signed integers have their sign bit flipped (i16 -32768 -> 0, 0 -> 32768);
//! - f32 is mapped bit-exactly to an order-preserving u32 (negative floats have all bits flipped,
//!   positive ones the sign bit set). NaN payloads, -0.0 and infinities survive unchanged.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    U8,
    U16,
    U32,
    I8,
    I16,
    I32,
    F32,
}

impl DType {
    pub const ALL: [DType; 7] = [DType::U8, DType::U16, DType::U32, DType::I8, DType::I16, DType::I32, DType::F32];

    pub fn bytes(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
        }
    }

    pub fn bits(self) -> u32 {
        8 * self.bytes() as u32
    }

    /// Mask of the integer image's valid bits.
    pub fn mask(self) -> u32 {
        if self.bits() == 32 {
            u32::MAX
        } else {
            (1u32 << self.bits()) - 1
        }
    }

    pub fn is_float(self) -> bool {
        self == DType::F32
    }

    pub fn is_signed_int(self) -> bool {
        matches!(self, DType::I8 | DType::I16 | DType::I32)
    }

    /// Stable numeric id used in the blob container.
    pub fn id(self) -> u8 {
        match self {
            DType::U8 => 1,
            DType::U16 => 2,
            DType::U32 => 3,
            DType::I8 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::F32 => 7,
        }
    }

    pub fn from_id(id: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.id() == id)
    }

    /// The integer image of one pixel's raw bits (already in native order).
    #[inline]
    pub fn to_image(self, raw: u32) -> u32 {
        match self {
            DType::U8 | DType::U16 | DType::U32 => raw,
            DType::I8 => raw ^ 0x80,
            DType::I16 => raw ^ 0x8000,
            DType::I32 => raw ^ 0x8000_0000,
            DType::F32 => {
                if raw & 0x8000_0000 != 0 {
                    !raw
                } else {
                    raw | 0x8000_0000
                }
            }
        }
    }

    /// Inverse of [`DType::to_image`].
    #[inline]
    pub fn from_image(self, img: u32) -> u32 {
        match self {
            DType::U8 | DType::U16 | DType::U32 => img,
            DType::I8 => img ^ 0x80,
            DType::I16 => img ^ 0x8000,
            DType::I32 => img ^ 0x8000_0000,
            DType::F32 => {
                if img & 0x8000_0000 != 0 {
                    img & 0x7fff_ffff
                } else {
                    !img
                }
            }
        }
    }

    /// The numeric value of an integer-image pixel (for error bounds).
    #[inline]
    pub fn value(self, img: u32) -> f64 {
        let raw = self.from_image(img);
        match self {
            DType::U8 | DType::U16 | DType::U32 => raw as f64,
            DType::I8 => raw as u8 as i8 as f64,
            DType::I16 => raw as u16 as i16 as f64,
            DType::I32 => raw as i32 as f64,
            DType::F32 => f32::from_bits(raw) as f64,
        }
    }

    /// Lowest and highest integer-image value of an integer type, as i64 of the *image*.
    pub fn image_range(self) -> (i64, i64) {
        (0, self.mask() as i64)
    }

    /// Decode a row-major buffer of raw pixel bytes into the integer image.
    pub fn decode_pixels(self, bytes: &[u8], big_endian: bool, out: &mut Vec<u32>) {
        out.clear();
        out.reserve(bytes.len() / self.bytes());
        match (self.bytes(), big_endian) {
            (1, _) => out.extend(bytes.iter().map(|&b| self.to_image(b as u32))),
            (2, false) => out.extend(bytes.chunks_exact(2).map(|c| self.to_image(u16::from_le_bytes([c[0], c[1]]) as u32))),
            (2, true) => out.extend(bytes.chunks_exact(2).map(|c| self.to_image(u16::from_be_bytes([c[0], c[1]]) as u32))),
            (_, false) => out.extend(bytes.chunks_exact(4).map(|c| self.to_image(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
            (_, true) => out.extend(bytes.chunks_exact(4).map(|c| self.to_image(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))),
        }
    }

    /// Encode an integer image back to raw pixel bytes.
    pub fn encode_pixels(self, img: &[u32], big_endian: bool, out: &mut Vec<u8>) {
        out.clear();
        out.resize(img.len() * self.bytes(), 0);
        self.encode_pixels_into(img, big_endian, out);
    }

    /// Encode an integer image into `out`, which holds exactly `img.len() * bytes()` bytes.
    pub fn encode_pixels_into(self, img: &[u32], big_endian: bool, out: &mut [u8]) {
        let raw = img.iter().map(|&p| self.from_image(p));
        match (self.bytes(), big_endian) {
            (1, _) => out.iter_mut().zip(raw).for_each(|(o, r)| *o = r as u8),
            (2, false) => out.chunks_exact_mut(2).zip(raw).for_each(|(o, r)| o.copy_from_slice(&(r as u16).to_le_bytes())),
            (2, true) => out.chunks_exact_mut(2).zip(raw).for_each(|(o, r)| o.copy_from_slice(&(r as u16).to_be_bytes())),
            (_, false) => out.chunks_exact_mut(4).zip(raw).for_each(|(o, r)| o.copy_from_slice(&r.to_le_bytes())),
            (_, true) => out.chunks_exact_mut(4).zip(raw).for_each(|(o, r)| o.copy_from_slice(&r.to_be_bytes())),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::F32 => "f32",
        })
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL.into_iter().find(|d| d.to_string() == s).ok_or_else(|| format!("unknown pixel type {s:?} (expected one of u8, u16, u32, i8, i16, i32, f32)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_image_is_order_preserving_and_bit_exact() {
        let vals = [f32::NEG_INFINITY, -1e30, -1.0, -f32::MIN_POSITIVE, -0.0, 0.0, 1e-42, 1.0, 3e38, f32::INFINITY];
        let imgs: Vec<u32> = vals.iter().map(|v| DType::F32.to_image(v.to_bits())).collect();
        assert!(imgs.windows(2).all(|w| w[0] < w[1]), "{imgs:x?}");
        for bits in [0x7fc0_0001u32, 0xffc0_1234, 0x8000_0000, 0, 0x7f80_0000, 0xff80_0000] {
            assert_eq!(DType::F32.from_image(DType::F32.to_image(bits)), bits);
        }
    }

    #[test]
    fn signed_image_is_order_preserving() {
        let a = DType::I16.to_image((-5i16) as u16 as u32);
        let b = DType::I16.to_image(3i16 as u16 as u32);
        assert!(a < b);
        assert_eq!(DType::I16.value(a), -5.0);
    }
}
