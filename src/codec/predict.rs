//! Prediction: how every frame of a window is predicted from the reconstructed frames before it.
//!
//! A window is a key frame followed by predicted frames. Each frame has a temporal *reference*
//! (the previous reconstruction, as a learned [`Model`] corrects it when the window has one,
//! moved by the frame's [`motion`] vectors when it has them), and the predictor id says how each
//! pixel is predicted from it and from the pixels of the frame already reconstructed
//! ([`Prediction`], in [`pixel`]). A [`Session`] carries all of that across a window; the encoder
//! and the decoder drive the same session, so they predict alike, lossless or under an error
//! bound (every prediction is made from reconstructions).
//!
//! Only the encoder searches (motion vectors, `linear` coefficients); what it found is stored in
//! the blob, and the decoder only applies it.

pub mod causal;
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
    /// Whether the model takes frames of `geom` (the error [`Model::start`] would give), without
    /// making a state: what the causal stage, which keeps none of the model's, needs to know.
    fn fits(&self, geom: Geometry) -> Result<(), PredictError> {
        self.start(geom).map(|_| ())
    }
    /// Bytes one window's state holds for frames of `geom` (what [`Model::start`] allocates and
    /// a step keeps), for the memory budget (`window::model_window_bytes`). 0 for a model that
    /// holds nothing per window beyond what its caller counts (the benches' playbacks).
    fn state_bytes(&self, _geom: Geometry) -> u64 {
        0
    }
    /// Bytes of scratch a running call of the model may hold whatever the frame size (the torch
    /// backend's band buffers, kept between calls), on top of [`Model::state_bytes`]' share;
    /// counted once per call that may run at once (a window or decoder, or each of its stripes
    /// coded or decoded side by side). 0 by default.
    fn scratch_bytes(&self) -> u64 {
        0
    }
    /// The reference of the next frame of each window, into `outs` (one frame each). Every state
    /// must have observed at least one frame.
    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError>;
    /// Take in the reconstruction of the frame just coded (the key frame included), for each
    /// window.
    fn observe_batch(&self, states: &mut [&mut dyn ModelState], recons: &[&[u32]]) -> Result<(), PredictError>;
    /// The model's causal stage, if it has one (model file version 3): what predictor
    /// [`PredictorId::Causal`] runs.
    fn causal(&self) -> Option<&causal::CausalStage> {
        None
    }
    /// Which of frame `t`'s own pixels its reference was made from: none for a model (it
    /// predicts from the reconstructions before `t`); the benches' genies see some of them, and
    /// the encoder then keeps away the predictors that would read the reference where it saw
    /// the pixel being coded ([`SeesFrame`]).
    fn sees_frame(&self) -> SeesFrame {
        SeesFrame::No
    }
}

/// What a reference saw of the frame it predicts ([`Model::sees_frame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SeesFrame {
    /// Nothing (every model).
    #[default]
    No,
    /// Its value at pixel `j` saw frame `t`'s pixels before `j` in raster order (a causal
    /// genie): a predictor may read it at the pixel and left of it or above it, not right of it
    /// on the rows above (`linear` reads it right of and below the pixel: not allowed).
    Causal,
    /// Its value at pixel `j` saw all of frame `t` but pixel `j` (a non-causal genie): a
    /// predictor may read it at the pixel only.
    AllButThePixel,
}

impl SeesFrame {
    /// Whether a predictor may correct this reference without reading, at a neighbour, what the
    /// reference saw of the pixel being coded.
    pub fn allows(self, pid: PredictorId) -> bool {
        match self {
            SeesFrame::No => true,
            // (`previous+med` reads it left, above and above-left; `blend` at the pixel.)
            SeesFrame::Causal => matches!(pid, PredictorId::Previous | PredictorId::PreviousMed | PredictorId::Blend),
            SeesFrame::AllButThePixel => matches!(pid, PredictorId::Previous | PredictorId::Blend),
        }
    }
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
    /// The learned causal stage of the window's model ([`causal`]): frame `t`'s reconstructed
    /// neighbours, the previous frame and running means through a small integer network.
    /// Container version 10.
    Causal = 8,
}

impl PredictorId {
    pub const ALL: [PredictorId; 9] = [
        PredictorId::None,
        PredictorId::Previous,
        PredictorId::PreviousMed,
        PredictorId::Blend,
        PredictorId::Spatial,
        PredictorId::Linear,
        PredictorId::MotionMed,
        PredictorId::Motion,
        PredictorId::Causal,
    ];

    /// How frame `k` of a window is predicted, given the temporal predictor's output `pred` (for
    /// `motion`, already moved) and the window's predictor coefficients (`linear` only) with
    /// the [`linear::box_means`] of `pred` (its wide tap set only).
    pub fn prediction<'a>(self, k: usize, pred: &'a [u32], width: usize, coefs: &'a [i32], boxes: &'a [u32]) -> Prediction<'a> {
        if k == 0 && self.intra_key() {
            return Prediction::Intra { width };
        }
        match self {
            // (`causal` without its network: the session makes its prediction, see
            // `Session::prediction`.)
            PredictorId::None | PredictorId::Previous | PredictorId::Motion | PredictorId::Causal => Prediction::Frame(pred),
            PredictorId::PreviousMed | PredictorId::MotionMed => Prediction::TemporalMed { prev: pred, width },
            PredictorId::Blend => Prediction::Blend { prev: pred, width },
            PredictorId::Spatial => Prediction::Intra { width },
            PredictorId::Linear => Prediction::Linear { prev: pred, width, coefs, boxes },
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

    /// Whether a learned model may correct this predictor's reference (`docs/MODEL.md`): the
    /// predictors that read the previous frame unmoved.
    pub fn takes_model(self) -> bool {
        matches!(self, PredictorId::Previous | PredictorId::PreviousMed | PredictorId::Blend | PredictorId::Linear | PredictorId::Causal)
    }

    /// Whether the predictor is the model itself (its causal stage), so it cannot run without one.
    pub fn needs_model(self) -> bool {
        self == PredictorId::Causal
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
            PredictorId::Causal => "causal",
        })
    }
}

/// What the user asks for (`--predictor`, `user.tezip.predictor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredictorChoice {
    /// Try the candidates on each window and keep the smallest (with the directory's learned
    /// model, when it has one, among them).
    Auto,
    /// Only the learned model's predictors (the classical ones of `auto` while there is no
    /// model).
    Prednet,
    Fixed(PredictorId),
}

impl PredictorChoice {
    /// The classical predictors this choice tries.
    pub fn candidates(self) -> Vec<PredictorId> {
        match self {
            // `motion` and `motion+med` stand in for `previous` and `previous+med`: without
            // motion they code the same bytes.
            PredictorChoice::Auto | PredictorChoice::Prednet => {
                vec![PredictorId::Motion, PredictorId::MotionMed, PredictorId::Blend, PredictorId::Spatial, PredictorId::None, PredictorId::Linear]
            }
            PredictorChoice::Fixed(p) => vec![p],
        }
    }
}

impl fmt::Display for PredictorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PredictorChoice::Auto => f.write_str("auto"),
            PredictorChoice::Prednet => f.write_str("prednet"),
            PredictorChoice::Fixed(p) => p.fmt(f),
        }
    }
}

impl FromStr for PredictorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => return Ok(PredictorChoice::Auto),
            "prednet" => return Ok(PredictorChoice::Prednet),
            _ => {}
        }
        PredictorId::ALL.into_iter().find(|p| p.to_string() == s).map(PredictorChoice::Fixed).ok_or_else(|| {
            format!("unknown predictor {s:?} (expected auto, prednet, previous, previous+med, motion, motion+med, blend, spatial, linear, causal or none)")
        })
    }
}

/// A model as the codec's options carry it (cheap to clone; shows its hash).
#[derive(Clone)]
pub struct ModelHandle(pub std::sync::Arc<dyn Model>);

impl fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Model({})", hash_hex(&self.0.hash()))
    }
}

/// Where the decoder finds the models its blobs name (the store, an archive's embedded models).
pub trait ModelSource {
    fn model(&self, hash: &ModelHash) -> Result<std::sync::Arc<dyn Model>, PredictError>;
}

/// No models at all: a blob that names one cannot be decoded here.
pub struct NoModels;

impl ModelSource for NoModels {
    fn model(&self, hash: &ModelHash) -> Result<std::sync::Arc<dyn Model>, PredictError> {
        Err(PredictError::MissingModel(hash_hex(hash)))
    }
}

/// One model (or none): a blob that names another cannot be decoded here.
pub struct OneModel(pub Option<std::sync::Arc<dyn Model>>);

impl OneModel {
    pub fn of(model: std::sync::Arc<dyn Model>) -> OneModel {
        OneModel(Some(model))
    }
}

impl ModelSource for OneModel {
    fn model(&self, hash: &ModelHash) -> Result<std::sync::Arc<dyn Model>, PredictError> {
        self.0.clone().filter(|m| m.hash() == *hash).ok_or_else(|| PredictError::MissingModel(hash_hex(hash)))
    }
}

/// A "model" that plays back given references, frame by frame: the encoder's replay of a real
/// model's references, and the benches' oracle and genie references. A window's state starts at
/// `window_start` (the sequence position of the window's first frame, set before each coding
/// when the references cover a whole sequence; 0 when they are the window's own).
pub struct Playback {
    pub hash: ModelHash,
    /// By sequence position.
    pub refs: Vec<Vec<u32>>,
    pub window_start: std::sync::atomic::AtomicUsize,
    /// The model replayed, whose causal stage this one offers (a replay stands for it).
    pub replayed: Option<std::sync::Arc<dyn Model>>,
    /// What the references saw of their own frames (a genie's: [`Model::sees_frame`]).
    pub sees: SeesFrame,
}

impl Playback {
    pub fn new(hash: ModelHash, refs: Vec<Vec<u32>>) -> Playback {
        Playback { hash, refs, window_start: std::sync::atomic::AtomicUsize::new(0), replayed: None, sees: SeesFrame::No }
    }
}

#[derive(Clone)]
struct PlaybackState {
    next: usize,
}

impl ModelState for PlaybackState {
    fn clone_box(&self) -> Box<dyn ModelState> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Model for Playback {
    fn hash(&self) -> ModelHash {
        self.hash
    }
    fn start(&self, _geom: Geometry) -> Result<Box<dyn ModelState>, PredictError> {
        Ok(Box::new(PlaybackState { next: self.window_start.load(std::sync::atomic::Ordering::SeqCst) }))
    }
    fn predict_batch(&self, states: &mut [&mut dyn ModelState], outs: &mut [&mut [u32]]) -> Result<(), PredictError> {
        for (s, out) in states.iter_mut().zip(outs.iter_mut()) {
            let k = s.as_any().downcast_ref::<PlaybackState>().ok_or_else(|| PredictError::Malformed("not a playback state".into()))?.next;
            out.copy_from_slice(
                self.refs
                    .get(k)
                    .filter(|r| r.len() == out.len())
                    .ok_or_else(|| PredictError::Malformed(format!("no reference of frame {k} of {} pixels", out.len())))?,
            );
        }
        Ok(())
    }
    fn observe_batch(&self, states: &mut [&mut dyn ModelState], _recons: &[&[u32]]) -> Result<(), PredictError> {
        for s in states.iter_mut() {
            if let Some(s) = s.as_any_mut().downcast_mut::<PlaybackState>() {
                s.next += 1;
            }
        }
        Ok(())
    }
    fn sees_frame(&self) -> SeesFrame {
        self.sees
    }
    fn causal(&self) -> Option<&causal::CausalStage> {
        self.replayed.as_ref().and_then(|m| m.causal())
    }
}

/// A model and its state for one window.
struct ModelRun {
    model: std::sync::Arc<dyn Model>,
    state: Box<dyn ModelState>,
}

/// The prediction of one window, frame after frame: the one code path the encoder and the
/// decoder both drive, so that they predict alike by construction. Per frame:
///
/// 1. [`Session::begin`] makes the frame's temporal *reference* (the previous reconstruction,
///    a model's correction of it, or zeros for `none`); [`begin_batch`] does it for several
///    windows at once, one model call per group;
/// 2. [`Session::move_by`] applies the frame's motion vectors, if any (the encoder searches them
///    on [`Session::reference`] and [`Session::older`]; the decoder reads them from the blob);
/// 3. [`Session::prediction`] says how each pixel is predicted, which the quantiser walks;
/// 4. [`Session::observe`] takes in the frame's reconstruction.
///
/// The key frame (position 0) is intra-predicted under every predictor but `none`.
pub struct Session {
    pid: PredictorId,
    geom: Geometry,
    coefs: Vec<i32>,
    model: Option<ModelRun>,
    /// `causal`: the model whose causal stage predicts, and what the stage keeps of the past.
    causal: Option<(std::sync::Arc<dyn Model>, causal::Past)>,
    /// Chain position of the frame being predicted.
    k: usize,
    /// Reconstructions of frames `k - 1` and `k - 2` (empty before them).
    prev: Vec<u32>,
    older: Vec<u32>,
    /// The reference of frame `k` when it is not `prev` (zeros for `none`, a model's output).
    own_reference: Vec<u32>,
    begun: bool,
    /// The reference moved by frame `k`'s vectors (`moving`), and the blocks' corrections.
    moved: Vec<u32>,
    moving: bool,
    modes: Option<Vec<u8>>,
    /// `linear` with its wide tap set: the box means of frame `k`'s reference, and the sums
    /// that make them.
    boxes: Vec<u32>,
    box_sums: Vec<u64>,
}

impl Session {
    /// A window's session: predictor, frame geometry, coefficients (`linear`: as stored in the
    /// blob; others: empty) and the model that corrects the reference, if any.
    pub fn new(pid: PredictorId, geom: Geometry, coefs: &[i32], model: Option<std::sync::Arc<dyn Model>>) -> Result<Session, PredictError> {
        if pid == PredictorId::Linear && !linear::valid(coefs) {
            return Err(PredictError::Malformed("linear predictor coefficients are invalid".into()));
        }
        let (model, causal) = match model {
            Some(_) if !pid.takes_model() => return Err(PredictError::Malformed(format!("a learned model cannot correct predictor {pid}"))),
            Some(model) if pid.needs_model() => {
                if model.causal().is_none() {
                    return Err(PredictError::Model { model: hash_hex(&model.hash()), why: "it has no causal stage (predictor causal)".into() });
                }
                // (The stage keeps no state of the model's.)
                model.fits(geom)?;
                (None, Some((model, causal::Past::default())))
            }
            Some(model) => (Some(ModelRun { state: model.start(geom)?, model }), None),
            None if pid.needs_model() => return Err(PredictError::Malformed(format!("predictor {pid} without a learned model"))),
            None => (None, None),
        };
        let own_reference = if pid == PredictorId::None { vec![geom.zero; geom.pixels()] } else { Vec::new() };
        Ok(Session {
            pid,
            geom,
            coefs: coefs.to_vec(),
            model,
            causal,
            k: 0,
            prev: Vec::new(),
            older: Vec::new(),
            own_reference,
            begun: false,
            moved: Vec::new(),
            moving: false,
            modes: None,
            boxes: Vec::new(),
            box_sums: Vec::new(),
        })
    }

    /// A session for predictor `pid` (with `coefs`) that continues from where this one is: the
    /// same history and model state (how the encoder tries several predictors from one
    /// warmed-up model state). Only between frames.
    pub fn fork(&self, pid: PredictorId, coefs: &[i32]) -> Result<Session, PredictError> {
        if self.begun {
            return Err(PredictError::Malformed("a session forked in the middle of a frame".into()));
        }
        if pid.needs_model() || self.causal.is_some() {
            return Err(PredictError::Malformed(format!("a session of {} forked into {pid}", self.pid)));
        }
        let mut s = Session::new(pid, self.geom, coefs, None)?;
        if let Some(run) = &self.model {
            if !pid.takes_model() {
                return Err(PredictError::Malformed(format!("a learned model cannot correct predictor {pid}")));
            }
            s.model = Some(ModelRun { model: run.model.clone(), state: run.state.clone_box() });
        }
        (s.k, s.prev, s.older) = (self.k, self.prev.clone(), self.older.clone());
        Ok(s)
    }

    pub fn predictor(&self) -> PredictorId {
        self.pid
    }

    pub fn geometry(&self) -> Geometry {
        self.geom
    }

    /// Chain position of the frame being predicted (0: the key frame).
    pub fn position(&self) -> usize {
        self.k
    }

    /// The hash of the model correcting the reference, if any.
    pub fn model_hash(&self) -> Option<ModelHash> {
        self.model.as_ref().map(|m| m.model.hash()).or_else(|| self.causal.as_ref().map(|c| c.0.hash()))
    }

    /// Whether frame `k` has a temporal reference (every frame but an intra key frame).
    fn has_reference(&self) -> bool {
        self.k > 0 || !self.pid.intra_key()
    }

    /// Make the reference of the frame being predicted.
    pub fn begin(&mut self) -> Result<(), PredictError> {
        begin_batch(&mut [self])
    }

    /// The temporal reference of the frame being predicted (after [`Session::begin`]).
    pub fn reference(&self) -> &[u32] {
        if self.pid == PredictorId::None || self.model.is_some() {
            &self.own_reference
        } else {
            &self.prev
        }
    }

    /// The reconstruction of the frame before the previous one (the second reference of motion
    /// vectors), from the third frame of the window on.
    pub fn older(&self) -> Option<&[u32]> {
        (self.k >= 2).then_some(&self.older[..])
    }

    /// Apply frame `k`'s motion vectors as stored (empty: none) to the reference.
    pub fn move_by(&mut self, vectors: &[u8], subpel: bool) -> Result<(), PredictError> {
        if !self.begun {
            return Err(PredictError::Malformed("motion applied before the frame's reference was made".into()));
        }
        self.modes = None;
        self.moving = !vectors.is_empty();
        if !self.moving {
            return Ok(());
        }
        if !self.pid.moves() || self.k == 0 {
            self.moving = false;
            return Err(PredictError::Malformed(format!("motion vectors on a {} frame", if self.k == 0 { "key".to_string() } else { self.pid.to_string() })));
        }
        let (w, h) = (self.geom.width, self.geom.height);
        let older = (self.k >= 2).then_some(&self.older[..]);
        let reference = if self.model.is_some() { &self.own_reference } else { &self.prev };
        if motion::apply(reference, older, vectors, w, h, subpel, &mut self.moved).is_err() {
            self.moving = false;
            return Err(PredictError::Malformed(format!(
                "motion vectors do not fit the frame{}",
                if older.is_none() { " (or name a reference before the key frame)" } else { "" }
            )));
        }
        self.mark_blocks(vectors)
    }

    /// Take the per-block corrections of `vectors`, which move the reference as the vectors last
    /// given to [`Session::move_by`] did and differ from them only in their correction bits
    /// (what the encoder's block-mode choice changes), without moving it again.
    pub fn mark_blocks(&mut self, vectors: &[u8]) -> Result<(), PredictError> {
        self.modes = motion::corrections(vectors, self.geom.width, self.geom.height);
        if self.modes.is_some() && self.pid != PredictorId::Motion {
            self.modes = None;
            return Err(PredictError::Malformed(format!("motion vectors correct blocks (temporal MED, spatial) under {}", self.pid)));
        }
        Ok(())
    }

    /// The reference as the frame's vectors moved it (the reference itself without vectors).
    pub fn moved(&self) -> &[u32] {
        if self.moving {
            &self.moved
        } else {
            self.reference()
        }
    }

    /// How each pixel of the frame being predicted is predicted.
    pub fn prediction(&self) -> Prediction<'_> {
        match (&self.modes, &self.causal) {
            (Some(modes), _) => Prediction::BlockModes { prev: self.moved(), width: self.geom.width, modes },
            (None, Some((model, past))) if self.k > 0 => match model.causal() {
                Some(net) => Prediction::Causal { net, past, width: self.geom.width },
                // (`Session::new` checked that the model has its stage.)
                None => Prediction::Frame(&self.prev),
            },
            (None, _) => self.pid.prediction(self.k, self.moved(), self.geom.width, &self.coefs, &self.boxes),
        }
    }

    /// Take in the reconstruction of the frame just coded; the session moves to the next frame.
    pub fn observe(&mut self, recon: &[u32]) -> Result<(), PredictError> {
        observe_batch(&mut [self], &[recon])
    }
}

/// [`Session::begin`] for several windows: the sessions that share a model and a geometry are
/// predicted by one call of it (one GPU batch).
pub fn begin_batch(sessions: &mut [&mut Session]) -> Result<(), PredictError> {
    let mut batched: Vec<usize> = Vec::new();
    for (j, s) in sessions.iter_mut().enumerate() {
        if s.begun {
            return Err(PredictError::Malformed(format!("frame {} predicted twice", s.k)));
        }
        s.moving = false;
        s.modes = None;
        if s.model.is_some() && s.has_reference() {
            batched.push(j);
        } else {
            s.begun = true;
        }
    }
    while let Some(&first) = batched.first() {
        let key = |s: &Session| (s.model.as_ref().map(|m| std::sync::Arc::as_ptr(&m.model) as *const () as usize), s.geom);
        let want = key(&*sessions[first]);
        let (group, rest): (Vec<usize>, Vec<usize>) = batched.iter().partition(|&&j| key(&*sessions[j]) == want);
        batched = rest;
        let model = sessions[first].model.as_ref().map(|m| m.model.clone()).expect("batched sessions have a model");
        let mut picked: Vec<&mut Session> = Vec::with_capacity(group.len());
        for (j, s) in sessions.iter_mut().enumerate() {
            if group.contains(&j) {
                picked.push(&mut **s);
            }
        }
        let n = picked[0].geom.pixels();
        let mut states: Vec<&mut dyn ModelState> = Vec::with_capacity(picked.len());
        let mut outs: Vec<&mut [u32]> = Vec::with_capacity(picked.len());
        for s in picked.iter_mut() {
            s.own_reference.resize(n, 0);
            let run = s.model.as_mut().expect("batched sessions have a model");
            states.push(run.state.as_mut());
            outs.push(&mut s.own_reference[..]);
        }
        model.predict_batch(&mut states, &mut outs)?;
        for s in picked {
            s.begun = true;
        }
    }
    for s in sessions.iter_mut() {
        if s.pid == PredictorId::Linear && linear::is_wide(&s.coefs) && s.has_reference() {
            let (mut boxes, mut sums) = (std::mem::take(&mut s.boxes), std::mem::take(&mut s.box_sums));
            linear::box_means(s.reference(), s.geom.width, &mut boxes, &mut sums);
            (s.boxes, s.box_sums) = (boxes, sums);
        }
    }
    Ok(())
}

/// [`Session::observe`] for several windows (the model's part in one call per group).
pub fn observe_batch(sessions: &mut [&mut Session], recons: &[&[u32]]) -> Result<(), PredictError> {
    if recons.len() != sessions.len() {
        return Err(PredictError::Malformed("one reconstruction per window".into()));
    }
    for (s, r) in sessions.iter().zip(recons) {
        if r.len() != s.geom.pixels() {
            return Err(PredictError::Malformed(format!("reconstruction of {} pixels for frames of {}", r.len(), s.geom.pixels())));
        }
        if !s.begun {
            return Err(PredictError::Malformed(format!("frame {} observed before it was predicted", s.k)));
        }
    }
    let mut done = vec![false; sessions.len()];
    for first in 0..sessions.len() {
        if done[first] || sessions[first].model.is_none() {
            continue;
        }
        let model = sessions[first].model.as_ref().map(|m| m.model.clone()).expect("checked");
        let ptr = std::sync::Arc::as_ptr(&model) as *const () as usize;
        let mut states: Vec<&mut dyn ModelState> = Vec::new();
        let mut rs: Vec<&[u32]> = Vec::new();
        for (j, s) in sessions.iter_mut().enumerate() {
            if let Some(run) = s.model.as_mut().filter(|r| std::sync::Arc::as_ptr(&r.model) as *const () as usize == ptr) {
                done[j] = true;
                states.push(run.state.as_mut());
                rs.push(recons[j]);
            }
        }
        model.observe_batch(&mut states, &rs)?;
    }
    for (s, r) in sessions.iter_mut().zip(recons) {
        if let Some((_, past)) = &mut s.causal {
            past.observe(r, s.geom.width);
        }
        std::mem::swap(&mut s.older, &mut s.prev);
        s.prev.clear();
        s.prev.extend_from_slice(r);
        s.k += 1;
        s.begun = false;
        s.moving = false;
        s.modes = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_predicts_the_last_reconstruction() {
        let mut s = Session::new(PredictorId::Previous, Geometry::of(2, 1, crate::codec::DType::U16), &[], None).unwrap();
        s.begin().unwrap();
        assert!(matches!(s.prediction(), Prediction::Intra { .. }));
        s.observe(&[3, 4]).unwrap();
        s.begin().unwrap();
        assert_eq!(s.reference(), [3, 4]);
        assert!(s.older().is_none());
        s.observe(&[5, 6]).unwrap();
        s.begin().unwrap();
        assert_eq!((s.reference(), s.older()), (&[5, 6][..], Some(&[3, 4][..])));
        assert_eq!(s.position(), 2);
    }

    #[test]
    fn misuse_is_an_error() {
        let g = Geometry::of(2, 1, crate::codec::DType::U8);
        let mut s = Session::new(PredictorId::Motion, g, &[], None).unwrap();
        assert!(s.observe(&[1, 2]).is_err(), "observed before predicted");
        s.begin().unwrap();
        assert!(s.begin().is_err(), "predicted twice");
        assert!(s.move_by(&[1, 0], false).is_err(), "vectors on a key frame");
        assert!(s.observe(&[1]).is_err(), "wrong size");
        s.observe(&[1, 2]).unwrap();
        s.begin().unwrap();
        assert!(s.move_by(&[1, 0, 1], false).is_err(), "vectors that do not fit");
        assert!(Session::new(PredictorId::Linear, g, &[1, 2], None).is_err());
    }
}
