//! `tezipfs mount`: run the filesystem (foreground, or detached with `--daemon`).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tezipfs::engine::Engine;
use tezipfs::fs::FuseFs;
use tezipfs::index::{Index, SledStore};
use tezipfs::policy::ConfigFile;
use tezipfs::store::Store;
use tezipfs::vfs::{Config, Vfs};

use super::service;

/// The index's page cache unless configured (`--index-cache-mib`). sled's own default is 1 GiB:
/// a daemon on a store of a million files was 600 MiB above its fixed part
/// (`docs/results/bench-scale-1m.txt`); at 200,000 files the cache stays below this
/// (`docs/results/index-cache-200k.txt`).
const DEFAULT_INDEX_CACHE_MIB: u64 = 256;

#[derive(clap::Args, Clone)]
pub struct MountArgs {
    /// Store directory: index, staging files and blobs live here (created if missing).
    #[arg(long)]
    pub store: PathBuf,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Detach and run in the background (logs go to STORE/tezipfs.log).
    #[arg(long)]
    pub daemon: bool,
    /// Let every user use the mount (FUSE allow_other; needs user_allow_other in
    /// /etc/fuse.conf unless run as root). Off: only the owner and root.
    #[arg(long)]
    pub allow_other: bool,
    /// Leave permission checks to the filesystem instead of the kernel (not recommended).
    #[arg(long)]
    pub no_default_permissions: bool,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4)]
    pub fuse_threads: usize,
    /// Threads compressing in the background (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Decoded-frame cache budget in MiB, part of --memory-mib (default: a quarter of it, at most 1024).
    #[arg(long)]
    pub cache_mib: Option<u64>,
    /// The daemon's memory budget in MiB (default 4096): the decoded-frame cache, windows being
    /// compressed (a window waits for room; one too large is split) and kept decoders. About
    /// 120 MiB more is fixed (the program, libtorch's CPU half), plus the index's cache.
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// The index's page cache in MiB (default 256), beside --memory-mib: metadata of recently
    /// used files and directories. Left at sled's default (1 GiB) it grows with the store.
    #[arg(long)]
    pub index_cache_mib: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (`HOST:PORT`, e.g. 127.0.0.1:9877; port 0
    /// picks a free one, logged). Off by default.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Milliseconds a closed file must stay unwritten before it is compressed (default 2000).
    #[arg(long)]
    pub quiet_ms: Option<u64>,
    /// Milliseconds a directory must be idle before its last, short window is compressed
    /// (default 20000).
    #[arg(long)]
    pub tail_idle_ms: Option<u64>,
    /// Staging budget in MiB: above it the daemon warns and `stats` says so (writes go on).
    #[arg(long)]
    pub staging_budget_mib: Option<u64>,
    /// Serve staged files through the daemon instead of FUSE passthrough (by default the kernel
    /// reads and writes staging files itself where it can: Linux 6.9+, run as root).
    #[arg(long)]
    pub no_passthrough: bool,
    /// When a written file becomes durable: `close` (close(2) syncs it; the default) or `fsync`
    /// (only fsync(2) does, as on a local filesystem). The default of every directory; a
    /// directory's `user.tezip.sync` overrides it. Config: `sync` in `[defaults]`.
    #[arg(long)]
    pub sync: Option<tezipfs::policy::SyncMode>,
    /// Writers use passthrough only while the store's disk has this many MiB free (default
    /// 1024); below, the daemon serves them and keeps 16 MiB free for the index.
    #[arg(long)]
    pub passthrough_min_free_mib: Option<u64>,
    /// Where learned models run: `auto` (CUDA when libtorch sees a GPU, else the CPU), `cpu`
    /// or `cuda` (refused when there is none). Decoded bytes are the same on every device.
    #[arg(long)]
    pub device: Option<tezipfs::model::DeviceChoice>,
    /// `model=auto`: frames a directory's model is trained on (its first ones; default 16).
    #[arg(long)]
    pub auto_train_frames: Option<usize>,
    /// `model=auto`: training budget in minutes of wall clock (default 5).
    #[arg(long)]
    pub auto_train_minutes: Option<f64>,
    /// `model=auto`: libtorch threads of a training (default 1; it runs at the lowest priority).
    #[arg(long)]
    pub auto_train_threads: Option<usize>,
    /// Above this many MiB of staged bytes, windows are coded without their model (it is slower
    /// than the classical predictors) and lossless ones are re-coded with it when the engine is
    /// idle (default 1024).
    #[arg(long)]
    pub model_backlog_mib: Option<u64>,
    /// Encoding runs at idle CPU priority (SCHED_IDLE: only on CPU nothing else wants) while
    /// staging holds at most this many MiB; above it at nice 10, so that compression still
    /// progresses when other work keeps every CPU busy (default 256).
    #[arg(long)]
    pub idle_backlog_mib: Option<u64>,
    /// Milliseconds before a window whose compression failed (a disk error, say) is tried
    /// again; its files stay staged meanwhile (default 60000).
    #[arg(long)]
    pub retry_ms: Option<u64>,
    /// Write blobs of at most this blob format version, for a store that may go back to an
    /// older build (10: what builds before row slices read; default: the newest, see `tezipfs
    /// info`). Config: `write_version` in `[mount]`.
    #[arg(long, value_parser = crate::cli::write_version)]
    pub write_version: Option<u16>,
    /// Choose the predictor and entropy stage in every window, instead of carrying a
    /// directory's choice from one window to the next (made again every 8 windows and when a
    /// window codes differently; about a third less encoding time on a steady acquisition).
    /// Config: `choose_every_window` in `[mount]`.
    #[arg(long)]
    pub choose_every_window: bool,
    /// TOML config file with [defaults] (root policy) and [mount] settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canon) = mountpoint.canonicalize() else { return false };
    std::fs::read_to_string("/proc/self/mounts").map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(&canon.to_string_lossy()))).unwrap_or(false)
}

/// A mount point whose daemon died without its mount being taken away (ENOTCONN) is unmounted
/// (lazily), so that a restart, by hand or by systemd, just works.
fn clear_dead_mount(mountpoint: &Path) {
    let Err(e) = std::fs::metadata(mountpoint) else { return };
    if e.raw_os_error() != Some(libc::ENOTCONN) {
        return;
    }
    tracing::warn!(mountpoint = %mountpoint.display(), "a dead FUSE mount is in the way (its daemon died); unmounting it");
    let ok = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(mountpoint).status().is_ok_and(|s| s.success());
    if !ok {
        tracing::warn!(mountpoint = %mountpoint.display(), "fusermount3 -u -z failed on the dead mount");
    }
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    clear_dead_mount(&args.mountpoint);
    if !args.mountpoint.is_dir() {
        bail!("mount point {} is not a directory", args.mountpoint.display());
    }
    if args.daemon {
        return detach(&args);
    }
    let file = match &args.config {
        Some(p) => ConfigFile::load(p).map_err(anyhow::Error::msg)?,
        None => ConfigFile::default(),
    };
    let m = &file.mount;
    let device = match (args.device, &m.device) {
        (Some(d), _) => d,
        (None, Some(d)) => d.parse().map_err(|e: String| anyhow::anyhow!("config [mount] device: {e}"))?,
        (None, None) => tezipfs::model::DeviceChoice::Auto,
    };
    // Refuse `cuda` without a GPU now, not at the first model.
    let on = device.device().map_err(anyhow::Error::msg)?;
    tracing::info!(device = ?on, "learned models run on this device");
    // The memory budget holds the cache (a quarter of it, at most 1 GiB, unless --cache-mib says)
    // and everything else that grows with the data (see tezipfs::memory).
    let memory_mib = args.memory_mib.or(m.memory_mib).unwrap_or(4096);
    let cache_mib = args.cache_mib.or(m.cache_mib).unwrap_or((memory_mib / 4).min(1024));
    if memory_mib < 64 || cache_mib > memory_mib / 2 || memory_mib.checked_mul(1 << 20).is_none() {
        anyhow::bail!("--memory-mib {memory_mib} must be at least 64 and twice --cache-mib {cache_mib} (the cache is part of the memory budget)");
    }
    let index_cache = args.index_cache_mib.or(m.index_cache_mib).unwrap_or(DEFAULT_INDEX_CACHE_MIB);
    if index_cache == 0 || index_cache.checked_mul(1 << 20).is_none() {
        anyhow::bail!("--index-cache-mib {index_cache} must be at least 1 (MiB of the index's page cache)");
    }
    let config = Config {
        quiet_period: Duration::from_millis(args.quiet_ms.or(m.quiet_period_ms).unwrap_or(2000)),
        tail_idle: Duration::from_millis(args.tail_idle_ms.or(m.tail_idle_ms).unwrap_or(20_000)),
        cache_bytes: cache_mib << 20,
        memory_budget: memory_mib << 20,
        staging_budget: args.staging_budget_mib.or(m.staging_budget_mib).unwrap_or(100 << 10) << 20,
        root_policy: {
            let mut p = file.root_policy().map_err(anyhow::Error::msg)?;
            if let Some(s) = args.sync {
                p.sync = s;
            }
            p
        },
        passthrough_min_free: args.passthrough_min_free_mib.or(m.passthrough_min_free_mib).unwrap_or(1024) << 20,
        model_backend: tezipfs::model::Backend::Torch(device),
        auto_train: tezipfs::engine::autotrain::AutoTrain {
            frames: args.auto_train_frames.or(m.auto_train_frames).unwrap_or(16).max(2),
            minutes: args.auto_train_minutes.or(m.auto_train_minutes).unwrap_or(5.0),
            threads: args.auto_train_threads.or(m.auto_train_threads).unwrap_or(1).max(1),
        },
        model_backlog: args.model_backlog_mib.or(m.model_backlog_mib).unwrap_or(1024) << 20,
        idle_backlog: args.idle_backlog_mib.or(m.idle_backlog_mib).unwrap_or(256) << 20,
        retry_after: Duration::from_millis(args.retry_ms.unwrap_or(60_000)),
        write_version: args.write_version.or(m.write_version).unwrap_or(tezipfs::codec::container::VERSION),
        carry_choices: !(args.choose_every_window || m.choose_every_window.unwrap_or(false)),
    };
    // Windows are coded in parallel by the engine's workers: libtorch uses one thread in each
    // (a training thread too; see --auto-train-threads).
    tch::set_num_threads(1);
    let threads = args.threads.or(m.threads).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // (Both steps before the mount answers are logged with their time: on a store of a million
    // files they are seconds, see docs/ADMIN.md.)
    let t0 = std::time::Instant::now();
    let store = Store::open(&args.store)?;
    let sled = SledStore::open_with_cache(&store.index_dir(), index_cache << 20, store.room_for_index())?;
    let index = Index::open(Box::new(sled)).context("cannot open the index")?;
    let opened = t0.elapsed();
    tracing::info!(seconds = opened.as_secs_f64(), "index opened");
    let vfs = Arc::new(Vfs::new(store, index, config).context("cannot open the filesystem")?);
    tracing::info!(seconds = (t0.elapsed() - opened).as_secs_f64(), "filesystem opened");
    let engine = Engine::start(vfs.clone(), threads)?;
    vfs.start_readahead(threads)?;
    let metrics = match args.metrics.clone().or(m.metrics.clone()) {
        Some(addr) => Some(tezipfs::metrics::http::Server::start(&addr, vfs.clone()).with_context(|| format!("cannot serve metrics at {addr}"))?),
        None => None,
    };
    let scrubber = tezipfs::vfs::Scrubber::start(vfs.clone())?;

    let mut fuse = fuser::Config::default();
    fuse.mount_options.push(fuser::MountOption::FSName(format!("tezipfs:{}", args.store.display())));
    fuse.mount_options.push(fuser::MountOption::Subtype("tezipfs".into()));
    fuse.mount_options.push(fuser::MountOption::AutoUnmount);
    fuse.mount_options.push(fuser::MountOption::Suid);
    fuse.mount_options.push(fuser::MountOption::Dev);
    if !args.no_default_permissions {
        fuse.mount_options.push(fuser::MountOption::DefaultPermissions);
    }
    fuse.acl = if args.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::RootAndOwner };
    fuse.n_threads = Some(args.fuse_threads.max(1));
    let mountpoint = args.mountpoint.canonicalize().with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    // The signals are caught from before the mount appears: a SIGTERM or SIGINT sent as soon as
    // it is there (a test, systemd) unmounts cleanly instead of killing the daemon.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut term, mut int, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _enter = rt.enter();
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?)
    };
    let session = fuser::spawn_mount(FuseFs::new(vfs.clone(), !(args.no_passthrough || m.passthrough == Some(false))), &args.mountpoint, &fuse)
        .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;
    // Lossy windows change what a file reads back: drop the kernel's cached pages of those files.
    let notifier = session.notifier();
    engine.set_invalidate(Arc::new(move |inos: &[u64]| {
        for &ino in inos {
            if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), 0, 0) {
                // ENOENT: the kernel holds nothing of this inode.
                tracing::debug!(ino, error = %e, "page cache invalidation");
            }
        }
    }));
    tracing::info!(store = %args.store.display(), mountpoint = %args.mountpoint.display(), threads, "mounted");
    // systemd (Type=notify): ready once the mount answers; a watchdog if it asked for one.
    if service::answers(&args.mountpoint, Duration::from_secs(30)) {
        service::notify(&format!("READY=1\nSTATUS=serving {} from {}", args.mountpoint.display(), args.store.display()));
    } else {
        tracing::warn!(mountpoint = %args.mountpoint.display(), "the mount does not answer 30 s after mounting; not telling systemd it is ready");
    }
    let watchdog_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let v = vfs.clone();
    service::start_watchdog(
        args.mountpoint.clone(),
        Arc::new(move |interval: Duration| {
            use std::sync::atomic::Ordering;
            let c = &v.counters;
            let beat = Duration::from_millis(c.engine_heartbeat_ms.load(Ordering::Relaxed));
            // The loop runs at least every 10 s unless it waits for a window being compressed.
            c.engine_waiting.load(Ordering::Relaxed) || v.started().elapsed().saturating_sub(beat) < interval + Duration::from_secs(10)
        }),
        watchdog_stop.clone(),
    );

    // Serve until SIGINT/SIGTERM or an unmount from outside (fusermount3 -u).
    let by_signal = rt.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<bool, std::io::Error>(true),
                _ = int.recv() => return Ok(true),
                _ = hup.recv() => reload(&args, &vfs),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if session.guard.is_finished() {
                        return Ok(false);
                    }
                }
            }
        }
    })?;
    if by_signal {
        tracing::info!("signal received: unmounting");
        // fuser's own unmount under AutoUnmount only closes the socket to the fusermount3
        // helper, which unmounts a *dead* filesystem only (it checks that the mount point no
        // longer answers): with this daemon alive it leaves the mount in place and the join
        // below would wait forever. So unmount here first.
        if let Err(e) = unmount(&mountpoint) {
            tracing::warn!(error = %e, "unmount");
        }
        if let Err(e) = session.umount_and_join() {
            tracing::warn!(error = %e, "unmount");
        }
    } else if let Err(e) = session.join() {
        tracing::warn!(error = %e, "session ended with an error");
    }
    service::notify("STOPPING=1");
    watchdog_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(metrics);
    vfs.stop_readahead();
    scrubber.stop();
    engine.stop();
    vfs.flush_index()?;
    match vfs.mark_clean() {
        Ok(true) => tracing::info!("clean mark left: the next mount skips the recovery scan"),
        Ok(false) => tracing::info!("a file still open, or one that could not be deleted: the next mount reads every inode to recover"),
        Err(e) => tracing::warn!(error = %e, "cannot leave the clean mark: the next mount reads every inode to recover"),
    }
    tracing::info!("unmounted cleanly");
    Ok(())
}

/// Unmount our own mount point while the session still serves it: umount2(2) (root), else
/// `fusermount3 -u` (a user's mount); when it is busy (open files, a working directory in it),
/// detach it lazily so the session ends once the last user lets go.
fn unmount(mountpoint: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    let helper = |lazy: bool| -> anyhow::Result<()> {
        let mut last = None;
        for bin in ["fusermount3", "fusermount"] {
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("-u").arg("-q");
            if lazy {
                cmd.arg("-z");
            }
            match cmd.arg(mountpoint).status() {
                Ok(s) if s.success() => return Ok(()),
                Ok(s) => last = Some(anyhow::anyhow!("{bin} -u {}: {s}", mountpoint.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("neither fusermount3 nor fusermount is installed")))
    };
    for lazy in [false, true] {
        // SAFETY: umount2 with a valid C string path.
        let rc = unsafe { libc::umount2(c.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) };
        let r = if rc == 0 {
            Ok(())
        } else {
            match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::EPERM) => helper(lazy),
                e => Err(e.into()),
            }
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if !lazy => {
                tracing::warn!(error = %e, "cannot unmount (busy?): detaching the mount lazily; the daemon exits once its last open file is closed")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `--daemon`: start this program again in the background without `--daemon`, wait until the
/// mount is up, and return.
fn detach(args: &MountArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.store)?;
    let log = args.store.join("tezipfs.log");
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let exe = std::env::current_exe()?;
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "--daemon").collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&argv).stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: setsid in the child between fork and exec only detaches it from the terminal.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    for _ in 0..300 {
        if is_mounted(&args.mountpoint) {
            println!("tezipfs: mounted {} (pid {}, log {})", args.mountpoint.display(), child.id(), log.display());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited ({status}) before mounting; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the daemon did not mount within 30 s; see {}", log.display())
}

/// SIGHUP (`systemctl reload`): reread the config file and apply what can change while mounted,
/// the root policy (`[defaults]`; `--sync` still wins). The `[mount]` settings need a remount. A
/// file that does not parse changes nothing (logged).
fn reload(args: &MountArgs, vfs: &Vfs) {
    service::notify("RELOADING=1");
    let Some(path) = &args.config else {
        tracing::info!("SIGHUP: no --config file to reread");
        service::notify("READY=1");
        return;
    };
    let policy = ConfigFile::load(path).and_then(|f| f.root_policy());
    match policy {
        Ok(mut p) => {
            if let Some(s) = args.sync {
                p.sync = s;
            }
            tracing::info!(config = %path.display(), bound = %p.bound, window = p.window, "configuration reloaded: the new [defaults] apply to frames compressed from now on ([mount] settings need a remount)");
            vfs.set_root_policy(p);
        }
        Err(e) => tracing::error!(config = %path.display(), error = %e, "configuration reload failed; the settings in use stay"),
    }
    service::notify("READY=1");
}
