#![no_main]
// The archive target: see tezipfs::fuzz::archive.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tezipfs::fuzz::archive(data));
