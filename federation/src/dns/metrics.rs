//! The DNS server's Prometheus metrics.

use hickory_proto::op::ResponseCode;
use hickory_proto::xfer::Protocol;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Counters of the DNS server. Clones share the counters, so the server can keep one clone
/// and the admin server's registry another.
#[derive(Clone, Debug, Default)]
pub struct DnsMetrics {
    queries: Family<QueryLabels, Counter>,
    snapshots: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, ...
    rcode: &'static str,
    /// `udp` or `tcp`.
    transport: &'static str,
}

// === impl DnsMetrics ===

impl DnsMetrics {
    /// Registers the metrics:
    ///
    /// - `dns_queries_total{rcode, transport}`: questions answered by the server's handler
    ///   (messages hickory rejects before decoding a question are not counted);
    /// - `dns_snapshot_builds_total`: rebuilds of the index after a change in the API.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_queries",
            "DNS questions answered, by response code and transport",
            self.queries.clone(),
        );
        registry.register(
            "dns_snapshot_builds",
            "Rebuilds of the DNS index after a change in the Kubernetes API",
            self.snapshots.clone(),
        );
    }

    pub(super) fn answered(&self, rcode: ResponseCode, protocol: Protocol) {
        let transport = match protocol {
            Protocol::Tcp => "tcp",
            _ => "udp",
        };
        self.queries
            .get_or_create(&QueryLabels {
                rcode: rcode_label(rcode),
                transport,
            })
            .inc();
    }

    pub(super) fn snapshot_built(&self) {
        self.snapshots.inc();
    }
}

/// The conventional spelling of a response code (as `dig` prints it).
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}
