#![no_main]
// The policy target: see tezipfs::fuzz::policy.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tezipfs::fuzz::policy(data));
