//! Fuzz entry points: one per parser of untrusted bytes, shared by the two runners (the
//! cargo-fuzz crate in `fuzz/` for long coverage-guided runs, and `tests/fuzz.rs`, which feeds
//! the committed corpus and seeded mutations through them in the test command; see
//! `docs/ADMIN.md`, Fuzzing).
//!
//! Each entry point takes arbitrary bytes and must return without panicking, in time bounded by
//! the input, allocating only what the input's size justifies (a length a header claims is
//! checked before it sizes anything). A panic is a finding. Where a parser accepts its input,
//! the entry point also checks what the accepted value promises: a TIFF's pixel ranges rebuild
//! the file byte for byte, a setting prints back to a value that parses to the same, a model
//! file writes back to the same bytes and runs, a blob's frames decode or give an error.
//!
//! Blobs carry CRCs over everything, so random mutations rarely get past the first check: the
//! blob and archive entry points also try each input with its checksums recomputed
//! ([`container::reseal`]), which reaches the header checks and the decoder behind them.

use crate::codec::container::{self, Header};
use crate::codec::predict::{hash_hex, Geometry, Model, ModelHash, ModelSource, PredictError};
use crate::codec::{analyze, Analysis, Decoder, FormatSpec};
use crate::model::{file, reference::ReferenceModel, Backend};
use crate::policy::{ConfigFile, Policy, SETTINGS};
use std::collections::HashMap;
use std::sync::Arc;

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: [(&str, fn(&[u8])); 6] = [("blob", blob), ("tiff", tiff), ("archive", archive), ("model", model), ("policy", policy), ("config", config)];

/// Frames larger than this are parsed but not decoded by the entry points. The decoder's own
/// bound is [`crate::codec::format::MAX_FRAME_PIXELS`] (2^28): a header under it may make the
/// decoder allocate and work in proportion to the frame, which is what a real frame of that size
/// needs, but would make every fuzz input that finds it take seconds.
pub const DECODE_PIXELS: u64 = 1 << 18;
/// The same for frames a learned model predicts (the reference backend does a model's worth of
/// work per pixel).
pub const MODEL_DECODE_PIXELS: u64 = 1 << 10;

/// A blob (`docs/FORMAT.md`): parse, decode every entry, decode the first again (the decoder
/// starts the chain over); then the same with the checksums recomputed.
pub fn blob(data: &[u8]) {
    decode_blob(data, Arc::new(crate::codec::predict::NoModels));
    if let Some(sealed) = container::reseal(data).filter(|s| s != data) {
        decode_blob(&sealed, Arc::new(crate::codec::predict::NoModels));
    }
}

fn decodable(h: &Header) -> bool {
    match &h.params {
        None => true,
        Some(p) => {
            let pixels = p.width as u64 * p.height as u64;
            pixels <= if p.model == [0; 32] { DECODE_PIXELS } else { MODEL_DECODE_PIXELS }
        }
    }
}

fn decode_blob(data: &[u8], models: Arc<dyn ModelSource + Send + Sync>) {
    let Ok(mut d) = Decoder::with_models(Arc::from(data), models) else { return };
    if !decodable(d.header()) {
        return;
    }
    for i in 0..d.len() {
        if let Ok(bytes) = d.decode(i, |_, _| {}) {
            assert_eq!(bytes.len() as u64, d.header().entries[i].original_len, "entry {i} decoded to another length than its header says");
        }
    }
    if !d.is_empty() {
        let _ = d.decode(0, |_, _| {});
    }
}

/// A TIFF file: parse; an accepted layout must lie in the file and rebuild it byte for byte
/// from its skeleton and pixels (what the codec relies on for lossless frames).
pub fn tiff(data: &[u8]) {
    for spec in [FormatSpec::Auto, FormatSpec::Tiff] {
        let Analysis::Frame(layout) = analyze(data, &spec) else { continue };
        let pixel_bytes: usize = layout.ranges.iter().map(|r| r.len()).sum();
        assert_eq!(pixel_bytes, layout.pixels() * layout.dtype.bytes(), "pixel ranges hold the frame");
        assert!(layout.ranges.iter().all(|r| r.start <= r.end && r.end <= data.len()), "pixel ranges lie in the file");
        let mut image = Vec::new();
        layout.extract(data, &mut image);
        assert_eq!(image.len(), layout.pixels());
        let skeleton = layout.skeleton(data);
        assert_eq!(layout.assemble(data.len(), &skeleton, &image).as_deref(), Some(data), "a TIFF rebuilds from its skeleton and pixels");
    }
}

/// Model files an archive embeds, run by the reference backend.
struct Embedded(HashMap<ModelHash, Vec<u8>>);

impl ModelSource for Embedded {
    fn model(&self, hash: &ModelHash) -> Result<Arc<dyn Model>, PredictError> {
        let bytes = self.0.get(hash).ok_or_else(|| PredictError::MissingModel(hash_hex(hash)))?;
        crate::model::load(bytes, Backend::Reference).map_err(|e| PredictError::Model { model: hash_hex(hash), why: e.to_string() })
    }
}

/// An archive (`docs/FORMAT.md`): read every record, decode its blob with the models the
/// archive embedded before it; then the same with every checksum recomputed.
pub fn archive(data: &[u8]) {
    read_archive(data);
    let sealed = crate::archive::reseal(data);
    if sealed != data {
        read_archive(&sealed);
    }
}

fn read_archive(data: &[u8]) {
    let Ok(mut r) = crate::archive::Reader::new(data) else { return };
    while let Ok(Some(rec)) = r.next_record() {
        decode_blob(&rec.blob, Arc::new(Embedded(r.models().clone())));
    }
}

/// A model file (`docs/MODEL.md`): read and validate; an accepted model writes back to the same
/// bytes, and the reference backend runs it on two small frames (odd sizes, extreme values)
/// without an error and with predictions inside the pixel type; then the same with both
/// checksums recomputed.
pub fn model(data: &[u8]) {
    run_model(data);
    if let Some(sealed) = file::reseal(data).filter(|s| s != data) {
        run_model(&sealed);
    }
}

fn run_model(data: &[u8]) {
    let Ok(m) = file::from_bytes(data) else { return };
    let back = file::to_bytes(&m);
    if back != data {
        let at = back.iter().zip(data).position(|(a, b)| a != b).unwrap_or(back.len().min(data.len()));
        panic!("a model file that reads writes back to other bytes ({} and {} bytes, first difference at byte {at})", data.len(), back.len());
    }
    let dtype = m.dtype;
    let model = ReferenceModel::from_bytes(data).expect("the bytes just read");
    let geom = Geometry::of(7, 5, dtype);
    let n = geom.pixels();
    let mask = geom.mask();
    let frame = |k: usize| -> Vec<u32> {
        (0..n)
            .map(|i| match (i + k) % 5 {
                0 => 0,
                1 => mask,
                _ => data.get((i * 7 + k) % data.len()).map_or(0, |&b| (b as u32).wrapping_mul(0x0101_0101)) & mask,
            })
            .collect()
    };
    let mut state = model.start(geom).expect("a valid model starts on frames of its pixel type");
    let mut out = vec![0u32; n];
    for k in 0..2 {
        model.observe_batch(&mut [state.as_mut()], &[&frame(k)]).expect("a valid model observes any frame");
        model.predict_batch(&mut [state.as_mut()], &mut [&mut out]).expect("a valid model predicts");
        assert!(out.iter().all(|&v| v <= mask), "predictions inside the pixel type");
    }
}

/// A per-directory setting (`user.tezip.*`): the first byte picks the setting, the rest is the
/// value. An accepted value prints back to one that parses to the same; a raw format is tried on
/// a file of its size.
pub fn policy(data: &[u8]) {
    let Some((&pick, value)) = data.split_first() else { return };
    let name = SETTINGS.get(pick as usize % (SETTINGS.len() + 1)).copied().unwrap_or("user.tezip.other");
    let mut p = Policy::default();
    if p.set(name, value).is_err() {
        return;
    }
    let text = p.get(name).expect("a setting has a value");
    let mut q = Policy::default();
    if let Err(e) = q.set(name, text.as_bytes()) {
        panic!("{name}: {text:?} (printed from {:?}) does not parse back: {e}", String::from_utf8_lossy(value));
    }
    assert_eq!(q.get(name).as_deref(), Some(text.as_str()), "{name} prints back the same");
    let _ = p.codec_options();
    if let FormatSpec::Raw(r) = &p.format {
        let len = r.skip.saturating_add(r.pixel_bytes());
        if len <= 1 << 16 {
            let file = vec![0x5a; len];
            assert!(matches!(analyze(&file, &p.format), Analysis::Frame(_)), "a raw file of the size the format says is a frame");
        }
    }
}

/// A config file (TOML): parse and check; an accepted config gives a root policy.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = ConfigFile::parse(text) {
        c.root_policy().expect("a config that parses gives a root policy");
    }
}

/// Runs the target `name` on `data` (`None`: no such target).
pub fn run(name: &str, data: &[u8]) -> Option<()> {
    let (_, f) = TARGETS.iter().find(|(n, _)| *n == name)?;
    f(data);
    Some(())
}
