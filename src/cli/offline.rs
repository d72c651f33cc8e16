//! `compress`, `decompress`, `verify`: the codec on plain directories and archive files.

use super::CodecArgs;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;
use tezipfs::archive;
use tezipfs::codec::container::Body;
use tezipfs::codec::predict::{hash_hex, Model, ModelSource, PredictError};
use tezipfs::codec::quantizer::FrameBound;
use tezipfs::codec::window::{encode_window, Choice, EntryReport, WindowPlanner, CARRY_WINDOWS};
use tezipfs::codec::{analyze, Decoder, Options};

/// Regular files of a directory in natural name order.
pub fn list_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            files.push(e.path());
        }
    }
    files.sort_by(|a, b| tezipfs::sortname::natural_cmp(a.file_name().unwrap_or_default().as_bytes(), b.file_name().unwrap_or_default().as_bytes()));
    Ok(files)
}

pub(super) fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ProgressBar::new(total) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

struct Job {
    seq: usize,
    names: Vec<Vec<u8>>,
    files: Vec<Vec<u8>>,
}

/// The choices of the windows that lead each group of [`CARRY_WINDOWS`] windows: the others of
/// the group are coded with their leader's choice (`codec::window::Choice`), whichever thread
/// codes them, so the archive does not depend on the number of threads. (The mount carries a
/// directory's choice from each window to the next instead, and the window after one whose bits a
/// pixel moved by more than `CARRY_DRIFT` chooses again; here the windows of a group are coded
/// side by side, so only the codec's own guard holds: a carried window is never larger than its
/// frames under plain zstd.)
#[derive(Default)]
struct Leaders {
    /// By group: `None` until its leader is done, then its choice (`None` inside: none to carry).
    choices: std::sync::Mutex<Vec<Option<Option<Choice>>>>,
    done: std::sync::Condvar,
}

impl Leaders {
    fn group(seq: usize) -> usize {
        seq / CARRY_WINDOWS as usize
    }

    fn leads(seq: usize) -> bool {
        seq % CARRY_WINDOWS as usize == 0
    }

    fn publish(&self, seq: usize, choice: Option<Choice>) {
        let mut m = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        let g = Self::group(seq);
        if m.len() <= g {
            m.resize(g + 1, None);
        }
        // (Only a group's leader publishes; its first word stands.)
        m[g].get_or_insert(choice);
        self.done.notify_all();
    }

    /// The choice of `seq`'s leader, once it is coded.
    fn wait(&self, seq: usize) -> Option<Choice> {
        let g = Self::group(seq);
        let mut m = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(Some(c)) = m.get(g) {
                return c.clone();
            }
            m = self.done.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Publishes "no choice" for a leader whose coding ended without publishing one (an error, a
/// panic), so that its followers do not wait for ever.
struct Publish<'a> {
    leaders: &'a Leaders,
    seq: usize,
    choice: Option<Option<Choice>>,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        self.leaders.publish(self.seq, self.choice.take().flatten());
    }
}

pub fn compress(dir: &Path, out: &Path, args: &CodecArgs, threads: Option<usize>) -> anyhow::Result<()> {
    let loaded = args.load_model()?;
    // Windows are coded in parallel: one libtorch thread each.
    if loaded.is_some() {
        tch::set_num_threads(1);
    }
    // The model file the blobs may need, embedded before the first that does: (hash, bytes).
    let (model_file, model) = match loaded {
        Some((f, m)) => (Some(f), Some(m)),
        None => (None, None),
    };
    let opts = args.options(model);
    let files = list_files(dir)?;
    if files.is_empty() {
        bail!("{} holds no files to compress", dir.display());
    }
    let total: u64 = files.iter().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    // Windows are coded in parallel; the slices of a window's frames take the threads that
    // fewer windows than threads leave (one window: all of them).
    let mut opts = opts;
    opts.threads = (threads / files.len().div_ceil(args.window.max(1)).clamp(1, threads)).max(1);
    let tmp = out.with_extension("partial");
    let mut w =
        archive::Writer::new(BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?), opts.model.is_some())?;
    let pb = bar(total, "compress");
    let start = Instant::now();
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads);
    let job_rx = std::sync::Mutex::new(job_rx);
    let (res_tx, res_rx) = mpsc::channel::<anyhow::Result<(usize, Vec<Vec<u8>>, Vec<u8>, u64, usize, bool)>>();
    let mut written = 0u64;
    let mut opaque = 0usize;
    let leaders = Leaders::default();
    let all_threads = threads;
    let carried = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> anyhow::Result<()> {
        for _ in 0..threads {
            let (job_rx, res_tx, opts, leaders, carried, all_threads) = (&job_rx, res_tx.clone(), &opts, &leaders, &carried, all_threads);
            s.spawn(move || loop {
                let job = match job_rx.lock().map(|rx| rx.recv()) {
                    Ok(Ok(j)) => j,
                    _ => return,
                };
                let refs: Vec<&[u8]> = job.files.iter().map(|f| &f[..]).collect();
                let bytes: u64 = refs.iter().map(|f| f.len() as u64).sum();
                // A group's leader chooses; the others wait for its choice and code with it.
                let mut publish = (Leaders::leads(job.seq) && !args.choose_every_window).then(|| Publish { leaders, seq: job.seq, choice: None });
                let r = if args.choose_every_window {
                    encode_window(&refs, opts)
                } else if publish.is_some() {
                    // (The group's other windows wait for it: it takes every thread.)
                    encode_window(&refs, &Options { threads: all_threads, ..opts.clone() })
                } else {
                    encode_window(&refs, &Options { carry: leaders.wait(job.seq), ..opts.clone() })
                };
                match (&r, &mut publish) {
                    (Ok(e), Some(p)) => p.choice = Some(e.choice.clone()),
                    (Ok(e), None) if e.choice.as_ref().is_some_and(|c| c.carried() > 0) => {
                        carried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
                drop(publish);
                let r = r.map(|e| {
                    let mut opaque = 0;
                    for (n, rep) in job.names.iter().zip(&e.entries) {
                        if let EntryReport::Opaque { reason } = rep {
                            tracing::debug!(file = %String::from_utf8_lossy(n), %reason, "stored whole");
                            opaque += 1;
                        }
                    }
                    (job.seq, job.names, e.blob, bytes, opaque, e.model.is_some())
                });
                if res_tx.send(r.map_err(Into::into)).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        // Producer: read files in order, cut windows, hand them to the workers.
        let producer = s.spawn(|| -> anyhow::Result<()> {
            let mut planner = WindowPlanner::new(args.window);
            let mut job = Job { seq: 0, names: vec![], files: vec![] };
            for f in &files {
                let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                let a = analyze(&bytes, &opts.format);
                if planner.push(&a) && !job.files.is_empty() {
                    let seq = job.seq + 1;
                    job_tx.send(std::mem::replace(&mut job, Job { seq, names: vec![], files: vec![] })).ok();
                }
                job.names.push(f.file_name().unwrap_or_default().as_bytes().to_vec());
                job.files.push(bytes);
            }
            if !job.files.is_empty() {
                job_tx.send(job).ok();
            }
            drop(job_tx);
            Ok(())
        });
        // Writer: records in window order.
        let mut pending = BTreeMap::new();
        let mut next = 0usize;
        for r in res_rx {
            let (seq, names, blob, bytes, n_opaque, uses_model) = r?;
            pending.insert(seq, (names, blob, bytes, uses_model));
            opaque += n_opaque;
            while let Some((names, blob, bytes, uses_model)) = pending.remove(&next) {
                if let (true, Some((hash, file))) = (uses_model, &model_file) {
                    w.model(*hash, file)?;
                }
                w.record(&names, &blob)?;
                written += blob.len() as u64;
                pb.inc(bytes);
                next += 1;
            }
        }
        producer.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        Ok(())
    })?;
    let mut w = w.into_inner();
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, out)?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(out)?.len();
    println!(
        "compressed {} files ({:.1} MB) into {} ({:.1} MB, blobs {:.1} MB): ratio {:.3}, {:.1} MB/s with {} threads; {} stored whole; \
         {} windows coded with the choice of their group's first",
        files.len(),
        total as f64 / 1e6,
        out.display(),
        size as f64 / 1e6,
        written as f64 / 1e6,
        total as f64 / size as f64,
        mbps(total, secs),
        threads,
        opaque,
        carried.into_inner()
    );
    Ok(())
}

/// The models an archive embeds, made into running models when a blob first needs them.
struct Embedded {
    files: std::collections::HashMap<[u8; 32], Vec<u8>>,
    device: tezipfs::model::DeviceChoice,
    loaded: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::sync::Arc<dyn Model>>>,
}

impl ModelSource for Embedded {
    fn model(&self, hash: &[u8; 32]) -> Result<std::sync::Arc<dyn Model>, PredictError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = loaded.get(hash) {
            return Ok(m.clone());
        }
        let bytes = self.files.get(hash).ok_or_else(|| PredictError::MissingModel(hash_hex(hash)))?;
        let m = tezipfs::model::load(bytes, tezipfs::model::Backend::Torch(self.device))
            .map_err(|e| PredictError::Model { model: hash_hex(hash), why: e.to_string() })?;
        loaded.insert(*hash, m.clone());
        Ok(m)
    }
}

/// Call `f(name, decoded bytes, decoder, entry)` for every file of an archive, in order.
fn for_each_file(
    input: &Path,
    device: tezipfs::model::DeviceChoice,
    mut f: impl FnMut(&[u8], Vec<u8>, &Decoder, usize) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, usize)> {
    let file = std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let mut r = archive::Reader::new(BufReader::new(file))?;
    let (mut total, mut count) = (0u64, 0usize);
    let mut models: Option<std::sync::Arc<Embedded>> = None;
    while let Some(rec) = r.next_record()? {
        let ri = r.records_read() - 1;
        // Models come before the first blob that needs them.
        if models.as_ref().is_none_or(|m| m.files.len() != r.models().len()) {
            models = Some(std::sync::Arc::new(Embedded { files: r.models().clone(), device, loaded: Default::default() }));
        }
        let source = models.clone().expect("set above");
        let mut dec = Decoder::with_models(rec.blob.into(), source).map_err(|e| archive::ArchiveError::Blob { record: ri, source: e })?;
        if dec.len() != rec.names.len() {
            bail!("archive record {ri}: {} names for {} entries", rec.names.len(), dec.len());
        }
        for i in 0..dec.len() {
            let name = &rec.names[i];
            let bytes = dec.decode(i, |_, _| {}).with_context(|| format!("cannot decode {}", String::from_utf8_lossy(name)))?;
            total += bytes.len() as u64;
            count += 1;
            f(name, bytes, &dec, i)?;
        }
    }
    Ok((total, count))
}

fn safe_name(name: &[u8]) -> anyhow::Result<PathBuf> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." || name.contains(&0) {
        bail!("archive holds an unsafe file name {:?}", String::from_utf8_lossy(name));
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(name.to_vec())))
}

pub fn decompress(input: &Path, out_dir: &Path, device: tezipfs::model::DeviceChoice) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let start = Instant::now();
    let (total, count) = for_each_file(input, device, |name, bytes, _, _| {
        let path = out_dir.join(safe_name(name)?);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))
    })?;
    let secs = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(input)?.len();
    println!(
        "decompressed {count} files ({:.1} MB) from {} ({:.1} MB): ratio {:.3}, {:.1} MB/s",
        total as f64 / 1e6,
        input.display(),
        size as f64 / 1e6,
        total as f64 / size as f64,
        mbps(total, secs)
    );
    Ok(())
}

pub fn verify(input: &Path, against: Option<&Path>, device: tezipfs::model::DeviceChoice) -> anyhow::Result<()> {
    let start = Instant::now();
    let (mut exact, mut bounded, mut max_err) = (0usize, 0usize, 0f64);
    let (total, count) = for_each_file(input, device, |name, bytes, dec, i| {
        let Some(dir) = against else { return Ok(()) };
        let path = dir.join(safe_name(name)?);
        let orig = std::fs::read(&path).with_context(|| format!("cannot read original {}", path.display()))?;
        if orig == bytes {
            exact += 1;
            return Ok(());
        }
        let who = String::from_utf8_lossy(name).into_owned();
        let Some(layout) = dec.layout(i) else { bail!("{who}: differs from the original") };
        if orig.len() != bytes.len() || layout.skeleton(&orig) != layout.skeleton(&bytes) {
            bail!("{who}: bytes outside the pixels differ from the original");
        }
        // A frame may differ only when it was coded under a bound, and only within it.
        let bound = match &dec.header().entries[i].body {
            Body::Frame(f) if f.bound != FrameBound::Lossless => f.bound,
            _ => bail!("{who}: differs from the original, but was coded lossless"),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        layout.extract(&orig, &mut a);
        layout.extract(&bytes, &mut b);
        for (k, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let (xv, yv) = (layout.dtype.value(x), layout.dtype.value(y));
            if !bound.holds(layout.dtype, x, y) {
                bail!("{who}: pixel {k} is {xv} in the original but {yv} decoded, outside the bound {bound:?} it was coded under");
            }
            if x != y {
                let e = (xv - yv).abs();
                max_err = max_err.max(if e.is_nan() { f64::INFINITY } else { e });
            }
        }
        bounded += 1;
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    println!("verified {count} files ({:.1} MB): every checksum matches, {:.1} MB/s", total as f64 / 1e6, mbps(total, secs));
    if against.is_some() {
        println!("against originals: {exact} bit-exact, {bounded} error-bounded (max abs error {max_err})");
    }
    Ok(())
}
