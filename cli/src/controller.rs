//! `mesh controller`: runs the federation controller of one cluster (see mesh-federation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use mesh_federation::controller::{self, ControllerConfig};
use mesh_federation::discovery::DiscoveryConfig;
use mesh_federation::dns::DnsConfig;
use mesh_federation::leader::LeaderConfig;
use mesh_federation::mirror::MirrorSettings;
use mesh_trust::{CertificateAuthority, TrustBundleSet, TrustDomain};

/// Run the federation controller: links, mirrors, trust bridge, discovery, identity and DNS.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  mesh controller --cluster west --issuer-dir west/issuer
  mesh controller --cluster west --kubeconfig west.kubeconfig --issuer-dir west/issuer \\
    --gateway-egress 10.96.0.20:4181 --create-namespaces

The issuer directory is what `mesh trust create-issuer` writes: issuer.crt, issuer.key and
root.crt. Without --kubeconfig the controller uses its service account in the cluster, or
KUBECONFIG.")]
pub struct ControllerArgs {
    /// This cluster's name (what linked clusters call it).
    #[arg(long, env = "MESH_CLUSTER")]
    cluster: String,
    /// This cluster's trust domain (default: the cluster name).
    #[arg(long, env = "MESH_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// The mesh namespace: Links, the leader Lease, the trust bundle ConfigMaps.
    #[arg(long, env = "MESH_NAMESPACE", default_value = "mesh")]
    namespace: String,
    /// A kubeconfig file (default: in-cluster, or KUBECONFIG).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    context: Option<String>,
    /// Directory with issuer.crt, issuer.key and root.crt.
    #[arg(long, env = "MESH_ISSUER_DIR", value_name = "DIR")]
    issuer_dir: PathBuf,
    /// Lifetime of the workload certificates the identity service signs.
    #[arg(long, default_value = "24h", value_parser = crate::duration::parse)]
    leaf_lifetime: Duration,
    /// Audiences service-account tokens must be bound to (repeatable; default: the API
    /// server's).
    #[arg(long = "token-audience", value_name = "AUDIENCE")]
    token_audiences: Vec<String>,
    /// The identity service (gRPC over TLS).
    #[arg(long, default_value = "0.0.0.0:8080")]
    identity_addr: SocketAddr,
    /// Discovery (gRPC).
    #[arg(long, default_value = "0.0.0.0:8086")]
    discovery_addr: SocketAddr,
    /// DNS (UDP and TCP).
    #[arg(long, default_value = "0.0.0.0:5353")]
    dns_addr: SocketAddr,
    /// The DNS zone of per-cluster names.
    #[arg(long, default_value = "mesh.local")]
    dns_zone: String,
    /// The admin server: /metrics, /live, /ready.
    #[arg(long, default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// The local gateway's egress address (IP:port): where proxies send traffic for linked
    /// clusters, and what mirrors' endpoints are.
    #[arg(long, env = "MESH_GATEWAY_EGRESS", value_name = "IP:PORT")]
    gateway_egress: Option<SocketAddr>,
    /// This cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Create a mirror's namespace when it does not exist here.
    #[arg(long)]
    create_namespaces: bool,
    /// Label keys (or `prefix/`) not copied to mirrors (repeatable).
    #[arg(long = "exclude-label", value_name = "KEY")]
    exclude_labels: Vec<String>,
    /// Annotation keys (or `prefix/`) not copied to mirrors (repeatable).
    #[arg(long = "exclude-annotation", value_name = "KEY")]
    exclude_annotations: Vec<String>,
    /// This replica's name in the leader election (default: the host name).
    #[arg(long, env = "POD_NAME")]
    replica: Option<String>,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let config = config(args).await?;
        controller::run(config, None, mesh_proxy::run::signals::shutdown_signals())
            .await
            .context("the controller failed")
    })
}

async fn config(args: ControllerArgs) -> anyhow::Result<ControllerConfig> {
    let trust_domain = TrustDomain::new(args.trust_domain.as_deref().unwrap_or(&args.cluster))
        .context("--trust-domain (or --cluster, its default)")?;
    let read = |file: &str| {
        let path = args.issuer_dir.join(file);
        std::fs::read(&path)
            .with_context(|| format!("--issuer-dir: cannot read {}", path.display()))
    };
    let issuer = CertificateAuthority::from_pem(&read("issuer.crt")?, &read("issuer.key")?)
        .context("--issuer-dir: issuer.crt and issuer.key are not a usable issuer")?;
    if issuer.trust_domain() != &trust_domain {
        anyhow::bail!(
            "--issuer-dir: the issuer is for trust domain {}, not {trust_domain}: pass --trust-domain {} or an issuer of {trust_domain}",
            issuer.trust_domain(),
            issuer.trust_domain()
        );
    }
    let mut roots = TrustBundleSet::new();
    roots
        .insert_pem(&trust_domain, &read("root.crt")?)
        .context("--issuer-dir: root.crt")?;

    let kube_config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            let options = KubeConfigOptions {
                context: args.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes API: not in a cluster and no KUBECONFIG; pass --kubeconfig")?,
    };
    let client = kube::Client::try_from(kube_config).context("cannot build the API client")?;

    let mut dns = DnsConfig::new(args.cluster.clone());
    dns.zone = args.dns_zone;
    dns.listen = args.dns_addr;
    let mut discovery = DiscoveryConfig::new(args.cluster.clone(), trust_domain.clone());
    discovery.cluster_domain = args.cluster_domain;
    discovery.mesh_namespace = args.namespace.clone();
    discovery.gateway_egress = args.gateway_egress;
    let replica = args.replica.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mesh-controller".into());
        format!("{host}-{:08x}", rand::random::<u32>())
    });
    Ok(ControllerConfig {
        cluster: args.cluster,
        trust_domain,
        namespace: args.namespace.clone(),
        client,
        issuer: Arc::new(issuer),
        roots,
        leaf_lifetime: args.leaf_lifetime,
        token_audiences: args.token_audiences,
        identity_addr: args.identity_addr,
        discovery_addr: args.discovery_addr,
        discovery,
        admin_addr: args.admin_addr,
        dns,
        mirrors: MirrorSettings {
            gateway_egress: args.gateway_egress.map(|addr| addr.ip()),
            exclude_labels: args.exclude_labels,
            exclude_annotations: args.exclude_annotations,
            create_namespaces: args.create_namespaces,
        },
        leader: LeaderConfig::new(args.namespace, "mesh-controller", replica),
    })
}
