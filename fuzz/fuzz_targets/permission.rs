//! Fuzz target: Shiro wildcard permission strings and the laws of `implies`. See `quartet_fuzz::permission::implies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::permission::implies(data));
