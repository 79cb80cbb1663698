//! Ingress: streams from linked gateways, on the QUIC port.
//!
//! A connection is served only if its peer negotiated `mesh.gw` and is the gateway of a current
//! Link; anything else is closed with [`quic::code::FORBIDDEN`]. Each bidirectional stream then
//! starts with one `StreamHeader` frame (capped, within the open deadline):
//! - `open`: the authority must be an exported service ([`ExportWatch`]) that discovery knows,
//!   else `not-exported`; a ready endpoint with a mesh identity is chosen with the proxy's
//!   balancer, else `no-endpoints`; the gateway connects to that endpoint's IP at the proxy
//!   inbound port, answers OK with the endpoint's identity, and splices. Endpoints without an
//!   identity (no proxy, so no end-to-end mTLS) and endpoints that are themselves tunnels are
//!   never chosen. No other address is ever dialled.
//! - `probe`: answered with a `ProbeResponse` naming this cluster and its health.
//!
//! A bad stream (garbage, truncated or oversized frame, bad request) is answered `bad-request`
//! and closed; the connection and its other streams carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mesh_api::frame;
use mesh_api::ports::ALPN_GATEWAY;
use mesh_api::tunnel::{
    OpenStatus, Probe, ProbeResponse, StreamHeader, TunnelOpen, TunnelOpenResponse,
};
use mesh_proxy::balance::{BalanceConfig, Balancer, InFlight};
use mesh_proxy::discovery::{Destination, DestinationWatch, Resolve, Target};
use mesh_proxy::drain;
use mesh_trust::SpiffeId;
use mesh_trust::tls::connection_peer_identity;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use crate::config::{ExportWatch, GatewayConfig, LinkWatch, Timeouts};
use crate::metrics::{Direction, GatewayMetrics};
use crate::open::{self, BadRequest, MAX_OPEN_REQUEST_LEN, MAX_OPEN_RESPONSE_LEN, StreamRequest};
use crate::quic;
use crate::stream::{Cut, LinkStream, splice_until_cut};

/// How many endpoints one open tries before answering `no-endpoints`.
const CONNECT_ATTEMPTS: usize = 2;

/// What ingress needs, shared by every connection and stream.
pub(crate) struct Ingress {
    cluster: String,
    links: LinkWatch,
    exports: ExportWatch,
    discovery: Arc<dyn Resolve>,
    inbound_port: u16,
    timeouts: Timeouts,
    balance: BalanceConfig,
    metrics: GatewayMetrics,
    max_connections_per_peer: usize,
    max_streams_per_connection: usize,
    cut: Cut,
    services: Mutex<HashMap<String, Service>>,
    /// Connections held now, per linked gateway.
    peers: Arc<Mutex<HashMap<SpiffeId, usize>>>,
}

/// One connection's place in its peer's count, given back when dropped.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<SpiffeId, usize>>>,
    peer: SpiffeId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = peers.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

/// One exported service: its discovery watch and its balancer.
struct Service {
    watch: DestinationWatch,
    balancer: Balancer<SocketAddr>,
    identities: HashMap<SocketAddr, SpiffeId>,
}

/// How an open stream was answered.
enum Opened {
    Tunnel {
        upstream: TcpStream,
        endpoint: SpiffeId,
        in_flight: InFlight<SocketAddr>,
    },
    Refused(TunnelOpenResponse),
}

impl Ingress {
    /// Ingress as `config` sets it up; `cut` tells running tunnels the drain deadline passed.
    pub(crate) fn new(config: &GatewayConfig, cut: Cut) -> Self {
        Self {
            cut,
            metrics: config.metrics.clone(),
            max_connections_per_peer: config.max_connections_per_peer,
            max_streams_per_connection: usize::try_from(config.max_streams_per_connection)
                .unwrap_or(usize::MAX),
            peers: Arc::new(Mutex::new(HashMap::new())),
            cluster: config.cluster.clone(),
            links: config.links.clone(),
            exports: config.exports.clone(),
            discovery: config.discovery.clone(),
            inbound_port: config.inbound_port,
            timeouts: config.timeouts,
            balance: config.balance,
            services: Mutex::new(HashMap::new()),
        }
    }

    /// Accepts connections until draining starts.
    pub(crate) async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint, mut watch: drain::Watch) {
        loop {
            let incoming = tokio::select! {
                () = watch.signaled() => {
                    // New connections are refused from now on; running ones drain.
                    endpoint.set_server_config(None);
                    return;
                }
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { return };
            let (this, watch) = (self.clone(), watch.clone());
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let handshake = tokio::time::timeout(this.timeouts.connect, incoming);
                match handshake.await {
                    Ok(Ok(connection)) => this.serve_connection(connection, watch).await,
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "QUIC handshake failed"),
                    Err(_) => tracing::debug!(%remote, "QUIC handshake timed out"),
                }
            });
        }
    }

    /// TCP mode: accepts TLS connections from linked gateways until draining starts, one
    /// tunnel or probe per connection.
    pub(crate) async fn serve_tcp(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        mut watch: drain::Watch,
    ) {
        // Each tunnel is a connection: a peer may hold as many as it could hold streams.
        let limit = self
            .max_connections_per_peer
            .saturating_mul(self.max_streams_per_connection);
        loop {
            let accepted = tokio::select! {
                () = watch.signaled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "link port accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (this, acceptor, retain) = (self.clone(), acceptor.clone(), watch.retain());
            tokio::spawn(async move {
                let _retain = retain;
                let _ = tcp.set_nodelay(true);
                let handshake = tokio::time::timeout(this.timeouts.connect, acceptor.accept(tcp));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%remote, %error, "link TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let (alpn, peer) = {
                    let session = stream.get_ref().1;
                    (
                        session.alpn_protocol() == Some(ALPN_GATEWAY),
                        connection_peer_identity(session),
                    )
                };
                let cluster = peer.as_ref().filter(|_| alpn).and_then(|peer| {
                    quic::linked_gateway(&this.links.borrow(), peer).map(|l| l.cluster.clone())
                });
                let (Some(peer), Some(cluster)) = (peer, cluster) else {
                    tracing::info!(%remote, "refused a link peer that is no linked gateway");
                    return;
                };
                let Some(_slot) = this.peer_slot(&peer, limit) else {
                    tracing::info!(%remote, %peer, limit, "refused a connection over the per-gateway limit");
                    return;
                };
                this.serve_stream(stream, &cluster).await;
            });
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        connection: quinn::Connection,
        mut watch: drain::Watch,
    ) {
        let remote = connection.remote_address();
        if quic::negotiated_alpn(&connection).as_deref() != Some(ALPN_GATEWAY) {
            connection.close(quic::code::FORBIDDEN, b"ALPN mesh.gw required");
            return;
        }
        let peer = quic::peer_identity(&connection);
        let cluster = peer.as_ref().and_then(|peer| {
            quic::linked_gateway(&self.links.borrow(), peer).map(|link| link.cluster.clone())
        });
        let (Some(peer), Some(cluster)) = (peer, cluster) else {
            tracing::info!(%remote, "refused a QUIC peer that is no linked gateway");
            connection.close(quic::code::FORBIDDEN, b"not a linked gateway");
            return;
        };
        let Some(_slot) = self.peer_slot(&peer, self.max_connections_per_peer) else {
            tracing::info!(%remote, %peer, limit = self.max_connections_per_peer, "refused a connection over the per-gateway limit");
            connection.close(quic::code::TOO_MANY_CONNECTIONS, b"too many connections");
            return;
        };
        tracing::info!(%remote, %peer, %cluster, "linked gateway connected");
        loop {
            let accepted = tokio::select! {
                () = watch.signaled() => {
                    // No new tunnels; the open ones keep the connection until they end or the
                    // gateway's drain deadline closes the endpoint.
                    connection.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(0));
                    return;
                }
                accepted = connection.accept_bi() => accepted,
            };
            let (send, recv) = match accepted {
                Ok(streams) => streams,
                Err(error) => {
                    tracing::debug!(%remote, %cluster, %error, "linked gateway connection ended");
                    return;
                }
            };
            let this = self.clone();
            let (retain, cluster) = (watch.retain(), cluster.clone());
            tokio::spawn(async move {
                let _retain = retain;
                this.serve_stream(tokio::io::join(recv, send), &cluster)
                    .await;
            });
        }
    }

    /// Serves one stream from the linked cluster `from`: a tunnel or a probe.
    pub(crate) async fn serve_stream<S: LinkStream>(&self, mut stream: S, from: &str) {
        let deadline = Instant::now() + self.timeouts.open;
        let bad = |error: BadRequest| open::refusal(OpenStatus::BadRequest, error.to_string());
        let header = timeout_at(
            deadline,
            frame::read_frame::<StreamHeader, _>(&mut stream, MAX_OPEN_REQUEST_LEN),
        )
        .await;
        let request = match header {
            Err(_) => Err(bad(BadRequest::Frame(
                "no stream header within the open deadline".into(),
            ))),
            Ok(Ok(Some(header))) => open::classify(header).map_err(bad),
            Ok(Ok(None)) => Err(bad(BadRequest::Frame("the stream ended before it".into()))),
            Ok(Err(error)) => Err(bad(BadRequest::Frame(error.to_string()))),
        };
        let request = match request {
            Ok(StreamRequest::Probe(probe)) => {
                let response = self.probe(probe);
                let _ = frame::write_frame(&mut stream, &response, MAX_OPEN_RESPONSE_LEN).await;
                let _ = stream.shutdown().await;
                stream.delivered().await;
                return;
            }
            Ok(StreamRequest::Open(request)) => request,
            Err(refusal) => {
                self.metrics
                    .stream(from, Direction::Ingress, OpenStatus::BadRequest);
                return refuse(stream, &refusal, from).await;
            }
        };

        let opened = match timeout_at(deadline, self.open(&request)).await {
            Ok(opened) => opened,
            Err(_) => Opened::Refused(open::refusal(
                OpenStatus::Unreachable,
                format!("no endpoint answered within {:?}", self.timeouts.open),
            )),
        };
        let Opened::Tunnel {
            mut upstream,
            endpoint,
            in_flight,
        } = opened
        else {
            if let Opened::Refused(refusal) = opened {
                let status =
                    OpenStatus::try_from(refusal.status).unwrap_or(OpenStatus::Unspecified);
                self.metrics.stream(from, Direction::Ingress, status);
                refuse(stream, &refusal, from).await;
            }
            return;
        };
        if frame::write_frame(
            &mut stream,
            &open::accepted(&endpoint),
            MAX_OPEN_RESPONSE_LEN,
        )
        .await
        .is_err()
        {
            in_flight.finish(Instant::now());
            return;
        }
        tracing::debug!(
            from,
            caller = %open_caller(&request),
            authority = %request.authority,
            %endpoint,
            "ingress tunnel open"
        );
        self.metrics
            .stream(from, Direction::Ingress, OpenStatus::Ok);
        let open = self.metrics.open_stream(from, Direction::Ingress);
        let spliced = splice_until_cut(
            &mut stream,
            &mut upstream,
            self.timeouts.tunnel_idle,
            self.cut.clone(),
        )
        .await;
        in_flight.finish(Instant::now());
        let Some(result) = spliced else {
            tracing::debug!(from, %endpoint, "ingress tunnel cut at the drain deadline");
            return;
        };
        if result.is_ok() {
            stream.delivered().await;
        }
        let transferred = match &result {
            Ok(transferred) => *transferred,
            Err(error) => error.transferred(),
        };
        // `a` is the QUIC stream: what it gave went to the endpoint, away from the remote side.
        open.transferred(transferred.b_to_a, transferred.a_to_b);
        if let Err(error) = result {
            tracing::debug!(from, %endpoint, %error, "ingress tunnel broke");
        }
    }

    /// Takes a connection slot for `peer`, if it has one left.
    fn peer_slot(&self, peer: &SpiffeId, limit: usize) -> Option<PeerSlot> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let count = peers.entry(peer.clone()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: self.peers.clone(),
            peer: peer.clone(),
        })
    }

    /// Chooses an endpoint of the exported service and connects to its proxy.
    async fn open(&self, request: &TunnelOpen) -> Opened {
        let authority = match open::service_authority(request) {
            Ok(authority) => authority,
            Err(error) => {
                return Opened::Refused(open::refusal(OpenStatus::BadRequest, error.to_string()));
            }
        };
        let exported = self
            .exports
            .borrow()
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&authority));
        let not_exported = || {
            Opened::Refused(open::refusal(
                OpenStatus::NotExported,
                format!("{authority} is not exported by cluster {}", self.cluster),
            ))
        };
        if !exported {
            // A service that stopped being exported loses its watch and its balancer.
            self.services
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&authority);
            return not_exported();
        }
        let mut watch = self.watch(&authority);
        // The first answer may still be on its way.
        let destination = match watch.wait_for(Option::is_some).await {
            Ok(destination) => destination.clone(),
            Err(_) => None,
        };
        let Some(destination) = destination.filter(|d| d.exists) else {
            return not_exported();
        };

        let mut avoid = None;
        let mut last_error = String::from("no ready endpoint with a mesh identity");
        for _ in 0..CONNECT_ATTEMPTS {
            let picked = self.pick(&authority, &destination, avoid.as_ref());
            let Some((in_flight, identity)) = picked else {
                break;
            };
            let target = SocketAddr::new(in_flight.addr().ip(), self.inbound_port);
            let connect =
                tokio::time::timeout(self.timeouts.connect, TcpStream::connect(target)).await;
            match connect {
                Ok(Ok(upstream)) => {
                    let _ = upstream.set_nodelay(true);
                    let mut in_flight = in_flight;
                    in_flight.connected(Instant::now());
                    return Opened::Tunnel {
                        upstream,
                        endpoint: identity,
                        in_flight,
                    };
                }
                Ok(Err(error)) => last_error = format!("{target}: {error}"),
                Err(_) => last_error = format!("{target}: connect timed out"),
            }
            avoid = Some(*in_flight.addr());
            in_flight.fail(Instant::now(), &mut rand::rng());
        }
        Opened::Refused(open::refusal(
            OpenStatus::NoEndpoints,
            format!("{authority}: {last_error}"),
        ))
    }

    /// The discovery watch of an exported service, started on first use and kept.
    fn watch(&self, authority: &str) -> DestinationWatch {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services
            .entry(authority.to_owned())
            .or_insert_with(|| Service {
                watch: self
                    .discovery
                    .watch(Target::Authority(authority.to_owned())),
                balancer: Balancer::new(self.balance),
                identities: HashMap::new(),
            })
            .watch
            .clone()
    }

    /// Refreshes the service's balancer from `destination` and picks an endpoint.
    fn pick(
        &self,
        authority: &str,
        destination: &Destination,
        avoid: Option<&SocketAddr>,
    ) -> Option<(InFlight<SocketAddr>, SpiffeId)> {
        let now = Instant::now();
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let service = services.get_mut(authority)?;
        let identities: HashMap<SocketAddr, SpiffeId> = ready_endpoints(destination).collect();
        if identities != service.identities {
            service.balancer.update(identities.keys().copied(), now);
            service.identities = identities;
        }
        let in_flight = service
            .balancer
            .pick_avoiding(now, &mut rand::rng(), avoid)
            .ok()?;
        let identity = service.identities.get(in_flight.addr())?.clone();
        Some((in_flight, identity))
    }

    /// The gateway's health, as a probe sees it.
    fn probe(&self, probe: Probe) -> ProbeResponse {
        let exported: Vec<String> = self.exports.borrow().iter().cloned().collect();
        let ready = {
            let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
            exported
                .iter()
                .filter_map(|authority| services.get(&authority.to_ascii_lowercase()))
                .filter_map(|service| service.watch.borrow().clone())
                .map(|destination| ready_endpoints(&destination).count())
                .sum::<usize>()
        };
        ProbeResponse {
            nonce: probe.nonce,
            sent_at_unix_micros: probe.sent_at_unix_micros,
            cluster: self.cluster.clone(),
            healthy: true,
            exported_services: u32::try_from(exported.len()).unwrap_or(u32::MAX),
            ready_endpoints: u32::try_from(ready).unwrap_or(u32::MAX),
            error: String::new(),
        }
    }
}

/// The endpoints a tunnel may reach: ready, with a mesh identity, and local (not tunnels).
fn ready_endpoints(destination: &Destination) -> impl Iterator<Item = (SocketAddr, SpiffeId)> + '_ {
    destination
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.ready && endpoint.tunnel.is_none())
        .filter_map(|endpoint| Some((endpoint.addr, endpoint.identity.clone()?)))
}

/// The caller identity an open request names, for logs only (the remote gateway vouched for it).
fn open_caller(request: &TunnelOpen) -> String {
    request
        .caller_identity
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect()
}

/// Answers a refusal and closes the stream.
async fn refuse<S: LinkStream>(mut stream: S, refusal: &TunnelOpenResponse, from: &str) {
    tracing::debug!(from, status = refusal.status, message = %refusal.message, "ingress stream refused");
    let _ = frame::write_frame(&mut stream, refusal, MAX_OPEN_RESPONSE_LEN).await;
    let _ = stream.shutdown().await;
    stream.stop_reading();
    // Wait for the peer to take the answer, so that it is not lost to a reset.
    stream.delivered().await;
}
