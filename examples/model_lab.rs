//! Lab for the learned predictor: trains a model on the first half of a sequence and measures it
//! on the second half against the previous frame (open loop, `model::train::eval`), as the float
//! network and as the exported integer model (reference backend), with the oracle (the true
//! means) on generated fixtures. Prints one JSON line per run (and a summary on stderr).
//!
//! `cargo run --release --example model_lab -- --set ctc --bound abs:2 --minutes 3`
//! Sets: `ctc` (../shared/data/ctc-fluo-nuclei), `u16` / `u8` (the 512x512x32 fixture, seed 1),
//! or a directory in the shared-data layout.

use clap::Parser;
use std::sync::Arc;
use std::time::Instant;
use tezipfs::codec::predict::Geometry;
use tezipfs::codec::{Bound, DType};
use tezipfs::fixtures::{generate_images, generate_means, SequenceSpec};
use tezipfs::model::reference::ReferenceModel;
use tezipfs::model::train::eval::{self, Residuals};
use tezipfs::model::train::{self, Degrade, DeviceChoice, Hyper, Loss, TrainOptions};
use tezipfs::model::{file, Arch, LayerArch, Size};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "ctc")]
    set: String,
    #[arg(long, default_value = "abs:2")]
    bound: Bound,
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    #[arg(long)]
    max_steps: Option<u64>,
    /// Layers as `A,R,k_lstm,k_ahat,k_a` separated by `/` (default: --size).
    #[arg(long)]
    arch: Option<String>,
    #[arg(long, default_value = "small")]
    size: Size,
    #[arg(long)]
    crop: Option<usize>,
    #[arg(long)]
    seq: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    loss: Option<Loss>,
    #[arg(long)]
    units: Option<f64>,
    /// One error unit everywhere, even where the noise grows with the signal.
    #[arg(long)]
    no_noise_scale: bool,
    #[arg(long)]
    no_augment: bool,
    /// Export for i64 requantisation (30-bit multipliers) instead of i32.
    #[arg(long)]
    i64: bool,
    /// Closed-loop training (the network observes reconstructions quantised against its own
    /// predictions).
    #[arg(long)]
    closed: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Skip the integer model's measurement.
    #[arg(long)]
    no_int: bool,
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    /// Frames of the generated fixtures.
    #[arg(long, default_value_t = 32)]
    fixture_frames: usize,
    /// Frames to train on (default: the first half); the rest are measured.
    #[arg(long)]
    train_frames: Option<usize>,
    /// Frames per window in the measurements.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// A label for the JSON line.
    #[arg(long, default_value = "")]
    tag: String,
}

fn parse_arch(s: &str) -> Arch {
    let layers = s
        .split('/')
        .map(|l| {
            let v: Vec<usize> = l.split(',').map(|x| x.trim().parse().expect("arch: numbers")).collect();
            assert_eq!(v.len(), 5, "arch layer {l}: A,R,k_lstm,k_ahat,k_a");
            LayerArch { a: v[0], r: v[1], k_lstm: v[2], k_ahat: v[3], k_a: v[4] }
        })
        .collect();
    Arch { layers }
}

/// Frames, geometry, and the noise-free means when known.
fn load(set: &str, n: usize) -> (Vec<Vec<u32>>, Geometry, Option<Vec<Vec<f64>>>) {
    match set {
        "u16" | "u8" => {
            let dtype = if set == "u16" { DType::U16 } else { DType::U8 };
            let spec = SequenceSpec { dtype, ..SequenceSpec::detector_u16(512, 512, n, 1) };
            (generate_images(&spec), Geometry::of(512, 512, dtype), Some(generate_means(&spec)))
        }
        _ => {
            let path = if set == "ctc" { "../shared/data/ctc-fluo-nuclei".to_string() } else { set.to_string() };
            let d = tezipfs::fixtures::read_raw_dir(std::path::Path::new(&path), usize::MAX).expect("a directory of raw frames");
            (d.images, Geometry::of(d.width, d.height, d.dtype), None)
        }
    }
}

fn json(r: &Residuals) -> serde_json::Value {
    serde_json::json!({"mae": r.mae, "bits": r.bits, "ctx": r.ctx_bits})
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TEZIPFS_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let (frames, geom, means) = load(&a.set, a.fixture_frames);
    let half = a.train_frames.unwrap_or(frames.len() / 2);
    let (train_f, test_f) = (&frames[..half], &frames[half..]);
    let d = Hyper::default();
    let hyper = Hyper {
        crop: a.crop.unwrap_or(d.crop),
        seq: a.seq.unwrap_or(d.seq),
        batch: a.batch.unwrap_or(d.batch),
        lr: a.lr.unwrap_or(d.lr),
        loss: a.loss.unwrap_or(d.loss),
        units: a.units.unwrap_or(d.units),
        augment: !a.no_augment,
        int32: !a.i64,
        closed_loop: a.closed,
        noise_scale: !a.no_noise_scale,
    };
    let arch = a.arch.as_deref().map(parse_arch);
    let opts = TrainOptions {
        size: a.size,
        arch: arch.clone(),
        bound: a.bound,
        minutes: a.minutes,
        max_steps: a.max_steps,
        device: DeviceChoice::Cpu,
        seed: a.seed,
        threads: Some(a.threads),
        hyper: hyper.clone(),
        // (The lab measures the PredNet: `train_float` never trains the causal stage.)
        causal: None,
    };
    let t0 = Instant::now();
    let mut last = 0u64;
    let trained = train::train_float(train_f, geom, &opts, &mut |p| {
        if p.step >= last + 100 {
            last = p.step;
            eprintln!("  step {} {:.0}s loss {:.3} ({:.1} frames/s)", p.step, p.elapsed.as_secs_f64(), p.loss, p.frames_per_sec);
        }
    })
    .expect("training");
    let train_secs = t0.elapsed().as_secs_f64();
    let model = trained.export().expect("export");
    let bytes = file::to_bytes(&model);
    if let Some(p) = &a.save {
        std::fs::write(p, &bytes).expect("save");
    }
    let (steps, loss) = (model.meta.steps, model.meta.loss);
    let (mut convs, mut fit) = (0, 0);
    for (l, layer) in model.layers.iter().enumerate() {
        for (conv, ig) in [(&layer.lstm, file::intensity_group(l, &layer.lstm)), (&layer.ahat, None)].into_iter().chain(layer.a.as_ref().map(|a| (a, None))) {
            convs += 1;
            fit += (0..conv.cout).all(|o| file::requant_bound(conv, o, ig) < 1 << 31) as usize;
        }
    }
    let degrade = Degrade::new(a.bound, geom.dtype).expect("bound");
    let float = trained.float_model();
    let window = a.window;
    let t1 = Instant::now();
    let fc = eval::compare(&float, test_f, geom, degrade, 99, window).expect("float eval");
    let float_secs = t1.elapsed().as_secs_f64();
    // Per frame: the model's context entropy over the previous frame's (drift over a window).
    let obs = eval::observed(test_f, degrade, 99);
    let prev_refs = eval::previous_references(&obs, window);
    let per_frame: Vec<String> = (0..test_f.len())
        .filter(|&t| fc.refs[t].is_some())
        .map(|t| {
            let m = eval::residuals(&test_f[t..t + 1], &fc.refs[t..t + 1], geom.width, degrade.e as u32).ctx_bits;
            let p = eval::residuals(&test_f[t..t + 1], &prev_refs[t..t + 1], geom.width, degrade.e as u32).ctx_bits;
            format!("{:.2}", m / p)
        })
        .collect();
    let mut out = serde_json::json!({
        "tag": a.tag, "set": a.set, "bound": a.bound.to_string(), "arch": format!("{:?}", model.arch.layers.iter().map(|l| (l.a, l.r, l.k_lstm, l.k_ahat, l.k_a)).collect::<Vec<_>>()),
        "crop": hyper.crop, "seq": hyper.seq, "batch": hyper.batch, "lr": hyper.lr, "loss_kind": format!("{:?}", hyper.loss), "units": hyper.units, "augment": hyper.augment, "closed_loop": hyper.closed_loop,
        "int32_convs": format!("{fit}/{convs}"), "minutes": a.minutes, "train_secs": train_secs, "steps": steps, "train_loss": loss,
        "prev": json(&fc.previous), "float": json(&fc.model), "gain_float": fc.gain(), "float_eval_secs": float_secs, "per_frame": per_frame.join(" "),
        "hash": tezipfs::codec::predict::hash_hex(&file::hash(&bytes)),
    });
    if !a.no_int {
        let r = ReferenceModel::new(Arc::new(model)).expect("valid");
        let t2 = Instant::now();
        let ic = eval::compare(&r, test_f, geom, degrade, 99, window).expect("int eval");
        let ag = eval::agreement(&fc.refs, &ic.refs);
        out["int"] = json(&ic.model);
        out["gain_int"] = serde_json::json!(ic.gain());
        out["int_eval_secs"] = serde_json::json!(t2.elapsed().as_secs_f64());
        out["differ"] = serde_json::json!(ag.differ);
        // Closed loop (what the codec would see), integer model against the previous frame.
        let e = degrade.e as u32;
        let cp = eval::residuals(test_f, &eval::closed_loop(None, test_f, geom, degrade, 98, window).expect("closed loop"), geom.width, e);
        let cm = eval::residuals(test_f, &eval::closed_loop(Some(&r), test_f, geom, degrade, 98, window).expect("closed loop"), geom.width, e);
        out["closed_prev"] = json(&cp);
        out["closed_int"] = json(&cm);
        out["max_diff"] = serde_json::json!(ag.max_abs);
    }
    if let Some(means) = means {
        let mask = geom.mask() as f64;
        let tm = &means[half..];
        let refs: Vec<Option<Vec<u32>>> =
            (0..tm.len()).map(|t| (t % window != 0).then(|| tm[t].iter().map(|&m| m.min(mask).round() as u32).collect())).collect();
        let o = eval::residuals(test_f, &refs, geom.width, degrade.e as u32);
        out["oracle"] = json(&o);
    }
    eprintln!(
        "{} {} {}: prev ctx {:.4} bits, float {:.4} ({:+.1}%){} [{} steps, {:.0}s]",
        a.tag,
        a.set,
        a.bound,
        fc.previous.ctx_bits,
        fc.model.ctx_bits,
        100.0 * fc.gain(),
        out.get("gain_int").map(|g| format!(", int {:+.1}%", 100.0 * g.as_f64().unwrap_or(0.0))).unwrap_or_default(),
        steps,
        train_secs
    );
    println!("{out}");
}
