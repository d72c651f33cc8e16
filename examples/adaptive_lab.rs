//! Lab for the adaptive entropy stage: codes the shared data sets' residuals (intra MED on the
//! first frame, previous frame after) with each context stage and prints size and speed.
//! `cargo run --release --example adaptive_lab [dir...]`
use std::time::Instant;
use tezipfs::codec::entropy::{Coder, Side, Stage};
use tezipfs::codec::quantizer::{self, FrameBound, Prediction};

fn main() {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    let mut total = 0f64;
    let dirs = if dirs.is_empty() { vec!["ctc-fluo-nuclei".into(), "scratch-hoechst-u16".into(), "visp-cube".into()] } else { dirs };
    let mut coder = Coder::new(3).unwrap();
    for d in dirs {
        let path = if d.starts_with('/') { d.clone() } else { format!("../shared/data/{d}") };
        let tezipfs::fixtures::RawDir { width: w, height: h, dtype, images: frames, .. } =
            tezipfs::fixtures::read_raw_dir(std::path::Path::new(&path), 10).expect("a directory of raw frames");
        let raw_bytes = frames.len() * w * h * dtype.bytes();
        let refs: Vec<&[u32]> = frames.iter().map(|f| &f[..]).collect();
        let coefs = tezipfs::codec::predict::linear::fit(&refs[..3], w, tezipfs::codec::predict::linear::Weighting::Uniform).unwrap();
        let zero = vec![0u32; w * h];
        for label in ["none", "spatial", "previous", "linear"] {
            let codes: Vec<Vec<u32>> = frames
                .iter()
                .enumerate()
                .map(|(k, x)| {
                    let p = match label {
                        "none" => Prediction::Frame(&zero),
                        "previous" if k > 0 => Prediction::Frame(&frames[k - 1]),
                        "linear" if k > 0 => Prediction::Linear { prev: &frames[k - 1], width: w, coefs: &coefs, boxes: &[] },
                        _ => Prediction::Intra { width: w },
                    };
                    quantizer::encode(dtype, FrameBound::Lossless, x, p).codes
                })
                .collect();
            let stages: &[Stage] =
                if std::env::var("LAB_ALL").is_ok() { &[Stage::ContextRans, Stage::Adaptive, Stage::BitShuffleZstd] } else { &[Stage::Adaptive] };
            for &stage in stages {
                let t = Instant::now();
                let enc: Vec<Vec<u8>> = codes
                    .iter()
                    .enumerate()
                    .map(|(k, c)| {
                        coder
                            .encode(
                                stage,
                                c,
                                dtype.bytes(),
                                w,
                                Side {
                                    prev: k.checked_sub(1).map(|j| &codes[j][..]),
                                    quantised: false,
                                    carry: false,
                                    gradient: None,
                                    intensity: None,
                                    sliced: false,
                                    pixels: None,
                                },
                            )
                            .unwrap()
                    })
                    .collect();
                let te = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let mut out = Vec::new();
                for (k, e) in enc.iter().enumerate() {
                    coder
                        .decode(stage, e, w * h, dtype.bytes(), w, Side { prev: k.checked_sub(1).map(|j| &codes[j][..]), ..Side::default() }, &mut out)
                        .unwrap();
                    assert_eq!(out, codes[k]);
                }
                let td = t.elapsed().as_secs_f64();
                let size: usize = enc.iter().map(|e| e.len()).sum();
                if stage == Stage::Adaptive {
                    total += (size as f64).ln();
                }
                println!(
                    "{d:22} {label:9} {stage:16} ratio {:6.3}  enc {:6.1} MB/s  dec {:6.1} MB/s",
                    raw_bytes as f64 / size as f64,
                    raw_bytes as f64 / 1e6 / te,
                    raw_bytes as f64 / 1e6 / td
                );
            }
        }
    }
    println!("log-size sum (adaptive): {total:.4}");
}
