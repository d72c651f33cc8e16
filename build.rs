//! Link-time glue for libtorch (tch / torch-sys).
//!
//! torch-sys finds libtorch through `LIBTORCH` (set in `.cargo/config.toml` to the PyTorch wheel
//! inside the repo's virtualenv). Added here:
//! - an rpath to `$LIBTORCH/lib`, embedded at link time, so that the binary runs without
//!   `LD_LIBRARY_PATH` (and finds the CUDA half there at run time);
//! - `--no-as-needed` around libtorch's CPU half and c10 only. The CUDA half (`libtorch_cuda.so`,
//!   and `libtorch.so`, which only names both halves) is left out on purpose: the rustc default
//!   `--as-needed` drops torch-sys's `-ltorch_cuda`, since no symbol of it is referenced, and
//!   `tezipfs::model::cuda::load` opens it at run time where a GPU driver is (linked, it cost
//!   every process 0.3-0.5 s and 400 MB of resident memory on machines without a GPU).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(root) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(root).join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for name in ["torch_cpu", "c10"] {
        if lib.join(format!("lib{name}.so")).exists() {
            println!("cargo:rustc-link-arg=-l{name}");
        }
    }
    // libtorch is C++; the libraries above need the C++ runtime even where no tch code is used.
    println!("cargo:rustc-link-arg=-lstdc++");
}
