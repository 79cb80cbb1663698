//! The client end of a hop: connect to an endpoint, meshed or not.
//!
//! A meshed endpoint (one that discovery gave an identity) gets TCP, then mutual TLS that
//! requires exactly that identity, then the transport header, all within one deadline; only then
//! is the stream handed to the caller, so nothing of the application's is sent to a peer that
//! has not proved who it is. An endpoint without an identity gets plain TCP and no header.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_api::ports::ALPN_OPAQUE;
use mesh_trust::SpiffeId;
use mesh_trust::tls::connection_peer_identity;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::transport_header::{MeshTransportHeader, TransportHeaderError};

/// Why a hop to an endpoint could not be opened. Nothing was sent to the application's peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HopError {
    #[error("hop to {addr}: {stage} did not finish within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        stage: HopStage,
        timeout: Duration,
    },
    #[error("hop to {addr}: connect failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("hop to {addr}: TLS handshake expecting {expected} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        expected: SpiffeId,
        source: io::Error,
    },
    /// The peer speaks mesh TLS but chose another protocol (or none): it would not expect a
    /// transport header and what follows it.
    #[error("hop to {addr}: negotiated ALPN {}, not {}", alpn_name(.negotiated), String::from_utf8_lossy(.expected))]
    Alpn {
        addr: SocketAddr,
        expected: &'static [u8],
        negotiated: Option<Vec<u8>>,
    },
    /// The TLS config's verifier let through a peer other than `expected`: the config was built
    /// for another endpoint. Checked again here because the header and the application's bytes
    /// must never go to the wrong workload.
    #[error("hop to {addr}: peer is {}, not {expected}", identity_name(.found))]
    WrongIdentity {
        addr: SocketAddr,
        expected: SpiffeId,
        found: Option<SpiffeId>,
    },
    #[error("hop to {addr}: transport header: {source}")]
    Header {
        addr: SocketAddr,
        source: TransportHeaderError,
    },
    #[error("hop to {addr}: writing the transport header failed: {source}")]
    WriteHeader { addr: SocketAddr, source: io::Error },
}

/// The step of opening a hop that a [`HopError::Timeout`] interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HopStage {
    Connect,
    Handshake,
    Header,
}

/// Opens a meshed opaque hop to `addr`: TCP, mutual TLS requiring `expected`, the transport
/// header. Returns the stream ready for the application's bytes.
///
/// `tls` is built by the caller with `PeerPolicy::Exactly(expected)` and ALPN `mesh.opaque`, so
/// a wrong peer is refused inside the handshake, before any byte of ours is sent. `timeout`
/// bounds the whole sequence.
pub async fn connect_meshed(
    addr: SocketAddr,
    expected: &SpiffeId,
    tls: Arc<rustls::ClientConfig>,
    header: &MeshTransportHeader,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HopError> {
    connect_meshed_alpn(addr, expected, tls, ALPN_OPAQUE, header, timeout).await
}

/// [`connect_meshed`] for any mesh ALPN: `mesh.opaque`, or `mesh.h2` for the HTTP hop. `tls`
/// must offer `alpn`; a peer that negotiates anything else is refused.
pub async fn connect_meshed_alpn(
    addr: SocketAddr,
    expected: &SpiffeId,
    tls: Arc<rustls::ClientConfig>,
    alpn: &'static [u8],
    header: &MeshTransportHeader,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HopError> {
    let deadline = Instant::now() + timeout;
    let tcp = timeout_at(deadline, connect_tcp(addr))
        .await
        .map_err(|_| HopError::Timeout {
            addr,
            stage: HopStage::Connect,
            timeout,
        })??;
    handshake_meshed(tcp, addr, expected, tls, alpn, header, deadline).await
}

/// The meshed hop over an already open byte stream `io` (a TCP connection, or a tunnel through
/// the gateway): mutual TLS requiring `expected` with ALPN `alpn`, then the transport header, all
/// before `deadline`. `addr` names the peer in errors.
pub async fn handshake_meshed<IO>(
    io: IO,
    addr: SocketAddr,
    expected: &SpiffeId,
    tls: Arc<rustls::ClientConfig>,
    alpn: &'static [u8],
    header: &MeshTransportHeader,
    deadline: Instant,
) -> Result<TlsStream<IO>, HopError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Encoded first: a header that cannot be sent should not cost a handshake.
    let mut frame = BytesMut::new();
    header
        .encode(&mut frame)
        .map_err(|source| HopError::Header { addr, source })?;

    let timeout = deadline.saturating_duration_since(Instant::now());
    let timed_out = |stage| HopError::Timeout {
        addr,
        stage,
        timeout,
    };

    // The mesh verifier checks the SPIFFE ID, not the name. An IP address keeps SNI out of the
    // ClientHello: there is no name worth telling on-path observers.
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = timeout_at(deadline, TlsConnector::from(tls).connect(name, io))
        .await
        .map_err(|_| timed_out(HopStage::Handshake))?
        .map_err(|source| HopError::Handshake {
            addr,
            expected: expected.clone(),
            source,
        })?;

    let session = tls.get_ref().1;
    let negotiated = session.alpn_protocol();
    if negotiated != Some(alpn) {
        return Err(HopError::Alpn {
            addr,
            expected: alpn,
            negotiated: negotiated.map(<[u8]>::to_vec),
        });
    }
    let found = connection_peer_identity(session);
    if found.as_ref() != Some(expected) {
        return Err(HopError::WrongIdentity {
            addr,
            expected: expected.clone(),
            found,
        });
    }

    let write = async {
        tls.write_all(&frame).await?;
        tls.flush().await
    };
    timeout_at(deadline, write)
        .await
        .map_err(|_| timed_out(HopStage::Header))?
        .map_err(|source| HopError::WriteHeader { addr, source })?;
    Ok(tls)
}

/// Opens a plain TCP hop to an endpoint without a mesh identity: no TLS, no header.
pub async fn connect_plain(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, HopError> {
    tokio::time::timeout(timeout, connect_tcp(addr))
        .await
        .map_err(|_| HopError::Timeout {
            addr,
            stage: HopStage::Connect,
            timeout,
        })?
}

async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, HopError> {
    let connect = |source| HopError::Connect { addr, source };
    let tcp = TcpStream::connect(addr).await.map_err(connect)?;
    // Spliced bytes are already batched by the application; Nagle would only add latency.
    tcp.set_nodelay(true).map_err(connect)?;
    Ok(tcp)
}

fn alpn_name(alpn: &Option<Vec<u8>>) -> String {
    match alpn {
        Some(name) => format!("{:?}", String::from_utf8_lossy(name)),
        None => "none".into(),
    }
}

fn identity_name(id: &Option<SpiffeId>) -> String {
    id.as_ref()
        .map_or_else(|| "anonymous".into(), SpiffeId::to_string)
}

// === impl HopStage ===

impl fmt::Display for HopStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "TCP connect",
            Self::Handshake => "the TLS handshake",
            Self::Header => "writing the transport header",
        })
    }
}
