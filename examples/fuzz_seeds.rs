//! Writes the seed corpus of the fuzz targets (`src/fuzz.rs`) into `fuzz/corpus/<target>/`:
//! blobs of every pixel type and predictor, TIFFs of the fixture samples and of every layout the
//! parser takes, archives with and without an embedded model, small model files, settings and
//! config files. Seeds are named `seed-*`; crashers kept as regression inputs are named
//! `crash-*` and are not touched.
//!
//! ```text
//! cargo run --release --example fuzz_seeds [-- fuzz/corpus]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tezipfs::codec::format::tiff;
use tezipfs::codec::predict::{Model, ModelHandle};
use tezipfs::codec::{encode_window, Bound, DType, FormatSpec, Options, PredictorChoice, PredictorId, RawSpec};
use tezipfs::fixtures::{generate_raw, SequenceSpec};
use tezipfs::model::file;
use tezipfs::model::reference::ReferenceModel;
use tezipfs::model::{Arch, LayerArch};
use tezipfs::policy;

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create the corpus directory");
    std::fs::write(d.join(format!("seed-{name}")), bytes).expect("write a seed");
}

fn frames(dtype: DType, w: u32, h: u32, n: usize, seed: u64) -> Vec<Vec<u8>> {
    generate_raw(&SequenceSpec { dtype, ..SequenceSpec::detector_u16(w, h, n, seed) })
}

fn raw(dtype: DType, w: u32, h: u32) -> FormatSpec {
    FormatSpec::Raw(RawSpec { width: w, height: h, dtype, skip: 0 })
}

fn blob(files: &[Vec<u8>], opts: &Options) -> Vec<u8> {
    let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    encode_window(&refs, opts).expect("encode a seed window").blob
}

/// A two-layer architecture small enough for the reference backend to run quickly.
fn tiny_arch() -> Arch {
    let l = |a, r, k_lstm, k_ahat, k_a| LayerArch { a, r, k_lstm, k_ahat, k_a };
    Arch { layers: vec![l(1, 2, 3, 1, 1), l(2, 2, 1, 3, 3)] }
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let (w, h) = (24u32, 16u32);

    // Blobs: every pixel type, every predictor, lossless and bounded, every entropy choice.
    let entropy = ["fast", "balanced", "best"];
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let bound = match (i % 2, dtype.is_float()) {
            (0, _) => Bound::Lossless,
            (_, true) => Bound::Abs(0.5),
            _ => Bound::Abs(2.0),
        };
        let opts = Options {
            format: raw(dtype, w, h),
            bound,
            predictor: PredictorChoice::Fixed(PredictorId::ALL[i % PredictorId::ALL.len()]),
            entropy: entropy[i % 3].parse().expect("entropy choice"),
            ..Options::default()
        };
        put(&dir, "blob", &format!("{dtype}-{i}.blob"), &blob(&frames(dtype, w, h, 3, i as u64), &opts));
    }
    for (i, p) in PredictorId::ALL.into_iter().enumerate() {
        let opts = Options {
            format: raw(DType::U16, 32, 24),
            predictor: PredictorChoice::Fixed(p),
            entropy: entropy[2 - i % 3].parse().expect("entropy choice"),
            bound: if i % 3 == 1 { Bound::Rel(0.01) } else { Bound::Lossless },
            ..Options::default()
        };
        put(&dir, "blob", &format!("u16-{p}.blob"), &blob(&frames(DType::U16, 32, 24, 4, 40 + i as u64), &opts));
    }
    let opaque = vec![b"not a frame, stored whole".to_vec(), vec![7u8; 3000]];
    let opaque_blob = blob(&opaque, &Options::default());
    put(&dir, "blob", "opaque.blob", &opaque_blob);
    put(&dir, "blob", "motion-v4.blob", &std::fs::read("tests/data/moving_square_motion_v4.blob").expect("tests/data blob"));
    // Sliced blobs (version 7): lossless u16 in 3 slices; abs:2 u8 in 2 slices with an opaque
    // entry between the frames.
    let sliced = Options { format: raw(DType::U16, 24, 40), slice_pixels: 24 * 16, ..Options::default() };
    put(&dir, "blob", "sliced-u16.blob", &blob(&frames(DType::U16, 24, 40, 3, 61), &sliced));
    let mut files = frames(DType::U8, 16, 32, 3, 62);
    files.insert(1, b"not a frame".to_vec());
    let sliced = Options { format: raw(DType::U8, 16, 32), bound: Bound::Abs(2.0), slice_pixels: 16 * 16, ..Options::default() };
    put(&dir, "blob", "sliced-u8-abs2.blob", &blob(&files, &sliced));

    // Photon counts coded as counts (entropy stage 6, version 8), alone and in slices.
    let photons = |dtype, w, h| generate_raw(&SequenceSpec::of_scene(tezipfs::fixtures::Scene::Speckle { mean: 0.5, frames: 30.0 }, dtype, w, h, 3, 63));
    let counts = Options { format: raw(DType::U16, 24, 16), entropy: "best".parse().expect("entropy choice"), ..Options::default() };
    let counts_blob = blob(&photons(DType::U16, 24, 16), &counts);
    assert_eq!(u16::from_le_bytes([counts_blob[8], counts_blob[9]]), 8, "photon counts coded as counts");
    put(&dir, "blob", "counts-u16.blob", &counts_blob);
    let counts = Options { format: raw(DType::U8, 16, 32), slice_pixels: 16 * 16, ..counts };
    put(&dir, "blob", "sliced-counts-u8.blob", &blob(&photons(DType::U8, 16, 32), &counts));

    // The adaptive stage's intensity context under a bound (version 8).
    let intensity = Options {
        format: raw(DType::U16, 32, 24),
        bound: Bound::Abs(2.0),
        predictor: PredictorChoice::Fixed(PredictorId::Previous),
        stage: Some(tezipfs::codec::entropy::Stage::Adaptive),
        ..Options::default()
    };
    let intensity_blob = blob(&frames(DType::U16, 32, 24, 4, 64), &intensity);
    assert_eq!(u16::from_le_bytes([intensity_blob[8], intensity_blob[9]]), 8, "the intensity context");
    put(&dir, "blob", "intensity-u16-abs2.blob", &intensity_blob);

    // A model blob (version 6), for the archive that embeds its model.
    let model_file = file::to_bytes(&file::random(&tiny_arch(), DType::U16, 3));
    let model: Arc<dyn Model> = Arc::new(ReferenceModel::from_bytes(&model_file).expect("a valid model"));
    let model_opts =
        Options { format: raw(DType::U16, 12, 8), predictor: PredictorChoice::Prednet, model: Some(ModelHandle(model.clone())), ..Options::default() };
    let model_blob = blob(&frames(DType::U16, 12, 8, 3, 5), &model_opts);
    assert_eq!(u16::from_le_bytes([model_blob[8], model_blob[9]]), 6, "the model blob names its model");

    // Archives: version 1 (no model), version 2 (a model before the blob that needs it).
    let names = |n: usize| (0..n).map(|i| format!("frame_{i:05}.raw").into_bytes()).collect::<Vec<_>>();
    let small = blob(&frames(DType::U8, 16, 8, 2, 9), &Options { format: raw(DType::U8, 16, 8), ..Options::default() });
    let mut a = tezipfs::archive::Writer::new(Vec::new(), false).expect("archive");
    a.record(&names(2), &small).expect("record");
    a.record(&names(2), &opaque_blob).expect("record");
    put(&dir, "archive", "v1.tza", &a.into_inner());
    let mut a = tezipfs::archive::Writer::new(Vec::new(), true).expect("archive");
    a.model(model.hash(), &model_file).expect("model");
    a.record(&names(3), &model_blob).expect("record");
    put(&dir, "archive", "v2-model.tza", &a.into_inner());

    // Model files.
    for (i, dtype) in [DType::U8, DType::U16, DType::F32].into_iter().enumerate() {
        put(&dir, "model", &format!("{dtype}.model"), &file::to_bytes(&file::random(&tiny_arch(), dtype, 100 + i as u64)));
    }

    // TIFFs: the fixture samples and every layout the writer makes.
    for entry in std::fs::read_dir("fixtures/samples/detector-u16-tiff").expect("fixture samples").flatten().take(1) {
        put(&dir, "tiff", "fixture-u16.tif", &std::fs::read(entry.path()).expect("read a fixture TIFF"));
    }
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let img: Vec<u32> = (0..35u32).map(|k| dtype.to_image(0).wrapping_add(k * 1000 + i as u32) & dtype.mask()).collect();
        let (be, rps, reverse) = (i % 2 == 1, [1, 2, 7, 3][i % 4], i % 3 == 0);
        put(&dir, "tiff", &format!("{dtype}-{}-{rps}.tif", if be { "be" } else { "le" }), &tiff::write(5, 7, dtype, be, rps, reverse, &img));
    }

    // Settings: the first byte picks the setting (index into policy::SETTINGS).
    let settings: [(&str, &[&str]); 6] = [
        (policy::BOUND, &["lossless", "abs:2", "rel:0.01"]),
        (policy::PREDICTOR, &["auto", "linear", "prednet"]),
        (policy::FORMAT, &["auto", "tiff", "raw:64x48:u16:skip=16"]),
        (policy::WINDOW, &["16"]),
        (policy::MODEL, &["detector-a"]),
        (policy::ENTROPY, &["best"]),
    ];
    for (name, values) in settings {
        let pick = policy::SETTINGS.iter().position(|s| *s == name).expect("a setting") as u8;
        for (k, v) in values.iter().enumerate() {
            let mut b = vec![pick];
            b.extend_from_slice(v.as_bytes());
            put(&dir, "policy", &format!("{}-{k}", name.trim_start_matches("user.tezip.")), &b);
        }
    }

    // Config files: every key, and the smallest.
    let full = "[defaults]\nbound = \"abs:2\"\npredictor = \"auto\"\nformat = \"raw:2048x2048:u16\"\nwindow = 32\nmodel = \"auto\"\nentropy = \"balanced\"\n\n\
                [mount]\nquiet_period_ms = 2000\ntail_idle_ms = 20000\ncache_mib = 1024\nstaging_budget_mib = 102400\nthreads = 2\npassthrough = true\n\
                passthrough_min_free_mib = 1024\ndevice = \"auto\"\nauto_train_frames = 16\nauto_train_minutes = 5.0\nauto_train_threads = 1\nmodel_backlog_mib = 1024\n";
    put(&dir, "config", "full.toml", full.as_bytes());
    put(&dir, "config", "defaults.toml", b"[defaults]\nbound = \"lossless\"\n");
    put(&dir, "config", "empty.toml", b"");
    println!("seeds written under {}", dir.display());
}
