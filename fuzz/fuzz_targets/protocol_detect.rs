//! Arbitrary bytes as the first bytes of a connection, into the proxy's protocol detection.
//!
//! The checks live in `mesh_proxy::detect::fuzz_detect` so that unit tests run them too: no
//! panic, on every prefix (all short ones, a sample of long ones); a verdict never changes as
//! bytes are added; nothing is undecided at the inspection cap; the timeout verdict, the TLS
//! parser and the stateful `Detector` agree with `detect`. The input is also spliced into
//! captured ClientHellos so that the extension parsers get exercised.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_proxy::detect::fuzz_detect(data);
});
