//! `tezipfs fixtures`: write a generated sequence.

use anyhow::{bail, Context};
use std::path::Path;
use tezipfs::codec::format::tiff;
use tezipfs::codec::DType;
use tezipfs::fixtures::{for_each_image, write_raw_dir_with, Scene, SequenceSpec};

/// `floor`: write the exact floor into meta.json (raw output only; TIFF output has no meta.json).
#[allow(clippy::too_many_arguments)]
pub fn run(out: &Path, dtype: DType, scene: Scene, size: &str, frames: usize, seed: u64, as_tiff: bool, floor: bool) -> anyhow::Result<()> {
    let (w, h) = size.split_once('x').with_context(|| format!("bad size {size:?}, expected WxH"))?;
    let (width, height): (u32, u32) = (w.parse()?, h.parse()?);
    if width == 0 || height == 0 {
        bail!("size must be at least 1x1");
    }
    let spec = SequenceSpec::of_scene(scene, dtype, width, height, frames, seed);
    if as_tiff {
        std::fs::create_dir_all(out)?;
        for_each_image(&spec, |i, img| std::fs::write(out.join(format!("frame_{i:05}.tif")), tiff::write(width, height, dtype, false, 64, false, &img)))?;
    } else {
        write_raw_dir_with(out, &spec, floor)?;
    }
    println!("wrote {frames} {dtype} frames of {width}x{height} ({scene}) to {}", out.display());
    Ok(())
}
