//! Default ports and ALPN protocol names.
//!
//! Every port is configurable; these are the values the parts agree on when nobody configures
//! anything, so that a proxy finds its gateway and a gateway finds its peer without extra flags.
//! ALPN names tell the two ends of a TLS session which protocol follows the handshake.

/// Proxy: outbound traffic (the iptables redirect target, or addressed explicitly).
pub const PROXY_OUTBOUND: u16 = 4140;
/// Proxy: inbound meshed mTLS and redirected inbound traffic.
pub const PROXY_INBOUND: u16 = 4143;
/// Proxy: tap (gRPC).
pub const PROXY_TAP: u16 = 4190;
/// Proxy and gateway: admin server (`/metrics`, `/ready`, `/live`).
pub const ADMIN: u16 = 4191;
/// Gateway: QUIC between gateways (UDP, ALPN [`ALPN_GATEWAY`]).
pub const GATEWAY_QUIC: u16 = 4180;
/// Gateway: egress, mTLS tunnel requests from local proxies (TCP, ALPN [`ALPN_TUNNEL`]).
pub const GATEWAY_EGRESS: u16 = 4181;
/// Controller: identity service (gRPC).
pub const CONTROLLER_IDENTITY: u16 = 8080;
/// Controller: discovery service (gRPC).
pub const CONTROLLER_DISCOVERY: u16 = 8086;
/// Controller: DNS (UDP and TCP).
pub const CONTROLLER_DNS: u16 = 5353;
/// Controller: admin server (`/metrics`, `/ready`, `/live`).
pub const CONTROLLER_ADMIN: u16 = 9990;

/// Proxy to proxy: HTTP requests multiplexed on HTTP/2.
pub const ALPN_H2: &[u8] = b"mesh.h2";
/// Proxy to proxy: opaque TCP, no protocol detection.
pub const ALPN_OPAQUE: &[u8] = b"mesh.opaque";
/// Gateway to gateway, over QUIC.
pub const ALPN_GATEWAY: &[u8] = b"mesh.gw";
/// Proxy to its local gateway's egress port: tunnel requests.
pub const ALPN_TUNNEL: &[u8] = b"mesh.tunnel";
