//! Learned models in a mounted store: names, import, removal, the listing, and which model a
//! directory's policy asks for. The files live in [`crate::model::registry`]; names, the models
//! trained for directories and the references of blobs live in the index (`docs/INDEX.md`).
//!
//! Administration goes through extended attributes of any directory of the mount (the CLI needs
//! only the mount point, `docs/ADMIN.md`):
//! - `user.tezip.models` (read): one JSON object per line for each stored model;
//! - `user.tezip.model.import` (write `NAME=/path/to/model`): the daemon reads, validates and
//!   stores the model file and names it;
//! - `user.tezip.model.remove` (write `NAME`): the name goes; the model file goes too once no
//!   blob, name or directory needs it.

use super::{FsError, FsResult, Txn, Vfs};
use crate::codec::predict::{hash_hex, ModelHandle, ModelHash, ModelSource};
use crate::index::keys;
use crate::model::registry::parse_hash;

pub const MODELS: &str = "user.tezip.models";
pub const IMPORT: &str = "user.tezip.model.import";
pub const REMOVE: &str = "user.tezip.model.remove";

/// What a directory's `user.tezip.model` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelPolicy {
    None,
    /// The model trained for the directory (trained in the background when it has none).
    Auto,
    /// A model by name or hash.
    Named(String),
}

impl ModelPolicy {
    pub fn of(value: Option<&str>) -> ModelPolicy {
        match value.map(str::trim) {
            None | Some("") | Some("none") => ModelPolicy::None,
            Some("auto") => ModelPolicy::Auto,
            Some(v) => ModelPolicy::Named(v.to_string()),
        }
    }
}

/// Whether `name` may name a model: 1 to 255 of `A-Z a-z 0-9 . _ -`, not `none` or `auto`, and
/// not 64 hex digits (which would read as a hash).
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("model name {name:?} must be 1 to 255 letters, digits, '.', '_' or '-'"));
    }
    if name == "none" || name == "auto" || parse_hash(name).is_some() {
        return Err(format!("model name {name:?} is reserved (none, auto, or a model hash)"));
    }
    Ok(())
}

impl Vfs {
    /// The hash a model name or hash stands for, if the store has that model.
    pub fn model_hash(&self, name_or_hash: &str) -> FsResult<Option<ModelHash>> {
        if let Some(h) = parse_hash(name_or_hash) {
            return Ok(self.models.contains(&h).then_some(h));
        }
        Ok(self.index.model_by_name(name_or_hash.as_bytes())?)
    }

    /// The model the engine should try for a window of directory `dir` under `policy`: `None`
    /// when the policy asks for none, when `auto` has not trained one yet, or when the model
    /// cannot be used (missing, corrupt, another backend's failure), which is logged and counted:
    /// the window is then coded classically, nothing is lost.
    pub fn model_for(&self, dir: u64, policy: &ModelPolicy) -> Option<ModelHandle> {
        let hash = match policy {
            ModelPolicy::None => return None,
            ModelPolicy::Auto => match self.index.dir_model(dir) {
                Ok(h) => h?,
                Err(e) => {
                    tracing::error!(dir, error = %e, "cannot read the directory's trained model; coding classically");
                    return None;
                }
            },
            ModelPolicy::Named(n) => match self.model_hash(n) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.model_error(format!("directory {dir} asks for model {n:?}, which the store does not have; coding its frames classically"));
                    return None;
                }
                Err(e) => {
                    self.model_error(format!("directory {dir}: cannot look up model {n:?}: {e}; coding classically"));
                    return None;
                }
            },
        };
        match self.models.model(&hash) {
            Ok(m) => Some(ModelHandle(m)),
            Err(e) => {
                self.model_error(format!("directory {dir}: {e}; coding its frames classically"));
                None
            }
        }
    }

    fn model_error(&self, msg: String) {
        tracing::error!("{msg}");
        self.counters.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.counters.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    /// Store the model file at `path` under `name` (replacing what the name pointed at).
    pub fn import_model(&self, name: &str, path: &std::path::Path) -> FsResult<ModelHash> {
        valid_name(name).map_err(FsError::Invalid)?;
        if !path.is_absolute() {
            return Err(FsError::Invalid(format!("model file {} must be given as an absolute path", path.display())));
        }
        let meta = std::fs::metadata(path).map_err(|e| FsError::Invalid(format!("model file {}: {e}", path.display())))?;
        if !meta.is_file() || meta.len() > crate::archive::MAX_MODEL_BYTES {
            return Err(FsError::Invalid(format!("model file {} is not a regular file of at most 1 GiB", path.display())));
        }
        let bytes = std::fs::read(path).map_err(|e| FsError::Invalid(format!("model file {}: {e}", path.display())))?;
        let hash = self.models.put(&bytes).map_err(|e| FsError::Invalid(format!("model file {}: {e}", path.display())))?;
        let _g = self.lock();
        let mut t = Txn::default();
        t.batch.put(keys::model_name(name.as_bytes()), hash.to_vec());
        self.commit(t)?;
        self.index.flush()?;
        tracing::info!(name, model = %hash_hex(&hash), file = %path.display(), "model imported");
        Ok(hash)
    }

    /// Remove a model name; the model file goes too when nothing else needs it.
    pub fn remove_model(&self, name: &str) -> FsResult<()> {
        let _g = self.lock();
        let Some(hash) = self.index.model_by_name(name.as_bytes())? else {
            return Err(FsError::Invalid(format!("there is no model named {name:?}")));
        };
        let mut t = Txn::default();
        t.batch.delete(keys::model_name(name.as_bytes()));
        self.commit(t)?;
        self.index.flush()?;
        let kept = self.model_needed(&hash)?;
        if kept.is_none() {
            self.models.remove(&hash)?;
        }
        tracing::info!(name, model = %hash_hex(&hash), kept = kept.as_deref().unwrap_or("no: file deleted"), "model name removed");
        Ok(())
    }

    /// Why a model must be kept (blobs, names, directories that need it), if anything does.
    fn model_needed(&self, hash: &ModelHash) -> FsResult<Option<String>> {
        let refs = self.index.model_refs(hash)?;
        if refs > 0 {
            return Ok(Some(format!("{refs} blobs need it")));
        }
        if let Some((n, _)) = self.index.model_names()?.into_iter().find(|(_, h)| h == hash) {
            return Ok(Some(format!("named {:?}", String::from_utf8_lossy(&n))));
        }
        if let Some((d, _)) = self.index.dir_models()?.into_iter().find(|(_, h)| h == hash) {
            return Ok(Some(format!("trained for directory {d}")));
        }
        Ok(None)
    }

    /// Remember the model trained for a directory under `model=auto`.
    pub fn set_dir_model(&self, dir: u64, hash: ModelHash) -> FsResult<()> {
        let _g = self.lock();
        let mut b = crate::index::Batch::default();
        b.put(keys::dir_model(dir), hash.to_vec());
        self.store.keep_room_for_index();
        self.index.apply(b)?;
        self.index.flush()?;
        Ok(())
    }

    /// How a model is shown to people: its names (or the directories it was trained for), else
    /// its hash.
    pub fn model_label(&self, hash: &ModelHash) -> String {
        let names: Vec<String> = self
            .index
            .model_names()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, h)| h == hash)
            .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
            .collect();
        if !names.is_empty() {
            return names.join(",");
        }
        match self.index.dir_models().unwrap_or_default().into_iter().find(|(_, h)| h == hash) {
            Some((d, _)) => format!("auto:{d}"),
            None => hash_hex(hash)[..16].to_string(),
        }
    }

    /// The listing of `user.tezip.models`: one JSON object per stored model.
    pub fn models_listing(&self) -> FsResult<Vec<u8>> {
        let names = self.index.model_names()?;
        let dirs = self.index.dir_models()?;
        let mut out = String::new();
        for h in self.models.hashes()? {
            let bytes = self.models.bytes(&h).unwrap_or_default();
            let info = crate::model::file::from_bytes(&bytes).map(|m| {
                serde_json::json!({
                    "size": m.meta.size, "bound": m.meta.bound, "dtype": m.dtype.to_string(), "frames": m.meta.frames,
                    "steps": m.meta.steps, "loss": m.meta.loss, "fingerprint": hash_hex(&m.meta.fingerprint),
                    "file_version": crate::model::file::version_of(&m), "noise_scale": m.norm.scale.is_some(),
                    "causal_stage": m.causal.as_ref().map(|c| serde_json::json!({"means": c.means})),
                })
            });
            let j = serde_json::json!({
                "hash": hash_hex(&h),
                "names": names.iter().filter(|(_, x)| *x == h).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>(),
                "trained_for_dirs": dirs.iter().filter(|(_, x)| *x == h).map(|(d, _)| *d).collect::<Vec<_>>(),
                "blobs": self.index.model_refs(&h)?,
                "bytes": bytes.len(),
                "model": info.as_ref().ok(),
                "error": info.as_ref().err().map(|e| e.to_string()),
            });
            out.push_str(&j.to_string());
            out.push('\n');
        }
        Ok(out.into_bytes())
    }

    /// `user.tezip.model.import` and `user.tezip.model.remove`.
    pub(super) fn model_admin(&self, attr: &str, value: &[u8]) -> FsResult<()> {
        let v = std::str::from_utf8(value).map_err(|_| FsError::Invalid(format!("{attr}: value is not UTF-8")))?.trim();
        match attr {
            IMPORT => {
                let (name, path) = v.split_once('=').ok_or_else(|| FsError::Invalid(format!("{IMPORT}: expected NAME=/absolute/path/to/model")))?;
                self.import_model(name, std::path::Path::new(path)).map(drop)
            }
            REMOVE => self.remove_model(v),
            _ => Err(FsError::NoAttr),
        }
        .inspect_err(|e| tracing::warn!(attribute = attr, value = v, error = %e, "model administration refused"))
    }
}
