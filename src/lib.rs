//! tezipfs: a FUSE filesystem for detector frame sequences, with learned and classical
//! prediction and error-bounded residual coding. See `docs/ARCHITECTURE.md`.

pub mod archive;
pub mod codec;
#[path = "../fixtures/generator.rs"]
pub mod fixtures;
pub mod noise;
pub mod sortname;
pub mod index;
pub mod store;
pub mod cache;
pub mod policy;
pub mod vfs;
pub mod fs;
pub mod engine;
pub mod model;
