//! Fuzz target: MySQL statement text into SQLite statements and session plans. See `quartet_fuzz::sql::translate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::sql::translate(data));
