//! The sidecar as one future: [`run`] binds every listener, obtains the workload's identity,
//! serves until told to stop, then drains.
//!
//! Start-up, in order:
//! 1. Bind every listener ([`Proxy::bind`]). A failure names the flag and the address. The trust
//!    bundle file, the identity files and the discovery file are read here too, so a bad path or
//!    a bad file stops the proxy at once with a message, rather than leaving it never ready.
//! 2. Serve the admin server, not ready yet, so that probes get an answer from the start.
//! 3. Follow the trust bundles (the file, and the controller's stream) and obtain the identity:
//!    at once from `--identity-dir`, or from the identity service, retried until it answers.
//! 4. Serve inbound, outbound, the explicit maps and the tap port; renew or reload the leaf.
//!
//! The proxy is ready (`/ready` answers 200) while it has a valid leaf, discovery is connected
//! (the file loaded, or the controller answered), and it trusts at least one trust domain; and
//! until it starts draining.
//!
//! On `shutdown` or `POST /shutdown`: readiness turns false, every listener stops accepting,
//! connections in flight may finish for up to [`ProxyConfig::shutdown_grace`], and the rest are
//! cut. The admin server keeps answering through the drain (`/ready` with 503) and stops last.

pub mod bundles;
pub mod cli;
pub mod config;
mod controller;
pub mod identity;
pub mod logging;
pub mod signals;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_api::ports::{ALPN_H2, ALPN_OPAQUE};
use mesh_trust::tls::{CertResolver, TlsError};
use mesh_trust::{PeerPolicy, SpiffeId};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use self::bundles::BundleFileError;
pub use self::config::{ControllerAddr, DiscoverySource, IdentitySource, OutboundMap, ProxyConfig};
pub use self::identity::IdentityFileError;

use self::bundles::TrustState;
use self::identity::IdentityFiles;
use crate::admin::{self, AdminState, Readiness};
use crate::discovery::Target;
use crate::discovery::{
    GrpcDiscovery, GrpcDiscoveryOptions, Resolve, StaticDiscovery, StaticDiscoveryError,
};
use crate::drain;
use crate::metrics::ProxyMetrics;
use crate::outbound::{OutboundConfig, OutboundContext, OutboundTls, serve_mapped, serve_outbound};
use crate::tap::{Tap, TapServerConfig};
use crate::tcp::{InboundConfig, serve_inbound};

/// How long the admin server may take to finish its last requests once the drain is over.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Why the proxy could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("--trust-bundle: {0}")]
    TrustBundle(#[source] BundleFileError),
    #[error("--identity-dir: {0}")]
    IdentityDir(#[source] IdentityFileError),
    #[error("--discovery-file: {0}")]
    DiscoveryFile(#[source] StaticDiscoveryError),
    #[error("{flag} {addr}: {reason}")]
    Controller {
        flag: &'static str,
        addr: ControllerAddr,
        reason: String,
    },
    #[error("--outbound-map {listen}={authority}: {reason}")]
    OutboundMap {
        listen: SocketAddr,
        authority: String,
        reason: String,
    },
    #[error("mesh TLS configuration: {0}")]
    Tls(#[from] TlsError),
    #[error("the {0} listener stopped while serving; see the log above")]
    ListenerStopped(&'static str),
}

/// The addresses the proxy listens on, as bound (a port 0 in the config is resolved here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub tap: SocketAddr,
    /// The explicit outbound listeners, in the order of [`ProxyConfig::outbound_maps`].
    pub maps: Vec<SocketAddr>,
}

impl Running {
    /// The ports of every listener of this proxy.
    pub fn ports(&self) -> std::collections::BTreeSet<u16> {
        [self.inbound, self.outbound, self.admin, self.tap]
            .iter()
            .chain(&self.maps)
            .map(SocketAddr::port)
            .collect()
    }
}

/// A proxy whose listeners are bound and whose files are read: [`Proxy::serve`] runs it.
pub struct Proxy {
    admin: TcpListener,
    listeners: Listeners,
    parts: Parts,
}

/// The listeners of the data path (and the tap).
struct Listeners {
    inbound: TcpListener,
    outbound: TcpListener,
    tap: TcpListener,
    maps: Vec<(TcpListener, OutboundMap)>,
}

/// What a bound proxy knows before it serves.
struct Parts {
    config: ProxyConfig,
    running: Running,
    trust_file: Option<mesh_trust::TrustBundleSet>,
    identity: PreparedIdentity,
    /// This workload's SPIFFE ID, known before its certificate is.
    own_identity: SpiffeId,
    discovery: PreparedDiscovery,
}

enum PreparedIdentity {
    Dir {
        dir: PathBuf,
        files: IdentityFiles,
        resolver: Arc<CertResolver>,
    },
    Service {
        addr: ControllerAddr,
        token_file: PathBuf,
    },
}

enum PreparedDiscovery {
    File(Arc<StaticDiscovery>),
    Controller(ControllerAddr),
}

/// What the proxy is waiting for before it is ready; sets [`Readiness`] from it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    readiness: Readiness,
    conditions: Mutex<Conditions>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Conditions {
    pub(crate) identity: bool,
    pub(crate) discovery: bool,
    pub(crate) bundles: bool,
    pub(crate) draining: bool,
}

/// Runs the proxy until `shutdown` completes or `POST /shutdown` asks, then drains.
///
/// Returns an error if it cannot start (a listener, a file); once serving, it returns `Ok` after
/// the drain, or an error if a listener stopped by itself.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    Proxy::bind(config).await?.serve(shutdown).await
}

// === impl Proxy ===

impl Proxy {
    /// Binds every listener and reads every file the configuration names.
    pub async fn bind(config: ProxyConfig) -> Result<Self, RunError> {
        let bind = |flag: &'static str, addr: SocketAddr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { flag, addr, source })?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| RunError::Bind { flag, addr, source })?;
            Ok::<_, RunError>((listener, local))
        };
        let (inbound, inbound_addr) = bind("--inbound-addr", config.inbound_addr).await?;
        let (outbound, outbound_addr) = bind("--outbound-addr", config.outbound_addr).await?;
        let (admin, admin_addr) = bind("--admin-addr", config.admin_addr).await?;
        let (tap, tap_addr) = bind("--tap-addr", config.tap_addr).await?;
        let mut maps = Vec::with_capacity(config.outbound_maps.len());
        let mut map_addrs = Vec::with_capacity(config.outbound_maps.len());
        for map in &config.outbound_maps {
            let (listener, local) = bind("--outbound-map", map.listen).await?;
            maps.push((listener, map.clone()));
            map_addrs.push(local);
        }

        let trust_file = match &config.trust_bundle {
            Some(path) => {
                let path = path.clone();
                let loaded = tokio::task::spawn_blocking(move || bundles::load(&path)).await;
                match loaded {
                    Ok(loaded) => Some(loaded.map_err(RunError::TrustBundle)?),
                    Err(error) => {
                        return Err(RunError::TrustBundle(BundleFileError::Read {
                            path: config.trust_bundle.clone().unwrap_or_default(),
                            source: io::Error::other(error),
                        }));
                    }
                }
            }
            None => None,
        };

        let (identity, own_identity) = match &config.identity {
            IdentitySource::Dir { dir, expected } => {
                let files = IdentityFiles::read(dir)
                    .await
                    .map_err(RunError::IdentityDir)?;
                let credentials = files
                    .credentials(dir, expected.as_ref())
                    .map_err(RunError::IdentityDir)?;
                let own = credentials.identity.clone();
                let resolver = CertResolver::new(credentials).map_err(|source| {
                    RunError::IdentityDir(IdentityFileError::Unusable {
                        dir: dir.clone(),
                        source,
                    })
                })?;
                let prepared = PreparedIdentity::Dir {
                    dir: dir.clone(),
                    files,
                    resolver: Arc::new(resolver),
                };
                (prepared, own)
            }
            IdentitySource::Service {
                addr,
                token_file,
                identity,
            } => {
                if rustls_pki_types::ServerName::try_from(addr.host.as_str()).is_err() {
                    return Err(RunError::Controller {
                        flag: "--identity-addr",
                        addr: addr.clone(),
                        reason: "the host is neither a DNS name nor an IP address".into(),
                    });
                }
                let prepared = PreparedIdentity::Service {
                    addr: addr.clone(),
                    token_file: token_file.clone(),
                };
                (prepared, identity.clone())
            }
        };

        let discovery = match &config.discovery {
            DiscoverySource::File { path } => PreparedDiscovery::File(Arc::new(
                StaticDiscovery::load(path)
                    .await
                    .map_err(RunError::DiscoveryFile)?,
            )),
            DiscoverySource::Controller { addr } => {
                if addr.tls && rustls_pki_types::ServerName::try_from(addr.host.as_str()).is_err() {
                    return Err(discovery_error(
                        addr,
                        "the host is neither a DNS name nor an IP address".into(),
                    ));
                }
                PreparedDiscovery::Controller(addr.clone())
            }
        };

        Ok(Self {
            admin,
            listeners: Listeners {
                inbound,
                outbound,
                tap,
                maps,
            },
            parts: Parts {
                running: Running {
                    inbound: inbound_addr,
                    outbound: outbound_addr,
                    admin: admin_addr,
                    tap: tap_addr,
                    maps: map_addrs,
                },
                config,
                trust_file,
                identity,
                own_identity,
                discovery,
            },
        })
    }

    /// Where the proxy listens.
    pub fn running(&self) -> &Running {
        &self.parts.running
    }

    /// Serves until `shutdown` completes or `POST /shutdown` asks, then drains.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let Proxy {
            admin,
            listeners,
            parts,
        } = self;
        let running = &parts.running;
        tracing::info!(
            identity = %parts.own_identity,
            inbound = %running.inbound,
            outbound = %running.outbound,
            admin = %running.admin,
            tap = %running.tap,
            maps = %Addrs(&running.maps),
            "listening"
        );
        let shared = Shared {
            metrics: ProxyMetrics::default(),
            tap: Tap::default(),
            health: Arc::new(Health::default()),
        };
        let (trigger, mut requests) = admin::shutdown_channel();
        let stop = std::pin::pin!(async move {
            tokio::select! {
                () = shutdown => {}
                () = requests.requested() => {}
            }
        });

        // The admin server runs from first to last, so that probes always get an answer.
        let (admin_drain, admin_watch) = drain::channel();
        let admin_state = AdminState::new(
            shared.metrics.clone(),
            shared.health.readiness.clone(),
            trigger,
        );
        let admin_task = tokio::spawn(async move {
            if let Err(error) = admin::serve(admin, admin_state, admin_watch).await {
                tracing::error!(%error, "the admin server stopped; /ready and /metrics are gone");
            }
        });

        let result = serve_traffic(parts, listeners, &shared, stop).await;

        stop_admin(admin_drain, admin_task).await;
        tracing::info!("stopped");
        result
    }
}

/// What every part of a running proxy shares.
struct Shared {
    metrics: ProxyMetrics,
    tap: Tap,
    health: Arc<Health>,
}

/// The trust bundles and the workload certificate every mesh TLS config is built from.
struct MeshTls {
    bundles: mesh_trust::SharedTrustBundles,
    certs: Arc<CertResolver>,
}

/// Everything but the admin server: trust, identity, discovery, the listeners, the drain.
/// Background tasks (reloads, streams, renewals) live in a set dropped on return, which stops
/// them, whichever way this returns.
async fn serve_traffic(
    parts: Parts,
    listeners: Listeners,
    shared: &Shared,
    mut stop: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), RunError> {
    let Parts {
        config,
        running,
        trust_file,
        identity,
        own_identity,
        discovery,
    } = parts;
    let health = &shared.health;
    let mut background = JoinSet::new();
    let trust = Arc::new(TrustState::new(trust_file, health.clone()));
    if let Some(path) = config.trust_bundle.clone() {
        let trust = trust.clone();
        background.spawn(bundles::reload_file(
            path,
            move |set| trust.set_file(set),
            config.reload_interval,
        ));
    }

    // Over plaintext, the controller's bundles can flow before this proxy has a certificate,
    // which an identity service checked against them may need.
    let mut plaintext_channel = None;
    if let PreparedDiscovery::Controller(addr) = &discovery
        && !addr.tls
    {
        let channel = controller::channel(addr, None, config.connect_timeout)
            .map_err(|reason| discovery_error(addr, reason))?;
        background.spawn(bundles::follow_controller(
            channel.clone(),
            own_identity.to_string(),
            trust.clone(),
        ));
        plaintext_channel = Some(channel);
    }

    let controller_identity = config.controller_identity_for(&own_identity);
    let certs = match identity {
        PreparedIdentity::Dir {
            dir,
            files,
            resolver,
        } => {
            let health = health.clone();
            background.spawn(identity::reload_dir(
                dir,
                files,
                resolver.clone(),
                config.reload_interval,
                move |expired| health.update(|c| c.identity = !expired),
            ));
            resolver
        }
        PreparedIdentity::Service { addr, token_file } => {
            let Some(controller) = controller_identity.clone() else {
                return Err(no_controller_identity("--identity-addr", addr));
            };
            let bundles = trust.shared();
            let obtain = identity::obtain(
                &addr,
                &own_identity,
                &controller,
                &token_file,
                &bundles,
                config.rotation,
            );
            let obtained = tokio::select! {
                obtained = obtain => Some(obtained),
                () = &mut stop => None,
            };
            let Some((resolver, rotator)) = obtained else {
                tracing::info!("shutting down before an identity was obtained");
                return Ok(());
            };
            background.spawn(rotator.run(std::future::pending()));
            resolver
        }
    };
    health.update(|c| c.identity = true);

    let resolve: Arc<dyn Resolve> = match discovery {
        PreparedDiscovery::File(discovery) => {
            health.update(|c| c.discovery = true);
            discovery
        }
        PreparedDiscovery::Controller(addr) => {
            let channel = match plaintext_channel {
                Some(channel) => channel,
                None => {
                    let Some(controller) = controller_identity else {
                        return Err(no_controller_identity("--discovery-addr", addr));
                    };
                    let tls = controller::ChannelTls {
                        bundles: trust.shared(),
                        certs: certs.clone(),
                        controller,
                    };
                    let channel = controller::channel(&addr, Some(tls), config.connect_timeout)
                        .map_err(|reason| discovery_error(&addr, reason))?;
                    background.spawn(bundles::follow_controller(
                        channel.clone(),
                        own_identity.to_string(),
                        trust.clone(),
                    ));
                    channel
                }
            };
            let options = GrpcDiscoveryOptions {
                caller_identity: own_identity.to_string(),
                ..GrpcDiscoveryOptions::default()
            };
            Arc::new(GrpcDiscovery::new(channel, options))
        }
    };

    let (drain, watch) = drain::channel();
    let mesh_tls = MeshTls {
        bundles: trust.shared(),
        certs,
    };
    let mut serving = start_listeners(
        &config, &running, listeners, shared, &mesh_tls, resolve, &watch,
    )?;
    drop(watch);

    // Serve until asked to stop. A listener that ends by itself is a failure, and drains too.
    let result = tokio::select! {
        () = &mut stop => Ok(()),
        Some(ended) = serving.join_next() => {
            let name = ended.unwrap_or_else(|error| {
                tracing::error!(%error, "a listener task failed");
                "unknown"
            });
            tracing::error!(listener = name, "a listener stopped while serving; draining");
            Err(RunError::ListenerStopped(name))
        }
    };

    health.update(|c| c.draining = true);
    tracing::info!(grace = ?config.shutdown_grace, "draining: no new connections; waiting for the open ones");
    match tokio::time::timeout(config.shutdown_grace, drain.drain()).await {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            grace = ?config.shutdown_grace,
            "the shutdown grace ran out; closing the connections still open"
        ),
    }
    // Aborts what is left: each listener's connections are dropped with it.
    serving.shutdown().await;
    result
}

/// Builds the inbound and outbound configs and serves every data listener under `watch`. The
/// maps' services are built before anything is served, so that a bad map fails the start whole.
fn start_listeners(
    config: &ProxyConfig,
    running: &Running,
    listeners: Listeners,
    shared: &Shared,
    tls: &MeshTls,
    resolve: Arc<dyn Resolve>,
    watch: &drain::Watch,
) -> Result<JoinSet<&'static str>, RunError> {
    let server_tls = mesh_trust::tls::server_config(
        tls.bundles.clone(),
        PeerPolicy::AnyDomain,
        tls.certs.clone(),
        &[ALPN_OPAQUE, ALPN_H2],
    )?;
    let mut inbound = InboundConfig::new(Arc::new(server_tls));
    inbound.local_app_ip = config.app_ip;
    inbound.detect_timeout = config.detect_timeout;
    inbound.app_connect_timeout = config.connect_timeout;
    inbound.idle_timeout = config.idle_timeout;
    inbound.max_connections = config.max_connections;
    inbound.opaque_ports = config.opaque_ports.clone();
    // A meshed peer may never name one of this proxy's own ports, and nothing is passed
    // through to them on the way out.
    let own_ports = running.ports();
    inbound.denied_ports.extend(&own_ports);
    inbound.metrics = Some(shared.metrics.clone());
    inbound.tap = Some(shared.tap.clone());

    let outbound_tls = Arc::new(OutboundTls::new(tls.bundles.clone(), tls.certs.clone()));
    let outbound = OutboundConfig {
        inbound_port: config.peer_inbound_port,
        connect_timeout: config.connect_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
        detect_timeout: config.detect_timeout,
        opaque_ports: config.opaque_ports.clone(),
        proxy_ports: own_ports,
        ..OutboundConfig::default()
    };
    let mut mapped = Vec::with_capacity(listeners.maps.len());
    for (listener, map) in listeners.maps {
        let target = Target::parse(&map.authority).map_err(|e| RunError::OutboundMap {
            listen: map.listen,
            authority: map.authority.clone(),
            reason: e.to_string(),
        })?;
        mapped.push((listener, target));
    }

    let mut serving = JoinSet::new();
    serving.spawn(named(
        "inbound",
        serve_inbound(listeners.inbound, inbound, watch.clone()),
    ));
    // One context for the outbound listener and the explicit maps: one set of discovery
    // watches, balancers and pooled connections.
    let context = Arc::new(OutboundContext::new(
        resolve,
        outbound_tls,
        outbound,
        shared.metrics.clone(),
        shared.tap.clone(),
    ));
    serving.spawn(named(
        "outbound",
        serve_outbound(listeners.outbound, context.clone(), watch.clone()),
    ));
    for (listener, target) in mapped {
        let serve = serve_mapped(listener, target, context.clone(), watch.clone());
        serving.spawn(named("outbound map", serve));
    }
    serving.spawn(named(
        "tap",
        crate::tap::serve(
            listeners.tap,
            shared.tap.clone(),
            TapServerConfig::default(),
            watch.clone(),
        ),
    ));
    Ok(serving)
}

fn discovery_error(addr: &ControllerAddr, reason: String) -> RunError {
    RunError::Controller {
        flag: "--discovery-addr",
        addr: addr.clone(),
        reason,
    }
}

fn no_controller_identity(flag: &'static str, addr: ControllerAddr) -> RunError {
    RunError::Controller {
        flag,
        addr,
        reason: "the controller's identity is unknown; give --controller-identity".into(),
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("identity", &self.parts.own_identity)
            .field("running", &self.parts.running)
            .finish_non_exhaustive()
    }
}

/// Runs a listener and names it when it returns.
async fn named(name: &'static str, serve: impl Future<Output = ()>) -> &'static str {
    serve.await;
    name
}

async fn stop_admin(drain: drain::Drain, task: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(ADMIN_DRAIN, drain.drain())
        .await
        .is_err()
    {
        tracing::debug!("admin requests still open at exit");
    }
    task.abort();
    let _ = task.await;
}

/// Addresses as `a,b,c` in a log line.
struct Addrs<'a>(&'a [SocketAddr]);

impl fmt::Display for Addrs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

// === impl Health ===

impl Health {
    /// Changes the conditions and sets readiness from them, logging what it waits for.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Conditions)) {
        let mut conditions = self
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = *conditions;
        change(&mut conditions);
        if *conditions == before {
            return;
        }
        let ready = conditions.is_ready();
        self.readiness.set_ready(ready);
        if ready {
            tracing::info!("ready");
        } else if before.is_ready() || conditions.draining != before.draining {
            tracing::info!(waiting_for = %conditions.missing(), "not ready");
        } else {
            tracing::debug!(waiting_for = %conditions.missing(), "not ready");
        }
    }
}

impl Conditions {
    fn is_ready(&self) -> bool {
        self.identity && self.discovery && self.bundles && !self.draining
    }

    fn missing(&self) -> String {
        let mut missing = Vec::new();
        if self.draining {
            missing.push("nothing: draining");
        }
        if !self.identity {
            missing.push("a valid leaf certificate");
        }
        if !self.discovery {
            missing.push("discovery");
        }
        if !self.bundles {
            missing.push("trust bundles");
        }
        missing.join(", ")
    }
}
