//! Per-directory settings: extended attributes on directories, inherited by everything below
//! (nearest ancestor wins), defaults from the config file.

use crate::codec::entropy::EntropyChoice;
use crate::codec::{Bound, FormatSpec, Options, PredictorChoice};
use serde::Deserialize;
use std::path::Path;

pub const BOUND: &str = "user.tezip.bound";
pub const PREDICTOR: &str = "user.tezip.predictor";
pub const FORMAT: &str = "user.tezip.format";
pub const WINDOW: &str = "user.tezip.window";
pub const MODEL: &str = "user.tezip.model";
pub const ENTROPY: &str = "user.tezip.entropy";
pub const SYNC: &str = "user.tezip.sync";
/// Settable on directories.
pub const SETTINGS: [&str; 7] = [BOUND, PREDICTOR, FORMAT, WINDOW, MODEL, ENTROPY, SYNC];

/// When a written file becomes durable (SEMANTICS S13, S50), in the manner of ZFS `sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// close(2) after a write makes the file durable (the default).
    #[default]
    Close,
    /// Only fsync(2)/fdatasync(2) do, as on a local filesystem: a crash may lose what was
    /// written since the last fsync, never older data.
    Fsync,
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "close" => Ok(SyncMode::Close),
            "fsync" => Ok(SyncMode::Fsync),
            _ => Err(format!("bad sync mode {s:?}: expected close or fsync")),
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Close => "close",
            SyncMode::Fsync => "fsync",
        })
    }
}

/// Read-only attributes of files.
pub const STATE: &str = "user.tezip.state";
pub const RATIO: &str = "user.tezip.ratio";
pub const FILE_PREDICTOR: &str = "user.tezip.predictor";

/// The effective settings of a directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub bound: Bound,
    pub predictor: PredictorChoice,
    pub format: FormatSpec,
    pub window: usize,
    pub model: Option<String>,
    pub entropy: EntropyChoice,
    pub sync: SyncMode,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            bound: Bound::Lossless,
            predictor: PredictorChoice::Auto,
            format: FormatSpec::Auto,
            window: crate::codec::window::DEFAULT_WINDOW,
            model: None,
            entropy: EntropyChoice::default(),
            sync: SyncMode::default(),
        }
    }
}

impl Policy {
    /// Check a value for one setting; the error says what is wrong.
    pub fn validate(name: &str, value: &[u8]) -> Result<(), String> {
        let mut p = Policy::default();
        p.set(name, value)
    }

    /// Apply one setting.
    pub fn set(&mut self, name: &str, value: &[u8]) -> Result<(), String> {
        let v = std::str::from_utf8(value).map_err(|_| format!("{name}: value is not UTF-8"))?.trim();
        match name {
            BOUND => self.bound = v.parse()?,
            PREDICTOR => {
                // `prednet` is accepted by name once the PredNet predictor exists.
                self.predictor = v.parse()?
            }
            FORMAT => self.format = v.parse()?,
            WINDOW => {
                let w: usize = v.parse().map_err(|_| format!("{name}: {v:?} is not a whole number"))?;
                if !(1..=4096).contains(&w) {
                    return Err(format!("{name}: window {w} must be between 1 and 4096 frames"));
                }
                self.window = w;
            }
            MODEL => {
                if v.is_empty() || v.len() > 255 {
                    return Err(format!("{name}: model name must be 1 to 255 characters"));
                }
                self.model = Some(v.to_string())
            }
            ENTROPY => self.entropy = v.parse()?,
            SYNC => self.sync = v.parse()?,
            _ => return Err(format!("{name} is not a tezipfs setting")),
        }
        Ok(())
    }

    pub fn codec_options(&self) -> Options {
        Options { format: self.format.clone(), bound: self.bound, predictor: self.predictor, entropy: self.entropy, ..Options::default() }
    }

    /// The current value of a setting, as text.
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            BOUND => self.bound.to_string(),
            PREDICTOR => self.predictor.to_string(),
            FORMAT => self.format.to_string(),
            WINDOW => self.window.to_string(),
            MODEL => self.model.clone().unwrap_or_else(|| "none".into()),
            ENTROPY => self.entropy.to_string(),
            SYNC => self.sync.to_string(),
            _ => return None,
        })
    }
}

/// The config file (TOML). Every key is optional.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub defaults: DefaultsSection,
    #[serde(default)]
    pub mount: MountSection,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSection {
    pub bound: Option<String>,
    pub predictor: Option<String>,
    pub format: Option<String>,
    pub window: Option<usize>,
    pub model: Option<String>,
    pub entropy: Option<String>,
    /// `close` (default) or `fsync`: see SEMANTICS S13 and S50.
    pub sync: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    pub quiet_period_ms: Option<u64>,
    pub tail_idle_ms: Option<u64>,
    pub cache_mib: Option<u64>,
    pub memory_mib: Option<u64>,
    /// The index's page cache (see `tezipfs mount --index-cache-mib`).
    pub index_cache_mib: Option<u64>,
    /// `HOST:PORT` to serve Prometheus metrics at (see `tezipfs mount --metrics`).
    pub metrics: Option<String>,
    pub staging_budget_mib: Option<u64>,
    pub threads: Option<usize>,
    /// FUSE passthrough for staged files (default true; see `tezipfs mount --no-passthrough`).
    pub passthrough: Option<bool>,
    pub passthrough_min_free_mib: Option<u64>,
    /// Where learned models run: `auto` (CUDA when present), `cpu` or `cuda`.
    pub device: Option<String>,
    pub auto_train_frames: Option<usize>,
    pub auto_train_minutes: Option<f64>,
    pub auto_train_threads: Option<usize>,
    pub model_backlog_mib: Option<u64>,
    pub idle_backlog_mib: Option<u64>,
    /// Blob format version to write at most (see `tezipfs mount --write-version`).
    pub write_version: Option<u16>,
    /// Every window chooses its predictor and stage (see `tezipfs mount --choose-every-window`).
    pub choose_every_window: Option<bool>,
}

impl MountSection {
    fn check(&self) -> Result<(), String> {
        let mib = [
            ("cache_mib", self.cache_mib),
            ("memory_mib", self.memory_mib),
            ("index_cache_mib", self.index_cache_mib),
            ("staging_budget_mib", self.staging_budget_mib),
            ("passthrough_min_free_mib", self.passthrough_min_free_mib),
            ("model_backlog_mib", self.model_backlog_mib),
            ("idle_backlog_mib", self.idle_backlog_mib),
        ];
        for (key, v) in mib {
            if v.is_some_and(|v| v.checked_mul(1 << 20).is_none()) {
                return Err(format!("[mount] {key}: {} MiB does not fit in 64 bits of bytes", v.unwrap_or_default()));
            }
        }
        for (key, v) in [("threads", self.threads), ("auto_train_threads", self.auto_train_threads)] {
            if v.is_some_and(|v| !(1..=4096).contains(&v)) {
                return Err(format!("[mount] {key}: {} threads (1 to 4096 allowed)", v.unwrap_or_default()));
            }
        }
        if let Some(m) = self.auto_train_minutes {
            if !m.is_finite() || m < 0.0 {
                return Err(format!("[mount] auto_train_minutes: {m} (a finite number of minutes, 0 or more)"));
            }
        }
        if let Some(d) = &self.device {
            d.parse::<crate::model::DeviceChoice>().map_err(|e| format!("[mount] device: {e}"))?;
        }
        if let Some(v) = self.write_version {
            crate::codec::window::check_write_version(v).map_err(|e| format!("[mount] write_version: {e}"))?;
        }
        Ok(())
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        ConfigFile::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and checks a config file's text: every value in its range (a size in MiB must fit
    /// in bytes, thread counts at least 1, minutes finite and not negative, a known device) and
    /// the `[defaults]` valid settings, so that a bad file is refused with the key that is wrong.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        let c: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        c.mount.check()?;
        c.root_policy()?;
        Ok(c)
    }

    /// The root policy: built-in defaults overridden by the `[defaults]` section.
    pub fn root_policy(&self) -> Result<Policy, String> {
        let mut p = Policy::default();
        let d = &self.defaults;
        let pairs = [
            (BOUND, d.bound.clone()),
            (PREDICTOR, d.predictor.clone()),
            (FORMAT, d.format.clone()),
            (WINDOW, d.window.map(|w| w.to_string())),
            (MODEL, d.model.clone()),
            (ENTROPY, d.entropy.clone()),
            (SYNC, d.sync.clone()),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                p.set(k, v.as_bytes()).map_err(|e| format!("config [defaults] {}: {e}", k.trim_start_matches("user.tezip.")))?;
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse() {
        let mut p = Policy::default();
        p.set(BOUND, b"abs:2").unwrap();
        p.set(WINDOW, b"16").unwrap();
        p.set(FORMAT, b"raw:64x48:u16").unwrap();
        assert_eq!(p.bound, Bound::Abs(2.0));
        assert_eq!(p.get(WINDOW).unwrap(), "16");
        for (k, v) in
            [(SYNC, "always"), (SYNC, ""), (BOUND, "abs:-1"), (WINDOW, "0"), (WINDOW, "x"), (FORMAT, "raw:1x1"), (PREDICTOR, "magic"), ("user.tezip.nope", "1")]
        {
            assert!(Policy::validate(k, v.as_bytes()).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn config_defaults_apply() {
        let c: ConfigFile = toml::from_str("[defaults]\nbound = \"abs:1\"\nwindow = 8\n[mount]\nquiet_period_ms = 100\n").unwrap();
        let p = c.root_policy().unwrap();
        assert_eq!((p.bound, p.window), (Bound::Abs(1.0), 8));
        assert!(toml::from_str::<ConfigFile>("[defaults]\nfoo = 1\n").is_err());
    }
}
