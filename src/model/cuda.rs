//! libtorch's CUDA half, loaded at run time and only where a GPU driver is.
//!
//! The PyTorch wheel ships libtorch in two halves: `libtorch_cpu.so` and `libtorch_cuda.so`
//! (with cuDNN, cuBLAS, NCCL and the rest behind it, some 3 GB of libraries). The binary links the
//! CPU half only (`build.rs`); linked as well, the CUDA half was loaded by every process, GPU or
//! not: `tezipfs --version` took 0.7-1.0 s and 510 MB of resident memory on a machine without a
//! GPU, against 0.5 s and 117 MB without it, and the daemon's fixed memory grew alike.
//!
//! [`load`] brings the CUDA half in where it can work: only if the NVIDIA driver's library
//! (`libcuda.so.1`, which every CUDA program needs) opens. It must run before libtorch is first
//! asked about CUDA, which caches its answer for the life of the process: `main` calls it first
//! thing, and [`crate::model::DeviceChoice::device`] again (a no-op then) for library users. The
//! library is found as the linked half is, through the rpath `build.rs` embeds.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The NVIDIA driver's user-space library.
const DRIVER: &str = "libcuda.so.1";
/// libtorch's CUDA half (its own dependencies come through its rpath).
const TORCH_CUDA: &str = "libtorch_cuda.so";

/// What [`load`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaLibs {
    /// libtorch's CUDA half is loaded: libtorch sees the machine's GPUs.
    Loaded,
    /// No NVIDIA driver: CUDA cannot run here, the CUDA half is not loaded.
    NoDriver,
    /// A driver, but the CUDA half did not load (a CPU-only libtorch, or a missing library).
    Failed(String),
}

impl std::fmt::Display for CudaLibs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaLibs::Loaded => write!(f, "{TORCH_CUDA} loaded"),
            CudaLibs::NoDriver => write!(f, "not loaded: no NVIDIA driver ({DRIVER} not found)"),
            CudaLibs::Failed(why) => write!(f, "not loaded: {why}"),
        }
    }
}

/// Load libtorch's CUDA half if a GPU driver is present (once per process; later calls return
/// the first answer).
pub fn load() -> &'static CudaLibs {
    static STATE: OnceLock<CudaLibs> = OnceLock::new();
    STATE.get_or_init(|| {
        let state = if open(DRIVER, libc::RTLD_LAZY | libc::RTLD_LOCAL).is_err() {
            CudaLibs::NoDriver
        } else {
            // (Global: the CUDA half's kernels and hooks register themselves with the CPU half's
            // registries from its static initialisers, as when it is linked.)
            match open(TORCH_CUDA, libc::RTLD_NOW | libc::RTLD_GLOBAL) {
                Ok(()) => CudaLibs::Loaded,
                Err(e) => CudaLibs::Failed(format!("{TORCH_CUDA}: {e}")),
            }
        };
        match &state {
            CudaLibs::Failed(_) => tracing::warn!(cuda = %state, "a GPU driver is present but libtorch's CUDA half is not: models run on the CPU"),
            _ => tracing::debug!(cuda = %state, "libtorch's CUDA half"),
        }
        state
    })
}

/// `dlopen(name, flags)`, the handle kept for the life of the process; the loader's message if
/// it fails.
fn open(name: &str, flags: libc::c_int) -> Result<(), String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; dlopen runs the library's
    // initialisers, which for these libraries (the NVIDIA driver, libtorch's CUDA half built
    // against the libtorch this binary links) is what linking them would have done at start.
    // The handle is never closed, so nothing they register is unloaded.
    let handle = unsafe { libc::dlopen(c.as_ptr(), flags) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns NULL or a NUL-terminated string owned by the loader, valid until
    // the next dl* call on this thread; it is copied at once.
    let msg = unsafe { libc::dlerror() };
    Err(if msg.is_null() { "dlopen failed".to_string() } else { unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_does_not_exist_gives_the_loaders_message() {
        let e = open("libtezipfs-no-such-library.so.7", libc::RTLD_LAZY | libc::RTLD_LOCAL).unwrap_err();
        assert!(e.contains("libtezipfs-no-such-library.so.7"), "{e}");
    }

    #[test]
    fn the_cuda_half_is_loaded_exactly_where_a_driver_is() {
        let driver = open(DRIVER, libc::RTLD_LAZY | libc::RTLD_LOCAL).is_ok();
        let state = load();
        assert_eq!(load(), state, "a second call gives the first answer");
        match state {
            CudaLibs::NoDriver => assert!(!driver),
            CudaLibs::Loaded | CudaLibs::Failed(_) => assert!(driver, "{state}"),
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert_eq!(maps.contains(TORCH_CUDA), *state == CudaLibs::Loaded, "{state}");
        if !driver {
            assert!(!tch::Cuda::is_available());
            assert_eq!(crate::model::DeviceChoice::Auto.device(), Ok(tch::Device::Cpu));
            let e = crate::model::DeviceChoice::Cuda.device().unwrap_err();
            assert!(e.contains(DRIVER), "{e}");
        }
    }
}
