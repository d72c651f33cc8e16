//! `tezipfs bench`: ratio and speed of the codec on frame sequences, next to zstd-3 and zstd-19
//! of the original files measured in the same process, and the anchors of
//! `../shared/baselines/results` (FFV1, JPEG-XL, x265, SZ3, tdelta + bitshuffle + zstd-19).
//!
//! Single-threaded: MB/s is per core, of original bytes.

use anyhow::Context;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tezipfs::codec::entropy::{EntropyChoice, Stage};
use tezipfs::codec::predict::OneModel;
use tezipfs::codec::window::{encode_window, plan_windows};
use tezipfs::codec::{analyze, Bound, DType, Decoder, FormatSpec, Options, PredictorChoice, PredictorId};
use tezipfs::fixtures::{generate_raw, noise_floor_bits, Scene, SequenceSpec};
use tezipfs::noise::{self, NoiseFloor};

pub(super) struct Dataset {
    pub name: String,
    pub dtype: DType,
    pub width: u32,
    pub height: u32,
    pub files: Vec<Vec<u8>>,
    /// The generator's noise floor in bits per pixel (generated fixtures only).
    pub floor_bits: Option<f64>,
    /// The generator's spec (generated fixtures only: their noise-free frames are known).
    pub spec: Option<SequenceSpec>,
}

impl Dataset {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len() as u64).sum()
    }
    /// The noise floor estimated from the frames (integer types only).
    pub fn noise_floor(&self) -> Option<NoiseFloor> {
        let images: Vec<Vec<u32>> = self
            .files
            .iter()
            .map(|f| {
                let mut img = Vec::new();
                self.dtype.decode_pixels(f, false, &mut img);
                img
            })
            .collect();
        noise::estimate(&images, self.width as usize, self.height as usize, self.dtype)
    }

    pub fn format(&self) -> FormatSpec {
        FormatSpec::Raw(tezipfs::codec::RawSpec { width: self.width, height: self.height, dtype: self.dtype, skip: 0 })
    }
}

pub(super) fn shared_dir(sub: &str) -> Option<PathBuf> {
    [PathBuf::from("../shared").join(sub), Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared").join(sub)].into_iter().find(|p| p.is_dir())
}

pub(super) fn load_dir(dir: &Path) -> anyhow::Result<Dataset> {
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).with_context(|| format!("{}: no meta.json", dir.display()))?)?;
    let get = |k: &str| meta[k].as_u64().with_context(|| format!("meta.json: missing {k}"));
    let dtype: DType = meta["dtype"].as_str().unwrap_or("?").parse().map_err(anyhow::Error::msg)?;
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "raw")).collect();
    files.sort_by(|a, b| tezipfs::sortname::natural_cmp(a.as_os_str().as_encoded_bytes(), b.as_os_str().as_encoded_bytes()));
    Ok(Dataset {
        name: dir.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        dtype,
        width: get("width")? as u32,
        height: get("height")? as u32,
        files: files.iter().map(std::fs::read).collect::<Result<_, _>>()?,
        // A generated set (`tezipfs fixtures`) states its exact floor; a recorded one does not.
        floor_bits: meta["noise_floor_bits"].as_f64(),
        spec: None,
    })
}

/// A generated sequence of `scene`.
pub(super) fn scene_fixture(name: &str, scene: Scene, dtype: DType, w: u32, h: u32, frames: usize, seed: u64) -> Dataset {
    let spec = SequenceSpec::of_scene(scene, dtype, w, h, frames, seed);
    Dataset { name: name.into(), dtype, width: w, height: h, files: generate_raw(&spec), floor_bits: noise_floor_bits(&spec), spec: Some(spec) }
}

pub(super) fn fixture(name: &str, dtype: DType, w: u32, h: u32, frames: usize, seed: u64) -> Dataset {
    scene_fixture(name, Scene::Detector, dtype, w, h, frames, seed)
}

pub(super) struct Row {
    pub method: String,
    pub ratio: f64,
    pub comp: f64,
    pub dec: f64,
    pub check: String,
}

fn zstd_row(d: &Dataset, level: i32) -> anyhow::Result<Row> {
    let t = Instant::now();
    let comp: Vec<Vec<u8>> = d.files.iter().map(|f| zstd::bulk::compress(f, level)).collect::<Result<_, _>>()?;
    let ct = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ok = comp.iter().zip(&d.files).all(|(c, f)| zstd::bulk::decompress(c, f.len()).is_ok_and(|b| &b == f));
    let dt = t.elapsed().as_secs_f64();
    let size: usize = comp.iter().map(|c| c.len()).sum();
    Ok(Row {
        method: format!("zstd-{level} (files)"),
        ratio: d.bytes() as f64 / size as f64,
        comp: d.bytes() as f64 / 1e6 / ct,
        dec: d.bytes() as f64 / 1e6 / dt,
        check: if ok { "bit-exact".into() } else { "MISMATCH".into() },
    })
}

/// Code the dataset in windows, decode it, and compare with the originals.
pub(super) fn codec_row(d: &Dataset, opts: &Options, window: usize, label: &str) -> anyhow::Result<Row> {
    codec_row_with(d, opts, window, label, &|_| {})
}

/// [`codec_row`], calling `at(first file)` before each window is coded and decoded (how the
/// oracle model knows which frames it predicts).
pub(super) fn codec_row_with(d: &Dataset, opts: &Options, window: usize, label: &str, at: &dyn Fn(usize)) -> anyhow::Result<Row> {
    let analyses: Vec<_> = d.files.iter().map(|f| analyze(f, &opts.format)).collect();
    let windows = plan_windows(&analyses, window);
    let t = Instant::now();
    let mut blobs = Vec::new();
    for w in &windows {
        at(w.start);
        let refs: Vec<&[u8]> = d.files[w.clone()].iter().map(|f| &f[..]).collect();
        blobs.push(encode_window(&refs, opts)?.blob);
    }
    let ct = t.elapsed().as_secs_f64();
    let models = std::sync::Arc::new(OneModel(opts.model.as_ref().map(|m| m.0.clone())));
    let t = Instant::now();
    let mut decoded = Vec::with_capacity(d.files.len());
    for (w, b) in windows.iter().zip(&blobs) {
        at(w.start);
        decoded.extend(Decoder::with_models(b[..].into(), models.clone())?.decode_all()?);
    }
    let dt = t.elapsed().as_secs_f64();
    // What the windows chose: predictor and entropy stages, with the number of frames of each.
    let mut used: std::collections::BTreeMap<String, usize> = Default::default();
    for b in &blobs {
        let dec = Decoder::new(b)?;
        let Some(p) = &dec.header().params else { continue };
        let model = if p.model == [0; 32] { "" } else { "prednet+" };
        for e in &dec.header().entries {
            if let tezipfs::codec::container::Body::Frame(f) = &e.body {
                *used.entry(format!("{model}{}+{}", p.predictor, f.stage)).or_default() += 1;
            }
        }
    }
    let used: Vec<String> = used.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    let used = used.join(" ");
    let size: usize = blobs.iter().map(|b| b.len()).sum();
    let mut max_err = 0f64;
    let mut exact = true;
    for (o, r) in d.files.iter().zip(&decoded) {
        if o != r {
            exact = false;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            d.dtype.decode_pixels(o, false, &mut a);
            d.dtype.decode_pixels(r, false, &mut b);
            for (&x, &y) in a.iter().zip(&b) {
                if x != y {
                    let e = (d.dtype.value(x) - d.dtype.value(y)).abs();
                    max_err = max_err.max(if e.is_nan() { f64::INFINITY } else { e });
                }
            }
        }
    }
    let check = match opts.bound {
        Bound::Lossless if exact => "bit-exact".to_string(),
        Bound::Lossless => "MISMATCH".to_string(),
        Bound::Abs(e) if max_err <= e => format!("maxerr={max_err} (bound {e})"),
        b => format!("maxerr={max_err} VIOLATES {b}"),
    };
    let check = format!("{check}  [{used}]");
    Ok(Row { method: label.into(), ratio: d.bytes() as f64 / size as f64, comp: d.bytes() as f64 / 1e6 / ct, dec: d.bytes() as f64 / 1e6 / dt, check })
}

/// Anchor figures stored by `../shared/baselines` for this dataset.
fn anchors(name: &str) -> Vec<(String, f64, f64, f64)> {
    let Some(dir) = shared_dir("baselines/results") else { return vec![] };
    let Ok(bytes) = std::fs::read(dir.join(format!("{name}.json"))) else { return vec![] };
    // Python's json writes bare NaN / Infinity (PSNR of exact results); JSON has no such tokens.
    let text = String::from_utf8_lossy(&bytes).replace("-Infinity", "null").replace("Infinity", "null").replace("NaN", "null");
    let Ok(v) = serde_json::from_str::<Value>(&text) else { return vec![] };
    let wanted = [
        "tdelta-nativezz+bitshuffle+zstd-19",
        "tdelta-i32zz+bitshuffle+zstd-19",
        "ffv1-l3-gN",
        "jpegxl-cjxl-d0-e7",
        "x265-lossless",
        "sz3-3d-abs1",
        "sz3-3d-abs2",
        "sz3-3d-abs4",
    ];
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["ok"].as_bool() == Some(true) && wanted.contains(&r["name"].as_str().unwrap_or("")))
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["ratio"].as_f64().unwrap_or(0.0),
                r["comp_MBps"].as_f64().unwrap_or(0.0),
                r["decomp_MBps"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// The error bounds the bench codes at (0: lossless).
const BOUNDS: [u32; 4] = [0, 1, 2, 4];

fn bound_label(e: u32) -> String {
    format!("tezip abs:{e} auto")
}

/// The best ratio among the rows whose method starts with `prefix`.
fn best_ratio(rows: &[Row], prefix: &str) -> f64 {
    rows.iter().filter(|r| r.method.starts_with(prefix)).map(|r| r.ratio).fold(0.0, f64::max)
}

/// The noise floor estimated from the frames (see `tezipfs::noise`): the ratio no coder can
/// beat on average when the noise is white, lossless and under each bound.
fn print_noise_floor(f: &NoiseFloor, dtype: DType, rows: &[Row]) {
    let whiteness = format!(
        "row corr {:.2} (white {:.2}), frame corr {}",
        f.row_correlation,
        noise::WHITE_ROW_CORRELATION,
        f.frame_correlation.map_or("-".into(), |c| format!("{c:.2}"))
    );
    if !f.white() {
        println!("{:<38} {:>8} {:>10} {:>10}  noise is not white ({whiteness}): no limit", "noise floor, estimated", "-", "-", "-");
        return;
    }
    for e in BOUNDS {
        let (label, prefix) = if e == 0 {
            ("noise floor, estimated (lossless)".to_string(), "tezip lossless".to_string())
        } else {
            (format!("noise floor, estimated (abs:{e})"), bound_label(e))
        };
        match f.ratio_limit(dtype, e) {
            Some(limit) => {
                let extra = if e == 0 { format!("; {:.3} bits/pixel, {whiteness}", f.bits) } else { String::new() };
                println!("{label:<38} {limit:>8.3} {:>10} {:>10}  best row at {:.0}% of it{extra}", "-", "-", 100.0 * best_ratio(rows, &prefix) / limit);
            }
            None => println!("{label:<38} {:>8} {:>10} {:>10}  no noise left to pay for", "-", "-", "-"),
        }
    }
}

/// Issue #3's targets on a shared set: lossless >= 1.1x the best of FFV1, JPEG-XL and
/// x265-lossless; abs:1/2/4 >= 1.2x SZ3 (3-D); compress and decompress >= 40 MB/s per core.
fn print_issue3_targets(rows: &[Row], anchors: &[(String, f64, f64, f64)], floor: Option<&NoiseFloor>, dtype: DType) {
    let anchor = |name: &str| anchors.iter().find(|a| a.0 == name).map(|a| a.1);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let limit = |e: u32| floor.filter(|f| f.white()).and_then(|f| f.ratio_limit(dtype, e));
    let beside_limit =
        |target: f64, e: u32| limit(e).map_or(String::new(), |l| format!("; the noise floor allows {l:.3}, the target is {:.0}% of it", 100.0 * target / l));
    let lossless = ["ffv1-l3-gN", "jpegxl-cjxl-d0-e7", "x265-lossless"]
        .into_iter()
        .filter_map(|n| anchor(n).map(|r| (r, n)))
        .fold(None, |b: Option<(f64, &str)>, a| if b.is_none_or(|b| a.0 > b.0) { Some(a) } else { b });
    let Some((best, name)) = lossless else { return };
    let default = rows.iter().find(|r| r.method == "tezip lossless auto (default)").expect("default row");
    let target = 1.1 * best;
    println!(
        "target #3: lossless auto {:.3} vs 1.1 x {name} {best:.3} = {target:.3}: {}{}",
        default.ratio,
        verdict(default.ratio >= target),
        beside_limit(target, 0)
    );
    for e in BOUNDS.into_iter().filter(|&e| e > 0) {
        let (Some(sz3), Some(row)) = (anchor(&format!("sz3-3d-abs{e}")), rows.iter().find(|r| r.method == bound_label(e))) else { continue };
        let target = 1.2 * sz3;
        println!(
            "target #3: abs:{e} {:.3} vs 1.2 x sz3-3d {sz3:.3} = {target:.3}: {}{}",
            row.ratio,
            verdict(row.ratio >= target && !row.check.contains("VIOLATES")),
            beside_limit(target, e)
        );
    }
    let slow: Vec<String> = rows
        .iter()
        .filter(|r| r.method == default.method || r.method.starts_with("tezip abs:"))
        .filter(|r| r.comp < 40.0 || r.dec < 40.0)
        .map(|r| format!("{} c{:.0} d{:.0}", r.method.trim_start_matches("tezip "), r.comp, r.dec))
        .collect();
    println!(
        "target #3: compress and decompress >= 40 MB/s (default and abs rows): {}",
        if slow.is_empty() { "met".to_string() } else { format!("MISSED ({})", slow.join(", ")) }
    );
}

/// `dirs`, or when none is given the sets in ../shared/data (directories with a meta.json), in
/// name order.
pub fn sets_or_shared(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    if !dirs.is_empty() {
        return dirs;
    }
    let mut v: Vec<PathBuf> = shared_dir("data")
        .map(|d| {
            std::fs::read_dir(d).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("meta.json").exists()).collect()).unwrap_or_default()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn run(dirs: Vec<PathBuf>, no_fixtures: bool, quick: bool, window: usize, level: i32, json_out: Option<&Path>) -> anyhow::Result<()> {
    let mut sets = Vec::new();
    let dirs = sets_or_shared(dirs);
    for d in &dirs {
        sets.push(load_dir(d)?);
    }
    if !no_fixtures {
        sets.push(fixture("fixture-detector-u16", DType::U16, 512, 512, 32, 1));
        sets.push(fixture("fixture-detector-u8", DType::U8, 512, 512, 32, 2));
        sets.push(fixture("fixture-detector-f32", DType::F32, 256, 256, 16, 3));
        sets.push(scene_fixture("fixture-particles-u16", Scene::Particles, DType::U16, 512, 512, 32, 4));
        for (name, mean, seed) in [("fixture-photons-0.1", 0.1, 5), ("fixture-photons-1", 1.0, 6), ("fixture-photons-20", 20.0, 7)] {
            sets.push(scene_fixture(name, Scene::Speckle { mean, frames: 30.0 }, DType::U16, 512, 512, 32, seed));
        }
    }
    let mut report = Vec::new();
    println!("tezipfs bench: window {window}, zstd level {level}, single thread; MB/s of original bytes per second");
    for d in &sets {
        println!("\n# {}: {}x{} {} x {} frames, {:.1} MB", d.name, d.width, d.height, d.dtype, d.files.len(), d.bytes() as f64 / 1e6);
        println!("{:<38} {:>8} {:>10} {:>10}  check", "method", "ratio", "comp MB/s", "dec MB/s");
        let mut rows = vec![zstd_row(d, 3)?];
        if !quick {
            rows.push(zstd_row(d, 19)?);
        }
        let base = Options { format: d.format(), level, ..Options::default() };
        let none = PredictorChoice::Fixed(PredictorId::None);
        let previous = PredictorChoice::Fixed(PredictorId::Previous);
        let linear = PredictorChoice::Fixed(PredictorId::Linear);
        for (label, predictor, entropy) in [
            ("tezip lossless none", none, EntropyChoice::Balanced),
            ("tezip lossless previous", previous, EntropyChoice::Balanced),
            ("tezip lossless linear", linear, EntropyChoice::Balanced),
            ("tezip lossless auto (default)", PredictorChoice::Auto, EntropyChoice::Balanced),
            ("tezip lossless auto, entropy fast", PredictorChoice::Auto, EntropyChoice::Fast),
            ("tezip lossless auto, entropy best", PredictorChoice::Auto, EntropyChoice::Best),
        ] {
            rows.push(codec_row(d, &Options { predictor, entropy, ..base.clone() }, window, label)?);
        }
        // The tree stage (entropy stage 7) on `linear`'s codes, and `best` without it: what it
        // adds, measured in the same run.
        let tree = Options { predictor: linear, entropy: EntropyChoice::Best, stage: Some(Stage::Tree), ..base.clone() };
        rows.push(codec_row(d, &tree, window, "tezip lossless linear, tree stage")?);
        let without = Options { entropy: EntropyChoice::Best, tree_stage: false, ..base.clone() };
        rows.push(codec_row(d, &without, window, "tezip lossless auto, best, no tree")?);
        for e in BOUNDS.into_iter().filter(|&e| e > 0) {
            rows.push(codec_row(d, &Options { bound: Bound::Abs(e as f64), ..base.clone() }, window, &bound_label(e))?);
        }
        for r in &rows {
            println!("{:<38} {:>8.3} {:>10.1} {:>10.1}  {}", r.method, r.ratio, r.comp, r.dec, r.check);
        }
        if let Some(bits) = d.floor_bits {
            // No lossless coder can beat it on average: how close the rows above come.
            let best = best_ratio(&rows, "tezip lossless");
            let limit = 8.0 * d.dtype.bytes() as f64 / bits;
            println!(
                "{:<38} {:>8.3} {:>10} {:>10}  generator's photon-noise entropy {bits:.3} bits/pixel; best lossless row at {:.0}% of it",
                "noise floor (lossless limit)",
                limit,
                "-",
                "-",
                100.0 * best / limit
            );
        }
        let floor = d.noise_floor();
        if let Some(f) = &floor {
            print_noise_floor(f, d.dtype, &rows);
        }
        let anchors = anchors(&d.name);
        for (name, ratio, c, dd) in &anchors {
            println!("{:<38} {:>8.3} {:>10.1} {:>10.1}  (stored anchor, ../shared/baselines)", name, ratio, c, dd);
        }
        print_issue3_targets(&rows, &anchors, floor.as_ref(), d.dtype);
        let prev = rows.iter().find(|r| r.method == "tezip lossless previous").expect("previous row");
        if let Some((_, target, _, _)) = anchors.iter().find(|a| a.0 == "tdelta-nativezz+bitshuffle+zstd-19") {
            let verdict = if prev.ratio >= 0.95 * target { "within 5% or above" } else { "MISSED" };
            println!("target: previous {:.3} vs tdelta+bitshuffle+zstd-19 {target:.3}: {:+.1}% ({verdict})", prev.ratio, 100.0 * (prev.ratio / target - 1.0));
        }
        if d.dtype.bytes() == 2 {
            let ok = prev.comp >= 100.0 && prev.dec >= 300.0;
            println!(
                "target: 16-bit previous compress {:.0} MB/s (>= 100), decompress {:.0} MB/s (>= 300): {}",
                prev.comp,
                prev.dec,
                if ok { "met" } else { "MISSED" }
            );
        }
        report.push(json!({
            "dataset": d.name, "dtype": d.dtype.to_string(), "width": d.width, "height": d.height, "frames": d.files.len(),
            "rows": rows.iter().map(|r| json!({"method": r.method, "ratio": r.ratio, "comp_MBps": r.comp, "dec_MBps": r.dec, "check": r.check})).collect::<Vec<_>>(),
            "noise_floor_ratio": d.floor_bits.map(|b| 8.0 * d.dtype.bytes() as f64 / b),
            "noise_floor_estimate": floor.as_ref().map(|f| json!({
                "bits_per_pixel": f.bits, "white": f.white(), "row_correlation": f.row_correlation, "frame_correlation": f.frame_correlation,
                "ratio_limit": BOUNDS.iter().map(|&e| (if e == 0 { "lossless".to_string() } else { format!("abs:{e}") }, f.ratio_limit(d.dtype, e))).collect::<std::collections::BTreeMap<_, _>>(),
            })),
        }));
    }
    if let Some(p) = json_out {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
