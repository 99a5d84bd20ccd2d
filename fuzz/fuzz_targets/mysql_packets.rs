//! Fuzz target: MySQL packets off a connection and the command packets the front reads from them. See `quartet_fuzz::mysql::packets`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::mysql::packets(data));
