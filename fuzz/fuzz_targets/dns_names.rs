//! Arbitrary bytes into the DNS server's name mapping and question answering.
//!
//! The checks live in `mesh_federation::dns::fuzz` so that unit tests run them too: the bytes
//! as a name (text, raw labels, wire format) map to a meaning without panicking, case never
//! changes it, and a meaning's canonical name maps back to it; the bytes as a DNS message get
//! answers that follow the response rules and encode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_federation::dns::fuzz::names(data);
    mesh_federation::dns::fuzz::message(data);
});
