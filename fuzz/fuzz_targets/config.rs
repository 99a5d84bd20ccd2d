//! Fuzz target: Each service's TOML configuration file through the kit's loader. See `quartet_fuzz::config::load`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::config::load(data));
