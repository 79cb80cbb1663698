//! The meshed opaque-TCP hop: proxy to proxy, over mutual TLS, for bytes the mesh does not parse.
//!
//! - Outbound ([`connect_meshed`], [`connect_plain`]): the client end. TCP, mTLS that requires
//!   exactly the endpoint's identity, ALPN `mesh.opaque`, then the transport header naming the
//!   target port; or plain TCP for an endpoint without an identity.
//! - Inbound ([`serve_inbound`]): the server end. Detects a ClientHello offering a mesh ALPN,
//!   terminates mTLS (replaying the bytes detection read), reads the transport header, connects
//!   to `local_app_ip:port` and splices. Bounded in connections and in time per phase; drains.
//! - [`splice`]: the two-way copy both ends finish with: bounded buffers, half-close, idle timeout.
//!
//! Not handled here yet, by design, each refused with a typed [`InboundError`] and a log line:
//! - `mesh.h2` connections ([`InboundError::Http2NotServed`]): the HTTP/2 hop will take them
//!   over after the handshake.
//! - Non-meshed inbound traffic ([`InboundError::NotMeshed`]): it belongs to the original
//!   destination that iptables redirected, which `crate::orig_dst` will supply.

mod inbound;
mod outbound;
mod replay;
mod splice;

pub use self::inbound::{EventHook, InboundConfig, InboundError, InboundEvent, serve_inbound};
pub use self::outbound::{
    HopError, HopStage, connect_meshed, connect_meshed_alpn, connect_plain, handshake_meshed,
};
pub use self::splice::{Direction, SPLICE_BUFFER_SIZE, SpliceError, Transferred, splice};
