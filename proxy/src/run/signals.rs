//! Stopping a long-running binary (`mesh-proxy`, `mesh-gateway`) from outside.

/// Resolves at the first SIGTERM or SIGINT, which starts the drain. A second signal exits at
/// once, without waiting for the drain. If signals cannot be listened for, never resolves (the
/// binary is then stopped through its admin server, or killed).
pub async fn shutdown_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!("cannot listen for signals ({error}); SIGTERM will not drain");
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
