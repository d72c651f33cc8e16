//! The learned predictor through a real mount: models imported and named, a directory coding
//! with its model, round trips lossless and under a bound across a remount, a corrupt or missing
//! model file, blobs of an old model after the directory moves to a new one, and the refusals.
//!
//! The models here are real model files with random weights (`model::file::random`): they make
//! poor predictions, which is beside the point; `user.tezip.predictor=prednet` makes the codec
//! use them anyway, so every frame goes through the model on the way in and out.

mod common;

use common::{assert_files, set_policy, wait_compressed, wait_states_within, write_frames, xattr_get, xattr_set, Fs, Opts, BIN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tezipfs::codec::DType;
use tezipfs::fixtures::{generate_raw, SequenceSpec};
use tezipfs::model::{file, Size};

fn tezipfs(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("NO_COLOR", "1").output().expect("run tezipfs")
}

/// A random model file for u16 frames, written beside the store.
fn model_file(fs: &Fs, name: &str, seed: u64) -> (PathBuf, String) {
    let bytes = file::to_bytes(&file::random(&Size::Small.arch(), DType::U16, seed));
    let path = fs.tmp.path().join(format!("{name}.tzm"));
    std::fs::write(&path, &bytes).unwrap();
    (path, tezipfs::codec::predict::hash_hex(&file::hash(&bytes)))
}

fn import(fs: &Fs, path: &Path, name: &str) {
    let out = tezipfs(&["model", "import", fs.mnt.to_str().unwrap(), path.to_str().unwrap(), "--name", name]);
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
}

fn predictor(path: &Path) -> String {
    String::from_utf8_lossy(&xattr_get(path, "user.tezip.predictor").unwrap()).into_owned()
}

/// A directory that codes 64x48 u16 frames with model `name` (forced: `prednet`).
fn model_dir(fs: &Fs, dir: &str, name: &str, bound: &str) -> PathBuf {
    let d = fs.path(dir);
    std::fs::create_dir(&d).unwrap();
    set_policy(&d, Some("raw:64x48:u16"), Some(bound), Some(4));
    xattr_set(&d, "user.tezip.predictor", b"prednet").unwrap();
    xattr_set(&d, "user.tezip.model", name.as_bytes()).unwrap();
    d
}

fn frames(n: usize, seed: u64) -> Vec<Vec<u8>> {
    generate_raw(&SequenceSpec::detector_u16(64, 48, n, seed))
}

#[test]
fn a_named_model_codes_a_directory_and_reads_back_across_a_remount() {
    require_fuse!();
    let mut fs = Fs::new();
    let (path, hash) = model_file(&fs, "m1", 1);
    import(&fs, &path, "beam1");
    let lossless = model_dir(&fs, "lossless", "beam1", "lossless");
    let bounded = model_dir(&fs, "bounded", "beam1", "abs:2");
    let files = write_frames(&lossless, &frames(8, 3), "raw");
    let lossy = write_frames(&bounded, &frames(8, 4), "raw");
    let all: Vec<PathBuf> = files.keys().chain(lossy.keys()).cloned().collect();
    wait_compressed(&all);
    for p in &all {
        assert!(predictor(p).starts_with("prednet:beam1+"), "{}: {}", p.display(), predictor(p));
    }
    assert_files(&files);
    let check_bounded = || {
        for (p, want) in &lossy {
            let got = std::fs::read(p).unwrap();
            assert_eq!(got.len(), want.len());
            let worst = common::u16s(&got).iter().zip(common::u16s(want)).map(|(a, b)| (*a as i32 - b as i32).abs()).max().unwrap();
            assert!(worst <= 2, "{}: error {worst} over abs:2", p.display());
        }
    };
    check_bounded();
    // The model is listed with the blobs that need it.
    let list = String::from_utf8_lossy(&tezipfs(&["model", "list", fs.mnt.to_str().unwrap(), "--json"]).stdout).into_owned();
    let m: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!((m["hash"].as_str().unwrap(), m["names"][0].as_str().unwrap()), (hash.as_str(), "beam1"));
    assert!(m["blobs"].as_u64().unwrap() >= 2, "{m}");
    fs.remount();
    assert_files(&files);
    check_bounded();
    // Exported from the store, the same bytes as imported.
    let out = fs.tmp.path().join("exported.tzm");
    let e = tezipfs(&["model", "export", fs.mnt.to_str().unwrap(), "beam1", out.to_str().unwrap()]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
    fs.assert_log_clean();
}

#[test]
fn blobs_of_an_old_model_still_read_after_the_directory_gets_a_new_one() {
    require_fuse!();
    let fs = Fs::new();
    let (m1, h1) = model_file(&fs, "m1", 1);
    let (m2, h2) = model_file(&fs, "m2", 2);
    import(&fs, &m1, "current");
    let d = model_dir(&fs, "run", "current", "lossless");
    let old = write_frames(&d, &frames(4, 5), "raw");
    wait_compressed(&old.keys().cloned().collect::<Vec<_>>());
    // The name moves to the new model; the old one stays for the blobs that need it.
    import(&fs, &m2, "current");
    let newer: std::collections::BTreeMap<PathBuf, Vec<u8>> =
        frames(4, 6).into_iter().enumerate().map(|(i, f)| (d.join(format!("later_{i}.raw")), f)).collect();
    for (p, b) in &newer {
        std::fs::write(p, b).unwrap();
    }
    wait_compressed(&newer.keys().cloned().collect::<Vec<_>>());
    assert_files(&old);
    assert_files(&newer);
    let list = String::from_utf8_lossy(&tezipfs(&["model", "list", fs.mnt.to_str().unwrap(), "--json"]).stdout).into_owned();
    let models: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |h: &str| models.iter().find(|m| m["hash"] == h).unwrap_or_else(|| panic!("{h} not listed: {list}")).clone();
    assert!(of(&h1)["names"].as_array().unwrap().is_empty() && of(&h1)["blobs"].as_u64().unwrap() >= 1, "{list}");
    assert_eq!(of(&h2)["names"][0], "current");
    // Removing the name of a model that blobs need keeps the model.
    let r = tezipfs(&["model", "remove", fs.mnt.to_str().unwrap(), "current"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(fs.store.join("models").join(&h2).exists());
    assert_files(&newer);
}

#[test]
fn a_corrupt_model_is_refused_logged_and_nothing_is_lost() {
    require_fuse!();
    let mut fs = Fs::new();
    let (path, hash) = model_file(&fs, "m1", 1);
    import(&fs, &path, "beam1");
    let d = model_dir(&fs, "run", "beam1", "lossless");
    let coded = write_frames(&d, &frames(4, 7), "raw");
    wait_compressed(&coded.keys().cloned().collect::<Vec<_>>());
    fs.stop();
    // One flipped bit in the stored model file.
    let stored = fs.store.join("models").join(&hash);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&stored, &bytes).unwrap();
    fs.start();
    // Frames coded with it cannot be read: EIO, and the log names the model.
    for p in coded.keys() {
        let e = std::fs::read(p).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}", p.display());
    }
    let log = fs.log_text();
    assert!(log.contains(&hash) && log.contains("corrupt"), "the log should name the corrupt model {hash}:\n{log}");
    // New frames of the directory are coded classically and read back: nothing lost.
    let later: std::collections::BTreeMap<PathBuf, Vec<u8>> =
        frames(4, 8).into_iter().enumerate().map(|(i, f)| (d.join(format!("later_{i}.raw")), f)).collect();
    for (p, b) in &later {
        std::fs::write(p, b).unwrap();
    }
    wait_compressed(&later.keys().cloned().collect::<Vec<_>>());
    for p in later.keys() {
        assert!(!predictor(p).starts_with("prednet"), "{}: {}", p.display(), predictor(p));
    }
    assert_files(&later);
    assert!(fs.log_text().contains("coding its frames classically"));
}

#[test]
fn a_missing_model_reads_eio_with_a_log_line_that_names_it() {
    require_fuse!();
    let mut fs = Fs::new();
    let (path, hash) = model_file(&fs, "m1", 1);
    import(&fs, &path, "beam1");
    let d = model_dir(&fs, "run", "beam1", "lossless");
    let coded = write_frames(&d, &frames(4, 9), "raw");
    wait_compressed(&coded.keys().cloned().collect::<Vec<_>>());
    fs.stop();
    std::fs::remove_file(fs.store.join("models").join(&hash)).unwrap();
    fs.start();
    let p = coded.keys().next().unwrap();
    assert_eq!(std::fs::read(p).unwrap_err().raw_os_error(), Some(libc::EIO));
    let log = fs.log_text();
    assert!(log.contains(&format!("model {hash} is not available")), "{log}");
}

#[test]
fn bad_model_administration_is_refused_with_a_reason() {
    require_fuse!();
    let fs = Fs::new();
    // Not a model file.
    let junk = fs.tmp.path().join("junk.tzm");
    std::fs::write(&junk, b"TZIPMODL but not really").unwrap();
    let out = tezipfs(&["model", "import", fs.mnt.to_str().unwrap(), junk.to_str().unwrap(), "--name", "junk"]);
    assert!(!out.status.success());
    assert!(fs.log_text().contains("model administration refused"), "{}", fs.log_text());
    // A reserved or malformed name.
    let (path, _) = model_file(&fs, "m1", 1);
    for bad in ["auto", "none", "a/b", ""] {
        assert!(!tezipfs(&["model", "import", fs.mnt.to_str().unwrap(), path.to_str().unwrap(), "--name", bad]).status.success(), "{bad:?}");
    }
    // A policy naming a model the store does not have.
    let d = fs.path("run");
    std::fs::create_dir(&d).unwrap();
    assert_eq!(xattr_set(&d, "user.tezip.model", b"nosuchmodel").unwrap_err().raw_os_error(), Some(libc::EINVAL));
    let assign = tezipfs(&["model", "assign", d.to_str().unwrap(), "nosuchmodel"]);
    assert!(!assign.status.success());
    // `none` and `auto` always may be set; the listing is empty.
    xattr_set(&d, "user.tezip.model", b"none").unwrap();
    xattr_set(&d, "user.tezip.model", b"auto").unwrap();
    assert!(tezipfs(&["model", "list", fs.mnt.to_str().unwrap(), "--json"]).stdout.is_empty());
    assert!(!tezipfs(&["model", "remove", fs.mnt.to_str().unwrap(), "nosuchmodel"]).status.success());
}

/// `model=auto`: the directory's first windows are coded classically while a model is trained
/// on its first frames in the background; the model is stored and listed as the directory's;
/// new windows use it (forced here with `prednet`), the earlier lossless windows are re-coded
/// with it, and every file reads back bit-exact, also after a remount.
#[test]
fn model_auto_trains_one_for_the_directory_and_recodes_its_first_windows() {
    require_fuse!();
    let extra = ["--auto-train-minutes", "0.05", "--auto-train-frames", "6"].map(String::from).to_vec();
    let mut fs = Fs::with(common::Opts { extra, ..common::Opts::default() });
    let d = model_dir(&fs, "run", "auto", "lossless");
    let first = write_frames(&d, &frames(8, 11), "raw");
    let first_paths: Vec<PathBuf> = first.keys().cloned().collect();
    wait_compressed(&first_paths);
    // The model appears, trained for this directory.
    let trained = || {
        let out = tezipfs(&["model", "list", fs.mnt.to_str().unwrap(), "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|m| !m["trained_for_dirs"].as_array().unwrap().is_empty())
    };
    common::wait_for("the directory's model to be trained", std::time::Duration::from_secs(120), || trained().is_some());
    let m = trained().unwrap();
    assert_eq!(m["model"]["size"], "small", "{m}");
    assert_eq!(m["model"]["bound"], "lossless", "{m}");
    // New frames use it, and the first windows are re-coded with it.
    let later: std::collections::BTreeMap<PathBuf, Vec<u8>> =
        frames(8, 12).into_iter().enumerate().map(|(i, f)| (d.join(format!("later_{i}.raw")), f)).collect();
    for (p, b) in &later {
        std::fs::write(p, b).unwrap();
    }
    let all: Vec<PathBuf> = first_paths.iter().chain(later.keys()).cloned().collect();
    common::wait_for("every file to be coded with the directory's model", std::time::Duration::from_secs(120), || {
        all.iter().all(|p| common::state(p) == "compressed" && predictor(p).starts_with("prednet:auto:"))
    });
    assert_files(&first);
    assert_files(&later);
    let stats = fs.stats(&fs.mnt);
    assert!(stats["model_training"].as_array().unwrap().is_empty(), "{stats}");
    fs.remount();
    assert_files(&first);
    assert_files(&later);
    fs.assert_log_clean();
}

/// A mount with a memory budget of `memory_mib` (4 MiB of it for the cache) and a model,
/// `wide`, assigned to a directory with `prednet` forced (so that a window takes the model
/// whatever it predicts); one window of `frames` u16 frames of `width x height` written there
/// and compressed. The mount (kept alive), the files and the directory's stats.
fn one_window_with_a_forced_model(memory_mib: u64, width: u32, height: u32, frames: usize) -> (Fs, BTreeMap<PathBuf, Vec<u8>>, serde_json::Value) {
    let fs = Fs::with(Opts { extra: vec!["--memory-mib".into(), memory_mib.to_string(), "--cache-mib".into(), "4".into()], ..Opts::default() });
    let (path, _) = model_file(&fs, "m", 1);
    import(&fs, &path, "wide");
    let d = fs.path("wide");
    std::fs::create_dir(&d).unwrap();
    set_policy(&d, Some(&format!("raw:{width}x{height}:u16")), None, Some(frames));
    xattr_set(&d, "user.tezip.model", b"wide").unwrap();
    xattr_set(&d, "user.tezip.predictor", b"prednet").unwrap();
    let files = write_frames(&d, &generate_raw(&SequenceSpec::detector_u16(width, height, frames, 7)), "raw");
    // (The model codes a 2-Mpixel window's stripes one after the other on the CPU: on a slow
    // shared machine that took more than the usual 30 s.)
    let t0 = std::time::Instant::now();
    wait_states_within(&files.keys().cloned().collect::<Vec<_>>(), &["compressed"], std::time::Duration::from_secs(300));
    eprintln!("one window with a forced model compressed in {:.1} s", t0.elapsed().as_secs_f64());
    let st = fs.stats(&d);
    (fs, files, st)
}

/// A window whose model's states do not fit in the memory budget beside its classical working
/// set is coded without its model (counted in `model_skipped_windows`), and nothing is lost.
#[test]
fn a_model_whose_states_do_not_fit_the_memory_budget_is_left_out() {
    require_fuse!();
    // Windows of 4 frames of 0.5 Mpixel: 56 MiB of classical working set (`memory::window_bytes`)
    // of the 60 beside the cache; the model's replay and states another 89 MiB
    // (`window::model_window_bytes`: three states of 54 B a pixel, lossless).
    let (_fs, files, st) = one_window_with_a_forced_model(64, 512, 1024, 4);
    for p in files.keys() {
        assert!(!predictor(p).starts_with("prednet"), "{}: {}", p.display(), predictor(p));
    }
    assert_files(&files);
    assert!(st["model_skipped_windows"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["memory_used"].as_u64().unwrap() <= 64 << 20, "{st}");
}

/// A sliced window runs a state of its model per stripe, as many at once as it has threads;
/// when the states of every stripe do not fit beside its working set but one stripe's do, it
/// codes its stripes one after another with the model instead of leaving the model out.
#[test]
fn a_sliced_window_runs_fewer_stripes_at_once_rather_than_leave_its_model_out() {
    require_fuse!();
    // 420 MiB beside the cache. Windows of 2 frames of 2048x1024 u16 (2 Mpixel: two stripes of
    // 1 Mpixel): a classical working set of about 117 MB (`memory::window_bytes`), the model's
    // share per stripe 212 MB (`window::model_window_bytes`: replay 8 MB, three states of 54 B a
    // pixel, 34 MB of scratch): one stripe at a time fits (329 MB), both at once do not (541 MB),
    // and neither does the whole frame's charge the engine made before stripes counted (507 MB).
    let (_fs, files, st) = one_window_with_a_forced_model(424, 2048, 1024, 2);
    for p in files.keys() {
        assert!(predictor(p).starts_with("prednet"), "{}: {} ({st})", p.display(), predictor(p));
    }
    assert_files(&files);
    assert_eq!(st["model_skipped_windows"].as_u64().unwrap(), 0, "{st}");
    assert!(st["memory_used"].as_u64().unwrap() <= 424 << 20, "{st}");
}
