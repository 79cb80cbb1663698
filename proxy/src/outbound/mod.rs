//! The outbound side for opaque TCP: explicit listeners bound to one service.
//!
//! An explicit listener (`--outbound-map 127.0.0.1:9000=web.default.svc.cluster.local:80`) sends
//! every connection it accepts to one service authority. Each connection resolves the authority
//! through discovery, picks an endpoint with the peak-EWMA balancer, and connects: over the meshed
//! hop to the endpoint's proxy inbound port when discovery names an identity (the handshake
//! requires exactly that identity), in plain text when it does not. A connect failure is recorded
//! (enough of them eject the endpoint) and the next pick is tried, up to a few attempts, so one
//! dead endpoint costs a retry, not a failed connection. Then the bytes are spliced both ways.
//!
//! This is the first of the three ways outbound targets are found; the original destination of
//! iptables-redirected connections and the HTTP authority come with the outbound listener for
//! redirected and HTTP traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_trust::tls::{CertResolver, TlsError};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

mod listener;

pub use listener::{OutboundContext, serve_outbound};

use crate::balance::{BalanceConfig, Balancer, InFlight, PickError};
use crate::discovery::{Destination, DestinationWatch, EndpointMeta, Resolve, Target};
use crate::drain;
use crate::tcp::{self, HopError};
use crate::transport_header::{Authority, MeshTransportHeader};

/// How outbound connections are made.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The port of the destination proxy's inbound listener (4143).
    pub inbound_port: u16,
    /// How long to wait for discovery's first answer about a service.
    pub resolve_timeout: Duration,
    /// Connect, handshake and transport header, per attempt.
    pub connect_timeout: Duration,
    /// A spliced connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Endpoints tried per connection before giving up.
    pub max_attempts: usize,
    /// Concurrent connections per listener; more are refused (closed) at once.
    pub max_connections: usize,
    pub balance: BalanceConfig,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            inbound_port: mesh_api::ports::PROXY_INBOUND,
            resolve_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            max_connections: 10_000,
            balance: BalanceConfig::default(),
        }
    }
}

/// Why an outbound connection could not be made. The client's connection is closed; nothing
/// else is affected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboundError {
    #[error("discovery has not answered for {0} yet")]
    ResolveTimeout(String),
    #[error("{0} is not a known service")]
    NotFound(String),
    #[error("{authority}: {source}")]
    NoEndpoint {
        authority: String,
        source: PickError,
    },
    #[error(
        "{authority}: endpoint {addr} is in cluster {cluster}, reached through the gateway, which this proxy cannot use yet"
    )]
    TunnelNotSupported {
        authority: String,
        addr: SocketAddr,
        cluster: String,
    },
    #[error("{authority}: no endpoint answered after {attempts} attempts; last: {last}")]
    Exhausted {
        authority: String,
        attempts: usize,
        last: Box<HopError>,
    },
    #[error("TLS configuration for {identity}: {source}")]
    Tls {
        identity: SpiffeId,
        source: TlsError,
    },
}

/// Client TLS for the meshed hop: one config per expected peer identity and ALPN, built once.
#[derive(Debug)]
pub struct OutboundTls {
    bundles: SharedTrustBundles,
    certs: Arc<CertResolver>,
    configs: Mutex<HashMap<(SpiffeId, &'static [u8]), Arc<rustls::ClientConfig>>>,
}

impl OutboundTls {
    pub fn new(bundles: SharedTrustBundles, certs: Arc<CertResolver>) -> Self {
        Self {
            bundles,
            certs,
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The client config that requires exactly `identity` and offers only `alpn`
    /// (`mesh.opaque`, `mesh.h2` or, towards a gateway, `mesh.tunnel`).
    pub fn config_for(
        &self,
        identity: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<rustls::ClientConfig>, OutboundError> {
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (identity.clone(), alpn);
        if let Some(config) = configs.get(&key) {
            return Ok(config.clone());
        }
        let config = mesh_trust::tls::client_config(
            self.bundles.clone(),
            PeerPolicy::Exactly(identity.clone()),
            Some(self.certs.clone()),
            &[alpn],
        )
        .map(Arc::new)
        .map_err(|source| OutboundError::Tls {
            identity: identity.clone(),
            source,
        })?;
        configs.insert(key, config.clone());
        Ok(config)
    }
}

/// One service: its discovery watch and its balancer, shared by every connection to it.
#[derive(Debug)]
pub struct ServiceBalancer {
    authority: String,
    // Parsed once for the transport header of every meshed connection.
    header_authority: Option<Authority>,
    watch: DestinationWatch,
    state: Mutex<BalancerState>,
}

#[derive(Debug)]
struct BalancerState {
    balancer: Balancer<SocketAddr>,
    // The destination the balancer was last updated from, to update only on change.
    last: Option<Arc<Destination>>,
    endpoints: HashMap<SocketAddr, EndpointMeta>,
}

/// An open upstream connection.
#[derive(Debug)]
pub enum Upstream {
    Meshed(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl ServiceBalancer {
    /// Starts watching `authority` through `resolve`.
    pub fn new(
        authority: &str,
        resolve: &dyn Resolve,
        config: BalanceConfig,
    ) -> Result<Self, String> {
        let target = Target::parse(authority).map_err(|e| e.to_string())?;
        Ok(Self {
            authority: authority.to_owned(),
            header_authority: Authority::parse(authority).ok(),
            watch: resolve.watch(target),
            state: Mutex::new(BalancerState {
                balancer: Balancer::new(config),
                last: None,
                endpoints: HashMap::new(),
            }),
        })
    }

    /// Connects to one endpoint of the service, trying others when one fails to connect.
    pub async fn connect(
        &self,
        tls: &OutboundTls,
        config: &OutboundConfig,
    ) -> Result<(Upstream, InFlight<SocketAddr>), OutboundError> {
        let first = self.resolved(config.resolve_timeout).await?;
        if !first.exists {
            return Err(OutboundError::NotFound(self.authority.clone()));
        }
        let attempts = config.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            // Always the latest answer: a snapshot held across a slow attempt must not roll the
            // balancer back to endpoints the controller has since removed.
            let destination = self.watch.borrow().clone().unwrap_or_else(|| first.clone());
            let (mut in_flight, endpoint) = self.pick(&destination)?;
            // `?`: a local configuration problem says nothing about the endpoint, so no penalty.
            let attempted = self.connect_endpoint(&endpoint, tls, config).await?;
            let now = Instant::now();
            match attempted {
                Ok(upstream) => {
                    in_flight.connected(now);
                    return Ok((upstream, in_flight));
                }
                Err(error) => {
                    tracing::debug!(authority = %self.authority, endpoint = %endpoint.addr, %error, "connect failed");
                    in_flight.fail(now, &mut rand::rng());
                    if attempt == attempts {
                        return Err(OutboundError::Exhausted {
                            authority: self.authority.clone(),
                            attempts,
                            last: Box::new(error),
                        });
                    }
                    attempt += 1;
                }
            }
        }
    }

    async fn resolved(&self, timeout: Duration) -> Result<Arc<Destination>, OutboundError> {
        let mut watch = self.watch.clone();
        let ready = tokio::time::timeout(timeout, watch.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(current)) => current
                .clone()
                .ok_or_else(|| OutboundError::ResolveTimeout(self.authority.clone())),
            _ => Err(OutboundError::ResolveTimeout(self.authority.clone())),
        }
    }

    fn pick(
        &self,
        destination: &Arc<Destination>,
    ) -> Result<(InFlight<SocketAddr>, EndpointMeta), OutboundError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let changed = !state
            .last
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, destination));
        if changed {
            // Tunnel endpoints need the gateway, which this proxy cannot use yet; they stay out of
            // the balancer so that a service with local endpoints keeps working.
            let ready: Vec<&EndpointMeta> = destination
                .endpoints
                .iter()
                .filter(|e| e.ready && e.tunnel.is_none())
                .collect();
            state.balancer.update(ready.iter().map(|e| e.addr), now);
            state.endpoints = ready.into_iter().map(|e| (e.addr, e.clone())).collect();
            state.last = Some(destination.clone());
        }
        let in_flight = match state.balancer.pick(now, &mut rand::rng()) {
            Ok(in_flight) => in_flight,
            Err(source) => return Err(self.no_endpoint(destination, source)),
        };
        let endpoint = state
            .endpoints
            .get(in_flight.addr())
            .cloned()
            .ok_or_else(|| OutboundError::NoEndpoint {
                authority: self.authority.clone(),
                source: PickError::NoEndpoints,
            })?;
        Ok((in_flight, endpoint))
    }

    // Nothing to pick. If the service does have ready endpoints, all behind the gateway, say so
    // rather than "no endpoints".
    fn no_endpoint(&self, destination: &Destination, source: PickError) -> OutboundError {
        let tunnelled = destination
            .endpoints
            .iter()
            .find_map(|e| Some((e, e.tunnel.as_ref()?)).filter(|(e, _)| e.ready));
        match tunnelled {
            Some((endpoint, tunnel)) => OutboundError::TunnelNotSupported {
                authority: self.authority.clone(),
                addr: endpoint.addr,
                cluster: tunnel.cluster.clone(),
            },
            None => OutboundError::NoEndpoint {
                authority: self.authority.clone(),
                source,
            },
        }
    }

    /// The outer error is local (TLS configuration); the inner one is the endpoint's failure.
    async fn connect_endpoint(
        &self,
        endpoint: &EndpointMeta,
        tls: &OutboundTls,
        config: &OutboundConfig,
    ) -> Result<Result<Upstream, HopError>, OutboundError> {
        Ok(match &endpoint.identity {
            Some(identity) => {
                let client = tls.config_for(identity, mesh_api::ports::ALPN_OPAQUE)?;
                // The endpoint's proxy listens on the inbound port; the header names the app's.
                let proxy = SocketAddr::new(endpoint.addr.ip(), config.inbound_port);
                let header = MeshTransportHeader {
                    port: endpoint.addr.port(),
                    authority: self.header_authority.clone(),
                    protocol: ProtocolHint::Opaque,
                };
                tcp::connect_meshed(proxy, identity, client, &header, config.connect_timeout)
                    .await
                    .map(|s| Upstream::Meshed(Box::new(s)))
            }
            None => tcp::connect_plain(endpoint.addr, config.connect_timeout)
                .await
                .map(Upstream::Plain),
        })
    }
}

/// Serves an explicit listener: every accepted connection goes to `service`. Returns once
/// drained and every connection has finished.
pub async fn serve_mapped(
    listener: TcpListener,
    service: Arc<ServiceBalancer>,
    tls: Arc<OutboundTls>,
    config: OutboundConfig,
    mut watch: drain::Watch,
) {
    let config = Arc::new(config);
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    // Owned here, so that dropping this future aborts every connection it started.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = watch.signaled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::warn!(%error, "outbound accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, authority = %service.authority, "refusing connection: too many open outbound connections");
            continue;
        };
        let retain = watch.retain();
        let (service, tls, config) = (service.clone(), tls.clone(), config.clone());
        connections.spawn(async move {
            let _permit = permit;
            let _retain = retain;
            if let Err(error) = proxy_connection(client, &service, &tls, &config).await {
                tracing::info!(%peer, %error, "outbound connection closed");
            }
        });
    }
    // Draining: stop accepting, let the connections finish.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn proxy_connection(
    mut client: TcpStream,
    service: &ServiceBalancer,
    tls: &OutboundTls,
    config: &OutboundConfig,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = client.set_nodelay(true);
    let (upstream, in_flight) = service.connect(tls, config).await?;
    let result = match upstream {
        Upstream::Meshed(mut stream) => {
            tcp::splice(&mut client, &mut *stream, config.idle_timeout).await
        }
        Upstream::Plain(mut stream) => {
            tcp::splice(&mut client, &mut stream, config.idle_timeout).await
        }
    };
    in_flight.finish(Instant::now());
    result?;
    Ok(())
}

/// Parses an `--outbound-map` entry, `LISTEN_ADDR=AUTHORITY`
/// (`127.0.0.1:9000=web.default.svc.cluster.local:80`).
pub fn parse_outbound_map(entry: &str) -> Result<(SocketAddr, String), String> {
    let (listen, authority) = entry
        .split_once('=')
        .ok_or_else(|| format!("{entry:?} is not LISTEN_ADDR=AUTHORITY (e.g. 127.0.0.1:9000=web.default.svc.cluster.local:80)"))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not an ip:port to listen on"))?;
    Authority::parse(authority).map_err(|e| e.to_string())?;
    Ok((listen, authority.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_outbound_map_entries() {
        assert_eq!(
            parse_outbound_map("127.0.0.1:9000=web.default.svc.cluster.local:80").unwrap(),
            (
                "127.0.0.1:9000".parse().unwrap(),
                "web.default.svc.cluster.local:80".to_owned()
            )
        );
        assert!(parse_outbound_map("[::1]:9000=web:80").is_ok());
        for (bad, want) in [
            ("127.0.0.1:9000", "is not LISTEN_ADDR=AUTHORITY"),
            ("localhost:9000=web:80", "is not an ip:port"),
            ("127.0.0.1:9000=web", "no :port"),
            ("127.0.0.1:9000=we b:80", "cannot have"),
        ] {
            let err = parse_outbound_map(bad).unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }
}
