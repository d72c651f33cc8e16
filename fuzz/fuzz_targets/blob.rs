#![no_main]
// The blob target: see tezipfs::fuzz::blob.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tezipfs::fuzz::blob(data));
