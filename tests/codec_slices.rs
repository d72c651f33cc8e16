//! Frame slices (container version 7): round trips lossless and under bounds, every kind of
//! frame the slicing layer treats differently (u8/u16/f32, raw with a header, TIFF in either byte
//! order, heights that are not a multiple of the slice rows, opaque entries mixed in), decoding on
//! one and two threads, damage to a slice, and the unsliced blobs that must not change.

use tezipfs::codec::container::{self, Blob, BlobError};
use tezipfs::codec::format::tiff;
use tezipfs::codec::quantizer::FrameBound;
use tezipfs::codec::slices::{slice_rows, DEFAULT_SLICE_PIXELS, MIN_SLICE_ROWS};
use tezipfs::codec::window::EntryReport;
use tezipfs::codec::{analyze, decode_window, encode_window, Analysis, Bound, DType, Decoder, FormatSpec, Options, RawSpec};
use tezipfs::fixtures::{generate_images, SequenceSpec};

fn spec(width: u32, height: u32, frames: usize, dtype: DType, seed: u64) -> SequenceSpec {
    SequenceSpec { dtype, ..SequenceSpec::detector_u16(width, height, frames, seed) }
}

fn raw_frames(dtype: DType, images: &[Vec<u32>], skip: usize) -> Vec<Vec<u8>> {
    images
        .iter()
        .enumerate()
        .map(|(k, img)| {
            let mut f: Vec<u8> = (0..skip).map(|j| (j * 7 + k) as u8).collect();
            let mut px = Vec::new();
            dtype.encode_pixels(img, false, &mut px);
            f.extend_from_slice(&px);
            f
        })
        .collect()
}

fn refs(files: &[Vec<u8>]) -> Vec<&[u8]> {
    files.iter().map(|f| &f[..]).collect()
}

/// Options that slice a `w` x `h` frame into slices of at most `slice` pixels.
fn sliced(format: FormatSpec, bound: Bound, slice: usize) -> Options {
    Options { format, bound, slice_pixels: slice, ..Options::default() }
}

fn version(blob: &[u8]) -> u16 {
    u16::from_le_bytes([blob[8], blob[9]])
}

/// Encode, check it is sliced into `slices`, decode on 1 and 2 threads (identical), in order and
/// backwards; return the decoded files.
fn round_trip(files: &[Vec<u8>], opts: &Options, slices: usize, what: &str) -> Vec<Vec<u8>> {
    let enc = encode_window(&refs(files), opts).unwrap_or_else(|e| panic!("{what}: encode: {e}"));
    assert_eq!(version(&enc.blob), 7, "{what}: a sliced blob");
    let b = Blob::parse(&enc.blob).unwrap_or_else(|e| panic!("{what}: parse: {e}"));
    assert_eq!(b.header.slices.as_ref().map(|s| s.blobs.len()), Some(slices), "{what}: slice count");
    let mut outs = Vec::new();
    for threads in [1, 2] {
        let mut dec = Decoder::new(&enc.blob).unwrap();
        dec.set_threads(threads);
        assert_eq!(dec.slice_count(), slices);
        outs.push(dec.decode_all().unwrap_or_else(|e| panic!("{what}: decode on {threads} threads: {e}")));
        // Backwards: every frame restarts the chain.
        let mut dec = Decoder::new(&enc.blob).unwrap();
        dec.set_threads(threads);
        for i in (0..files.len()).rev() {
            let got = dec.decode(i, |_, _| {}).unwrap_or_else(|e| panic!("{what}: decode({i}) backwards: {e}"));
            assert!(got == outs[outs.len() - 1][i], "{what}: entry {i} backwards differs");
        }
    }
    assert!(outs[0] == outs[1], "{what}: 1 and 2 threads decode different bytes");
    assert_eq!(decode_window(&enc.blob).unwrap(), outs[0]);
    outs.swap_remove(0)
}

#[test]
fn slice_rows_are_balanced_and_bounded() {
    assert_eq!(slice_rows(2048, 2048, 1 << 20), Some(512));
    assert_eq!(slice_rows(1024, 1024, 1 << 20), None, "a frame of exactly the limit is whole");
    assert_eq!(slice_rows(640, 480, DEFAULT_SLICE_PIXELS), None, "the shared sets are not sliced");
    assert_eq!(slice_rows(100, 100, 0), None, "0: never");
    assert_eq!(slice_rows(64, 70, 1024), Some(MIN_SLICE_ROWS), "at least the minimum rows");
    assert_eq!(slice_rows(4096, 16, 1024), None, "too few rows to cut");
    assert_eq!(slice_rows(4096, 20, 1024), Some(16), "the minimum rows, the last slice shorter");
    for (w, h, s) in [(2048u32, 2047u32, 1usize << 20), (1000, 999, 100_000), (33, 500, 1000)] {
        let rows = slice_rows(w, h, s).unwrap();
        assert!(rows as usize * w as usize <= s || rows == MIN_SLICE_ROWS, "{w}x{h}/{s}: {rows} rows");
        assert!(rows < h);
    }
}

#[test]
fn lossless_u8_u16_f32_round_trip_sliced() {
    for (dtype, seed) in [(DType::U8, 1), (DType::U16, 2), (DType::F32, 3), (DType::I16, 4)] {
        // 70 rows in slices of 16: 5 slices, the last of 6 rows.
        let images = generate_images(&spec(64, 70, 5, dtype, seed));
        let files = raw_frames(dtype, &images, 0);
        let opts = sliced(FormatSpec::Raw(RawSpec { width: 64, height: 70, dtype, skip: 0 }), Bound::Lossless, 1024);
        let back = round_trip(&files, &opts, 5, &format!("{dtype} lossless"));
        assert!(back == files, "{dtype}: lossless differs");
    }
}

#[test]
fn bounded_round_trips_hold_their_bound() {
    for (dtype, bound) in [(DType::U16, Bound::Abs(3.0)), (DType::U8, Bound::Abs(1.0)), (DType::F32, Bound::Abs(0.25)), (DType::U16, Bound::PwRel(0.01))] {
        let images = generate_images(&spec(48, 100, 6, dtype, 9));
        let files = raw_frames(dtype, &images, 0);
        let opts = sliced(FormatSpec::Raw(RawSpec { width: 48, height: 100, dtype, skip: 0 }), bound, 48 * 30);
        let back = round_trip(&files, &opts, 4, &format!("{dtype} {bound}"));
        let fb = bound.for_frame(dtype, &[]);
        for (k, (o, r)) in files.iter().zip(&back).enumerate() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            dtype.decode_pixels(o, false, &mut a);
            dtype.decode_pixels(r, false, &mut b);
            assert!(a.iter().zip(&b).all(|(&x, &y)| fb.holds(dtype, x, y)), "{dtype} {bound}: frame {k} breaks the bound");
        }
        // The outer entries state the bound (what `tezipfs verify` checks against).
        let enc = encode_window(&refs(&files), &opts).unwrap();
        let b = Blob::parse(&enc.blob).unwrap();
        assert!(b.header.entries.iter().all(|e| matches!(&e.body, container::Body::Frame(f) if f.bound == fb)));
        assert!(fb != FrameBound::Lossless);
    }
}

#[test]
fn rel_bounds_are_not_sliced() {
    let images = generate_images(&spec(48, 100, 3, DType::U16, 5));
    let files = raw_frames(DType::U16, &images, 0);
    let opts = sliced(FormatSpec::Raw(RawSpec { width: 48, height: 100, dtype: DType::U16, skip: 0 }), Bound::Rel(0.001), 48 * 30);
    let enc = encode_window(&refs(&files), &opts).unwrap();
    // (Not version 7, the sliced container; 13 where the tree stage codes the bounded frames.)
    assert!(version(&enc.blob) != 7, "version {}", version(&enc.blob));
    assert_eq!(tezipfs::codec::Decoder::new(&enc.blob).unwrap().slice_count(), 1);
}

#[test]
fn headers_tiff_both_byte_orders_and_opaque_entries() {
    let (w, h) = (40u32, 90u32);
    let images = generate_images(&spec(w, h, 6, DType::U16, 11));
    // A raw format with a header of 100 bytes before the pixels.
    let files = raw_frames(DType::U16, &images, 100);
    let opts = sliced(FormatSpec::Raw(RawSpec { width: w, height: h, dtype: DType::U16, skip: 100 }), Bound::Lossless, 40 * 20);
    assert!(round_trip(&files, &opts, 5, "raw with a header") == files);

    // TIFF: little- and big-endian, strips in file order and reversed, mixed in one window with
    // files that are not frames and a frame of another geometry.
    let mut files: Vec<Vec<u8>> = images.iter().enumerate().map(|(k, img)| tiff::write(w, h, DType::U16, k % 2 == 1, 7, k % 3 == 0, img)).collect();
    files.insert(2, b"not a frame at all".to_vec());
    let small = generate_images(&spec(8, 8, 1, DType::U16, 3));
    files.insert(4, tiff::write(8, 8, DType::U16, false, 8, false, &small[0]));
    files.push(vec![0u8; 5000]);
    let opts = sliced(FormatSpec::Auto, Bound::Lossless, 40 * 20);
    for f in &files[..2] {
        assert!(matches!(analyze(f, &FormatSpec::Auto), Analysis::Frame(_)));
    }
    let enc = encode_window(&refs(&files), &opts).unwrap();
    let kinds: Vec<bool> = enc.entries.iter().map(|e| matches!(e, EntryReport::Frame { .. })).collect();
    assert_eq!(kinds, [true, true, false, true, false, true, true, true, false]);
    assert!(round_trip(&files, &opts, 5, "tiff with opaque entries") == files);

    // Under a bound, the TIFF skeletons stay exact.
    let opts = sliced(FormatSpec::Auto, Bound::Abs(2.0), 40 * 20);
    let back = round_trip(&files, &opts, 5, "tiff abs:2");
    for (k, (o, r)) in files.iter().zip(&back).enumerate() {
        assert_eq!(o.len(), r.len(), "entry {k}");
        if let Analysis::Frame(l) = analyze(o, &FormatSpec::Auto) {
            assert_eq!(l.skeleton(o), l.skeleton(r), "entry {k}: skeleton");
        } else {
            assert_eq!(o, r, "entry {k}: opaque");
        }
    }
}

#[test]
fn small_frames_are_not_sliced_and_unchanged() {
    // The shared sets' geometries (511x511, 576x210, 640x480) are below the default: the window
    // codes exactly as with slicing off.
    let images = generate_images(&spec(511, 60, 3, DType::U8, 4));
    let files = raw_frames(DType::U8, &images, 0);
    let format = FormatSpec::Raw(RawSpec { width: 511, height: 60, dtype: DType::U8, skip: 0 });
    let on = encode_window(&refs(&files), &Options { format: format.clone(), ..Options::default() }).unwrap();
    let off = encode_window(&refs(&files), &Options { format, slice_pixels: 0, ..Options::default() }).unwrap();
    assert_eq!(on.blob, off.blob);
    // (Not version 7: 2 to 6, or 8 where the adaptive stage weighs the reference's intensity.)
    assert!(version(&on.blob) != 7);
}

#[test]
fn a_damaged_slice_is_a_clear_error() {
    let images = generate_images(&spec(64, 64, 4, DType::U16, 21));
    let files = raw_frames(DType::U16, &images, 0);
    let opts = sliced(FormatSpec::Raw(RawSpec { width: 64, height: 64, dtype: DType::U16, skip: 0 }), Bound::Lossless, 64 * 16);
    let enc = encode_window(&refs(&files), &opts).unwrap();
    let b = Blob::parse(&enc.blob).unwrap();
    let sl = b.header.slices.clone().unwrap();
    let payload = b.payload_offset(&enc.blob);
    // A flipped byte in the last quarter of slice 2 (its payload: codes of some frame).
    let s2 = sl.blobs[2];
    let at = payload + (s2.offset + s2.len * 3 / 4) as usize;
    let mut bad = enc.blob.clone();
    bad[at] ^= 0x40;
    let mut dec = Decoder::new(&bad).expect("the headers are intact");
    let errs: Vec<String> = (0..files.len()).filter_map(|i| dec.decode(i, |_, _| {}).err()).map(|e| e.to_string()).collect();
    assert!(!errs.is_empty(), "the damage is found");
    assert!(errs.iter().all(|e| e.contains("slice 2")), "{errs:?}");
    // Resealed (every CRC made to fit), the decoder still refuses or decodes, never panics.
    let sealed = container::reseal(&bad).unwrap();
    if let Ok(mut d) = Decoder::new(&sealed) {
        for i in 0..files.len() {
            let _ = d.decode(i, |_, _| {});
        }
    }
    // Damage to a slice blob's header is found when the blob is opened.
    let mut bad = enc.blob.clone();
    bad[payload + sl.blobs[1].offset as usize + 20] ^= 1;
    assert!(matches!(Decoder::new(&bad), Err(BlobError::Malformed(m)) if m.contains("slice 1")), "header damage");
    // Truncation.
    assert!(Decoder::new(&enc.blob[..enc.blob.len() - 1]).is_err());
    // Every single-byte change of the outer header is refused or decodes to an error, no panic.
    let hlen = u32::from_le_bytes(enc.blob[12..16].try_into().unwrap()) as usize;
    for at in 16..16 + hlen {
        let mut bad = enc.blob.clone();
        bad[at] ^= 0xff;
        let Some(sealed) = container::reseal(&bad) else { continue };
        if let Ok(mut d) = Decoder::new(&sealed) {
            for i in 0..d.len() {
                let _ = d.decode(i, |_, _| {});
            }
        }
    }
}

#[test]
fn old_version_blobs_still_decode() {
    let blob = include_bytes!("data/moving_square_motion_v4.blob");
    assert_eq!(version(blob), 4);
    let frames = decode_window(blob).expect("a version-4 blob decodes");
    assert_eq!(frames.len(), 6);
    // And a version-6-or-older blob written by this build unsliced decodes with the same decoder
    // as a sliced one.
    let images = generate_images(&spec(64, 64, 3, DType::U16, 8));
    let files = raw_frames(DType::U16, &images, 0);
    let format = FormatSpec::Raw(RawSpec { width: 64, height: 64, dtype: DType::U16, skip: 0 });
    // (Without the tree stage: the default codes these frames with it, in version 12.)
    let whole = encode_window(&refs(&files), &Options { format, slice_pixels: 0, tree_stage: false, compact_header: false, ..Options::default() }).unwrap();
    assert!(version(&whole.blob) <= 6);
    assert_eq!(decode_window(&whole.blob).unwrap(), files);
    let mut dec = Decoder::new(&whole.blob).unwrap();
    dec.set_threads(2);
    assert_eq!(dec.slice_count(), 1);
}
