//! mesh-proxy: the sidecar data plane.
//!
//! The modules, each tested on its own and together:
//! - Protocol cores, plain functions and state machines over bytes and time:
//!   - [`detect`]: what a connection speaks, from its first bytes (TLS ClientHello and SNI,
//!     HTTP/1, HTTP/2 prior knowledge, or opaque TCP).
//!   - [`transport_header`]: the header a client proxy sends after the meshed handshake.
//!   - [`balance`]: power of two choices over peak-EWMA latency, with ejection of failing endpoints.
//!   - [`split`]: weighted choice among TrafficSplit backends, by priority group, skipping dead ones.
//!   - [`retry`]: the retry budget and the rules for what may be retried.
//! - The meshed opaque-TCP hop ([`tcp`]): outbound mTLS with the transport header, the inbound
//!   listener that detects, terminates mTLS and splices to the local app, with limits and drain.
//! - [`discovery`]: the client of the controller's Destination stream (reconnects with backoff,
//!   keeps the last good state) and a static file source for tests and demos.
//! - [`init`] and [`orig_dst`]: the iptables rules for transparent redirection, and the original
//!   destination of a redirected connection.
//! - [`outbound`]: the outbound listeners. Redirected connections are resolved by original
//!   destination, direct clients by HTTP authority or TLS SNI, explicit listeners
//!   (`--outbound-map`) by their one service; then protocol detection, HTTP routed per request
//!   (splits, the balancer, retries under a budget) over the `mesh.h2` hop, and everything else
//!   as opaque TCP over the meshed hop, through the gateway for endpoints in linked clusters
//!   ([`tunnel`]), or in plain text to endpoints without an identity.
//! - [`http`]: the `mesh.h2` hop between proxies, and clients towards applications.
//! - [`tunnel`]: reaching an endpoint in a linked cluster through the local gateway's egress
//!   port, with the mTLS session running end to end inside the tunnel.
//! - [`admin`] and [`metrics`]: the admin server (`/metrics`, `/ready`, `/live`, `/shutdown` from
//!   loopback only) and the proxy's Prometheus metrics with bounded label cardinality.
//! - [`tap`]: live request metadata for operators, as a gRPC stream.
//! - [`drain`]: graceful shutdown; [`run`]: the whole proxy, as the `mesh-proxy` binary runs it.

pub mod admin;
pub mod authority;
pub mod balance;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod http;
pub mod init;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod retry;
pub mod run;
pub mod split;
pub mod tap;
pub mod tcp;
pub mod transport_header;
pub mod tunnel;
