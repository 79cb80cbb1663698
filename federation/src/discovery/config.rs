//! What discovery needs to know about its own cluster, and its validation.

use std::net::SocketAddr;

use mesh_trust::TrustDomain;
use mesh_trust::spiffe::SpiffeIdError;

/// The default DNS domain of a cluster's Services.
pub const DEFAULT_CLUSTER_DOMAIN: &str = mesh_api::crd::DEFAULT_CLUSTER_DOMAIN;
/// The default namespace of the mesh's own workloads (controller, gateway).
pub const DEFAULT_MESH_NAMESPACE: &str = "mesh";
/// The service account of the gateway; its identity is
/// `spiffe://<trust domain>/ns/<mesh namespace>/sa/mesh-gateway`.
pub const GATEWAY_SERVICE_ACCOUNT: &str = "mesh-gateway";

/// Discovery's view of its own cluster.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// This cluster's name, reported as the `cluster` of local endpoints.
    pub cluster: String,
    /// This cluster's trust domain: local workload identities and the gateway's are in it.
    pub trust_domain: TrustDomain,
    /// The DNS domain of Services, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The namespace the gateway runs in, e.g. `mesh`.
    pub mesh_namespace: String,
    /// The local gateway's egress address, which proxies dial to reach endpoints of linked
    /// clusters. Without it, mirrored Services have no usable endpoints.
    pub gateway_egress: Option<SocketAddr>,
}

/// Why a [`DiscoveryConfig`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cluster name is empty.
    #[error("the cluster name is empty; set it to this cluster's name, e.g. `west`")]
    EmptyCluster,
    /// The cluster domain is not a DNS name.
    #[error("cluster domain {0:?} is not a DNS name such as `cluster.local`")]
    ClusterDomain(String),
    /// The gateway's identity cannot be built from the mesh namespace.
    #[error("mesh namespace {namespace:?} does not make a gateway identity: {error}")]
    MeshNamespace {
        /// The namespace configured.
        namespace: String,
        /// Why the identity was refused.
        error: SpiffeIdError,
    },
}

/// A validated [`DiscoveryConfig`], with what is derived from it once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub(crate) cluster: String,
    pub(crate) trust_domain: TrustDomain,
    /// Lowercase, without a trailing dot.
    pub(crate) cluster_domain: String,
    /// The local gateway's egress address and SPIFFE ID.
    pub(crate) gateway: Option<(SocketAddr, String)>,
}

// === impl DiscoveryConfig ===

impl DiscoveryConfig {
    /// A configuration with the default cluster domain and mesh namespace, and no gateway.
    pub fn new(cluster: impl Into<String>, trust_domain: TrustDomain) -> Self {
        Self {
            cluster: cluster.into(),
            trust_domain,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            mesh_namespace: DEFAULT_MESH_NAMESPACE.to_owned(),
            gateway_egress: None,
        }
    }

    /// Checks the configuration and derives the gateway's identity.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        if self.cluster.trim().is_empty() {
            return Err(ConfigError::EmptyCluster);
        }
        let domain = self.cluster_domain.trim();
        let domain = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let valid_domain = !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !valid_domain {
            return Err(ConfigError::ClusterDomain(self.cluster_domain.clone()));
        }
        let gateway_identity = self
            .trust_domain
            .workload(&self.mesh_namespace, GATEWAY_SERVICE_ACCOUNT)
            .map_err(|error| ConfigError::MeshNamespace {
                namespace: self.mesh_namespace.clone(),
                error,
            })?;
        Ok(Settings {
            cluster: self.cluster.clone(),
            trust_domain: self.trust_domain.clone(),
            cluster_domain: domain,
            gateway: self
                .gateway_egress
                .map(|addr| (addr, gateway_identity.as_str().to_owned())),
        })
    }
}

// === impl Settings ===

impl Settings {
    /// The DNS domain of Services, lowercase, without a trailing dot.
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config() -> DiscoveryConfig {
        DiscoveryConfig::new("west", TrustDomain::new("west").unwrap())
    }

    #[test]
    fn derives_the_gateway_identity() {
        let mut config = config();
        config.gateway_egress = Some("10.0.0.9:4181".parse().unwrap());
        config.cluster_domain = "Cluster.Local.".into();
        let settings = config.validate().unwrap();
        assert_eq!(settings.cluster_domain(), "cluster.local");
        assert_eq!(
            settings.gateway.unwrap().1,
            "spiffe://west/ns/mesh/sa/mesh-gateway"
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        let mut bad = config();
        bad.cluster = " ".into();
        assert_eq!(bad.validate().unwrap_err(), ConfigError::EmptyCluster);
        for domain in ["", ".", "a..b", "a_b.local", "a b"] {
            let mut bad = config();
            bad.cluster_domain = domain.into();
            assert!(
                matches!(bad.validate(), Err(ConfigError::ClusterDomain(_))),
                "{domain:?}"
            );
        }
        let mut bad = config();
        bad.mesh_namespace = "a/b".into();
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::MeshNamespace { .. })
        ));
    }
}
