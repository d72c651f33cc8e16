//! The binary range coder the adaptive stages share: LZMA's encoder (32-bit range, carry
//! propagation through a cached byte) and its decoder, coding a bit under a 15-bit probability
//! of a 0. Integer arithmetic only, so every machine codes the same bytes. The decoder reads
//! zeros past the end of its data; its caller compares `pos` with the data's length at the end
//! (the encoder's flush leaves 5 bytes the decoder has pre-read: reading further means the
//! stream was cut short).

/// Probabilities are 15-bit (of the bit being 0).
pub(super) const PROB_BITS: u32 = 15;

/// Renormalisation threshold.
const TOP: u32 = 1 << 24;

/// The encoder.
pub(super) struct Enc {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    out: Vec<u8>,
}

impl Enc {
    pub(super) fn new(out: Vec<u8>) -> Enc {
        Enc { low: 0, range: u32::MAX, cache: 0, cache_size: 1, out }
    }

    #[inline(always)]
    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                self.out.push(temp.wrapping_add(carry));
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    /// Code `bit` with probability `p` of a 0.
    #[inline(always)]
    pub(super) fn code(&mut self, p: u32, bit: bool) {
        let bound = (self.range >> PROB_BITS) * p;
        let mask = 0u32.wrapping_sub(bit as u32);
        self.low += (bound & mask) as u64;
        self.range = if bit { self.range - bound } else { bound };
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

pub(super) struct Dec<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    range: u32,
    code: u32,
}

impl<'a> Dec<'a> {
    pub(super) fn new(data: &'a [u8]) -> Dec<'a> {
        let mut d = Dec { data, pos: 0, range: u32::MAX, code: 0 };
        for _ in 0..5 {
            d.code = (d.code << 8) | d.byte() as u32;
        }
        d
    }

    /// The next byte; zeros past the end (the caller checks the position at the end).
    #[inline(always)]
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Decode a bit with probability `p` of a 0.
    #[inline(always)]
    pub(super) fn decide(&mut self, p: u32) -> bool {
        let bound = (self.range >> PROB_BITS) * p;
        let bit = self.code >= bound;
        // Both outcomes, then select: compiles to conditional moves.
        let (r0, r1) = (bound, self.range.wrapping_sub(bound));
        let (c0, c1) = (self.code, self.code.wrapping_sub(bound));
        self.range = if bit { r1 } else { r0 };
        self.code = if bit { c1 } else { c0 };
        // Renormalise: one byte is needed on a few percent of the decisions, without a
        // pattern, so the first step is done branch-free (shift by 0 or 8, the byte masked);
        // a second one (only after a very unlikely bit) loops.
        let need = self.range < TOP;
        let sh = 8 * need as u32;
        let b = self.data.get(self.pos).copied().unwrap_or(0) as u32 & 0u32.wrapping_sub(need as u32);
        self.range <<= sh;
        self.code = (self.code << sh) | b;
        self.pos += need as usize;
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.byte() as u32;
        }
        bit
    }
}
