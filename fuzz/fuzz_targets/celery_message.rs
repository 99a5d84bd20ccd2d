//! Fuzz target: Celery task messages as popped from a Redis list, and the checks of their arguments. See `quartet_fuzz::celery::message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::celery::message(data));
