//! The codec's threads change its speed, never its bytes: a window encoded with
//! `Options.threads` 2 or 3 is the blob encoded with 1, and a `Decoder` given threads decodes
//! the same files.

use tezipfs::codec::entropy::EntropyChoice;
use tezipfs::codec::{encode_window, Bound, DType, Decoder, FormatSpec, Options, PredictorChoice, PredictorId, RawSpec};
use tezipfs::fixtures::{generate_raw, SequenceSpec};

fn raw(width: u32, height: u32, dtype: DType) -> FormatSpec {
    FormatSpec::Raw(RawSpec { width, height, dtype, skip: 0 })
}

/// A textured square moving by (2, 1) a frame over a noisy gradient (the motion predictors and
/// the adaptive stage's moved context get work), as little-endian raw frames.
fn moving(dtype: DType, w: usize, h: usize, frames: usize) -> Vec<Vec<u8>> {
    let mut seed = 99u64;
    let mut noise = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 61) as i64
    };
    (0..frames)
        .map(|k| {
            let mut out = Vec::with_capacity(w * h * dtype.bytes());
            for y in 0..h {
                for x in 0..w {
                    let (sx, sy) = (x as i64 - 2 * k as i64 - 8, y as i64 - k as i64 - 6);
                    let inside = (0..16).contains(&sx) && (0..16).contains(&sy);
                    let v = if inside { 40 + ((sx * 7 + sy * 13) % 50) } else { (x + y) as i64 / 2 } + noise();
                    let v = v.clamp(0, 255) as u64;
                    match dtype {
                        DType::U8 => out.push(v as u8),
                        DType::U16 => out.extend_from_slice(&((v * 37) as u16).to_le_bytes()),
                        _ => out.extend_from_slice(&(v as f32 * 0.5).to_le_bytes()),
                    }
                }
            }
            out
        })
        .collect()
}

fn check(files: &[Vec<u8>], opts: &Options, what: &str) {
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let one = encode_window(&refs, &Options { threads: 1, ..opts.clone() }).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut plain = Decoder::new(&one.blob).unwrap();
    let want = plain.decode_all().unwrap();
    if opts.bound == Bound::Lossless {
        assert!(want == files, "{what}: lossless round trip");
    }
    for threads in [2, 3] {
        let many = encode_window(&refs, &Options { threads, ..opts.clone() }).unwrap();
        assert!(many.blob == one.blob, "{what}: {threads} threads coded other bytes ({} against {})", many.blob.len(), one.blob.len());
        assert_eq!(many.predictor, one.predictor, "{what}");
        let mut dec = Decoder::new(&many.blob).unwrap();
        dec.set_threads(threads);
        assert!(dec.decode_all().unwrap() == want, "{what}: {threads} decoding threads");
        // Out of order, then in order again (the decoder's chain state restarts).
        let mut dec = Decoder::new(&many.blob).unwrap();
        dec.set_threads(threads);
        let last = files.len() - 1;
        assert!(dec.decode(last, |_, _| {}).unwrap() == want[last], "{what}");
        assert!(dec.decode(1, |_, _| {}).unwrap() == want[1], "{what}");
    }
}

#[test]
fn threads_code_and_decode_the_same_bytes() {
    let predictors = [
        PredictorChoice::Auto,
        PredictorChoice::Fixed(PredictorId::Motion),
        PredictorChoice::Fixed(PredictorId::Linear),
        PredictorChoice::Fixed(PredictorId::None),
    ];
    for dtype in [DType::U8, DType::U16, DType::F32] {
        let (w, h) = (64, 48);
        let sets = [
            ("detector", generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(w, h, 12, 5) })),
            ("moving", moving(dtype, w as usize, h as usize, 12)),
        ];
        for (name, files) in &sets {
            for bound in [Bound::Lossless, Bound::Abs(1.0), Bound::Abs(2.0)] {
                for predictor in predictors {
                    let opts = Options { format: raw(w, h, dtype), bound, predictor, ..Options::default() };
                    check(files, &opts, &format!("{dtype} {name} {bound} {predictor}"));
                }
            }
            for entropy in [EntropyChoice::Fast, EntropyChoice::Best] {
                let opts = Options { format: raw(w, h, dtype), entropy, ..Options::default() };
                check(files, &opts, &format!("{dtype} {name} entropy {entropy}"));
            }
            let opts = Options { format: raw(w, h, dtype), exhaustive: true, ..Options::default() };
            check(files, &opts, &format!("{dtype} {name} exhaustive"));
        }
    }
}

#[test]
fn a_window_of_one_frame_and_of_opaque_files() {
    let files = moving(DType::U16, 40, 30, 3);
    let mut with_junk = files.clone();
    with_junk.insert(1, b"not a frame".to_vec());
    for set in [&files[..1], &with_junk[..]] {
        let refs: Vec<&[u8]> = set.iter().map(|f| &f[..]).collect();
        let opts = Options { format: raw(40, 30, DType::U16), ..Options::default() };
        let one = encode_window(&refs, &opts).unwrap();
        let two = encode_window(&refs, &Options { threads: 2, ..opts.clone() }).unwrap();
        assert!(one.blob == two.blob);
        let mut dec = Decoder::new(&two.blob).unwrap();
        dec.set_threads(2);
        assert!(dec.decode_all().unwrap() == set);
    }
}
