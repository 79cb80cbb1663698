//! `mesh devcluster`: a Kubernetes-API-compatible server for tests and local runs (see
//! `e2e/README.md`). It serves until Ctrl-C or SIGTERM, then saves its snapshot if it has one.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use mesh_e2e::devcluster::{self, DevClusterConfig};

/// Run a local Kubernetes-API-compatible dev cluster (for tests and demos; not a Kubernetes
/// distribution: no scheduler, no kubelet).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  mesh devcluster --kubeconfig-out dev.kubeconfig
  KUBECONFIG=dev.kubeconfig kubectl get namespaces
  mesh devcluster --listen 127.0.0.1:6443 --snapshot dev.json --endpoints-controller")]
pub struct DevclusterArgs {
    /// The cluster's name in the kubeconfig.
    #[arg(long, default_value = "dev")]
    name: String,
    /// Where to listen; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Serve plain HTTP instead of HTTPS with the cluster's own CA.
    #[arg(long)]
    plain_http: bool,
    /// Load objects from this file on start (when it exists) and save them on shutdown.
    #[arg(long, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Keep Endpoints and EndpointSlices in step with ready Pods, as Kubernetes does.
    #[arg(long)]
    endpoints_controller: bool,
    /// Write the kubeconfig (owner-only) here instead of printing it.
    #[arg(long, value_name = "FILE")]
    kubeconfig_out: Option<PathBuf>,
}

pub fn run(args: DevclusterArgs) -> anyhow::Result<()> {
    let config = DevClusterConfig {
        name: args.name,
        listen: args.listen,
        tls: !args.plain_http,
        endpoints_controller: args.endpoints_controller,
        snapshot: args.snapshot,
        ..DevClusterConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let out = args.kubeconfig_out;
    let mut written = Ok(());
    runtime.block_on(devcluster::run(
        config,
        mesh_proxy::run::signals::shutdown_signals(),
        |cluster| match &out {
            Some(path) => {
                written = cluster
                    .write_kubeconfig(path)
                    .with_context(|| format!("cannot write the kubeconfig to {}", path.display()));
                if written.is_ok() {
                    eprintln!(
                        "dev cluster serving on {}; kubeconfig in {} (Ctrl-C stops it)",
                        cluster.address(),
                        path.display()
                    );
                }
            }
            None => {
                print!("{}", cluster.kubeconfig());
                eprintln!(
                    "dev cluster serving on {} (Ctrl-C stops it)",
                    cluster.address()
                );
            }
        },
    ))?;
    written
}
