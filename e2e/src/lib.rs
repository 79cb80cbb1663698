//! mesh-e2e: the end-to-end harness.
//!
//! Not built yet. This crate will hold the Kubernetes-API-compatible dev cluster, the network
//! namespace topology builder, the WAN emulator and the benchmarks (see ARCHITECTURE.md,
//! "The local dev cluster"). It exposes nothing until then.
