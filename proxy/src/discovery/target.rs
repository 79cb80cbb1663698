//! What the proxy asks discovery about: a service authority or an original destination address.
//!
//! Targets are map keys (one controller stream per target), so two spellings of one target must
//! compare equal: [`Target::parse`] lowercases host names and [`Target::from`] unmaps
//! IPv4-mapped IPv6 addresses, which a dual-stack socket reports for IPv4 peers.

use std::fmt;
use std::net::SocketAddr;

use mesh_api::common::SocketAddr as ProtoSocketAddr;
use mesh_api::discovery::get_destination;

/// A target to resolve.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Target {
    /// A service authority, `host:port`, e.g. `web.default.svc.cluster.local:80`.
    Authority(String),
    /// An original destination address, from an iptables redirect.
    Addr(SocketAddr),
}

/// Why a string is not a target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a target: expected host:port or ip:port ({reason})")]
pub struct InvalidTarget {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

// === impl Target ===

impl Target {
    /// Parses `ip:port` (IPv6 in brackets) as an address, anything else as a `host:port`
    /// authority with a non-empty host and a port in 1..=65535.
    pub fn parse(input: &str) -> Result<Self, InvalidTarget> {
        if let Ok(addr) = input.parse::<SocketAddr>() {
            return Ok(Self::from(addr));
        }
        // The same authority rules as everywhere else in the proxy.
        crate::authority::Authority::parse(input).map_err(|e| InvalidTarget {
            input: input.to_owned(),
            reason: e.reason,
        })?;
        // DNS names are case-insensitive; one spelling keeps one stream per service.
        Ok(Self::Authority(input.to_ascii_lowercase()))
    }

    /// The `target` field of a `GetDestination` request.
    pub fn to_proto(&self) -> get_destination::Target {
        match self {
            Self::Authority(authority) => get_destination::Target::Authority(authority.clone()),
            Self::Addr(addr) => get_destination::Target::Addr(proto_addr(*addr)),
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Authority(authority) => f.write_str(authority),
            Self::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// A socket address as the wire carries it: 4 or 16 address bytes and a port.
pub(crate) fn proto_addr(addr: SocketAddr) -> ProtoSocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    ProtoSocketAddr {
        ip,
        port: u32::from(addr.port()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_authorities_and_addresses() {
        assert_eq!(
            Target::parse("Web.Default.svc.cluster.local:80").unwrap(),
            Target::Authority("web.default.svc.cluster.local:80".into())
        );
        assert_eq!(
            Target::parse("10.0.0.1:8080").unwrap(),
            Target::Addr("10.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            Target::parse("[::1]:443").unwrap(),
            Target::Addr("[::1]:443".parse().unwrap())
        );
    }

    #[test]
    fn unmaps_ipv4_mapped_addresses() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(
            Target::from(mapped),
            Target::Addr("10.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn refuses_what_is_not_a_target() {
        for input in [
            "web",
            ":80",
            "web:",
            "web:0",
            "web:65536",
            "we b:80",
            "a/b:80",
            "",
        ] {
            assert!(Target::parse(input).is_err(), "{input:?} was accepted");
        }
    }

    #[test]
    fn addresses_go_on_the_wire_as_4_or_16_bytes() {
        let v4 = proto_addr("10.0.0.1:80".parse().unwrap());
        assert_eq!((v4.ip.len(), v4.port), (4, 80));
        let v6 = proto_addr("[2001:db8::1]:443".parse().unwrap());
        assert_eq!((v6.ip.len(), v6.port), (16, 443));
    }
}
