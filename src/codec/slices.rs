//! Frame slices (container version 7): the frames of a window with more pixels than
//! [`Options::slice_pixels`] are cut into horizontal stripes, and each stripe sequence is coded
//! as a window of its own (its own predictor choice, motion confined to the stripe, its own
//! entropy models) into a blob of version 2 to 6, 8 or 9 inside the outer blob. What belongs to the
//! whole file stays once, in the outer blob: the bytes outside the pixels (skeleton), the pixel
//! ranges and byte order, the length and the CRC32C of the whole file, and the opaque entries.
//!
//! The stripes of a frame share nothing, so they are coded and decoded in parallel (the
//! adaptive stage's serial chain, the slowest part of the codec, is cut into one chain a
//! stripe). What it costs in ratio, and why the default is what it is: `docs/ARCHITECTURE.md`
//! ("Frame slices") and `docs/results/slices.txt`.

use super::container::{self, BlobError, Body, Entry, FrameEntry, Header, Params, Section, Slicing};
use super::entropy::{Coder, Stage};
use super::format::{analyze, Analysis, FormatSpec, Layout, RawSpec};
use super::predict::ModelSource;
use super::quantizer::{Bound, FrameBound};
use super::side_by_side;
use super::window::{opaque_entry, Decoder, EncodeError, Encoded, EntryReport, Options};
use std::borrow::Cow;
use std::sync::Arc;

/// Default [`Options::slice_pixels`]: frames above 1 Mpixel are sliced (the choice is measured
/// in `docs/results/slices.txt`).
pub const DEFAULT_SLICE_PIXELS: usize = 1 << 20;
/// No slice has fewer rows than this (a stripe's first row has no row above it to predict from).
pub const MIN_SLICE_ROWS: u32 = 16;

/// Rows of each slice (the last holds the rest) of a `width` x `height` frame under a limit of
/// `max_pixels` pixels a slice, or `None` when the frame is not sliced: the fewest slices of at
/// most `max_pixels` pixels, of equal rows, at least [`MIN_SLICE_ROWS`] rows each.
pub fn slice_rows(width: u32, height: u32, max_pixels: usize) -> Option<u32> {
    if max_pixels == 0 {
        return None;
    }
    let n = (width as u64 * height as u64).div_ceil(max_pixels as u64);
    if n < 2 {
        return None;
    }
    let rows = (height as u64).div_ceil(n).max(MIN_SLICE_ROWS as u64) as u32;
    (rows < height).then_some(rows)
}

/// The rows of a stripe when a window of `width x height` frames is sliced under `opts`
/// (`None`: coded whole). A window under a `rel` bound is not sliced: the bound is resolved over
/// the whole frame's range, which a stripe does not see.
fn sliced_rows(width: u32, height: u32, opts: &Options) -> Option<u32> {
    may_slice(opts).then(|| slice_rows(width, height, opts.slice_pixels)).flatten()
}

/// Whether `opts` let a window be sliced at all (see [`sliced_rows`]).
fn may_slice(opts: &Options) -> bool {
    opts.slice_pixels != 0 && !matches!(opts.bound, Bound::Rel(_))
}

/// How a window of `width x height` frames is coded under `opts`: the pixels of a stripe and
/// the number of stripes (`(width * height, 1)` when it is not sliced). The stripes run on up to
/// `opts.threads` threads at once, each holding what a window of its size holds (for the
/// memory budget: `engine::compress`).
pub fn stripes(width: u32, height: u32, opts: &Options) -> (u64, u64) {
    match sliced_rows(width, height, opts) {
        Some(rows) => (rows as u64 * width as u64, container::slice_count(height, rows) as u64),
        None => (width as u64 * height as u64, 1),
    }
}

/// A thread count as the options give it (0: one per core).
pub fn threads(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Code a window as slices when its frames are large enough (`None`: code it whole; see
/// [`sliced_rows`]).
pub(super) fn encode(files: &[&[u8]], opts: &Options) -> Result<Option<Encoded>, EncodeError> {
    // (Before the files are analysed.)
    if !may_slice(opts) {
        return Ok(None);
    }
    let analyses: Vec<Analysis> = files.iter().map(|f| analyze(f, &opts.format)).collect();
    let Some(first) = analyses.iter().find_map(|a| if let Analysis::Frame(l) = a { Some(l.clone()) } else { None }) else { return Ok(None) };
    let Some(rows) = sliced_rows(first.width, first.height, opts) else { return Ok(None) };
    let (width, height, dtype) = (first.width, first.height, first.dtype);
    let count = container::slice_count(height, rows);
    let stripe_rows = |s: usize| rows.min(height - rows * s as u32);
    // The chain, as `encode_window` makes it: frames of the first frame's geometry.
    let layouts: Vec<Result<&Layout, String>> = analyses
        .iter()
        .map(|a| match a {
            Analysis::Frame(l) if l.same_geometry(&first) => Ok(l),
            Analysis::Frame(_) => Err("geometry differs from the window's first frame".to_string()),
            Analysis::Opaque(reason) => Err(reason.clone()),
        })
        .collect();

    // Each slice's stripe of every frame, as a raw little-endian frame: borrowed from the file
    // where its pixels are one little-endian run, else rebuilt from the integer image.
    let row_bytes = width as usize * dtype.bytes();
    let mut stripes: Vec<Vec<Cow<[u8]>>> = (0..count).map(|_| Vec::new()).collect();
    let mut image = Vec::new();
    for (file, l) in files.iter().zip(&layouts) {
        let Ok(l) = l else { continue };
        if let ([r], false) = (&l.ranges[..], l.big_endian && dtype.bytes() > 1) {
            for (s, out) in stripes.iter_mut().enumerate() {
                let start = r.start + s * rows as usize * row_bytes;
                out.push(Cow::Borrowed(&file[start..start + stripe_rows(s) as usize * row_bytes]));
            }
        } else {
            l.extract(file, &mut image);
            for (s, out) in stripes.iter_mut().enumerate() {
                let px = s * rows as usize * width as usize;
                let mut bytes = Vec::new();
                dtype.encode_pixels(&image[px..px + stripe_rows(s) as usize * width as usize], false, &mut bytes);
                out.push(Cow::Owned(bytes));
            }
        }
    }
    drop(image);

    // The middle slice chooses the window's predictor and entropy stage (as an unsliced window
    // does on its probe frames), then the others are coded with that choice, in parallel. (Each
    // slice choosing on its own probe flips `balanced`'s choice of the adaptive stage from slice
    // to slice: ctc-fluo-nuclei in slices of 256 rows lost 10.5% that way, 0.8% with one choice.)
    let lossy = opts.bound != Bound::Lossless;
    let mut jobs: Vec<Vec<Cow<[u8]>>> = stripes;
    let middle = count / 2;
    let code = |s: usize, frames: &mut Vec<Cow<[u8]>>, chosen: Option<(super::PredictorId, Stage, bool)>| {
        let mut inner = Options {
            format: FormatSpec::Raw(RawSpec { width, height: stripe_rows(s), dtype, skip: 0 }),
            slice_pixels: 0,
            threads: 1,
            // (The stripes are what runs side by side: row slices in them would cost ratio
            // and gain no speed.)
            row_slices: false,
            reconstructions: lossy,
            ..opts.clone()
        };
        // (Only the middle slice chooses, or carries the choice of the stream's window before.)
        if s != middle {
            inner.carry = None;
        }
        if let Some((pid, stage, intensity)) = chosen {
            (inner.predictor, inner.stage) = (super::PredictorChoice::Fixed(pid), Some(stage));
            // (Under a bound, whether the middle slice's probe found the intensity context
            // worth its decoding time.)
            inner.intensity_context &= intensity || !lossy;
        }
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let enc = super::window::encode_window(&refs, &inner)?;
        // Free the stripes as soon as they are coded.
        frames.clear();
        Ok::<_, EncodeError>(enc)
    };
    let first = code(middle, &mut jobs[middle], None)?;
    let choice = first.choice.clone();
    // (Not with a model, whose candidates are not a fixed predictor, nor under `exhaustive`,
    // which chooses per frame.)
    let chosen = match (&first.model, opts.exhaustive, first.predictor) {
        (None, false, Some(pid)) => container::Blob::parse(&first.blob).ok().and_then(|b| {
            let intensity = b.header.entries.iter().any(|e| matches!(&e.body, Body::Frame(f) if f.intensity));
            match b.header.entries.first().map(|e| &e.body) {
                Some(Body::Frame(f)) => Some((pid, f.stage, intensity)),
                _ => None,
            }
        }),
        _ => None,
    };
    let coded = side_by_side(&mut jobs, threads(opts.threads), |s, frames| if s == middle { Ok(None) } else { code(s, frames, chosen).map(Some) });
    let mut first = Some(first);
    let slices = coded.into_iter().map(|r| r.map(|e| e.or_else(|| first.take()).expect("the middle slice"))).collect::<Result<Vec<Encoded>, _>>()?;

    // The outer blob: per file what belongs to the whole file, then the slice blobs.
    let mut coder = Coder::new(opts.level)?;
    let mut w = container::Writer::default();
    let (mut entries, mut reports) = (Vec::with_capacity(files.len()), Vec::with_capacity(files.len()));
    let mut k = 0;
    for (file, l) in files.iter().zip(&layouts) {
        let l = match l {
            Ok(l) => l,
            Err(reason) => {
                entries.push(opaque_entry(file, &mut coder, &mut w)?);
                reports.push(EntryReport::Opaque { reason: reason.clone() });
                continue;
            }
        };
        let sk = l.skeleton(file);
        let skeleton = if sk.is_empty() { Section::default() } else { w.section(&coder.compress_bytes(&sk)?) };
        // (`rel` is not sliced: the frame bound does not depend on the frame.)
        let bound = opts.bound.for_frame(dtype, &[]);
        let crc = if bound == FrameBound::Lossless {
            crc32c::crc32c(file)
        } else {
            let recon: Vec<u32> = slices.iter().flat_map(|e| e.recon[k].iter().copied()).collect();
            crc32c::crc32c(&l.assemble(file.len(), &sk, &recon).expect("a layout fits its own file"))
        };
        let escapes = slices.iter().map(|e| if let EntryReport::Frame { escapes } = e.entries[k] { escapes } else { 0 }).sum();
        let none = Section::default();
        entries.push(Entry {
            original_len: file.len() as u64,
            crc,
            body: Body::Frame(FrameEntry {
                big_endian: l.big_endian,
                key: k == 0,
                bound,
                ranges: l.ranges.clone(),
                stage: Stage::Zstd,
                skeleton,
                codes: none,
                escapes: none,
                n_escapes: escapes,
                motion: none,
                block_modes: false,
                subpel: false,
                carry: false,
                moved_context: false,
                intensity: false,
                sliced: false,
                exact_levels: false,
            }),
        });
        reports.push(EntryReport::Frame { escapes });
        k += 1;
    }
    let blobs = slices.iter().map(|e| w.section(&e.blob)).collect();
    let predictor = slices[0].predictor;
    let model = slices.iter().find_map(|e| e.model);
    let params = Params {
        dtype,
        width,
        height,
        predictor: predictor.unwrap_or(super::PredictorId::None),
        model: model.unwrap_or([0; 32]),
        coefs: Vec::new(),
        bound: opts.bound,
    };
    let blob = w.finish(&Header { params: Some(params), entries, slices: Some(Slicing { rows, blobs, headers: Vec::new() }) });
    Ok(Some(Encoded { blob, choice, predictor, model, entries: reports, recon: Vec::new() }))
}

/// The decoders of a version-7 blob's slices, positioned together.
pub(super) struct Slices {
    decoders: Vec<Decoder>,
    /// Chain position of the next frame.
    next: usize,
    /// Threads a frame is decoded on (0: one per core).
    pub(super) threads: usize,
}

impl Slices {
    /// A decoder for each slice of `sl`, whose sections lie in `bytes` from `payload_start` on
    /// (checked by [`container::Blob::parse`]).
    pub(super) fn open(bytes: &Arc<[u8]>, payload_start: usize, sl: &Slicing, models: &Arc<dyn ModelSource + Send + Sync>) -> Result<Slices, BlobError> {
        let decoders = sl
            .blobs
            .iter()
            .map(|s| {
                let start = payload_start + s.offset as usize;
                Decoder::with_models_in(bytes.clone(), start..start + s.len as usize, models.clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Slices { decoders, next: 0, threads: 0 })
    }

    pub(super) fn position(&self) -> usize {
        self.next
    }

    pub(super) fn restart(&mut self) {
        self.next = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.decoders.len()
    }

    /// Decode the next frame of every slice (entry `entry` of the outer blob) into `image`, the
    /// integer image of the whole frame.
    pub(super) fn decode_next(&mut self, entry: usize, image: &mut Vec<u32>) -> Result<(), BlobError> {
        let k = self.next;
        // Each slice's rows of the image, filled by the thread that decodes the slice.
        let lens: Vec<usize> = self.decoders.iter().map(|d| d.header().params.as_ref().map_or(0, |p| p.width as usize * p.height as usize)).collect();
        image.clear();
        image.resize(lens.iter().sum(), 0);
        let mut rest = &mut image[..];
        let mut work = Vec::with_capacity(self.decoders.len());
        for (d, &n) in self.decoders.iter_mut().zip(&lens) {
            let (rows, tail) = rest.split_at_mut(n);
            work.push((d, rows));
            rest = tail;
        }
        let results = side_by_side(&mut work, threads(self.threads), |s, (d, rows)| {
            let img = d.image(k).map_err(|e| BlobError::Decode { entry, why: format!("slice {s}: {e}") })?;
            if img.len() != rows.len() {
                return Err(BlobError::Decode { entry, why: format!("slice {s}: {} pixels for {}", img.len(), rows.len()) });
            }
            rows.copy_from_slice(img);
            Ok(())
        });
        results.into_iter().collect::<Result<(), _>>()?;
        self.next += 1;
        Ok(())
    }
}
