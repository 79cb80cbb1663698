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
    match runtime.block_on(mesh_proxy::run::run(
        config,
        mesh_proxy::run::signals::shutdown_signals(),
    )) {
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
