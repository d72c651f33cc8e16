//! Batching across windows: the engine codes several windows at once, one per worker thread,
//! and each asks the model for one frame at a time. On a GPU one call for many frames costs
//! about as much as one for a single frame, so [`Batched`] gathers the calls that arrive within a
//! short wait from every thread into one call of the inner model (the first caller leads: it
//! waits, takes everything queued, runs it, and wakes the others). Results are those of the inner
//! model call by call (its `predict_batch` is exact per window), so batching changes no byte.
//!
//! On a CPU batching gains nothing and only adds the wait, so the registry wraps models in it
//! only on CUDA; it is tested on the CPU all the same.

use crate::codec::predict::{Geometry, Model, ModelHash, ModelState, PredictError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Where a request's result is posted, and the condition its thread waits on.
type Done = (Mutex<Option<Result<(), PredictError>>>, Condvar);

/// One thread's request: its state and output, lent to the leader while the thread waits.
struct Request {
    state: *mut dyn ModelState,
    out: *mut [u32],
    done: Arc<Done>,
}

// SAFETY: a request's pointers come from `&mut` borrows of the thread that queued it, which
// blocks until the leader has used them and marked the request done; no one else touches them
// meanwhile, and `ModelState` is `Send`.
unsafe impl Send for Request {}

#[derive(Default)]
struct Queue {
    requests: Vec<Request>,
    /// A leader is gathering requests.
    leading: bool,
}

pub struct Batched {
    inner: Arc<dyn Model>,
    wait: Duration,
    max: usize,
    queue: Mutex<Queue>,
    /// Largest batch run so far (for tests and logs).
    largest: std::sync::atomic::AtomicUsize,
}

impl Batched {
    /// Gather calls for up to `wait`, at most `max` frames a call.
    pub fn new(inner: Arc<dyn Model>, wait: Duration, max: usize) -> Batched {
        Batched { inner, wait, max: max.max(1), queue: Mutex::default(), largest: Default::default() }
    }

    /// The most frames one call of the inner model has taken.
    pub fn largest_batch(&self) -> usize {
        self.largest.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Model for Batched {
    fn hash(&self) -> ModelHash {
        self.inner.hash()
    }

    fn start(&self, geom: Geometry) -> Result<Box<dyn ModelState>, PredictError> {
        self.inner.start(geom)
    }

    fn fits(&self, geom: Geometry) -> Result<(), PredictError> {
        self.inner.fits(geom)
    }

    fn state_bytes(&self, geom: Geometry) -> u64 {
        self.inner.state_bytes(geom)
    }
    fn scratch_bytes(&self) -> u64 {
        self.inner.scratch_bytes()
    }

    fn causal(&self) -> Option<&crate::codec::predict::causal::CausalStage> {
        self.inner.causal()
    }

    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError> {
        if states.len() != 1 {
            // Already a batch: pass it on.
            return self.inner.predict_batch(states, outs);
        }
        let done = Arc::new((Mutex::new(None), Condvar::new()));
        let lead = {
            let mut q = self.lock();
            q.requests.push(Request { state: &mut *states[0] as *mut dyn ModelState, out: &mut *outs[0] as *mut [u32], done: done.clone() });
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            // Let the other workers' calls arrive, then run everything queued.
            let deadline = std::time::Instant::now() + self.wait;
            while std::time::Instant::now() < deadline && self.lock().requests.len() < self.max {
                std::thread::sleep(Duration::from_micros(200));
            }
            let batch = {
                let mut q = self.lock();
                q.leading = false;
                std::mem::take(&mut q.requests)
            };
            self.largest.fetch_max(batch.len(), std::sync::atomic::Ordering::Relaxed);
            // SAFETY: see `Request`: each pointer is a live `&mut` of a thread blocked on its
            // `done` (this one included), used only here, once.
            let (mut st, mut os): (Vec<&mut dyn ModelState>, Vec<&mut [u32]>) = batch.iter().map(|r| unsafe { (&mut *r.state, &mut *r.out) }).unzip();
            let r = self.inner.predict_batch(&mut st, &mut os);
            drop((st, os));
            for req in &batch {
                let (m, cv) = &*req.done;
                *m.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.clone());
                cv.notify_all();
            }
        }
        let (m, cv) = &*done;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while g.is_none() {
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.take().unwrap_or(Ok(()))
    }

    fn observe_batch(&self, states: &mut [&mut dyn ModelState], recons: &[&[u32]]) -> Result<(), PredictError> {
        self.inner.observe_batch(states, recons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DType;
    use crate::model::{file, reference::ReferenceModel, Size};

    /// Four threads predicting their own windows through one batcher get exactly what the model
    /// gives each alone, and their calls are really batched.
    #[test]
    fn batched_calls_give_the_same_references() {
        let bytes = file::to_bytes(&file::random(&Size::Small.arch(), DType::U8, 3));
        let inner: Arc<dyn Model> = Arc::new(ReferenceModel::from_bytes(&bytes).unwrap());
        let batched = Arc::new(Batched::new(inner.clone(), Duration::from_millis(50), 8));
        let geom = Geometry::of(19, 11, DType::U8);
        let frames: Vec<Vec<Vec<u32>>> =
            (0..4).map(|w| (0..3).map(|k| (0..geom.pixels() as u32).map(|i| (i * 7 + k * 13 + w * 31) % 256).collect()).collect()).collect();
        let run = |m: &dyn Model, frames: &[Vec<u32>]| -> Vec<Vec<u32>> {
            let mut s = m.start(geom).unwrap();
            let mut refs = Vec::new();
            m.observe_batch(&mut [s.as_mut()], &[&frames[0]]).unwrap();
            for f in &frames[1..] {
                let mut out = vec![0u32; geom.pixels()];
                m.predict_batch(&mut [s.as_mut()], &mut [&mut out[..]]).unwrap();
                refs.push(out);
                m.observe_batch(&mut [s.as_mut()], &[f]).unwrap();
            }
            refs
        };
        let alone: Vec<_> = frames.iter().map(|f| run(&*inner, f)).collect();
        let together: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = frames
                .iter()
                .map(|f| {
                    let b = batched.clone();
                    sc.spawn(move || run(&*b, f))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(alone, together);
        assert!(batched.largest_batch() > 1, "no call was batched");
    }
}
