//! `mesh-proxy`: the sidecar binary. Parses the command line, sets up logging and signals, and
//! hands over to the library (`mesh_proxy::run`, `mesh_proxy::init`).
//!
//! Exit codes: 0 after a clean drain (or `init` done), 1 when the proxy fails, 2 for bad usage.

use std::process::ExitCode;

use clap::Parser;
use mesh_proxy::run::cli::{Cli, Command, InitArgs, RunArgs};
use mesh_proxy::run::logging::{self, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Init(args) => init(&args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let format = args.log_format;
    let threads = args.threads;
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}\n\nFor more information, try 'mesh-proxy run --help'.");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = logging::init(format) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    // One thread: the current-thread scheduler, with no work stealing or cross-thread wake-ups
    // to pay for.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(threads));
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(mesh_proxy::run::run(config, signals())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn init(args: &InitArgs) -> ExitCode {
    if let Err(error) = logging::init(LogFormat::Plain) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    match args.execute(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes at the first SIGTERM or SIGINT, which starts the drain. A second one ends the
/// process at once, for an operator who will not wait for the grace period.
async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(
                "cannot listen for signals ({error}); stop the proxy with POST /shutdown"
            );
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
}
