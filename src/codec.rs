//! The frame codec: pure functions over byte buffers.
//!
//! `format` finds the pixels in a file, `predict` predicts a frame from the frames before it,
//! `quantizer` turns the residual into codes under an error bound, `entropy` turns codes into
//! bytes, `container` is the blob format, and `window` ties them together for one window.

pub mod container;
pub mod dtype;
pub mod entropy;
pub mod format;
pub mod predict;
pub mod quantizer;
pub mod slices;
pub mod window;

pub use container::BlobError;
pub use dtype::DType;
pub use format::{analyze, Analysis, FormatSpec, Layout, RawSpec};
pub use predict::{PredictorChoice, PredictorId};
pub use quantizer::Bound;
pub use window::{decode_window, decode_window_with, encode_window, Decoder, Encoded, Options};
