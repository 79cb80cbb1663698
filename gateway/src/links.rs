//! One warm QUIC connection per linked cluster.
//!
//! A connection is opened the first time a tunnel needs it and then kept: keep-alives hold it
//! open while idle, and the next tunnel after it closed (remote restart, network loss, idle
//! timeout) opens a new one. Connecting tries the Link's addresses in turn, resolving host names
//! again at each attempt. After a failed attempt the cluster is in backoff: tunnels asking for it
//! meanwhile fail at once instead of queueing behind a dead gateway, and the next attempt waits
//! for a jittered, doubling delay.
//!
//! Attempts for one cluster are serialized (one handshake at a time; tunnels arriving during it
//! wait for its result), and clusters are independent of each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::ports::ALPN_GATEWAY;
use mesh_proxy::discovery::ReconnectBackoff;
use mesh_proxy::discovery::backoff::Backoff;
use mesh_trust::tls::{self, CertResolver, connection_peer_identity};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{Link, LinkWatch, Transport};
use crate::metrics::{ConnectReason, GatewayMetrics};
use crate::quic;
use crate::stream::RemoteStream;

/// Why no connection to a cluster is available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No Link names the cluster.
    #[error("no link to cluster {0:?}: link the cluster first")]
    Unknown(String),
    /// The Link names a gateway identity outside the cluster's trust domain.
    #[error(
        "the link to cluster {cluster:?} names gateway {gateway}, which is outside the link's trust domain: fix the link"
    )]
    Inconsistent {
        /// The cluster.
        cluster: String,
        /// The identity the link names.
        gateway: SpiffeId,
    },
    /// The last attempt failed and the next is not due yet.
    #[error(
        "the gateway of cluster {cluster:?} is unreachable (last error: {last}); next attempt in {retry_in:?}"
    )]
    Backoff {
        /// The cluster.
        cluster: String,
        /// The last attempt's error.
        last: String,
        /// When the next attempt is allowed.
        retry_in: Duration,
    },
    /// Every address failed in this attempt.
    #[error("could not connect to the gateway of cluster {cluster:?}: {reason}")]
    Connect {
        /// The cluster.
        cluster: String,
        /// Each address's failure.
        reason: String,
    },
}

/// The connections to linked clusters' gateways, shared by every egress connection.
#[derive(Debug)]
pub struct LinkTable {
    /// The QUIC endpoint; `None` in TCP mode.
    endpoint: Option<quinn::Endpoint>,
    transport: Transport,
    links: LinkWatch,
    bundles: SharedTrustBundles,
    certs: Arc<CertResolver>,
    connect_timeout: Duration,
    quic_idle: Duration,
    reconnect: ReconnectBackoff,
    metrics: GatewayMetrics,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// One cluster's connection and its failure history.
#[derive(Debug)]
struct Slot {
    /// The link the connection was made for; a changed link drops the connection.
    link: Option<Link>,
    connection: Option<quinn::Connection>,
    backoff: Backoff,
    /// When the last attempt failed: the next may start at `retry_at`.
    failed: Option<(String, Instant)>,
    /// The connection's lost packets at the last sample.
    lost_seen: u64,
}

/// One link's state, for the admin view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkView {
    /// The linked cluster.
    pub cluster: String,
    /// Its connection, when one is up.
    pub connection: Option<ConnectionView>,
}

/// A live link connection's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    /// The remote gateway's address.
    pub remote: SocketAddr,
    /// The smoothed round-trip time.
    pub rtt: Duration,
    /// Packets declared lost over the connection's life.
    pub lost_packets: u64,
}

/// A live connection to a linked gateway.
#[derive(Clone, Debug)]
pub struct LinkConnection {
    /// The connection.
    pub connection: quinn::Connection,
    /// The remote gateway's identity.
    pub gateway: SpiffeId,
}

impl LinkTable {
    /// A table that connects from `endpoint`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: Option<quinn::Endpoint>,
        transport: Transport,
        links: LinkWatch,
        bundles: SharedTrustBundles,
        certs: Arc<CertResolver>,
        connect_timeout: Duration,
        quic_idle: Duration,
        reconnect: ReconnectBackoff,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            metrics,
            transport,
            endpoint,
            links,
            bundles,
            certs,
            connect_timeout,
            quic_idle,
            reconnect,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `cluster`'s gateway: the warm one, or a new one.
    ///
    /// # Errors
    ///
    /// [`LinkError::Unknown`] when no Link names the cluster; [`LinkError::Backoff`] while a
    /// failed attempt's delay runs; [`LinkError::Connect`] when this attempt failed.
    pub async fn connection(&self, cluster: &str) -> Result<LinkConnection, LinkError> {
        let link = self.link(cluster)?;
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            slots
                .entry(link.cluster.clone())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Slot {
                        link: None,
                        connection: None,
                        backoff: Backoff::new(self.reconnect),
                        failed: None,
                        lost_seen: 0,
                    }))
                })
                .clone()
        };
        let mut slot = slot.lock().await;

        if slot.link.as_ref() != Some(&link) {
            if let Some(old) = slot.connection.take() {
                old.close(quic::code::SHUTDOWN, b"link changed");
            }
            slot.link = Some(link.clone());
            slot.backoff.reset();
            slot.failed = None;
        }
        if let Some(connection) = &slot.connection {
            if connection.close_reason().is_none() {
                return Ok(LinkConnection {
                    connection: connection.clone(),
                    gateway: link.gateway_identity.clone(),
                });
            }
            tracing::debug!(cluster, reason = ?connection.close_reason(), "link connection closed; reconnecting");
            slot.connection = None;
        }
        if let Some((last, retry_at)) = &slot.failed {
            let now = Instant::now();
            if now < *retry_at {
                return Err(LinkError::Backoff {
                    cluster: link.cluster.clone(),
                    last: last.clone(),
                    retry_in: *retry_at - now,
                });
            }
        }

        match self.connect(&link).await {
            Ok(connection) => {
                slot.backoff.reset();
                slot.failed = None;
                slot.lost_seen = 0;
                slot.connection = Some(connection.clone());
                Ok(LinkConnection {
                    connection,
                    gateway: link.gateway_identity.clone(),
                })
            }
            Err(reason) => {
                let delay = slot.backoff.next_delay(&mut rand::rng());
                slot.failed = Some((reason.clone(), Instant::now() + delay));
                tracing::info!(cluster, %reason, retry_in = ?delay, "cannot connect to linked gateway");
                Err(LinkError::Connect {
                    cluster: link.cluster,
                    reason,
                })
            }
        }
    }

    /// The metrics the table and its users record into.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// Whether a current Link names `cluster`.
    pub fn is_linked(&self, cluster: &str) -> bool {
        self.links
            .borrow()
            .iter()
            .any(|link| link.cluster == cluster)
    }

    /// Each current link's connection state, in the order of the link list. A link whose
    /// connection is being set up right now shows as not connected.
    pub fn view(&self) -> Vec<LinkView> {
        let clusters: Vec<String> = self
            .links
            .borrow()
            .iter()
            .map(|l| l.cluster.clone())
            .collect();
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        clusters
            .into_iter()
            .map(|cluster| {
                let connection = slots
                    .get(&cluster)
                    .and_then(|slot| slot.try_lock().ok())
                    .and_then(|slot| slot.connection.clone())
                    .filter(|c| c.close_reason().is_none())
                    .map(|c| {
                        let path = c.stats().path;
                        ConnectionView {
                            remote: c.remote_address(),
                            rtt: path.rtt,
                            lost_packets: path.lost_packets,
                        }
                    });
                LinkView {
                    cluster,
                    connection,
                }
            })
            .collect()
    }

    /// Records each link's state into the metrics, and drops the connections of removed links.
    /// A cluster whose connection is being set up right now is skipped until the next sample.
    pub fn sample(&self) {
        let linked: Vec<String> = self
            .links
            .borrow()
            .iter()
            .map(|l| l.cluster.clone())
            .collect();
        let slots: Vec<(String, Arc<tokio::sync::Mutex<Slot>>)> = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            slots.retain(|cluster, slot| {
                let keep = linked.contains(cluster);
                if !keep {
                    if let Ok(slot) = slot.try_lock() {
                        if let Some(connection) = &slot.connection {
                            connection.close(quic::code::SHUTDOWN, b"link removed");
                        }
                    }
                    self.metrics.forget_link(cluster);
                }
                keep
            });
            slots.iter().map(|(c, s)| (c.clone(), s.clone())).collect()
        };
        for (cluster, slot) in slots {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let live = slot
                .connection
                .as_ref()
                .filter(|c| c.close_reason().is_none());
            match live.map(quinn::Connection::stats) {
                Some(stats) => {
                    let newly_lost = stats.path.lost_packets.saturating_sub(slot.lost_seen);
                    slot.lost_seen = stats.path.lost_packets;
                    self.metrics
                        .link(&cluster, Some(stats.path.rtt), newly_lost);
                }
                None => self.metrics.link(&cluster, None, 0),
            }
        }
    }

    /// The current Link of `cluster`, checked.
    fn link(&self, cluster: &str) -> Result<Link, LinkError> {
        let link = self
            .links
            .borrow()
            .iter()
            .find(|link| link.cluster == cluster)
            .cloned()
            .ok_or_else(|| LinkError::Unknown(cluster.to_owned()))?;
        if !link.is_consistent() {
            return Err(LinkError::Inconsistent {
                cluster: link.cluster,
                gateway: link.gateway_identity,
            });
        }
        Ok(link)
    }

    /// A new stream to `cluster`'s gateway for one tunnel: a stream of the warm QUIC
    /// connection (replaced once if it turns out closed, after a remote restart say), or in TCP
    /// mode a TLS connection of its own.
    ///
    /// # Errors
    ///
    /// Why there is no stream, in words for the caller's refusal.
    pub async fn open(&self, cluster: &str) -> Result<RemoteStream, String> {
        if self.transport == Transport::Tcp {
            return self
                .dial_tcp(cluster)
                .await
                .map(|stream| RemoteStream::Tcp(Box::new(stream)))
                .map_err(|error| error.to_string());
        }
        let mut retried = false;
        loop {
            let link = self
                .connection(cluster)
                .await
                .map_err(|error| error.to_string())?;
            match link.connection.open_bi().await {
                Ok((send, recv)) => return Ok(RemoteStream::Quic(tokio::io::join(recv, send))),
                Err(error) if retried => {
                    return Err(format!(
                        "cluster {cluster:?}: cannot open a stream: {error}"
                    ));
                }
                Err(error) => {
                    tracing::debug!(cluster, %error, "link connection lost; reconnecting");
                    retried = true;
                }
            }
        }
    }

    /// TCP mode: a TLS connection to `cluster`'s gateway requiring exactly its identity, ALPN
    /// `mesh.gw`, trying each address in turn.
    async fn dial_tcp(&self, cluster: &str) -> Result<TlsStream<TcpStream>, LinkError> {
        let link = self.link(cluster)?;
        let config = tls::client_config(
            self.bundles.clone(),
            PeerPolicy::Exactly(link.gateway_identity.clone()),
            Some(self.certs.clone()),
            &[ALPN_GATEWAY],
        )
        .map_err(|error| {
            self.metrics.connect_error(ConnectReason::Config);
            LinkError::Connect {
                cluster: link.cluster.clone(),
                reason: error.to_string(),
            }
        })?;
        let connector = TlsConnector::from(Arc::new(config));
        self.first_that_connects(&link, |addr| self.handshake_tcp(&connector, &link, addr))
            .await
            .map(|(stream, _)| stream)
            .map_err(|reason| LinkError::Connect {
                cluster: link.cluster.clone(),
                reason,
            })
    }

    /// The link's addresses, host names resolved now; and what failed to resolve.
    async fn resolve(&self, link: &Link) -> (Vec<SocketAddr>, Vec<String>) {
        let mut resolved = Vec::new();
        let mut failures = Vec::new();
        for host in &link.addresses {
            let lookup = tokio::net::lookup_host((host.as_str(), link.port));
            match timeout(self.connect_timeout, lookup).await {
                Ok(Ok(addrs)) => resolved.extend(addrs),
                Ok(Err(error)) => {
                    self.metrics.connect_error(ConnectReason::Resolve);
                    failures.push(format!("{host}: cannot resolve: {error}"));
                }
                Err(_) => {
                    self.metrics.connect_error(ConnectReason::Resolve);
                    failures.push(format!("{host}: resolving timed out"));
                }
            }
        }
        (resolved, failures)
    }

    /// One attempt: each address in turn, until one handshake succeeds.
    async fn connect(&self, link: &Link) -> Result<quinn::Connection, String> {
        let Some(endpoint) = &self.endpoint else {
            return Err("QUIC is off: the gateway runs in TCP mode".to_owned());
        };
        let config = quic::client_config(
            self.bundles.clone(),
            self.certs.clone(),
            link,
            self.quic_idle,
        )
        .map_err(|error| {
            self.metrics.connect_error(ConnectReason::Config);
            error.to_string()
        })?;
        let (connection, addr) = self
            .first_that_connects(link, |addr| {
                self.handshake(endpoint, link, config.clone(), addr)
            })
            .await?;
        tracing::info!(cluster = %link.cluster, %addr, "connected to linked gateway");
        Ok(connection)
    }

    /// TCP mode, one address: TCP, then TLS requiring the link's gateway identity and `mesh.gw`.
    async fn handshake_tcp(
        &self,
        connector: &TlsConnector,
        link: &Link,
        addr: SocketAddr,
    ) -> Result<TlsStream<TcpStream>, (ConnectReason, String)> {
        let started = Instant::now();
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| (ConnectReason::Handshake, format!("connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(addr.ip().into());
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| (ConnectReason::Handshake, format!("handshake failed: {e}")))
        };
        let result = match timeout(self.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err((ConnectReason::Timeout, "timed out".to_owned())),
        };
        let checked = result.and_then(|stream| {
            let session = stream.get_ref().1;
            let found = connection_peer_identity(session);
            if session.alpn_protocol() != Some(ALPN_GATEWAY) {
                Err((ConnectReason::Handshake, "no mesh.gw ALPN".to_owned()))
            } else if found.as_ref() != Some(&link.gateway_identity) {
                let message = format!("presented {found:?}, expected {}", link.gateway_identity);
                Err((ConnectReason::Identity, message))
            } else {
                Ok(stream)
            }
        });
        if checked.is_ok() {
            self.metrics.handshake(started.elapsed());
        }
        checked
    }

    /// Tries `attempt` on each of the link's addresses in turn (host names resolved now) until
    /// one succeeds, counting each failure by its reason. When none does, the failures, joined.
    async fn first_that_connects<T, F, Fut>(
        &self,
        link: &Link,
        mut attempt: F,
    ) -> Result<(T, SocketAddr), String>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = Result<T, (ConnectReason, String)>>,
    {
        let (addrs, mut failures) = self.resolve(link).await;
        for addr in addrs {
            match attempt(addr).await {
                Ok(connected) => return Ok((connected, addr)),
                Err((reason, error)) => {
                    self.metrics.connect_error(reason);
                    failures.push(format!("{addr}: {error}"));
                }
            }
        }
        if failures.is_empty() {
            failures.push("the link lists no address".to_owned());
        }
        Err(failures.join("; "))
    }

    async fn handshake(
        &self,
        endpoint: &quinn::Endpoint,
        link: &Link,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, (ConnectReason, String)> {
        let started = Instant::now();
        // The mesh verifier checks the SPIFFE ID, not the name; an IP address sends no SNI.
        let connecting = endpoint
            .connect_with(config, addr, &addr.ip().to_string())
            .map_err(|error| (ConnectReason::Handshake, error.to_string()))?;
        let connection = timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                let message = format!("handshake timed out after {:?}", self.connect_timeout);
                (ConnectReason::Timeout, message)
            })?
            .map_err(|error| {
                (
                    ConnectReason::Handshake,
                    format!("handshake failed: {error}"),
                )
            })?;
        let found = quic::peer_identity(&connection);
        if found.as_ref() != Some(&link.gateway_identity) {
            connection.close(quic::code::FORBIDDEN, b"wrong identity");
            let message = format!("presented {found:?}, expected {}", link.gateway_identity);
            return Err((ConnectReason::Identity, message));
        }
        self.metrics.handshake(started.elapsed());
        Ok(connection)
    }
}
