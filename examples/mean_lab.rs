//! Lab: a running mean of the past frames as the temporal prediction (lossless), against the
//! previous frame, each coded by the adaptive stage with its temporal context.
//! Measured 2026-12-04 (lossless, 32 frames): a running mean beats the previous frame by 1.5-4%
//! (detector-u16 3.272 -> 3.387 at decay 192/256), but `linear` on it codes worse than `linear`
//! on the previous frame (3.463 against 3.500; ctc 2.578 against 2.600): the scenes change
//! faster than the mean forgets.
//! `cargo run --release --example mean_lab DIR...`
use tezipfs::codec::entropy::{Coder, Side, Stage};
use tezipfs::fixtures::{read_raw_dir, RawDir};

fn zz(r: i64) -> u32 {
    if r >= 0 {
        (2 * r) as u32
    } else {
        (-2 * r - 1) as u32
    }
}

fn main() {
    let mut coder = Coder::new(3).unwrap();
    for path in std::env::args().skip(1) {
        let RawDir { width: w, height: h, dtype, images: frames, .. } = read_raw_dir(std::path::Path::new(&path), 32).expect("a directory of raw frames");
        let n = w * h;
        let mut line = format!("{}:", path.rsplit('/').next().unwrap());
        // decay d/256 of the running mean; 0 = the previous frame; trend: add (mean_fast - mean_slow)
        for (label, d, trend) in [
            ("previous", 0u64, false),
            ("mean 128", 128, false),
            ("mean 192", 192, false),
            ("mean 224", 224, false),
            ("mean 240", 240, false),
            ("mean 224+trend", 224, true),
        ] {
            let mut ema: Vec<u64> = frames[0].iter().map(|&v| (v as u64) << 8).collect();
            let mut fast: Vec<u64> = ema.clone();
            let mut prev_codes: Vec<u32> = vec![0; n];
            let mut bytes = 0usize;
            for (k, f) in frames.iter().enumerate().skip(1) {
                let codes: Vec<u32> = (0..n)
                    .map(|i| {
                        let mut p = ((ema[i] + 128) >> 8) as i64;
                        if trend {
                            p += (fast[i] as i64 - ema[i] as i64) / 256;
                        }
                        zz(f[i] as i64 - p)
                    })
                    .collect();
                let side = Side { prev: (k > 1).then_some(&prev_codes[..]), carry: k > 1, ..Side::default() };
                bytes += coder.encode(Stage::Adaptive, &codes, dtype.bytes().max(2), w, side).unwrap().len();
                prev_codes = codes;
                for i in 0..n {
                    let x = (f[i] as u64) << 8;
                    ema[i] = if d == 0 { x } else { (ema[i] * d + x * (256 - d)) >> 8 };
                    fast[i] = (fast[i] * 128 + x * 128) >> 8;
                }
            }
            let raw = (frames.len() - 1) * n * dtype.bytes();
            line += &format!("  {label} {:.3}", raw as f64 / bytes as f64);
        }
        // `linear` on a reference: the previous frame, or the running mean (decay d).
        for (label, d) in [("linear", 0u64), ("linear on mean 192", 192), ("linear on mean 224", 224)] {
            let mut ema: Vec<u64> = frames[0].iter().map(|&v| (v as u64) << 8).collect();
            let mut refs: Vec<Vec<u32>> = Vec::new();
            for f in frames.iter().skip(1) {
                refs.push(ema.iter().map(|&e| ((e + 128) >> 8) as u32).collect());
                for i in 0..n {
                    let x = (f[i] as u64) << 8;
                    ema[i] = if d == 0 { x } else { (ema[i] * d + x * (256 - d)) >> 8 };
                }
            }
            let mid = refs.len() / 2;
            let pairs: Vec<(&[u32], &[u32])> = (mid..mid + 3).map(|k| (&refs[k][..], &frames[k + 1][..])).collect();
            let coefs = tezipfs::codec::predict::linear::fit_pairs(&pairs, w, tezipfs::codec::predict::linear::Weighting::Uniform).unwrap();
            let mut prev_codes: Vec<u32> = vec![0; n];
            let mut bytes = 0usize;
            for (k, f) in frames.iter().enumerate().skip(1) {
                let pred = tezipfs::codec::quantizer::Prediction::Linear { prev: &refs[k - 1], width: w, coefs: &coefs, boxes: &[] };
                let codes = tezipfs::codec::quantizer::lossless_codes(dtype, f, pred);
                let side = Side { prev: (k > 1).then_some(&prev_codes[..]), carry: k > 1, ..Side::default() };
                bytes += coder.encode(Stage::Adaptive, &codes, dtype.bytes(), w, side).unwrap().len();
                prev_codes = codes;
            }
            let raw = (frames.len() - 1) * n * dtype.bytes();
            line += &format!("  {label} {:.3}", raw as f64 / bytes as f64);
        }
        println!("{line}");
    }
}
