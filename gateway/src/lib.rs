//! mesh-gateway: carries end-to-end mTLS sessions between clusters over QUIC.
//!
//! ```text
//! proxy ==mTLS/TCP (mesh.tunnel)==> egress [this gateway] ~~QUIC (mesh.gw)~~> ingress [remote gateway] --TCP--> endpoint proxy :4143
//!       \____________________________ inner mTLS, proxy to proxy, carried as opaque bytes _____________________________/
//! ```
//!
//! The modules:
//! - [`config`]: the gateway's configuration, the live link list and export set, and the
//!   gateway naming convention (`spiffe://<domain>/ns/<mesh ns>/sa/mesh-gateway`).
//! - [`open`]: the stream protocol as plain functions: classify the first frame, check an open
//!   request, build the answers.
//! - [`quic`]: QUIC's TLS (mutual, via mesh-trust's verifiers) and transport settings, and the
//!   identity checks on a connection.
//! - [`stream`]: a tunnel's stream between gateways, over QUIC or (TCP mode) TLS over TCP.
//! - [`links`]: one warm QUIC connection per linked cluster, opened on demand, reconnected with
//!   backoff, trying the Link's addresses in turn (host names resolved at each attempt); in TCP
//!   mode ([`config::Transport::Tcp`]) a TLS connection per tunnel instead, with the same frames
//!   and checks, so that the two transports can be compared on the same code.
//! - [`egress`]: the egress port: workloads of this trust domain ask for a tunnel, the request is
//!   relayed on a new stream of the link's connection, then bytes are spliced.
//! - [`ingress`]: streams from linked gateways: tunnels to ready endpoints of exported services
//!   (chosen by the proxy's balancer) and health probes.
//! - [`metrics`] and [`admin`]: Prometheus metrics with labels bounded by the link list, and
//!   the admin server (`/metrics`, `/live`, `/ready`, `/links`).
//! - [`gateway`]: binding both ports and running them until shutdown.
//! - [`cli`]: the `mesh-gateway` command line, which configures a gateway from files (links,
//!   exported services, destinations) until the controller feeds them.
//!
//! A gateway is never an open relay: egress serves only its own trust domain's workloads, the
//! link port only linked clusters' gateways (the identity a current Link names, inside that
//! Link's trust domain), and ingress dials only the inbound port of ready endpoints that
//! discovery lists for an exported service ([`ExportWatch`]).
//!
//! Limits: the open request has a deadline and a size cap on both ports; QUIC grants each
//! connection [`GatewayConfig::max_streams_per_connection`] streams and each linked gateway
//! [`GatewayConfig::max_connections_per_peer`] connections, so one cluster cannot starve the
//! others; idle QUIC connections and idle tunnels are closed; egress connections are capped.

pub mod admin;
pub mod cli;
pub mod config;
pub mod egress;
pub mod gateway;
pub mod ingress;
pub mod links;
pub mod metrics;
pub mod open;
pub mod quic;
pub mod stream;

pub use config::{
    ExportWatch, GatewayConfig, Link, LinkWatch, Timeouts, Transport, gateway_identity,
};
pub use gateway::{BindError, Gateway};
