//! Extended attributes: `user.*` attributes stored in the index; the policy settings on
//! directories (validated); read-only attributes computed for files; `user.tezip.stats` on
//! directories (a JSON report) and `user.tezip.recompress` (write-only: re-code a directory).

use super::{now, FsError, FsResult, Txn, Vfs};
use crate::index::{keys, Data, Index, Inode, Kind};
use crate::policy::{self, Policy};

pub const STATS: &str = "user.tezip.stats";
/// Read-only on directories: the effective policy, one `name=value` line per setting.
pub const EFFECTIVE: &str = "user.tezip.policy";
pub const RECOMPRESS: &str = "user.tezip.recompress";
const XATTR_VALUE_MAX: usize = 64 * 1024;

impl Vfs {
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let n = std::str::from_utf8(name).map_err(|_| FsError::NotSupported("non-UTF-8 attribute names"))?;
        if !n.starts_with("user.") {
            return Err(FsError::NotSupported("only user.* attributes are stored"));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(FsError::Range);
        }
        let i = self.inode(ino)?;
        if n == STATS || n == EFFECTIVE || n == super::models::MODELS {
            return Err(FsError::NotPermitted("read-only attribute"));
        }
        if n == super::models::IMPORT || n == super::models::REMOVE {
            if i.kind != Kind::Dir {
                return Err(FsError::Invalid(format!("{n} applies to directories")));
            }
            return self.model_admin(n, value);
        }
        if n == super::scrub::SCRUB {
            return self.scrub_request(ino, value);
        }
        if n == RECOMPRESS {
            if i.kind != Kind::Dir {
                return Err(FsError::Invalid(format!("{RECOMPRESS} applies to directories")));
            }
            return self.request_recompress(ino);
        }
        if n.starts_with("user.tezip.") {
            if i.kind != Kind::Dir {
                return Err(FsError::NotPermitted("user.tezip.* attributes of files are read-only"));
            }
            if let Err(why) = Policy::validate(n, value) {
                tracing::warn!(ino, attribute = n, value = %String::from_utf8_lossy(value), %why, "refused a policy setting");
                return Err(FsError::Invalid(why));
            }
            // A model named by the policy must exist (`none` and `auto` always do).
            if n == policy::MODEL {
                if let super::ModelPolicy::Named(m) = super::ModelPolicy::of(std::str::from_utf8(value).ok()) {
                    if self.model_hash(&m)?.is_none() {
                        let why = format!("{n}: the store has no model {m:?} (import it first: tezipfs model import)");
                        tracing::warn!(ino, %why, "refused a policy setting");
                        return Err(FsError::Invalid(why));
                    }
                }
            }
        }
        let _g = self.lock();
        let exists = self.index.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        let mut i = self.inode(ino)?;
        i.ctime = now();
        let mut t = Txn::default();
        t.batch.put(keys::xattr(ino, name), value.to_vec());
        Index::put_inode(&mut t.batch, &i);
        self.commit(t)?;
        if n.starts_with("user.tezip.") {
            tracing::info!(ino, attribute = n, value = %String::from_utf8_lossy(value), "policy set; applies to frames compressed from now on");
            // Staged files below may now form windows (a smaller window, say): look at them all.
            self.work.rescan();
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        // A file's state is read under its data lock: a compression commit holds it from its
        // index batch until the batch is flushed, so `compressed` is only ever reported once it
        // survives a crash (S35).
        let durable = [policy::STATE, policy::RATIO, policy::FILE_PREDICTOR].iter().any(|n| n.as_bytes() == name);
        let i = if durable {
            let _d = self.data_lock(ino);
            self.inode(ino)?
        } else {
            self.inode(ino)?
        };
        if let Some(v) = self.computed_xattr(&i, name)? {
            return Ok(v);
        }
        self.index.xattr(ino, name)?.ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let i = self.inode(ino)?;
        let mut names: Vec<Vec<u8>> = self.index.xattrs(ino)?.into_iter().map(|(k, _)| k).collect();
        if i.kind == Kind::File {
            for n in [policy::STATE, policy::RATIO, policy::FILE_PREDICTOR] {
                names.push(n.as_bytes().to_vec());
            }
        }
        Ok(names)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let _g = self.lock();
        if self.index.xattr(ino, name)?.is_none() {
            return Err(FsError::NoAttr);
        }
        let mut i = self.inode(ino)?;
        i.ctime = now();
        let mut t = Txn::default();
        t.batch.delete(keys::xattr(ino, name));
        Index::put_inode(&mut t.batch, &i);
        self.commit(t)?;
        if name.starts_with(b"user.tezip.") {
            self.work.rescan(); // the inherited policy applies again (see setxattr)
        }
        Ok(())
    }

    fn computed_xattr(&self, i: &Inode, name: &[u8]) -> FsResult<Option<Vec<u8>>> {
        let n = match std::str::from_utf8(name) {
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        if i.kind == Kind::Dir {
            return Ok(match n {
                STATS => Some(self.stats(i.ino)?.to_json_within(super::stats::XATTR_SIZE_MAX)),
                super::models::MODELS => Some(self.models_listing()?),
                super::scrub::SCRUB if i.ino == super::ROOT => Some(self.scrub_status()?),
                EFFECTIVE => {
                    let p = self.policy(i.ino)?;
                    Some(policy::SETTINGS.iter().map(|k| format!("{k}={}\n", p.get(k).unwrap_or_default())).collect::<String>().into_bytes())
                }
                _ => None,
            });
        }
        if i.kind != Kind::File {
            return Ok(None);
        }
        Ok(match n {
            policy::STATE => Some(
                match &i.data {
                    Data::None | Data::Staged => "staged",
                    Data::Compressed { frame: true, .. } => "compressed",
                    Data::Compressed { frame: false, .. } => "stored",
                }
                .as_bytes()
                .to_vec(),
            ),
            policy::RATIO => Some(
                match &i.data {
                    Data::Compressed { stored, .. } if *stored > 0 => format!("{:.3}", i.size as f64 / *stored as f64),
                    _ => "1.000".into(),
                }
                .into_bytes(),
            ),
            policy::FILE_PREDICTOR => Some(
                match &i.data {
                    Data::Compressed { blob, frame: true, .. } => self.blob_predictor(*blob),
                    Data::Compressed { .. } => "none (stored whole)".into(),
                    _ => "none (staged)".into(),
                }
                .into_bytes(),
            ),
            _ => None,
        })
    }

    fn blob_predictor(&self, blob: u64) -> String {
        // The predictor id and the model hash sit at fixed places of the header, which a
        // version-14 blob stores compressed (docs/FORMAT.md): only the header is read.
        let peeked = std::fs::File::open(self.store.blob_path(blob)).and_then(|mut f| crate::codec::container::read_predictor(&mut f));
        match peeked.ok().flatten() {
            Some((id, model)) => {
                let p = crate::codec::PredictorId::from_id(id).map(|p| p.to_string()).unwrap_or_else(|| "unknown".into());
                if model == [0; 32] {
                    p
                } else {
                    format!("prednet:{}+{p}", self.model_label(&model))
                }
            }
            None => "unknown".into(),
        }
    }

    /// The effective policy of a directory: nearest ancestor wins, then the config defaults.
    pub fn policy(&self, dir: u64) -> FsResult<Policy> {
        let mut chain = Vec::new();
        let mut cur = dir;
        for _ in 0..4096 {
            chain.push(cur);
            if cur == super::ROOT {
                break;
            }
            cur = self.inode(cur)?.parent;
        }
        let mut p = self.root_policy();
        for d in chain.iter().rev() {
            for (name, value) in self.index.xattrs(*d)? {
                let name = String::from_utf8_lossy(&name);
                if policy::SETTINGS.contains(&name.as_ref()) {
                    if let Err(why) = p.set(&name, &value) {
                        tracing::warn!(dir = d, attribute = %name, %why, "ignoring a stored policy value");
                    }
                }
            }
        }
        Ok(p)
    }
}
