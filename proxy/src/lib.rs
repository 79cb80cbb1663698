//! mesh-proxy: the sidecar data plane.
//!
//! Built so far: the protocol cores, as plain functions and state machines over bytes and time,
//! with no sockets, so that they are deterministic, fuzzable and tested on their own.
//! - [`detect`]: what a connection speaks, from its first bytes (TLS ClientHello and SNI, HTTP/1,
//!   HTTP/2 prior knowledge, or opaque TCP).
//! - [`transport_header`]: the header a client proxy sends after the meshed handshake.
//! - [`balance`]: power of two choices over peak-EWMA latency, with ejection of failing endpoints.
//! - [`split`]: weighted choice among TrafficSplit backends, by priority group, skipping dead ones.
//! - [`retry`]: the retry budget and the rules for what may be retried.
//!
//! Not built yet: the listeners, the meshed hop, discovery, metrics, tap and the binary (see
//! ARCHITECTURE.md, "Data path"). Nothing here is wired to a socket until they are.

pub mod balance;
pub mod detect;
pub mod retry;
pub mod split;
pub mod transport_header;
