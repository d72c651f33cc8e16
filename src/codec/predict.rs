//! Predictors over integer images.
//!
//! A window is a key frame followed by predicted frames. The key frame is coded by the codec
//! itself (intra, see [`med`]); every later frame is predicted by a [`Predictor`] from the
//! *reconstructed* frames before it, so encoder and decoder see the same history even under an
//! error bound. A predictor keeps its per-window state in a [`PredictorState`] (a recurrent model
//! keeps its hidden state there) and can predict the next frame of many windows in one call
//! ([`Predictor::predict_batch`]), which is how a GPU model batches work.

pub mod linear;
pub mod motion;
pub mod pixel;

pub use pixel::Prediction;
use std::fmt;
use std::str::FromStr;

/// Geometry of the frames of one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    /// Valid bits of the integer image (8, 16 or 32).
    pub bits: u32,
    /// The integer image of the value zero (0 for unsigned types, the midpoint for signed
    /// and float types).
    pub zero: u32,
    pub dtype: crate::codec::DType,
}

impl Geometry {
    pub fn of(width: usize, height: usize, dtype: crate::codec::DType) -> Geometry {
        Geometry { width, height, bits: dtype.bits(), zero: dtype.to_image(0), dtype }
    }

    /// The largest integer image value.
    pub fn mask(&self) -> u32 {
        self.dtype.mask()
    }

    pub fn pixels(&self) -> usize {
        self.width * self.height
    }
}

/// The SHA-256 of a model file: how blobs, the store and archives name a model.
pub type ModelHash = [u8; 32];

/// A model's hash as text (lower-case hex).
pub fn hash_hex(h: &ModelHash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PredictError {
    /// The learned model failed or does not fit the frames (another type, a corrupt state).
    #[error("model {model}: {why}")]
    Model { model: String, why: String },
    /// A blob needs a model that is not available here.
    #[error("model {0} is not available (not in the store or archive)")]
    MissingModel(String),
    /// What a frame carries for its prediction (motion vectors, block modes) does not fit it.
    #[error("{0}")]
    Malformed(String),
}

/// A learned model that corrects a window's temporal reference (`docs/MODEL.md`): the reference
/// of frame `t` becomes `clamp(R[t-1] + correction)`, `R` the reconstructions. Implementations
/// are integer-exact: the same reconstructions give the same references on every machine,
/// backend and thread count. States are per window; `predict_batch` serves several windows at
/// once (one GPU batch), all of the same geometry.
pub trait Model: Send + Sync {
    fn hash(&self) -> ModelHash;
    /// A fresh state for a window of frames of `geom` (an error when the model was made for
    /// another pixel type).
    fn start(&self, geom: Geometry) -> Result<Box<dyn ModelState>, PredictError>;
    /// The reference of the next frame of each window, into `outs` (one frame each). Every state
    /// must have observed at least one frame.
    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError>;
    /// Take in the reconstruction of the frame just coded (the key frame included), for each
    /// window.
    fn observe_batch(&self, states: &mut [&mut dyn ModelState], recons: &[&[u32]]) -> Result<(), PredictError>;
}

/// A model's state for one window. Backends downcast it to their own type.
pub trait ModelState: Send + std::any::Any {
    fn clone_box(&self) -> Box<dyn ModelState>;
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Stable ids of predictors, stored in the blob container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PredictorId {
    /// No prediction: every frame is predicted as all zero values.
    None = 0,
    /// Previous reconstructed frame (key frame: intra MED).
    Previous = 1,
    /// Previous frame corrected by MED over the neighbours' temporal differences.
    PreviousMed = 2,
    /// Mean of the previous frame and the intra MED prediction.
    Blend = 3,
    /// Intra MED on every frame (no temporal prediction).
    Spatial = 4,
    /// Per-window least-squares blend of spatial and temporal neighbours ([`crate::codec::predict::linear`]).
    Linear = 5,
    /// The previous frame moved per block ([`crate::codec::predict::motion`]), corrected by MED over the
    /// neighbours' temporal differences (as `previous+med`).
    MotionMed = 6,
    /// The previous frame moved per block (as `previous`, moved).
    Motion = 7,
}

impl PredictorId {
    pub const ALL: [PredictorId; 8] = [PredictorId::None, PredictorId::Previous, PredictorId::PreviousMed, PredictorId::Blend, PredictorId::Spatial, PredictorId::Linear, PredictorId::MotionMed, PredictorId::Motion];

    /// How frame `k` of a window is predicted, given the temporal predictor's output `pred` (for
    /// `motion`, already moved) and the window's predictor coefficients (`linear` only).
    pub fn prediction<'a>(self, k: usize, pred: &'a [u32], width: usize, coefs: &'a [i32]) -> Prediction<'a> {
        if k == 0 && self.intra_key() {
            return Prediction::Intra { width };
        }
        match self {
            PredictorId::None | PredictorId::Previous | PredictorId::Motion => Prediction::Frame(pred),
            PredictorId::PreviousMed | PredictorId::MotionMed => Prediction::TemporalMed { prev: pred, width },
            PredictorId::Blend => Prediction::Blend { prev: pred, width },
            PredictorId::Spatial => Prediction::Intra { width },
            PredictorId::Linear => Prediction::Linear { prev: pred, width, coefs },
        }
    }

    pub fn from_id(id: u8) -> Option<PredictorId> {
        PredictorId::ALL.into_iter().find(|p| *p as u8 == id)
    }

    /// Whether the previous frame is moved by per-frame motion vectors before it predicts.
    pub fn moves(self) -> bool {
        matches!(self, PredictorId::Motion | PredictorId::MotionMed)
    }

    /// Whether key frames are intra-predicted (spatially) under this predictor.
    pub fn intra_key(self) -> bool {
        self != PredictorId::None
    }

    /// The temporal predictor behind this id (spatial corrections are applied by the codec).
    pub fn build(self) -> Box<dyn Predictor> {
        match self {
            PredictorId::None | PredictorId::Spatial => Box::new(NonePredictor),
            PredictorId::Previous | PredictorId::PreviousMed | PredictorId::Blend | PredictorId::Linear | PredictorId::MotionMed | PredictorId::Motion => Box::new(PreviousPredictor),
        }
    }
}

impl fmt::Display for PredictorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PredictorId::None => "none",
            PredictorId::Previous => "previous",
            PredictorId::PreviousMed => "previous+med",
            PredictorId::Blend => "blend",
            PredictorId::Spatial => "spatial",
            PredictorId::Linear => "linear",
            PredictorId::MotionMed => "motion+med",
            PredictorId::Motion => "motion",
        })
    }
}

/// What the user asks for (`--predictor`, `user.tezip.predictor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictorChoice {
    /// Try the candidates on each window and keep the smallest.
    Auto,
    Fixed(PredictorId),
}

impl PredictorChoice {
    pub fn candidates(self) -> Vec<PredictorId> {
        match self {
            // `motion` and `motion+med` stand in for `previous` and `previous+med`: without
            // motion they code the same bytes.
            PredictorChoice::Auto => vec![PredictorId::Motion, PredictorId::MotionMed, PredictorId::Blend, PredictorId::Spatial, PredictorId::None, PredictorId::Linear],
            PredictorChoice::Fixed(p) => vec![p],
        }
    }
}

impl fmt::Display for PredictorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PredictorChoice::Auto => f.write_str("auto"),
            PredictorChoice::Fixed(p) => p.fmt(f),
        }
    }
}

impl FromStr for PredictorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(PredictorChoice::Auto);
        }
        PredictorId::ALL
            .into_iter()
            .find(|p| p.to_string() == s)
            .map(PredictorChoice::Fixed)
            .ok_or_else(|| format!("unknown predictor {s:?} (expected auto, previous, previous+med, motion, motion+med, blend, spatial, linear or none)"))
    }
}

/// Per-window state of a predictor.
pub trait PredictorState: Send {
    /// Write the prediction of the next frame into `out` (length = pixels).
    fn predict(&mut self, out: &mut [u32]);
    /// Take in the reconstructed frame that was just coded (key frame included).
    fn observe(&mut self, recon: &[u32]);
}

/// A temporal predictor. Implementations must be deterministic and integer-exact: the same
/// history gives the same prediction on every machine.
pub trait Predictor: Send + Sync {
    fn id(&self) -> PredictorId;
    fn start(&self, geom: Geometry) -> Box<dyn PredictorState>;
    /// Predict the next frame of several windows at once. The default runs them one by one;
    /// a batched model overrides it.
    fn predict_batch(&self, states: &mut [&mut dyn PredictorState], outs: &mut [&mut [u32]]) {
        for (s, o) in states.iter_mut().zip(outs.iter_mut()) {
            s.predict(o);
        }
    }
}

pub struct NonePredictor;
struct NoneState {
    zero: u32,
}

impl PredictorState for NoneState {
    fn predict(&mut self, out: &mut [u32]) {
        out.fill(self.zero);
    }
    fn observe(&mut self, _recon: &[u32]) {}
}

impl Predictor for NonePredictor {
    fn id(&self) -> PredictorId {
        PredictorId::None
    }
    fn start(&self, geom: Geometry) -> Box<dyn PredictorState> {
        Box::new(NoneState { zero: geom.zero })
    }
}

pub struct PreviousPredictor;
struct PreviousState {
    last: Vec<u32>,
}

impl PredictorState for PreviousState {
    fn predict(&mut self, out: &mut [u32]) {
        out.copy_from_slice(&self.last);
    }
    fn observe(&mut self, recon: &[u32]) {
        self.last.clear();
        self.last.extend_from_slice(recon);
    }
}

impl Predictor for PreviousPredictor {
    fn id(&self) -> PredictorId {
        PredictorId::Previous
    }
    fn start(&self, geom: Geometry) -> Box<dyn PredictorState> {
        Box::new(PreviousState { last: vec![0; geom.pixels()] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_predicts_last_observed() {
        let p = PreviousPredictor;
        let mut s = p.start(Geometry::of(2, 1, crate::codec::DType::U16));
        s.observe(&[3, 4]);
        let mut out = [0; 2];
        p.predict_batch(&mut [s.as_mut()], &mut [&mut out]);
        assert_eq!(out, [3, 4]);
    }
}
