//! `tezipfs fsck STORE` (offline check and repair) and `tezipfs scrub MOUNTPOINT` (online,
//! through the daemon's `user.tezip.scrub` attribute). Both exit like e2fsck: 0 clean,
//! 1 errors corrected, 4 errors left, 8 operational error.

use super::admin::{getxattr, setxattr};
use std::path::Path;
use std::time::Duration;
use tezipfs::check::{self, Level, Options, EXIT_CLEAN, EXIT_OPERATIONAL, EXIT_UNCORRECTED};

pub fn fsck(store: &Path, repair: bool, json: bool, deep: bool) -> i32 {
    let opts = Options { repair, level: if deep { Level::Decode } else { Level::Sections } };
    match check::run(store, opts) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("tezipfs fsck: {e}");
                        return EXIT_OPERATIONAL;
                    }
                }
            } else {
                print!("{}", report.text());
            }
            report.exit
        }
        Err(e) => {
            eprintln!("tezipfs fsck: {e}");
            EXIT_OPERATIONAL
        }
    }
}

pub fn scrub(mountpoint: &Path, rate: f64, restart: bool, json: bool, no_wait: bool) -> i32 {
    match run_scrub(mountpoint, rate, restart, json, no_wait) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tezipfs scrub: {e:#}");
            EXIT_OPERATIONAL
        }
    }
}

fn status(mountpoint: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_slice(&getxattr(mountpoint, "user.tezip.scrub")?)?)
}

fn run_scrub(mountpoint: &Path, rate: f64, restart: bool, json: bool, no_wait: bool) -> anyhow::Result<i32> {
    if !(rate > 0.0 && rate.is_finite()) {
        anyhow::bail!("--rate must be a number of MB/s above 0");
    }
    let before = status(mountpoint)?;
    let verb = if restart { "restart" } else { "start" };
    setxattr(mountpoint, "user.tezip.scrub", format!("{verb} rate={rate}").as_bytes())?;
    // Wait for the daemon to take the request (its status changes to this run).
    let t0 = std::time::Instant::now();
    let mut st = loop {
        let s = status(mountpoint)?;
        if s["run"].as_u64() > before["run"].as_u64() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("the daemon did not start the scrub within 10 s (status: {s})");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !json {
        eprintln!(
            "scrub of {}: {} from blob {}, {} blobs, {:.1} MB at {rate} MB/s",
            mountpoint.display(),
            if restart { "starting" } else { "resuming" },
            st["started_at"],
            st["blobs_total"],
            st["bytes_total"].as_f64().unwrap_or(0.0) / 1e6
        );
    }
    if no_wait {
        return Ok(EXIT_CLEAN);
    }
    let bar = indicatif::ProgressBar::new(st["bytes_total"].as_u64().unwrap_or(0));
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}") {
        bar.set_style(style);
    }
    while st["state"] == "running" {
        bar.set_position(st["bytes_done"].as_u64().unwrap_or(0));
        bar.set_message(format!("{} problem(s)", st["problems"].as_array().map_or(0, Vec::len)));
        std::thread::sleep(Duration::from_millis(200));
        st = status(mountpoint)?;
    }
    bar.set_position(st["bytes_done"].as_u64().unwrap_or(0));
    bar.finish_and_clear();
    let problems = st["problems"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        for p in &problems {
            println!("blob {}: {}", p["blob"], p["error"].as_str().unwrap_or(""));
            for path in p["paths"].as_array().into_iter().flatten() {
                println!("    {}", path.as_str().unwrap_or(""));
            }
        }
        println!(
            "scrub {}: {} blobs, {:.1} MB checked (checksums and full decode); {} damaged blob(s)",
            st["state"].as_str().unwrap_or("?"),
            st["blobs_done"],
            st["bytes_done"].as_f64().unwrap_or(0.0) / 1e6,
            problems.len()
        );
    }
    if let Some(e) = st["error"].as_str() {
        anyhow::bail!("the scrub failed: {e}");
    }
    Ok(match st["state"].as_str() {
        Some("done") if problems.is_empty() => EXIT_CLEAN,
        Some("done") => EXIT_UNCORRECTED,
        // Stopped (by `stop` or a daemon restart): resumable.
        _ if problems.is_empty() => EXIT_OPERATIONAL,
        _ => EXIT_UNCORRECTED,
    })
}
