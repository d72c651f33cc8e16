//! `tezipfs bench --model`: the learned predictor against the classical codec. For each set, a
//! `small` model is trained on the first half of the frames within a fixed CPU budget (one model
//! per bound, since a model learns the reconstruction error of its bound), and the second half
//! is coded: classical `auto`, `auto` with the model (kept per window where it codes smaller),
//! the model's predictors alone (`prednet`), and on generated fixtures the **oracle**: the same
//! coder given the noise-free frames as its reference, the limit of any predictor. Beside them:
//! the noise floor estimated from the frames, and the targets with a verdict. Then the
//! inference speed of each model size on this CPU.
//!
//! Single-threaded coding (libtorch on one thread), MB/s of original bytes per core.

use super::bench::{codec_row, codec_row_with, fixture, load_dir, sets_or_shared, Dataset, Row};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tezipfs::codec::predict::{Geometry, Model, ModelHandle, Playback};
use tezipfs::codec::{Bound, DType, Options, PredictorChoice};
use tezipfs::fixtures::generate_means;
use tezipfs::model::train::{self, TrainOptions};
use tezipfs::model::{file, load, Backend, DeviceChoice, Size};

#[derive(clap::Args, Clone, Debug)]
pub struct ModelBenchArgs {
    /// Training budget of each model, in minutes of wall clock on every core (one model per set
    /// and bound; the issue allows at most 10 minutes of 2 cores per model).
    #[arg(long, default_value_t = 2.5)]
    pub model_minutes: f64,
    /// Train each model for exactly this many steps instead (ignores --model-minutes): the same
    /// models, so the same figures, on any machine however loaded (on the same CPU type and
    /// thread count).
    #[arg(long)]
    pub model_steps: Option<u64>,
    /// Steps of 4096 pixels for each model's causal stage (predictor `causal`, trained after the
    /// PredNet; as `tezipfs model train --causal-steps`); 0: models without it.
    #[arg(long, default_value_t = 6000)]
    pub model_causal_steps: u64,
    /// Error bounds to measure (0: lossless), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4")]
    pub model_bounds: Vec<u32>,
    /// Train open loop under a bound (the network observes the originals plus noise) instead of
    /// the default closed loop (reconstructions quantised against its own predictions, as in
    /// the codec).
    #[arg(long)]
    pub model_open_loop: bool,
    /// Only the sets whose name contains one of these words (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub model_sets: Vec<String>,
    /// Also write each trained model to this directory (`<set>-<bound>.model`), to code with it
    /// again (`tezipfs compress --model`).
    #[arg(long)]
    pub save_models: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub genie: super::bench_genie::GenieArgs,
}

/// The first and second halves of a set.
fn halves(d: &Dataset) -> (Dataset, Dataset, usize) {
    let half = d.files.len() / 2;
    let part = |files: &[Vec<u8>], tag: &str| Dataset {
        name: format!("{} ({tag})", d.name),
        dtype: d.dtype,
        width: d.width,
        height: d.height,
        files: files.to_vec(),
        floor_bits: None,
        spec: None,
    };
    (part(&d.files[..half], "first half"), part(&d.files[half..], "second half"), half)
}

fn images(d: &Dataset) -> Vec<Vec<u32>> {
    d.files
        .iter()
        .map(|f| {
            let mut img = Vec::new();
            d.dtype.decode_pixels(f, false, &mut img);
            img
        })
        .collect()
}

fn print_row(r: &Row) {
    println!("{:<42} {:>8.3} {:>10.2} {:>10.2}  {}", r.method, r.ratio, r.comp, r.dec, r.check);
}

/// Frames per second and MB/s of original bytes of a model's inference (predict and observe
/// each frame, one libtorch thread), on `frames`.
fn inference_speed(model: &dyn Model, geom: Geometry, frames: &[Vec<u32>]) -> anyhow::Result<(f64, f64)> {
    let mut state = model.start(geom)?;
    model.observe_batch(&mut [state.as_mut()], &[&frames[0]])?;
    let mut out = vec![0u32; geom.pixels()];
    let t = Instant::now();
    for f in &frames[1..] {
        model.predict_batch(&mut [state.as_mut()], &mut [&mut out[..]])?;
        model.observe_batch(&mut [state.as_mut()], &[f])?;
    }
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    let n = (frames.len() - 1) as f64;
    Ok((n / secs, n * (geom.pixels() * geom.dtype.bytes()) as f64 / 1e6 / secs))
}

/// Frames and MB per second of the causal stage's predictions on one core (each frame predicted
/// from itself as reconstructed, the previous frame and the means, as lossless coding walks it).
fn causal_speed(stage: &tezipfs::codec::predict::causal::CausalStage, geom: Geometry, frames: &[Vec<u32>]) -> (f64, f64) {
    let mut past = tezipfs::codec::predict::causal::Past::default();
    past.observe(&frames[0], geom.width);
    let mut sink = 0u64;
    let t = Instant::now();
    for f in &frames[1..] {
        for i in 0..f.len() {
            sink = sink.wrapping_add(u64::from(stage.predict(&past, f, i, geom.width, geom.mask())));
        }
        past.observe(f, geom.width);
    }
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(sink);
    let n = (frames.len() - 1) as f64;
    (n / secs, n * (geom.pixels() * geom.dtype.bytes()) as f64 / 1e6 / secs)
}

pub fn run(args: &ModelBenchArgs, dirs: Vec<PathBuf>, no_fixtures: bool, window: usize, json_out: Option<&Path>) -> anyhow::Result<()> {
    let dirs = sets_or_shared(dirs);
    let mut sets = Vec::new();
    for d in &dirs {
        sets.push(load_dir(d)?);
    }
    if !no_fixtures {
        sets.push(fixture("fixture-detector-u16", DType::U16, 512, 512, 32, 1));
        sets.push(fixture("fixture-detector-u8", DType::U8, 512, 512, 32, 2));
    }
    if !args.model_sets.is_empty() {
        sets.retain(|d| args.model_sets.iter().any(|w| d.name.contains(w.as_str())));
        if sets.is_empty() {
            anyhow::bail!("--model-sets {}: no set has such a name", args.model_sets.join(","));
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let budget = match args.model_steps {
        Some(n) => format!("{n} steps"),
        None => format!("{:.1} min", args.model_minutes),
    };
    println!("tezipfs bench --model: a `small` model per set and bound, trained {budget} on {cores} cores on the first half of each set; the second half coded single-threaded (window {window})");
    let mut report = Vec::new();
    let mut speed_frames: Option<(Geometry, Vec<Vec<u32>>, Vec<u8>)> = None;
    for d in &sets {
        let (first, second, half) = halves(d);
        let geom = Geometry::of(d.width as usize, d.height as usize, d.dtype);
        let train_frames = images(&first);
        let test_frames = images(&second);
        println!(
            "\n# {}: {}x{} {}, trained on frames 0-{} , coded frames {}-{} ({:.1} MB)",
            d.name,
            d.width,
            d.height,
            d.dtype,
            half - 1,
            half,
            d.files.len() - 1,
            second.bytes() as f64 / 1e6
        );
        println!("{:<42} {:>8} {:>10} {:>10}  check [windows: predictor+stage:frames]", "method", "ratio", "comp MB/s", "dec MB/s");
        let floor = second.noise_floor().filter(|f| f.white());
        // The oracle: a "model" whose references are the generator's noise-free frames of the
        // second half (rounded to the pixel type). Not a predictor anyone can have; the limit of
        // all of them.
        let oracle = d.spec.as_ref().map(|spec| {
            let mask = d.dtype.mask() as f64;
            let means = generate_means(spec)[half..].iter().map(|m| m.iter().map(|&v| v.round().clamp(0.0, mask) as u32).collect()).collect();
            Arc::new(Playback::new(*b"oracle: the noise-free frames!!!", means))
        });
        // The genies see originals, so one serves every bound (see bench_genie).
        tch::set_num_threads(cores as i32);
        let genie = if args.genie.genie {
            super::bench_genie::prepare(
                &d.name,
                &images(d),
                d.dtype,
                d.width as usize,
                d.height as usize,
                half,
                &args.genie,
                oracle.as_ref().map(|o| &o.refs[..]),
            )?
        } else {
            None
        };
        let mut set_report = Vec::new();
        for &e in &args.model_bounds {
            let bound = if e == 0 { Bound::Lossless } else { Bound::Abs(e as f64) };
            let base = Options { format: second.format(), bound, ..Options::default() };
            tch::set_num_threads(1);
            let classical = codec_row(&second, &base, window, &format!("{bound}: classical auto"))?;
            print_row(&classical);
            // Train on every core, then code on one.
            tch::set_num_threads(cores as i32);
            let t = Instant::now();
            let opts = TrainOptions {
                size: Size::Small,
                bound,
                // (A step budget alone: a year of wall clock never runs out first.)
                minutes: if args.model_steps.is_some() { 525_600.0 } else { args.model_minutes },
                max_steps: args.model_steps,
                device: train::DeviceChoice::Cpu,
                threads: Some(cores),
                hyper: train::Hyper { closed_loop: !args.model_open_loop, ..train::Hyper::default() },
                causal: (args.model_causal_steps > 0).then(|| train::causal::CausalOptions { steps: args.model_causal_steps, ..Default::default() }),
                ..TrainOptions::default()
            };
            let model = train::train(&train_frames, geom, &opts, &mut |_| {})?;
            let trained_secs = t.elapsed().as_secs_f64();
            let bytes = file::to_bytes(&model);
            if let Some(dir) = &args.save_models {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{}-{}.model", d.name, bound.to_string().replace(':', "")));
                std::fs::write(&path, &bytes)?;
                println!("  (saved to {})", path.display());
            }
            let handle = ModelHandle(load(&bytes, Backend::Torch(DeviceChoice::Cpu))?);
            tch::set_num_threads(1);
            let with = codec_row(&second, &Options { model: Some(handle.clone()), ..base.clone() }, window, &format!("{bound}: auto with the model"))?;
            print_row(&with);
            let only = codec_row(
                &second,
                &Options { model: Some(handle.clone()), predictor: PredictorChoice::Prednet, ..base.clone() },
                window,
                &format!("{bound}: the model's predictors alone"),
            )?;
            print_row(&only);
            println!(
                "{:<42} {:>8} {:>10} {:>10}  trained {trained_secs:.0} s on {cores} cores, {} steps, final loss {:.2} error units{}",
                "  (its training)",
                "-",
                "-",
                "-",
                model.meta.steps,
                model.meta.loss,
                if model.norm.scale.is_some() { " (noise scale)" } else { "" }
            );
            let oracle_row = match &oracle {
                Some(o) => {
                    let row = codec_row_with(
                        &second,
                        &Options { model: Some(ModelHandle(o.clone())), predictor: PredictorChoice::Prednet, ..base.clone() },
                        window,
                        &format!("{bound}: ORACLE (noise-free reference)"),
                        &|start| o.window_start.store(start, Ordering::SeqCst),
                    )?;
                    print_row(&row);
                    Some(row)
                }
                None => None,
            };
            let genie_report = match &genie {
                Some(g) => Some(super::bench_genie::rows(g, &second, &base, window, &classical, &with, oracle_row.as_ref(), &print_row)?),
                None => None,
            };
            let limit = floor.as_ref().and_then(|f| f.ratio_limit(d.dtype, e));
            if let Some(l) = limit {
                println!("{:<42} {l:>8.3} {:>10} {:>10}  estimated from the second half's frames", format!("{bound}: noise-floor limit"), "-", "-");
            }
            // Verdicts: bits saved by the model against classical auto.
            let saved = 1.0 - classical.ratio / with.ratio;
            let mut verdicts = vec![format!(
                "auto with the model codes {:+.2}% of classical auto's bits ({})",
                -100.0 * saved,
                if with.ratio >= classical.ratio / 1.005 { "never more than 0.5% larger: met" } else { "MORE than 0.5% larger: MISSED" }
            )];
            if let Some(o) = &oracle_row {
                // The gap in bits between classical auto and the oracle, and how much of it the
                // model closes (target: at least half).
                let (bc, bw, bo) = (1.0 / classical.ratio, 1.0 / with.ratio, 1.0 / o.ratio);
                let closed = if bc > bo { (bc - bw) / (bc - bo) } else { f64::NAN };
                verdicts.push(format!("closes {:.0}% of the gap to the oracle (target 50%: {})", 100.0 * closed, if closed >= 0.5 { "met" } else { "MISSED" }));
            }
            if d.name == "ctc-fluo-nuclei" {
                let want = if e == 0 { 0.03 } else { 0.30 };
                if e != 1 {
                    // Without `--genie` the run does not know whether the target lies within what the
                    // frames allow; the genie rows (and the line under them) say.
                    let against = if saved >= want || genie_report.is_some() { "" } else { " (the measured limit: rerun with --genie)" };
                    verdicts.push(format!(
                        "target {:.0}% fewer bits than classical auto: {}{against}",
                        100.0 * want,
                        if saved >= want { "met" } else { "MISSED" }
                    ));
                }
            }
            for v in &verdicts {
                println!("  {v}");
            }
            set_report.push(json!({
                "bound": bound.to_string(), "classical": classical.ratio, "with_model": with.ratio, "model_alone": only.ratio,
                "oracle": oracle_row.as_ref().map(|r| r.ratio), "noise_floor_limit": limit, "train_seconds": trained_secs,
                "train_steps": model.meta.steps, "train_loss": model.meta.loss, "noise_scale": model.norm.scale.is_some(), "model_bytes": bytes.len(),
                "comp_MBps": with.comp, "dec_MBps": with.dec, "checks": [classical.check, with.check, only.check], "verdicts": verdicts, "genie": genie_report,
            }));
            if speed_frames.is_none() || d.dtype == DType::U8 {
                speed_frames = Some((geom, test_frames.clone(), bytes.clone()));
            }
        }
        report.push(json!({"dataset": d.name, "frames": d.files.len(), "trained_on": half, "bounds": set_report, "genie": genie.map(|g| g.report)}));
    }
    // Inference speed of each size on this CPU, one libtorch thread (the per-core figure).
    if let Some((geom, frames, small)) = speed_frames {
        tch::set_num_threads(1);
        println!("\n# inference speed, one core ({}x{} {}, {} frames)", geom.width, geom.height, geom.dtype, frames.len());
        let mut speeds = Vec::new();
        let prednet = file::to_bytes(&file::random(&Size::Prednet.arch(), geom.dtype, 1));
        for (name, bytes) in [("small (trained)", small), ("prednet (random weights)", prednet)] {
            let model = load(&bytes, Backend::Torch(DeviceChoice::Cpu))?;
            if let Some(stage) = model.causal() {
                // The stage is what predictor `causal` runs (the PredNet does not run then).
                let (fps, mbps) = causal_speed(stage, geom, &frames);
                let verdict = if mbps >= 5.0 { "met" } else { "MISSED" };
                println!("{:<26} {fps:>8.2} frames/s {mbps:>8.2} MB/s (target 5 MB/s per core: {verdict})", "small: its causal stage");
                speeds.push(json!({"size": "small causal stage", "frames_per_s": fps, "MBps": mbps}));
            }
            let (fps, mbps) = inference_speed(&*model, geom, &frames)?;
            let verdict = if name.starts_with("small") {
                if mbps >= 5.0 {
                    " (target 5 MB/s per core: met)"
                } else {
                    " (target 5 MB/s per core: MISSED)"
                }
            } else {
                ""
            };
            println!("{name:<26} {fps:>8.2} frames/s {mbps:>8.2} MB/s{verdict}");
            speeds.push(json!({"size": name, "frames_per_s": fps, "MBps": mbps}));
        }
        report.push(json!({"inference_speed": speeds}));
    }
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
