//! mesh-api: the contracts between the mesh's parts.
//!
//! - [`common`], [`identity`], [`discovery`], [`tunnel`]: the protobuf messages and gRPC services
//!   generated from `proto/mesh/*.proto`, one module per `v1` package.
//! - [`frame`]: the length-delimited codec that carries tunnel frames on a byte stream.
//! - [`crd`]: the Kubernetes custom resources (`Link`, `TrafficSplit`).
//! - [`labels`], [`ports`]: well-known label names, default ports and ALPN protocol names.
//!
//! Everything here is shared by several parts, so a change is a change of contract: add fields and
//! variants, never renumber or rename them.

pub mod crd;
pub mod frame;
pub mod labels;
pub mod ports;

pub use crd::{crds, crds_yaml};

/// Types shared by the discovery and tunnel contracts (`mesh.common.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod common {
    tonic::include_proto!("mesh.common.v1");
}

/// The identity service: workloads trade a CSR and a service-account token for a leaf certificate
/// (`mesh.identity.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod identity {
    tonic::include_proto!("mesh.identity.v1");
}

/// Discovery: endpoint sets, split backends and trust bundles pushed to proxies and gateways
/// (`mesh.discovery.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod discovery {
    tonic::include_proto!("mesh.discovery.v1");
}

/// Tunnel frames exchanged by proxies and gateways, sent with [`crate::frame`]
/// (`mesh.tunnel.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::nursery)]
pub mod tunnel {
    tonic::include_proto!("mesh.tunnel.v1");
}
