//! Test PKI: one trust domain per cluster, each with its own root and an issuer under it, and
//! workload credentials issued the way a workload gets them (a fresh key, a CSR, a leaf).

use std::sync::Arc;

use mesh_trust::ca::{self, CertificateAuthority, DEFAULT_LEAF_LIFETIME, Validity};
use mesh_trust::tls::WorkloadCredentials;
use mesh_trust::{SharedTrustBundles, SpiffeId, TrustBundleSet, TrustDomain};

/// One cluster's PKI: a root and an issuer under it.
#[derive(Debug)]
pub struct Domain {
    pub td: TrustDomain,
    pub root: CertificateAuthority,
    pub issuer: Arc<CertificateAuthority>,
}

impl Domain {
    pub fn new(name: &str) -> Self {
        let td = TrustDomain::new(name).expect("a valid trust domain name");
        let root = CertificateAuthority::create_root(&td, ca::DEFAULT_ROOT_LIFETIME).expect("root");
        let issuer = Arc::new(
            root.create_issuer(ca::DEFAULT_ISSUER_LIFETIME)
                .expect("issuer"),
        );
        Self { td, root, issuer }
    }

    /// The identity of service account `sa` in namespace `default`.
    pub fn id(&self, sa: &str) -> SpiffeId {
        self.td
            .workload("default", sa)
            .expect("a valid service account name")
    }

    /// Fresh credentials for `sa`, valid for the default leaf lifetime.
    pub fn creds(&self, sa: &str) -> WorkloadCredentials {
        self.creds_with(&self.id(sa), Validity::starting_now(DEFAULT_LEAF_LIFETIME))
    }

    /// Fresh credentials for `id` with the given validity (which may be in the past or future).
    pub fn creds_with(&self, id: &SpiffeId, validity: Validity) -> WorkloadCredentials {
        let (key, csr) = ca::generate_key_and_csr(id).expect("key and CSR");
        let leaf = self.issuer.sign_csr(id, &csr, validity).expect("leaf");
        WorkloadCredentials::new(id.clone(), leaf, key).expect("credentials")
    }

    /// This domain's roots alone.
    pub fn bundle(&self) -> TrustBundleSet {
        let mut set = TrustBundleSet::new();
        set.insert(&self.td, self.root.certificate()).expect("root");
        set
    }
}

/// The bundles of every domain given: what a workload trusts once the clusters are linked.
pub fn bundles(domains: &[&Domain]) -> SharedTrustBundles {
    let mut set = TrustBundleSet::new();
    for d in domains {
        set.merge(&d.bundle());
    }
    SharedTrustBundles::new(set)
}

/// Writes `creds` as `mesh trust issue` does: `dir/leaf.crt` (the leaf, then its issuer) and
/// `dir/leaf.key`, each written aside and renamed into place, as a Secret volume updates.
pub fn write_identity_dir(dir: &std::path::Path, creds: &WorkloadCredentials) {
    std::fs::create_dir_all(dir).expect("create the identity directory");
    for (name, body) in [
        ("leaf.key", mesh_trust::pem::encode_private_key(&creds.key)),
        (
            "leaf.crt",
            mesh_trust::pem::encode_certificates(creds.chain.iter()),
        ),
    ] {
        let aside = dir.join(format!(".{name}.tmp"));
        std::fs::write(&aside, body).expect("write an identity file");
        std::fs::rename(&aside, dir.join(name)).expect("move an identity file into place");
    }
}
