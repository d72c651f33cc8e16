#![no_main]
// The tiff target: see tezipfs::fuzz::tiff.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tezipfs::fuzz::tiff(data));
