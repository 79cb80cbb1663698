//! `mesh`: the command operators use to run and manage the mesh.
//!
//! The binary is thin: argument parsing, then a call into the command's module, then an exit
//! code. Exit codes: 0 success, 1 the command failed (the message says why and what to do),
//! 2 the command line was wrong.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod controller;
mod devcluster;
mod duration;
mod files;
mod trust;

/// The controller holds every Service, EndpointSlice and Pod of its cluster and of each linked
/// cluster, and rebuilds its indexes from them at every change: many mid-sized allocations of
/// similar lifetimes, freed in bursts. jemalloc keeps the resident size close to what is live
/// (glibc's arenas held about twice as much at 10,000 Services; see BENCHMARKS.md), and its
/// background thread hands freed pages back while the controller is idle (its options are set
/// at build time, in `.cargo/config.toml`).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Operate a multi-cluster service mesh.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, about, long_about = None)]
#[command(after_help = "Exit codes: 0 success, 1 the command failed, 2 bad usage.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and inspect trust material: roots, issuers, leaves and trust bundles.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Print the CustomResourceDefinitions (Link, TrafficSplit) as YAML, for kubectl apply.
    Crds,
    /// Run a local Kubernetes-API-compatible dev cluster, for tests and demos.
    Devcluster(devcluster::DevclusterArgs),
    /// Run the federation controller of this cluster.
    Controller(Box<controller::ControllerArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Trust(cmd) => trust::run(cmd),
        Command::Crds => print_crds(),
        Command::Devcluster(args) => devcluster::run(args),
        Command::Controller(args) => {
            init_logging();
            controller::run(*args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, filtered by MESH_LOG or RUST_LOG (default: info, and warnings only from the
/// DNS server library, which logs every query at info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", mesh_api::crd::crds_yaml()?);
    Ok(())
}
