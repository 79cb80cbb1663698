//! mesh-e2e: the end-to-end harness.
//!
//! [`devcluster`] is a small Kubernetes-API-compatible server for tests and local runs (see
//! ARCHITECTURE.md, "The local dev cluster"): the product talks to it only through kube-rs,
//! exactly as to a real API server.

pub mod devcluster;
