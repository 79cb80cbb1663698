//! The outbound end of the `mesh.h2` hop: one pooled, multiplexed HTTP/2 connection per
//! endpoint, over mutual TLS.
//!
//! [`MeshH2Client::send`] takes a request as the local application sent it (HTTP/1.x or
//! HTTP/2, from hyper's server) and an endpoint chosen by the balancer, and returns the
//! endpoint application's response in the caller's version:
//!
//! - Connections are keyed by (proxy address, identity, application port). The first request
//!   to an endpoint opens one: TCP, mTLS requiring exactly the endpoint's identity, ALPN
//!   `mesh.h2`, the transport header naming the application port, then HTTP/2. Requests that
//!   arrive while it is being opened wait for it, so concurrent first requests open one
//!   connection, not one each.
//! - A connection is shared by every request to its endpoint. It is replaced when it dies; a
//!   request that finds it closed before its request could be written is sent again on a new
//!   one, so a restarted peer costs no failed request. HTTP/2 PINGs notice a peer that has
//!   silently gone away, so no request waits on a dead connection for longer than the
//!   keep-alive timeout. A connection with no stream for the idle timeout is closed.
//! - HTTP/1 requests travel as HTTP/2 per [`orig_proto`]; an HTTP/1.1 upgrade (WebSocket)
//!   travels as an extended CONNECT, and once the application has switched protocols the
//!   caller's upgraded connection is spliced to the CONNECT stream.
//!
//! Failures say whether the request may have reached the peer ([`HttpHopError::nothing_sent`]),
//! which is what decides whether the caller may retry it elsewhere.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_api::common::ProtocolHint;
use mesh_api::ports::ALPN_H2;
use mesh_trust::SpiffeId;
use tokio::io::{AsyncRead, ReadBuf};

use super::active::{ActiveGuard, ActiveStreams};
use super::error_chain::chain;
use super::orig_proto::{self, ORIG_PROTO, OrigProtoError, UPGRADE_STATUS};
use super::upgrade::splice_upgraded;
use super::{Body, BoxError};
use crate::discovery::TunnelMeta;
use crate::outbound::{OutboundError, OutboundTls};
use crate::tcp::{self, HopError, SPLICE_BUFFER_SIZE};
use crate::transport_header::{Authority, MeshTransportHeader};
use crate::tunnel::{TunnelError, connect_tunnelled};
use tokio_util::either::Either;

/// How the hop's connections are made and kept.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct H2ClientConfig {
    /// TCP connect, TLS handshake and transport header together.
    pub connect_timeout: Duration,
    /// How often an HTTP/2 PING checks that the peer is still there, busy or idle.
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed and its requests fail.
    pub keep_alive_timeout: Duration,
    /// A connection with no stream for this long is closed. Keep it below the inbound side's
    /// idle timeout, so that the client, which knows when it will send, closes first.
    pub idle_timeout: Duration,
    /// The largest response header block accepted.
    pub max_header_list_size: u32,
    /// An upgraded (spliced) stream on which no byte moves either way for this long is closed.
    pub upgrade_idle_timeout: Duration,
}

/// Where a request goes: an endpoint's proxy, and what it must prove and route to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshEndpoint {
    /// The endpoint proxy's inbound listener, `ip:4143`.
    pub proxy: SocketAddr,
    /// The application's port, named in the transport header.
    pub app_port: u16,
    /// The identity the endpoint must prove in the handshake. Required for a local endpoint; for
    /// a tunnel endpoint, `None` means the identity the remote gateway reports for the endpoint
    /// it picked (inside the remote trust domain), as discovery gives it for mirrors.
    pub identity: Option<SpiffeId>,
    /// The service authority the caller addressed: carried in the transport header, and the
    /// `:authority` of an HTTP/1.0 request that had no `Host`.
    pub authority: Option<Authority>,
    /// Set for an endpoint in a linked cluster: `proxy` is then the local gateway's egress
    /// address, the connection runs through a tunnel, and the identity required in the inner
    /// handshake is the one the remote gateway reports for the endpoint it picked.
    pub tunnel: Option<TunnelMeta>,
}

/// The outbound end of the `mesh.h2` hop. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct MeshH2Client {
    inner: Arc<Inner>,
}

/// Why a request got no response over the hop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpHopError {
    /// No connection to the endpoint: nothing was sent.
    #[error("mesh.h2 to {proxy}: {source}")]
    Connect {
        proxy: SocketAddr,
        source: Arc<ConnectError>,
    },
    /// The request cannot be expressed on the hop (a `Host` that is not an authority, say):
    /// the caller answers `400`. Nothing was sent.
    #[error("the request cannot be carried: {0}")]
    BadRequest(#[from] OrigProtoError),
    /// A kind of request the hop does not carry (a `CONNECT` tunnel): the caller answers
    /// `501`. Nothing was sent.
    #[error("the request cannot be carried: {0}")]
    Unsupported(&'static str),
    /// The stream failed. `nothing_sent` is true only when the peer cannot have processed the
    /// request: the connection closed before it was written, the peer refused the stream
    /// (`REFUSED_STREAM`), or it went away (GOAWAY) without having taken the stream.
    #[error("mesh.h2 request to {proxy} failed: {}", chain(.source))]
    Request {
        proxy: SocketAddr,
        source: hyper::Error,
        nothing_sent: bool,
    },
    /// The peer answered an upgrade in a way the hop does not define.
    #[error("mesh.h2 to {proxy}: {reason}")]
    Protocol {
        proxy: SocketAddr,
        reason: &'static str,
    },
}

/// Why a connection to an endpoint could not be opened. Shared by every request that waited
/// for that connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error(transparent)]
    Tls(OutboundError),
    #[error(transparent)]
    Hop(HopError),
    #[error(transparent)]
    Tunnel(TunnelError),
    #[error("HTTP/2 handshake failed: {}", chain(.0))]
    Handshake(hyper::Error),
    #[error("the connection attempt was abandoned")]
    Abandoned,
    #[error("a local endpoint without an identity cannot be reached over the mesh")]
    NoIdentity,
}

/// Which connection a request may share.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct EndpointKey {
    proxy: SocketAddr,
    identity: Option<SpiffeId>,
    app_port: u16,
    /// For a tunnel: the remote cluster and service authority.
    tunnel: Option<(String, String)>,
}

struct Inner {
    tls: Arc<OutboundTls>,
    config: H2ClientConfig,
    pool: Mutex<HashMap<EndpointKey, Slot>>,
    next_id: AtomicU64,
}

type Connecting = Shared<BoxFuture<'static, Result<Conn, Arc<ConnectError>>>>;

enum Slot {
    /// Being opened by attempt `id`; requests wait on `ready`.
    Connecting {
        id: u64,
        ready: Connecting,
    },
    Ready(Conn),
}

/// An open connection: its sender, and the count of its streams (for the idle timeout).
#[derive(Clone, Debug)]
struct Conn {
    id: u64,
    send: SendRequest<Body>,
    active: ActiveStreams,
}

/// What a request needs once its response is back.
enum Pending {
    /// An ordinary request: the response goes back in the caller's `version`.
    Plain { version: Version },
    /// An HTTP/1.1 upgrade sent as an extended CONNECT.
    Upgrade { protocol: String, client: OnUpgrade },
}

/// A response body read from an upgraded stream: an application answered an upgrade request
/// with an ordinary `2xx`, which the hop carries through the CONNECT stream.
struct TunnelBody {
    // A mutex so that the body is `Sync` as `Body` requires; only `get_mut` is ever used, so it
    // is never locked.
    state: Mutex<TunnelState>,
}

enum TunnelState {
    Waiting(OnUpgrade),
    Reading(Box<TokioIo<Upgraded>>),
    Done,
}

// === impl H2ClientConfig ===

impl Default for H2ClientConfig {
    /// 1 s to connect, a PING every 10 s answered within 10 s, 60 s idle, 64 KiB of response
    /// headers, 1 h for upgraded streams.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_list_size: 64 * 1024,
            upgrade_idle_timeout: Duration::from_secs(3600),
        }
    }
}

// === impl MeshH2Client ===

impl MeshH2Client {
    /// A client with no connection yet; `tls` gives it the client config per identity.
    pub fn new(tls: Arc<OutboundTls>, config: H2ClientConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls,
                config,
                pool: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Sends `req`, as the local application sent it, to `endpoint`'s application over the
    /// endpoint's shared connection, and returns the response in the request's version.
    ///
    /// An HTTP/1.1 upgrade request that the application accepts returns `101 Switching
    /// Protocols`; once the caller's server has sent it and upgraded the client connection
    /// (hyper's `OnUpgrade`, taken from the request here), its bytes are spliced to the
    /// application's.
    pub async fn send(
        &self,
        endpoint: &MeshEndpoint,
        req: Request<Body>,
    ) -> Result<Response<Body>, HttpHopError> {
        let (mut req, pending) = prepare(endpoint, req)?;
        let key = EndpointKey {
            proxy: endpoint.proxy,
            identity: endpoint.identity.clone(),
            app_port: endpoint.app_port,
            tunnel: endpoint
                .tunnel
                .as_ref()
                .map(|t| (t.cluster.clone(), t.authority.clone())),
        };
        // Once: a request that a just-opened connection could not take either is not retried
        // again.
        let mut resent = false;
        loop {
            let (mut conn, guard) = self.inner.connection(&key, endpoint).await?;
            match conn.send.try_send_request(req).await {
                Ok(response) => return self.inner.finish(endpoint, response, pending, guard),
                Err(mut error) => {
                    let unsent = error.take_message();
                    let source = error.into_error();
                    match unsent {
                        // The connection closed before the request was written: it is dead,
                        // and the request can go on a new one.
                        Some(unsent) if !resent => {
                            tracing::debug!(proxy = %endpoint.proxy, error = %chain(&source), "mesh.h2 connection closed; reconnecting");
                            self.inner.evict(&key, conn.id);
                            req = unsent;
                            resent = true;
                        }
                        unsent => {
                            let nothing_sent = unsent.is_some() || refused_unprocessed(&source);
                            return Err(HttpHopError::Request {
                                proxy: endpoint.proxy,
                                source,
                                nothing_sent,
                            });
                        }
                    }
                }
            }
        }
    }
}

impl MeshH2Client {
    /// Connections open or being opened now: at most one per endpoint.
    pub fn connections(&self) -> usize {
        self.inner
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl fmt::Debug for MeshH2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshH2Client")
            .field("config", &self.inner.config)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

// === impl Inner ===

impl Inner {
    /// The endpoint's connection, opened (or joined while being opened) if there is none, and
    /// the request's share of it.
    async fn connection(
        self: &Arc<Self>,
        key: &EndpointKey,
        endpoint: &MeshEndpoint,
    ) -> Result<(Conn, ActiveGuard), HttpHopError> {
        let connecting = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            match pool.get(key) {
                // Counted while the pool is locked, so the idle timeout cannot close it between
                // the lookup and the request.
                Some(Slot::Ready(conn)) if !conn.send.is_closed() => {
                    return Ok((conn.clone(), conn.active.enter()));
                }
                Some(Slot::Connecting { ready, .. }) => ready.clone(),
                _ => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let ready = self.clone().open(
                        key.clone(),
                        endpoint.authority.clone(),
                        endpoint.tunnel.clone(),
                        id,
                    );
                    pool.insert(
                        key.clone(),
                        Slot::Connecting {
                            id,
                            ready: ready.clone(),
                        },
                    );
                    ready
                }
            }
        };
        match connecting.await {
            Ok(conn) => {
                let guard = conn.active.enter();
                Ok((conn, guard))
            }
            Err(source) => Err(HttpHopError::Connect {
                proxy: key.proxy,
                source,
            }),
        }
    }

    /// Starts opening a connection in its own task, so that it completes (and lands in the
    /// pool) even when the requests that wait for it are cancelled.
    fn open(
        self: Arc<Self>,
        key: EndpointKey,
        authority: Option<Authority>,
        tunnel: Option<TunnelMeta>,
        id: u64,
    ) -> Connecting {
        // Weak: the future lives in the pool, which must not keep its owner alive.
        let pool = Arc::downgrade(&self);
        let attempt = key.clone();
        let task = tokio::spawn(async move {
            let opened = self.connect(&key, authority, tunnel.as_ref(), id).await;
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let ours = matches!(pool.get(&key), Some(Slot::Connecting { id: current, .. }) if *current == id);
            match &opened {
                Ok(conn) if ours => {
                    pool.insert(key, Slot::Ready(conn.clone()));
                }
                Err(error) => {
                    tracing::debug!(proxy = %key.proxy, %error, "mesh.h2 connect failed");
                    if ours {
                        pool.remove(&key);
                    }
                }
                Ok(_) => {}
            }
            opened
        });
        async move {
            task.await.unwrap_or_else(|_| {
                // The attempt's task died without updating the pool: clear its slot, so that
                // the next request tries again instead of joining a failed attempt forever.
                if let Some(inner) = pool.upgrade() {
                    inner.forget_attempt(&attempt, id);
                }
                Err(Arc::new(ConnectError::Abandoned))
            })
        }
        .boxed()
        .shared()
    }

    /// TCP, mTLS, transport header, HTTP/2; then a task drives the connection until it ends.
    /// Through the gateway for a tunnel endpoint.
    async fn connect(
        self: &Arc<Self>,
        key: &EndpointKey,
        authority: Option<Authority>,
        tunnel: Option<&TunnelMeta>,
        id: u64,
    ) -> Result<Conn, Arc<ConnectError>> {
        let config = &self.config;
        let stream = match tunnel {
            Some(tunnel) => {
                // The remote service in its own cluster's names.
                let header = MeshTransportHeader {
                    port: key.app_port,
                    authority: Authority::parse(&tunnel.authority).ok().or(authority),
                    protocol: ProtocolHint::Http,
                };
                let (stream, _) = connect_tunnelled(
                    &self.tls,
                    self.tls.identity(),
                    tunnel,
                    key.identity.as_ref(),
                    ALPN_H2,
                    &header,
                    config.connect_timeout,
                )
                .await
                .map_err(|e| Arc::new(ConnectError::Tunnel(e)))?;
                Either::Right(stream)
            }
            None => {
                let identity = key
                    .identity
                    .as_ref()
                    .ok_or_else(|| Arc::new(ConnectError::NoIdentity))?;
                let tls = self
                    .tls
                    .config_for(identity, ALPN_H2)
                    .map_err(|e| Arc::new(ConnectError::Tls(e)))?;
                let header = MeshTransportHeader {
                    port: key.app_port,
                    authority,
                    protocol: ProtocolHint::Http,
                };
                let stream = tcp::connect_meshed_alpn(
                    key.proxy,
                    identity,
                    tls,
                    ALPN_H2,
                    &header,
                    config.connect_timeout,
                )
                .await
                .map_err(|e| Arc::new(ConnectError::Hop(e)))?;
                Either::Left(stream)
            }
        };

        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(config.keep_alive_interval)
            .keep_alive_timeout(config.keep_alive_timeout)
            .keep_alive_while_idle(true)
            .max_header_list_size(config.max_header_list_size);
        let (send, connection) = builder
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| Arc::new(ConnectError::Handshake(e)))?;

        let conn = Conn {
            id,
            send,
            active: ActiveStreams::new(),
        };
        tracing::debug!(proxy = %key.proxy, identity = ?key.identity, "mesh.h2 connection opened");
        let driver = Driver {
            inner: Arc::downgrade(self),
            key: key.clone(),
            id,
            active: conn.active.clone(),
            idle_timeout: config.idle_timeout,
        };
        tokio::spawn(driver.run(connection));
        Ok(conn)
    }

    /// Forgets connection attempt `id` of `key` if it is still the pooled one.
    fn forget_attempt(&self, key: &EndpointKey, id: u64) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(pool.get(key), Some(Slot::Connecting { id: current, .. }) if *current == id) {
            pool.remove(key);
        }
    }

    /// Forgets connection `id` of `key` if it is still the pooled one.
    fn evict(&self, key: &EndpointKey, id: u64) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(pool.get(key), Some(Slot::Ready(conn)) if conn.id == id) {
            pool.remove(key);
        }
    }

    /// The hop's response as the caller's.
    fn finish(
        &self,
        endpoint: &MeshEndpoint,
        mut response: Response<Incoming>,
        pending: Pending,
        guard: ActiveGuard,
    ) -> Result<Response<Body>, HttpHopError> {
        let (protocol, client) = match pending {
            Pending::Plain { version } => {
                let (mut parts, body) = response.into_parts();
                parts.version = version;
                let body = guard.hold_until_done(body.map_err(BoxError::from).boxed());
                return Ok(Response::from_parts(parts, body));
            }
            Pending::Upgrade { protocol, client } => (protocol, client),
        };

        let status = response.status();
        let marked = response.headers_mut().remove(UPGRADE_STATUS);
        if status != StatusCode::OK {
            // Not switched: an ordinary answer (400, 403, 426...).
            let (mut parts, body) = response.into_parts();
            parts.version = Version::HTTP_11;
            let body = guard.hold_until_done(body.map_err(BoxError::from).boxed());
            return Ok(Response::from_parts(parts, body));
        }
        let app_status = marked
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .filter(|s| *s == StatusCode::SWITCHING_PROTOCOLS || s.is_success())
            .ok_or(HttpHopError::Protocol {
                proxy: endpoint.proxy,
                reason: "the answer to an upgrade is 200 without a valid mesh-upgrade-status",
            })?;
        let hop = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        parts.version = Version::HTTP_11;
        parts.status = app_status;

        if app_status != StatusCode::SWITCHING_PROTOCOLS {
            // The application ignored the upgrade; its body comes through the tunnel.
            let body = guard.hold_until_done(Body::new(TunnelBody::new(hop)));
            return Ok(Response::from_parts(parts, body));
        }

        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(upgrade) = HeaderValue::from_str(&protocol) {
            parts.headers.insert(header::UPGRADE, upgrade);
        }
        let idle = self.config.upgrade_idle_timeout;
        let proxy = endpoint.proxy;
        tokio::spawn(async move {
            splice_upgraded(client, hop, idle, proxy).await;
            drop(guard);
        });
        Ok(Response::from_parts(parts, empty()))
    }
}

/// The request as it goes on the hop, and what its response will need.
fn prepare(
    endpoint: &MeshEndpoint,
    mut req: Request<Body>,
) -> Result<(Request<Body>, Pending), HttpHopError> {
    // Only this proxy may say what the request was at the caller.
    req.headers_mut().remove(ORIG_PROTO);
    let fallback = fallback_authority(endpoint);
    if req.method() == Method::CONNECT {
        return Err(HttpHopError::Unsupported(
            "CONNECT tunnels are not carried between proxies",
        ));
    }
    match req.version() {
        Version::HTTP_2 => {
            if req.uri().authority().is_none() {
                let authority = fallback.ok_or(OrigProtoError::NoAuthority)?;
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = http::Uri::builder()
                    .scheme("http")
                    .authority(authority)
                    .path_and_query(path)
                    .build()
                    .map_err(|_| OrigProtoError::BadTarget)?;
            }
            Ok((
                req,
                Pending::Plain {
                    version: Version::HTTP_2,
                },
            ))
        }
        Version::HTTP_10 | Version::HTTP_11 => {
            let version = req.version();
            if let Some(protocol) = orig_proto::upgrade_protocol(&req) {
                let client = hyper::upgrade::on(&mut req);
                let connect = orig_proto::h1_upgrade_to_connect(req, &protocol, fallback.as_ref())?;
                // A CONNECT's body is the upgraded stream; the GET had none to give.
                let connect = connect.map(|_| empty());
                return Ok((connect, Pending::Upgrade { protocol, client }));
            }
            let req = orig_proto::h1_to_h2(req, fallback.as_ref())?;
            Ok((req, Pending::Plain { version }))
        }
        other => Err(OrigProtoError::NotHttp1(other).into()),
    }
}

/// The `:authority` for a request that names none: the service the caller addressed, else the
/// endpoint's application address.
fn fallback_authority(endpoint: &MeshEndpoint) -> Option<http::uri::Authority> {
    let text = match &endpoint.authority {
        Some(authority) => authority.to_string(),
        None => SocketAddr::new(endpoint.proxy.ip(), endpoint.app_port).to_string(),
    };
    http::uri::Authority::try_from(text).ok()
}

/// Whether `error` proves that the peer did not process the request: it refused the stream
/// (`REFUSED_STREAM`, RFC 9113 §8.7), or it went away gracefully without taking it (a GOAWAY
/// fails only the streams above its last stream ID; streams it took fail otherwise).
fn refused_unprocessed(error: &hyper::Error) -> bool {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let reason = h2.reason();
            return h2.is_remote()
                && ((h2.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM))
                    || (h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR)));
        }
        cause = e.source();
    }
    false
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

// === impl HttpHopError ===

impl HttpHopError {
    /// True when the request certainly did not reach the endpoint's application: it may be
    /// sent again, to this endpoint or another, whatever its method.
    pub fn nothing_sent(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::BadRequest(_) | Self::Unsupported(_) => true,
            Self::Request { nothing_sent, .. } => *nothing_sent,
            Self::Protocol { .. } => false,
        }
    }

    /// The hop error inside a failure to connect (TCP, TLS, transport header).
    pub fn hop_error(&self) -> Option<&HopError> {
        match self {
            Self::Connect { source, .. } => match &**source {
                ConnectError::Hop(hop) => Some(hop),
                _ => None,
            },
            _ => None,
        }
    }
}

// === Driver ===

/// Drives one connection until it ends, and closes it once idle.
struct Driver {
    inner: Weak<Inner>,
    key: EndpointKey,
    id: u64,
    active: ActiveStreams,
    idle_timeout: Duration,
}

impl Driver {
    async fn run<F>(self, connection: F)
    where
        F: std::future::Future<Output = Result<(), hyper::Error>>,
    {
        let mut connection = std::pin::pin!(connection);
        let idle = self.active.idle_for(self.idle_timeout);
        let mut idle = std::pin::pin!(idle);
        let mut evicted = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                () = idle.as_mut(), if !evicted => {
                    // Dropping the pooled sender lets the connection end once the last request
                    // using it is done: hyper then closes it gracefully.
                    evicted = self.evict_if_idle();
                    if !evicted {
                        idle.set(self.active.idle_for(self.idle_timeout));
                    } else {
                        tracing::debug!(proxy = %self.key.proxy, "mesh.h2 connection idle: closing");
                    }
                }
            }
        };
        match result {
            Ok(()) => tracing::debug!(proxy = %self.key.proxy, "mesh.h2 connection closed"),
            Err(error) => {
                tracing::debug!(proxy = %self.key.proxy, error = %chain(&error), "mesh.h2 connection failed")
            }
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.evict(&self.key, self.id);
        }
    }

    /// Removes the connection from the pool if no request has it, under the pool's lock (which
    /// requests take to count themselves in).
    fn evict_if_idle(&self) -> bool {
        let Some(inner) = self.inner.upgrade() else {
            return true;
        };
        let mut pool = inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        if self.active.count() != 0 {
            return false;
        }
        if matches!(pool.get(&self.key), Some(Slot::Ready(conn)) if conn.id == self.id) {
            pool.remove(&self.key);
        }
        true
    }
}

// === impl TunnelBody ===

impl TunnelBody {
    fn new(hop: OnUpgrade) -> Self {
        Self {
            state: Mutex::new(TunnelState::Waiting(hop)),
        }
    }
}

impl HttpBody for TunnelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        loop {
            match state {
                TunnelState::Waiting(hop) => match ready!(Pin::new(hop).poll(cx)) {
                    Ok(io) => *state = TunnelState::Reading(Box::new(TokioIo::new(io))),
                    Err(error) => {
                        *state = TunnelState::Done;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                },
                TunnelState::Reading(io) => {
                    let mut chunk = BytesMut::zeroed(SPLICE_BUFFER_SIZE);
                    let mut buf = ReadBuf::new(&mut chunk);
                    match ready!(Pin::new(&mut **io).poll_read(cx, &mut buf)) {
                        Ok(()) if buf.filled().is_empty() => {
                            *state = TunnelState::Done;
                            return Poll::Ready(None);
                        }
                        Ok(()) => {
                            let n = buf.filled().len();
                            chunk.truncate(n);
                            return Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))));
                        }
                        Err(error) => {
                            *state = TunnelState::Done;
                            return Poll::Ready(Some(Err(error.into())));
                        }
                    }
                }
                TunnelState::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            TunnelState::Done
        )
    }
}

impl fmt::Debug for TunnelBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelBody").finish_non_exhaustive()
    }
}
