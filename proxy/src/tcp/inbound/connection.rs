//! One inbound connection, step by step: detect, terminate mTLS, read the transport header,
//! connect to the application, splice.
//!
//! Every step that waits on the peer has a deadline (detection, then handshake and header
//! together), so a silent or slow peer (slowloris, a half-open socket, a handshake that never
//! finishes) holds one connection for a bounded time and nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use mesh_api::ports::{ALPN_H2, ALPN_OPAQUE};
use mesh_trust::SpiffeId;
use mesh_trust::tls::connection_peer_identity;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::{InboundConfig, InboundError, InboundEvent};
use crate::detect::{Detection, Detector, Protocol};
use crate::tcp::replay::Replay;
use crate::tcp::splice::{Transferred, splice};
use crate::transport_header::{MAX_TRANSPORT_HEADER_LEN, MeshTransportHeader};

/// How much is read from the socket at a time during detection. Detection buffers at most
/// [`crate::detect::MAX_DETECT_BYTES`] in all.
const DETECT_READ_CHUNK: usize = 4 * 1024;

/// Serves one connection to its end; returns the peer's identity, once known, and the outcome.
pub(super) async fn serve(
    mut tcp: TcpStream,
    client: SocketAddr,
    local: Option<SocketAddr>,
    config: &InboundConfig,
) -> (Option<SpiffeId>, Result<Transferred, InboundError>) {
    // Replies are spliced as they come; Nagle would only add latency. Best effort: a socket
    // that refuses the option still works.
    let _ = tcp.set_nodelay(true);

    let hello = match detect_meshed(&mut tcp, config.detect_timeout).await {
        Ok(hello) => hello,
        Err(error) => return closed(None, error),
    };

    let deadline = Instant::now() + config.header_timeout;
    let acceptor = TlsAcceptor::from(config.tls.clone());
    let mut tls = match timeout_at(deadline, acceptor.accept(Replay::new(hello, tcp))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return closed(None, InboundError::Handshake(e)),
        Err(_) => {
            return closed(None, InboundError::HandshakeTimeout(config.header_timeout));
        }
    };

    let session = tls.get_ref().1;
    let Some(peer) = connection_peer_identity(session) else {
        return closed(None, InboundError::NoPeerIdentity);
    };
    match session.alpn_protocol() {
        Some(ALPN_OPAQUE) => {}
        // The HTTP/2 hop (pooled, multiplexed HTTP between proxies) is built separately; until
        // it is, a mesh.h2 peer is refused here, with its identity in the log.
        Some(ALPN_H2) => {
            let error = InboundError::Http2NotServed { peer: peer.clone() };
            return closed(Some(peer), error);
        }
        other => {
            let error = InboundError::Alpn(other.map(<[u8]>::to_vec));
            return closed(Some(peer), error);
        }
    }

    let (header, early) = match timeout_at(deadline, read_header(&mut tls)).await {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => return closed(Some(peer), error),
        Err(_) => {
            return closed(
                Some(peer),
                InboundError::HeaderTimeout(config.header_timeout),
            );
        }
    };

    // Never into the proxy itself. Without the listener's own address, the loop check cannot
    // be made, so nothing is forwarded.
    let is_self = local.is_none_or(|local| local.port() == header.port);
    if is_self || config.denied_ports.contains(&header.port) {
        return closed(Some(peer), InboundError::Loop { port: header.port });
    }
    let app_addr = SocketAddr::new(config.local_app_ip, header.port);
    let mut app = match connect_app(app_addr, config.app_connect_timeout).await {
        Ok(app) => app,
        Err(error) => return closed(Some(peer), error),
    };

    tracing::debug!(
        %peer,
        app = %app_addr,
        authority = ?header.authority,
        "inbound connection opened"
    );
    config.emit(InboundEvent::Opened {
        client,
        peer: peer.clone(),
        header,
        app: app_addr,
    });
    // Application bytes that came in with the header go to the application first.
    let mut downstream = Replay::new(early, tls);
    match splice(&mut downstream, &mut app, config.idle_timeout).await {
        Ok(transferred) => {
            tracing::debug!(%peer, %transferred, "inbound connection closed");
            (Some(peer), Ok(transferred))
        }
        Err(error) => closed(Some(peer), error.into()),
    }
}

/// Reads until detection decides, within `detect_timeout`, and returns the bytes read if they
/// are a ClientHello offering a mesh ALPN.
///
/// Anything else is traffic that iptables redirected here on its way to an application port.
/// Once [`crate::orig_dst`] exists, this is where it plugs in: look up the socket's original
/// destination, connect to it, replay the bytes read and splice. Until then there is nowhere to
/// send it, so it is refused with [`InboundError::NotMeshed`], which closes it.
async fn detect_meshed(
    tcp: &mut TcpStream,
    detect_timeout: Duration,
) -> Result<BytesMut, InboundError> {
    let deadline = Instant::now() + detect_timeout;
    let mut detector = Detector::new();
    let mut chunk = [0u8; DETECT_READ_CHUNK];
    let verdict = loop {
        // Never zero: the detector asks for no more only once it has decided.
        let want = detector.max_read().min(chunk.len());
        match timeout_at(deadline, tcp.read(&mut chunk[..want])).await {
            // Quiet or closed: what is there is all there will be.
            Err(_) | Ok(Ok(0)) => break detector.decide_on_timeout(),
            Ok(Ok(n)) => match detector.push(&chunk[..n]) {
                Detection::NeedMore => {}
                Detection::Decided(protocol) => break Ok(protocol),
                Detection::Refused(refusal) => break Err(refusal),
            },
            Ok(Err(e)) => return Err(InboundError::Detect(e)),
        }
    };
    match verdict {
        Ok(Protocol::Tls(hello))
            if hello.offers_alpn(ALPN_OPAQUE) || hello.offers_alpn(ALPN_H2) =>
        {
            Ok(detector.into_buffered())
        }
        Ok(protocol) => Err(InboundError::NotMeshed {
            protocol,
            sent: detector.buffered().len(),
        }),
        Err(refusal) => Err(InboundError::Refused(refusal)),
    }
}

/// Reads the transport header; returns it and any application bytes that came after it.
///
/// The buffer stays small: the frame decoder refuses a declared length above
/// [`MAX_TRANSPORT_HEADER_LEN`] as soon as it sees it, so at most one header and one read beyond
/// it are ever held.
async fn read_header<S>(io: &mut S) -> Result<(MeshTransportHeader, BytesMut), InboundError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(MAX_TRANSPORT_HEADER_LEN);
    loop {
        if let Some(header) = MeshTransportHeader::decode(&mut buf)? {
            return Ok((header, buf));
        }
        buf.reserve(MAX_TRANSPORT_HEADER_LEN);
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(InboundError::ReadHeader)?;
        if n == 0 {
            let header = MeshTransportHeader::decode_eof(&mut buf)?;
            return Ok((header, buf));
        }
    }
}

async fn connect_app(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, InboundError> {
    let app = timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| InboundError::AppConnectTimeout {
            addr,
            timeout: connect_timeout,
        })?
        .map_err(|source| InboundError::AppConnect { addr, source })?;
    let _ = app.set_nodelay(true);
    Ok(app)
}

/// Logs why a connection closed and returns that as its outcome.
fn closed(
    peer: Option<SpiffeId>,
    error: InboundError,
) -> (Option<SpiffeId>, Result<Transferred, InboundError>) {
    match &peer {
        // A peer that proved its identity and still failed is worth an operator's attention;
        // idle or reset splices are routine.
        Some(peer) if !matches!(error, InboundError::Splice(_)) => {
            tracing::info!(%peer, %error, "inbound connection closed")
        }
        Some(peer) => tracing::debug!(%peer, %error, "inbound connection closed"),
        // Scanners and health checks: not worth more than a debug line each.
        None => tracing::debug!(%error, "inbound connection closed"),
    }
    (peer, Err(error))
}
