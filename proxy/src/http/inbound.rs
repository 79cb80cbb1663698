//! The inbound end of the `mesh.h2` hop: HTTP/2 from a peer proxy, each request forwarded to
//! the local application as the caller sent it.
//!
//! The inbound listener has already terminated mutual TLS (so the caller's SPIFFE ID is known)
//! and read the transport header (so the application port is known); what is left of the
//! stream is an HTTP/2 connection, served here with hyper. For each request:
//!
//! - [`CLIENT_ID`] is set to the caller's SPIFFE ID, replacing whatever the peer sent: the peer
//!   proved its identity in the handshake, a header proves nothing.
//! - [`orig_proto::h2_to_h1`] gives HTTP/1 requests back their version and `Host`; an extended
//!   CONNECT becomes the HTTP/1.1 upgrade it stands for, and once the application switches
//!   protocols the two byte streams are spliced.
//! - The request goes to `local_app_ip:port` through an [`AppClient`], pooled per port across
//!   every connection; when the application cannot be reached the answer is `502` (or `504`
//!   when it does not answer in time) with a short text body and [`PROXY_ERROR`]. One failing
//!   stream never closes the connection.
//! - Metrics and a tap event are recorded per request when the listener has them.
//!
//! The connection is bounded: concurrent streams, header list size (h2 answers `431` to a
//! larger header block), keep-alive pings that close it when the peer stops answering, and an
//! idle timeout that closes it (GOAWAY) when no stream has been open for a while, which also
//! bounds a peer that connects and never sends a request. On drain it is shut down gracefully.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_trust::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::active::ActiveStreams;
use super::app::{AppClient, AppClientConfig, AppError};
use super::orig_proto::{self, ORIG_PROTO, UPGRADE_STATUS};
use super::upgrade::splice_upgraded;
use super::{Body, BoxError};
use crate::drain;
use crate::metrics::{Classification, Direction, LabelValue, Labels, ProxyMetrics, TlsStatus};
use crate::tap::{RequestEvent, Tap};

/// Request header the inbound side sets to the caller's SPIFFE ID (`spiffe://...`).
///
/// Always overwritten: any value the peer sent is removed first. An application may trust it
/// only on connections from its own proxy (on loopback); anyone who can reach the
/// application's port directly can send it too.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("mesh-client-id");

/// Response header on answers the proxy made itself (the application was not reached, or the
/// request could not be carried): a short reason. Its presence tells a proxy's `502` from the
/// application's.
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("mesh-proxy-error");

/// How `mesh.h2` connections are served.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InboundHttpConfig {
    /// Streams a peer may have open at once on one connection; h2 refuses more with
    /// `REFUSED_STREAM`, which the peer may retry.
    pub max_concurrent_streams: u32,
    /// The largest request header block accepted (decoded); larger ones are answered `431`.
    pub max_header_list_size: u32,
    /// How often an HTTP/2 PING checks that the peer is still there.
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
    /// A connection on which no stream has been open for this long is closed gracefully. It
    /// should exceed the clients' own idle timeout, so that clients close first.
    pub idle_timeout: Duration,
    /// How long the application has to send response headers; `None` waits as long as the
    /// caller does (long polls, server streaming).
    pub response_timeout: Option<Duration>,
    /// Unused connections to the application are closed after this long.
    pub app_pool_idle_timeout: Duration,
}

/// Clients towards the local application, one per port, shared by every connection.
#[derive(Debug)]
pub(crate) struct AppClients {
    ip: IpAddr,
    config: AppClientConfig,
    clients: Mutex<HashMap<u16, AppClient>>,
}

/// What a `mesh.h2` connection knows once its handshake and transport header are done.
#[derive(Debug)]
pub(crate) struct HopConnection {
    /// The caller's proven identity.
    pub(crate) peer: SpiffeId,
    /// The peer proxy's address, for the tap.
    pub(crate) client: SocketAddr,
    /// Where every request on this connection goes.
    pub(crate) app: AppClient,
    pub(crate) metrics: Option<ProxyMetrics>,
    pub(crate) tap: Option<Tap>,
    /// An upgraded (spliced) stream on which no byte moves for this long is closed.
    pub(crate) upgrade_idle_timeout: Duration,
}

/// Forwards one connection's requests.
#[derive(Debug)]
struct Forward {
    hop: HopConnection,
    /// [`CLIENT_ID`]'s value, built once.
    client_id: HeaderValue,
    /// The labels every request on the connection shares; the authority is per request.
    labels: Labels,
    active: ActiveStreams,
}

/// What the tap and the metrics need of a request, taken before it is forwarded.
struct Seen {
    method: Method,
    authority: String,
    path: String,
}

/// A request the proxy answered itself.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    /// Short and fixed: it reaches the caller.
    reason: &'static str,
    /// The whole story, for the log and the tap.
    pub(crate) detail: String,
}

// === impl InboundHttpConfig ===

impl Default for InboundHttpConfig {
    /// 1000 streams, 64 KiB of headers, a PING every 10 s answered within 10 s, 10 min idle,
    /// no response timeout, 90 s for pooled application connections.
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1000,
            max_header_list_size: 64 * 1024,
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            response_timeout: None,
            app_pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

// === impl AppClients ===

impl AppClients {
    /// Clients for `ip:port`, each connecting within `connect_timeout`.
    pub(crate) fn new(ip: IpAddr, connect_timeout: Duration, config: &InboundHttpConfig) -> Self {
        let app = AppClientConfig {
            connect_timeout,
            response_timeout: config.response_timeout,
            pool_idle_timeout: config.app_pool_idle_timeout,
            ..AppClientConfig::default()
        };
        Self {
            ip,
            config: app,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for the application's `port`, created on first use.
    pub(crate) fn get(&self, port: u16) -> AppClient {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(port)
            .or_insert_with(|| AppClient::new(SocketAddr::new(self.ip, port), &self.config))
            .clone()
    }
}

/// Serves HTTP/2 on `io` until the peer closes, the connection fails, it has been idle for
/// `config.idle_timeout`, or `watch` signals a drain (then in-flight streams finish first).
pub(crate) async fn serve<I>(
    io: I,
    hop: HopConnection,
    config: &InboundHttpConfig,
    mut watch: drain::Watch,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let active = ActiveStreams::new();
    let forward = Arc::new(Forward::new(hop, active.clone()));
    let service = service_fn(move |req| {
        let forward = forward.clone();
        async move { Ok::<_, Infallible>(forward.forward(req).await) }
    });

    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(config.max_header_list_size)
        .keep_alive_interval(config.keep_alive_interval)
        .keep_alive_timeout(config.keep_alive_timeout)
        // Upgrades (WebSocket) arrive as RFC 8441 extended CONNECT.
        .enable_connect_protocol();
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut idle = pin!(active.idle_for(config.idle_timeout));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = watch.signaled(), if !closing => {
                tracing::debug!("draining: mesh.h2 connection goes away");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = idle.as_mut(), if !closing => {
                tracing::debug!("mesh.h2 connection idle: goes away");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

// === impl Forward ===

impl Forward {
    fn new(hop: HopConnection, active: ActiveStreams) -> Self {
        // A SPIFFE ID is a URI: always a valid header value.
        let client_id = HeaderValue::from_str(hop.peer.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let labels = Labels {
            client_id: LabelValue::new(hop.peer.as_str()),
            ..Labels::new(Direction::Inbound, TlsStatus::Mutual)
        };
        Self {
            hop,
            client_id,
            labels,
            active,
        }
    }

    /// Forwards one request and records it; always answers.
    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let wall = SystemTime::now();
        let guard = self.active.enter();
        let seen = Seen::of(&req);
        let labels = Labels {
            authority: LabelValue::new(&seen.authority),
            ..self.labels.clone()
        };
        if let Some(metrics) = &self.hop.metrics {
            metrics.request(&labels);
        }

        let (response, status, failure) = match self.respond(req).await {
            Ok((response, status)) => (response, status, None),
            Err(failure) => {
                tracing::info!(
                    peer = %self.hop.peer,
                    app = %self.hop.app.addr(),
                    status = failure.status.as_u16(),
                    error = %failure.detail,
                    "inbound request failed"
                );
                (failure.response(), failure.status, Some(failure.detail))
            }
        };

        let latency = started.elapsed();
        if let Some(metrics) = &self.hop.metrics {
            let class = Classification::of_http_status(status);
            metrics.response(&labels, status, class, latency);
        }
        if let Some(tap) = self.hop.tap.as_ref().filter(|t| t.is_active()) {
            tap.publish(RequestEvent {
                direction: Direction::Inbound,
                method: seen.method,
                authority: seen.authority,
                path: seen.path,
                status: Some(status),
                error: failure,
                latency,
                started: wall,
                client_id: Some(self.hop.peer.clone()),
                server_id: None,
                peer: Some(self.hop.client),
            });
        }
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, guard.hold_until_done(body))
    }

    /// The response to send, and the status to record (the application's, which for an upgrade
    /// is `101` although the hop answers `200`).
    async fn respond(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<(Response<Body>, StatusCode), Failure> {
        let headers = req.headers_mut();
        headers.remove(CLIENT_ID);
        headers.insert(CLIENT_ID, self.client_id.clone());

        let tunnel = if req.method() == Method::CONNECT {
            let is_upgrade = req.extensions().get::<hyper::ext::Protocol>().is_some()
                && req.headers().contains_key(ORIG_PROTO);
            if !is_upgrade {
                return Err(Failure {
                    status: StatusCode::NOT_IMPLEMENTED,
                    reason: "CONNECT is only carried for HTTP/1.1 upgrades",
                    detail: "a CONNECT that is not an HTTP/1.1 upgrade".into(),
                });
            }
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        let req = orig_proto::h2_to_h1(req).map_err(|e| Failure {
            status: StatusCode::BAD_REQUEST,
            reason: "the request cannot be carried to the application",
            detail: e.to_string(),
        })?;
        let req = req.map(|body| body.map_err(BoxError::from).boxed());
        let response = self.hop.app.send(req).await.map_err(Failure::app)?;
        Ok(match tunnel {
            None => {
                let status = response.status();
                (plain(response), status)
            }
            Some(peer_io) => self.answer_upgrade(response, peer_io),
        })
    }

    /// The application's answer to an upgrade, as the answer to the extended CONNECT.
    ///
    /// `101`: `200` with the application's headers and [`UPGRADE_STATUS`] `101`, and the two
    /// upgraded streams are spliced. Another `2xx` (the application ignored the upgrade, as it
    /// may): a `2xx` answer to a CONNECT opens a tunnel whatever follows, so it becomes `200`
    /// with the real status in [`UPGRADE_STATUS`], and the body goes through the tunnel. Any
    /// other status is an ordinary response.
    fn answer_upgrade(
        &self,
        mut response: Response<Incoming>,
        peer_io: OnUpgrade,
    ) -> (Response<Body>, StatusCode) {
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS && !status.is_success() {
            return (plain(response), status);
        }
        let app_io =
            (status == StatusCode::SWITCHING_PROTOCOLS).then(|| hyper::upgrade::on(&mut response));
        let (mut parts, body) = response.into_parts();
        orig_proto::remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(UPGRADE_STATUS, HeaderValue::from(status.as_u16()));
        parts.status = StatusCode::OK;
        parts.version = Version::HTTP_2;

        let guard = self.active.enter();
        let idle = self.hop.upgrade_idle_timeout;
        let peer = self.hop.peer.clone();
        match app_io {
            Some(app_io) => {
                tokio::spawn(async move {
                    splice_upgraded(peer_io, app_io, idle, &peer).await;
                    drop(guard);
                });
            }
            None => {
                tokio::spawn(async move {
                    body_through_tunnel(peer_io, body).await;
                    drop(guard);
                });
            }
        }
        (Response::from_parts(parts, empty()), status)
    }
}

/// Writes `body`'s data into the CONNECT stream, then closes it. Trailers cannot follow.
async fn body_through_tunnel(peer_io: OnUpgrade, mut body: Incoming) {
    let Ok(peer_io) = peer_io.await else {
        return;
    };
    let mut peer_io = TokioIo::new(peer_io);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The peer sees the stream end early: a truncated body, not a complete one.
            return;
        };
        if let Ok(data) = frame.into_data() {
            if peer_io.write_all(&data).await.is_err() {
                return;
            }
        }
    }
    let _ = peer_io.shutdown().await;
}

/// An application response as an HTTP/2 response: hop-by-hop headers removed (including the
/// ones its `Connection` header names, which hyper does not know about).
fn plain(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    orig_proto::remove_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_2;
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

// === impl Seen ===

impl Seen {
    fn of<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().clone(),
            authority: req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            // Never the query: it may hold secrets.
            path: req.uri().path().to_owned(),
        }
    }
}

// === impl Failure ===

impl Failure {
    pub(crate) fn app(error: AppError) -> Self {
        let reason = match &error {
            AppError::Connect { .. } => "the application refused the connection",
            AppError::ConnectTimeout { .. } => "the application did not accept the connection",
            AppError::ResponseTimeout { .. } => "the application did not answer in time",
            AppError::Version { .. } => "the request's HTTP version is not supported",
            AppError::Request { .. } => "the connection to the application failed",
        };
        Self {
            status: error.status(),
            reason,
            detail: error.to_string(),
        }
    }

    pub(crate) fn response(&self) -> Response<Body> {
        super::proxy_error_response(self.status, self.reason)
    }
}
