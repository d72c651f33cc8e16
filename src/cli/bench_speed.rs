//! `tezipfs bench --speed`: the speed of the default codec (`auto`, lossless and `abs:E`) at one
//! and more threads, each row the median of several runs, with the CPU time beside the wall
//! clock (on a shared machine the wall clock is noisy; CPU MB/s is what one core did).

use super::bench::{load_dir, sets_or_shared, Dataset};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tezipfs::codec::window::{encode_window, plan_windows};
use tezipfs::codec::{analyze, Bound, Decoder, Options};

/// CPU seconds used by the whole process so far (every thread).
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One run: the blobs' total size, then (wall, cpu) seconds of the encoding and of the decoding.
/// (`carry`: each window's choice is carried to the next, [`Options::carry`].)
fn run_once(d: &Dataset, opts: &Options, window: usize, carry: bool) -> anyhow::Result<(usize, [f64; 4])> {
    let analyses: Vec<_> = d.files.iter().map(|f| analyze(f, &opts.format)).collect();
    let windows = plan_windows(&analyses, window);
    let (t, c) = (Instant::now(), cpu_seconds());
    let mut blobs = Vec::new();
    let mut choice = None;
    for w in &windows {
        let refs: Vec<&[u8]> = d.files[w.clone()].iter().map(|f| &f[..]).collect();
        let enc = if carry { encode_window(&refs, &Options { carry: choice.take(), ..opts.clone() })? } else { encode_window(&refs, opts)? };
        choice = enc.choice;
        blobs.push(enc.blob);
    }
    let (ct, cc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let (t, c) = (Instant::now(), cpu_seconds());
    let mut decoded = Vec::with_capacity(d.files.len());
    for b in &blobs {
        let mut dec = Decoder::new(b)?;
        dec.set_threads(opts.threads);
        decoded.extend(dec.decode_all()?);
    }
    let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    if opts.bound == Bound::Lossless && decoded != d.files {
        anyhow::bail!("{}: lossless round trip differs", d.name);
    }
    Ok((blobs.iter().map(|b| b.len()).sum(), [ct, cc, dt, dc]))
}

pub fn run(
    dirs: Vec<PathBuf>,
    window: usize,
    bounds: &[u32],
    threads: &[usize],
    repeat: usize,
    row_slices: bool,
    carry: bool,
    json_out: Option<&Path>,
) -> anyhow::Result<()> {
    let dirs = sets_or_shared(dirs);
    let repeat = repeat.max(1);
    let slicing = match (row_slices, carry) {
        (true, false) => "",
        (false, false) => ", without row slices",
        (true, true) => ", each window's choice carried to the next",
        (false, true) => ", without row slices, each window's choice carried to the next",
    };
    println!("tezipfs bench --speed: window {window}, default codec (auto, balanced{slicing}), median of {repeat} runs; MB/s of original bytes");
    println!("(wall: elapsed time; cpu: CPU time of every thread of the process, i.e. MB/s per core used)");
    println!("{:<22} {:<9} {:>3} {:>8} {:>10} {:>10} {:>10} {:>10}", "set", "bound", "thr", "ratio", "comp wall", "comp cpu", "dec wall", "dec cpu");
    let mut report = Vec::new();
    for dir in &dirs {
        let d = load_dir(dir)?;
        let mb = d.bytes() as f64 / 1e6;
        for &e in bounds {
            let bound = if e == 0 { Bound::Lossless } else { Bound::Abs(e as f64) };
            let mut sizes = std::collections::BTreeSet::new();
            for &n in threads {
                let opts = Options { format: d.format(), bound, threads: n.max(1), row_slices, ..Options::default() };
                let mut runs: [Vec<f64>; 4] = Default::default();
                for _ in 0..repeat {
                    let (size, t) = run_once(&d, &opts, window, carry)?;
                    sizes.insert(size);
                    for (r, x) in runs.iter_mut().zip(t) {
                        r.push(mb / x);
                    }
                }
                let [cw, cc, dw, dc] = runs.map(median);
                let size = *sizes.iter().next().expect("one run at least");
                let label = if e == 0 { "lossless".to_string() } else { format!("abs:{e}") };
                println!("{:<22} {:<9} {:>3} {:>8.4} {:>10.1} {:>10.1} {:>10.1} {:>10.1}", d.name, label, n, d.bytes() as f64 / size as f64, cw, cc, dw, dc);
                report.push(
                    json!({"dataset": d.name, "bound": label, "threads": n, "row_slices": row_slices, "carry": carry, "bytes": size, "ratio": d.bytes() as f64 / size as f64,
                    "comp_wall_MBps": cw, "comp_cpu_MBps": cc, "dec_wall_MBps": dw, "dec_cpu_MBps": dc}),
                );
            }
            if sizes.len() > 1 {
                anyhow::bail!("{}: the coded size depends on the thread count ({sizes:?})", d.name);
            }
        }
    }
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
