//! The gateway's admin server (port 4191 by default): `/metrics` for Prometheus, `/live` and
//! `/ready` for the kubelet, and `/links`, one line per linked cluster with the state of the QUIC
//! connection this gateway holds to it (connected, remote address, RTT, lost packets); open
//! streams and bytes per link are in `/metrics`.
//!
//! HTTP/1 only, at most [`MAX_CONNECTIONS`] connections at once, and a client must send its
//! headers within [`HEADER_READ_TIMEOUT`]: the port faces the pod network like any other. It
//! takes no request bodies and has no endpoint that changes anything.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::links::LinkTable;
use crate::metrics::GatewayMetrics;

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the admin server shows.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    pub(crate) metrics: GatewayMetrics,
    pub(crate) links: Arc<LinkTable>,
    /// True until draining starts.
    pub(crate) ready: Arc<AtomicBool>,
}

/// Serves until `stop` resolves; connections in progress finish their current request.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop = std::pin::pin!(stop);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                std::future::ready(Ok::<_, Infallible>(respond(&state, &request)))
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "admin connection ended with an error");
            }
        });
    }
}

fn respond<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET or HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, state.metrics.encode()),
        "/live" => reply(StatusCode::OK, TEXT, "live\n"),
        "/ready" if !state.ready.load(Ordering::Relaxed) => {
            reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n")
        }
        "/ready" => reply(StatusCode::OK, TEXT, "ready\n"),
        "/links" => reply(
            StatusCode::OK,
            TEXT,
            links_view(&state.links, &state.metrics),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: the admin server serves /metrics, /live, /ready and /links\n",
        ),
    }
}

/// One line per linked cluster: its connection, then its tunnels open now and the bytes
/// finished tunnels carried each way.
fn links_view(links: &LinkTable, metrics: &GatewayMetrics) -> String {
    let mut text = String::new();
    for link in links.view() {
        let traffic = metrics.link_traffic(&link.cluster);
        let _ = match link.connection {
            Some(c) => write!(
                text,
                "{} connected remote={} rtt_ms={} lost_packets={}",
                link.cluster,
                c.remote,
                c.rtt.as_millis(),
                c.lost_packets,
            ),
            None => write!(text, "{} disconnected", link.cluster),
        };
        let _ = writeln!(
            text,
            " open_streams={} bytes_to_remote={} bytes_from_remote={}",
            traffic.open_streams, traffic.bytes_to_remote, traffic.bytes_from_remote
        );
    }
    text
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
