//! HTTP on the data path: the `mesh.h2` hop between proxies, and the application's side of it.
//!
//! - [`client`]: the outbound end of the hop: one pooled, multiplexed HTTP/2 connection per
//!   endpoint, over mTLS with ALPN `mesh.h2`; HTTP/1 requests ride on it as HTTP/2 and say which
//!   version they were, `Upgrade` requests (WebSocket) ride as extended CONNECT streams.
//! - [`inbound`]: the inbound end: serves a `mesh.h2` connection and turns each request back into
//!   what the caller sent (HTTP/1.x with its Host, or HTTP/2) towards the local application.
//! - [`app`]: a client that sends requests to one fixed address in their own protocol version,
//!   pooled; used towards the local application and towards endpoints without an identity.
//! - [`orig_proto`]: the header conventions that carry an HTTP/1 request's version across the hop.
//!
//! Headers the hop defines: `mesh-orig-proto` (an HTTP/1 request's version, on the hop only),
//! `mesh-upgrade-status` (the application's status behind an upgrade's CONNECT, on the hop
//! only), `mesh-client-id` (the caller's SPIFFE ID, set by the inbound side for the application)
//! and `mesh-proxy-error` (on answers the proxy made itself).

pub(crate) mod active;
pub mod app;
pub mod client;
pub(crate) mod error_chain;
pub mod inbound;
pub mod orig_proto;
pub(crate) mod plain;
pub(crate) mod server;
pub(crate) mod upgrade;

pub use self::app::{AppClient, AppClientConfig, AppError};
pub use self::client::{H2ClientConfig, HttpHopError, MeshEndpoint, MeshH2Client};
pub use self::inbound::{CLIENT_ID, InboundHttpConfig, PROXY_ERROR};

use bytes::Bytes;

/// Errors inside bodies and services on the HTTP path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the proxy moves requests and responses in.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A response the proxy makes itself: `status`, `reason` as a one-line text body, and `reason`
/// in [`PROXY_ERROR`] so that callers (and the next proxy) can tell it from the application's.
/// Control characters (from an authority, say) cannot go in a header value; the header is
/// informational, so they are dropped from it rather than failing the response.
pub(crate) fn proxy_error_response(status: http::StatusCode, reason: &str) -> http::Response<Body> {
    use http_body_util::BodyExt;

    let mut response = http::Response::new(
        http_body_util::Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let printable: String = reason.chars().filter(|c| !c.is_control()).collect();
    if let Ok(value) = http::HeaderValue::from_str(&printable) {
        headers.insert(PROXY_ERROR, value);
    }
    response
}

/// The authority a request names: its URI's (HTTP/2, absolute-form) or its Host header.
pub(crate) fn request_authority<B>(req: &http::Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
}
