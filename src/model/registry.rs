//! The models of a store: content-addressed model files in `STORE/models/<sha256 hex>`, immutable
//! (a model is written once, durably, and never changed), made into running models on demand and
//! kept for the daemon's life. It is the [`ModelSource`] the mount's decoders find models in.
//!
//! Which names point at which model, which directory trained which, and how many blobs need each
//! model live in the index (`docs/INDEX.md`); this module only holds the files.

use super::{load, Backend};
use crate::codec::predict::{hash_hex, Model, ModelHash, ModelSource, PredictError};
use crate::store::disk;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("not a usable model file: {0}")]
    Invalid(#[from] super::file::ModelFileError),
    #[error("model store {path}: {source}")]
    Io { path: String, source: io::Error },
}

pub struct Registry {
    dir: PathBuf,
    backend: Backend,
    loaded: Mutex<HashMap<ModelHash, Arc<dyn Model>>>,
}

impl Registry {
    /// The models of the directory `dir` (made if missing), run by `backend`.
    pub fn open(dir: &Path, backend: Backend) -> io::Result<Registry> {
        std::fs::create_dir_all(dir)?;
        // Model files that never made it out of their temporary name are garbage.
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = disk::remove_file(&e.path());
            }
        }
        Ok(Registry { dir: dir.to_path_buf(), backend, loaded: Mutex::new(HashMap::new()) })
    }

    /// The models of `dir` as they are: nothing made, nothing removed (`tezipfs fsck`).
    pub fn at(dir: &Path, backend: Backend) -> Registry {
        Registry { dir: dir.to_path_buf(), backend, loaded: Mutex::new(HashMap::new()) }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn path(&self, hash: &ModelHash) -> PathBuf {
        self.dir.join(hash_hex(hash))
    }

    /// Store a model file (validated first), unless the store has it: its hash.
    pub fn put(&self, bytes: &[u8]) -> Result<ModelHash, RegistryError> {
        super::file::from_bytes(bytes)?;
        let hash = super::file::hash(bytes);
        let path = self.path(&hash);
        if !path.exists() {
            let io_err = |source| RegistryError::Io { path: path.display().to_string(), source };
            let tmp = path.with_extension("partial");
            let f = disk::create(&tmp).map_err(io_err)?;
            disk::write_all(&f, &tmp, bytes).map_err(io_err)?;
            disk::sync_all(&f, &tmp).map_err(io_err)?;
            disk::rename(&tmp, &path).map_err(io_err)?;
            crate::store::fsync_dir(&self.dir).map_err(io_err)?;
        }
        Ok(hash)
    }

    /// The bytes of a stored model file.
    pub fn bytes(&self, hash: &ModelHash) -> io::Result<Vec<u8>> {
        disk::read(&self.path(hash))
    }

    pub fn contains(&self, hash: &ModelHash) -> bool {
        self.path(hash).exists()
    }

    /// Delete a model file (the caller has checked that nothing needs it).
    pub fn remove(&self, hash: &ModelHash) -> io::Result<()> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).remove(hash);
        match disk::remove_file(&self.path(hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => crate::store::fsync_dir(&self.dir),
        }
    }

    /// Hashes of the stored model files.
    pub fn hashes(&self) -> io::Result<Vec<ModelHash>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)?.flatten() {
            if let Some(h) = parse_hash(&e.file_name().to_string_lossy()) {
                out.push(h);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A model hash from its hex form (64 lower- or upper-case hex digits).
pub fn parse_hash(s: &str) -> Option<ModelHash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

impl ModelSource for Registry {
    /// The running model of `hash`: loaded once, checked against its hash (a file whose bytes
    /// do not hash to its name is corrupt and refused).
    fn model(&self, hash: &ModelHash) -> Result<Arc<dyn Model>, PredictError> {
        if let Some(m) = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(hash) {
            return Ok(m.clone());
        }
        let name = hash_hex(hash);
        let bytes = match disk::read(&self.path(hash)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PredictError::MissingModel(name)),
            Err(e) => return Err(PredictError::Model { model: name, why: format!("cannot read its file: {e}") }),
        };
        if super::file::hash(&bytes) != *hash {
            return Err(PredictError::Model { model: name, why: "its file is corrupt (its bytes do not match its hash)".into() });
        }
        let model = load(&bytes, self.backend).map_err(|e| PredictError::Model { model: name.clone(), why: e.to_string() })?;
        tracing::info!(model = %name, backend = ?self.backend, "model loaded");
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(*hash, model.clone());
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{file, Size};

    #[test]
    fn stores_loads_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path(), Backend::Reference).unwrap();
        let bytes = file::to_bytes(&file::random(&Size::Small.arch(), crate::codec::DType::U8, 1));
        let h = reg.put(&bytes).unwrap();
        assert_eq!(h, file::hash(&bytes));
        assert_eq!(reg.hashes().unwrap(), vec![h]);
        assert_eq!(reg.model(&h).unwrap().hash(), h);
        // Not a model file: refused before it is stored.
        assert!(matches!(reg.put(b"not a model"), Err(RegistryError::Invalid(_))));
        // Missing, and corrupt on disk (a fresh registry, so nothing is cached).
        assert!(matches!(reg.model(&[7; 32]), Err(PredictError::MissingModel(_))));
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(reg.path(&h), &bad).unwrap();
        let fresh = Registry::open(dir.path(), Backend::Reference).unwrap();
        let e = fresh.model(&h).err().unwrap().to_string();
        assert!(e.contains(&hash_hex(&h)) && e.contains("corrupt"), "{e}");
        assert_eq!(parse_hash(&hash_hex(&h)), Some(h));
        assert_eq!(parse_hash("xyz"), None);
        fresh.remove(&h).unwrap();
        assert!(!fresh.contains(&h));
    }
}
