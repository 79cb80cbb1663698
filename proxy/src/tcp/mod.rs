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
//! `mesh.h2` connections are served by [`crate::http::inbound`] once the handshake and header are
//! done; non-meshed traffic that iptables redirected goes to its original destination port on the
//! application (via [`crate::orig_dst`]), and only traffic that was not redirected gets
//! [`InboundError::NotMeshed`].

mod inbound;
mod outbound;
pub(crate) mod replay;
mod splice;

pub use self::inbound::{EventHook, InboundConfig, InboundError, InboundEvent, serve_inbound};
pub use self::outbound::{
    HopError, HopStage, connect_meshed, connect_meshed_alpn, connect_plain, handshake_meshed,
};
pub use self::splice::{Direction, SPLICE_BUFFER_SIZE, SpliceError, Transferred, splice};
