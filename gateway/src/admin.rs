//! The gateway's admin server (port 4191 by default): `/metrics` for Prometheus, `/live` and
//! `/ready` for the kubelet, and `/links`, one line per linked cluster with the state of the QUIC
//! connection this gateway holds to it (connected, remote address, RTT, lost packets); open
//! streams and bytes per link are in `/metrics`.
//!
//! It is mesh-proxy's admin server (HTTP/1, a connection limit, a header timeout: the port faces
//! the pod network like any other) without the shutdown endpoint: nothing on it changes anything.

use std::fmt::Write as _;
use std::sync::Arc;

use mesh_proxy::admin::{AdminState, Readiness};

use crate::links::LinkTable;
use crate::metrics::GatewayMetrics;

/// The admin server's state: the gateway's metrics, its readiness (cleared when draining
/// starts) and `/links`. Served by mesh-proxy's admin server, with its connection limit and
/// header timeout.
pub(crate) fn state(
    metrics: GatewayMetrics,
    links: Arc<LinkTable>,
    ready: Readiness,
) -> AdminState {
    let encode = metrics.clone();
    AdminState::for_metrics(move || encode.encode(), ready)
        .with_page("/links", move || links_view(&links, &metrics))
}

/// One line per linked cluster: its connection, then its tunnels open now and the bytes
/// finished tunnels carried each way.
fn links_view(links: &LinkTable, metrics: &GatewayMetrics) -> String {
    let mut text = String::new();
    for link in links.view() {
        let traffic = metrics.link_traffic(&link.cluster);
        let _ = match link.connection {
            Some(c) => write!(
                text,
                "{} connected remote={} rtt_ms={} lost_packets={}",
                link.cluster,
                c.remote,
                c.rtt.as_millis(),
                c.lost_packets,
            ),
            None => write!(text, "{} disconnected", link.cluster),
        };
        let _ = writeln!(
            text,
            " open_streams={} bytes_to_remote={} bytes_from_remote={}",
            traffic.open_streams, traffic.bytes_to_remote, traffic.bytes_from_remote
        );
    }
    text
}
