//! What frame slices (container version 7) cost in ratio and give in speed, per slice size:
//! `cargo run --release --example slices [-- --quick] [--bound abs:2] [--entropy best]
//! [--sets all|fixtures|real] [--data ../shared/data]`.
//! Output: `docs/results/slices.txt`.
//!
//! Sets: generated 16-bit detector sequences of 2048 x 2048 (16 frames) and 4096 x 4096 (8
//! frames) from `tezipfs::fixtures`, and the shared sets (`../shared/data`) cut into slices of
//! 256 to 32 rows (their frames are smaller than any slice size worth having; the rows a slice
//! has are what its first-row and learning costs depend on). Each set is one window. (Tiling the
//! shared frames into large ones was tried and dropped: zstd stages then find the repeated
//! tiles, which slices cut apart, so it measured the tiling.) For each slice size: the blob's size against the unsliced one,
//! encoding on 2 threads, decoding on 1 and 2 (checked against the originals), and at the default
//! size encoding on 1 thread too.

use std::time::Instant;
use tezipfs::codec::slices::DEFAULT_SLICE_PIXELS;
use tezipfs::codec::{encode_window, Bound, DType, Decoder, FormatSpec, Options, RawSpec};
use tezipfs::fixtures::{generate_raw, SequenceSpec};

struct Set {
    name: String,
    width: u32,
    height: u32,
    dtype: DType,
    frames: Vec<Vec<u8>>,
}

/// A shared set's frames as they are (`None` when the set is not there).
fn shared(data: &std::path::Path, name: &str, width: u32, height: u32, dtype: DType, max_frames: usize) -> Option<Set> {
    let mut names: Vec<_> =
        std::fs::read_dir(data.join(name)).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "raw")).collect();
    names.sort();
    let frames = names.iter().take(max_frames).map(|p| std::fs::read(p).expect("a frame")).collect();
    Some(Set { name: name.into(), width, height, dtype, frames })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let arg = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let bound: Bound = arg("--bound").map_or(Bound::Lossless, |b| b.parse().expect("a bound"));
    let data = std::path::PathBuf::from(arg("--data").unwrap_or_else(|| "../shared/data".into()));
    let entropy: tezipfs::codec::entropy::EntropyChoice = arg("--entropy").map_or(Default::default(), |e| e.parse().expect("fast, balanced or best"));
    let which = arg("--sets").unwrap_or_else(|| "all".into());
    let n = |full: usize| if quick { full.min(4) } else { full };
    let mut sets = Vec::new();
    if which != "real" {
        sets.extend([
            Set {
                name: "fixture u16".into(),
                width: 2048,
                height: 2048,
                dtype: DType::U16,
                frames: generate_raw(&SequenceSpec::detector_u16(2048, 2048, n(16), 1)),
            },
            Set {
                name: "fixture u16".into(),
                width: 4096,
                height: 4096,
                dtype: DType::U16,
                frames: generate_raw(&SequenceSpec::detector_u16(4096, 4096, n(8), 2)),
            },
        ]);
    }
    // The shared sets' frames are below every slice size above: cut into slices of the same
    // rows as the large frames' (a 2048-wide frame in slices of 1M pixels has 512 rows; of 256k,
    // 128), they show what slicing costs on real scenes.
    let real = [("ctc-fluo-nuclei", 511, 511, DType::U8, 30), ("visp-cube", 640, 480, DType::U8, 32), ("scratch-hoechst-u16", 576, 210, DType::U16, 10)];
    if which != "fixtures" {
        sets.extend(real.into_iter().filter_map(|(name, w, h, d, f)| shared(&data, name, w, h, d, n(f))));
    }
    let large: [(usize, &str); 6] = [(0, "unsliced"), (4 << 20, "4M"), (2 << 20, "2M"), (1 << 20, "1M"), (512 << 10, "512k"), (256 << 10, "256k")];
    println!("bound {bound}, entropy {entropy:?}; default slice size {DEFAULT_SLICE_PIXELS} pixels; one window a set; MB/s of original bytes");
    for set in &sets {
        let mb = set.frames.iter().map(|f| f.len()).sum::<usize>() as f64 / 1e6;
        let refs: Vec<&[u8]> = set.frames.iter().map(|f| &f[..]).collect();
        println!("\n{} {}x{} {}, {} frames, {mb:.0} MB", set.name, set.width, set.height, set.dtype, set.frames.len());
        println!("{:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}", "slice", "slices", "ratio", "cost", "enc 2t", "dec 1t", "dec 2t");
        let mut base = None;
        // Real sets: slices of 256, 128, 64 and 32 rows.
        let small: Vec<(usize, String)> = [256, 128, 64, 32].iter().map(|&r| (r * set.width as usize, format!("{r} rows"))).collect();
        let sizes: Vec<(usize, String)> = if set.width >= 2048 {
            large.iter().map(|&(p, l)| (p, l.to_string())).collect()
        } else {
            [(0, "unsliced".to_string())].into_iter().chain(small).collect()
        };
        for (pixels, label) in sizes {
            let opts = |threads| Options {
                format: FormatSpec::Raw(RawSpec { width: set.width, height: set.height, dtype: set.dtype, skip: 0 }),
                bound,
                entropy,
                slice_pixels: pixels,
                threads,
                ..Options::default()
            };
            let t = Instant::now();
            let enc = encode_window(&refs, &opts(2)).expect("encodes");
            let enc_s = t.elapsed().as_secs_f64();
            let mut dec_s = [0.0; 2];
            let mut slices = 1;
            for (j, threads) in [1, 2].into_iter().enumerate() {
                let t = Instant::now();
                let mut d = Decoder::new(&enc.blob).expect("a blob");
                d.set_threads(threads);
                slices = d.slice_count();
                let out = d.decode_all().expect("decodes");
                dec_s[j] = t.elapsed().as_secs_f64();
                if bound == Bound::Lossless {
                    assert!(out == set.frames, "lossless round trip");
                }
            }
            let ratio = mb * 1e6 / enc.blob.len() as f64;
            let b = *base.get_or_insert(enc.blob.len());
            let cost = 100.0 * (enc.blob.len() as f64 / b as f64 - 1.0);
            println!("{label:>9} {slices:>7} {ratio:>9.4} {cost:>8.3}% {:>9.1} {:>9.1} {:>9.1}", mb / enc_s, mb / dec_s[0], mb / dec_s[1]);
            if (pixels == DEFAULT_SLICE_PIXELS || pixels == 128 * set.width as usize) && slices > 1 {
                let t = Instant::now();
                let one = encode_window(&refs, &opts(1)).expect("encodes");
                assert_eq!(one.blob, enc.blob, "the thread count does not change the bytes");
                println!("{:>9} encoding on 1 thread: {:.1} MB/s (same bytes)", "", mb / t.elapsed().as_secs_f64());
            }
        }
    }
}
