//! End-to-end tests of the `tezipfs` binary: fixtures -> compress -> decompress / verify, in
//! temporary directories.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use tezipfs::archive;
use tezipfs::codec::{DType, Decoder};

const BIN: &str = env!("CARGO_BIN_EXE_tezipfs");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("TEZIPFS_LOG", "warn").output().expect("run tezipfs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run and require success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "tezipfs {} failed ({}):\nstdout: {}\nstderr: {}", args.join(" "), out.status, text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Run and require failure with a message on stderr; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "tezipfs {} should fail but succeeded:\nstdout: {}", args.join(" "), text(&out.stdout));
    assert!(!err.trim().is_empty(), "tezipfs {} failed without a message on stderr", args.join(" "));
    assert!(!err.contains("panicked"), "tezipfs {} panicked: {err}", args.join(" "));
    err
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Every regular file of a directory, by name.
fn read_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn assert_same_dirs(a: &Path, b: &Path) {
    let (x, y) = (read_dir(a), read_dir(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "file names differ");
    for (name, bytes) in &x {
        let other = &y[name];
        assert!(
            bytes == other,
            "{name}: differs after the round trip ({} vs {} bytes, crc {:08x} vs {:08x})",
            bytes.len(),
            other.len(),
            crc32c::crc32c(bytes),
            crc32c::crc32c(other)
        );
    }
}

/// The records of an archive: (names, blob).
fn records(path: &Path) -> Vec<(Vec<String>, Vec<u8>)> {
    let mut r = archive::Reader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        out.push((rec.names.into_iter().map(|n| String::from_utf8(n).unwrap()).collect(), rec.blob));
    }
    out
}

/// The number after `key` in `text`, e.g. "max abs error 2" -> 2.0.
fn number_after(text: &str, key: &str) -> f64 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key:?} not in output: {text}")) + key.len();
    let num: String = text[at..].trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-' || *c == '+').collect();
    num.parse().unwrap_or_else(|_| panic!("no number after {key:?} in: {text}"))
}

#[test]
fn fixtures_compress_decompress_verify_lossless() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, arc, out) = (tmp.path().join("frames"), tmp.path().join("frames.tza"), tmp.path().join("restored"));
    ok(&["fixtures", s(&src), "--size", "128x96", "--frames", "10"]);
    let files = read_dir(&src);
    assert_eq!(files.len(), 11, "10 frames + meta.json: {:?}", files.keys().collect::<Vec<_>>());
    assert!(files.contains_key("meta.json"));
    for i in 0..10 {
        assert_eq!(files[&format!("frame_{i:05}.raw")].len(), 128 * 96 * 2);
    }
    let meta: serde_json::Value = serde_json::from_slice(&files["meta.json"]).unwrap();
    assert!(meta["noise_floor_bits"].as_f64().is_some_and(|b| b > 0.0), "{meta}");
    // --no-floor: the same frames, meta.json without the floor.
    let bare = tmp.path().join("bare");
    ok(&["fixtures", s(&bare), "--size", "128x96", "--frames", "10", "--no-floor"]);
    let bare_files = read_dir(&bare);
    for (name, bytes) in &files {
        if name != "meta.json" {
            assert!(bare_files[name] == *bytes, "{name} differs under --no-floor");
        }
    }
    let bare_meta: serde_json::Value = serde_json::from_slice(&bare_files["meta.json"]).unwrap();
    assert!(bare_meta.get("noise_floor_bits").is_none() && bare_meta["width"] == 128, "{bare_meta}");

    let msg = ok(&["compress", s(&src), s(&arc), "--format", "raw:128x96:u16"]);
    assert!(msg.contains("compressed 11 files"), "{msg}");
    assert!(msg.contains("1 stored whole"), "meta.json is the only opaque file: {msg}");
    assert!(!tmp.path().join("frames.partial").exists(), "the partial file is renamed away");
    let total: usize = files.values().map(|f| f.len()).sum();
    let size = std::fs::metadata(&arc).unwrap().len() as usize;
    assert!(size * 2 < total, "archive {size} bytes for {total} bytes of detector frames");

    // the archive: names in natural order, frames coded as frames, meta.json opaque
    let recs = records(&arc);
    let names: Vec<String> = recs.iter().flat_map(|(n, _)| n.clone()).collect();
    let mut want: Vec<String> = (0..10).map(|i| format!("frame_{i:05}.raw")).collect();
    want.push("meta.json".into());
    assert_eq!(names, want);
    for (names, blob) in &recs {
        let mut dec = Decoder::new(blob).unwrap();
        for (i, n) in names.iter().enumerate() {
            let l = dec.layout(i);
            if n == "meta.json" {
                assert!(l.is_none(), "meta.json must be opaque");
            } else {
                let l = l.unwrap_or_else(|| panic!("{n} must be coded as a frame"));
                assert_eq!((l.width, l.height, l.dtype), (128, 96, DType::U16));
            }
            assert_eq!(dec.decode(i, |_, _| {}).unwrap(), files[n], "{n} decoded from the archive");
        }
    }

    ok(&["decompress", s(&arc), s(&out)]);
    assert_same_dirs(&src, &out);

    let v = ok(&["verify", s(&arc), "--against", s(&src)]);
    assert!(v.contains("11 bit-exact, 0 error-bounded"), "{v}");
    let v = ok(&["verify", s(&arc)]);
    assert!(v.contains("verified 11 files"), "{v}");

    // the archive does not depend on the number of threads
    let arc1 = tmp.path().join("one-thread.tza");
    // (also where windows after the first are coded with its choice, whichever thread codes them)
    let out1 = ok(&["compress", s(&src), s(&arc1), "--format", "raw:128x96:u16", "--threads", "1", "--window", "3"]);
    assert!(out1.contains("; 3 windows coded with the choice of their group's first"), "{out1}");
    let arc3 = tmp.path().join("three-threads.tza");
    let out3 = ok(&["compress", s(&src), s(&arc3), "--format", "raw:128x96:u16", "--threads", "3", "--window", "3"]);
    assert!(out3.contains("; 3 windows coded with the choice of their group's first"), "{out3}");
    assert!(std::fs::read(&arc1).unwrap() == std::fs::read(&arc3).unwrap(), "archives differ between 1 and 3 threads");
    let every = tmp.path().join("every-window.tza");
    let out = ok(&["compress", s(&src), s(&every), "--format", "raw:128x96:u16", "--window", "3", "--choose-every-window"]);
    assert!(out.contains("; 0 windows coded with the choice of their group's first"), "{out}");
    assert_eq!(records(&arc1).len(), 4, "10 frames in windows of 3 make 4 records");
    let out3 = tmp.path().join("restored3");
    ok(&["decompress", s(&arc3), s(&out3)]);
    assert_same_dirs(&src, &out3);

    // every entropy choice, with the other knobs
    for (entropy, extra) in [("fast", "--exhaustive"), ("best", "--predictor=none")] {
        let a = tmp.path().join(format!("{entropy}.tza"));
        ok(&["compress", s(&src), s(&a), "--format", "raw:128x96:u16", "--entropy", entropy, extra, "--level", "1"]);
        let o = tmp.path().join(format!("restored-{entropy}"));
        ok(&["decompress", s(&a), s(&o)]);
        assert_same_dirs(&src, &o);
    }
}

#[test]
fn lossy_archive_verifies_within_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, arc, out) = (tmp.path().join("frames"), tmp.path().join("lossy.tza"), tmp.path().join("restored"));
    ok(&["fixtures", s(&src), "--size", "128x96", "--frames", "10"]);
    ok(&["compress", s(&src), s(&arc), "--format", "raw:128x96:u16", "--bound", "abs:3"]);
    let v = ok(&["verify", s(&arc), "--against", s(&src)]);
    let max = number_after(&v, "max abs error");
    assert!(max <= 3.0, "max error {max} > 3: {v}");
    assert!(max >= 1.0, "abs:3 on noisy frames should change some pixel: {v}");
    assert!(v.contains("1 bit-exact, 10 error-bounded"), "meta.json exact, frames bounded: {v}");

    // check the decompressed pixels ourselves
    ok(&["decompress", s(&arc), s(&out)]);
    let (a, b) = (read_dir(&src), read_dir(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert_eq!(a["meta.json"], b["meta.json"]);
    let mut seen = 0;
    for (name, orig) in &a {
        if name == "meta.json" {
            continue;
        }
        let got = &b[name];
        assert_eq!(got.len(), orig.len(), "{name}");
        for (k, (x, y)) in orig.chunks_exact(2).zip(got.chunks_exact(2)).enumerate() {
            let (x, y) = (u16::from_le_bytes([x[0], x[1]]) as i32, u16::from_le_bytes([y[0], y[1]]) as i32);
            assert!((x - y).abs() <= 3, "{name} pixel {k}: {x} -> {y}");
            seen = seen.max((x - y).abs());
        }
    }
    assert_eq!(seen as f64, max, "verify reports the true maximum error");
    // an original changed by more than the bound no longer verifies
    let victim = src.join("frame_00004.raw");
    let mut orig = std::fs::read(&victim).unwrap();
    let v0 = u16::from_le_bytes([orig[200], orig[201]]);
    orig[200..202].copy_from_slice(&v0.wrapping_add(10).to_le_bytes());
    std::fs::write(&victim, &orig).unwrap();
    let e = fails(&["verify", s(&arc), "--against", s(&src)]);
    assert!(e.contains("frame_00004.raw") && e.contains("pixel 100"), "{e}");
    orig[200..202].copy_from_slice(&v0.to_le_bytes());
    std::fs::write(&victim, &orig).unwrap();

    let lossless = tmp.path().join("lossless.tza");
    ok(&["compress", s(&src), s(&lossless), "--format", "raw:128x96:u16"]);
    assert!(std::fs::metadata(&arc).unwrap().len() < std::fs::metadata(&lossless).unwrap().len(), "abs:3 is smaller than lossless");
}

#[test]
fn tiff_fixtures_round_trip_with_auto_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, arc, out) = (tmp.path().join("tiffs"), tmp.path().join("t.tza"), tmp.path().join("restored"));
    ok(&["fixtures", s(&src), "--tiff", "--size", "40x150", "--frames", "4", "--dtype", "f32"]);
    assert_eq!(read_dir(&src).len(), 4);
    let msg = ok(&["compress", s(&src), s(&arc)]);
    assert!(msg.contains("0 stored whole"), "every TIFF is coded as a frame: {msg}");
    ok(&["decompress", s(&arc), s(&out)]);
    assert_same_dirs(&src, &out);
    ok(&["verify", s(&arc), "--against", s(&src)]);
}

#[test]
fn natural_order_and_names_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, arc, out) = (tmp.path().join("frames"), tmp.path().join("n.tza"), tmp.path().join("restored"));
    std::fs::create_dir(&src).unwrap();
    // written in an order that is neither natural nor lexicographic; distinct contents
    for (name, base) in [("frame_2", 20u8), ("frame_10", 100), ("frame_1", 10)] {
        let bytes: Vec<u8> = (0..16 * 8).map(|i| base.wrapping_add((i % 16) as u8)).collect();
        std::fs::write(src.join(name), bytes).unwrap();
    }
    ok(&["compress", s(&src), s(&arc), "--format", "raw:16x8:u8"]);
    let names: Vec<String> = records(&arc).into_iter().flat_map(|(n, _)| n).collect();
    assert_eq!(names, ["frame_1", "frame_2", "frame_10"], "frames go in natural order");
    ok(&["decompress", s(&arc), s(&out)]);
    assert_same_dirs(&src, &out);
    let restored = read_dir(&out);
    assert_eq!(restored["frame_10"][0], 100, "frame_10 restored under its own name");
    assert_eq!(restored["frame_1"][0], 10);
    assert_eq!(restored["frame_2"][0], 20);
}

#[test]
fn corrupted_archive_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, arc) = (tmp.path().join("frames"), tmp.path().join("c.tza"));
    ok(&["fixtures", s(&src), "--size", "64x48", "--frames", "6"]);
    ok(&["compress", s(&src), s(&arc), "--format", "raw:64x48:u16"]);
    let good = std::fs::read(&arc).unwrap();

    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x5a;
    let bad_path = tmp.path().join("flipped.tza");
    std::fs::write(&bad_path, &bad).unwrap();
    let e = fails(&["decompress", s(&bad_path), s(&tmp.path().join("out1"))]);
    assert!(e.contains("error") && (e.contains("corrupt") || e.contains("CRC") || e.contains("checksum")), "{e}");
    let e = fails(&["verify", s(&bad_path)]);
    assert!(e.contains("corrupt") || e.contains("CRC") || e.contains("checksum"), "{e}");
    let e = fails(&["verify", s(&bad_path), "--against", s(&src)]);
    assert!(e.contains("error"), "{e}");

    // truncated archives
    for cut in [good.len() - 1, good.len() / 2, 20, 5] {
        let p = tmp.path().join(format!("cut{cut}.tza"));
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = fails(&["verify", s(&p)]);
        assert!(e.contains("error"), "cut at {cut}: {e}");
        fails(&["decompress", s(&p), s(&tmp.path().join(format!("out-cut{cut}")))]);
    }
    // not an archive at all
    let p = tmp.path().join("not-an-archive");
    std::fs::write(&p, b"hello world, this is not an archive").unwrap();
    let e = fails(&["verify", s(&p)]);
    assert!(e.contains("not a tezipfs archive"), "{e}");

    // verify --against notices a changed original
    let mut orig = std::fs::read(src.join("frame_00003.raw")).unwrap();
    orig[100] ^= 1;
    std::fs::write(src.join("frame_00003.raw"), orig).unwrap();
    let e = fails(&["verify", s(&arc), "--against", s(&src)]);
    assert!(e.contains("frame_00003.raw"), "{e}");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("frames");
    ok(&["fixtures", s(&src), "--size", "8x8", "--frames", "2"]);
    let out = tmp.path().join("x.tza");

    let e = fails(&["compress", s(&src), s(&out), "--bound", "abs:-1"]);
    assert!(e.contains("abs:-1") && e.contains(">= 0"), "{e}");
    let e = fails(&["compress", s(&src), s(&out), "--bound", "rel:2"]);
    assert!(e.contains("rel:2"), "{e}");
    let e = fails(&["compress", s(&src), s(&out), "--format", "raw:0x5:u8"]);
    assert!(e.contains("raw:0x5:u8") && e.contains("1x1"), "{e}");
    let e = fails(&["compress", s(&src), s(&out), "--format", "raw:8x8:u12"]);
    assert!(e.contains("u12"), "{e}");
    let e = fails(&["compress", s(&src), s(&out), "--entropy", "tiny"]);
    assert!(e.contains("tiny"), "{e}");
    let e = fails(&["compress", s(&src), s(&out), "--predictor", "magic"]);
    assert!(e.contains("magic"), "{e}");
    let missing = tmp.path().join("no-such-dir");
    let e = fails(&["compress", s(&missing), s(&out)]);
    assert!(e.contains("no-such-dir") && e.contains("cannot read directory"), "{e}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(&["compress", s(&empty), s(&out)]);
    assert!(e.contains("no files"), "{e}");
    assert!(!out.exists(), "no archive is written when the arguments are bad");
    let e = fails(&["decompress", s(&tmp.path().join("missing.tza")), s(&tmp.path().join("o"))]);
    assert!(e.contains("missing.tza"), "{e}");
    let e = fails(&["fixtures", s(&tmp.path().join("f")), "--size", "0x4"]);
    assert!(e.contains("1x1"), "{e}");
    fails(&["compress", s(&src)]); // missing OUT
    fails(&["frobnicate"]);
}

#[test]
fn help_mentions_every_option() {
    let h = ok(&["compress", "--help"]);
    for opt in ["--bound", "--predictor", "--format", "--window", "--level", "--exhaustive", "--entropy", "--threads", "FRAMES_DIR", "OUT"] {
        assert!(h.contains(opt), "compress --help does not mention {opt}:\n{h}");
    }
    for word in ["lossless", "abs:", "rel:", "pwrel:", "raw:", "tiff", "previous", "none"] {
        assert!(h.contains(word), "compress --help does not explain {word}:\n{h}");
    }
    let h = ok(&["--help"]);
    for cmd in ["compress", "decompress", "verify", "fixtures", "bench"] {
        assert!(h.contains(cmd), "--help does not list {cmd}:\n{h}");
    }
    let h = ok(&["verify", "--help"]);
    assert!(h.contains("--against"), "{h}");
}

#[test]
fn model_train_refuses_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.tzm");
    let train = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["model", "train", s(dir), "--out", s(&out), "--max-steps", "1"];
        args.extend_from_slice(extra);
        if !extra.contains(&"--device") {
            args.extend_from_slice(&["--device", "cpu"]);
        }
        fails(&args)
    };
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = train(&empty, &[]);
    assert!(e.contains("no files"), "{e}");
    let e = train(&tmp.path().join("no-such-dir"), &[]);
    assert!(e.contains("no-such-dir") && e.contains("cannot read directory"), "{e}");
    // Files that are not frames.
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.txt"), b"hello").unwrap();
    std::fs::write(junk.join("b.txt"), b"world").unwrap();
    let e = train(&junk, &[]);
    assert!(e.contains("none of the 2 files") && e.contains("raw:WxH:TYPE"), "{e}");
    let e = train(&junk, &["--format", "raw:8x8:u16"]);
    assert!(e.contains("none of the 2 files"), "{e}");
    // One frame is not enough.
    let one = tmp.path().join("one");
    ok(&["fixtures", s(&one), "--size", "16x16", "--frames", "1"]);
    let e = train(&one, &["--format", "raw:16x16:u16"]);
    assert!(e.contains("only 1 frame") && e.contains("at least 2"), "{e}");
    // Bounds a model cannot be trained for, or that do not parse.
    let two = tmp.path().join("two");
    ok(&["fixtures", s(&two), "--size", "16x16", "--frames", "2"]);
    let e = train(&two, &["--format", "raw:16x16:u16", "--bound", "rel:0.01"]);
    assert!(e.contains("rel:0.01") && e.contains("lossless or abs:E"), "{e}");
    let e = train(&two, &["--format", "raw:16x16:u16", "--bound", "abs:two"]);
    assert!(e.contains("two"), "{e}");
    let e = train(&two, &["--format", "raw:16x16:u16", "--size", "huge"]);
    assert!(e.contains("huge") && e.contains("small"), "{e}");
    let e = train(&two, &["--format", "raw:16x16:u16", "--minutes", "0"]);
    assert!(e.contains("--minutes"), "{e}");
    let e = train(&two, &["--format", "raw:16x16:u16", "--device", "tpu"]);
    assert!(e.contains("tpu"), "{e}");
    assert!(!out.exists(), "no model is written when the input is bad");
}

#[test]
fn model_train_writes_a_model_that_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("frames");
    ok(&["fixtures", s(&src), "--size", "48x40", "--frames", "5"]);
    let out = tmp.path().join("m.tzm");
    let stdout = ok(&[
        "model",
        "train",
        s(&src),
        "--out",
        s(&out),
        "--format",
        "raw:48x40:u16",
        "--bound",
        "abs:1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--max-steps",
        "3",
    ]);
    let bytes = std::fs::read(&out).unwrap();
    let m = tezipfs::model::file::from_bytes(&bytes).unwrap();
    assert_eq!((m.meta.steps, m.meta.frames, m.meta.bound.as_str(), m.dtype), (3, 5, "abs:1", DType::U16));
    let hash = tezipfs::codec::predict::hash_hex(&tezipfs::model::file::hash(&bytes));
    assert!(stdout.contains(&format!("model hash {hash}")), "{stdout}");
    assert!(stdout.contains("3 steps"), "{stdout}");
    assert!(!tmp.path().join("m.tzm.partial").exists());
}

#[path = "common/browser.rs"]
mod browser;
#[path = "common/skip.rs"]
mod skip;

/// `probe` codes a sample under each bound and reports ratio, PSNR, the largest error (within
/// the bound) and the noise floor's limit; its HTML page, opened in a real browser, plots one
/// point per bound at the ratio the JSON gives.
#[test]
fn probe_reports_each_bound_and_its_page_plots_them() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = tmp.path().join("fx");
    ok(&["fixtures", s(&fx), "--size", "128x96", "--frames", "24"]);
    let html = tmp.path().join("probe.html");
    let bounds = "lossless,abs:1,abs:4,rel:0.01";
    let args = ["probe", s(&fx), "--format", "raw:128x96:u16", "--frames", "16", "--window", "8", "--bounds", bounds];
    let json: serde_json::Value = serde_json::from_str(&ok(&[&args[..], &["--json", "--html", s(&html)]].concat())).unwrap();
    assert_eq!(json["frames_in_dir"], 24);
    assert_eq!(json["frames_coded"], 16);
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["bound"].as_str().unwrap()).collect::<Vec<_>>(), bounds.split(',').collect::<Vec<_>>());
    let ratio = |i: usize| rows[i]["ratio"].as_f64().unwrap();
    assert!(1.0 < ratio(0) && ratio(0) < ratio(1) && ratio(1) < ratio(2), "ratios {rows:?}");
    assert!(rows.iter().all(|r| r["within_bound"] == true), "{rows:?}");
    assert_eq!(rows[0]["max_error"], 0.0);
    assert!(rows[0]["psnr_db"].is_null());
    assert!(rows[1]["max_error"].as_f64().unwrap() <= 1.0 && rows[2]["max_error"].as_f64().unwrap() <= 4.0);
    assert!(rows[2]["max_error"].as_f64().unwrap() >= 1.0, "abs:4 used none of its bound: {rows:?}");
    let psnr = |i: usize| rows[i]["psnr_db"].as_f64().unwrap();
    assert!(psnr(1) > psnr(2) && psnr(2) > 20.0, "{rows:?}");
    for i in 0..3 {
        assert!(rows[i]["noise_floor_ratio"].as_f64().is_some_and(|l| l > 1.0), "{rows:?}");
    }
    // The table says the same.
    let table = ok(&args);
    assert!(table.contains("noise floor:") && table.contains("abs:4") && table.contains("floor limit"), "{table}");

    let Some(dom) = browser::dump_dom(&html) else { return };
    let points = browser::marks(&dom, "point");
    for r in rows {
        let (b, v) = (r["bound"].as_str().unwrap(), r["ratio"].as_f64().unwrap());
        assert!(points.iter().any(|(s, l, y)| s.starts_with("tezipfs ratio") && l == b && (y - v).abs() < 1e-9 * v), "no point for {b} at {v} in {points:?}");
        if let Some(limit) = r["noise_floor_ratio"].as_f64() {
            assert!(points.iter().any(|(s, l, y)| s == "noise-floor limit" && l == b && (y - limit).abs() < 1e-9 * limit), "no floor point for {b}");
        }
    }
    // abs and rel lines, each from lossless: 3 + 2 ratio points, 3 floor points.
    assert_eq!(points.iter().filter(|p| p.0.starts_with("tezipfs ratio")).count(), 5, "{points:?}");
    assert_eq!(points.len(), 8, "{points:?}");
}

#[test]
fn probe_refuses_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(fails(&["probe", s(&empty)]).contains("holds no files"));
    assert!(fails(&["probe", s(&tmp.path().join("missing"))]).contains("cannot read directory"));
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.txt"), b"not a frame").unwrap();
    let err = fails(&["probe", s(&junk)]);
    assert!(err.contains("no file in") && err.contains("--format"), "{err}");
    let err = fails(&["probe", s(&junk), "--format", "raw:4x4:u16"]);
    assert!(err.contains("no file in") && err.contains("bytes"), "{err}");
    assert!(fails(&["probe", s(&junk), "--bounds", "abs:-1"]).contains("bound"));
    assert!(fails(&["probe", s(&junk), "--frames", "0"]).contains("at least 1"));
}

#[test]
fn mount_refuses_a_cache_larger_than_half_the_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, mnt) = (tmp.path().join("store"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let err = fails(&["mount", "--store", s(&store), s(&mnt), "--memory-mib", "100", "--cache-mib", "80"]);
    assert!(err.contains("--memory-mib 100") && err.contains("--cache-mib 80"), "{err}");
    let err = fails(&["mount", "--store", s(&store), s(&mnt), "--index-cache-mib", "0"]);
    assert!(err.contains("--index-cache-mib 0") && err.contains("at least 1"), "{err}");
    assert!(!store.exists(), "a refused mount made its store");
}

/// `bench --model --model-steps N` trains each model for exactly N steps, whatever the machine's
/// load: two runs print the same ratios and the same final training loss. (The causal stage's
/// steps are cut too, `--model-causal-steps`: its default 6000 took a minute of this test.)
#[test]
fn model_bench_with_a_step_budget_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("set");
    ok(&["fixtures", s(&src), "--size", "64x48", "--frames", "8"]);
    let bench = || ok(&["bench", "--model", "--no-fixtures", s(&src), "--model-steps", "2", "--model-causal-steps", "100", "--model-bounds", "0"]);
    // The label and ratio of every coded row, and what the training reports of itself.
    let figures = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| {
                if let Some(t) = l.split("trained ").nth(1).filter(|_| l.contains("(its training)")) {
                    return Some(t.split_once("cores, ").map_or(t, |(_, rest)| rest).to_string());
                }
                let fields: Vec<&str> = l.split("  ").map(str::trim).filter(|f| !f.is_empty()).collect();
                (l.starts_with("lossless:") && fields.len() > 1).then(|| format!("{} {}", fields[0], fields[1]))
            })
            .collect()
    };
    let (a, b) = (figures(&bench()), figures(&bench()));
    assert!(a.iter().any(|f| f.starts_with("2 steps, final loss")), "{a:?}");
    assert!(a.iter().filter(|f| f.starts_with("lossless:")).count() >= 3, "{a:?}");
    assert_eq!(a, b, "two runs of the same step budget");
}

/// A report piped into a reader that has gone (`tezipfs stats | head -1`, `| grep -q`) ends as
/// other command-line tools do, by SIGPIPE, not with a panic on the broken pipe.
#[test]
fn a_report_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN).arg("info").stdout(writer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "status {:?}, stderr: {stderr}", out.status);
}

/// `compress --write-version 12` writes blobs of version 12 (the tree stage, its version-12
/// levels), `--write-version 11` of version 11 (row slices, no tree stage) and `--write-version
/// 10` of version 10 or older where the default writes version 13 for the same frames (u8
/// 512x400 under `best`: the tree stage with exact levels), all restore bit for bit, `info` says
/// what the build writes, and a version this build cannot write is refused with the reason.
#[test]
fn compress_write_version_limits_the_blob_format() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("frames");
    ok(&["fixtures", s(&src), "--dtype", "u8", "--size", "512x400", "--frames", "4", "--seed", "31"]);
    let newest = |extra: &[&str]| -> u16 {
        let (arc, out) = (tmp.path().join("a.tza"), tmp.path().join("out"));
        let _ = std::fs::remove_dir_all(&out);
        let mut args = vec!["compress", s(&src), s(&arc), "--format", "raw:512x400:u8", "--entropy", "best", "--window", "4"];
        args.extend_from_slice(extra);
        ok(&args);
        ok(&["decompress", s(&arc), s(&out)]);
        assert_eq!(read_dir(&out), read_dir(&src), "{extra:?}: restored bit for bit");
        records(&arc).iter().filter(|(_, b)| b.starts_with(b"TZIPBLOB")).map(|(_, b)| u16::from_le_bytes([b[8], b[9]])).max().expect("a blob")
    };
    // (Version 14, a compressed header, only where that saves 0.5% of the blob: not on these.)
    assert_eq!(newest(&[]), 13, "the default writes the tree stage with exact levels on these frames (the premise of the test)");
    assert_eq!(newest(&["--write-version", "13"]), 13, "--write-version 13");
    assert_eq!(newest(&["--write-version", "12"]), 12, "--write-version 12: the tree stage, its version-12 levels");
    assert_eq!(newest(&["--write-version", "11"]), 11, "--write-version 11: row slices, no tree stage");
    let v = newest(&["--write-version", "10"]);
    assert!(v <= 10, "--write-version 10 wrote version {v}");
    let info = ok(&["info"]);
    assert!(info.contains("writes blob format version 14, or at most N with --write-version N (10 to 14"), "{info}");
    for bad in ["9", "15"] {
        let e = fails(&["compress", s(&src), s(&tmp.path().join("b.tza")), "--write-version", bad]);
        assert!(e.contains("--write-version") && e.contains("at most version 10 to 14"), "{bad}: {e}");
    }
}
