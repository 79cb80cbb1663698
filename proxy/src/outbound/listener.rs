//! The outbound listener (4140): iptables-redirected connections and clients that use the proxy
//! directly.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::{OutboundConfig, OutboundTls};
use crate::discovery::Resolve;
use crate::drain;
use crate::metrics::ProxyMetrics;
use crate::tap::Tap;

/// Everything the outbound listener shares between its connections.
pub struct OutboundContext {
    pub resolve: Arc<dyn Resolve>,
    pub tls: Arc<OutboundTls>,
    pub config: OutboundConfig,
    pub metrics: ProxyMetrics,
    pub tap: Tap,
}

/// Serves the outbound listener until `watch` signals a drain, then waits for the connections in
/// flight and returns.
pub async fn serve_outbound(
    listener: TcpListener,
    ctx: Arc<OutboundContext>,
    mut watch: drain::Watch,
) {
    let _ = ctx;
    // Being written: see ARCHITECTURE.md, "Data path".
    watch.signaled().await;
    drop(listener);
}
