//! `tezipfs probe`: what each error bound would give on a directory of frames, so that an
//! administrator can choose one without guessing. Codes a sample of the frames (runs of
//! consecutive frames spread over the sequence, each one window, as the mount would code them)
//! lossless and under a range of absolute and relative bounds, decodes them, and reports per
//! bound: ratio, PSNR, the largest error, compress and decompress MB/s, and the noise floor's
//! limit. Output as a table, `--json`, or a self-contained HTML page with the ratio-vs-bound
//! curve (`--html`).

use super::offline::list_files;
use super::report;
use anyhow::{bail, Context};
use serde::Serialize;
use std::time::Instant;
use tezipfs::codec::format::{Analysis, Layout};
use tezipfs::codec::quantizer::FrameBound;
use tezipfs::codec::{analyze, Bound, DType, Decoder, FormatSpec, Options};

#[derive(clap::Args, Clone)]
pub struct ProbeArgs {
    /// A directory of frame files (TIFF, or raw with --format).
    pub frames_dir: std::path::PathBuf,
    /// Where the pixels are: `auto` (TIFF by its header, or raw frames as a `meta.json` beside
    /// them says) or `raw:WxH:TYPE[:skip=N]`.
    #[arg(long, default_value = "auto")]
    pub format: tezipfs::codec::FormatSpec,
    /// Frames to code: runs of --window consecutive frames spread evenly over the directory.
    #[arg(long, default_value_t = 32)]
    pub frames: usize,
    /// Frames per window (as the directory's policy would set it).
    #[arg(long, default_value_t = tezipfs::codec::window::DEFAULT_WINDOW)]
    pub window: usize,
    /// The bounds to try, comma-separated (default: lossless, abs:1 to abs:16 and rel:1e-4 to
    /// rel:1e-2 for integer pixels; lossless and rel:1e-5 to rel:1e-2 for floats).
    #[arg(long, value_delimiter = ',')]
    pub bounds: Vec<Bound>,
    /// Entropy stages, as the policy's `entropy`.
    #[arg(long, default_value = "balanced")]
    pub entropy: tezipfs::codec::entropy::EntropyChoice,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML page with the ratio-vs-bound curve.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
}

/// What one bound gives on the sample.
#[derive(Serialize, Debug, Clone)]
pub struct BoundRow {
    pub bound: String,
    /// Original bytes / stored bytes.
    pub ratio: f64,
    /// Peak signal-to-noise ratio in dB (peak: the sample's value range); `None` when exact.
    pub psnr_db: Option<f64>,
    /// The largest |decoded - original| over the sample's pixels.
    pub max_error: f64,
    /// Whether every pixel is within the bound (lossless: bit-exact files).
    pub within_bound: bool,
    pub compress_mb_s: f64,
    pub decompress_mb_s: f64,
    /// The highest ratio any coder can reach under this bound by the noise floor (integer
    /// pixels, lossless and abs bounds; `None` where not known).
    pub noise_floor_ratio: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct Probe {
    pub dir: String,
    pub width: u32,
    pub height: u32,
    pub dtype: String,
    /// Frames in the directory that are frames of this format, and the sample coded.
    pub frames_in_dir: usize,
    pub frames_coded: usize,
    pub sample_bytes: u64,
    /// The peak the PSNR is measured against (max - min of the sample).
    pub value_range: f64,
    /// The noise floor of the sample (bits per pixel; integer pixels), and whether the noise
    /// looks white (then the floor bounds every coder).
    pub noise_floor_bits: Option<f64>,
    pub noise_white: Option<bool>,
    pub rows: Vec<BoundRow>,
}

pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    let probe = probe(args)?;
    if let Some(out) = &args.html {
        std::fs::write(out, html(&probe)).with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&probe)?);
    } else {
        print_table(&probe);
        if let Some(out) = &args.html {
            println!("\nwrote {}", out.display());
        }
    }
    Ok(())
}

fn default_bounds(dtype: DType) -> Vec<Bound> {
    let mut b = vec![Bound::Lossless];
    if !dtype.is_float() {
        b.extend([1.0, 2.0, 4.0, 8.0, 16.0].map(Bound::Abs));
        b.extend([1e-4, 1e-3, 1e-2].map(Bound::Rel));
    } else {
        b.extend([1e-5, 1e-4, 1e-3, 1e-2].map(Bound::Rel));
    }
    b
}

/// The frames of the sample: `runs` runs of `window` consecutive frames, spread evenly.
fn sample(n: usize, frames: usize, window: usize) -> Vec<std::ops::Range<usize>> {
    let window = window.max(1);
    let frames = frames.clamp(1, n);
    let runs = frames.div_ceil(window);
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut left = frames;
    for r in 0..runs {
        let len = left.min(window);
        left -= len;
        // Evenly spaced starts over [0, n - len].
        let start = if runs > 1 { r * (n - len) / (runs - 1) } else { 0 };
        let start = out.last().map_or(start, |p| start.max(p.end));
        out.push(start..(start + len).min(n));
    }
    out.retain(|r| !r.is_empty());
    out
}

pub fn probe(args: &ProbeArgs) -> anyhow::Result<Probe> {
    if args.frames == 0 || args.window == 0 {
        bail!("--frames and --window must be at least 1");
    }
    let paths = list_files(&args.frames_dir)?;
    let format = format_of(args)?;
    if paths.is_empty() {
        bail!("{} holds no files", args.frames_dir.display());
    }
    // The frames of the format, with the first frame's geometry (others are not sampled).
    let mut frames: Vec<(std::path::PathBuf, Layout)> = Vec::new();
    let mut refused = None;
    for p in &paths {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        match analyze(&bytes, &format) {
            Analysis::Frame(l) if frames.first().is_none_or(|(_, f)| f.same_geometry(&l)) => frames.push((p.clone(), l)),
            Analysis::Frame(_) => {}
            Analysis::Opaque(why) => {
                refused.get_or_insert_with(|| format!("{}: {why}", p.display()));
            }
        }
    }
    let Some(first) = frames.first().map(|(_, l)| l.clone()) else {
        bail!(
            "no file in {} is a frame of format {} ({}); give the format with --format raw:WxH:TYPE",
            args.frames_dir.display(),
            format,
            refused.unwrap_or_default()
        );
    };
    let runs = sample(frames.len(), args.frames, args.window);
    let mut files: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut originals: Vec<Vec<u32>> = Vec::new();
    for r in &runs {
        let mut run = Vec::new();
        for (p, layout) in &frames[r.clone()] {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let mut img = Vec::new();
            layout.extract(&bytes, &mut img);
            originals.push(img);
            run.push(bytes);
        }
        files.push(run);
    }
    let dtype = first.dtype;
    let sample_bytes: u64 = files.iter().flatten().map(|f| f.len() as u64).sum();
    let (lo, hi) = originals
        .iter()
        .flatten()
        .map(|&p| dtype.value(p))
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    let value_range = if hi > lo { hi - lo } else { 1.0 };
    let floor = tezipfs::noise::estimate(&originals, first.width as usize, first.height as usize, dtype);
    let bounds = if args.bounds.is_empty() { default_bounds(dtype) } else { args.bounds.clone() };
    let bar = super::offline::bar(sample_bytes * bounds.len() as u64, "probe");
    let mut rows = Vec::new();
    for &bound in &bounds {
        let opts = Options { format: format.clone(), bound, entropy: args.entropy, ..Options::default() };
        let m = measure(&files, &opts, &frames_layouts(&frames, &runs))?;
        bar.inc(sample_bytes);
        let mse = m.sq_err / m.pixels.max(1) as f64;
        let limit = match bound {
            Bound::Lossless => floor.as_ref().and_then(|f| f.ratio_limit(dtype, 0)),
            Bound::Abs(e) if !dtype.is_float() && e >= 1.0 => floor.as_ref().and_then(|f| f.ratio_limit(dtype, e as u32)),
            _ => None,
        };
        rows.push(BoundRow {
            bound: bound.to_string(),
            ratio: sample_bytes as f64 / m.stored as f64,
            psnr_db: (mse > 0.0).then(|| 10.0 * (value_range * value_range / mse).log10()),
            max_error: m.max_err,
            within_bound: match bound {
                Bound::Lossless => m.exact,
                _ => m.within,
            },
            compress_mb_s: sample_bytes as f64 / 1e6 / m.comp_secs.max(1e-9),
            decompress_mb_s: sample_bytes as f64 / 1e6 / m.dec_secs.max(1e-9),
            noise_floor_ratio: limit,
        });
    }
    bar.finish_and_clear();
    Ok(Probe {
        dir: args.frames_dir.display().to_string(),
        width: first.width,
        height: first.height,
        dtype: dtype.to_string(),
        frames_in_dir: frames.len(),
        frames_coded: originals.len(),
        sample_bytes,
        value_range,
        noise_floor_bits: floor.as_ref().map(|f| f.bits),
        noise_white: floor.as_ref().map(|f| f.white()),
        rows,
    })
}

/// `--format`; under `auto`, a `meta.json` beside the frames (width, height, dtype: the layout
/// of `tezipfs fixtures` and of `../shared/data`) says where the pixels of raw frames are.
fn format_of(args: &ProbeArgs) -> anyhow::Result<FormatSpec> {
    let meta = args.frames_dir.join("meta.json");
    if !matches!(args.format, FormatSpec::Auto) || !meta.is_file() {
        return Ok(args.format.clone());
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta)?).with_context(|| format!("{}: not JSON", meta.display()))?;
    let (Some(w), Some(h), Some(t)) = (v["width"].as_u64(), v["height"].as_u64(), v["dtype"].as_str()) else {
        return Ok(args.format.clone());
    };
    format!("raw:{w}x{h}:{t}").parse().map_err(|e| anyhow::anyhow!("{}: {e}", meta.display()))
}

fn frames_layouts(frames: &[(std::path::PathBuf, Layout)], runs: &[std::ops::Range<usize>]) -> Vec<Vec<Layout>> {
    runs.iter().map(|r| frames[r.clone()].iter().map(|(_, l)| l.clone()).collect()).collect()
}

/// Sizes, times and errors of coding each run as one window and decoding it.
struct Measured {
    stored: u64,
    comp_secs: f64,
    dec_secs: f64,
    max_err: f64,
    sq_err: f64,
    pixels: u64,
    /// Every file decoded bit-exact.
    exact: bool,
    /// Every pixel within the bound the blob records for its frame.
    within: bool,
}

fn measure(runs: &[Vec<Vec<u8>>], opts: &Options, layouts: &[Vec<Layout>]) -> anyhow::Result<Measured> {
    let mut m = Measured { stored: 0, comp_secs: 0.0, dec_secs: 0.0, max_err: 0.0, sq_err: 0.0, pixels: 0, exact: true, within: true };
    for (run, layouts) in runs.iter().zip(layouts) {
        let refs: Vec<&[u8]> = run.iter().map(|f| &f[..]).collect();
        let t = Instant::now();
        let enc = tezipfs::codec::encode_window(&refs, opts)?;
        m.comp_secs += t.elapsed().as_secs_f64();
        m.stored += enc.blob.len() as u64;
        let t = Instant::now();
        let decoded = Decoder::new(&enc.blob)?.decode_all()?;
        m.dec_secs += t.elapsed().as_secs_f64();
        if decoded.len() != run.len() {
            bail!("the codec decoded {} files of a window of {}", decoded.len(), run.len());
        }
        for ((orig, dec), layout) in run.iter().zip(&decoded).zip(layouts) {
            m.exact &= orig == dec;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            layout.extract(orig, &mut a);
            layout.extract(dec, &mut b);
            let mut frame_max = 0f64;
            for (&x, &y) in a.iter().zip(&b) {
                let e = (layout.dtype.value(x) - layout.dtype.value(y)).abs();
                let e = if e.is_nan() { f64::INFINITY } else { e };
                frame_max = frame_max.max(e);
                m.sq_err += e * e;
            }
            m.pixels += a.len() as u64;
            m.max_err = m.max_err.max(frame_max);
            m.within &= within(opts.bound.for_frame(layout.dtype, &a), layout.dtype, &a, &b, frame_max);
        }
    }
    Ok(m)
}

/// Whether the decoded pixels `b` of a frame `a` keep the frame's bound (`max_err`: the
/// largest |b - a|).
fn within(bound: FrameBound, dtype: DType, a: &[u32], b: &[u32], max_err: f64) -> bool {
    match bound {
        FrameBound::Lossless => a == b,
        FrameBound::Abs(e) => max_err <= e,
        FrameBound::PwRel(r) => a.iter().zip(b).all(|(&x, &y)| {
            let (x, y) = (dtype.value(x), dtype.value(y));
            x == y || (x - y).abs() <= r * x.abs()
        }),
    }
}

fn print_table(p: &Probe) {
    println!(
        "{}: {} frames of {}x{} {} ({} coded, {:.1} MB, in runs of consecutive frames)",
        p.dir,
        p.frames_in_dir,
        p.width,
        p.height,
        p.dtype,
        p.frames_coded,
        p.sample_bytes as f64 / 1e6
    );
    match (p.noise_floor_bits, p.noise_white) {
        (Some(bits), Some(white)) => println!(
            "noise floor: {bits:.3} bits/pixel{}",
            if white { " (white noise: no coder beats the limits below on average)" } else { " (noise not white: the limits are estimates)" }
        ),
        _ => println!("noise floor: not estimated (float pixels)"),
    }
    println!("PSNR against the sample's value range ({})\n", p.value_range);
    println!(
        "{:<12} {:>8} {:>10} {:>10} {:>8} {:>10} {:>10} {:>12}",
        "bound", "ratio", "PSNR dB", "max error", "within", "comp MB/s", "dec MB/s", "floor limit"
    );
    for r in &p.rows {
        println!(
            "{:<12} {:>8.3} {:>10} {:>10} {:>8} {:>10.1} {:>10.1} {:>12}",
            r.bound,
            r.ratio,
            r.psnr_db.map_or("exact".into(), |d| format!("{d:.2}")),
            format!("{}", r.max_error),
            if r.within_bound { "yes" } else { "NO" },
            r.compress_mb_s,
            r.decompress_mb_s,
            r.noise_floor_ratio.map_or("-".into(), |l| format!("{l:.3}"))
        );
    }
}

/// The probe as a self-contained page: the ratio-vs-bound curve (and the noise floor's limit),
/// then the table.
pub fn html(p: &Probe) -> String {
    let labels: Vec<String> = p.rows.iter().map(|r| r.bound.clone()).collect();
    // One line per kind of bound (abs, rel, pwrel), each starting from lossless.
    let kind = |b: &str| b.split(':').next().unwrap_or("").to_string();
    let mut kinds: Vec<String> = p.rows.iter().map(|r| kind(&r.bound)).filter(|k| k != "lossless").collect();
    kinds.dedup();
    if kinds.is_empty() {
        kinds.push("lossless".into());
    }
    let mut series: Vec<report::Series> = kinds
        .iter()
        .map(|k| report::Series {
            name: format!("tezipfs ratio, {k}"),
            values: p.rows.iter().map(|r| (kind(&r.bound) == *k || r.bound == "lossless").then_some(r.ratio)).collect(),
            dashed: false,
        })
        .collect();
    if p.rows.iter().any(|r| r.noise_floor_ratio.is_some()) {
        series.push(report::Series { name: "noise-floor limit".into(), values: p.rows.iter().map(|r| r.noise_floor_ratio).collect(), dashed: true });
    }
    let chart = report::Chart {
        id: "ratio".into(),
        title: "Compression ratio by error bound".into(),
        x_title: "bound".into(),
        y_title: "ratio".into(),
        labels,
        series,
        bars: false,
    };
    let head = vec!["bound", "ratio", "PSNR dB", "max error", "within bound", "compress MB/s", "decompress MB/s", "noise-floor limit"];
    let rows: Vec<Vec<String>> = p
        .rows
        .iter()
        .map(|r| {
            vec![
                r.bound.clone(),
                format!("{:.3}", r.ratio),
                r.psnr_db.map_or("exact".into(), |d| format!("{d:.2}")),
                format!("{}", r.max_error),
                if r.within_bound { "yes".into() } else { "NO".into() },
                format!("{:.1}", r.compress_mb_s),
                format!("{:.1}", r.decompress_mb_s),
                r.noise_floor_ratio.map_or("-".into(), |l| format!("{l:.3}")),
            ]
        })
        .collect();
    let intro = format!(
        "{} frames of {}x{} {} in {}; {} coded ({:.1} MB). Noise floor: {}.",
        p.frames_in_dir,
        p.width,
        p.height,
        p.dtype,
        p.dir,
        p.frames_coded,
        p.sample_bytes as f64 / 1e6,
        p.noise_floor_bits.map_or("not estimated".into(), |b| format!("{b:.3} bits/pixel"))
    );
    report::page(
        &format!("tezipfs probe: {}", p.dir),
        &intro,
        &[chart],
        &[report::Table { head: head.into_iter().map(String::from).collect(), rows }],
        &serde_json::to_value(p).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn the_sample_is_runs_spread_over_the_sequence() {
        assert_eq!(sample(100, 32, 16), vec![0..16, 84..100]);
        assert_eq!(sample(100, 40, 16), vec![0..16, 42..58, 92..100]);
        assert_eq!(sample(10, 32, 16), vec![0..10]);
        assert_eq!(sample(20, 20, 16), vec![0..16, 16..20]);
        assert_eq!(sample(1, 1, 1), vec![0..1]);
    }
}
