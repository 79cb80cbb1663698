//! The inbound listener: accepts connections, bounds how many are served at once, and drains.
//!
//! Each accepted connection is served by its own task (see [`connection`] for the steps), holding
//! one of `max_connections` permits for its whole life; beyond that a connection is closed at
//! once with a warning, so an overload is visible instead of a silent queue. Meshed peers get
//! the opaque splice (`mesh.opaque`) or the HTTP/2 hop (`mesh.h2`); traffic iptables redirected
//! to an application port is forwarded there. On drain the listener is dropped (the kernel
//! refuses new connections), HTTP/2 connections go away gracefully (GOAWAY, then the streams in
//! flight finish), spliced connections run to their end, and then [`serve_inbound`] returns. A
//! spliced connection ends when both sides close or at its idle timeout; a caller that cannot
//! wait that long bounds the drain itself, and dropping the [`serve_inbound`] future aborts
//! every connection it owns.

mod connection;
mod metered;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh_trust::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::splice::{SpliceError, Transferred};
use crate::detect::{Protocol, Refusal};
use crate::drain;
use crate::http::inbound::{AppClients, InboundHttpConfig};
use crate::metrics::ProxyMetrics;
use crate::orig_dst::OrigDstError;
use crate::tap::Tap;
use crate::transport_header::{MeshTransportHeader, TransportHeaderError};

/// After a failed `accept` (out of file descriptors, say), wait this long before the next one,
/// so that a persistent error does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// How the inbound side serves connections. Built with [`InboundConfig::new`], then adjusted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InboundConfig {
    /// Mesh TLS: client certificates required, ALPN `mesh.opaque` and `mesh.h2`.
    pub tls: Arc<rustls::ServerConfig>,
    /// Where the application listens: connections go to `local_app_ip:header.port`.
    pub local_app_ip: IpAddr,
    /// How long a new connection has to show what it speaks (a ClientHello, for a meshed peer).
    pub detect_timeout: Duration,
    /// From the end of detection: how long the TLS handshake and the transport header may take
    /// together. A peer that stalls in either costs only its own connection.
    pub header_timeout: Duration,
    /// How long the application has to accept a connection (spliced, or for HTTP requests).
    pub app_connect_timeout: Duration,
    /// A spliced connection (or an upgraded HTTP stream) on which no byte moves either way for
    /// this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once, in any phase; more are closed at once.
    pub max_connections: usize,
    /// Ports a transport header may never name: the proxy's own listeners. A meshed peer must not
    /// reach the admin server (which trusts loopback clients), the tap, or the outbound side (which
    /// would send its traffic on under this workload's identity). The inbound listener's own port
    /// is always refused as well. Add every explicit outbound listener's port here.
    pub denied_ports: BTreeSet<u16>,
    /// How `mesh.h2` connections are served: stream and header limits, keep-alive, idle and
    /// response timeouts.
    pub http: InboundHttpConfig,
    /// Told about every connection: for tests and diagnostics.
    pub events: Option<EventHook>,
    /// Application ports whose redirected connections are forwarded as opaque TCP at once,
    /// without protocol detection (server-speaks-first protocols).
    pub opaque_ports: BTreeSet<u16>,
    /// Where connections and requests are counted; `None` counts nothing. Connections count
    /// with `tls="true"` and the caller's identity when meshed, `tls="false"` when forwarded
    /// from an iptables redirect.
    pub metrics: Option<ProxyMetrics>,
    /// Where finished requests are published for `mesh tap`; `None` publishes nothing.
    pub tap: Option<Tap>,
}

/// A callback told about inbound connections. It runs on the connection's task, so it must be
/// quick and must not block.
#[derive(Clone)]
pub struct EventHook(Arc<dyn Fn(InboundEvent) + Send + Sync>);

/// What happened to an inbound connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum InboundEvent {
    /// Closed on accept: `limit` connections were already being served.
    Overloaded { client: SocketAddr, limit: usize },
    /// The peer proved `peer` and sent its header; the connection is spliced to `app`
    /// (`mesh.opaque`) or its requests go to `app` (`mesh.h2`).
    Opened {
        client: SocketAddr,
        peer: SpiffeId,
        header: MeshTransportHeader,
        app: SocketAddr,
    },
    /// A connection iptables redirected on its way to `original` (not meshed) is spliced to
    /// `app`, the application at the same port.
    Forwarded {
        client: SocketAddr,
        original: SocketAddr,
        app: SocketAddr,
    },
    /// The connection is over: `Ok` with the bytes moved (read from the client as `a_to_b`,
    /// written to it as `b_to_a`) when it ended cleanly, else why it was closed. `peer` is known
    /// once the handshake is done (never, for a forwarded connection).
    Closed {
        client: SocketAddr,
        peer: Option<SpiffeId>,
        result: Result<Transferred, InboundError>,
    },
}

/// Why an inbound connection was closed. Each is about that one connection only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboundError {
    /// Not a ClientHello offering a mesh ALPN, and not redirected by iptables either (the
    /// client dialled the inbound port itself): there is no application port to forward it to.
    /// `sent` is how many bytes detection saw.
    #[error(
        "not meshed ({protocol:?} in {sent} bytes) and not redirected: no original destination to forward it to"
    )]
    NotMeshed { protocol: Protocol, sent: usize },
    /// Not meshed, and the kernel could not say where it was going.
    #[error("not meshed, and its original destination is unknown: {0}")]
    OriginalDestination(OrigDstError),
    #[error("protocol detection refused the connection: {0}")]
    Refused(Refusal),
    #[error("reading the first bytes failed: {0}")]
    Detect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// Cannot happen with a config that requires client certificates; refused all the same.
    #[error("the peer presented no SPIFFE identity")]
    NoPeerIdentity,
    #[error("negotiated ALPN {0:?} is not a mesh protocol")]
    Alpn(Option<Vec<u8>>),
    #[error("no transport header within {0:?}")]
    HeaderTimeout(Duration),
    #[error("reading the transport header failed: {0}")]
    ReadHeader(std::io::Error),
    #[error("bad transport header: {0}")]
    TransportHeader(#[from] TransportHeaderError),
    /// The header (or a redirected connection's original destination) names one of the proxy's
    /// own ports, or the listener's address is unknown: connecting would reach into the proxy
    /// itself, e.g. its admin server, as a loopback client.
    #[error("target port {port} is one of the proxy's own ports; refused")]
    Loop { port: u16 },
    #[error("connecting to the application at {addr} failed: {source}")]
    AppConnect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the application at {addr} did not accept within {timeout:?}")]
    AppConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("splice: {0}")]
    Splice(#[from] SpliceError),
    /// The `mesh.h2` connection failed as a whole (a protocol error, a peer that stopped
    /// answering PINGs, a reset socket). Failed requests on it do not end up here: each is
    /// answered on its own stream.
    #[error("mesh.h2 connection: {}", crate::http::error_chain::chain(.0))]
    Http2(hyper::Error),
    /// Plain HTTP from a client outside the mesh, served on its way to the application.
    #[error("plaintext HTTP connection: {}", crate::http::error_chain::chain(.0))]
    PlainHttp(hyper::Error),
}

/// Serves inbound connections from `listener` (meshed peers, and traffic iptables redirected)
/// until `watch` signals a drain, then waits for the connections in flight to end and returns.
pub async fn serve_inbound(listener: TcpListener, config: InboundConfig, mut watch: drain::Watch) {
    let apps = AppClients::new(
        config.local_app_ip,
        config.app_connect_timeout,
        &config.http,
    );
    let mut connections = Connections {
        local: listener.local_addr().ok(),
        apps: Arc::new(apps),
        permits: Arc::new(Semaphore::new(config.max_connections)),
        config: Arc::new(config),
        tasks: JoinSet::new(),
    };
    loop {
        tokio::select! {
            // Checked first, so that no connection is accepted once the drain has begun.
            biased;
            () = watch.signaled() => break,
            // Reaped as they end, so that the set holds only live connections.
            Some(done) = connections.tasks.join_next(), if !connections.tasks.is_empty() => {
                report_panic(done);
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, client)) => connections.admit(tcp, client, &watch),
                Err(error) => {
                    tracing::warn!(%error, "inbound accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    tracing::debug!(
        in_flight = connections.tasks.len(),
        "inbound draining: listener closed"
    );
    while let Some(done) = connections.tasks.join_next().await {
        report_panic(done);
    }
    tracing::debug!("inbound drained");
}

/// The connections a listener serves: one task each, within the permits.
struct Connections {
    config: Arc<InboundConfig>,
    /// The listener's own address, which a transport header must not name.
    local: Option<SocketAddr>,
    /// Clients towards the application's HTTP ports, pooled across connections.
    apps: Arc<AppClients>,
    permits: Arc<Semaphore>,
    /// Dropping the set aborts every task in it.
    tasks: JoinSet<()>,
}

// === impl Connections ===

impl Connections {
    /// Spawns a task for a new connection, or closes it at once when every permit is taken.
    fn admit(&mut self, tcp: TcpStream, client: SocketAddr, watch: &drain::Watch) {
        let limit = self.config.max_connections;
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(%client, limit, "inbound connection refused: too many connections");
            drop(tcp);
            self.config.emit(InboundEvent::Overloaded { client, limit });
            return;
        };
        let config = self.config.clone();
        let local = self.local;
        let apps = self.apps.clone();
        let watch = watch.clone();
        let retain = watch.retain();
        let serve = async move {
            let shared = connection::Shared {
                config: &config,
                local,
                apps: &apps,
            };
            let (peer, result) = connection::serve(tcp, client, shared, watch).await;
            // Released before the event, so that whoever sees `Closed` can connect again within
            // the limit.
            drop(permit);
            config.emit(InboundEvent::Closed {
                client,
                peer,
                result,
            });
            drop(retain);
        };
        self.tasks
            .spawn(serve.instrument(tracing::debug_span!("inbound", %client)));
    }
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(%error, "inbound connection task panicked");
        }
    }
}

// === impl InboundConfig ===

impl InboundConfig {
    /// A config with the defaults: the application on 127.0.0.1, 10 s to detect, 10 s for the
    /// handshake and header, 1 s to reach the application, 1 h idle, 10 000 connections, and
    /// [`InboundHttpConfig::default`] for HTTP.
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tls,
            local_app_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            detect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            app_connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 10_000,
            http: InboundHttpConfig::default(),
            denied_ports: BTreeSet::from([
                mesh_api::ports::PROXY_OUTBOUND,
                mesh_api::ports::PROXY_INBOUND,
                mesh_api::ports::PROXY_TAP,
                mesh_api::ports::ADMIN,
            ]),
            events: None,
            opaque_ports: crate::outbound::DEFAULT_OPAQUE_PORTS.into_iter().collect(),
            metrics: None,
            tap: None,
        }
    }

    fn emit(&self, event: InboundEvent) {
        if let Some(hook) = &self.events {
            (hook.0)(event);
        }
    }
}

// === impl EventHook ===

impl EventHook {
    pub fn new(hook: impl Fn(InboundEvent) + Send + Sync + 'static) -> Self {
        Self(Arc::new(hook))
    }
}

impl fmt::Debug for EventHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventHook")
    }
}
