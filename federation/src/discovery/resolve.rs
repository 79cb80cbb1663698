//! Answering one target from the [`Index`]: the whole `Update` a stream sends.
//!
//! - A Service port, by authority or by cluster IP and port: every endpoint of the Service that
//!   serves that port (the slice port with the Service port's name, as Kubernetes resolves
//!   `targetPort`), the split backends when the Service is a TrafficSplit's root, and the
//!   Service's opaque ports.
//! - An endpoint's address: that one endpoint, with its Service's authority; no split backends,
//!   since the connection already chose its pod.
//! - Anything else, or a Service that does not list the port: `exists: false`.
//!
//! Endpoints are sorted by address and an address listed by two slices (which Kubernetes allows
//! while it moves endpoints between slices) is sent once, ready if either says so. The answer
//! therefore depends only on the objects, never on the order the stores hold them in, so a
//! stream compares it with the last one sent and stays quiet when nothing it shows changed.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::common::ProtocolHint;
use mesh_api::discovery::{Endpoint, SplitBackend, TunnelTarget, Update};

use super::index::{EndpointEntry, Index, ServiceEntry, ServicePort};
use super::target::{Target, proto_addr, service_authority};

/// The endpoint weight sent: proxies balance by latency among ready endpoints, and Kubernetes
/// has no per-endpoint weight to carry.
pub const ENDPOINT_WEIGHT: u32 = 1;

/// What an answer is built from: a Service's entry, its port, and the one endpoint asked for
/// when the target was an endpoint's address; or nothing known. Answers built from the same
/// entry (the same `Arc`), port and endpoint are equal, which lets a stream skip rebuilding its
/// answer when its Service did not change.
#[derive(Clone, Debug)]
pub(super) enum Basis {
    NotFound,
    Service {
        entry: Arc<ServiceEntry>,
        port: u16,
        only: Option<SocketAddr>,
    },
}

impl Basis {
    /// Whether answers built from `self` and `other` are certainly equal.
    pub(super) fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NotFound, Self::NotFound) => true,
            (
                Self::Service { entry, port, only },
                Self::Service {
                    entry: other_entry,
                    port: other_port,
                    only: other_only,
                },
            ) => Arc::ptr_eq(entry, other_entry) && port == other_port && only == other_only,
            _ => false,
        }
    }
}

// === impl Index ===

impl Index {
    /// The whole answer for `target`.
    pub fn resolve(&self, target: &Target) -> Update {
        self.answer(&self.basis(target))
    }

    /// What the answer for `target` is built from.
    pub(super) fn basis(&self, target: &Target) -> Basis {
        let service = |position: usize, port: u16, only: Option<SocketAddr>| {
            let entry = &self.services[position];
            match entry.port(port) {
                Some(_) => Basis::Service {
                    entry: entry.clone(),
                    port,
                    only,
                },
                None => Basis::NotFound,
            }
        };
        match target {
            Target::Service(authority) => self
                .lookup(&authority.namespace, &authority.name)
                .map_or(Basis::NotFound, |position| {
                    service(position, authority.port, None)
                }),
            Target::Unknown { .. } => Basis::NotFound,
            Target::Addr(addr) => {
                if let Some(&position) = self.by_cluster_ip.get(addr) {
                    return service(position, addr.port(), None);
                }
                match self.by_endpoint.get(addr) {
                    Some(&(position, port)) => service(position, port, Some(*addr)),
                    None => Basis::NotFound,
                }
            }
        }
    }

    /// The answer built from `basis`.
    pub(super) fn answer(&self, basis: &Basis) -> Update {
        match basis {
            Basis::Service { entry, port, only } => match entry.port(*port) {
                Some(port) => self.service_update(entry, port, *only),
                None => not_found(),
            },
            Basis::NotFound => not_found(),
        }
    }

    /// The answer for one Service port; with `only`, restricted to the endpoint at that address.
    fn service_update(
        &self,
        service: &ServiceEntry,
        port: &ServicePort,
        only: Option<SocketAddr>,
    ) -> Update {
        let domain = &self.settings.cluster_domain;

        let mut chosen: Vec<(SocketAddr, &EndpointEntry)> = service
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let slice_port = endpoint.ports.iter().find(|p| p.name == port.name)?;
                let addr = SocketAddr::new(endpoint.ip, slice_port.port);
                only.is_none_or(|only| only == addr)
                    .then_some((addr, endpoint))
            })
            .collect();
        // By address, ready first, so that deduplication keeps a ready copy.
        chosen.sort_by_key(|(addr, endpoint)| (*addr, !endpoint.ready));
        chosen.dedup_by_key(|(addr, _)| *addr);

        let endpoints = chosen
            .into_iter()
            .map(|(addr, endpoint)| Endpoint {
                addr: Some(proto_addr(addr)),
                identity: endpoint.identity.to_string(),
                cluster: service.cluster.to_string(),
                zone: endpoint.zone.to_string(),
                weight: ENDPOINT_WEIGHT,
                ready: endpoint.ready,
                labels: endpoint.labels.clone(),
                tunnel: service.tunnel.as_ref().map(|tunnel| TunnelTarget {
                    cluster: service.cluster.to_string(),
                    authority: format!("{}:{}", tunnel.remote_name, port.port),
                    gateway: Some(proto_addr(tunnel.gateway)),
                    gateway_identity: tunnel.gateway_identity.clone(),
                    remote_trust_domain: tunnel.remote_trust_domain.clone(),
                }),
                hostname: endpoint.hostname.clone(),
            })
            .collect();

        let split_backends = if only.is_some() {
            Vec::new()
        } else {
            service
                .split
                .iter()
                .map(|backend| SplitBackend {
                    authority: service_authority(
                        &backend.service,
                        &service.namespace,
                        domain,
                        port.port,
                    ),
                    weight: backend.weight,
                    priority: backend.priority,
                })
                .collect()
        };

        let hint = if service.opaque.contains(port.port) {
            ProtocolHint::Opaque
        } else {
            ProtocolHint::Unknown
        };
        Update {
            exists: true,
            authority: service_authority(&service.name, &service.namespace, domain, port.port),
            endpoints,
            split_backends,
            protocol_hint: hint.into(),
            opaque_ports: service.opaque.as_slice().to_vec(),
        }
    }
}

// === impl ServiceEntry ===

impl ServiceEntry {
    /// The Service's TCP port with this number.
    fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// The answer for a target that is not a known Service: not meshed.
pub fn not_found() -> Update {
    Update {
        exists: false,
        ..Update::default()
    }
}
