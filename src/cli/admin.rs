//! `stats`, `policy`, `recompress`: talk to a running mount through extended attributes.

use anyhow::{bail, Context};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(p: &Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path contains a NUL byte")
}

pub fn getxattr(path: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    let mut buf = vec![0u8; 1 << 20];
    // SAFETY: valid C strings and a buffer of the length we pass.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!("{}: cannot read {name}: {e} (is it a directory on a tezipfs mount?)", path.display());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> anyhow::Result<()> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    // SAFETY: valid C strings and a value buffer of the length we pass.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::EINVAL) { " (invalid value; the daemon log says why)" } else { "" };
        bail!("{}: cannot set {name}={}: {e}{hint}", path.display(), String::from_utf8_lossy(value));
    }
    Ok(())
}

pub fn stats(path: &Path, json: bool, html: Option<&Path>) -> anyhow::Result<()> {
    let raw = getxattr(path, "user.tezip.stats")?;
    if let Some(out) = html {
        let v: serde_json::Value = serde_json::from_slice(&raw)?;
        std::fs::write(out, stats_html(path, &v)).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    let v: serde_json::Value = serde_json::from_slice(&raw)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<40} {:>7} {:>7} {:>10} {:>7} {:>12} {:>12} {:>7}", "directory", "files", "staged", "compressed", "whole", "logical MB", "stored MB", "ratio");
    for d in v["directories"].as_array().into_iter().flatten() {
        println!(
            "{:<40} {:>7} {:>7} {:>10} {:>7} {:>12.2} {:>12.2} {:>7.3}",
            d["path"].as_str().unwrap_or(""),
            d["files"].as_u64().unwrap_or(0),
            d["staged"].as_u64().unwrap_or(0),
            d["compressed"].as_u64().unwrap_or(0),
            d["stored_whole"].as_u64().unwrap_or(0),
            d["logical_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            d["stored_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            d["ratio"].as_f64().unwrap_or(1.0)
        );
    }
    if let Some(n) = v["directories_omitted"].as_u64().filter(|&n| n > 0) {
        println!("({n} smaller directories not listed: ask about a subdirectory to see them)");
    }
    let mb = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1e6;
    println!();
    println!(
        "backlog: {} files, {:.2} MB staged (staging uses {:.2} MB of a {:.0} MB budget{})",
        v["backlog_files"],
        mb("backlog_bytes"),
        mb("staging_bytes"),
        mb("staging_budget"),
        if v["staging_over_budget"].as_bool() == Some(true) { ", OVER BUDGET" } else { "" }
    );
    println!(
        "compressed since mount: {} files, {:.2} MB -> {:.2} MB at {:.1} MB/s; {} rehydrated; {} opens for writing by passthrough",
        v["compressed_files"],
        mb("compress_input_bytes"),
        mb("compress_output_bytes"),
        v["compress_mb_per_s"].as_f64().unwrap_or(0.0),
        v["rehydrated_files"],
        v["passthrough_opens"]
    );
    println!(
        "index {:.2} MB on disk, blobs {:.2} MB; cache {:.1} of {:.0} MB (+{:.0} MB borrowed from idle memory), {} hits, {} misses",
        mb("index_bytes_on_disk"),
        mb("blob_bytes"),
        mb("cache_bytes"),
        mb("cache_budget"),
        mb("cache_borrowed"),
        v["cache_hits"],
        v["cache_misses"]
    );
    println!("errors: {}{}", v["errors"], v["last_error"].as_str().map(|e| format!(" (last: {e})")).unwrap_or_default());
    Ok(())
}

pub fn policy_get(path: &Path) -> anyhow::Result<()> {
    print!("{}", String::from_utf8_lossy(&getxattr(path, "user.tezip.policy")?));
    Ok(())
}

pub fn policy_set(path: &Path, settings: &[String]) -> anyhow::Result<()> {
    if settings.is_empty() {
        bail!("nothing to set: give NAME=VALUE pairs, e.g. bound=abs:2 window=16");
    }
    for s in settings {
        let (k, v) = s.split_once('=').with_context(|| format!("{s:?} is not NAME=VALUE"))?;
        let name = if k.starts_with("user.tezip.") { k.to_string() } else { format!("user.tezip.{k}") };
        setxattr(path, &name, v.as_bytes())?;
        println!("{}: {name} = {v}", path.display());
    }
    Ok(())
}

pub fn recompress(path: &Path) -> anyhow::Result<()> {
    setxattr(path, "user.tezip.recompress", b"1")?;
    println!("{}: compressed files returned to staging; they are re-coded under the current policy in the background", path.display());
    Ok(())
}

/// `stats --html`: ratio and stored bytes per directory, and the backlog over the last hour.
fn stats_html(path: &Path, v: &serde_json::Value) -> String {
    use super::report::{page, Chart, Series, Table};
    let dirs: Vec<&serde_json::Value> = v["directories"].as_array().into_iter().flatten().collect();
    let name = |d: &serde_json::Value| d["path"].as_str().unwrap_or("").to_string();
    let num = |d: &serde_json::Value, k: &str| d[k].as_f64().unwrap_or(0.0);
    let labels: Vec<String> = dirs.iter().map(|d| name(d)).collect();
    let ratio = Chart {
        id: "ratio".into(),
        title: "Compression ratio per directory (with its subdirectories)".into(),
        x_title: "directory".into(),
        y_title: "ratio".into(),
        labels: labels.clone(),
        series: vec![Series { name: "ratio".into(), values: dirs.iter().map(|d| Some(num(d, "ratio"))).collect(), dashed: false }],
        bars: true,
    };
    let bytes = Chart {
        id: "bytes".into(),
        title: "Logical and stored MB per directory".into(),
        x_title: "directory".into(),
        y_title: "MB".into(),
        labels,
        series: vec![
            Series { name: "logical MB".into(), values: dirs.iter().map(|d| Some(num(d, "logical_bytes") / 1e6)).collect(), dashed: false },
            Series { name: "stored MB".into(), values: dirs.iter().map(|d| Some(num(d, "stored_bytes") / 1e6)).collect(), dashed: false },
        ],
        bars: true,
    };
    let history: Vec<&serde_json::Value> = v["backlog_history"].as_array().into_iter().flatten().collect();
    let last = history.last().and_then(|s| s["unix_secs"].as_u64()).unwrap_or(0);
    let backlog = Chart {
        id: "backlog".into(),
        title: "Backlog over the last hour (files in staging, not yet compressed)".into(),
        x_title: "minutes ago".into(),
        y_title: "files / MB".into(),
        labels: history.iter().map(|s| format!("-{:.1}", (last - s["unix_secs"].as_u64().unwrap_or(last).min(last)) as f64 / 60.0)).collect(),
        series: vec![
            Series { name: "files".into(), values: history.iter().map(|s| s["files"].as_f64()).collect(), dashed: false },
            Series { name: "MB".into(), values: history.iter().map(|s| s["bytes"].as_f64().map(|b| b / 1e6)).collect(), dashed: true },
        ],
        bars: false,
    };
    let head = ["directory", "files", "staged", "compressed", "whole", "logical MB", "stored MB", "ratio"];
    let rows = dirs
        .iter()
        .map(|d| {
            vec![
                name(d),
                format!("{}", num(d, "files")),
                format!("{}", num(d, "staged")),
                format!("{}", num(d, "compressed")),
                format!("{}", num(d, "stored_whole")),
                format!("{:.2}", num(d, "logical_bytes") / 1e6),
                format!("{:.2}", num(d, "stored_bytes") / 1e6),
                format!("{:.3}", num(d, "ratio")),
            ]
        })
        .collect();
    let intro = format!(
        "{}: backlog {} files ({:.2} MB); {} errors; cache {:.1} of {:.0} MB.",
        path.display(),
        v["backlog_files"],
        num(v, "backlog_bytes") / 1e6,
        v["errors"],
        num(v, "cache_bytes") / 1e6,
        num(v, "cache_budget") / 1e6
    );
    page(&format!("tezipfs stats: {}", path.display()), &intro, &[ratio, bytes, backlog], &[Table { head: head.map(String::from).to_vec(), rows }], v)
}
