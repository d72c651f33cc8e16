#![no_main]
// The model target: see tezipfs::fuzz::model.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tezipfs::fuzz::model(data));
