//! Plain HTTP that iptables redirected to the inbound port from a client outside the mesh.
//!
//! Such a client proved nothing, yet the application sees every connection come from its own
//! proxy, so it cannot tell a meshed caller from an unmeshed one by address. The proxy therefore
//! serves this traffic as HTTP rather than passing bytes through, and removes the headers only
//! the mesh may set ([`CLIENT_ID`] above all: a forged `mesh-client-id` would claim a mesh
//! identity). Requests then go to the application in their own version, upgrades (WebSocket)
//! included.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::app::AppClient;
use super::inbound::{CLIENT_ID, Failure, PROXY_ERROR};
use super::orig_proto::{ORIG_PROTO, UPGRADE_STATUS, remove_hop_by_hop};
use super::server::{ServerLimits, serve_connection};
use super::upgrade::splice_upgraded;
use super::{Body, BoxError};
use crate::drain;
use crate::metrics::{Classification, Direction, LabelValue, Labels, ProxyMetrics, TlsStatus};
use crate::tap::{RequestEvent, Tap};

/// The largest request head accepted from a client outside the mesh.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What a plaintext inbound connection needs.
#[derive(Clone, Debug)]
pub(crate) struct PlainConnection {
    pub(crate) app: AppClient,
    pub(crate) client: SocketAddr,
    pub(crate) metrics: Option<ProxyMetrics>,
    pub(crate) tap: Option<Tap>,
    /// How long the head of a request may take to arrive (HTTP/1).
    pub(crate) header_read_timeout: Duration,
    /// Upgraded streams with no byte either way for this long are closed.
    pub(crate) upgrade_idle_timeout: Duration,
}

/// Makes a message's headers fit to forward from one HTTP connection to another (RFC 9110
/// §7.6.1): the hop-by-hop ones go, except that an upgrade keeps its `Connection: upgrade` and
/// `Upgrade`, which the next hop must see (a `101` answer too).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(http::header::UPGRADE).cloned())
        .flatten();
    remove_hop_by_hop(headers);
    if let Some(upgrade) = upgrade {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        headers.insert(http::header::UPGRADE, upgrade);
    }
}

/// The headers a client outside the mesh may not set.
fn strip_mesh_headers(headers: &mut HeaderMap) {
    for name in [CLIENT_ID, ORIG_PROTO, UPGRADE_STATUS, PROXY_ERROR] {
        headers.remove(name);
    }
}

/// Serves HTTP (`http2`: prior knowledge) on `io` until the client closes, or the drain asks
/// the connection to wind down.
pub(crate) async fn serve_plain<I>(
    io: I,
    http2: bool,
    conn: PlainConnection,
    watch: drain::Watch,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let header_read_timeout = conn.header_read_timeout;
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(forward(&conn, req).await) }
    });
    let limits = ServerLimits {
        header_read_timeout,
        max_header_bytes: MAX_HEADER_BYTES,
    };
    serve_connection(io, http2, service, limits, watch).await
}

async fn forward(conn: &PlainConnection, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let wall = SystemTime::now();
    strip_mesh_headers(req.headers_mut());
    strip_hop_by_hop(req.headers_mut());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let authority = super::request_authority(&req).unwrap_or_default();
    let client_upgrade = req
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));

    let req = req.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
    let (response, error) = match conn.app.send(req).await {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client) = client_upgrade {
                    let app = hyper::upgrade::on(&mut response);
                    tokio::spawn(splice_upgraded(
                        client,
                        app,
                        conn.upgrade_idle_timeout,
                        conn.client,
                    ));
                }
            }
            strip_hop_by_hop(response.headers_mut());
            let response =
                response.map(|body| body.map_err(|e| -> BoxError { Box::new(e) }).boxed());
            (response, None)
        }
        Err(error) => {
            // The same short answer as on the meshed hop: the details stay in the log.
            let failure = Failure::app(error);
            tracing::info!(client = %conn.client, error = %failure.detail, "plaintext inbound request failed");
            (failure.response(), Some(failure.detail))
        }
    };

    let status = response.status();
    let latency = started.elapsed();
    let labels = Labels {
        authority: LabelValue::new(&authority),
        ..Labels::new(Direction::Inbound, TlsStatus::Plaintext)
    };
    if let Some(metrics) = &conn.metrics {
        metrics.request(&labels);
        metrics.response(
            &labels,
            status,
            Classification::of_http_status(status),
            latency,
        );
    }
    if let Some(tap) = conn.tap.as_ref().filter(|t| t.is_active()) {
        tap.publish(RequestEvent {
            direction: Direction::Inbound,
            method,
            authority,
            path,
            status: Some(status),
            error,
            latency,
            started: wall,
            client_id: None,
            server_id: None,
            peer: Some(conn.client),
        });
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_but_an_upgrade_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            http::HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
        headers.insert("x-hop", http::HeaderValue::from_static("1"));
        headers.insert("x-end-to-end", http::HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("connection").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get("x-hop").is_none());
        assert!(headers.get("x-end-to-end").is_some());

        let mut upgrade = HeaderMap::new();
        upgrade.insert(
            "connection",
            http::HeaderValue::from_static("Upgrade, keep-alive"),
        );
        upgrade.insert("upgrade", http::HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut upgrade);
        assert_eq!(
            upgrade.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            upgrade.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
    }

    #[test]
    fn mesh_headers_are_removed_and_others_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CLIENT_ID,
            "spiffe://west/ns/prod/sa/admin"
                .parse()
                .unwrap_or_else(|_| http::HeaderValue::from_static("x")),
        );
        headers.insert(ORIG_PROTO, http::HeaderValue::from_static("HTTP/1.1"));
        headers.insert("x-app", http::HeaderValue::from_static("kept"));
        strip_mesh_headers(&mut headers);
        assert!(headers.get(CLIENT_ID).is_none());
        assert!(headers.get(ORIG_PROTO).is_none());
        assert_eq!(
            headers.get("x-app").map(|v| v.as_bytes()),
            Some(&b"kept"[..])
        );
    }
}
