//! Property tests of the error bounds: random frames (sizes, window lengths, type limits, random
//! float bit patterns), random bounds; every decoded pixel is checked against the bound it was
//! coded under, non-finite floats and every byte outside the pixels must come back exactly.

use proptest::prelude::*;
use tezipfs::codec::entropy::EntropyChoice;
use tezipfs::codec::{decode_window, encode_window, Bound, DType, Decoder, FormatSpec, Options, PredictorChoice, PredictorId, RawSpec};

/// Header bytes in front of the pixels of every file (kept verbatim by the codec).
const SKIP: usize = 3;

const F32_SPECIALS: [u32; 16] = [
    0x7fc0_0000, // NaN
    0x7fc0_0001, // NaN with payload
    0xffc0_1234, // negative NaN with payload
    0x7f80_0001, // signalling NaN
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x8000_0000, // -0.0
    0x0000_0000, // +0.0
    0x0000_0001, // smallest subnormal
    0x8000_0001, // smallest negative subnormal
    0x007f_ffff, // largest subnormal
    0x0080_0000, // f32::MIN_POSITIVE
    0x7f7f_ffff, // f32::MAX
    0xff7f_ffff, // f32::MIN
    0x3f80_0000, // 1.0
    0xbf80_0000, // -1.0
];

#[derive(Clone, Debug)]
struct Case {
    dtype: DType,
    width: u32,
    height: u32,
    predictor: PredictorChoice,
    entropy: EntropyChoice,
    /// Integer images, one per frame.
    images: Vec<Vec<u32>>,
    /// Header bytes of each file.
    headers: Vec<[u8; SKIP]>,
}

impl Case {
    fn files(&self) -> Vec<Vec<u8>> {
        self.images
            .iter()
            .zip(&self.headers)
            .map(|(img, h)| {
                let mut px = Vec::new();
                self.dtype.encode_pixels(img, false, &mut px);
                [&h[..], &px].concat()
            })
            .collect()
    }

    fn format(&self) -> FormatSpec {
        FormatSpec::Raw(RawSpec { width: self.width, height: self.height, dtype: self.dtype, skip: SKIP })
    }
}

/// One pixel: (kind, random bits) turned into a value at (x, y, t) of a frame.
fn pixel(dtype: DType, kind: u8, bits: u32, x: u32, y: u32, t: u32, slope: i32) -> u32 {
    let mask = dtype.mask();
    if dtype == DType::F32 {
        let v = match kind {
            // smooth: a tilted plane that drifts over time, with a little noise, either sign
            0..=59 => {
                let noise = (bits % 1000) as f32 / 4000.0;
                slope as f32 * 0.37 * (x as f32 - 10.0) + 0.11 * y as f32 + 0.05 * t as f32 + noise
            }
            60..=79 => f32::from_bits(F32_SPECIALS[bits as usize % F32_SPECIALS.len()]),
            // any bit pattern (NaNs and infinities included)
            _ => f32::from_bits(bits),
        };
        return dtype.to_image(v.to_bits());
    }
    match kind {
        0..=59 => {
            // a plane around the middle of the range, drifting, with small noise
            let mid = (mask / 2) as i64;
            let scale = (mask as i64 / 400).max(1);
            let v = mid + scale * (slope as i64 * x as i64 + 2 * y as i64 + 3 * t as i64) + (bits % 9) as i64 - 4;
            v.clamp(0, mask as i64) as u32
        }
        60..=69 => 0,                 // the lowest value of the type
        70..=79 => mask,              // the highest value of the type
        80..=84 => dtype.to_image(0), // numeric zero
        _ => bits & mask,
    }
}

fn case_strategy(dtypes: &'static [DType]) -> impl Strategy<Value = Case> {
    let predictor = prop_oneof![
        Just(PredictorChoice::Auto),
        Just(PredictorChoice::Fixed(PredictorId::Previous)),
        Just(PredictorChoice::Fixed(PredictorId::PreviousMed)),
        Just(PredictorChoice::Fixed(PredictorId::Blend)),
        Just(PredictorChoice::Fixed(PredictorId::Spatial)),
        Just(PredictorChoice::Fixed(PredictorId::None)),
        Just(PredictorChoice::Fixed(PredictorId::Linear)),
        Just(PredictorChoice::Fixed(PredictorId::Motion)),
        Just(PredictorChoice::Fixed(PredictorId::MotionMed)),
    ];
    let entropy = proptest::sample::select(&[EntropyChoice::Fast, EntropyChoice::Balanced, EntropyChoice::Best][..]);
    (proptest::sample::select(dtypes), 1u32..=40, 1u32..=40, 1usize..=5, (predictor, entropy), -3i32..=3).prop_flat_map(
        |(dtype, w, h, n, (predictor, entropy), slope)| {
            let px = (w * h) as usize * n;
            (proptest::collection::vec((0u8..100, any::<u32>()), px), proptest::collection::vec(any::<[u8; SKIP]>(), n)).prop_map(move |(pixels, headers)| {
                let npx = (w * h) as usize;
                let images = (0..n)
                    .map(|t| {
                        (0..npx)
                            .map(|i| {
                                let (kind, bits) = pixels[t * npx + i];
                                pixel(dtype, kind, bits, i as u32 % w, i as u32 / w, t as u32, slope)
                            })
                            .collect()
                    })
                    .collect();
                Case { dtype, width: w, height: h, predictor, entropy, images, headers }
            })
        },
    )
}

fn abs_bound() -> impl Strategy<Value = Bound> {
    prop_oneof![
        (0u32..=6).prop_map(|e| Bound::Abs(e as f64)),
        (1u32..40).prop_map(|k| Bound::Abs(k as f64 / 8.0)),
        (1u32..100).prop_map(|k| Bound::Abs(k as f64 / 1000.0)),
    ]
}

fn rel_bound() -> impl Strategy<Value = Bound> {
    prop_oneof![(0u32..200).prop_map(|k| Bound::Rel(k as f64 / 1000.0)), Just(Bound::Rel(0.5)), Just(Bound::Rel(0.999))]
}

fn pwrel_bound() -> impl Strategy<Value = Bound> {
    prop_oneof![(0u32..500).prop_map(|k| Bound::PwRel(k as f64 / 1000.0)), Just(Bound::PwRel(0.9))]
}

/// Encode the case under `bound`, decode it, and check every byte and pixel.
fn check(case: &Case, bound: Bound) -> Result<(), TestCaseError> {
    let files = case.files();
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let opts = Options { format: case.format(), bound, predictor: case.predictor, entropy: case.entropy, ..Options::default() };
    let enc = encode_window(&refs, &opts).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    let back = decode_window(&enc.blob).map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
    prop_assert_eq!(back.len(), files.len());

    // random access, backwards, gives the same bytes as decoding in order
    let mut dec = Decoder::new(&enc.blob).map_err(|e| TestCaseError::fail(format!("parse: {e}")))?;
    for i in (0..files.len()).rev() {
        let b = dec.decode(i, |_, _| {}).map_err(|e| TestCaseError::fail(format!("decode({i}): {e}")))?;
        prop_assert!(b == back[i], "random access to entry {} differs from in-order decoding", i);
    }

    let dtype = case.dtype;
    for (t, (got, orig)) in back.iter().zip(&files).enumerate() {
        prop_assert_eq!(got.len(), orig.len(), "frame {} length", t);
        prop_assert_eq!(&got[..SKIP], &orig[..SKIP], "frame {} header bytes", t);
        let mut img = Vec::new();
        dtype.decode_pixels(&got[SKIP..], false, &mut img);
        let x_img = &case.images[t];
        let finite: Vec<f64> = x_img.iter().map(|&p| dtype.value(p)).filter(|v| v.is_finite()).collect();
        let range = if finite.is_empty() {
            0.0
        } else {
            finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - finite.iter().cloned().fold(f64::INFINITY, f64::min)
        };
        for (i, (&g, &x)) in img.iter().zip(x_img).enumerate() {
            let (gv, xv) = (dtype.value(g), dtype.value(x));
            if !xv.is_finite() {
                prop_assert_eq!(dtype.from_image(g), dtype.from_image(x), "frame {} pixel {}: non-finite value must come back bit-exact", t, i);
                continue;
            }
            let e = match bound {
                Bound::Lossless => 0.0,
                Bound::Abs(e) => e,
                Bound::Rel(r) => r * range,
                Bound::PwRel(p) => p * xv.abs(),
            };
            prop_assert!(
                gv.is_finite() && (gv - xv).abs() <= e,
                "{} {}x{} frame {} pixel {}: {} -> {} (raw {:#x} -> {:#x}), error {} > bound {} ({})",
                dtype,
                case.width,
                case.height,
                t,
                i,
                xv,
                gv,
                dtype.from_image(x),
                dtype.from_image(g),
                (gv - xv).abs(),
                e,
                bound
            );
        }
    }
    Ok(())
}

const BOUNDED_TYPES: &[DType] = &[DType::U8, DType::U16, DType::F32, DType::I16];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn abs_bound_holds(case in case_strategy(BOUNDED_TYPES), bound in abs_bound()) {
        check(&case, bound)?;
    }

    #[test]
    fn rel_bound_holds(case in case_strategy(BOUNDED_TYPES), bound in rel_bound()) {
        check(&case, bound)?;
    }

    #[test]
    fn pwrel_bound_holds(case in case_strategy(BOUNDED_TYPES), bound in pwrel_bound()) {
        check(&case, bound)?;
    }

    #[test]
    fn lossless_is_bit_exact(case in case_strategy(&DType::ALL)) {
        let files = case.files();
        let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
        let opts = Options { format: case.format(), predictor: case.predictor, entropy: case.entropy, ..Options::default() };
        let enc = encode_window(&refs, &opts).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
        let back = decode_window(&enc.blob).map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
        prop_assert!(back == files, "lossless round trip of {} {}x{} x{} differs", case.dtype, case.width, case.height, files.len());
    }
}

/// The bound must not be met by luck: with a coarse bound on noisy detector frames most pixels
/// are coded (not escaped), the reconstruction differs from the original, and the blob is smaller
/// than the lossless one.
#[test]
fn coarse_bounds_are_actually_lossy() {
    use tezipfs::fixtures::{generate_images, SequenceSpec};
    for &dtype in BOUNDED_TYPES {
        let (w, h) = (48u32, 32u32);
        let spec = SequenceSpec { dtype, peak: 200.0, dark: 20.0, ..SequenceSpec::detector_u16(w, h, 4, 5) };
        let images = generate_images(&spec);
        let case =
            Case { dtype, width: w, height: h, predictor: PredictorChoice::Auto, entropy: EntropyChoice::default(), images, headers: vec![[1, 2, 3]; 4] };
        let bound = if dtype.is_float() { Bound::Abs(1.0) } else { Bound::Abs(3.0) };
        check(&case, bound).unwrap();
        let files = case.files();
        let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
        let opts = Options { format: case.format(), bound, ..Options::default() };
        let enc = encode_window(&refs, &opts).unwrap();
        let back = decode_window(&enc.blob).unwrap();
        assert!(back != files, "{dtype}: a coarse bound on noisy data should change some pixel");
        let lossless = encode_window(&refs, &Options { format: case.format(), ..Options::default() }).unwrap();
        assert!(enc.blob.len() < lossless.blob.len(), "{dtype}: lossy {} bytes >= lossless {}", enc.blob.len(), lossless.blob.len());
        for r in &enc.entries {
            match r {
                tezipfs::codec::window::EntryReport::Frame { escapes } => {
                    assert!(*escapes < w * h / 4, "{dtype}: {escapes} escapes of {} pixels", w * h)
                }
                other => panic!("{dtype}: unexpected {other:?}"),
            }
        }
    }
}

/// Bounds hold with the linear predictor and the adaptive stage on frames at the type limits,
/// 16-bit included, at 1x1, 1xN, Nx1 and odd sizes.
#[test]
fn linear_and_adaptive_keep_bounds_at_limits() {
    for dtype in [DType::U8, DType::U16, DType::U32, DType::F32] {
        for (w, h) in [(1u32, 1u32), (1, 7), (7, 1), (13, 9)] {
            let n = (w * h) as usize;
            let max = dtype.mask();
            let patterns: Vec<Vec<Vec<u32>>> = vec![
                vec![vec![0; n]; 3],
                vec![vec![max; n]; 3],
                (0..3).map(|t| (0..n).map(|i| if (i + t) % 2 == 0 { 0 } else { max }).collect()).collect(),
                (0..3)
                    .map(|t| {
                        (0..n).map(|i| pixel(dtype, (i * 37 % 100) as u8, (i * 2654435761usize) as u32, i as u32 % w, i as u32 / w, t as u32, 1)).collect()
                    })
                    .collect(),
            ];
            for images in patterns {
                for (predictor, entropy) in [
                    (PredictorChoice::Fixed(PredictorId::Linear), EntropyChoice::Best),
                    (PredictorChoice::Auto, EntropyChoice::Balanced),
                    (PredictorChoice::Fixed(PredictorId::Previous), EntropyChoice::Best),
                ] {
                    let case = Case { dtype, width: w, height: h, predictor, entropy, headers: vec![[1, 2, 3]; images.len()], images: images.clone() };
                    for bound in [Bound::Lossless, Bound::Abs(1.0), Bound::Abs(2.0), Bound::Abs(4.0), Bound::Rel(0.01), Bound::PwRel(0.05)] {
                        if let Err(e) = check(&case, bound) {
                            panic!("{dtype} {w}x{h} {predictor} {entropy} {bound}: {e}");
                        }
                    }
                }
            }
        }
    }
}
