//! Fuzz target: MySQL statement text, translated and run on an in-memory engine under a time budget. See `quartet_fuzz::sql::execute`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::sql::execute(data));
