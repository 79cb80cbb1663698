//! Binding the gateway's ports and running it until shutdown.
//!
//! [`Gateway::bind`] binds the QUIC endpoint and the egress listener (so a test or a supervisor
//! knows the ports before traffic flows), [`Gateway::run`] serves both until the shutdown future
//! resolves, then stops accepting, lets open tunnels finish up to the drain deadline, closes
//! every QUIC connection with code 0 and waits for the endpoint to go idle.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proxy::drain;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::config::{GatewayConfig, Transport};
use crate::egress;
use crate::ingress::Ingress;
use crate::links::LinkTable;
use crate::quic::{self, QuicConfigError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The QUIC settings could not be built.
    #[error(transparent)]
    Quic(#[from] QuicConfigError),
    /// The egress TLS configuration could not be built.
    #[error("cannot build the egress TLS configuration: {0}")]
    EgressTls(#[from] mesh_trust::tls::TlsError),
    /// The QUIC port could not be bound.
    #[error("cannot bind the QUIC port {addr}/udp: {source}")]
    QuicBind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The admin port could not be bound.
    #[error("cannot bind the admin port {addr}/tcp: {source}")]
    AdminBind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The egress port could not be bound.
    #[error("cannot bind the egress port {addr}/tcp: {source}")]
    EgressBind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A gateway with its ports bound, ready to run.
pub struct Gateway {
    config: GatewayConfig,
    link_port: LinkPort,
    egress: TcpListener,
    admin: Option<TcpListener>,
    acceptor: TlsAcceptor,
    quic_addr: SocketAddr,
    egress_addr: SocketAddr,
}

/// The port linked gateways connect to.
enum LinkPort {
    Quic(quinn::Endpoint),
    Tcp(TcpListener, TlsAcceptor),
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cluster", &self.config.cluster)
            .field("quic_addr", &self.quic_addr)
            .field("egress_addr", &self.egress_addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Binds the link port (`config.quic_addr`: UDP for QUIC, TCP in TCP mode), the egress port
    /// (`config.egress_addr`, TCP) and the admin port if any.
    ///
    /// # Errors
    ///
    /// A [`BindError`] naming the port or the configuration at fault.
    pub async fn bind(config: GatewayConfig) -> Result<Self, BindError> {
        let acceptor = TlsAcceptor::from(Arc::new(egress::tls_config(&config)?));
        let link_bind_error = |source| BindError::QuicBind {
            addr: config.quic_addr,
            source,
        };
        let (link_port, quic_addr) = match config.transport {
            Transport::Quic => {
                let server = quic::server_config(
                    config.bundles.clone(),
                    config.certs.clone(),
                    config.timeouts.quic_idle,
                    config.max_streams_per_connection,
                )?;
                let endpoint =
                    quinn::Endpoint::server(server, config.quic_addr).map_err(link_bind_error)?;
                let addr = endpoint.local_addr().map_err(link_bind_error)?;
                (LinkPort::Quic(endpoint), addr)
            }
            Transport::Tcp => {
                // Any domain's chain at the TLS layer; the peer must then be a linked gateway,
                // checked against the live link list as on the QUIC port.
                let tls = mesh_trust::tls::server_config(
                    config.bundles.clone(),
                    mesh_trust::PeerPolicy::AnyDomain,
                    config.certs.clone(),
                    &[mesh_api::ports::ALPN_GATEWAY],
                )?;
                let listener = TcpListener::bind(config.quic_addr)
                    .await
                    .map_err(link_bind_error)?;
                let addr = listener.local_addr().map_err(link_bind_error)?;
                (
                    LinkPort::Tcp(listener, TlsAcceptor::from(Arc::new(tls))),
                    addr,
                )
            }
        };
        let egress = TcpListener::bind(config.egress_addr)
            .await
            .map_err(|source| BindError::EgressBind {
                addr: config.egress_addr,
                source,
            })?;
        let egress_addr = egress
            .local_addr()
            .map_err(|source| BindError::EgressBind {
                addr: config.egress_addr,
                source,
            })?;
        let admin = match config.admin_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| BindError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            link_port,
            egress,
            admin,
            acceptor,
            quic_addr,
            egress_addr,
        })
    }

    /// The bound link port address (UDP for QUIC, TCP in TCP mode).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The gateway's metrics, for an admin server's `/metrics`.
    pub fn metrics(&self) -> &crate::metrics::GatewayMetrics {
        &self.config.metrics
    }

    /// The bound egress address.
    pub fn egress_addr(&self) -> SocketAddr {
        self.egress_addr
    }

    /// The bound admin address, when there is an admin port.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// Serves both ports until `shutdown` resolves, then drains (see the module doc).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            link_port,
            egress,
            admin,
            acceptor,
            ..
        } = self;
        let timeouts = config.timeouts;
        // Sent when the drain deadline passes: tunnels still running then are cut.
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let endpoint = match &link_port {
            LinkPort::Quic(endpoint) => Some(endpoint.clone()),
            LinkPort::Tcp(..) => None,
        };
        let links: Arc<LinkTable> = Arc::new(LinkTable::new(
            endpoint.clone(),
            config.transport,
            config.links.clone(),
            config.bundles.clone(),
            config.certs.clone(),
            timeouts.connect,
            timeouts.quic_idle,
            config.reconnect,
            config.metrics.clone(),
        ));
        let ingress = Arc::new(Ingress::new(&config, cut_rx.clone()));
        let (drain, watch) = drain::channel();
        // The admin server answers through the drain (`/ready` turns 503) and stops last.
        let (admin_drain, admin_watch) = drain::channel();
        let ready = mesh_proxy::admin::Readiness::new();
        ready.set_ready(true);
        let admin = admin.map(|listener| {
            let state = admin::state(config.metrics.clone(), links.clone(), ready.clone());
            tokio::spawn(mesh_proxy::admin::serve(listener, state, admin_watch))
        });
        tokio::spawn(egress::serve(
            egress,
            acceptor,
            links.clone(),
            timeouts,
            config.max_egress_connections,
            cut_rx,
            watch.clone(),
        ));
        match link_port {
            LinkPort::Quic(endpoint) => tokio::spawn(ingress.serve(endpoint, watch)),
            LinkPort::Tcp(listener, acceptor) => {
                tokio::spawn(ingress.serve_tcp(listener, acceptor, watch))
            }
        };
        let sampler = {
            let (links, interval) = (links.clone(), config.sample_interval);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    links.sample();
                }
            })
        };

        shutdown.await;
        ready.set_ready(false);
        tracing::info!(deadline = ?timeouts.drain, "gateway draining");
        if tokio::time::timeout(timeouts.drain, drain.drain())
            .await
            .is_err()
        {
            tracing::info!("drain deadline passed; closing open tunnels");
        }
        cut.send_replace(true);
        sampler.abort();
        if let Some(endpoint) = endpoint {
            endpoint.close(quic::code::SHUTDOWN, b"gateway shutting down");
            endpoint.wait_idle().await;
        }
        admin_drain.drain().await;
        if let Some(admin) = admin {
            match admin.await {
                Ok(Err(error)) => tracing::warn!(%error, "the admin server failed"),
                Err(error) => tracing::warn!(%error, "the admin server task failed"),
                Ok(Ok(())) => {}
            }
        }
    }
}
