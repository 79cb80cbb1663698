//! The destinations the proxy sends to, as validated domain types, and their decoding from the
//! controller's `Update`.
//!
//! The wire is not trusted: an `Update` is decoded entry by entry, and an entry that cannot be
//! used safely (an address of the wrong length, an identity that is not a SPIFFE ID, a tunnel
//! without a usable gateway) is dropped with a [`Rejection`] that says where and why, while the
//! rest of the update is kept. Dropping one endpoint costs a little capacity; dropping the whole
//! update would leave the proxy on stale endpoints because of one bad pod.
//!
//! Identities matter most: an endpoint's identity is what the meshed handshake must end at, so an
//! endpoint whose identity cannot be parsed is dropped rather than demoted to plain text.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mesh_api::common::{ProtocolHint, SocketAddr as ProtoSocketAddr};
use mesh_api::discovery::{Endpoint, SplitBackend, TunnelTarget, Update};
use mesh_trust::spiffe::SpiffeIdError;
use mesh_trust::{SpiffeId, TrustDomain};

use crate::split::{Backend, InvalidSplit, Split};

/// Everything known about one target, replaced whole at each update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// False when the target is not a known service: the proxy treats it as not meshed and
    /// forwards to the original address.
    pub exists: bool,
    /// The service's authority as the controller knows it (resolved from the address when the
    /// target was an address); may be empty when the target is unknown.
    pub authority: String,
    /// The endpoints that passed validation, in the order received, one per address.
    pub endpoints: Vec<EndpointMeta>,
    /// The TrafficSplit backends when the target is a split's root service; empty otherwise.
    pub split: Split,
    /// What the destination speaks, when the controller knows.
    pub protocol_hint: ProtocolHint,
    /// Ports that are opaque TCP for this target: no protocol detection.
    pub opaque_ports: BTreeSet<u16>,
}

/// One endpoint of a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Where to connect: the endpoint itself, or for a tunnelled one its address in the remote
    /// cluster (the connection itself goes to [`TunnelMeta::gateway`]).
    pub addr: SocketAddr,
    /// The SPIFFE ID the endpoint's proxy presents; `None` when it has no proxy (plain text).
    pub identity: Option<SpiffeId>,
    /// The cluster the endpoint runs in.
    pub cluster: String,
    /// Its zone, for locality; may be empty.
    pub zone: String,
    /// Its load balancing weight, as sent.
    pub weight: u32,
    /// Whether it is ready to take traffic.
    pub ready: bool,
    /// Its labels, for metrics.
    pub labels: BTreeMap<String, String>,
    /// Set when it lives in a linked cluster and is reached through the local gateway.
    pub tunnel: Option<TunnelMeta>,
    /// The pod's hostname, for headless services.
    pub hostname: Option<String>,
}

/// How to reach an endpoint in a linked cluster: through the local gateway's egress port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelMeta {
    /// The remote cluster's name, as in its Link.
    pub cluster: String,
    /// The remote service's authority, in the remote cluster's own names.
    pub authority: String,
    /// The local gateway's egress address.
    pub gateway: SocketAddr,
    /// The identity the local gateway must present.
    pub gateway_identity: SpiffeId,
    /// The trust domain the inner handshake must end in.
    pub remote_trust_domain: TrustDomain,
}

/// An entry of an update that was dropped, and why; the rest of the update was kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Rejection {
    /// Where in the update, in the proto's field names: `endpoints[2].identity`.
    pub path: String,
    /// What is wrong there.
    pub reason: RejectReason,
}

/// What is wrong with a dropped entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// An endpoint or gateway address cannot be connected to; the endpoint is dropped.
    #[error("{0}")]
    Addr(#[from] InvalidAddr),
    /// An endpoint's identity is not a SPIFFE ID; the endpoint is dropped rather than reached in
    /// plain text.
    #[error("{value:?} is not a SPIFFE ID: {error}")]
    Identity {
        /// The identity as received.
        value: String,
        /// Why it was refused.
        error: SpiffeIdError,
    },
    /// A tunnel's remote trust domain is not a trust domain name; the endpoint is dropped.
    #[error("{value:?} is not a trust domain: {error}")]
    TrustDomain {
        /// The name as received.
        value: String,
        /// Why it was refused.
        error: SpiffeIdError,
    },
    /// A required field is empty; the endpoint or backend is dropped.
    #[error("must not be empty")]
    Empty,
    /// A tunnelled endpoint's identity is outside the tunnel's remote trust domain, so the inner
    /// handshake could never succeed; the endpoint is dropped.
    #[error("identity {identity} is not in the tunnel's remote trust domain {remote}")]
    IdentityOutsideRemoteDomain {
        /// The endpoint's identity.
        identity: SpiffeId,
        /// The tunnel's remote trust domain.
        remote: TrustDomain,
    },
    /// An address appears twice; the later endpoint is dropped.
    #[error("address {0} is already listed by an earlier endpoint")]
    DuplicateAddr(SocketAddr),
    /// A split backend is listed with two priorities; the later one is dropped.
    #[error("backend {authority} is already listed with priority {first}")]
    ConflictingPriority {
        /// The backend listed twice.
        authority: String,
        /// The priority it was first listed with.
        first: u32,
    },
    /// The split backends could not form a split; the split is dropped whole.
    #[error("{0}")]
    Split(#[from] InvalidSplit),
    /// An opaque port is not a port; it is dropped.
    #[error("{0} is not a port (1-65535)")]
    Port(u32),
}

/// Why a wire socket address cannot be connected to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAddr {
    /// No address was sent.
    #[error("no address")]
    Missing,
    /// The IP is neither 4 (IPv4) nor 16 (IPv6) bytes long.
    #[error("IP address is {len} bytes long; expected 4 (IPv4) or 16 (IPv6)")]
    IpLength {
        /// The length received.
        len: usize,
    },
    /// The port is 0 or above 65535.
    #[error("port {port} is not in 1..=65535")]
    Port {
        /// The port received.
        port: u32,
    },
    /// The IP is the unspecified address, which would connect to this host.
    #[error("{ip} is the unspecified address")]
    Unspecified {
        /// The address received.
        ip: IpAddr,
    },
}

// === impl Destination ===

impl Destination {
    /// The answer for a target the source does not know: not meshed.
    pub fn not_found() -> Self {
        Self {
            exists: false,
            authority: String::new(),
            endpoints: Vec::new(),
            split: Split::default(),
            protocol_hint: ProtocolHint::Unknown,
            opaque_ports: BTreeSet::new(),
        }
    }

    /// Decodes an update, dropping the entries that fail validation; each one dropped is
    /// returned with the reason, for the caller to log.
    pub fn from_update(update: Update) -> (Self, Vec<Rejection>) {
        let mut rejections = Vec::new();

        let mut endpoints = Vec::with_capacity(update.endpoints.len());
        let mut seen = HashSet::with_capacity(update.endpoints.len());
        for (index, endpoint) in update.endpoints.into_iter().enumerate() {
            let decoded = EndpointMeta::from_proto(endpoint).and_then(|endpoint| {
                if seen.insert(endpoint.addr) {
                    Ok(endpoint)
                } else {
                    Err(("addr", RejectReason::DuplicateAddr(endpoint.addr)))
                }
            });
            match decoded {
                Ok(endpoint) => endpoints.push(endpoint),
                Err((field, reason)) => rejections.push(Rejection {
                    path: format!("endpoints[{index}].{field}"),
                    reason,
                }),
            }
        }

        let split = decode_split(&update.split_backends, &mut rejections);

        let mut opaque_ports = BTreeSet::new();
        for (index, port) in update.opaque_ports.into_iter().enumerate() {
            match u16::try_from(port) {
                Ok(port) if port != 0 => {
                    opaque_ports.insert(port);
                }
                _ => rejections.push(Rejection {
                    path: format!("opaque_ports[{index}]"),
                    reason: RejectReason::Port(port),
                }),
            }
        }

        let destination = Self {
            exists: update.exists,
            authority: update.authority,
            endpoints,
            split,
            // A hint from a newer controller that this proxy does not know is no hint.
            protocol_hint: ProtocolHint::try_from(update.protocol_hint)
                .unwrap_or(ProtocolHint::Unknown),
            opaque_ports,
        };
        (destination, rejections)
    }

    /// Whether connections to `port` must be treated as opaque TCP.
    pub fn is_opaque(&self, port: u16) -> bool {
        self.protocol_hint == ProtocolHint::Opaque || self.opaque_ports.contains(&port)
    }
}

/// Keeps the backends a split can use: an empty authority, or an authority already listed with
/// another priority, drops that backend (with the same rules as [`Split::new`], which would
/// otherwise refuse the whole list).
fn decode_split(backends: &[SplitBackend], rejections: &mut Vec<Rejection>) -> Split {
    let mut priorities: BTreeMap<&str, u32> = BTreeMap::new();
    let mut kept = Vec::with_capacity(backends.len());
    for (index, backend) in backends.iter().enumerate() {
        let authority = backend.authority.trim();
        let reason = if authority.is_empty() {
            Some(RejectReason::Empty)
        } else {
            match priorities.get(authority) {
                Some(&first) if first != backend.priority => {
                    Some(RejectReason::ConflictingPriority {
                        authority: authority.to_owned(),
                        first,
                    })
                }
                Some(_) => None,
                None => {
                    priorities.insert(authority, backend.priority);
                    None
                }
            }
        };
        match reason {
            Some(reason) => rejections.push(Rejection {
                path: format!("split_backends[{index}].authority"),
                reason,
            }),
            None => kept.push(Backend::from(backend)),
        }
    }
    Split::new(kept).unwrap_or_else(|error| {
        // Only reachable if `Split` gains a rule the filter above does not know yet.
        rejections.push(Rejection {
            path: "split_backends".to_owned(),
            reason: RejectReason::Split(error),
        });
        Split::default()
    })
}

// === impl EndpointMeta ===

impl EndpointMeta {
    /// Decodes one endpoint; on error, the field at fault (relative to the endpoint) and why.
    fn from_proto(endpoint: Endpoint) -> Result<Self, (&'static str, RejectReason)> {
        let addr = socket_addr(endpoint.addr.as_ref()).map_err(|e| ("addr", e.into()))?;
        let identity = optional_identity(&endpoint.identity).map_err(|e| ("identity", e))?;
        let tunnel = match endpoint.tunnel {
            Some(tunnel) => Some(TunnelMeta::from_proto(tunnel)?),
            None => None,
        };
        if let (Some(identity), Some(tunnel)) = (&identity, &tunnel) {
            if identity.trust_domain_str() != tunnel.remote_trust_domain.as_str() {
                return Err((
                    "identity",
                    RejectReason::IdentityOutsideRemoteDomain {
                        identity: identity.clone(),
                        remote: tunnel.remote_trust_domain.clone(),
                    },
                ));
            }
        }
        Ok(Self {
            addr,
            identity,
            cluster: endpoint.cluster,
            zone: endpoint.zone,
            weight: endpoint.weight,
            ready: endpoint.ready,
            labels: endpoint.labels.into_iter().collect(),
            tunnel,
            hostname: Some(endpoint.hostname).filter(|h| !h.is_empty()),
        })
    }
}

/// An empty identity means "no proxy, plain text"; anything else must be a valid SPIFFE ID.
fn optional_identity(value: &str) -> Result<Option<SpiffeId>, RejectReason> {
    if value.is_empty() {
        return Ok(None);
    }
    SpiffeId::parse(value)
        .map(Some)
        .map_err(|error| RejectReason::Identity {
            value: value.to_owned(),
            error,
        })
}

// === impl TunnelMeta ===

impl TunnelMeta {
    fn from_proto(tunnel: TunnelTarget) -> Result<Self, (&'static str, RejectReason)> {
        if tunnel.cluster.is_empty() {
            return Err(("tunnel.cluster", RejectReason::Empty));
        }
        if tunnel.authority.is_empty() {
            return Err(("tunnel.authority", RejectReason::Empty));
        }
        let gateway =
            socket_addr(tunnel.gateway.as_ref()).map_err(|e| ("tunnel.gateway", e.into()))?;
        // The gateway is always reached over mTLS, so "no identity" is not an option here.
        let gateway_identity = SpiffeId::parse(&tunnel.gateway_identity).map_err(|error| {
            (
                "tunnel.gateway_identity",
                RejectReason::Identity {
                    value: tunnel.gateway_identity.clone(),
                    error,
                },
            )
        })?;
        let remote_trust_domain =
            TrustDomain::new(&tunnel.remote_trust_domain).map_err(|error| {
                (
                    "tunnel.remote_trust_domain",
                    RejectReason::TrustDomain {
                        value: tunnel.remote_trust_domain.clone(),
                        error,
                    },
                )
            })?;
        Ok(Self {
            cluster: tunnel.cluster,
            authority: tunnel.authority,
            gateway,
            gateway_identity,
            remote_trust_domain,
        })
    }
}

/// Decodes a wire socket address: 4 or 16 IP bytes, a port in 1..=65535, not the unspecified
/// address (connecting to it would reach this host).
pub fn socket_addr(addr: Option<&ProtoSocketAddr>) -> Result<SocketAddr, InvalidAddr> {
    let addr = addr.ok_or(InvalidAddr::Missing)?;
    let ip = if let Ok(octets) = <[u8; 4]>::try_from(addr.ip.as_slice()) {
        IpAddr::V4(Ipv4Addr::from(octets))
    } else if let Ok(octets) = <[u8; 16]>::try_from(addr.ip.as_slice()) {
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        return Err(InvalidAddr::IpLength { len: addr.ip.len() });
    };
    let port = match u16::try_from(addr.port) {
        Ok(port) if port != 0 => port,
        _ => return Err(InvalidAddr::Port { port: addr.port }),
    };
    if ip.is_unspecified() {
        return Err(InvalidAddr::Unspecified { ip });
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::discovery::target::proto_addr;

    const WEB_ID: &str = "spiffe://east.local/ns/default/sa/web";

    fn endpoint(addr: &str, identity: &str) -> Endpoint {
        Endpoint {
            addr: Some(proto_addr(addr.parse().unwrap())),
            identity: identity.to_owned(),
            cluster: "east".into(),
            zone: "z1".into(),
            weight: 10,
            ready: true,
            ..Endpoint::default()
        }
    }

    fn tunnel() -> TunnelTarget {
        TunnelTarget {
            cluster: "west".into(),
            authority: "web.default.svc.cluster.local:80".into(),
            gateway: Some(proto_addr("10.9.0.1:4143".parse().unwrap())),
            gateway_identity: "spiffe://east.local/ns/mesh/sa/gateway".into(),
            remote_trust_domain: "west.local".into(),
        }
    }

    fn decode(update: Update) -> (Destination, Vec<Rejection>) {
        Destination::from_update(update)
    }

    #[test]
    fn decodes_a_full_update() {
        let mut remote = endpoint("10.2.0.1:8080", "spiffe://west.local/ns/default/sa/web");
        remote.tunnel = Some(tunnel());
        remote.hostname = "web-0".into();
        remote.labels.insert("pod".into(), "web-0".into());
        let update = Update {
            exists: true,
            authority: "web.default.svc.cluster.local:80".into(),
            endpoints: vec![
                endpoint("10.1.0.1:8080", WEB_ID),
                endpoint("[fd00::1]:80", ""),
                remote,
            ],
            split_backends: vec![SplitBackend {
                authority: "web-west.default.svc.cluster.local:80".into(),
                weight: 1,
                priority: 1,
            }],
            protocol_hint: ProtocolHint::Http.into(),
            opaque_ports: vec![3306],
        };
        let (dest, rejections) = decode(update);
        assert!(rejections.is_empty(), "{rejections:?}");
        assert!(dest.exists);
        assert_eq!(dest.endpoints.len(), 3);
        assert_eq!(
            dest.endpoints[0].identity.as_ref().unwrap().as_str(),
            WEB_ID
        );
        assert_eq!(dest.endpoints[1].identity, None);
        assert_eq!(dest.endpoints[1].addr, "[fd00::1]:80".parse().unwrap());
        let tunnel = dest.endpoints[2].tunnel.as_ref().unwrap();
        assert_eq!(tunnel.gateway, "10.9.0.1:4143".parse().unwrap());
        assert_eq!(tunnel.remote_trust_domain.as_str(), "west.local");
        assert_eq!(dest.endpoints[2].hostname.as_deref(), Some("web-0"));
        assert_eq!(dest.split.len(), 1);
        assert_eq!(dest.protocol_hint, ProtocolHint::Http);
        assert!(dest.is_opaque(3306));
        assert!(!dest.is_opaque(80));
    }

    #[test]
    fn drops_bad_endpoints_and_keeps_the_rest() {
        let mut short_ip = endpoint("10.1.0.2:80", "");
        short_ip.addr.as_mut().unwrap().ip = vec![10, 0, 0];
        let mut big_port = endpoint("10.1.0.3:80", "");
        big_port.addr.as_mut().unwrap().port = 70_000;
        let no_addr = Endpoint {
            addr: None,
            ..endpoint("10.1.0.4:80", "")
        };
        let bad_identity = endpoint("10.1.0.5:80", "spiffe://East/ns/x");
        let update = Update {
            exists: true,
            endpoints: vec![
                endpoint("10.1.0.1:80", WEB_ID),
                short_ip,
                big_port,
                no_addr,
                bad_identity,
                endpoint("10.1.0.1:80", WEB_ID),
                endpoint("0.0.0.0:80", ""),
            ],
            ..Update::default()
        };
        let (dest, rejections) = decode(update);
        assert_eq!(dest.endpoints.len(), 1);
        let paths: Vec<_> = rejections.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "endpoints[1].addr",
                "endpoints[2].addr",
                "endpoints[3].addr",
                "endpoints[4].identity",
                "endpoints[5].addr",
                "endpoints[6].addr"
            ]
        );
        assert_eq!(
            rejections[0].reason,
            RejectReason::Addr(InvalidAddr::IpLength { len: 3 })
        );
        assert_eq!(
            rejections[1].reason,
            RejectReason::Addr(InvalidAddr::Port { port: 70_000 })
        );
        assert!(matches!(
            rejections[4].reason,
            RejectReason::DuplicateAddr(_)
        ));
        assert!(rejections[3].to_string().contains("spiffe://East/ns/x"));
    }

    #[test]
    fn drops_tunnelled_endpoints_without_a_usable_tunnel() {
        type Spoil = fn(&mut TunnelTarget);
        let cases: [(&str, Spoil); 5] = [
            ("tunnel.cluster", |t| t.cluster.clear()),
            ("tunnel.gateway", |t| t.gateway = None),
            ("tunnel.gateway_identity", |t| t.gateway_identity.clear()),
            ("tunnel.remote_trust_domain", |t| {
                t.remote_trust_domain = "West Local".into();
            }),
            ("identity", |t| t.remote_trust_domain = "north.local".into()),
        ];
        for (path, spoil) in cases {
            let mut remote = endpoint("10.2.0.1:8080", "spiffe://west.local/ns/default/sa/web");
            let mut t = tunnel();
            spoil(&mut t);
            remote.tunnel = Some(t);
            let (dest, rejections) = decode(Update {
                endpoints: vec![remote],
                ..Update::default()
            });
            assert!(dest.endpoints.is_empty(), "{path}");
            assert_eq!(rejections[0].path, format!("endpoints[0].{path}"));
        }
    }

    #[test]
    fn drops_bad_split_backends_and_opaque_ports() {
        let backend = |authority: &str, priority| SplitBackend {
            authority: authority.into(),
            weight: 1,
            priority,
        };
        let (dest, rejections) = decode(Update {
            split_backends: vec![backend("a:80", 0), backend(" ", 0), backend("a:80", 1)],
            opaque_ports: vec![0, 5432, 65_536],
            ..Update::default()
        });
        assert_eq!(dest.split.len(), 1);
        assert_eq!(dest.opaque_ports, BTreeSet::from([5432]));
        let paths: Vec<_> = rejections.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "split_backends[1].authority",
                "split_backends[2].authority",
                "opaque_ports[0]",
                "opaque_ports[2]"
            ]
        );
    }

    #[test]
    fn an_unknown_protocol_hint_is_no_hint() {
        let (dest, _) = decode(Update {
            protocol_hint: 99,
            ..Update::default()
        });
        assert_eq!(dest.protocol_hint, ProtocolHint::Unknown);
    }
}
