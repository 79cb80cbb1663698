//! The tap port: the [`TapService`] over plain-text HTTP/2 on one listener, until drain.
//!
//! Bounds, as for any listener: at most [`TapServerConfig::max_connections`] connections (further
//! clients wait in the listen backlog), at most [`TapServerConfig::max_watchers`] `Observe`
//! streams over all of them, and HTTP/2 keep-alive pings so that a watcher that vanished without
//! closing its connection (a killed `kubectl port-forward`) gives its slot back.
//!
//! On drain the server stops accepting, ends every observation with `UNAVAILABLE`, and waits for
//! the connections to close. A watcher that stopped reading cannot be sent even that, so the wait
//! is bounded by [`TapServerConfig::drain_grace`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::{Tap, TapService};
use crate::drain;

/// Where the proxy binary serves the tap unless told otherwise: loopback only (see the
/// [module documentation](super)).
pub const DEFAULT_TAP_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), mesh_api::ports::PROXY_TAP);

/// How long to back off when accepting fails for lack of resources (file descriptors, memory),
/// rather than spinning on an error that repeats until something is freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits for the tap server.
#[derive(Clone, Debug)]
pub struct TapServerConfig {
    /// `Observe` streams served at once; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_watchers: usize,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How often an HTTP/2 ping checks that a client is still there.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a drain waits for watchers' connections to close before leaving them behind.
    pub drain_grace: Duration,
}

impl Default for TapServerConfig {
    fn default() -> Self {
        Self {
            max_watchers: 16,
            max_connections: 64,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            drain_grace: Duration::from_secs(5),
        }
    }
}

/// Serves the tap on `listener` until `watch` signals a drain, then returns once every
/// connection has closed or [`TapServerConfig::drain_grace`] has passed.
///
/// Failures are per connection and logged; the server itself does not fail.
pub async fn serve(
    listener: TcpListener,
    tap: Tap,
    config: TapServerConfig,
    mut watch: drain::Watch,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "tap: serving");
    let (stop, stopping) = watch::channel(false);
    let service = TapService::new(tap, config.max_watchers).stop_on(stopping);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut signal = watch.clone();
    let shutdown = async {
        signal.signaled().await;
        stop.send_replace(true);
    };
    let server = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming(listener, slots), shutdown);
    let grace_over = async {
        watch.signaled().await;
        tokio::time::sleep(config.drain_grace).await;
    };
    tokio::select! {
        result = server => {
            if let Err(error) = result {
                tracing::warn!(%error, "tap: server failed");
            }
        }
        () = grace_over => {
            tracing::warn!(
                grace = ?config.drain_grace,
                "tap: watchers still connected after the drain grace period; leaving them",
            );
        }
    }
    tracing::info!(addr = ?local, "tap: stopped");
}

/// The accepted connections, each holding one of `slots` until it closes.
fn incoming(
    listener: TcpListener,
    slots: Arc<Semaphore>,
) -> impl Stream<Item = Result<Accepted, io::Error>> {
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        let accepted = accept(&listener, &slots).await?;
        Some((Ok(accepted), (listener, slots)))
    })
}

/// Waits for a slot, then for a connection. Errors are waited out, never returned: they belong
/// to one connection or to a shortage that passes. `None` only if the slots were closed.
async fn accept(listener: &TcpListener, slots: &Arc<Semaphore>) -> Option<Accepted> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // gRPC messages are small and latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                return Some(Accepted {
                    stream,
                    _slot: slot,
                });
            }
            Err(error) if is_per_connection(&error) => {
                tracing::debug!(%error, "tap: a connection failed before it was accepted");
            }
            Err(error) => {
                tracing::warn!(%error, "tap: cannot accept connections; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// An accepted connection and its slot, given back when the connection is dropped.
struct Accepted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
