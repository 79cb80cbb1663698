//! Integration tests of mesh-trust, compiled as one binary.
#![allow(clippy::unwrap_used)]

mod trust {
    pub mod support;

    mod handshake;
    mod identity;
    mod rotation;
}
