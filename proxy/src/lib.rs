//! mesh-proxy: the sidecar data plane.
//!
//! Built so far, each tested on its own:
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
//! - [`outbound`]: explicit listeners bound to one service (`--outbound-map`): discovery, the
//!   balancer, retries on connect failure, then the meshed hop or plain TCP.
//! - [`admin`] and [`metrics`]: the admin server (`/metrics`, `/ready`, `/live`, `/shutdown` from
//!   loopback only) and the proxy's Prometheus metrics with bounded label cardinality.
//! - [`drain`]: graceful shutdown.
//!
//! Not built yet: the outbound listener for iptables-redirected and HTTP traffic, the HTTP/2 hop
//! (`mesh.h2`), tunnels through the gateway, tap, and the `mesh-proxy` binary (see
//! ARCHITECTURE.md, "Data path").

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
