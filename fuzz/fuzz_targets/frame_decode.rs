//! Arbitrary bytes into the tunnel frame decoder, as `StreamHeader` and `TunnelOpenResponse`.
//!
//! The checks live in `mesh_api::frame::fuzz_decode` so that unit tests run them too: no panic,
//! the three decoding paths (whole buffer, byte by byte, `read_frame`) agree, and every decoded
//! message survives an encode/decode round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_api::frame::fuzz_decode(data);
});
