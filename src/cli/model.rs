//! `tezipfs model ...`: the learned predictor's models (training; more subcommands will join).

use super::admin::{getxattr, setxattr};
use super::offline::list_files;
use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tezipfs::codec::predict::{hash_hex, Geometry};
use tezipfs::codec::{analyze, Analysis, Bound, DType, FormatSpec, Layout};
use tezipfs::model::train::{self, Degrade, DeviceChoice, TrainOptions};
use tezipfs::model::{file, Size};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Train a model on a directory of frames (in natural name order) and write it to a file.
    /// Train on frames like the ones it will code, under the bound it will code them with.
    Train(TrainArgs),
    /// Store a model file in a mounted filesystem under a name (the daemon reads and checks
    /// the file; an existing name is moved to the new model, blobs coded with the old one keep
    /// reading).
    Import {
        /// The mount point (or any directory of the mount).
        mountpoint: PathBuf,
        model_file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Make a directory (and everything below it without its own setting) use a model:
    /// sets `user.tezip.model` to NAME (`auto`: train one for the directory; `none`: no model).
    Assign { dir: PathBuf, name: String },
    /// The models of a mounted filesystem: names, hash, blobs that need each, what they were
    /// trained for.
    List {
        mountpoint: PathBuf,
        /// The listing as JSON, one object per line.
        #[arg(long)]
        json: bool,
    },
    /// One model of a mounted filesystem, by name or hash.
    Show { mountpoint: PathBuf, name: String },
    /// Copy a model of a mounted filesystem to a file (read from the store, so it needs read
    /// access to the store directory).
    Export { mountpoint: PathBuf, name: String, out: PathBuf },
    /// Remove a model's name; the model itself goes once no blob, name or directory needs it.
    Remove { mountpoint: PathBuf, name: String },
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Directory of frame files (files that are not frames are skipped).
    pub frames_dir: PathBuf,
    /// Model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Where the pixels are: `auto` (TIFF by its header), `tiff`, or `raw:WxH:TYPE[:skip=N]`.
    #[arg(long, default_value = "auto")]
    pub format: FormatSpec,
    /// The bound the model will code under: `lossless` or `abs:E` (the model learns from frames
    /// carrying the reconstruction error of that bound).
    #[arg(long, default_value = "lossless")]
    pub bound: Bound,
    /// Model size: `small` (runs on a CPU) or `prednet` (the paper's size, for GPU servers).
    #[arg(long, default_value = "small")]
    pub size: Size,
    /// Training time (wall clock).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// `auto` (CUDA when available), `cpu` or `cuda`.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Seed of the initial weights and of the training crops (same seed, same data, same
    /// device and steps: same model).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// CPU threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many steps even if time is left.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Steps of 4096 pixels for the causal stage (predictor `causal`, trained after the PredNet
    /// within a quarter of `--minutes` and at most two minutes); 0: a model without it.
    #[arg(long, default_value_t = 6000)]
    pub causal_steps: u64,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Train(args) => train_cmd(&args),
        ModelCommand::Import { mountpoint, model_file, name } => {
            let abs = model_file.canonicalize().with_context(|| format!("model file {}", model_file.display()))?;
            let v = format!("{name}={}", abs.display());
            setxattr(&mountpoint, "user.tezip.model.import", v.as_bytes())?;
            let m = find_model(&mountpoint, &name)?;
            println!("imported {} as {name}: model {}", model_file.display(), m["hash"].as_str().unwrap_or("?"));
            Ok(())
        }
        ModelCommand::Assign { dir, name } => {
            setxattr(&dir, "user.tezip.model", name.as_bytes())?;
            println!("{}: user.tezip.model={name} (frames compressed from now on)", dir.display());
            Ok(())
        }
        ModelCommand::List { mountpoint, json } => {
            let models = listing(&mountpoint)?;
            if json {
                for m in &models {
                    println!("{m}");
                }
                return Ok(());
            }
            println!("{:<24} {:<16} {:>7} {:>9} {:<8} {:<10} {:>6} {:>9}", "name", "hash", "blobs", "bytes", "size", "bound", "dtype", "loss");
            for m in &models {
                let names: Vec<String> = m["names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(String::from))
                    .chain(m["trained_for_dirs"].as_array().into_iter().flatten().map(|d| format!("auto:dir {d}")))
                    .collect();
                let i = &m["model"];
                println!(
                    "{:<24} {:<16} {:>7} {:>9} {:<8} {:<10} {:>6} {:>9}",
                    if names.is_empty() { "(unnamed)".to_string() } else { names.join(",") },
                    &m["hash"].as_str().unwrap_or("?")[..16],
                    m["blobs"],
                    m["bytes"],
                    i["size"].as_str().unwrap_or("-"),
                    i["bound"].as_str().unwrap_or("-"),
                    i["dtype"].as_str().unwrap_or("-"),
                    i["loss"].as_f64().map_or("-".into(), |l| format!("{l:.3}")),
                );
            }
            Ok(())
        }
        ModelCommand::Show { mountpoint, name } => {
            println!("{}", serde_json::to_string_pretty(&find_model(&mountpoint, &name)?)?);
            Ok(())
        }
        ModelCommand::Export { mountpoint, name, out } => {
            let m = find_model(&mountpoint, &name)?;
            let hash = m["hash"].as_str().unwrap_or_default().to_string();
            let path = store_of(&mountpoint)?.join("models").join(&hash);
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {} (exporting needs read access to the store)", path.display()))?;
            if file::hash(&bytes) != tezipfs::model::registry::parse_hash(&hash).unwrap_or_default() {
                bail!("{}: the stored model does not match its hash", path.display());
            }
            write_durably(&out, &bytes)?;
            println!("exported model {name} ({hash}) to {}", out.display());
            Ok(())
        }
        ModelCommand::Remove { mountpoint, name } => {
            setxattr(&mountpoint, "user.tezip.model.remove", name.as_bytes())?;
            println!("removed the name {name}");
            Ok(())
        }
    }
}

/// The models of a mount (`user.tezip.models`, one JSON object per line).
fn listing(mountpoint: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let raw = getxattr(mountpoint, "user.tezip.models")?;
    String::from_utf8_lossy(&raw).lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).context("a malformed model listing")).collect()
}

/// A model by name or (a prefix of at least 8 digits of) its hash.
fn find_model(mountpoint: &Path, name: &str) -> anyhow::Result<serde_json::Value> {
    let models = listing(mountpoint)?;
    let hit = models
        .iter()
        .find(|m| m["names"].as_array().into_iter().flatten().any(|n| n.as_str() == Some(name)))
        .or_else(|| models.iter().find(|m| name.len() >= 8 && m["hash"].as_str().is_some_and(|h| h.starts_with(name))));
    hit.cloned().with_context(|| format!("{}: no model named {name:?} (tezipfs model list shows the models)", mountpoint.display()))
}

/// The store directory of the tezipfs mount holding `path` (from the mount table: the file
/// system is named `tezipfs:<store>`).
fn store_of(path: &Path) -> anyhow::Result<PathBuf> {
    let canon = path.canonicalize().with_context(|| format!("{}", path.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut best: Option<(usize, PathBuf)> = None;
    for l in mounts.lines() {
        let mut f = l.split(' ');
        let (Some(src), Some(dir)) = (f.next(), f.next()) else { continue };
        let dir = dir.replace("\\040", " ");
        if let Some(store) = src.strip_prefix("tezipfs:") {
            if canon.starts_with(&dir) && best.as_ref().is_none_or(|b| dir.len() > b.0) {
                best = Some((dir.len(), PathBuf::from(store.replace("\\040", " "))));
            }
        }
    }
    best.map(|b| b.1).with_context(|| format!("{} is not on a tezipfs mount", path.display()))
}

/// The frames of a directory: every file that `format` finds a frame in, in natural name order,
/// all of the first frame's geometry. Everything else is skipped with a note.
fn read_frames(dir: &Path, format: &FormatSpec) -> anyhow::Result<(Vec<Vec<u32>>, Geometry)> {
    let files = list_files(dir)?;
    if files.is_empty() {
        bail!("{} holds no files to train on", dir.display());
    }
    let mut frames = Vec::new();
    let mut first: Option<Layout> = None;
    let mut skipped = 0usize;
    for f in &files {
        let name = String::from_utf8_lossy(f.file_name().unwrap_or_default().as_bytes()).into_owned();
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        match analyze(&bytes, format) {
            Analysis::Opaque(why) => {
                tracing::info!("skipping {name}: {why}");
                skipped += 1;
            }
            Analysis::Frame(layout) => {
                if let Some(l) = &first {
                    if !l.same_geometry(&layout) {
                        tracing::info!(
                            "skipping {name}: {}x{} {} frame, the first frame is {}x{} {}",
                            layout.width,
                            layout.height,
                            layout.dtype,
                            l.width,
                            l.height,
                            l.dtype
                        );
                        skipped += 1;
                        continue;
                    }
                }
                let mut img = Vec::new();
                layout.extract(&bytes, &mut img);
                frames.push(img);
                first.get_or_insert(layout);
            }
        }
    }
    let Some(l) = first else {
        bail!("none of the {} files in {} is a frame under --format {format} (raw frames need --format raw:WxH:TYPE)", files.len(), dir.display());
    };
    if frames.len() < 2 {
        bail!(
            "{} holds only {} frame ({} files skipped): training needs at least 2 (a key frame and a frame to predict)",
            dir.display(),
            frames.len(),
            skipped
        );
    }
    if skipped > 0 {
        eprintln!("note: {skipped} of {} files are not {}x{} {} frames and were skipped", files.len(), l.width, l.height, l.dtype);
    }
    Ok((frames, Geometry::of(l.width as usize, l.height as usize, l.dtype)))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a
/// temporary file beside it, synced, renamed over it, the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp_name = path.file_name().context("the output path has no file name")?.to_os_string();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

fn train_cmd(a: &TrainArgs) -> anyhow::Result<()> {
    // Arguments first, so a mistake is reported before minutes of reading and training.
    Degrade::new(a.bound, DType::U16)?;
    if !(a.minutes.is_finite() && a.minutes > 0.0) {
        bail!("--minutes must be a positive number, got {}", a.minutes);
    }
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    a.device.device().map_err(anyhow::Error::msg)?;
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!("cannot write {}: {} is not a directory", a.out.display(), parent.display());
        }
    }
    let (frames, geom) = read_frames(&a.frames_dir, &a.format)?;
    let opts = TrainOptions {
        size: a.size,
        arch: None,
        bound: a.bound,
        minutes: a.minutes,
        max_steps: a.max_steps,
        device: a.device,
        seed: a.seed,
        threads: a.threads,
        hyper: Default::default(),
        causal: (a.causal_steps > 0).then(|| train::causal::CausalOptions { steps: a.causal_steps, ..Default::default() }),
    };
    eprintln!(
        "training a {} model on {} frames of {}x{} {} for {} ({} minutes at most)",
        a.size,
        frames.len(),
        geom.width,
        geom.height,
        geom.dtype,
        a.bound,
        a.minutes
    );
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ProgressBar::new(1000) } else { ProgressBar::hidden() };
    pb.set_style(ProgressStyle::with_template("train [{bar:40}] {msg}").expect("valid template").progress_chars("=> "));
    let trained = train::train_float(&frames, geom, &opts, &mut |p| {
        pb.set_position((p.done * 1000.0) as u64);
        let left = Duration::from_secs_f64((p.budget.as_secs_f64() * (1.0 - p.done).max(0.0)).min(p.budget.as_secs_f64() - p.elapsed.as_secs_f64()).max(0.0));
        pb.set_message(format!("step {} loss {:.3} {:.1} frames/s {}s left", p.step, p.loss, p.frames_per_sec, left.as_secs()));
    })?;
    pb.finish_and_clear();
    let mut model = trained.export()?;
    if opts.causal.is_some() {
        eprintln!("training the causal stage ({} steps at most)", a.causal_steps);
    }
    let causal = train::add_causal(&mut model, &frames, geom, &opts)?;
    let bytes = file::to_bytes(&model);
    write_durably(&a.out, &bytes)?;
    println!(
        "trained {} model{} ({} frames, {} steps in {:.1} s, final loss {:.3} error units) -> {} ({} bytes)",
        model.meta.size,
        if model.norm.scale.is_some() { " with a noise scale" } else { "" },
        model.meta.frames,
        model.meta.steps,
        trained.elapsed.as_secs_f64(),
        model.meta.loss,
        a.out.display(),
        bytes.len()
    );
    if let Some(r) = causal {
        println!(
            "causal stage: {} steps in {:.1} s; rms error on its training pixels {:.3} (float {:.3}, the previous frame {:.3})",
            r.steps,
            r.elapsed.as_secs_f64(),
            r.rmse_int,
            r.rmse_float,
            r.rmse_previous
        );
    }
    println!("model hash {}", hash_hex(&file::hash(&bytes)));
    Ok(())
}
