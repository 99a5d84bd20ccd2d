//! Fuzz target: zerorpc events (MessagePack), as any peer of the RPC gateway sends them. See `quartet_fuzz::zerorpc::event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quartet_fuzz::zerorpc::event(data));
