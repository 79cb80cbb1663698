//! mesh-proxy: the sidecar data plane.
//!
//! Not built yet. This crate will hold protocol detection, the meshed mTLS hop, HTTP/2
//! multiplexing between proxies, load balancing, metrics and tap (see ARCHITECTURE.md, "Data path").
//! It exposes nothing until then, so nothing can depend on behaviour that does not exist.
