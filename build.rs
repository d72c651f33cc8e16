//! Link-time glue for libtorch (tch / torch-sys).
//!
//! torch-sys finds libtorch through `LIBTORCH` (set in `.cargo/config.toml` to the PyTorch wheel
//! inside the repo's virtualenv). Two things are added here so that the built binary runs without
//! `LD_LIBRARY_PATH` and finds CUDA when the machine has it:
//! - an rpath to `$LIBTORCH/lib`, embedded at link time;
//! - `--no-as-needed` around the torch libraries, so that `libtorch_cuda.so` stays a `NEEDED`
//!   entry even though no symbol of it is referenced directly (its kernels register themselves
//!   from static initialisers).
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
    for name in ["torch_cuda", "torch_cpu", "torch", "c10_cuda", "c10"] {
        if lib.join(format!("lib{name}.so")).exists() {
            println!("cargo:rustc-link-arg=-l{name}");
        }
    }
    // libtorch is C++; the libraries above need the C++ runtime even where no tch code is used.
    println!("cargo:rustc-link-arg=-lstdc++");
}
