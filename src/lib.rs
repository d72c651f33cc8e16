//! tezipfs: a FUSE filesystem for detector frame sequences, with learned and classical
//! prediction and error-bounded residual coding. See `docs/ARCHITECTURE.md`.

pub mod archive;
pub mod cache;
pub mod check;
pub mod codec;
pub mod engine;
#[path = "../fixtures/generator.rs"]
pub mod fixtures;
pub mod fs;
pub mod fuzz;
pub mod index;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod noise;
pub mod policy;
pub mod sortname;
pub mod store;
pub mod vfs;
