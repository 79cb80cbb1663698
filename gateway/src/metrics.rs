//! The gateway's Prometheus metrics.
//!
//! Every label value is bounded: `remote_cluster` is the name of a current Link (or `unknown`
//! for a tunnel request naming no linked cluster, whose name comes from the network),
//! `direction` is `egress` or `ingress`, `status` one of the open statuses, `reason` one of a
//! fixed set. So the series count grows with the number of links, never with traffic.
//!
//! - `gateway_streams_total{remote_cluster, direction, status}`: tunnels asked for, by answer.
//! - `gateway_open_streams{remote_cluster, direction}`: tunnels spliced now.
//! - `gateway_bytes_total{remote_cluster, direction, flow}`: bytes carried by tunnels, `flow`
//!   `to_remote` or `from_remote`.
//! - `gateway_quic_rtt_ms{remote_cluster}`, `gateway_quic_lost_packets_total{remote_cluster}`,
//!   `gateway_link_connected{remote_cluster}`: the links this gateway initiated, sampled from
//!   quinn's path statistics.
//! - `gateway_connect_errors_total{reason}`: failed connection attempts to remote gateways.
//! - `gateway_handshake_latency_ms`: successful QUIC handshakes with remote gateways.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::tunnel::OpenStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `remote_cluster` of a request that named no linked cluster.
pub const UNKNOWN_CLUSTER: &str = "unknown";

const HANDSHAKE_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1_000.0, 2_000.0, 5_000.0,
    10_000.0,
];

/// Which side of the gateway a tunnel passed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// From a local workload to a linked cluster.
    Egress,
    /// From a linked cluster to a local endpoint.
    Ingress,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }
}

/// Why a connection attempt to a remote gateway failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ConnectReason {
    /// A host name did not resolve.
    Resolve,
    /// The handshake did not finish in time.
    Timeout,
    /// The handshake failed (refused, unreachable, certificate rejected).
    Handshake,
    /// The peer presented another identity than its Link names.
    Identity,
    /// The TLS configuration for the link could not be built.
    Config,
}

impl ConnectReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Timeout => "timeout",
            Self::Handshake => "handshake",
            Self::Identity => "identity",
            Self::Config => "config",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    remote_cluster: String,
    direction: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    remote_cluster: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    remote_cluster: String,
    direction: &'static str,
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    remote_cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The gateway's metrics: cheap to clone, shared by every part.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    registry: Registry,
    streams: Family<StreamLabels, Counter>,
    open: Family<OpenLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    rtt: Family<ClusterLabels, Gauge>,
    lost: Family<ClusterLabels, Counter>,
    connected: Family<ClusterLabels, Gauge>,
    connect_errors: Family<ReasonLabels, Counter>,
    handshake: Histogram,
}

/// One linked cluster's traffic, for the admin view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    pub open_streams: u64,
    pub bytes_to_remote: u64,
    pub bytes_from_remote: u64,
}

/// One spliced tunnel's share of `gateway_open_streams`, released when dropped.
#[derive(Debug)]
#[must_use = "dropping the guard closes the tunnel in the metrics"]
pub struct OpenStream {
    open: Gauge,
    metrics: GatewayMetrics,
    remote_cluster: String,
    direction: Direction,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Empty metrics, registered under the names in the module doc.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let streams = Family::default();
        let open = Family::default();
        let bytes = Family::default();
        let rtt = Family::default();
        let lost = Family::default();
        let connected = Family::default();
        let connect_errors = Family::default();
        let handshake = Histogram::new(HANDSHAKE_BUCKETS_MS);
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "gateway_streams",
            "Tunnels asked for, by answer",
            streams.clone(),
        );
        registry.register("gateway_open_streams", "Tunnels spliced now", open.clone());
        registry.register("gateway_bytes", "Bytes carried by tunnels", bytes.clone());
        registry.register(
            "gateway_quic_rtt_ms",
            "Smoothed round-trip time of the QUIC link this gateway opened, in milliseconds",
            rtt.clone(),
        );
        registry.register(
            "gateway_quic_lost_packets",
            "Packets the QUIC links this gateway opened declared lost",
            lost.clone(),
        );
        registry.register(
            "gateway_link_connected",
            "1 while this gateway holds a QUIC connection to the linked cluster",
            connected.clone(),
        );
        registry.register(
            "gateway_connect_errors",
            "Failed connection attempts to remote gateways",
            connect_errors.clone(),
        );
        registry.register(
            "gateway_handshake_latency_ms",
            "Successful QUIC handshakes with remote gateways, in milliseconds",
            handshake.clone(),
        );
        Self {
            inner: Arc::new(Families {
                registry,
                streams,
                open,
                bytes,
                rtt,
                lost,
                connected,
                connect_errors,
                handshake,
            }),
        }
    }

    /// Counts one tunnel request and how it was answered.
    pub fn stream(&self, remote_cluster: &str, direction: Direction, status: OpenStatus) {
        let status = match status {
            OpenStatus::Ok => "ok",
            OpenStatus::NotExported => "not_exported",
            OpenStatus::NoEndpoints => "no_endpoints",
            OpenStatus::Unreachable => "unreachable",
            OpenStatus::Forbidden => "forbidden",
            OpenStatus::BadRequest => "bad_request",
            OpenStatus::Unspecified => "unspecified",
        };
        self.inner
            .streams
            .get_or_create(&StreamLabels {
                remote_cluster: remote_cluster.to_owned(),
                direction: direction.as_str(),
                status,
            })
            .inc();
    }

    /// Counts a tunnel as spliced until the returned guard is dropped.
    pub fn open_stream(&self, remote_cluster: &str, direction: Direction) -> OpenStream {
        let open = self
            .inner
            .open
            .get_or_create(&OpenLabels {
                remote_cluster: remote_cluster.to_owned(),
                direction: direction.as_str(),
            })
            .clone();
        open.inc();
        OpenStream {
            open,
            metrics: self.clone(),
            remote_cluster: remote_cluster.to_owned(),
            direction,
        }
    }

    /// Counts a failed connection attempt.
    pub fn connect_error(&self, reason: ConnectReason) {
        self.inner
            .connect_errors
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Records a successful handshake.
    pub fn handshake(&self, latency: Duration) {
        self.inner
            .handshake
            .observe(latency.as_secs_f64() * 1_000.0);
    }

    /// Records a link's state: connected or not, its RTT, and newly lost packets.
    pub fn link(&self, remote_cluster: &str, rtt: Option<Duration>, newly_lost: u64) {
        let labels = ClusterLabels {
            remote_cluster: remote_cluster.to_owned(),
        };
        self.inner
            .connected
            .get_or_create(&labels)
            .set(i64::from(rtt.is_some()));
        if let Some(rtt) = rtt {
            let ms = i64::try_from(rtt.as_millis()).unwrap_or(i64::MAX);
            self.inner.rtt.get_or_create(&labels).set(ms);
        }
        self.inner.lost.get_or_create(&labels).inc_by(newly_lost);
    }

    /// Forgets a cluster's link series, when its Link is removed.
    pub fn forget_link(&self, remote_cluster: &str) {
        let labels = ClusterLabels {
            remote_cluster: remote_cluster.to_owned(),
        };
        self.inner.connected.remove(&labels);
        self.inner.rtt.remove(&labels);
        self.inner.lost.remove(&labels);
    }

    /// What the admin view shows of one linked cluster: tunnels open now (both directions) and
    /// bytes carried by finished tunnels, to and from it.
    pub fn link_traffic(&self, remote_cluster: &str) -> LinkTraffic {
        let open = |direction: &'static str| {
            let labels = OpenLabels {
                remote_cluster: remote_cluster.to_owned(),
                direction,
            };
            self.inner
                .open
                .get_or_create(&labels)
                .get()
                .max(0)
                .unsigned_abs()
        };
        let bytes = |flow: &'static str| {
            ["egress", "ingress"]
                .into_iter()
                .map(|direction| {
                    let labels = BytesLabels {
                        remote_cluster: remote_cluster.to_owned(),
                        direction,
                        flow,
                    };
                    self.inner.bytes.get_or_create(&labels).get()
                })
                .sum()
        };
        LinkTraffic {
            open_streams: open("egress") + open("ingress"),
            bytes_to_remote: bytes("to_remote"),
            bytes_from_remote: bytes("from_remote"),
        }
    }

    /// Every family in the OpenMetrics text format, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            tracing::error!(%error, "encoding the gateway's metrics failed");
        }
        text
    }
}

impl OpenStream {
    /// Counts bytes a finished tunnel carried.
    pub fn transferred(&self, to_remote: u64, from_remote: u64) {
        for (flow, bytes) in [("to_remote", to_remote), ("from_remote", from_remote)] {
            self.metrics
                .inner
                .bytes
                .get_or_create(&BytesLabels {
                    remote_cluster: self.remote_cluster.clone(),
                    direction: self.direction.as_str(),
                    flow,
                })
                .inc_by(bytes);
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_streams_bytes_and_links() {
        let metrics = GatewayMetrics::new();
        metrics.stream("east", Direction::Egress, OpenStatus::Ok);
        {
            let open = metrics.open_stream("east", Direction::Egress);
            open.transferred(10, 20);
            assert!(
                metrics.encode().contains(
                    "gateway_open_streams{remote_cluster=\"east\",direction=\"egress\"} 1"
                )
            );
        }
        metrics.link("east", Some(Duration::from_millis(12)), 3);
        metrics.connect_error(ConnectReason::Timeout);
        let text = metrics.encode();
        for line in [
            "gateway_streams_total{remote_cluster=\"east\",direction=\"egress\",status=\"ok\"} 1",
            "gateway_open_streams{remote_cluster=\"east\",direction=\"egress\"} 0",
            "gateway_bytes_total{remote_cluster=\"east\",direction=\"egress\",flow=\"to_remote\"} 10",
            "gateway_bytes_total{remote_cluster=\"east\",direction=\"egress\",flow=\"from_remote\"} 20",
            "gateway_quic_rtt_ms{remote_cluster=\"east\"} 12",
            "gateway_quic_lost_packets_total{remote_cluster=\"east\"} 3",
            "gateway_link_connected{remote_cluster=\"east\"} 1",
            "gateway_connect_errors_total{reason=\"timeout\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        metrics.forget_link("east");
        assert!(!metrics.encode().contains("gateway_quic_rtt_ms{"));
    }
}
