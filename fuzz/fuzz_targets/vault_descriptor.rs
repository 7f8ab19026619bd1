#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coldvault::fuzz::vault_descriptor(data));
