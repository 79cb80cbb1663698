//! Arbitrary bytes into the SPIFFE ID and trust domain parsers.
//!
//! The checks live in `mesh_trust::spiffe::fuzz_parse` so that unit tests run them too: no panic,
//! and an accepted ID prints back to a string that parses to the same ID.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_trust::spiffe::fuzz_parse(data);
});
