//! Discovery: the controller's `Destination` gRPC service (`mesh.discovery.v1`), which proxies
//! and gateways watch to learn where a target's traffic goes.
//!
//! A client asks about a target, a Service authority (`web.default.svc.cluster.local:80`) or an
//! address (a Service's cluster IP and port, or an endpoint's IP and port, from an iptables
//! redirect), and receives a stream of `Update`s: one as soon as the controller's view of the
//! cluster is complete, then one whenever the answer changes. Each `Update` replaces the
//! previous one whole. See ARCHITECTURE.md, "Control plane", and the crate documentation for the
//! objects read.
//!
//! - [`config`]: [`DiscoveryConfig`], what discovery knows of its own cluster.
//! - [`target`]: reading a request's target; unreadable ones are refused with
//!   `InvalidArgument`.
//! - [`index`]: the [`Index`] of Services, endpoints, splits and Links, rebuilt once per change
//!   of the [`Cache`](crate::cache::Cache) and shared by every stream.
//! - [`resolve`]: one target's `Update`, from the index.
//! - [`split`]: a TrafficSplit's backends as weights and priority groups (failover order).
//! - [`opaque`]: a Service's opaque ports annotation.
//! - [`service`]: [`DiscoveryService`], the tonic service, its index task and its streams.
//! - [`metrics`]: the Prometheus metrics, [`DiscoveryMetrics`].
//!
//! What an endpoint carries: its address (the slice port whose name is the requested Service
//! port's), `ready` from its slice conditions (absent means ready), its zone and hostname, the
//! cluster it runs in, weight 1, its pod's labels, and its identity when the pod runs the mesh
//! proxy; a mirror's endpoints instead carry the tunnel through the local gateway, and no
//! identity (the remote gateway reports the identity of the endpoint it picks).

pub mod config;
pub mod index;
pub mod metrics;
pub mod opaque;
pub mod resolve;
pub mod service;
pub mod split;
pub mod target;

#[cfg(test)]
mod tests;

pub use config::{
    ConfigError, DEFAULT_CLUSTER_DOMAIN, DEFAULT_MESH_NAMESPACE, DiscoveryConfig,
    GATEWAY_SERVICE_ACCOUNT, Settings,
};
pub use index::{Index, Objects, Problem};
pub use metrics::DiscoveryMetrics;
pub use opaque::OpaquePorts;
pub use service::{DiscoveryService, UpdateStream};
pub use target::{InvalidAddr, InvalidTarget, ServiceAuthority, Target};
