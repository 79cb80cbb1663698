//! mesh-gateway: carries end-to-end mTLS sessions between clusters over QUIC.
//!
//! Not built yet. This crate will hold the QUIC endpoint (ALPN `mesh.gw`), the egress port
//! (ALPN `mesh.tunnel`) and ingress to exported services (see ARCHITECTURE.md, "Data path").
//! It exposes nothing until then.
