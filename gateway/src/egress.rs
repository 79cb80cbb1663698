//! The egress port: local workloads ask for tunnels to linked clusters.
//!
//! Per connection, all before the open deadline: mutual TLS that accepts only workloads of this
//! gateway's trust domain and requires ALPN `mesh.tunnel`; one `StreamHeader { open }` frame of
//! at most [`MAX_OPEN_REQUEST_LEN`] bytes; the target cluster's warm QUIC connection from the
//! [`LinkTable`]; a new bidirectional stream on it carrying the open request (its caller
//! identity replaced by the one the TLS handshake proved); the remote gateway's answer, relayed
//! unchanged. Then, if the answer was OK, bytes are spliced both ways (half-close and
//! backpressure as in [`mesh_proxy::tcp::splice`]) until both sides are done or the tunnel idles.
//!
//! A refusal is answered with an open response (`bad-request` for a malformed request,
//! `unreachable` for an unknown or unreachable cluster) and costs only that connection.
//!
//! A `StreamHeader { probe }` naming a target cluster is relayed the same way, on a new stream
//! of that cluster's link, and the remote gateway's `ProbeResponse` relayed back: a round trip
//! through the local gateway measures the link the tunnels use (the controller's gateway probes
//! work this way). When the link cannot be used, the local gateway answers itself with
//! `healthy: false` and the reason in `error`.

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_api::frame::{self, FrameError};
use mesh_api::ports::ALPN_TUNNEL;
use mesh_api::tunnel::{
    OpenStatus, Probe, ProbeResponse, StreamHeader, TunnelOpenResponse, stream_header,
};
use mesh_proxy::drain;
use mesh_trust::tls::{self, connection_peer_identity};
use mesh_trust::{PeerPolicy, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use crate::config::{GatewayConfig, Timeouts};
use crate::links::LinkTable;
use crate::metrics::{Direction, UNKNOWN_CLUSTER};
use crate::open::{self, BadRequest, MAX_OPEN_REQUEST_LEN, MAX_OPEN_RESPONSE_LEN, StreamRequest};
use crate::stream::{Cut, LinkStream, RemoteStream, splice_until_cut};

/// The egress TLS: workloads of the gateway's own trust domain only, ALPN `mesh.tunnel`.
///
/// # Errors
///
/// When mesh-trust cannot build the configuration.
pub fn tls_config(config: &GatewayConfig) -> Result<rustls::ServerConfig, tls::TlsError> {
    let own = config.identity().trust_domain();
    tls::server_config(
        config.bundles.clone(),
        PeerPolicy::TrustDomains(BTreeSet::from([own])),
        config.certs.clone(),
        &[ALPN_TUNNEL],
    )
}

/// Serves the egress port until draining starts; each connection holds the drain until done.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    links: Arc<LinkTable>,
    timeouts: Timeouts,
    max_connections: usize,
    cut: Cut,
    mut watch: drain::Watch,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
            () = watch.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, usually: pause rather than spin.
                tracing::warn!(%error, "egress accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "egress connection limit reached; closing");
            continue;
        };
        let (acceptor, links, watch, cut) =
            (acceptor.clone(), links.clone(), watch.clone(), cut.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = serve_connection(tcp, acceptor, &links, timeouts, watch, cut).await
            {
                tracing::debug!(%peer, %error, "egress tunnel ended");
            }
        });
    }
}

/// Why an egress connection ended early.
#[derive(Debug, thiserror::Error)]
enum EgressError {
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("the caller negotiated no mesh.tunnel ALPN")]
    Alpn,
    #[error("the open exchange timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
    #[error("writing the answer failed: {0}")]
    Answer(FrameError),
    #[error("the tunnel broke: {0}")]
    Splice(#[from] mesh_proxy::tcp::SpliceError),
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    links: &LinkTable,
    timeouts: Timeouts,
    mut watch: drain::Watch,
    cut: Cut,
) -> Result<(), EgressError> {
    let deadline = Instant::now() + timeouts.open;
    let _ = tcp.set_nodelay(true);
    let mut stream = timeout_at(deadline, acceptor.accept(tcp))
        .await
        .map_err(|_| EgressError::Timeout)?
        .map_err(EgressError::Handshake)?;
    let (caller, alpn) = {
        let session = stream.get_ref().1;
        (
            connection_peer_identity(session),
            session.alpn_protocol() == Some(ALPN_TUNNEL),
        )
    };
    if !alpn {
        return Err(EgressError::Alpn);
    }
    let Some(caller) = caller else {
        return Err(EgressError::Refused(
            "the caller presented no identity".into(),
        ));
    };

    let metrics = links.metrics();
    // The cluster's name once it is known to be linked: a name from the network never becomes
    // a label.
    let mut label = UNKNOWN_CLUSTER.to_owned();
    let opened = tokio::select! {
        opened = timeout_at(deadline, open_remote(&mut stream, &caller, links, &mut label)) => opened,
        () = watch.signaled() => return Ok(()),
    };
    let (response, remote) = match opened {
        Ok(Ok(Opened::Tunnel(response, remote))) => (response, remote),
        Ok(Ok(Opened::Probe(response))) => {
            frame::write_frame(&mut stream, &response, MAX_OPEN_RESPONSE_LEN)
                .await
                .map_err(EgressError::Answer)?;
            let _ = stream.shutdown().await;
            return Ok(());
        }
        Ok(Err(refusal)) => {
            metrics.stream(&label, Direction::Egress, status_of(&refusal));
            let reason = refusal.message.clone();
            answer(&mut stream, &refusal).await?;
            let _ = stream.shutdown().await;
            return Err(EgressError::Refused(reason));
        }
        Err(_) => {
            let refusal = open::refusal(
                OpenStatus::Unreachable,
                format!("the tunnel was not open within {:?}", timeouts.open),
            );
            metrics.stream(&label, Direction::Egress, OpenStatus::Unreachable);
            let _ = answer(&mut stream, &refusal).await;
            return Err(EgressError::Timeout);
        }
    };
    metrics.stream(&label, Direction::Egress, status_of(&response));
    answer(&mut stream, &response).await?;
    let Some(mut remote) = remote else {
        let _ = stream.shutdown().await;
        return Ok(());
    };
    // Draining lets running tunnels finish; the gateway cuts them at its drain deadline.
    let _retain = watch.retain();
    drop(watch);
    let open = metrics.open_stream(&label, Direction::Egress);
    let Some(result) = splice_until_cut(&mut stream, &mut remote, timeouts.tunnel_idle, cut).await
    else {
        tracing::debug!(%caller, "egress tunnel cut at the drain deadline");
        return Ok(());
    };
    if result.is_ok() {
        remote.delivered().await;
    }
    let transferred = match &result {
        Ok(transferred) => *transferred,
        Err(error) => error.transferred(),
    };
    open.transferred(transferred.a_to_b, transferred.b_to_a);
    tracing::debug!(%caller, ?transferred, "egress tunnel done");
    result.map(|_| ()).map_err(EgressError::from)
}

/// The status an open response carries, as a metrics label.
fn status_of(response: &TunnelOpenResponse) -> OpenStatus {
    OpenStatus::try_from(response.status).unwrap_or(OpenStatus::Unspecified)
}

/// What the first frame asked for, answered by the remote gateway.
enum Opened {
    /// The remote answer to an open request and, when it accepted, the stream to splice.
    Tunnel(TunnelOpenResponse, Option<RemoteStream>),
    /// The answer to a probe.
    Probe(ProbeResponse),
}

/// Reads the first frame and relays it. `Ok` holds the remote answer; `Err` holds this
/// gateway's refusal.
async fn open_remote<S>(
    stream: &mut S,
    caller: &SpiffeId,
    links: &LinkTable,
    label: &mut String,
) -> Result<Opened, TunnelOpenResponse>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bad = |error: BadRequest| open::refusal(OpenStatus::BadRequest, error.to_string());
    let header = match frame::read_frame::<StreamHeader, _>(stream, MAX_OPEN_REQUEST_LEN).await {
        Ok(Some(header)) => header,
        Ok(None) => return Err(bad(BadRequest::Frame("the stream ended before it".into()))),
        Err(error) => return Err(bad(BadRequest::Frame(error.to_string()))),
    };
    let mut request = match open::classify(header).map_err(bad)? {
        StreamRequest::Open(request) => request,
        StreamRequest::Probe(probe) => {
            if probe.target_cluster.is_empty() {
                return Err(bad(BadRequest::ProbeWithoutCluster));
            }
            if links.is_linked(&probe.target_cluster) {
                label.clone_from(&probe.target_cluster);
            }
            return Ok(Opened::Probe(probe_remote(probe, links).await));
        }
    };
    let cluster = open::target_cluster(&request).map_err(bad)?.to_owned();
    // The caller is who the handshake proved, whatever the request says.
    request.caller_identity = caller.to_string();
    if links.is_linked(&cluster) {
        label.clone_from(&cluster);
    }

    let unreachable = |message: String| open::refusal(OpenStatus::Unreachable, message);
    let mut remote = links.open(&cluster).await.map_err(unreachable)?;
    let header = StreamHeader {
        kind: Some(stream_header::Kind::Open(request)),
    };
    frame::write_frame(&mut remote, &header, MAX_OPEN_REQUEST_LEN)
        .await
        .map_err(|error| {
            unreachable(format!(
                "cluster {cluster:?}: sending the request failed: {error}"
            ))
        })?;
    let response = frame::read_frame::<TunnelOpenResponse, _>(&mut remote, MAX_OPEN_RESPONSE_LEN)
        .await
        .map_err(|error| {
            unreachable(format!(
                "cluster {cluster:?}: the remote answer is invalid: {error}"
            ))
        })?
        .ok_or_else(|| {
            unreachable(format!(
                "cluster {cluster:?}: the remote gateway closed the stream without an answer"
            ))
        })?;
    if open::is_accepted(&response) {
        Ok(Opened::Tunnel(response, Some(remote)))
    } else {
        remote.stop_reading();
        let _ = remote.shutdown().await;
        Ok(Opened::Tunnel(response, None))
    }
}

/// Probes `probe.target_cluster`'s gateway over its link; the answer, or this gateway's own
/// `healthy: false` answer saying why the link could not be used.
async fn probe_remote(probe: Probe, links: &LinkTable) -> ProbeResponse {
    let cluster = probe.target_cluster.clone();
    let failed = |error: String| ProbeResponse {
        nonce: probe.nonce,
        sent_at_unix_micros: probe.sent_at_unix_micros,
        cluster: cluster.clone(),
        healthy: false,
        error,
        ..ProbeResponse::default()
    };
    let mut remote = match links.open(&cluster).await {
        Ok(remote) => remote,
        Err(error) => return failed(error.to_string()),
    };
    let header = StreamHeader {
        kind: Some(stream_header::Kind::Probe(probe.clone())),
    };
    if let Err(error) = frame::write_frame(&mut remote, &header, MAX_OPEN_REQUEST_LEN).await {
        return failed(format!("sending the probe failed: {error}"));
    }
    let answer = frame::read_frame::<ProbeResponse, _>(&mut remote, MAX_OPEN_RESPONSE_LEN).await;
    let _ = remote.shutdown().await;
    match answer {
        Ok(Some(response)) => response,
        Ok(None) => failed("the remote gateway closed the stream without an answer".into()),
        Err(error) => failed(format!("the remote answer is invalid: {error}")),
    }
}

async fn answer<S>(stream: &mut S, response: &TunnelOpenResponse) -> Result<(), EgressError>
where
    S: AsyncWrite + Unpin,
{
    frame::write_frame(stream, response, MAX_OPEN_RESPONSE_LEN)
        .await
        .map_err(EgressError::Answer)
}
