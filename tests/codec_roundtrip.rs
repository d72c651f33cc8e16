//! Integration tests of the frame codec: bit-exact round trips through `encode_window` /
//! `decode_window` / `Decoder::decode`, every pixel type, raw and TIFF formats, opaque files, and
//! corrupted or truncated blobs.

#[path = "common/skip.rs"]
mod skip;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tezipfs::codec::format::tiff;
use tezipfs::codec::window::{plan_windows, EntryReport};
use tezipfs::codec::{analyze, decode_window, encode_window, Bound, DType, Decoder, Encoded, FormatSpec, Options, PredictorChoice, PredictorId, RawSpec};
use tezipfs::fixtures::{generate_images, generate_raw, Rng, SequenceSpec};

const PREDICTORS: [PredictorChoice; 9] = [
    PredictorChoice::Fixed(PredictorId::None),
    PredictorChoice::Fixed(PredictorId::Linear),
    PredictorChoice::Fixed(PredictorId::Previous),
    PredictorChoice::Fixed(PredictorId::PreviousMed),
    PredictorChoice::Fixed(PredictorId::Blend),
    PredictorChoice::Fixed(PredictorId::Spatial),
    PredictorChoice::Fixed(PredictorId::Motion),
    PredictorChoice::Fixed(PredictorId::MotionMed),
    PredictorChoice::Auto,
];

fn raw(width: u32, height: u32, dtype: DType, skip: usize) -> FormatSpec {
    FormatSpec::Raw(RawSpec { width, height, dtype, skip })
}

/// Options of the tests, with plain headers: the small frames here would otherwise take version
/// 14 (a compressed header) and hide the version each feature needs; the tests of version 14
/// turn it on.
fn options(format: FormatSpec, predictor: PredictorChoice, exhaustive: bool) -> Options {
    Options { format, predictor, exhaustive, compact_header: false, ..Options::default() }
}

fn refs(files: &[Vec<u8>]) -> Vec<&[u8]> {
    files.iter().map(|f| &f[..]).collect()
}

fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// Assert two files are identical, with a short message instead of a huge dump.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: decoded file differs (len {} vs {}, crc {:08x} vs {:08x}, first difference at byte {first:?})",
            got.len(),
            want.len(),
            crc(got),
            crc(want)
        );
    }
}

/// A deterministic permutation of 0..n.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Decode `blob` in every way the API allows and check every entry against `files`:
/// `decode_window`, `decode_all`, random access in reverse and shuffled order on one decoder
/// (checking what `also` hands over), and one fresh decoder per entry.
fn check_decodes(blob: &[u8], files: &[Vec<u8>], what: &str) {
    let all = decode_window(blob).unwrap_or_else(|e| panic!("{what}: decode_window failed: {e}"));
    assert_eq!(all.len(), files.len(), "{what}: entry count");
    for (i, (g, w)) in all.iter().zip(files).enumerate() {
        assert_same(g, w, &format!("{what}: decode_window entry {i}"));
    }

    let mut dec = Decoder::new(blob).unwrap();
    assert_eq!(dec.len(), files.len());
    assert_eq!(dec.is_empty(), files.is_empty());
    let all2 = dec.decode_all().unwrap();
    assert!(all2 == all, "{what}: decode_all differs from decode_window");

    let orders: Vec<(String, Vec<usize>)> = vec![
        ("reverse".into(), (0..files.len()).rev().collect()),
        ("shuffled".into(), permutation(files.len(), 42)),
        ("shuffled twice".into(), [permutation(files.len(), 7), permutation(files.len(), 8)].concat()),
    ];
    for (name, order) in orders {
        let mut dec = Decoder::new(blob).unwrap();
        for &i in &order {
            let mut handed = Vec::new();
            let got = dec
                .decode(i, |e, bytes| {
                    assert_same(&bytes, &files[e], &format!("{what}: {name}: frame {e} handed over while seeking {i}"));
                    handed.push(e);
                })
                .unwrap_or_else(|e| panic!("{what}: {name}: decode({i}) failed: {e}"));
            assert_same(&got, &files[i], &format!("{what}: {name}: decode({i})"));
            assert!(handed.iter().all(|&e| e < i), "{what}: frames handed over must come before {i}: {handed:?}");
        }
    }
    for (i, want) in files.iter().enumerate() {
        let mut dec = Decoder::new(blob).unwrap();
        let got = dec.decode(i, |_, _| {}).unwrap();
        assert_same(&got, want, &format!("{what}: fresh decoder, entry {i}"));
    }
    // Asking for an entry that does not exist is an error, not a panic.
    let mut dec = Decoder::new(blob).unwrap();
    assert!(dec.decode(files.len(), |_, _| {}).is_err(), "{what}: entry past the end");
}

/// Encode, check the entry kinds, decode every way. Returns the encoding.
fn round_trip(files: &[Vec<u8>], opts: &Options, what: &str) -> Encoded {
    let enc = encode_window(&refs(files), opts).unwrap_or_else(|e| panic!("{what}: encode failed: {e}"));
    assert_eq!(enc.entries.len(), files.len(), "{what}: one report per file");
    check_decodes(&enc.blob, files, what);
    enc
}

fn assert_all_frames(enc: &Encoded, what: &str) {
    for (i, r) in enc.entries.iter().enumerate() {
        assert_eq!(*r, EntryReport::Frame { escapes: 0 }, "{what}: entry {i} should be a lossless frame");
    }
    assert!(enc.predictor.is_some(), "{what}: a window with frames has a predictor");
}

fn assert_opaque(r: &EntryReport, what: &str) {
    match r {
        EntryReport::Opaque { reason } => assert!(!reason.trim().is_empty(), "{what}: opaque without a reason"),
        EntryReport::Frame { .. } => panic!("{what}: expected an opaque entry, got {r:?}"),
    }
}

/// `n` random bytes.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Integer images of `frames` frames of `w`x`h` whose values span the whole type range, with a
/// slowly changing smooth part (so predictors have something to predict) and the limits.
fn wide_range_images(dtype: DType, w: usize, h: usize, frames: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    let mask = dtype.mask() as u64;
    (0..frames)
        .map(|t| {
            (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as u64, (i / w) as u64);
                    let r = rng.next_u64();
                    let v = match r % 10 {
                        0 => 0,
                        1 => mask,
                        2 => r >> 8,
                        _ => (x * 37 + y * 11 + t as u64 * 3 + (r >> 60)) * (mask / 255).max(1),
                    } & mask;
                    // for f32, keep the random patterns (any bits are a valid float image)
                    v as u32
                })
                .collect()
        })
        .collect()
}

fn raw_files(dtype: DType, images: &[Vec<u32>], header: Option<(usize, u64)>) -> Vec<Vec<u8>> {
    images
        .iter()
        .enumerate()
        .map(|(k, img)| {
            let mut px = Vec::new();
            dtype.encode_pixels(img, false, &mut px);
            match header {
                None => px,
                Some((skip, seed)) => {
                    let mut f = random_bytes(skip, seed + k as u64);
                    f.extend_from_slice(&px);
                    f
                }
            }
        })
        .collect()
}

// ---- raw round trips ---------------------------------------------------------------------------

#[test]
fn generated_sequences_every_dtype_predictor_and_mode() {
    for dtype in DType::ALL {
        let spec = SequenceSpec { dtype, ..SequenceSpec::detector_u16(37, 23, 5, 11 + dtype.id() as u64) };
        let plain = generate_raw(&spec);
        assert_eq!(plain[0].len(), 37 * 23 * dtype.bytes());
        for skip in [0usize, 5, 64] {
            let files: Vec<Vec<u8>> = plain.iter().enumerate().map(|(k, f)| [random_bytes(skip, 1000 * skip as u64 + k as u64), f.clone()].concat()).collect();
            for predictor in PREDICTORS {
                for exhaustive in [false, true] {
                    let what = format!("{dtype} skip={skip} {predictor} exhaustive={exhaustive}");
                    let opts = options(raw(37, 23, dtype, skip), predictor, exhaustive);
                    let enc = round_trip(&files, &opts, &what);
                    assert_all_frames(&enc, &what);
                    if let PredictorChoice::Fixed(p) = predictor {
                        assert_eq!(enc.predictor, Some(p), "{what}: fixed predictor must be used");
                    }
                    let dec = Decoder::new(&enc.blob).unwrap();
                    for i in 0..files.len() {
                        let l = dec.layout(i).expect("frame entry has a layout");
                        assert_eq!((l.width, l.height, l.dtype, l.big_endian), (37, 23, dtype, false), "{what}");
                        assert_eq!(l.ranges, vec![skip..skip + 37 * 23 * dtype.bytes()], "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn detector_sequence_compresses() {
    // Not only correct but actually coded: a detector-like u16 sequence must shrink well.
    let spec = SequenceSpec::detector_u16(128, 96, 8, 3);
    let files = generate_raw(&spec);
    let total: usize = files.iter().map(|f| f.len()).sum();
    let enc = round_trip(&files, &options(raw(128, 96, DType::U16, 0), PredictorChoice::Auto, false), "detector u16");
    assert_all_frames(&enc, "detector u16");
    assert!(enc.blob.len() * 2 < total, "blob {} bytes for {} input bytes", enc.blob.len(), total);
}

#[test]
fn wide_range_values_every_dtype() {
    for dtype in DType::ALL {
        let imgs = wide_range_images(dtype, 19, 7, 4, dtype.id() as u64);
        for header in [None, Some((3usize, 99u64))] {
            let skip = header.map_or(0, |h| h.0);
            let files = raw_files(dtype, &imgs, header);
            for predictor in PREDICTORS {
                for exhaustive in [false, true] {
                    let what = format!("wide {dtype} skip={skip} {predictor} exhaustive={exhaustive}");
                    let enc = round_trip(&files, &options(raw(19, 7, dtype, skip), predictor, exhaustive), &what);
                    assert_all_frames(&enc, &what);
                }
            }
        }
    }
}

#[test]
fn odd_and_degenerate_sizes() {
    let sizes = [(1u32, 1u32), (1, 17), (17, 1), (1, 64), (64, 1), (3, 3), (7, 5), (5, 7), (13, 11), (31, 2), (9, 9)];
    for dtype in DType::ALL {
        for &(w, h) in &sizes {
            for frames in [1usize, 3] {
                let imgs = wide_range_images(dtype, w as usize, h as usize, frames, (w * 100 + h) as u64);
                for skip in [0usize, 7] {
                    let files = raw_files(dtype, &imgs, (skip > 0).then_some((skip, 5)));
                    for predictor in PREDICTORS {
                        for exhaustive in [false, true] {
                            let what = format!("{w}x{h}x{frames} {dtype} skip={skip} {predictor} exhaustive={exhaustive}");
                            let enc = round_trip(&files, &options(raw(w, h, dtype, skip), predictor, exhaustive), &what);
                            assert_all_frames(&enc, &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn constant_and_extreme_frames() {
    for dtype in DType::ALL {
        let (w, h) = (11usize, 6usize);
        let mask = dtype.mask();
        let imgs = vec![
            vec![0u32; w * h],
            vec![mask; w * h],
            vec![0u32; w * h],
            (0..w * h).map(|i| if i % 2 == 0 { 0 } else { mask }).collect(),
            vec![mask / 2 + 1; w * h],
        ];
        let files = raw_files(dtype, &imgs, None);
        for predictor in PREDICTORS {
            for exhaustive in [false, true] {
                let what = format!("extreme {dtype} {predictor} exhaustive={exhaustive}");
                let enc = round_trip(&files, &options(raw(w as u32, h as u32, dtype, 0), predictor, exhaustive), &what);
                assert_all_frames(&enc, &what);
            }
        }
    }
}

#[test]
fn empty_window_and_single_files() {
    let enc = encode_window(&[], &Options::default()).unwrap();
    assert!(enc.entries.is_empty());
    assert_eq!(enc.predictor, None);
    assert_eq!(decode_window(&enc.blob).unwrap(), Vec::<Vec<u8>>::new());
    let dec = Decoder::new(&enc.blob).unwrap();
    assert!(dec.is_empty());

    // one frame alone, one opaque file alone
    let f = raw_files(DType::U16, &wide_range_images(DType::U16, 4, 4, 1, 1), None);
    let enc = round_trip(&f, &options(raw(4, 4, DType::U16, 0), PredictorChoice::Auto, false), "single frame");
    assert_all_frames(&enc, "single frame");
    let o = vec![b"just some text\n".to_vec()];
    let enc = round_trip(&o, &Options::default(), "single opaque");
    assert_opaque(&enc.entries[0], "single opaque");
    assert_eq!(enc.predictor, None);
}

// ---- f32 special values ------------------------------------------------------------------------

const SPECIAL_BITS: [u32; 14] = [
    0x7fc0_0001, // quiet NaN with payload
    0xffc0_1234, // negative quiet NaN with payload
    0x7f80_0001, // signalling NaN
    0x7fff_ffff, // NaN, all payload bits
    0xffff_ffff, // negative NaN, all bits
    0x8000_0000, // -0.0
    0x0000_0000, // +0.0
    0x7f80_0000, // +inf
    0xff80_0000, // -inf
    0x0000_0001, // smallest subnormal
    0x8000_0001, // smallest negative subnormal
    0x007f_ffff, // largest subnormal
    0x7f7f_ffff, // f32::MAX
    0xff7f_ffff, // f32::MIN
];

/// Smooth f32 frames with the special values sprinkled in (raw bits, not the image).
fn smooth_f32_with_specials(w: usize, h: usize, frames: usize) -> Vec<Vec<u32>> {
    (0..frames)
        .map(|t| {
            let mut bits: Vec<u32> = (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as f32, (i / w) as f32);
                    (100.0 + 0.5 * x + 0.25 * y + 0.125 * t as f32).to_bits()
                })
                .collect();
            for (k, &s) in SPECIAL_BITS.iter().enumerate() {
                // different places in different frames, and the same place in consecutive frames
                let p = (k * 7 + t * (k % 3)) % (w * h);
                bits[p] = s;
            }
            bits
        })
        .collect()
}

#[test]
fn f32_special_values_are_bit_exact() {
    let (w, h) = (12usize, 9usize);
    let frames = smooth_f32_with_specials(w, h, 4);
    let files: Vec<Vec<u8>> = frames.iter().map(|b| b.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    for predictor in PREDICTORS {
        for exhaustive in [false, true] {
            let what = format!("f32 specials {predictor} exhaustive={exhaustive}");
            let enc = round_trip(&files, &options(raw(w as u32, h as u32, DType::F32, 0), predictor, exhaustive), &what);
            assert_all_frames(&enc, &what);
            let back = decode_window(&enc.blob).unwrap();
            for (t, f) in back.iter().enumerate() {
                for (i, c) in f.chunks_exact(4).enumerate() {
                    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    assert_eq!(v, frames[t][i], "{what}: frame {t} pixel {i}: {v:#010x} != {:#010x}", frames[t][i]);
                }
            }
        }
    }
    // Under an error bound, non-finite values still come back bit-exact, and finite ones
    // (including -0.0, subnormals, MAX) within the bound.
    for bound in [Bound::Abs(0.01), Bound::Abs(3.0), Bound::Rel(0.001), Bound::PwRel(0.01)] {
        for predictor in PREDICTORS {
            let opts = Options { bound, ..options(raw(w as u32, h as u32, DType::F32, 0), predictor, false) };
            let enc = encode_window(&refs(&files), &opts).unwrap();
            let back = decode_window(&enc.blob).unwrap();
            for (t, f) in back.iter().enumerate() {
                let finite: Vec<f64> = frames[t].iter().map(|&b| f32::from_bits(b) as f64).filter(|v| v.is_finite()).collect();
                let range = finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max) - finite.iter().cloned().fold(f64::INFINITY, f64::min);
                for (i, c) in f.chunks_exact(4).enumerate() {
                    let (got, want) = (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), frames[t][i]);
                    let (g, x) = (f32::from_bits(got) as f64, f32::from_bits(want) as f64);
                    if !x.is_finite() {
                        assert_eq!(got, want, "{bound} {predictor}: non-finite frame {t} pixel {i}");
                        continue;
                    }
                    let e = match bound {
                        Bound::Abs(e) => e,
                        Bound::Rel(r) => r * range,
                        Bound::PwRel(p) => p * x.abs(),
                        Bound::Lossless => 0.0,
                    };
                    assert!(g.is_finite() && (g - x).abs() <= e, "{bound} {predictor}: frame {t} pixel {i}: {x} -> {g}");
                }
            }
        }
    }
}

// ---- real data -----------------------------------------------------------------------------------

#[test]
fn shared_data_sets_round_trip() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"));
    if !root.is_dir() {
        skip::skip(skip::Lack::Data, &format!("{} does not exist", root.display()));
        return;
    }
    let mut dirs: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("meta.json").is_file()).collect();
    dirs.sort();
    if dirs.is_empty() {
        skip::skip(skip::Lack::Data, &format!("no data sets (dir/meta.json) in {}", root.display()));
        return;
    }
    for dir in dirs {
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let width = meta["width"].as_u64().unwrap() as u32;
        let height = meta["height"].as_u64().unwrap() as u32;
        let dtype: DType = meta["dtype"].as_str().unwrap().parse().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("frame_") && n.ends_with(".raw"))
            .collect();
        names.sort();
        assert!(!names.is_empty(), "{}: no frames", dir.display());
        let mut files: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(dir.join(n)).unwrap()).collect();
        // meta.json rides along as an opaque file
        files.push(std::fs::read(dir.join("meta.json")).unwrap());
        let opts = Options { format: raw(width, height, dtype, 0), ..Options::default() };
        let analyses: Vec<_> = files.iter().map(|f| analyze(f, &opts.format)).collect();
        let (mut total_in, mut total_out) = (0usize, 0usize);
        let start = std::time::Instant::now();
        for win in plan_windows(&analyses, tezipfs::codec::window::DEFAULT_WINDOW) {
            let chunk = &files[win.clone()];
            let enc = encode_window(&refs(chunk), &opts).unwrap();
            let back = decode_window(&enc.blob).unwrap();
            assert_eq!(back.len(), chunk.len());
            for (k, (g, w)) in back.iter().zip(chunk).enumerate() {
                let idx = win.start + k;
                let name = names.get(idx).map_or("meta.json", |s| s.as_str());
                assert_same(g, w, &format!("{}/{name}", dir.display()));
                match (&enc.entries[k], idx < names.len()) {
                    (EntryReport::Frame { escapes: 0 }, true) => {}
                    (EntryReport::Opaque { reason }, false) => assert!(!reason.is_empty()),
                    (r, _) => panic!("{}/{name}: unexpected report {r:?}", dir.display()),
                }
            }
            total_in += chunk.iter().map(|f| f.len()).sum::<usize>();
            total_out += enc.blob.len();
        }
        println!(
            "{}: {} frames {width}x{height} {dtype}, ratio {:.3}, {:.2}s",
            dir.display(),
            names.len(),
            total_in as f64 / total_out as f64,
            start.elapsed().as_secs_f64()
        );
        assert!(total_out < total_in, "{}: lossless coding should not grow real frames", dir.display());
    }
}

// ---- TIFF ------------------------------------------------------------------------------------------

/// A window of TIFF files of one geometry in various layouts, from generated detector frames.
fn tiff_window(dtype: DType, w: u32, h: u32, layouts: &[(bool, u32, bool)], seed: u64) -> Vec<Vec<u8>> {
    let spec = SequenceSpec { dtype, ..SequenceSpec::detector_u16(w, h, layouts.len(), seed) };
    generate_images(&spec).iter().zip(layouts).map(|(img, &(be, rps, rev))| tiff::write(w, h, dtype, be, rps, rev, img)).collect()
}

#[test]
fn tiff_layouts_round_trip_as_frames() {
    let (w, h) = (23u32, 17u32);
    // (big_endian, rows_per_strip, reverse_strips)
    let layouts: Vec<Vec<(bool, u32, bool)>> = vec![
        vec![(false, h, false); 3],                                                   // LE, one strip
        vec![(true, h, false); 3],                                                    // BE, one strip
        vec![(false, 1, false); 3],                                                   // a strip per row
        vec![(true, 4, true); 3],                                                     // BE, strips reversed
        vec![(false, 5, true), (false, 3, false), (true, 1, true), (true, h, false)], // mixed in one window
    ];
    for dtype in [DType::U8, DType::U16, DType::U32, DType::F32, DType::I16, DType::I8, DType::I32] {
        for (li, lay) in layouts.iter().enumerate() {
            let files = tiff_window(dtype, w, h, lay, 17 + li as u64);
            for (k, f) in files.iter().enumerate() {
                assert!(tiff::parse(f).is_ok(), "fixture TIFF {dtype} layout {li} file {k} must parse");
            }
            for format in [FormatSpec::Auto, FormatSpec::Tiff] {
                for predictor in PREDICTORS {
                    let what = format!("tiff {dtype} layout {li} {format} {predictor}");
                    let enc = round_trip(&files, &options(format.clone(), predictor, false), &what);
                    assert_all_frames(&enc, &what);
                    let dec = Decoder::new(&enc.blob).unwrap();
                    for (k, &(be, _, _)) in lay.iter().enumerate() {
                        let l = dec.layout(k).unwrap();
                        assert_eq!((l.width, l.height, l.dtype, l.big_endian), (w, h, dtype, be), "{what} entry {k}");
                    }
                }
            }
        }
    }
    // exhaustive mode on one layout
    let files = tiff_window(DType::U16, w, h, &layouts[4], 5);
    let enc = round_trip(&files, &options(FormatSpec::Tiff, PredictorChoice::Auto, true), "tiff exhaustive");
    assert_all_frames(&enc, "tiff exhaustive");
}

/// A baseline TIFF built by hand, for layouts `tiff::write` does not make: strips back to back
/// (`gap` 0, merged into one range by the parser), strip byte counts larger than the strip
/// (`slack`), SHORT strip offsets, and optional tags left out (their defaults apply).
#[allow(clippy::too_many_arguments)]
fn custom_tiff(be: bool, w: u32, h: u32, dtype: DType, img: &[u32], rps: u32, gap: usize, slack: u32, short_offsets: bool, minimal_tags: bool) -> Vec<u8> {
    let p16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
    let p32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&if be { x.to_be_bytes() } else { x.to_le_bytes() });
    let mut px = Vec::new();
    dtype.encode_pixels(img, be, &mut px);
    let row = w as usize * dtype.bytes();
    let mut out = Vec::new();
    out.extend_from_slice(if be { b"MM\0*" } else { b"II*\0" });
    p32(&mut out, 0);
    let (mut offs, mut counts) = (Vec::new(), Vec::new());
    for r0 in (0..h as usize).step_by(rps as usize) {
        let r1 = (r0 + rps as usize).min(h as usize);
        offs.push(out.len() as u32);
        counts.push(((r1 - r0) * row) as u32 + slack);
        out.extend_from_slice(&px[r0 * row..r1 * row]);
        out.extend(std::iter::repeat_n(0xEEu8, gap));
    }
    out.extend(std::iter::repeat_n(0x11u8, slack as usize)); // the slack exists in the file
                                                             // (tag, type, values): values inline when they fit in 4 bytes, else in an array
    let off_type = if short_offsets { 3u16 } else { 4 };
    let mut entries: Vec<(u16, u16, Vec<u32>)> =
        vec![(256, 4, vec![w]), (257, 3, vec![h]), (258, 3, vec![dtype.bits()]), (273, off_type, offs), (279, 4, counts)];
    if !minimal_tags || rps < h {
        entries.push((278, 4, vec![rps]));
    }
    let fmt = if dtype.is_float() {
        3
    } else if dtype.is_signed_int() {
        2
    } else {
        1
    };
    if !minimal_tags || fmt != 1 {
        entries.push((339, 3, vec![fmt]));
    }
    if !minimal_tags {
        entries.extend([(259, 3, vec![1]), (262, 3, vec![1]), (277, 3, vec![1])]);
    }
    entries.sort_by_key(|e| e.0);
    let mut inline = Vec::new();
    for (_, typ, vals) in &entries {
        let size = if *typ == 3 { 2 } else { 4 };
        if vals.len() * size <= 4 {
            let mut b = Vec::new();
            for &v in vals {
                if size == 2 {
                    p16(&mut b, v as u16)
                } else {
                    p32(&mut b, v)
                }
            }
            b.resize(4, 0);
            inline.push(b);
        } else {
            if out.len() % 2 == 1 {
                out.push(0);
            }
            let at = out.len() as u32;
            for &v in vals {
                if size == 2 {
                    p16(&mut out, v as u16)
                } else {
                    p32(&mut out, v)
                }
            }
            let mut b = Vec::new();
            p32(&mut b, at);
            inline.push(b);
        }
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    let ifd = out.len() as u32;
    p16(&mut out, entries.len() as u16);
    for ((tag, typ, vals), val) in entries.iter().zip(&inline) {
        p16(&mut out, *tag);
        p16(&mut out, *typ);
        p32(&mut out, vals.len() as u32);
        out.extend_from_slice(val);
    }
    p32(&mut out, 0);
    let b = if be { ifd.to_be_bytes() } else { ifd.to_le_bytes() };
    out[4..8].copy_from_slice(&b);
    out
}

#[test]
fn hand_built_tiff_layouts_round_trip() {
    let (w, h) = (13u32, 10u32);
    for dtype in [DType::U8, DType::U16, DType::I16, DType::F32, DType::U32] {
        let imgs = generate_images(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(w, h, 3, 31) });
        for be in [false, true] {
            for (rps, gap, slack, short, minimal) in [
                (3u32, 0usize, 0u32, false, false),
                (3, 0, 0, true, true),
                (1, 0, 5, false, false),
                (4, 3, 2, true, false),
                (h, 0, 7, false, true),
                (2, 1, 0, false, true),
            ] {
                let files: Vec<Vec<u8>> = imgs.iter().map(|img| custom_tiff(be, w, h, dtype, img, rps, gap, slack, short, minimal)).collect();
                let what = format!("hand-built {dtype} be={be} rps={rps} gap={gap} slack={slack} short={short} minimal={minimal}");
                let layout = tiff::parse(&files[0]).unwrap_or_else(|e| panic!("{what}: does not parse: {e}"));
                assert_eq!((layout.width, layout.height, layout.dtype, layout.big_endian), (w, h, dtype, be), "{what}");
                let strips = h.div_ceil(rps) as usize;
                assert_eq!(layout.ranges.len(), if gap == 0 { 1 } else { strips }, "{what}: contiguous strips are merged");
                let mut back = Vec::new();
                layout.extract(&files[0], &mut back);
                assert_eq!(back, imgs[0], "{what}: pixels found where they are");
                for format in [FormatSpec::Auto, FormatSpec::Tiff] {
                    let enc = round_trip(&files, &options(format.clone(), PredictorChoice::Auto, false), &format!("{what} {format}"));
                    assert_all_frames(&enc, &what);
                }
            }
        }
    }
}

#[test]
fn entropy_choices_round_trip() {
    use tezipfs::codec::container::{Blob, Body};
    use tezipfs::codec::entropy::{EntropyChoice, Stage};
    for entropy in [EntropyChoice::Fast, EntropyChoice::Balanced, EntropyChoice::Best] {
        for dtype in DType::ALL {
            for (w, h, n) in [(1u32, 1u32, 2usize), (1, 23, 3), (23, 1, 3), (9, 7, 4), (64, 40, 3)] {
                let detector = generate_images(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(w, h, n, 40 + w as u64) });
                let wide = wide_range_images(dtype, w as usize, h as usize, n, 50 + h as u64);
                for (kind, imgs) in [("detector", &detector), ("wide", &wide)] {
                    let files = raw_files(dtype, imgs, Some((4, 2)));
                    for predictor in PREDICTORS {
                        for exhaustive in [false, true] {
                            let what = format!("{entropy} {kind} {dtype} {w}x{h}x{n} {predictor} exhaustive={exhaustive}");
                            let opts = Options { entropy, ..options(raw(w, h, dtype, 4), predictor, exhaustive) };
                            let enc = round_trip(&files, &opts, &what);
                            assert_all_frames(&enc, &what);
                            if entropy == EntropyChoice::Fast {
                                let blob = Blob::parse(&enc.blob).unwrap();
                                for e in &blob.header.entries {
                                    if let Body::Frame(f) = &e.body {
                                        assert!(!matches!(f.stage, Stage::ContextRans | Stage::Adaptive), "{what}: fast means zstd stages only");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // error-bounded too
        let files = generate_raw(&SequenceSpec::detector_u16(40, 30, 4, 9));
        for bound in [Bound::Abs(2.0), Bound::Rel(0.01), Bound::PwRel(0.05)] {
            let opts = Options { entropy, bound, ..options(raw(40, 30, DType::U16, 0), PredictorChoice::Auto, false) };
            let enc = encode_window(&refs(&files), &opts).unwrap();
            let back = decode_window(&enc.blob).unwrap();
            let mut dec = Decoder::new(&enc.blob).unwrap();
            for i in (0..files.len()).rev() {
                assert!(dec.decode(i, |_, _| {}).unwrap() == back[i], "{entropy} {bound}: random access to {i}");
            }
        }
    }
}

#[test]
fn zstd_levels_round_trip() {
    let files = generate_raw(&SequenceSpec::detector_u16(48, 40, 4, 12));
    let mut sizes = Vec::new();
    for level in [-5, 1, 3, 9, 19] {
        for exhaustive in [false, true] {
            let opts = Options { level, ..options(raw(48, 40, DType::U16, 0), PredictorChoice::Auto, exhaustive) };
            let enc = round_trip(&files, &opts, &format!("level {level} exhaustive={exhaustive}"));
            assert_all_frames(&enc, &format!("level {level}"));
            sizes.push(enc.blob.len());
        }
    }
    assert!(sizes.iter().all(|&s| s < files.len() * 48 * 40 * 2), "every level compresses: {sizes:?}");
}

#[test]
fn tiff_with_different_geometry_rides_along_as_opaque() {
    let a = tiff_window(DType::U16, 16, 8, &[(false, 3, false); 2], 1);
    let b = tiff_window(DType::U16, 8, 16, &[(false, 3, false)], 2);
    let c = tiff_window(DType::U8, 16, 8, &[(false, 3, false)], 3);
    let files = vec![a[0].clone(), b[0].clone(), a[1].clone(), c[0].clone()];
    let enc = round_trip(&files, &Options::default(), "mixed geometry");
    assert!(matches!(enc.entries[0], EntryReport::Frame { .. }));
    assert_opaque(&enc.entries[1], "other geometry");
    assert!(matches!(enc.entries[2], EntryReport::Frame { .. }));
    assert_opaque(&enc.entries[3], "other dtype");
}

// ---- opaque files ------------------------------------------------------------------------------------

/// Offset of the IFD entry with `tag` in a TIFF written by `tiff::write`.
fn ifd_entry(file: &[u8], tag: u16) -> usize {
    let be = &file[..2] == b"MM";
    let rd16 = |o: usize| if be { u16::from_be_bytes([file[o], file[o + 1]]) } else { u16::from_le_bytes([file[o], file[o + 1]]) };
    let rd32 = |o: usize| {
        let a = [file[o], file[o + 1], file[o + 2], file[o + 3]];
        if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let ifd = rd32(4) as usize;
    let n = rd16(ifd) as usize;
    (0..n).map(|i| ifd + 2 + 12 * i).find(|&e| rd16(e) == tag).unwrap_or_else(|| panic!("tag {tag} not found"))
}

/// Set the SHORT value of an IFD entry.
fn patch_short(file: &mut [u8], tag: u16, v: u16) {
    let e = ifd_entry(file, tag);
    let b = if &file[..2] == b"MM" { v.to_be_bytes() } else { v.to_le_bytes() };
    file[e + 8..e + 10].copy_from_slice(&b);
}

fn set_u32(file: &mut [u8], at: usize, v: u32) {
    let b = if &file[..2] == b"MM" { v.to_be_bytes() } else { v.to_le_bytes() };
    file[at..at + 4].copy_from_slice(&b);
}

/// Files that are not codable frames, each with a label.
fn opaque_zoo() -> Vec<(String, Vec<u8>)> {
    let img: Vec<u32> = (0..6 * 5).map(|i| i * 997 % 65536).collect();
    let good_le = tiff::write(6, 5, DType::U16, false, 2, false, &img);
    let good_be = tiff::write(6, 5, DType::U16, true, 2, true, &img);
    let mut zoo = Vec::new();
    for (name, good) in [("le", &good_le), ("be", &good_be)] {
        // truncated at every length
        for cut in 0..good.len() {
            zoo.push((format!("{name} tiff cut at {cut}"), good[..cut].to_vec()));
        }
        for (tag, v, what) in
            [(259u16, 5u16, "LZW compression"), (259, 8, "deflate"), (262, 2, "RGB"), (277, 3, "3 samples"), (258, 12, "12-bit"), (339, 4, "sample format 4")]
        {
            let mut f = good.clone();
            patch_short(&mut f, tag, v);
            zoo.push((format!("{name} tiff {what}"), f));
        }
        // structural damage
        let mut f = good.clone();
        let past = f.len() as u32 + 100;
        set_u32(&mut f, 4, past);
        zoo.push((format!("{name} IFD offset past the end"), f));
        let mut f = good.clone();
        let e = ifd_entry(&f, 273);
        set_u32(&mut f, e + 8, u32::MAX - 2); // strip offsets array pointer
        zoo.push((format!("{name} strip offsets outside"), f));
        let mut f = good.clone();
        let e = ifd_entry(&f, 279);
        let arr = {
            let a = [f[e + 8], f[e + 9], f[e + 10], f[e + 11]];
            if name == "be" {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        } as usize;
        set_u32(&mut f, arr, 3); // first strip claims 3 bytes
        zoo.push((format!("{name} short strip"), f));
        let mut f = good.clone();
        let e = ifd_entry(&f, 256);
        f[e + 8..e + 12].copy_from_slice(&[0; 4]);
        zoo.push((format!("{name} zero width"), f));
        let mut f = good.clone();
        let l = f.len();
        f[l - 4..].copy_from_slice(&[0, 0, 0, 8]); // a next IFD: multi-page
        zoo.push((format!("{name} multi-page"), f));
    }
    zoo.push(("bigtiff header".into(), b"II+\0\x08\0\0\0\0\0\0\0\0\0\0\0".to_vec()));
    zoo.push(("bad magic".into(), b"II\x2b\x01\x08\0\0\0".to_vec()));
    zoo.push(("empty".into(), Vec::new()));
    zoo.push(("one byte".into(), vec![0x49]));
    zoo.push(("random 1000".into(), random_bytes(1000, 77)));
    zoo.push(("random 4097".into(), random_bytes(4097, 78)));
    zoo.push(("text".into(), b"{\"width\": 6, \"height\": 5, \"dtype\": \"u16\"}\nhello, detector\n".repeat(20)));
    zoo.push(("zeros".into(), vec![0u8; 5000]));
    zoo
}

#[test]
fn opaque_files_round_trip_and_say_why() {
    let zoo = opaque_zoo();
    for format in [FormatSpec::Auto, FormatSpec::Tiff] {
        for (name, file) in &zoo {
            assert!(!matches!(analyze(file, &format), tezipfs::codec::Analysis::Frame(_)), "{name}: should not analyze as a frame under {format}");
            let files = vec![file.clone()];
            let enc = round_trip(&files, &options(format.clone(), PredictorChoice::Auto, false), &format!("{format} {name}"));
            assert_opaque(&enc.entries[0], &format!("{format} {name}"));
            assert_eq!(enc.predictor, None, "{name}");
        }
    }
    // Raw specs: every file whose size is not the spec's is opaque (including valid TIFFs).
    let spec = raw(6, 5, DType::U16, 0);
    for (name, file) in &zoo {
        if file.len() == 60 {
            continue;
        }
        let enc = round_trip(std::slice::from_ref(file), &options(spec.clone(), PredictorChoice::Auto, false), &format!("raw {name}"));
        assert_opaque(&enc.entries[0], &format!("raw {name}"));
    }
    for len in [0usize, 1, 59, 61, 120, 3] {
        let f = random_bytes(len, len as u64);
        let enc = round_trip(&[f], &options(raw(6, 5, DType::U16, 0), PredictorChoice::Auto, false), &format!("raw len {len}"));
        assert_opaque(&enc.entries[0], &format!("raw len {len}"));
    }
    // with a header: one byte short or long is opaque, exact is a frame
    let spec = raw(6, 5, DType::U16, 10);
    for (len, frame) in [(69usize, false), (70, true), (71, false), (60, false)] {
        let enc = round_trip(&[random_bytes(len, 9)], &options(spec.clone(), PredictorChoice::Auto, false), &format!("raw skip len {len}"));
        assert_eq!(matches!(enc.entries[0], EntryReport::Frame { .. }), frame, "raw skip=10 len {len}: {:?}", enc.entries[0]);
    }
}

#[test]
fn truncated_tiffs_are_never_frames() {
    for (be, rps, rev) in [(false, 1, false), (true, 3, true), (false, 16, false)] {
        let img: Vec<u32> = (0..12 * 16).map(|i| i * 31).collect();
        let good = tiff::write(12, 16, DType::U16, be, rps, rev, &img);
        assert!(tiff::parse(&good).is_ok());
        for cut in 0..good.len() {
            for format in [FormatSpec::Auto, FormatSpec::Tiff] {
                match analyze(&good[..cut], &format) {
                    tezipfs::codec::Analysis::Opaque(why) => assert!(!why.is_empty()),
                    tezipfs::codec::Analysis::Frame(l) => panic!("cut {cut} of {} parsed as a frame: {l:?}", good.len()),
                }
            }
        }
    }
}

#[test]
fn opaque_files_mixed_between_frames() {
    let zoo = opaque_zoo();
    let pick: Vec<&(String, Vec<u8>)> = zoo.iter().filter(|(n, _)| !n.contains("cut at") || n.ends_with("cut at 7") || n.ends_with("cut at 40")).collect();
    // raw u16 frames with a header, opaque files between them (and first, and last)
    let (w, h) = (20u32, 10u32);
    let spec = SequenceSpec::detector_u16(w, h, 6, 21);
    let frames = generate_raw(&spec);
    for format_skip in [0usize, 4] {
        let mut files = Vec::new();
        let mut is_frame = Vec::new();
        for (k, f) in frames.iter().enumerate() {
            let (_, o) = pick[(k * 5 + format_skip) % pick.len()];
            files.push(o.clone());
            is_frame.push(false);
            files.push([random_bytes(format_skip, k as u64), f.clone()].concat());
            is_frame.push(true);
        }
        files.push(b"trailing text file\n".to_vec());
        is_frame.push(false);
        files.push(Vec::new());
        is_frame.push(false);
        for predictor in PREDICTORS {
            for exhaustive in [false, true] {
                let what = format!("mixed skip={format_skip} {predictor} exhaustive={exhaustive}");
                let enc = round_trip(&files, &options(raw(w, h, DType::U16, format_skip), predictor, exhaustive), &what);
                for (i, (r, &fr)) in enc.entries.iter().zip(&is_frame).enumerate() {
                    if fr {
                        assert_eq!(*r, EntryReport::Frame { escapes: 0 }, "{what}: entry {i}");
                    } else {
                        assert_opaque(r, &format!("{what}: entry {i}"));
                    }
                }
            }
        }
    }
    // TIFF frames with every opaque file of the zoo between them
    let tiffs = tiff_window(DType::F32, 9, 7, &[(false, 2, true), (true, 7, false), (false, 1, false)], 4);
    let mut files = Vec::new();
    let mut is_frame = Vec::new();
    for (k, (_, o)) in zoo.iter().enumerate().filter(|(k, _)| k % 9 == 0) {
        files.push(o.clone());
        is_frame.push(false);
        files.push(tiffs[k % 3].clone());
        is_frame.push(true);
    }
    let enc = round_trip(&files, &Options::default(), "tiff + zoo");
    for (i, (r, &fr)) in enc.entries.iter().zip(&is_frame).enumerate() {
        assert_eq!(matches!(r, EntryReport::Frame { .. }), fr, "entry {i}: {r:?}");
        if !fr {
            assert_opaque(r, &format!("tiff + zoo entry {i}"));
        }
    }
}

// ---- corruption ----------------------------------------------------------------------------------

/// Decode every entry of a damaged blob in several ways. Any `Ok` must be the original bytes;
/// nothing may panic. Returns how many entries decoded (for statistics).
fn check_damaged(blob: &[u8], files: &[Vec<u8>], what: &str) -> usize {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut ok = 0;
        if let Ok(all) = decode_window(blob) {
            assert_eq!(all.len(), files.len(), "{what}: decode_window returned Ok with a different entry count");
            for (i, (g, w)) in all.iter().zip(files).enumerate() {
                assert_same(g, w, &format!("{what}: decode_window Ok but entry {i} wrong"));
            }
        }
        if let Ok(mut dec) = Decoder::new(blob) {
            // in order, then backwards on the same decoder, then fresh per entry
            let n = dec.len();
            let order: Vec<usize> = (0..n).chain((0..n).rev()).collect();
            for i in order {
                let res = dec.decode(i, |e, b| {
                    if e < files.len() {
                        assert_same(&b, &files[e], &format!("{what}: handed-over entry {e}"));
                    } else {
                        panic!("{what}: handed-over entry {e} does not exist");
                    }
                });
                if let Ok(b) = res {
                    assert!(i < files.len(), "{what}: entry {i} decoded but does not exist");
                    assert_same(&b, &files[i], &format!("{what}: decode({i}) Ok but wrong"));
                    ok += 1;
                }
            }
            for (i, want) in files.iter().enumerate().take(n) {
                let mut d = Decoder::new(blob).unwrap();
                if let Ok(b) = d.decode(i, |_, _| {}) {
                    assert_same(&b, want, &format!("{what}: fresh decode({i}) Ok but wrong"));
                }
            }
        }
        ok
    }));
    match r {
        Ok(n) => n,
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!("{what}: decoding panicked or returned wrong bytes: {msg}");
        }
    }
}

/// Flip bits of the blob at `positions` (bit indices), one at a time.
fn flip_bits(blob: &[u8], files: &[Vec<u8>], positions: impl Iterator<Item = usize>, what: &str) {
    let mut flips = 0;
    let mut damaged = blob.to_vec();
    for bit in positions {
        let (byte, b) = (bit / 8, bit % 8);
        damaged[byte] ^= 1 << b;
        assert!(decode_window(&damaged).is_err(), "{what}: flipping bit {b} of byte {byte} of {} went unnoticed by decode_window", blob.len());
        check_damaged(&damaged, files, &format!("{what}: bit {b} of byte {byte}"));
        damaged[byte] ^= 1 << b;
        flips += 1;
    }
    assert_eq!(damaged, blob);
    assert!(flips > 0, "{what}: no bit flipped");
}

fn truncations(blob: &[u8], files: &[Vec<u8>], lens: impl Iterator<Item = usize>, what: &str) {
    for len in lens {
        let cut = &blob[..len];
        assert!(decode_window(cut).is_err(), "{what}: blob cut to {len} of {} bytes decoded", blob.len());
        assert!(Decoder::new(cut).is_err(), "{what}: blob cut to {len} of {} bytes parsed", blob.len());
        check_damaged(cut, files, &format!("{what}: cut to {len}"));
    }
    // trailing garbage is refused too
    for extra in [&[0u8][..], &[1, 2, 3], &blob[..blob.len().min(16)]] {
        let longer = [blob, extra].concat();
        assert!(decode_window(&longer).is_err(), "{what}: {} trailing bytes accepted", extra.len());
        check_damaged(&longer, files, &format!("{what}: {} trailing bytes", extra.len()));
    }
}

/// `n` bit positions spread over the whole blob (deterministic), plus the first and last bits.
fn spread_bits(len: usize, n: usize) -> Vec<usize> {
    let bits = len * 8;
    let mut v: Vec<usize> = (0..n).map(|k| (k * bits / n + (k * 5) % 8).min(bits - 1)).collect();
    v.extend([0, 7, 8 * 16, bits - 1, bits - 8]);
    v.sort();
    v.dedup();
    v
}

#[test]
fn small_blob_every_bit_flip_is_caught() {
    // three small u16 frames with a header, an opaque text file and an empty file between them
    let imgs = wide_range_images(DType::U16, 5, 3, 3, 1);
    let frames = raw_files(DType::U16, &imgs, Some((2, 3)));
    let files = vec![frames[0].clone(), b"note".to_vec(), frames[1].clone(), Vec::new(), frames[2].clone()];
    for predictor in [PredictorChoice::Fixed(PredictorId::Previous), PredictorChoice::Fixed(PredictorId::None)] {
        let enc = round_trip(&files, &options(raw(5, 3, DType::U16, 2), predictor, false), "small");
        let what = format!("small blob {predictor}");
        assert!(enc.blob.len() < 2000, "{what}: blob is {} bytes, expected a small one", enc.blob.len());
        flip_bits(&enc.blob, &files, 0..enc.blob.len() * 8, &what);
        truncations(&enc.blob, &files, 0..enc.blob.len(), &what);
    }
    // a blob of opaque files only
    let files = vec![b"hello".to_vec(), vec![0u8; 300], random_bytes(40, 1)];
    let enc = round_trip(&files, &Options::default(), "opaque only");
    flip_bits(&enc.blob, &files, 0..enc.blob.len() * 8, "opaque-only blob");
    truncations(&enc.blob, &files, 0..enc.blob.len(), "opaque-only blob");
}

#[test]
fn larger_blobs_bit_flips_and_truncations_are_caught() {
    let mut cases: Vec<(String, Vec<Vec<u8>>, Options)> = Vec::new();
    // lossless detector frames with an opaque file in the middle
    let mut f = generate_raw(&SequenceSpec::detector_u16(64, 48, 6, 2));
    f.insert(3, b"{\"meta\": true}".to_vec());
    cases.push(("u16 lossless".into(), f, options(raw(64, 48, DType::U16, 0), PredictorChoice::Auto, false)));
    // lossy f32 with NaNs: escapes section present
    let bits = smooth_f32_with_specials(40, 30, 5);
    let f: Vec<Vec<u8>> = bits.iter().map(|b| b.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let o = Options { bound: Bound::Abs(0.05), ..options(raw(40, 30, DType::F32, 0), PredictorChoice::Auto, false) };
    cases.push(("f32 lossy".into(), f, o));
    // TIFFs with skeletons, mixed byte order and strip layout, exhaustive
    let f = tiff_window(DType::U16, 33, 21, &[(false, 4, true), (true, 21, false), (false, 1, false), (true, 5, true)], 8);
    cases.push(("tiff".into(), f, options(FormatSpec::Auto, PredictorChoice::Auto, true)));
    // every entropy choice (the context coder under "best")
    for entropy in [tezipfs::codec::entropy::EntropyChoice::Best, tezipfs::codec::entropy::EntropyChoice::Fast] {
        let f = generate_raw(&SequenceSpec { dtype: DType::U8, ..SequenceSpec::detector_u16(50, 36, 4, 6) });
        let o = Options { entropy, ..options(raw(50, 36, DType::U8, 0), PredictorChoice::Auto, false) };
        cases.push((format!("u8 entropy {entropy}"), f, o));
    }

    for (name, files, opts) in cases {
        let enc = encode_window(&refs(&files), &opts).unwrap();
        // what a correct decode gives (the originals when lossless)
        let reference = decode_window(&enc.blob).unwrap();
        if opts.bound == Bound::Lossless {
            assert!(reference == files, "{name}: lossless round trip");
        } else {
            assert!(enc.entries.iter().any(|e| matches!(e, EntryReport::Frame { escapes } if *escapes > 0)), "{name}: expected escapes");
        }
        let what = format!("{name} ({} bytes)", enc.blob.len());
        flip_bits(&enc.blob, &reference, spread_bits(enc.blob.len(), 300).into_iter(), &what);
        let len = enc.blob.len();
        let lens: Vec<usize> = (0..200).map(|k| k * len / 200).chain(len.saturating_sub(20)..len).collect();
        truncations(&enc.blob, &reference, lens.into_iter(), &what);
    }
}

/// Blobs that pass every CRC but describe nonsense (as a buggy or hostile writer could produce)
/// must be refused without panicking.
#[test]
#[allow(clippy::single_range_in_vec_init)]
fn crafted_blobs_do_not_panic() {
    use tezipfs::codec::container::{Body, Entry, FrameEntry, Header, Params, Section, Writer};
    use tezipfs::codec::entropy::Stage;
    use tezipfs::codec::quantizer::FrameBound;

    for dtype in DType::ALL {
        for bound in [FrameBound::Lossless, FrameBound::Abs(1.0), FrameBound::Abs(1e30), FrameBound::Abs(f64::MAX), FrameBound::PwRel(0.5)] {
            for fill in [0u32, 1, dtype.mask(), dtype.mask() - 1, 0x55] {
                for predictor in PredictorId::ALL {
                    let (w, h) = (5u32, 4u32);
                    let n = (w * h) as usize;
                    let codes = vec![fill & dtype.mask(); n];
                    let mut wr = Writer::default();
                    let mut entries = Vec::new();
                    for k in 0..2 {
                        // Stage::Zstd: codes packed little-endian in `width` bytes, then zstd
                        let packed: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()[..dtype.bytes()].to_vec()).collect();
                        let codes_s = wr.section(&zstd::bulk::compress(&packed, 3).unwrap());
                        let esc = zstd::bulk::compress(&vec![7u8; 4 * n], 3).unwrap();
                        let esc_s = wr.section(&esc);
                        // Motion vectors on the predicted frame: pointing anywhere (`motion`), or
                        // where they do not belong (every other predictor, and a 1-block count
                        // that does not fit when the frame would need more); with a fill of 0x55
                        // they name reference frames, which the first predicted frame lacks.
                        let refs = fill == 0x55;
                        let per = if refs { 3 } else { 2 };
                        let vectors: Vec<u8> = (0..per * tezipfs::codec::predict::motion::blocks(w as usize, h as usize))
                            .map(|i| (fill as u8).wrapping_mul(37).wrapping_add(i as u8 * 101))
                            .collect();
                        let motion = if k == 1 { wr.section(&zstd::bulk::compress(&vectors, 3).unwrap()) } else { Section::default() };
                        entries.push(Entry {
                            original_len: (n * dtype.bytes()) as u64,
                            crc: 0x1234_5678,
                            body: Body::Frame(FrameEntry {
                                big_endian: false,
                                key: k == 0,
                                bound,
                                ranges: vec![0..n * dtype.bytes()],
                                stage: Stage::Zstd,
                                skeleton: Section::default(),
                                codes: codes_s,
                                escapes: esc_s,
                                n_escapes: if fill == 0 { n as u32 } else { 0 },
                                motion,
                                block_modes: refs && k == 1,
                                subpel: refs && k == 1 && predictor == PredictorId::Motion,
                                carry: false,
                                moved_context: fill == 0x55 && k == 1,
                                intensity: fill == 0x55 && k == 2,
                                sliced: false,
                                exact_levels: false,
                            }),
                        });
                    }
                    let coefs = if predictor == PredictorId::Linear { vec![0, 0, 0, 0, 1 << 14, 0, 0, 0, 0, 0] } else { vec![] };
                    let params = Params { dtype, width: w, height: h, predictor, model: [0; 32], coefs, bound: Bound::Lossless };
                    let blob = wr.finish(&Header { params: Some(params), entries, slices: None });
                    let what = format!("crafted {dtype} {bound:?} fill {fill:#x} {predictor}");
                    let r = catch_unwind(AssertUnwindSafe(|| decode_window(&blob).is_err()));
                    match r {
                        Ok(is_err) => assert!(is_err, "{what}: decoded despite a wrong checksum"),
                        Err(_) => panic!("{what}: decoder panicked"),
                    }
                }
            }
        }
    }
}

#[test]
fn huge_absolute_bounds_hold() {
    // A bound larger than the type's range: any value is within it. Must not misbehave.
    for dtype in DType::ALL {
        let imgs = wide_range_images(dtype, 9, 6, 3, 4);
        let files = raw_files(dtype, &imgs, Some((3, 1)));
        for e in [1e6, 1e12, 1e19, 1e30, 1e300] {
            for predictor in PREDICTORS {
                let what = format!("{dtype} abs:{e} {predictor}");
                let opts = Options { bound: Bound::Abs(e), ..options(raw(9, 6, dtype, 3), predictor, false) };
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let enc = encode_window(&refs(&files), &opts).unwrap();
                    decode_window(&enc.blob).unwrap()
                }));
                let back = r.unwrap_or_else(|_| panic!("{what}: panicked"));
                for (t, f) in back.iter().enumerate() {
                    assert_eq!(f[..3], files[t][..3], "{what}: header");
                    let mut img = Vec::new();
                    dtype.decode_pixels(&f[3..], false, &mut img);
                    for (i, (&g, &x)) in img.iter().zip(&imgs[t]).enumerate() {
                        let (gv, xv) = (dtype.value(g), dtype.value(x));
                        if xv.is_finite() {
                            assert!(gv.is_finite() && (gv - xv).abs() <= e, "{what}: frame {t} pixel {i}: {xv} -> {gv}");
                        } else {
                            assert_eq!(g, x, "{what}: non-finite frame {t} pixel {i}");
                        }
                    }
                }
            }
        }
    }
}

// ---- adaptive entropy stage (5) and linear predictor (5) ------------------------------------------

/// (predictor, stage) of every frame of a blob.
fn frame_choices(blob: &[u8]) -> Vec<(PredictorId, tezipfs::codec::entropy::Stage)> {
    let dec = Decoder::new(blob).unwrap();
    let Some(p) = &dec.header().params else { return vec![] };
    dec.header()
        .entries
        .iter()
        .filter_map(|e| match &e.body {
            tezipfs::codec::container::Body::Frame(f) => Some((p.predictor, f.stage)),
            _ => None,
        })
        .collect()
}

/// Each tree frame's exact-levels flag (frame flags bit 6, container version 13).
fn tree_frames_exact(blob: &[u8]) -> Vec<bool> {
    let dec = Decoder::new(blob).unwrap();
    dec.header()
        .entries
        .iter()
        .filter_map(|e| match &e.body {
            tezipfs::codec::container::Body::Frame(f) if f.stage == tezipfs::codec::entropy::Stage::Tree => Some(f.exact_levels),
            _ => None,
        })
        .collect()
}

/// Images at and around the limits of the type: all 0, all max, alternating 0/max (pixels and
/// frames), a checkerboard, and a smooth ramp with noise.
fn limit_images(dtype: DType, w: usize, h: usize, frames: usize, seed: u64) -> Vec<Vec<Vec<u32>>> {
    let max = dtype.mask();
    let mut rng = Rng::new(seed);
    let n = w * h;
    let ramp: Vec<Vec<u32>> = (0..frames)
        .map(|t| {
            (0..n)
                .map(|i| {
                    let v = (i % w) as u64 * 3 + (i / w) as u64 * 5 + t as u64 * 2 + rng.next_u64() % 4;
                    dtype.to_image((v as u32) & dtype.mask())
                })
                .collect()
        })
        .collect();
    vec![
        vec![vec![0; n]; frames],
        vec![vec![max; n]; frames],
        (0..frames).map(|t| (0..n).map(|i| if (i + t) % 2 == 0 { 0 } else { max }).collect()).collect(),
        (0..frames).map(|t| (0..n).map(|i| if ((i % w) + (i / w) + t) % 2 == 0 { max } else { 0 }).collect()).collect(),
        (0..frames).map(|t| vec![if t % 2 == 0 { 0 } else { max }; n]).collect(),
        ramp,
        wide_range_images(dtype, w, h, frames, seed),
    ]
}

#[test]
fn adaptive_stage_and_linear_predictor_round_trip() {
    let mut used_adaptive = 0;
    let mut used_linear = 0;
    for dtype in [DType::U8, DType::U16, DType::U32, DType::F32, DType::I16] {
        for (w, h) in [(1usize, 1usize), (1, 9), (9, 1), (13, 11), (64, 3), (3, 40)] {
            for (k, imgs) in limit_images(dtype, w, h, 4, (w * 31 + h) as u64).into_iter().enumerate() {
                let files = raw_files(dtype, &imgs, None);
                for predictor in [PredictorChoice::Fixed(PredictorId::Linear), PredictorChoice::Fixed(PredictorId::Previous), PredictorChoice::Auto] {
                    for (entropy, exhaustive) in
                        [(tezipfs::codec::entropy::EntropyChoice::Best, true), (tezipfs::codec::entropy::EntropyChoice::Balanced, false)]
                    {
                        let opts = Options { format: raw(w as u32, h as u32, dtype, 0), predictor, entropy, exhaustive, ..Options::default() };
                        let what = format!("{dtype} {w}x{h} pattern {k} {predictor} {entropy} exhaustive {exhaustive}");
                        let enc = round_trip(&files, &opts, &what);
                        assert_all_frames(&enc, &what);
                        for (p, s) in frame_choices(&enc.blob) {
                            used_adaptive += usize::from(s == tezipfs::codec::entropy::Stage::Adaptive);
                            used_linear += usize::from(p == PredictorId::Linear);
                        }
                    }
                }
            }
        }
    }
    assert!(used_adaptive > 100, "the adaptive stage was chosen for only {used_adaptive} frames");
    assert!(used_linear > 100, "the linear predictor was used for only {used_linear} frames");
}

#[test]
fn adaptive_stage_codes_every_width_directly() {
    use tezipfs::codec::entropy::{Coder, Side, Stage};
    let mut coder = Coder::new(3).unwrap();
    let mut rng = Rng::new(5);
    for width in [1usize, 2, 4] {
        let mask = if width == 4 { u32::MAX } else { (1u32 << (8 * width)) - 1 };
        for (n, cols) in [(0usize, 1usize), (1, 1), (9, 1), (9, 9), (143, 13), (4096, 64)] {
            let patterns: Vec<Vec<u32>> = vec![
                vec![0; n],
                vec![mask; n],
                (0..n).map(|i| if i % 2 == 0 { 0 } else { mask }).collect(),
                (0..n).map(|_| rng.next_u64() as u32 & mask).collect(),
                (0..n).map(|_| (rng.next_u64() % 7) as u32).collect(),
            ];
            for (a, codes) in patterns.iter().enumerate() {
                for quantised in [false, true] {
                    let prev = &patterns[(a + 1) % patterns.len()];
                    for side in [
                        Side { prev: None, quantised, carry: false, gradient: None, intensity: None, sliced: false, pixels: None },
                        Side { prev: Some(prev), quantised, carry: false, gradient: Some(prev), intensity: Some(prev), sliced: true, pixels: None },
                    ] {
                        let enc = coder.encode(Stage::Adaptive, codes, width, cols, side).unwrap();
                        let mut back = Vec::new();
                        coder.decode(Stage::Adaptive, &enc, n, width, cols, side, &mut back).unwrap();
                        assert!(back == *codes, "width {width} n {n} pattern {a} quantised {quantised}");
                    }
                }
            }
        }
    }
}

/// A version-4 blob written by the build before version 5 (`motion`, lossless, with block modes:
/// six synthetic 64 x 48 u8 frames, a textured square moving by (2, 1) a frame over a smooth
/// background with a little deterministic noise) decodes, every frame against its stored CRC.
#[test]
fn old_version_4_blobs_still_decode() {
    let blob = include_bytes!("data/moving_square_motion_v4.blob");
    assert_eq!(u16::from_le_bytes([blob[8], blob[9]]), 4);
    let frames = decode_window(blob).expect("a version-4 blob decodes");
    assert_eq!(frames.len(), 6);
    assert!(frames.iter().all(|f| f.len() == 64 * 48));
}

#[test]
fn old_version_1_blobs_still_decode() {
    // A version-1 blob is a version-2 blob without the coefficient count byte (predictors other
    // than linear, stages 1 to 4). Build one by hand from a version-2 blob.
    let imgs = wide_range_images(DType::U16, 7, 5, 3, 9);
    let files = raw_files(DType::U16, &imgs, None);
    let opts = Options {
        format: raw(7, 5, DType::U16, 0),
        predictor: PredictorChoice::Fixed(PredictorId::Previous),
        entropy: tezipfs::codec::entropy::EntropyChoice::Fast,
        compact_header: false,
        ..Options::default()
    };
    let enc = round_trip(&files, &opts, "v2");
    let b = &enc.blob;
    let hlen = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let mut h = b[16..16 + hlen].to_vec();
    // dtype(1) width(4) height(4) predictor(1) model(32) -> the coefficient count follows
    let at = 1 + 4 + 4 + 1 + 32;
    assert_eq!(h[at], 0, "no coefficients for previous");
    h.remove(at);
    let mut v1 = b[..8].to_vec();
    v1.extend_from_slice(&1u16.to_le_bytes());
    v1.extend_from_slice(&0u16.to_le_bytes());
    v1.extend_from_slice(&(h.len() as u32).to_le_bytes());
    v1.extend_from_slice(&h);
    v1.extend_from_slice(&crc32c::crc32c(&h).to_le_bytes());
    v1.extend_from_slice(&b[16 + hlen + 4..]);
    check_decodes(&v1, &files, "version 1 blob");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn linear_adaptive_blob() -> (Vec<Vec<u8>>, Vec<u8>) {
        let imgs = limit_images(DType::U16, 24, 16, 3, 3).swap_remove(5);
        let files = raw_files(DType::U16, &imgs, Some((3, 1)));
        let opts = Options {
            format: raw(24, 16, DType::U16, 3),
            predictor: PredictorChoice::Fixed(PredictorId::Linear),
            entropy: tezipfs::codec::entropy::EntropyChoice::Best,
            exhaustive: true,
            ..Options::default()
        };
        let enc = round_trip(&files, &opts, "fuzz base");
        assert!(frame_choices(&enc.blob).iter().any(|c| c.1 == tezipfs::codec::entropy::Stage::Adaptive), "fuzz base uses the adaptive stage");
        (files, enc.blob)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), magic in any::<bool>()) {
            let mut b = bytes;
            if magic && b.len() >= 12 {
                b[..8].copy_from_slice(b"TZIPBLOB");
                b[8] = 2 + (b[11] & 1);
                b[9] = 0;
            }
            // The blob fuzz target (tests/fuzz.rs runs it on the corpus and mutations of it).
            let r = catch_unwind(AssertUnwindSafe(|| tezipfs::fuzz::blob(&b)));
            prop_assert!(r.is_ok(), "decoder panicked on random bytes");
        }

        #[test]
        fn damaged_blobs_give_errors(flips in proptest::collection::vec(any::<usize>(), 1..6), cut in any::<usize>(), truncate in any::<bool>()) {
            let (files, blob) = linear_adaptive_blob();
            let mut d = blob.clone();
            if truncate {
                d.truncate(cut % blob.len());
            } else {
                for f in &flips {
                    let bit = f % (d.len() * 8);
                    d[bit / 8] ^= 1 << (bit % 8);
                }
            }
            if d != blob {
                prop_assert!(decode_window(&d).is_err(), "damaged blob decoded");
                check_damaged(&d, &files, "fuzzed blob");
            }
        }

        #[test]
        fn adaptive_decoder_survives_garbage(data in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..3000, cols in 1usize..80, width in proptest::sample::select(vec![1usize, 2, 4]), with_prev in any::<bool>(), carry in any::<bool>()) {
            use tezipfs::codec::entropy::{Coder, Side, Stage};
            let mut coder = Coder::new(1).unwrap();
            let prev = vec![3u32; n];
            let mut out = Vec::new();
            let r = catch_unwind(AssertUnwindSafe(|| {
                let side = Side { prev: with_prev.then_some(&prev[..]), gradient: with_prev.then_some(&prev[..]), ..Side::default() };
                let _ = coder.decode(Stage::Adaptive, &data, n, width, cols, side, &mut out);
                // Models carried over from that (garbage) frame.
                let _ = coder.decode(Stage::Adaptive, &data, n, width, cols, Side { carry, ..side }, &mut out);
            }));
            prop_assert!(r.is_ok(), "adaptive decoder panicked");
        }

        #[test]
        fn counts_decoder_survives_garbage(data in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..3000, cols in 1usize..80, width in proptest::sample::select(vec![1usize, 2, 4]), carry in any::<bool>()) {
            use tezipfs::codec::entropy::{Coder, Side, Stage};
            let mut coder = Coder::new(1).unwrap();
            let mut out = Vec::new();
            let r = catch_unwind(AssertUnwindSafe(|| {
                let _ = coder.decode(Stage::Counts, &data, n, width, cols, Side::default(), &mut out);
                // The rate estimate carried over from that (garbage) frame.
                let _ = coder.decode(Stage::Counts, &data, n, width, cols, Side { carry, ..Side::default() }, &mut out);
            }));
            prop_assert!(r.is_ok(), "counts decoder panicked");
        }
    }
}

// ---- motion predictor (6) ----------------------------------------------------------------------

/// A smooth textured background with noise and a textured square that moves `(vx, vy)` pixels a
/// frame: what the `motion` predictor is for.
fn moving_square(dtype: DType, w: usize, h: usize, frames: usize, (vx, vy): (i64, i64)) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(77);
    let scale = if dtype.bytes() == 1 { 1.0 } else { 40.0 };
    (0..frames as i64)
        .map(|t| {
            (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as i64, (i / w) as i64);
                    let (sx, sy) = (x - 20 - vx * t, y - 16 - vy * t);
                    let v = if (0..48).contains(&sx) && (0..36).contains(&sy) {
                        let (a, b) = (sx as f64, sy as f64);
                        120.0 + 50.0 * (0.4 * a + 0.1 * b).sin() + 40.0 * (0.3 * b - 0.2 * a).cos()
                    } else {
                        60.0 + 20.0 * (0.05 * x as f64).sin() + 15.0 * (0.07 * y as f64).cos()
                    };
                    let noisy = (v * scale + (rng.next_u64() % 2) as f64).round() as u32;
                    dtype.to_image(noisy & dtype.mask())
                })
                .collect()
        })
        .collect()
}

/// A still textured background with noise in which a region of whole motion blocks alternates
/// between two textures from frame to frame (alternating exposures, a flickering source): each
/// frame of that region matches the frame before the previous one.
fn flicker(dtype: DType, w: usize, h: usize, frames: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(78);
    let scale = if dtype.bytes() == 1 { 1.0 } else { 40.0 };
    let b = tezipfs::codec::predict::motion::BLOCK;
    (0..frames)
        .map(|t| {
            (0..w * h)
                .map(|i| {
                    let (x, y) = ((i % w) as f64, (i / w) as f64);
                    let inside = (b..3 * b).contains(&(i % w)) && (b..2 * b + 5).contains(&(i / w));
                    let v = match (inside, t % 2) {
                        (true, 0) => 120.0 + 50.0 * (0.4 * x + 0.1 * y).sin(),
                        (true, _) => 90.0 + 60.0 * (0.3 * y - 0.2 * x).cos(),
                        (false, _) => 60.0 + 20.0 * (0.05 * x).sin() + 15.0 * (0.07 * y).cos(),
                    };
                    let noisy = (v * scale + (rng.next_u64() % 2) as f64).round() as u32;
                    dtype.to_image(noisy & dtype.mask())
                })
                .collect()
        })
        .collect()
}

/// `opts` without the tree stage: for the motion predictors' and the intensity context's own
/// tests, which measure what they save in bytes and check their blobs' versions (5, 8); the tree
/// stage (versions 12 and 13, which `balanced` also takes, lossless and under a bound) would
/// mask both, as would a compressed header (version 14) on their small frames.
fn without_tree(opts: Options) -> Options {
    Options { tree_stage: false, compact_header: false, ..opts }
}

#[test]
fn motion_predictor_takes_flickering_blocks_from_the_frame_before() {
    for dtype in [DType::U8, DType::U16] {
        let (w, h) = (72, 56);
        let files = raw_files(dtype, &flicker(dtype, w, h, 7), None);
        let size = |p: PredictorId| {
            let what = format!("{dtype} flicker, {p}");
            let enc = round_trip(&files, &without_tree(options(raw(w as u32, h as u32, dtype, 0), PredictorChoice::Fixed(p), false)), &what);
            assert_all_frames(&enc, &what);
            (enc.blob.len(), u16::from_le_bytes([enc.blob[8], enc.blob[9]]))
        };
        for (moving, still) in [(PredictorId::Motion, PredictorId::Previous), (PredictorId::MotionMed, PredictorId::PreviousMed)] {
            let ((moved, version), (kept, _)) = (size(moving), size(still));
            assert!(moved * 10 < kept * 8, "{dtype}: {moving} {moved} bytes, {still} {kept}: the frame before was not used");
            // (Version 8 when the adaptive stage weighs the reference's intensity.)
            assert!(
                matches!(version, 4 | 5 | 8),
                "{dtype}: {moving}: vectors that name reference frames need version 4 (5 with sub-pixel phases), got {version}"
            );
        }
    }
}

/// Per block, `motion` corrects by the temporal MED or predicts spatially where that pays
/// (lossless): on a still, finely textured scene with one region that brightens smoothly and one
/// whose smooth pattern is new in every frame, it beats `previous` (which misses both) and
/// `spatial` (which misses the texture) and `previous+med`.
#[test]
fn motion_predictor_corrects_by_block() {
    for dtype in [DType::U8, DType::U16] {
        let (w, h) = (96, 64);
        let mut rng = Rng::new(79);
        let scale = if dtype.bytes() == 1 { 1.0 } else { 40.0 };
        let imgs: Vec<Vec<u32>> = (0..6)
            .map(|t| {
                (0..w * h)
                    .map(|i| {
                        let (x, y) = ((i % w) as f64, (i / w) as f64);
                        let glow = if i % w < 32 && i / w < 32 { t as f64 * (6.0 + 0.3 * x + 0.2 * y) } else { 0.0 };
                        let v = if i % w >= 40 && i / w >= 24 {
                            // New every frame, smooth within it.
                            60.0 + 40.0 * (0.09 * x + 1.7 * t as f64).sin() * (0.11 * y + 2.3 * t as f64).cos()
                        } else {
                            // A fine texture, which only the previous frame predicts.
                            40.0 + 20.0 * (0.05 * x).sin() + 15.0 * (0.07 * y).cos() + 25.0 * (1.3 * x + 0.7 * y).sin() + glow
                        };
                        dtype.to_image(((v * scale) as u32 + (rng.next_u64() % 4) as u32) & dtype.mask())
                    })
                    .collect()
            })
            .collect();
        let files = raw_files(dtype, &imgs, None);
        let size = |p: PredictorId| {
            let what = format!("{dtype} glow, {p}");
            round_trip(&files, &without_tree(options(raw(w as u32, h as u32, dtype, 0), PredictorChoice::Fixed(p), false)), &what).blob.len()
        };
        let (by_block, plain, corrected, spatial) =
            (size(PredictorId::Motion), size(PredictorId::Previous), size(PredictorId::PreviousMed), size(PredictorId::Spatial));
        let what = format!("{dtype}: motion {by_block} bytes, previous {plain}, previous+med {corrected}, spatial {spatial}");
        assert!(by_block * 100 < plain.min(spatial) * 97, "{what}");
        // (Without the spatial blocks, `motion` is no smaller than this.)
        assert!(by_block * 100 < corrected * 98, "{what}");
    }
}

#[test]
fn motion_predictor_follows_a_moving_object() {
    for dtype in [DType::U8, DType::U16] {
        let (w, h) = (112, 80);
        let files = raw_files(dtype, &moving_square(dtype, w, h, 6, (3, 2)), None);
        let size = |p: PredictorChoice| {
            let what = format!("{dtype} moving square, {p}");
            let enc = round_trip(&files, &without_tree(options(raw(w as u32, h as u32, dtype, 0), p, false)), &what);
            assert_all_frames(&enc, &what);
            (enc.blob.len(), enc.predictor, u16::from_le_bytes([enc.blob[8], enc.blob[9]]))
        };
        for (moving, still) in [(PredictorId::MotionMed, PredictorId::PreviousMed), (PredictorId::Motion, PredictorId::Previous)] {
            let (moved, _, version) = size(PredictorChoice::Fixed(moving));
            let (kept, _, still_version) = size(PredictorChoice::Fixed(still));
            assert!(moved * 10 < kept * 9, "{dtype}: {moving} {moved} bytes, {still} {kept}: the motion was not found");
            // Version 3 holds motion vectors, 4 vectors that also name reference frames (blocks
            // of noise may match the frame before a little better), 5 half-pixel phases; 2 blobs
            // without any.
            // (Version 5 also holds carried adaptive models, with or without motion; 8 the
            // intensity context.)
            assert!(matches!(version, 3..=5 | 8) && [2, 5, 8].contains(&still_version), "{dtype}: versions {version} (motion) and {still_version} (none)");
        }
        let (_, auto, _) = size(PredictorChoice::Auto);
        assert!(auto.is_some_and(|p| p.moves()), "{dtype}: auto chose {auto:?} on a moving scene");
    }
}

/// Encode `files`, decode them and check every pixel against the bound of `opts`.
fn encode_within_bound(files: &[Vec<u8>], opts: &Options, dtype: DType, what: &str) -> Encoded {
    let enc = encode_window(&refs(files), opts).unwrap();
    let out = decode_window(&enc.blob).unwrap_or_else(|e| panic!("{what}: {e}"));
    for (k, (o, f)) in out.iter().zip(files).enumerate() {
        let (mut r, mut x) = (Vec::new(), Vec::new());
        dtype.decode_pixels(o, false, &mut r);
        dtype.decode_pixels(f, false, &mut x);
        // (The frame's bound as the codec states it: absolute or pointwise relative.)
        let fb = opts.bound.for_frame(dtype, &x);
        let bad = x.iter().zip(&r).position(|(&x, &r)| !fb.holds(dtype, x, r));
        assert!(bad.is_none(), "{what} frame {k}: pixel {bad:?} outside {fb:?}");
    }
    enc
}

/// A smooth scene that moves by half a pixel a frame: its blocks take half-pixel phases
/// (container version 5), losslessly and under bounds that hold.
#[test]
fn motion_predictor_follows_half_pixel_motion() {
    for dtype in [DType::U8, DType::U16, DType::F32] {
        let (w, h) = (80, 48);
        let scale = if dtype.bytes() == 1 { 1.0 } else { 40.0 };
        let imgs: Vec<Vec<u32>> = (0..6)
            .map(|t| {
                (0..w * h)
                    .map(|i| {
                        let (x, y) = ((i % w) as f64 - 0.5 * t as f64, (i / w) as f64);
                        let v = 100.0 + 60.0 * (0.25 * x).sin() * (0.1 * y).cos();
                        dtype.to_image(((v * scale).round() as u32) & dtype.mask())
                    })
                    .collect()
            })
            .collect();
        let files = raw_files(dtype, &imgs, None);
        for bound in [Bound::Lossless, Bound::Abs(1.0), Bound::Abs(4.0)] {
            for pid in [PredictorId::Motion, PredictorId::MotionMed] {
                let what = format!("{dtype} half-pixel motion, {bound}, {pid}");
                let opts = Options {
                    format: raw(w as u32, h as u32, dtype, 0),
                    bound,
                    predictor: PredictorChoice::Fixed(pid),
                    tree_stage: false,
                    compact_header: false,
                    ..Options::default()
                };
                let enc = encode_within_bound(&files, &opts, dtype, &what);
                // (The f32 frames hold the integers' bits: tiny floats, not a smooth image.)
                if dtype != DType::F32 {
                    let v = u16::from_le_bytes([enc.blob[8], enc.blob[9]]);
                    assert!(matches!(v, 5 | 8), "{what}: half-pixel phases need version 5 (8 with the intensity context), got {v}");
                }
            }
        }
    }
}

#[test]
fn motion_predictor_holds_bounds() {
    for dtype in [DType::U8, DType::U16, DType::F32] {
        let (w, h) = (64, 48);
        for (scene, imgs) in [("moving square", moving_square(dtype, w, h, 5, (-2, 1))), ("flicker", flicker(dtype, w, h, 5))] {
            let files = raw_files(dtype, &imgs, None);
            for (bound, pid) in [Bound::Abs(1.0), Bound::Abs(4.0)].into_iter().flat_map(|b| [(b, PredictorId::Motion), (b, PredictorId::MotionMed)]) {
                let opts =
                    without_tree(Options { format: raw(w as u32, h as u32, dtype, 0), bound, predictor: PredictorChoice::Fixed(pid), ..Options::default() });
                let enc = encode_within_bound(&files, &opts, dtype, &format!("{dtype} {scene} {bound} {pid}"));
                // The flicker is far larger than either bound: its blocks take the frame before.
                // (The f32 frames hold the integers' bits, tiny floats that any bound covers.)
                if scene == "flicker" && dtype != DType::F32 {
                    assert!(matches!(u16::from_le_bytes([enc.blob[8], enc.blob[9]]), 4 | 5 | 8), "{dtype} {scene} {bound} {pid}");
                }
            }
        }
    }
}

#[test]
fn misplaced_or_damaged_motion_vectors_are_errors() {
    use tezipfs::codec::container::{Blob, Body, Header, Writer};
    let (w, h) = (40usize, 32usize);
    let files = raw_files(DType::U8, &moving_square(DType::U8, w, h, 3, (2, 1)), None);
    let opts = without_tree(options(raw(w as u32, h as u32, DType::U8, 0), PredictorChoice::Fixed(PredictorId::MotionMed), false));
    let enc = round_trip(&files, &opts, "motion base");
    flip_bits(&enc.blob, &files, spread_bits(enc.blob.len(), 300).into_iter(), "motion blob");
    truncations(&enc.blob, &files, (0..enc.blob.len()).step_by(7), "motion blob");
    let blob = Blob::parse(&enc.blob).unwrap();
    let payload = &enc.blob[blob.payload_offset(&enc.blob)..];
    assert!(blob.header.entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.motion.len > 0)), "the base blob has motion vectors");
    // Rebuild the blob with one change to its header, copying the payload; `extra` is appended
    // to the payload as one more section, which the change may point at.
    let rebuild = |extra: &[u8], change: &dyn Fn(&mut Header, tezipfs::codec::container::Section)| -> Vec<u8> {
        let mut header = blob.header.clone();
        let mut wr = Writer::default();
        wr.section(payload);
        let s = wr.section(extra);
        change(&mut header, s);
        wr.finish(&header)
    };
    fn frame(hd: &mut Header, k: usize) -> &mut tezipfs::codec::container::FrameEntry {
        match &mut hd.entries[k].body {
            Body::Frame(f) => f,
            Body::Opaque { .. } => unreachable!("a window of frames"),
        }
    }
    let moved_on = (0..3).find(|&k| matches!(&blob.header.entries[k].body, Body::Frame(f) if f.motion.len > 0)).unwrap();
    let vectors = 2 * tezipfs::codec::predict::motion::blocks(w, h);
    let zstd_of = |n: usize| zstd::bulk::compress(&vec![1u8; n], 3).unwrap();
    // Unmoved blocks of mode `r` (reference and correction bits), as stored.
    use tezipfs::codec::predict::motion::{INTRA, MED, REF};
    let triples = |r: u8| zstd::bulk::compress(&[0, 0, r].repeat(vectors / 2), 3).unwrap();
    let with_refs =
        |f: &tezipfs::codec::container::FrameEntry, s| tezipfs::codec::container::FrameEntry { motion: s, block_modes: true, subpel: false, ..f.clone() };
    let with_phases =
        |f: &tezipfs::codec::container::FrameEntry, s| tezipfs::codec::container::FrameEntry { motion: s, block_modes: true, subpel: true, ..f.clone() };
    use tezipfs::codec::predict::motion::PHASE_SHIFT;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("vectors under another predictor", rebuild(&[], &|hd, _| hd.params.as_mut().unwrap().predictor = PredictorId::PreviousMed)),
        ("vectors on the key frame", rebuild(&[], &|hd, _| frame(hd, 0).motion = frame(hd, moved_on).motion)),
        ("one vector too few", rebuild(&zstd_of(vectors - 2), &|hd, s| frame(hd, moved_on).motion = s)),
        ("one vector too many", rebuild(&zstd_of(vectors + 2), &|hd, s| frame(hd, moved_on).motion = s)),
        ("vectors that are not zstd", rebuild(&vec![7u8; vectors], &|hd, s| frame(hd, moved_on).motion = s)),
        ("a block-mode flag without vectors", rebuild(&[], &|hd, _| frame(hd, 0).block_modes = true)),
        ("references on the first predicted frame", rebuild(&triples(REF), &|hd, s| *frame(hd, 1) = with_refs(frame(hd, 1), s))),
        ("an unknown block mode", rebuild(&triples(255), &|hd, s| *frame(hd, 2) = with_phases(frame(hd, 2), s))),
        ("a sub-pixel phase without the version-5 flag", rebuild(&triples(1 << PHASE_SHIFT), &|hd, s| *frame(hd, 2) = with_refs(frame(hd, 2), s))),
        ("a blend (both corrections) under motion+med", rebuild(&triples(MED | INTRA), &|hd, s| *frame(hd, 2) = with_phases(frame(hd, 2), s))),
        ("an unknown sub-pixel phase", rebuild(&triples(25 << PHASE_SHIFT), &|hd, s| *frame(hd, 2) = with_phases(frame(hd, 2), s))),
        ("sub-pixel phases in a version-4 blob", {
            let mut b = rebuild(&triples(1 << PHASE_SHIFT), &|hd, s| *frame(hd, 2) = with_phases(frame(hd, 2), s));
            assert!(matches!(b[8], 5 | 8), "phases are written as version 5 (8 with the intensity context)");
            b[8] = 4;
            b
        }),
        ("both corrections on a block", rebuild(&triples(MED | INTRA), &|hd, s| *frame(hd, 2) = with_refs(frame(hd, 2), s))),
        ("temporal MED marks under motion+med", rebuild(&triples(MED), &|hd, s| *frame(hd, 2) = with_refs(frame(hd, 2), s))),
        ("spatial marks under motion+med", rebuild(&triples(INTRA), &|hd, s| *frame(hd, 2) = with_refs(frame(hd, 2), s))),
        ("vector pairs flagged as carrying block modes", rebuild(&zstd_of(vectors), &|hd, s| *frame(hd, 2) = with_refs(frame(hd, 2), s))),
    ];
    // The base blob rebuilt the same way, with a copy of its own vectors, decodes: the errors
    // below come from the vectors.
    let own = match &blob.header.entries[moved_on].body {
        Body::Frame(f) => payload[f.motion.offset as usize..(f.motion.offset + f.motion.len) as usize].to_vec(),
        Body::Opaque { .. } => unreachable!("a window of frames"),
    };
    let unchanged = rebuild(&own, &|hd, s| frame(hd, moved_on).motion = s);
    assert!(decode_window(&unchanged).is_ok(), "vectors of the right count decode");
    for (what, bad) in cases {
        let r = catch_unwind(AssertUnwindSafe(|| decode_window(&bad)));
        match r {
            Ok(Ok(_)) => panic!("{what}: decoded"),
            Ok(Err(e)) => assert!(e.to_string().contains("motion"), "{what}: the error should name the motion vectors: {e}"),
            Err(_) => panic!("{what}: decoder panicked"),
        }
    }
}

/// Frames that continue the adaptive models of the frame before, or move its temporal context
/// (container version 5), decode in order and after a seek back; the flags on a key frame, on a
/// frame of another stage or predictor, or in a version-4 blob are errors.
#[test]
fn carried_adaptive_models_are_checked() {
    use tezipfs::codec::container::{Blob, Body, Writer};
    use tezipfs::codec::entropy::{EntropyChoice, Stage};
    let (w, h) = (64usize, 48usize);
    let files = raw_files(DType::U8, &moving_square(DType::U8, w, h, 6, (2, 1)), None);
    let opts = Options { entropy: EntropyChoice::Best, ..options(raw(w as u32, h as u32, DType::U8, 0), PredictorChoice::Fixed(PredictorId::Previous), false) };
    let enc = round_trip(&files, &opts, "carried models");
    let blob = Blob::parse(&enc.blob).unwrap();
    let carried: Vec<usize> = (0..files.len()).filter(|&k| matches!(&blob.header.entries[k].body, Body::Frame(f) if f.carry)).collect();
    assert!(!carried.is_empty(), "the adaptive frames carry their models over");
    // Under `motion` the adaptive frames' temporal context moves with the vectors, and a seek
    // back decodes it again.
    let moving = Options { predictor: PredictorChoice::Fixed(PredictorId::Motion), ..opts.clone() };
    let enc_moving = round_trip(&files, &moving, "moved context");
    let parsed = Blob::parse(&enc_moving.blob).unwrap();
    let moved: Vec<usize> = (0..files.len()).filter(|&k| matches!(&parsed.header.entries[k].body, Body::Frame(f) if f.moved_context)).collect();
    assert!(!moved.is_empty(), "motion frames coded by the adaptive stage move their temporal context");
    let mut dec = Decoder::new(&enc_moving.blob).unwrap();
    dec.decode(files.len() - 1, |_, _| {}).unwrap();
    assert_eq!(dec.decode(moved[0], |_, _| {}).unwrap(), files[moved[0]]);
    assert!(matches!(enc.blob[8], 5 | 8), "carried models need version 5 (8 with the intensity context)");
    // A seek back to a carried frame decodes the chain again from its key frame.
    let mut dec = Decoder::new(&enc.blob).unwrap();
    let last = *carried.last().unwrap();
    dec.decode(last, |_, _| {}).unwrap();
    assert_eq!(dec.decode(carried[0], |_, _| {}).unwrap(), files[carried[0]]);
    let payload = &enc.blob[blob.payload_offset(&enc.blob)..];
    let rebuild = |change: &dyn Fn(&mut tezipfs::codec::container::FrameEntry, &mut tezipfs::codec::container::FrameEntry)| -> Vec<u8> {
        let mut header = blob.header.clone();
        let (a, b) = header.entries.split_at_mut(carried[0]);
        match (&mut a[0].body, &mut b[0].body) {
            (Body::Frame(key), Body::Frame(f)) => change(key, f),
            _ => unreachable!("a window of frames"),
        }
        let mut wr = Writer::default();
        wr.section(payload);
        wr.finish(&header)
    };
    let mut v4 = rebuild(&|_, _| {});
    v4[8] = 4;
    let cases = [
        ("carried models on the key frame", rebuild(&|key, _| key.carry = true)),
        ("a moved context on the key frame", rebuild(&|key, _| key.moved_context = true)),
        ("a moved context under previous", rebuild(&|_, f| f.moved_context = true)),
        ("carried models on a zstd frame", rebuild(&|_, f| f.stage = Stage::Zstd)),
        ("carried models in a version-4 blob", v4),
        // (Written as version 8: the counts stage carrying a state an adaptive frame left.)
        ("a counts state carried from an adaptive frame", rebuild(&|_, f| f.stage = Stage::Counts)),
        ("an intensity context on the key frame", rebuild(&|key, _| key.intensity = true)),
    ];
    for (what, bad) in cases {
        match catch_unwind(AssertUnwindSafe(|| decode_window(&bad))) {
            Ok(Ok(_)) => panic!("{what}: decoded"),
            Ok(Err(e)) => assert!(["carried over", "flag", "moved temporal context", "intensity"].iter().any(|w| e.to_string().contains(w)), "{what}: {e}"),
            Err(_) => panic!("{what}: decoder panicked"),
        }
    }
}

/// Under a bound the adaptive frames weigh their reference's intensity (container version 8):
/// they decode in order and after a seek back, also with two threads; the flag on a key frame, a
/// container flag the stream does not have, or the stream's without the container's are errors;
/// without the context (`intensity_context: false`) the blob is of an older version and decodes
/// to the same reconstructions.
#[test]
fn intensity_context_is_checked() {
    use tezipfs::codec::container::{Blob, Body, Writer};
    use tezipfs::codec::entropy::{EntropyChoice, Stage};
    let (w, h) = (64u32, 48u32);
    let files = generate_raw(&SequenceSpec::detector_u16(w, h, 6, 21));
    let opts = Options {
        entropy: EntropyChoice::Best,
        bound: Bound::Abs(2.0),
        stage: Some(Stage::Adaptive),
        ..options(raw(w, h, DType::U16, 0), PredictorChoice::Fixed(PredictorId::Previous), false)
    };
    let enc = encode_window(&refs(&files), &opts).unwrap();
    assert_eq!(version_of(&enc.blob), 8);
    let blob = Blob::parse(&enc.blob).unwrap();
    let flagged: Vec<usize> = (0..files.len()).filter(|&k| matches!(&blob.header.entries[k].body, Body::Frame(f) if f.intensity)).collect();
    assert_eq!(flagged, (1..files.len()).collect::<Vec<_>>(), "every frame after the key weighs the intensity");
    let all = decode_window(&enc.blob).unwrap();
    for threads in [1, 2] {
        let mut dec = Decoder::new(&enc.blob).unwrap();
        dec.set_threads(threads);
        assert_eq!(dec.decode(files.len() - 1, |_, _| {}).unwrap(), all[files.len() - 1]);
        assert_eq!(dec.decode(2, |_, _| {}).unwrap(), all[2], "a seek back");
    }
    let older = encode_window(&refs(&files), &Options { intensity_context: false, ..opts.clone() }).unwrap();
    assert!(version_of(&older.blob) < 8);
    assert_eq!(decode_window(&older.blob).unwrap(), all, "the context changes the coding, not the reconstructions");
    let rebuild = |k: usize, change: &dyn Fn(&mut tezipfs::codec::container::FrameEntry)| with_entry_changed(&enc.blob, k, change);
    let cases = [
        ("an intensity context on the key frame", rebuild(0, &|f| f.intensity = true)),
        ("a stream's intensity context without the container's flag", rebuild(1, &|f| f.intensity = false)),
        ("an intensity context on a zstd frame", rebuild(1, &|f| f.stage = Stage::Zstd)),
    ];
    // The container's flag on a frame whose stream has no intensity context (a blob written
    // without it, the flag set afterwards: version 8).
    let older_blob = Blob::parse(&older.blob).unwrap();
    let mut header = older_blob.header.clone();
    if let Body::Frame(f) = &mut header.entries[1].body {
        assert_eq!(f.stage, Stage::Adaptive);
        f.intensity = true;
    }
    let mut wr = Writer::default();
    wr.section(&older.blob[older_blob.payload_offset(&older.blob)..]);
    let flag_only = wr.finish(&header);
    assert_eq!(version_of(&flag_only), 8);
    let mut cases = cases.to_vec();
    cases.push(("a container flag the stream does not have", flag_only));
    for (what, bad) in cases {
        match catch_unwind(AssertUnwindSafe(|| decode_window(&bad))) {
            Ok(Ok(_)) => panic!("{what}: decoded"),
            Ok(Err(e)) => assert!(["intensity", "flag", "carried over"].iter().any(|w| e.to_string().contains(w)), "{what}: {e}"),
            Err(_) => panic!("{what}: decoder panicked"),
        }
    }
}

/// Lossless, a window weighs the intensity where its probe measured that it pays: on photon
/// noise over a wide range of intensities (the detector scene) it does, and the blob decodes
/// bit-exact, checked by checksum; switched off, the same window codes larger.
#[test]
fn lossless_windows_weigh_the_intensity_where_it_pays() {
    use tezipfs::codec::container::{Blob, Body};
    use tezipfs::codec::entropy::EntropyChoice;
    let (w, h) = (128u32, 96u32);
    let files = generate_raw(&SequenceSpec::detector_u16(w, h, 8, 23));
    // (Without the tree stage, which codes these frames smaller still: its own tests.)
    let opts = Options { entropy: EntropyChoice::Best, tree_stage: false, ..options(raw(w, h, DType::U16, 0), PredictorChoice::Auto, false) };
    let enc = encode_window(&refs(&files), &opts).unwrap();
    let blob = Blob::parse(&enc.blob).unwrap();
    let flagged: Vec<usize> = (0..files.len()).filter(|&k| matches!(&blob.header.entries[k].body, Body::Frame(f) if f.intensity)).collect();
    assert_eq!(flagged, (1..files.len()).collect::<Vec<_>>(), "every frame after the key weighs the intensity");
    // (Version 9 when `linear` takes its wide taps too, as it does here.)
    assert!(matches!(version_of(&enc.blob), 8 | 9), "version {}", version_of(&enc.blob));
    let decoded = decode_window(&enc.blob).unwrap();
    for (file, out) in files.iter().zip(&decoded) {
        assert_eq!(crc32c::crc32c(out), crc32c::crc32c(file), "bit-exact");
    }
    let without = encode_window(&refs(&files), &Options { intensity_context: false, ..opts.clone() }).unwrap();
    let parsed = Blob::parse(&without.blob).unwrap();
    assert!(parsed.header.entries.iter().all(|e| !matches!(&e.body, Body::Frame(f) if f.intensity)));
    assert!(enc.blob.len() < without.blob.len(), "{} bytes with the context, {} without", enc.blob.len(), without.blob.len());
    assert_eq!(decode_window(&without.blob).unwrap(), decoded);
}

/// Under a bound, a window weighs the intensity where its probe measured that it pays: photon
/// noise over a wide range of intensities (the detector scene) yes, sparse particles on a dark
/// level no (their window codes exactly as with the context switched off). Both decode within
/// the bound.
#[test]
fn bounded_windows_weigh_the_intensity_where_it_pays() {
    use tezipfs::codec::container::{Blob, Body};
    use tezipfs::fixtures::Scene;
    let (w, h) = (128u32, 96u32);
    let flagged =
        |blob: &[u8]| -> usize { Blob::parse(blob).unwrap().header.entries.iter().filter(|e| matches!(&e.body, Body::Frame(f) if f.intensity)).count() };
    for (scene, weighs) in [(Scene::Detector, true), (Scene::Particles, false)] {
        let spec = SequenceSpec::of_scene(scene, DType::U16, w, h, 12, 24);
        let files = generate_raw(&spec);
        // (Without the tree stage, which takes these frames under a bound: its own tests.)
        let opts = without_tree(Options { bound: Bound::Abs(2.0), ..options(raw(w, h, DType::U16, 0), PredictorChoice::Auto, false) });
        let enc = encode_window(&refs(&files), &opts).unwrap();
        let off = encode_window(&refs(&files), &Options { intensity_context: false, ..opts.clone() }).unwrap();
        assert_eq!(flagged(&enc.blob) > 0, weighs, "{scene}");
        if weighs {
            assert_eq!(flagged(&enc.blob), files.len() - 1, "every frame after the key");
            assert!(enc.blob.len() < off.blob.len(), "{scene}: {} bytes with the context, {} without", enc.blob.len(), off.blob.len());
        } else {
            assert_eq!(enc.blob, off.blob, "{scene}: coded as without the context");
        }
        let images = generate_images(&spec);
        for (k, out) in decode_window(&enc.blob).unwrap().iter().enumerate() {
            let mut got = Vec::new();
            DType::U16.decode_pixels(out, false, &mut got);
            assert!(got.iter().zip(&images[k]).all(|(&a, &b)| a.abs_diff(b) <= 2), "{scene} frame {k} within the bound");
        }
    }
}

// ---- counts coded as counts (entropy stage 6, container version 8) ----------------------------

/// Photon-counting frames (speckle at `mean` photons per pixel) as raw files.
fn photon_files(dtype: DType, w: u32, h: u32, frames: usize, mean: f64, seed: u64) -> Vec<Vec<u8>> {
    generate_raw(&SequenceSpec::of_scene(tezipfs::fixtures::Scene::Speckle { mean, frames: 30.0 }, dtype, w, h, frames, seed))
}

/// `blob` with frame entry `k` of its header changed by `change` (the payload as coded).
fn with_entry_changed(blob: &[u8], k: usize, change: &dyn Fn(&mut tezipfs::codec::container::FrameEntry)) -> Vec<u8> {
    use tezipfs::codec::container::{Blob, Body, Writer};
    let parsed = Blob::parse(blob).unwrap();
    let mut header = parsed.header.clone();
    if let Body::Frame(f) = &mut header.entries[k].body {
        change(f);
    }
    let mut wr = Writer::default();
    wr.section(&blob[parsed.payload_offset(blob)..]);
    wr.finish(&header)
}

fn version_of(blob: &[u8]) -> u16 {
    u16::from_le_bytes([blob[8], blob[9]])
}

/// Sparse photon counts choose the counts stage (`best`), in a version-8 blob that decodes bit
/// for bit every way, on u8 and u16 and on frames cut into slices (a version-7 blob of version-8
/// slices); bit flips and truncations are caught.
#[test]
fn photon_counts_are_coded_as_counts() {
    use tezipfs::codec::entropy::{EntropyChoice, Stage};
    for dtype in [DType::U8, DType::U16] {
        let files = photon_files(dtype, 96, 64, 10, 0.3, 11);
        let what = format!("photons {dtype}");
        let opts = Options { entropy: EntropyChoice::Best, ..options(raw(96, 64, dtype, 0), PredictorChoice::Auto, false) };
        let enc = round_trip(&files, &opts, &what);
        assert_all_frames(&enc, &what);
        assert_eq!(version_of(&enc.blob), 8, "{what}");
        assert!(frame_choices(&enc.blob).iter().all(|&c| c == (PredictorId::None, Stage::Counts)), "{what}: {:?}", frame_choices(&enc.blob));
        // Against the adaptive stage on the same values: the reason the stage exists.
        let adaptive = Options { stage: Some(Stage::Adaptive), ..options(raw(96, 64, dtype, 0), PredictorChoice::Fixed(PredictorId::None), false) };
        let other = encode_window(&refs(&files), &adaptive).unwrap();
        assert!(enc.blob.len() < other.blob.len(), "{what}: counts {} bytes, adaptive {}", enc.blob.len(), other.blob.len());
        flip_bits(&enc.blob, &files, spread_bits(enc.blob.len(), 60).into_iter(), &what);
        truncations(&enc.blob, &files, [17, enc.blob.len() / 2, enc.blob.len() - 1].into_iter(), &what);

        let sliced = Options { slice_pixels: 96 * 20, ..opts };
        let enc = round_trip(&files, &sliced, &format!("{what} sliced"));
        assert_eq!(version_of(&enc.blob), 7, "{what} sliced");
        let dec = Decoder::new(&enc.blob).unwrap();
        assert!(dec.slice_count() > 1, "{what}: cut into slices");
    }
}

/// The version rules of stage 6: a blob that says an older version is refused (an older build
/// would not know the stage), and so is a version-8 blob without the stage (a flipped version).
#[test]
fn counts_stage_needs_version_8() {
    use tezipfs::codec::container::reseal;
    use tezipfs::codec::entropy::EntropyChoice;
    let files = photon_files(DType::U16, 48, 32, 4, 0.5, 3);
    let opts = Options { entropy: EntropyChoice::Best, ..options(raw(48, 32, DType::U16, 0), PredictorChoice::Auto, false) };
    let blob = encode_window(&refs(&files), &opts).unwrap().blob;
    assert_eq!(version_of(&blob), 8);
    for older in [5u16, 6] {
        let mut b = blob.clone();
        b[8..10].copy_from_slice(&older.to_le_bytes());
        let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("stage 6") || err.contains("version"), "version {older}: {err:?}");
    }
    // (A version-5 blob: its header is laid out as version 8's.)
    let carried = Options {
        stage: Some(tezipfs::codec::entropy::Stage::Adaptive),
        intensity_context: false,
        ..options(raw(48, 32, DType::U16, 0), PredictorChoice::Fixed(PredictorId::Previous), false)
    };
    let plain = encode_window(&refs(&files), &carried).unwrap().blob;
    assert_eq!(version_of(&plain), 5);
    let mut b = plain.clone();
    b[8..10].copy_from_slice(&8u16.to_le_bytes());
    let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("counts"), "a version-8 blob without counts: {err:?}");
}

// ---- linear's wide tap set (container version 9) ---------------------------------------------

/// The coefficients a blob's `linear` predictor stores (empty for other predictors).
fn linear_coefs(blob: &[u8]) -> Vec<i32> {
    Decoder::new(blob).unwrap().header().params.as_ref().map(|p| p.coefs.clone()).unwrap_or_default()
}

/// Photon-noise frames, lossless under `best`, take linear's wide tap set (11 coefficients) in a
/// version-9 blob that decodes bit for bit every way, also cut into slices (a version-7 blob of
/// version-9 slices); bit flips and truncations are caught. `balanced`, and any bound, keep the
/// narrow set and the older version.
#[test]
fn photon_noise_takes_linears_wide_taps_under_best() {
    use tezipfs::codec::entropy::EntropyChoice;
    for dtype in [DType::U16, DType::U8] {
        let files = generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(96, 64, 8, 5) });
        let what = format!("detector {dtype}");
        // (Without the tree stage, version 12: its own tests.)
        let best =
            Options { entropy: EntropyChoice::Best, tree_stage: false, ..options(raw(96, 64, dtype, 0), PredictorChoice::Fixed(PredictorId::Linear), false) };
        let enc = round_trip(&files, &best, &what);
        assert_all_frames(&enc, &what);
        assert_eq!(linear_coefs(&enc.blob).len(), 11, "{what}: the wide set");
        assert_eq!(version_of(&enc.blob), 9, "{what}");
        flip_bits(&enc.blob, &files, spread_bits(enc.blob.len(), 60).into_iter(), &what);
        truncations(&enc.blob, &files, [17, enc.blob.len() / 2, enc.blob.len() - 1].into_iter(), &what);

        let sliced = Options { slice_pixels: 96 * 20, ..best.clone() };
        let enc = round_trip(&files, &sliced, &format!("{what} sliced"));
        assert_eq!(version_of(&enc.blob), 7, "{what} sliced");
        assert!(Decoder::new(&enc.blob).unwrap().slice_count() > 1, "{what}: cut into slices");

        let balanced = round_trip(&files, &Options { entropy: EntropyChoice::Balanced, ..best.clone() }, &format!("{what} balanced"));
        let bounded = encode_within_bound(&files, &Options { bound: Bound::Abs(2.0), ..best.clone() }, dtype, &format!("{what} best abs:2"));
        for (enc, label) in [(balanced, "balanced"), (bounded, "best abs:2")] {
            assert_eq!(linear_coefs(&enc.blob).len(), 10, "{what} {label}: the narrow set");
            assert!(version_of(&enc.blob) < 9, "{what} {label}");
        }
    }
}

/// The version rules of the wide set: a blob that says an older version is refused (an older
/// build would take its coefficients for damage), and so is a version-9 blob without it.
#[test]
fn linears_wide_taps_need_version_9() {
    use tezipfs::codec::container::reseal;
    use tezipfs::codec::entropy::EntropyChoice;
    let files = generate_raw(&SequenceSpec::detector_u16(96, 64, 6, 7));
    let opts =
        Options { entropy: EntropyChoice::Best, tree_stage: false, ..options(raw(96, 64, DType::U16, 0), PredictorChoice::Fixed(PredictorId::Linear), false) };
    let blob = encode_window(&refs(&files), &opts).unwrap().blob;
    assert_eq!(version_of(&blob), 9);
    for older in [2u16, 6, 8] {
        let mut b = blob.clone();
        b[8..10].copy_from_slice(&older.to_le_bytes());
        let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("coefficients") || err.contains("version"), "version {older}: {err:?}");
    }
    // (A version-8 blob, counts coded as counts: its header is laid out as version 9's.)
    let counts = photon_files(DType::U16, 48, 32, 4, 0.5, 3);
    let v8 = encode_window(&refs(&counts), &Options { entropy: EntropyChoice::Best, ..options(raw(48, 32, DType::U16, 0), PredictorChoice::Auto, false) })
        .unwrap()
        .blob;
    assert_eq!(version_of(&v8), 8);
    let mut b = v8.clone();
    b[8..10].copy_from_slice(&9u16.to_le_bytes());
    let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("wide linear"), "a version-9 blob without the wide set: {err:?}");
}

// ---- the adaptive stage's row slices (container version 11) -----------------------------------

/// Frames of 196,608 pixels or more are coded by the adaptive stage in row slices (version 11):
/// the same bytes on any thread count, bit-exact lossless and within the bound under one,
/// identical reconstructions to the unsliced coding (an older version); a slicing flag the
/// stream does not match, or one on a frame of another stage, is refused.
#[test]
fn row_slices_round_trip_and_are_checked() {
    use tezipfs::codec::container::{Blob, Body};
    use tezipfs::codec::entropy::{adaptive, Stage};
    let (w, h) = (512u32, 400u32);
    assert_eq!(adaptive::slices_for((w * h) as usize, w as usize), 2);
    let spec = SequenceSpec::of_scene(tezipfs::fixtures::Scene::Detector, DType::U8, w, h, 4, 31);
    let files = generate_raw(&spec);
    let images = generate_images(&spec);
    for bound in [Bound::Lossless, Bound::Abs(2.0)] {
        let opts = Options {
            bound,
            stage: Some(Stage::Adaptive),
            threads: 1,
            ..options(raw(w, h, DType::U8, 0), PredictorChoice::Fixed(PredictorId::Previous), false)
        };
        let enc = encode_window(&refs(&files), &opts).unwrap();
        assert_eq!(version_of(&enc.blob), 11, "{bound}");
        assert_eq!(encode_window(&refs(&files), &Options { threads: 2, ..opts.clone() }).unwrap().blob, enc.blob, "{bound}: 2 threads code the same bytes");
        let blob = Blob::parse(&enc.blob).unwrap();
        // (The first two frames of a chain teach the models most: they are coded whole.)
        let sliced: Vec<bool> = blob.header.entries.iter().map(|e| matches!(&e.body, Body::Frame(f) if f.sliced)).collect();
        assert_eq!(sliced, [false, false, true, true], "{bound}: frames in slices");
        let all = decode_window(&enc.blob).unwrap();
        for (k, out) in all.iter().enumerate() {
            if bound == Bound::Lossless {
                assert_eq!(crc32c::crc32c(out), crc32c::crc32c(&files[k]), "frame {k} bit-exact");
            } else {
                let mut got = Vec::new();
                DType::U8.decode_pixels(out, false, &mut got);
                assert!(got.iter().zip(&images[k]).all(|(&a, &b)| a.abs_diff(b) <= 2), "frame {k} within the bound");
            }
        }
        for threads in [1, 2, 3] {
            let mut dec = Decoder::new(&enc.blob).unwrap();
            dec.set_threads(threads);
            assert_eq!(dec.decode(files.len() - 1, |_, _| {}).unwrap(), all[files.len() - 1], "{bound}, {threads} threads");
            assert_eq!(dec.decode(1, |_, _| {}).unwrap(), all[1], "{bound}, {threads} threads, a seek back");
        }
        let older = encode_window(&refs(&files), &Options { row_slices: false, ..opts.clone() }).unwrap();
        assert!(version_of(&older.blob) < 11, "{bound}");
        assert_eq!(decode_window(&older.blob).unwrap(), all, "{bound}: slicing changes the coding, not the reconstructions");
        // The flag changed in the header (the payload as coded).
        let cases = [
            ("a sliced stream without the container's flag", with_entry_changed(&enc.blob, 3, &|f| f.sliced = false)),
            ("the flag on a stream of one slice", with_entry_changed(&enc.blob, 1, &|f| f.sliced = true)),
            ("the flag on the key frame's stream of one slice", with_entry_changed(&enc.blob, 0, &|f| f.sliced = true)),
            ("the flag on an older blob's stream of one slice", with_entry_changed(&older.blob, 2, &|f| f.sliced = true)),
        ];
        for (what, bad) in cases {
            assert_eq!(version_of(&bad), 11, "{what}");
            assert!(decode_window(&bad).is_err(), "{bound}: {what} decoded");
        }
        let zstd = with_entry_changed(&enc.blob, 3, &|f| f.stage = Stage::Zstd);
        assert!(Blob::parse(&zstd).is_err(), "{bound}: row slices on a zstd frame parsed");
        // A version-11 blob relabelled 10 (the flag is unknown there).
        let mut relabelled = enc.blob.clone();
        relabelled[8..10].copy_from_slice(&10u16.to_le_bytes());
        assert!(Blob::parse(&relabelled).is_err(), "{bound}: version 10 with the slicing flag parsed");
        // Every byte of a sliced frame's codes flipped in turn (sampled): an error, never a panic.
        if let Body::Frame(f) = &blob.header.entries[2].body {
            let start = blob.payload_offset(&enc.blob) + f.codes.offset as usize;
            for i in (start..start + f.codes.len as usize).step_by(997) {
                let mut flipped = enc.blob.clone();
                flipped[i] ^= 0x20;
                assert!(decode_window(&flipped).is_err(), "{bound}: a flipped byte at {i} decoded");
            }
        }
    }
}

// ---- the tree stage (entropy stage 7, container versions 12 and 13) ---------------------------

/// Photon noise over a wide range of intensities (the detector scene), lossless under `best`:
/// the probe takes the tree stage for the predicted frames, in a version-12 blob (13 on 8-bit
/// pixels: exact prediction levels, every tree frame flagged) that decodes bit for bit every way
/// (the fused decoding, carried tables), also cut into slices (a version-7 blob of version-12 or
/// 13 slices); it codes smaller than the same window without the stage; bit flips and
/// truncations are caught. `balanced` (the default) takes it too; `write_at_most(12)` keeps the
/// stage with its version-12 levels (8 bits: a version-12 blob, no frame flagged) and lossless
/// only (a bound then keeps an older version: `bounded_windows_take_the_tree_stage`); `fast` and
/// `write_at_most(11)` keep the older versions.
#[test]
fn photon_noise_takes_the_tree_stage() {
    use tezipfs::codec::entropy::{EntropyChoice, Stage};
    for dtype in [DType::U16, DType::U8] {
        let files = generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(128, 96, 8, 31) });
        let what = format!("detector {dtype}");
        let best = Options { entropy: EntropyChoice::Best, ..options(raw(128, 96, dtype, 0), PredictorChoice::Auto, false) };
        let enc = round_trip(&files, &best, &what);
        assert_all_frames(&enc, &what);
        let newest = if dtype == DType::U8 { 13 } else { 12 };
        assert_eq!(version_of(&enc.blob), newest, "{what}");
        let choices = frame_choices(&enc.blob);
        assert!(choices[1..].iter().all(|c| c.1 == Stage::Tree), "{what}: {choices:?}");
        assert!(tree_frames_exact(&enc.blob).iter().all(|&e| e == (dtype == DType::U8)), "{what}: exact levels on 8 bits only");
        let mut v12 = best.clone();
        v12.write_at_most(12);
        let coarse = round_trip(&files, &v12, &format!("{what} write_at_most(12)"));
        assert_eq!(version_of(&coarse.blob), 12, "{what} write_at_most(12)");
        assert!(frame_choices(&coarse.blob)[1..].iter().all(|c| c.1 == Stage::Tree), "{what} write_at_most(12)");
        assert!(tree_frames_exact(&coarse.blob).iter().all(|&e| !e), "{what} write_at_most(12): no exact levels");
        let without = encode_window(&refs(&files), &Options { tree_stage: false, ..best.clone() }).unwrap();
        assert!(enc.blob.len() < without.blob.len(), "{what}: tree {} bytes, without {}", enc.blob.len(), without.blob.len());
        assert!(version_of(&without.blob) < 12, "{what}");
        flip_bits(&enc.blob, &files, spread_bits(enc.blob.len(), 60).into_iter(), &what);
        truncations(&enc.blob, &files, [17, enc.blob.len() / 2, enc.blob.len() - 1].into_iter(), &what);

        let sliced = Options { slice_pixels: 128 * 40, ..best.clone() };
        let enc = round_trip(&files, &sliced, &format!("{what} sliced"));
        assert_eq!(version_of(&enc.blob), 7, "{what} sliced");
        assert!(Decoder::new(&enc.blob).unwrap().slice_count() > 1, "{what}: cut into slices");

        let balanced = round_trip(&files, &Options { entropy: EntropyChoice::Balanced, ..best.clone() }, &format!("{what} balanced"));
        assert_eq!(version_of(&balanced.blob), newest, "{what} balanced");
        let choices = frame_choices(&balanced.blob);
        assert!(choices[1..].iter().all(|c| c.1 == Stage::Tree), "{what} balanced: {choices:?}");

        let mut older = best.clone();
        older.write_at_most(11);
        for (opts, label) in [(Options { entropy: EntropyChoice::Fast, ..best.clone() }, "fast"), (older, "write_at_most(11)")] {
            let enc = round_trip(&files, &opts, &format!("{what} {label}"));
            assert!(version_of(&enc.blob) < 12, "{what} {label}");
        }
        let bounded = encode_within_bound(&files, &Options { bound: Bound::Abs(2.0), ..v12 }, dtype, &format!("{what} best abs:2 write_at_most(12)"));
        assert!(version_of(&bounded.blob) < 12, "{what} best abs:2 write_at_most(12)");
    }
}

/// Under an error bound the tree stage codes the quantisation codes (container version 13), each
/// pixel's prediction among its properties: on photon noise (the detector scene) the probe takes
/// it for the predicted frames under `best` and `balanced`, at abs:1, abs:2, abs:4 and pwrel:0.05,
/// u8 and u16, and the frames decode fused (each code dequantised against its prediction, escapes
/// included) within the bound, also cut into slices; it codes smaller than the same window
/// without it; bit flips and truncations are caught; `write_at_most(12)` codes without it.
#[test]
fn bounded_windows_take_the_tree_stage() {
    use tezipfs::codec::entropy::{EntropyChoice, Stage};
    for dtype in [DType::U8, DType::U16] {
        let files = generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(128, 96, 8, 5) });
        for (bound, entropy) in [
            (Bound::Abs(2.0), EntropyChoice::Best),
            (Bound::Abs(1.0), EntropyChoice::Balanced),
            (Bound::Abs(4.0), EntropyChoice::Balanced),
            (Bound::PwRel(0.05), EntropyChoice::Best),
        ] {
            let what = format!("detector {dtype} {bound} {entropy:?}");
            let opts = Options { bound, entropy, ..options(raw(128, 96, dtype, 0), PredictorChoice::Auto, false) };
            let enc = encode_within_bound(&files, &opts, dtype, &what);
            assert_eq!(version_of(&enc.blob), 13, "{what}");
            let choices = frame_choices(&enc.blob);
            assert!(choices[1..].iter().all(|c| c.1 == Stage::Tree), "{what}: {choices:?}");
            let without = encode_window(&refs(&files), &Options { bounded_tree: false, ..opts.clone() }).unwrap();
            assert!(version_of(&without.blob) < 13, "{what} without");
            if entropy == EntropyChoice::Best {
                assert!(enc.blob.len() < without.blob.len(), "{what}: tree {} bytes, without {}", enc.blob.len(), without.blob.len());
            }
            let mut older = opts.clone();
            older.write_at_most(12);
            let old = encode_within_bound(&files, &older, dtype, &format!("{what} write_at_most(12)"));
            assert!(version_of(&old.blob) < 13 && frame_choices(&old.blob).iter().all(|c| c.1 != Stage::Tree), "{what} write_at_most(12)");
        }
        let what = format!("detector {dtype} abs:2");
        let opts = Options { bound: Bound::Abs(2.0), ..options(raw(128, 96, dtype, 0), PredictorChoice::Auto, false) };
        let enc = encode_within_bound(&files, &opts, dtype, &what);
        // (Damage: an error or frames that fail their checksums, never a panic or wrong bytes
        // passed off as the originals.)
        let flipped = spread_bits(enc.blob.len(), 60).into_iter().map(|bit| {
            let mut b = enc.blob.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            (format!("bit {bit} flipped"), b)
        });
        let cut = [17, enc.blob.len() / 2, enc.blob.len() - 1].map(|n| (format!("cut to {n} bytes"), enc.blob[..n].to_vec()));
        for (how, damaged) in flipped.chain(cut) {
            assert!(decode_window(&damaged).is_err(), "{what}: {how} went unnoticed");
        }
        let sliced = encode_within_bound(&files, &Options { slice_pixels: 128 * 40, ..opts.clone() }, dtype, &format!("{what} sliced"));
        assert_eq!(version_of(&sliced.blob), 7, "{what} sliced");
    }
}

/// On nearly empty frames (a few photons a frame at abs:4: a frame's codes take a few dozen
/// bytes) the header entry a stage's container version adds to each frame (21 bytes: a motion
/// section and the flags) is as large as what the stage saves: the probe weighs it, and the
/// window is never coded larger with the tree stage allowed than without it.
#[test]
fn nearly_empty_frames_weigh_the_header_a_stage_adds() {
    let (w, h) = (256, 128);
    let files = nearly_empty(w, h, 16, 6);
    // (Plain headers, as version 13 wrote them: what the probe weighs.)
    let opts = Options { bound: Bound::Abs(4.0), compact_header: false, ..options(raw(w as u32, h as u32, DType::U16, 0), PredictorChoice::Auto, false) };
    let with = encode_within_bound(&files, &opts, DType::U16, "nearly empty abs:4");
    let without = encode_window(&refs(&files), &Options { bounded_tree: false, ..opts.clone() }).unwrap();
    assert!(with.blob.len() <= without.blob.len(), "with the tree stage {} bytes, without {}", with.blob.len(), without.blob.len());
}

/// `n` u16 frames of `w` x `h` pixels, all 0 but `photons` pixels of 1 to 3 each.
fn nearly_empty(w: usize, h: usize, n: usize, photons: usize) -> Vec<Vec<u8>> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            let mut px = vec![0u16; w * h];
            for _ in 0..photons {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                px[(seed >> 33) as usize % (w * h)] = 1 + (seed >> 20) as u16 % 3;
            }
            px.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
        .collect()
}

/// Container version 14: where the header is a large part of the blob (nearly empty frames,
/// lossless and under a bound) it is stored compressed; the blob decodes bit for bit (within the
/// bound), is smaller than the same window's version-13 blob by at least 0.5% of it, and
/// `write_at_most(13)` writes that; damage to the stored header is caught by its CRC, and a
/// resealed one whose length lies or that is not a zstd frame is refused by name, as is a
/// version-14 header in a blob that says 13, and a plain header in one that says 14. Frames with
/// real content keep their older version.
#[test]
fn nearly_empty_frames_compress_their_header() {
    use tezipfs::codec::container::reseal;
    let (w, h) = (256, 128);
    let files = nearly_empty(w, h, 12, 40);
    for bound in [Bound::Lossless, Bound::Abs(2.0)] {
        let what = format!("nearly empty {bound}");
        let opts = Options { bound, compact_header: true, ..options(raw(w as u32, h as u32, DType::U16, 0), PredictorChoice::Auto, false) };
        let enc = if bound == Bound::Lossless { round_trip(&files, &opts, &what) } else { encode_within_bound(&files, &opts, DType::U16, &what) };
        assert_eq!(version_of(&enc.blob), 14, "{what}");
        let mut older = opts.clone();
        older.write_at_most(13);
        let plain = encode_window(&refs(&files), &older).unwrap();
        assert!(version_of(&plain.blob) <= 13, "{what} write_at_most(13)");
        assert!(
            (enc.blob.len() as f64) <= plain.blob.len() as f64 * 0.995,
            "{what}: version 14 {} bytes, version {} {} bytes",
            enc.blob.len(),
            version_of(&plain.blob),
            plain.blob.len()
        );
        if bound == Bound::Lossless {
            flip_bits(&enc.blob, &files, spread_bits(enc.blob.len(), 60).into_iter(), &what);
            truncations(&enc.blob, &files, [17, 20, enc.blob.len() / 2, enc.blob.len() - 1].into_iter(), &what);
        }
        // The stored header: u32 plain length, then the zstd frame (the preamble is 16 bytes).
        let hlen = u32::from_le_bytes(enc.blob[12..16].try_into().unwrap()) as usize;
        let refused = |b: &[u8], what: &str| decode_window(b).err().map(|e| e.to_string()).unwrap_or_else(|| panic!("{what}: decoded"));
        for (lie, why) in [(1u32, "claims 1 bytes"), (u32::MAX, "claims"), (1 << 25, "claims")] {
            let mut b = enc.blob.clone();
            b[16..20].copy_from_slice(&lie.to_le_bytes());
            let crc = crc32c::crc32c(&b[16..16 + hlen]);
            b[16 + hlen..20 + hlen].copy_from_slice(&crc.to_le_bytes());
            let e = refused(&b, &format!("{what}: length {lie}"));
            assert!(e.contains("version-14 header") && (e.contains(why) || e.contains("record")), "{what}: length {lie}: {e}");
        }
        let mut b = enc.blob.clone();
        b[20..24].copy_from_slice(b"junk");
        let e = refused(&reseal(&b).unwrap(), &format!("{what}: not zstd"));
        assert!(e.contains("version-14 header"), "{what}: not zstd: {e}");
        let mut b = enc.blob.clone();
        b[8..10].copy_from_slice(&13u16.to_le_bytes());
        refused(&reseal(&b).unwrap(), &format!("{what}: a compressed header said to be version 13"));
        let mut b = plain.blob.clone();
        b[8..10].copy_from_slice(&14u16.to_le_bytes());
        let e = refused(&reseal(&b).unwrap(), &format!("{what}: a plain header said to be version 14"));
        assert!(e.contains("version-14 header"), "{what}: plain as 14: {e}");
    }
    // Cut into slices (version 7), each slice a blob of its own, here of version 14: they decode,
    // and a byte changed in a slice's stored header (its zstd frame), resealed, is an error, not
    // a panic.
    let opts = Options { compact_header: true, slice_pixels: w * 32, ..options(raw(w as u32, h as u32, DType::U16, 0), PredictorChoice::Auto, false) };
    let enc = round_trip(&files, &opts, "nearly empty sliced");
    assert_eq!(version_of(&enc.blob), 7);
    let outer = tezipfs::codec::container::Blob::parse(&enc.blob).unwrap();
    let slices = outer.header.slices.as_ref().unwrap().blobs.clone();
    let at = outer.payload_offset(&enc.blob);
    drop(outer);
    let mut guarded = 0;
    for sec in slices {
        let start = at + sec.offset as usize;
        assert_eq!(version_of(&enc.blob[start..]), 14, "a slice blob");
        for k in [20usize, 24, 30] {
            let mut b = enc.blob.clone();
            b[start + k] ^= 0x5a;
            let sealed = reseal(&b).unwrap();
            assert!(decode_window(&sealed).is_err() || decode_window(&sealed).unwrap() == files, "slice at {start}, byte {k}");
        }
        // A byte changed in a slice's payload changes a section CRC in its header, which may then
        // compress to another length: such a slice is left unsealed (the outer blob keeps its
        // length and layout; its decoding fails on the slice's CRC). Every byte of the payload is
        // tried, and some must take that path.
        let inner_hlen = u32::from_le_bytes(enc.blob[start + 12..start + 16].try_into().unwrap()) as usize;
        for k in 16 + inner_hlen + 4..sec.len as usize {
            let mut b = enc.blob.clone();
            b[start + k] ^= 0x01;
            let alone = reseal(&b[start..start + sec.len as usize]).unwrap();
            let sealed = reseal(&b).unwrap();
            assert_eq!(sealed.len(), b.len(), "slice at {start}, payload byte {k}");
            tezipfs::codec::container::Blob::parse(&sealed).unwrap_or_else(|e| panic!("slice at {start}, payload byte {k}: the outer blob: {e}"));
            let decoded = decode_window(&sealed);
            if alone.len() as u64 != sec.len {
                guarded += 1;
                assert!(decoded.is_err(), "slice at {start}, payload byte {k}: left unsealed, yet it decodes");
                assert_eq!(&sealed[start..start + sec.len as usize], &b[start..start + sec.len as usize], "left as it was");
            } else {
                assert!(decoded.is_err() || decoded.unwrap() == files, "slice at {start}, payload byte {k}");
            }
        }
    }
    assert!(guarded > 0, "no change of a slice's payload made its header compress to another length");
    // Frames with real content: the header is a fraction of a percent of the blob.
    let files = generate_raw(&SequenceSpec::detector_u16(256, 256, 4, 2));
    let enc = round_trip(&files, &Options { compact_header: true, ..options(raw(256, 256, DType::U16, 0), PredictorChoice::Auto, false) }, "detector");
    assert!(version_of(&enc.blob) < 14, "detector: version {}", version_of(&enc.blob));
}

/// Every predictor's frames decode fused with the tree stage (the prediction walks each frame as
/// the codes are decoded): a fixed stage on every predictor, lossless, u8 and u16, bit for bit.
#[test]
fn every_predictor_decodes_with_the_tree_stage() {
    use tezipfs::codec::entropy::Stage;
    for dtype in [DType::U8, DType::U16] {
        let files = generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(64, 48, 5, 9) });
        for pid in PredictorChoice::Auto.candidates() {
            let what = format!("{dtype} {pid} tree");
            let opts = Options { stage: Some(Stage::Tree), ..options(raw(64, 48, dtype, 0), PredictorChoice::Fixed(pid), false) };
            let enc = round_trip(&files, &opts, &what);
            assert!(frame_choices(&enc.blob).iter().all(|c| c.1 == Stage::Tree), "{what}");
        }
    }
}

/// The version rules of stage 7: a blob that says an older version is refused (an older build
/// would not know the stage), and so is a version-12 blob without it; a frame whose carry flag
/// disagrees with its stream is refused, not decoded with the wrong tables.
#[test]
fn tree_stage_needs_version_12() {
    use tezipfs::codec::container::{reseal, Blob, Body, Writer};
    use tezipfs::codec::entropy::Stage;
    let files = generate_raw(&SequenceSpec::detector_u16(64, 48, 5, 3));
    let opts = Options { stage: Some(Stage::Tree), ..options(raw(64, 48, DType::U16, 0), PredictorChoice::Fixed(PredictorId::Linear), false) };
    let blob = encode_window(&refs(&files), &opts).unwrap().blob;
    assert_eq!(version_of(&blob), 12);
    for older in [8u16, 9, 11] {
        let mut b = blob.clone();
        b[8..10].copy_from_slice(&older.to_le_bytes());
        let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("stage 7") || err.contains("version"), "version {older}: {err:?}");
    }
    let plain = encode_window(&refs(&files), &Options { stage: Some(Stage::Adaptive), ..opts.clone() }).unwrap().blob;
    assert!(version_of(&plain) < 12);
    let mut b = plain.clone();
    b[8..10].copy_from_slice(&12u16.to_le_bytes());
    let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("tree stage") || err.contains("version"), "a version-12 blob without the stage: {err:?}");
    // The carry flag of a frame that carries, cleared in the header (sealed again): refused.
    let parsed = Blob::parse(&blob).unwrap();
    let mut header = parsed.header.clone();
    let k = header.entries.iter().position(|e| matches!(&e.body, Body::Frame(f) if f.carry)).expect("a frame carries its tables");
    if let Body::Frame(f) = &mut header.entries[k].body {
        f.carry = false;
    }
    let mut wr = Writer::default();
    wr.section(&blob[parsed.payload_offset(&blob)..]);
    let flag_cleared = wr.finish(&header);
    let err = decode_window(&flag_cleared).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("carried"), "a carry flag against the stream: {err:?}");
}

/// The version rules of the tree stage's exact levels (frame flags bit 6, container version 13):
/// a u8 blob that uses them decodes bit for bit; said to be version 12 it is refused (an unknown
/// flag), and so is a version-13 blob without the flag; the flag on a frame of 16-bit pixels or
/// of another stage is refused; a carried frame whose flag disagrees with its tables' is refused,
/// not decoded with the wrong levels. Every failure is an error, never a panic.
#[test]
fn exact_levels_need_version_13() {
    use tezipfs::codec::container::{reseal, Blob, Body, Writer};
    use tezipfs::codec::entropy::Stage;
    let files = generate_raw(&SequenceSpec { dtype: DType::U8, ..SequenceSpec::detector_u16(64, 48, 5, 3) });
    let opts = Options { stage: Some(Stage::Tree), ..options(raw(64, 48, DType::U8, 0), PredictorChoice::Fixed(PredictorId::Linear), false) };
    let enc = round_trip(&files, &opts, "u8 linear tree");
    let blob = enc.blob;
    assert_eq!(version_of(&blob), 13);
    assert!(tree_frames_exact(&blob).iter().all(|&e| e));
    let mut b = blob.clone();
    b[8..10].copy_from_slice(&12u16.to_le_bytes());
    let err = Decoder::new(&reseal(&b).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("flag"), "version 12 with bit 6: {err:?}");
    // Headers changed and sealed again.
    let parsed = Blob::parse(&blob).unwrap();
    let payload = &blob[parsed.payload_offset(&blob)..];
    let rewrite = |change: &dyn Fn(&mut Vec<tezipfs::codec::container::Entry>)| -> Vec<u8> {
        let mut header = parsed.header.clone();
        change(&mut header.entries);
        let mut wr = Writer::default();
        wr.section(payload);
        wr.finish(&header)
    };
    let frames = |entries: &mut Vec<tezipfs::codec::container::Entry>| -> Vec<usize> {
        entries.iter().enumerate().filter(|(_, e)| matches!(&e.body, Body::Frame(f) if f.stage == Stage::Tree)).map(|(i, _)| i).collect()
    };
    // Every flag cleared: the writer then says version 12, and the tables decode with the wrong
    // levels (wrong pixels or a stream that does not end where it should): an error.
    let cleared = rewrite(&|entries| {
        for i in frames(entries) {
            if let Body::Frame(f) = &mut entries[i].body {
                f.exact_levels = false;
            }
        }
    });
    assert_eq!(version_of(&cleared), 12);
    assert!(decode_window(&cleared).is_err(), "tables of exact levels decoded with the version-12 levels");
    let mut relabelled = cleared.clone();
    relabelled[8..10].copy_from_slice(&13u16.to_le_bytes());
    let err = Decoder::new(&reseal(&relabelled).unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("exact prediction levels"), "a version-13 blob without the flag: {err:?}");
    // The flag cleared on a frame that carries its tables.
    let k = parsed.header.entries.iter().position(|e| matches!(&e.body, Body::Frame(f) if f.carry)).expect("a frame carries its tables");
    let one = rewrite(&|entries| {
        if let Body::Frame(f) = &mut entries[k].body {
            f.exact_levels = false;
        }
    });
    let err = decode_window(&one).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("carried"), "a carried frame of other levels: {err:?}");
    // The flag on a frame of another stage, and on 16-bit pixels.
    let flagged = |blob: &[u8]| -> String {
        let parsed = Blob::parse(blob).unwrap();
        let mut header = parsed.header.clone();
        if let Body::Frame(f) = &mut header.entries[1].body {
            f.exact_levels = true;
        }
        let mut wr = Writer::default();
        wr.section(&blob[parsed.payload_offset(blob)..]);
        Decoder::new(&wr.finish(&header)).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let plain = encode_window(&refs(&files), &Options { stage: Some(Stage::Adaptive), ..opts.clone() }).unwrap().blob;
    let err = flagged(&plain);
    assert!(err.contains("exact prediction levels"), "the flag on an adaptive frame: {err:?}");
    let wide = generate_raw(&SequenceSpec::detector_u16(64, 48, 3, 3));
    let wide_opts = Options { format: raw(64, 48, DType::U16, 0), ..opts.clone() };
    let wide_blob = encode_window(&refs(&wide), &wide_opts).unwrap().blob;
    assert_eq!(version_of(&wide_blob), 12, "16-bit pixels keep the version-12 levels");
    let err = flagged(&wide_blob);
    assert!(err.contains("exact prediction levels"), "the flag on 16-bit pixels: {err:?}");
}

/// The predictor a blob names is read from its header alone, however long: a version-14 header
/// of 6000 tiny frames (longer than the 64 KiB `user.tezip.predictor` once read) and
/// a plain one, each through a reader that hands over one byte at a time; a blob cut inside its
/// header names none.
#[test]
fn the_predictor_is_read_from_the_header_alone() {
    use tezipfs::codec::container::{peek_len, peek_predictor, read_predictor};
    /// A reader that returns at most one byte a call.
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let (w, h) = (8, 8);
    let files = nearly_empty(w, h, 6000, 1);
    let compact = Options {
        compact_header: true,
        ..options(raw(w as u32, h as u32, DType::U16, 0), PredictorChoice::Fixed(tezipfs::codec::PredictorId::Previous), false)
    };
    let mut plain = compact.clone();
    plain.write_at_most(13);
    for (opts, compact) in [(compact, true), (plain, false)] {
        let enc = encode_window(&refs(&files), &opts).unwrap();
        let version = version_of(&enc.blob);
        assert_eq!(version == 14, compact, "version {version}");
        let want = peek_predictor(&enc.blob).expect("the whole blob names its predictor");
        assert_eq!(want.0, tezipfs::codec::PredictorId::Previous as u8, "version {version}");
        let needed = peek_len(&enc.blob[..16]).unwrap();
        if compact {
            assert!(needed > 64 * 1024, "a version-14 header of {needed} bytes: the test wants one longer than 64 KiB");
            assert_eq!(peek_predictor(&enc.blob[..64 * 1024]), None, "the first 64 KiB do not hold the header");
        }
        assert_eq!(read_predictor(&mut Trickle(&enc.blob)).unwrap(), Some(want), "version {version}");
        assert_eq!(read_predictor(&mut Trickle(&enc.blob[..needed])).unwrap(), Some(want), "version {version}, header only");
        assert_eq!(read_predictor(&mut Trickle(&enc.blob[..needed - 1])).unwrap(), None, "version {version}, cut in its header");
        assert_eq!(read_predictor(&mut Trickle(&enc.blob[..10])).unwrap(), None, "version {version}, cut in its preamble");
    }
    assert_eq!(read_predictor(&mut Trickle(b"not a blob at all, longer than a preamble")).unwrap(), None);
}
