//! The `mesh-gateway` command line: flags into a [`GatewayConfig`].
//!
//! Until the controller exists, a gateway reads its links, exported services and destinations
//! from files (as `mesh-proxy` reads a discovery file): enough for demos and end-to-end runs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::discovery::StaticDiscovery;
use mesh_proxy::run::identity::IdentityFiles;
use mesh_trust::tls::CertResolver;
use mesh_trust::{SharedTrustBundles, SpiffeId, TrustDomain};
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{GatewayConfig, Link, Transport};

/// Carry end-to-end mTLS sessions between clusters over QUIC.
#[derive(Debug, clap::Parser)]
#[command(name = "mesh-gateway", version)]
#[command(after_help = "Example:
  mesh-gateway --cluster west --identity-dir gw --trust-bundle bundle \\
    --links links.json --exports web.default.svc.cluster.local:80 --discovery-file discovery.json

links.json: [{\"cluster\": \"east\", \"trust_domain\": \"east\", \"addresses\": [\"10.0.0.7\"],
              \"port\": 4180, \"gateway_identity\": \"spiffe://east/ns/mesh/sa/mesh-gateway\"}]
Exit codes: 0 after a clean drain, 1 when the gateway fails, 2 for bad usage.")]
pub struct Cli {
    /// This cluster's name: what tunnel requests from other clusters are for.
    #[arg(long, env = "MESH_GATEWAY_CLUSTER")]
    pub cluster: String,
    /// Directory with leaf.crt (leaf then issuer) and leaf.key: the gateway's identity.
    #[arg(long, env = "MESH_GATEWAY_IDENTITY_DIR", value_name = "DIR")]
    pub identity_dir: PathBuf,
    /// Trust roots of this and every linked domain, as `mesh trust bundle` writes them.
    #[arg(long, env = "MESH_GATEWAY_TRUST_BUNDLE", value_name = "PATH")]
    pub trust_bundle: PathBuf,
    /// The linked clusters, a JSON list (see below).
    #[arg(long, env = "MESH_GATEWAY_LINKS", value_name = "FILE")]
    pub links: PathBuf,
    /// The service authorities this cluster exports (host:port), comma-separated.
    #[arg(
        long,
        env = "MESH_GATEWAY_EXPORTS",
        value_delimiter = ',',
        value_name = "AUTHORITY"
    )]
    pub exports: Vec<String>,
    /// Destinations of exported services, as a discovery file (the proxy's format).
    #[arg(long, env = "MESH_GATEWAY_DISCOVERY_FILE", value_name = "PATH")]
    pub discovery_file: PathBuf,
    /// QUIC between gateways (UDP).
    #[arg(long, env = "MESH_GATEWAY_QUIC_ADDR", default_value = "0.0.0.0:4180")]
    pub quic_addr: SocketAddr,
    /// Tunnel requests from this cluster's proxies (TCP, mTLS).
    #[arg(long, env = "MESH_GATEWAY_EGRESS_ADDR", default_value = "0.0.0.0:4181")]
    pub egress_addr: SocketAddr,
    /// The admin server: /metrics, /live, /ready, /links.
    #[arg(long, env = "MESH_GATEWAY_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,
    /// The port of endpoints' proxies that tunnels are delivered to.
    #[arg(long, env = "MESH_GATEWAY_INBOUND_PORT", default_value_t = mesh_api::ports::PROXY_INBOUND)]
    pub inbound_port: u16,
    /// How gateways talk to each other: quic, or tcp (TLS over TCP, for comparison).
    #[arg(long, env = "MESH_GATEWAY_TRANSPORT", default_value = "quic", value_parser = parse_transport)]
    pub transport: Transport,
    /// How often --identity-dir, --trust-bundle and --links are checked for changes.
    #[arg(long, env = "MESH_GATEWAY_RELOAD_INTERVAL", value_name = "DURATION", default_value = "5s",
        value_parser = mesh_proxy::run::cli::parse_duration)]
    pub reload_interval: Duration,
}

/// A configuration read from the flags' files, and what keeps it current.
#[derive(Debug)]
pub struct Prepared {
    /// The gateway's configuration.
    pub config: GatewayConfig,
    /// Re-reads the files; run it beside the gateway.
    pub reload: Reload,
}

/// Re-reads the identity directory, the trust bundle and the links file every interval and
/// applies each valid change live: a renewed leaf is presented to new handshakes, a changed
/// bundle set is trusted at once, a changed link list connects or refuses gateways from then on.
/// A change that does not load is logged once and the last good state kept.
#[derive(Debug)]
pub struct Reload {
    interval: Duration,
    identity_dir: PathBuf,
    identity_files: IdentityFiles,
    certs: Arc<CertResolver>,
    trust_bundle: PathBuf,
    bundles: SharedTrustBundles,
    links_file: PathBuf,
    links: watch::Sender<Vec<Link>>,
}

impl Reload {
    /// Runs until dropped.
    pub async fn run(self) {
        let Self {
            interval,
            identity_dir,
            identity_files,
            certs,
            trust_bundle,
            bundles,
            links_file,
            links,
        } = self;
        let identity = mesh_proxy::run::identity::reload_dir(
            identity_dir,
            identity_files,
            certs,
            interval,
            |_expired| {},
        );
        let trust = mesh_proxy::run::bundles::reload_file(
            trust_bundle,
            move |set| {
                if bundles.get() != set {
                    tracing::info!("trust bundle file changed; trusting the new set");
                    bundles.update(set);
                }
            },
            interval,
        );
        let links = mesh_proxy::run::bundles::reload(
            "links",
            links_file,
            read_links,
            move |list: Vec<Link>| {
                links.send_if_modified(|current| {
                    if *current == list {
                        return false;
                    }
                    let clusters: Vec<&str> = list.iter().map(|l| l.cluster.as_str()).collect();
                    tracing::info!(?clusters, "links file changed");
                    *current = list;
                    true
                });
            },
            interval,
        );
        tokio::join!(identity, trust, links);
    }
}

/// A link as the links file spells it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    cluster: String,
    trust_domain: String,
    addresses: Vec<String>,
    #[serde(default = "default_port")]
    port: u16,
    gateway_identity: String,
}

fn default_port() -> u16 {
    mesh_api::ports::GATEWAY_QUIC
}

fn parse_transport(value: &str) -> Result<Transport, String> {
    match value {
        "quic" => Ok(Transport::Quic),
        "tcp" => Ok(Transport::Tcp),
        other => Err(format!("{other:?} is not a transport: quic or tcp")),
    }
}

/// Why the gateway cannot start with these flags and files.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--identity-dir {}: {source}", dir.display())]
    Identity {
        dir: PathBuf,
        source: Box<mesh_proxy::run::identity::IdentityFileError>,
    },
    #[error("--trust-bundle {}: {source}", path.display())]
    Bundle {
        path: PathBuf,
        source: Box<mesh_proxy::run::bundles::BundleFileError>,
    },
    #[error("--links {}: {reason}", path.display())]
    Links { path: PathBuf, reason: String },
    #[error("--discovery-file: {0}")]
    Discovery(Box<mesh_proxy::discovery::StaticDiscoveryError>),
    #[error("the gateway's TLS: {0}")]
    Tls(#[from] mesh_trust::tls::TlsError),
}

impl Cli {
    /// Reads every file the flags name and builds the gateway's configuration.
    pub async fn into_config(self) -> Result<Prepared, SetupError> {
        let dir = self.identity_dir;
        let identity_error = |source| SetupError::Identity {
            dir: dir.clone(),
            source: Box::new(source),
        };
        let identity_files = IdentityFiles::read(&dir).await.map_err(identity_error)?;
        let credentials = identity_files
            .credentials(&dir, None)
            .map_err(identity_error)?;
        let certs = Arc::new(CertResolver::new(credentials)?);
        let bundle = mesh_proxy::run::bundles::load(&self.trust_bundle).map_err(|source| {
            SetupError::Bundle {
                path: self.trust_bundle.clone(),
                source: Box::new(source),
            }
        })?;
        let bundles = SharedTrustBundles::new(bundle);
        let (links_tx, links) = watch::channel(read_links(&self.links)?);
        let exports: BTreeSet<String> = self.exports.into_iter().collect();
        let (_, exports) = watch::channel(exports);
        let discovery = StaticDiscovery::load(&self.discovery_file)
            .await
            .map_err(|e| SetupError::Discovery(Box::new(e)))?;
        let reload = Reload {
            interval: self.reload_interval,
            identity_dir: dir,
            identity_files,
            certs: certs.clone(),
            trust_bundle: self.trust_bundle,
            bundles: bundles.clone(),
            links_file: self.links,
            links: links_tx,
        };
        let mut config = GatewayConfig::new(
            self.cluster,
            certs,
            bundles,
            self.quic_addr,
            self.egress_addr,
            links,
            exports,
            Arc::new(discovery),
        );
        config.admin_addr = Some(self.admin_addr);
        config.inbound_port = self.inbound_port;
        config.transport = self.transport;
        Ok(Prepared { config, reload })
    }
}

fn read_links(path: &Path) -> Result<Vec<Link>, SetupError> {
    let bad = |reason: String| SetupError::Links {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let entries: Vec<LinkEntry> =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a JSON list of links: {e}")))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let trust_domain = TrustDomain::new(&entry.trust_domain)
                .map_err(|e| bad(format!("link {i}: trust_domain: {e}")))?;
            let gateway_identity = SpiffeId::parse(&entry.gateway_identity)
                .map_err(|e| bad(format!("link {i}: gateway_identity: {e}")))?;
            let link = Link {
                cluster: entry.cluster,
                trust_domain,
                addresses: entry.addresses,
                port: entry.port,
                gateway_identity,
            };
            if !link.is_consistent() {
                return Err(bad(format!(
                    "link {i}: the gateway identity is not in trust domain {}",
                    link.trust_domain
                )));
            }
            Ok(link)
        })
        .collect()
}
