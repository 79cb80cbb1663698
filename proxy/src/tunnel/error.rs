//! Why a tunnel could not be opened, and whose fault that was.
//!
//! Every [`TunnelError`] names the tunnel (remote cluster, authority, local gateway) and says what
//! went wrong in a [`TunnelErrorKind`]. Two questions matter to the caller, and each has a method:
//! - [`TunnelError::nothing_sent`]: did any of the application's bytes reach the remote
//!   application? If not, the connection may be retried elsewhere.
//! - [`TunnelError::fault`]: whom to blame. The balancer penalises the gateway only for the
//!   gateway's own failures; a remote service with no endpoints is a reason to fail over, not to
//!   eject the gateway that reported it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_api::frame::FrameError;
use mesh_trust::spiffe::SpiffeIdError;
use mesh_trust::{SpiffeId, TrustDomain};

use crate::discovery::TunnelMeta;
use crate::outbound::OutboundError;
use crate::tcp::HopError;

/// Why a tunnel to a service of a linked cluster could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("tunnel to {authority} in cluster {cluster} via gateway {gateway}: {kind}")]
#[non_exhaustive]
pub struct TunnelError {
    /// The remote cluster asked for.
    pub cluster: String,
    /// The remote service's authority asked for.
    pub authority: String,
    /// The local gateway's egress address.
    pub gateway: SocketAddr,
    /// What went wrong.
    #[source]
    pub kind: TunnelErrorKind,
}

/// What went wrong while opening a tunnel, in the order the steps happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelErrorKind {
    /// The tunnel names a gateway outside this proxy's trust domain. A proxy only sends tunnel
    /// requests to its own cluster's gateway, so nothing was connected to; the discovery data
    /// that named this gateway is wrong.
    #[error(
        "gateway identity {gateway_identity} is not in this proxy's trust domain {own}; tunnels are only opened through the local gateway, so the discovery data is wrong"
    )]
    ForeignGateway {
        gateway_identity: SpiffeId,
        own: TrustDomain,
    },

    /// A client TLS configuration (towards the gateway or the endpoint) could not be built.
    #[error(transparent)]
    Config(OutboundError),

    /// The open request cannot be encoded (a field is longer than a frame may be). Nothing was
    /// connected to.
    #[error("the open request cannot be sent: {0}")]
    Request(FrameError),

    /// Reaching the gateway failed: TCP, the TLS handshake (which requires exactly the gateway's
    /// identity), or ALPN `mesh.tunnel`.
    #[error("reaching the gateway: {0}")]
    Gateway(Box<HopError>),

    /// Writing the open request to the gateway failed.
    #[error("sending the open request failed: {0}")]
    SendOpen(io::Error),

    /// The deadline passed while exchanging the open request and response.
    #[error("{stage} did not finish within {timeout:?}")]
    Timeout { stage: OpenStage, timeout: Duration },

    /// The gateway closed the connection without answering the open request.
    #[error("the gateway closed the connection without answering the open request")]
    NoResponse,

    /// The gateway's answer is not a well-formed open response frame (too long, malformed, cut
    /// short), or reading it failed.
    #[error("reading the open response failed: {0}")]
    ReadResponse(FrameError),

    /// The gateway's answer is a frame, but not one the tunnel protocol allows.
    #[error("the gateway broke the tunnel protocol: {violation}{}", said(.message))]
    Protocol {
        violation: ProtocolViolation,
        /// The gateway's message, sanitised.
        message: String,
    },

    /// The gateway answered with a refusal.
    #[error("{refusal}{}", said(.message))]
    Refused {
        refusal: Refusal,
        /// The gateway's message, sanitised.
        message: String,
    },

    /// The gateway reported an endpoint outside the remote trust domain. It would have made this
    /// proxy talk to a workload of another domain (possibly its own), so the tunnel was closed
    /// before anything was sent through it.
    #[error(
        "the gateway reported endpoint {endpoint}, which is not in the remote trust domain {remote}; refused"
    )]
    ForeignEndpoint {
        endpoint: SpiffeId,
        remote: TrustDomain,
    },

    /// The gateway reported an endpoint identity other than the one discovery gives for the
    /// service's endpoints in that cluster. A gateway must not choose whom the caller talks to
    /// (its own identity, say, to terminate the inner TLS), so the tunnel was closed before
    /// anything was sent through it.
    #[error(
        "the gateway reported endpoint {endpoint}, but discovery says the service's endpoints are {expected}; refused"
    )]
    UnexpectedEndpoint {
        endpoint: SpiffeId,
        expected: SpiffeId,
    },

    /// The inner meshed hop to the endpoint's proxy, through the tunnel, failed: its handshake
    /// (which requires exactly `endpoint`), its ALPN, or the transport header.
    #[error("inner hop to {endpoint}: {source}")]
    Inner {
        endpoint: SpiffeId,
        source: Box<HopError>,
    },
}

/// A step of the open exchange, for [`TunnelErrorKind::Timeout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenStage {
    /// Writing the open request.
    SendOpen,
    /// Waiting for the gateway's response.
    AwaitResponse,
}

/// The refusals a gateway may answer with, from `mesh.tunnel.v1.OpenStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// `OPEN_STATUS_NOT_EXPORTED`.
    #[error(
        "the remote cluster does not export this service (check its export label and the Link's export selector)"
    )]
    NotExported,
    /// `OPEN_STATUS_NO_ENDPOINTS`.
    #[error("the remote service has no ready endpoint")]
    NoEndpoints,
    /// `OPEN_STATUS_UNREACHABLE`.
    #[error("the remote gateway or the endpoint it picked could not be reached")]
    Unreachable,
    /// `OPEN_STATUS_FORBIDDEN`.
    #[error("the gateway does not allow this workload to reach this service")]
    Forbidden,
    /// `OPEN_STATUS_BAD_REQUEST`.
    #[error("the gateway found the open request malformed")]
    BadRequest,
}

/// How a gateway's answer broke the tunnel protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// The status is `OPEN_STATUS_UNSPECIFIED` (0), which no gateway may send: it is what a
    /// response that forgot to set its status decodes to.
    #[error("the open response has no status")]
    UnspecifiedStatus,
    /// The status is not one this proxy knows.
    #[error("the open response has unknown status {0}")]
    UnknownStatus(i32),
    /// An OK response whose endpoint identity is not a SPIFFE ID.
    #[error("the endpoint identity {value:?} is not a SPIFFE ID: {error}")]
    EndpointIdentity {
        /// The identity as received, sanitised.
        value: String,
        error: SpiffeIdError,
    },
}

/// Whom a [`TunnelError`] says something about, for the balancer and for failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// This proxy: its configuration (a foreign gateway, a TLS config that cannot be built) or
    /// its request (forbidden, malformed). Retrying through the same gateway fares no better, and
    /// no one else should be penalised.
    Local,
    /// The local gateway or the path to it: unreachable, the wrong identity, no or a broken
    /// answer, an endpoint identity outside the remote domain. Counts against the gateway.
    Gateway,
    /// The remote service: not exported, or no ready endpoint. The gateway did its job; the
    /// backend has nothing to serve right now, which is a reason to fail over.
    RemoteService,
    /// What lies beyond the local gateway: the remote gateway or the link to it (unreachable), or
    /// the endpoint's proxy (the inner hop failed).
    RemoteEndpoint,
}

// === impl TunnelError ===

impl TunnelError {
    pub(super) fn new(tunnel: &TunnelMeta, kind: TunnelErrorKind) -> Self {
        Self {
            cluster: tunnel.cluster.clone(),
            authority: tunnel.authority.clone(),
            gateway: tunnel.gateway,
            kind,
        }
    }

    /// True when none of the application's bytes reached the remote application, so that the
    /// connection may be retried through another gateway or on another backend.
    ///
    /// Every step this module performs happens before the tunnel stream is handed to the caller,
    /// and the application's bytes are only ever written to that stream, so today this is true
    /// for every kind. The match is exhaustive so that a kind added for a failure after the
    /// hand-over has to decide.
    #[must_use]
    pub fn nothing_sent(&self) -> bool {
        match self.kind {
            TunnelErrorKind::ForeignGateway { .. }
            | TunnelErrorKind::Config(_)
            | TunnelErrorKind::Request(_)
            | TunnelErrorKind::Gateway(_)
            | TunnelErrorKind::SendOpen(_)
            | TunnelErrorKind::Timeout { .. }
            | TunnelErrorKind::NoResponse
            | TunnelErrorKind::ReadResponse(_)
            | TunnelErrorKind::Protocol { .. }
            | TunnelErrorKind::Refused { .. }
            | TunnelErrorKind::ForeignEndpoint { .. }
            | TunnelErrorKind::UnexpectedEndpoint { .. }
            // The transport header is the inner hop's last step; the application's bytes come
            // after it, on a stream the caller never received.
            | TunnelErrorKind::Inner { .. } => true,
        }
    }

    /// Whose failure this is; see [`Fault`].
    #[must_use]
    pub fn fault(&self) -> Fault {
        match &self.kind {
            TunnelErrorKind::ForeignGateway { .. }
            | TunnelErrorKind::Config(_)
            | TunnelErrorKind::Request(_)
            | TunnelErrorKind::Refused {
                refusal: Refusal::Forbidden | Refusal::BadRequest,
                ..
            } => Fault::Local,
            TunnelErrorKind::Gateway(_)
            | TunnelErrorKind::SendOpen(_)
            | TunnelErrorKind::Timeout { .. }
            | TunnelErrorKind::NoResponse
            | TunnelErrorKind::ReadResponse(_)
            | TunnelErrorKind::Protocol { .. }
            | TunnelErrorKind::ForeignEndpoint { .. }
            | TunnelErrorKind::UnexpectedEndpoint { .. } => Fault::Gateway,
            TunnelErrorKind::Refused {
                refusal: Refusal::NotExported | Refusal::NoEndpoints,
                ..
            } => Fault::RemoteService,
            TunnelErrorKind::Refused {
                refusal: Refusal::Unreachable,
                ..
            }
            | TunnelErrorKind::Inner { .. } => Fault::RemoteEndpoint,
        }
    }
}

// === impl OpenStage ===

impl fmt::Display for OpenStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SendOpen => "sending the open request",
            Self::AwaitResponse => "waiting for the open response",
        })
    }
}

/// `; the gateway said: "..."` when the gateway gave a reason.
fn said(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!("; the gateway said: {message:?}")
    }
}
