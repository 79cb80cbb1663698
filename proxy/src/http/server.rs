//! Serving HTTP/1 or HTTP/2 on one accepted connection, within limits, winding down on drain.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Body, BoxError};
use crate::drain;

/// What an HTTP server connection accepts from its client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    /// HTTP/1: how long a request head may take to arrive (slow clients cost one connection).
    pub(crate) header_read_timeout: Duration,
    /// The largest request head (HTTP/1) or header list (HTTP/2), in bytes; larger ones are
    /// answered 431 (HTTP/1) or reset (HTTP/2).
    pub(crate) max_header_bytes: usize,
}

/// Serves `service` on `io` (`http2`: prior knowledge, else HTTP/1 with upgrades) until the
/// client closes; when `watch` signals a drain, the connection finishes its requests in flight
/// and closes.
pub(crate) async fn serve_connection<I, S>(
    io: I,
    http2: bool,
    service: S,
    limits: ServerLimits,
    mut watch: drain::Watch,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let io = TokioIo::new(io);
    if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = watch.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper's floor for its read buffer.
            .max_buf_size(limits.max_header_bytes.max(8192));
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = watch.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }
}
