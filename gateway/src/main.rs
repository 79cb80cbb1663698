//! `mesh-gateway`: the gateway binary. Parses the command line and hands over to the library.
//!
//! Exit codes: 0 after a clean drain, 1 when the gateway fails, 2 for bad usage.

use std::process::ExitCode;

use clap::Parser;
use mesh_gateway::Gateway;
use mesh_gateway::cli::{Cli, Prepared};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESH_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let Prepared { config, reload } = match cli.into_config().await {
            Ok(prepared) => prepared,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        };
        let gateway = match Gateway::bind(config).await {
            Ok(gateway) => gateway,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            quic = %gateway.quic_addr(),
            egress = %gateway.egress_addr(),
            admin = ?gateway.admin_addr(),
            "gateway serving"
        );
        let reload = tokio::spawn(reload.run());
        gateway
            .run(mesh_proxy::run::signals::shutdown_signals())
            .await;
        reload.abort();
        ExitCode::SUCCESS
    })
}
