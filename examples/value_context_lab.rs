//! Lab (issue 11, item 6: "the model may give the entropy coder its context"): how much could
//! a better predicted intensity give the adaptive stage where it codes values, not residuals?
//!
//! Lossless ctc-fluo-nuclei is coded smallest as `none` + the adaptive stage (under `best`: the
//! values themselves, their neighbours' values as contexts; 2.724 on frames 15-29, where
//! `causal` + adaptive codes 2.656 and `linear` + adaptive 2.622). This codes frames 16-27 that
//! way with the intensity context (container version 8) taken from references of increasing
//! quality: none, the previous frame (what the codec uses), causal means of the last 2, 4 and 8
//! frames, a non-causal mean of t-2, t-1, t+1, t+2, and the frame itself (a cheat: the pixel's
//! own value inside its 5-point sum).
//!
//!     cargo run --release --example value_context_lab -- [DIR]
//!
//! Session 16 (bits per pixel): none 3.003, previous frame 2.995, means of 2 / 4 / 8 frames
//! 2.989 / 2.992 / 2.998, non-causal mean 2.977, the frame itself 2.716. So a model's predicted
//! intensity, at best as good as the non-causal mean, could save under 1% here: the context
//! that would pay needs the pixel's own neighbourhood in frame t, which the stream does not have
//! before the frame is decoded.
use tezipfs::codec::entropy::adaptive::{encode_with, Scratch, Side};
use tezipfs::codec::predict::Prediction;
use tezipfs::codec::quantizer::{self, FrameBound};
use tezipfs::codec::DType;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "../shared/data/ctc-fluo-nuclei".into());
    let (w, h) = (511usize, 511usize);
    let n = w * h;
    let frames: Vec<Vec<u32>> =
        (0..30).map(|i| std::fs::read(format!("{dir}/frame_{i:05}.raw")).expect("frame").into_iter().map(u32::from).collect()).collect();
    let zeros = vec![0u32; n];
    let codes: Vec<Vec<u32>> = frames.iter().map(|f| quantizer::encode(DType::U8, FrameBound::Lossless, f, Prediction::Frame(&zeros)).codes).collect();
    let mean = |ts: &[usize]| -> Vec<u32> {
        (0..n).map(|i| ((ts.iter().map(|&t| frames[t][i] as u64).sum::<u64>() + ts.len() as u64 / 2) / ts.len() as u64) as u32).collect()
    };
    let kinds: Vec<(&str, Box<dyn Fn(usize) -> Option<Vec<u32>>>)> = vec![
        ("no intensity", Box::new(|_| None)),
        ("previous frame", Box::new(|t| Some(frames[t - 1].clone()))),
        ("mean t-2..t-1", Box::new(|t| Some(mean(&[t - 2, t - 1])))),
        ("mean t-4..t-1", Box::new(|t| Some(mean(&[t - 4, t - 3, t - 2, t - 1])))),
        ("mean t-8..t-1", Box::new(|t| Some(mean(&(t - 8..t).collect::<Vec<_>>())))),
        ("mean t-2,t-1,t+1,t+2 (non-causal)", Box::new(|t| Some(mean(&[t - 2, t - 1, t + 1, t + 2])))),
        ("the frame itself (cheat)", Box::new(|t| Some(frames[t].clone()))),
    ];
    for (name, r) in kinds {
        let mut scratch = Scratch::default();
        let mut bytes = 0usize;
        for t in 16..28 {
            let reference = r(t);
            let side = Side {
                prev: Some(&codes[t - 1]),
                quantised: false,
                carry: false,
                gradient: None,
                intensity: reference.as_deref(),
                sliced: false,
                pixels: None,
            };
            bytes += encode_with(&codes[t], w, w, side, &mut scratch).len();
        }
        println!("{name:<40} {:.4} bits/pixel", bytes as f64 * 8.0 / (12 * n) as f64);
    }
}
