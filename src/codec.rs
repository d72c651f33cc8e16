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

/// `f` on every item, on up to `threads` scoped threads (contiguous runs of items each; the
/// items are pieces of about equal work: the stripes of a version-7 blob, the row slices of the
/// adaptive stage), results in item order. A panic in `f` is resumed on the caller.
pub(crate) fn side_by_side<T: Send, R: Send>(items: &mut [T], threads: usize, f: impl Fn(usize, &mut T) -> R + Sync) -> Vec<R> {
    let t = threads.clamp(1, items.len().max(1));
    if t == 1 {
        return items.iter_mut().enumerate().map(|(s, x)| f(s, x)).collect();
    }
    let per = items.len().div_ceil(t);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks_mut(per)
            .enumerate()
            .map(|(c, chunk)| scope.spawn(move || chunk.iter_mut().enumerate().map(|(j, x)| f(c * per + j, x)).collect::<Vec<R>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}
