//! The whole controller as one future: [`run`] binds every port, then serves until shutdown.
//!
//! Every replica serves the read side, from one [`Cache`] of the local cluster:
//! - the identity service (gRPC over TLS, [`ControllerConfig::identity_addr`]) signing workload
//!   certificates for service-account tokens a `TokenReview` proves;
//! - discovery (gRPC, [`ControllerConfig::discovery_addr`]): `Destination` for proxies and
//!   gateways, and `TrustBundles.Watch`, the merged trust bundle set (this domain's roots and
//!   every linked domain's, from the ConfigMap the leader keeps);
//! - DNS ([`ControllerConfig::dns`]);
//! - the admin server (`/metrics`, `/live`, `/ready`: ready once the cache is complete).
//!
//! One replica at a time, the leader of the [`leader`] election, runs the write side: the Link
//! reconciler and its mirrors (probing each linked gateway through the local gateway's egress
//! port when [`DiscoveryConfig::gateway_egress`] is set), the publication of this cluster's trust
//! bundle for linked clusters, and the ConfigMap of linked domains' bundles. When a
//! replica loses the lead its writers stop; when one gains it they start from the API's state,
//! so nothing is carried over in memory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use mesh_trust::ca::CertificateAuthority;
use mesh_trust::identity::IdentityService;
use mesh_trust::rotation::{LocalIssuer, RotationOptions, Rotator};
use mesh_trust::{SharedTrustBundles, SpiffeId, TrustBundleSet, TrustDomain};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::Cache;
use crate::discovery::{DiscoveryConfig, DiscoveryMetrics, DiscoveryService};
use crate::dns::{DnsConfig, DnsError, DnsMetrics, DnsServer};
use crate::identity::TokenReviewValidator;
use crate::leader::{self, LeaderConfig};
use crate::links::{LinkMetrics, Links, LinksConfig};
use crate::mirror::{MirrorSettings, MirrorWriter};
use crate::probe::GatewayHealthSource;
use crate::prober::{GatewayProber, ProberConfig, ProberMetrics};
use crate::trust::{BundleSet, publish_own, run_linked_writer};

/// The service account the controller runs as, and so its own identity.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "mesh-controller";
/// The service account of the gateway, in the same namespace.
pub const GATEWAY_SERVICE_ACCOUNT: &str = "mesh-gateway";

/// Everything the controller needs.
pub struct ControllerConfig {
    /// This cluster's name.
    pub cluster: String,
    /// This cluster's trust domain.
    pub trust_domain: TrustDomain,
    /// The mesh namespace: Links, the Lease, the trust bundle ConfigMaps.
    pub namespace: String,
    /// A client of the local cluster's API.
    pub client: Client,
    /// The issuer that signs workload certificates (and the controller's own).
    pub issuer: Arc<CertificateAuthority>,
    /// This domain's roots.
    pub roots: TrustBundleSet,
    /// How long workload certificates live.
    pub leaf_lifetime: Duration,
    /// Audiences service-account tokens must be bound to (empty: the API server's default).
    pub token_audiences: Vec<String>,
    /// The identity service's address.
    pub identity_addr: SocketAddr,
    /// The discovery service's address.
    pub discovery_addr: SocketAddr,
    /// Discovery's view of this cluster (its gateway's egress address, cluster domain).
    pub discovery: DiscoveryConfig,
    /// The admin server's address.
    pub admin_addr: SocketAddr,
    /// DNS.
    pub dns: DnsConfig,
    /// How mirrors are made.
    pub mirrors: MirrorSettings,
    /// The leader election.
    pub leader: LeaderConfig,
}

impl std::fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("cluster", &self.cluster)
            .field("trust_domain", &self.trust_domain)
            .field("namespace", &self.namespace)
            .field("identity_addr", &self.identity_addr)
            .field("discovery_addr", &self.discovery_addr)
            .field("admin_addr", &self.admin_addr)
            .field("dns", &self.dns)
            .field("mirrors", &self.mirrors)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// A port could not be bound.
    #[error("cannot bind the {what} port {addr}: {source}")]
    Bind {
        /// Which port.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The controller's own certificate could not be issued.
    #[error("cannot issue the controller's own certificate: {0}")]
    Identity(String),
    /// DNS could not start.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// Discovery's configuration is unusable.
    #[error("discovery: {0}")]
    Discovery(#[from] crate::discovery::ConfigError),
}

/// The controller's ports, once bound.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// The identity service.
    pub identity: SocketAddr,
    /// Discovery.
    pub discovery: SocketAddr,
    /// DNS (UDP and TCP).
    pub dns: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
}

/// Binds every port, reports them on `bound`, and serves until `shutdown` resolves.
///
/// # Errors
///
/// When a port cannot be bound or the controller's own certificate cannot be issued; once
/// serving, it returns `Ok` at shutdown.
pub async fn run(
    config: ControllerConfig,
    bound: Option<tokio::sync::oneshot::Sender<Bound>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let ControllerConfig {
        cluster,
        trust_domain,
        namespace,
        client,
        issuer,
        roots,
        leaf_lifetime,
        token_audiences,
        identity_addr,
        discovery_addr,
        discovery,
        admin_addr,
        dns,
        mirrors,
        leader: leader_config,
    } = config;

    // The controller's own leaf, from its own issuer, renewed before it expires.
    let own = trust_domain
        .workload(&namespace, CONTROLLER_SERVICE_ACCOUNT)
        .map_err(|e| ControllerError::Identity(e.to_string()))?;
    let (own_certs, rotator) = Rotator::start(
        own.clone(),
        LocalIssuer::new(issuer.clone(), leaf_lifetime),
        RotationOptions::default(),
    )
    .await
    .map_err(|e| ControllerError::Identity(e.to_string()))?;

    let mut registry = Registry::with_prefix("mesh_controller");
    let dns_metrics = DnsMetrics::default();
    dns_metrics.register(&mut registry);
    let discovery_metrics = DiscoveryMetrics::register(&mut registry);
    let link_metrics = LinkMetrics::default();
    link_metrics.register(&mut registry);
    let prober_metrics = ProberMetrics::default();
    prober_metrics.register(&mut registry);
    let registry = Arc::new(registry);

    let cache = Cache::start(&client);
    let bind = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ControllerError::Bind { what, addr, source })
    };
    let identity_listener = bind("identity", identity_addr).await?;
    let discovery_listener = bind("discovery", discovery_addr).await?;
    // Probes of linked gateways go through the local gateway, which must prove the gateway
    // identity of this domain.
    let probes: Option<Arc<dyn GatewayHealthSource>> = match discovery.gateway_egress {
        Some(egress) => {
            let gateway_identity = trust_domain
                .workload(&namespace, GATEWAY_SERVICE_ACCOUNT)
                .map_err(|e| ControllerError::Identity(e.to_string()))?;
            let prober = GatewayProber::new(ProberConfig {
                egress,
                gateway_identity,
                certs: own_certs.clone(),
                bundles: SharedTrustBundles::new(roots.clone()),
                metrics: prober_metrics,
                events: None,
            })
            .map_err(|e| ControllerError::Identity(e.to_string()))?;
            Some(Arc::new(prober))
        }
        None => None,
    };
    let discovery = DiscoveryService::new(discovery, cache.clone(), discovery_metrics)?;
    let bundle_set = BundleSet::start(
        client.clone(),
        &namespace,
        trust_domain.clone(),
        roots.clone(),
    );
    let admin_listener = bind("admin", admin_addr).await?;
    let dns_server = DnsServer::bind(dns, cache.clone(), dns_metrics).await?;
    let ports = Bound {
        identity: local(&identity_listener, identity_addr),
        discovery: local(&discovery_listener, discovery_addr),
        dns: dns_server.local_addr(),
        admin: local(&admin_listener, admin_addr),
    };
    if let Some(bound) = bound {
        let _ = bound.send(ports);
    }
    tracing::info!(%cluster, %trust_domain, identity = %ports.identity, discovery = %ports.discovery, dns = %ports.dns, admin = %ports.admin, "controller serving");

    let (stop_tx, stop) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let mut tasks = JoinSet::new();

    // Identity: TLS with the controller's own leaf, no client certificate (workloads have none
    // yet), tokens checked with TokenReview.
    let identity_tls = identity_tls(own_certs)?;
    let service = IdentityService::new(
        issuer,
        TokenReviewValidator::new(client.clone(), token_audiences),
        leaf_lifetime,
    );
    tasks.spawn({
        let stopped = stopped();
        async move {
            if let Err(error) =
                mesh_trust::identity::serve(identity_listener, identity_tls, service, stopped).await
            {
                tracing::error!(%error, "the identity service failed");
            }
        }
    });
    tasks.spawn(rotator.run(stopped()));
    tasks.spawn({
        let stopped = stopped();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(discovery_listener);
        async move {
            let served = tonic::transport::Server::builder()
                .add_service(discovery.into_server())
                .add_service(bundle_set.service())
                .serve_with_incoming_shutdown(incoming, stopped)
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "discovery failed");
            }
        }
    });
    tasks.spawn({
        let stopped = stopped();
        async move {
            if let Err(error) = dns_server.run(stopped).await {
                tracing::error!(%error, "DNS failed");
            }
        }
    });

    // Admin: ready once every kind has been listed.
    let readiness = mesh_proxy::admin::Readiness::new();
    let admin_state = {
        let registry = registry.clone();
        mesh_proxy::admin::AdminState::for_metrics(
            move || {
                let mut text = String::new();
                if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
                    text.clear();
                }
                text
            },
            readiness.clone(),
        )
    };
    let (admin_drain, admin_watch) = mesh_proxy::drain::channel();
    tasks.spawn(async move {
        if let Err(error) = mesh_proxy::admin::serve(admin_listener, admin_state, admin_watch).await
        {
            tracing::error!(%error, "the admin server failed");
        }
    });
    tasks.spawn({
        let cache = cache.clone();
        async move {
            cache.wait_ready().await;
            readiness.set_ready(true);
        }
    });

    // The election, and the writers while this replica leads.
    let (leading_tx, leading) = watch::channel(false);
    tasks.spawn(leader::run(
        client.clone(),
        leader_config,
        leading_tx,
        stopped(),
    ));
    let writer = MirrorWriter::new(client.clone(), mirrors);
    let links_config = LinksConfig {
        namespace: namespace.clone(),
        cluster: cluster.clone(),
        trust_domain: trust_domain.clone(),
        metrics: link_metrics,
    };
    tasks.spawn(lead(
        leading,
        Writers {
            client: client.clone(),
            cache: cache.clone(),
            config: links_config,
            writer,
            probes,
            roots,
        },
        own,
    ));

    shutdown.await;
    tracing::info!("controller shutting down");
    let _ = stop_tx.send(true);
    admin_drain.drain().await;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = &mut deadline => {
                tracing::warn!("tasks still running at the shutdown deadline; stopping them");
                tasks.abort_all();
                break;
            }
        }
    }
    Ok(())
}

fn local(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// The identity service's TLS: the controller's own leaf, TLS 1.3, no client certificates (the
/// workloads asking have none yet), no session tickets.
fn identity_tls(
    certs: Arc<mesh_trust::tls::CertResolver>,
) -> Result<rustls::ServerConfig, ControllerError> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(mesh_trust::tls::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ControllerError::Identity(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certs);
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// What the leader runs.
struct Writers {
    client: Client,
    cache: Cache,
    config: LinksConfig,
    writer: MirrorWriter,
    probes: Option<Arc<dyn GatewayHealthSource>>,
    roots: TrustBundleSet,
}

/// Runs the writers while `leading` is true; stops them when it turns false, and starts them
/// again when it turns true again.
async fn lead(mut leading: watch::Receiver<bool>, writers: Writers, own: SpiffeId) {
    let Writers {
        client,
        cache,
        config,
        writer,
        probes,
        roots,
    } = writers;
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!(identity = %own, "leading: starting the link reconciler and the trust bridge");
        let lost = || {
            let mut lost = leading.clone();
            async move {
                let _ = lost.wait_for(|l| !*l).await;
            }
        };
        let publish = publish_own_until_done(&client, &config, &roots, lost());
        let links = Links::new(
            client.clone(),
            cache.clone(),
            config.clone(),
            writer.clone(),
            probes.clone(),
        );
        let linked = run_linked_writer(
            client.clone(),
            config.namespace.clone(),
            links.bundles(),
            lost(),
        );
        tokio::join!(publish, links.run(lost()), linked);
        tracing::info!("no longer leading: the link reconciler and the trust bridge stopped");
    }
}

/// Publishes this domain's roots for linked clusters, retrying with backoff until it succeeds
/// or `stop` resolves.
async fn publish_own_until_done(
    client: &Client,
    config: &LinksConfig,
    roots: &TrustBundleSet,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut delay = Duration::from_millis(200);
    loop {
        match publish_own(client, &config.namespace, &config.trust_domain, roots).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, ?delay, "cannot publish this cluster's trust bundle; retrying");
            }
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
