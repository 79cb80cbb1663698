//! What a gateway is told: who it is, whom it links to, what it exports, and its limits.
//!
//! Links and exports change while the gateway runs (the controller adds a Link, a Service gains
//! its export label), so both arrive as `tokio::sync::watch` receivers and are read afresh for
//! every connection and stream; nothing needs a restart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::ports::PROXY_INBOUND;
use mesh_proxy::balance::BalanceConfig;
use mesh_proxy::discovery::{ReconnectBackoff, Resolve};
use mesh_trust::spiffe::SpiffeIdError;
use mesh_trust::tls::CertResolver;
use mesh_trust::{SharedTrustBundles, SpiffeId, TrustDomain};
use tokio::sync::watch;

use crate::metrics::GatewayMetrics;

/// The service account every gateway runs as: a gateway's identity is
/// `spiffe://<trust domain>/ns/<mesh namespace>/sa/mesh-gateway` (see [`gateway_identity`]).
pub const GATEWAY_SERVICE_ACCOUNT: &str = "mesh-gateway";

/// The namespace the mesh's own components run in, by default.
pub const DEFAULT_MESH_NAMESPACE: &str = "mesh";

/// The identity of the gateway of `domain`, by the naming convention: the service account
/// [`GATEWAY_SERVICE_ACCOUNT`] in `mesh_namespace`.
///
/// A Link may name another identity explicitly ([`Link::gateway_identity`]); this is the default
/// when it does not.
///
/// # Errors
///
/// When `mesh_namespace` is not a valid SPIFFE path segment.
pub fn gateway_identity(
    domain: &TrustDomain,
    mesh_namespace: &str,
) -> Result<SpiffeId, SpiffeIdError> {
    domain.workload(mesh_namespace, GATEWAY_SERVICE_ACCOUNT)
}

/// A linked cluster, as its Link describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The remote cluster's name: what a tunnel request's `target_cluster` says.
    pub cluster: String,
    /// The remote cluster's trust domain; its bundle must be in the gateway's bundle set.
    pub trust_domain: TrustDomain,
    /// The remote gateway's addresses, IPs or host names, tried in turn. Host names are resolved
    /// again at every connection attempt, so a moved gateway is found without a new Link.
    pub addresses: Vec<String>,
    /// The remote gateway's QUIC port.
    pub port: u16,
    /// The identity the remote gateway must present, and the only identity of that cluster
    /// accepted on this gateway's QUIC port. It must be in `trust_domain`.
    pub gateway_identity: SpiffeId,
}

impl Link {
    /// Whether the link's gateway identity lies in its trust domain. A link that fails this is
    /// ignored in both directions: it would let one domain's root vouch for another's gateway.
    pub fn is_consistent(&self) -> bool {
        self.gateway_identity.trust_domain_str() == self.trust_domain.as_str()
    }
}

/// The live list of links.
pub type LinkWatch = watch::Receiver<Vec<Link>>;

/// The live set of exported services, by authority (`host:port`, compared case-insensitively).
///
/// Discovery says where a service's endpoints are; whether linked clusters may reach it is the
/// operator's decision (the `mesh.io/exported=true` label, applied by the controller), and the
/// controller hands the gateway the resulting set here. A service missing from this set is
/// answered `not-exported` even when discovery knows it.
pub type ExportWatch = watch::Receiver<BTreeSet<String>>;

/// How gateways talk to each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One warm QUIC connection per link, a stream per tunnel (UDP).
    #[default]
    Quic,
    /// A TLS connection per tunnel (TCP), as meshes without QUIC do: the same frames and
    /// checks, for comparing the two on the same code.
    Tcp,
}

/// The timeouts of the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From accepting a connection (egress) or a stream (ingress) to the open response: the TLS
    /// handshake, the open request, discovery's first answer and the remote side's answer.
    pub open: Duration,
    /// A QUIC handshake with a remote gateway, or a TCP connect to a local endpoint.
    pub connect: Duration,
    /// A spliced tunnel on which no byte moves either way for this long is closed.
    pub tunnel_idle: Duration,
    /// A QUIC connection that hears nothing from its peer for this long is closed (keep-alives
    /// are sent at a third of it, so a live idle link stays up).
    pub quic_idle: Duration,
    /// On shutdown, how long open tunnels may run before they are cut.
    pub drain: Duration,
}

impl Default for Timeouts {
    /// Open 10 s, connect 5 s, tunnel idle 1 h, QUIC idle 30 s, drain 30 s.
    fn default() -> Self {
        Self {
            open: Duration::from_secs(10),
            connect: Duration::from_secs(5),
            tunnel_idle: Duration::from_secs(3600),
            quic_idle: Duration::from_secs(30),
            drain: Duration::from_secs(30),
        }
    }
}

/// Everything a gateway needs. Built with [`GatewayConfig::new`], then adjusted.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// This cluster's name, reported by probes.
    pub cluster: String,
    /// The gateway's own certificate (presented on both ports and to remote gateways). Its
    /// trust domain is the only one whose workloads may use the egress port.
    pub certs: Arc<CertResolver>,
    /// The trust bundles: this cluster's and every linked cluster's, updated live.
    pub bundles: SharedTrustBundles,
    /// The port linked gateways connect to, ALPN `mesh.gw`: UDP for QUIC, TCP in TCP mode.
    pub quic_addr: SocketAddr,
    /// How gateways talk to each other; both ends of a link must agree.
    pub transport: Transport,
    /// The egress port (TCP), ALPN `mesh.tunnel`.
    pub egress_addr: SocketAddr,
    /// The admin port (TCP, HTTP/1): `/metrics`, `/live`, `/ready`, `/links`; `None` serves no
    /// admin port.
    pub admin_addr: Option<SocketAddr>,
    /// The linked clusters.
    pub links: LinkWatch,
    /// The exported services.
    pub exports: ExportWatch,
    /// Where exported services' endpoints come from.
    pub discovery: Arc<dyn Resolve>,
    /// The port of the proxy inbound listener on every endpoint: ingress connects to the
    /// endpoint's IP (from discovery) at this port, never anywhere else.
    pub inbound_port: u16,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// The delays between failed connection attempts to a remote gateway.
    pub reconnect: ReconnectBackoff,
    /// How endpoints of exported services are balanced.
    pub balance: BalanceConfig,
    /// Tunnels (QUIC bidirectional streams) one remote gateway may have open at once on one
    /// connection; more wait for QUIC flow control to grant them.
    pub max_streams_per_connection: u32,
    /// Egress connections served at once; more are closed at once.
    pub max_egress_connections: usize,
    /// QUIC connections one linked gateway may hold to this one at once; more are closed with
    /// [`crate::quic::code::TOO_MANY_CONNECTIONS`]. With the per-connection stream limit, this
    /// bounds what one linked cluster can take, so that it cannot starve the others.
    pub max_connections_per_peer: usize,
    /// Where the gateway counts tunnels, bytes and link state.
    pub metrics: GatewayMetrics,
    /// How often link state (RTT, loss, connected) is sampled into the metrics.
    pub sample_interval: Duration,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("cluster", &self.cluster)
            .field("quic_addr", &self.quic_addr)
            .field("egress_addr", &self.egress_addr)
            .field("links", &*self.links.borrow())
            .field("inbound_port", &self.inbound_port)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// A configuration with the default ports' inbound port (4143), timeouts, backoff, balancer
    /// and limits (1,024 streams per connection, 4 connections per linked gateway, 10,000 egress
    /// connections), fresh metrics, and
    /// link state sampled every 5 s.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: impl Into<String>,
        certs: Arc<CertResolver>,
        bundles: SharedTrustBundles,
        quic_addr: SocketAddr,
        egress_addr: SocketAddr,
        links: LinkWatch,
        exports: ExportWatch,
        discovery: Arc<dyn Resolve>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            certs,
            bundles,
            quic_addr,
            transport: Transport::Quic,
            egress_addr,
            admin_addr: None,
            links,
            exports,
            discovery,
            inbound_port: PROXY_INBOUND,
            timeouts: Timeouts::default(),
            reconnect: ReconnectBackoff::default(),
            balance: BalanceConfig::default(),
            max_streams_per_connection: 1024,
            max_egress_connections: 10_000,
            max_connections_per_peer: 4,
            metrics: GatewayMetrics::new(),
            sample_interval: Duration::from_secs(5),
        }
    }

    /// The gateway's own identity, from its current certificate.
    pub fn identity(&self) -> SpiffeId {
        self.certs.credentials().identity
    }
}
