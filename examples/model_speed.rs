//! Inference speed of the integer PredNet backends (`docs/MODEL.md`) with random weights:
//! frames/s, Mpixel/s and MB/s of one window's predict + observe per frame, for the model sizes
//! and frame sizes given (reference at 1 thread, torch at 1 and 2 threads).
//!
//! `cargo run --release --example model_speed -- [small|prednet|all] [--frames N] [--no-reference]
//! [--profile] [--threads 1,2] [--variants int64,int32,shared] [--arch A,R,KL,KH,KA/A,R,KL,KH,KA/...] [--size WxH:dtype ...] [--band BYTES]`

use std::sync::Arc;
use std::time::Instant;
use tezipfs::codec::predict::{Geometry, Model};
use tezipfs::codec::DType;
use tezipfs::model::file;
use tezipfs::model::reference::ReferenceModel;
use tezipfs::model::torch::TorchModel;
use tezipfs::model::{Arch, LayerArch, Size};

/// Multiply-accumulates per frame pixel of `arch` (layer `l` has a quarter of the pixels of
/// layer `l - 1`).
fn macs_per_pixel(arch: &Arch) -> f64 {
    let n = arch.layers.len();
    let mut total = 0.0;
    for (l, la) in arch.layers.iter().enumerate() {
        let frac = 0.25f64.powi(l as i32);
        let mut cin = 2 * la.a + la.r + if l + 1 < n { arch.layers[l + 1].r } else { 0 } + if l == 0 { 1 } else { 0 };
        if l == 0 {
            cin += 1; // the intensity is two int8 products
        }
        total += frac * (4 * la.r * cin * la.k_lstm * la.k_lstm) as f64;
        total += frac * (la.a * la.r * la.k_ahat * la.k_ahat) as f64;
        if l > 0 {
            total += frac * 4.0 * (la.a * 2 * arch.layers[l - 1].a * la.k_a * la.k_a) as f64;
        }
    }
    total
}

fn frames(geom: Geometry, n: usize) -> Vec<Vec<u32>> {
    let mut rng = file::Rng(1);
    let max = geom.mask() as f64;
    (0..n)
        .map(|t| {
            (0..geom.pixels())
                .map(|i| {
                    let (y, x) = ((i / geom.width) as f64, (i % geom.width) as f64);
                    let v = max * 0.4 + max * 0.2 * (x * 0.05 + t as f64 * 0.3).sin() * (y * 0.04).cos() + max / 40.0 * rng.unit();
                    v.clamp(0.0, max) as u32
                })
                .collect()
        })
        .collect()
}

/// CPU seconds used by the process so far (all threads).
fn cpu_time() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Per frame (predict + observe), after a key frame and one warm-up step: the fastest frame's
/// wall time, the median wall time, and the median CPU time (the machine may be shared: the
/// fastest frame is the least disturbed, and CPU time is not inflated by other processes).
fn time(model: &dyn Model, geom: Geometry, seq: &[Vec<u32>]) -> (f64, f64, f64) {
    let mut s = model.start(geom).expect("start");
    model.observe_batch(&mut [s.as_mut()], &[&seq[0]]).expect("observe");
    let mut out = vec![0u32; geom.pixels()];
    let mut step = |f: &[u32]| {
        let (t, c) = (Instant::now(), cpu_time());
        model.predict_batch(&mut [s.as_mut()], &mut [&mut out]).expect("predict");
        model.observe_batch(&mut [s.as_mut()], &[f]).expect("observe");
        (t.elapsed().as_secs_f64(), cpu_time() - c)
    };
    step(&seq[1]);
    let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = seq[2..].iter().map(|f| step(f)).unzip();
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    (wall[0], wall[wall.len() / 2], cpu[cpu.len() / 2])
}

fn parse_arch(s: &str) -> Arch {
    Arch {
        layers: s
            .split('/')
            .map(|l| {
                let v: Vec<usize> = l.split(',').map(|x| x.parse().expect("number")).collect();
                LayerArch { a: v[0], r: v[1], k_lstm: v[2], k_ahat: v[3], k_a: v[4] }
            })
            .collect(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut archs: Vec<(String, Arch)> = Vec::new();
    let mut nframes = 6;
    let mut reference = true;
    let mut profile = false;
    let mut band = None;
    let mut thread_counts = vec![1, 2];
    let mut variants: Vec<String> = vec!["int64".into(), "int32".into(), "shared".into()];
    let mut sizes: Vec<(usize, usize, DType)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "small" => archs.push(("small".into(), Size::Small.arch())),
            "prednet" => archs.push(("prednet".into(), Size::Prednet.arch())),
            "all" => {
                archs.push(("small".into(), Size::Small.arch()));
                archs.push(("prednet".into(), Size::Prednet.arch()));
            }
            "--arch" => {
                let s = it.next().expect("--arch needs a value");
                archs.push((s.clone(), parse_arch(s)));
            }
            "--frames" => nframes = it.next().and_then(|v| v.parse().ok()).expect("--frames N"),
            "--no-reference" => reference = false,
            "--profile" => profile = true,
            "--threads" => thread_counts = it.next().expect("--threads 1,2").split(',').map(|t| t.parse().expect("thread count")).collect(),
            "--variants" => variants = it.next().expect("--variants int64,int32,shared").split(',').map(String::from).collect(),
            "--band" => band = Some(it.next().and_then(|v| v.parse().ok()).expect("--band BYTES")),
            "--size" => {
                let s = it.next().expect("--size WxH:dtype");
                let (wh, dt) = s.split_once(':').expect("WxH:dtype");
                let (w, h) = wh.split_once('x').expect("WxH");
                sizes.push((w.parse().expect("width"), h.parse().expect("height"), dt.parse().expect("dtype")));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if archs.is_empty() {
        archs.push(("small".into(), Size::Small.arch()));
    }
    if sizes.is_empty() {
        sizes = vec![(511, 511, DType::U8), (1024, 1024, DType::U16)];
    }
    nframes = nframes.max(3);
    println!("# ms/frame: fastest frame (wall), median (wall), median CPU time; rates from the fastest frame");
    println!("# torch backend: threads, variant, convolutions requantised in int32 / convolutions / int8 products a step");
    println!(
        "{:<10} {:>14} {:<24} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "model", "frame", "backend", "ms/frame", "(median)", "(cpu)", "frames/s", "Mpix/s", "MB/s"
    );
    for (name, arch) in &archs {
        println!("# {name}: {:.0} MAC per pixel", macs_per_pixel(arch));
        for &(w, h, dtype) in &sizes {
            let geom = Geometry::of(w, h, dtype);
            let m = file::random(arch, dtype, 1);
            let seq = frames(geom, nframes);
            let mb = (geom.pixels() * dtype.bytes()) as f64 / 1e6;
            let report = |backend: &str, (secs, median, cpu): (f64, f64, f64)| {
                println!(
                    "{name:<10} {:>14} {backend:<24} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>8.2} {:>8.2}",
                    format!("{w}x{h}:{dtype}"),
                    secs * 1e3,
                    median * 1e3,
                    cpu * 1e3,
                    1.0 / secs,
                    geom.pixels() as f64 / secs / 1e6,
                    mb / secs
                );
            };
            for variant in &variants {
                // Random multipliers reach 2^31 (int64 requantisation); shrunk ones prove the
                // int32 path exact, as a model exported for it would; shared ones (one
                // multiplier per output channel for all i8 inputs, then shrunk) let the i8
                // groups share one product.
                let mut mv = m.clone();
                match variant.as_str() {
                    "int64" => {}
                    "int32" => file::shrink_multipliers(&mut mv),
                    "shared" => {
                        file::share_multipliers(&mut mv);
                        file::shrink_multipliers(&mut mv);
                    }
                    other => panic!("unknown variant {other}"),
                }
                let mut t = TorchModel::new(Arc::new(mv), tch::Device::Cpu).expect("model");
                if let Some(b) = band {
                    t.set_band_bytes(b);
                }
                let (n32, nconv) = t.int32_convs();
                for &threads in &thread_counts {
                    tch::set_num_threads(threads);
                    t.set_profile(profile && threads == 1);
                    report(&format!("torch {threads}t {variant} {n32}/{nconv}/{}", t.products()), time(&t, geom, &seq));
                    if profile && threads == 1 {
                        let steps = (nframes - 1) as f64;
                        let mut total = 0.0;
                        for (k, secs) in t.take_profile() {
                            total += secs;
                            println!("    {k:<28} {:>8.2} ms/frame {:>7.1} ns/pixel", secs / steps * 1e3, secs / steps / geom.pixels() as f64 * 1e9);
                        }
                        println!("    {:<28} {:>8.2} ms/frame", "(profiled total)", total / steps * 1e3);
                    }
                }
            }
            let m = Arc::new(m);
            tch::set_num_threads(1);
            if reference {
                let r = ReferenceModel::new(m.clone()).expect("model");
                let short: Vec<Vec<u32>> = seq.iter().take(4).cloned().collect();
                report("reference", time(&r, geom, &short));
            }
        }
    }
}
