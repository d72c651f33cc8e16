//! The model file (version 1, `docs/MODEL.md`): writing, and reading with validation.
