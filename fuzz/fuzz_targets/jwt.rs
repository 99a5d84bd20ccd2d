//! Fuzz target: Bearer tokens, and signed claims, through the gateways' token verifier. See `quartet_fuzz::jwt::verify`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::jwt::verify(data));
