//! Lab: what a window's choice (predictor, stage, intensity) costs the encoder, and what carrying
//! it from one window to the next costs in ratio.
//! `cargo run --release --example carry_lab DIR FORMAT BOUND [WINDOW]`
use std::time::Instant;
use tezipfs::codec::container::{Blob, Body};
use tezipfs::codec::{encode_window, FormatSpec, Options, PredictorChoice};

fn choice_of(blob: &[u8], pid: tezipfs::codec::PredictorId) -> (tezipfs::codec::PredictorId, tezipfs::codec::entropy::Stage, bool) {
    let b = Blob::parse(blob).unwrap();
    let intensity = b.header.entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.intensity));
    let stage = match &b.header.entries[0].body {
        Body::Frame(f) => f.stage,
        _ => panic!(),
    };
    (pid, stage, intensity)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    let format: FormatSpec = args[2].parse().unwrap();
    let bound = args[3].parse().unwrap();
    let window: usize = args.get(4).map_or(32, |s| s.parse().unwrap());
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "raw")).collect();
    names.sort();
    let files: Vec<Vec<u8>> = names.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let total: usize = files.iter().map(|f| f.len()).sum();
    let opts = Options { format, bound, threads: 1, ..Options::default() };
    let pinned = |c: (tezipfs::codec::PredictorId, tezipfs::codec::entropy::Stage, bool)| {
        let mut o = opts.clone();
        o.predictor = PredictorChoice::Fixed(c.0);
        o.stage = Some(c.1);
        o.intensity_context &= c.2 || bound == tezipfs::codec::Bound::Lossless;
        o
    };
    for round in 0..2 {
        let (mut auto_t, mut pin_t, mut carry_t) = (0.0, 0.0, 0.0);
        let (mut auto_b, mut pin_b, mut carry_b) = (0, 0, 0);
        let mut carried: Option<()> = None;
        let mut stream = None;
        let mut flags = Vec::new();
        let mut choices = Vec::new();
        for w in files.chunks(window) {
            let refs: Vec<&[u8]> = w.iter().map(|f| &f[..]).collect();
            let t = Instant::now();
            let a = encode_window(&refs, &opts).unwrap();
            auto_t += t.elapsed().as_secs_f64();
            auto_b += a.blob.len();
            let c = choice_of(&a.blob, a.predictor.unwrap());
            choices.push(format!("{}/{:?}/{}", c.0, c.1, c.2));
            let t = Instant::now();
            let p = encode_window(&refs, &pinned(c)).unwrap();
            pin_t += t.elapsed().as_secs_f64();
            pin_b += p.blob.len();
            let _ = &mut carried;
            let t = Instant::now();
            let o = Options { carry: stream.take(), ..opts.clone() };
            let k = encode_window(&refs, &o).unwrap();
            carry_t += t.elapsed().as_secs_f64();
            carry_b += k.blob.len();
            let ch = k.choice.clone().unwrap();
            flags.push(format!("{}{} {:.3}", ch.carried(), if k.blob == a.blob { "=" } else { "!" }, 8.0 * a.blob.len() as f64 / w.iter().map(|f| f.len()).sum::<usize>() as f64));
            stream = Some(ch);
        }
        println!("  carried per window (= same bytes as auto): {:?}", flags);
        let mb = total as f64 / 1e6;
        println!("round {round} {dir} {bound:?}: windows {} choices {:?}", choices.len(), choices);
        println!("  auto     ratio {:.4}  {:.1} MB/s", total as f64 / auto_b as f64, mb / auto_t);
        println!("  pinned   ratio {:.4}  {:.1} MB/s (each window's own choice, given)", total as f64 / pin_b as f64, mb / pin_t);
        println!("  carried  ratio {:.4}  {:.1} MB/s (Options::carry from window to window)", total as f64 / carry_b as f64, mb / carry_t);
    }
}
