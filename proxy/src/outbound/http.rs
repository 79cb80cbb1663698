//! The outbound HTTP router: every request the local application sends is routed on its own.
//!
//! Per request: the destination (the connection's original destination or explicit service, or
//! the request's authority when the application addressed the proxy itself); discovery's answer
//! for it; if that is a TrafficSplit root, a backend (the highest-priority group that has an
//! endpoint available, weighted within it: a backend whose endpoints are all gone or ejected is
//! skipped at once); an endpoint of that backend by power of two choices over peak-EWMA latency;
//! then the request goes over the pooled `mesh.h2` hop to the endpoint's proxy when it has an
//! identity, or straight to it in its own HTTP version when it has none.
//!
//! A request that fails is sent again to another pick when that is safe (see [`crate::retry`]):
//! nothing was sent, or the method is idempotent and the body was small enough to keep (at most
//! `max_retry_body`), and only while the destination's retry budget allows. Upgrades
//! (WebSocket) are never retried. The whole exchange, retries included, must produce response
//! headers within `request_timeout`.
//!
//! Failures the proxy answers itself carry a `mesh-proxy-error` header saying why: 502 when the
//! endpoint could not be reached or the hop failed, 503 when there is no endpoint to send to (or
//! discovery has not answered), 504 when the request timed out, 400 when a direct request names
//! no authority.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::CONTENT_LENGTH;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout_at};

use super::listener::{OutboundContext, Route};
use super::{OutboundConfig, OutboundError, OutboundTls, Picked, Service};
use crate::discovery::{Destination, EndpointMeta, Target};
use crate::drain;
use crate::http::active::hold_until_done;
use crate::http::app::{AppClient, AppClientConfig, AppError};
use crate::http::client::{ConnectError, H2ClientConfig, HttpHopError, MeshEndpoint, MeshH2Client};
use crate::http::plain::strip_hop_by_hop;
use crate::http::server::{ServerLimits, serve_connection};
use crate::http::upgrade::splice_upgraded;
use crate::http::{Body, BoxError, proxy_error_response, request_authority};
use crate::metrics::{Classification, Direction, Labels, TlsStatus};
use crate::retry::{self, Failure};
use crate::split::Split;
use crate::tap::RequestEvent;

/// The header on responses the proxy made itself, saying why.
pub use crate::http::PROXY_ERROR as PROXY_ERROR_HEADER;

/// Plain-HTTP clients kept (one per address, each with its pool) before unused ones are dropped.
const MAX_PLAIN_CLIENTS: usize = 1024;

/// The clients requests leave through: the `mesh.h2` hop, and plain HTTP per endpoint address
/// for endpoints without an identity.
pub(super) struct HttpClients {
    mesh: MeshH2Client,
    plain: Mutex<std::collections::HashMap<SocketAddr, Arc<AppClient>>>,
    inbound_port: u16,
    app_config: AppClientConfig,
    upgrade_idle_timeout: std::time::Duration,
}

impl HttpClients {
    pub(super) fn new(tls: Arc<OutboundTls>, config: &OutboundConfig) -> Self {
        Self {
            mesh: MeshH2Client::new(
                tls,
                H2ClientConfig {
                    connect_timeout: config.connect_timeout,
                    ..H2ClientConfig::default()
                },
            ),
            plain: Mutex::new(std::collections::HashMap::new()),
            inbound_port: config.inbound_port,
            upgrade_idle_timeout: config.idle_timeout,
            app_config: AppClientConfig {
                connect_timeout: config.connect_timeout,
                ..AppClientConfig::default()
            },
        }
    }

    fn plain(&self, addr: SocketAddr) -> Arc<AppClient> {
        let mut plain = self.plain.lock().unwrap_or_else(|p| p.into_inner());
        // Addresses outside the mesh come and go (a CDN's, say): beyond a bound, the clients no
        // request is using are dropped, with their pooled connections.
        if plain.len() >= MAX_PLAIN_CLIENTS && !plain.contains_key(&addr) {
            plain.retain(|_, client| Arc::strong_count(client) > 1);
        }
        plain
            .entry(addr)
            .or_insert_with(|| Arc::new(AppClient::new(addr, &self.app_config)))
            .clone()
    }

    /// Sends to an address without a mesh identity, in the request's own version.
    /// An upgrade (WebSocket) the destination accepts is spliced to the application's
    /// connection once both have switched protocols.
    async fn send_plain(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        strip_hop_by_hop(req.headers_mut());
        let client_upgrade = req
            .headers()
            .contains_key(http::header::UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        let mut response = self.plain(addr).send(req).await.map_err(SendError::Plain)?;
        strip_hop_by_hop(response.headers_mut());
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(splice_upgraded(
                    client,
                    upstream,
                    self.upgrade_idle_timeout,
                    addr,
                ));
            }
        }
        Ok(response.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed()))
    }

    async fn send(&self, picked: &Picked, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let endpoint = &picked.endpoint;
        let target = match (&endpoint.tunnel, &endpoint.identity) {
            // A linked cluster's endpoint: through the local gateway, whether or not discovery
            // named the identity (for mirrors the remote gateway reports it).
            (Some(tunnel), identity) => MeshEndpoint {
                proxy: tunnel.gateway,
                app_port: endpoint.addr.port(),
                identity: identity.clone(),
                authority: picked.authority.clone(),
                tunnel: Some(tunnel.clone()),
            },
            (None, Some(identity)) => MeshEndpoint {
                proxy: SocketAddr::new(endpoint.addr.ip(), self.inbound_port),
                app_port: endpoint.addr.port(),
                identity: Some(identity.clone()),
                authority: picked.authority.clone(),
                tunnel: None,
            },
            (None, None) => return self.send_plain(endpoint.addr, req).await,
        };
        self.mesh.send(&target, req).await.map_err(SendError::Mesh)
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error(transparent)]
    Mesh(HttpHopError),
    #[error(transparent)]
    Plain(AppError),
}

impl SendError {
    /// A request this proxy cannot send at all (not the endpoint's fault): answered at once,
    /// never retried, and never counted against the endpoint.
    fn local_status(&self) -> Option<StatusCode> {
        match self {
            Self::Mesh(HttpHopError::BadRequest(_)) => Some(StatusCode::BAD_REQUEST),
            Self::Mesh(HttpHopError::Unsupported(_)) => Some(StatusCode::NOT_IMPLEMENTED),
            Self::Mesh(HttpHopError::Connect { source, .. })
                if matches!(**source, ConnectError::Tls(_)) =>
            {
                Some(StatusCode::BAD_GATEWAY)
            }
            Self::Plain(AppError::Version { .. }) => Some(StatusCode::HTTP_VERSION_NOT_SUPPORTED),
            _ => None,
        }
    }

    fn nothing_sent(&self) -> bool {
        match self {
            Self::Mesh(error) => error.nothing_sent(),
            Self::Plain(error) => matches!(
                error,
                AppError::Connect { .. } | AppError::ConnectTimeout { .. }
            ),
        }
    }
}

/// Serves HTTP on one application connection until it closes (or the drain asks it to wind
/// down).
pub(super) async fn serve_http<IO>(
    ctx: &Arc<OutboundContext>,
    io: IO,
    http2: bool,
    route: Route,
    client: SocketAddr,
    watch: drain::Watch,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let route = Arc::new(route);
    let ctx2 = ctx.clone();
    let service = service_fn(move |req| {
        let (ctx, route) = (ctx2.clone(), route.clone());
        handle(ctx, route, client, req)
    });
    let limits = ServerLimits {
        header_read_timeout: ctx.config.header_read_timeout,
        max_header_bytes: ctx.config.max_header_bytes,
    };
    serve_connection(io, http2, service, limits, watch).await
}

/// What a routed request produced, for metrics and the tap.
struct Outcome {
    response: Response<Body>,
    endpoint: Option<EndpointMeta>,
    destination: Option<Arc<Destination>>,
    error: Option<String>,
}

async fn handle(
    ctx: Arc<OutboundContext>,
    route: Arc<Route>,
    client: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (ctx, route) = (&*ctx, &*route);
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let method = req.method().clone();
    // Only the tap wants the path; no allocation for it on requests nobody watches.
    let path = ctx.tap.is_active().then(|| req.uri().path().to_owned());
    let authority = request_authority(&req);
    let target = match route {
        Route::OrigDst(addr) => Ok(Target::Addr(*addr)),
        Route::Fixed(target) => Ok(target.clone()),
        Route::ByAuthority => match &authority {
            Some(authority) => Target::parse(&with_default_port(authority))
                .map_err(|e| RouteError::BadAuthority(e.to_string())),
            None => Err(RouteError::NoAuthority),
        },
    };
    let outcome = match target {
        Ok(target) => {
            route_request(
                ctx,
                &target,
                req.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed()),
            )
            .await
        }
        Err(error) => failed(error, None, None),
    };
    let latency = started.elapsed();

    let status = outcome.response.status();
    let mut labels = Labels::new(Direction::Outbound, TlsStatus::NoIdentity);
    labels.authority = authority
        .clone()
        .unwrap_or_else(|| route_name(route))
        .into();
    if let Some(destination) = &outcome.destination {
        labels.dst_service = destination.authority.as_str().into();
    }
    if let Some(endpoint) = &outcome.endpoint {
        labels.dst_cluster = endpoint.cluster.as_str().into();
        if let Some(identity) = &endpoint.identity {
            labels.tls = TlsStatus::Mutual;
            labels.server_id = identity.to_string().into();
        }
    }
    ctx.metrics.request(&labels);
    let classification = if outcome.error.is_some() {
        Classification::Failure
    } else {
        Classification::of_http_status(status)
    };
    ctx.metrics
        .response(&labels, status, classification, latency);

    if ctx.tap.is_active() {
        ctx.tap.publish(RequestEvent {
            direction: Direction::Outbound,
            method,
            authority: labels.authority.as_str().to_owned(),
            path: path.unwrap_or_default(),
            status: Some(status),
            error: outcome.error.clone(),
            latency,
            started: started_wall,
            client_id: None,
            server_id: outcome.endpoint.as_ref().and_then(|e| e.identity.clone()),
            peer: outcome.endpoint.as_ref().map(|e| e.addr).or(Some(client)),
        });
    }
    Ok(outcome.response)
}

/// Why a request could not be routed at all.
#[derive(Debug, thiserror::Error)]
pub(super) enum RouteError {
    #[error(
        "the request names no authority (no Host header) and the connection was not redirected"
    )]
    NoAuthority,
    #[error("the request's authority is not usable: {0}")]
    BadAuthority(String),
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    #[error("the request body could not be read: {0}")]
    Body(BoxError),
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0}")]
    Send(SendError),
}

impl RouteError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NoAuthority | Self::BadAuthority(_) | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::Outbound(OutboundError::Forbidden { .. }) => StatusCode::FORBIDDEN,
            Self::Outbound(OutboundError::ResolveTimeout(_) | OutboundError::NoEndpoint { .. })
            | Self::Outbound(OutboundError::TooManyDestinations { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Send(error) => error.local_status().unwrap_or(StatusCode::BAD_GATEWAY),
            Self::Outbound(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

fn failed(
    error: RouteError,
    destination: Option<Arc<Destination>>,
    endpoint: Option<EndpointMeta>,
) -> Outcome {
    tracing::info!(%error, "request failed");
    let message = error.to_string();
    let response = proxy_error_response(error.status(), &message);
    Outcome {
        response,
        endpoint,
        destination,
        error: Some(message),
    }
}

/// The request body, kept when small enough to send again.
enum Replayable {
    Empty,
    Buffered(Bytes),
    Streaming(Option<Body>),
}

impl Replayable {
    fn kind(&self) -> retry::Body {
        match self {
            Self::Empty => retry::Body::Empty,
            Self::Buffered(bytes) => retry::Body::Buffered(bytes.len() as u64),
            Self::Streaming(_) => retry::Body::NotReplayable,
        }
    }

    /// The body for the next attempt; `None` once a streamed body has been used.
    fn take(&mut self) -> Option<Body> {
        match self {
            Self::Empty => Some(http_body_util::Empty::new().map_err(|n| match n {}).boxed()),
            Self::Buffered(bytes) => Some(Full::new(bytes.clone()).map_err(|n| match n {}).boxed()),
            Self::Streaming(body) => body.take(),
        }
    }
}

async fn route_request(ctx: &OutboundContext, target: &Target, req: Request<Body>) -> Outcome {
    let deadline = Instant::now() + ctx.config.request_timeout;
    let service = match ctx.services.get(target) {
        Ok(service) => service,
        Err(error) => return failed(error.into(), None, None),
    };
    let destination = match service.balancer.resolved(ctx.config.resolve_timeout).await {
        Ok(destination) => destination,
        Err(error) => return failed(error.into(), None, None),
    };
    if !destination.exists {
        return match target {
            // Outside the mesh: to the address the application asked for, in plain HTTP.
            Target::Addr(addr) => {
                if let Err(error) = ctx.config.check_passthrough(*addr) {
                    return failed(error.into(), Some(destination), None);
                }
                let sent = timeout_at(deadline, ctx.http.send_plain(*addr, req)).await;
                match sent {
                    Ok(Ok(response)) => Outcome {
                        response,
                        endpoint: None,
                        destination: Some(destination),
                        error: None,
                    },
                    Ok(Err(error)) => failed(RouteError::Send(error), Some(destination), None),
                    Err(_) => failed(
                        RouteError::Timeout(ctx.config.request_timeout),
                        Some(destination),
                        None,
                    ),
                }
            }
            Target::Authority(_) => failed(
                OutboundError::NotFound(target.to_string()).into(),
                Some(destination),
                None,
            ),
        };
    }

    let (mut parts, body) = req.into_parts();
    let upgrade =
        parts.headers.contains_key(http::header::UPGRADE) || parts.method == http::Method::CONNECT;
    let mut replay = if upgrade {
        Replayable::Streaming(Some(body))
    } else {
        match buffer_body(body, &parts.headers, ctx.config.max_retry_body).await {
            Ok(replay) => replay,
            Err(error) => return failed(RouteError::Body(error), Some(destination), None),
        }
    };
    // The OnUpgrade handle (and other extensions) go with the first attempt only.
    let mut extensions = Some(std::mem::take(&mut parts.extensions));
    let method = parts.method.clone();

    {
        let mut budget = service.budget.lock().unwrap_or_else(|p| p.into_inner());
        budget.record_request(Instant::now());
    }
    let attempts = ctx.config.max_attempts.max(1);
    let mut attempt = 0;
    // The endpoint the previous attempt failed on: a retry goes elsewhere when it can.
    let mut last_failed = None;
    loop {
        attempt += 1;
        // Each attempt chooses again: a backend whose endpoint just failed may have nothing
        // left to offer, and the next group takes over at once.
        let backend = if destination.split.is_empty() {
            service.clone()
        } else {
            match choose_backend(ctx, &destination.split).await {
                Ok(backend) => backend,
                Err(error) => return failed(error, Some(destination), None),
            }
        };
        let picked = match backend.balancer.pick_avoiding(last_failed) {
            Ok(picked) => picked,
            // The backend looked available a moment ago, but a concurrent request took its
            // last endpoint's probe: choose again, and the next group takes over.
            Err(_) if !destination.split.is_empty() && attempt < attempts => continue,
            Err(error) => return failed(error.into(), Some(destination), None),
        };
        let Some(body) = replay.take() else {
            return failed(
                RouteError::Outbound(OutboundError::NotFound(target.to_string())),
                Some(destination),
                None,
            );
        };
        let mut request = Request::from_parts(parts_clone(&parts), body);
        if let Some(extensions) = extensions.take() {
            *request.extensions_mut() = extensions;
        }
        let sent = timeout_at(deadline, ctx.http.send(&picked, request)).await;
        let now = Instant::now();
        let Picked {
            mut in_flight,
            endpoint,
            ..
        } = picked;
        let failure = match sent {
            Err(_) => {
                // No answer in time: that counts against the endpoint.
                in_flight.fail(now, &mut rand::rng());
                return failed(
                    RouteError::Timeout(ctx.config.request_timeout),
                    Some(destination),
                    Some(endpoint),
                );
            }
            Ok(Ok(response)) => {
                let status = response.status();
                // The endpoint's proxy answering for it (its application unreachable, say) is a
                // failure of that endpoint, not a fast success that would draw more traffic.
                let proxy_failed =
                    status.is_server_error() && response.headers().contains_key(PROXY_ERROR_HEADER);
                let response = if proxy_failed {
                    in_flight.fail(now, &mut rand::rng());
                    response
                } else {
                    // The round trip to the response headers is the latency sample; the request
                    // stays in flight (load on the endpoint) until its response body is done.
                    in_flight.connected(now);
                    let (parts, body) = response.into_parts();
                    Response::from_parts(parts, hold_until_done(body, in_flight))
                };
                if !(502..=504).contains(&status.as_u16())
                    || !may_retry(
                        &service,
                        &method,
                        &replay,
                        Failure::Status(status.as_u16()),
                        attempt,
                        attempts,
                    )
                {
                    return Outcome {
                        response,
                        endpoint: Some(endpoint),
                        destination: Some(destination),
                        error: None,
                    };
                }
                tracing::debug!(endpoint = %endpoint.addr, %status, "retrying");
                last_failed = Some(endpoint.addr);
                continue;
            }
            Ok(Err(error)) => error,
        };
        if failure.local_status().is_some() {
            // Dropped without an outcome: the endpoint is not to blame.
            drop(in_flight);
            return failed(RouteError::Send(failure), Some(destination), Some(endpoint));
        }
        let kind = if failure.nothing_sent() {
            in_flight.fail(now, &mut rand::rng());
            Failure::ConnectFailed
        } else {
            in_flight.finish(now);
            Failure::ResetAfterSend
        };
        if !may_retry(&service, &method, &replay, kind, attempt, attempts) {
            return failed(RouteError::Send(failure), Some(destination), Some(endpoint));
        }
        tracing::debug!(endpoint = %endpoint.addr, error = %failure, "retrying");
        last_failed = Some(endpoint.addr);
    }
}

fn may_retry(
    service: &Service,
    method: &http::Method,
    replay: &Replayable,
    failure: Failure,
    attempt: usize,
    attempts: usize,
) -> bool {
    if attempt >= attempts || !retry::is_retryable(method.as_str(), replay.kind(), failure) {
        return false;
    }
    let mut budget = service.budget.lock().unwrap_or_else(|p| p.into_inner());
    budget.try_withdraw(Instant::now())
}

/// Chooses the split backend to send to: the highest-priority group with an available endpoint.
pub(super) async fn choose_backend(
    ctx: &OutboundContext,
    split: &Split,
) -> Result<Arc<Service>, RouteError> {
    let mut backends = Vec::with_capacity(split.len());
    for backend in split.backends() {
        let target = Target::parse(&backend.authority)
            .map_err(|e| RouteError::BadAuthority(e.to_string()))?;
        backends.push((backend.authority.as_str(), ctx.services.get(&target)?));
    }
    // A backend discovery has not answered for yet would look dead; wait for the first answers
    // (once per backend, bounded by the resolve timeout) before choosing.
    join_all(
        backends
            .iter()
            .filter(|(_, service)| service.balancer.latest().is_none())
            .map(|(_, service)| service.balancer.resolved(ctx.config.resolve_timeout)),
    )
    .await;
    let chosen = split
        .choose(
            |authority| {
                backends
                    .iter()
                    .find(|(a, _)| *a == authority)
                    .is_some_and(|(_, service)| service.balancer.has_available())
            },
            &mut rand::rng(),
        )
        .map_err(|unavailable| {
            RouteError::Outbound(OutboundError::NoEndpoint {
                authority: format!("split ({unavailable})"),
                source: crate::balance::PickError::NoEndpoints,
            })
        })?;
    backends
        .into_iter()
        .find(|(a, _)| *a == chosen.authority)
        .map(|(_, service)| service)
        .ok_or(RouteError::NoAuthority)
}

/// Reads a small body whole, so that the request can be sent again; leaves a large or unsized
/// one streaming.
async fn buffer_body(
    body: Body,
    headers: &http::HeaderMap,
    cap: usize,
) -> Result<Replayable, BoxError> {
    if body.is_end_stream() {
        return Ok(Replayable::Empty);
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(0) => Ok(Replayable::Empty),
        Some(len) if len <= cap as u64 => {
            let mut body = body;
            let mut buf = bytes::BytesMut::with_capacity(len as usize);
            while let Some(frame) = body.frame().await {
                // Trailers on a small request are rare and would be lost by buffering; such a
                // body is refused rather than silently changed.
                let data = frame?
                    .into_data()
                    .map_err(|_| -> BoxError { "request trailers cannot be buffered".into() })?;
                if buf.len() + data.len() > cap {
                    return Err(
                        format!("the body is longer than its content-length ({len})").into(),
                    );
                }
                buf.extend_from_slice(&data);
            }
            Ok(Replayable::Buffered(buf.freeze()))
        }
        _ => Ok(Replayable::Streaming(Some(body))),
    }
}

fn parts_clone(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// `host:port`, with port 80 when the authority has none.
fn with_default_port(authority: &str) -> String {
    let has_port = match authority.rsplit_once(':') {
        // `[::1]` has colons but no port.
        Some((host, port)) => !port.is_empty() && !host.ends_with(':') && !authority.ends_with(']'),
        None => false,
    };
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    }
}

fn route_name(route: &Route) -> String {
    match route {
        Route::OrigDst(addr) => addr.to_string(),
        Route::Fixed(target) => target.to_string(),
        Route::ByAuthority => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("web"), "web:80");
        assert_eq!(with_default_port("web:8080"), "web:8080");
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:80");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("[::1]:81"), "[::1]:81");
    }
}
