//! The controller's DNS server: authoritative for the mesh's names, never a resolver.
//!
//! It answers, over UDP and TCP, from the shared [`Cache`](crate::cache::Cache):
//!
//! - `<svc>.<ns>.svc.<cluster>.<zone>` (zone `mesh.local` by default): Service `<svc>` in one
//!   cluster. For this cluster, the local Service (never a mirror); for another, the local
//!   mirror `<svc>-<cluster>` labelled with that cluster. A and AAAA are its ClusterIPs, or the
//!   addresses of its ready endpoints when it is headless.
//! - `<hostname>.<svc>.<ns>.svc.<cluster>.<zone>`: one ready endpoint of a headless Service, by
//!   its `hostname` (or its address with dashes, `10-0-0-1`, when it has none).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<cluster>.<zone>`: SRV for a named port. The target is the
//!   Service's name, or for a headless Service each ready endpoint's per-pod name (with the
//!   endpoint's port); the targets' addresses go in the additional section.
//! - `<svc>.<ns>.svc.<clusterset zone>` (`clusterset.local` by default), the MCS name: the local
//!   Service, then its mirrors in the order of the `failover.mesh.io/fallback-order` annotation
//!   of the failover TrafficSplit whose primary is `<svc>` (mirrors it does not list follow, by
//!   cluster name), or by cluster name without one. It answers the addresses of the copies that
//!   have a ready endpoint, in that order, or of every copy when none has. SRV works there too,
//!   with the copy's rank as the SRV priority and per-cluster names as targets.
//!
//! Unknown names inside a zone get NXDOMAIN and names without the asked type NOERROR with no
//! answer, both with the zone's SOA for negative caching (RFC 2308); the apexes answer SOA and NS;
//! names outside both zones are REFUSED. [`names`] maps names to meanings, [`Snapshot`] holds the
//! indexed data and decides each answer, and [`DnsServer`] runs hickory-server around them; the
//! snapshot is rebuilt when the cache changes, so answers follow the API within a fraction of a
//! second.

mod answer;
#[doc(hidden)]
pub mod fuzz;
mod metrics;
pub mod names;
mod server;
mod snapshot;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use self::answer::Answer;
pub use self::metrics::DnsMetrics;
pub use self::names::ZoneError;
pub use self::server::DnsServer;
pub use self::snapshot::{Authority, Snapshot};

/// The default per-cluster zone.
pub const DEFAULT_ZONE: &str = "mesh.local";
/// The default MCS clusterset zone.
pub const DEFAULT_CLUSTERSET_ZONE: &str = "clusterset.local";
/// The default TTL of every record (and of negative answers), in seconds: short, because
/// failover changes clusterset answers.
pub const DEFAULT_TTL: u32 = 5;
/// The default idle timeout of a TCP connection.
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the DNS server is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// This cluster's name, as other clusters' mirrors are labelled with it.
    pub cluster: String,
    /// The per-cluster zone, such as `mesh.local` (a trailing dot is optional).
    pub zone: String,
    /// The MCS clusterset zone, such as `clusterset.local`.
    pub clusterset_zone: String,
    /// The TTL of every record and the SOA minimum (the negative-caching TTL), in seconds.
    pub ttl: u32,
    /// Where to listen, for both UDP and TCP; port 0 picks a port free for both.
    pub listen: SocketAddr,
    /// How long a TCP connection may stay idle before the server closes it.
    pub tcp_timeout: Duration,
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A zone is invalid.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// The cluster name cannot be a DNS label.
    #[error(
        "cluster name {0:?} cannot be a DNS label (1 to 63 letters, digits and '-'); \
         configure the controller with such a cluster name"
    )]
    ClusterName(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind the DNS UDP socket on {addr}: {source}; is the port in use?")]
    BindUdp {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// The TCP listener could not be bound.
    #[error("cannot bind the DNS TCP listener on {addr}: {source}; is the port in use?")]
    BindTcp {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// The server stopped serving without being asked to.
    #[error("the DNS server stopped: {0}")]
    Stopped(String),
}

// === impl DnsConfig ===

impl DnsConfig {
    /// The defaults for cluster `cluster`: zones `mesh.local` and `clusterset.local`, TTL 5 s,
    /// listening on `0.0.0.0:5353`.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            zone: DEFAULT_ZONE.to_owned(),
            clusterset_zone: DEFAULT_CLUSTERSET_ZONE.to_owned(),
            ttl: DEFAULT_TTL,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, mesh_api::ports::CONTROLLER_DNS)),
            tcp_timeout: DEFAULT_TCP_TIMEOUT,
        }
    }
}
