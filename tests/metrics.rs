//! The Prometheus endpoint (`tezipfs mount --metrics`) on a real mount: scraped over HTTP, parsed
//! with a Prometheus text-format parser, and checked against what the test did. Also: the
//! Grafana dashboard in docs/ plots only families the endpoint exports.

mod common;

use common::{raw_frames, set_policy, wait_compressed, wait_for, write_frames, Fs, Opts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GET `path` from `addr`; (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The address the daemon logged for its metrics.
fn metrics_addr(fs: &Fs) -> String {
    let mut addr = String::new();
    wait_for("the metrics address in the log", Duration::from_secs(10), || {
        let log = fs.log_text();
        match log.lines().find(|l| l.contains("metrics served")).and_then(|l| l.split("http://").nth(1)) {
            Some(rest) => {
                addr = rest.split('/').next().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    addr
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match s.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a number"),
    }
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

#[test]
fn the_metrics_endpoint_counts_what_the_mount_did() {
    require_fuse!();
    let fs = Fs::with(Opts { extra: vec!["--metrics".into(), "127.0.0.1:0".into(), "--memory-mib".into(), "512".into()], ..Opts::default() });
    let addr = metrics_addr(&fs);
    let before = scrape(&addr);
    assert_eq!(value(&before, "tezipfs_ingested_bytes_total", None), 0.0);
    assert_eq!(value(&before, "tezipfs_memory_budget_bytes", None), (512u64 << 20) as f64);
    assert!(before.samples.iter().any(|s| s.metric == "tezipfs_build_info" && s.labels.get("version") == Some(env!("CARGO_PKG_VERSION"))));

    let dir = fs.path("run");
    std::fs::create_dir(&dir).unwrap();
    set_policy(&dir, Some("raw:64x48:u16"), None, Some(4));
    let files = write_frames(&dir, &raw_frames(64, 48, 8, 3), "raw");
    let total: usize = files.values().map(|b| b.len()).sum();
    let paths: Vec<_> = files.keys().cloned().collect();
    wait_compressed(&paths);
    let mut read = 0;
    for p in &paths {
        read += std::fs::read(p).unwrap().len();
    }

    let after = scrape(&addr);
    assert_eq!(value(&after, "tezipfs_ingested_bytes_total", None), total as f64);
    assert_eq!(value(&after, "tezipfs_compressed_files_total", None), 8.0);
    assert_eq!(value(&after, "tezipfs_compressed_input_bytes_total", None), total as f64);
    let out = value(&after, "tezipfs_compressed_output_bytes_total", None);
    assert!(out > 0.0 && out < total as f64, "{out}");
    let by_source: f64 = ["staged", "cache", "decoded"].iter().map(|s| value(&after, "tezipfs_read_bytes_total", Some(("source", s)))).sum();
    assert_eq!(by_source, read as f64);
    assert!(value(&after, "tezipfs_read_bytes_total", Some(("source", "decoded"))) > 0.0);
    let hist = |name: &str| {
        after
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
                _ => panic!("{name} is not a histogram"),
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(hist("tezipfs_compress_seconds"), 2.0, "two windows of 4");
    assert!(hist("tezipfs_read_seconds") >= 8.0);
    for kind in ["compress", "read", "other"] {
        assert_eq!(value(&after, "tezipfs_errors_total", Some(("kind", kind))), 0.0, "{kind}");
    }
    assert!(value(&after, "tezipfs_memory_used_bytes", None) <= (512u64 << 20) as f64);
    assert!(value(&after, "tezipfs_uptime_seconds", None) > 0.0);

    let (status, _) = get(&addr, "/other");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn metrics_are_off_by_default_and_a_bad_address_is_refused() {
    require_fuse!();
    let fs = Fs::new();
    std::fs::write(fs.path("f"), b"x").unwrap();
    assert!(!fs.log_text().contains("metrics served"));
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["mount", "--store", store.to_str().unwrap(), mnt.to_str().unwrap(), "--metrics", "not-an-address"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot serve metrics at not-an-address"), "{err}");
}

/// Every expression of the Grafana dashboard names families the endpoint exports.
#[test]
fn the_grafana_dashboard_plots_exported_families() {
    let text = include_str!("../docs/grafana/tezipfs.json");
    let dash: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let source = include_str!("../src/metrics.rs");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    for e in &exprs {
        let names: Vec<&str> = e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("tezipfs_")).collect();
        assert!(!names.is_empty(), "{e}");
        for n in names {
            let family = ["_bucket", "_sum", "_count"].iter().fold(n, |n, s| n.strip_suffix(s).unwrap_or(n));
            assert!(source.contains(&format!("\"{family}\"")), "{e}: {family} is not exported");
        }
    }
}
