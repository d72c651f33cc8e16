//! Profiling aid: encode a generated 16-bit sequence once, then decode it repeatedly.
//! `cargo run --release --example decode_profile [predictor]`
use std::time::Instant;
use tezipfs::codec::{encode_window, Decoder, FormatSpec, Options};
use tezipfs::fixtures::{generate_raw, SequenceSpec};

fn main() {
    let pred = std::env::args().nth(1).unwrap_or_else(|| "previous".into());
    let files = generate_raw(&SequenceSpec::detector_u16(512, 512, 32, 1));
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let entropy = std::env::args().nth(2).unwrap_or_else(|| "balanced".into()).parse().unwrap();
    let opts = Options { format: "raw:512x512:u16".parse::<FormatSpec>().unwrap(), predictor: pred.parse().unwrap(), entropy, ..Options::default() };
    let t = Instant::now();
    let blob = encode_window(&refs, &opts).unwrap().blob;
    let bytes: usize = files.iter().map(|f| f.len()).sum();
    println!("encode {:.1} MB/s, ratio {:.3}", bytes as f64 / 1e6 / t.elapsed().as_secs_f64(), bytes as f64 / blob.len() as f64);
    let t = Instant::now();
    let reps = 10;
    for _ in 0..reps {
        let out = Decoder::new(&blob).unwrap().decode_all().unwrap();
        assert_eq!(out.len(), files.len());
    }
    println!("decode {:.1} MB/s", (reps * bytes) as f64 / 1e6 / t.elapsed().as_secs_f64());
}
