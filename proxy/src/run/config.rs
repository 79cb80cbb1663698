//! What a proxy is told at start: plain data, built from flags by the binary or directly by tests.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh_trust::SpiffeId;
use mesh_trust::rotation::RotationOptions;

pub use crate::outbound::DEFAULT_OPAQUE_PORTS;

/// The namespace and service account the controller runs as, which name its SPIFFE ID in every
/// trust domain unless `--controller-identity` says otherwise.
pub const CONTROLLER_NAMESPACE: &str = "mesh-system";
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "mesh-controller";

/// Everything [`super::run`] needs.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the workload's certificate comes from.
    pub identity: IdentitySource,
    /// Roots by trust domain, from a file or directory (reloaded on change). Required unless
    /// discovery is the controller, which streams the bundle set.
    pub trust_bundle: Option<PathBuf>,
    /// Where destinations come from.
    pub discovery: DiscoverySource,
    /// The identity the controller's identity and discovery services must present; by default
    /// `spiffe://<this workload's trust domain>/ns/mesh-system/sa/mesh-controller`.
    pub controller_identity: Option<SpiffeId>,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tap_addr: SocketAddr,
    /// Explicit outbound listeners, each bound to one service.
    pub outbound_maps: Vec<OutboundMap>,
    /// Where the application listens; inbound connections go to `app_ip:<header port>`.
    pub app_ip: IpAddr,
    /// The port destination proxies' inbound listeners listen on (4143 in a cluster, where every
    /// pod has its own address; set it when several proxies share one host).
    pub peer_inbound_port: u16,
    /// Ports whose traffic is never protocol-detected. Not applied yet: neither the inbound nor
    /// the outbound config has an opaque-port setting, and both treat every connection they
    /// serve today as opaque. Accepted now so that the command line does not change when they do.
    pub opaque_ports: BTreeSet<u16>,
    /// How long a new inbound connection has to show what it speaks.
    pub detect_timeout: Duration,
    /// Connecting to an endpoint (outbound) or to the application (inbound).
    pub connect_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once per listener.
    pub max_connections: usize,
    /// How long a drain may take before the remaining connections are cut.
    pub shutdown_grace: Duration,
    /// How often identity and trust bundle files are checked for changes.
    pub reload_interval: Duration,
    /// When the identity service's leaves are renewed (`--identity-addr` only).
    pub rotation: RotationOptions,
}

/// Where the workload's certificate comes from.
#[derive(Clone, Debug)]
pub enum IdentitySource {
    /// `leaf.crt` (the leaf, then its issuer) and `leaf.key` in `dir`, as `mesh trust issue`
    /// writes them; re-read when they change. When `expected` is set, the leaf must be for it.
    Dir {
        dir: PathBuf,
        expected: Option<SpiffeId>,
    },
    /// The controller's identity service: a key generated here, a CSR, a leaf signed for the
    /// identity the service-account token in `token_file` proves, renewed before it expires.
    Service {
        addr: ControllerAddr,
        token_file: PathBuf,
        identity: SpiffeId,
    },
}

/// Where destinations come from.
#[derive(Clone, Debug)]
pub enum DiscoverySource {
    /// The controller's `Destination` and `TrustBundles` services.
    Controller { addr: ControllerAddr },
    /// A JSON file ([`crate::discovery::StaticDiscovery`]), for tests and demos.
    File { path: PathBuf },
}

/// `--outbound-map LISTEN=AUTHORITY`: every connection accepted on `listen` goes to `authority`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMap {
    pub listen: SocketAddr,
    pub authority: String,
}

/// Where a controller service listens: `https://host:port` (mesh TLS that checks the
/// controller's identity) or, for discovery only, `http://host:port` (plaintext, for a controller
/// on the same host or behind a trusted tunnel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

// === impl ProxyConfig ===

impl ProxyConfig {
    /// The defaults of the command line, for `identity` and `discovery`.
    pub fn new(identity: IdentitySource, discovery: DiscoverySource) -> Self {
        Self {
            identity,
            trust_bundle: None,
            discovery,
            controller_identity: None,
            inbound_addr: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                mesh_api::ports::PROXY_INBOUND,
            ),
            outbound_addr: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                mesh_api::ports::PROXY_OUTBOUND,
            ),
            admin_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), mesh_api::ports::ADMIN),
            tap_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), mesh_api::ports::PROXY_TAP),
            outbound_maps: Vec::new(),
            app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            peer_inbound_port: mesh_api::ports::PROXY_INBOUND,
            opaque_ports: DEFAULT_OPAQUE_PORTS.into_iter().collect(),
            detect_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            reload_interval: Duration::from_secs(5),
            rotation: RotationOptions::default(),
        }
    }

    /// The identity the controller must present, given this workload's own.
    pub(super) fn controller_identity_for(&self, own: &SpiffeId) -> Option<SpiffeId> {
        self.controller_identity.clone().or_else(|| {
            own.trust_domain()
                .workload(CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
                .ok()
        })
    }
}

// === impl ControllerAddr ===

impl ControllerAddr {
    /// Parses `https://host[:port]`, `http://host[:port]` or `host[:port]` (TLS), with
    /// `default_port` when none is given. A path, query or user info is refused: these name a
    /// gRPC server, not a resource on it.
    pub fn parse(input: &str, default_port: u16) -> Result<Self, String> {
        let uri: http::Uri = input.parse().map_err(|e| {
            format!("{input:?} is not a URL ({e}); write it like https://host:port")
        })?;
        let tls = match uri.scheme_str() {
            Some("https") | None => true,
            Some("http") => false,
            Some(other) => {
                return Err(format!(
                    "{input:?}: scheme {other:?} is not supported; use https:// or http://"
                ));
            }
        };
        if uri
            .path_and_query()
            .is_some_and(|p| !p.as_str().is_empty() && p.as_str() != "/")
        {
            return Err(format!(
                "{input:?} has a path; give only the scheme, host and port"
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{input:?} names no host; write it like https://host:port"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{input:?}: user info is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{input:?} names no host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(default_port),
        })
    }
}

impl fmt::Display for ControllerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn controller_addresses() {
        let parse = |s| ControllerAddr::parse(s, 8086);
        assert_eq!(
            parse("https://controller.mesh-system.svc:8080").unwrap(),
            ControllerAddr {
                tls: true,
                host: "controller.mesh-system.svc".into(),
                port: 8080
            }
        );
        assert_eq!(
            parse("http://127.0.0.1").unwrap(),
            ControllerAddr {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8086
            }
        );
        let bare = parse("controller:9000").unwrap();
        assert!(bare.tls);
        assert_eq!(bare.port, 9000);
        let v6 = parse("https://[::1]:8086").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "https://[::1]:8086");
        for (bad, want) in [
            ("ftp://controller:1", "not supported"),
            ("https://controller:1/api", "has a path"),
            ("https://user@controller:1", "user info"),
            ("not a url", "not a URL"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
