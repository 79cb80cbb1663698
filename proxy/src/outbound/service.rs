//! One destination (a service authority, or the original address of a redirected connection):
//! its discovery watch and its balancer, shared by every connection and request to it.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::common::ProtocolHint;
use mesh_api::ports::ALPN_OPAQUE;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{OutboundConfig, OutboundError, OutboundTls};
use crate::balance::{BalanceConfig, Balancer, InFlight, PickError};
use crate::discovery::{Destination, DestinationWatch, EndpointMeta, Resolve, Target};
use crate::tcp::{self, HopError};
use crate::transport_header::{Authority, MeshTransportHeader};
use crate::tunnel::{Fault, TunnelError, TunnelStream, connect_tunnelled};

/// One destination: its discovery watch and its balancer.
#[derive(Debug)]
pub struct ServiceBalancer {
    target: Target,
    watch: DestinationWatch,
    state: Mutex<BalancerState>,
}

#[derive(Debug)]
struct BalancerState {
    balancer: Balancer<SocketAddr>,
    // The destination the balancer was last updated from, to update only on change.
    last: Option<Arc<Destination>>,
    endpoints: HashMap<SocketAddr, EndpointMeta>,
    // The authority named in transport headers: the target's own, or for an address the service
    // discovery resolved it to. Parsed once per destination.
    header_authority: Option<Authority>,
}

/// An endpoint chosen for one connection or request. Report how it went through `in_flight`:
/// `connected`/`finish` on success, `fail` when it could not be reached.
#[derive(Debug)]
pub struct Picked {
    pub in_flight: InFlight<SocketAddr>,
    pub endpoint: EndpointMeta,
    /// The authority to name in the transport header.
    pub authority: Option<Authority>,
}

/// An open upstream connection.
#[derive(Debug)]
pub enum Upstream {
    Meshed(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Meshed end to end with an endpoint in a linked cluster, through the local gateway.
    Tunnelled(Box<TunnelStream>),
    Plain(TcpStream),
}

/// Why one endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Hop(#[from] HopError),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

impl EndpointError {
    /// Whether the failure says the endpoint itself is unhealthy (so it should be penalized),
    /// rather than the remote service having nothing to offer right now.
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            Self::Hop(_) => true,
            Self::Tunnel(error) => !matches!(error.fault(), Fault::RemoteService | Fault::Local),
        }
    }
}

// === impl ServiceBalancer ===

impl ServiceBalancer {
    /// Starts watching `authority` through `resolve`.
    pub fn new(
        authority: &str,
        resolve: &dyn Resolve,
        config: BalanceConfig,
    ) -> Result<Self, String> {
        let target = Target::parse(authority).map_err(|e| e.to_string())?;
        Ok(Self::for_target(target, resolve, config))
    }

    /// Starts watching `target` through `resolve`.
    pub fn for_target(target: Target, resolve: &dyn Resolve, config: BalanceConfig) -> Self {
        let header_authority = match &target {
            Target::Authority(authority) => Authority::parse(authority).ok(),
            Target::Addr(_) => None,
        };
        Self {
            watch: resolve.watch(target.clone()),
            target,
            state: Mutex::new(BalancerState {
                balancer: Balancer::new(config),
                last: None,
                endpoints: HashMap::new(),
                header_authority,
            }),
        }
    }

    /// What this balancer resolves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Discovery's latest answer, once there is one.
    pub fn latest(&self) -> Option<Arc<Destination>> {
        self.watch.borrow().clone()
    }

    /// Discovery's answer, waiting up to `timeout` for the first one.
    pub async fn resolved(&self, timeout: Duration) -> Result<Arc<Destination>, OutboundError> {
        if let Some(destination) = self.latest() {
            return Ok(destination);
        }
        let mut watch = self.watch.clone();
        let ready = tokio::time::timeout(timeout, watch.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(current)) => current.clone().ok_or_else(|| self.resolve_timeout()),
            _ => Err(self.resolve_timeout()),
        }
    }

    fn resolve_timeout(&self) -> OutboundError {
        OutboundError::ResolveTimeout(self.target.to_string())
    }

    /// Whether a pick would find an endpoint now: discovery has answered, and some endpoint is
    /// ready and not ejected. A split skips a backend for which this is false.
    pub fn has_available(&self) -> bool {
        let Some(destination) = self.latest() else {
            return false;
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        state.sync(&destination, now);
        state.balancer.has_available(now)
    }

    /// Picks an endpoint from discovery's latest answer (which must have arrived: see
    /// [`Self::resolved`]).
    pub fn pick(&self) -> Result<Picked, OutboundError> {
        self.pick_avoiding(None)
    }

    /// [`Self::pick`], passing over `avoid` (where a retry's previous attempt failed) when
    /// another endpoint is available.
    pub fn pick_avoiding(&self, avoid: Option<SocketAddr>) -> Result<Picked, OutboundError> {
        let destination = self.latest().ok_or_else(|| self.resolve_timeout())?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        state.sync(&destination, now);
        let in_flight = match state
            .balancer
            .pick_avoiding(now, &mut rand::rng(), avoid.as_ref())
        {
            Ok(in_flight) => in_flight,
            Err(source) => return Err(self.no_endpoint(&destination, source)),
        };
        let endpoint = state
            .endpoints
            .get(in_flight.addr())
            .cloned()
            .ok_or_else(|| OutboundError::NoEndpoint {
                authority: self.target.to_string(),
                source: PickError::NoEndpoints,
            })?;
        Ok(Picked {
            in_flight,
            endpoint,
            authority: state.header_authority.clone(),
        })
    }

    fn no_endpoint(&self, _destination: &Destination, source: PickError) -> OutboundError {
        OutboundError::NoEndpoint {
            authority: self.target.to_string(),
            source,
        }
    }

    /// Connects an opaque stream to one endpoint of the service, trying others when one fails
    /// to connect.
    pub async fn connect(
        &self,
        tls: &OutboundTls,
        config: &OutboundConfig,
    ) -> Result<(Upstream, InFlight<SocketAddr>), OutboundError> {
        let first = self.resolved(config.resolve_timeout).await?;
        if !first.exists {
            return Err(OutboundError::NotFound(self.target.to_string()));
        }
        let attempts = config.max_attempts.max(1);
        let mut attempt = 1;
        let mut last_failed = None;
        loop {
            // Always the latest answer: a snapshot held across a slow attempt must not roll the
            // balancer back to endpoints the controller has since removed.
            let Picked {
                mut in_flight,
                endpoint,
                authority,
            } = self.pick_avoiding(last_failed)?;
            // `?`: a local configuration problem says nothing about the endpoint, so no penalty.
            let attempted = connect_endpoint(&endpoint, authority, tls, config).await?;
            let now = Instant::now();
            match attempted {
                Ok(upstream) => {
                    in_flight.connected(now);
                    return Ok((upstream, in_flight));
                }
                Err(error) => {
                    tracing::debug!(target = %self.target, endpoint = %endpoint.addr, %error, "connect failed");
                    if error.is_endpoint_failure() {
                        in_flight.fail(now, &mut rand::rng());
                    } else {
                        in_flight.finish(now);
                    }
                    if attempt == attempts {
                        return Err(OutboundError::Exhausted {
                            authority: self.target.to_string(),
                            attempts,
                            last: Box::new(error),
                        });
                    }
                    last_failed = Some(endpoint.addr);
                    attempt += 1;
                }
            }
        }
    }
}

// === impl BalancerState ===

impl BalancerState {
    /// Brings the balancer up to `destination` if it changed since the last call.
    fn sync(&mut self, destination: &Arc<Destination>, now: Instant) {
        let changed = !self
            .last
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, destination));
        if !changed {
            return;
        }
        let ready: Vec<&EndpointMeta> = destination.endpoints.iter().filter(|e| e.ready).collect();
        self.balancer.update(ready.iter().map(|e| e.addr), now);
        self.endpoints = ready.into_iter().map(|e| (e.addr, e.clone())).collect();
        if self.last.is_none() || self.header_authority.is_none() {
            if let Ok(authority) = Authority::parse(&destination.authority) {
                self.header_authority.get_or_insert(authority);
            }
        }
        self.last = Some(destination.clone());
    }
}

/// Opens an opaque hop to one endpoint. The outer error is local (TLS configuration); the inner
/// one is the endpoint's failure.
async fn connect_endpoint(
    endpoint: &EndpointMeta,
    authority: Option<Authority>,
    tls: &OutboundTls,
    config: &OutboundConfig,
) -> Result<Result<Upstream, EndpointError>, OutboundError> {
    if let Some(tunnel) = &endpoint.tunnel {
        // The header names the service in the remote cluster's own names.
        let header = MeshTransportHeader {
            port: endpoint.addr.port(),
            authority: Authority::parse(&tunnel.authority).ok().or(authority),
            protocol: ProtocolHint::Opaque,
        };
        let connected = connect_tunnelled(
            tls,
            tls.identity(),
            tunnel,
            endpoint.identity.as_ref(),
            ALPN_OPAQUE,
            &header,
            config.connect_timeout,
        )
        .await;
        return Ok(connected
            .map(|(stream, _)| Upstream::Tunnelled(Box::new(stream)))
            .map_err(EndpointError::from));
    }
    Ok(match &endpoint.identity {
        Some(identity) => {
            let client = tls.config_for(identity, ALPN_OPAQUE)?;
            // The endpoint's proxy listens on the inbound port; the header names the app's.
            let proxy = SocketAddr::new(endpoint.addr.ip(), config.inbound_port);
            let header = MeshTransportHeader {
                port: endpoint.addr.port(),
                authority,
                protocol: ProtocolHint::Opaque,
            };
            tcp::connect_meshed(proxy, identity, client, &header, config.connect_timeout)
                .await
                .map(|s| Upstream::Meshed(Box::new(s)))
                .map_err(EndpointError::from)
        }
        None => tcp::connect_plain(endpoint.addr, config.connect_timeout)
            .await
            .map(Upstream::Plain)
            .map_err(EndpointError::from),
    })
}

impl fmt::Display for Picked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.endpoint.addr)
    }
}
