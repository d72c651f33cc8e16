//! The CPU's fused LSTM step: a band of the LSTM convolution's int8 products in, the band's new
//! cell and hidden state out, in one pass over the pixels.
//!
//! On a CPU, libtorch runs each elementwise operation of the step (requantisation, the gate
//! tables, the cell update, the cell's tanh, the hidden state) as its own pass over int32
//! tensors of `4 R` channels: half of the `small` model's time went there. This kernel does the
//! same integer arithmetic (`docs/MODEL.md`; the formulas of [`crate::model::Conv::requant`] and
//! [`crate::model::Luts::lstm_cell`], written again here for the products' layout) pixel by
//! pixel, with each pixel's `4 R` sums in registers. It is compiled for AVX-512, AVX2 and the
//! baseline, chosen at run time; integer arithmetic gives the same bits on each.

use crate::model::{IntModel, CELL_LUT, GATE_LUT};

/// One input group's products for a band: pixel `p`'s `rows` sums at `acc[p * rows..]`; an
/// intensity group holds the high bytes' sums in columns `0..cout` and the low bytes' in
/// `cout..2 cout` (the value is `256 * hi + lo`; the constant is in the bias).
pub(super) struct Products<'a> {
    pub acc: &'a [i32],
    pub rows: usize,
}

/// The integer type of the requantisation sums: `i32` where the model's integers prove that
/// every partial sum fits ([`super::requant_fits_i32`]; vectorises on every x86-64), else `i64`.
/// (That proof counts the rounding term `2^(shift - 1)`, so every shift is then below 32.)
trait Sum:
    Copy + Ord + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> + std::ops::Shr<u32, Output = Self> + From<i32> + TryFrom<i64> + Into<i64>
{
}
impl Sum for i32 {}
impl Sum for i64 {}

/// A convolution's per-channel constants in the sums' type.
struct Requant<T> {
    /// Per group: a multiplier per output channel.
    mult: Vec<Vec<T>>,
    bias: Vec<T>,
    lo: T,
    hi: T,
}

impl<T: Sum> Requant<T> {
    fn new(mult: &[(Vec<i64>, bool)], bias: &[i64], lo: i64, hi: i64) -> Option<Requant<T>> {
        let conv = |v: &[i64]| v.iter().map(|&x| T::try_from(x).ok()).collect::<Option<Vec<T>>>();
        Some(Requant {
            mult: mult.iter().map(|(m, _)| conv(m)).collect::<Option<_>>()?,
            bias: conv(bias)?,
            lo: T::try_from(lo).ok()?,
            hi: T::try_from(hi).ok()?,
        })
    }
}

/// A layer's LSTM convolution and cell, laid out for [`LstmCpu::band`].
pub(super) struct LstmCpu {
    r: usize,
    /// Per group, in the torch convolution's group order: whether it is the intensity.
    intensity: Vec<bool>,
    /// The requantisation in `i32` (when it provably fits) or `i64`.
    narrow: Option<Requant<i32>>,
    wide: Requant<i64>,
    shift: Vec<u32>,
    /// The gate tables indexed by `z + 128`.
    sigmoid: [i32; GATE_LUT],
    tanh: [i32; GATE_LUT],
    /// The cell's tanh, indexed by `clamp(s >> 5, -1024, 1023) + 1024`.
    tanh_cell: [i32; CELL_LUT],
}

/// Where a band's pixels are in the `[R, N, H, W]` cell and hidden tensors: channel `c`'s
/// pixel `p` at `c * plane + offset + p`.
#[derive(Clone, Copy)]
pub(super) struct Place {
    pub plane: usize,
    pub offset: usize,
    pub pixels: usize,
}

/// Pixels whose gate indices are computed before their cells are updated.
const BLOCK: usize = 64;

impl LstmCpu {
    /// `mult`: each merged group's multipliers and whether it is the intensity; `bias`: the
    /// torch convolution's folded bias; `fits_i32`: [`super::requant_fits_i32`].
    pub fn new(model: &IntModel, layer: usize, mult: Vec<(Vec<i64>, bool)>, bias: Vec<i64>, fits_i32: bool) -> LstmCpu {
        let conv = &model.layers[layer].lstm;
        let t = |v: &[i16]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let (lo, hi) = (conv.lo as i64, conv.hi as i64);
        LstmCpu {
            r: model.arch.layers[layer].r,
            intensity: mult.iter().map(|(_, i)| *i).collect(),
            narrow: if fits_i32 { Requant::new(&mult, &bias, lo, hi) } else { None },
            wide: Requant::new(&mult, &bias, lo, hi).expect("i64 holds every i64"),
            shift: conv.shift.iter().map(|&s| s as u32).collect(),
            sigmoid: t(&model.luts.sigmoid).try_into().expect("validated: 256 entries"),
            tanh: t(&model.luts.tanh).try_into().expect("validated: 256 entries"),
            tanh_cell: t(&model.luts.tanh_cell).try_into().expect("validated: 2048 entries"),
        }
    }

    /// One band: the products of each group (in order) in, the cell `s` updated and the hidden
    /// state `h` written at `place`.
    pub fn band(&self, products: &[Products], s: &mut [i32], h: &mut [i8], place: Place) {
        assert_eq!(products.len(), self.intensity.len(), "one product per group");
        let last = (self.r - 1) * place.plane + place.offset + place.pixels;
        assert!(s.len() >= last && h.len() >= last, "the band lies inside the state");
        for (p, &intensity) in products.iter().zip(&self.intensity) {
            let cols = if intensity { 8 * self.r } else { 4 * self.r };
            assert!(p.rows >= cols && p.acc.len() >= place.pixels * p.rows, "a product holds every pixel's sums");
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU has the features the function is compiled for (checked above).
                return unsafe { self.band_avx512(products, s, h, place) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: as above.
                return unsafe { self.band_avx2(products, s, h, place) };
            }
        }
        self.band_any(products, s, h, place)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
    unsafe fn band_avx512(&self, products: &[Products], s: &mut [i32], h: &mut [i8], place: Place) {
        self.band_any(products, s, h, place)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn band_avx2(&self, products: &[Products], s: &mut [i32], h: &mut [i8], place: Place) {
        self.band_any(products, s, h, place)
    }

    #[inline(always)]
    fn band_any(&self, products: &[Products], s: &mut [i32], h: &mut [i8], place: Place) {
        let (r, cout) = (self.r, 4 * self.r);
        // Gate table indices `z + 128` of a block of pixels, channel-major (each channel's
        // indices contiguous, so that the cell loop below reads them as vectors).
        let mut z = vec![0u8; BLOCK * cout];
        let mut start = 0;
        while start < place.pixels {
            let n = BLOCK.min(place.pixels - start);
            match &self.narrow {
                Some(q) => self.requant(q, products, start, n, &mut z),
                None => self.requant(&self.wide, products, start, n, &mut z),
            }
            for c in 0..r {
                let at = c * place.plane + place.offset + start;
                let (s, h) = (&mut s[at..at + n], &mut h[at..at + n]);
                let zc = |k: usize| &z[k * BLOCK..k * BLOCK + n];
                let (zi, zf, zo, zg) = (zc(c), zc(r + c), zc(2 * r + c), zc(3 * r + c));
                for (((((s, h), &zi), &zf), &zo), &zg) in s.iter_mut().zip(h.iter_mut()).zip(zi).zip(zf).zip(zo).zip(zg) {
                    let (i, f, o) = (self.sigmoid[zi as usize], self.sigmoid[zf as usize], self.sigmoid[zo as usize]);
                    let g = self.tanh[zg as usize];
                    let cell = ((f * *s + ((i * g) << 5)) >> 7).clamp(-32767, 32767);
                    *s = cell;
                    let t = self.tanh_cell[(((cell >> 5).clamp(-1024, 1023) + 1024) as usize) & (CELL_LUT - 1)];
                    *h = ((o * t) >> 7).clamp(-127, 127) as i8;
                }
            }
            start += n;
        }
    }

    /// The gate indices `clamp(sum >> shift, lo, hi) + 128` of the `n` pixels from `start`,
    /// channel `c`'s at `z[c * BLOCK..]`, the sums in `T`.
    #[inline(always)]
    fn requant<T: Sum>(&self, q: &Requant<T>, products: &[Products], start: usize, n: usize, z: &mut [u8]) {
        let cout = 4 * self.r;
        let mut sum: Vec<T> = q.bias.clone();
        let k256 = T::from(256);
        for k in 0..n {
            let p = start + k;
            sum.copy_from_slice(&q.bias);
            for ((prod, mult), &intensity) in products.iter().zip(&q.mult).zip(&self.intensity) {
                let row = &prod.acc[p * prod.rows..p * prod.rows + prod.rows];
                if intensity {
                    let (hi, lo) = row.split_at(cout);
                    for (((s, &a), &b), &m) in sum.iter_mut().zip(hi).zip(lo).zip(mult) {
                        *s = *s + (k256 * T::from(a) + T::from(b)) * m;
                    }
                } else {
                    for ((s, &a), &m) in sum.iter_mut().zip(row).zip(mult) {
                        *s = *s + T::from(a) * m;
                    }
                }
            }
            for (c, (&s, &sh)) in sum.iter().zip(&self.shift).enumerate() {
                let v: i64 = (s >> sh).clamp(q.lo, q.hi).into();
                z[c * BLOCK + k] = (v + 128) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DType;
    use crate::model::file::{self, Rng};
    use crate::model::Size;

    /// Every compiled variant of the kernel (baseline, AVX2, AVX-512, as far as this CPU runs
    /// them) gives what the model's own formulas give ([`crate::model::Conv::requant`],
    /// [`crate::model::Luts::lstm_cell`]), on sums in i32 and in i64, bands at an offset.
    #[test]
    fn every_variant_computes_the_models_formulas() {
        let mut rng = Rng(7);
        for shrink in [false, true] {
            let mut m = file::random(&Size::Small.arch(), DType::U16, 3);
            if shrink {
                file::shrink_multipliers(&mut m);
            }
            let conv = &m.layers[0].lstm;
            let r = m.arch.layers[0].r;
            let cout = 4 * r;
            let ig = conv.groups.len() - 1;
            let mult = conv.groups.iter().enumerate().map(|(g, grp)| (grp.mult.iter().map(|&v| v as i64).collect(), g == ig)).collect();
            let bias: Vec<i64> = (0..cout).map(|c| conv.bias[c] + (1i64 << (conv.shift[c] - 1))).collect();
            let fits = (0..cout).all(|o| file::requant_bound(conv, o, Some(ig)) < 1i128 << 31);
            assert_eq!(fits, shrink, "shrunk multipliers fit in i32, random ones do not");
            let k = LstmCpu::new(&m, 0, mult, bias, fits);
            // Products within what the convolution can produce: i8 inputs, and the intensity's
            // bytes.
            let (pixels, plane, offset) = (150, 200, 30);
            let prods: Vec<(Vec<i32>, usize)> = conv
                .groups
                .iter()
                .enumerate()
                .map(|(g, grp)| {
                    let rows = if g == ig { 2 * cout + 3 } else { cout + 1 };
                    let lim = (grp.cin * 9 * 127 * 128) as i64;
                    ((0..pixels * rows).map(|_| rng.range(-lim / 4, lim / 4) as i32).collect(), rows)
                })
                .collect();
            let s0: Vec<i32> = (0..r * plane).map(|_| rng.range(-32767, 32767) as i32).collect();
            // What the formulas give.
            let (mut s_want, mut h_want) = (s0.clone(), vec![0i8; r * plane]);
            for p in 0..pixels {
                let accs: Vec<Vec<i32>> = (0..cout)
                    .map(|c| {
                        prods
                            .iter()
                            .enumerate()
                            .map(|(g, (a, rows))| if g == ig { 256 * a[p * rows + c] + a[p * rows + cout + c] } else { a[p * rows + c] })
                            .collect()
                    })
                    .collect();
                let z: Vec<i32> = (0..cout).map(|c| conv.requant(c, &accs[c])).collect();
                for c in 0..r {
                    let at = c * plane + offset + p;
                    h_want[at] = m.luts.lstm_cell([z[c], z[r + c], z[2 * r + c], z[3 * r + c]], &mut s_want[at]) as i8;
                }
            }
            let products: Vec<Products> = prods.iter().map(|(a, rows)| Products { acc: a, rows: *rows }).collect();
            let place = Place { plane, offset, pixels };
            let run = |f: &dyn Fn(&mut [i32], &mut [i8])| {
                let (mut s, mut h) = (s0.clone(), vec![0i8; r * plane]);
                f(&mut s, &mut h);
                assert!(s == s_want && h == h_want, "shrunk {shrink}");
            };
            run(&|s, h| k.band_any(&products, s, h, place));
            run(&|s, h| k.band(&products, s, h, place));
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU runs AVX2 (checked).
                    run(&|s, h| unsafe { k.band_avx2(&products, s, h, place) });
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU runs these AVX-512 parts (checked).
                    run(&|s, h| unsafe { k.band_avx512(&products, s, h, place) });
                }
            }
        }
    }
}
