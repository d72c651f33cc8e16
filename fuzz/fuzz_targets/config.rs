#![no_main]
// The config target: see tezipfs::fuzz::config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tezipfs::fuzz::config(data));
