//! Profiling aid: encode a generated 16-bit sequence once, then decode it repeatedly.
//! `cargo run --release --example decode_profile [predictor [entropy [DIR FORMAT [BOUND]]]]`
//! (DIR: a directory of raw frames, FORMAT as `--format`, e.g. `raw:511x511:u8`; BOUND as
//! `--bound`.)
use std::time::Instant;
use tezipfs::codec::{encode_window, Decoder, FormatSpec, Options};
use tezipfs::fixtures::{generate_raw, SequenceSpec};

fn main() {
    let pred = std::env::args().nth(1).unwrap_or_else(|| "previous".into());
    let args: Vec<String> = std::env::args().collect();
    let (files, format) = match (args.get(3), args.get(4)) {
        (Some(dir), Some(format)) => {
            let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "raw")).collect();
            names.sort();
            (names.iter().take(32).map(|p| std::fs::read(p).unwrap()).collect::<Vec<_>>(), format.clone())
        }
        _ => (generate_raw(&SequenceSpec::detector_u16(512, 512, 32, 1)), "raw:512x512:u16".to_string()),
    };
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let entropy = args.get(2).map_or("balanced", |s| s).parse().unwrap();
    let bound = args.get(5).map_or("lossless", |s| s).parse().unwrap();
    // (STAGE=N: code every frame under entropy stage N, without the probe; needs a fixed predictor.)
    let stage = std::env::var("STAGE").ok().map(|v| tezipfs::codec::entropy::Stage::from_id(v.parse().unwrap()).unwrap());
    // (WRITE_VERSION=N: the blobs a build of version N reads, `Options::write_at_most`.)
    let mut opts =
        Options { format: format.parse::<FormatSpec>().unwrap(), predictor: pred.parse().unwrap(), entropy, bound, threads: 1, stage, ..Options::default() };
    if let Some(v) = std::env::var("WRITE_VERSION").ok().and_then(|v| v.parse().ok()) {
        opts.write_at_most(v);
    }
    // (ENCODES=N: encode N times, to profile the encoder.)
    let encodes: usize = std::env::var("ENCODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let t = Instant::now();
    let mut blob = Vec::new();
    for _ in 0..encodes {
        blob = encode_window(&refs, &opts).unwrap().blob;
    }
    let bytes: usize = files.iter().map(|f| f.len()).sum();
    println!("encode {:.1} MB/s, ratio {:.3}", (encodes * bytes) as f64 / 1e6 / t.elapsed().as_secs_f64(), bytes as f64 / blob.len() as f64);
    let t = Instant::now();
    // (DECODES=N: decode N times, 10 by default.)
    let reps: usize = std::env::var("DECODES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    for _ in 0..reps {
        let out = Decoder::new(&blob).unwrap().decode_all().unwrap();
        assert_eq!(out.len(), files.len());
    }
    println!("decode {:.1} MB/s", (reps * bytes) as f64 / 1e6 / t.elapsed().as_secs_f64());
}
