//! Test PKI for the proxy's meshed hops: the shared per-cluster PKI, and the mesh TLS configs
//! both proxies use.

// Each test binary uses a different part of this shared support module.
#![allow(dead_code)]

use std::sync::Arc;

use mesh_api::ports::{ALPN_H2, ALPN_OPAQUE};
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};

pub use mesh_test_support::pki::{Domain, bundles};

/// An inbound proxy's TLS: any peer of a trusted domain, ALPN mesh.opaque and mesh.h2.
pub fn inbound_tls(
    bundles: &SharedTrustBundles,
    creds: WorkloadCredentials,
) -> Arc<rustls::ServerConfig> {
    let resolver = Arc::new(CertResolver::new(creds).unwrap());
    let config = tls::server_config(
        bundles.clone(),
        PeerPolicy::AnyDomain,
        resolver,
        &[ALPN_OPAQUE, ALPN_H2],
    )
    .unwrap();
    Arc::new(config)
}

/// An outbound proxy's TLS towards an endpoint that must be exactly `expected`.
pub fn outbound_tls(
    bundles: &SharedTrustBundles,
    creds: WorkloadCredentials,
    expected: &SpiffeId,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let resolver = Arc::new(CertResolver::new(creds).unwrap());
    let config = tls::client_config(
        bundles.clone(),
        PeerPolicy::Exactly(expected.clone()),
        Some(resolver),
        &[alpn],
    )
    .unwrap();
    Arc::new(config)
}
