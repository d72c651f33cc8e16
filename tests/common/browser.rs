//! A real browser for the HTML reports: headless Chromium (Debian's `chromium`, installed by
//! scripts/setup.sh) loads a page, runs its script, and prints the resulting DOM.
#![allow(dead_code)]

use super::skip::{skip, Lack};
use std::path::Path;
use std::process::Command;

/// The DOM of `page` after its scripts ran, or `None` (a recorded skip) without Chromium.
pub fn dump_dom(page: &Path) -> Option<String> {
    let profile = tempfile::tempdir().expect("a temporary profile directory");
    // The flags keep Chromium off the network (this machine's is closed) and out of the GPU.
    let out = match Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.canonicalize().expect("the page exists").display()))
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            skip(Lack::Tool, &format!("chromium cannot be started ({e}); scripts/setup.sh installs it (apt-get install chromium)"));
            return None;
        }
    };
    assert!(out.status.success(), "chromium failed on {}: {}", page.display(), String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `(data-series, data-label, data-value)` of every element of `class` (`point`, `bar`)
/// in a dumped DOM.
pub fn marks(dom: &str, class: &str) -> Vec<(String, String, f64)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!(" {name}=\"");
        let start = tag.find(&key)? + key.len();
        Some(tag[start..].split('"').next()?.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\""))
    };
    dom.split('<')
        .filter(|t| t.contains(&format!("class=\"{class}\"")))
        .filter_map(|t| Some((attr(t, "data-series")?, attr(t, "data-label")?, attr(t, "data-value")?.parse().ok()?)))
        .collect()
}
