//! Fuzz target: The client's answer to the MySQL greeting, read before any password is checked. See `quartet_fuzz::mysql::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::mysql::handshake(data));
