//! What a `Destination.Get` asks about: a Service of this cluster by name, or an address.
//!
//! Parsing is strict about syntax and lenient about meaning. A request whose target cannot be
//! read (no target, `web` without a port, port 0, an IP of the wrong length) is refused with
//! `InvalidArgument`, because no later state of the cluster could answer it. A well-formed
//! authority that simply does not name a Service of this cluster (`example.com:443`,
//! `web:80`, another cluster domain) is a [`Target::Unknown`]: the stream answers `exists: false`,
//! exactly as for a Service that does not exist yet.
//!
//! Accepted spellings of a Service, case-insensitive, with or without a trailing dot:
//! `<svc>.<ns>.svc.<cluster domain>:<port>`, `<svc>.<ns>.svc:<port>` and `<svc>.<ns>:<port>`.
//! An authority whose host is an IP literal is treated as the address it names.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use mesh_api::common::SocketAddr as ProtoSocketAddr;
use mesh_api::discovery::get_destination;

/// The longest authority accepted: a 253-byte DNS name, a trailing dot, `:` and five digits.
const MAX_AUTHORITY_LEN: usize = 253 + 1 + 1 + 5;
/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A parsed discovery target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// A Service of this cluster, by name and port.
    Service(ServiceAuthority),
    /// A well-formed authority that cannot name a Service of this cluster; it never exists.
    Unknown {
        /// The authority, lowercased, without a trailing dot.
        authority: String,
    },
    /// An address: a Service's cluster IP and port, or an endpoint's IP and port.
    Addr(SocketAddr),
}

/// A Service port named by authority.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAuthority {
    /// The Service's name, lowercased.
    pub name: String,
    /// Its namespace, lowercased.
    pub namespace: String,
    /// The Service port asked for.
    pub port: u16,
}

/// Why a request's target cannot be read. The stream is refused with `InvalidArgument`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTarget {
    /// Neither `authority` nor `addr` was set.
    #[error("the request names no target: set `authority` (host:port) or `addr` (ip and port)")]
    Missing,
    /// The authority is not `host:port`.
    #[error("authority {authority:?} is not host:port: {reason}")]
    Authority {
        /// The authority as received (truncated when very long).
        authority: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The address cannot be a destination.
    #[error("address is not usable: {0}")]
    Addr(#[from] InvalidAddr),
}

/// Why a wire address cannot be a destination: the proxy's own decoding rules.
pub use mesh_proxy::discovery::InvalidAddr;

// === impl Target ===

impl Target {
    /// Reads a request's `target` field; `cluster_domain` is the suffix of full Service names
    /// (`cluster.local`), lowercase without a trailing dot.
    pub fn from_proto(
        target: Option<&get_destination::Target>,
        cluster_domain: &str,
    ) -> Result<Self, InvalidTarget> {
        match target {
            None => Err(InvalidTarget::Missing),
            Some(get_destination::Target::Authority(authority)) => {
                Self::parse_authority(authority, cluster_domain)
            }
            Some(get_destination::Target::Addr(addr)) => Ok(Self::Addr(socket_addr(addr)?)),
        }
    }

    /// Parses `host:port`; see the module documentation for what names a Service.
    pub fn parse_authority(input: &str, cluster_domain: &str) -> Result<Self, InvalidTarget> {
        let invalid = |reason| InvalidTarget::Authority {
            authority: input.chars().take(MAX_AUTHORITY_LEN).collect(),
            reason,
        };
        if input.len() > MAX_AUTHORITY_LEN {
            return Err(invalid("longer than 260 bytes"));
        }
        if let Ok(addr) = input.parse::<SocketAddr>() {
            return Ok(Self::Addr(canonical(addr)));
        }
        let (host, port) = input.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
        let port = parse_port(port).ok_or_else(|| invalid("the port is not in 1..=65535"))?;
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        if host.starts_with('[') {
            return Err(invalid("the host is not an IPv6 address"));
        }
        let mut labels = Vec::with_capacity(4);
        for label in host.split('.') {
            if label.is_empty() {
                return Err(invalid("the host has an empty label"));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(invalid("a label of the host is longer than 63 bytes"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "the host may only hold letters, digits, '-', '_' and '.'",
                ));
            }
            labels.push(label);
        }
        let names_service = match labels.as_slice() {
            [_, _] | [_, _, "svc"] => true,
            [_, _, "svc", domain @ ..] => joined_equals(domain, cluster_domain),
            _ => false,
        };
        if !names_service {
            return Ok(Self::Unknown {
                authority: format!("{host}:{port}"),
            });
        }
        Ok(Self::Service(ServiceAuthority {
            name: labels[0].to_owned(),
            namespace: labels[1].to_owned(),
            port,
        }))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(service) => {
                write!(f, "{}.{}:{}", service.name, service.namespace, service.port)
            }
            Self::Unknown { authority } => f.write_str(authority),
            Self::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

// === impl ServiceAuthority ===

impl ServiceAuthority {
    /// The canonical authority, `<svc>.<ns>.svc.<cluster domain>:<port>`.
    pub fn canonical(&self, cluster_domain: &str) -> String {
        service_authority(&self.name, &self.namespace, cluster_domain, self.port)
    }
}

/// `<name>.<namespace>.svc.<cluster domain>:<port>`.
pub(crate) fn service_authority(
    name: &str,
    namespace: &str,
    cluster_domain: &str,
    port: u16,
) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}:{port}")
}

/// Whether `labels`, joined with dots, spell `domain`, without allocating.
fn joined_equals(labels: &[&str], domain: &str) -> bool {
    let mut rest = domain;
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            match rest.strip_prefix('.') {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.strip_prefix(label) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// A decimal port in 1..=65535 (digits only: no sign, no spaces).
fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Decodes a wire address with the proxy's rules (4 or 16 bytes, a port in 1..=65535, not the
/// unspecified address); an IPv4-mapped IPv6 address becomes the IPv4 address it maps.
pub fn socket_addr(addr: &ProtoSocketAddr) -> Result<SocketAddr, InvalidAddr> {
    mesh_proxy::discovery::destination::socket_addr(Some(addr)).map(canonical)
}

/// A socket address as the wire carries it.
pub(crate) fn proto_addr(addr: SocketAddr) -> ProtoSocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    ProtoSocketAddr {
        ip,
        port: u32::from(addr.port()),
    }
}

/// One spelling per address: IPv4-mapped IPv6 (as dual-stack sockets report IPv4 peers) unmapped.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOMAIN: &str = "cluster.local";

    fn parse(input: &str) -> Result<Target, InvalidTarget> {
        Target::parse_authority(input, DOMAIN)
    }

    fn service(name: &str, namespace: &str, port: u16) -> Target {
        Target::Service(ServiceAuthority {
            name: name.into(),
            namespace: namespace.into(),
            port,
        })
    }

    #[test]
    fn accepts_every_spelling_of_a_service() {
        for input in [
            "web.default.svc.cluster.local:80",
            "Web.Default.SVC.Cluster.Local:80",
            "web.default.svc.cluster.local.:80",
            "web.default.svc:80",
            "web.default.svc.:80",
            "web.default:80",
            "WEB.DEFAULT.:80",
        ] {
            assert_eq!(
                parse(input).unwrap(),
                service("web", "default", 80),
                "{input}"
            );
        }
    }

    #[test]
    fn the_canonical_authority_is_the_full_name() {
        let Target::Service(authority) = parse("web.default:8080").unwrap() else {
            panic!("not a service");
        };
        assert_eq!(
            authority.canonical(DOMAIN),
            "web.default.svc.cluster.local:8080"
        );
    }

    #[test]
    fn well_formed_names_outside_the_cluster_are_unknown() {
        for (input, authority) in [
            ("web:80", "web:80"),
            (
                "web.default.svc.other.local:80",
                "web.default.svc.other.local:80",
            ),
            ("web.default.svc.cluster:80", "web.default.svc.cluster:80"),
            (
                "web.default.svc.cluster.local.x:80",
                "web.default.svc.cluster.local.x:80",
            ),
            ("a.b.c:443", "a.b.c:443"),
            ("A.B.C.:443", "a.b.c:443"),
        ] {
            assert_eq!(
                parse(input).unwrap(),
                Target::Unknown {
                    authority: authority.into()
                },
                "{input}"
            );
        }
        // Two labels read as `<svc>.<ns>`, as a pod's search path would: Service `example` of
        // namespace `com` simply does not exist.
        assert_eq!(
            parse("Example.COM.:443").unwrap(),
            service("example", "com", 443)
        );
    }

    #[test]
    fn ip_literals_are_addresses() {
        assert_eq!(
            parse("10.0.0.1:80").unwrap(),
            Target::Addr("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse("[::ffff:10.0.0.1]:80").unwrap(),
            Target::Addr("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            parse("[fd00::1]:443").unwrap(),
            Target::Addr("[fd00::1]:443".parse().unwrap())
        );
    }

    #[test]
    fn refuses_what_is_not_host_port() {
        let long = format!("{}.default:80", "a".repeat(300));
        let long_label = format!("{}.default:80", "a".repeat(64));
        for (input, reason) in [
            ("web.default", "no port"),
            ("web.default:", "the port is not in 1..=65535"),
            ("web.default:0", "the port is not in 1..=65535"),
            ("web.default:65536", "the port is not in 1..=65535"),
            ("web.default:+80", "the port is not in 1..=65535"),
            (":80", "the host is empty"),
            (".:80", "the host is empty"),
            ("web..default:80", "the host has an empty label"),
            (
                "we b.default:80",
                "the host may only hold letters, digits, '-', '_' and '.'",
            ),
            (
                "web/x.default:80",
                "the host may only hold letters, digits, '-', '_' and '.'",
            ),
            ("[fe80::1%eth0]:80", "the host is not an IPv6 address"),
            (
                long_label.as_str(),
                "a label of the host is longer than 63 bytes",
            ),
            (long.as_str(), "longer than 260 bytes"),
        ] {
            match parse(input) {
                Err(InvalidTarget::Authority { reason: got, .. }) => {
                    assert_eq!(got, reason, "{input}");
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn reads_wire_addresses() {
        let addr = |ip: Vec<u8>, port| ProtoSocketAddr { ip, port };
        assert_eq!(
            socket_addr(&addr(vec![10, 0, 0, 1], 80)).unwrap(),
            "10.0.0.1:80".parse().unwrap()
        );
        let mapped = proto_addr("[::ffff:10.0.0.1]:80".parse().unwrap());
        assert_eq!(
            socket_addr(&mapped).unwrap(),
            "10.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            socket_addr(&addr(vec![10, 0, 0], 80)),
            Err(InvalidAddr::IpLength { len: 3 })
        );
        assert_eq!(
            socket_addr(&addr(vec![10, 0, 0, 1], 0)),
            Err(InvalidAddr::Port { port: 0 })
        );
        assert_eq!(
            socket_addr(&addr(vec![10, 0, 0, 1], 70_000)),
            Err(InvalidAddr::Port { port: 70_000 })
        );
        assert!(matches!(
            socket_addr(&addr(vec![0; 16], 80)),
            Err(InvalidAddr::Unspecified { .. })
        ));
    }

    #[test]
    fn a_request_without_target_is_invalid() {
        assert_eq!(
            Target::from_proto(None, DOMAIN),
            Err(InvalidTarget::Missing)
        );
        let error = Target::from_proto(
            Some(&get_destination::Target::Addr(ProtoSocketAddr::default())),
            DOMAIN,
        )
        .unwrap_err();
        assert!(error.to_string().contains("0 bytes long"), "{error}");
    }
}
