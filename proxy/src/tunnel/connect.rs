//! The async shell around the open exchange: connect to the local gateway, ask for the tunnel,
//! then run the inner meshed hop through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_api::common::ProtocolHint;
use mesh_api::frame;
use mesh_api::ports::ALPN_TUNNEL;
use mesh_api::tunnel::{OpenStatus, TunnelOpenResponse};
use mesh_trust::SpiffeId;
use mesh_trust::tls::connection_peer_identity;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use super::error::{OpenStage, TunnelError, TunnelErrorKind};
use super::open::{MAX_OPEN_REQUEST_LEN, MAX_OPEN_RESPONSE_LEN, check_response, open_request};
use super::{GatewayStream, TunnelStream};
use crate::discovery::TunnelMeta;
use crate::outbound::OutboundTls;
use crate::tcp::{HopError, HopStage, handshake_meshed};
use crate::transport_header::MeshTransportHeader;

/// Opens a tunnel through the local gateway and runs the meshed hop to the remote endpoint
/// through it: [`open_tunnel`], then mutual TLS requiring exactly the endpoint identity the
/// gateway reported, with ALPN `alpn` (`mesh.opaque` or `mesh.h2`), then `header`.
///
/// `own` is this proxy's identity: the gateway must be of its trust domain, and the gateway's
/// logs name it as the caller. `expected`, when given, is the identity discovery lists for the
/// endpoint: the gateway's report must be exactly it, so that a gateway never chooses whom the
/// caller talks to. `header.protocol` is sent as the open request's protocol hint.
/// `timeout` bounds the whole sequence. On success the stream is ready for the application's
/// bytes, and the endpoint identity (a workload of `tunnel.remote_trust_domain`) is returned
/// with it.
///
/// # Errors
///
/// A [`TunnelError`] for each step; none of them sent an application byte.
pub async fn connect_tunnelled(
    tls: &OutboundTls,
    own: &SpiffeId,
    tunnel: &TunnelMeta,
    expected: Option<&SpiffeId>,
    alpn: &'static [u8],
    header: &MeshTransportHeader,
    timeout: Duration,
) -> Result<(TunnelStream, SpiffeId), TunnelError> {
    let deadline = Instant::now() + timeout;
    let (gateway, endpoint) = open_tunnel(tls, own, tunnel, header.protocol, deadline).await?;
    if let Some(expected) = expected.filter(|expected| **expected != endpoint) {
        let error = TunnelError::new(
            tunnel,
            TunnelErrorKind::UnexpectedEndpoint {
                endpoint,
                expected: expected.clone(),
            },
        );
        tracing::debug!(%error, "tunnel refused");
        return Err(error);
    }

    let inner = async {
        let config = tls
            .config_for(&endpoint, alpn)
            .map_err(TunnelErrorKind::Config)?;
        // The gateway's address names the peer in the hop's errors: the endpoint's own address
        // is the remote gateway's business. An IP address also keeps SNI out of the ClientHello.
        handshake_meshed(
            gateway,
            tunnel.gateway,
            &endpoint,
            config,
            alpn,
            header,
            deadline,
        )
        .await
        .map_err(|source| TunnelErrorKind::Inner {
            endpoint: endpoint.clone(),
            source: Box::new(source),
        })
    };
    match inner.await {
        Ok(stream) => {
            tracing::debug!(
                cluster = %tunnel.cluster,
                authority = %tunnel.authority,
                gateway = %tunnel.gateway,
                %endpoint,
                "tunnel established"
            );
            Ok((stream, endpoint))
        }
        Err(kind) => {
            let error = TunnelError::new(tunnel, kind);
            tracing::debug!(%error, "inner hop through the tunnel failed");
            Err(error)
        }
    }
}

/// Opens a tunnel to `tunnel`'s remote service through the local gateway, and returns the stream
/// to the gateway, positioned right after the open response, with the identity of the endpoint
/// the remote gateway picked.
///
/// The steps, all before `deadline`: refuse a gateway outside `own`'s trust domain (before
/// connecting); TCP to `tunnel.gateway`; mutual TLS requiring exactly `tunnel.gateway_identity`
/// with ALPN `mesh.tunnel`; the open request (`hint` is the protocol the inner hop will speak);
/// one open response of at most [`super::MAX_OPEN_RESPONSE_LEN`] bytes, which must be OK with an
/// endpoint identity in `tunnel.remote_trust_domain`.
///
/// The caller must require exactly the returned identity in the handshake it runs next over the
/// stream, as [`connect_tunnelled`] does: the gateway carries bytes, it does not vouch for them.
///
/// # Errors
///
/// A [`TunnelError`] for each step; none of them sent an application byte.
pub async fn open_tunnel(
    tls: &OutboundTls,
    own: &SpiffeId,
    tunnel: &TunnelMeta,
    hint: ProtocolHint,
    deadline: Instant,
) -> Result<(GatewayStream, SpiffeId), TunnelError> {
    match open(tls, own, tunnel, hint, deadline).await {
        Ok((stream, endpoint)) => {
            tracing::debug!(
                cluster = %tunnel.cluster,
                authority = %tunnel.authority,
                gateway = %tunnel.gateway,
                status = OpenStatus::Ok.as_str_name(),
                %endpoint,
                "tunnel opened"
            );
            Ok((stream, endpoint))
        }
        Err(kind) => {
            let error = TunnelError::new(tunnel, kind);
            tracing::debug!(%error, "tunnel not opened");
            Err(error)
        }
    }
}

async fn open(
    tls: &OutboundTls,
    own: &SpiffeId,
    tunnel: &TunnelMeta,
    hint: ProtocolHint,
    deadline: Instant,
) -> Result<(GatewayStream, SpiffeId), TunnelErrorKind> {
    // A gateway of another domain would learn what this workload calls, and could answer with an
    // endpoint of its choosing: tunnel requests only ever go to the local gateway.
    if tunnel.gateway_identity.trust_domain_str() != own.trust_domain_str() {
        return Err(TunnelErrorKind::ForeignGateway {
            gateway_identity: tunnel.gateway_identity.clone(),
            own: own.trust_domain(),
        });
    }
    // Encoded first: a request that cannot be sent should not cost a connection.
    let mut request = BytesMut::new();
    frame::encode_frame(
        &open_request(tunnel, hint, own),
        &mut request,
        MAX_OPEN_REQUEST_LEN,
    )
    .map_err(TunnelErrorKind::Request)?;
    let config = tls
        .config_for(&tunnel.gateway_identity, ALPN_TUNNEL)
        .map_err(TunnelErrorKind::Config)?;

    let budget = deadline.saturating_duration_since(Instant::now());
    let timed_out = |stage| TunnelErrorKind::Timeout {
        stage,
        timeout: budget,
    };
    let mut stream = connect_gateway(tunnel, config, deadline, budget)
        .await
        .map_err(|error| TunnelErrorKind::Gateway(Box::new(error)))?;

    let send = async {
        stream.write_all(&request).await?;
        stream.flush().await
    };
    timeout_at(deadline, send)
        .await
        .map_err(|_| timed_out(OpenStage::SendOpen))?
        .map_err(TunnelErrorKind::SendOpen)?;

    // `read_frame` stops at the end of the response: what follows is the inner handshake's.
    let response = timeout_at(
        deadline,
        frame::read_frame::<TunnelOpenResponse, _>(&mut stream, MAX_OPEN_RESPONSE_LEN),
    )
    .await
    .map_err(|_| timed_out(OpenStage::AwaitResponse))?
    .map_err(TunnelErrorKind::ReadResponse)?
    .ok_or(TunnelErrorKind::NoResponse)?;

    let endpoint = check_response(&response, &tunnel.remote_trust_domain)?;
    Ok((stream, endpoint))
}

/// TCP to the gateway's egress port, then mutual TLS that requires exactly the gateway's
/// identity and ALPN `mesh.tunnel`.
async fn connect_gateway(
    tunnel: &TunnelMeta,
    config: Arc<rustls::ClientConfig>,
    deadline: Instant,
    budget: Duration,
) -> Result<GatewayStream, HopError> {
    let addr: SocketAddr = tunnel.gateway;
    let timed_out = |stage| HopError::Timeout {
        addr,
        stage,
        timeout: budget,
    };
    let connect = |source| HopError::Connect { addr, source };

    let tcp = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out(HopStage::Connect))?
        .map_err(connect)?;
    // The inner handshake is a few small writes each way; Nagle would only add round trips.
    tcp.set_nodelay(true).map_err(connect)?;

    // The mesh verifier checks the SPIFFE ID, not the name; an IP address sends no SNI.
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = timeout_at(deadline, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| timed_out(HopStage::Handshake))?
        .map_err(|source| HopError::Handshake {
            addr,
            expected: tunnel.gateway_identity.clone(),
            source,
        })?;

    let session = stream.get_ref().1;
    let negotiated = session.alpn_protocol();
    if negotiated != Some(ALPN_TUNNEL) {
        return Err(HopError::Alpn {
            addr,
            expected: ALPN_TUNNEL,
            negotiated: negotiated.map(<[u8]>::to_vec),
        });
    }
    // The config's verifier already required this identity; checked again because the open
    // request tells whoever answers what this workload is calling.
    let found = connection_peer_identity(session);
    if found.as_ref() != Some(&tunnel.gateway_identity) {
        return Err(HopError::WrongIdentity {
            addr,
            expected: tunnel.gateway_identity.clone(),
            found,
        });
    }
    Ok(stream)
}
