//! The outbound side for opaque TCP: explicit listeners bound to one service.
//!
//! An explicit listener (`--outbound-map 127.0.0.1:9000=web.default.svc.cluster.local:80`) sends
//! every connection it accepts to one service authority. Each connection resolves the authority
//! through discovery, picks an endpoint with the peak-EWMA balancer, and connects: over the meshed
//! hop to the endpoint's proxy inbound port when discovery names an identity (the handshake
//! requires exactly that identity), in plain text when it does not. A connect failure is recorded
//! (enough of them eject the endpoint) and the next pick is tried, up to a few attempts, so one
//! dead endpoint costs a retry, not a failed connection. Then the bytes are spliced both ways.
//!
//! This is the first of the three ways outbound targets are found; the original destination of
//! iptables-redirected connections and the HTTP authority come with the outbound listener for
//! redirected and HTTP traffic.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_trust::tls::{CertResolver, TlsError};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};

mod http;
mod listener;
mod service;
mod services;

pub use http::PROXY_ERROR_HEADER;
pub use listener::{OutboundContext, Route, serve_mapped, serve_outbound};
pub use service::{EndpointError, Picked, ServiceBalancer, Upstream};
pub use services::{IDLE_TIMEOUT, Service, Services};

use crate::balance::{BalanceConfig, PickError};
use crate::retry::BudgetConfig;
use crate::transport_header::Authority;

/// Server-speaks-first protocols, opaque unless configured otherwise: SMTP (25, 587), MySQL
/// (3306), Galera (4444), PostgreSQL (5432), Redis (6379), Elasticsearch transport (9300),
/// memcached (11211).
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// How outbound connections are made.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The port of the destination proxy's inbound listener (4143).
    pub inbound_port: u16,
    /// How long to wait for discovery's first answer about a service.
    pub resolve_timeout: Duration,
    /// Connect, handshake and transport header, per attempt.
    pub connect_timeout: Duration,
    /// A spliced connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Endpoints tried per connection before giving up.
    pub max_attempts: usize,
    /// Concurrent connections per listener; more are refused (closed) at once.
    pub max_connections: usize,
    pub balance: BalanceConfig,
    /// Destination ports whose connections are opaque TCP, without protocol detection: for
    /// server-speaks-first protocols (SMTP, MySQL, ...), whose clients send nothing first.
    pub opaque_ports: BTreeSet<u16>,
    /// How long a new connection has to show what it speaks; a client still silent then is
    /// forwarded as opaque TCP.
    pub detect_timeout: Duration,
    /// How long an HTTP request may wait for its response headers, retries included.
    pub request_timeout: Duration,
    /// Retries may add at most this much load to a destination.
    pub retry_budget: BudgetConfig,
    /// Request bodies up to this size are buffered so the request can be retried; larger ones
    /// are streamed and never retried.
    pub max_retry_body: usize,
    /// Distinct destinations watched at once; more are refused until some are idle.
    pub max_destinations: usize,
    /// The most bytes of HTTP/1 request head (request line and headers) accepted from the
    /// application; larger heads are answered 431.
    pub max_header_bytes: usize,
    /// How long the application may take to send a request head.
    pub header_read_timeout: Duration,
    /// The proxy's own listener ports. Traffic for an address discovery does not know is sent
    /// on as the application asked, except to these ports or to loopback: that would loop back
    /// into the proxy (a `Host: 127.0.0.1:4140` request) or reach its admin and tap servers.
    pub proxy_ports: BTreeSet<u16>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            inbound_port: mesh_api::ports::PROXY_INBOUND,
            resolve_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            max_connections: 10_000,
            balance: BalanceConfig::default(),
            opaque_ports: DEFAULT_OPAQUE_PORTS.into_iter().collect(),
            detect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            retry_budget: BudgetConfig::default(),
            max_retry_body: 64 * 1024,
            max_destinations: 10_000,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            proxy_ports: BTreeSet::from([
                mesh_api::ports::PROXY_OUTBOUND,
                mesh_api::ports::PROXY_INBOUND,
                mesh_api::ports::PROXY_TAP,
                mesh_api::ports::ADMIN,
            ]),
        }
    }
}

/// Why an outbound connection could not be made. The client's connection is closed; nothing
/// else is affected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    #[error("discovery has not answered for {0} yet")]
    ResolveTimeout(String),
    #[error("{0} is not a known service")]
    NotFound(String),
    #[error("{authority}: {source}")]
    NoEndpoint {
        authority: String,
        source: PickError,
    },
    #[error("{authority}: no endpoint answered after {attempts} attempts; last: {last}")]
    Exhausted {
        authority: String,
        attempts: usize,
        last: Box<EndpointError>,
    },
    #[error(
        "{addr} is not a mesh destination and {reason}: the proxy does not forward there; call it without the proxy"
    )]
    Forbidden {
        addr: SocketAddr,
        reason: &'static str,
    },
    #[error(
        "{target}: already watching {max} destinations, the most allowed; raise max_destinations or wait for idle ones to be dropped"
    )]
    TooManyDestinations { target: String, max: usize },
    #[error("TLS configuration for {identity}: {source}")]
    Tls {
        identity: SpiffeId,
        source: TlsError,
    },
}

/// Client TLS for the meshed hop: one config per expected peer identity and ALPN, built once.
#[derive(Debug)]
pub struct OutboundTls {
    identity: SpiffeId,
    bundles: SharedTrustBundles,
    certs: Arc<CertResolver>,
    configs: Mutex<HashMap<ConfigKey, Arc<rustls::ClientConfig>>>,
}

/// A client config is for one expected peer identity and one ALPN.
type ConfigKey = (SpiffeId, &'static [u8]);

impl OutboundTls {
    pub fn new(bundles: SharedTrustBundles, certs: Arc<CertResolver>) -> Self {
        Self {
            identity: certs.credentials().identity,
            bundles,
            certs,
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// This proxy's own identity. It stays the same for the proxy's life: a renewed leaf
    /// certifies the same SPIFFE ID (one for another identity is refused when it is loaded).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The client config that requires exactly `identity` and offers only `alpn`
    /// (`mesh.opaque`, `mesh.h2` or, towards a gateway, `mesh.tunnel`).
    pub fn config_for(
        &self,
        identity: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<rustls::ClientConfig>, OutboundError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (identity.clone(), alpn);
        if let Some(config) = configs.get(&key) {
            return Ok(config.clone());
        }
        let config = mesh_trust::tls::client_config(
            self.bundles.clone(),
            PeerPolicy::Exactly(identity.clone()),
            Some(self.certs.clone()),
            &[alpn],
        )
        .map(Arc::new)
        .map_err(|source| OutboundError::Tls {
            identity: identity.clone(),
            source,
        })?;
        configs.insert(key, config.clone());
        Ok(config)
    }
}

impl OutboundConfig {
    /// Whether traffic for `addr`, which discovery does not know, may be sent there directly.
    pub fn check_passthrough(&self, addr: SocketAddr) -> Result<(), OutboundError> {
        let ip = addr.ip();
        let reason = if ip.is_loopback() {
            "is a loopback address"
        } else if ip.is_unspecified() {
            "is the unspecified address"
        } else if self.proxy_ports.contains(&addr.port()) {
            "its port is one of the proxy's own"
        } else {
            return Ok(());
        };
        Err(OutboundError::Forbidden { addr, reason })
    }
}

/// Parses an `--outbound-map` entry, `LISTEN_ADDR=AUTHORITY`
/// (`127.0.0.1:9000=web.default.svc.cluster.local:80`).
pub fn parse_outbound_map(entry: &str) -> Result<(SocketAddr, String), String> {
    let (listen, authority) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not LISTEN_ADDR=AUTHORITY (e.g. 127.0.0.1:9000=web.default.svc.cluster.local:80)"))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not an ip:port to listen on"))?;
    Authority::parse(authority).map_err(|e| e.to_string())?;
    Ok((listen, authority.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_outbound_map_entries() {
        assert_eq!(
            parse_outbound_map("127.0.0.1:9000=web.default.svc.cluster.local:80").unwrap(),
            (
                "127.0.0.1:9000".parse().unwrap(),
                "web.default.svc.cluster.local:80".to_owned()
            )
        );
        assert!(parse_outbound_map("[::1]:9000=web:80").is_ok());
        for (bad, want) in [
            ("127.0.0.1:9000", "is not LISTEN_ADDR=AUTHORITY"),
            ("localhost:9000=web:80", "is not an ip:port"),
            ("127.0.0.1:9000=web", "no :port"),
            ("127.0.0.1:9000=we b:80", "cannot have"),
        ] {
            let err = parse_outbound_map(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
