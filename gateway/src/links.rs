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

use mesh_proxy::discovery::ReconnectBackoff;
use mesh_proxy::discovery::backoff::Backoff;
use mesh_trust::tls::CertResolver;
use mesh_trust::{SharedTrustBundles, SpiffeId};
use tokio::time::{Instant, timeout};

use crate::config::{Link, LinkWatch};
use crate::metrics::{ConnectReason, GatewayMetrics};
use crate::quic;

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
    endpoint: quinn::Endpoint,
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
        endpoint: quinn::Endpoint,
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

    /// One attempt: each address in turn, until one handshake succeeds.
    async fn connect(&self, link: &Link) -> Result<quinn::Connection, String> {
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
        let mut failures = Vec::new();
        for host in &link.addresses {
            let resolve = tokio::net::lookup_host((host.as_str(), link.port));
            let addrs: Vec<SocketAddr> = match timeout(self.connect_timeout, resolve).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(error)) => {
                    self.metrics.connect_error(ConnectReason::Resolve);
                    failures.push(format!("{host}: cannot resolve: {error}"));
                    continue;
                }
                Err(_) => {
                    self.metrics.connect_error(ConnectReason::Resolve);
                    failures.push(format!("{host}: resolving timed out"));
                    continue;
                }
            };
            for addr in addrs {
                match self.handshake(link, config.clone(), addr).await {
                    Ok(connection) => {
                        tracing::info!(cluster = %link.cluster, %addr, "connected to linked gateway");
                        return Ok(connection);
                    }
                    Err((reason, error)) => {
                        self.metrics.connect_error(reason);
                        failures.push(format!("{addr}: {error}"));
                    }
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
        link: &Link,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, (ConnectReason, String)> {
        let started = Instant::now();
        // The mesh verifier checks the SPIFFE ID, not the name; an IP address sends no SNI.
        let connecting = self
            .endpoint
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
