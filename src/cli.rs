//! Subcommands. Each lives in its own file; this one holds the argument definitions.

mod admin;
mod bench;
mod bench_genie;
mod bench_model;
mod bench_speed;
mod check;
mod fixtures;
mod model;
mod mount;
mod offline;
mod probe;
mod report;
mod service;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tezipfs::codec::entropy::EntropyChoice;
use tezipfs::codec::{Bound, FormatSpec, PredictorChoice};

#[derive(Parser)]
#[command(name = "tezipfs", version, about = "Compressing filesystem and codec for detector frame sequences")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether this runs the daemon (a mount) rather than a command that reports and exits.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Mount(_))
    }
}

/// Codec settings shared by the commands that compress.
#[derive(clap::Args, Clone)]
pub struct CodecArgs {
    /// Error bound: `lossless`, `abs:E` (|x'-x| <= E), `rel:R` (E = R x value range of each
    /// frame) or `pwrel:P` (|x'-x| <= P x |x|).
    #[arg(long, default_value = "lossless")]
    pub bound: Bound,
    /// Predictor: `auto` (try each on every window and keep the smallest), `previous`
    /// (previous frame; key frames spatially predicted), `previous+med`, `blend`, `spatial`,
    /// `linear` (least-squares blend of spatial and temporal neighbours, fitted per window),
    /// `motion` / `motion+med` (as `previous` / `previous+med`, the previous frame, or the one
    /// before it, moved per 16x16 block) or `none`.
    #[arg(long, default_value = "auto")]
    pub predictor: PredictorChoice,
    /// Where the pixels are: `auto` (TIFF by its header), `tiff`, or `raw:WxH:TYPE[:skip=N]`
    /// with TYPE one of u8 u16 u32 i8 i16 i32 f32 (little-endian) and N header bytes to keep.
    /// Files that do not match are stored whole (zstd), never refused.
    #[arg(long, default_value = "auto")]
    pub format: FormatSpec,
    /// Frames per window: a key frame then up to N-1 predicted frames. Larger windows code
    /// smaller; reading one frame decodes up to N frames.
    #[arg(long, default_value_t = tezipfs::codec::window::DEFAULT_WINDOW)]
    pub window: usize,
    /// zstd level of the entropy stage.
    #[arg(long, default_value_t = tezipfs::codec::window::DEFAULT_LEVEL)]
    pub level: i32,
    /// Try every predictor and entropy stage on every frame, not only on the first frames of
    /// each window (slower, sometimes smaller).
    #[arg(long)]
    pub exhaustive: bool,
    /// Entropy stages: `fast` (zstd stages only, fastest to read), `balanced` (context rANS
    /// where it saves at least 10% of the size over zstd, the adaptive context coder where it
    /// saves another 3%) or `best` (smallest output).
    #[arg(long, default_value = "balanced")]
    pub entropy: EntropyChoice,
    /// A learned model file (`tezipfs model train`): under `--predictor auto` it is tried beside
    /// the classical predictors on every window and kept where it codes smaller, under
    /// `prednet` it is always used. The archive embeds it, so it decodes anywhere.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the model runs: `auto` (CUDA when present), `cpu` or `cuda`. Same bytes on every
    /// device.
    #[arg(long, default_value = "auto")]
    pub device: tezipfs::model::DeviceChoice,
    /// Frames of more pixels than this are cut into horizontal slices of at most this many
    /// pixels, coded independently, so that one frame is coded and decoded on every core (0:
    /// never; `docs/results/slices.txt` measures the cost in ratio).
    #[arg(long, default_value_t = tezipfs::codec::slices::DEFAULT_SLICE_PIXELS)]
    pub slice_pixels: usize,
    /// Write blobs of at most this blob format version, which an older build reads (10: no row
    /// slices; default: the newest, see `tezipfs info`).
    #[arg(long, default_value_t = tezipfs::codec::container::VERSION, value_parser = write_version)]
    pub write_version: u16,
    /// Choose the predictor and entropy stage in every window, instead of coding each group
    /// of 8 windows with the choice of its first (the same bytes where every window would
    /// choose the same; about a third less encoding time).
    #[arg(long)]
    pub choose_every_window: bool,
}

/// A `--write-version` value (see [`tezipfs::codec::window::check_write_version`]).
pub fn write_version(s: &str) -> Result<u16, String> {
    let v: u16 = s.parse().map_err(|_| format!("{s:?} is not a version number"))?;
    tezipfs::codec::window::check_write_version(v)
}

impl CodecArgs {
    /// The `--model` file: its hash and bytes, and the model running on `--device`.
    pub fn load_model(&self) -> anyhow::Result<Option<(([u8; 32], Vec<u8>), tezipfs::codec::predict::ModelHandle)>> {
        let Some(path) = &self.model else { return Ok(None) };
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read model file {}: {e}", path.display()))?;
        let model =
            tezipfs::model::load(&bytes, tezipfs::model::Backend::Torch(self.device)).map_err(|e| anyhow::anyhow!("model file {}: {e}", path.display()))?;
        Ok(Some(((tezipfs::model::file::hash(&bytes), bytes), tezipfs::codec::predict::ModelHandle(model))))
    }

    /// The codec options (`model`: the loaded `--model`, see [`CodecArgs::load_model`]).
    pub fn options(&self, model: Option<tezipfs::codec::predict::ModelHandle>) -> tezipfs::codec::Options {
        let mut opts = tezipfs::codec::Options {
            format: self.format.clone(),
            bound: self.bound,
            predictor: self.predictor,
            level: self.level,
            exhaustive: self.exhaustive,
            entropy: self.entropy,
            model,
            slice_pixels: self.slice_pixels,
            // One thread: what `bench` measures; `compress` and the engine set their own.
            threads: 1,
            ..Default::default()
        };
        opts.write_at_most(self.write_version);
        opts
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Compress every file of a directory (in natural name order) into one archive.
    Compress {
        /// Directory of frame files.
        frames_dir: PathBuf,
        /// Archive to write.
        out: PathBuf,
        #[command(flatten)]
        codec: CodecArgs,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Restore the files of an archive into a directory.
    Decompress {
        /// Archive written by `compress`.
        input: PathBuf,
        /// Directory to write the files into (created if missing).
        out_dir: PathBuf,
        /// Where embedded models run: `auto`, `cpu` or `cuda`.
        #[arg(long, default_value = "auto")]
        device: tezipfs::model::DeviceChoice,
    },
    /// Decode an archive and check every checksum; with --against, compare with the originals
    /// (bit-exact, or the measured maximum error for error-bounded frames).
    Verify {
        input: PathBuf,
        /// Directory holding the original files.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Where embedded models run: `auto`, `cpu` or `cuda`.
        #[arg(long, default_value = "auto")]
        device: tezipfs::model::DeviceChoice,
    },
    /// Measure ratio and speed on frame sequences next to zstd-3 and zstd-19.
    Bench {
        /// Directories in the `frame_NNNNN.raw` + `meta.json` layout (default: the sets in
        /// ../shared/data and generated fixtures).
        dirs: Vec<PathBuf>,
        /// Skip the generated fixture sequences.
        #[arg(long)]
        no_fixtures: bool,
        /// Skip zstd-19 (slow).
        #[arg(long)]
        quick: bool,
        /// Frames per window.
        #[arg(long, default_value_t = tezipfs::codec::window::DEFAULT_WINDOW)]
        window: usize,
        /// zstd level of the entropy stage.
        #[arg(long, default_value_t = tezipfs::codec::window::DEFAULT_LEVEL)]
        level: i32,
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Measure the learned predictor instead: train a model on the first half of each set
        /// and code the second half with and without it, next to the oracle (fixtures) and the
        /// noise floor (see --model-minutes, --model-bounds).
        #[arg(long)]
        model: bool,
        #[command(flatten)]
        model_args: bench_model::ModelBenchArgs,
        /// Measure speed only: the default codec (lossless and the `--bounds`) at each of
        /// `--threads`, the median of `--repeat` runs, wall clock and CPU time.
        #[arg(long)]
        speed: bool,
        /// With --speed: error bounds (0: lossless), comma-separated.
        #[arg(long, default_value = "0,2", value_delimiter = ',')]
        bounds: Vec<u32>,
        /// With --speed: thread counts, comma-separated.
        #[arg(long, default_value = "1,2", value_delimiter = ',')]
        threads: Vec<usize>,
        /// With --speed: runs per row (the median is printed).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// With --speed: code without the adaptive stage's row slices (container version 10 and
        /// older, one chain per frame), to compare ratio and speed with the default.
        #[arg(long)]
        no_row_slices: bool,
        /// With --speed: code each set's windows as one stream that carries each window's choice
        /// of predictor and entropy stage to the next (as the mount does for a directory's
        /// windows), instead of choosing in every window.
        #[arg(long)]
        carry: bool,
    },
    /// Generate a deterministic detector-like frame sequence (raw frames + meta.json, or TIFF).
    Fixtures {
        /// Directory to write.
        out_dir: PathBuf,
        /// Pixel type: u8, u16, u32 or f32.
        #[arg(long, default_value = "u16")]
        dtype: tezipfs::codec::DType,
        /// What the frames show: `detector` (a few drifting, diffusing features on a dark
        /// background), `particles` (many small bright particles moving a few pixels a frame),
        /// `speckle:MEAN[:FRAMES]` (photon counting: speckle at MEAN photons per pixel,
        /// decorrelating over FRAMES frames, default 30). meta.json holds the exact lossless
        /// floor (`noise_floor_bits`) of integer types.
        #[arg(long, default_value = "detector")]
        scene: tezipfs::fixtures::Scene,
        /// Frame size as WxH.
        #[arg(long, default_value = "512x512")]
        size: String,
        #[arg(long, default_value_t = 32)]
        frames: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write baseline TIFF files instead of raw.
        #[arg(long)]
        tiff: bool,
        /// Leave the exact floor out of meta.json: it costs more than generating the frames
        /// (about 4 s of one core a 4096x4096 frame), which matters for benchmarks of gigabytes.
        #[arg(long)]
        no_floor: bool,
    },
    /// Mount a store: detector software writes frames, analysts read them back.
    Mount(mount::MountArgs),
    /// Ratio, states, backlog and errors of a mounted directory (and its subdirectories).
    Stats {
        /// A directory on a tezipfs mount.
        path: PathBuf,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML page: ratio and stored bytes per directory, and the
        /// backlog over the last hour.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Choose an error bound: code a sample of a directory's frames lossless and under a range of
    /// bounds, and print ratio, PSNR, largest error and speed for each, with the noise floor.
    Probe(probe::ProbeArgs),
    /// Show or change the policy of a directory on a mount (wraps the user.tezip.* xattrs).
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Re-code the compressed files below a directory under its current policy.
    Recompress {
        /// A directory on a tezipfs mount.
        path: PathBuf,
    },
    /// Learned predictors: train a model on frames.
    Model {
        #[command(subcommand)]
        action: model::ModelCommand,
    },
    /// Check a store offline (no daemon on it): every blob's checksums, every index reference,
    /// orphans, models, link counts; report problems by path. Exit status as e2fsck: 0 clean,
    /// 1 errors corrected, 4 errors left uncorrected, 8 operational error.
    Fsck {
        /// The store directory (`mount --store`).
        store: PathBuf,
        /// Repair what can be repaired: remove what nothing refers to, fix link counts and
        /// counters, rebuild records from the blobs. Never removes a file that cannot be read.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also decode every blob entry and check each file's CRC32C (slower; the default
        /// checks the container and the CRC32C of every section).
        #[arg(long)]
        deep: bool,
    },
    /// Verify every blob of a mounted store online (checksums and full decode), throttled and
    /// resumable; reports damaged files by path. Exit status as fsck.
    Scrub {
        /// The mount point (its root directory).
        mountpoint: PathBuf,
        /// Read at most this many MB of blobs per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Start from the first blob (default: resume where the last scrub stopped).
        #[arg(long, conflicts_with = "resume")]
        restart: bool,
        /// Resume where the last scrub stopped (the default).
        #[arg(long)]
        resume: bool,
        /// Print the final status as JSON.
        #[arg(long)]
        json: bool,
        /// Start (or resume) the scrub and return; `tezipfs scrub` again follows it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the build: version, formats, libtorch and CUDA.
    Info,
}

#[derive(Subcommand)]
pub enum PolicyAction {
    /// Print the effective settings (inherited from parents and the config file).
    Get { path: PathBuf },
    /// Set settings: bound=lossless|abs:E|rel:R|pwrel:P, predictor=auto|previous|none,
    /// format=auto|tiff|raw:WxH:TYPE[:skip=N], window=N, model=NAME, entropy=fast|balanced|best.
    Set { path: PathBuf, settings: Vec<String> },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Compress { frames_dir, out, codec, threads } => offline::compress(&frames_dir, &out, &codec, threads),
        Command::Decompress { input, out_dir, device } => offline::decompress(&input, &out_dir, device),
        Command::Verify { input, against, device } => offline::verify(&input, against.as_deref(), device),
        Command::Bench { dirs, no_fixtures, window, json, model: true, model_args, .. } => {
            bench_model::run(&model_args, dirs, no_fixtures, window, json.as_deref())
        }
        Command::Bench { dirs, window, json, speed: true, bounds, threads, repeat, no_row_slices, carry, .. } => {
            bench_speed::run(dirs, window, &bounds, &threads, repeat, !no_row_slices, carry, json.as_deref())
        }
        Command::Bench { dirs, no_fixtures, quick, window, level, json, .. } => bench::run(dirs, no_fixtures, quick, window, level, json.as_deref()),
        Command::Fixtures { out_dir, dtype, scene, size, frames, seed, tiff, no_floor } => {
            fixtures::run(&out_dir, dtype, scene, &size, frames, seed, tiff, !no_floor)
        }
        Command::Mount(args) => mount::run(args),
        Command::Stats { path, json, html } => admin::stats(&path, json, html.as_deref()),
        Command::Probe(args) => probe::run(&args),
        Command::Policy { action: PolicyAction::Get { path } } => admin::policy_get(&path),
        Command::Policy { action: PolicyAction::Set { path, settings } } => admin::policy_set(&path, &settings),
        Command::Recompress { path } => admin::recompress(&path),
        Command::Fsck { store, repair, json, deep } => std::process::exit(check::fsck(&store, repair, json, deep)),
        Command::Scrub { mountpoint, rate, restart, json, no_wait, .. } => std::process::exit(check::scrub(&mountpoint, rate, restart, json, no_wait)),
        Command::Model { action } => model::run(action),
        Command::Info => {
            println!("tezipfs {}", env!("CARGO_PKG_VERSION"));
            println!("blob format version {}, archive format version {}", tezipfs::codec::container::VERSION, tezipfs::archive::VERSION);
            println!(
                "writes blob format version {}, or at most N with --write-version N ({} to {0}: for builds that read only up to N); reads 1 to {0}",
                tezipfs::codec::container::VERSION,
                tezipfs::codec::window::OLDEST_WRITABLE
            );
            let libs = tezipfs::model::cuda::load();
            println!("libtorch: CPU half linked, CUDA half {libs}; CUDA available: {} ({} devices)", tch::Cuda::is_available(), tch::Cuda::device_count());
            println!(
                "model file version {}; learned models run on {:?} (--device auto), {} libtorch threads",
                tezipfs::model::file::VERSION,
                tch::Device::cuda_if_available(),
                tch::get_num_threads()
            );
            Ok(())
        }
    }
}
