//! Arbitrary bytes into the transport header decoder, as an inbound proxy receives them.
//!
//! The checks live in `mesh_proxy::transport_header::fuzz_decode` so that unit tests run them
//! too: no panic, and an accepted header re-encodes to an equal one.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proxy::transport_header::fuzz_decode(data);
});
