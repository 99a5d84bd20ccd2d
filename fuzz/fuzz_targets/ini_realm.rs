//! Fuzz target: The auth service's INI realm file. See `quartet_fuzz::ini::realm`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::ini::realm(data));
