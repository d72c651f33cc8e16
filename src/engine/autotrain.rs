//! `user.tezip.model=auto`: a directory that has no model gets one trained in the background on
//! its first frames, while its windows are coded classically; once the model is stored, new
//! windows try it (kept where it codes smaller), and the directory's older lossless windows are
//! re-coded when the engine is idle. (Lossy windows are not re-coded: their originals are gone,
//! and coding a reconstruction again under the same bound could double the error.)
//!
//! Training never holds up ingest or reads: it runs on its own thread at the lowest priority,
//! with the libtorch threads the mount gives it, within a wall-clock budget.

use crate::codec::{analyze, Analysis, Bound};
use crate::model::train::{self, TrainOptions};
use crate::vfs::Vfs;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory whose training failed is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// Settings of automatic training (`tezipfs mount --auto-train-*`).
#[derive(Clone, Debug)]
pub struct AutoTrain {
    /// Frames a directory's model is trained on (its first ones; at least 2).
    pub frames: usize,
    /// Wall-clock budget of one training.
    pub minutes: f64,
    /// libtorch threads of the training.
    pub threads: usize,
}

impl Default for AutoTrain {
    fn default() -> Self {
        AutoTrain { frames: 16, minutes: 5.0, threads: 1 }
    }
}

#[derive(Clone, Debug)]
enum Status {
    Training { since: Instant },
    Failed { at: Instant, why: String },
}

/// The directories being trained for, or whose training failed; and the directories whose
/// lossless windows were coded without their model because the engine was behind.
#[derive(Default)]
pub struct Trainer {
    status: Mutex<HashMap<u64, Status>>,
    later: Mutex<std::collections::BTreeSet<u64>>,
}

impl Trainer {
    /// Remember that a lossless window of `dir` was coded without its model (the backlog was
    /// over its limit): the directory is re-coded when the engine is idle.
    pub fn recode_later(&self, dir: u64) {
        self.later.lock().unwrap_or_else(|e| e.into_inner()).insert(dir);
    }

    /// Re-code the directories [`Trainer::recode_later`] noted, if the engine is idle.
    pub fn recode_if_idle(&self, vfs: &Vfs) {
        if vfs.store.staging_bytes_recent() >= vfs.config.staging_budget / 4 {
            return;
        }
        let dirs = std::mem::take(&mut *self.later.lock().unwrap_or_else(|e| e.into_inner()));
        for dir in dirs {
            if let Err(e) = vfs.request_recompress_files(dir) {
                tracing::warn!(dir, error = %e, "re-coding a directory with its model failed; its files stay as they are");
            }
        }
    }

    /// Mirror the status into the counters that `stats` shows.
    fn publish(&self, vfs: &Vfs) {
        *vfs.counters.model_training.lock().unwrap_or_else(|e| e.into_inner()) = self.report();
    }

    /// What `stats` shows: per directory, training or failed (with the reason).
    pub fn report(&self) -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(d, s)| {
                (
                    *d,
                    match s {
                        Status::Training { since } => format!("training for {} s", since.elapsed().as_secs()),
                        Status::Failed { why, .. } => format!("failed: {why}"),
                    },
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Start training a model for `dir` on the frames among `files` (a window of it that is
    /// being coded classically), unless one is being trained, failed a short while ago, or there
    /// are too few frames. Returns whether training started.
    pub fn maybe_start(self: &Arc<Self>, vfs: &Arc<Vfs>, dir: u64, files: &[Vec<u8>], policy: &crate::policy::Policy, settings: &AutoTrain) -> bool {
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            match st.get(&dir) {
                Some(Status::Training { .. }) => return false,
                Some(Status::Failed { at, .. }) if at.elapsed() < RETRY_AFTER => return false,
                _ => {}
            }
            // The frames: those of the first frame's geometry, in window order.
            let mut first = None;
            let mut frames = Vec::new();
            for f in files {
                if let Analysis::Frame(l) = analyze(f, &policy.format) {
                    if first.as_ref().is_none_or(|g: &crate::codec::Layout| g.same_geometry(&l)) {
                        let mut img = Vec::new();
                        l.extract(f, &mut img);
                        frames.push(img);
                        first.get_or_insert(l);
                    }
                }
                if frames.len() == settings.frames.max(2) {
                    break;
                }
            }
            let Some(l) = first.filter(|_| frames.len() >= 2) else { return false };
            st.insert(dir, Status::Training { since: Instant::now() });
            drop(st);
            self.publish(vfs);
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            let geom = crate::codec::predict::Geometry::of(l.width as usize, l.height as usize, l.dtype);
            // The model learns the reconstruction error of an absolute bound; other bounds train
            // as lossless (the model is still tried, and kept only where it codes smaller).
            let bound = match policy.bound {
                b @ (Bound::Lossless | Bound::Abs(_)) => b,
                _ => Bound::Lossless,
            };
            let opts =
                TrainOptions { bound, minutes: settings.minutes, threads: Some(settings.threads.max(1)), device: device_of(vfs), ..TrainOptions::default() };
            let (me, vfs, lossless) = (self.clone(), vfs.clone(), policy.bound == Bound::Lossless);
            let spawned = std::thread::Builder::new().name(format!("tezipfs-train-{dir}")).spawn(move || {
                // SAFETY: setpriority on the calling thread only (Linux nice values are per thread).
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                tracing::info!(dir, frames = frames.len(), width = geom.width, height = geom.height, %bound, minutes = opts.minutes, "training a model for the directory (model=auto); its windows are coded classically meanwhile");
                let t = Instant::now();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train::train(&frames, geom, &opts, &mut |_| {})));
                // libtorch's thread count is process-wide: back to the engine's one per worker.
                tch::set_num_threads(1);
                let outcome = match r {
                    Ok(Ok(model)) => {
                        let bytes = crate::model::file::to_bytes(&model);
                        vfs.models.put(&bytes).map_err(|e| e.to_string()).and_then(|h| vfs.set_dir_model(dir, h).map(|_| h).map_err(|e| e.to_string())).map(|h| (h, model.meta.loss))
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("training panicked".into()),
                };
                let mut st = me.status.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok((h, loss)) => {
                        st.remove(&dir);
                        drop(st);
                        me.publish(&vfs);
                        tracing::info!(dir, model = %crate::codec::predict::hash_hex(&h), loss, seconds = t.elapsed().as_secs(), "trained a model for the directory; its new windows try it");
                        if lossless {
                            me.recode(&vfs, dir);
                        }
                    }
                    Err(why) => {
                        tracing::error!(dir, %why, "training a model for the directory failed; it is coded classically (tried again later)");
                        vfs.counters.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        st.insert(dir, Status::Failed { at: Instant::now(), why });
                        drop(st);
                        me.publish(&vfs);
                    }
                }
            });
            if let Err(e) = spawned {
                st.insert(dir, Status::Failed { at: Instant::now(), why: format!("cannot start a thread: {e}") });
                return false;
            }
        }
        true
    }

    /// Re-code the directory's compressed files (lossless) now that it has a model, once the
    /// engine is idle (see [`Trainer::recode_if_idle`]).
    fn recode(&self, _vfs: &Vfs, dir: u64) {
        self.recode_later(dir);
    }
}

fn device_of(vfs: &Vfs) -> train::DeviceChoice {
    match vfs.config.model_backend {
        crate::model::Backend::Torch(crate::model::DeviceChoice::Cuda) => train::DeviceChoice::Cuda,
        crate::model::Backend::Torch(crate::model::DeviceChoice::Auto) => train::DeviceChoice::Auto,
        _ => train::DeviceChoice::Cpu,
    }
}
