//! Tunnels: how a proxy reaches an endpoint of a linked cluster through its local gateway.
//!
//! Discovery marks such an endpoint with a [`TunnelMeta`]: the remote cluster and service, the
//! local gateway's egress address and identity, and the remote trust domain. Reaching it takes
//! two TLS sessions, one inside the other:
//!
//! 1. The outer one, to the local gateway: TCP to its egress port, mutual TLS requiring exactly
//!    the gateway's identity, ALPN `mesh.tunnel`. The gateway must be of this proxy's own trust
//!    domain; a tunnel naming any other is refused before connecting.
//! 2. The open exchange on it: one `StreamHeader { open: TunnelOpen }` frame out, one
//!    `TunnelOpenResponse` frame back (size-capped, within the deadline). A refusal becomes a
//!    typed [`Refusal`]; an OK must name the endpoint the remote gateway picked, by a SPIFFE ID of
//!    the remote trust domain.
//! 3. The inner one, end to end to the endpoint's proxy, through the tunnel: the ordinary meshed
//!    hop ([`crate::tcp::handshake_meshed`]) requiring exactly that identity, then the transport
//!    header. The destination proxy therefore sees this proxy's identity, not the gateway's, and
//!    the gateways only ever carry TLS records.
//!
//! [`open_tunnel`] does steps 1 and 2 and [`connect_tunnelled`] all three, under one deadline.
//! Every error happens before the stream is handed over, so none has sent an application byte
//! ([`TunnelError::nothing_sent`]); [`TunnelError::fault`] says whether the gateway, the remote
//! service or the remote endpoint is to blame, for the balancer.
//!
//! The protocol core, building the request and judging the answer, is plain functions over data
//! in `open`; `connect` is the async shell around it.
//!
//! [`TunnelMeta`]: crate::discovery::TunnelMeta

mod connect;
mod error;
mod open;

pub use self::connect::{connect_tunnelled, open_tunnel};
pub use self::error::{Fault, OpenStage, ProtocolViolation, Refusal, TunnelError, TunnelErrorKind};
pub use self::open::{MAX_GATEWAY_MESSAGE_CHARS, MAX_OPEN_REQUEST_LEN, MAX_OPEN_RESPONSE_LEN};

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The outer session: mutual TLS to the local gateway, over TCP.
pub type GatewayStream = TlsStream<TcpStream>;

/// The inner session to the remote endpoint's proxy, carried by the outer one.
pub type TunnelStream = TlsStream<GatewayStream>;
