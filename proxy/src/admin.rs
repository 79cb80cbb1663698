//! The admin server (port 4191 by default): `/metrics` for Prometheus, `/live` and `/ready` for
//! the kubelet's probes, and `POST /shutdown` for a local operator or a preStop hook.
//!
//! The admin port bypasses the inbound redirect, so anything that can reach the pod can reach it.
//! It is therefore bounded like any other listener facing the network: at most
//! [`AdminConfig::max_connections`] connections at once, and a client must send its request
//! headers within [`AdminConfig::header_read_timeout`] (which also closes idle keep-alive
//! connections), so a slowloris costs one connection slot for one timeout. It speaks HTTP/1 only:
//! probes and scrapers do, and HTTP/2 would bring stream limits and keep-alive pings to bound too.
//! `/shutdown` is honoured only from a loopback peer ([`shutdown_allowed`]); from anywhere else
//! it would let any pod in the cluster stop this one.
//!
//! On drain, [`serve`] stops accepting, lets every in-flight request finish (hyper's graceful
//! shutdown closes each connection after its current response), and returns once all are done.
//!
//! The same server runs in the gateway and the controller: [`AdminState::for_metrics`] takes any
//! OpenMetrics encoder and no shutdown endpoint, and [`AdminState::with_page`] adds read-only
//! text pages (the gateway's `/links`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::drain;
use crate::metrics::ProxyMetrics;

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// How long to back off when accepting fails for lack of resources (file descriptors, memory),
/// rather than spinning on an error that will repeat until something is freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits for the admin server.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, on a new or a kept-alive connection.
    pub header_read_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether the proxy is ready for traffic: set by the binary once its listeners are up and its
/// identity is loaded (and cleared again if it loses either). Starts not ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

/// The admin server's side of a shutdown request: `POST /shutdown` pulls it.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(mpsc::Sender<()>);

/// The binary's side of a shutdown request: it waits on this (beside its signal handlers) and
/// then drains.
#[derive(Debug)]
pub struct ShutdownRequests(mpsc::Receiver<()>);

/// Produces a page's body at each request.
pub type PageFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the admin endpoints read or act on.
#[derive(Clone)]
pub struct AdminState {
    metrics: PageFn,
    readiness: Readiness,
    shutdown: Option<ShutdownTrigger>,
    pages: Vec<(&'static str, PageFn)>,
    config: AdminConfig,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("readiness", &self.readiness)
            .field("shutdown", &self.shutdown.is_some())
            .field(
                "pages",
                &self.pages.iter().map(|(path, _)| *path).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether `POST /shutdown` from `peer` is honoured: only from this host's loopback, including
/// an IPv4-mapped one (`::ffff:127.0.0.1`, as seen on a dual-stack listener).
pub fn shutdown_allowed(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// A connected shutdown trigger and the receiver the binary waits on.
pub fn shutdown_channel() -> (ShutdownTrigger, ShutdownRequests) {
    // One slot is enough: a second request while one is pending changes nothing.
    let (tx, rx) = mpsc::channel(1);
    (ShutdownTrigger(tx), ShutdownRequests(rx))
}

/// Serves the admin endpoints on `listener` until `watch` signals a drain, then stops accepting
/// and returns once every open connection has finished its in-flight request.
///
/// Errors only if the listener itself fails (not for errors on one connection, nor for running
/// out of file descriptors, which it waits out).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut watch: drain::Watch,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut conns = JoinSet::new();
    let result = loop {
        let accepted = tokio::select! {
            biased;
            () = watch.signaled() => break Ok(()),
            accepted = accept(&listener, &slots) => accepted,
        };
        // Reap finished connections so the set holds only live ones.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer, slot)) => {
                conns.spawn(serve_conn(stream, peer, state.clone(), watch.clone(), slot));
            }
            Err(error) if is_per_connection(&error) => {
                tracing::debug!(%error, "admin: a connection failed before it was accepted");
            }
            Err(error) if is_resource_exhaustion(&error) => {
                tracing::warn!(%error, "admin: cannot accept connections; backing off");
                tokio::select! {
                    () = watch.signaled() => break Ok(()),
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
            Err(error) => {
                let addr = listener.local_addr().ok();
                break Err(std::io::Error::new(
                    error.kind(),
                    format!("admin listener {addr:?} failed to accept: {error}"),
                ));
            }
        }
    };
    // Refuse new connections at once rather than leaving them in the backlog until exit.
    drop(listener);
    while let Some(joined) = conns.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "admin: a connection task failed");
        }
    }
    result
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>)> {
    // Only a closed semaphore fails to give a permit, and this one is never closed.
    let slot = Arc::clone(slots).acquire_owned().await.ok();
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

/// Errors that concern one would-be connection, not the listener.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Errors that clear once other connections close: EMFILE, ENFILE, ENOBUFS, ENOMEM.
fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
            .iter()
            .any(|errno| *errno as i32 == code)
    })
}

/// Serves one connection until the client closes it, the header timeout fires, or a drain lets
/// its in-flight request finish. Holds `watch` and `_slot` until then.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    state: AdminState,
    mut watch: drain::Watch,
    _slot: Option<OwnedSemaphorePermit>,
) {
    let header_read_timeout = state.config.header_read_timeout;
    let service = service_fn(move |req| {
        let rsp = respond(&state, peer, &req);
        std::future::ready(Ok::<_, Infallible>(rsp))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        // Timeouts and resets by clients are routine here; nothing for an operator to do.
        tracing::debug!(%peer, %error, "admin connection ended with an error");
    }
}

/// Routes one request. Never reads the request body: no endpoint takes one.
fn respond<B>(state: &AdminState, peer: SocketAddr, req: &Request<B>) -> Response<Full<Bytes>> {
    let method = req.method();
    let read_only = method == Method::GET || method == Method::HEAD;
    match req.uri().path() {
        "/metrics" if read_only => {
            reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, (state.metrics)())
        }
        "/live" if read_only => text(StatusCode::OK, "live\n"),
        "/ready" if read_only => {
            if state.readiness.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" | "/live" | "/ready" => not_allowed("GET, HEAD"),
        "/shutdown" if state.shutdown.is_some() && method == Method::POST => shutdown(state, peer),
        "/shutdown" if state.shutdown.is_some() => not_allowed("POST"),
        path => match state.pages.iter().find(|(page, _)| *page == path) {
            Some((_, page)) if read_only => reply(StatusCode::OK, TEXT_CONTENT_TYPE, page()),
            Some(_) => not_allowed("GET, HEAD"),
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT_CONTENT_TYPE,
                format!("not found: the admin server serves {}\n", state.served()),
            ),
        },
    }
}

fn shutdown(state: &AdminState, peer: SocketAddr) -> Response<Full<Bytes>> {
    if !shutdown_allowed(peer) {
        tracing::warn!(%peer, "admin: refused a shutdown request from a non-loopback peer");
        return reply(
            StatusCode::FORBIDDEN,
            TEXT_CONTENT_TYPE,
            format!(
                "shutdown is only accepted from a loopback address, and this request came from \
                 {}\n",
                peer.ip()
            ),
        );
    }
    if state
        .shutdown
        .as_ref()
        .is_some_and(ShutdownTrigger::trigger)
    {
        tracing::info!(%peer, "admin: shutdown requested");
        text(StatusCode::ACCEPTED, "shutting down\n")
    } else {
        tracing::error!("admin: shutdown requested, but nothing is waiting for the request");
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "shutdown is not available: the process is not listening for shutdown requests\n",
        )
    }
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: see the Allow header\n",
    );
    rsp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    rsp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, TEXT_CONTENT_TYPE, body)
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    rsp
}

// === impl AdminState ===

impl AdminState {
    /// The proxy's admin server: its metrics, readiness and `POST /shutdown`.
    pub fn new(metrics: ProxyMetrics, readiness: Readiness, shutdown: ShutdownTrigger) -> Self {
        let mut state = Self::for_metrics(move || metrics.encode(), readiness);
        state.shutdown = Some(shutdown);
        state
    }

    /// An admin server for any process: `/metrics` from `encode`, `/live`, `/ready` from
    /// `readiness`, and no shutdown endpoint.
    pub fn for_metrics(
        encode: impl Fn() -> String + Send + Sync + 'static,
        readiness: Readiness,
    ) -> Self {
        Self {
            metrics: Arc::new(encode),
            readiness,
            shutdown: None,
            pages: Vec::new(),
            config: AdminConfig::default(),
        }
    }

    /// Adds a read-only text page at `path` (GET and HEAD).
    pub fn with_page(
        mut self,
        path: &'static str,
        page: impl Fn() -> String + Send + Sync + 'static,
    ) -> Self {
        self.pages.push((path, Arc::new(page)));
        self
    }

    /// The paths served, for a 404's hint.
    fn served(&self) -> String {
        let mut paths = vec!["/metrics", "/live", "/ready"];
        paths.extend(self.pages.iter().map(|(path, _)| *path));
        let mut served = paths.join(", ");
        if self.shutdown.is_some() {
            served.push_str(" and POST /shutdown");
        }
        served
    }

    pub fn with_config(mut self, config: AdminConfig) -> Self {
        self.config = config;
        self
    }
}

// === impl Readiness ===

impl Readiness {
    /// Not ready, until [`Readiness::set_ready`].
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

// === impl ShutdownTrigger ===

impl ShutdownTrigger {
    /// Asks for a shutdown. False only if nothing is listening for the request any more.
    pub fn trigger(&self) -> bool {
        match self.0.try_send(()) {
            // Full: a request is already pending, which is as good as this one.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => true,
            Err(mpsc::error::TrySendError::Closed(())) => false,
        }
    }
}

// === impl ShutdownRequests ===

impl ShutdownRequests {
    /// Resolves when a shutdown has been requested. If every trigger is dropped without asking
    /// (the admin server is gone), it never resolves: that is no reason to stop the proxy.
    pub async fn requested(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn state() -> (AdminState, ShutdownRequests) {
        let (trigger, requests) = shutdown_channel();
        let state = AdminState::new(ProxyMetrics::default(), Readiness::new(), trigger);
        (state, requests)
    }

    fn call(state: &AdminState, peer: &str, method: Method, path: &str) -> Response<Full<Bytes>> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        respond(state, peer.parse().unwrap(), &req)
    }

    #[test]
    fn shutdown_is_allowed_only_from_loopback() {
        let allowed = |ip: &str| shutdown_allowed(SocketAddr::new(ip.parse().unwrap(), 4191));
        assert!(allowed("127.0.0.1"));
        assert!(allowed("127.1.2.3"));
        assert!(allowed("::1"));
        assert!(allowed("::ffff:127.0.0.1"));
        assert!(!allowed("10.0.0.1"));
        assert!(!allowed("::ffff:10.0.0.1"));
        assert!(!allowed("0.0.0.0"));
        assert!(!allowed("fe80::1"));
        assert!(shutdown_allowed((Ipv4Addr::LOCALHOST, 1).into()));
        assert!(shutdown_allowed((Ipv6Addr::LOCALHOST, 1).into()));
    }

    #[tokio::test]
    async fn a_remote_shutdown_is_refused_and_says_why() {
        let (state, mut requests) = state();
        let rsp = call(&state, "10.0.0.1:50000", Method::POST, "/shutdown");
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(
            body.contains("only accepted from a loopback address"),
            "{body}"
        );
        assert!(body.contains("10.0.0.1"), "{body}");
        // And nothing was asked of the binary.
        let waited = tokio::time::timeout(Duration::from_millis(10), requests.requested()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn a_local_shutdown_reaches_the_binary() {
        let (state, mut requests) = state();
        let rsp = call(
            &state,
            "[::ffff:127.0.0.1]:50000",
            Method::POST,
            "/shutdown",
        );
        assert_eq!(rsp.status(), StatusCode::ACCEPTED);
        // A second request while the first is pending is accepted too.
        let again = call(&state, "[::1]:50000", Method::POST, "/shutdown");
        assert_eq!(again.status(), StatusCode::ACCEPTED);
        requests.requested().await;
    }

    #[test]
    fn a_shutdown_nobody_listens_for_is_an_error() {
        let (state, requests) = state();
        drop(requests);
        let rsp = call(&state, "127.0.0.1:1", Method::POST, "/shutdown");
        assert_eq!(rsp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn routes_methods_and_readiness() {
        let (state, _requests) = state();
        let local = "127.0.0.1:1";
        assert_eq!(
            call(&state, local, Method::GET, "/live").status(),
            StatusCode::OK
        );
        assert_eq!(
            call(&state, local, Method::HEAD, "/live").status(),
            StatusCode::OK
        );
        assert_eq!(
            call(&state, local, Method::GET, "/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.readiness.set_ready(true);
        assert_eq!(
            call(&state, local, Method::GET, "/ready").status(),
            StatusCode::OK
        );
        let metrics = call(&state, local, Method::GET, "/metrics");
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        assert_eq!(
            call(&state, local, Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        let post = call(&state, local, Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let get = call(&state, local, Method::GET, "/shutdown");
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(get.headers()[header::ALLOW], "POST");
    }
}
