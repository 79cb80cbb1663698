//! mesh-api: the contracts between the mesh's parts.
//!
//! - [`common`], [`identity`], [`discovery`], [`tunnel`], [`tap`]: the protobuf messages and gRPC services
//!   generated from `proto/mesh/*.proto`, one module per `v1` package.
//! - [`frame`]: the length-delimited codec that carries tunnel frames on a byte stream.
//! - [`crd`]: the Kubernetes custom resources (`Link`, `TrafficSplit`).
//! - [`duration`]: how durations are written in flags, environment variables and manifests.
//! - [`labels`], [`ports`]: well-known label names, default ports and ALPN protocol names.
//!
//! Everything here is shared by several parts, so a change is a change of contract: add fields and
//! variants, never renumber or rename them.

pub mod crd;
pub mod duration;
pub mod frame;
pub mod labels;
pub mod ports;

pub use crd::{crds, crds_yaml};

// The generated modules below allow clippy's lint groups: their code is prost's and tonic's, not
// ours, and should not fail a build that turns on stricter groups (pedantic warns on it) or
// denies rustdoc warnings (proto comments hold `<namespace>`-style placeholders).

/// Types shared by the discovery and tunnel contracts (`mesh.common.v1`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod common {
    tonic::include_proto!("mesh.common.v1");
}

/// The identity service: workloads trade a CSR and a service-account token for a leaf certificate
/// (`mesh.identity.v1`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod identity {
    tonic::include_proto!("mesh.identity.v1");
}

/// Discovery: endpoint sets, split backends and trust bundles pushed to proxies and gateways
/// (`mesh.discovery.v1`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod discovery {
    tonic::include_proto!("mesh.discovery.v1");
}

/// Tunnel frames exchanged by proxies and gateways, sent with [`crate::frame`]
/// (`mesh.tunnel.v1`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod tunnel {
    tonic::include_proto!("mesh.tunnel.v1");
}

/// Tap: a live stream of request metadata from one proxy, for operators (`mesh.tap.v1`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, rustdoc::all)]
pub mod tap {
    tonic::include_proto!("mesh.tap.v1");
}

#[cfg(test)]
mod tests {
    // Other crates name these paths; this test breaks the build here first if codegen moves them.
    #[test]
    fn generated_paths_are_stable() {
        use std::any::type_name;

        let names = [
            type_name::<crate::common::SocketAddr>(),
            type_name::<crate::common::ProtocolHint>(),
            type_name::<crate::identity::CertifyRequest>(),
            type_name::<crate::identity::CertifyResponse>(),
            type_name::<crate::identity::identity_client::IdentityClient<tonic::transport::Channel>>(
            ),
            type_name::<crate::identity::identity_server::IdentityServer<()>>(),
            type_name::<dyn crate::identity::identity_server::Identity>(),
            type_name::<crate::discovery::Update>(),
            type_name::<crate::discovery::destination_client::DestinationClient<()>>(),
            type_name::<crate::discovery::destination_server::DestinationServer<()>>(),
            type_name::<crate::discovery::trust_bundles_client::TrustBundlesClient<()>>(),
            type_name::<crate::discovery::trust_bundles_server::TrustBundlesServer<()>>(),
            type_name::<crate::tunnel::StreamHeader>(),
            type_name::<crate::tunnel::stream_header::Kind>(),
            type_name::<crate::tunnel::TunnelOpen>(),
            type_name::<crate::tunnel::TunnelOpenResponse>(),
            type_name::<crate::tunnel::OpenStatus>(),
            type_name::<crate::tunnel::Probe>(),
            type_name::<crate::tunnel::ProbeResponse>(),
            type_name::<crate::tunnel::TransportHeader>(),
            type_name::<crate::tap::ObserveRequest>(),
            type_name::<crate::tap::TapEvent>(),
            type_name::<crate::tap::tap_event::Kind>(),
            type_name::<crate::tap::RequestEvent>(),
            type_name::<crate::tap::EventsLost>(),
            type_name::<crate::tap::Direction>(),
            type_name::<crate::tap::tap_client::TapClient<tonic::transport::Channel>>(),
            type_name::<crate::tap::tap_server::TapServer<()>>(),
        ];
        assert!(
            names
                .iter()
                .all(|name| name.starts_with("mesh_api::") || name.starts_with("dyn mesh_api::"))
        );
    }
}
