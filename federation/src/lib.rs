//! mesh-federation: the controller that links clusters.
//!
//! Not built yet. This crate will hold the Link, mirror, trust-bridge, probe, discovery, identity,
//! DNS and failover reconcilers (see ARCHITECTURE.md, "Control plane"). It exposes nothing until then.
