//! The reference backend: the integer network of `docs/MODEL.md` in plain Rust loops.
