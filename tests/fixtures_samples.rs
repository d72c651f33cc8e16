//! The committed fixture samples are what the generator makes, and they round-trip through the
//! codec bit-exactly (raw and TIFF).

use std::path::Path;
use tezipfs::codec::format::tiff;
use tezipfs::codec::window::EntryReport;
use tezipfs::codec::{decode_window, encode_window, DType, FormatSpec, Options};
use tezipfs::fixtures::{generate_images, generate_raw, SequenceSpec};

fn samples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/samples"))
}

fn read_sorted(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == ext)).collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn committed_samples_match_the_generator() {
    let u16s = SequenceSpec::detector_u16(64, 48, 4, 11);
    assert_eq!(read_sorted(&samples().join("detector-u16"), "raw"), generate_raw(&u16s));
    let f32s = SequenceSpec { dtype: DType::F32, ..SequenceSpec::detector_u16(32, 16, 3, 13) };
    assert_eq!(read_sorted(&samples().join("detector-f32"), "raw"), generate_raw(&f32s));
    let tifs = SequenceSpec::detector_u16(40, 24, 3, 12);
    let want: Vec<Vec<u8>> = generate_images(&tifs).iter().map(|img| tiff::write(40, 24, DType::U16, false, 64, false, img)).collect();
    assert_eq!(read_sorted(&samples().join("detector-u16-tiff"), "tif"), want);
}

#[test]
fn samples_round_trip_as_frames() {
    for (dir, ext, format) in [("detector-u16", "raw", "raw:64x48:u16"), ("detector-f32", "raw", "raw:32x16:f32"), ("detector-u16-tiff", "tif", "auto")] {
        let files = read_sorted(&samples().join(dir), ext);
        let refs: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
        let opts = Options { format: format.parse::<FormatSpec>().unwrap(), ..Options::default() };
        let enc = encode_window(&refs, &opts).unwrap();
        assert!(enc.entries.iter().all(|e| matches!(e, EntryReport::Frame { .. })), "{dir}: {:?}", enc.entries);
        assert_eq!(decode_window(&enc.blob).unwrap(), files, "{dir}");
        let raw: usize = files.iter().map(|f| f.len()).sum();
        assert!(enc.blob.len() < raw, "{dir}: {} >= {raw}", enc.blob.len());
    }
}
