//! Test PKI for the proxy's meshed hops: a trust domain (root + issuer) per cluster, workload
//! credentials, and the mesh TLS configs both proxies use.

// Each test binary uses a different part of this shared support module.
#![allow(dead_code)]

use std::sync::Arc;

use mesh_api::ports::{ALPN_H2, ALPN_OPAQUE};
use mesh_trust::ca::{self, CertificateAuthority, DEFAULT_LEAF_LIFETIME, Validity};
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId, TrustBundleSet, TrustDomain};

/// One cluster's PKI: a root and an issuer under it.
pub struct Domain {
    pub td: TrustDomain,
    pub root: CertificateAuthority,
    pub issuer: CertificateAuthority,
}

impl Domain {
    pub fn new(name: &str) -> Self {
        let td = TrustDomain::new(name).unwrap();
        let root = CertificateAuthority::create_root(&td, ca::DEFAULT_ROOT_LIFETIME).unwrap();
        let issuer = root.create_issuer(ca::DEFAULT_ISSUER_LIFETIME).unwrap();
        Self { td, root, issuer }
    }

    pub fn id(&self, sa: &str) -> SpiffeId {
        self.td.workload("default", sa).unwrap()
    }

    pub fn creds(&self, sa: &str) -> WorkloadCredentials {
        let id = self.id(sa);
        let (key, csr) = ca::generate_key_and_csr(&id).unwrap();
        let leaf = self
            .issuer
            .sign_csr(&id, &csr, Validity::starting_now(DEFAULT_LEAF_LIFETIME))
            .unwrap();
        WorkloadCredentials::new(id, leaf, key).unwrap()
    }

    pub fn bundle(&self) -> TrustBundleSet {
        let mut set = TrustBundleSet::new();
        set.insert(&self.td, self.root.certificate()).unwrap();
        set
    }
}

/// The bundles of every domain given: what a proxy trusts once the clusters are linked.
pub fn bundles(domains: &[&Domain]) -> SharedTrustBundles {
    let mut set = TrustBundleSet::new();
    for d in domains {
        set.merge(&d.bundle());
    }
    SharedTrustBundles::new(set)
}

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
