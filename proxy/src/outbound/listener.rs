//! The outbound listeners: where the local application's connections arrive, and how each finds
//! its destination and protocol.
//!
//! Three ways to name a destination, one per [`Route`]:
//! - an iptables-redirected connection carries its original destination (`SO_ORIGINAL_DST`),
//!   which discovery resolves by `ip:port` (a service's cluster IP, say);
//! - an explicit listener (`--outbound-map`) sends everything to its one service;
//! - a client that connects to the outbound port itself is routed per HTTP request by the
//!   request's authority (Host), and a TLS client by its SNI (port 443).
//!
//! Then the protocol: a destination port configured opaque (or one discovery marks opaque) is
//! forwarded as TCP without looking at it, so server-speaks-first protocols never wait. Otherwise
//! the first bytes decide, within `detect_timeout`: HTTP/1 and HTTP/2 go to the HTTP router
//! (per-request balancing over the `mesh.h2` hop), a TLS ClientHello that is not the mesh's is
//! passed through as opaque TCP with its SNI kept as the authority, and anything else (including
//! a client that stays silent until the timeout) is opaque TCP.
//!
//! A destination discovery does not know (an address outside the mesh) is reached directly, as
//! the application asked; a known one is balanced over its endpoints, meshed where they have an
//! identity. When discovery has not answered within `resolve_timeout`, the connection is refused
//! rather than sent somewhere unverified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::http::{HttpClients, RouteError, choose_backend, serve_http};
use super::{OutboundConfig, OutboundError, OutboundTls, Services, Upstream};
use crate::authority::Authority;
use crate::detect::{Protocol, Refusal, detect_stream};
use crate::discovery::{Resolve, Target};
use crate::drain;
use crate::metrics::{Direction, Labels, ProxyMetrics, TlsStatus};
use crate::orig_dst::original_destination;
use crate::tap::Tap;
use crate::tcp::replay::Replay;
use crate::tcp::{self, Transferred};

/// After a failed `accept` (out of file descriptors, say), wait this long before the next one.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Everything the outbound listeners share between their connections.
pub struct OutboundContext {
    pub(super) tls: Arc<OutboundTls>,
    pub(super) config: OutboundConfig,
    pub(super) metrics: ProxyMetrics,
    pub(super) tap: Tap,
    pub(super) services: Services,
    pub(super) http: HttpClients,
}

/// Where a connection's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Redirected by iptables: the address the application connected to.
    OrigDst(SocketAddr),
    /// An explicit listener's service.
    Fixed(Target),
    /// The application addressed the proxy itself: HTTP requests go where their authority says,
    /// TLS where its SNI says.
    ByAuthority,
}

// === impl OutboundContext ===

impl OutboundContext {
    pub fn new(
        resolve: Arc<dyn Resolve>,
        tls: Arc<OutboundTls>,
        config: OutboundConfig,
        metrics: ProxyMetrics,
        tap: Tap,
    ) -> Self {
        let services = Services::new(
            resolve,
            config.balance,
            config.retry_budget,
            config.max_destinations,
        );
        let http = HttpClients::new(tls.clone(), &config);
        Self {
            tls,
            config,
            metrics,
            tap,
            services,
            http,
        }
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// The destinations being watched.
    pub fn services(&self) -> &Services {
        &self.services
    }
}

impl std::fmt::Debug for OutboundContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundContext")
            .field("config", &self.config)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

/// Serves the outbound listener (4140): redirected connections by their original destination,
/// direct ones by HTTP authority or SNI. Returns once drained and every connection has finished.
pub async fn serve_outbound(listener: TcpListener, ctx: Arc<OutboundContext>, watch: drain::Watch) {
    let local = listener.local_addr().ok();
    serve(listener, ctx, watch, move |tcp| route_of(tcp, local)).await;
}

/// Serves an explicit listener: every accepted connection goes to `target`. Returns once drained
/// and every connection has finished.
pub async fn serve_mapped(
    listener: TcpListener,
    target: Target,
    ctx: Arc<OutboundContext>,
    watch: drain::Watch,
) {
    serve(listener, ctx, watch, move |_| Route::Fixed(target.clone())).await;
}

/// What a connection accepted on the outbound port is routed by.
fn route_of(tcp: &TcpStream, local: Option<SocketAddr>) -> Route {
    match original_destination(tcp) {
        // Connected to the listener itself: not redirected.
        Ok(addr) if Some(addr) == local => Route::ByAuthority,
        Ok(addr) => Route::OrigDst(addr),
        Err(error) => {
            if !error.is_not_redirected() {
                tracing::debug!(%error, "original destination unavailable");
            }
            Route::ByAuthority
        }
    }
}

async fn serve(
    listener: TcpListener,
    ctx: Arc<OutboundContext>,
    mut watch: drain::Watch,
    route_of: impl Fn(&TcpStream) -> Route,
) {
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections.max(1)));
    // Owned here, so that dropping this future aborts every connection it started.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = watch.signaled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "outbound accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = ctx.config.max_connections, "outbound connection refused: too many connections");
            continue;
        };
        let route = route_of(&client);
        let retain = watch.retain();
        let (ctx, conn_watch) = (ctx.clone(), watch.clone());
        let span = tracing::debug_span!("outbound", client = %peer);
        connections.spawn(
            async move {
                let _permit = permit;
                let _retain = retain;
                if let Err(error) = serve_connection(&ctx, client, peer, route, conn_watch).await {
                    tracing::info!(%error, "outbound connection closed");
                }
            }
            .instrument(span),
        );
    }
    // Draining: stop accepting, let the connections finish (HTTP ones are told to wind down).
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Why an outbound connection ended early. It is about that one connection only.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    #[error("reading the first bytes: {0}")]
    Detect(std::io::Error),
    #[error("protocol detection refused the connection: {0}")]
    Refused(Refusal),
    #[error(
        "not redirected and not HTTP or TLS with SNI: no destination; use an explicit --outbound-map listener for such clients"
    )]
    NoDestination,
    #[error("{target}: {source}")]
    Direct {
        target: SocketAddr,
        source: tcp::HopError,
    },
    #[error("splice: {0}")]
    Splice(#[from] tcp::SpliceError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("split: {0}")]
    Split(RouteError),
}

async fn serve_connection(
    ctx: &Arc<OutboundContext>,
    mut client: TcpStream,
    peer: SocketAddr,
    route: Route,
    watch: drain::Watch,
) -> Result<(), ConnectionError> {
    let _ = client.set_nodelay(true);
    let target = match &route {
        Route::OrigDst(addr) => Some(Target::Addr(*addr)),
        Route::Fixed(target) => Some(target.clone()),
        Route::ByAuthority => None,
    };

    if let Some(target) = &target {
        if is_opaque(ctx, target).await? {
            let client = Replay::new(BytesMut::new(), client);
            return forward_opaque(ctx, client, target, None).await;
        }
    }

    let detected = detect_stream(&mut client, ctx.config.detect_timeout)
        .await
        .map_err(ConnectionError::Detect)?;
    let client = Replay::new(detected.buffered, client);
    match detected.verdict {
        Ok(Protocol::Http1 { .. }) => serve_http(ctx, client, false, route, peer, watch).await?,
        Ok(Protocol::Http2) => serve_http(ctx, client, true, route, peer, watch).await?,
        Ok(Protocol::Tls(hello)) => {
            // Not the mesh's TLS (the application's own): passed through untouched, its SNI
            // naming the destination when nothing else does.
            let sni = hello.sni.clone();
            let target = match (target, &sni) {
                (Some(target), _) => target,
                (None, Some(sni)) => Target::parse(&format!("{sni}:443"))
                    .map_err(|_| ConnectionError::NoDestination)?,
                (None, None) => return Err(ConnectionError::NoDestination),
            };
            forward_opaque(ctx, client, &target, sni).await?;
        }
        Ok(_) => {
            let target = target.ok_or(ConnectionError::NoDestination)?;
            forward_opaque(ctx, client, &target, None).await?;
        }
        Err(refusal) => {
            // An endless request line: tell an HTTP client why, then close.
            let mut client = client;
            let _ = client
                .write_all(
                    b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                )
                .await;
            return Err(ConnectionError::Refused(refusal));
        }
    }
    Ok(())
}

/// Whether connections to `target` skip detection: its port is configured opaque, or discovery
/// says so.
async fn is_opaque(ctx: &OutboundContext, target: &Target) -> Result<bool, OutboundError> {
    let port = target_port(target);
    if port.is_some_and(|port| ctx.config.opaque_ports.contains(&port)) {
        return Ok(true);
    }
    let service = ctx.services.get(target)?;
    let destination = service
        .balancer
        .resolved(ctx.config.resolve_timeout)
        .await?;
    Ok(port.is_some_and(|port| destination.exists && destination.is_opaque(port)))
}

fn target_port(target: &Target) -> Option<u16> {
    match target {
        Target::Addr(addr) => Some(addr.port()),
        Target::Authority(authority) => Authority::parse(authority).ok().map(|a| a.port),
    }
}

/// Forwards a connection as a byte stream: balanced over the destination's endpoints when
/// discovery knows it, straight to the original address when it does not.
async fn forward_opaque(
    ctx: &OutboundContext,
    mut client: Replay<TcpStream>,
    target: &Target,
    sni: Option<String>,
) -> Result<(), ConnectionError> {
    let service = ctx.services.get(target)?;
    let destination = service
        .balancer
        .resolved(ctx.config.resolve_timeout)
        .await?;
    let mut labels = Labels::new(Direction::Outbound, TlsStatus::NoIdentity);
    labels.authority = sni
        .map(|sni| match target_port(target) {
            Some(port) => format!("{sni}:{port}"),
            None => sni,
        })
        .unwrap_or_else(|| target.to_string())
        .into();
    labels.dst_service = destination.authority.as_str().into();

    if !destination.exists {
        let Target::Addr(addr) = target else {
            return Err(OutboundError::NotFound(target.to_string()).into());
        };
        // Outside the mesh: where the application asked, as it asked.
        ctx.config.check_passthrough(*addr)?;
        let mut upstream = tcp::connect_plain(*addr, ctx.config.connect_timeout)
            .await
            .map_err(|source| ConnectionError::Direct {
                target: *addr,
                source,
            })?;
        splice_metered(ctx, &labels, &mut client, &mut upstream).await?;
        return Ok(());
    }

    // A TrafficSplit root: the connection goes to the highest-priority backend with an endpoint
    // available, as requests do.
    let backend = if destination.split.is_empty() {
        service
    } else {
        choose_backend(ctx, &destination.split)
            .await
            .map_err(ConnectionError::Split)?
    };
    let (upstream, in_flight) = backend.balancer.connect(&ctx.tls, &ctx.config).await?;
    let peer_id = |session: &rustls::ClientConnection| {
        mesh_trust::tls::connection_peer_identity(session).map(|id| id.to_string().into())
    };
    let result = match upstream {
        Upstream::Meshed(mut stream) => {
            labels.tls = TlsStatus::Mutual;
            labels.server_id = peer_id(stream.get_ref().1).unwrap_or_default();
            splice_metered(ctx, &labels, &mut client, &mut *stream).await
        }
        Upstream::Tunnelled(mut stream) => {
            labels.tls = TlsStatus::Mutual;
            labels.server_id = peer_id(stream.get_ref().1).unwrap_or_default();
            splice_metered(ctx, &labels, &mut client, &mut *stream).await
        }
        Upstream::Plain(mut stream) => splice_metered(ctx, &labels, &mut client, &mut stream).await,
    };
    in_flight.finish(Instant::now());
    result?;
    Ok(())
}

/// Splices the two streams, counting the connection and its bytes under `labels`.
async fn splice_metered<A, B>(
    ctx: &OutboundContext,
    labels: &Labels,
    client: &mut A,
    upstream: &mut B,
) -> Result<Transferred, tcp::SpliceError>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let guard = ctx.metrics.tcp_open(labels);
    let result = tcp::splice(client, upstream, ctx.config.idle_timeout).await;
    record_bytes(&guard, &result);
    result
}

fn record_bytes(
    guard: &crate::metrics::TcpConnGuard,
    result: &Result<Transferred, tcp::SpliceError>,
) {
    let transferred = match result {
        Ok(transferred) => *transferred,
        Err(error) => error.transferred(),
    };
    guard.read(transferred.a_to_b);
    guard.write(transferred.b_to_a);
}
