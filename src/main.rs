//! The `tezipfs` command line. See `tezipfs --help`.

mod cli;

use clap::Parser;

/// jemalloc, not glibc's malloc: the daemon frees and allocates frame-sized buffers on many
/// threads, and glibc's per-thread arenas kept 1.2 GB of freed memory resident on a 1 GiB read
/// of 2048x2048 frames (peak RSS 3.5 GB against a 2 GiB budget; `scripts/bench-mount`).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // libtorch's OpenMP threads spin while they wait by default; on a machine shared with the
    // detector software (or with the engine's other workers) that spinning costs 5-10x.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // SAFETY: the process has one thread here; nothing reads the environment concurrently.
        unsafe { std::env::set_var("OMP_WAIT_POLICY", "PASSIVE") };
    }
    let args = cli::Cli::parse();
    if !args.is_daemon() {
        // A report piped into `head` or `grep -q` ends quietly when the reader goes, as other
        // command-line tools do, instead of panicking on the broken pipe. The daemon keeps
        // Rust's default (SIGPIPE ignored): a metrics client that hangs up must not kill it.
        // SAFETY: the process has one thread here; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TEZIPFS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // Before anything asks libtorch about CUDA (it caches the first answer).
    tezipfs::model::cuda::load();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tezipfs: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
