//! Arbitrary bytes into the SPIFFE bundle JSON readers (one domain's bundle, and the set map).
//!
//! The checks live in `mesh_trust::bundle::fuzz_spiffe_json` so that unit tests run them too: no
//! panic, and an accepted bundle survives a write/read round trip unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_trust::bundle::fuzz_spiffe_json(data);
});
